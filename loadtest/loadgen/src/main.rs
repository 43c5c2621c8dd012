//! roomcast-loadgen: drives a roomcast cluster (or one of the peer servers) from this
//! machine. Modes: `idle` (N joined connections held), `fanout` (cross-node delivery
//! latency, loss and duplicates at a fixed publish rate), `connect` (handshakes/s),
//! `storm` (a reconnect storm through the load balancer after a node is killed).
//! Every loop is bounded in count and time; only loopback targets are accepted.

mod adapter;
mod chaos;
mod floor;
mod stats;
mod storm;
mod sys;

use adapter::{Conn, Incoming, Kind, Payload, PusherApp, Settings};
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use roomcast_protocol::Encoding;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use sys::Target;
use tokio::sync::{watch, Semaphore};

#[derive(Parser, Debug)]
#[command(name = "roomcast-loadgen", version, about)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
    /// Which server protocol to speak.
    #[arg(long, global = true, value_enum, default_value = "roomcast")]
    target: Kind,
    /// Node base URLs (comma-separated), loopback only: ws://127.0.0.1:8080
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:8080"
    )]
    url: Vec<String>,
    /// `none` (nodes run with --auth none) or `jwt` (needs --jwt-secret): each
    /// connection carries a fresh HS256 token (roomcast and ws + ioredis: `?token=`;
    /// Socket.IO: the connect packet's `auth`).
    #[arg(long, global = true, value_enum, default_value = "none")]
    auth: Auth,
    /// HS256 secret to mint tokens with (implies --auth jwt).
    #[arg(long, global = true, env = "ROOMCAST_JWT_SECRET")]
    jwt_secret: Option<String>,
    /// Wire encoding for roomcast.
    #[arg(long, global = true, value_enum, default_value = "json")]
    encoding: Enc,
    /// Sockudo: the app key (defaults match loadtest/peers/sockudo/config.toml).
    #[arg(
        long,
        global = true,
        env = "SOCKUDO_APP_KEY",
        default_value = "roomcast-bench-key"
    )]
    sockudo_key: String,
    /// Sockudo: the app secret, to sign private-channel subscriptions.
    #[arg(
        long,
        global = true,
        env = "SOCKUDO_APP_SECRET",
        default_value = "roomcast-bench-secret",
        hide_env_values = true
    )]
    sockudo_secret: String,
    /// Sockudo: the app id (only reported: the WebSocket protocol names the app by key).
    #[arg(
        long,
        global = true,
        env = "SOCKUDO_APP_ID",
        default_value = "roomcast-bench"
    )]
    sockudo_app_id: String,
    /// Spread source addresses over 127.0.0.1 ..= 127.0.0.N.
    #[arg(long, global = true, default_value_t = 16)]
    source_addrs: u8,
    /// Roomcast: whether joins ask for member events (`"member_events": false` when off).
    #[arg(long, global = true, value_enum, default_value_t = OnOff::On)]
    member_events: OnOff,
    /// Concurrent handshakes while ramping up.
    #[arg(long, global = true, default_value_t = 256)]
    ramp_concurrency: usize,
    /// Timeout of one connect + greeting + join, seconds.
    #[arg(long, global = true, default_value_t = 10.0)]
    connect_timeout: f64,
    /// Room name prefix (default: lg-<pid>-<time>, unique per run).
    #[arg(long, global = true)]
    room_prefix: Option<String>,
    /// Server PIDs to sample (CPU time and RSS from /proc) around the measurement.
    #[arg(long, global = true, value_delimiter = ',')]
    sample_pids: Vec<u32>,
    /// Runtime worker threads (default: number of CPUs).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Print the JSON report on stdout (the human summary goes to stderr).
    #[arg(long, global = true)]
    json: bool,
    /// Also write the JSON report to this file.
    #[arg(long, global = true)]
    out: Option<std::path::PathBuf>,
    /// A label copied into the report.
    #[arg(long, global = true, default_value = "")]
    label: String,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Auth {
    None,
    Jwt,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum OnOff {
    On,
    Off,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Enc {
    Json,
    Msgpack,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// N connections, each authenticated and joined to a room, held for a duration.
    Idle {
        #[arg(long, short = 'n', default_value_t = 1000)]
        connections: usize,
        #[arg(long, default_value_t = 100)]
        rooms: usize,
        /// How long to hold them once all are up, seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Give up ramping up after this many seconds.
        #[arg(long, default_value_t = 300.0)]
        ramp_deadline: f64,
        /// Touched (with the counts) once every connection was attempted.
        #[arg(long)]
        ready_file: Option<std::path::PathBuf>,
    },
    /// Receivers over all nodes and R rooms; publishers on the first node at a fixed
    /// total rate; latency, loss, duplicates, deliveries/s.
    Fanout {
        #[arg(long, default_value_t = 1000)]
        receivers: usize,
        #[arg(long, default_value_t = 10)]
        rooms: usize,
        #[arg(long, default_value_t = 10)]
        publishers: usize,
        /// Total publishes per second, all publishers together.
        #[arg(long, default_value_t = 250.0)]
        rate: f64,
        /// Publishing time, seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Pad each payload to about this many bytes.
        #[arg(long, default_value_t = 0)]
        payload_bytes: usize,
        /// After publishing stops, wait at most this long for stragglers, seconds.
        #[arg(long, default_value_t = 5.0)]
        drain: f64,
    },
    /// Handshakes per second: connect + greeting + join, with C in flight.
    Connect {
        /// Stop after this many handshakes.
        #[arg(long, short = 'n', default_value_t = 5000)]
        total: usize,
        #[arg(long, short = 'c', default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 100)]
        rooms: usize,
        /// Stop after this many seconds in any case.
        #[arg(long, default_value_t = 30.0)]
        duration: f64,
    },
    /// The machine's floor: one write(2) per delivery to loopback TCP sockets read by a
    /// child process, no WebSocket and no broker; the writer's CPU per write and the
    /// latency of a room's copies, at the fan-out's sizes and rates. Ignores --url.
    Floor {
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        rooms: usize,
        /// Messages per second (each written to every connection of its room).
        #[arg(long, default_value_t = 250.0)]
        rate: f64,
        /// Writing time, seconds.
        #[arg(long, default_value_t = 8.0)]
        duration: f64,
        /// Bytes per delivery (about a roomcast JSON delivery of the fan-out).
        #[arg(long, default_value_t = 160)]
        record_bytes: usize,
        /// Writer threads, each writing to its share of every room (two: as two nodes).
        #[arg(long, default_value_t = 2)]
        writers: usize,
    },
    /// The chaos suite's checker (scripts/chaos): acks, offsets, loss, duplicates, reorder,
    /// reconnect times through the load balancer while faults are injected.
    ChaosCheck(chaos::ChaosArgs),
    /// A reconnect storm: N clients joined through one URL (nginx); when their node is
    /// killed each reconnects (jittered) and re-joins (roomcast: with `since`); the time
    /// from the first close to every client joined again.
    Storm(storm::StormArgs),
    /// The reader side of `floor` (started by it).
    #[command(hide = true)]
    FloorSink {
        #[arg(long)]
        connections: usize,
        #[arg(long)]
        record_bytes: usize,
        #[arg(long)]
        deadline: f64,
    },
}

/// What every mode shares.
struct Ctx {
    settings: Settings,
    targets: Vec<Target>,
    prefix: String,
    errors: Mutex<HashMap<String, u64>>,
    ramp: Semaphore,
}

impl Ctx {
    fn room(&self, i: usize) -> String {
        format!("{}-{}", self.prefix, i)
    }

    fn error(&self, e: impl std::fmt::Display) {
        let mut s = e.to_string();
        s.truncate(120);
        *self
            .errors
            .lock()
            .expect("errors lock")
            .entry(s)
            .or_default() += 1;
    }

    fn errors_json(&self) -> Value {
        let m = self.errors.lock().expect("errors lock");
        let mut v: Vec<_> = m.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1));
        json!(v
            .into_iter()
            .take(10)
            .map(|(k, n)| json!({"error": k, "count": n}))
            .collect::<Vec<_>>())
    }

    /// Opens connection `idx` to node `node` and joins `room`, bounded by the ramp
    /// semaphore and the connect timeout.
    async fn open_joined(&self, idx: usize, node: usize, room: &str) -> Result<(Conn, u64)> {
        let _permit = self.ramp.acquire().await?;
        let t = self.settings.timeout;
        tokio::time::timeout(t, async {
            let mut c = Conn::open(
                &self.settings,
                &self.targets[node % self.targets.len()],
                idx,
            )
            .await?;
            let off = c.join(room, t).await?;
            Ok::<_, anyhow::Error>((c, off))
        })
        .await
        .context("connect+join timed out")?
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let nofile = sys::raise_nofile().unwrap_or(0);
    match &cli.mode {
        Mode::ChaosCheck(a) => {
            let url = cli.url.first().map(String::as_str).unwrap_or_default();
            return chaos::main(
                a.clone(),
                url,
                cli.jwt_secret.clone(),
                cli.room_prefix.clone(),
                cli.out.clone(),
            );
        }
        Mode::FloorSink {
            connections,
            record_bytes,
            deadline,
        } => return floor::sink(*connections, *record_bytes, *deadline),
        Mode::Floor {
            connections,
            rooms,
            rate,
            duration,
            record_bytes,
            writers,
        } => {
            let mut report = floor::run(&floor::FloorArgs {
                writers: *writers,
                connections: *connections,
                rooms: *rooms,
                rate: *rate,
                duration: *duration,
                record_bytes: *record_bytes,
            })?;
            report["label"] = json!(cli.label);
            return finish(&cli, &report);
        }
        _ => {}
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build()?;
    let report = rt.block_on(run(&cli, nofile))?;
    rt.shutdown_timeout(Duration::from_secs(2));
    finish(&cli, &report)
}

/// Writes the report (file, JSON on stdout, summary) and exits 0 when it is ok, 2 when not.
fn finish(cli: &Cli, report: &Value) -> Result<()> {
    let ok = report.get("ok").and_then(Value::as_bool).unwrap_or(false);
    let text = serde_json::to_string_pretty(report)?;
    if let Some(p) = &cli.out {
        std::fs::write(p, &text).with_context(|| format!("write {}", p.display()))?;
    }
    let human = human(report);
    if cli.json {
        eprintln!("{human}");
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!("{human}");
    }
    std::process::exit(if ok { 0 } else { 2 });
}

async fn run(cli: &Cli, nofile: u64) -> Result<Value> {
    let targets = cli
        .url
        .iter()
        .map(|u| sys::parse_target(u))
        .collect::<Result<Vec<_>>>()?;
    if targets.is_empty() {
        bail!("no --url");
    }
    let auth = if cli.jwt_secret.is_some() {
        Auth::Jwt
    } else {
        cli.auth
    };
    let token: Option<Arc<dyn Fn() -> String + Send + Sync>> = match (auth, &cli.jwt_secret) {
        (Auth::None, _) => None,
        (Auth::Jwt, None) => bail!("--auth jwt needs --jwt-secret"),
        (Auth::Jwt, Some(secret)) => {
            let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
            let n = AtomicU64::new(0);
            let run = std::process::id();
            Some(Arc::new(move || {
                let now = stats::now_us() / 1_000_000;
                let claims = json!({
                    "sub": format!("lg{run}-{}", n.fetch_add(1, Relaxed)),
                    "iat": now, "exp": now + 3600,
                });
                jsonwebtoken::encode(
                    &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                    &claims,
                    &key,
                )
                .unwrap_or_default()
            }))
        }
    };
    let prefix = cli.room_prefix.clone().unwrap_or_else(|| {
        format!(
            "lg-{}-{}",
            std::process::id(),
            stats::now_us() / 1000 % 100_000_000
        )
    });
    let ctx = Arc::new(Ctx {
        settings: Settings {
            kind: cli.target,
            encoding: match cli.encoding {
                Enc::Json => Encoding::Json,
                Enc::Msgpack => Encoding::MsgPack,
            },
            token,
            sources: cli.source_addrs.max(1),
            timeout: Duration::from_secs_f64(cli.connect_timeout.clamp(0.1, 120.0)),
            pusher: PusherApp {
                key: cli.sockudo_key.clone(),
                secret: cli.sockudo_secret.clone(),
            },
            member_events: cli.member_events == OnOff::On,
        },
        targets,
        prefix,
        errors: Mutex::new(HashMap::new()),
        ramp: Semaphore::new(cli.ramp_concurrency.clamp(1, 10_000)),
    });
    let cpu0 = sys::self_cpu();
    let started = Instant::now();
    let mut report = match &cli.mode {
        Mode::Idle {
            connections,
            rooms,
            duration,
            ramp_deadline,
            ready_file,
        } => {
            idle(
                &ctx,
                cli,
                *connections,
                *rooms,
                *duration,
                *ramp_deadline,
                ready_file.as_deref(),
            )
            .await?
        }
        Mode::Fanout {
            receivers,
            rooms,
            publishers,
            rate,
            duration,
            payload_bytes,
            drain,
        } => {
            fanout(
                &ctx,
                cli,
                *receivers,
                *rooms,
                *publishers,
                *rate,
                *duration,
                *payload_bytes,
                *drain,
            )
            .await?
        }
        Mode::Connect {
            total,
            concurrency,
            rooms,
            duration,
        } => connect(&ctx, *total, *concurrency, *rooms, *duration).await?,
        Mode::Storm(a) => storm::run(&ctx, cli, a).await?,
        Mode::Floor { .. } | Mode::FloorSink { .. } | Mode::ChaosCheck(_) => {
            bail!("floor and chaos-check run on their own")
        }
    };
    let cpu1 = sys::self_cpu();
    let obj = report.as_object_mut().context("report")?;
    obj.insert("target".into(), json!(cli.target));
    if cli.target == Kind::Sockudo {
        obj.insert(
            "sockudo_app".into(),
            json!({"id": cli.sockudo_app_id, "key": cli.sockudo_key}),
        );
    }
    obj.insert("urls".into(), json!(cli.url));
    obj.insert("label".into(), json!(cli.label));
    obj.insert("errors".into(), ctx.errors_json());
    obj.insert(
        "generator".into(),
        json!({
            "pid": std::process::id(),
            "nofile": nofile,
            "cpu_user_s": round3(cpu1.0 - cpu0.0),
            "cpu_sys_s": round3(cpu1.1 - cpu0.1),
            "wall_s": round3(started.elapsed().as_secs_f64()),
            "max_rss_kib": sys::self_max_rss_kib(),
        }),
    );
    Ok(report)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn sample_all(pids: &[u32]) -> Vec<Option<sys::ProcSample>> {
    pids.iter().map(|p| sys::sample_pid(*p)).collect()
}

fn servers_json(
    pids: &[u32],
    a: &[Option<sys::ProcSample>],
    b: &[Option<sys::ProcSample>],
) -> (Value, f64) {
    let mut cpu = 0.0;
    let v = pids
        .iter()
        .zip(a.iter().zip(b))
        .map(|(pid, (a, b))| match (a, b) {
            (Some(a), Some(b)) => {
                cpu += b.cpu_s - a.cpu_s;
                json!({"pid": pid, "cpu_s": round3(b.cpu_s - a.cpu_s), "rss_kib_before": a.rss_kib, "rss_kib_after": b.rss_kib})
            }
            _ => json!({"pid": pid, "gone": true}),
        })
        .collect();
    (v, cpu)
}

async fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

// ---------------------------------------------------------------- idle

async fn idle(
    ctx: &Arc<Ctx>,
    cli: &Cli,
    n: usize,
    rooms: usize,
    duration: f64,
    ramp_deadline: f64,
    ready_file: Option<&std::path::Path>,
) -> Result<Value> {
    let rooms = rooms.max(1);
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let before = sample_all(&cli.sample_pids);
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let (ctx, ok, failed, dropped, mut stop) = (
            ctx.clone(),
            ok.clone(),
            failed.clone(),
            dropped.clone(),
            stop_rx.clone(),
        );
        handles.push(tokio::spawn(async move {
            let room = ctx.room(i % rooms);
            let mut c = match ctx.open_joined(i, i, &room).await {
                Ok((c, _)) => c,
                Err(e) => {
                    failed.fetch_add(1, Relaxed);
                    ctx.error(format!("{e:#}"));
                    return;
                }
            };
            ok.fetch_add(1, Relaxed);
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    m = c.recv() => if let Incoming::Closed(why) = m {
                        dropped.fetch_add(1, Relaxed);
                        ctx.error(format!("dropped while idle: {why}"));
                        return;
                    },
                }
            }
            c.close().await;
        }));
    }
    let deadline = t0 + Duration::from_secs_f64(ramp_deadline.clamp(1.0, 3600.0));
    let all = wait_until(deadline, || {
        ok.load(Relaxed) + failed.load(Relaxed) >= n as u64
    })
    .await;
    let ramp_s = t0.elapsed().as_secs_f64();
    let (okn, failn) = (ok.load(Relaxed), failed.load(Relaxed));
    eprintln!(
        "[loadgen] idle: {okn} up, {failn} failed in {ramp_s:.1}s{}",
        if all { "" } else { " (ramp deadline hit)" }
    );
    if let Some(p) = ready_file {
        std::fs::write(p, format!("{okn} {failn}\n"))
            .with_context(|| format!("write {}", p.display()))?;
    }
    // Let the servers settle before sampling their memory.
    tokio::time::sleep(Duration::from_secs_f64(
        duration.clamp(0.0, 3600.0).min(2.0),
    ))
    .await;
    let held = sample_all(&cli.sample_pids);
    let hold_left = (duration.clamp(0.0, 3600.0) - 2.0).max(0.0);
    tokio::time::sleep(Duration::from_secs_f64(hold_left)).await;
    let _ = stop_tx.send(true);
    let close_deadline = Instant::now() + Duration::from_secs(15);
    for h in handles {
        let left = close_deadline.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(left, h).await;
    }
    let (servers, _) = servers_json(&cli.sample_pids, &before, &held);
    let rss_delta: i64 = before
        .iter()
        .zip(&held)
        .filter_map(|(a, b)| Some(b.as_ref()?.rss_kib as i64 - a.as_ref()?.rss_kib as i64))
        .sum();
    let dropped = dropped.load(Relaxed);
    Ok(json!({
        "mode": "idle",
        "params": {"connections": n, "rooms": rooms, "duration_s": duration},
        "connects_ok": okn,
        "connects_failed": failn,
        "dropped_while_idle": dropped,
        "ramp_s": round3(ramp_s),
        "servers": servers,
        "server_rss_delta_kib": rss_delta,
        "server_rss_kib_per_conn": if okn > 0 && !cli.sample_pids.is_empty() { json!(round3(rss_delta as f64 / okn as f64)) } else { Value::Null },
        "ok": failn == 0 && dropped == 0 && okn == n as u64,
    }))
}

// ---------------------------------------------------------------- fanout

/// Most gaps one receiver remembers, to tell a late message from a lost one.
const MAX_TRACKED_GAPS: u64 = 100_000;

#[derive(Default)]
struct RecvResult {
    room: usize,
    delivered: u64,
    unique: u64,
    dups: u64,
    gaps: u64,
    /// Arrivals that filled an earlier gap: late, not lost (a peer that does not keep
    /// one order across nodes).
    reordered: u64,
    /// Roomcast: the last offset seen (key 0). Peers: the last seq per publisher.
    last: HashMap<u32, u64>,
    /// The gaps not filled yet, by (key, seq); bounded by [`MAX_TRACKED_GAPS`].
    missing: std::collections::HashSet<(u32, u64)>,
    closed: bool,
    ok: bool,
}

#[derive(Default)]
struct PubResult {
    sent: HashMap<usize, u64>,
    acked: u64,
    errors: HashMap<usize, u64>,
    max_offset: HashMap<usize, u64>,
    other_deliveries: u64,
    closed: bool,
    ok: bool,
}

#[allow(clippy::too_many_arguments)]
async fn fanout(
    ctx: &Arc<Ctx>,
    cli: &Cli,
    receivers: usize,
    rooms: usize,
    publishers: usize,
    rate: f64,
    duration: f64,
    payload_bytes: usize,
    drain: f64,
) -> Result<Value> {
    let rooms = rooms.max(1);
    let publishers = publishers.max(1);
    let duration = duration.clamp(0.1, 3600.0);
    let rate = rate.clamp(0.1, 10_000_000.0);
    let kind = ctx.settings.kind;
    let nodes = ctx.targets.len();
    // Receiver i: room i % R, node i % nodes. Publisher p: node 0, rooms r with
    // r % P == p (or room p % R when there are more publishers than rooms).
    let members: Vec<u64> = (0..rooms)
        .map(|r| ((receivers + rooms - 1 - r) / rooms) as u64)
        .collect();
    let assigned: Vec<Vec<usize>> = (0..publishers)
        .map(|p| {
            if rooms >= publishers {
                (0..rooms).filter(|r| r % publishers == p).collect()
            } else {
                vec![p % rooms]
            }
        })
        .collect();
    let hist = stats::Shared::new();
    let unique_total = Arc::new(AtomicU64::new(0));
    let sent_room: Arc<Vec<AtomicU64>> = Arc::new((0..rooms).map(|_| AtomicU64::new(0)).collect());
    let err_room: Arc<Vec<AtomicU64>> = Arc::new((0..rooms).map(|_| AtomicU64::new(0)).collect());
    let acked_total = Arc::new(AtomicU64::new(0));
    let up = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (go_tx, go_rx) = watch::channel(None::<Instant>);

    let t_ramp = Instant::now();
    let mut rx_handles = Vec::with_capacity(receivers);
    for i in 0..receivers {
        let (ctx, hist, unique_total, up, failed, mut stop) = (
            ctx.clone(),
            hist.clone(),
            unique_total.clone(),
            up.clone(),
            failed.clone(),
            stop_rx.clone(),
        );
        rx_handles.push(tokio::spawn(async move {
            let room = i % rooms;
            let mut r = RecvResult {
                room,
                ..Default::default()
            };
            let (mut c, off) = match ctx.open_joined(i, i % nodes, &ctx.room(room)).await {
                Ok(x) => x,
                Err(e) => {
                    failed.fetch_add(1, Relaxed);
                    ctx.error(format!("receiver: {e:#}"));
                    return r;
                }
            };
            if kind == Kind::Roomcast {
                r.last.insert(0, off);
            }
            up.fetch_add(1, Relaxed);
            let mut rec = hist.recorder();
            loop {
                let m = tokio::select! {
                    _ = stop.changed() => break,
                    m = c.recv() => m,
                };
                match m {
                    Incoming::Delivery { offset, payload } => {
                        r.delivered += 1;
                        let (key, seq) = match (offset, &payload) {
                            (Some(o), _) => (0, o),
                            (None, Some(p)) => (p.p, p.s),
                            (None, None) => {
                                ctx.error("delivery without offset or payload");
                                continue;
                            }
                        };
                        let last = r.last.entry(key).or_insert(0);
                        if seq <= *last {
                            if r.missing.remove(&(key, seq)) {
                                r.reordered += 1;
                                r.gaps -= 1;
                            } else {
                                r.dups += 1;
                                continue;
                            }
                        } else {
                            let gap = seq - *last - 1;
                            if gap > 0 && r.missing.len() as u64 + gap <= MAX_TRACKED_GAPS {
                                r.missing.extend((*last + 1..seq).map(|s| (key, s)));
                            }
                            r.gaps += gap;
                            *last = seq;
                        }
                        r.unique += 1;
                        unique_total.fetch_add(1, Relaxed);
                        if let Some(p) = payload {
                            rec.record(c.arrived_us().saturating_sub(p.t));
                        }
                    }
                    Incoming::Closed(why) => {
                        r.closed = true;
                        ctx.error(format!("receiver closed: {why}"));
                        return r;
                    }
                    Incoming::Error { msg, .. } => ctx.error(format!("receiver got error: {msg}")),
                    Incoming::Ack { .. } | Incoming::Other => {}
                }
            }
            rec.flush();
            c.close().await;
            r.ok = true;
            r
        }));
    }
    let ramp_deadline = Instant::now() + Duration::from_secs(120) + ctx.settings.timeout;
    wait_until(ramp_deadline, || {
        up.load(Relaxed) + failed.load(Relaxed) >= receivers as u64
    })
    .await;

    let pub_up = Arc::new(AtomicU64::new(0));
    let mut pub_handles = Vec::with_capacity(publishers);
    let per_pub = rate / publishers as f64;
    let total_per_pub = (per_pub * duration).floor() as u64;
    let pad = "x".repeat(payload_bytes.saturating_sub(40));
    for (p, my_rooms) in assigned.iter().cloned().enumerate() {
        let phase = p as f64 / publishers as f64;
        let (ctx, sent_room, err_room, acked_total, pub_up, failed, mut stop, mut go, pad) = (
            ctx.clone(),
            sent_room.clone(),
            err_room.clone(),
            acked_total.clone(),
            pub_up.clone(),
            failed.clone(),
            stop_rx.clone(),
            go_rx.clone(),
            pad.clone(),
        );
        pub_handles.push(tokio::spawn(async move {
            let mut r = PubResult::default();
            let idx = receivers + p;
            let mut c = None;
            for (k, room) in my_rooms.iter().enumerate() {
                let res = match c.as_mut() {
                    None => ctx.open_joined(idx, 0, &ctx.room(*room)).await.map(|(cn, _)| c = Some(cn)),
                    Some(cn) => cn.join(&ctx.room(*room), ctx.settings.timeout).await.map(|_| ()),
                };
                if let Err(e) = res {
                    failed.fetch_add(1, Relaxed);
                    ctx.error(format!("publisher {p} join {k}: {e:#}"));
                    return r;
                }
            }
            let Some(mut c) = c else { return r };
            pub_up.fetch_add(1, Relaxed);
            // Wait for the start signal (bounded: the main task always sends or stops).
            let t0 = loop {
                if let Some(t) = *go.borrow() {
                    break t;
                }
                tokio::select! {
                    res = go.changed() => if res.is_err() { return r },
                    _ = stop.changed() => return r,
                }
            };
            let mut seq: HashMap<usize, u64> = HashMap::new();
            let mut n: u64 = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let nr = my_rooms.len() as u64;
            loop {
                let publishing = n < total_per_pub;
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tick.tick(), if publishing => {
                        // Publishers are spread evenly over each period (phase p/P), as
                        // independent users are, instead of all firing at the same instant.
                        let due = ((t0.elapsed().as_secs_f64() * per_pub + phase).floor() as u64).min(total_per_pub);
                        let batch = due.saturating_sub(n).min(5_000);
                        for _ in 0..batch {
                            let room = my_rooms[(n % nr) as usize];
                            let s = seq.entry(room).or_insert(0);
                            *s += 1;
                            let payload = Payload { t: stats::now_us(), p: p as u32, s: *s, x: pad.clone() };
                            if let Err(e) = c.feed_publish(&ctx.room(room), &payload, n as i64).await {
                                ctx.error(format!("publish: {e:#}"));
                                r.closed = true;
                                return r;
                            }
                            *r.sent.entry(room).or_default() += 1;
                            sent_room[room].fetch_add(1, Relaxed);
                            n += 1;
                        }
                        if batch > 0 {
                            if let Err(e) = c.flush().await {
                                ctx.error(format!("publish flush: {e:#}"));
                                r.closed = true;
                                return r;
                            }
                        }
                    }
                    m = c.recv() => match m {
                        Incoming::Ack { id, offset } => {
                            r.acked += 1;
                            acked_total.fetch_add(1, Relaxed);
                            if let Some(o) = offset {
                                let room = my_rooms[(id.max(0) as u64 % nr) as usize];
                                let m = r.max_offset.entry(room).or_default();
                                *m = (*m).max(o);
                            }
                        }
                        Incoming::Error { id, msg } => {
                            ctx.error(format!("publisher got error: {msg}"));
                            if let Some(id) = id {
                                let room = my_rooms[(id.max(0) as u64 % nr) as usize];
                                *r.errors.entry(room).or_default() += 1;
                                err_room[room].fetch_add(1, Relaxed);
                            }
                        }
                        Incoming::Delivery { .. } => r.other_deliveries += 1,
                        Incoming::Closed(why) => {
                            ctx.error(format!("publisher closed: {why}"));
                            r.closed = true;
                            return r;
                        }
                        Incoming::Other => {}
                    },
                }
            }
            c.close().await;
            r.ok = true;
            r
        }));
    }
    wait_until(Instant::now() + Duration::from_secs(60), || {
        pub_up.load(Relaxed) + failed.load(Relaxed)
            >= (receivers + publishers) as u64 - up.load(Relaxed)
    })
    .await;
    let ramp_s = t_ramp.elapsed().as_secs_f64();
    let (rx_up, px_up) = (up.load(Relaxed), pub_up.load(Relaxed));
    eprintln!("[loadgen] fanout: {rx_up}/{receivers} receivers, {px_up}/{publishers} publishers up in {ramp_s:.1}s; publishing {rate}/s for {duration}s");
    // Let joins settle (member lists, subscriptions) before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let srv0 = sample_all(&cli.sample_pids);
    let cpu0 = sys::self_cpu();
    let t0 = Instant::now();
    let _ = go_tx.send(Some(t0));
    let pub_deadline = t0 + Duration::from_secs_f64(duration + 5.0 + duration * 0.5);
    let target_total = total_per_pub * px_up;
    wait_until(pub_deadline, || {
        sent_room.iter().map(|a| a.load(Relaxed)).sum::<u64>() >= target_total
    })
    .await;
    let publish_s = t0.elapsed().as_secs_f64();
    let expected = || -> u64 {
        (0..rooms)
            .map(|r| {
                (sent_room[r].load(Relaxed)
                    - err_room[r].load(Relaxed).min(sent_room[r].load(Relaxed)))
                    * members[r]
            })
            .sum()
    };
    let sent_total = || sent_room.iter().map(|a| a.load(Relaxed)).sum::<u64>();
    let drain_deadline = Instant::now() + Duration::from_secs_f64(drain.clamp(0.0, 600.0));
    let drained = wait_until(drain_deadline, || {
        // Receivers that failed to connect never receive; count only those up.
        let exp = expected() * rx_up / (receivers.max(1) as u64);
        let acks_done = kind != Kind::Roomcast
            || acked_total.load(Relaxed) + err_room.iter().map(|a| a.load(Relaxed)).sum::<u64>()
                >= sent_total();
        unique_total.load(Relaxed) >= exp && acks_done
    })
    .await;
    let window_s = t0.elapsed().as_secs_f64();
    let cpu1 = sys::self_cpu();
    let srv1 = sample_all(&cli.sample_pids);
    let _ = stop_tx.send(true);

    let mut pubs = Vec::new();
    let close_deadline = Instant::now() + Duration::from_secs(15);
    for h in pub_handles {
        let left = close_deadline.saturating_duration_since(Instant::now());
        pubs.push(
            tokio::time::timeout(left, h)
                .await
                .ok()
                .and_then(|r| r.ok())
                .unwrap_or_default(),
        );
    }
    let mut recvs = Vec::new();
    for h in rx_handles {
        let left = close_deadline.saturating_duration_since(Instant::now());
        recvs.push(
            tokio::time::timeout(left, h)
                .await
                .ok()
                .and_then(|r| r.ok()),
        );
    }

    // Expected final position per room: roomcast by the highest acked offset; peers by
    // each publisher's last sequence number into the room.
    let mut final_offset: HashMap<usize, u64> = HashMap::new();
    let mut final_seq: HashMap<usize, Vec<(u32, u64)>> = HashMap::new();
    let (mut published, mut acked, mut pub_errors, mut pub_other, mut pub_closed) = (0, 0, 0, 0, 0);
    for (p, r) in pubs.iter().enumerate() {
        published += r.sent.values().sum::<u64>();
        pub_errors += r.errors.values().sum::<u64>();
        acked += r.acked;
        pub_other += r.other_deliveries;
        pub_closed += u64::from(r.closed || !r.ok);
        for (room, o) in &r.max_offset {
            let e = final_offset.entry(*room).or_default();
            *e = (*e).max(*o);
        }
        for (room, s) in &r.sent {
            final_seq.entry(*room).or_default().push((p as u32, *s));
        }
    }
    let (mut delivered, mut unique, mut dups, mut lost, mut rx_closed, mut rx_missing) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut reordered = 0u64;
    for r in &recvs {
        let Some(r) = r else {
            rx_missing += 1;
            continue;
        };
        if !r.ok {
            rx_closed += 1;
        }
        delivered += r.delivered;
        unique += r.unique;
        dups += r.dups;
        lost += r.gaps;
        reordered += r.reordered;
        if kind == Kind::Roomcast {
            let last = r.last.get(&0).copied().unwrap_or(0);
            lost += final_offset
                .get(&r.room)
                .copied()
                .unwrap_or(0)
                .saturating_sub(last);
        } else {
            for (p, s) in final_seq.get(&r.room).map(Vec::as_slice).unwrap_or(&[]) {
                lost += s.saturating_sub(r.last.get(p).copied().unwrap_or(0));
            }
        }
    }
    let unacked = if kind == Kind::Roomcast {
        published.saturating_sub(acked + pub_errors)
    } else {
        0
    };
    let connect_failed = failed.load(Relaxed);
    let (servers, server_cpu) = servers_json(&cli.sample_pids, &srv0, &srv1);
    let server_deliveries = delivered + pub_other;
    let gen_cpu = (cpu1.0 - cpu0.0) + (cpu1.1 - cpu0.1);
    let ok = connect_failed == 0
        && lost == 0
        && dups == 0
        // roomcast promises one order per room: a late message is a failure there
        && (reordered == 0 || kind != Kind::Roomcast)
        && pub_errors == 0
        && unacked == 0
        && rx_closed == 0
        && rx_missing == 0
        && pub_closed == 0
        && drained
        && published > 0;
    Ok(json!({
        "mode": "fanout",
        "params": {"receivers": receivers, "rooms": rooms, "publishers": publishers, "rate": rate,
                   "duration_s": duration, "payload_bytes": payload_bytes, "nodes": nodes},
        "connects_ok": rx_up + px_up,
        "connects_failed": connect_failed,
        "ramp_s": round3(ramp_s),
        "published": published,
        "publish_rate": round3(published as f64 / publish_s.max(1e-9)),
        "acked": acked,
        "unacked": unacked,
        "publish_errors": pub_errors,
        "expected": expected() * rx_up / (receivers.max(1) as u64),
        "delivered": delivered,
        "unique": unique,
        "duplicates": dups,
        "lost": lost,
        "reordered": reordered,
        "publisher_side_deliveries": pub_other,
        "receivers_closed": rx_closed,
        "receivers_missing": rx_missing,
        "drained": drained,
        "publish_s": round3(publish_s),
        "window_s": round3(window_s),
        "deliveries_per_s": round3(unique as f64 / publish_s.max(1e-9)),
        "latency": hist.summary(),
        "generator_cpu_s": round3(gen_cpu),
        "generator_cpu_us_per_delivery": if delivered > 0 { json!(round3(gen_cpu * 1e6 / delivered as f64)) } else { Value::Null },
        "generator_cpu_util": round3(gen_cpu / window_s.max(1e-9)),
        "servers": servers,
        "server_cpu_s": round3(server_cpu),
        "server_cpu_us_per_delivery": if server_deliveries > 0 && !cli.sample_pids.is_empty() { json!(round3(server_cpu * 1e6 / server_deliveries as f64)) } else { Value::Null },
        "ok": ok,
    }))
}

// ---------------------------------------------------------------- connect

async fn connect(
    ctx: &Arc<Ctx>,
    total: usize,
    concurrency: usize,
    rooms: usize,
    duration: f64,
) -> Result<Value> {
    let rooms = rooms.max(1);
    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let hist = stats::Shared::new();
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(duration.clamp(0.1, 3600.0));
    let mut handles = Vec::new();
    for _ in 0..concurrency.clamp(1, 5_000) {
        let (ctx, next, ok, failed, hist) = (
            ctx.clone(),
            next.clone(),
            ok.clone(),
            failed.clone(),
            hist.clone(),
        );
        handles.push(tokio::spawn(async move {
            let mut rec = hist.recorder();
            loop {
                let i = next.fetch_add(1, Relaxed) as usize;
                if i >= total || Instant::now() >= deadline {
                    break;
                }
                let t = Instant::now();
                let left = deadline
                    .saturating_duration_since(t)
                    .min(ctx.settings.timeout);
                let res = tokio::time::timeout(left, async {
                    let mut c =
                        Conn::open(&ctx.settings, &ctx.targets[i % ctx.targets.len()], i).await?;
                    c.join(&ctx.room(i % rooms), ctx.settings.timeout).await?;
                    Ok::<_, anyhow::Error>(c)
                })
                .await;
                match res {
                    Ok(Ok(c)) => {
                        rec.record(t.elapsed().as_micros() as u64);
                        ok.fetch_add(1, Relaxed);
                        c.close().await;
                    }
                    Ok(Err(e)) => {
                        failed.fetch_add(1, Relaxed);
                        ctx.error(format!("{e:#}"));
                    }
                    Err(_) if Instant::now() >= deadline => break,
                    Err(_) => {
                        failed.fetch_add(1, Relaxed);
                        ctx.error("connect+join timed out");
                    }
                }
            }
        }));
    }
    for h in handles {
        let left = (deadline + Duration::from_secs(5)).saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(left, h).await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let (okn, failn) = (ok.load(Relaxed), failed.load(Relaxed));
    Ok(json!({
        "mode": "connect",
        "params": {"total": total, "concurrency": concurrency, "rooms": rooms, "duration_s": duration},
        "connects_ok": okn,
        "connects_failed": failn,
        "elapsed_s": round3(elapsed),
        "connects_per_s": round3(okn as f64 / elapsed.max(1e-9)),
        "handshake_latency": hist.summary(),
        "ok": failn == 0 && okn > 0,
    }))
}

// ---------------------------------------------------------------- output

fn human(r: &Value) -> String {
    let g = |k: &str| r.get(k).cloned().unwrap_or(Value::Null);
    let lat = |v: &Value| {
        format!(
            "p50 {} us, p99 {} us, p99.9 {} us, max {} us (n={})",
            v["p50_us"], v["p99_us"], v["p999_us"], v["max_us"], v["count"]
        )
    };
    if g("mode").as_str() == Some("floor") {
        return format!(
            "roomcast-loadgen floor (raw loopback TCP, no server)  [{}]\n  {} messages at {}/s to {} rooms of {} connections: {} writes ({}/s), {} read\n  latency: {}\n  writer CPU {} s ({} us/write), reader {} us/read; writer behind schedule by at most {} ms",
            if g("ok").as_bool() == Some(true) { "OK" } else { "NOT OK" },
            g("messages"), g("rate"), g("rooms"), g("connections"), g("writes"), g("writes_per_s"),
            g("records_read"), lat(&g("latency")), g("writer_cpu_s"), g("writer_cpu_us_per_write"),
            g("reader_cpu_us_per_read"), g("behind_max_ms")
        );
    }
    let gen = &r["generator"];
    let mut s = format!(
        "roomcast-loadgen {} against {} {}  [{}]\n",
        g("mode").as_str().unwrap_or(""),
        g("target").as_str().unwrap_or(""),
        g("urls"),
        if g("ok").as_bool() == Some(true) {
            "OK"
        } else {
            "NOT OK"
        }
    );
    s += &format!(
        "  connects: {} ok, {} failed\n",
        g("connects_ok"),
        g("connects_failed")
    );
    match g("mode").as_str() {
        Some("idle") => {
            s += &format!(
                "  dropped while idle: {}; ramp {} s\n",
                g("dropped_while_idle"),
                g("ramp_s")
            );
            s += &format!(
                "  server RSS delta: {} KiB ({} KiB per connection)\n",
                g("server_rss_delta_kib"),
                g("server_rss_kib_per_conn")
            );
        }
        Some("fanout") => {
            s += &format!(
                "  published {} ({}/s), acked {}, errors {}; delivered {} (unique {}, dup {}, lost {}, late {}), {} deliveries/s\n",
                g("published"), g("publish_rate"), g("acked"), g("publish_errors"), g("delivered"), g("unique"),
                g("duplicates"), g("lost"), g("reordered"), g("deliveries_per_s")
            );
            s += &format!("  latency: {}\n", lat(&g("latency")));
            s += &format!(
                "  server CPU {} s ({} us/delivery); generator CPU {} s ({} us/delivery, {} cores busy)\n",
                g("server_cpu_s"), g("server_cpu_us_per_delivery"), g("generator_cpu_s"),
                g("generator_cpu_us_per_delivery"), g("generator_cpu_util")
            );
        }
        Some("storm") => {
            let ms = &r["reconnect_ms"];
            s += &format!(
                "  closed {} (not closed {}), reconnected {}, failed {}, attempts {}, dropped after re-join {}; recovered {}\n",
                g("closed"), g("not_closed"), g("reconnected"), g("failed"), g("attempts"),
                g("dropped_after_rejoin"), g("recovered")
            );
            s += &format!(
                "  reconnect from the kill: p50 {} ms, p90 {} ms, p99 {} ms, max {} ms; all rejoined in {} s ({}); closes seen over {} ms\n",
                ms["p50"], ms["p90"], ms["p99"], ms["max"], g("all_rejoined_s"), g("end"),
                g("close_seen_spread_ms")
            );
        }
        Some("connect") => {
            s += &format!(
                "  {} connects/s over {} s; handshake {}\n",
                g("connects_per_s"),
                g("elapsed_s"),
                lat(&g("handshake_latency"))
            );
        }
        _ => {}
    }
    s += &format!(
        "  generator: cpu user {} s sys {} s, wall {} s, max RSS {} KiB",
        gen["cpu_user_s"], gen["cpu_sys_s"], gen["wall_s"], gen["max_rss_kib"]
    );
    if let Some(e) = r["errors"].as_array().filter(|a| !a.is_empty()) {
        s += "\n  errors:";
        for x in e {
            s += &format!("\n    {} x {}", x["count"], x["error"]);
        }
    }
    s
}
