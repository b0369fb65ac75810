//! The gateway side: which gateways are known, where their downlinks go, their statistics
//! ([`registry`]), and the `txpk` a downlink is sent as ([`txpk`]).

pub mod registry;
pub mod txpk;
