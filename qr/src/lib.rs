//! LoRa Alliance TR005 device-identification QR codes.
//!
//! ```text
//! LW:D0:<JoinEUI>:<DevEUI>:<ProfileID>[:O<OwnerToken>][:S<SerNum>][:P<Proprietary>][:C<CheckSum>]
//! ```
//!
//! * [`parse`] validates a scanned text (D0, or the deprecated drafts 2 and 3, converted to D0)
//!   and verifies its CheckSum; every [`QrError`] names the field, the position, what was
//!   expected and what was found.
//! * [`DeviceCode::encode`] writes the canonical form with a CRC-16/MODBUS CheckSum.
//! * [`render`] draws a code (PNG, SVG, terminal), [`decode`] finds and reads codes in images,
//!   [`labels`] prints one label per device of a join-server manifest (these, the claim client
//!   and the `qr` binary need the default feature `full`; without it the crate only parses).
//! * [`report`] is the JSON of a check (`qr parse --json`, the join server's
//!   `POST /api/v1/qr/parse`), naming codes of other kinds (a Matter `MT:` code).
//!
//! ```
//! let text = "LW:D0:1122334455667788:AABBCCDDEEFF0011:AABB1122:OAABBCCDDEEFF:SYYWWNNNNNN:PFOOBAR:CAF2C";
//! let parsed = qr::parse(text).unwrap();
//! assert_eq!(parsed.code.dev_eui.to_string(), "AABBCCDDEEFF0011");
//! assert_eq!(parsed.code.profile_id.vendor_id, 0xAABB);
//! assert_eq!(parsed.checksum_valid(), Some(true));
//! assert_eq!(parsed.code.to_string(), text); // canonical form, CheckSum recomputed
//!
//! let misread = text.replace("AABBCCDDEEFF0011", "AABBCCDDEEFF0017");
//! assert_eq!(qr::parse(&misread).unwrap_err().kind(), "checksum_mismatch");
//! ```
//!
//! The format, the strictness decisions and the CLI are described in `docs/qr.md`.
#![warn(missing_docs)]

#[cfg(feature = "full")]
pub mod claim;
mod code;
#[cfg(feature = "full")]
pub mod decode;
mod error;
#[cfg(feature = "full")]
mod font;
#[cfg(feature = "full")]
pub mod labels;
#[cfg(feature = "full")]
pub mod render;
pub mod report;

pub use code::{
    checksum, parse, parse_bytes, ChecksumMode, DeviceCode, ExtensionValue, Parsed, ProfileId,
    Schema, UnknownExtension, VALUE_CHARS,
};
pub use error::{Field, QrError};
pub use protocol::ids::{DevEui, JoinEui};
