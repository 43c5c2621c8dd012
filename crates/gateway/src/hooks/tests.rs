//! The hook client's unit tests: cookies, the signature, the answers.

use super::*;

#[test]
fn cookies_are_split_and_unquoted() {
    let mut h = HeaderMap::new();
    h.append(COOKIE, HeaderValue::from_static("sid=abc; theme=\"dark\""));
    h.append(COOKIE, HeaderValue::from_static("x=1;=bad; y"));
    let c = cookies(&h);
    assert_eq!(c.get("sid").map(String::as_str), Some("abc"));
    assert_eq!(c.get("theme").map(String::as_str), Some("dark"));
    assert_eq!(c.get("x").map(String::as_str), Some("1"));
    assert_eq!(c.len(), 3);
}

#[test]
fn the_signature_is_the_hmac_of_the_body_which_carries_the_time() {
    // RFC 4231 test case 2.
    assert_eq!(
        sign(b"Jefe", b"what do ya want for nothing?"),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    let b = with_timestamp(br#"{"user":"u"}"#.to_vec(), "1700000000");
    assert_eq!(b, br#"{"ts":1700000000,"user":"u"}"#.to_vec());
    assert_eq!(with_timestamp(b"{}".to_vec(), "5"), br#"{"ts":5}"#.to_vec());
    let s = sign(b"Jefe", &b);
    let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").expect("key");
    mac.update(&b);
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(s, want);
}

#[test]
fn connect_answers_are_checked() {
    let parse = |v: Value| {
        connect_decision(serde_json::from_value(v).expect("answer shape"))
            .map(|d| matches!(d, ConnectDecision::Allow(_)))
    };
    assert_eq!(
        parse(serde_json::json!({"allow": true, "user": "u1"})),
        Ok(true)
    );
    assert_eq!(parse(serde_json::json!({"allow": false})), Ok(false));
    assert!(parse(serde_json::json!({"allow": true})).is_err());
    assert!(parse(serde_json::json!({"allow": true, "user": "server"})).is_err());
    assert!(parse(serde_json::json!({"allow": false, "code": 1000})).is_err());
    assert!(parse(serde_json::json!({"allow": true, "user": "u", "join": ["a b"]})).is_err());
}
