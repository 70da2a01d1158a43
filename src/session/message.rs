//! `send`: relay a message to every connection of every member of a topic.
//! The relayed packet is serialized once; the sender's `ack` carries the
//! server-assigned `id` and `ts` it was relayed with.

use serde_json::{Map, Value};

use super::{Denied, LoggedIn, Outcome, Session};
use crate::proto::{ErrorCode, Packet, reply};
use crate::router::acl::Flag;

impl Session<'_> {
    pub(super) fn handle_send(
        &mut self,
        id: Option<&str>,
        me: &LoggedIn,
        topic: &str,
        mut ex: Map<String, Value>,
    ) -> Result<Outcome, Denied> {
        let t = self.resolve(topic)?;
        if !t.members.contains(&me.id) {
            return Err(Denied::new(
                ErrorCode::TopicNotMember,
                "join the topic before sending to it",
            ));
        }
        if !t.acl.allows(self.actor(me), Flag::Write) {
            return Err(Denied::new(
                ErrorCode::AclDenied,
                "the topic's ACL does not let you send to it",
            ));
        }
        // `ex.for` is the server's: a relayed packet must not look like a
        // reply to one of the recipients' requests.
        ex.remove("for");
        let mut relay = Packet::server("send").with_from(me.name.as_str());
        relay.topic = Some(t.id.to_string());
        relay.ex = ex;
        let bytes = relay.to_line();
        self.ctx
            .presence
            .deliver(t.members.iter(), &bytes, self.conn_id);
        let mut ack = reply::ack(id);
        if let (Some(rid), Some(ts)) = (relay.id, relay.ts) {
            ack = ack.with("id", rid).with("ts", ts);
        }
        Ok(self.reply(ack))
    }
}
