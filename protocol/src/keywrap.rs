//! RFC 3394 AES key wrap and the TS002 KeyEnvelope.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A TS002 `KeyEnvelope {KEKLabel, AESKey}`.
///
/// With an empty `KEKLabel` the `AESKey` is the plain 16-byte key; otherwise it is the 24-byte
/// RFC 3394 wrap of the key under the KEK that the label names. `Debug` never shows `AESKey`,
/// since it may be a key in clear.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEnvelope {
    /// Names the KEK the key is wrapped under; empty when the key is in clear.
    #[serde(rename = "KEKLabel", default)]
    pub kek_label: String,
    /// The wrapped key (24 bytes), or the key in clear (16 bytes) when `kek_label` is empty.
    #[serde(rename = "AESKey", with = "crate::hexser::bytes")]
    pub aes_key: Vec<u8>,
}

impl fmt::Debug for KeyEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyEnvelope")
            .field("kek_label", &self.kek_label)
            .field("aes_key", &format_args!("<{} bytes>", self.aes_key.len()))
            .finish()
    }
}
