//! Hex strings in JSON, as TS002 uses them: written lowercase, read case-insensitively with an
//! optional `0x` prefix (TTS writes uppercase, brocaar and ChirpStack lowercase).

use serde::{Deserialize, Deserializer, Serializer};

/// The text is not an even-length hex string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HexError {
    /// Odd number of hex digits.
    #[error("odd number of hex digits ({0})")]
    OddLength(usize),
    /// A character that is not a hex digit.
    #[error("invalid hex digit {found:?} at position {position}")]
    Digit {
        /// 0-based position after an optional `0x`.
        position: usize,
        /// The character found.
        found: char,
    },
}

/// Decodes hex case-insensitively, accepting an optional `0x`/`0X` prefix.
pub fn decode(s: &str) -> Result<Vec<u8>, HexError> {
    let body = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    // Decoded by the `hex` crate into a buffer of the final size: one allocation (collecting
    // through a fallible iterator grew the vector from nothing, a copy at each doubling).
    let mut out = vec![0; body.len() / 2];
    match hex::decode_to_slice(body, &mut out) {
        Ok(()) => Ok(out),
        Err(hex::FromHexError::InvalidHexCharacter { c, index }) => Err(HexError::Digit {
            position: index,
            found: c,
        }),
        Err(_) => Err(HexError::OddLength(body.len())),
    }
}

/// Serde `with` module for `Vec<u8>` fields carried as hex strings.
pub mod bytes {
    use super::*;

    /// Writes lowercase hex.
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    /// Reads hex case-insensitively, with an optional `0x`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        decode(&s).map_err(serde::de::Error::custom)
    }
}

/// Serde `with` module for optional `Vec<u8>` fields carried as hex strings. Pair it with
/// `#[serde(default, skip_serializing_if = "Option::is_none")]`; a JSON `null` reads as `None`.
pub mod opt_bytes {
    use super::*;

    /// Writes lowercase hex (`None` as `null`, normally skipped by the field attribute).
    pub fn serialize<S: Serializer, B: AsRef<[u8]>>(
        v: &Option<B>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&hex::encode(v)),
            None => s.serialize_none(),
        }
    }

    /// Reads hex case-insensitively, with an optional `0x`; `null` is `None`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let s = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?;
        s.map(|s| decode(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Digit by digit, as `decode` read hex before it used the `hex` crate.
    fn by_digit(s: &str) -> Result<Vec<u8>, HexError> {
        let body = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .unwrap_or(s);
        let bytes = body.as_bytes();
        if bytes.len() % 2 != 0 {
            return Err(HexError::OddLength(bytes.len()));
        }
        let digit = |position: usize| -> Result<u8, HexError> {
            let c = bytes[position] as char;
            c.to_digit(16)
                .map(|d| d as u8)
                .ok_or(HexError::Digit { position, found: c })
        };
        (0..bytes.len() / 2)
            .map(|i| Ok((digit(2 * i)? << 4) | digit(2 * i + 1)?))
            .collect()
    }

    proptest::proptest! {
        #[test]
        fn decode_reads_any_text_as_digit_by_digit_reading_did(s in "(0[xX])?[0-9a-fA-FgG é]{0,40}") {
            proptest::prop_assert_eq!(decode(&s), by_digit(&s));
        }

        #[test]
        fn decode_reads_back_what_serialize_writes(v in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            proptest::prop_assert_eq!(decode(&hex::encode(&v)).unwrap(), v);
        }
    }

    #[test]
    fn decodes_both_cases_and_prefix() {
        assert_eq!(decode("0xA0b1").unwrap(), vec![0xA0, 0xB1]);
        assert_eq!(decode("").unwrap(), Vec::<u8>::new());
        assert_eq!(decode("abc"), Err(HexError::OddLength(3)));
        assert_eq!(
            decode("0g"),
            Err(HexError::Digit {
                position: 1,
                found: 'g'
            })
        );
    }
}
