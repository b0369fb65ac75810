//! The join path: a Join-request's first copy to its Join-accept ([`otaa`]), through the join
//! server link ([`link`]).

pub mod link;
pub mod otaa;
