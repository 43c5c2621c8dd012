//! The `roomcast` binary run as a child process, so that a test can kill it with SIGKILL.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::WAIT;

/// The node binary: `$ROOMCAST_BIN`, else `roomcast` in the cargo target directory of the
/// running test (a test binary lives in `target/<profile>/deps/`, the node one level up).
pub fn roomcast_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ROOMCAST_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let deps = exe.parent().expect("the test binary's directory");
    let profile = if deps.ends_with("deps") {
        deps.parent().unwrap_or(deps)
    } else {
        deps
    };
    profile.join(format!("roomcast{}", std::env::consts::EXE_SUFFIX))
}

/// A node run as the real `roomcast` binary, so that it can be killed with SIGKILL.
pub struct ChildNode {
    pub addr: SocketAddr,
    child: Option<std::process::Child>,
}

impl ChildNode {
    /// Starts [`roomcast_bin`] with these flags (plus `--listen 127.0.0.1:0`) and
    /// waits for its ready line, which names the address.
    pub fn start(args: &[&str]) -> ChildNode {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let mut child = Command::new(roomcast_bin())
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(args)
            .env_remove("ROOMCAST_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn roomcast");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads every line (so the pipe never fills), reporting the ready line's address.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                        .collect();
                    if let (Some(tx), Ok(a)) = (tx.take(), addr.parse::<SocketAddr>()) {
                        let _ = tx.send(a);
                    }
                }
            }
        });
        let addr = match rx.recv_timeout(WAIT) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("roomcast did not print its ready line within {WAIT:?}");
            }
        };
        ChildNode {
            addr,
            child: Some(child),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        self.kill9();
    }
}
