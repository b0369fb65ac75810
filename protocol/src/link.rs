//! The join server ↔ network server link: one authenticated UDP datagram per message.
//!
//! TS002 (LoRaWAN Backend Interfaces) defines the `JoinReq`/`JoinAns` messages but carries them
//! over HTTP. This project carries the same JSON messages in single UDP datagrams, so the
//! datagram itself must provide authentication, freshness and versioning. No crate implements
//! this framing (it is ours), so the codec is hand-written here; the only cryptographic primitive
//! is AES-CMAC (RFC 4493) from the crate's `crypto` module.
//!
//! # Byte format (version 1)
//!
//! All integers are big-endian (network order). `docs/wire-format.md` has a worked example.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | version, `0x01` |
//! | 1 | 1 | message type: `0x01` JoinReq (NS→JS), `0x02` JoinAns (JS→NS) |
//! | 2 | 8 | sender id: the NS's NetID (zero-extended) or the JS's id |
//! | 10 | 8 | timestamp: milliseconds since the Unix epoch, by the sender's clock |
//! | 18 | 8 | nonce: chosen by the requester for each request; an answer echoes its request's nonce |
//! | 26 | N | body: the TS002 JSON of the message, UTF-8 |
//! | 26+N | 16 | tag: AES-CMAC under the peer's [`LinkKey`] over bytes `0 .. 26+N` |
//!
//! A datagram is at most [`MAX_DATAGRAM`] bytes (so it never fragments on a 1,280-byte IPv6
//! path), and at least [`MIN_DATAGRAM`].
//!
//! # Receiving
//!
//! 1. [`peek_header`] parses the header *without* authenticating it, so the receiver can pick the
//!    sender's key by [`Header::sender`]. Unknown sender → drop ([`LinkError::UnknownSender`]).
//! 2. [`open`] checks the tag in constant time and returns the header and the body.
//! 3. [`check_fresh`] refuses timestamps outside the configured window (default ±30 s).
//! 4. The body is parsed ([`decode_body`]).
//!
//! A datagram that fails any step gets no answer. Replays *inside* the window are harmless
//! because the join server answers per (sender, TransactionID) from a cache: a replayed JoinReq
//! gets the cached answer and never consumes a DevNonce twice. The message type is covered by the
//! tag, so an answer can never be reflected back as a request even though both directions share
//! one key; the echoed nonce binds an answer to the request it answers.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::crypto::aes128_cmac;
use crate::ids::NetId;
use crate::keys::LinkKey;

/// The only format version this codec reads and writes.
pub const VERSION: u8 = 1;
/// Bytes before the body.
pub const HEADER_LEN: usize = 26;
/// Bytes of the AES-CMAC tag that ends every datagram.
pub const TAG_LEN: usize = 16;
/// The smallest valid datagram: a header, an empty body and a tag.
pub const MIN_DATAGRAM: usize = HEADER_LEN + TAG_LEN;
/// The largest datagram either side sends or accepts.
pub const MAX_DATAGRAM: usize = 1200;
/// The largest body that fits in [`MAX_DATAGRAM`].
pub const MAX_BODY: usize = MAX_DATAGRAM - MIN_DATAGRAM;
/// The default freshness window: a timestamp may differ from the receiver's clock by this much.
pub const DEFAULT_WINDOW_MS: u64 = 30_000;

/// What a datagram carries.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum MessageType {
    /// A TS002 `JoinReq`, network server → join server.
    JoinReq,
    /// A TS002 `JoinAns`, join server → network server.
    JoinAns,
}

impl MessageType {
    /// The wire byte.
    pub const fn to_byte(self) -> u8 {
        match self {
            Self::JoinReq => 0x01,
            Self::JoinAns => 0x02,
        }
    }
    /// From the wire byte.
    pub const fn from_byte(b: u8) -> Option<Self> {
        match b {
            0x01 => Some(Self::JoinReq),
            0x02 => Some(Self::JoinAns),
            _ => None,
        }
    }
}

/// Who sent a datagram: a network server's NetID (zero-extended to 64 bits) or a join server's
/// 64-bit id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

impl PeerId {
    /// The sender id a network server uses: its NetID.
    pub const fn from_net_id(net_id: NetId) -> Self {
        Self(net_id.as_u32() as u64)
    }
    /// The NetID, if the id fits in 24 bits.
    pub fn net_id(self) -> Option<NetId> {
        u32::try_from(self.0).ok().and_then(NetId::new)
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({self})")
    }
}

/// The authenticated header of a datagram.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Header {
    /// What the body is.
    pub msg_type: MessageType,
    /// Who sent it.
    pub sender: PeerId,
    /// The sender's clock, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// In a request: a value the requester chooses per request (random or a counter).
    /// In an answer: the nonce of the request it answers.
    pub nonce: u64,
}

/// Why a datagram was refused. The receiver drops it without an answer and counts it by
/// [`kind`](LinkError::kind).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Shorter than a header and a tag.
    #[error("datagram of {0} bytes is shorter than the minimum {MIN_DATAGRAM}")]
    TooShort(usize),
    /// Longer than [`MAX_DATAGRAM`] (or, when sealing, a body longer than [`MAX_BODY`]).
    #[error("datagram of {0} bytes is longer than the maximum {MAX_DATAGRAM}")]
    TooLarge(usize),
    /// A version byte this codec does not know.
    #[error("unsupported link version {0}")]
    Version(u8),
    /// An unknown message type byte.
    #[error("unknown message type 0x{0:02x}")]
    MessageType(u8),
    /// The receiver has no key for this sender.
    #[error("unknown sender {0}")]
    UnknownSender(PeerId),
    /// The tag does not match: wrong key, or the datagram was altered.
    #[error("authentication tag mismatch")]
    BadTag,
    /// The datagram authenticates under the key of another sender than the one it names: a
    /// network server claiming a NetID that is not its own.
    #[error("sender {claimed} is not the holder of the key, {actual} is")]
    NotSender {
        /// The sender id the datagram names.
        claimed: PeerId,
        /// The sender whose key authenticates it.
        actual: PeerId,
    },
    /// The timestamp is outside the freshness window.
    #[error("timestamp is {skew_ms} ms away from the receiver's clock (window ±{window_ms} ms)")]
    Stale {
        /// Sender's timestamp minus the receiver's clock.
        skew_ms: i64,
        /// The window in force.
        window_ms: u64,
    },
    /// The message type is valid but not the one the receiver expects.
    #[error("unexpected message type {0:?}")]
    Unexpected(MessageType),
    /// The authenticated body is not the expected JSON message.
    #[error("malformed body: {0}")]
    Body(String),
}

impl LinkError {
    /// A short stable name, used as the `reason` label of drop counters.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::TooShort(_) => "too_short",
            Self::TooLarge(_) => "too_large",
            Self::Version(_) => "bad_version",
            Self::MessageType(_) => "bad_type",
            Self::UnknownSender(_) => "unknown_sender",
            Self::BadTag => "bad_tag",
            Self::NotSender { .. } => "net_id_not_sender",
            Self::Stale { .. } => "stale",
            Self::Unexpected(_) => "unexpected_type",
            Self::Body(_) => "malformed_body",
        }
    }
}

fn tag(key: &LinkKey, authenticated: &[u8]) -> [u8; TAG_LEN] {
    aes128_cmac(key.expose(), &[authenticated])
}

/// Appends a datagram carrying `body` to `out` (which is cleared first).
///
/// Fails only with [`LinkError::TooLarge`] when the datagram would exceed [`MAX_DATAGRAM`].
pub fn seal(
    key: &LinkKey,
    header: &Header,
    body: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), LinkError> {
    let total = MIN_DATAGRAM + body.len();
    if total > MAX_DATAGRAM {
        return Err(LinkError::TooLarge(total));
    }
    out.clear();
    out.reserve(total);
    out.push(VERSION);
    out.push(header.msg_type.to_byte());
    out.extend_from_slice(&header.sender.0.to_be_bytes());
    out.extend_from_slice(&header.timestamp_ms.to_be_bytes());
    out.extend_from_slice(&header.nonce.to_be_bytes());
    out.extend_from_slice(body);
    let t = tag(key, out);
    out.extend_from_slice(&t);
    Ok(())
}

/// Serializes `message` as JSON and [`seal`]s it.
pub fn seal_json<T: Serialize>(
    key: &LinkKey,
    header: &Header,
    message: &T,
    out: &mut Vec<u8>,
) -> Result<(), LinkError> {
    let body = serde_json::to_vec(message).map_err(|e| LinkError::Body(e.to_string()))?;
    seal(key, header, &body, out)
}

/// Parses the header **without authenticating it**: only to choose the sender's key.
/// Checks the size limits, the version and the message type.
pub fn peek_header(datagram: &[u8]) -> Result<Header, LinkError> {
    if datagram.len() > MAX_DATAGRAM {
        return Err(LinkError::TooLarge(datagram.len()));
    }
    if datagram.len() < MIN_DATAGRAM {
        return Err(LinkError::TooShort(datagram.len()));
    }
    if datagram[0] != VERSION {
        return Err(LinkError::Version(datagram[0]));
    }
    let msg_type =
        MessageType::from_byte(datagram[1]).ok_or(LinkError::MessageType(datagram[1]))?;
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&datagram[at..at + 8]);
        u64::from_be_bytes(b)
    };
    Ok(Header {
        msg_type,
        sender: PeerId(u64_at(2)),
        timestamp_ms: u64_at(10),
        nonce: u64_at(18),
    })
}

/// Authenticates a datagram under `key` (constant-time tag comparison) and returns its header
/// and body. Does not check freshness: see [`check_fresh`].
pub fn open<'a>(key: &LinkKey, datagram: &'a [u8]) -> Result<(Header, &'a [u8]), LinkError> {
    let header = peek_header(datagram)?;
    let (authenticated, received) = datagram.split_at(datagram.len() - TAG_LEN);
    let expected = tag(key, authenticated);
    if !bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], received)) {
        return Err(LinkError::BadTag);
    }
    Ok((header, &authenticated[HEADER_LEN..]))
}

/// Refuses a timestamp more than `window_ms` away from `now_ms` (either direction).
pub fn check_fresh(header: &Header, now_ms: u64, window_ms: u64) -> Result<(), LinkError> {
    let skew = i128::from(header.timestamp_ms) - i128::from(now_ms);
    if skew.unsigned_abs() > u128::from(window_ms) {
        return Err(LinkError::Stale {
            skew_ms: skew.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64,
            window_ms,
        });
    }
    Ok(())
}

/// Parses an authenticated body as the JSON message `T`.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, LinkError> {
    serde_json::from_slice(body).map_err(|e| LinkError::Body(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> LinkKey {
        LinkKey::new(*b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f")
    }

    fn example_header() -> Header {
        Header {
            msg_type: MessageType::JoinReq,
            sender: PeerId::from_net_id(NetId::new(0x000013).unwrap()),
            timestamp_ms: 1_764_072_000_000,
            nonce: 0x0102_0304_0506_0708,
        }
    }

    /// The worked example of docs/wire-format.md. The tag was recomputed independently with
    /// Python's `cryptography` CMAC (see the doc).
    #[test]
    fn worked_example_bytes() {
        let body = br#"{"MessageType":"JoinReq"}"#;
        let mut out = Vec::new();
        seal(&key(), &example_header(), body, &mut out).unwrap();
        let hex = hex::encode(&out);
        assert_eq!(
            &hex[..52],
            concat!(
                "01",               // version
                "01",               // JoinReq
                "0000000000000013", // sender: NetID 000013
                "0000019abae28a00", // 1764072000000 ms
                "0102030405060708"  // nonce
            )
        );
        assert_eq!(&out[HEADER_LEN..out.len() - TAG_LEN], body);
        assert_eq!(hex::encode(&out[out.len() - TAG_LEN..]), EXAMPLE_TAG);
        let (h, b) = open(&key(), &out).unwrap();
        assert_eq!(h, example_header());
        assert_eq!(b, body);
    }

    const EXAMPLE_TAG: &str = "8801fa800e582c48f9ab6efabadf63db";

    #[test]
    fn refuses_tampering_wrong_key_and_limits() {
        let mut out = Vec::new();
        seal(&key(), &example_header(), b"{}", &mut out).unwrap();
        for i in 0..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x40;
            assert!(open(&key(), &bad).is_err(), "flip at byte {i} accepted");
        }
        assert_eq!(
            open(&LinkKey::new([9; 16]), &out).unwrap_err(),
            LinkError::BadTag
        );
        let mut reflected = out.clone();
        reflected[1] = MessageType::JoinAns.to_byte();
        assert_eq!(open(&key(), &reflected).unwrap_err(), LinkError::BadTag);
        assert_eq!(
            open(&key(), &out[..MIN_DATAGRAM - 1]).unwrap_err().kind(),
            "too_short"
        );
        let mut v2 = out.clone();
        v2[0] = 2;
        assert_eq!(open(&key(), &v2).unwrap_err(), LinkError::Version(2));
        assert_eq!(
            seal(&key(), &example_header(), &[b' '; MAX_BODY + 1], &mut out).unwrap_err(),
            LinkError::TooLarge(MAX_DATAGRAM + 1)
        );
        seal(&key(), &example_header(), &[b' '; MAX_BODY], &mut out).unwrap();
        assert_eq!(out.len(), MAX_DATAGRAM);
        assert!(open(&key(), &out).is_ok());
        out.push(0);
        assert_eq!(
            open(&key(), &out).unwrap_err(),
            LinkError::TooLarge(MAX_DATAGRAM + 1)
        );
    }

    #[test]
    fn freshness_window() {
        let h = example_header();
        let now = h.timestamp_ms;
        assert!(check_fresh(&h, now, 30_000).is_ok());
        assert!(check_fresh(&h, now + 30_000, 30_000).is_ok());
        assert!(check_fresh(&h, now - 30_000, 30_000).is_ok());
        assert_eq!(
            check_fresh(&h, now + 30_001, 30_000).unwrap_err(),
            LinkError::Stale {
                skew_ms: -30_001,
                window_ms: 30_000
            }
        );
        assert_eq!(
            check_fresh(&h, now - 30_001, 30_000).unwrap_err().kind(),
            "stale"
        );
        let far = Header {
            timestamp_ms: u64::MAX,
            ..h
        };
        assert!(check_fresh(&far, 0, 30_000).is_err());
    }

    #[test]
    fn peer_ids_and_json_bodies() {
        let n = NetId::new(0xC0_0053).unwrap();
        assert_eq!(PeerId::from_net_id(n).net_id(), Some(n));
        assert_eq!(PeerId(1 << 24).net_id(), None);
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct M {
            #[serde(rename = "TransactionID")]
            transaction_id: u32,
        }
        let mut out = Vec::new();
        seal_json(
            &key(),
            &example_header(),
            &M { transaction_id: 7 },
            &mut out,
        )
        .unwrap();
        let (_, body) = open(&key(), &out).unwrap();
        assert_eq!(decode_body::<M>(body).unwrap(), M { transaction_id: 7 });
        assert_eq!(decode_body::<M>(b"{").unwrap_err().kind(), "malformed_body");
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn no_panic_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..1300)) {
                let _ = peek_header(&data);
                let _ = open(&key(), &data);
            }

            #[test]
            fn open_seal_round_trips(
                req in any::<bool>(), sender in any::<u64>(), ts in any::<u64>(), nonce in any::<u64>(),
                body in proptest::collection::vec(any::<u8>(), 0..=MAX_BODY),
            ) {
                let h = Header {
                    msg_type: if req { MessageType::JoinReq } else { MessageType::JoinAns },
                    sender: PeerId(sender), timestamp_ms: ts, nonce,
                };
                let mut out = Vec::new();
                seal(&key(), &h, &body, &mut out).unwrap();
                let (h2, b2) = open(&key(), &out).unwrap();
                prop_assert_eq!(h2, h);
                prop_assert_eq!(b2, &body[..]);
            }
        }
    }
}
