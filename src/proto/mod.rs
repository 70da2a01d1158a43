//! The wire format: packets, error codes, ids and reply constructors.
//!
//! No I/O and no state lives here, so everything in this module can be fed
//! hostile bytes by property tests.

pub mod code;
pub mod id;
pub mod name;
pub mod packet;
pub mod reply;
pub mod request;
pub mod scan;

pub use code::ErrorCode;
pub use packet::{DecodeError, Packet};
