//! Zero-touch onboarding: devices are provisioned with identity and root keys only, and join
//! nowhere until whoever holds the owner token (printed in the device's TR005 QR code) claims
//! them for a home network. Ownership can be released and passed on; every step is audited.
//!
//! - [`backend`]: the seam over the onboarding state (SQLite or PostgreSQL).
//! - [`db`]: the API-key, ownership and audit tables of the embedded SQLite store.
//! - [`service`]: the operations, with per-device authorisation.
//! - [`import`]: the streaming, all-or-nothing manifest import (API, CLI and library).
//! - [`manifest_sig`]: Ed25519 detached signatures over manifests.
//! - [`secret`]: API keys and owner tokens (random, stored as hashes, compared in constant time).
//! - [`tr005`]: the QR text fields a claim needs (failed claims are limited by
//!   [`httpsec::ratelimit`]).

pub mod backend;
pub mod db;
pub mod import;
pub mod manifest_sig;
pub mod secret;
pub mod service;
pub mod tr005;
