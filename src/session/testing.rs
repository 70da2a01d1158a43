//! What the session tests share: a context over a new store, and sessions
//! logged in on it whose replies can be read back.

use std::sync::Arc;

use super::{Context, LoggedIn, Session};
use crate::config::Config;
use crate::password::{Cost, Passwords};
use crate::router::Outbound;
use crate::router::outbound::{OutFrame, Receiver};
use crate::store::Store;

/// A context over a new store in a temporary directory, `tweak` applied to
/// the default config; argon2 made cheap.
pub(super) fn context_with(tweak: impl FnOnce(&mut Config)) -> (tempfile::TempDir, Context) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut config = Config::default();
    tweak(&mut config);
    let limits = config.history.message_log_limits();
    let store = Store::open_observed(dir.path(), "n1", limits, |_| {}).expect("store");
    let cheap = Cost {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };
    let passwords = Passwords::new(cheap, 1).expect("password threads");
    let ctx = Context::new(&config, store, passwords, Vec::new());
    (dir, ctx)
}

/// A session of connection `conn` logged in as the local account `me`,
/// named `name`, and the receiving end of its queue.
pub(super) fn session<'a>(
    ctx: &'a Context,
    me: uuid::Uuid,
    name: &str,
    conn: u64,
) -> (Session<'a>, Receiver) {
    let (out, rx, _closer) = Outbound::channel(1 << 16, 1 << 30);
    let mut s = Session::new(ctx, out, conn, std::net::Ipv4Addr::LOCALHOST.into());
    s.account = Some(Arc::new(LoggedIn::new(me, name.into())));
    (s, rx)
}

/// Commits `account` joining or leaving `topic` and caches the topic, as a
/// session's store job does.
pub(super) fn set_member(
    ctx: &Context,
    topic: uuid::Uuid,
    account: uuid::Uuid,
    member: bool,
) -> impl Future<Output = Result<(), crate::store::Error>> + '_ {
    let topics = ctx.topics.clone();
    ctx.store.call_synced(move |db| {
        db.set_member(topic, account, member)?;
        if let Some(t) = db.topic(topic)? {
            topics.put(t);
        }
        Ok(())
    })
}

/// The lines queued on `rx` so far.
pub(super) fn replies(rx: &mut Receiver) -> String {
    let mut out = String::new();
    while let Some(f) = rx.try_recv() {
        if let OutFrame::Lines { bytes, .. } = f {
            out.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    out
}
