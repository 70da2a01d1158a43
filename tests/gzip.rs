//! The `10bit-gzip/0.1` transport end to end, with our client and with a raw
//! TLS socket speaking gzip through flate2's own streaming encoder/decoder
//! (an implementation that is not ours).

mod common;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use tenthbit::client::Client;
use tenthbit::proto::Packet;
use tenthbit::tls::{self, Alpn, Trust};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

async fn raw_gzip(server: &TestServer) -> TlsStream<TcpStream> {
    let config =
        tls::client_config(&Trust::Fingerprint(server.fingerprint), &[Alpn::Gzip]).unwrap();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::clone(&config))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(
        stream.get_ref().1.alpn_protocol(),
        Some(&b"10bit-gzip/0.1"[..])
    );
    stream
}

/// Reads from `stream` through a flate2 streaming decoder until `n` complete
/// lines have been decoded; returns them.
async fn read_lines(
    stream: &mut TlsStream<TcpStream>,
    decoder: &mut flate2::write::GzDecoder<Vec<u8>>,
    n: usize,
) -> Vec<Packet> {
    read_lines_within(stream, decoder, n, WAIT).await
}

/// [`read_lines`], allowing `limit` for each read.
async fn read_lines_within(
    stream: &mut TlsStream<TcpStream>,
    decoder: &mut flate2::write::GzDecoder<Vec<u8>>,
    n: usize,
    limit: std::time::Duration,
) -> Vec<Packet> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let text = decoder.get_ref().clone();
        let complete = text.iter().filter(|&&b| b == b'\n').count();
        if complete >= n {
            let mut lines = Vec::new();
            for line in text.split(|&b| b == b'\n').take(n) {
                lines.push(Packet::decode(line, 32).expect("server line decodes"));
            }
            // Keep only what follows the lines we returned.
            let consumed: usize = text
                .split(|&b| b == b'\n')
                .take(n)
                .map(|l| l.len() + 1)
                .sum();
            decoder.get_mut().drain(..consumed);
            return lines;
        }
        let got = tokio::time::timeout(limit, stream.read(&mut buf))
            .await
            .expect("server answers in time")
            .unwrap();
        assert!(got > 0, "server closed early");
        decoder.write_all(&buf[..got]).unwrap();
        decoder.flush().unwrap();
    }
}

#[tokio::test]
async fn interoperates_with_flate2_streaming_gzip_both_ways() {
    let server = TestServer::start().await;
    let mut stream = raw_gzip(&server).await;
    let mut decoder = flate2::write::GzDecoder::new(Vec::new());
    let welcome = read_lines(&mut stream, &mut decoder, 1).await;
    assert_eq!(welcome[0].op, "welcome");
    assert_eq!(welcome[0].ex_str("protocol"), Some("10bit-gzip/0.1"));

    // flate2's GzEncoder: `flush()` is a sync flush, so each batch is
    // decodable by the server as soon as it arrives.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for round in 0..5 {
        for i in 0..3 {
            writeln!(encoder, "{{\"id\":\"g{round}-{i}\",\"op\":\"ping\"}}").unwrap();
        }
        encoder.flush().unwrap();
        let wire: Vec<u8> = encoder.get_mut().drain(..).collect();
        stream.write_all(&wire).await.unwrap();
        let replies = read_lines(&mut stream, &mut decoder, 3).await;
        for (i, p) in replies.iter().enumerate() {
            assert_eq!(p.op, "pong");
            assert_eq!(p.ex_str("for"), Some(format!("g{round}-{i}").as_str()));
        }
    }
    // Bad input inside the gzip stream is answered like any other.
    encoder.write_all(b"not json\n").unwrap();
    encoder.flush().unwrap();
    let wire: Vec<u8> = encoder.get_mut().drain(..).collect();
    stream.write_all(&wire).await.unwrap();
    let e = read_lines(&mut stream, &mut decoder, 1).await;
    assert_eq!(e[0].ex_str("code"), Some("packet/malformed"));

    // quit: ack, then the server ends its gzip member (trailer checked by
    // flate2) and closes.
    encoder
        .write_all(b"{\"id\":\"q\",\"op\":\"quit\"}\n")
        .unwrap();
    let wire = encoder.finish().unwrap();
    stream.write_all(&wire).await.unwrap();
    let ack = read_lines(&mut stream, &mut decoder, 1).await;
    assert_eq!(ack[0].op, "ack");
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    decoder.write_all(&rest).unwrap();
    let tail = decoder
        .finish()
        .expect("server's gzip member ends with a valid trailer");
    assert!(tail.is_empty(), "nothing after the ack: {tail:?}");
    server.stop().await;
}

#[tokio::test]
async fn our_client_speaks_gzip_including_bad_input() {
    let server = TestServer::start().await;
    let mut c = server.connect_alpn(vec![Alpn::Gzip]).await;
    assert_eq!(c.alpn(), Alpn::Gzip);
    expect_op(&mut c, "welcome").await;
    for i in 0..50 {
        let p = request(&mut c, Packet::request("ping").with_id(format!("z{i}"))).await;
        assert_eq!(p.op, "pong");
    }
    c.send_raw(b"[\"not an object\"]\n").await.unwrap();
    expect_error(&mut c, "packet/not-object").await;
    let p = request(&mut c, Packet::request("join")).await;
    assert_eq!(p.ex_str("code"), Some("auth/required"));
    server.stop().await;
}

#[tokio::test]
async fn limits_apply_to_decompressed_bytes() {
    let server = TestServer::start_with(|c| c.limits.max_line_bytes = 8192).await;
    // A line of `mib` MiB of one byte compresses to a few KiB on the wire:
    // the server counts what it decompresses and refuses the line.
    async fn over_long(c: &mut Client, mib: usize) {
        let chunk = vec![b' '; 1024 * 1024];
        let mut first = b"{\"op\":\"ping\",\"ex\":{\"pad\":\"".to_vec();
        first.extend_from_slice(&chunk);
        // A connection the server cuts may refuse the last writes.
        let _ = c.send_raw(&first).await;
        for _ in 1..mib {
            let _ = c.send_raw(&chunk).await;
        }
        let _ = c
            .send_raw(b"\"}}\n{\"id\":\"after-bomb\",\"op\":\"ping\"}\n")
            .await;
        expect_error(c, "packet/too-large").await;
    }
    // Within the first MiB past the report: refused, and the session goes on.
    let mut c = server.connect_alpn(vec![Alpn::Gzip]).await;
    expect_op(&mut c, "welcome").await;
    over_long(&mut c, 1).await;
    let p = expect_op(&mut c, "pong").await;
    assert_eq!(p.ex_str("for"), Some("after-bomb"));
    // 32 MiB: the tail past that is silent input (9.6), and cut.
    let mut c = server.connect_alpn(vec![Alpn::Gzip]).await;
    expect_op(&mut c, "welcome").await;
    over_long(&mut c, 32).await;
    expect_bye(&mut c, "rate/silent-input").await;
    server.stop().await;
}

#[tokio::test]
async fn corrupt_gzip_from_client_gets_bye_and_close() {
    let server = TestServer::start().await;
    let mut stream = raw_gzip(&server).await;
    let mut decoder = flate2::write::GzDecoder::new(Vec::new());
    read_lines(&mut stream, &mut decoder, 1).await;
    // Plain JSON where a gzip header belongs.
    stream.write_all(b"{\"op\":\"ping\"}\n").await.unwrap();
    let bye = read_lines(&mut stream, &mut decoder, 1).await;
    assert_eq!(bye[0].op, "bye");
    assert_eq!(bye[0].ex_str("code"), Some("transport/bad-gzip"));
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    decoder.write_all(&rest).unwrap();
    decoder.finish().expect("server ends its member cleanly");

    // A valid header followed by corrupt deflate data.
    let mut stream = raw_gzip(&server).await;
    let mut decoder = flate2::write::GzDecoder::new(Vec::new());
    read_lines(&mut stream, &mut decoder, 1).await;
    let mut bad = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    bad.extend_from_slice(&[0xff; 64]);
    stream.write_all(&bad).await.unwrap();
    let bye = read_lines(&mut stream, &mut decoder, 1).await;
    assert_eq!(bye[0].ex_str("code"), Some("transport/bad-gzip"));

    // A request sync-flushed, then garbage, in one write: the request
    // decoded before the fault is answered, then `bye` (protocol.md 4).
    let mut stream = raw_gzip(&server).await;
    let mut decoder = flate2::write::GzDecoder::new(Vec::new());
    read_lines(&mut stream, &mut decoder, 1).await;
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(b"{\"op\":\"ping\",\"id\":\"p1\"}\n").unwrap();
    z.flush().unwrap();
    let mut wire = std::mem::take(z.get_mut());
    wire.extend_from_slice(&[0xff; 8]);
    stream.write_all(&wire).await.unwrap();
    let got = read_lines(&mut stream, &mut decoder, 2).await;
    assert_eq!(
        (got[0].op.as_str(), got[0].ex_str("for")),
        ("pong", Some("p1"))
    );
    assert_eq!(got[1].op, "bye");
    assert_eq!(got[1].ex_str("code"), Some("transport/bad-gzip"));
    server.stop().await;
}

/// Connections that send a gzip bomb as many as the runtime has workers.
const BOMBS: usize = 2;

/// What `z` (a gzip stream) makes of `unit` repeated to `size` bytes, then
/// a ping with id `end`, sync-flushed: about a thousandth of `size`.
fn bomb(z: &mut flate2::write::GzEncoder<Vec<u8>>, unit: &[u8], size: usize) -> Vec<u8> {
    let block = unit.repeat((1 << 20) / unit.len());
    let mut written = 0;
    while written < size {
        z.write_all(&block).unwrap();
        written += block.len();
    }
    z.write_all(b"{\"id\":\"end\",\"op\":\"ping\"}\n").unwrap();
    z.flush().unwrap();
    std::mem::take(z.get_mut())
}

/// Sends a bomb of `unit`s on `BOMBS` gzip connections (logged in first
/// when `login`), then pings on another connection while they inflate. The
/// pings are all answered before the bombs are done with (a bomb's
/// connection answers nothing until then), and each bomb's connection is
/// then cut with `rate/silent-input`, never reaching the ping behind it.
///
/// The order, not a time, is the claim: a bomb that held its worker until
/// it was all inflated (1 GB of blank lines took 15 to 55 s) held the pings
/// until then too. The worst ping round trip is printed, not asserted.
async fn bombs_do_not_hold_up_others(unit: &[u8], size: usize, login: bool, pings: usize) {
    let server = TestServer::start_with(|c| {
        // Room for half the bomb, so its connection is still busy while the
        // pings go round, and cut all the same.
        c.limits.silent_burst_bytes = u32::try_from(size / 2).unwrap();
    })
    .await;
    let mut user = server.client().await;
    let started = std::time::Instant::now();
    let answered = Arc::new(AtomicUsize::new(0));
    let mut bombers = Vec::new();
    for b in 0..BOMBS {
        let mut stream = raw_gzip(&server).await;
        let mut decoder = flate2::write::GzDecoder::new(Vec::new());
        read_lines(&mut stream, &mut decoder, 1).await;
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        if login {
            let name = format!("bomber{b}");
            server.register(&name, "hellosecret").await;
            z.write_all(&password_auth(&name, "hellosecret").to_line())
                .unwrap();
            z.flush().unwrap();
            stream
                .write_all(&std::mem::take(z.get_mut()))
                .await
                .unwrap();
            let ack = read_lines(&mut stream, &mut decoder, 3).await;
            assert_eq!(ack[0].op, "ack", "{:?}", ack[0]);
        }
        stream.write_all(&bomb(&mut z, unit, size)).await.unwrap();
        let answered = answered.clone();
        bombers.push(tokio::spawn(async move {
            // A debug build inflates and handles the bomb slowly, the more
            // so on a busy machine: its verdict may take a while.
            let first = read_lines_within(&mut stream, &mut decoder, 1, 6 * WAIT).await;
            answered.fetch_add(1, Ordering::SeqCst);
            first.into_iter().next().unwrap()
        }));
    }
    let sent = started.elapsed();
    let worst = ping_round_trips(&mut user, pings).await;
    let done_when_pings_finished = answered.load(Ordering::SeqCst);
    eprintln!(
        "bombs sent in {sent:?}; pings done at {:?}, worst round trip {worst:?}; bombs answered by then: {done_when_pings_finished}/{BOMBS}",
        started.elapsed()
    );
    assert_eq!(done_when_pings_finished, 0, "the pings waited for a bomb");
    for b in bombers {
        let p = b.await.unwrap();
        assert_eq!(p.op, "bye", "{p:?}");
        assert_eq!(p.ex_str("code"), Some("rate/silent-input"), "{p:?}");
    }
    eprintln!("bombs cut at {:?}", started.elapsed());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_of_blank_lines_holds_up_no_one_and_is_cut() {
    bombs_do_not_hold_up_others(b"\n", 16 << 20, false, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_of_pongs_holds_up_no_one_and_is_cut() {
    bombs_do_not_hold_up_others(b"{\"op\":\"pong\"}\n", 8 << 20, true, 10).await;
}
