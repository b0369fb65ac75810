//! The embedded store's binary session record: what the session journal appends and
//! `sessions.redb` holds for each session (PostgreSQL keeps the JSON of [`StoredSession`]).
//!
//! Every join writes one. As JSON (about 600 bytes: hex keys, field names) its encoding was a
//! tenth of the session store's commit and the records filled a 4 KiB B-tree leaf with six
//! sessions, so a checkpoint of 25,000 sessions rewrote most of a large table's leaves. This
//! record is about 170 bytes and takes a fraction of the time to write and to read back at a
//! restart.
//!
//! Hand-written: the serde formats that are this compact (postcard, bincode) cannot read the
//! optional fields [`StoredSession`] skips when absent, and the type's serde form spells its
//! identifiers as hex text; a second set of serde types would be as long as this codec.
//!
//! # Byte format (all integers little-endian)
//!
//! | size | field |
//! |---|---|
//! | 1 | [`RECORD_TAG`] (a JSON record starts with `{`, so both are told apart) |
//! | 8, 8, 4 | DevEUI, JoinEUI, DevAddr |
//! | 1 | MAC version: 0 none, 1–6 = 1.0.0, 1.0.1, 1.0.2, 1.0.3, 1.0.4, 1.1 |
//! | 2 | DevNonce |
//! | 1 + envelopes | network keys: 1 = LoRaWAN 1.0 (`NwkSKey`), 2 = 1.1 (`FNwkSIntKey`, `SNwkSIntKey`, `NwkSEncKey`) |
//! | 1 (+ envelope) | AppSKey: 0 absent, 1 present |
//! | 1 (+ 2 + n) | SessionKeyID: 0 absent, 1 present, its length and bytes |
//! | 1, 1, 4, 1 | RX1DROffset, RX2 data rate, RX2 frequency (Hz), RX1 delay (s) |
//! | 4, 4, 4 | FCntUp, NFCntDown, AFCntDown |
//! | 8 | created at, ms since the Unix epoch |
//! | 1 (+ 4) | lifetime (s): 0 absent, 1 present |
//! | 1 (+ 2) | RJcount0 of the last rejoin: 0 absent, 1 present |
//! | 1 (+ 2 + n) | owner (tenant, UTF-8): 0 absent, 1 present |
//!
//! An envelope is its `KEKLabel` (2-byte length, UTF-8) and its `AESKey` (2-byte length,
//! bytes). Nothing may follow the last field.

use protocol::ids::{DevAddr, DevEui, DevNonce, JoinEui};
use protocol::keywrap::KeyEnvelope;
use protocol::version::MacVersion;

use crate::core::device::FrameCounters;
use crate::store::stored::{RxParams, StoredNetworkKeys, StoredSession, STORED_SESSION_VERSION};

/// The first byte of a binary session record.
pub const RECORD_TAG: u8 = 0x02;

/// Why bytes are not a session record, or a session cannot be written as one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The first byte is not [`RECORD_TAG`].
    #[error("not a binary session record (first byte {0:#04x})")]
    Tag(u8),
    /// The record ends inside a field.
    #[error("record truncated in {0}")]
    Truncated(&'static str),
    /// A field has a value no session has.
    #[error("invalid {0} in record")]
    Invalid(&'static str),
    /// A text field is not UTF-8.
    #[error("{0} in record is not UTF-8")]
    NotUtf8(&'static str),
    /// Bytes follow the last field.
    #[error("{0} bytes after the record's end")]
    Trailing(usize),
    /// A variable-length field is longer than its 2-byte length can say.
    #[error("{0} longer than 65,535 bytes")]
    TooLong(&'static str),
}

/// Appends the record of `s` to `out`.
pub fn encode(s: &StoredSession, out: &mut Vec<u8>) -> Result<(), RecordError> {
    out.push(RECORD_TAG);
    out.extend_from_slice(&s.dev_eui.as_u64().to_le_bytes());
    out.extend_from_slice(&s.join_eui.as_u64().to_le_bytes());
    out.extend_from_slice(&s.dev_addr.as_u32().to_le_bytes());
    out.push(s.mac_version.map_or(0, mac_version_code));
    out.extend_from_slice(&s.dev_nonce.0.to_le_bytes());
    match &s.network_keys {
        StoredNetworkKeys::V1_0 { nwk_s_key } => {
            out.push(1);
            envelope(out, nwk_s_key)?;
        }
        StoredNetworkKeys::V1_1 {
            f_nwk_s_int_key,
            s_nwk_s_int_key,
            nwk_s_enc_key,
        } => {
            out.push(2);
            envelope(out, f_nwk_s_int_key)?;
            envelope(out, s_nwk_s_int_key)?;
            envelope(out, nwk_s_enc_key)?;
        }
    }
    match &s.app_s_key {
        Some(e) => {
            out.push(1);
            envelope(out, e)?;
        }
        None => out.push(0),
    }
    optional_bytes(out, s.session_key_id.as_deref(), "SessionKeyID")?;
    out.push(s.rx.rx1_dr_offset);
    out.push(s.rx.rx2_data_rate);
    out.extend_from_slice(&s.rx.rx2_frequency_hz.to_le_bytes());
    out.push(s.rx.rx_delay_s);
    let c = &s.counters;
    for v in [c.f_cnt_up, c.n_f_cnt_down, c.a_f_cnt_down] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&s.created_at_ms.to_le_bytes());
    match s.lifetime_s {
        Some(v) => {
            out.push(1);
            out.extend_from_slice(&v.to_le_bytes());
        }
        None => out.push(0),
    }
    match s.last_rj_count0 {
        Some(v) => {
            out.push(1);
            out.extend_from_slice(&v.to_le_bytes());
        }
        None => out.push(0),
    }
    optional_bytes(out, s.owner.as_deref().map(str::as_bytes), "owner")
}

/// Reads a record written by [`encode`].
pub fn decode(bytes: &[u8]) -> Result<StoredSession, RecordError> {
    let mut r = Reader(bytes);
    let tag = r.u8("tag")?;
    if tag != RECORD_TAG {
        return Err(RecordError::Tag(tag));
    }
    let s = StoredSession {
        version: STORED_SESSION_VERSION,
        dev_eui: DevEui::new(r.u64("DevEUI")?),
        join_eui: JoinEui::new(r.u64("JoinEUI")?),
        dev_addr: DevAddr::new(r.u32("DevAddr")?),
        mac_version: match r.u8("MAC version")? {
            0 => None,
            code => Some(mac_version_of(code).ok_or(RecordError::Invalid("MAC version"))?),
        },
        dev_nonce: DevNonce(r.u16("DevNonce")?),
        network_keys: r.network_keys()?,
        app_s_key: r.optional("AppSKey", Reader::envelope)?,
        session_key_id: r.optional("SessionKeyID", |r| Ok(r.sized("SessionKeyID")?.to_vec()))?,
        rx: RxParams {
            rx1_dr_offset: r.u8("RX1DROffset")?,
            rx2_data_rate: r.u8("RX2 data rate")?,
            rx2_frequency_hz: r.u32("RX2 frequency")?,
            rx_delay_s: r.u8("RX1 delay")?,
        },
        counters: FrameCounters {
            f_cnt_up: r.u32("FCntUp")?,
            n_f_cnt_down: r.u32("NFCntDown")?,
            a_f_cnt_down: r.u32("AFCntDown")?,
        },
        created_at_ms: r.u64("created at")?,
        lifetime_s: r.optional("lifetime", |r| r.u32("lifetime"))?,
        last_rj_count0: r.optional("RJcount0", |r| r.u16("RJcount0"))?,
        owner: r.optional("owner", |r| r.text("owner"))?,
    };
    if !r.0.is_empty() {
        return Err(RecordError::Trailing(r.0.len()));
    }
    Ok(s)
}

fn mac_version_code(v: MacVersion) -> u8 {
    // The position in MacVersion::ALL, from 1 (0 is "none"); every variant is in it.
    MacVersion::ALL
        .iter()
        .position(|m| *m == v)
        .map_or(0, |i| i as u8 + 1)
}

fn mac_version_of(code: u8) -> Option<MacVersion> {
    MacVersion::ALL
        .get(usize::from(code).checked_sub(1)?)
        .copied()
}

fn sized(out: &mut Vec<u8>, bytes: &[u8], what: &'static str) -> Result<(), RecordError> {
    let len = u16::try_from(bytes.len()).map_err(|_| RecordError::TooLong(what))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

fn optional_bytes(
    out: &mut Vec<u8>,
    bytes: Option<&[u8]>,
    what: &'static str,
) -> Result<(), RecordError> {
    match bytes {
        Some(b) => {
            out.push(1);
            sized(out, b, what)
        }
        None => {
            out.push(0);
            Ok(())
        }
    }
}

fn envelope(out: &mut Vec<u8>, e: &KeyEnvelope) -> Result<(), RecordError> {
    sized(out, e.kek_label.as_bytes(), "KEKLabel")?;
    sized(out, &e.aes_key, "AESKey")
}

/// The unread rest of a record.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], RecordError> {
        if self.0.len() < n {
            return Err(RecordError::Truncated(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], RecordError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, RecordError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, RecordError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, RecordError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A field behind its presence byte (0 absent, 1 present), read by `read`.
    fn optional<T>(
        &mut self,
        what: &'static str,
        read: impl FnOnce(&mut Self) -> Result<T, RecordError>,
    ) -> Result<Option<T>, RecordError> {
        match self.u8(what)? {
            0 => Ok(None),
            1 => read(self).map(Some),
            _ => Err(RecordError::Invalid(what)),
        }
    }

    /// UTF-8 text behind its 2-byte length.
    fn text(&mut self, what: &'static str) -> Result<String, RecordError> {
        match std::str::from_utf8(self.sized(what)?) {
            Ok(t) => Ok(t.to_owned()),
            Err(_) => Err(RecordError::NotUtf8(what)),
        }
    }

    fn network_keys(&mut self) -> Result<StoredNetworkKeys, RecordError> {
        Ok(match self.u8("network keys")? {
            1 => StoredNetworkKeys::V1_0 {
                nwk_s_key: self.envelope()?,
            },
            2 => StoredNetworkKeys::V1_1 {
                f_nwk_s_int_key: self.envelope()?,
                s_nwk_s_int_key: self.envelope()?,
                nwk_s_enc_key: self.envelope()?,
            },
            _ => return Err(RecordError::Invalid("network keys kind")),
        })
    }

    fn sized(&mut self, what: &'static str) -> Result<&'a [u8], RecordError> {
        let len = self.u16(what)?;
        self.take(usize::from(len), what)
    }

    fn envelope(&mut self) -> Result<KeyEnvelope, RecordError> {
        Ok(KeyEnvelope {
            kek_label: self.text("KEKLabel")?,
            aes_key: self.sized("AESKey")?.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::stored::tests::{stored, stored_1_1};
    use proptest::prelude::*;

    /// A 1.1 session with every optional field set.
    fn full_1_1() -> StoredSession {
        let mut s = stored_1_1(0x0A, 0x2600_0001);
        s.lifetime_s = Some(86_400);
        s.last_rj_count0 = Some(3);
        s.owner = Some("tenant-ä".into());
        s
    }

    /// The layout of the module's table, byte for byte, for a LoRaWAN 1.0.3 session.
    #[test]
    fn a_1_0_session_has_the_documented_bytes() {
        let s = stored(0x0102, 0x2600_0002);
        let mut out = Vec::new();
        encode(&s, &mut out).unwrap();
        let mut want = vec![RECORD_TAG];
        want.extend_from_slice(&0x0102u64.to_le_bytes());
        want.extend_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
        want.extend_from_slice(&0x2600_0002u32.to_le_bytes());
        want.push(4); // 1.0.3
        want.extend_from_slice(&7u16.to_le_bytes());
        want.push(1); // NwkSKey
        want.extend_from_slice(&[2, 0, b'n', b's', 24, 0]);
        want.extend_from_slice(&[1; 24]);
        want.extend_from_slice(&[1, 2, 0, b'a', b's', 24, 0]);
        want.extend_from_slice(&[2; 24]);
        want.push(0); // no SessionKeyID
        want.extend_from_slice(&[0, 0]);
        want.extend_from_slice(&869_525_000u32.to_le_bytes());
        want.push(1);
        want.extend_from_slice(&[0; 12]);
        want.extend_from_slice(&1_700_000_000_000u64.to_le_bytes());
        want.extend_from_slice(&[0, 0, 0]); // lifetime, RJcount0, owner
        assert_eq!(out, want);
        assert_eq!(out.len(), 117);
        assert_eq!(decode(&out).unwrap(), s);
    }

    #[test]
    fn a_1_1_session_with_every_optional_field_reads_back() {
        let s = full_1_1();
        let mut out = Vec::new();
        encode(&s, &mut out).unwrap();
        assert_eq!(decode(&out).unwrap(), s);
        // Far smaller than its JSON.
        assert!(
            out.len() * 3 < serde_json::to_vec(&s).unwrap().len(),
            "{}",
            out.len()
        );
    }

    #[test]
    fn damaged_records_are_refused_with_what_is_wrong() {
        let s = full_1_1();
        let mut out = Vec::new();
        encode(&s, &mut out).unwrap();
        for cut in 0..out.len() {
            let e = decode(&out[..cut]).unwrap_err();
            assert!(matches!(e, RecordError::Truncated(_)), "{cut}: {e}");
        }
        let mut longer = out.clone();
        longer.push(0);
        assert_eq!(decode(&longer), Err(RecordError::Trailing(1)));
        assert_eq!(decode(b"{\"version\":1}"), Err(RecordError::Tag(b'{')));
        let mut bad = out.clone();
        bad[21] = 7; // MAC version
        assert_eq!(decode(&bad), Err(RecordError::Invalid("MAC version")));
        let mut bad = out.clone();
        bad[24] = 3; // network keys kind
        assert_eq!(decode(&bad), Err(RecordError::Invalid("network keys kind")));
        let mut bad = out.clone();
        bad[27] = 0xff; // the first KEKLabel's first byte
        assert_eq!(decode(&bad), Err(RecordError::NotUtf8("KEKLabel")));
    }

    #[test]
    fn a_field_longer_than_its_length_can_say_is_an_error() {
        let mut s = stored(1, 1);
        s.owner = Some("x".repeat(70_000));
        assert_eq!(
            encode(&s, &mut Vec::new()),
            Err(RecordError::TooLong("owner"))
        );
    }

    fn envelope_strategy() -> impl Strategy<Value = KeyEnvelope> {
        (
            "[a-z]{0,12}",
            proptest::collection::vec(any::<u8>(), 16..=24),
        )
            .prop_map(|(kek_label, aes_key)| KeyEnvelope { kek_label, aes_key })
    }

    proptest! {
        /// Any session reads back as written.
        #[test]
        fn sessions_round_trip(
            ids in (any::<u64>(), any::<u64>(), any::<u32>(), any::<u16>()),
            version in 0u8..=6,
            keys in proptest::collection::vec(envelope_strategy(), 1..=3),
            app in proptest::option::of(envelope_strategy()),
            key_id in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            numbers in (any::<[u8; 3]>(), any::<u32>(), any::<[u32; 3]>(), any::<u64>()),
            optional in (any::<Option<u32>>(), any::<Option<u16>>(), proptest::option::of(".{0,20}")),
        ) {
            let network_keys = if keys.len() == 3 {
                StoredNetworkKeys::V1_1 {
                    f_nwk_s_int_key: keys[0].clone(),
                    s_nwk_s_int_key: keys[1].clone(),
                    nwk_s_enc_key: keys[2].clone(),
                }
            } else {
                StoredNetworkKeys::V1_0 { nwk_s_key: keys[0].clone() }
            };
            let s = StoredSession {
                version: STORED_SESSION_VERSION,
                dev_eui: DevEui::new(ids.0),
                join_eui: JoinEui::new(ids.1),
                dev_addr: DevAddr::new(ids.2),
                mac_version: mac_version_of(version),
                dev_nonce: DevNonce(ids.3),
                network_keys,
                app_s_key: app,
                session_key_id: key_id,
                rx: RxParams {
                    rx1_dr_offset: numbers.0[0],
                    rx2_data_rate: numbers.0[1],
                    rx2_frequency_hz: numbers.1,
                    rx_delay_s: numbers.0[2],
                },
                counters: FrameCounters {
                    f_cnt_up: numbers.2[0],
                    n_f_cnt_down: numbers.2[1],
                    a_f_cnt_down: numbers.2[2],
                },
                created_at_ms: numbers.3,
                lifetime_s: optional.0,
                last_rj_count0: optional.1,
                owner: optional.2,
            };
            let mut out = Vec::new();
            encode(&s, &mut out).unwrap();
            prop_assert_eq!(decode(&out).unwrap(), s);
        }

        /// Arbitrary bytes never panic the reader, and what it reads writes back the same.
        #[test]
        fn arbitrary_bytes_are_read_or_refused(mut bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Some(b) = bytes.first_mut() {
                *b = RECORD_TAG;
            }
            if let Ok(s) = decode(&bytes) {
                let mut again = Vec::new();
                encode(&s, &mut again).unwrap();
                prop_assert_eq!(again, bytes);
            }
        }
    }
}
