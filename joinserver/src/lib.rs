//! The LoRaWAN join server: the only holder of root keys.
//!
//! It receives TS002 `JoinReq` messages from network servers over an authenticated UDP link
//! ([`protocol::link`]), applies the DevNonce rule of each device's LoRaWAN version, durably
//! records DevNonce and JoinNonce before answering (group commit, [`store`]), derives the session
//! keys, builds and encrypts the Join-accept, and answers with a TS002 `JoinAns` whose session
//! keys are wrapped under the network server's and the application server's KEKs.
//!
//! - [`core`]: the sans-IO join pipeline; [`nonces`]: the DevNonce/JoinNonce rules;
//!   [`cache`]: the (sender, TransactionID) answer cache.
//! - [`store`]: the storage trait, the SQLite (WAL) store and the group-commit writer.
//! - [`link`]: the UDP shell around the core.
//! - [`manifest`]: manifest rows (CSV / JSON lines), parsed incrementally; the import itself is
//!   [`onboarding::import`], and [`devices::import`] its in-memory entry point.
//! - [`peers`]: the network servers on the link, each with its own secrets.
//! - [`secrets`], [`atrest`]: secret files and root-key encryption at rest.
//! - [`config`], [`metrics`]: configuration and observability.
//! - [`onboarding`], [`api`]: owner tokens, claims, signed manifests, the audit log and the
//!   HTTP management API; [`installer`]: the installer web app it serves at `/install/`.
//! - [`wire`]: TS002 JSON ↔ the pipeline; [`server`]: start-up and shutdown.
//! - [`bi`]: LoRaWAN Backend Interfaces (TS002) over HTTPS, the second transport into the same
//!   pipeline; [`queue`]: the answers of both transports waiting for the group commit.
#![warn(missing_docs)]

pub mod api;
pub mod atrest;
pub mod bi;
pub mod cache;
pub mod config;
pub mod core;
pub mod devices;
pub mod installer;
pub mod link;
pub mod live;
pub mod manifest;
pub mod metrics;
pub mod nonces;
pub mod onboarding;
pub mod peers;
pub mod queue;
pub mod rekey;
pub mod secrets;
pub mod server;
pub mod store;
pub mod wire;
