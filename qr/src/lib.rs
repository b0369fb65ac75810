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
//!   [`labels`] prints one label per device of a join-server manifest.
//!
//! The format, the strictness decisions and the CLI are described in `docs/qr.md`.
#![warn(missing_docs)]

mod code;
pub mod decode;
mod error;
mod font;
pub mod labels;
pub mod render;

pub use code::{
    checksum, parse, parse_bytes, ChecksumMode, DeviceCode, ExtensionValue, Parsed, ProfileId,
    Schema, UnknownExtension, VALUE_CHARS,
};
pub use error::{Field, QrError};
pub use protocol::ids::{DevEui, JoinEui};
