//! Routing between connections. For now it holds the one piece every
//! destination shares: the bounded outbound queue that a connection's writer
//! drains. Topics, membership and fan-out build on it.

pub mod acl;
pub mod outbound;
pub mod presence;

pub use outbound::{Closer, OutFrame, Outbound, PushError};
pub use presence::Presence;
