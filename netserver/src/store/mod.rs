//! Sessions and frame counters, in memory and on disk.
//!
//! - [`stored`]: the stored format of a session ([`stored::StoredSession`], versioned JSON).
//! - [`envelope`] and [`labels`]: key envelopes as a live session holds them, and the
//!   interned KEKLabels they share.
//! - [`session`]: the live, compact [`session::Session`]; [`live`]: its uplink state behind
//!   the lock every uplink of the device takes once.
//! - [`table`]: the in-memory table, by DevEUI with the DevAddr index the data path reads.
//! - [`backend`]: the storage seam, [`backend::SessionBackend`]: load everything at start,
//!   commit a batch atomically and durably. [`embedded`] is its one implementation today
//!   (redb, `sessions.redb` in the data directory, no setup; [`session_journal`]: an
//!   append-only journal in front of it, checkpointed into it in the background); a networked backend
//!   (PostgreSQL) implements the same three methods with one transaction per batch.
//! - [`commit`]: the backend on its own thread with **group commit**: writes queued while a
//!   commit is in progress go into the next transaction together, so durability costs one
//!   flush per batch, not per join.
//! - [`counters`]: the durable frame counters (`uplinks.redb`), written by the emitter;
//!   [`journal`]: the append-only journal in front of a B-tree, checkpointed into it in the
//!   background, and the embedded store's counters through it.
//! - [`pg`]: the PostgreSQL backend of both seams, shared by several instances; [`sync`]: the
//!   sessions other instances make, loaded as they are committed; [`url`]: which backend
//!   `[store] url` names; [`copy`]: an embedded store moved into PostgreSQL, verified.
//! - [`owners`]: which instance holds each gateway's PULL_DATA, recorded and read in the shared
//!   state (PostgreSQL).
//! - [`queue`]: the application downlinks waiting for their device's next uplink (in memory);
//!   [`shared_queue`]: the same queue shared by several instances (PostgreSQL).
//!
//! On disk the network session keys are wrapped (RFC 3394) under the network server's KEK —
//! byte for byte the join server's envelopes when it wrapped them under that KEK, since the wrap
//! is deterministic; a key it sent in clear is wrapped before it is written — and the AppSKey
//! envelope is kept as received (wrapped under the application's KEK): the store never holds a
//! key in clear. In memory the network keys are unwrapped (see [`crate::keys`]).
//!
//! Frame counters are not written with the session but to the write-ahead counter log
//! ([`counters`]): a session record is written at its join (and, for a replaced session, at
//! the rejoin that replaces it).

pub mod backend;
pub mod commit;
#[cfg(test)]
mod conformance;
pub mod copy;
pub mod counters;
pub mod embedded;
pub mod envelope;
pub mod journal;
pub mod labels;
pub mod live;
pub mod owners;
pub mod pending_mac;
pub mod pg;
pub mod queue;
pub mod record;
pub mod restore;
pub mod session;
pub mod session_journal;
pub mod shared_queue;
pub mod stored;
pub mod sync;
pub mod table;
pub mod url;
