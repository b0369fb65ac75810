//! The application integration: events out ([`events`], written through a [`sink`] by the
//! write-ahead [`emitter`], and read back at start by [`recover`]) and downlinks in
//! ([`input`], open only to holders of the token [`auth`] checks), with the operator's forced
//! rejoins ([`rejoin`]).

pub mod auth;
pub mod emitter;
pub mod events;
pub mod input;
pub mod recover;
pub mod rejoin;
pub mod sink;
