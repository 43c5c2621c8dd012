//! `storm`: a reconnect storm (issue 14). N clients connect through one URL (nginx in
//! front of the nodes), each joins a room (rooms of `--room-size`), and the generator writes
//! `--ready-file` once all are joined. Then it waits for their node to be killed (by
//! loadtest/storm/run). Every client whose connection closes reconnects at once through the
//! same URL, after a uniform random jitter of 0..`--jitter-ms` (as real clients spread their
//! reconnects), retrying a failed attempt with a short randomized backoff until `--deadline`
//! seconds after the kill, and joins its room again: roomcast with `since` set to the offset
//! and epoch it had (so the node must recover it: `joined.recovered`), the peers with a plain
//! join (they have nothing to recover from).
//!
//! The kill instant is the first close the generator saw; each client's reconnect time runs
//! from there to its `joined` (or the peer's join reply). Reported: clients, reconnected,
//! failed (gave up at the deadline), p50/p90/p99/max reconnect time, the time until all had
//! rejoined, and for roomcast how many re-joins recovered. Roomcast is spoken in JSON here.
//! Loopback targets only (sys::parse_target), every wait bounded.

use crate::adapter::{tcp, ws_config, Conn, Incoming, Kind, Settings};
use crate::sys::Target;
use crate::{round3, sample_all, servers_json, wait_until, Cli, Ctx};
use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

#[derive(clap::Args, Debug, Clone)]
pub struct StormArgs {
    /// Clients (each one connection, joined to one room).
    #[arg(long, short = 'n', default_value_t = 4000)]
    connections: usize,
    /// Clients per room (client i is in room i / room-size).
    #[arg(long, default_value_t = 100)]
    room_size: usize,
    /// Each client waits a uniform random 0..jitter-ms before its first reconnect attempt.
    #[arg(long, default_value_t = 250)]
    jitter_ms: u64,
    /// Give up reconnecting this many seconds after the kill (and end the run).
    #[arg(long, default_value_t = 120.0)]
    deadline: f64,
    /// Give up the initial ramp after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    ramp_deadline: f64,
    /// Wait at most this many seconds after the ready file for the first close (the kill).
    #[arg(long, default_value_t = 60.0)]
    wait_kill: f64,
    /// Roomcast: messages published to every room (by its first member) before the ready
    /// file, so that the re-joins recover from a real history position.
    #[arg(long, default_value_t = 1)]
    publish: u32,
    /// Written ("<joined> <failed>") once every client was attempted (and the messages
    /// went round).
    #[arg(long)]
    ready_file: Option<std::path::PathBuf>,
}

/// What the clients share.
struct Shared {
    args: StormArgs,
    /// The first close seen: the kill instant.
    kill: OnceLock<Instant>,
    up: AtomicU64,
    initial_failed: AtomicU64,
    delivered: AtomicU64,
    closed: AtomicU64,
    last_close: Mutex<Option<Instant>>,
    rejoined: AtomicU64,
    gave_up: AtomicU64,
    attempts: AtomicU64,
    recovered_true: AtomicU64,
    recovered_false: AtomicU64,
    dropped_after_rejoin: AtomicU64,
    /// Per rejoined client: (ms from the kill to joined, ms from the kill to its close).
    times: Mutex<Vec<(f64, f64)>>,
}

/// A roomcast client's position in its room: what it sends as `since`.
#[derive(Default)]
struct Position {
    epoch: Option<String>,
    last: u64,
}

type Ws = WebSocketStream<TcpStream>;

enum Client {
    Roomcast(Box<Ws>),
    Peer(Box<Conn>),
}

enum Event {
    Delivery,
    Closed(String),
    Other,
}

/// The next JSON text frame of a roomcast connection; Err when it ends.
async fn next_json(ws: &mut Ws) -> Result<Value> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(&t).map_err(|e| anyhow!("bad json from server: {e}"))
            }
            Some(Ok(Message::Close(f))) => bail!(
                "closed by server: {}",
                f.map(|f| u16::from(f.code)).unwrap_or(1005)
            ),
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("connection error: {e}"),
            None => bail!("connection closed"),
        }
    }
}

/// Roomcast: connect and wait for `welcome`.
async fn rc_open(st: &Settings, t: &Target, idx: usize) -> Result<Ws> {
    let stream = tcp(t.addr, idx, st.sources).await?;
    let mut url = format!("ws://{}{}/ws", t.host_port, t.base_path);
    if let Some(tok) = &st.token {
        url.push_str("?token=");
        url.push_str(&tok());
    }
    let req = url.into_client_request()?;
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(req, stream, Some(ws_config()))
        .await
        .context("websocket handshake")?;
    loop {
        let v = next_json(&mut ws).await?;
        match v["type"].as_str() {
            Some("welcome") => return Ok(ws),
            Some("error") => bail!("error before welcome: {}", v["code"]),
            _ => {}
        }
    }
}

/// Roomcast: join (with `since` when the position has an epoch), update the position from
/// the reply; returns `recovered`.
async fn rc_join(ws: &mut Ws, room: &str, pos: &mut Position, member_events: bool) -> Result<bool> {
    let mut j = json!({"type": "join", "room": room, "id": 1, "member_events": member_events});
    if let Some(e) = &pos.epoch {
        j["since"] = json!({"offset": pos.last, "epoch": e});
    }
    ws.send(Message::text(j.to_string())).await?;
    loop {
        let v = next_json(ws).await?;
        match v["type"].as_str() {
            Some("joined") if v["room"] == room => {
                let epoch = v["epoch"].as_str().map(str::to_owned);
                if epoch != pos.epoch {
                    pos.last = 0;
                }
                pos.epoch = epoch;
                pos.last = pos.last.max(v["offset"].as_u64().unwrap_or(0));
                if let Some(ms) = v["messages"].as_array() {
                    for m in ms {
                        pos.last = pos.last.max(m["offset"].as_u64().unwrap_or(0));
                    }
                }
                return Ok(v["recovered"].as_bool().unwrap_or(false));
            }
            Some("error") => bail!("join refused: {}", v["code"]),
            _ => {}
        }
    }
}

/// Connect + greeting + join, bounded by the connect timeout. `recovered` is None for the
/// peers.
async fn open_joined(
    ctx: &Ctx,
    idx: usize,
    room: &str,
    pos: &mut Position,
) -> Result<(Client, Option<bool>)> {
    let st = &ctx.settings;
    let t = &ctx.targets[0];
    tokio::time::timeout(st.timeout, async {
        if st.kind == Kind::Roomcast {
            let mut ws = rc_open(st, t, idx).await?;
            let rec = rc_join(&mut ws, room, pos, st.member_events).await?;
            Ok((Client::Roomcast(Box::new(ws)), Some(rec)))
        } else {
            let mut c = Conn::open(st, t, idx).await?;
            c.join(room, st.timeout).await?;
            Ok((Client::Peer(Box::new(c)), None))
        }
    })
    .await
    .context("connect+join timed out")?
}

impl Client {
    async fn recv(&mut self, pos: &mut Position) -> Event {
        match self {
            Client::Roomcast(ws) => match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    #[derive(Deserialize)]
                    struct Light {
                        #[serde(rename = "type")]
                        ty: String,
                        offset: Option<u64>,
                    }
                    match serde_json::from_str::<Light>(&t) {
                        Ok(m) if m.ty == "message" => {
                            pos.last = pos.last.max(m.offset.unwrap_or(0));
                            Event::Delivery
                        }
                        _ => Event::Other,
                    }
                }
                Some(Ok(Message::Close(f))) => Event::Closed(format!(
                    "close {}",
                    f.map(|f| u16::from(f.code)).unwrap_or(1005)
                )),
                Some(Ok(_)) => Event::Other,
                Some(Err(e)) => Event::Closed(e.to_string()),
                None => Event::Closed("eof".into()),
            },
            Client::Peer(c) => match c.recv().await {
                Incoming::Delivery { .. } => Event::Delivery,
                Incoming::Closed(why) => Event::Closed(why),
                _ => Event::Other,
            },
        }
    }

    async fn publish(&mut self, room: &str, n: u32) -> Result<()> {
        if let Client::Roomcast(ws) = self {
            for s in 1..=n {
                let m = json!({"type": "publish", "room": room, "event": "m",
                               "data": {"t": crate::stats::now_us(), "p": 0, "s": s}, "id": 100 + s});
                ws.send(Message::text(m.to_string())).await?;
            }
        }
        Ok(())
    }

    async fn close(self) {
        let d = Duration::from_secs(1);
        match self {
            Client::Roomcast(mut ws) => {
                let _ = tokio::time::timeout(d, Ws::close(&mut ws, None)).await;
            }
            Client::Peer(c) => c.close().await,
        }
    }
}

/// Uniform in [0, 1), from splitmix64 of a seed.
fn unit(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

async fn client(
    ctx: Arc<Ctx>,
    sh: Arc<Shared>,
    idx: usize,
    mut stop: watch::Receiver<bool>,
    mut publish: watch::Receiver<bool>,
) {
    let room = ctx.room(idx / sh.args.room_size.max(1));
    let publisher = idx.is_multiple_of(sh.args.room_size.max(1)) && sh.args.publish > 0;
    let mut pos = Position::default();
    let first = async {
        let _permit = ctx.ramp.acquire().await?;
        open_joined(&ctx, idx, &room, &mut pos).await
    }
    .await;
    let mut c = match first {
        Ok((c, _)) => c,
        Err(e) => {
            sh.initial_failed.fetch_add(1, Relaxed);
            ctx.error(format!("initial: {e:#}"));
            return;
        }
    };
    sh.up.fetch_add(1, Relaxed);
    let mut published = !publisher;
    // Held until the close (the kill) or the end of the run.
    let closed_at = loop {
        tokio::select! {
            _ = stop.changed() => {
                c.close().await;
                return;
            }
            r = publish.changed(), if !published => {
                published = true;
                if r.is_ok() {
                    if let Err(e) = c.publish(&room, sh.args.publish).await {
                        ctx.error(format!("publish: {e:#}"));
                    }
                }
            }
            ev = c.recv(&mut pos) => match ev {
                Event::Delivery => { sh.delivered.fetch_add(1, Relaxed); }
                Event::Closed(_) => break Instant::now(),
                Event::Other => {}
            },
        }
    };
    drop(c);
    let kill = *sh.kill.get_or_init(|| closed_at);
    sh.closed.fetch_add(1, Relaxed);
    if let Ok(mut l) = sh.last_close.lock() {
        if l.is_none_or(|t| closed_at > t) {
            *l = Some(closed_at);
        }
    }
    let deadline = kill + Duration::from_secs_f64(sh.args.deadline.clamp(1.0, 3600.0));
    let seed = (idx as u64) << 20 ^ crate::stats::now_us();
    let jitter = Duration::from_secs_f64(unit(seed) * sh.args.jitter_ms as f64 / 1000.0);
    tokio::select! {
        _ = stop.changed() => return,
        _ = tokio::time::sleep(jitter) => {}
    }
    let mut attempt = 0u32;
    let (mut c, recovered) = loop {
        if Instant::now() >= deadline || *stop.borrow() {
            sh.gave_up.fetch_add(1, Relaxed);
            return;
        }
        sh.attempts.fetch_add(1, Relaxed);
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, open_joined(&ctx, idx, &room, &mut pos)).await {
            Ok(Ok(x)) => break x,
            Ok(Err(e)) => ctx.error(format!("reconnect: {e:#}")),
            Err(_) => ctx.error("reconnect: deadline"),
        }
        attempt += 1;
        // 50 ms doubling to 2 s, times 0.5..1.5.
        let base = (50u64 << attempt.min(6)).min(2000) as f64;
        let wait = base * (0.5 + unit(seed ^ u64::from(attempt)));
        tokio::select! {
            _ = stop.changed() => { sh.gave_up.fetch_add(1, Relaxed); return; }
            _ = tokio::time::sleep(Duration::from_secs_f64(wait / 1000.0)) => {}
        }
    };
    let took = kill.elapsed().as_secs_f64() * 1000.0;
    let seen = closed_at.saturating_duration_since(kill).as_secs_f64() * 1000.0;
    if let Ok(mut t) = sh.times.lock() {
        t.push((took, seen));
    }
    match recovered {
        Some(true) => sh.recovered_true.fetch_add(1, Relaxed),
        Some(false) => sh.recovered_false.fetch_add(1, Relaxed),
        None => 0,
    };
    sh.rejoined.fetch_add(1, Relaxed);
    // Held again (the others are still reconnecting), until the end of the run.
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            ev = c.recv(&mut pos) => if let Event::Closed(why) = ev {
                sh.dropped_after_rejoin.fetch_add(1, Relaxed);
                ctx.error(format!("dropped after the re-join: {why}"));
                return;
            },
        }
    }
    c.close().await;
}

/// Nearest-rank quantile of sorted values.
fn q(sorted: &[f64], p: f64) -> Value {
    if sorted.is_empty() {
        return Value::Null;
    }
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    json!(round3(sorted[i]))
}

pub async fn run(ctx: &Arc<Ctx>, cli: &Cli, args: &StormArgs) -> Result<Value> {
    if ctx.targets.len() != 1 {
        bail!("storm takes one --url (the load balancer)");
    }
    if ctx.settings.kind == Kind::Sockudo {
        bail!("storm: sockudo is not wired here (roomcast, wsredis, socketio)");
    }
    let n = args.connections.clamp(1, 100_000);
    let sh = Arc::new(Shared {
        args: args.clone(),
        kill: OnceLock::new(),
        up: AtomicU64::new(0),
        initial_failed: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        closed: AtomicU64::new(0),
        last_close: Mutex::new(None),
        rejoined: AtomicU64::new(0),
        gave_up: AtomicU64::new(0),
        attempts: AtomicU64::new(0),
        recovered_true: AtomicU64::new(0),
        recovered_false: AtomicU64::new(0),
        dropped_after_rejoin: AtomicU64::new(0),
        times: Mutex::new(Vec::with_capacity(n)),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let (pub_tx, pub_rx) = watch::channel(false);
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        handles.push(tokio::spawn(client(
            ctx.clone(),
            sh.clone(),
            i,
            stop_rx.clone(),
            pub_rx.clone(),
        )));
    }
    let ramp_deadline = t0 + Duration::from_secs_f64(args.ramp_deadline.clamp(1.0, 3600.0));
    let all = wait_until(ramp_deadline, || {
        sh.up.load(Relaxed) + sh.initial_failed.load(Relaxed) >= n as u64
    })
    .await;
    let ramp_s = t0.elapsed().as_secs_f64();
    let (up, initial_failed) = (sh.up.load(Relaxed), sh.initial_failed.load(Relaxed));
    eprintln!(
        "[loadgen] storm: {up} joined, {initial_failed} failed in {ramp_s:.1}s{}",
        if all { "" } else { " (ramp deadline hit)" }
    );
    // Roomcast: a message in every room, so that the re-joins recover from a position.
    let rooms = n.div_ceil(args.room_size.max(1)) as u64;
    if ctx.settings.kind == Kind::Roomcast && args.publish > 0 {
        let _ = pub_tx.send(true);
        let want = up.saturating_sub(rooms) * u64::from(args.publish);
        wait_until(Instant::now() + Duration::from_secs(10), || {
            sh.delivered.load(Relaxed) >= want
        })
        .await;
    }
    if let Some(p) = &args.ready_file {
        std::fs::write(p, format!("{up} {initial_failed}\n"))
            .with_context(|| format!("write {}", p.display()))?;
    }
    let delivered_before = sh.delivered.load(Relaxed);
    let killed = wait_until(
        Instant::now() + Duration::from_secs_f64(args.wait_kill.clamp(0.1, 3600.0)),
        || sh.kill.get().is_some(),
    )
    .await;
    let before = sample_all(&cli.sample_pids);
    let mut end_reason = "all rejoined";
    if killed {
        let kill = sh.kill.get().copied().unwrap_or_else(Instant::now);
        let deadline = kill + Duration::from_secs_f64(args.deadline.clamp(1.0, 3600.0));
        // Done when every closed client rejoined or gave up, and either every client was
        // closed or 5 s passed without more (those on other nodes never close).
        let done = wait_until(deadline + Duration::from_secs(1), || {
            let closed = sh.closed.load(Relaxed);
            let settled = sh.rejoined.load(Relaxed) + sh.gave_up.load(Relaxed) >= closed;
            settled && (closed >= up || kill.elapsed() > Duration::from_secs(5))
        })
        .await;
        if !done {
            end_reason = "deadline";
        }
    } else {
        end_reason = "no close seen (nothing was killed?)";
    }
    let after = sample_all(&cli.sample_pids);
    let storm_s = sh.kill.get().map(|k| k.elapsed().as_secs_f64());
    let _ = stop_tx.send(true);
    let close_deadline = Instant::now() + Duration::from_secs(15);
    for h in handles {
        let left = close_deadline.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(left, h).await;
    }
    let mut times = sh.times.lock().map(|t| t.clone()).unwrap_or_default();
    let mut took: Vec<f64> = times.iter().map(|t| t.0).collect();
    took.sort_by(f64::total_cmp);
    times.sort_by(|a, b| a.1.total_cmp(&b.1));
    let close_spread = times.last().map(|t| round3(t.1));
    let closed = sh.closed.load(Relaxed);
    let rejoined = sh.rejoined.load(Relaxed);
    let gave_up = sh.gave_up.load(Relaxed);
    let (rt, rf) = (
        sh.recovered_true.load(Relaxed),
        sh.recovered_false.load(Relaxed),
    );
    let roomcast = ctx.settings.kind == Kind::Roomcast;
    let all_rejoined = closed > 0 && rejoined == closed;
    let (servers, cpu) = servers_json(&cli.sample_pids, &before, &after);
    let dropped = sh.dropped_after_rejoin.load(Relaxed);
    let mean = if took.is_empty() {
        Value::Null
    } else {
        json!(round3(took.iter().sum::<f64>() / took.len() as f64))
    };
    Ok(json!({
        "mode": "storm",
        "params": {"connections": n, "room_size": args.room_size, "rooms": rooms,
                   "jitter_ms": args.jitter_ms, "deadline_s": args.deadline,
                   "connect_timeout_s": ctx.settings.timeout.as_secs_f64(),
                   "publish_per_room": if roomcast { args.publish } else { 0 }},
        "connects_ok": up,
        "connects_failed": initial_failed,
        "ramp_s": round3(ramp_s),
        "delivered_before_kill": delivered_before,
        "clients": up,
        "closed": closed,
        "not_closed": up.saturating_sub(closed),
        "reconnected": rejoined,
        "failed": gave_up,
        "attempts": sh.attempts.load(Relaxed),
        "dropped_after_rejoin": dropped,
        "reconnect_ms": {"count": took.len(), "mean": mean, "p50": q(&took, 0.5), "p90": q(&took, 0.9),
                         "p99": q(&took, 0.99), "max": q(&took, 1.0)},
        "all_rejoined_s": if all_rejoined { took.last().map(|m| json!(round3(m / 1000.0))).unwrap_or(Value::Null) } else { Value::Null },
        "close_seen_spread_ms": close_spread,
        "recovered": if roomcast { json!({"true": rt, "false": rf}) } else { Value::Null },
        "storm_window_s": storm_s.map(round3),
        "end": end_reason,
        "servers": servers,
        "server_cpu_s": round3(cpu),
        "ok": killed && all_rejoined && closed == up && gave_up == 0 && dropped == 0
            && (!roomcast || rf == 0),
    }))
}
