//! Virtual gateways: the GWMP (Semtech UDP packet forwarder v2) side of the simulator, without
//! sockets. Each gateway has its own EUI, its own µs `tmst` counter (a u32 that wraps, derived from
//! the run's monotonic clock plus a per-gateway random offset), and its own random token stream.
//! The socket loop in [`crate::net`] gives each gateway its own UDP socket.

use base64::Engine as _;
use protocol::ids::GatewayEui;
use serde::Deserialize;

use crate::sched::Micros;

/// GWMP protocol version byte.
pub const VERSION: u8 = 2;
/// PUSH_DATA identifier.
pub const PUSH_DATA: u8 = 0x00;
/// PUSH_ACK identifier.
pub const PUSH_ACK: u8 = 0x01;
/// PULL_DATA identifier.
pub const PULL_DATA: u8 = 0x02;
/// PULL_RESP identifier.
pub const PULL_RESP: u8 = 0x03;
/// PULL_ACK identifier.
pub const PULL_ACK: u8 = 0x04;
/// TX_ACK identifier.
pub const TX_ACK: u8 = 0x05;

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

    fn token(&mut self) -> [u8; 2] {
        let t = self.next_token;
        self.next_token = self.next_token.wrapping_add(1);
        t.to_be_bytes()
    }

    /// A PULL_DATA keepalive.
    pub fn pull_data(&mut self) -> Vec<u8> {
        let t = self.token();
        let mut v = Vec::with_capacity(12);
        v.extend_from_slice(&[VERSION, t[0], t[1], PULL_DATA]);
        v.extend_from_slice(&self.eui.to_be_bytes());
        v
    }

    /// A PUSH_DATA carrying one rxpk.
    pub fn push_data(&mut self, rx: &Rxpk<'_>) -> Vec<u8> {
        let t = self.token();
        let mut v = Vec::with_capacity(300);
        v.extend_from_slice(&[VERSION, t[0], t[1], PUSH_DATA]);
        v.extend_from_slice(&self.eui.to_be_bytes());
        rx.write_json(&mut v);
        v
    }

    /// The TX_ACK answering a PULL_RESP: no JSON on success (as lora_pkt_fwd), else
    /// `{"txpk_ack":{"error":"..."}}`.
    pub fn tx_ack(&self, token: [u8; 2], error: Option<&str>) -> Vec<u8> {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(&[VERSION, token[0], token[1], TX_ACK]);
        v.extend_from_slice(&self.eui.to_be_bytes());
        if let Some(e) = error {
            v.extend_from_slice(format!("{{\"txpk_ack\":{{\"error\":\"{e}\"}}}}").as_bytes());
        }
        v
    }
}

/// A received packet as reported in a PUSH_DATA `rxpk`.
#[derive(Clone, Copy, Debug)]
pub struct Rxpk<'a> {
    /// Gateway µs counter at the end of reception.
    pub tmst: u32,
    /// Frequency in Hz.
    pub freq_hz: u32,
    /// IF chain.
    pub chan: u8,
    /// LoRa spreading factor (7..=12).
    pub sf: u8,
    /// Bandwidth in kHz (125, 250, 500).
    pub bw_khz: u16,
    /// RSSI, dBm.
    pub rssi: i16,
    /// SNR in tenths of a dB.
    pub lsnr_tenths: i16,
    /// The PHYPayload.
    pub data: &'a [u8],
}

impl Rxpk<'_> {
    /// `{"rxpk":[{...}]}` in lora_pkt_fwd's field order; `freq` with 6 decimals, `lsnr` with 1.
    pub fn write_json(&self, v: &mut Vec<u8>) {
        use std::io::Write;
        let lsnr_sign = if self.lsnr_tenths < 0 { "-" } else { "" };
        let l = self.lsnr_tenths.unsigned_abs();
        let _ = write!(
            v,
            "{{\"rxpk\":[{{\"tmst\":{},\"chan\":{},\"rfch\":0,\"freq\":{}.{:06},\"stat\":1,\"modu\":\"LORA\",\"datr\":\"SF{}BW{}\",\"codr\":\"4/5\",\"lsnr\":{}{}.{},\"rssi\":{},\"size\":{},\"data\":\"",
            self.tmst,
            self.chan,
            self.freq_hz / 1_000_000,
            self.freq_hz % 1_000_000,
            self.sf,
            self.bw_khz,
            lsnr_sign,
            l / 10,
            l % 10,
            self.rssi,
            self.data.len(),
        );
        let start = v.len();
        let b64_len = self.data.len().div_ceil(3) * 4;
        v.resize(start + b64_len, 0);
        let n = base64::engine::general_purpose::STANDARD
            .encode_slice(self.data, &mut v[start..])
            .expect("buffer sized for base64");
        v.truncate(start + n);
        v.extend_from_slice(b"\"}]}");
    }
}

/// A datagram from the network server.
#[derive(Clone, Debug, PartialEq)]
pub enum Downstream {
    /// PUSH_ACK.
    PushAck {
        /// Echoed token.
        token: [u8; 2],
    },
    /// PULL_ACK.
    PullAck {
        /// Echoed token.
        token: [u8; 2],
    },
    /// PULL_RESP with its txpk.
    PullResp {
        /// Token to echo in the TX_ACK.
        token: [u8; 2],
        /// The transmission request.
        txpk: Txpk,
    },
}

/// The parts of a PULL_RESP `txpk` the simulator uses.
#[derive(Clone, Debug, PartialEq)]
pub struct Txpk {
    /// Send immediately (Class C); never valid for a Class A window.
    pub imme: bool,
    /// Target gateway counter.
    pub tmst: Option<u32>,
    /// Frequency, MHz.
    pub freq: f64,
    /// Data rate string.
    pub datr: String,
    /// Whether polarity is inverted (must be for a downlink).
    pub ipol: bool,
    /// The PHYPayload.
    pub data: Vec<u8>,
}

/// Why a datagram from the network server was not understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DownstreamError {
    /// Shorter than a GWMP header.
    #[error("datagram too short ({0} bytes)")]
    Short(usize),
    /// Protocol version is not 2.
    #[error("unsupported GWMP version {0}")]
    Version(u8),
    /// Not PUSH_ACK, PULL_ACK or PULL_RESP.
    #[error("unexpected GWMP identifier {0:#04x}")]
    Identifier(u8),
    /// The PULL_RESP JSON is malformed or lacks a required field.
    #[error("bad PULL_RESP: {0}")]
    Json(String),
}

#[derive(Deserialize)]
struct PullRespJson {
    txpk: TxpkJson,
}

#[derive(Deserialize)]
struct TxpkJson {
    #[serde(default)]
    imme: bool,
    tmst: Option<u32>,
    freq: f64,
    datr: serde_json::Value,
    #[serde(default)]
    ipol: bool,
    size: Option<usize>,
    data: String,
}

/// Parses a datagram received on a gateway socket.
pub fn parse_downstream(d: &[u8]) -> Result<Downstream, DownstreamError> {
    if d.len() < 4 {
        return Err(DownstreamError::Short(d.len()));
    }
    if d[0] != VERSION {
        return Err(DownstreamError::Version(d[0]));
    }
    let token = [d[1], d[2]];
    match d[3] {
        PUSH_ACK => Ok(Downstream::PushAck { token }),
        PULL_ACK => Ok(Downstream::PullAck { token }),
        PULL_RESP => {
            let j: PullRespJson =
                serde_json::from_slice(&d[4..]).map_err(|e| DownstreamError::Json(e.to_string()))?;
            let t = j.txpk;
            let data = base64::engine::general_purpose::STANDARD
                .decode(t.data.trim_end_matches('='))
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(t.data.trim_end_matches('=')))
                .map_err(|e| DownstreamError::Json(format!("data: {e}")))?;
            if let Some(size) = t.size {
                if size != data.len() {
                    return Err(DownstreamError::Json(format!(
                        "size {size} but data holds {} bytes",
                        data.len()
                    )));
                }
            }
            let datr = match t.datr {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            Ok(Downstream::PullResp {
                token,
                txpk: Txpk {
                    imme: t.imme,
                    tmst: t.tmst,
                    freq: t.freq,
                    datr,
                    ipol: t.ipol,
                    data,
                },
            })
        }
        other => Err(DownstreamError::Identifier(other)),
    }
}

/// EU868 LoRa data rate → (spreading factor, bandwidth kHz), DR0..DR6.
pub fn eu868_dr(dr: u8) -> (u8, u16) {
    match dr {
        0 => (12, 125),
        1 => (11, 125),
        2 => (10, 125),
        3 => (9, 125),
        4 => (8, 125),
        5 => (7, 125),
        _ => (7, 250),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_data_layout_and_json() {
        let mut g = Gateway::new(GatewayEui::new(0xAA55_5A01_0203_0405), 0, 0x1234);
        let rx = Rxpk {
            tmst: 4_000_000_123,
            freq_hz: 868_100_000,
            chan: 0,
            sf: 7,
            bw_khz: 125,
            rssi: -87,
            lsnr_tenths: -35,
            data: &[0x40, 1, 2, 3, 4, 5],
        };
        let d = g.push_data(&rx);
        assert_eq!(&d[..4], &[2, 0x12, 0x34, PUSH_DATA]);
        assert_eq!(&d[4..12], &[0xAA, 0x55, 0x5A, 0x01, 0x02, 0x03, 0x04, 0x05]);
        let json = std::str::from_utf8(&d[12..]).unwrap();
        assert_eq!(
            json,
            r#"{"rxpk":[{"tmst":4000000123,"chan":0,"rfch":0,"freq":868.100000,"stat":1,"modu":"LORA","datr":"SF7BW125","codr":"4/5","lsnr":-3.5,"rssi":-87,"size":6,"data":"QAECAwQF"}]}"#
        );
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["rxpk"][0]["freq"].as_f64(), Some(868.1));
        // The next datagram takes the next token.
        assert_eq!(&g.pull_data()[..4], &[2, 0x12, 0x35, PULL_DATA]);
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
    fn parses_pull_resp_and_acks() {
        let mut d = vec![2, 0xAB, 0xCD, PULL_RESP];
        d.extend_from_slice(br#"{"txpk":{"imme":false,"tmst":5000123,"freq":868.1,"rfch":0,"powe":14,"modu":"LORA","datr":"SF7BW125","codr":"4/5","ipol":true,"size":3,"data":"IAEC"}}"#);
        match parse_downstream(&d).unwrap() {
            Downstream::PullResp { token, txpk } => {
                assert_eq!(token, [0xAB, 0xCD]);
                assert_eq!(txpk.tmst, Some(5_000_123));
                assert_eq!(txpk.data, vec![0x20, 1, 2]);
                assert!(txpk.ipol);
                assert_eq!(txpk.datr, "SF7BW125");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_downstream(&[2, 1, 2, PUSH_ACK]).unwrap(), Downstream::PushAck { token: [1, 2] });
        assert_eq!(parse_downstream(&[2, 1, 2, PULL_ACK]).unwrap(), Downstream::PullAck { token: [1, 2] });
        assert_eq!(parse_downstream(&[1, 1, 2, PULL_ACK]), Err(DownstreamError::Version(1)));
        assert_eq!(parse_downstream(&[2, 1]), Err(DownstreamError::Short(2)));
        assert!(matches!(parse_downstream(&[2, 1, 2, PULL_RESP, b'{']), Err(DownstreamError::Json(_))));
        let mut bad = vec![2, 0, 0, PULL_RESP];
        bad.extend_from_slice(br#"{"txpk":{"tmst":1,"freq":868.1,"datr":"SF7BW125","size":4,"data":"IAEC"}}"#);
        assert!(matches!(parse_downstream(&bad), Err(DownstreamError::Json(_))));
    }

    #[test]
    fn tx_ack_forms() {
        let g = Gateway::new(GatewayEui::new(0x0102_0304_0506_0708), 0, 0);
        assert_eq!(g.tx_ack([9, 8], None), vec![2, 9, 8, TX_ACK, 1, 2, 3, 4, 5, 6, 7, 8]);
        let e = g.tx_ack([9, 8], Some("TOO_LATE"));
        assert_eq!(&e[12..], br#"{"txpk_ack":{"error":"TOO_LATE"}}"#);
    }
}
