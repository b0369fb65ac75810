//! The application integration: events out ([`events`], written through a [`sink`] by the
//! write-ahead [`emitter`], and read back at start by [`recover`]) and downlinks in
//! ([`input`], open only to holders of the token [`auth`] checks).

pub mod auth;
pub mod emitter;
pub mod events;
pub mod input;
pub mod recover;
pub mod sink;
