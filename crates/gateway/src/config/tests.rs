//! The configuration's unit tests: values, lists and the checks across settings.

use super::*;

#[test]
fn redis_cluster_urls() {
    let c = Config::from_args([
        "--auth",
        "none",
        "--redis-cluster-urls",
        "redis://127.0.0.1:7000, redis://127.0.0.1:7001",
    ])
    .expect("valid");
    assert_eq!(c.redis_cluster_url_list().len(), 2);
    assert_eq!(c.bus_subscribe(), BusSubscribe::Rooms, "rooms by default");
    let e = Config::from_args([
        "--auth",
        "none",
        "--redis-cluster-urls",
        "redis://a:1",
        "--redis-url",
        "redis://b:1",
    ])
    .unwrap_err();
    assert!(e.to_string().contains("exclude each other"), "{e}");
    let e = Config::from_args([
        "--auth",
        "none",
        "--redis-cluster-urls",
        "redis://a:1",
        "--bus-subscribe",
        "pattern",
    ])
    .unwrap_err();
    assert!(e.to_string().contains("--bus-subscribe pattern"), "{e}");
    assert!(Config::from_args([
        "--auth",
        "none",
        "--redis-cluster-urls",
        "redis://a:1",
        "--bus-subscribe",
        "rooms"
    ])
    .is_ok());
    assert!(Config::from_args(["--auth", "none", "--redis-cluster-urls", "http://a"]).is_err());
    assert!(Config::from_args(["--auth", "none", "--redis-cluster-urls", " , "]).is_err());
    let c = Config::from_args(["--auth", "none"]).expect("valid");
    assert_eq!(
        c.bus_subscribe(),
        BusSubscribe::Pattern,
        "pattern by default"
    );
}

#[test]
fn jwt_needs_a_key() {
    let e = Config::from_args(["--auth", "jwt"]).unwrap_err();
    assert!(e.to_string().contains("--jwt-secret"), "{e}");
    assert!(Config::from_args(["--auth", "none"]).is_ok());
    assert!(Config::from_args(["--jwt-secret", "s"]).is_ok());
}

#[test]
fn consume_stream_lists() {
    let c = Config::from_args([
        "--auth",
        "none",
        "--redis-url",
        "redis://127.0.0.1/",
        "--consume-stream",
        "a,b",
        "--consume-stream",
        "c",
    ])
    .expect("valid");
    assert_eq!(c.consume_stream, ["a", "b", "c"]);
    assert!(Config::from_args(["--auth", "none", "--consume-stream", "a"]).is_err());
}

#[test]
fn rejects_bad_values() {
    assert!(Config::from_args(["--auth", "none", "--heartbeat", "0"]).is_err());
    assert!(Config::from_args(["--auth", "none", "--redis-url", "http://x"]).is_err());
    assert!(Config::from_args(["--auth", "none", "--trusted-proxies", "nonsense"]).is_err());
    assert!(Config::from_args(["--auth", "bogus"]).is_err());
    assert!(Config::from_args(["--auth", "none", "--admin-key", "short"]).is_err());
    assert!(Config::from_args(["--auth", "none", "--node-stats-interval", "0"]).is_err());
    let c = Config::from_args([
        "--auth",
        "none",
        "--admin-key",
        "0123456789abcdef, fedcba9876543210",
    ])
    .expect("two admin keys");
    assert_eq!(c.admin_key_list().len(), 2);
}

#[test]
fn hook_and_personal_room_settings_are_checked() {
    let e = Config::from_args(["--auth", "hook"]).unwrap_err();
    assert!(e.to_string().contains("--hook-connect-url"), "{e}");
    assert!(Config::from_args([
        "--auth",
        "hook",
        "--hook-connect-url",
        "http://127.0.0.1:1/c"
    ])
    .is_ok());
    let e = Config::from_args(["--auth", "none", "--hook-join-url", "https://x/j"]).unwrap_err();
    assert!(e.to_string().contains("only http://"), "{e}");
    assert!(Config::from_args(["--auth", "none", "--hook-forward-headers", "bad header"]).is_err());
    assert!(Config::from_args(["--auth", "none", "--hook-timeout-ms", "0"]).is_err());
    assert!(Config::from_args(["--auth", "none", "--hook-max-concurrency", "0"]).is_err());
    assert!(Config::from_args(["--auth", "none", "--personal-room", "user"]).is_err());
    assert!(Config::from_args(["--auth", "none", "--personal-room", "user {user}"]).is_err());
    let c = Config::from_args(["--auth", "none", "--personal-room", "user:{user}"]).expect("valid");
    let u = roomcast_protocol::UserId::new("42").expect("user");
    assert_eq!(
        c.personal_room(&u).map(|r| r.to_string()),
        Some("user:42".into())
    );
}
