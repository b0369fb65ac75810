//! What waits for the store writer's group commit: answers of both transports. One writer
//! ([`crate::store::GroupCommit`]) commits the nonce updates of the UDP link and of the Backend
//! Interfaces listener in the same batches, so that the updates of one device are committed in
//! the order the join pipeline made them, whichever transport its requests came by.

use std::net::UdpSocket;

use tokio::sync::oneshot;

use crate::link::{Link, Outgoing};
use crate::mmsg::BatchSender;
use crate::store::Released;

/// An answer waiting for its batch's commit.
pub enum Queued {
    /// A link datagram, sealed and sent by [`Link::release`].
    Link(Outgoing),
    /// An HTTP request's answer: told whether the commit it depends on succeeded.
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
    for q in items {
        match q {
            Queued::Link(o) => datagrams.push(o),
            Queued::Http(tx) => {
                let _ = tx.send(ok);
            }
        }
    }
    link.release(socket, sender, (result, n, datagrams));
}
