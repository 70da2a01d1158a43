//! `find`: search topics (only those the asker may read) or users by name,
//! a page at a time, ordered by name.

use serde_json::{Map, Value, json};

use super::admission::members_only;
use super::{Denied, LoggedIn, Outcome, Session};
use crate::proto::request::FindKind;
use crate::proto::{ErrorCode, Packet};
use crate::router::acl::Flag;

/// Most results in one answer.
const MAX_RESULTS: usize = 100;

impl Session<'_> {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn handle_find(
        &mut self,
        id: Option<&str>,
        me: &LoggedIn,
        kind: FindKind,
        name: Option<String>,
        meta: Map<String, Value>,
        limit: Option<usize>,
        cursor: Option<String>,
    ) -> Result<Outcome, Denied> {
        let limit = limit.unwrap_or(20).min(MAX_RESULTS);
        let needle = name.as_deref().map(str::to_lowercase);
        let after = cursor.as_deref().map(str::to_lowercase);
        let wanted = |n: &str| {
            let key = n.to_lowercase();
            needle.as_ref().is_none_or(|s| key.contains(s.as_str()))
                && after.as_ref().is_none_or(|a| key > *a)
        };
        let (results, last): (Vec<Value>, Option<String>) = match kind {
            FindKind::Topics => {
                let actor = self.actor(me);
                let mut found: Vec<_> = self
                    .ctx
                    .topics
                    .all()
                    .into_iter()
                    .filter(|t| wanted(&t.name))
                    .filter(|t| {
                        // Of a topic that shows itself to its members only,
                        // an outsider may match only what `find` shows.
                        let sees_meta = !members_only(t) || t.members.contains(&me.id);
                        meta.iter().all(|(k, v)| {
                            (sees_meta || k == "description") && t.meta.get(k) == Some(v)
                        })
                    })
                    .filter(|t| t.acl.allows(actor, Flag::Read))
                    .collect();
                found.sort_by_key(|t| t.name.to_lowercase());
                let more = found.len() > limit;
                found.truncate(limit);
                let last = if more {
                    found.last().map(|t| t.name.clone())
                } else {
                    None
                };
                let list = found
                    .iter()
                    .map(|t| {
                        let mut o = json!({ "id": t.id.to_string(), "name": t.name, "members": t.members.len() });
                        if let (Some(obj), Some(d)) = (o.as_object_mut(), t.meta.get("description")) {
                            obj.insert("description".into(), d.clone());
                        }
                        o
                    })
                    .collect();
                (list, last)
            }
            FindKind::Users => {
                if !meta.is_empty() {
                    return Err(Denied::new(
                        ErrorCode::RequestInvalid,
                        "ex.meta filters topics only",
                    ));
                }
                // On the read-only connection, which must not hold up the
                // commits of everyone's messages; it reads the names from
                // the cursor on (a bounded number, `FIND_SCAN`).
                let found = self
                    .ctx
                    .store
                    .read(move |db| db.find_accounts(name.as_deref(), cursor.as_deref(), limit))
                    .await?;
                let (names, last) = (found.names, found.cursor);
                (names.into_iter().map(Value::from).collect(), last)
            }
        };
        let key = match kind {
            FindKind::Topics => "topics",
            FindKind::Users => "users",
        };
        let mut p = Packet::server("found").with(key, Value::Array(results));
        if let Some(c) = last {
            p = p.with("cursor", c);
        }
        p = p.answering(id);
        Ok(self.reply(p))
    }
}
