//! The UDP shell around the join pipeline.
//!
//! One receiving thread owns the link socket: it authenticates each datagram
//! ([`protocol::link`]), checks its freshness, answers retries and replays from the answer cache,
//! runs the sans-IO [`crate::core`] pipeline, and queues the answer with the nonce update
//! it depends on. The store's writer thread ([`GroupCommit`]) commits each batch of updates in one
//! transaction and only then seals and sends the batch's answers, on a clone of the same socket.
//! No task spawn, channel hop per datagram beyond that queue, or lock held across I/O.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use protocol::ids::{DevEui, NetId};
use protocol::keys::LinkKey;
use protocol::link::{self, Header, LinkError, MessageType, PeerId};
use protocol::ts002::JoinReq;

use crate::cache::{self, AnswerCache, Durability, Lookup};
use crate::core::{self, DeviceMap, JoinContext, JoinError};
use crate::metrics::Metrics;
use crate::rekey::{self, RekeyTrail};
use crate::store::{AnswerKey, GroupCommit, Job, JoinCommit, NonceState, Released, Verdict};
use crate::wire::{self, Parsed};
use udpbatch::{BatchReceiver, BatchSender};

/// At most one warning of each kind (clock skew, a NetID not its sender's) this often.
const WARNING_EVERY_MS: u64 = 10_000;

/// Milliseconds since the Unix epoch by the system clock.
pub fn now_ms() -> u64 {
    protocol::time::unix_ms(SystemTime::now())
}

/// The link keys of the network servers allowed to send JoinReqs (the peers), by NetID. Each
/// sender may have several keys at once while its key rotates: the current one first, then older
/// ones still accepted until they are removed from the configuration. An answer is sealed with
/// the key that authenticated its request. A sender without keys here is unknown: there is no
/// key that passes for any NetID.
#[derive(Clone, Default)]
pub struct Peers {
    /// Per-NetID keys.
    pub by_id: HashMap<u64, Vec<LinkKey>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("by_id", &self.by_id.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Peers {
    /// The keys that may authenticate datagrams from `sender` (empty: an unknown sender).
    pub fn keys_for(&self, sender: PeerId) -> &[LinkKey] {
        if sender.net_id().is_none() {
            return &[];
        }
        self.by_id.get(&sender.0).map_or(&[], Vec::as_slice)
    }

    /// The peer other than `claimed` whose key authenticates `datagram`, if any: a network
    /// server naming a NetID that is not its own. Tried only for datagrams that fail under the
    /// claimed sender's keys, at one tag check per key of the other peers. A sender id that is no
    /// NetID is unknown whatever the key.
    pub fn actual_sender(&self, datagram: &[u8], claimed: PeerId) -> Option<PeerId> {
        claimed.net_id()?;
        self.by_id
            .iter()
            .filter(|(id, _)| **id != claimed.0)
            .find(|(_, keys)| keys.iter().any(|k| link::open(k, datagram).is_ok()))
            .map(|(id, _)| PeerId(*id))
    }
}

/// Makes the [`Outgoing`] answer to the datagram being handled from its body, the result
/// label for the metrics, its answer cache key and its durability (`None`: nothing to wait for).
type MakeOutgoing<'a> = dyn Fn(Arc<[u8]>, Option<&'static str>, Option<cache::Key>, Option<Arc<Durability>>) -> Outgoing
    + 'a;

/// An answer waiting for its batch's commit.
pub struct Outgoing {
    addr: SocketAddr,
    key: LinkKey,
    nonce: u64,
    body: Arc<[u8]>,
    received: Instant,
    /// The join result to count once sent; `None` for answers served from the cache.
    result: Option<&'static str>,
    /// For a RejoinReq: its type, the label of `joinserver_rejoins_total`.
    rejoin: Option<&'static str>,
    /// For a join accepted under rotated root keys: the device, and which request it was,
    /// audited once durable ([`crate::rekey::RekeyTrail::joined`]).
    rekey: Option<Box<(DevEui, NetId, String)>>,
    cache_key: Option<cache::Key>,
    /// Whether the commit this answer depends on is durable: its own batch's (`settles`), or,
    /// for an answer served from the cache, that of the request that made it.
    durability: Arc<Durability>,
    /// This item's batch decides its durability (it is not a cached answer).
    settles: bool,
    /// For an accepted join: the request's header, to refuse it instead if a shared store
    /// finds the device's nonce state moved by another instance.
    refusal: Option<Box<protocol::ts002::Header>>,
}

/// Everything the link needs, shared between its threads.
pub struct Link {
    /// Join processing context (KEKs, rules).
    pub ctx: JoinContext,
    /// Devices in memory.
    pub devices: Arc<DeviceMap>,
    /// Allowed network servers (replaced while the server runs when a peer is added).
    pub peers: crate::live::Live<Peers>,
    /// The join server's id on the link.
    pub js_id: PeerId,
    /// Freshness window.
    pub window_ms: u64,
    /// Answer cache.
    pub cache: Mutex<AnswerCache>,
    /// Metrics.
    pub metrics: Metrics,
    /// When a clock-skew drop was last warned about (Unix ms).
    pub skew_warned_ms: std::sync::atomic::AtomicU64,
    /// When a datagram naming another sender's NetID was last warned about (Unix ms).
    pub not_sender_warned_ms: std::sync::atomic::AtomicU64,
    /// The root-key rotation trail (embedded store only).
    pub rekey: Option<Arc<RekeyTrail>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("js_id", &self.js_id)
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

/// Binds the link socket with the requested receive buffer (SO_RCVBUF) and a read timeout so
/// the receiving loop can notice shutdown.
pub fn bind(addr: SocketAddr, recv_buffer_bytes: usize) -> std::io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if let Err(e) = s.set_recv_buffer_size(recv_buffer_bytes) {
        tracing::warn!(error = %e, "could not set SO_RCVBUF");
    }
    let _ = s.set_send_buffer_size(recv_buffer_bytes);
    s.bind(&addr.into())?;
    let sock: UdpSocket = s.into();
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let granted = socket2::SockRef::from(&sock)
        .recv_buffer_size()
        .unwrap_or(0);
    if granted < recv_buffer_bytes {
        tracing::warn!(
            requested = recv_buffer_bytes,
            granted,
            "kernel granted a smaller SO_RCVBUF; raise net.core.rmem_max"
        );
    }
    Ok(sock)
}

/// Whether a warning last given at `last` (Unix ms) may be given again now (at most one every
/// [`WARNING_EVERY_MS`]); if so, records now.
fn may_warn(last: &std::sync::atomic::AtomicU64) -> bool {
    let now = now_ms();
    let prev = last.load(Ordering::Relaxed);
    now.saturating_sub(prev) >= WARNING_EVERY_MS
        && last
            .compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

impl Link {
    fn drop_datagram(&self, e: &LinkError, addr: SocketAddr) {
        self.metrics.link_drops.with_label_values(&[e.kind()]).inc();
        match e {
            LinkError::Stale { skew_ms, .. } => {
                // An authenticated datagram outside the window: a peer's clock is off (or an
                // old datagram is replayed). Joins fail until the clocks agree: a warning (at
                // most one every 10 s) and a metric, not a debug line.
                self.metrics.link_clock_skew_ms.set(*skew_ms);
                if may_warn(&self.skew_warned_ms) {
                    tracing::warn!(peer = %addr, skew_ms, "link datagram dropped: the clocks of the join server and this network server disagree beyond link.window_ms (check NTP)");
                }
            }
            LinkError::NotSender { claimed, actual } => {
                // A peer naming another NetID: a spoof, or a network server set up with the
                // wrong NetID or another's key. Every join through it fails: a warning.
                if may_warn(&self.not_sender_warned_ms) {
                    tracing::warn!(peer = %addr, claimed = %claimed, key_of = %actual, "link datagram dropped: a network server names a NetID that is not its own (give it its own key: joinserver peers add --net-id N)");
                }
            }
            _ => {
                tracing::debug!(peer = %addr, reason = e.kind(), error = %e, "link datagram dropped");
            }
        }
    }

    /// Opens a datagram from `sender` under one of its keys (during a rotation, the current key
    /// first, then the older ones) and checks its freshness: the key and the body.
    fn authenticate<'d>(
        &self,
        datagram: &'d [u8],
        sender: PeerId,
        now_ms: u64,
    ) -> Result<(LinkKey, &'d [u8]), LinkError> {
        let peers = self.peers.load();
        let keys = peers.keys_for(sender);
        let opened = keys
            .iter()
            .find_map(|k| link::open(k, datagram).ok().map(|(h, b)| (k, h, b)));
        let Some((key, h, body)) = opened else {
            if let Some(actual) = peers.actual_sender(datagram, sender) {
                return Err(LinkError::NotSender {
                    claimed: sender,
                    actual,
                });
            }
            return Err(if keys.is_empty() {
                LinkError::UnknownSender(sender)
            } else {
                LinkError::BadTag
            });
        };
        link::check_fresh(&h, now_ms, self.window_ms)?;
        Ok((key.clone(), body))
    }

    /// Handles one received datagram: drops it (counted) or queues an answer.
    pub fn on_datagram<Q: From<Outgoing> + Send + 'static>(
        &self,
        datagram: &[u8],
        addr: SocketAddr,
        received: Instant,
        now_ms: u64,
        writer: &GroupCommit<Q>,
    ) -> Result<(), crate::store::WriterStopped> {
        self.metrics.link_datagrams.inc();
        let (header, key, body, sender_net_id) = match self.admit(datagram, now_ms) {
            Ok(v) => v,
            Err(e) => {
                self.drop_datagram(&e, addr);
                return Ok(());
            }
        };
        let span = tracing::debug_span!(
            "join_req",
            peer = %addr,
            sender = %sender_net_id,
            tid = tracing::field::Empty,
            dev_eui = tracing::field::Empty,
            result = tracing::field::Empty,
        );
        let _enter = span.enter();
        let out =
            |body: Arc<[u8]>, result, cache_key, durability: Option<Arc<Durability>>| Outgoing {
                settles: durability.is_none(),
                durability: durability.unwrap_or_default(),
                addr,
                key: key.clone(),
                nonce: header.nonce,
                body,
                received,
                result,
                rejoin: None,
                rekey: None,
                cache_key,
                refusal: None,
            };
        match wire::parse_body(body, sender_net_id) {
            Err(e) => {
                self.drop_datagram(&e, addr);
                Ok(())
            }
            Ok(Parsed::Malformed {
                transaction_id,
                answer,
            }) => {
                span.record("tid", transaction_id);
                span.record("result", "malformed");
                writer.submit(
                    Job::Nothing,
                    out(answer.into(), Some("malformed"), None, None),
                )
            }
            Ok(Parsed::SessionInUse) => {
                span.record("result", "session_in_use");
                let answer = self.session_in_use(sender_net_id, body);
                writer.submit(Job::Nothing, out(answer.into(), None, None, None))
            }
            Ok(Parsed::Request(req)) => self.on_request(
                &req,
                (header.sender, sender_net_id),
                now_ms,
                &span,
                writer,
                &out,
            ),
        }
    }

    /// A datagram's header, link key, body and sender NetID, if it is a JoinReq from a known
    /// peer that authenticates.
    fn admit<'d>(
        &self,
        datagram: &'d [u8],
        now_ms: u64,
    ) -> Result<(Header, LinkKey, &'d [u8], NetId), LinkError> {
        let header = link::peek_header(datagram)?;
        if header.msg_type != MessageType::JoinReq {
            return Err(LinkError::Unexpected(header.msg_type));
        }
        let (key, body) = self.authenticate(datagram, header.sender, now_ms)?;
        let sender_net_id = header
            .sender
            .net_id()
            .ok_or(LinkError::UnknownSender(header.sender))?;
        Ok((header, key, body, sender_net_id))
    }

    /// A well-formed JoinReq: answered from the cache (a retry or a replay), refused for a
    /// TransactionID reused with another request, or run through the join pipeline; the answer
    /// is queued with the nonce update it depends on.
    fn on_request<Q: From<Outgoing> + Send + 'static>(
        &self,
        req: &JoinReq,
        (sender, sender_net_id): (PeerId, NetId),
        now_ms: u64,
        span: &tracing::Span,
        writer: &GroupCommit<Q>,
        out: &MakeOutgoing<'_>,
    ) -> Result<(), crate::store::WriterStopped> {
        let tid = req.header.transaction_id;
        span.record("tid", tid);
        span.record("dev_eui", tracing::field::display(req.dev_eui));
        let ck = (sender.0, tid);
        let lookup = self
            .cache
            .lock()
            .map_or(Lookup::Miss, |mut c| c.lookup(now_ms, ck, &req.phy_payload));
        match lookup {
            Lookup::Hit(answer, durability) => {
                self.metrics.answers_replayed.inc();
                span.record("result", "cached");
                writer.submit(Job::Nothing, out(answer, None, None, Some(durability)))
            }
            Lookup::Conflict => {
                span.record("result", "malformed");
                let answer = wire::conflict_answer(
                    req,
                    "TransactionID already used for a different JoinReq",
                );
                writer.submit(
                    Job::Nothing,
                    out(answer.into(), Some("malformed"), None, None),
                )
            }
            Lookup::Miss => {
                let (job, o) = self.process(req, (sender, sender_net_id), now_ms, span, out);
                writer.submit(job, o)
            }
        }
    }

    /// A JoinReq neither answered nor conflicting: processed by the core, its answer cached
    /// (durable once its job is committed), and the job for the store writer.
    fn process(
        &self,
        req: &JoinReq,
        (sender, sender_net_id): (PeerId, NetId),
        now_ms: u64,
        span: &tracing::Span,
        out: &MakeOutgoing<'_>,
    ) -> (Job, Outgoing) {
        let tid = req.header.transaction_id;
        let ck = (sender.0, tid);
        let fields = wire::fields(req, sender_net_id, now_ms);
        let outcome = if wire::is_rejoin(req) {
            core::process_rejoin(&self.ctx, &self.devices, &fields)
        } else {
            core::process(&self.ctx, &self.devices, &fields)
        };
        let result = outcome.kind();
        span.record("result", result);
        let rotation = rekey::rotation(self.rekey.as_deref(), &outcome);
        let answer: Arc<[u8]> = wire::answer_json(req, &outcome, rotation).into();
        let durability = Arc::new(Durability::default());
        if let Ok(mut c) = self.cache.lock() {
            c.insert(
                now_ms,
                ck,
                &req.phy_payload,
                answer.clone(),
                durability.clone(),
            );
        }
        let mut o = out(answer.clone(), Some(result), Some(ck), Some(durability));
        o.settles = true;
        o.rejoin = wire::rejoin_type(req);
        o.rekey = rotation.map(|_| Box::new((req.dev_eui, sender_net_id, rekey::what(req))));
        let key = || AnswerKey {
            sender: sender.0,
            transaction_id: tid,
            request: req.phy_payload.clone(),
        };
        let job = match (outcome.update, outcome.previous) {
            (Some(update), Some(previous)) => {
                o.refusal = Some(Box::new(req.header.clone()));
                Job::Join(JoinCommit {
                    update,
                    previous,
                    answer: Some((key(), answer)),
                })
            }
            // Refused by the DevNonce rule: a retry that another instance sharing the store
            // may have answered.
            _ if matches!(outcome.result, Err(JoinError::Nonce(_))) => Job::Lookup(key()),
            _ => Job::Nothing,
        };
        (job, o)
    }

    /// A `SessionInUseReq` from the network server `sender`: its answer.
    fn session_in_use(&self, sender: NetId, body: &[u8]) -> Vec<u8> {
        rekey::answer_session_in_use(self.rekey.as_deref(), &self.devices, sender, body)
    }

    /// The writer's release step: after a batch committed, seal and send its answers (one
    /// `sendmmsg` per up to 64); if the commit failed, send none of them and forget their
    /// cached answers. An answer served from the cache leaves only if the commit of the request
    /// that made it succeeded (a retry queued behind a failed commit gets no answer).
    pub fn release(
        &self,
        socket: &UdpSocket,
        sender: &BatchSender,
        (result, n, items): Released<Outgoing>,
    ) {
        if n > 0 {
            self.metrics.store_commits.inc();
            self.metrics.store_batch.observe(n as f64);
        }
        for (o, v) in items.iter().filter(|(o, _)| o.settles) {
            o.durability
                .settle(result.is_ok() && !matches!(v, Verdict::Stale { .. }));
        }
        if let Err(e) = result {
            self.withhold(&e, &items);
            return;
        }
        let items: Vec<Outgoing> = items
            .into_iter()
            .map(|(o, v)| self.apply_verdict(o, v))
            .collect();
        let (items, undurable): (Vec<Outgoing>, Vec<Outgoing>) =
            items.into_iter().partition(|o| o.durability.is_committed());
        if !undurable.is_empty() {
            self.metrics.answers_withheld.inc_by(undurable.len() as u64);
            tracing::warn!(
                answers = undurable.len(),
                "cached answers withheld: the commit they depend on failed"
            );
        }
        let now = now_ms();
        // Counted before the answers leave, so that whoever holds an answer also sees it in
        // `/metrics`.
        for o in &items {
            if let Some(r) = o.result {
                self.metrics.count_join(o.rejoin, r);
            }
        }
        let mut sealed: Vec<(Vec<u8>, SocketAddr)> = Vec::with_capacity(items.len());
        for o in &items {
            let header = Header {
                msg_type: MessageType::JoinAns,
                sender: self.js_id,
                timestamp_ms: now,
                nonce: o.nonce,
            };
            let mut buf = Vec::with_capacity(o.body.len() + link::MIN_DATAGRAM);
            match link::seal(&o.key, &header, &o.body, &mut buf) {
                Ok(()) => sealed.push((buf, o.addr)),
                Err(e) => tracing::error!(error = %e, "JoinAns does not fit in a datagram"),
            }
        }
        let msgs: Vec<(&[u8], SocketAddr)> =
            sealed.iter().map(|(d, a)| (d.as_slice(), *a)).collect();
        let sent = sender.send(socket, &msgs);
        if sent < msgs.len() {
            tracing::warn!(lost = msgs.len() - sent, "some JoinAns could not be sent");
        }
        for o in items {
            self.metrics
                .join_latency
                .observe(o.received.elapsed().as_secs_f64());
            // After the answers left: an audit record of a join under rotated keys.
            if let (Some(t), Some(j), Some("success")) = (&self.rekey, &o.rekey, o.result) {
                t.joined(&self.devices, j.0, j.1, &j.2);
            }
        }
    }

    /// A batch whose commit failed: none of its answers leaves, their cached copies are
    /// forgotten, and the devices' nonce states in memory go back to what was committed.
    fn withhold(&self, e: &crate::store::StoreError, items: &[(Outgoing, Verdict)]) {
        self.metrics.store_errors.inc();
        tracing::error!(error = %e, answers = items.len(), "nonce commit failed; answers withheld");
        for (o, _) in items {
            self.forget(o);
        }
        // Last first, so a device that joined twice in the batch goes back step by step.
        for (_, v) in items.iter().rev() {
            if let Verdict::Failed {
                dev_eui,
                previous,
                state,
            } = v
            {
                self.roll_back(*dev_eui, previous, state);
            }
        }
    }

    /// What the store said about an answer, applied before it leaves: a join that another
    /// instance got to first is answered as that instance answered the same request, or refused
    /// (its JoinNonce never leaves), and the device's nonce state here is brought up to the
    /// store's; a refused retry that another instance answered gets that answer.
    fn apply_verdict(&self, mut o: Outgoing, v: Verdict) -> Outgoing {
        let shared = |o: &mut Outgoing, body: Vec<u8>| {
            self.metrics.answers_shared.inc();
            o.body = body.into();
            o.result = None;
            o.durability = Arc::new(Durability::default());
            o.durability.settle(true);
        };
        match v {
            // `Failed` comes only with a failed commit, whose answers never get here.
            Verdict::Done | Verdict::Failed { .. } => {}
            Verdict::Answered(body) => {
                // The refusal cached here must not answer the next retry.
                self.forget(&o);
                shared(&mut o, body);
            }
            Verdict::Stale {
                dev_eui,
                current,
                answer,
            } => {
                self.metrics.store_stale.inc();
                self.forget(&o);
                self.refresh_nonces(dev_eui, current);
                match answer {
                    Some(body) => shared(&mut o, body),
                    None => {
                        if let Some(h) = &o.refusal {
                            o.body = wire::stale_answer(h).into();
                        }
                        o.result = Some("stale_nonce_state");
                        o.durability = Arc::new(Durability::default());
                        o.durability.settle(true);
                    }
                }
            }
        }
        o
    }

    /// What the store said about a join that came by another transport (Backend Interfaces),
    /// applied to the devices in memory as for the link's own answers: a failed commit puts the
    /// device's nonce state back, a stale one brings it up to the store's. Returns whether the
    /// join is committed, so that its answer may leave.
    pub fn settle_foreign(&self, committed: bool, v: &Verdict) -> bool {
        match v {
            Verdict::Failed {
                dev_eui,
                previous,
                state,
            } => {
                self.roll_back(*dev_eui, previous, state);
                false
            }
            Verdict::Stale {
                dev_eui, current, ..
            } => {
                self.metrics.store_stale.inc();
                self.refresh_nonces(*dev_eui, current.clone());
                false
            }
            Verdict::Done | Verdict::Answered(_) => committed,
        }
    }

    /// Removes an answer's entry from the answer cache.
    fn forget(&self, o: &Outgoing) {
        if let (Some(k), Ok(mut c)) = (o.cache_key, self.cache.lock()) {
            c.remove(k);
        }
    }

    /// Puts a device's nonce state in memory back to `previous` after the commit of the join
    /// that moved it to `state` failed, unless a later join moved it on meanwhile (that join's
    /// commit then fails too, or finds the store's state and refreshes it).
    fn roll_back(&self, dev_eui: DevEui, previous: &NonceState, state: &NonceState) {
        if let Some(mut d) = self.devices.get_mut(&dev_eui) {
            if d.nonces == *state {
                d.nonces = previous.clone();
            }
        }
    }

    /// Puts the store's nonce state of a device into memory (`None`: it is gone).
    fn refresh_nonces(&self, dev_eui: DevEui, current: Option<NonceState>) {
        match current {
            Some(state) => {
                if let Some(mut d) = self.devices.get_mut(&dev_eui) {
                    d.nonces = state;
                }
            }
            None => {
                self.devices.remove(&dev_eui);
            }
        }
    }

    /// The receiving loop: runs until `stop` is set. Returns when the writer stops too.
    pub fn run<Q: From<Outgoing> + Send + 'static>(
        &self,
        socket: &UdpSocket,
        writer: &GroupCommit<Q>,
        stop: &AtomicBool,
    ) {
        let mut rx = BatchReceiver::new(32, link::MAX_DATAGRAM + 1);
        while !stop.load(Ordering::Relaxed) {
            match rx.recv(socket) {
                Ok(n) => {
                    let received = Instant::now();
                    let now = now_ms();
                    for i in 0..n {
                        let (d, addr) = rx.get(i);
                        let Some(addr) = addr else { continue };
                        if self.on_datagram(d, addr, received, now, writer).is_err() {
                            tracing::error!("store writer stopped; link stops");
                            return;
                        }
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    // ICMP port unreachable from a peer that went away shows up here on Linux.
                    tracing::debug!(error = %e, "recvmmsg");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use protocol::ids::{DevEui, DevNonce, JoinEui};
    use protocol::join::{JoinRequest, JoinRootKey};
    use protocol::keys::{AppKey, Kek, KeyCipher};
    use protocol::ts002::{JoinAns, ResultCode};

    use super::*;
    use crate::secrets::{LabeledKek, MasterKey};
    use crate::store::{
        DeviceChanges, JoinCommitted, NonceUpdate, SqliteStore, Store, StoreError, StoredDevice,
    };

    const APP_KEY: &str = "2B7E151628AED2A6ABF7158809CF4F3C";
    const JOIN_EUI: u64 = 0x70B3_D57E_D000_0001;
    const DEV: u64 = 7;
    const NET: u32 = 0x13;

    /// A store whose nonce commits wait for the test's verdict: commit, or fail.
    struct Gate {
        inner: SqliteStore,
        entered: mpsc::Sender<()>,
        verdicts: mpsc::Receiver<bool>,
    }

    impl Store for Gate {
        fn load_devices(&mut self) -> Result<Vec<StoredDevice>, StoreError> {
            self.inner.load_devices()
        }
        fn get_device(&mut self, d: DevEui) -> Result<Option<StoredDevice>, StoreError> {
            self.inner.get_device(d)
        }
        fn insert_devices(&mut self, d: &[StoredDevice]) -> Result<(), StoreError> {
            self.inner.insert_devices(d)
        }
        fn remove_device(&mut self, d: DevEui) -> Result<bool, StoreError> {
            self.inner.remove_device(d)
        }
        fn commit_nonces(&mut self, batch: &[NonceUpdate]) -> Result<(), StoreError> {
            self.inner.commit_nonces(batch)
        }
        fn commit_joins(&mut self, batch: &[JoinCommit]) -> Result<Vec<JoinCommitted>, StoreError> {
            self.entered.send(()).unwrap();
            if self.verdicts.recv().unwrap() {
                self.inner.commit_joins(batch)
            } else {
                Err(StoreError::Corrupt {
                    dev_eui: DevEui::new(0),
                    what: "commit failure injected by the test".into(),
                })
            }
        }
        fn generation(&mut self) -> Result<u64, StoreError> {
            self.inner.generation()
        }
        fn changes_since(&mut self, seen: u64) -> Result<(u64, DeviceChanges), StoreError> {
            self.inner.changes_since(seen)
        }
        fn check_master(&mut self, v: &[u8]) -> Result<(), StoreError> {
            self.inner.check_master(v)
        }
        fn add_link_peer(&mut self, p: &crate::store::StoredPeer) -> Result<bool, StoreError> {
            self.inner.add_link_peer(p)
        }
        fn link_peers(&mut self) -> Result<Vec<crate::store::StoredPeer>, StoreError> {
            self.inner.link_peers()
        }
    }

    fn join_req(key: &LinkKey, tid: u32, dev_nonce: u16) -> Vec<u8> {
        let k = KeyCipher::new(&APP_KEY.parse::<AppKey>().unwrap());
        let jr = JoinRequest::build(
            JoinEui::new(JOIN_EUI),
            DevEui::new(DEV),
            DevNonce(dev_nonce),
            JoinRootKey::AppKey(&k),
        );
        let body = serde_json::to_vec(&serde_json::json!({
            "ProtocolVersion": "1.0", "SenderID": format!("{NET:06X}"),
            "ReceiverID": format!("{JOIN_EUI:016X}"), "TransactionID": tid,
            "MessageType": "JoinReq", "MACVersion": "1.0.4",
            "PHYPayload": hex::encode(jr.to_bytes()), "DevEUI": format!("{DEV:016X}"),
            "DevAddr": "26011BDA", "DLSettings": "00", "RxDelay": 1,
        }))
        .unwrap();
        let header = Header {
            msg_type: MessageType::JoinReq,
            sender: PeerId::from_net_id(NetId::new(NET).unwrap()),
            timestamp_ms: now_ms(),
            nonce: u64::from(tid),
        };
        let mut d = Vec::new();
        link::seal(key, &header, &body, &mut d).unwrap();
        d
    }

    /// No JoinAns leaves unless the nonces it depends on are committed, retries included: a
    /// retry answered from the cache while the first answer's commit is in progress is withheld
    /// when that commit fails (it used to be sent by the next batch). Once commits succeed, an
    /// answer and its cached retry both leave.
    #[test]
    fn a_failed_commit_sends_no_answer_not_even_to_a_retry() {
        let tmp = tempfile::tempdir().unwrap();
        let master = MasterKey(Kek::new([5; 16]));
        let mut store = SqliteStore::open(tmp.path()).unwrap();
        let manifest = format!(
            "dev_eui,join_eui,mac_version,app_key,nwk_key,home_net_id\n\
             {DEV:016X},{JOIN_EUI:016X},1.0.4,{APP_KEY},,{NET:06X}\n"
        );
        crate::devices::import(&mut store, &master, &manifest, crate::manifest::Format::Csv)
            .unwrap();
        let devices = Arc::new(DeviceMap::default());
        for d in store.load_devices().unwrap() {
            core::put_stored(&devices, &master, &d, core::Refresh::Replace).unwrap();
        }
        let link_key = LinkKey::new([9; 16]);
        let kek = |label: &str| LabeledKek {
            label: label.into(),
            key: Kek::new([1; 16]),
        };
        let link = Arc::new(Link {
            ctx: JoinContext {
                ns_kek: kek("ns"),
                as_kek: kek("as"),
                app_keks: HashMap::new(),
                peer_ns_keks: Default::default(),
                dev_nonce_history: 16,
                session_lifetime_s: 0,
                js_id: 1,
            },
            devices,
            peers: crate::live::Live::new(Peers {
                by_id: HashMap::from([(u64::from(NET), vec![link_key.clone()])]),
            }),
            js_id: PeerId(1),
            window_ms: 30_000,
            cache: Mutex::new(AnswerCache::new(30_000, 100)),
            metrics: Metrics::new(),
            skew_warned_ms: Default::default(),
            not_sender_warned_ms: Default::default(),
            rekey: None,
        });
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client_addr = client.local_addr().unwrap();
        let (entered_tx, entered) = mpsc::channel();
        let (verdict, verdicts) = mpsc::channel();
        let gate = Gate {
            inner: store,
            entered: entered_tx,
            verdicts,
        };
        let release_link = link.clone();
        let (writer, handle) = GroupCommit::spawn(gate, 64, 64, move |released| {
            release_link.release(&server, &BatchSender::new(8), released);
        });
        let receive = |wait_ms: u64| -> Option<Vec<u8>> {
            client
                .set_read_timeout(Some(Duration::from_millis(wait_ms)))
                .unwrap();
            let mut buf = [0u8; 2048];
            client.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
        };
        let submit = |d: &[u8]| {
            link.on_datagram(d, client_addr, Instant::now(), now_ms(), &writer)
                .unwrap();
        };

        // The first attempt's commit starts; its retry is answered from the cache meanwhile.
        let first = join_req(&link_key, 1, 1);
        submit(&first);
        entered.recv().unwrap();
        submit(&first);
        assert_eq!(link.metrics.answers_replayed.get(), 1);
        verdict.send(false).unwrap();
        assert!(
            receive(500).is_none(),
            "no answer leaves for a failed commit"
        );
        assert_eq!(link.metrics.store_errors.get(), 1);
        assert_eq!(link.metrics.answers_withheld.get(), 1, "the retry's");

        // Commits succeed again: an answer, and a later retry gets the identical one.
        let second = join_req(&link_key, 2, 2);
        submit(&second);
        entered.recv().unwrap();
        verdict.send(true).unwrap();
        let answer = receive(5_000).expect("an answer once committed");
        let (_, body) = link::open(&link_key, &answer).unwrap();
        assert_eq!(
            JoinAns::parse(body).unwrap().result.result_code,
            ResultCode::Success
        );
        submit(&second);
        let again = receive(5_000).expect("the cached answer, its commit being durable");
        assert_eq!(link::open(&link_key, &again).unwrap().1, body);
        drop(writer);
        let mut store = handle.join().unwrap();
        let stored = store.get_device(DevEui::new(DEV)).unwrap().unwrap();
        assert_eq!(stored.nonces.last_dev_nonce, Some(2));
    }
}
