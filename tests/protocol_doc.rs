//! `protocol.md` against the code: every example packet parses as the server
//! would parse it and uses only real ops and error codes, and the op,
//! error-code and limits tables list exactly what the code defines.

use std::collections::{BTreeMap, BTreeSet};

use tenthbit::proto::reply::SERVER_OPS;
use tenthbit::proto::request::CLIENT_OPS;
use tenthbit::proto::{ErrorCode, Packet};

const DOC_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/protocol.md");

fn doc() -> String {
    std::fs::read_to_string(DOC_PATH).unwrap_or_else(|e| panic!("cannot read {DOC_PATH}: {e}"))
}

/// Every non-empty line inside a ```json fence, with its line number.
fn json_example_lines(doc: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut in_json = false;
    let mut in_other_fence = false;
    for (i, line) in doc.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(tag) = trimmed.strip_prefix("```") {
            if in_json || in_other_fence {
                assert!(
                    tag.is_empty(),
                    "line {}: fence opened inside a fence",
                    i + 1
                );
                in_json = false;
                in_other_fence = false;
            } else if tag.trim() == "json" {
                in_json = true;
            } else {
                in_other_fence = true;
            }
            continue;
        }
        if in_json && !trimmed.is_empty() {
            out.push((i + 1, line));
        }
    }
    assert!(
        !in_json && !in_other_fence,
        "protocol.md ends inside a fence"
    );
    out
}

/// The cells of a Markdown table row, trimmed.
fn cells(line: &str) -> Vec<&str> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(str::trim).collect()
}

/// The rows (as cells) of the one table whose header row is `header`.
fn table<'a>(doc: &'a str, header: &[&str]) -> Vec<Vec<&'a str>> {
    let lines: Vec<&str> = doc.lines().collect();
    let starts: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with('|') && cells(l) == header)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        starts.len(),
        1,
        "expected exactly one table with header {header:?}, found {}",
        starts.len()
    );
    let start = starts[0];
    let separator = lines.get(start + 1).copied().unwrap_or_default();
    assert!(
        cells(separator)
            .iter()
            .all(|c| !c.is_empty() && c.chars().all(|ch| matches!(ch, '-' | ':'))),
        "table {header:?} lacks its separator row"
    );
    let rows: Vec<Vec<&str>> = lines[start + 2..]
        .iter()
        .take_while(|l| l.trim_start().starts_with('|'))
        .map(|l| cells(l))
        .collect();
    for row in &rows {
        assert_eq!(
            row.len(),
            header.len(),
            "row {row:?} of table {header:?} has the wrong number of cells"
        );
    }
    assert!(!rows.is_empty(), "table {header:?} has no rows");
    rows
}

/// The first cell of each row, which must be one backticked token.
fn first_column<'a>(rows: &[Vec<&'a str>], what: &str) -> Vec<&'a str> {
    rows.iter()
        .map(|row| {
            let cell = row[0];
            let token = cell
                .strip_prefix('`')
                .and_then(|c| c.strip_suffix('`'))
                .unwrap_or_else(|| panic!("{what} table: first cell {cell:?} is not `backticked`"));
            assert!(
                !token.is_empty() && !token.contains('`'),
                "{what} table: bad first cell {cell:?}"
            );
            token
        })
        .collect()
}

/// The listed set, refusing duplicates.
fn unique<'a>(items: &[&'a str], what: &str) -> BTreeSet<&'a str> {
    let mut set = BTreeSet::new();
    for item in items {
        assert!(set.insert(*item), "{what} table lists {item:?} twice");
    }
    set
}

fn all_ops() -> BTreeSet<&'static str> {
    CLIENT_OPS
        .iter()
        .chain(SERVER_OPS.iter())
        .copied()
        .collect()
}

fn all_codes() -> BTreeSet<&'static str> {
    ErrorCode::ALL.iter().map(|c| c.as_str()).collect()
}

fn examples(doc: &str) -> Vec<(usize, Packet)> {
    let lines = json_example_lines(doc);
    assert!(
        lines.len() > 20,
        "expected many example packets in ```json blocks, found {}",
        lines.len()
    );
    lines
        .into_iter()
        .map(|(n, line)| match Packet::decode(line.as_bytes(), 32) {
            Ok(p) => (n, p),
            Err(e) => panic!("protocol.md line {n}: example does not decode: {e}\n{line}"),
        })
        .collect()
}

#[test]
fn every_example_is_a_packet_with_a_known_op_and_code() {
    let doc = doc();
    let ops = all_ops();
    let codes = all_codes();
    let mut codes_seen = 0;
    for (n, p) in examples(&doc) {
        assert!(
            ops.contains(p.op.as_str()),
            "protocol.md line {n}: op {:?} is neither a client nor a server op",
            p.op
        );
        if let Some(code) = p.ex.get("code") {
            let code = code
                .as_str()
                .unwrap_or_else(|| panic!("protocol.md line {n}: ex.code is not a string"));
            assert!(
                codes.contains(code),
                "protocol.md line {n}: code {code:?} is not in ErrorCode::ALL"
            );
            assert!(
                matches!(p.op.as_str(), "error" | "bye"),
                "protocol.md line {n}: an error code outside error and bye"
            );
            codes_seen += 1;
        }
        if matches!(p.op.as_str(), "error" | "bye") {
            assert!(
                p.ex_str("code").is_some() && p.ex_str("message").is_some(),
                "protocol.md line {n}: {} without code and message",
                p.op
            );
        }
    }
    assert!(codes_seen > 0, "no example carries an error code");
}

#[test]
fn server_only_examples_carry_id_and_ts() {
    let doc = doc();
    let mut checked = 0;
    for (n, p) in examples(&doc) {
        let op = p.op.as_str();
        if SERVER_OPS.contains(&op) && !CLIENT_OPS.contains(&op) {
            assert!(
                p.id.is_some() && p.ts.is_some(),
                "protocol.md line {n}: the server always sends id and ts, but this {op} lacks them"
            );
            let id = p.id.as_deref().unwrap_or_default();
            assert!(
                uuid::Uuid::parse_str(id).is_ok_and(|u| u.get_version_num() == 7),
                "protocol.md line {n}: server id {id:?} is not a UUIDv7"
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no server-only example found");
}

#[test]
fn error_code_table_lists_exactly_the_codes() {
    let doc = doc();
    let rows = table(&doc, &["code", "meaning"]);
    let listed = first_column(&rows, "error-code");
    let listed = unique(&listed, "error-code");
    let codes = all_codes();
    let missing: Vec<_> = codes.difference(&listed).collect();
    let extra: Vec<_> = listed.difference(&codes).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "error-code table: missing {missing:?}, not in ErrorCode::ALL {extra:?}"
    );
    for row in &rows {
        assert!(!row[1].is_empty(), "error code {} has no meaning", row[0]);
    }
}

#[test]
fn ops_table_lists_exactly_the_ops_each_with_an_example() {
    let doc = doc();
    let rows = table(&doc, &["op", "direction", "meaning"]);
    let listed = first_column(&rows, "ops");
    let listed = unique(&listed, "ops");
    let ops = all_ops();
    let missing: Vec<_> = ops.difference(&listed).collect();
    let extra: Vec<_> = listed.difference(&ops).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "ops table: missing {missing:?}, neither client nor server op {extra:?}"
    );
    for row in &rows {
        let op = row[0].trim_matches('`');
        let (client, server) = (CLIENT_OPS.contains(&op), SERVER_OPS.contains(&op));
        let expected = match (client, server) {
            (true, true) => "both directions",
            (true, false) => "client → server",
            _ => "server → client",
        };
        assert_eq!(row[1], expected, "ops table: direction of {op}");
        assert!(!row[2].is_empty(), "op {op} has no meaning");
    }
    let with_example: BTreeSet<String> = examples(&doc).into_iter().map(|(_, p)| p.op).collect();
    let without: Vec<_> = listed
        .iter()
        .filter(|op| !with_example.contains(**op))
        .collect();
    assert!(
        without.is_empty(),
        "ops without an example packet: {without:?}"
    );
}

#[test]
fn limits_table_matches_the_default_config() {
    // `[limits]` of the embedded default configuration: `key = value` lines.
    let mut defaults = BTreeMap::new();
    let mut in_limits = false;
    for line in tenthbit::config::DEFAULT_TOML.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_limits = line == "[limits]";
        } else if in_limits && !line.is_empty() && !line.starts_with('#') {
            let (key, value) = line.split_once('=').expect("key = value");
            defaults.insert(key.trim(), value.trim());
        }
    }
    assert!(defaults.len() > 10, "found only {defaults:?} in [limits]");
    let doc = doc();
    let rows = table(&doc, &["key", "default", "meaning"]);
    let keys = first_column(&rows, "limits");
    let listed = unique(&keys, "limits");
    let known: BTreeSet<&str> = defaults.keys().copied().collect();
    let missing: Vec<_> = known.difference(&listed).collect();
    let extra: Vec<_> = listed.difference(&known).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "limits table: missing {missing:?}, not in [limits] {extra:?}"
    );
    for row in &rows {
        let key = row[0].trim_matches('`');
        assert_eq!(
            row[1].trim_matches('`'),
            defaults[key],
            "limits table: default of {key}"
        );
    }
}

/// The lines of every ```mesh block, with their line numbers.
fn mesh_example_lines(doc: &str) -> Vec<(usize, String)> {
    fenced_lines(doc, "```mesh")
}

/// The lines of every block opened by `fence`, with their line numbers.
fn fenced_lines(doc: &str, fence: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut inside = false;
    for (i, line) in doc.lines().enumerate() {
        let t = line.trim();
        if t == fence {
            inside = true;
        } else if t.starts_with("```") {
            inside = false;
        } else if inside && !t.is_empty() {
            out.push((i + 1, t.to_owned()));
        }
    }
    out
}

#[test]
fn every_mesh_example_is_a_mesh_packet() {
    let doc = doc();
    let lines = mesh_example_lines(&doc);
    assert!(
        lines.len() >= 5,
        "expected mesh examples, found {}",
        lines.len()
    );
    let codes: BTreeSet<&str> = tenthbit::mesh::wire::Code::ALL
        .iter()
        .map(|c| c.as_str())
        .collect();
    for (n, line) in lines {
        let p = tenthbit::mesh::wire::decode(line.as_bytes())
            .unwrap_or_else(|e| panic!("protocol.md line {n}: not a mesh packet: {e}\n{line}"));
        if let tenthbit::mesh::wire::Packet::Error(r) = p {
            assert!(
                codes.contains(r.code.as_str()),
                "protocol.md line {n}: code {}",
                r.code
            );
        }
    }
}

#[test]
fn mesh_code_table_lists_exactly_the_codes() {
    let doc = doc();
    let rows = table(&doc, &["mesh code", "meaning"]);
    let listed = first_column(&rows, "mesh code");
    let listed = unique(&listed, "mesh code");
    let codes: BTreeSet<&str> = tenthbit::mesh::wire::Code::ALL
        .iter()
        .map(|c| c.as_str())
        .collect();
    assert_eq!(listed, codes);
}

#[test]
fn every_federation_example_is_a_federation_packet() {
    use tenthbit::federation::wire::Packet;
    let doc = doc();
    let lines = fenced_lines(&doc, "```fed");
    assert!(
        lines.len() >= 4,
        "expected federation examples, found {}",
        lines.len()
    );
    for (n, line) in lines {
        let p = Packet::decode(line.as_bytes()).unwrap_or_else(|e| {
            panic!("protocol.md line {n}: not a federation packet: {e}\n{line}")
        });
        // Every packet round-trips to the same line.
        assert_eq!(
            p.to_line(),
            format!("{line}\n").into_bytes(),
            "protocol.md line {n}"
        );
    }
}

#[test]
fn federation_code_table_lists_exactly_the_codes() {
    let doc = doc();
    let rows = table(&doc, &["fed code", "meaning"]);
    let listed = first_column(&rows, "fed code");
    let listed = unique(&listed, "fed code");
    let codes: BTreeSet<&str> = tenthbit::federation::wire::Code::ALL
        .iter()
        .map(|c| c.as_str())
        .collect();
    assert_eq!(listed, codes);
}
