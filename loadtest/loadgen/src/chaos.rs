//! `chaos-check`: the checker client of the chaos suite (scripts/chaos).
//!
//! It connects through the load balancer (nginx rendered from the template), publishes with
//! ids at a steady rate, tracks every `ack` (id -> offset) and every delivery per room per
//! receiver, reconnects like a well-behaved client (`join` + `since` {offset, epoch}, and
//! resends unacknowledged publishes with the same id), and reports:
//! - silent loss: an acknowledged message a receiver never got although it was told nothing
//!   (it stayed in the same epoch, or re-joined with `recovered: true`), and gaps in the
//!   offsets of one epoch (offsets are dense: every offset is a message);
//! - signalled loss: messages missed across a `recovered: false` re-join;
//! - duplicates (one message delivered twice to a receiver, or one id acked with two
//!   offsets), reorder (an offset below the last one delivered in the same epoch);
//! - reconnect times (from the moment a connection was lost to the next `joined`, or to the
//!   next `welcome` for a publisher);
//! - slow consumers (`--slow`): receivers that stop reading must be closed (4008), the
//!   others must not notice.
//!
//! Every loop is bounded in time; only loopback targets are accepted. Exit 0 when the
//! contract held (and the `--expect-*` assertions), 2 when not.

use crate::sys;
use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
/// A message's identity: (publisher index in the room, sequence number).
type Key = (usize, u64);

#[derive(clap::Args, Debug, Clone)]
pub struct ChaosArgs {
    /// Rooms, each with its own publishers and receivers.
    #[arg(long, default_value_t = 3)]
    rooms: usize,
    /// Receivers per room (they read everything and are checked).
    #[arg(long, default_value_t = 4)]
    receivers: usize,
    /// Publishers per room (each publishes with ids and tracks acks).
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Publishes per second per publisher.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Bytes of padding in every message's data.
    #[arg(long, default_value_t = 0)]
    payload: usize,
    /// Publish for at most this many seconds (or until --stop-file appears).
    #[arg(long, default_value_t = 30.0)]
    publish_for: f64,
    /// Publishing stops when this file exists (the fault was injected and healed).
    #[arg(long)]
    stop_file: Option<PathBuf>,
    /// Written (with the node each receiver landed on) once every client is joined and the
    /// first messages went round.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// After publishing stops, wait at most this long for every receiver to catch up.
    #[arg(long, default_value_t = 15.0)]
    settle: f64,
    /// Slow receivers per room: they stop reading after --slow-after seconds, for
    /// --slow-hold seconds, then read what is left; the node must have closed them.
    #[arg(long, default_value_t = 0)]
    slow: usize,
    #[arg(long, default_value_t = 2.0)]
    slow_after: f64,
    #[arg(long, default_value_t = 20.0)]
    slow_hold: f64,
    /// Slow receivers resume reading as soon as this file exists (the suite creates it
    /// once the nodes logged their 4008 closes); --slow-hold is then only the upper bound.
    #[arg(long)]
    slow_resume_file: Option<PathBuf>,
    /// Send every publish twice at once (same id), and resend pending ones on reconnect:
    /// exactly one delivery per id is expected.
    #[arg(long)]
    idem_race: bool,
    /// Assert no loss at all (not even signalled).
    #[arg(long)]
    expect_no_loss: bool,
    /// Assert every reconnect took less than this many seconds (0: no assertion).
    #[arg(long, default_value_t = 0.0)]
    max_reconnect: f64,
    /// Assert at least this many reconnects happened (the fault really hit the clients).
    #[arg(long, default_value_t = 0)]
    expect_reconnects: usize,
    /// Assert every slow receiver was closed by the node (and no other receiver got 4008).
    #[arg(long)]
    expect_slow_closed: bool,
    /// Spread clients over source addresses 127.0.<1..=N>.1 (ip_hash uses three octets).
    #[arg(long, default_value_t = 12)]
    spread: u8,
}

/// What the whole run shares.
struct Shared {
    t0: Instant,
    /// Per room: identity -> (ack offset, ack time).
    acked: Vec<Mutex<HashMap<Key, (u64, Instant)>>>,
    /// Per room: identity -> the epoch a receiver saw it delivered in.
    epoch_of: Vec<Mutex<HashMap<Key, String>>>,
    ack_conflicts: Mutex<Vec<String>>,
    reconnects: Mutex<Vec<(String, f64)>>,
    errors: Mutex<BTreeMap<String, u64>>,
    /// Publishes sent again with the same id (after a reconnect, or an ack that never came).
    resent: std::sync::atomic::AtomicU64,
    publishing: tokio::sync::watch::Receiver<bool>,
    stop_all: tokio::sync::watch::Receiver<bool>,
    /// Per publisher: (unacknowledged publishes, done: publishing stopped and nothing pending).
    pending_total: Mutex<HashMap<(usize, usize), (usize, bool)>>,
}

impl Shared {
    fn error(&self, what: impl Into<String>) {
        if let Ok(mut e) = self.errors.lock() {
            *e.entry(what.into()).or_default() += 1;
        }
    }
}

/// One receiver's view.
#[derive(Default)]
struct Recv {
    first_joined: Option<Instant>,
    epoch: Option<String>,
    last: Option<u64>,
    seen: HashSet<Key>,
    duplicates: u64,
    reorder: u64,
    gaps: u64,
    /// Epochs this receiver left through a `recovered: false` re-join, and when.
    left_epochs: Vec<(String, Instant)>,
    recovered_false: u64,
    recovered_true: u64,
    closes: BTreeMap<String, u64>,
    node: String,
    connected: bool,
}

struct Settings {
    addr: SocketAddr,
    host_port: String,
    path: String,
    secret: Option<String>,
    prefix: String,
    args: ChaosArgs,
}

pub fn main(
    args: ChaosArgs,
    url: &str,
    secret: Option<String>,
    prefix: Option<String>,
    out: Option<PathBuf>,
) -> Result<()> {
    let t = sys::parse_target(url)?;
    let base = t.base_path.trim_end_matches('/').to_string();
    let path = if base.ends_with("/ws") {
        base
    } else {
        format!("{base}/ws")
    };
    let prefix = prefix.unwrap_or_else(|| {
        format!(
            "chaos-{}-{}",
            std::process::id(),
            crate::stats::now_us() / 1000 % 100_000_000
        )
    });
    let st = Arc::new(Settings {
        addr: t.addr,
        host_port: t.host_port.clone(),
        path,
        secret,
        prefix,
        args,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(run(st))?;
    rt.shutdown_timeout(Duration::from_secs(2));
    let ok = report["ok"].as_bool().unwrap_or(false);
    let text = serde_json::to_string_pretty(&report)?;
    if let Some(p) = out {
        std::fs::write(&p, &text).with_context(|| format!("write {}", p.display()))?;
    }
    println!("{text}");
    std::process::exit(if ok { 0 } else { 2 });
}

fn token(st: &Settings, sub: &str) -> Option<String> {
    let secret = st.secret.as_ref()?;
    let now = crate::stats::now_us() / 1_000_000;
    let claims = json!({"sub": sub, "iat": now, "exp": now + 3600});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .ok()
}

/// Connects from 127.0.<src>.1 and waits for `welcome`; returns the socket and the node id.
async fn connect(st: &Settings, sub: &str, src: u8, rcvbuf: Option<u32>) -> Result<(Ws, String)> {
    let sock = TcpSocket::new_v4()?;
    if st.addr.ip().is_loopback() {
        let ip = Ipv4Addr::new(127, 0, src.max(1), 1);
        sock.bind(SocketAddr::new(IpAddr::V4(ip), 0))
            .with_context(|| format!("bind {ip}"))?;
    }
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n)?;
    }
    let stream = sock.connect(st.addr).await.context("tcp connect")?;
    stream.set_nodelay(true)?;
    let mut url = format!("ws://{}{}", st.host_port, st.path);
    if let Some(t) = token(st, sub) {
        url.push_str("?token=");
        url.push_str(&t);
    }
    let req = url.into_client_request()?;
    let (mut ws, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream))
        .await
        .context("websocket handshake")?;
    loop {
        let v = next_json(&mut ws).await?;
        if v["type"] == "welcome" {
            return Ok((ws, v["node"].as_str().unwrap_or("?").to_string()));
        }
    }
}

/// The next JSON message; Err(close code or error) when the connection ends.
async fn next_json(ws: &mut Ws) -> Result<Value> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => match serde_json::from_str::<Value>(&t) {
                Ok(v) => return Ok(v),
                Err(e) => bail!("bad json from server: {e}"),
            },
            Some(Ok(Message::Close(f))) => {
                let code = f.map(|f| u16::from(f.code)).unwrap_or(1005);
                bail!("close:{code}")
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("close:1006 ({e})"),
            None => bail!("close:1006 (eof)"),
        }
    }
}

fn close_code(e: &anyhow::Error) -> String {
    let s = e.to_string();
    match s.strip_prefix("close:") {
        Some(rest) => rest.split(' ').next().unwrap_or("?").to_string(),
        None => "error".to_string(),
    }
}

fn room_name(st: &Settings, r: usize) -> String {
    format!("{}-r{r}", st.prefix)
}

fn key_of(m: &Value) -> Option<Key> {
    let d = &m["data"];
    Some((d["p"].as_u64()? as usize, d["s"].as_u64()?))
}

impl Recv {
    fn deliver(&mut self, sh: &Shared, room: usize, m: &Value) {
        let (Some(k), Some(off)) = (key_of(m), m["offset"].as_u64()) else {
            sh.error("delivery without data.p/data.s/offset");
            return;
        };
        // Offsets first: a duplicate that was given a new offset still takes that offset.
        let dup = self.seen.contains(&k);
        match self.last {
            Some(l) if off <= l && !dup => self.reorder += 1,
            Some(l) if off > l + 1 => self.gaps += off - l - 1,
            _ => {}
        }
        if self.last.is_none_or(|l| off > l) {
            self.last = Some(off);
        }
        if dup {
            self.duplicates += 1;
            return;
        }
        self.seen.insert(k);
        if let (Some(ep), Ok(mut map)) = (&self.epoch, sh.epoch_of[room].lock()) {
            map.entry(k).or_insert_with(|| ep.clone());
        }
    }

    /// Applies a `joined` reply (first join or re-join).
    fn joined(&mut self, sh: &Shared, room: usize, j: &Value, rejoin: bool) {
        let epoch = match &j["epoch"] {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        let recovered = j["recovered"].as_bool().unwrap_or(false);
        if !rejoin {
            self.first_joined = Some(Instant::now());
            self.epoch = Some(epoch);
            self.last = j["offset"].as_u64();
        } else if recovered {
            self.recovered_true += 1;
            if self.epoch.as_deref() != Some(epoch.as_str()) {
                sh.error("recovered:true with another epoch");
            }
        } else {
            self.recovered_false += 1;
            if let Some(old) = self.epoch.take() {
                self.left_epochs.push((old.clone(), Instant::now()));
                if old == epoch {
                    // Same epoch but not recovered (too far behind): the gap is signalled;
                    // a new segment starts with the replayed messages.
                    self.last = None;
                } else {
                    // A new epoch: its history is replayed from its first offset (1).
                    self.last = Some(0);
                }
            }
            self.epoch = Some(epoch);
            if self.last.is_none() {
                self.last = j["messages"]
                    .as_array()
                    .and_then(|a| a.first())
                    .and_then(|m| m["offset"].as_u64())
                    .map(|o| o.saturating_sub(1))
                    .or(j["offset"].as_u64());
            }
        }
        if let Some(ms) = j["messages"].as_array() {
            for m in ms {
                self.deliver(sh, room, m);
            }
        }
    }
}

async fn join(ws: &mut Ws, room: &str, since: Option<(u64, String)>) -> Result<Value> {
    let mut j = json!({"type": "join", "room": room, "id": "j", "member_events": false});
    if let Some((o, e)) = since {
        j["since"] = json!({"offset": o, "epoch": e});
    }
    ws.send(Message::text(j.to_string())).await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = tokio::time::timeout_at(deadline.into(), next_json(ws))
            .await
            .context("join timed out")??;
        match v["type"].as_str() {
            Some("joined") if v["room"] == room => return Ok(v),
            Some("error") => bail!("join refused: {}", v["code"]),
            _ => continue,
        }
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((25u64 << attempt.min(5)).min(500))
}

async fn receiver(
    sh: Arc<Shared>,
    st: Arc<Settings>,
    room: usize,
    idx: usize,
    me: Arc<Mutex<Recv>>,
) {
    let name = room_name(&st, room);
    let sub = format!("chaos-recv-{room}-{idx}");
    let src = ((room * 31 + idx * 7) % st.args.spread.max(1) as usize + 1) as u8;
    let mut stop = sh.stop_all.clone();
    let mut lost_at: Option<Instant> = None;
    let mut attempt = 0u32;
    while !*stop.borrow() {
        let since = {
            let r = me.lock().ok();
            r.and_then(|r| match (r.last, &r.epoch, r.first_joined) {
                (Some(l), Some(e), Some(_)) => Some((l, e.clone())),
                _ => None,
            })
        };
        let rejoin = since.is_some();
        let conn = async {
            let (mut ws, node) = connect(&st, &sub, src, None).await?;
            let j = join(&mut ws, &name, since).await?;
            Ok::<_, anyhow::Error>((ws, node, j))
        };
        let (mut ws, node, j) = match tokio::time::timeout(Duration::from_secs(5), conn).await {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                sh.error(format!("receiver connect: {}", first_line(&e)));
                if rejoin {
                    lost_at.get_or_insert_with(Instant::now);
                }
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
                continue;
            }
            Err(_) => {
                sh.error("receiver connect: timeout");
                if rejoin {
                    lost_at.get_or_insert_with(Instant::now);
                }
                attempt += 1;
                continue;
            }
        };
        attempt = 0;
        if let Some(t) = lost_at.take() {
            if let Ok(mut r) = sh.reconnects.lock() {
                r.push((format!("recv {room}/{idx}"), t.elapsed().as_secs_f64()));
            }
        }
        if let Ok(mut r) = me.lock() {
            r.joined(&sh, room, &j, rejoin);
            r.node = node;
            r.connected = true;
        }
        let end = loop {
            tokio::select! {
                m = next_json(&mut ws) => match m {
                    Ok(v) if v["type"] == "message" => {
                        if let Ok(mut r) = me.lock() { r.deliver(&sh, room, &v); }
                    }
                    Ok(_) => {}
                    Err(e) => break Some(e),
                },
                _ = stop.changed() => break None,
            }
        };
        if let Ok(mut r) = me.lock() {
            r.connected = false;
        }
        match end {
            Some(e) => {
                lost_at = Some(Instant::now());
                if let Ok(mut r) = me.lock() {
                    *r.closes.entry(close_code(&e)).or_default() += 1;
                }
            }
            None => {
                let _ = ws.close(None).await;
                break;
            }
        }
    }
}

fn first_line(e: &anyhow::Error) -> String {
    format!("{e:#}").chars().take(80).collect()
}

/// A receiver that stops reading: returns how its connection ended.
async fn slow_receiver(sh: Arc<Shared>, st: Arc<Settings>, room: usize, idx: usize) -> String {
    let name = room_name(&st, room);
    let sub = format!("chaos-slow-{room}-{idx}");
    let src = ((room * 17 + idx * 5 + 3) % st.args.spread.max(1) as usize + 1) as u8;
    let run = async {
        let (mut ws, _) = connect(&st, &sub, src, Some(4096)).await?;
        join(&mut ws, &name, None).await?;
        let read_until = Instant::now() + Duration::from_secs_f64(st.args.slow_after);
        while let Ok(r) = tokio::time::timeout_at(read_until.into(), next_json(&mut ws)).await {
            r?;
        }
        // Stop reading: the node's queue and the sockets fill up.
        let hold_until = Instant::now() + Duration::from_secs_f64(st.args.slow_hold);
        while Instant::now() < hold_until {
            if st
                .args
                .slow_resume_file
                .as_ref()
                .is_some_and(|f| f.exists())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Read what is left: the node must have ended the connection.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline.into(), next_json(&mut ws)).await {
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => return Ok::<String, anyhow::Error>(close_code(&e)),
                Err(_) => return Ok("open".to_string()),
            }
        }
    };
    match run.await {
        Ok(s) => s,
        Err(e) => {
            sh.error(format!("slow receiver: {}", first_line(&e)));
            "setup-failed".to_string()
        }
    }
}

async fn publisher(sh: Arc<Shared>, st: Arc<Settings>, room: usize, p: usize) {
    let name = room_name(&st, room);
    let sub = format!("chaos-pub-{room}-{p}");
    let src = ((room * 13 + p * 3 + 5) % st.args.spread.max(1) as usize + 1) as u8;
    let period = Duration::from_secs_f64(1.0 / st.args.rate.max(0.1));
    let pad = "x".repeat(st.args.payload);
    let mut publishing = sh.publishing.clone();
    let stop = sh.stop_all.clone();
    // id -> (seq, last sent)
    let mut pending: BTreeMap<u64, Instant> = BTreeMap::new();
    // --idem-race: the latest acknowledged sequence numbers, sent again on purpose (after a
    // reconnect, and now and then on the same connection): each must get its original ack
    // and no second delivery.
    let mut acked_recent: std::collections::VecDeque<u64> = std::collections::VecDeque::new();
    let mut seq = 0u64;
    let mut lost_at: Option<Instant> = None;
    let mut attempt = 0u32;
    let msg = |s: u64| {
        json!({"type": "publish", "room": name, "event": "chaos", "id": format!("{p}-{s}"),
               "data": {"p": p, "s": s, "pad": pad}})
        .to_string()
    };
    'outer: while !*stop.borrow() {
        let (mut ws, _node) =
            match tokio::time::timeout(Duration::from_secs(5), connect(&st, &sub, src, None)).await
            {
                Ok(Ok(x)) => x,
                Ok(Err(e)) => {
                    sh.error(format!("publisher connect: {}", first_line(&e)));
                    lost_at.get_or_insert_with(Instant::now);
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                    continue;
                }
                Err(_) => {
                    sh.error("publisher connect: timeout");
                    lost_at.get_or_insert_with(Instant::now);
                    attempt += 1;
                    continue;
                }
            };
        attempt = 0;
        if let Some(t) = lost_at.take() {
            if let Ok(mut r) = sh.reconnects.lock() {
                r.push((format!("pub {room}/{p}"), t.elapsed().as_secs_f64()));
            }
        }
        // Resend what was never acknowledged, same ids, in order.
        let resend: Vec<u64> = pending.keys().copied().collect();
        for s in resend {
            sh.resent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let copies = if st.args.idem_race { 2 } else { 1 };
            for _ in 0..copies {
                if ws.send(Message::text(msg(s))).await.is_err() {
                    lost_at = Some(Instant::now());
                    continue 'outer;
                }
            }
            pending.insert(s, Instant::now());
        }
        if st.args.idem_race {
            for s in acked_recent
                .iter()
                .rev()
                .take(5)
                .copied()
                .collect::<Vec<_>>()
            {
                sh.resent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if ws.send(Message::text(msg(s))).await.is_err() {
                    lost_at = Some(Instant::now());
                    continue 'outer;
                }
            }
        }
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry = tokio::time::interval(Duration::from_millis(500));
        loop {
            let on = *publishing.borrow();
            if let Ok(mut m) = sh.pending_total.lock() {
                m.insert((room, p), (pending.len(), !on && pending.is_empty()));
            }
            if !on && pending.is_empty() && *stop.borrow() {
                let _ = ws.close(None).await;
                break 'outer;
            }
            tokio::select! {
                _ = tick.tick(), if on => {
                    seq += 1;
                    let copies = if st.args.idem_race { 2 } else { 1 };
                    pending.insert(seq, Instant::now());
                    for _ in 0..copies {
                        if ws.send(Message::text(msg(seq))).await.is_err() { break; }
                    }
                    if st.args.idem_race && seq.is_multiple_of(10) {
                        if let Some(old) = acked_recent.front().copied() {
                            sh.resent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let _ = ws.send(Message::text(msg(old))).await;
                        }
                    }
                }
                _ = retry.tick() => {
                    // An ack that never came (the node died with it, Redis was down):
                    // resend with the same id after 2 s; the cluster de-duplicates.
                    let now = Instant::now();
                    let due: Vec<u64> = pending.iter()
                        .filter(|(_, t)| now.duration_since(**t) > Duration::from_secs(2))
                        .map(|(s, _)| *s).collect();
                    for s in due {
                        sh.resent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if ws.send(Message::text(msg(s))).await.is_err() { break; }
                        pending.insert(s, now);
                    }
                }
                m = next_json(&mut ws) => match m {
                    Ok(v) => match v["type"].as_str() {
                        Some("ack") => {
                            let id = v["id"].as_str().unwrap_or("");
                            let s = id.split_once('-').and_then(|(_, s)| s.parse::<u64>().ok());
                            match (s, v["offset"].as_u64()) {
                                (Some(s), Some(off)) => {
                                    if pending.remove(&s).is_some() {
                                        acked_recent.push_back(s);
                                        if acked_recent.len() > 16 {
                                            acked_recent.pop_front();
                                        }
                                    }
                                    if let Ok(mut a) = sh.acked[room].lock() {
                                        match a.get(&(p, s)) {
                                            Some((o, _)) if *o != off => {
                                                if let Ok(mut c) = sh.ack_conflicts.lock() {
                                                    c.push(format!("room {room} id {id}: offsets {o} and {off}"));
                                                }
                                            }
                                            Some(_) => {}
                                            None => { a.insert((p, s), (off, Instant::now())); }
                                        }
                                    }
                                }
                                _ => sh.error("ack without a known id or offset"),
                            }
                        }
                        Some("error") => sh.error(format!("publish error: {}", v["code"])),
                        _ => {}
                    },
                    Err(e) => {
                        sh.error(format!("publisher closed: {}", close_code(&e)));
                        lost_at = Some(Instant::now());
                        continue 'outer;
                    }
                },
                _ = publishing.changed() => {}
            }
        }
    }
}

fn pctl(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * q).round() as usize]
}

async fn run(st: Arc<Settings>) -> Result<Value> {
    let a = st.args.clone();
    if a.rooms == 0 || a.receivers == 0 || a.publishers == 0 {
        bail!("--rooms, --receivers and --publishers must be at least 1");
    }
    let (pub_tx, pub_rx) = tokio::sync::watch::channel(true);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sh = Arc::new(Shared {
        t0: Instant::now(),
        acked: (0..a.rooms).map(|_| Mutex::new(HashMap::new())).collect(),
        epoch_of: (0..a.rooms).map(|_| Mutex::new(HashMap::new())).collect(),
        ack_conflicts: Mutex::new(Vec::new()),
        reconnects: Mutex::new(Vec::new()),
        errors: Mutex::new(BTreeMap::new()),
        resent: std::sync::atomic::AtomicU64::new(0),
        publishing: pub_rx,
        stop_all: stop_rx,
        pending_total: Mutex::new(HashMap::new()),
    });
    // Receivers first, so that they are joined before the first publish.
    let mut recvs: Vec<(usize, usize, Arc<Mutex<Recv>>)> = Vec::new();
    let mut tasks = Vec::new();
    for room in 0..a.rooms {
        for i in 0..a.receivers {
            let me = Arc::new(Mutex::new(Recv::default()));
            recvs.push((room, i, me.clone()));
            tasks.push(tokio::spawn(receiver(sh.clone(), st.clone(), room, i, me)));
        }
    }
    let joined_all = Instant::now() + Duration::from_secs(20);
    loop {
        let n = recvs
            .iter()
            .filter(|(_, _, r)| r.lock().map(|r| r.first_joined.is_some()).unwrap_or(false))
            .count();
        if n == recvs.len() {
            break;
        }
        if Instant::now() > joined_all {
            bail!("only {n} of {} receivers joined within 20 s", recvs.len());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut slow_tasks = Vec::new();
    for room in 0..a.rooms {
        for i in 0..a.slow {
            slow_tasks.push(tokio::spawn(slow_receiver(sh.clone(), st.clone(), room, i)));
        }
    }
    let mut pubs = Vec::new();
    for room in 0..a.rooms {
        for p in 0..a.publishers {
            pubs.push(tokio::spawn(publisher(sh.clone(), st.clone(), room, p)));
        }
    }
    // Ready once every room has a delivered message.
    let ready_by = Instant::now() + Duration::from_secs(20);
    loop {
        let all = (0..a.rooms).all(|room| {
            recvs
                .iter()
                .filter(|(r, _, _)| *r == room)
                .all(|(_, _, r)| r.lock().map(|r| !r.seen.is_empty()).unwrap_or(false))
        });
        if all {
            break;
        }
        if Instant::now() > ready_by {
            bail!("no delivery to every receiver within 20 s of the first publish");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(f) = &a.ready_file {
        let nodes: Vec<String> = recvs
            .iter()
            .filter_map(|(_, _, r)| r.lock().ok().map(|r| r.node.clone()))
            .collect();
        std::fs::write(f, nodes.join("\n")).with_context(|| format!("write {}", f.display()))?;
    }
    let pub_until = Instant::now() + Duration::from_secs_f64(a.publish_for);
    while Instant::now() < pub_until {
        if a.stop_file.as_ref().is_some_and(|f| f.exists()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopped_at = sh.t0.elapsed().as_secs_f64();
    let _ = pub_tx.send(false);
    // Settle: every publish acknowledged, every receiver caught up with every ack.
    let settle_by = Instant::now() + Duration::from_secs_f64(a.settle);
    let mut settled = false;
    while Instant::now() < settle_by {
        let (pending, pubs_done) = sh
            .pending_total
            .lock()
            .map(|m| {
                let pending: usize = m.values().map(|(n, _)| *n).sum();
                let done = m.values().filter(|(_, d)| *d).count() == a.rooms * a.publishers;
                (pending, done)
            })
            .unwrap_or((1, false));
        let caught_up = recvs.iter().all(|(room, _, r)| {
            let Ok(r) = r.lock() else { return false };
            let Ok(acked) = sh.acked[*room].lock() else {
                return false;
            };
            let first = r.first_joined;
            r.connected
                && acked.iter().all(|(k, (_, t))| {
                    Some(*t) < first || r.seen.contains(k) || !r.left_epochs.is_empty()
                })
        });
        if pending == 0 && pubs_done && caught_up {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Receivers that lost history may still be replaying: give them the rest of the settle.
    let _ = stop_tx.send(true);
    for t in pubs.into_iter().chain(tasks) {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let mut slow_out: BTreeMap<String, u64> = BTreeMap::new();
    for t in slow_tasks {
        let r = tokio::time::timeout(
            Duration::from_secs_f64(a.slow_hold + a.slow_after + 40.0),
            t,
        )
        .await;
        let k = match r {
            Ok(Ok(s)) => s,
            _ => "checker-timeout".into(),
        };
        *slow_out.entry(k).or_default() += 1;
    }

    // --- the verdict -------------------------------------------------------------------
    let mut acked_total = 0usize;
    let mut silent = 0u64;
    let mut signalled = 0u64;
    let mut dups = 0u64;
    let mut reorder = 0u64;
    let mut gaps = 0u64;
    let mut rec_false = 0u64;
    let mut rec_true = 0u64;
    let mut closes: BTreeMap<String, u64> = BTreeMap::new();
    let mut delivered = 0u64;
    let mut examples: Vec<String> = Vec::new();
    for room in 0..a.rooms {
        let acked = sh.acked[room].lock().map(|m| m.clone()).unwrap_or_default();
        let epochs = sh.epoch_of[room]
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        acked_total += acked.len();
        for (r, i, me) in recvs.iter().filter(|(r, _, _)| *r == room) {
            let Ok(me) = me.lock() else { continue };
            dups += me.duplicates;
            reorder += me.reorder;
            gaps += me.gaps;
            rec_false += me.recovered_false;
            rec_true += me.recovered_true;
            delivered += me.seen.len() as u64;
            for (c, n) in &me.closes {
                *closes.entry(c.clone()).or_default() += n;
            }
            let Some(first) = me.first_joined else {
                continue;
            };
            for (k, (off, t)) in &acked {
                if *t < first || me.seen.contains(k) {
                    continue;
                }
                let told = match epochs.get(k) {
                    Some(ep) => me.left_epochs.iter().any(|(e, _)| e == ep),
                    None => me.left_epochs.iter().any(|(_, at)| at > t),
                };
                if told {
                    signalled += 1;
                } else {
                    silent += 1;
                    if examples.len() < 10 {
                        examples.push(format!(
                            "room {r} receiver {i}: acked {k:?} (offset {off}) never delivered"
                        ));
                    }
                }
            }
        }
    }
    let mut rts: Vec<f64> = sh
        .reconnects
        .lock()
        .map(|v| v.iter().map(|(_, t)| *t).collect())
        .unwrap_or_default();
    let reconnects = rts.len();
    let rt_max = rts.iter().copied().fold(0.0, f64::max);
    let rt_p50 = pctl(&mut rts, 0.5);
    let conflicts = sh
        .ack_conflicts
        .lock()
        .map(|c| c.clone())
        .unwrap_or_default();
    let errors = sh.errors.lock().map(|e| e.clone()).unwrap_or_default();
    let slow_total = a.rooms * a.slow;
    let slow_closed = slow_out
        .iter()
        .filter(|(k, _)| {
            k.as_str() != "open" && k.as_str() != "setup-failed" && k.as_str() != "checker-timeout"
        })
        .map(|(_, n)| *n)
        .sum::<u64>();
    let unexpected_4008 = closes.get("4008").copied().unwrap_or(0);

    let mut failures: Vec<String> = Vec::new();
    if silent > 0 {
        failures.push(format!("silent loss: {silent}"));
    }
    if gaps > 0 {
        failures.push(format!("offset gaps (silent): {gaps}"));
    }
    if dups > 0 || !conflicts.is_empty() {
        failures.push(format!(
            "duplicates: {dups} deliveries, {} ack conflicts",
            conflicts.len()
        ));
    }
    if reorder > 0 {
        failures.push(format!("reorder: {reorder}"));
    }
    if !settled {
        failures
            .push("did not settle: not every publish acked or not every receiver caught up".into());
    }
    if a.expect_no_loss && (signalled > 0 || rec_false > 0) {
        failures.push(format!(
            "loss where none is allowed: {signalled} signalled, {rec_false} recovered:false"
        ));
    }
    if a.max_reconnect > 0.0 && rt_max >= a.max_reconnect {
        failures.push(format!(
            "slowest reconnect {rt_max:.3} s >= {} s",
            a.max_reconnect
        ));
    }
    if reconnects < a.expect_reconnects {
        failures.push(format!(
            "only {reconnects} reconnects, expected at least {} (did the fault hit?)",
            a.expect_reconnects
        ));
    }
    if a.expect_slow_closed {
        if (slow_closed as usize) < slow_total {
            failures.push(format!(
                "slow receivers closed by the node: {slow_closed} of {slow_total} ({slow_out:?})"
            ));
        }
        if unexpected_4008 > 0 {
            failures.push(format!(
                "{unexpected_4008} reading receivers were closed with 4008"
            ));
        }
    }
    Ok(json!({
        "mode": "chaos-check",
        "ok": failures.is_empty(),
        "failures": failures,
        "rooms": a.rooms, "receivers": a.rooms * a.receivers, "publishers": a.rooms * a.publishers,
        "published_for_s": stopped_at,
        "acked": acked_total,
        "resent": sh.resent.load(std::sync::atomic::Ordering::Relaxed),
        "delivered": delivered,
        "silent_loss": silent,
        "offset_gaps": gaps,
        "signalled_loss": signalled,
        "recovered_false": rec_false,
        "recovered_true": rec_true,
        "duplicates": dups,
        "ack_conflicts": conflicts,
        "reorder": reorder,
        "reconnects": reconnects,
        "reconnect_max_s": rt_max,
        "reconnect_p50_s": rt_p50,
        "closes_seen": closes,
        "slow": {"total": slow_total, "outcomes": slow_out},
        "settled": settled,
        "errors": errors,
        "examples": examples,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        let (_p, publishing) = tokio::sync::watch::channel(true);
        let (_s, stop_all) = tokio::sync::watch::channel(false);
        Shared {
            t0: Instant::now(),
            acked: vec![Mutex::new(HashMap::new())],
            epoch_of: vec![Mutex::new(HashMap::new())],
            ack_conflicts: Mutex::new(Vec::new()),
            reconnects: Mutex::new(Vec::new()),
            errors: Mutex::new(BTreeMap::new()),
            resent: std::sync::atomic::AtomicU64::new(0),
            publishing,
            stop_all,
            pending_total: Mutex::new(HashMap::new()),
        }
    }

    fn msg(s: u64, offset: u64) -> Value {
        json!({"type": "message", "offset": offset, "data": {"p": 0, "s": s}})
    }

    #[test]
    fn gaps_duplicates_and_reorder_are_counted_apart() {
        let sh = shared();
        let mut r = Recv::default();
        r.joined(
            &sh,
            0,
            &json!({"epoch": "e1", "offset": 10, "recovered": false}),
            false,
        );
        r.deliver(&sh, 0, &msg(1, 11));
        r.deliver(&sh, 0, &msg(2, 13)); // offset 12 never came: a gap of one
        r.deliver(&sh, 0, &msg(2, 14)); // the same message again, with a new offset
        r.deliver(&sh, 0, &msg(3, 12)); // an older offset after a newer one
        assert_eq!((r.gaps, r.duplicates, r.reorder), (1, 1, 1));
        assert_eq!(r.last, Some(14));
    }

    #[test]
    fn a_recovered_rejoin_continues_and_a_new_epoch_starts_at_one() {
        let sh = shared();
        let mut r = Recv::default();
        r.joined(
            &sh,
            0,
            &json!({"epoch": "e1", "offset": 0, "recovered": false}),
            false,
        );
        r.deliver(&sh, 0, &msg(1, 1));
        let j = json!({"epoch": "e1", "offset": 2, "recovered": true, "messages": [msg(2, 2)]});
        r.joined(&sh, 0, &j, true);
        assert_eq!((r.gaps, r.recovered_true), (0, 1));
        // History lost: the new epoch's history must be replayed from its first offset.
        let j = json!({"epoch": "e2", "offset": 3, "recovered": false, "messages": [msg(4, 2), msg(5, 3)]});
        r.joined(&sh, 0, &j, true);
        assert_eq!(r.gaps, 1, "offset 1 of the new epoch was not replayed");
        assert_eq!(r.left_epochs.len(), 1);
        assert_eq!(
            sh.epoch_of[0]
                .lock()
                .map(|m| m.get(&(0, 5)).cloned())
                .ok()
                .flatten(),
            Some("e2".to_string())
        );
    }
}
