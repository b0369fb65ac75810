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
use protocol::region;

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
    let Some(data_rate) = region::dr_of(rxpk.datr) else {
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
