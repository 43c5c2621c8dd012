//! The `--config` TOML file and typed settings: a flag wins over the environment, the
//! environment over the file, the file over the default; file values go through the
//! same parsers as flags (same messages, exit 2) and never through the process
//! environment; `--help` still shows every flag in its unit with its default.

use roomcast_gateway::config::Config;
use std::path::PathBuf;
use std::time::Duration;

/// How long the binary may take to refuse to start, or to print its help.
const WAIT: Duration = Duration::from_secs(30);

/// A TOML file in the temporary directory, removed on drop.
struct TomlFile(PathBuf);

impl TomlFile {
    fn new(name: &str, text: &str) -> TomlFile {
        let path = std::env::temp_dir().join(format!(
            "roomcast-config-file-{}-{name}.toml",
            std::process::id()
        ));
        std::fs::write(&path, text).expect("write the config file");
        TomlFile(path)
    }

    fn arg(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for TomlFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs the binary with `args` and `envs` (and no other ROOMCAST_ setting that matters
/// here); it must end by itself. Its exit code, stdout and stderr.
async fn binary(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_roomcast"));
    for var in [
        "ROOMCAST_CONFIG",
        "ROOMCAST_LISTEN",
        "ROOMCAST_AUTH",
        "ROOMCAST_JWT_SECRET",
        "ROOMCAST_TRUSTED_PROXIES",
        "ROOMCAST_REDIS_URL",
    ] {
        cmd.env_remove(var);
    }
    let out = tokio::time::timeout(
        WAIT,
        cmd.args(args)
            .envs(envs.iter().copied())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the binary ends by itself in time")
    .expect("run roomcast");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An address on loopback that is in use (held by the returned listener).
fn taken() -> (std::net::TcpListener, String) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().expect("addr").to_string();
    (l, a)
}

/// Flags, environment variables, and the address the node must try.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[tokio::test]
async fn flag_beats_environment_beats_file() {
    // Three addresses in use: the one the node tries to listen on is named in its error.
    let ((_a, file_addr), (_b, env_addr), (_c, flag_addr)) = (taken(), taken(), taken());
    let file = TomlFile::new(
        "precedence",
        &format!("listen = \"{file_addr}\"\nauth = \"none\"\nheartbeat = 30\n"),
    );
    let cases: [Case; 3] = [
        (&[], &[], &file_addr),
        (&[], &[("ROOMCAST_LISTEN", &env_addr)], &env_addr),
        (
            &["--listen", &flag_addr],
            &[("ROOMCAST_LISTEN", &env_addr)],
            &flag_addr,
        ),
    ];
    let path = file.arg();
    for (flags, envs, want) in cases {
        let mut args = vec!["--config", path.as_str()];
        args.extend_from_slice(flags);
        let (code, _, stderr) = binary(&args, envs).await;
        assert_eq!(code, Some(2), "{flags:?} {envs:?}: {stderr}");
        assert!(
            stderr.starts_with(&format!("roomcast: cannot listen on {want}: ")),
            "{flags:?} {envs:?} must listen on {want}: {stderr}"
        );
    }
    // The file also comes through the environment variable naming it.
    let (code, _, stderr) = binary(&[], &[("ROOMCAST_CONFIG", &path)]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(&file_addr), "{stderr}");
}

#[test]
fn file_values_are_typed_and_below_flags_and_never_in_the_environment() {
    let file = TomlFile::new(
        "typed",
        "auth = \"none\"\n\
         drain_timeout = 7\n\
         drain-spread-ms = 250\n\
         allowed_origins = [\"https://a.example\", \"https://b.example/\"]\n\
         trusted_proxies = \"10.0.0.0/8\"\n\
         api_keys = [\"k1\", \"k2\"]\n\
         hook_join_rooms = [\"game:*\", \"chat:*\"]\n\
         max_rooms = 7\n",
    );
    let path = file.arg();
    let cfg = Config::from_args(["--config", &path, "--max-rooms", "9"]).expect("valid");
    assert_eq!(
        cfg.drain_timeout,
        Duration::from_secs(7),
        "seconds, from the file"
    );
    assert_eq!(cfg.drain_spread, Duration::from_millis(250), "milliseconds");
    assert_eq!(cfg.max_rooms, 9, "the flag wins over the file");
    assert_eq!(cfg.heartbeat, Duration::from_secs(25), "the default stays");
    assert!(cfg.allowed_origins.allows(Some("https://b.example")));
    assert!(!cfg.allowed_origins.allows(Some("https://c.example")));
    assert!(cfg.trusted_proxies[0].contains("10.9.9.9".parse().expect("ip")));
    assert_eq!(cfg.trusted_proxies.len(), 1);
    assert_eq!(cfg.api_key_list(), ["k1", "k2"]);
    assert_eq!(cfg.hooks().join_rooms, ["game:*", "chat:*"]);
    for var in [
        "ROOMCAST_DRAIN_TIMEOUT",
        "ROOMCAST_MAX_ROOMS",
        "ROOMCAST_AUTH",
    ] {
        assert!(
            std::env::var_os(var).is_none(),
            "{var}: the file must not go through the environment"
        );
    }
    let cfg = Config::from_args(["--auth", "none"]).expect("valid");
    assert_eq!(cfg.drain_timeout, Duration::from_secs(10));
    assert_eq!(cfg.listen.to_string(), "0.0.0.0:8080");
}

#[tokio::test]
async fn a_bad_file_value_or_key_exits_2_with_the_flags_message() {
    let bad_value = TomlFile::new(
        "bad-value",
        "auth = \"none\"\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = \"nonsense\"\n",
    );
    let (code, _, stderr) = binary(&["--config", &bad_value.arg()], &[]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        "roomcast: --trusted-proxies: \"nonsense\" is not an address or CIDR"
    );
    let bad_key = TomlFile::new("bad-key", "auth = \"none\"\nno_such_setting = 1\n");
    let (code, _, stderr) = binary(&["--config", &bad_key.arg()], &[]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.starts_with("roomcast: config file ")
            && stderr.contains("unknown setting \"no_such_setting\""),
        "{stderr}"
    );
    let e = Config::from_args(["--auth", "none", "--hook-join-url", "https://x/j"]).unwrap_err();
    assert!(
        e.to_string().starts_with("--hook-join-url: "),
        "our message, not clap's: {e}"
    );
}

#[tokio::test]
async fn help_names_every_flag_in_its_unit_with_its_default() {
    let (code, stdout, stderr) = binary(&["--help"], &[]).await;
    assert_eq!(code, Some(0), "{stderr}");
    for want in [
        "--drain-timeout <DRAIN_TIMEOUT>",
        "--drain-spread-ms <DRAIN_SPREAD_MS>",
        "--bus-linger-ms <BUS_LINGER_MS>",
        "--hook-timeout-ms <HOOK_TIMEOUT_MS>",
        "--consume-claim-idle-ms <CONSUME_CLAIM_IDLE_MS>",
        "[default: 2000]",
        "[default: 127.0.0.0/8,::1/128]",
        "--hook-join-url <HOOK_JOIN_URL>",
    ] {
        assert!(stdout.contains(want), "--help lacks {want:?}");
    }
}
