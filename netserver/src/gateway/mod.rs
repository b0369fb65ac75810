//! The gateway side: the GWMP protocol as the gateway core's one [`crate::core::gateway::GatewayProtocol`]
//! ([`gwmp`]), its socket loop ([`socket`]), which gateways are known, where their downlinks
//! go and their statistics ([`registry`]), which instance owns a gateway ([`owner`]) and the hand-off of a downlink to it ([`handoff`], its sockets [`relay`]), which gateways may use the server ([`allowed`]), and the `txpk` a downlink is sent as ([`txpk`]).

pub mod allowed;
pub mod gwmp;
pub mod handoff;
pub mod owner;
pub mod registry;
pub mod relay;
pub mod socket;
pub mod txpk;
