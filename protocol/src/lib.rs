//! The LoRaWAN core shared by the join server, the network server, the simulator and the QR tool.
//!
//! Pure and synchronous: no sockets, clocks or async runtime. Conventions (byte order, key roles,
//! which specification version each rule follows) are in `docs/protocol.md`.
//!
//! - [`ids`]: DevEUI, JoinEUI, gateway EUI, DevAddr, NetID, DevNonce, JoinNonce.
//! - [`keys`]: one type per key role, redacted and zeroized.
//! - [`version`]: MAC versions and their differing rules.
//! - [`phy`]: the MHDR.
//! - [`join`]: Join-request, Join-accept, Rejoin-request.
//! - [`derive`](mod@derive): session-key derivation for 1.0.x and 1.1.
//! - [`keywrap`]: RFC 3394 key wrap and TS002 KeyEnvelopes.
//! - [`hexser`]: hex strings in TS002 JSON.
//! - [`data`]: data frames, FRMPayload and FOpts encryption, MICs.
//! - [`fcnt`]: frame-counter inference and checks.
//! - [`mac`]: MAC commands.
//! - [`region`]: regions as values (RP002 tables: EU868, US915, AU915, AS923, KR920, IN865),
//!   channel plans, receive windows, time on air.
//! - [`ts002`]: Backend Interfaces JoinReq / JoinAns messages.
//! - [`gwmp`]: the Semtech UDP packet forwarder protocol.
//! - [`link`]: the authenticated UDP datagram format between join server and network server.
//! - [`time`]: RFC 3339 times, as the servers' JSON shows them.
#![warn(missing_docs)]

mod crypto;
pub mod data;
pub mod derive;
pub mod fcnt;
pub mod gwmp;
pub mod hexser;
pub mod ids;
pub mod join;
pub mod keys;
pub mod keywrap;
pub mod link;
pub mod mac;
pub mod phy;
pub mod region;
pub mod time;
pub mod ts002;
pub mod version;
