//! LoRaWAN MAC versions and the rules that differ between them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A LoRaWAN MAC layer version, as named in TS002 `MACVersion`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum MacVersion {
    /// LoRaWAN 1.0.0.
    V1_0_0,
    /// LoRaWAN 1.0.1.
    V1_0_1,
    /// LoRaWAN 1.0.2.
    V1_0_2,
    /// LoRaWAN 1.0.3.
    V1_0_3,
    /// LoRaWAN 1.0.4 (TS001-1.0.4).
    V1_0_4,
    /// LoRaWAN 1.1.
    V1_1,
}

/// The text is not a MAC version this implementation knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown LoRaWAN MAC version {0:?} (expected 1.0, 1.0.1, 1.0.2, 1.0.3, 1.0.4 or 1.1)")]
pub struct UnknownMacVersion(pub String);

impl MacVersion {
    /// Every version, oldest first.
    pub const ALL: [Self; 6] = [
        Self::V1_0_0,
        Self::V1_0_1,
        Self::V1_0_2,
        Self::V1_0_3,
        Self::V1_0_4,
        Self::V1_1,
    ];

    /// The TS002 spelling: "1.0", "1.0.1", …, "1.1".
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::V1_0_0 => "1.0",
            Self::V1_0_1 => "1.0.1",
            Self::V1_0_2 => "1.0.2",
            Self::V1_0_3 => "1.0.3",
            Self::V1_0_4 => "1.0.4",
            Self::V1_1 => "1.1",
        }
    }
    /// LoRaWAN 1.1: separate NwkKey, three network session keys, OptNeg.
    pub const fn is_1_1(self) -> bool {
        matches!(self, Self::V1_1)
    }
    /// DevNonce is a counter that must strictly increase (1.0.4 and 1.1); before 1.0.4 it is
    /// random and only reuse is refused (protocol-notes A.3).
    pub const fn dev_nonce_is_counter(self) -> bool {
        matches!(self, Self::V1_0_4 | Self::V1_1)
    }
    /// MAX_FCNT_GAP (16384) applies up to 1.0.3 and was removed in 1.0.4 (protocol-notes A.8).
    pub const fn has_max_fcnt_gap(self) -> bool {
        !matches!(self, Self::V1_0_4 | Self::V1_1)
    }
}

impl fmt::Display for MacVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MacVersion {
    type Err = UnknownMacVersion;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim() {
            "1.0" | "1.0.0" => Self::V1_0_0,
            "1.0.1" => Self::V1_0_1,
            "1.0.2" => Self::V1_0_2,
            "1.0.3" => Self::V1_0_3,
            "1.0.4" => Self::V1_0_4,
            "1.1" | "1.1.0" => Self::V1_1,
            other => return Err(UnknownMacVersion(other.to_owned())),
        })
    }
}

impl Serialize for MacVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for MacVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rules() {
        for v in MacVersion::ALL {
            assert_eq!(v.as_str().parse::<MacVersion>().unwrap(), v);
        }
        assert!(!MacVersion::V1_0_3.dev_nonce_is_counter());
        assert!(MacVersion::V1_0_4.dev_nonce_is_counter());
        assert!(MacVersion::V1_0_3.has_max_fcnt_gap());
        assert!(!MacVersion::V1_1.has_max_fcnt_gap());
        assert_eq!(
            "1.2".parse::<MacVersion>().unwrap_err().to_string(),
            "unknown LoRaWAN MAC version \"1.2\" (expected 1.0, 1.0.1, 1.0.2, 1.0.3, 1.0.4 or 1.1)"
        );
    }
}
