//! LoRaWAN Backend Interfaces (TS002) over HTTPS, so that network servers such as ChirpStack v4
//! and The Things Stack join devices through this join server (docs/backend-interfaces.md).
//!
//! - [`listener`]: the HTTPS shell (any path, `POST`, JSON), limits and rate limits;
//! - [`handle`]: one request: authenticate, check the `SenderID`, dispatch; `JoinReq` goes
//!   through the same join pipeline, store and group commit as the UDP link;
//! - [`auth`]: peers by client certificate (mTLS) and/or bearer token ([`tokens`]);
//! - [`session`]: `SessionKeyID` and `AppSKeyReq`.
//!
//! Its configuration is [`crate::config::BiConfig`].

pub mod auth;
pub mod handle;
pub mod listener;
pub mod session;
pub mod tokens;
