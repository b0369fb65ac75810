//! The LoRaWAN 1.1 Rejoin-request pipeline: its own first steps, then the join path's
//! (`otaa::answer_and_send`).
//!
//! 1. parse the Rejoin-request;
//! 2. type 0 or 2 ([`crate::core::rejoin`]): the frame names this network; find the session it
//!    was sent under by DevEUI (the current one, then the replaced one the device may still
//!    use), check its MIC under that session's SNwkSIntKey and that RJcount0 is above the last
//!    accepted under it, and record the new RJcount0 durably before the join server is asked;
//!    type 1: nothing here (its MIC is under JSIntKey, the join server checks it and RJcount1),
//!    routed by JoinEUI like a Join-request;
//! 3. a DevAddr: type 2 keeps the device's address when it rejoined under its current session;
//!    types 0 and 1 get a new one;
//! 4. the TS002 RejoinReq over the link, and the rest of the join path: the Join-accept in RX1
//!    or RX2, the new session stored together with the one the device used, which stays
//!    usable until the first uplink under the new one.

use std::sync::Arc;

use protocol::ids::DevNonce;
use protocol::join::{RejoinBody, RejoinRequest};
use protocol::keys::KeyCipher;
use protocol::phy::{MType, Mhdr};
use protocol::ts002::MessageType;
use tokio::net::UdpSocket;
use tracing::Instrument;

use crate::core::join::{JoinFailure, JoinFlow};
use crate::core::reception::Reception;
use crate::core::rejoin::{self, RejoinRefusal};
use crate::core::timing::Window;
use crate::join::client::JoinServerClient;
use crate::join::otaa::{self, Activation, JoinError, Reservation};
use crate::keys::NetworkKeys;
use crate::state::State;
use crate::store::session::Session;
use protocol::ids::GatewayEui;

/// The rejoin type (0, 1, 2) of `phy` if it is a Rejoin-request (by its MHDR and second byte).
pub fn rejoin_type(phy: &[u8]) -> Option<u8> {
    let (&mhdr, rest) = phy.split_first()?;
    (Mhdr(mhdr).mtype() == MType::RejoinRequest).then(|| rest.first().copied().unwrap_or(0xFF))
}

/// Runs one rejoin from the first copy of its Rejoin-request, and counts the outcome.
pub async fn handle_rejoin_request<C: JoinServerClient>(
    state: Arc<State>,
    link: Arc<C>,
    gwmp: Arc<UdpSocket>,
    phy: Vec<u8>,
    first: Reception,
) {
    let span = tracing::info_span!(
        "rejoin",
        first_gateway = %first.gateway,
        dev_eui = tracing::field::Empty,
        dev_addr = tracing::field::Empty
    );
    let outcome = run(&state, &link, &gwmp, &phy, &first)
        .instrument(span.clone())
        .await;
    let _enter = span.enter();
    let dev_eui = RejoinRequest::parse(&phy).ok().map(|r| r.body.dev_eui());
    count(&state, rejoin_type(&phy).unwrap_or(0xFF), dev_eui, &outcome);
}

/// Counts a rejoin's outcome in `netserver_rejoins_total{type, result, reason}`.
/// An accepted rejoin also ends the device's forced-rejoin command.
fn count(
    state: &State,
    rejoin_type: u8,
    dev_eui: Option<protocol::ids::DevEui>,
    outcome: &Result<(Window, GatewayEui), JoinError>,
) {
    let t = match rejoin_type {
        0 => "0",
        1 => "1",
        2 => "2",
        _ => "other",
    };
    let rejoins = &state.metrics.rejoins;
    match outcome {
        Ok((window, via)) => {
            if let Some(d) = dev_eui {
                state.data.pending_mac.done(d);
            }
            rejoins
                .with_label_values(&[t, "accepted", window.label()])
                .inc();
            tracing::debug!(window = window.label(), %via, rejoin_type, "rejoin join-accept sent");
        }
        Err(e) => {
            let (result, reason) = e.labels();
            rejoins.with_label_values(&[t, result, &reason]).inc();
            match e {
                JoinError::Rejoin(_)
                | JoinError::Rejected { .. }
                | JoinError::Flow(JoinFailure::TooLate) => {
                    tracing::debug!(error = %e, rejoin_type, "no rejoin join-accept")
                }
                _ => tracing::warn!(error = %e, rejoin_type, "no rejoin join-accept"),
            }
        }
    }
}

/// The rejoin's steps, from the first copy of its Rejoin-request.
async fn run<C: JoinServerClient>(
    state: &State,
    link: &Arc<C>,
    gwmp: &UdpSocket,
    phy: &[u8],
    first: &Reception,
) -> Result<(Window, GatewayEui), JoinError> {
    // 1. Parse.
    let rj = RejoinRequest::parse(phy)?;
    let dev_eui = rj.body.dev_eui();
    tracing::Span::current().record("dev_eui", tracing::field::display(dev_eui));
    let flow = JoinFlow::new(first.received_at, state.retry_policy(), state.join_timing());

    // 2 and 3. The session it was sent under (types 0 and 2), and the address.
    let (join_eui, keep, reservation, counter) = match rj.body {
        RejoinBody::Type1 {
            join_eui,
            rj_count1,
            ..
        } => (
            join_eui,
            None,
            Reservation::new(state, dev_eui, &flow)?,
            rj_count1,
        ),
        RejoinBody::Type0 { rj_count0, .. } | RejoinBody::Type2 { rj_count0, .. } => {
            let (session, current) = verify_and_record(state, &rj).await?;
            let reservation = if rj.body.rejoin_type() == 2 && current {
                Reservation::kept(state, dev_eui, session.dev_addr)
            } else {
                Reservation::new(state, dev_eui, &flow)?
            };
            (session.join_eui, Some(session), reservation, rj_count0)
        }
    };

    // 4. Airtime for the Join-accept (as a join's), then the RejoinReq and the rest of the join
    // path.
    let cf_list = otaa::cf_list(state);
    let booking = otaa::book(state, &flow, phy, first, otaa::accept_len(cf_list.as_ref())).await?;
    let req = otaa::join_req(
        state,
        MessageType::RejoinReq,
        (join_eui, dev_eui),
        phy,
        reservation.addr(),
        cf_list,
    );
    let activation = Activation {
        dev_eui,
        join_eui,
        // The RJcount takes the DevNonce's place in the new session's derivation.
        dev_nonce: DevNonce(counter),
        keep,
    };
    otaa::answer_and_send(
        state,
        link,
        gwmp,
        (phy, first),
        flow,
        &req,
        activation,
        reservation,
        booking,
    )
    .await
}

/// Step 2 for types 0 and 2: the NetID, then the device's sessions in turn (current first):
/// the first whose SNwkSIntKey verifies the MIC must also see RJcount0 above its last, which it
/// records, durably, before the join server is asked. Returns that session and whether it is
/// the current one.
async fn verify_and_record(
    state: &State,
    rj: &RejoinRequest,
) -> Result<(Arc<Session>, bool), JoinError> {
    rejoin::check_net_id(rj, state.block.net_id)?;
    let dev_eui = rj.body.dev_eui();
    let candidates = [
        state.sessions.get(dev_eui).map(|s| (s, true)),
        state.sessions.previous(dev_eui).map(|s| (s, false)),
    ];
    let mut refusal = RejoinRefusal::NoSession;
    for (session, current) in candidates.into_iter().flatten() {
        let key = match &session.keys {
            NetworkKeys::V1_1 {
                s_nwk_s_int_key, ..
            } => Some(KeyCipher::new(s_nwk_s_int_key)),
            NetworkKeys::V1_0(_) => None,
        };
        let checked = {
            let mut live = session.live.lock();
            let checked = rejoin::check_against(rj, key.as_ref(), live.last_rj_count0());
            if let Ok(got) = checked {
                live.set_last_rj_count0(got);
            }
            checked
        };
        match checked {
            Ok(_) => {
                // Written to the table the session is in now (a join may have replaced it
                // meanwhile); the new RJcount0 is durable before the join server is asked.
                let stored = session.to_stored(&state.secrets.ns_kek);
                if state.sessions.is_current(&session) {
                    state.store.put(stored).await?;
                } else {
                    state.store.put_previous(stored).await?;
                }
                return Ok((session, current));
            }
            Err(e @ (RejoinRefusal::Mic | RejoinRefusal::NoSession)) => {
                // Not this session; a MIC failure is the answer if no other session fits.
                if refusal == RejoinRefusal::NoSession {
                    refusal = e;
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(refusal.into())
}
