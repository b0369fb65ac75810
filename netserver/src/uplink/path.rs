//! The data uplink pipeline's shell around the core ([`crate::core::uplink::handle`]): look
//! up, lock, call the core, persist, emit.
//!
//! 1. wait for the collection window, so that every gateway's copy is in the de-duplication
//!    entry (held by the socket loop's [`crate::uplink::collect::Collecting`]; a window of 0
//!    handles the first copy inline);
//! 2. gather every gateway's copy, best first; parse; find the sessions at the DevAddr
//!    (current, and replaced ones kept until their successor is used);
//! 3. call the core, handing in each candidate's lock guard as it is tried;
//! 4. count; forget the replaced session once its successor is in use;
//! 5. the new counters, the events and the downlink go to the emitter **while the session
//!    lock is held**, so that the emits of a session reach the write-ahead log in counter
//!    order.

use std::time::{Instant, SystemTime};

use crate::core::airtime::Purpose;
use crate::core::data::{self as steps, UplinkResult};
use crate::core::reception::Reception;
use crate::core::uplink::{self, Accepted, Decision, Env, Input};
use crate::integration::emitter::Emit;
use crate::state::State;

fn count(state: &State, r: UplinkResult) {
    state
        .metrics
        .data
        .uplinks
        .with_label_values(&[r.label()])
        .inc();
}

/// Every gateway's copy of `phy`, best first (at least `first`).
fn receptions(state: &State, phy: &[u8], first: &Reception) -> Vec<Reception> {
    let mut receptions = state.dedup.receptions(phy);
    if receptions.is_empty() {
        receptions.push(first.clone());
    }
    receptions.sort_by(|a, b| b.quality_cmp(a));
    receptions
}

/// Runs the pipeline for one frame whose collection window ended.
pub fn process(state: &State, phy: &[u8], first: &Reception, wall: SystemTime, now: Instant) {
    let receptions = receptions(state, phy, first);
    let frame = match steps::parse(phy) {
        Ok(f) => f,
        Err(r) => return count(state, r),
    };
    let candidates = state.sessions.candidates(frame.dev_addr());
    let input = Input {
        frame: &frame,
        first,
        receptions: &receptions,
        now,
        wall,
    };
    let env = Env {
        config: &state.config,
        gateways: &state.gateways,
        queue: &state.data.queue,
        pending_mac: &state.data.pending_mac,
        scheduler: &state.scheduler,
    };
    let locked = candidates.iter().map(|s| (s, s.live.lock()));
    let decision = uplink::handle(&input, &env, locked, &mut rand::thread_rng());
    match decision {
        Decision::Dropped(r, log) => {
            count(state, r);
            if let Some(line) = log {
                state.data.emitter.emit(Emit {
                    events: vec![line],
                    ..Emit::default()
                });
            }
        }
        Decision::Accepted(a) => carry_out(state, a, &receptions, now),
    }
}

/// Carries out the core's decision on an authentic frame, its session's lock still held.
fn carry_out<G>(state: &State, a: Accepted<'_, G>, receptions: &[Reception], now: Instant) {
    count(state, a.result);
    let dev_eui = a.session.dev_eui;
    // The replaced session is no longer needed once the new one is in use: at its first
    // uplink (1.0), at its RekeyInd (1.1, which confirms the new security context).
    if a.in_use && state.sessions.is_current(a.session) {
        if state.sessions.drop_previous(dev_eui) {
            state.store.forget_previous(dev_eui);
        }
        if let Some((_, r)) = &a.record {
            let f_cnt_up = r.counters.f_cnt_up.wrapping_sub(1);
            state
                .data
                .key_use
                .used(dev_eui, a.session.dev_addr, f_cnt_up);
        }
    }
    if let Some(f) = a.downlink_failure {
        state
            .metrics
            .data
            .downlinks
            .with_label_values(&[f.label()])
            .inc();
    }
    if let Some(d) = &a.downlink {
        state.gateways.on_pull_resp(d.gateway, now);
        let tx_ack = (*d.tx_ack).clone();
        state.data.sent.insert(now, d.gateway, d.token, tx_ack);
        if state.scheduler.enabled() {
            let booked = &state.metrics.airtime.booked_seconds;
            booked
                .with_label_values(&[Purpose::Data.label()])
                .inc_by(d.airtime.as_secs_f64());
        }
    }
    if a.record.is_none() {
        return;
    }
    // A new frame carries its latency (PUSH_DATA arrival to event written); a repeat does not.
    let started = (a.result == UplinkResult::Ok).then(|| best_started(receptions));
    state.data.emitter.emit(Emit {
        record: a.record,
        events: a.events,
        downlink: a.downlink,
        started,
    });
    drop(a.state);
}

fn best_started(receptions: &[Reception]) -> Instant {
    receptions
        .iter()
        .map(|r| r.received_at)
        .min()
        .unwrap_or_else(Instant::now)
}
