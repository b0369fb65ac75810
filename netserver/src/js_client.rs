//! The join server link client (the datagram format is [`protocol::link`]).
//!
//! A [`Transaction`] is one TS002 request: its body, a nonce and a waiting slot. Every
//! transmission of it — the first and each retry — carries the *same* body (so the same
//! TransactionID) and the same nonce, sealed with a fresh timestamp. The join server answers a
//! retry from its (sender, TransactionID) cache with the identical JoinAns, which echoes the
//! nonce of the request it answers; the nonce is what the receive loop matches answers by.
//!
//! Sending uses the socket directly (UDP sends do not block; a full send buffer is reported and
//! the retry covers it), so any socket loop can send. One receive loop, on the control runtime,
//! authenticates each datagram, checks its freshness and hands the body to the waiting
//! transaction; unauthenticated, stale, malformed and unmatched datagrams are dropped and
//! counted.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use protocol::keys::LinkKey;
use protocol::link::{self, Header, LinkError, MessageType, PeerId};
use tokio::sync::{oneshot, watch};

use crate::core::KeyedHasher;
use crate::metrics::Metrics;

/// A received, authenticated JoinAns body.
pub type AnswerBody = Vec<u8>;

/// The link client.
#[derive(Debug)]
pub struct LinkClient {
    socket: UdpSocket,
    peer: SocketAddr,
    key: LinkKey,
    sender: PeerId,
    window_ms: u64,
    pending: DashMap<u64, oneshot::Sender<AnswerBody>, KeyedHasher>,
    metrics: Metrics,
}

/// One request in flight. Dropping it forgets the waiting slot.
#[derive(Debug)]
pub struct Transaction {
    client: Arc<LinkClient>,
    nonce: u64,
    body: Vec<u8>,
    answer: Option<oneshot::Receiver<AnswerBody>>,
    sent: u32,
}

/// The link could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LinkSendError {
    /// The request does not fit in one datagram.
    #[error("request does not fit in a link datagram: {0}")]
    Seal(LinkError),
    /// The socket refused the datagram.
    #[error("link send failed: {0}")]
    Io(std::io::Error),
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl LinkClient {
    /// A client sending from `socket` (non-blocking, already bound) to `peer` as `sender`.
    pub fn new(
        socket: UdpSocket,
        peer: SocketAddr,
        key: LinkKey,
        sender: PeerId,
        metrics: Metrics,
    ) -> std::io::Result<Self> {
        socket.set_nonblocking(true)?;
        Ok(Self {
            socket,
            peer,
            key,
            sender,
            window_ms: link::DEFAULT_WINDOW_MS,
            pending: DashMap::with_hasher(KeyedHasher::new()),
            metrics,
        })
    }

    /// The local address of the link socket.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Starts a transaction carrying `body` (a TS002 JSON message).
    pub fn begin(self: &Arc<Self>, body: Vec<u8>) -> Transaction {
        let (tx, rx) = oneshot::channel();
        let nonce = loop {
            let n: u64 = rand::random();
            if let dashmap::Entry::Vacant(v) = self.pending.entry(n) {
                v.insert(tx);
                break n;
            }
        };
        Transaction {
            client: Arc::clone(self),
            nonce,
            body,
            answer: Some(rx),
            sent: 0,
        }
    }

    /// Handles one datagram received on the link socket.
    pub fn on_datagram(&self, datagram: &[u8], now_ms: u64) {
        let result = self.accept(datagram, now_ms);
        let label = match &result {
            Ok(true) => "matched",
            Ok(false) => "unmatched",
            Err(e) => {
                tracing::debug!(reason = e.kind(), "link datagram dropped");
                e.kind()
            }
        };
        self.metrics.link_answers.with_label_values(&[label]).inc();
    }

    fn accept(&self, datagram: &[u8], now_ms: u64) -> Result<bool, LinkError> {
        let (header, body) = link::open(&self.key, datagram)?;
        if header.msg_type != MessageType::JoinAns {
            return Err(LinkError::Unexpected(header.msg_type));
        }
        link::check_fresh(&header, now_ms, self.window_ms)?;
        match self.pending.remove(&header.nonce) {
            Some((_, waiter)) => Ok(waiter.send(body.to_vec()).is_ok()),
            None => Ok(false),
        }
    }

    /// The receive loop: runs until `shutdown` turns true.
    pub async fn receive_loop(
        self: Arc<Self>,
        socket: tokio::net::UdpSocket,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut buf = vec![0u8; 2048];
        loop {
            let received = tokio::select! {
                r = socket.recv_from(&mut buf) => r,
                _ = shutdown.changed() => return,
            };
            match received {
                // The source address is not checked: the tag authenticates the answer, and a
                // multi-homed join server may answer from another address.
                Ok((n, _)) => self.on_datagram(&buf[..n], unix_ms()),
                Err(e) => tracing::warn!(error = %e, "link receive failed"),
            }
        }
    }
}

impl Transaction {
    /// Sends (or re-sends) the request with a fresh timestamp.
    pub fn send(&mut self) -> Result<(), LinkSendError> {
        let c = &self.client;
        let header = Header {
            msg_type: MessageType::JoinReq,
            sender: c.sender,
            timestamp_ms: unix_ms(),
            nonce: self.nonce,
        };
        let mut out = Vec::with_capacity(link::MAX_DATAGRAM);
        link::seal(&c.key, &header, &self.body, &mut out).map_err(LinkSendError::Seal)?;
        let kind = if self.sent == 0 { "first" } else { "retry" };
        self.sent += 1;
        c.metrics.link_requests.with_label_values(&[kind]).inc();
        c.socket
            .send_to(&out, c.peer)
            .map(drop)
            .map_err(LinkSendError::Io)
    }

    /// Waits for the answer until `deadline`; `None` on timeout (the slot stays open for a
    /// late answer).
    pub async fn answer_until(&mut self, deadline: tokio::time::Instant) -> Option<AnswerBody> {
        let rx = self.answer.as_mut()?;
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(body)) => {
                self.answer = None;
                Some(body)
            }
            Ok(Err(_)) => {
                self.answer = None;
                None
            }
            Err(_) => None,
        }
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        self.client.pending.remove(&self.nonce);
    }
}
