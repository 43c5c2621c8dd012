//! A real Redis Cluster for tests: 3 primaries and 3 replicas (`redis-server
//! --cluster-enabled yes` x6 on loopback ports, each in a temp dir of its own), formed by
//! `redis-cli --cluster create ... --cluster-replicas 1`; ready when every node says
//! `cluster_state:ok`. Killed (and its dirs removed) on drop.
//!
//! Self-contained (std only) so that other crates' tests include it with `#[path]`:
//! `#[path = "../../redis-bridge/tests/support/cluster.rs"] mod cluster;`
#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the cluster may take to form or to fail over.
pub const CLUSTER_WAIT: Duration = Duration::from_secs(60);

/// One node of the cluster.
pub struct ClusterNode {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// Six nodes forming one cluster.
pub struct RedisCluster {
    pub nodes: Vec<ClusterNode>,
}

/// A port that is free, and whose cluster bus port (+10000) is free too.
fn free_pair() -> u16 {
    for _ in 0..1000 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let seed = l.local_addr().expect("local addr").port();
        // Ports whose bus port (+10000) fits: 20000..=45000.
        let port = 20000 + seed % 25000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port pair for a cluster node");
}

/// Runs `redis-cli -p port args...`; its output (None when it failed to run).
pub fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `f` every 50 ms until it holds or `CLUSTER_WAIT` passes.
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + CLUSTER_WAIT;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("redis cluster: {what} did not happen within {CLUSTER_WAIT:?}");
}

impl ClusterNode {
    fn start() -> ClusterNode {
        let port = free_pair();
        let dir =
            std::env::temp_dir().join(format!("roomcast-cluster-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cluster node dir");
        let mut n = ClusterNode {
            port,
            dir,
            child: None,
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .current_dir(&self.dir)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            // a failover within a few seconds of a kill
            .args(["--cluster-node-timeout", "2000"])
            // replicas sync at once (not after the default 5 s), and a replica may take
            // over whatever its replication link's age
            .args(["--repl-diskless-sync-delay", "0"])
            .args(["--cluster-replica-validity-factor", "0"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        self.child = Some(child);
        let port = self.port;
        wait_until("a node answering PING", || {
            cli(port, &["PING"]).is_some_and(|o| o.trim() == "PONG")
        });
    }

    /// Kills the node with SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the node runs.
    pub fn alive(&self) -> bool {
        self.child.is_some()
    }

    /// This node's `redis://` URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The node's `role` line (`master` or `slave`).
    pub fn role(&self) -> Option<String> {
        let info = cli(self.port, &["INFO", "replication"])?;
        info.lines()
            .find_map(|l| l.strip_prefix("role:"))
            .map(|r| r.trim().to_string())
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl RedisCluster {
    /// Starts six nodes and forms the cluster; returns when every node says
    /// `cluster_state:ok` and knows all six.
    pub fn start() -> RedisCluster {
        let nodes: Vec<ClusterNode> = (0..6).map(|_| ClusterNode::start()).collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let status = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli must be installed");
        assert!(status.success(), "redis-cli --cluster create failed");
        let c = RedisCluster { nodes };
        c.wait_ok();
        c
    }

    /// Waits until every live node says `cluster_state:ok`, every live replica's link
    /// to its primary is up, and all agree on who serves every slot.
    pub fn wait_ok(&self) {
        let live = self.live_ports();
        wait_until("cluster_state:ok on every node", || {
            live.iter().all(|&p| {
                cli(p, &["CLUSTER", "INFO"]).is_some_and(|o| o.contains("cluster_state:ok"))
                    && cli(p, &["INFO", "replication"]).is_some_and(|o| {
                        o.contains("role:master") || o.contains("master_link_status:up")
                    })
            }) && {
                let maps: Vec<Option<String>> = live.iter().map(|&p| self.primary_map(p)).collect();
                maps.iter().all(|m| m.is_some() && *m == maps[0])
            }
        });
    }

    /// After `dead` was killed: waits until its replica is promoted, i.e. every live node
    /// says `cluster_state:ok` and none names `dead` as the primary of any slot.
    pub fn wait_promoted(&self, dead: u16) {
        let gone = format!("127.0.0.1:{dead}@");
        let live = self.live_ports();
        wait_until("the dead primary's replica promoted", || {
            live.iter().all(|&p| {
                cli(p, &["CLUSTER", "INFO"]).is_some_and(|o| o.contains("cluster_state:ok"))
                    && self.primary_map(p).is_some_and(|m| !m.contains(&gone))
            })
        });
        self.wait_ok();
    }

    /// The ports of the nodes that are alive.
    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.alive())
            .map(|n| n.port)
            .collect()
    }

    /// A node's view of which primary serves which slots (sorted lines), when it serves
    /// all 16384 with primaries that are alive.
    fn primary_map(&self, port: u16) -> Option<String> {
        let out = cli(port, &["CLUSTER", "NODES"])?;
        let mut lines: Vec<String> = Vec::new();
        let mut slots = 0usize;
        for l in out.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 8 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let ranges = &f[8..];
            for r in ranges {
                if r.starts_with('[') {
                    continue;
                }
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) else {
                    continue;
                };
                slots += b + 1 - a;
            }
            lines.push(format!("{} {}", f[1], ranges.join(" ")));
        }
        lines.sort();
        (slots == 16384).then(|| lines.join("\n"))
    }

    /// Seed URLs: every node's.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url()).collect()
    }

    /// The seeds as one comma-separated flag value.
    pub fn seeds_flag(&self) -> String {
        self.seeds().join(",")
    }

    /// The port of the primary serving `key`'s slot.
    pub fn primary_of(&self, key: &str) -> u16 {
        let port = self.nodes.iter().find(|n| n.alive()).map(|n| n.port);
        let out =
            cli(port.expect("a live node"), &["CLUSTER", "KEYSLOT", key]).expect("cluster keyslot");
        let slot: u16 = out.trim().parse().expect("a slot number");
        self.primary_of_slot(slot)
    }

    /// The port of the primary serving `slot`.
    pub fn primary_of_slot(&self, slot: u16) -> u16 {
        let port = self
            .nodes
            .iter()
            .find(|n| n.alive())
            .map(|n| n.port)
            .expect("a live node");
        let nodes = cli(port, &["CLUSTER", "NODES"]).expect("cluster nodes");
        for l in nodes.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            for r in &f[8..] {
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>()) else {
                    continue;
                };
                if (a..=b).contains(&slot) {
                    let addr = f[1].split('@').next().unwrap_or("");
                    let p = addr.rsplit(':').next().and_then(|p| p.parse().ok());
                    return p.expect("a master address");
                }
            }
        }
        panic!("no primary serves slot {slot}");
    }

    /// The node on `port`.
    pub fn node(&mut self, port: u16) -> &mut ClusterNode {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster")
    }

    /// Whether the node on `port` is a live primary.
    pub fn node_role_is_master(&self, port: u16) -> bool {
        self.nodes
            .iter()
            .find(|n| n.port == port && n.alive())
            .and_then(|n| n.role())
            .is_some_and(|r| r == "master")
    }

    /// The node id of the node on `port`.
    pub fn node_id(&self, port: u16) -> String {
        cli(port, &["CLUSTER", "MYID"])
            .expect("cluster myid")
            .trim()
            .to_string()
    }

    /// The slot of `key`.
    pub fn slot(&self, key: &str) -> u16 {
        let port = self.nodes.iter().find(|n| n.alive()).map(|n| n.port);
        cli(port.expect("a live node"), &["CLUSTER", "KEYSLOT", key])
            .expect("cluster keyslot")
            .trim()
            .parse()
            .expect("a slot number")
    }
}

/// Runs `redis-cli -c -p port -x args...` with `input` as the last argument (binary safe;
/// `-c` follows MOVED to the slot's shard); its output.
pub fn cli_with_input(port: u16, args: &[&str], input: &[u8]) -> Option<String> {
    use std::io::Write;
    let mut child = Command::new("redis-cli")
        .args(["-c", "-h", "127.0.0.1", "-p", &port.to_string(), "-x"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(input).ok()?;
    let out = child.wait_with_output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}
