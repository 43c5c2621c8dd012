//! The disconnect table against the JS client's reconnect policy and the docs.

use super::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

fn repo_file(rel: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// `CloseCodes` of clients/js/src/protocol.ts: name -> code.
fn js_close_codes() -> BTreeMap<String, u16> {
    let src = repo_file("clients/js/src/protocol.ts");
    let start = src
        .find("export const CloseCodes = {")
        .expect("CloseCodes in protocol.ts");
    let body = &src[start..];
    let body = &body[body.find('{').expect("{") + 1..body.find('}').expect("}")];
    body.lines()
        .filter_map(|l| {
            let (name, code) = l.trim().trim_end_matches(',').split_once(':')?;
            Some((name.trim().to_string(), code.trim().parse().ok()?))
        })
        .collect()
}

/// The codes of a `new Set<number>([CloseCodes.X, ...])` constant of client.ts.
fn js_set(name: &str, codes: &BTreeMap<String, u16>) -> BTreeSet<u16> {
    let src = repo_file("clients/js/src/client.ts");
    let decl = format!("const {name} = new Set<number>([");
    let start = src
        .find(&decl)
        .unwrap_or_else(|| panic!("{decl} in client.ts"))
        + decl.len();
    let list = &src[start..start + src[start..].find(']').expect("]")];
    list.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| {
            let n = x.trim_start_matches("CloseCodes.");
            *codes
                .get(n)
                .unwrap_or_else(|| panic!("CloseCodes.{n} in protocol.ts"))
        })
        .collect()
}

fn advised(r: Reconnect) -> BTreeSet<u16> {
    CODES
        .iter()
        .filter(|(_, a, _)| *a == r)
        .map(|(c, _, _)| *c)
        .collect()
}

#[test]
fn the_js_client_reconnects_as_the_table_advises() {
    let codes = js_close_codes();
    for (code, _, _) in CODES {
        // Codes the client names are named with the value the node sends.
        if let Some((name, _)) = codes.iter().find(|(_, c)| **c == *code) {
            assert!(!name.is_empty());
        }
    }
    assert_eq!(
        js_set("THROTTLE_CODES", &codes),
        advised(Reconnect::Throttled),
        "client.ts THROTTLE_CODES and the Throttled codes of disconnect::CODES differ"
    );
    // The client asks for a fresh token on exactly the codes advised so.
    let client = repo_file("clients/js/src/client.ts");
    let fresh: BTreeSet<u16> = codes
        .iter()
        .filter(|(name, _)| client.contains(&format!("code === CloseCodes.{name}")))
        .map(|(_, c)| *c)
        .collect();
    assert_eq!(fresh, advised(Reconnect::FreshToken));
}

#[test]
fn the_docs_table_is_the_one_the_type_renders() {
    let docs = repo_file("docs/protocol.md");
    let (start, end) = (
        "<!-- disconnect-table:start -->\n",
        "<!-- disconnect-table:end -->",
    );
    let from = docs
        .find(start)
        .expect("the table's start marker in docs/protocol.md")
        + start.len();
    let to = docs.find(end).expect("the table's end marker");
    assert_eq!(
        &docs[from..to],
        docs_table(),
        "docs/protocol.md's reconnect table is stale; paste this:\n{}",
        docs_table()
    );
}

#[test]
fn every_close_the_node_sends_is_in_the_table() {
    let sent = [
        Disconnect::DRAINING,
        Disconnect::PROTOCOL_ERROR,
        Disconnect::INVALID_UTF8,
        Disconnect::TOO_BIG,
        Disconnect::ENCODING_FAILED,
        Disconnect::NO_CONNECT_HOOK,
        Disconnect::AUTH_UNAVAILABLE,
        Disconnect::AUTH_TIMEOUT,
        Disconnect::INVALID_TOKEN,
        Disconnect::TOKEN_EXPIRED,
        Disconnect::NOT_AUTHENTICATED,
        Disconnect::STALLED,
        Disconnect::RATE_LIMIT_ABUSE,
        Disconnect::kicked(close::SLOW_CONSUMER),
        Disconnect::kicked(close::OVERLOADED),
        Disconnect::kicked(close::INVALID_TOKEN),
    ];
    for d in sent {
        assert!(CODES.iter().any(|(c, _, _)| *c == d.code), "{d:?}");
        assert!(close::sendable(d.code), "{d:?}");
        assert!(
            d.reason.len() <= 123,
            "a Close reason fits a control frame: {d:?}"
        );
    }
    assert_eq!(Disconnect::kicked(close::GOING_AWAY), Disconnect::DRAINING);
    assert_eq!(Disconnect::kicked(4100).reason, "closed by the server");
    assert_eq!(Disconnect::kicked(4100).reconnect(), Reconnect::Backoff);
    assert_eq!(Disconnect::TOKEN_EXPIRED.reconnect(), Reconnect::FreshToken);
    assert!(Disconnect::STALLED.is_slow_consumer());
}
