//! The `roomcast` binary as an operator meets it (issue 17, "Logs and errors"): log lines
//! written to a pipe carry no ANSI colour; a clean shutdown of a cluster node says nothing
//! that reads like a Redis failure; a node that cannot start prints one line and exits 2
//! (a port in use, a Redis URL it cannot use), backtrace or not.
//!
//! Every test runs the real binary (`CARGO_BIN_EXE_roomcast`) with real sockets and,
//! where it needs one, a real redis-server.

mod support;

use roomcast_protocol::Encoding;
use std::process::Stdio;
use support::{Client, RedisServer, WAIT};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// A running binary whose stdout and stderr lines are collected as they come.
struct Running {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Running {
    /// Starts the binary (stdout and stderr are pipes, never a terminal) with `args`.
    fn start(args: &[&str], env: &[(&str, &str)]) -> Running {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_roomcast"));
        cmd.args(args)
            .env_remove("ROOMCAST_CONFIG")
            .env_remove("ROOMCAST_LOG_FORMAT")
            .env_remove("ROOMCAST_LOG_LEVEL")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn roomcast");
        let (tx, lines) = mpsc::unbounded_channel();
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let tx2 = tx.clone();
        tokio::spawn(async move {
            let mut r = BufReader::new(out).lines();
            while let Ok(Some(l)) = r.next_line().await {
                let _ = tx.send(l);
            }
        });
        tokio::spawn(async move {
            let mut r = BufReader::new(err).lines();
            while let Ok(Some(l)) = r.next_line().await {
                let _ = tx2.send(l);
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `what`; returns it.
    async fn line_with(&mut self, what: &str) -> String {
        loop {
            let l = tokio::time::timeout(WAIT, self.lines.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("no line with {what:?} in time; so far: {:#?}", self.seen)
                })
                .unwrap_or_else(|| panic!("output ended before {what:?}: {:#?}", self.seen));
            self.seen.push(l.clone());
            if l.contains(what) {
                return l;
            }
        }
    }

    /// The address of the ready line.
    async fn ready(&mut self) -> std::net::SocketAddr {
        let l = self.line_with("listening on http://").await;
        let rest = l.split("listening on http://").nth(1).expect("address");
        let addr: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
            .collect();
        addr.parse().expect("ready line names an address")
    }

    /// SIGTERM (the signal of `docker stop` and systemd).
    fn terminate(&self) {
        let pid = self.child.id().expect("still running");
        // The shell's own kill: no procps needed.
        let st = std::process::Command::new("sh")
            .args(["-c", &format!("kill -TERM {pid}")])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -TERM {pid}");
    }

    /// Waits for the exit; its code and every line it wrote.
    async fn finish(mut self) -> (Option<i32>, Vec<String>) {
        let st = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("roomcast exits in time")
            .expect("wait");
        // Both pipes end with the process: read what is left.
        while let Ok(Some(l)) = tokio::time::timeout(WAIT, self.lines.recv()).await {
            self.seen.push(l);
        }
        (st.code(), self.seen)
    }
}

#[tokio::test]
async fn log_lines_written_to_a_pipe_carry_no_colour_codes() {
    // Text format (the default), output to a pipe, NO_COLOR unset: a terminal is what
    // turns colour on, and this is not one.
    let mut node = Running::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--auth",
            "none",
            "--log-level",
            "debug",
        ],
        &[],
    );
    node.ready().await;
    node.terminate();
    let (code, lines) = node.finish().await;
    assert_eq!(code, Some(0), "a clean stop: {lines:#?}");
    assert!(
        lines.iter().any(|l| l.contains(" INFO ")),
        "text lines came: {lines:#?}"
    );
    let coloured: Vec<&String> = lines.iter().filter(|l| l.contains("\x1b[")).collect();
    assert!(
        coloured.is_empty(),
        "ANSI escapes in piped logs: {coloured:#?}"
    );
}

#[tokio::test]
async fn a_clean_shutdown_of_a_cluster_node_logs_no_bus_warning() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut node = Running::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--auth",
            "none",
            "--redis-url",
            &url,
            "--node-id",
            "n1",
        ],
        &[],
    );
    let addr = node.ready().await;
    // A member in a room, so that the stop drains a session and removes presence.
    let (mut c, _) = Client::welcomed(&format!("ws://{addr}/ws"), Encoding::Json).await;
    c.join("lobby").await;
    node.terminate();
    let _ = c.closed().await;
    let (code, lines) = node.finish().await;
    assert_eq!(code, Some(0), "a clean stop: {lines:#?}");
    assert!(
        lines.iter().any(|l| l.contains("redis bus closed")),
        "the bus says it was closed: {lines:#?}"
    );
    let alarming: Vec<&String> = lines
        .iter()
        .filter(|l| (l.contains("WARN") || l.contains("ERROR")) && l.to_lowercase().contains("bus"))
        .collect();
    assert!(
        alarming.is_empty(),
        "a stop is not a bus failure: {alarming:#?}"
    );
}

/// Runs the binary until it exits by itself; its code and stderr.
async fn refused(args: &[&str]) -> (Option<i32>, String) {
    support::exit_of(
        Command::new(env!("CARGO_BIN_EXE_roomcast"))
            .args(args)
            .env_remove("ROOMCAST_CONFIG")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null()),
    )
    .await
}

#[tokio::test]
async fn a_port_in_use_is_one_line_and_exit_2_even_with_rust_backtrace() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let addr = held.local_addr().expect("addr").to_string();
    let (code, stderr) = refused(&["--listen", &addr, "--auth", "none"]).await;
    assert_eq!(code, Some(2), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(
        lines[0].starts_with(&format!("roomcast: cannot listen on {addr}: ")),
        "says what and where: {stderr}"
    );
    assert!(lines[0].contains("in use"), "says why: {stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
    drop(held);
}

#[tokio::test]
async fn a_redis_url_the_node_cannot_use_is_one_line_and_exit_2() {
    let (code, stderr) = refused(&[
        "--listen",
        "127.0.0.1:0",
        "--auth",
        "none",
        "--redis-url",
        // parses as a URL, but not as a Redis one: refused by the bus at start
        "redis://127.0.0.1:1/notadb",
    ])
    .await;
    assert_eq!(code, Some(2), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].starts_with("roomcast: cluster bus: "), "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
}
