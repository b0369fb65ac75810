//! The Semtech UDP packet forwarder protocol (GWMP) as a [`GatewayProtocol`]: a pure function
//! of `(now, source, bytes, registry state)` to the gateway core's actions.
//!
//! - PUSH_DATA: acknowledged (PUSH_ACK) at once; its `stat` updates the registry; each `rxpk`
//!   with a good CRC and a known data rate becomes a [`Reception`] and goes through the shared
//!   uplink step ([`crate::core::gateway::uplink`]).
//! - PULL_DATA: acknowledged (PULL_ACK); its source becomes the gateway's downlink route,
//!   unless the gateway pulled from another address within `addr_change_block_s`
//!   ([`GatewayRegistry::route_blocked`]): then it is counted as `addr_change_blocked`.
//! - TX_ACK: the downlink's fate, counted by error code.
//! - Anything else from a gateway, an unparsable datagram, a datagram over
//!   `max_datagram_bytes`, a PUSH_DATA with more than `max_rxpk_per_datagram` entries, a gateway
//!   not on the allowed list, or a new gateway past the registry's limit: dropped and counted.

use std::net::SocketAddr;
use std::time::Instant;

use protocol::gwmp::{Packet, RxPk, Stat, TxAckCode};
use protocol::ids::GatewayEui;
use protocol::region::Link;

use crate::core::airtime::TxOutcome;
use crate::core::gateway::{
    self, Action, Actions, Count, GatewayEnv, GatewayEvent, GatewayProtocol, Received,
};
use crate::core::reception::Reception;
use crate::gateway::registry::{GatewayRegistry, GatewayStatus, RxpkOutcome};
use crate::ops::config::GwmpConfig;

/// GWMP, protocol version 2, with its limits on what one datagram may carry.
#[derive(Debug, Clone, Copy)]
pub struct Gwmp {
    /// Larger datagrams are dropped (`datagram_too_large`).
    pub max_datagram_bytes: usize,
    /// A PUSH_DATA with more `rxpk` entries is dropped (`too_many_rxpk`).
    pub max_rxpk: usize,
}

impl Gwmp {
    /// The limits `[gwmp]` sets.
    pub fn of(gwmp: &GwmpConfig) -> Self {
        Self {
            max_datagram_bytes: gwmp.max_datagram_bytes,
            max_rxpk: gwmp.max_rxpk_per_datagram,
        }
    }
}

impl Default for Gwmp {
    /// The default limits.
    fn default() -> Self {
        Self::of(&GwmpConfig::default())
    }
}

impl GatewayProtocol for Gwmp {
    type Message = Packet;

    fn receive(
        &self,
        bytes: &[u8],
        gateways: &GatewayRegistry,
    ) -> Result<Received<Packet>, &'static str> {
        if bytes.len() > self.max_datagram_bytes {
            return Err("datagram_too_large");
        }
        let packet = Packet::parse(bytes).map_err(|e| e.kind())?;
        if let Some(gw) = packet.gateway() {
            gateways.admit(gw)?;
        }
        if let Packet::PushData(p) = &packet {
            if p.rxpk.len() > self.max_rxpk {
                return Err("too_many_rxpk");
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
                if env.gateways.route_blocked(gateway, from, now) {
                    return out.act(Action::Count(Count::Dropped("addr_change_blocked")));
                }
                out.act(Action::Gateway(gateway, GatewayEvent::DownlinkRoute(from)));
            }
            Packet::TxAck(ack) => {
                out.act(Action::Count(Count::Message("tx_ack")));
                let code = ack.error.as_ref().map_or("none", tx_ack_label);
                out.act(Action::Count(Count::TxAck(code)));
                out.act(Action::Gateway(ack.gateway, GatewayEvent::TxAck(code)));
                let outcome = tx_outcome(ack.error.as_ref());
                out.act(Action::Gateway(
                    ack.gateway,
                    GatewayEvent::TxOutcome {
                        token: ack.token.0,
                        outcome,
                        code,
                    },
                ));
            }
            Packet::PushAck { .. } | Packet::PullAck { .. } | Packet::PullResp(_) => {
                out.act(Action::Count(Count::Dropped("unexpected_type")));
            }
        }
    }
}

/// Whether a TX_ACK error code is a duty-cycle refusal. GWMP v2 has none; forwarders that
/// enforce the duty cycle report `DUTY_CYCLE_OVERFLOW` (ChirpStack's concentratord and
/// gateway API), which this matches along with any code naming the duty cycle.
fn is_duty_cycle(code: &TxAckCode) -> bool {
    matches!(code, TxAckCode::Other(s) if s.to_ascii_uppercase().contains("DUTY_CYCLE"))
}

/// The metric label of a TX_ACK error: the protocol's, and `duty_cycle` for a duty-cycle
/// refusal (else counted as `other`).
fn tx_ack_label(code: &TxAckCode) -> &'static str {
    if is_duty_cycle(code) {
        "duty_cycle"
    } else {
        code.kind()
    }
}

/// What a TX_ACK error means for the downlink scheduler.
fn tx_outcome(error: Option<&TxAckCode>) -> TxOutcome {
    match error {
        None => TxOutcome::Sent,
        Some(TxAckCode::TooLate) => TxOutcome::TooLate,
        Some(TxAckCode::CollisionPacket | TxAckCode::CollisionBeacon) => TxOutcome::Collision,
        Some(c) if is_duty_cycle(c) => TxOutcome::DutyCycle,
        Some(_) => TxOutcome::Refused,
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
    use crate::core::gateway::{Path, MAX_PHY_PAYLOAD};
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

    fn pull_data(gateway: GatewayEui) -> Vec<u8> {
        Packet::PullData {
            token: Token([1, 2]),
            gateway,
        }
        .to_bytes()
        .unwrap()
    }

    fn dispatch(bytes: &[u8], gateways: &GatewayRegistry, dedup: &Dedup) -> Vec<Action> {
        let from: SocketAddr = ([127, 0, 0, 1], 1700).into();
        let received = Gwmp::default().receive(bytes, gateways).unwrap();
        let env = GatewayEnv {
            gateways,
            dedup,
            retransmission_after: Duration::from_secs(1),
            region: Region::Eu868,
        };
        let mut out = Vec::new();
        Gwmp::default().dispatch(Instant::now(), from, received.message, &env, &mut out);
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
        let r = Gwmp::default()
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
        let r = Gwmp::default()
            .receive(&pull.to_bytes().unwrap(), &registry(1))
            .unwrap();
        assert_eq!(r.ack, Some(vec![2, 1, 2, 4]), "PULL_ACK");
        assert!(Gwmp::default().receive(b"\x02\x00", &registry(1)).is_err());
        // A new gateway past the registry's limit is dropped before anything else.
        let full = registry(1);
        full.on_push_data(GatewayEui::new(2), Instant::now());
        assert_eq!(
            Gwmp::default()
                .receive(&push.to_bytes().unwrap(), &full)
                .unwrap_err(),
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
        let out = dispatch(&pull_data(gw), &gateways, &dedup);
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
        let outcome = TxOutcome::Sent;
        let token = [1, 2];
        assert_eq!(
            out[3],
            Action::Gateway(
                gw,
                GatewayEvent::TxOutcome {
                    token,
                    outcome,
                    code: "none"
                }
            )
        );
        // Refusals: the protocol's label, `duty_cycle` for a forwarder's duty-cycle code.
        let refused = |code: &str| {
            let ack = Packet::TxAck(TxAck {
                token: Token([3, 4]),
                gateway: gw,
                error: TxAckCode::from_wire(code),
                warning: None,
            });
            let out = dispatch(&ack.to_bytes().unwrap(), &gateways, &dedup);
            let Action::Gateway(
                _,
                GatewayEvent::TxOutcome {
                    token,
                    outcome,
                    code,
                },
            ) = out[3]
            else {
                panic!("{out:?}");
            };
            assert_eq!(token, [3, 4]);
            assert_eq!(Action::Count(Count::TxAck(code)), out[1]);
            (out[1].clone(), outcome)
        };
        let cases = [
            ("TOO_LATE", "too_late", TxOutcome::TooLate),
            ("COLLISION_PACKET", "collision_packet", TxOutcome::Collision),
            ("DUTY_CYCLE_OVERFLOW", "duty_cycle", TxOutcome::DutyCycle),
            ("TX_FREQ", "tx_freq", TxOutcome::Refused),
            ("SOMETHING_NEW", "other", TxOutcome::Refused),
        ];
        for (wire, label, outcome) in cases {
            assert_eq!(
                refused(wire),
                (Action::Count(Count::TxAck(label)), outcome),
                "{wire}"
            );
        }
        let stray = Packet::PushAck {
            token: Token([1, 2]),
        };
        let out = dispatch(&stray.to_bytes().unwrap(), &gateways, &dedup);
        assert_eq!(out, vec![Action::Count(Count::Dropped("unexpected_type"))]);
    }

    #[test]
    fn receive_drops_oversized_datagrams_too_many_rxpk_and_unknown_gateways() {
        let gw = GatewayEui::new(1);
        let push = |n: usize| {
            Packet::PushData(PushData {
                token: Token([0, 1]),
                gateway: gw,
                rxpk: (0..n)
                    .map(|_| rxpk(CrcStatus::Ok, DataRate::lora(7, 125).unwrap(), &[0x40; 12]))
                    .collect(),
                stat: None,
            })
            .to_bytes()
            .unwrap()
        };
        let limits = Gwmp {
            max_datagram_bytes: 1024,
            max_rxpk: 2,
        };
        let any = registry(8);
        // (datagram, registry, expected)
        let allowed_other =
            GatewayRegistry::of(&GwmpConfig::default(), Some([GatewayEui::new(2)].into()));
        let big = {
            let mut b = push(1);
            b.resize(1025, b' ');
            b
        };
        let table: [(&[u8], &GatewayRegistry, Result<(), &str>); 5] = [
            (&push(2), &any, Ok(())),
            (&push(3), &any, Err("too_many_rxpk")),
            (&big, &any, Err("datagram_too_large")),
            (&big[..1024], &any, Ok(())),
            (&push(1), &allowed_other, Err("unknown_gateway")),
        ];
        for (i, (bytes, gateways, expected)) in table.into_iter().enumerate() {
            let got = limits.receive(bytes, gateways).map(|_| ());
            assert_eq!(got, expected, "row {i}");
        }
    }

    #[test]
    fn a_phy_payload_over_255_bytes_is_dropped_and_counted() {
        let gw = GatewayEui::new(1);
        let push = |len: usize| {
            Packet::PushData(PushData {
                token: Token([0, 1]),
                gateway: gw,
                rxpk: vec![rxpk(
                    CrcStatus::Ok,
                    DataRate::lora(7, 125).unwrap(),
                    &vec![0x40; len],
                )],
                stat: None,
            })
            .to_bytes()
            .unwrap()
        };
        let (gateways, dedup) = (registry(8), Dedup::new(Duration::from_secs(5), 100));
        let out = dispatch(&push(256), &gateways, &dedup);
        assert_eq!(
            out.last(),
            Some(&Action::Count(Count::UplinkDropped("phy_too_long")))
        );
        assert!(!out.iter().any(|a| matches!(a, Action::Forward { .. })));
        let out = dispatch(&push(255), &gateways, &dedup);
        assert!(
            matches!(out.last(), Some(Action::Forward { .. })),
            "{out:?}"
        );
    }

    #[test]
    fn a_pull_data_from_a_new_source_inside_the_block_does_not_route() {
        let gw = GatewayEui::new(4);
        let gwmp = GwmpConfig {
            addr_change_block_s: 30,
            ..Default::default()
        };
        let (gateways, dedup) = (
            GatewayRegistry::of(&gwmp, None),
            Dedup::new(Duration::from_secs(5), 100),
        );
        let home: SocketAddr = ([10, 0, 0, 1], 40000).into();
        gateways.on_pull_data(gw, home, Instant::now());
        // `dispatch` sends from 127.0.0.1:1700, another source.
        let out = dispatch(&pull_data(gw), &gateways, &dedup);
        assert_eq!(
            out,
            vec![
                Action::Count(Count::Message("pull_data")),
                Action::Count(Count::Dropped("addr_change_blocked")),
            ]
        );
    }

    proptest::proptest! {
        #[test]
        fn receive_and_dispatch_enforce_the_limits_on_any_input(
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            lens in proptest::collection::vec(0usize..400, 0..8),
            max_rxpk in 1usize..6,
        ) {
            let gwmp = Gwmp { max_datagram_bytes: 4096, max_rxpk };
            let gateways = registry(8);
            // Arbitrary bytes never panic the receive step.
            let _ = gwmp.receive(&junk, &gateways);
            let push = Packet::PushData(PushData {
                token: Token([0, 1]),
                gateway: GatewayEui::new(1),
                rxpk: lens
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| {
                        let mut data = vec![0x40u8; n];
                        if let Some(b) = data.get_mut(1) {
                            *b = i as u8; // distinct frames, no duplicates
                        }
                        rxpk(CrcStatus::Ok, DataRate::lora(7, 125).unwrap(), &data)
                    })
                    .collect(),
                stat: None,
            })
            .to_bytes()
            .unwrap();
            let received = gwmp.receive(&push, &gateways);
            let fits = push.len() <= 4096 && lens.len() <= max_rxpk;
            proptest::prop_assert_eq!(received.is_ok(), fits);
            if let Ok(r) = received {
                let env = GatewayEnv {
                    gateways: &gateways,
                    dedup: &Dedup::new(Duration::from_secs(5), 100),
                    retransmission_after: Duration::from_secs(1),
                    region: Region::Eu868,
                };
                let mut out = Vec::new();
                let from = ([127, 0, 0, 1], 1700).into();
                gwmp.dispatch(Instant::now(), from, r.message, &env, &mut out);
                let too_long = out
                    .iter()
                    .filter(|a| **a == Action::Count(Count::UplinkDropped("phy_too_long")))
                    .count();
                proptest::prop_assert_eq!(too_long, lens.iter().filter(|&&n| n > 255).count());
                for a in &out {
                    if let Action::Forward { phy, .. } = a {
                        proptest::prop_assert!(phy.len() <= MAX_PHY_PAYLOAD);
                    }
                }
            }
        }
    }
}
