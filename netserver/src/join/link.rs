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
use std::time::SystemTime;

use dashmap::DashMap;
use protocol::keys::LinkKey;
use protocol::link::{self, Header, LinkError, MessageType, PeerId};
use tokio::sync::{oneshot, watch};

use crate::core::KeyedHasher;
use crate::join::client::{JoinServerClient, JoinTransaction};
use crate::ops::metrics::Metrics;
use protocol::time::unix_ms;

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
            pending: DashMap::with_hasher(KeyedHasher::default()),
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
                Ok((n, _)) => self.on_datagram(&buf[..n], unix_ms(SystemTime::now())),
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
            timestamp_ms: unix_ms(SystemTime::now()),
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

impl JoinServerClient for LinkClient {
    type Transaction = Transaction;

    fn begin(self: &Arc<Self>, _join_eui: protocol::ids::JoinEui, body: Vec<u8>) -> Transaction {
        LinkClient::begin(self, body)
    }
}

impl JoinTransaction for Transaction {
    type Error = LinkSendError;

    fn send(&mut self) -> Result<(), LinkSendError> {
        Transaction::send(self)
    }

    /// A request too large for one datagram never fits; a socket error may pass.
    fn is_permanent(e: &LinkSendError) -> bool {
        matches!(e, LinkSendError::Seal(_))
    }

    fn answer_until(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> impl std::future::Future<Output = Option<AnswerBody>> + Send {
        Transaction::answer_until(self, deadline)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use protocol::ids::NetId;

    use super::*;

    fn key() -> LinkKey {
        LinkKey::new([7; 16])
    }

    type Seen = std::thread::JoinHandle<Vec<(Header, Vec<u8>)>>;

    /// A peer on a real socket that records requests and answers from a script.
    fn peer(answers: Vec<Option<&'static [u8]>>, answer_key: LinkKey) -> (SocketAddr, Seen) {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let addr = s.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buf = [0u8; 2048];
            for answer in answers {
                let Ok((n, from)) = s.recv_from(&mut buf) else {
                    break;
                };
                let (h, body) = link::open(&key(), &buf[..n]).expect("authentic request");
                seen.push((h, body.to_vec()));
                if let Some(a) = answer {
                    let mut out = Vec::new();
                    let header = Header {
                        msg_type: MessageType::JoinAns,
                        sender: PeerId(0),
                        timestamp_ms: unix_ms(SystemTime::now()),
                        nonce: h.nonce,
                    };
                    link::seal(&answer_key, &header, a, &mut out).unwrap();
                    s.send_to(&out, from).unwrap();
                }
            }
            seen
        });
        (addr, h)
    }

    async fn client(peer: SocketAddr, m: &Metrics) -> Arc<LinkClient> {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx = tokio::net::UdpSocket::from_std({
            let c = sock.try_clone().unwrap();
            c.set_nonblocking(true).unwrap();
            c
        })
        .unwrap();
        let sender = PeerId::from_net_id(NetId::new(0x13).unwrap());
        let c = Arc::new(LinkClient::new(sock, peer, key(), sender, m.clone()).unwrap());
        let (_tx, stop) = watch::channel(false);
        tokio::spawn(Arc::clone(&c).receive_loop(rx, stop));
        std::mem::forget(_tx);
        c
    }

    fn soon() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(300)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn retries_reuse_body_and_nonce_and_get_the_answer() {
        let m = Metrics::new();
        // The first transmission is lost (no answer), the retry is answered.
        let (addr, peer) = peer(vec![None, Some(b"{\"answer\":1}")], key());
        let c = client(addr, &m).await;
        let mut t = c.begin(b"{\"TransactionID\":7}".to_vec());
        t.send().unwrap();
        assert_eq!(t.answer_until(soon()).await, None);
        t.send().unwrap();
        assert_eq!(
            t.answer_until(soon()).await.as_deref(),
            Some(&b"{\"answer\":1}"[..])
        );
        let seen = peer.join().unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].0.nonce, seen[1].0.nonce, "a retry keeps its nonce");
        assert_eq!(seen[0].1, seen[1].1, "a retry keeps its body");
        assert_eq!(seen[0].0.sender, PeerId(0x13));
        assert_eq!(m.link_requests.with_label_values(&["retry"]).get(), 1);
        assert_eq!(m.link_answers.with_label_values(&["matched"]).get(), 1);
        drop(t);
        assert!(c.pending.is_empty(), "finished transactions leave no slot");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn answers_under_another_key_are_dropped() {
        let m = Metrics::new();
        let (addr, peer) = peer(vec![Some(b"{}")], LinkKey::new([8; 16]));
        let c = client(addr, &m).await;
        let mut t = c.begin(b"{}".to_vec());
        t.send().unwrap();
        assert_eq!(t.answer_until(soon()).await, None);
        peer.join().unwrap();
        assert_eq!(m.link_answers.with_label_values(&["bad_tag"]).get(), 1);
    }

    #[test]
    fn stale_and_unmatched_answers_are_counted() {
        let m = Metrics::new();
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let c = LinkClient::new(
            sock,
            "127.0.0.1:9".parse().unwrap(),
            key(),
            PeerId(0x13),
            m.clone(),
        )
        .unwrap();
        let seal = |ts: u64, ty: MessageType| {
            let mut out = Vec::new();
            let h = Header {
                msg_type: ty,
                sender: PeerId(0),
                timestamp_ms: ts,
                nonce: 42,
            };
            link::seal(&key(), &h, b"{}", &mut out).unwrap();
            out
        };
        let now = unix_ms(SystemTime::now());
        c.on_datagram(&seal(now, MessageType::JoinAns), now);
        c.on_datagram(&seal(now - 60_000, MessageType::JoinAns), now);
        c.on_datagram(&seal(now, MessageType::JoinReq), now);
        c.on_datagram(b"garbage", now);
        let get = |l: &str| m.link_answers.with_label_values(&[l]).get();
        assert_eq!(get("unmatched"), 1);
        assert_eq!(get("stale"), 1);
        assert_eq!(get("unexpected_type"), 1);
        assert_eq!(get("too_short"), 1);
    }
}
