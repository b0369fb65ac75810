//! The application integration: events out ([`events`], written through a [`sink`] by the
//! write-ahead [`emitter`], and read back at start by [`recover`]) and downlinks in
//! ([`input`], open only to holders of the token [`auth`] checks), with the operator's forced
//! rejoins ([`rejoin`]). With MQTT ([`mqtt`]) or webhooks ([`webhook`]) configured
//! ([`config`]), every event is first in the durable event [`log`], which they deliver from
//! ([`delivery`], started by [`sinks`]) in ChirpStack's shapes ([`chirpstack`]); MQTT also
//! takes downlink [`commands`]. The gateways' TX_ACKs become `txack` and `log` events
//! ([`txack`]).

pub mod auth;
pub mod chirpstack;
pub mod commands;
pub mod config;
pub mod delivery;
pub mod emitter;
pub mod events;
pub mod input;
pub mod log;
pub mod mqtt;
pub mod recover;
pub mod rejoin;
pub mod sink;
pub mod sinks;
pub mod txack;
pub mod webhook;
