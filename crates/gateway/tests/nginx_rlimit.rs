//! nginx/render.sh renders `worker_rlimit_nofile` with what the machine allows (issue 17):
//! where the hard limit on open files is below 65536, a fixed 65536 made every nginx worker
//! log `[alert] setrlimit(RLIMIT_NOFILE, 65536) failed`. This test lowers the limit of a
//! shell to 16384, renders the template in it (as deploy/local-cluster does) and runs the
//! real nginx in front of a real node there; once a request has gone through the worker,
//! its error log must hold no such alert.

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use support::{eventually, http, TestNode, WAIT};

/// A free loopback port (nginx binds it itself).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[tokio::test]
async fn nginx_under_a_low_open_file_limit_logs_no_setrlimit_alert() {
    let node = TestNode::open().await;
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let dir = std::env::temp_dir().join(format!("roomcast-nginx-rlimit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("tmp")).expect("state dir");
    // Run as root, the workers are nobody: let them use the temp dir.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
    }
    let port = free_port();
    let front: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let d = dir.display().to_string();
    // `ulimit -n` sets the soft and the hard limit of this shell and its children; if the
    // hard limit is already lower, that lower one is what render.sh must find.
    let script = format!(
        r#"ulimit -n 16384 2>/dev/null || true
nginx=$(command -v nginx || echo /usr/sbin/nginx)
NGINX_UPSTREAMS=127.0.0.1:{node_port} NGINX_LISTEN=127.0.0.1:{port} NGINX_WORKER_PROCESSES=1 \
NGINX_PID_FILE={d}/nginx.pid NGINX_ERROR_LOG={d}/error.log NGINX_ACCESS_LOG={d}/access.log \
NGINX_TEMP_DIR={d}/tmp sh {repo}/nginx/render.sh {repo}/nginx/roomcast.conf.template >{d}/nginx.conf || exit 3
exec "$nginx" -p {d} -c {d}/nginx.conf -e {d}/error.log -g 'daemon off;'"#,
        node_port = node.addr.port(),
    );
    let mut nginx = tokio::process::Command::new("sh")
        .args(["-c", &script])
        .env_remove("NGINX_WORKER_RLIMIT_NOFILE")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("sh");
    // nginx announces nothing when it is up: poll until a request has gone through its
    // worker to the node (the worker sets its limit before it takes any connection).
    let log_path = dir.join("error.log");
    eventually("nginx proxies /healthz to the node", || {
        if let Ok(Some(st)) = nginx.try_wait() {
            panic!("nginx exited ({st}); see {}", log_path.display());
        }
        async move {
            tokio::net::TcpStream::connect(front).await.ok()?;
            let (status, _) = http(front, "GET", "/healthz", &[], "").await;
            (status == 200).then_some(())
        }
    })
    .await;
    let conf = std::fs::read_to_string(dir.join("nginx.conf")).expect("rendered conf");
    let limit_line = conf
        .lines()
        .find(|l| l.starts_with("worker_rlimit_nofile"))
        .expect("a worker_rlimit_nofile line");
    let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
    // A graceful stop (SIGQUIT), awaited.
    let pid = nginx.id().expect("nginx runs");
    let _ = std::process::Command::new("sh")
        .args(["-c", &format!("kill -QUIT {pid}")])
        .status();
    let _ = tokio::time::timeout(WAIT, nginx.wait()).await;
    node.stop().await;
    assert!(
        !log.contains("setrlimit"),
        "{limit_line} under a 16384 limit; nginx error log:\n{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
