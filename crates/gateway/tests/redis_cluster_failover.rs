//! Topology changes on a real Redis Cluster under load (docs/protocol.md section 6b).
//! Failover drill: a primary is killed with SIGKILL while a node publishes without pause
//! to rooms on every shard; its replica is promoted (waited for, bounded); the nodes
//! follow without a restart. Slot migration: `redis-cli --cluster reshard` moves the slots
//! holding two test rooms to another shard while they are published to. Members
//! on the other node see, per room, every offset once and in order; every acknowledged
//! message reaches them, unless the room's epoch changed and their re-join said
//! `recovered: false` (what asynchronous replication lost is never a silent gap).
//!
//! Members that are closed (1013 after a loss) reconnect and re-join with `since`, as a
//! client library does.

#[path = "../../redis-bridge/tests/support/cluster.rs"]
mod cluster;
mod support;

use cluster::RedisCluster;
use futures_util::StreamExt;
use roomcast_protocol::{Encoding, ServerMessage};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;
use tokio_tungstenite::tungstenite::Message;

const ROOMS: usize = 6;
/// Publishes at most, whatever happens (the loop is bounded in count and time).
const MAX_PUBLISHES: usize = 5000;

async fn node(c: &RedisCluster, id: &str) -> TestNode {
    cluster_mode_node(&c.seeds_flag(), id, &["--bus-timeout", "2"]).await
}

async fn connect(node_addr: std::net::SocketAddr, user: &str) -> Client {
    connect_user(&format!("ws://{node_addr}/ws"), user, Encoding::Json).await
}

/// What one member saw of its room.
#[derive(Default)]
struct Seen {
    /// (epoch, offset) in the order delivered.
    log: Vec<(String, u64)>,
    /// A re-join said `recovered: false`.
    told_lost: bool,
    /// Re-joins.
    rejoins: usize,
}

/// The next frame, `Ok(None)` when none came within a second, `Err` when closed.
async fn next_frame(c: &mut Client) -> Result<Option<ServerMessage>, ()> {
    if let Some(m) = c.backlog.pop_front() {
        return Ok(Some(m));
    }
    loop {
        match tokio::time::timeout(Duration::from_secs(1), c.ws.next()).await {
            Err(_) => return Ok(None),
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return Err(()),
            Ok(Some(Ok(Message::Text(t)))) => {
                return Ok(Some(
                    Encoding::Json
                        .decode_server(t.as_bytes())
                        .expect("valid server message"),
                ))
            }
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// A member of `room` on node `addr`: joins (with `since` after a cut), records what it
/// gets, reconnects when closed; until `stop` and nothing more comes.
async fn member(
    addr: std::net::SocketAddr,
    room: String,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
) {
    let user = format!("m-{room}");
    'connect: for attempt in 0..200 {
        if stop.load(Ordering::Acquire) && attempt > 0 {
            return;
        }
        let mut c = connect(addr, &user).await;
        let last = seen.lock().expect("lock").log.last().cloned();
        let mut join = json!({"type": "join", "room": room});
        if let Some((epoch, offset)) = &last {
            join["since"] = json!({"offset": offset, "epoch": epoch});
        }
        let r = c.request(join, &format!("j{attempt}")).await;
        let ServerMessage::Joined {
            epoch,
            recovered,
            messages,
            ..
        } = r
        else {
            // the bus may be down a moment: try again
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        {
            let mut s = seen.lock().expect("lock");
            if last.is_some() {
                s.rejoins += 1;
                if !recovered {
                    s.told_lost = true;
                }
            }
            for m in messages {
                s.log.push((epoch.clone(), m.offset.expect("offset")));
            }
        }
        loop {
            match next_frame(&mut c).await {
                Ok(Some(ServerMessage::Message(p))) => {
                    seen.lock()
                        .expect("lock")
                        .log
                        .push((epoch.clone(), p.offset.expect("offset")));
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                }
                Err(()) => continue 'connect,
            }
        }
    }
}

/// What happens to the cluster in the middle of the publishing.
enum Disruption {
    /// SIGKILL the primary of the first room's slot; wait for its replica's promotion.
    KillPrimary,
    /// Move the lowest `n` slots of the first room's shard (which hold the first two
    /// rooms) to another shard with `redis-cli --cluster reshard`.
    Reshard(u32),
}

/// CRC16/XMODEM mod 16384: a name's hash slot.
fn slot(name: &str) -> u16 {
    let mut crc: u16 = 0;
    for &b in name.as_bytes() {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_publishing_loses_nothing_silently() {
    let rooms: Vec<String> = (0..ROOMS).map(|i| format!("f{i}")).collect();
    drill(rooms, Disruption::KillPrimary).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_resharded_under_publishing_lose_and_double_nothing() {
    // Two rooms in the lowest slots (0..64), which `reshard` moves first; the others anywhere.
    let mut rooms: Vec<String> = (0..100_000)
        .map(|i| format!("m{i}"))
        .filter(|r| slot(r) < 64)
        .take(2)
        .collect();
    rooms.extend((2..ROOMS).map(|i| format!("f{i}")));
    drill(rooms, Disruption::Reshard(64)).await;
}

async fn drill(rooms: Vec<String>, disruption: Disruption) {
    let mut rc = RedisCluster::start();
    let a = node(&rc, "a").await;
    let b = node(&rc, "b").await;
    let first_slot = slot(&rooms[0]);
    let victim = rc.primary_of_slot(first_slot);

    let stop_members = Arc::new(AtomicBool::new(false));
    let mut seen = Vec::new();
    let mut members = Vec::new();
    for r in &rooms {
        let s = Arc::new(Mutex::new(Seen::default()));
        seen.push(s.clone());
        members.push(tokio::spawn(member(
            b.addr,
            r.clone(),
            s,
            stop_members.clone(),
        )));
    }
    // Every member has joined (its room subscribed on B) before publishing starts.
    let ready_b = eventually("B subscribed every room", || async {
        let (_, body) = http(b.addr, "GET", "/metrics", &[], "").await;
        body.lines()
            .any(|l| l == format!("roomcast_bus_subscribed_rooms {ROOMS}"))
            .then_some(())
    });
    ready_b.await;

    // The publisher: round robin over the rooms, every ack recorded.
    let acked: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop_pub = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (acked, failed, stop_pub, addr) =
            (acked.clone(), failed.clone(), stop_pub.clone(), a.addr);
        let rooms = rooms.clone();
        tokio::spawn(async move {
            let mut p = connect(addr, "publisher").await;
            for k in 0..MAX_PUBLISHES {
                if stop_pub.load(Ordering::Acquire) {
                    break;
                }
                let i = k % ROOMS;
                let r = p
                    .request(
                        json!({"type": "publish", "room": rooms[i], "event": "e", "data": k}),
                        &format!("p{k}"),
                    )
                    .await;
                match r {
                    ServerMessage::Ack {
                        offset: Some(o), ..
                    } => acked.lock().expect("lock").push((i, o)),
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let acks = |n: usize| {
        let acked = acked.clone();
        async move {
            eventually("publishes acknowledged", || {
                let acked = acked.clone();
                async move { (acked.lock().expect("lock").len() >= n).then_some(()) }
            })
            .await
        }
    };
    acks(300).await;
    let at_kill = match disruption {
        Disruption::KillPrimary => {
            rc.node(victim).kill9();
            let at_kill = acked.lock().expect("lock").len();
            // Readiness reflects every shard's subscription: B is not ready while a
            // shard it subscribes on is gone.
            eventually("B answers /readyz 503 while a shard is down", || async {
                (http(b.addr, "GET", "/readyz", &[], "").await.0 == 503).then_some(())
            })
            .await;
            // The replica is promoted (bounded wait inside).
            tokio::task::block_in_place(|| rc.wait_promoted(victim));
            at_kill
        }
        Disruption::Reshard(n) => {
            let to = rc
                .nodes
                .iter()
                .map(|n| n.port)
                .find(|&p| p != victim && rc.node_role_is_master(p))
                .expect("another primary");
            let (from_id, to_id) = (rc.node_id(victim), rc.node_id(to));
            let seed = format!("127.0.0.1:{victim}");
            let n = n.to_string();
            let status = tokio::task::spawn_blocking(move || {
                std::process::Command::new("redis-cli")
                    .args(["--cluster", "reshard", &seed])
                    .args(["--cluster-from", &from_id, "--cluster-to", &to_id])
                    .args(["--cluster-slots", &n, "--cluster-yes"])
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
            })
            .await
            .expect("reshard task")
            .expect("redis-cli runs");
            assert!(status.success(), "redis-cli --cluster reshard failed");
            let at = acked.lock().expect("lock").len();
            tokio::task::block_in_place(|| rc.wait_ok());
            at
        }
    };
    assert_ne!(
        rc.primary_of_slot(first_slot),
        victim,
        "the first room's slot is served elsewhere now"
    );
    // The nodes follow without a restart: publishing works again.
    acks(at_kill + 300).await;
    stop_pub.store(true, Ordering::Release);
    publisher.await.expect("publisher");

    // Each room's current position, read fresh on A.
    let mut reader = connect(a.addr, "reader").await;
    let mut finals = Vec::new();
    for r in &rooms {
        let ServerMessage::Joined { epoch, offset, .. } = reader.join(r).await else {
            unreachable!()
        };
        finals.push((epoch, offset));
    }
    for (i, s) in seen.iter().enumerate() {
        let want = finals[i].clone();
        let s = s.clone();
        eventually("every member reached its room's last message", || {
            let (s, want) = (s.clone(), want.clone());
            async move { (s.lock().expect("lock").log.last() == Some(&want)).then_some(()) }
        })
        .await;
    }
    stop_members.store(true, Ordering::Release);
    for m in members {
        m.await.expect("member");
    }

    let acked = acked.lock().expect("lock").clone();
    let mut lost_rooms = 0;
    for (i, s) in seen.iter().enumerate() {
        let s = s.lock().expect("lock");
        // Within an epoch: every offset once, in order, from where the member started.
        let mut by_epoch: Vec<(String, Vec<u64>)> = Vec::new();
        for (e, o) in &s.log {
            match by_epoch.last_mut() {
                Some((le, v)) if le == e => v.push(*o),
                _ => by_epoch.push((e.clone(), vec![*o])),
            }
        }
        for (e, v) in &by_epoch {
            let expected: Vec<u64> = (v[0]..v[0] + v.len() as u64).collect();
            assert_eq!(
                v, &expected,
                "room {i} epoch {e}: a gap, a repeat or a reorder"
            );
        }
        if by_epoch.len() > 1 {
            assert!(
                s.told_lost,
                "room {i}: its epoch changed and nobody was told recovered: false"
            );
            lost_rooms += 1;
        } else {
            let got: std::collections::HashSet<u64> = by_epoch[0].1.iter().copied().collect();
            for (room, o) in acked.iter().filter(|(r, _)| *r == i) {
                assert!(
                    got.contains(o),
                    "room {room}: acknowledged offset {o} never delivered"
                );
            }
        }
    }
    let per_room: HashMap<usize, usize> = acked.iter().fold(HashMap::new(), |mut m, (r, _)| {
        *m.entry(*r).or_default() += 1;
        m
    });
    eprintln!(
        "topology drill: {} acknowledged ({at_kill} before the change), {} failed during the failover, rooms with a new epoch: {lost_rooms}, per room {per_room:?}",
        acked.len(),
        failed.load(Ordering::Relaxed)
    );
    // B followed the change: it read the slot map again (and, for the migration, Redis
    // told it the slot moved).
    let (_, body) = http(b.addr, "GET", "/metrics", &[], "").await;
    let value = |name: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let (refreshes, moves) = (
        value("roomcast_bus_topology_refreshes_total"),
        value("roomcast_bus_slot_moves_total"),
    );
    eprintln!("node B: {refreshes} topology refreshes, {moves} slot moves");
    assert!(refreshes >= 2.0, "B re-read the slot map");
    if matches!(disruption, Disruption::Reshard(_)) {
        assert!(moves >= 1.0, "Redis told B its subscribed slot moved");
    }
    for n in [&a, &b] {
        eventually("the node is ready again without a restart", || async {
            (http(n.addr, "GET", "/readyz", &[], "").await.0 == 200).then_some(())
        })
        .await;
    }
    a.stop().await;
    b.stop().await;
}
