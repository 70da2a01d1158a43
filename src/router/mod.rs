//! Routing between connections: the topic table, ACL evaluation, who is
//! connected, and fan-out of one serialized packet to every member's
//! connections through their bounded outbound queues. Nothing here awaits a
//! socket or knows SQL.

pub mod acl;
pub mod admission;
pub mod frame_pool;
pub mod online;
pub mod outbound;
pub mod presence;
pub mod topics;

pub use admission::JoinRequests;
pub use outbound::{Closer, OutFrame, Outbound, PushError, Receiver};
pub use presence::Presence;
pub use topics::Topics;
