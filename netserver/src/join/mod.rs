//! The join path: a Join-request's first copy to its Join-accept ([`otaa`]), and a LoRaWAN 1.1
//! Rejoin-request's ([`rejoin`]), through a join server client ([`client`], the seam; [`link`],
//! the UDP link; [`http`], LoRaWAN Backend Interfaces over HTTPS; [`route`], the choice between
//! them by JoinEUI prefix).

pub mod client;
pub mod http;
pub mod key_use;
pub mod link;
pub mod otaa;
pub mod rejoin;
pub mod route;
