//! The data uplink path's shell: the collection window ([`collect`]), the per-frame pipeline
//! around the core ([`path`]), and the shared plane ([`plane`]).

pub mod collect;
pub mod path;
pub mod plane;
