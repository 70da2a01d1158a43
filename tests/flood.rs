//! A flood of wrong-password logins must not hold up a logged-in user's
//! traffic: hashing runs on the blocking pool, one at a time here, while the
//! user's requests are answered on the async workers.
//!
//! The bound is stated as an order, not a time: all of the user's ping round
//! trips complete before the flood's hashes are done. The worst round trip
//! seen is printed for the README, not asserted.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;

const FLOODERS: usize = 4;
const ATTEMPTS: usize = 25;
const PINGS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_flood_does_not_delay_logged_in_traffic() {
    let server = TestServer::start_with(|c| {
        slow_hashes(c);
        c.auth.max_failures_per_account = 1_000_000;
        c.auth.max_failures_per_ip = 1_000_000;
    })
    .await;
    server.register("dan", "hellosecret").await;
    let mut user = server.login("dan", "hellosecret").await;

    let answered = Arc::new(AtomicUsize::new(0));
    let mut flood = Vec::new();
    for f in 0..FLOODERS {
        let mut c = server.client().await;
        let answered = answered.clone();
        let mut batch = Vec::new();
        for i in 0..ATTEMPTS {
            let p = password_auth(&format!("victim{f}"), &format!("guess-{i}-xxxx"))
                .with_id(format!("f{f}-{i}"));
            batch.extend_from_slice(&p.to_line());
        }
        c.send_raw(&batch).await.unwrap();
        flood.push(tokio::spawn(async move {
            for _ in 0..ATTEMPTS {
                let p = c
                    .recv_timeout(std::time::Duration::from_secs(120))
                    .await
                    .unwrap();
                assert_eq!(p.ex_str("code"), Some("auth/failed"));
                answered.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }

    let worst = ping_round_trips(&mut user, PINGS).await;
    let done_when_pings_finished = answered.load(Ordering::SeqCst);
    eprintln!(
        "worst ping round trip during the flood: {worst:?}; flood answers by then: {done_when_pings_finished}/{}",
        FLOODERS * ATTEMPTS
    );
    assert!(
        done_when_pings_finished < FLOODERS * ATTEMPTS,
        "the user's pings waited for the whole flood"
    );
    for f in flood {
        f.await.unwrap();
    }
    assert_eq!(answered.load(Ordering::SeqCst), FLOODERS * ATTEMPTS);
    server.stop().await;
}
