//! `protocol.md` is normative: every JSON example in it must parse as a
//! packet and use only ops and error codes the server has, and its ops and
//! error-code tables must list exactly what the code defines.

use std::collections::{BTreeMap, BTreeSet};

use tenthbit::proto::reply::SERVER_OPS;
use tenthbit::proto::request::CLIENT_OPS;
use tenthbit::proto::{ErrorCode, Packet};

fn doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/protocol.md"))
        .expect("protocol.md exists")
}

/// Every line of every ```json block.
fn examples(doc: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in doc.lines() {
        let t = line.trim();
        if t.starts_with("```") {
            inside = !inside && t == "```json";
            continue;
        }
        if inside && !t.is_empty() {
            out.push(t.to_owned());
        }
    }
    out
}

/// Rows `| \`x\` | a | b |` of the table that follows `heading`, as
/// (first cell without backticks, the other cells).
fn table(doc: &str, heading: &str) -> Vec<(String, Vec<String>)> {
    let mut rows = Vec::new();
    let mut lines = doc.lines().skip_while(|l| l.trim() != heading).skip(1);
    let mut seen_table = false;
    for line in lines.by_ref() {
        let t = line.trim();
        if !t.starts_with('|') {
            if seen_table {
                break;
            }
            continue;
        }
        seen_table = true;
        let cells: Vec<String> = t
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_owned())
            .collect();
        if let Some(first) = cells
            .first()
            .and_then(|c| c.strip_prefix('`'))
            .and_then(|c| c.strip_suffix('`'))
        {
            rows.push((first.to_owned(), cells[1..].to_vec()));
        }
    }
    rows
}

#[test]
fn every_json_example_is_a_valid_packet() {
    let doc = doc();
    let examples = examples(&doc);
    assert!(
        examples.len() >= 60,
        "only {} examples found",
        examples.len()
    );
    let ops: BTreeSet<&str> = CLIENT_OPS
        .iter()
        .chain(SERVER_OPS.iter())
        .copied()
        .collect();
    let codes: BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    for line in &examples {
        let p = Packet::decode(line.as_bytes(), 32).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(ops.contains(p.op.as_str()), "undocumented op in: {line}");
        if let Some(code) = p.ex.get("code") {
            let code = code
                .as_str()
                .unwrap_or_else(|| panic!("code is not a string: {line}"));
            assert!(codes.contains(code), "unknown code {code} in: {line}");
            assert!(
                matches!(p.op.as_str(), "error" | "bye"),
                "a code outside error/bye: {line}"
            );
        }
        // Packets only the server sends always carry id and ts.
        if !CLIENT_OPS.contains(&p.op.as_str()) {
            assert!(
                p.id.is_some() && p.ts.is_some(),
                "server packet without id/ts: {line}"
            );
        }
    }
}

#[test]
fn the_error_table_lists_exactly_the_codes() {
    let doc = doc();
    let listed: Vec<String> = table(&doc, "### Error codes")
        .into_iter()
        .map(|(c, _)| c)
        .collect();
    let unique: BTreeSet<&str> = listed.iter().map(String::as_str).collect();
    assert_eq!(unique.len(), listed.len(), "a code is listed twice");
    let defined: BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(unique, defined);
}

#[test]
fn the_ops_table_lists_exactly_the_ops_and_their_directions() {
    let doc = doc();
    let rows = table(&doc, "### Ops");
    assert!(!rows.is_empty());
    let mut listed = BTreeMap::new();
    for (op, cells) in rows {
        let direction = cells.first().cloned().unwrap_or_default();
        assert!(
            listed.insert(op.clone(), direction).is_none(),
            "{op} listed twice"
        );
    }
    let all: BTreeSet<&str> = CLIENT_OPS
        .iter()
        .chain(SERVER_OPS.iter())
        .copied()
        .collect();
    assert_eq!(
        listed.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        all
    );
    for (op, direction) in &listed {
        let from_client = CLIENT_OPS.contains(&op.as_str());
        let from_server = SERVER_OPS.contains(&op.as_str());
        let want = match (from_client, from_server) {
            (true, true) => "both ways",
            (true, false) => "client → server",
            (false, true) => "server → client",
            (false, false) => unreachable!(),
        };
        assert_eq!(direction, want, "direction of {op}");
    }
}

#[test]
fn every_op_has_an_example() {
    let doc = doc();
    let used: BTreeSet<String> = examples(&doc)
        .iter()
        .filter_map(|l| Packet::decode(l.as_bytes(), 32).ok())
        .map(|p| p.op)
        .collect();
    for op in CLIENT_OPS.iter().chain(SERVER_OPS.iter()) {
        assert!(used.contains(*op), "no example of {op}");
    }
}
