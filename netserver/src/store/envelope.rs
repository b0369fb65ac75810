//! Key envelopes as a live session holds them: inline, the label interned, zeroized on drop,
//! and the AppSKey opened with the application server's KEK when this server is given it.

use std::sync::Arc;

use protocol::keys::AppSKey;
use protocol::keywrap::{KeyEnvelope, KeyWrapError, WRAPPED_KEY_LEN};
use zeroize::Zeroize;

use crate::keys::LabeledKek;
use crate::store::labels::KekLabels;

/// A TS002 KeyEnvelope as a live session holds it: the `KEKLabel` interned (a server knows a
/// handful of KEKs, so every session shares one `Arc<str>` per label) and the `AESKey` inline,
/// so an envelope costs no heap allocation of its own.
///
/// `Debug` never shows the key; the bytes are zeroized on drop (a clear envelope holds a key).
#[derive(Clone, PartialEq, Eq)]
pub struct InlineEnvelope {
    /// The KEKLabel, interned; empty for a key in clear (as on the wire). Not an `Option`:
    /// the `Arc`'s non-null pointer then leaves `Option<InlineEnvelope>` without a tag of its
    /// own, 8 bytes less per session.
    pub(crate) kek_label: Arc<str>,
    /// The RFC 3394 wrap of the key, or the key in clear in the first 16 bytes.
    aes_key: [u8; WRAPPED_KEY_LEN],
}

impl InlineEnvelope {
    /// From a received or stored envelope: a 24-byte wrap under a named KEK, or a 16-byte key in
    /// clear under an empty label. Anything else is refused (no 128-bit key has another form).
    pub fn new(env: &KeyEnvelope, labels: &KekLabels) -> Result<Self, KeyWrapError> {
        let expected = if env.kek_label.is_empty() {
            16
        } else {
            WRAPPED_KEY_LEN
        };
        let kek_label = labels.intern(&env.kek_label);
        if env.aes_key.len() != expected {
            return Err(KeyWrapError::KeyLength {
                role: AppSKey::ROLE,
                expected,
                found: env.aes_key.len(),
            });
        }
        let mut aes_key = [0u8; WRAPPED_KEY_LEN];
        aes_key[..expected].copy_from_slice(&env.aes_key);
        Ok(Self { kek_label, aes_key })
    }

    /// The KEKLabel ("" for a key in clear).
    pub fn kek_label(&self) -> &str {
        &self.kek_label
    }

    /// Whether the key is in clear (no KEKLabel).
    fn is_clear(&self) -> bool {
        self.kek_label.is_empty()
    }

    /// The TS002 form, byte for byte the envelope it was made from.
    pub fn to_envelope(&self) -> KeyEnvelope {
        let len = if self.is_clear() { 16 } else { WRAPPED_KEY_LEN };
        KeyEnvelope {
            kek_label: self.kek_label().to_owned(),
            aes_key: self.aes_key[..len].to_vec(),
        }
    }

    /// Opens the AppSKey with `as_kek` (the label must name it), or reads it when in clear.
    /// `None` when this server cannot open it: it then forwards payloads still encrypted.
    pub fn open_app_s_key(&self, as_kek: Option<&LabeledKek>) -> Option<AppSKey> {
        match (self.is_clear(), as_kek) {
            (true, _) => {
                let mut k = [0u8; 16];
                k.copy_from_slice(&self.aes_key[..16]);
                let key = AppSKey::new(k);
                k.zeroize();
                Some(key)
            }
            (false, Some(kek)) if *self.kek_label == *kek.label => {
                protocol::keywrap::unwrap_key(&kek.key, &self.aes_key).ok()
            }
            _ => None,
        }
    }
}

impl Drop for InlineEnvelope {
    fn drop(&mut self) {
        self.aes_key.zeroize();
    }
}

impl std::fmt::Debug for InlineEnvelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineEnvelope")
            .field("kek_label", &self.kek_label())
            .field("aes_key", &"<redacted>")
            .finish()
    }
}
