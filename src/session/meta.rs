//! `meta`: reading and setting metadata. Without `topic` it is the account's
//! own metadata (full name, favourite topics, anything else within limits).

use serde_json::{Map, Value};

use super::{Denied, LoggedIn, Outcome, Session};
use crate::proto::name::check_meta_key;
use crate::proto::{ErrorCode, Packet, reply};

impl Session<'_> {
    pub(super) async fn handle_meta(
        &mut self,
        id: Option<&str>,
        me: &LoggedIn,
        topic: Option<String>,
        values: Map<String, Value>,
    ) -> Result<Outcome, Denied> {
        if let Some(topic) = topic {
            return self.handle_topic_meta(id, me, &topic, values).await;
        }
        let account_id = me.id;
        if values.is_empty() {
            let account = self
                .ctx
                .store
                .call(move |db| db.account(account_id))
                .await?;
            let mut p = Packet::server("meta").with_from(me.name.clone());
            p.ex = account.map(|a| a.meta).unwrap_or_default();
            return Ok(self.reply(p.answering(id)));
        }
        self.check_meta(&values)?;
        let max_keys = self.ctx.max_meta_keys;
        // The account may have been deleted since this session logged in
        // (on another connection; this one is about to get its `bye`).
        self.ctx
            .store
            .call_synced(move |db| db.set_account_meta(account_id, &values, max_keys))
            .await
            .map_err(|e| match e {
                crate::store::Error::NotFound => {
                    Denied::new(ErrorCode::AccountDeleted, "the account is gone")
                }
                other => other.into(),
            })?;
        Ok(self.reply(reply::ack(id)))
    }

    pub(super) fn check_meta(&self, values: &Map<String, Value>) -> Result<(), Denied> {
        let invalid = |m: String| Denied::new(ErrorCode::MetaInvalid, m);
        if values.len() > self.ctx.max_meta_keys {
            return Err(invalid(format!(
                "at most {} metadata keys",
                self.ctx.max_meta_keys
            )));
        }
        for (key, value) in values {
            check_meta_key(key).map_err(|m| invalid(format!("{key:?}: {m}")))?;
            let size = serde_json::to_vec(value)
                .map(|v| v.len())
                .unwrap_or(usize::MAX);
            if size > self.ctx.max_meta_value_bytes {
                return Err(invalid(format!(
                    "{key:?}: values have at most {} bytes of JSON",
                    self.ctx.max_meta_value_bytes
                )));
            }
            if key == "favorites" && !value.is_null() {
                check_favorites(value).map_err(|m| invalid(format!("\"favorites\": {m}")))?;
            }
            if key == "admission"
                && !value.is_null()
                && !matches!(value.as_str(), Some("open" | "members"))
            {
                return Err(invalid("\"admission\": \"open\" or \"members\"".to_owned()));
            }
            if key == "format" && !value.is_null() {
                check_format(value).map_err(|m| invalid(format!("\"format\": {m}")))?;
            }
        }
        Ok(())
    }
}

/// `format` is a base format (`plain`, `fixed`, `markdown`, `html`, `irc`,
/// `binary`, or another that clients treat as `plain`), optionally followed
/// by `:` and a custom name (`fixed:ascii-art`).
fn check_format(value: &Value) -> Result<(), &'static str> {
    let text = value.as_str().ok_or("must be a string")?;
    let (base, custom) = match text.split_once(':') {
        Some((b, c)) => (b, Some(c)),
        None => (text, None),
    };
    let word = |s: &str, extra: &str| {
        !s.is_empty()
            && s.len() <= 32
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(c))
    };
    if !word(base, "-") || custom.is_some_and(|c| !word(c, "-_.")) {
        return Err("is base or base:custom, lowercase letters, digits and '-'");
    }
    Ok(())
}

/// `favorites` is a list of `{"topic": "<uuid or name>", "autojoin": bool}`.
fn check_favorites(value: &Value) -> Result<(), &'static str> {
    let list = value.as_array().ok_or("must be a list")?;
    for item in list {
        let obj = item.as_object().ok_or("each favourite is an object")?;
        if !obj.get("topic").is_some_and(Value::is_string) {
            return Err("each favourite has a \"topic\" string");
        }
        if obj.get("autojoin").is_some_and(|v| !v.is_boolean()) {
            return Err("\"autojoin\" is true or false");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::super::testing;
    use crate::store;

    /// A `meta` of an account's own metadata that reaches the store's
    /// queue behind the account's delete (sent on another connection just
    /// before its `bye`) writes nothing: the deleted account has no
    /// metadata afterwards, and the request is answered `account/deleted`.
    #[tokio::test]
    async fn a_meta_write_queued_behind_the_accounts_delete_leaves_nothing() {
        let (_dir, ctx) = testing::context_with(|_| {});
        let id = ctx
            .store
            .call(|db| db.create_account("dan", "$argon2id$x"))
            .await
            .unwrap()
            .id;
        let (mut s, mut rx) = testing::session(&ctx, id, "dan", 7);
        let (release, held) = store::hold_store_thread(&ctx.store).await;
        let mut delete = Box::pin(ctx.store.call_synced(move |db| db.delete_account(id)));
        assert!((&mut delete).now_or_never().is_none());
        let mut meta =
            Box::pin(s.handle_line(br#"{"op":"meta","id":"m","ex":{"fullname":"Dan Q"}}"#));
        assert!((&mut meta).now_or_never().is_none());
        drop(release);
        held.await.unwrap().unwrap();
        delete.await.unwrap();
        let _ = meta.await;
        drop(s);
        let gone = ctx.store.call(move |db| db.account(id)).await.unwrap();
        let gone = gone.unwrap();
        assert!(gone.deleted);
        assert!(gone.meta.is_empty(), "{:?}", gone.meta);
        let lines = testing::replies(&mut rx);
        assert!(lines.contains(r#""code":"account/deleted""#), "{lines}");
        ctx.store.close().await;
    }
}
