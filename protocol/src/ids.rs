//! Identifiers: EUIs, DevAddr, NetID and the join nonces.
//!
//! Every identifier is a newtype over an integer whose *numeric* value is the MSB-first reading
//! people print on labels, in TS002 JSON and in TR005 QR codes. On air every multi-byte field is
//! little-endian (protocol-notes A.0), so each type has explicit `from_le_bytes`/`to_le_bytes`
//! for the wire and `Display`/`FromStr`/serde for the MSB-first hex form. Hex parsing is
//! case-insensitive and accepts an optional `0x` prefix; display is uppercase.
//!
//! The GWMP gateway EUI is the one identifier sent MSB-first (`to_be_bytes`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a hex identifier could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdParseError {
    /// The text has the wrong number of hex digits.
    #[error("{what}: expected {expected} hex digits, found {found}")]
    Length {
        /// The identifier being parsed, e.g. `DevEUI`.
        what: &'static str,
        /// Number of hex digits required.
        expected: usize,
        /// Number of characters found (after an optional `0x`).
        found: usize,
    },
    /// A character is not a hex digit.
    #[error("{what}: invalid hex digit {found:?} at position {position}")]
    Digit {
        /// The identifier being parsed.
        what: &'static str,
        /// 0-based character position in the text after an optional `0x`.
        position: usize,
        /// The offending character.
        found: char,
    },
    /// A numeric value is out of the identifier's range.
    #[error("{what}: value {value} is out of range (maximum {max})")]
    Range {
        /// The identifier being parsed.
        what: &'static str,
        /// The value found.
        value: u64,
        /// The largest allowed value.
        max: u64,
    },
}

/// Parses exactly `digits` hex digits (case-insensitive, optional `0x`) into an integer.
pub(crate) fn parse_hex_u64(
    what: &'static str,
    s: &str,
    digits: usize,
) -> Result<u64, IdParseError> {
    let body = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    let found = body.chars().count();
    if found != digits {
        return Err(IdParseError::Length {
            what,
            expected: digits,
            found,
        });
    }
    let mut value = 0u64;
    for (position, c) in body.chars().enumerate() {
        let d = c.to_digit(16).ok_or(IdParseError::Digit {
            what,
            position,
            found: c,
        })?;
        value = (value << 4) | u64::from(d);
    }
    Ok(value)
}

/// The constructors and on-air form shared by the 24-bit values (NetID, JoinNonce): a `u32` that
/// never exceeds 2^24 − 1, sent as 3 little-endian bytes.
macro_rules! u24_value {
    ($name:ident, $what:literal) => {
        impl $name {
            #[doc = concat!("The largest ", $what, " (2^24 − 1).")]
            pub const MAX: u32 = 0x00FF_FFFF;

            #[doc = concat!("The ", $what, " from its numeric value, or `None` if it does not fit in 24 bits.")]
            pub const fn new(value: u32) -> Option<Self> {
                if value <= Self::MAX {
                    Some(Self(value))
                } else {
                    None
                }
            }
            /// The 24-bit numeric value.
            pub const fn as_u32(self) -> u32 {
                self.0
            }
            /// From the 3 little-endian bytes sent on air.
            pub const fn from_le_bytes(b: [u8; 3]) -> Self {
                Self(u32::from_le_bytes([b[0], b[1], b[2], 0]))
            }
            /// The 3 little-endian bytes sent on air.
            pub const fn to_le_bytes(self) -> [u8; 3] {
                let b = self.0.to_le_bytes();
                [b[0], b[1], b[2]]
            }
        }
    };
}

/// Implements Display (uppercase MSB-first hex), FromStr and serde-as-hex-string.
macro_rules! hex_id {
    ($name:ident, $inner:ty, $digits:expr, $what:expr) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:0width$X}", self.0, width = $digits)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                // The digit count bounds the value, so the narrowing cast cannot truncate.
                parse_hex_u64($what, s, $digits).map(|v| Self(v as $inner))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// Defines a 64-bit EUI newtype.
macro_rules! eui64 {
    ($(#[$doc:meta])* $name:ident, $what:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(u64);

        impl $name {
            /// The EUI from its numeric (MSB-first) value.
            pub const fn new(value: u64) -> Self {
                Self(value)
            }
            /// The numeric (MSB-first) value.
            pub const fn as_u64(self) -> u64 {
                self.0
            }
            /// From the 8 little-endian bytes sent on air.
            pub const fn from_le_bytes(b: [u8; 8]) -> Self {
                Self(u64::from_le_bytes(b))
            }
            /// The 8 little-endian bytes sent on air.
            pub const fn to_le_bytes(self) -> [u8; 8] {
                self.0.to_le_bytes()
            }
            /// From 8 bytes in printed (MSB-first) order.
            pub const fn from_be_bytes(b: [u8; 8]) -> Self {
                Self(u64::from_be_bytes(b))
            }
            /// The 8 bytes in printed (MSB-first) order.
            pub const fn to_be_bytes(self) -> [u8; 8] {
                self.0.to_be_bytes()
            }
        }

        hex_id!($name, u64, 16, $what);
    };
}

eui64!(
    /// The end-device's globally unique identifier (DevEUI).
    DevEui,
    "DevEUI"
);
eui64!(
    /// The Join Server identifier (JoinEUI; "AppEUI" in LoRaWAN 1.0.x).
    JoinEui,
    "JoinEUI"
);
eui64!(
    /// A gateway's identifier. Sent MSB-first in GWMP datagrams: use the `be` conversions there.
    GatewayEui,
    "GatewayEUI"
);

/// A LoRaWAN network identifier: 24 bits, of which the top 3 are the NetID type.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetId(u32);

u24_value!(NetId, "NetID");

impl NetId {
    /// The NetID type (0..=7): its 3 most significant bits.
    pub const fn net_type(self) -> u8 {
        (self.0 >> 21) as u8
    }
    /// The number of NwkID bits a DevAddr of this NetID type carries (LoRaWAN Backend
    /// Interfaces 1.0, table 3).
    pub const fn nwk_id_bits(self) -> u32 {
        match self.net_type() {
            0 | 1 => 6,
            2 => 9,
            3 => 11,
            4 => 12,
            5 => 13,
            6 => 15,
            _ => 17,
        }
    }
    /// The NwkID: the least significant `nwk_id_bits` of the NetID.
    pub const fn nwk_id(self) -> u32 {
        self.0 & ((1 << self.nwk_id_bits()) - 1)
    }
    /// The DevAddr prefix of this network: `(prefix, mask)` such that a DevAddr `a` belongs to
    /// the network when `a & mask == prefix`.
    pub const fn dev_addr_prefix(self) -> (u32, u32) {
        let t = self.net_type() as u32;
        // Type t is announced by t one-bits followed by a zero: t+1 bits in all.
        let type_bits = t + 1;
        let type_prefix: u32 = ((1u32 << t) - 1) << 1; // t ones then a zero, in type_bits bits
        let head_bits = type_bits + self.nwk_id_bits();
        let head = (type_prefix << self.nwk_id_bits()) | self.nwk_id();
        let shift = 32 - head_bits;
        (head << shift, u32::MAX << shift)
    }
    /// How many NwkAddr bits a DevAddr of this network has.
    pub const fn nwk_addr_bits(self) -> u32 {
        32 - (self.net_type() as u32 + 1) - self.nwk_id_bits()
    }
}

hex_id!(NetId, u32, 6, "NetID");

/// A device address: 32 bits, assigned by the network server at join.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevAddr(u32);

impl DevAddr {
    /// The DevAddr from its numeric (MSB-first) value.
    pub const fn new(value: u32) -> Self {
        Self(value)
    }
    /// The numeric (MSB-first) value.
    pub const fn as_u32(self) -> u32 {
        self.0
    }
    /// From the 4 little-endian bytes sent on air.
    pub const fn from_le_bytes(b: [u8; 4]) -> Self {
        Self(u32::from_le_bytes(b))
    }
    /// The 4 little-endian bytes sent on air.
    pub const fn to_le_bytes(self) -> [u8; 4] {
        self.0.to_le_bytes()
    }
    /// The DevAddr of network `net_id` with the given NwkAddr, or `None` if `nwk_addr` does not
    /// fit in the network's NwkAddr bits.
    pub const fn from_net_id(net_id: NetId, nwk_addr: u32) -> Option<Self> {
        let bits = net_id.nwk_addr_bits();
        if (nwk_addr as u64) >= (1u64 << bits) {
            return None;
        }
        let (prefix, _) = net_id.dev_addr_prefix();
        Some(Self(prefix | nwk_addr))
    }
    /// Whether this address lies in the DevAddr space of `net_id`.
    pub const fn is_in(self, net_id: NetId) -> bool {
        let (prefix, mask) = net_id.dev_addr_prefix();
        self.0 & mask == prefix
    }
}

hex_id!(DevAddr, u32, 8, "DevAddr");

/// The DevNonce of a Join-request: 16 bits, little-endian on air. Random in LoRaWAN 1.0.0–1.0.3,
/// a counter from 1.0.4 on.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DevNonce(pub u16);

impl DevNonce {
    /// From the 2 little-endian bytes sent on air.
    pub const fn from_le_bytes(b: [u8; 2]) -> Self {
        Self(u16::from_le_bytes(b))
    }
    /// The 2 little-endian bytes sent on air.
    pub const fn to_le_bytes(self) -> [u8; 2] {
        self.0.to_le_bytes()
    }
}

impl fmt::Display for DevNonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The JoinNonce (AppNonce in 1.0.x) of a Join-accept: 24 bits, little-endian on air.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct JoinNonce(u32);

u24_value!(JoinNonce, "JoinNonce");

impl TryFrom<u32> for JoinNonce {
    type Error = IdParseError;
    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Self::new(value).ok_or(IdParseError::Range {
            what: "JoinNonce",
            value: u64::from(value),
            max: u64::from(Self::MAX),
        })
    }
}

impl From<JoinNonce> for u32 {
    fn from(n: JoinNonce) -> u32 {
        n.0
    }
}

impl fmt::Display for JoinNonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eui_wire_is_little_endian_and_display_msb_first() {
        let e: JoinEui = "0102030405060708".parse().unwrap();
        assert_eq!(e.to_le_bytes(), [8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(e.to_be_bytes(), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(e.to_string(), "0102030405060708");
        assert_eq!(JoinEui::from_le_bytes([8, 7, 6, 5, 4, 3, 2, 1]), e);
    }

    #[test]
    fn hex_parsing_is_case_insensitive_with_optional_0x() {
        let a: DevEui = "0xaabbccddeeff0011".parse().unwrap();
        let b: DevEui = "AABBCCDDEEFF0011".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "AABBCCDDEEFF0011");
        let d: DevAddr = "0X26011BDA".parse().unwrap();
        assert_eq!(d.as_u32(), 0x2601_1BDA);
        assert_eq!(d.to_le_bytes(), [0xDA, 0x1B, 0x01, 0x26]);
    }

    #[test]
    fn hex_parsing_errors_say_what_and_where() {
        assert_eq!(
            "0102".parse::<DevEui>().unwrap_err(),
            IdParseError::Length {
                what: "DevEUI",
                expected: 16,
                found: 4
            }
        );
        assert_eq!(
            "01020304050607G8".parse::<DevEui>().unwrap_err(),
            IdParseError::Digit {
                what: "DevEUI",
                position: 14,
                found: 'G'
            }
        );
        assert!("+1020304".parse::<DevAddr>().is_err());
        assert_eq!(
            "0102".parse::<DevEui>().unwrap_err().to_string(),
            "DevEUI: expected 16 hex digits, found 4"
        );
    }

    #[test]
    fn nonces_are_little_endian() {
        assert_eq!(DevNonce(258).to_le_bytes(), [0x02, 0x01]);
        assert_eq!(JoinNonce::new(0x010203).unwrap().to_le_bytes(), [3, 2, 1]);
        assert_eq!(JoinNonce::from_le_bytes([3, 2, 1]).as_u32(), 0x010203);
        assert!(JoinNonce::new(1 << 24).is_none());
        assert!(serde_json::from_str::<JoinNonce>("16777216").is_err());
    }

    #[test]
    fn net_id_types_and_dev_addr_prefixes() {
        // (NetID, type, NwkID, prefix, mask) per LoRaWAN Backend Interfaces 1.0 table 3.
        let cases: &[(u32, u8, u32, u32, u32)] = &[
            (0x000000, 0, 0x00, 0x0000_0000, 0xFE00_0000),
            (0x000013, 0, 0x13, 0x2600_0000, 0xFE00_0000), // The Things Network: 26/27xxxxxx
            (0x200005, 1, 0x05, 0x8500_0000, 0xFF00_0000),
            (0x400100, 2, 0x100, 0xD000_0000, 0xFFF0_0000),
            (0x600002, 3, 0x002, 0xE004_0000, 0xFFFE_0000),
            (0xE00001, 7, 0x001, 0xFE00_0080, 0xFFFF_FF80),
        ];
        for &(net, ty, nwk_id, prefix, mask) in cases {
            let n = NetId::new(net).unwrap();
            assert_eq!(n.net_type(), ty, "type of {n}");
            assert_eq!(n.nwk_id(), nwk_id, "NwkID of {n}");
            assert_eq!(n.dev_addr_prefix(), (prefix, mask), "prefix of {n}");
            assert_eq!(n.nwk_addr_bits(), mask.count_zeros(), "NwkAddr bits of {n}");
            let first = DevAddr::from_net_id(n, 0).unwrap();
            let last = DevAddr::from_net_id(n, !mask).unwrap();
            assert!(first.is_in(n) && last.is_in(n));
            assert!(DevAddr::from_net_id(n, !mask + 1).is_none());
        }
        assert!(!DevAddr::new(0x2800_0000).is_in(NetId::new(0x13).unwrap()));
    }

    #[test]
    fn net_id_wire_and_serde() {
        let n: NetId = "000013".parse().unwrap();
        assert_eq!(n.to_le_bytes(), [0x13, 0, 0]);
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"000013\"");
        assert_eq!(serde_json::from_str::<NetId>("\"0x000013\"").unwrap(), n);
        assert!(NetId::new(0x0100_0000).is_none());
    }
}
