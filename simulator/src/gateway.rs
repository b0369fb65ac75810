//! Virtual gateways: the GWMP (Semtech UDP packet forwarder v2) side of the simulator, without
//! sockets. Each gateway has its own EUI, its own µs `tmst` counter (a u32 that wraps, derived from
//! the run's monotonic clock plus a per-gateway random offset), and its own token sequence.
//! Datagrams are encoded and parsed by the `protocol` crate's GWMP codec. The socket loop in
//! [`crate::net`] gives each gateway its own UDP socket.

use protocol::gwmp::{
    CodingRate, CrcStatus, DataRate, Packet, PushData, RxPk, Token, TxAck, TxAckCode,
};
use protocol::ids::GatewayEui;

use crate::sched::Micros;

/// PULL_DATA keepalive interval (lora_pkt_fwd's default `keepalive_interval`).
pub const KEEPALIVE_US: Micros = 5_000_000;

/// One virtual gateway's identity and clock.
#[derive(Clone, Debug)]
pub struct Gateway {
    /// The gateway EUI (sent MSB-first).
    pub eui: GatewayEui,
    /// Added to the run clock to give this gateway's `tmst`.
    pub tmst_offset: u32,
    next_token: u16,
}

/// A reception to report in a PUSH_DATA `rxpk`.
#[derive(Clone, Copy, Debug)]
pub struct Reception<'a> {
    /// Gateway µs counter at the end of reception.
    pub tmst: u32,
    /// Frequency in Hz.
    pub freq_hz: u32,
    /// IF chain.
    pub chan: u8,
    /// The modulation (`datr`).
    pub datr: DataRate,
    /// RSSI, dBm.
    pub rssi: i16,
    /// SNR in tenths of a dB.
    pub lsnr_tenths: i16,
    /// The PHYPayload.
    pub data: &'a [u8],
}

impl Gateway {
    /// A gateway with the given EUI, clock offset and first token.
    pub fn new(eui: GatewayEui, tmst_offset: u32, first_token: u16) -> Self {
        Self {
            eui,
            tmst_offset,
            next_token: first_token,
        }
    }

    /// The gateway's `tmst` counter at run time `t` (wrapping µs).
    pub fn tmst_at(&self, t: Micros) -> u32 {
        self.tmst_offset.wrapping_add(t as u32)
    }

    /// The run time a `tmst` refers to, taking the one closest to `now` (the counter wraps every
    /// ~71.6 minutes, so a `tmst` is unambiguous within ±35 minutes of now). `None` if it lies before
    /// the run started.
    pub fn run_time_of(&self, tmst: u32, now: Micros) -> Option<Micros> {
        let now_tmst = self.tmst_at(now);
        let delta = tmst.wrapping_sub(now_tmst) as i32 as i64;
        let t = now as i64 + delta;
        (t >= 0).then_some(t as u64)
    }

    fn token(&mut self) -> Token {
        let t = self.next_token;
        self.next_token = self.next_token.wrapping_add(1);
        Token(t.to_be_bytes())
    }

    fn encode(p: &Packet) -> Vec<u8> {
        let mut v = Vec::with_capacity(320);
        // Our packets are always well-formed; an encoding error would be a bug in this module.
        p.write_to(&mut v)
            .expect("simulator builds valid GWMP packets");
        v
    }

    /// A PULL_DATA keepalive.
    pub fn pull_data(&mut self) -> Vec<u8> {
        let token = self.token();
        Self::encode(&Packet::PullData {
            token,
            gateway: self.eui,
        })
    }

    /// A PUSH_DATA carrying one rxpk.
    pub fn push_data(&mut self, rx: &Reception<'_>) -> Vec<u8> {
        let token = self.token();
        Self::encode(&Packet::PushData(PushData {
            token,
            gateway: self.eui,
            rxpk: vec![RxPk {
                tmst: rx.tmst,
                time: None,
                tmms: None,
                chan: Some(rx.chan),
                rfch: Some(0),
                freq_hz: rx.freq_hz,
                stat: CrcStatus::Ok,
                datr: rx.datr,
                codr: Some(CodingRate::Cr4_5),
                rssi: Some(i32::from(rx.rssi)),
                lsnr: Some(f64::from(rx.lsnr_tenths) / 10.0),
                jver: None,
                rsig: Vec::new(),
                brd: None,
                aesk: None,
                data: rx.data.to_vec(),
            }],
            stat: None,
        }))
    }

    /// The TX_ACK answering a PULL_RESP: success, or the error code.
    pub fn tx_ack(&self, token: Token, error: Option<TxAckCode>) -> Vec<u8> {
        Self::encode(&Packet::TxAck(TxAck {
            token,
            gateway: self.eui,
            error,
            warning: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_data_layout_and_json() {
        let mut g = Gateway::new(GatewayEui::new(0xAA55_5A01_0203_0405), 0, 0x1234);
        let rx = Reception {
            tmst: 4_000_000_123,
            freq_hz: 868_100_000,
            chan: 0,
            datr: DataRate::lora(7, 125).unwrap(),
            rssi: -87,
            lsnr_tenths: -35,
            data: &[0x40, 1, 2, 3, 4, 5],
        };
        let d = g.push_data(&rx);
        assert_eq!(&d[..4], &[2, 0x12, 0x34, 0x00]);
        assert_eq!(&d[4..12], &[0xAA, 0x55, 0x5A, 0x01, 0x02, 0x03, 0x04, 0x05]);
        let v: serde_json::Value = serde_json::from_slice(&d[12..]).unwrap();
        let r = &v["rxpk"][0];
        assert_eq!(r["tmst"], 4_000_000_123u64);
        assert_eq!(r["freq"].as_f64(), Some(868.1));
        assert_eq!(r["datr"], "SF7BW125");
        assert_eq!(r["codr"], "4/5");
        assert_eq!(r["modu"], "LORA");
        assert_eq!(r["rssi"], -87);
        assert_eq!(r["lsnr"].as_f64(), Some(-3.5));
        assert_eq!(r["size"], 6);
        assert_eq!(r["data"], "QAECAwQF");
        assert_eq!(r["stat"], 1);
        // The next datagram takes the next token.
        assert_eq!(&g.pull_data()[..4], &[2, 0x12, 0x35, 0x02]);
    }

    #[test]
    fn tmst_wraps_and_maps_back() {
        let g = Gateway::new(GatewayEui::new(1), u32::MAX - 10, 0);
        assert_eq!(g.tmst_at(0), u32::MAX - 10);
        assert_eq!(g.tmst_at(20), 9);
        let now = 5_000_000;
        let target = g.tmst_at(now + 5_000_000);
        assert_eq!(g.run_time_of(target, now), Some(now + 5_000_000));
        assert_eq!(g.run_time_of(g.tmst_at(now - 1000), now), Some(now - 1000));
        assert_eq!(g.run_time_of(g.tmst_at(0).wrapping_sub(100), 10), None);
    }

    #[test]
    fn tx_ack_forms() {
        let g = Gateway::new(GatewayEui::new(0x0102_0304_0506_0708), 0, 0);
        let ok = g.tx_ack(Token([9, 8]), None);
        assert_eq!(&ok[..12], &[2, 9, 8, 5, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(matches!(Packet::parse(&ok).unwrap(), Packet::TxAck(a) if a.is_success()));
        let e = g.tx_ack(Token([9, 8]), Some(TxAckCode::TooLate));
        let v: serde_json::Value = serde_json::from_slice(&e[12..]).unwrap();
        assert_eq!(v["txpk_ack"]["error"], "TOO_LATE");
    }
}
