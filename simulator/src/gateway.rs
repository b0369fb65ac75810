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

/// How a gateway's packet forwarder forwards what it receives.
///
/// Semtech's `lora_pkt_fwd` reads the concentrator's receive FIFO in a loop: when a read finds
/// nothing it sleeps `FETCH_SLEEP_MS` (10 ms), and every packet one read returns goes upstream in
/// one PUSH_DATA, at most `NB_PKT_MAX` of them (8 in the SX1301 `packet_forwarder`, 255 in the
/// SX1302 HAL's). Under load a gateway therefore sends a PUSH_DATA every 10 ms holding the packets
/// it received in them, not one per packet. The model: each gateway reads its FIFO at fixed ticks
/// `fetch_interval_us` apart (at a phase of its own), and sends what a read finds in PUSH_DATAs
/// of at most `max_rxpk` entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forwarder {
    /// Time between two reads of the receive FIFO; 0 forwards each reception at once, alone in
    /// its PUSH_DATA (the simulator's behaviour before this model).
    pub fetch_interval_us: Micros,
    /// Most `rxpk` entries in one PUSH_DATA (1..=255).
    pub max_rxpk: usize,
}

impl Default for Forwarder {
    /// `lora_pkt_fwd`'s: a read every 10 ms, 8 packets a PUSH_DATA (the SX1301 forwarder's
    /// `NB_PKT_MAX`, well within the network server's default `max_rxpk_per_datagram`).
    fn default() -> Self {
        Self {
            fetch_interval_us: 10_000,
            max_rxpk: 8,
        }
    }
}

impl Forwarder {
    /// Each reception forwarded at once in a PUSH_DATA of its own.
    pub const IMMEDIATE: Self = Self {
        fetch_interval_us: 0,
        max_rxpk: 1,
    };
}

/// One virtual gateway's identity and clock.
#[derive(Clone, Debug)]
pub struct Gateway {
    /// The gateway EUI (sent MSB-first).
    pub eui: GatewayEui,
    /// Added to the run clock to give this gateway's `tmst`.
    pub tmst_offset: u32,
    next_token: u16,
    /// Received, waiting in the FIFO for the forwarder's next read.
    fifo: Vec<RxPk>,
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

impl Reception<'_> {
    /// The `rxpk` entry reporting it.
    fn rxpk(&self) -> RxPk {
        RxPk {
            tmst: self.tmst,
            time: None,
            tmms: None,
            chan: Some(self.chan),
            rfch: Some(0),
            freq_hz: self.freq_hz,
            stat: CrcStatus::Ok,
            datr: self.datr,
            codr: Some(CodingRate::Cr4_5),
            rssi: Some(i32::from(self.rssi)),
            lsnr: Some(f64::from(self.lsnr_tenths) / 10.0),
            jver: None,
            rsig: Vec::new(),
            brd: None,
            aesk: None,
            data: self.data.to_vec(),
        }
    }
}

impl Gateway {
    /// A gateway with the given EUI, clock offset and first token.
    pub fn new(eui: GatewayEui, tmst_offset: u32, first_token: u16) -> Self {
        Self {
            eui,
            tmst_offset,
            next_token: first_token,
            fifo: Vec::new(),
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
        self.push_data_of(vec![rx.rxpk()])
    }

    /// A PUSH_DATA carrying these rxpk.
    fn push_data_of(&mut self, rxpk: Vec<RxPk>) -> Vec<u8> {
        let token = self.token();
        Self::encode(&Packet::PushData(PushData {
            token,
            gateway: self.eui,
            rxpk,
            stat: None,
        }))
    }

    /// Puts a reception into the receive FIFO; `true` if it was empty, so that a read must be
    /// scheduled ([`Gateway::next_fetch`]).
    pub fn receive(&mut self, rx: &Reception<'_>) -> bool {
        self.fifo.push(rx.rxpk());
        self.fifo.len() == 1
    }

    /// The forwarder's first read of the FIFO at or after run time `t`: reads fall every
    /// `interval` µs, at a phase of this gateway's own (from its clock offset), so that gateways do
    /// not all send at the same instant.
    pub fn next_fetch(&self, t: Micros, interval: Micros) -> Micros {
        let phase = Micros::from(self.tmst_offset) % interval;
        let k = t.saturating_sub(phase).div_ceil(interval);
        (phase + k * interval).max(t)
    }

    /// The forwarder reads the FIFO: everything in it, in PUSH_DATAs of at most `max_rxpk` entries,
    /// in the order received.
    pub fn fetch(&mut self, max_rxpk: usize) -> Vec<Vec<u8>> {
        let fifo = std::mem::take(&mut self.fifo);
        let mut out = Vec::with_capacity(fifo.len().div_ceil(max_rxpk.max(1)));
        let mut rest = fifo.into_iter().peekable();
        while rest.peek().is_some() {
            let chunk: Vec<RxPk> = rest.by_ref().take(max_rxpk.max(1)).collect();
            out.push(self.push_data_of(chunk));
        }
        out
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

    fn reception(tmst: u32, data: &[u8]) -> Reception<'_> {
        Reception {
            tmst,
            freq_hz: 868_300_000,
            chan: 1,
            datr: DataRate::lora(9, 125).unwrap(),
            rssi: -100,
            lsnr_tenths: 20,
            data,
        }
    }

    #[test]
    fn reads_fall_on_the_gateways_own_ticks() {
        let g = Gateway::new(GatewayEui::new(1), 1_234_567, 0);
        // Phase 1_234_567 mod 10_000 = 4_567.
        assert_eq!(g.next_fetch(0, 10_000), 4_567);
        assert_eq!(g.next_fetch(4_567, 10_000), 4_567);
        assert_eq!(g.next_fetch(4_568, 10_000), 14_567);
        assert_eq!(g.next_fetch(14_566, 10_000), 14_567);
        assert_eq!(g.next_fetch(1_000_000_000, 10_000), 1_000_004_567);
        // Another gateway reads at another phase.
        let h = Gateway::new(GatewayEui::new(2), 20_001, 0);
        assert_eq!(h.next_fetch(4_568, 10_000), 10_001);
    }

    #[test]
    fn a_read_sends_the_fifo_in_pushes_of_at_most_max_rxpk() {
        let mut g = Gateway::new(GatewayEui::new(0x0102_0304_0506_0708), 0, 0x0100);
        let frames: Vec<Vec<u8>> = (0..19u8).map(|i| vec![0x00, i, i, i]).collect();
        for (i, f) in frames.iter().enumerate() {
            // Only the first reception into an empty FIFO asks for a read.
            assert_eq!(g.receive(&reception(1_000 + i as u32, f)), i == 0);
        }
        let pushes = g.fetch(8);
        assert_eq!(pushes.len(), 3);
        let mut seen = Vec::new();
        for (k, d) in pushes.iter().enumerate() {
            // One token each, in order, from this gateway.
            assert_eq!(&d[..4], &[2, 0x01, k as u8, 0x00]);
            assert_eq!(&d[4..12], &[1, 2, 3, 4, 5, 6, 7, 8]);
            let v: serde_json::Value = serde_json::from_slice(&d[12..]).unwrap();
            let rxpk = v["rxpk"].as_array().unwrap();
            assert_eq!(rxpk.len(), [8, 8, 3][k]);
            for r in rxpk {
                assert_eq!(r["freq"].as_f64(), Some(868.3));
                assert_eq!(r["datr"], "SF9BW125");
                seen.push(r["tmst"].as_u64().unwrap());
            }
        }
        // Every reception once, in the order received.
        assert_eq!(seen, (1_000..1_019).collect::<Vec<u64>>());
        // The FIFO is empty now: nothing more to send, and the next reception asks for a read.
        assert!(g.fetch(8).is_empty());
        assert!(g.receive(&reception(5, &frames[0])));
        assert_eq!(g.fetch(1).len(), 1);
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
