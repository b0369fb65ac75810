//! Role-typed 128-bit keys and the message integrity code.
//!
//! One type per key role (LoRaWAN 1.1 §6.1.1, §6.1.2 and TS002), so a NwkSKey can never be passed
//! where an AppSKey is expected. Every key type:
//! - has no `Default` and no `Display`, and a redacted `Debug`;
//! - is zeroized on drop;
//! - yields its bytes only through an explicit [`expose`](AppKey::expose) call;
//! - compares in constant time.
//!
//! Keys are plain 16-byte strings and are never byte-reversed (protocol-notes A.0).

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

pub use crate::crypto::Mic;

/// Why a key could not be parsed from hex. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyParseError {
    /// The text is not 32 hex digits.
    #[error("{role}: expected 32 hex digits, found {found} characters")]
    Length {
        /// The key role, e.g. `AppKey`.
        role: &'static str,
        /// Characters found after an optional `0x` prefix and surrounding whitespace.
        found: usize,
    },
    /// A character is not a hex digit. The character itself is not reported, since it is part
    /// of a secret.
    #[error("{role}: invalid hex digit at position {position}")]
    Digit {
        /// The key role.
        role: &'static str,
        /// 0-based position after an optional `0x` prefix.
        position: usize,
    },
}

macro_rules! key_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Zeroize, ZeroizeOnDrop)]
        pub struct $name([u8; 16]);

        impl $name {
            /// The key role's name, as used in error messages and TS002.
            pub const ROLE: &'static str = stringify!($name);

            /// Wraps 16 key bytes.
            pub const fn new(bytes: [u8; 16]) -> Self {
                Self(bytes)
            }
            /// The key bytes. Call sites are where secrets leave the type: keep them few.
            pub const fn expose(&self) -> &[u8; 16] {
                &self.0
            }
        }

        impl private::Sealed for $name {}

        impl Key128 for $name {
            const ROLE: &'static str = stringify!($name);
            fn new(bytes: [u8; 16]) -> Self {
                Self(bytes)
            }
            fn expose(&self) -> &[u8; 16] {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }

        impl PartialEq for $name {
            /// Constant-time comparison.
            fn eq(&self, other: &Self) -> bool {
                self.0.ct_eq(&other.0).into()
            }
        }
        impl Eq for $name {}

        impl FromStr for $name {
            type Err = KeyParseError;
            /// Parses 32 hex digits (case-insensitive, optional `0x`, surrounding whitespace
            /// ignored, as in a key file).
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_key_hex(Self::ROLE, s).map(Self)
            }
        }
    };
}

mod private {
    /// Only the key types of this module implement [`super::Key128`].
    pub trait Sealed {}
}

/// A 128-bit key of one role: what generic code (key wrap, prepared ciphers) needs to know
/// about every key type of this module. Sealed: only this module's key types implement it.
pub trait Key128: private::Sealed + Sized {
    /// The key role's name, e.g. `AppSKey`.
    const ROLE: &'static str;
    /// Wraps 16 key bytes.
    fn new(bytes: [u8; 16]) -> Self;
    /// The key bytes.
    fn expose(&self) -> &[u8; 16];
}

fn parse_key_hex(role: &'static str, s: &str) -> Result<[u8; 16], KeyParseError> {
    let s = s.trim();
    let body = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s)
        .as_bytes();
    if body.len() != 32 {
        return Err(KeyParseError::Length {
            role,
            found: body.len(),
        });
    }
    let mut out = [0u8; 16];
    for (position, c) in body.iter().enumerate() {
        let d = (*c as char)
            .to_digit(16)
            .ok_or(KeyParseError::Digit { role, position })?;
        out[position / 2] = (out[position / 2] << 4) | d as u8;
    }
    Ok(out)
}

key_type!(
    /// The root key of a LoRaWAN 1.0.x device, and the application root key of a 1.1 device.
    /// Held only by the join server.
    AppKey
);
key_type!(
    /// The network root key of a LoRaWAN 1.1 device. Held only by the join server.
    NwkKey
);
key_type!(
    /// The LoRaWAN 1.0.x network session key (equivalent to the three 1.1 network keys).
    NwkSKey
);
key_type!(
    /// LoRaWAN 1.1 forwarding network session integrity key.
    FNwkSIntKey
);
key_type!(
    /// LoRaWAN 1.1 serving network session integrity key.
    SNwkSIntKey
);
key_type!(
    /// LoRaWAN 1.1 network session encryption key (FOpts and FPort 0).
    NwkSEncKey
);
key_type!(
    /// The application session key.
    AppSKey
);
key_type!(
    /// LoRaWAN 1.1 join server integrity key (Join-accept MIC with OptNeg, Rejoin type 1 MIC).
    JsIntKey
);
key_type!(
    /// LoRaWAN 1.1 join server encryption key (Join-accept answering a Rejoin-request).
    JsEncKey
);
key_type!(
    /// A key-encryption key (RFC 3394) for TS002 KeyEnvelopes.
    Kek
);
key_type!(
    /// The per-peer key that authenticates datagrams on the join server ↔ network server link
    /// (AES-CMAC tag, see [`crate::link`]). Read from `secrets/link.key`.
    LinkKey
);

/// A key of role `K` with its AES-128 key schedule expanded once, for every AES/CMAC operation
/// done with that key.
///
/// A join uses its root key up to five times (Join-request MIC, two or four derivations,
/// Join-accept MIC, Join-accept encryption): prepare the key once per join with
/// [`KeyCipher::new`] and pass it to each step. The role stays in the type, so a
/// `KeyCipher<NwkKey>` cannot be used where a `KeyCipher<AppKey>` is expected. The round keys are
/// zeroized on drop and never shown by `Debug`.
pub struct KeyCipher<K> {
    pub(crate) schedule: crate::crypto::KeySchedule,
    role: PhantomData<fn() -> K>,
}

impl<K: Key128> KeyCipher<K> {
    /// Expands `key`.
    pub fn new(key: &K) -> Self {
        Self {
            schedule: crate::crypto::KeySchedule::new(key.expose()),
            role: PhantomData,
        }
    }
}

impl<K> Clone for KeyCipher<K> {
    fn clone(&self) -> Self {
        Self {
            schedule: self.schedule.clone(),
            role: PhantomData,
        }
    }
}

impl<K: Key128> fmt::Debug for KeyCipher<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyCipher<{}>(<redacted>)", K::ROLE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let k: AppKey = "2B7E151628AED2A6ABF7158809CF4F3C".parse().unwrap();
        let shown = format!("{k:?}");
        assert_eq!(shown, "AppKey(<redacted>)");
        assert!(!shown.to_lowercase().contains("2b7e"));
    }

    #[test]
    fn parses_key_files_and_reports_without_leaking() {
        let k: NwkKey = " 0x2b7e151628aed2a6abf7158809cf4f3c\n".parse().unwrap();
        assert_eq!(k.expose()[0], 0x2B);
        assert_eq!(k.expose()[15], 0x3C);
        let e = "2B7E151628AED2A6ABF7158809CF4F3Z"
            .parse::<AppSKey>()
            .unwrap_err();
        assert_eq!(
            e,
            KeyParseError::Digit {
                role: "AppSKey",
                position: 31
            }
        );
        assert!(!e.to_string().contains('Z'));
        assert_eq!(
            "00".parse::<Kek>().unwrap_err().to_string(),
            "Kek: expected 32 hex digits, found 2 characters"
        );
    }

    #[test]
    fn key_cipher_debug_is_redacted_and_generic_role() {
        fn role<K: Key128>(_: &K) -> &'static str {
            K::ROLE
        }
        let k = JsIntKey::new([0x2b; 16]);
        assert_eq!(role(&k), "JsIntKey");
        assert_eq!(<AppSKey as Key128>::new([7; 16]).expose(), &[7; 16]);
        let c = KeyCipher::new(&k);
        assert_eq!(format!("{c:?}"), "KeyCipher<JsIntKey>(<redacted>)");
    }

    #[test]
    fn equality() {
        assert_eq!(AppKey::new([1; 16]), AppKey::new([1; 16]));
        assert_ne!(AppKey::new([1; 16]), AppKey::new([2; 16]));
        assert_eq!(Mic([1, 2, 3, 4]), Mic([1, 2, 3, 4]));
        assert_ne!(Mic([1, 2, 3, 4]), Mic([1, 2, 3, 5]));
    }
}
