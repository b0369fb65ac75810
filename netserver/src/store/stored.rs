//! The stored format of a session: what the session store writes at a join, with every key in
//! an envelope. PostgreSQL keeps it as this type's JSON (versioned); the embedded store as a
//! binary record ([`crate::store::record`]) and reads the JSON that earlier releases wrote.

use protocol::ids::{DevAddr, DevEui, DevNonce, JoinEui};
use protocol::keywrap::KeyEnvelope;
use protocol::region::Region;
/// The wrapped network session keys, stored as the join server sent them.
pub use protocol::ts002::NetworkKeys as StoredNetworkKeys;
use protocol::version::MacVersion;
use serde::{Deserialize, Serialize};

use crate::core::device::FrameCounters;

/// Current format version of [`StoredSession`].
pub const STORED_SESSION_VERSION: u32 = 1;

/// A session as persisted. Keys are envelopes: network keys wrapped under the NS KEK, the
/// AppSKey as received from the join server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredSession {
    /// Format version ([`STORED_SESSION_VERSION`]).
    pub version: u32,
    /// The device.
    pub dev_eui: DevEui,
    /// Its join server.
    pub join_eui: JoinEui,
    /// Its address in this session.
    pub dev_addr: DevAddr,
    /// Its LoRaWAN version, as the join server reported it (absent if it did not).
    pub mac_version: Option<MacVersion>,
    /// The DevNonce of the Join-request that created the session.
    pub dev_nonce: DevNonce,
    /// Network session keys: `NwkSKey` (1.0.x) or `FNwkSIntKey`, `SNwkSIntKey`, `NwkSEncKey`
    /// (1.1), each wrapped under the NS KEK. Which variant it is tells the session's LoRaWAN
    /// generation: the join server answers with the keys of the device's version.
    pub network_keys: StoredNetworkKeys,
    /// The AppSKey envelope as the join server sent it (absent when it sent a SessionKeyID).
    pub app_s_key: Option<KeyEnvelope>,
    /// The SessionKeyID, when the application server fetches the AppSKey itself.
    #[serde(default, with = "opt_hex")]
    pub session_key_id: Option<Vec<u8>>,
    /// Radio parameters given in the Join-accept.
    pub rx: RxParams,
    /// Frame counters.
    pub counters: FrameCounters,
    /// When the session was created, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// Session lifetime from the JoinAns, s (0 or absent: unlimited).
    pub lifetime_s: Option<u32>,
    /// LoRaWAN 1.1: the RJcount0 of the last Rejoin-request type 0 or 2 accepted under this
    /// session, written before the rejoin is forwarded (absent before the first: records
    /// without it read as before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rj_count0: Option<u16>,
    /// The tenant that owns the device, as the join server named it in the JoinAns
    /// (`VSExtension` `Owner`): its events go to the tenant's application (absent: the
    /// default application; records without it read as before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

mod opt_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| hex::decode(t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Class-A radio parameters of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RxParams {
    /// RX1DROffset.
    pub rx1_dr_offset: u8,
    /// RX2 data rate.
    pub rx2_data_rate: u8,
    /// RX2 frequency, Hz.
    pub rx2_frequency_hz: u32,
    /// RX1 delay, s (0 means 1).
    pub rx_delay_s: u8,
}

impl RxParams {
    /// A device's defaults in `region` (RP002), what it listens with until a Join-accept's
    /// DLSettings or a MAC command changes them: RX1DROffset 0, the region's RX2, RX1 after 1 s.
    pub fn region_default(region: Region) -> Self {
        let (rx2_frequency_hz, rx2_data_rate) = region.rx2();
        Self {
            rx1_dr_offset: 0,
            rx2_data_rate,
            rx2_frequency_hz,
            rx_delay_s: 1,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// [`the_stored_form_is_unchanged`]'s sessions as earlier releases stored them.
    const STORED_V1_0: &str = r#"{"version":1,"dev_eui":"0000000000000102","join_eui":"0102030405060708","dev_addr":"26000002","mac_version":"1.0.3","dev_nonce":7,"network_keys":{"kind":"v1_0","nwk_s_key":{"KEKLabel":"ns","AESKey":"010101010101010101010101010101010101010101010101"}},"app_s_key":{"KEKLabel":"as","AESKey":"020202020202020202020202020202020202020202020202"},"session_key_id":null,"rx":{"rx1_dr_offset":0,"rx2_data_rate":0,"rx2_frequency_hz":869525000,"rx_delay_s":1},"counters":{"f_cnt_up":0,"n_f_cnt_down":0,"a_f_cnt_down":0},"created_at_ms":1700000000000,"lifetime_s":null}"#;
    const STORED_V1_1: &str = r#"{"version":1,"dev_eui":"000000000000000A","join_eui":"0102030405060708","dev_addr":"26000001","mac_version":"1.1","dev_nonce":7,"network_keys":{"kind":"v1_1","f_nwk_s_int_key":{"KEKLabel":"ns","AESKey":"030303030303030303030303030303030303030303030303"},"s_nwk_s_int_key":{"KEKLabel":"ns","AESKey":"040404040404040404040404040404040404040404040404"},"nwk_s_enc_key":{"KEKLabel":"","AESKey":"05050505050505050505050505050505"}},"app_s_key":null,"session_key_id":"abcd","rx":{"rx1_dr_offset":0,"rx2_data_rate":0,"rx2_frequency_hz":869525000,"rx_delay_s":1},"counters":{"f_cnt_up":0,"n_f_cnt_down":0,"a_f_cnt_down":0},"created_at_ms":1700000000000,"lifetime_s":null}"#;

    pub(crate) fn stored(dev_eui: u64, dev_addr: u32) -> StoredSession {
        let env = |b: u8| KeyEnvelope {
            kek_label: "ns".into(),
            aes_key: vec![b; 24],
        };
        StoredSession {
            version: STORED_SESSION_VERSION,
            dev_eui: DevEui::new(dev_eui),
            join_eui: JoinEui::new(0x0102030405060708),
            dev_addr: DevAddr::new(dev_addr),
            mac_version: Some(MacVersion::V1_0_3),
            dev_nonce: DevNonce(7),
            network_keys: StoredNetworkKeys::V1_0 { nwk_s_key: env(1) },
            app_s_key: Some(KeyEnvelope {
                kek_label: "as".into(),
                aes_key: vec![2; 24],
            }),
            session_key_id: None,
            rx: RxParams::region_default(Region::Eu868),
            counters: FrameCounters::default(),
            created_at_ms: 1_700_000_000_000,
            lifetime_s: None,
            last_rj_count0: None,
            owner: None,
        }
    }

    /// A LoRaWAN 1.1 session: three network keys (NwkSEncKey in clear), a SessionKeyID and
    /// no AppSKey envelope.
    pub(crate) fn stored_1_1(dev_eui: u64, dev_addr: u32) -> StoredSession {
        let mut s = stored(dev_eui, dev_addr);
        s.mac_version = Some(MacVersion::V1_1);
        s.network_keys = StoredNetworkKeys::V1_1 {
            f_nwk_s_int_key: KeyEnvelope {
                kek_label: "ns".into(),
                aes_key: vec![3; 24],
            },
            s_nwk_s_int_key: KeyEnvelope {
                kek_label: "ns".into(),
                aes_key: vec![4; 24],
            },
            nwk_s_enc_key: KeyEnvelope {
                kek_label: String::new(),
                aes_key: vec![5; 16],
            },
        };
        s.app_s_key = None;
        s.session_key_id = Some(vec![0xAB, 0xCD]);
        s
    }

    /// The stored JSON of a session is a format that data directories keep across releases
    /// (PostgreSQL's, and the embedded store's before its binary records): this is what releases
    /// wrote, and what this one must read and write byte for byte.
    #[test]
    fn the_stored_form_is_unchanged() {
        let v11 = stored_1_1(0x0A, 0x2600_0001);
        let cases = [
            (stored(0x0102, 0x2600_0002), STORED_V1_0),
            (v11, STORED_V1_1),
        ];
        for (session, json) in cases {
            assert_eq!(serde_json::to_string(&session).unwrap(), json);
            let read: StoredSession = serde_json::from_str(json).unwrap();
            assert_eq!(read, session);
        }
    }

    /// The device's owner is stored when the join server named one, and read back; records
    /// without it (all of the above) read as owned by no tenant.
    #[test]
    fn the_owner_is_stored_when_there_is_one() {
        let mut s = stored(0x0102, 0x2600_0002);
        s.owner = Some("acme".into());
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(
            json,
            STORED_V1_0.replace(
                "\"lifetime_s\":null}",
                "\"lifetime_s\":null,\"owner\":\"acme\"}"
            )
        );
        assert_eq!(serde_json::from_str::<StoredSession>(&json).unwrap(), s);
    }
}
