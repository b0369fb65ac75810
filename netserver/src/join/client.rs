//! The join-server client seam: one TS002 request as a transaction that the join flow sends,
//! re-sends (same TransactionID) and waits on until its answer or its give-up time
//! ([`crate::core::join::JoinFlow`]). Implementations: the UDP link
//! ([`crate::join::link::LinkClient`]), and the routing table of `[[join_servers]]`
//! ([`crate::join::route::JoinServers`]), which sends each join over the link or LoRaWAN Backend
//! Interfaces over HTTPS ([`crate::join::http`]) by JoinEUI prefix.

use std::future::Future;
use std::sync::Arc;

use protocol::ids::JoinEui;

/// A client of one join server.
pub trait JoinServerClient: Send + Sync + 'static {
    /// One request in flight (dropping it forgets the request).
    type Transaction: JoinTransaction;

    /// Starts the transaction of one TS002 request (its JSON body) for a device of `join_eui`;
    /// nothing is sent yet.
    fn begin(self: &Arc<Self>, join_eui: JoinEui, body: Vec<u8>) -> Self::Transaction;
}

/// One request in flight.
pub trait JoinTransaction: Send {
    /// Why one transmission failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Sends (or re-sends) the request.
    fn send(&mut self) -> Result<(), Self::Error>;

    /// Whether `e` fails every try alike (the request cannot be sent at all), so the join
    /// ends now rather than at its next try.
    fn is_permanent(e: &Self::Error) -> bool;

    /// Waits for the answer's body until `deadline`; `None` on timeout (a late answer may
    /// still come for a later call).
    fn answer_until(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> impl Future<Output = Option<Vec<u8>>> + Send;
}
