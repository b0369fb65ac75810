//! The Semtech UDP packet forwarder protocol (GWMP) as a [`GatewayProtocol`]: a pure function
//! of `(now, source, bytes, registry state)` to the gateway core's actions.
//!
//! - PUSH_DATA: acknowledged (PUSH_ACK) at once; its `stat` updates the registry; each `rxpk`
//!   with a good CRC and a known data rate becomes a [`Reception`] and goes through the shared
//!   uplink step ([`crate::core::gateway::uplink`]).
//! - PULL_DATA: acknowledged (PULL_ACK); its source becomes the gateway's downlink route.
//! - TX_ACK: the downlink's fate, counted by error code.
//! - Anything else from a gateway, an unparsable datagram, or a new gateway past the registry's
//!   limit: dropped and counted.

use std::net::SocketAddr;
use std::time::Instant;

use protocol::gwmp::{Packet, RxPk, Stat};
use protocol::ids::GatewayEui;
use protocol::region::Link;

use crate::core::gateway::{
    self, Action, Actions, Count, GatewayEnv, GatewayEvent, GatewayProtocol, Received,
};
use crate::core::reception::Reception;
use crate::gateway::registry::{GatewayRegistry, GatewayStatus, RxpkOutcome};

/// GWMP, protocol version 2.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gwmp;

impl GatewayProtocol for Gwmp {
    type Message = Packet;

    fn receive(
        &self,
        bytes: &[u8],
        gateways: &GatewayRegistry,
    ) -> Result<Received<Packet>, &'static str> {
        let packet = Packet::parse(bytes).map_err(|e| e.kind())?;
        if let Some(gw) = packet.gateway() {
            if !gateways.admits(gw) {
                return Err("gateway_limit");
            }
        }
        Ok(Received {
            ack: packet.ack().map(|a| a.to_vec()),
            message: packet,
        })
    }

    fn dispatch(
        &self,
        now: Instant,
        from: SocketAddr,
        message: Packet,
        env: &GatewayEnv<'_>,
        out: &mut impl Actions,
    ) {
        match message {
            Packet::PushData(p) => {
                out.act(Action::Count(Count::Message("push_data")));
                out.act(Action::Gateway(p.gateway, GatewayEvent::Uplinks));
                if let Some(stat) = &p.stat {
                    out.act(Action::Gateway(
                        p.gateway,
                        GatewayEvent::Status(status_of(stat)),
                    ));
                }
                for rxpk in p.rxpk {
                    rx(now, p.gateway, rxpk, env, out);
                }
            }
            Packet::PullData { gateway, .. } => {
                out.act(Action::Count(Count::Message("pull_data")));
                out.act(Action::Gateway(gateway, GatewayEvent::DownlinkRoute(from)));
            }
            Packet::TxAck(ack) => {
                out.act(Action::Count(Count::Message("tx_ack")));
                let code = ack.error.as_ref().map_or("none", |e| e.kind());
                out.act(Action::Count(Count::TxAck(code)));
                out.act(Action::Gateway(ack.gateway, GatewayEvent::TxAck(code)));
            }
            Packet::PushAck { .. } | Packet::PullAck { .. } | Packet::PullResp(_) => {
                out.act(Action::Count(Count::Dropped("unexpected_type")));
            }
        }
    }
}

fn status_of(s: &Stat) -> GatewayStatus {
    GatewayStatus {
        rxnb: s.rxnb.map(u64::from),
        rxok: s.rxok.map(u64::from),
        rxfw: s.rxfw.map(u64::from),
        ackr: s.ackr,
        dwnb: s.dwnb.map(u64::from),
        txnb: s.txnb.map(u64::from),
    }
}

/// One `rxpk`: dropped (bad CRC, unknown data rate) or, as a [`Reception`], to the shared
/// uplink step.
fn rx(now: Instant, gateway: GatewayEui, rxpk: RxPk, env: &GatewayEnv<'_>, out: &mut impl Actions) {
    let reception = |outcome| Action::Gateway(gateway, GatewayEvent::Reception(outcome));
    if !rxpk.crc_ok() {
        out.act(Action::Count(Count::Reception("crc_dropped")));
        return out.act(reception(RxpkOutcome::CrcDropped));
    }
    let Some(data_rate) = env.region.dr_of(rxpk.datr, Link::Uplink) else {
        out.act(Action::Count(Count::Reception("invalid")));
        out.act(Action::Count(Count::UplinkDropped("unknown_data_rate")));
        return out.act(reception(RxpkOutcome::Invalid));
    };
    out.act(Action::Count(Count::Reception("ok")));
    out.act(reception(RxpkOutcome::Ok));
    let r = Reception {
        gateway,
        tmst: rxpk.tmst,
        received_at: now,
        frequency_hz: rxpk.freq_hz,
        data_rate,
        rf_chain: rxpk.rfch.unwrap_or(0),
        // A forwarder that reports no signal quality ranks last.
        rssi: rxpk.best_rssi().unwrap_or(i32::MIN),
        snr: rxpk.best_snr().map_or(f32::MIN, |s| s as f32),
    };
    gateway::uplink(now, rxpk.data, r, env, out);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use protocol::gwmp::{CodingRate, CrcStatus, DataRate, PushData, Token, TxAck};

    use super::*;
    use crate::core::dedup::Dedup;
    use crate::core::gateway::Path;
    use protocol::region::Region;

    fn registry(max: usize) -> GatewayRegistry {
        GatewayRegistry::new(Duration::from_secs(30), max)
    }

    fn rxpk(stat: CrcStatus, datr: DataRate, data: &[u8]) -> RxPk {
        RxPk {
            tmst: 7,
            time: None,
            tmms: None,
            chan: Some(0),
            rfch: Some(1),
            freq_hz: 868_100_000,
            stat,
            datr,
            codr: Some(CodingRate::Cr4_5),
            rssi: Some(-70),
            lsnr: Some(6.5),
            jver: None,
            rsig: Vec::new(),
            brd: None,
            aesk: None,
            data: data.to_vec(),
        }
    }

    fn dispatch(bytes: &[u8], gateways: &GatewayRegistry, dedup: &Dedup) -> Vec<Action> {
        let from: SocketAddr = ([127, 0, 0, 1], 1700).into();
        let received = Gwmp.receive(bytes, gateways).unwrap();
        let env = GatewayEnv {
            gateways,
            dedup,
            retransmission_after: Duration::from_secs(1),
            region: Region::Eu868,
        };
        let mut out = Vec::new();
        Gwmp.dispatch(Instant::now(), from, received.message, &env, &mut out);
        out
    }

    #[test]
    fn receive_acks_push_and_pull_data_and_refuses_what_it_cannot_admit() {
        let gw = GatewayEui::new(1);
        let push = Packet::PushData(PushData {
            token: Token([0xAB, 0xCD]),
            gateway: gw,
            rxpk: Vec::new(),
            stat: None,
        });
        let r = Gwmp
            .receive(&push.to_bytes().unwrap(), &registry(1))
            .unwrap();
        assert_eq!(
            r.ack,
            Some(vec![2, 0xAB, 0xCD, 1]),
            "PUSH_ACK echoes the token"
        );
        let pull = Packet::PullData {
            token: Token([1, 2]),
            gateway: gw,
        };
        let r = Gwmp
            .receive(&pull.to_bytes().unwrap(), &registry(1))
            .unwrap();
        assert_eq!(r.ack, Some(vec![2, 1, 2, 4]), "PULL_ACK");
        assert!(Gwmp.receive(b"\x02\x00", &registry(1)).is_err());
        // A new gateway past the registry's limit is dropped before anything else.
        let full = registry(1);
        full.on_push_data(GatewayEui::new(2), Instant::now());
        assert_eq!(
            Gwmp.receive(&push.to_bytes().unwrap(), &full).unwrap_err(),
            "gateway_limit"
        );
    }

    #[test]
    fn dispatch_turns_a_push_data_into_registry_events_counts_and_one_forward() {
        let gw = GatewayEui::new(1);
        let data = [0x40u8; 12];
        let push = Packet::PushData(PushData {
            token: Token([0, 1]),
            gateway: gw,
            rxpk: vec![
                rxpk(CrcStatus::Bad, DataRate::lora(7, 125).unwrap(), &data),
                rxpk(CrcStatus::Ok, DataRate::lora(7, 500).unwrap(), &data),
                rxpk(CrcStatus::Ok, DataRate::lora(7, 125).unwrap(), &[0xE0; 5]),
                rxpk(CrcStatus::Ok, DataRate::lora(7, 125).unwrap(), &data),
                rxpk(CrcStatus::Ok, DataRate::lora(7, 125).unwrap(), &data),
            ],
            stat: None,
        });
        let (gateways, dedup) = (registry(8), Dedup::new(Duration::from_secs(5), 100));
        let out = dispatch(&push.to_bytes().unwrap(), &gateways, &dedup);
        let ev = |e| Action::Gateway(gw, GatewayEvent::Reception(e));
        let forwards: Vec<_> = out
            .iter()
            .filter_map(|a| match a {
                Action::Forward {
                    path, reception, ..
                } => Some((*path, reception.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(forwards.len(), 1, "{out:?}");
        let (path, r) = &forwards[0];
        assert_eq!(*path, Path::Data);
        assert_eq!((r.gateway, r.tmst, r.data_rate, r.rf_chain), (gw, 7, 5, 1));
        assert_eq!((r.rssi, r.snr), (-70, 6.5));
        let expected_head = vec![
            Action::Count(Count::Message("push_data")),
            Action::Gateway(gw, GatewayEvent::Uplinks),
            Action::Count(Count::Reception("crc_dropped")),
            ev(RxpkOutcome::CrcDropped),
            Action::Count(Count::Reception("invalid")),
            Action::Count(Count::UplinkDropped("unknown_data_rate")),
            ev(RxpkOutcome::Invalid),
            Action::Count(Count::Reception("ok")),
            ev(RxpkOutcome::Ok),
            Action::Count(Count::UplinkDropped("proprietary")),
            Action::Count(Count::Reception("ok")),
            ev(RxpkOutcome::Ok),
        ];
        assert_eq!(out[..expected_head.len()], expected_head[..]);
        assert_eq!(
            out.last(),
            Some(&Action::Count(Count::Duplicate)),
            "the same frame twice in one datagram"
        );
    }

    #[test]
    fn dispatch_routes_pull_data_counts_tx_acks_and_drops_unexpected_types() {
        let gw = GatewayEui::new(3);
        let (gateways, dedup) = (registry(8), Dedup::new(Duration::from_secs(5), 100));
        let pull = Packet::PullData {
            token: Token([1, 2]),
            gateway: gw,
        };
        let out = dispatch(&pull.to_bytes().unwrap(), &gateways, &dedup);
        assert_eq!(
            out,
            vec![
                Action::Count(Count::Message("pull_data")),
                Action::Gateway(
                    gw,
                    GatewayEvent::DownlinkRoute(([127, 0, 0, 1], 1700).into())
                ),
            ]
        );
        let ack = Packet::TxAck(TxAck {
            token: Token([1, 2]),
            gateway: gw,
            error: None,
            warning: None,
        });
        let out = dispatch(&ack.to_bytes().unwrap(), &gateways, &dedup);
        assert_eq!(out[1], Action::Count(Count::TxAck("none")));
        assert_eq!(out[2], Action::Gateway(gw, GatewayEvent::TxAck("none")));
        let stray = Packet::PushAck {
            token: Token([1, 2]),
        };
        let out = dispatch(&stray.to_bytes().unwrap(), &gateways, &dedup);
        assert_eq!(out, vec![Action::Count(Count::Dropped("unexpected_type"))]);
    }
}
