//! A fleet of virtual LoRaWAN meters behind virtual GWMP gateways, for load-testing the join
//! server and network server: device manifests, join storms, steady reporting, power-restore
//! storms, and reports of throughput, latency percentiles, losses and duplicates.
//!
//! - [`manifest`]: manifest generation from a seed, and the fleet state file (DevNonce counters);
//!   [`nonce_log`]: the DevNonce write-ahead log that makes the state crash-safe.
//! - [`device`]: the sans-IO end-device state machine; [`frames`]: its LoRaWAN frames (all crypto
//!   through the `protocol` crate).
//! - [`fleet`]: compact storage of every device; [`sched`]: the timer heap that drives them.
//! - [`gateway`]: virtual gateways (GWMP datagrams, `tmst` clocks); [`radio`]: the region and
//!   its channels (`--region`, `--sub-bands`), and the radio model of `--radio realistic` and
//!   `--city` (transmitters, duty cycle, collisions, the city, the airtime bound); [`air`]: that
//!   model's state during a run.
//! - [`engine`]: the simulation core; [`scenario`]: storm, steady, power-restore.
//! - [`net`]: the socket loop; [`run`]: `simulator run`; [`demo`]: `simulator demo`, the
//!   join server, network server and simulator in one process.
//! - [`bench`](mod@bench): `simulator bench`, the simulator alone against a counting sink.
//! - [`report`]: counters, percentiles, JSON report, table, time series, progress line.
//!
//! The model (what is simulated, how time and windows are judged) is in `docs/simulator.md`.
#![warn(missing_docs)]

pub mod air;
pub mod bench;
pub mod delivery;
pub mod demo;
pub mod device;
pub mod engine;
pub mod fleet;
pub mod frames;
pub mod gateway;
pub mod manifest;
pub mod net;
pub mod nonce_log;
pub mod radio;
pub mod report;
pub mod run;
pub mod scenario;
pub mod sched;
