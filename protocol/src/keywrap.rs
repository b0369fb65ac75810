//! RFC 3394 AES key wrap and the TS002 KeyEnvelope.

use std::fmt;

use aes_kw::{KekAes128, KekAes192, KekAes256};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::keys::{Kek, Key128};

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

/// A key-encryption key and the `KEKLabel` that names it in TS002 KeyEnvelopes.
///
/// `Debug` shows the label only.
#[derive(Clone)]
pub struct LabeledKek {
    /// The `KEKLabel`.
    pub label: String,
    /// The key.
    pub key: Kek,
}

impl fmt::Debug for LabeledKek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LabeledKek")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl LabeledKek {
    /// Parses a KEK file as `joinserver init` writes `ns.kek` and `as.kek` for both servers:
    /// TOML with `label = "…"` (the KEKLabel, not empty) and `key = "<32 hex digits>"`.
    /// The error says what is wrong and never contains the key.
    pub fn from_file_text(text: &str) -> Result<Self, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct KekFile {
            label: String,
            key: String,
        }
        let f: KekFile = toml::from_str(text).map_err(|e| {
            format!(
                "expected `label = \"…\"` and `key = \"<32 hex>\"`: {}",
                e.message()
            )
        })?;
        if f.label.trim().is_empty() {
            return Err("the label is empty".to_owned());
        }
        let key_text = Zeroizing::new(f.key);
        let key = key_text
            .parse()
            .map_err(|e: crate::keys::KeyParseError| e.to_string())?;
        Ok(Self {
            label: f.label,
            key,
        })
    }
}

/// Length of an RFC 3394 wrapped 128-bit key.
pub const WRAPPED_KEY_LEN: usize = 24;

/// The RFC 3394 integrity check value (default IV).
const IV_LEN: usize = 8;

/// Why a key could not be wrapped, unwrapped, sealed or opened. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyWrapError {
    /// The KEK is not 16, 24 or 32 bytes.
    #[error("KEK must be 16, 24 or 32 bytes, found {0}")]
    KekLength(usize),
    /// The key data to wrap is not a multiple of 8 bytes of at least 16 bytes.
    #[error("key data must be a multiple of 8 bytes and at least 16, found {0}")]
    DataLength(usize),
    /// The ciphertext to unwrap is not a multiple of 8 bytes of at least 24 bytes.
    #[error("wrapped key must be a multiple of 8 bytes and at least 24, found {0}")]
    CiphertextLength(usize),
    /// The unwrapped IV is not A6A6A6A6A6A6A6A6: wrong KEK or altered ciphertext.
    #[error("key unwrap integrity check failed (wrong KEK or altered data)")]
    Integrity,
    /// The envelope does not hold a 128-bit key: `AESKey` is not 16 bytes in clear or 24 wrapped.
    #[error("{role}: envelope holds {found} bytes, expected {expected}")]
    KeyLength {
        /// The key role expected.
        role: &'static str,
        /// 16 (clear) or 24 (wrapped).
        expected: usize,
        /// Bytes found.
        found: usize,
    },
    /// The envelope names a KEK but none was given.
    #[error("envelope is wrapped under KEK {0:?} but no KEK was given")]
    MissingKek(String),
    /// A KEK was given for a clear envelope (empty label): refused, so a caller that meant to
    /// wrap never sends a key in clear by mistake.
    #[error("a KEK was given but the KEK label is empty (clear key)")]
    UnexpectedKek,
}

impl KeyWrapError {
    /// A short stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::KekLength(_) => "kek_length",
            Self::DataLength(_) => "data_length",
            Self::CiphertextLength(_) => "ciphertext_length",
            Self::Integrity => "integrity",
            Self::KeyLength { .. } => "key_length",
            Self::MissingKek(_) => "missing_kek",
            Self::UnexpectedKek => "unexpected_kek",
        }
    }
}

fn map_kw(e: aes_kw::Error, len: usize, wrapping: bool) -> KeyWrapError {
    match e {
        aes_kw::Error::IntegrityCheckFailed => KeyWrapError::Integrity,
        aes_kw::Error::InvalidKekSize { size } => KeyWrapError::KekLength(size),
        _ if wrapping => KeyWrapError::DataLength(len),
        _ => KeyWrapError::CiphertextLength(len),
    }
}

/// RFC 3394 key wrap (default IV A6A6A6A6A6A6A6A6) of `key_data` (a multiple of 8 bytes, at least
/// 16) under a 128-, 192- or 256-bit `kek`. The output is 8 bytes longer than the input.
pub fn wrap(kek: &[u8], key_data: &[u8]) -> Result<Vec<u8>, KeyWrapError> {
    // aes-kw 0.2 accepts a single 64-bit block, which RFC 3394 §2 does not (n >= 2).
    if key_data.len() < 16 || key_data.len() % 8 != 0 {
        return Err(KeyWrapError::DataLength(key_data.len()));
    }
    let mut out = vec![0u8; key_data.len() + IV_LEN];
    let r = match kek.len() {
        16 => KekAes128::try_from(kek).and_then(|k| k.wrap(key_data, &mut out)),
        24 => KekAes192::try_from(kek).and_then(|k| k.wrap(key_data, &mut out)),
        32 => KekAes256::try_from(kek).and_then(|k| k.wrap(key_data, &mut out)),
        n => return Err(KeyWrapError::KekLength(n)),
    };
    r.map_err(|e| map_kw(e, key_data.len(), true))?;
    Ok(out)
}

/// RFC 3394 key unwrap under a 128-, 192- or 256-bit `kek`. Fails with
/// [`KeyWrapError::Integrity`] unless the recovered IV is A6A6A6A6A6A6A6A6. The key data is
/// returned in a buffer that is zeroized on drop.
pub fn unwrap(kek: &[u8], ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyWrapError> {
    if ciphertext.len() < 24 || ciphertext.len() % 8 != 0 {
        return Err(KeyWrapError::CiphertextLength(ciphertext.len()));
    }
    let mut out = Zeroizing::new(vec![0u8; ciphertext.len() - IV_LEN]);
    let r = match kek.len() {
        16 => KekAes128::try_from(kek).and_then(|k| k.unwrap(ciphertext, &mut out)),
        24 => KekAes192::try_from(kek).and_then(|k| k.unwrap(ciphertext, &mut out)),
        32 => KekAes256::try_from(kek).and_then(|k| k.unwrap(ciphertext, &mut out)),
        n => return Err(KeyWrapError::KekLength(n)),
    };
    // On failure `out` holds unauthenticated bytes; it is zeroized when dropped here.
    r.map_err(|e| map_kw(e, ciphertext.len(), false))?;
    Ok(out)
}

/// Wraps a 128-bit key of any role under a KEK: 24 bytes.
pub fn wrap_key<K: Key128>(kek: &Kek, key: &K) -> [u8; WRAPPED_KEY_LEN] {
    let mut out = [0u8; WRAPPED_KEY_LEN];
    // Sizes are fixed by the types (16-byte KEK, 16-byte key, 24-byte output), so aes-kw's
    // length errors cannot occur; `wrap` has no other error.
    let _ = KekAes128::from(*kek.expose()).wrap(key.expose(), &mut out);
    out
}

/// Unwraps a 128-bit key of role `K` from its 24-byte wrap under a KEK.
pub fn unwrap_key<K: Key128>(kek: &Kek, wrapped: &[u8]) -> Result<K, KeyWrapError> {
    if wrapped.len() != WRAPPED_KEY_LEN {
        return Err(KeyWrapError::KeyLength {
            role: K::ROLE,
            expected: WRAPPED_KEY_LEN,
            found: wrapped.len(),
        });
    }
    let mut out = Zeroizing::new([0u8; 16]);
    KekAes128::from(*kek.expose())
        .unwrap(wrapped, out.as_mut_slice())
        .map_err(|e| map_kw(e, wrapped.len(), false))?;
    Ok(K::new(*out))
}

impl KeyEnvelope {
    /// Seals `key` into an envelope: wrapped under `kek` and labelled `label`, or in clear when
    /// `label` is empty and `kek` is `None`. A label without a KEK, or a KEK without a label, is
    /// refused rather than guessed.
    pub fn seal<K: Key128>(label: &str, kek: Option<&Kek>, key: &K) -> Result<Self, KeyWrapError> {
        match (label.is_empty(), kek) {
            (true, None) => Ok(Self {
                kek_label: String::new(),
                aes_key: key.expose().to_vec(),
            }),
            (false, Some(kek)) => Ok(Self {
                kek_label: label.to_owned(),
                aes_key: wrap_key(kek, key).to_vec(),
            }),
            (true, Some(_)) => Err(KeyWrapError::UnexpectedKek),
            (false, None) => Err(KeyWrapError::MissingKek(label.to_owned())),
        }
    }

    /// Opens the envelope as a key of role `K`: in clear when the label is empty (then `kek`
    /// must be `None`), otherwise unwrapped with `kek`, the KEK the caller found for
    /// `kek_label`.
    pub fn open<K: Key128>(&self, kek: Option<&Kek>) -> Result<K, KeyWrapError> {
        match (self.kek_label.is_empty(), kek) {
            (true, None) => {
                let bytes: [u8; 16] =
                    self.aes_key
                        .as_slice()
                        .try_into()
                        .map_err(|_| KeyWrapError::KeyLength {
                            role: K::ROLE,
                            expected: 16,
                            found: self.aes_key.len(),
                        })?;
                Ok(K::new(bytes))
            }
            (false, Some(kek)) => unwrap_key(kek, &self.aes_key),
            (true, Some(_)) => Err(KeyWrapError::UnexpectedKek),
            (false, None) => Err(KeyWrapError::MissingKek(self.kek_label.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{AppSKey, NwkSKey};

    #[test]
    fn seal_and_open_refuse_mismatched_label_and_kek() {
        let kek = Kek::new([8; 16]);
        let key = AppSKey::new([1; 16]);
        assert_eq!(
            KeyEnvelope::seal("", Some(&kek), &key).unwrap_err().kind(),
            "unexpected_kek"
        );
        assert_eq!(
            KeyEnvelope::seal("as-kek", None, &key).unwrap_err().kind(),
            "missing_kek"
        );
        let clear = KeyEnvelope::seal("", None, &key).unwrap();
        assert_eq!(clear.aes_key, vec![1; 16]);
        assert_eq!(clear.open::<AppSKey>(None).unwrap(), key);
        assert_eq!(
            clear.open::<AppSKey>(Some(&kek)).unwrap_err().kind(),
            "unexpected_kek"
        );
        let wrapped = KeyEnvelope::seal("as-kek", Some(&kek), &key).unwrap();
        assert_eq!(wrapped.aes_key.len(), 24);
        assert_eq!(
            wrapped.open::<AppSKey>(None).unwrap_err(),
            KeyWrapError::MissingKek("as-kek".into())
        );
        assert_eq!(wrapped.open::<AppSKey>(Some(&kek)).unwrap(), key);
        assert_eq!(
            wrapped
                .open::<NwkSKey>(Some(&Kek::new([9; 16])))
                .unwrap_err()
                .kind(),
            "integrity"
        );
        let short = KeyEnvelope {
            kek_label: String::new(),
            aes_key: vec![0; 15],
        };
        let e = short.open::<AppSKey>(None).unwrap_err();
        assert_eq!(e.kind(), "key_length");
        assert_eq!(
            e.to_string(),
            "AppSKey: envelope holds 15 bytes, expected 16"
        );
        let long = KeyEnvelope {
            kek_label: "x".into(),
            aes_key: vec![0; 32],
        };
        assert_eq!(
            long.open::<AppSKey>(Some(&kek)).unwrap_err().kind(),
            "key_length"
        );
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let e = KeyEnvelope::seal("", None, &AppSKey::new([0xAB; 16])).unwrap();
        let shown = format!("{e:?}");
        assert!(!shown.to_lowercase().contains("abab"), "{shown}");
    }
}
