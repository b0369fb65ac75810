//! The sans-IO core: pure decisions on explicit inputs (`now`, the datagram's content, the state,
//! an RNG). Sockets, clocks and storage live in the shell ([`crate::server`]), which feeds these
//! functions and carries out what they return. Everything here is tested in memory with a fake
//! clock (`Instant` values built by adding durations to one base instant).

pub mod adr;
pub mod airtime;
pub mod classify;
pub mod data;
pub mod dedup;
pub mod devaddr;
pub mod device;
pub mod gateway;
pub mod join;
pub mod joinlimit;
pub mod mac_handler;
pub mod reception;
pub mod rejoin;
pub mod scheduler;
pub mod timing;
pub mod uplink;

/// A keyed, fast hasher for maps keyed by attacker-chosen values (PHYPayloads, DevAddrs, EUIs,
/// transaction ids): foldhash with a random seed per map (`foldhash::fast::RandomState`), as
/// the join server uses. SipHash is several times slower and FxHash is unkeyed (DESIGN.md,
/// performance).
pub type KeyedHasher = foldhash::fast::RandomState;
