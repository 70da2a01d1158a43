//! The one-pass `send` reader against the full packet decoder: whatever
//! line the reader accepts, the decoder accepts as a `send` with the same
//! id, topic and `ex` text. Any line through the decoder never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenthbit::proto::Packet;
use tenthbit::proto::packet::{MAX_JSON_DEPTH, parse_ex};
use tenthbit::proto::scan::plain_send;

fuzz_target!(|data: &[u8]| {
    let Some((&depth, line)) = data.split_first() else {
        return;
    };
    let depth = usize::from(depth) % (MAX_JSON_DEPTH + 1);
    let full = Packet::decode_lazy(line, depth);
    let _ = Packet::decode(line, depth);
    let Some(fast) = plain_send(line, depth) else {
        return;
    };
    let lazy = match full {
        Ok(lazy) => lazy,
        Err(e) => panic!("the reader accepted what the decoder refuses: {e}"),
    };
    assert_eq!(lazy.op(), "send");
    let (packet, ex) = lazy.into_relayable().expect("a relayable send");
    assert_eq!(packet.id.as_deref(), fast.id);
    assert_eq!(packet.topic.as_deref().map(str::as_bytes), Some(fast.topic));
    assert_eq!(ex, Some(fast.ex));
    // And the `ex` builds as the object the decoder would have built.
    let built = Packet::decode(line, depth).expect("decodes");
    assert_eq!(parse_ex(fast.ex).expect("ex builds"), built.ex);
});
