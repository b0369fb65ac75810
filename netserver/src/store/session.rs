//! The live session: compact fixed-size fields, the network keys in clear, the AppSKey envelope
//! inline, and the uplink state behind its lock.

use std::sync::Arc;

use protocol::data::SessionCrypto;
use protocol::ids::{DevAddr, DevEui, DevNonce, JoinEui};
use protocol::keys::AppSKey;
use protocol::keywrap::KeyWrapError;
use protocol::version::MacVersion;

use crate::keys::{LabeledKek, NetworkKeys};
use crate::store::envelope::InlineEnvelope;
use crate::store::labels::KekLabels;
use crate::store::live::Live;
use crate::store::stored::{RxParams, StoredSession, STORED_SESSION_VERSION};

/// A live session: fixed-size fields, the network keys in clear (zeroized on drop), the AppSKey
/// envelope inline, and the data path's state. One allocation (its `Arc`) per session; the
/// [`StoredSession`] is built only to persist it ([`Session::to_stored`]).
#[derive(Debug)]
pub struct Session {
    /// The device.
    pub dev_eui: DevEui,
    /// Its join server.
    pub join_eui: JoinEui,
    /// Its address in this session.
    pub dev_addr: DevAddr,
    /// The DevNonce of the Join-request that created the session.
    pub dev_nonce: DevNonce,
    /// Its LoRaWAN version, as the join server reported it (absent if it did not).
    pub reported_version: Option<MacVersion>,
    /// Radio parameters given in the Join-accept.
    pub rx: RxParams,
    /// Session lifetime from the JoinAns, s (0: unlimited).
    pub lifetime_s: u32,
    /// When the session was created, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// The network session keys in clear.
    pub keys: NetworkKeys,
    /// The AppSKey envelope as the join server sent it (absent when it sent a SessionKeyID).
    pub app_s_key: Option<InlineEnvelope>,
    /// The AppSKey in clear, when the envelope opens with the application server's KEK that
    /// this server was given (`--as-kek`) or came in clear; `None`: application payloads are
    /// forwarded still encrypted, with the envelope. Opened once, not per frame.
    pub opened_app_s_key: Option<AppSKey>,
    /// The SessionKeyID, when the application server fetches the AppSKey itself (behind a
    /// thin box: most sessions have none).
    #[allow(clippy::box_collection)]
    pub session_key_id: Option<Box<Vec<u8>>>,
    /// The tenant that owns the device (the join server's `Owner`), whose application its
    /// events go to: a thin pointer to the copy its tenant's sessions share
    /// ([`KekLabels::intern_owner`]).
    pub owner: Option<Arc<String>>,
    /// The data path's mutable state (counters, ADR), see [`crate::store::live`].
    pub live: Live,
}

impl Session {
    /// The live form of `stored`, its data state starting from the stored counters, its
    /// AppSKey opened if `as_kek` opens it. Fails only on an AppSKey envelope that holds no
    /// 128-bit key.
    pub fn new(
        stored: &StoredSession,
        keys: NetworkKeys,
        labels: &KekLabels,
        as_kek: Option<&LabeledKek>,
    ) -> Result<Self, KeyWrapError> {
        let app_s_key = stored
            .app_s_key
            .as_ref()
            .map(|e| InlineEnvelope::new(e, labels))
            .transpose()?;
        Ok(Self {
            opened_app_s_key: app_s_key.as_ref().and_then(|e| e.open_app_s_key(as_kek)),
            dev_eui: stored.dev_eui,
            join_eui: stored.join_eui,
            dev_addr: stored.dev_addr,
            dev_nonce: stored.dev_nonce,
            reported_version: stored.mac_version,
            rx: stored.rx,
            lifetime_s: stored.lifetime_s.unwrap_or(0),
            created_at_ms: stored.created_at_ms,
            keys,
            app_s_key,
            session_key_id: stored.session_key_id.clone().map(Box::new),
            owner: stored.owner.as_deref().map(|o| labels.intern_owner(o)),
            live: Live::new(stored.counters, stored.last_rj_count0),
        })
    }

    /// The persisted form, with the current counters and the network keys wrapped under
    /// `ns_kek`.
    pub fn to_stored(&self, ns_kek: &LabeledKek) -> StoredSession {
        let (counters, last_rj_count0) = {
            let live = self.live.lock();
            (live.counters, live.last_rj_count0())
        };
        StoredSession {
            version: STORED_SESSION_VERSION,
            dev_eui: self.dev_eui,
            join_eui: self.join_eui,
            dev_addr: self.dev_addr,
            mac_version: self.reported_version,
            dev_nonce: self.dev_nonce,
            network_keys: self.keys.seal(ns_kek),
            app_s_key: self.app_s_key.as_ref().map(InlineEnvelope::to_envelope),
            session_key_id: self.session_key_id.as_deref().cloned(),
            rx: self.rx,
            counters,
            created_at_ms: self.created_at_ms,
            lifetime_s: (self.lifetime_s > 0).then_some(self.lifetime_s),
            last_rj_count0,
            owner: self.owner.as_deref().cloned(),
        }
    }

    /// The LoRaWAN version the data path applies: the reported one, else what the key set
    /// implies (1.1 keys: 1.1; 1.0 keys: 1.0.3, the most common 1.0 device).
    pub fn mac_version(&self) -> MacVersion {
        self.reported_version.unwrap_or(match self.keys {
            NetworkKeys::V1_1 { .. } => MacVersion::V1_1,
            NetworkKeys::V1_0(_) => MacVersion::V1_0_3,
        })
    }

    /// The session's key schedules, expanded now (on the caller's stack): the network keys,
    /// and the AppSKey when it is opened. Nothing is cached per session: with AES-NI the
    /// expansion costs about a quarter of a microsecond per frame (docs/benchmarks.md), while
    /// a cached `SessionCrypto` costs 2.9 KB per session.
    pub fn crypto(&self) -> SessionCrypto {
        SessionCrypto::new(&self.keys.session_keys(), self.opened_app_s_key.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use protocol::keys::AppSKey;
    use protocol::keywrap::KeyEnvelope;

    use super::*;
    use crate::store::stored::tests::stored;

    #[test]
    fn a_live_session_round_trips_to_its_stored_form() {
        use protocol::keys::{Kek, NwkSKey};
        let ns = LabeledKek {
            label: "ns".into(),
            key: Kek::new([7; 16]),
        };
        let as_kek = LabeledKek {
            label: "as-1".into(),
            key: Kek::new([9; 16]),
        };
        let keys = NetworkKeys::V1_0(NwkSKey::new([1; 16]));
        let app = AppSKey::new([0x5A; 16]);
        let mut s = stored(1, 0x2600_0001);
        s.network_keys = keys.seal(&ns);
        s.app_s_key = Some(KeyEnvelope::seal("as-1", Some(&as_kek.key), &app).unwrap());
        s.session_key_id = Some(vec![1, 2, 3]);
        s.lifetime_s = Some(3600);
        let labels = KekLabels::default();
        let live = Session::new(&s, keys.clone(), &labels, Some(&as_kek)).unwrap();
        assert_eq!(live.to_stored(&ns), s, "byte for byte, envelopes included");
        assert_eq!(
            live.opened_app_s_key.as_ref().map(|k| *k.expose()),
            Some([0x5A; 16])
        );
        assert!(!format!("{live:?}").contains("5a5a"), "keys redacted");
        // Without the AS KEK (or under another one) the AppSKey stays wrapped.
        let other = LabeledKek {
            label: "as-2".into(),
            key: Kek::new([9; 16]),
        };
        for kek in [None, Some(&other)] {
            let s2 = Session::new(&s, keys.clone(), &labels, kek).unwrap();
            assert!(s2.opened_app_s_key.is_none());
        }
        // Labels are shared, not copied per session.
        let a = InlineEnvelope::new(s.app_s_key.as_ref().unwrap(), &labels).unwrap();
        assert!(Arc::ptr_eq(
            &a.kek_label,
            &live.app_s_key.as_ref().unwrap().kek_label
        ));
        // A key in clear round-trips and opens without a KEK; other lengths are refused.
        let clear = KeyEnvelope::seal("", None, &app).unwrap();
        let c = InlineEnvelope::new(&clear, &labels).unwrap();
        assert_eq!(c.to_envelope(), clear);
        assert!(c.open_app_s_key(None).is_some());
        let mut bad = clear;
        bad.aes_key.push(0);
        assert_eq!(
            InlineEnvelope::new(&bad, &labels).unwrap_err().kind(),
            "key_length"
        );
    }
}
