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
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use protocol::ids::NetId;
use protocol::keys::LinkKey;
use protocol::link::{self, Header, LinkError, MessageType, PeerId};
use protocol::ts002::JoinReq;

use crate::cache::{self, AnswerCache, Lookup};
use crate::core::{self, DeviceMap, JoinContext};
use crate::metrics::Metrics;
use crate::mmsg::{BatchReceiver, BatchSender};
use crate::store::{GroupCommit, Released};
use crate::wire::{self, Parsed};

/// Milliseconds since the Unix epoch by the system clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The link keys of the network servers allowed to send JoinReqs.
#[derive(Clone, Default)]
pub struct Peers {
    /// Accepted from any sender whose id is a NetID (when no per-peer keys are configured).
    pub default: Option<LinkKey>,
    /// Per-NetID keys.
    pub by_id: HashMap<u64, LinkKey>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("default", &self.default.is_some())
            .field("by_id", &self.by_id.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Peers {
    /// The key that must authenticate datagrams from `sender`.
    pub fn key_for(&self, sender: PeerId) -> Option<&LinkKey> {
        sender.net_id()?;
        self.by_id.get(&sender.0).or(self.default.as_ref())
    }
}

/// An answer waiting for its batch's commit.
pub struct Outgoing {
    addr: SocketAddr,
    key: LinkKey,
    nonce: u64,
    body: Arc<[u8]>,
    received: Instant,
    /// The join result to count once sent; `None` for answers served from the cache.
    result: Option<&'static str>,
    cache_key: Option<cache::Key>,
}

/// Everything the link needs, shared between its threads.
pub struct Link {
    /// Join processing context (KEKs, rules).
    pub ctx: JoinContext,
    /// Devices in memory.
    pub devices: Arc<DeviceMap>,
    /// Allowed network servers.
    pub peers: Peers,
    /// The join server's id on the link.
    pub js_id: PeerId,
    /// Freshness window.
    pub window_ms: u64,
    /// Answer cache.
    pub cache: Mutex<AnswerCache>,
    /// Metrics.
    pub metrics: Metrics,
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

impl Link {
    fn drop_datagram(&self, e: &LinkError, addr: SocketAddr) {
        self.metrics.link_drops.with_label_values(&[e.kind()]).inc();
        tracing::debug!(peer = %addr, reason = e.kind(), error = %e, "link datagram dropped");
    }

    /// Handles one received datagram: drops it (counted) or queues an answer.
    pub fn on_datagram(
        &self,
        datagram: &[u8],
        addr: SocketAddr,
        received: Instant,
        now_ms: u64,
        writer: &GroupCommit<Outgoing>,
    ) -> Result<(), crate::store::WriterStopped> {
        self.metrics.link_datagrams.inc();
        let header = match link::peek_header(datagram) {
            Ok(h) => h,
            Err(e) => {
                self.drop_datagram(&e, addr);
                return Ok(());
            }
        };
        if header.msg_type != MessageType::JoinReq {
            self.drop_datagram(&LinkError::Unexpected(header.msg_type), addr);
            return Ok(());
        }
        let Some(key) = self.peers.key_for(header.sender) else {
            self.drop_datagram(&LinkError::UnknownSender(header.sender), addr);
            return Ok(());
        };
        let body = match link::open(key, datagram)
            .and_then(|(h, b)| link::check_fresh(&h, now_ms, self.window_ms).map(|()| b))
        {
            Ok(b) => b,
            Err(e) => {
                self.drop_datagram(&e, addr);
                return Ok(());
            }
        };
        let Some(sender_net_id) = header.sender.net_id() else {
            self.drop_datagram(&LinkError::UnknownSender(header.sender), addr);
            return Ok(());
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
        let out = |body: Arc<[u8]>, result, cache_key| Outgoing {
            addr,
            key: key.clone(),
            nonce: header.nonce,
            body,
            received,
            result,
            cache_key,
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
                writer.submit(None, out(answer.into(), Some("malformed"), None))
            }
            Ok(Parsed::Request(req)) => self.on_request(
                &req,
                (header.sender, sender_net_id),
                now_ms,
                &span,
                writer,
                out,
            ),
        }
    }

    /// A well-formed JoinReq: answered from the cache (a retry or a replay), refused for a
    /// TransactionID reused with another request, or run through the join pipeline; the answer
    /// is queued with the nonce update it depends on.
    fn on_request(
        &self,
        req: &JoinReq,
        (sender, sender_net_id): (PeerId, NetId),
        now_ms: u64,
        span: &tracing::Span,
        writer: &GroupCommit<Outgoing>,
        out: impl Fn(Arc<[u8]>, Option<&'static str>, Option<cache::Key>) -> Outgoing,
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
            Lookup::Hit(answer) => {
                self.metrics.answers_replayed.inc();
                span.record("result", "cached");
                writer.submit(None, out(answer, None, None))
            }
            Lookup::Conflict => {
                span.record("result", "malformed");
                let answer = wire::conflict_answer(
                    req,
                    "TransactionID already used for a different JoinReq",
                );
                writer.submit(None, out(answer.into(), Some("malformed"), None))
            }
            Lookup::Miss => {
                let fields = wire::fields(req, sender_net_id, now_ms);
                let outcome = core::process(&self.ctx, &self.devices, &fields);
                let result = outcome.kind();
                span.record("result", result);
                let answer: Arc<[u8]> = wire::answer_json(req, &outcome).into();
                if let Ok(mut c) = self.cache.lock() {
                    c.insert(now_ms, ck, &req.phy_payload, answer.clone());
                }
                writer.submit(outcome.update, out(answer, Some(result), Some(ck)))
            }
        }
    }

    /// The writer's release step: after a batch committed, seal and send its answers (one
    /// `sendmmsg` per up to 64); if the commit failed, send none of them and forget their
    /// cached answers.
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
        if let Err(e) = result {
            self.metrics.store_errors.inc();
            tracing::error!(error = %e, answers = items.len(), "nonce commit failed; answers withheld");
            if let Ok(mut c) = self.cache.lock() {
                for o in &items {
                    if let Some(k) = o.cache_key {
                        c.remove(k);
                    }
                }
            }
            return;
        }
        let now = now_ms();
        // Counted before the answers leave, so that whoever holds an answer also sees it in
        // `/metrics`.
        for o in &items {
            if let Some(r) = o.result {
                self.metrics.joins.with_label_values(&[r]).inc();
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
        }
    }

    /// The receiving loop: runs until `stop` is set. Returns when the writer stops too.
    pub fn run(&self, socket: &UdpSocket, writer: &GroupCommit<Outgoing>, stop: &AtomicBool) {
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
