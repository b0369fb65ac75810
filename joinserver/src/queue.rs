//! What waits for the store writer's group commit: answers of both transports. One writer
//! ([`crate::store::GroupCommit`]) commits the nonce updates of the UDP link and of the Backend
//! Interfaces listener in the same batches, so that the updates of one device are committed in
//! the order the join pipeline made them, whichever transport its requests came by.

use std::net::UdpSocket;

use tokio::sync::oneshot;

use crate::link::{Link, Outgoing};
use crate::store::Released;
use udpbatch::BatchSender;

/// An answer waiting for its batch's commit.
pub enum Queued {
    /// A link datagram, sealed and sent by [`Link::release`].
    Link(Outgoing),
    /// An HTTP request's answer: told whether the join it depends on is committed (a failed
    /// batch, or a nonce state another instance changed first, and it is not).
    Http(oneshot::Sender<bool>),
}

impl From<Outgoing> for Queued {
    fn from(o: Outgoing) -> Self {
        Self::Link(o)
    }
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Link(_) => "Queued::Link",
            Self::Http(_) => "Queued::Http",
        })
    }
}

/// The writer's release step for both transports: HTTP answers learn the commit's result, then
/// the link sends its datagrams ([`Link::release`]).
pub fn release(
    link: &Link,
    socket: &UdpSocket,
    sender: &BatchSender,
    (result, n, items): Released<Queued>,
) {
    let ok = result.is_ok();
    let mut datagrams = Vec::with_capacity(items.len());
    // Last first, as the link rolls back a failed batch: a device that joined twice in it goes
    // back step by step.
    for (q, v) in items.into_iter().rev() {
        match q {
            Queued::Link(o) => datagrams.push((o, v)),
            Queued::Http(tx) => {
                let _ = tx.send(link.settle_foreign(ok, &v));
            }
        }
    }
    datagrams.reverse();
    link.release(socket, sender, (result, n, datagrams));
}
