//! A real `redis-server` child process on a free loopback port, without persistence
//! (plain, with a password, or TLS-only), killed on drop and restartable empty.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// A `redis-server` child process.
pub struct RedisServer {
    pub port: u16,
    password: Option<String>,
    /// TLS only (`--port 0 --tls-port`): the directory holding `cert.pem` and `key.pem`.
    tls: Option<std::path::PathBuf>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server without a password.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts a server that requires `password`.
    pub fn start_with_password(password: &str) -> Self {
        Self::start_with(Some(password.to_string()))
    }

    /// Starts a TLS-only server with a fresh self-signed certificate (for 127.0.0.1);
    /// returns it and the path of the CA certificate that signed it, for `SSL_CERT_FILE`.
    pub fn start_tls() -> (Self, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("roomcast-redis-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("cert dir");
        // a CA, and a leaf certificate for 127.0.0.1 signed by it
        std::fs::write(
            dir.join("leaf.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
        )
        .expect("ext file");
        let openssl = |args: &[&str]| {
            let status = Command::new("openssl")
                .current_dir(&dir)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl must be installed");
            assert!(status.success(), "openssl {args:?} failed");
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=roomcast-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "key.pem",
            "-out",
            "leaf.csr",
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "leaf.ext",
            "-out",
            "cert.pem",
        ]);
        for _ in 0..10 {
            let mut s = RedisServer {
                port: free_port(),
                password: None,
                tls: Some(dir.clone()),
                child: None,
            };
            if s.spawn() {
                return (s, dir.join("ca.pem"));
            }
        }
        panic!("could not start a TLS redis-server");
    }

    fn start_with(password: Option<String>) -> Self {
        for _ in 0..10 {
            let port = free_port();
            let mut s = RedisServer {
                port,
                password: password.clone(),
                tls: None,
                child: None,
            };
            if s.spawn() {
                return s;
            }
        }
        panic!("could not start redis-server on a free port");
    }

    /// Spawns the process on `self.port`; false when it exited (port taken).
    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        match &self.tls {
            None => cmd.args(["--port", &self.port.to_string()]),
            Some(dir) => cmd
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &self.port.to_string(),
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(dir.join("cert.pem"))
                .arg("--tls-key-file")
                .arg(dir.join("key.pem")),
        };
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args([
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
                "--dir",
                &std::env::temp_dir().to_string_lossy(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        let mut child = cmd
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if self.answers() {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Whether something answers PING on the port (NOAUTH counts: it is up).
    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        if self.tls.is_some() {
            return true; // listening is all we can tell without a handshake
        }
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        matches!(s.read(&mut buf), Ok(n) if n > 0)
    }

    /// `redis://` URL of this server (with its password).
    pub fn url(&self) -> String {
        if self.tls.is_some() {
            return format!("rediss://127.0.0.1:{}/", self.port);
        }
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// Kills the server (SIGKILL): every connection drops, all data is lost.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port (empty, as after a restart without
    /// persistence).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("could not restart redis-server on port {}", self.port);
    }

    /// Runs one command over a fresh plain connection; the raw RESP reply (plain
    /// servers without a password only).
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let raw: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.command_raw(&raw)
    }

    /// [`Self::command`] with binary arguments.
    pub fn command_raw(&self, args: &[&[u8]]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a);
            req.extend_from_slice(b"\r\n");
        }
        s.write_all(&req).ok()?;
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).ok()?;
        (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// A plain multiplexed connection for raw commands.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test redis")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
