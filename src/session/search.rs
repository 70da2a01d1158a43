//! `search`: words and phrases in the kept messages of the topics the
//! asker may read, newest first, a page at a time.

use std::collections::HashSet;

use serde_json::Value;

use super::{Denied, LoggedIn, Outcome, Session};
use crate::proto::packet::{KeptSend, encode_line};
use crate::proto::{ErrorCode, Packet};
use crate::router::acl::Flag;
use crate::store::TopicRecord;
use crate::store::search::Query;

/// Most words and phrases in one query.
const MAX_TERMS: usize = 16;

/// Results per page when the request names no `limit`.
const DEFAULT_LIMIT: usize = 20;

/// The words and `"quoted phrases"` of a query; an unclosed quote runs to
/// the end, and one of punctuation alone is left out. Everything else is
/// text: no operators. Control characters separate words, as the index's
/// tokenizer reads them (SQLite refuses a NUL inside a query).
fn terms(q: &str) -> Result<Vec<String>, String> {
    let q: String = q
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut out = Vec::new();
    let mut rest = q.trim_start();
    while !rest.is_empty() {
        let (term, after) = match rest.strip_prefix('"') {
            Some(quoted) => quoted.split_once('"').unwrap_or((quoted, "")),
            None => {
                let end = rest
                    .find(|c: char| c.is_whitespace() || c == '"')
                    .unwrap_or(rest.len());
                rest.split_at(end)
            }
        };
        let term = term.trim();
        if has_word(term) {
            out.push(term.to_owned());
        }
        rest = after.trim_start();
    }
    if out.is_empty() {
        return Err("ex.q holds no word to search for".into());
    }
    if out.len() > MAX_TERMS {
        return Err(format!("ex.q holds at most {MAX_TERMS} words and phrases"));
    }
    Ok(out)
}

/// Whether `term` holds a word as the index's tokenizer reads one: a
/// letter, a digit or a private-use character (unicode61's token
/// characters). Punctuation alone is none: its phrase would be empty, and
/// FTS5 matches nothing with an empty phrase in the query.
fn has_word(term: &str) -> bool {
    term.chars().any(|c| {
        c.is_alphanumeric()
            || matches!(
                c,
                '\u{e000}'..='\u{f8ff}' | '\u{f0000}'..='\u{ffffd}' | '\u{100000}'..='\u{10fffd}'
            )
    })
}

/// Whether a topic's messages are `binary`: relayed, never inspected.
fn is_binary(t: &TopicRecord) -> bool {
    t.meta
        .get("format")
        .and_then(Value::as_str)
        .is_some_and(|f| f == "binary" || f.starts_with("binary:"))
}

/// The parts of a `search` request that shape the query.
pub(super) struct Filters {
    /// Only this topic.
    pub topic: Option<String>,
    /// Only this sender (an account name).
    pub from: Option<String>,
    /// Only before this Unix ms.
    pub before: Option<i64>,
    /// Only at or after this Unix ms.
    pub after: Option<i64>,
    /// Most results.
    pub limit: Option<usize>,
    /// A previous page's `cursor`.
    pub cursor: Option<String>,
}

impl Session<'_> {
    pub(super) async fn handle_search(
        &mut self,
        id: Option<&str>,
        me: &LoggedIn,
        q: &str,
        filters: Filters,
    ) -> Result<Outcome, Denied> {
        let invalid = |m: String| Denied::new(ErrorCode::RequestInvalid, m);
        let terms = terms(q).map_err(invalid)?;
        let cursor = match &filters.cursor {
            Some(c) => Some(
                c.parse::<i64>()
                    .map_err(|_| invalid("ex.cursor is a previous page's cursor".into()))?,
            ),
            None => None,
        };
        let topic = match &filters.topic {
            Some(name) => Some(self.readable(me, name)?),
            None => None,
        };
        let actor = self.actor(me);
        // What may be searched: live topics the asker may read, whose
        // messages are not binary.
        let topics: HashSet<uuid::Uuid> = match &topic {
            Some(t) => [t.clone()].into_iter().collect::<Vec<_>>(),
            None => self.ctx.topics.all(),
        }
        .iter()
        .filter(|t| {
            !t.deleted
                && !is_binary(t)
                && t.acl.allows(actor, Flag::Read)
                && (!super::admission::members_only(t) || t.members.contains(&me.id))
        })
        .map(|t| t.id)
        .collect();
        let limit = filters
            .limit
            .unwrap_or(DEFAULT_LIMIT)
            .min(self.ctx.history.max_search_page);
        let mut query = Query {
            terms,
            topic: topic.map(|t| t.id),
            topics,
            sender: None,
            since_ms: filters.after,
            until_ms: filters.before,
            cursor,
            limit,
            scan: self.ctx.history.search_scan,
        };
        let from = filters.from;
        // On the read-only connection, as history is: a page may scan
        // thousands of matches, which must not hold up commits.
        let (found, names) = self
            .ctx
            .store
            .read_searched(move |db| {
                if let Some(name) = from {
                    match db.account_by_name(&name)? {
                        Some(a) => query.sender = Some(a.id),
                        // Nobody by that name sent anything.
                        None => query.topics.clear(),
                    }
                }
                if query.topics.is_empty() {
                    query.terms.clear();
                }
                let mut found = db.search(&query)?;
                db.current_text(&mut found.messages)?;
                let senders: Vec<uuid::Uuid> = found.messages.iter().map(|m| m.sender).collect();
                let names = db.account_names(&senders)?;
                Ok((found, names))
            })
            .await?;
        // One answer within the line limit, each message as `history`
        // shows it (its `ex` as stored text).
        let budget = self
            .ctx
            .max_line_bytes
            .saturating_sub(super::message::ANSWER_ENVELOPE);
        let (mut used, mut cut) = (0, false);
        let mut rendered = Vec::with_capacity(found.messages.len());
        for m in &found.messages {
            let from = match names.get(&m.sender) {
                Some(name) => name.clone(),
                None => format!("account:{}", m.sender),
            };
            let topic = m.topic.to_string();
            let Ok(text) = serde_json::value::to_raw_value(&KeptSend::new(m, m.ts, &topic, &from))
            else {
                continue;
            };
            let size = text.get().len() + 1;
            if used + size > budget {
                cut = true;
                break;
            }
            used += size;
            rendered.push(text);
        }
        // Cut short to fit a line: go on after the last message shown (or
        // after the first, when even that one does not fit an answer).
        let cursor = match cut {
            true => found
                .positions
                .get(rendered.len().saturating_sub(1))
                .copied()
                .or(found.cursor),
            false => found.cursor,
        };
        let answer = Packet::server("search");
        let line = encode_line(&SearchAnswer {
            id: answer.id.as_deref(),
            ts: answer.ts,
            op: "search",
            ex: SearchEx {
                messages: rendered,
                cursor: cursor.map(|c| c.to_string()),
                r#for: id,
            },
        });
        Ok(self.reply_line(line))
    }
}

/// The `search` answer, in `Packet`'s field order, with the messages as
/// text.
#[derive(serde::Serialize)]
struct SearchAnswer<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ts: Option<i64>,
    op: &'static str,
    ex: SearchEx<'a>,
}

#[derive(serde::Serialize)]
struct SearchEx<'a> {
    messages: Vec<Box<serde_json::value::RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    r#for: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_phrases() {
        assert_eq!(
            terms("  deploy \"went fine\" ok\"not closed").unwrap(),
            ["deploy", "went fine", "ok", "not closed"]
        );
        assert_eq!(terms("a\"\"b").unwrap(), ["a", "b"]);
        assert!(terms("  \"\"  ").is_err());
        assert!(terms(&"w ".repeat(17)).is_err());
        assert_eq!(terms(&"w ".repeat(16)).unwrap().len(), 16);
        // Control characters separate words, in phrases too.
        assert_eq!(terms("a\u{0}b \"c\u{1}d\"").unwrap(), ["a", "b", "c d"]);
        assert!(terms("\u{0}\t\u{7f}").is_err());
    }

    #[test]
    fn punctuation_alone_is_no_word() {
        assert_eq!(
            terms("deploy - staging \"?!\" :)").unwrap(),
            ["deploy", "staging"]
        );
        assert_eq!(
            terms("c++ \"a-b\" ½ \u{e000}").unwrap(),
            ["c++", "a-b", "½", "\u{e000}"]
        );
        assert!(terms("? - \"!!\" 🎉").is_err());
    }
}
