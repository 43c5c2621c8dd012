//! The machine's floor under the fan-out figures: what one `write(2)` per delivery to a
//! loopback TCP socket costs the writer, and how late the last of a room's copies lands,
//! with no WebSocket, no Redis and no broker at all.
//!
//! Writers (one thread each, blocking sockets: the cheapest a server could be; two by
//! default, as the cluster has two nodes, each writing to its half of every room) send
//! each message to every connection of its room, one write per delivery; a reader
//! process (a tokio runtime like the generator's) reads the records and measures their
//! latency from when the message was due. On
//! loopback the kernel runs the receiver's TCP receive and its wake-up inside the
//! writer's `write`, so the writer's CPU per write is the least server CPU per delivery
//! this machine can show, whatever the server does.

use crate::stats;
use crate::sys;
use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// What the writer is asked for.
pub struct FloorArgs {
    pub connections: usize,
    pub rooms: usize,
    pub rate: f64,
    pub duration: f64,
    pub record_bytes: usize,
    pub writers: usize,
}

/// Runs the writer side and the reader as a child process of this binary; the report.
pub fn run(a: &FloorArgs) -> Result<Value> {
    let connections = a.connections.clamp(1, 18_000);
    let rooms = a.rooms.clamp(1, connections);
    let rate = a.rate.clamp(1.0, 100_000.0);
    let duration = a.duration.clamp(0.5, 300.0);
    let record = a.record_bytes.clamp(16, 65_536);
    let exe = std::env::current_exe().context("current_exe")?;
    let mut child = Command::new(exe)
        .args([
            "floor-sink",
            "--connections",
            &connections.to_string(),
            "--record-bytes",
            &record.to_string(),
            "--deadline",
            &(duration + 60.0).to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("start the floor reader")?;
    let sink_pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().context("reader stdout")?).lines();
    let mut next_line = || -> Result<String> {
        lines
            .next()
            .context("the floor reader ended early")?
            .context("read from the floor reader")
    };
    let port: u16 = next_line()?.trim().parse().context("reader port")?;
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        let s = TcpStream::connect(("127.0.0.1", port)).context("connect to the reader")?;
        s.set_nodelay(true)?;
        conns.push(s);
    }
    if next_line()?.trim() != "ready" {
        bail!("the floor reader did not accept every connection");
    }
    // Writer w owns the connections c with (c / rooms) % writers == w: each writes its
    // share of every room, as each node of a two-node cluster writes to its half.
    let writers = a.writers.clamp(1, 16);
    let mut shares: Vec<Vec<(usize, TcpStream)>> = (0..writers).map(|_| Vec::new()).collect();
    for (c, s) in conns.into_iter().enumerate() {
        shares[(c / rooms) % writers].push((c % rooms, s));
    }
    let cpu0 = sys::self_cpu();
    let sink0 = sys::sample_pid(sink_pid);
    let start = Instant::now();
    let total = (rate * duration).round() as u64;
    let results: Vec<Result<(u64, Duration)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = shares
            .iter_mut()
            .map(|share| {
                scope.spawn(move || -> Result<(u64, Duration)> {
                    let mut buf = vec![0u8; record];
                    let (mut writes, mut behind_max) = (0u64, Duration::ZERO);
                    for i in 0..total {
                        let due = start + Duration::from_secs_f64(i as f64 / rate);
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        } else {
                            behind_max = behind_max.max(now - due);
                        }
                        let room = (i as usize) % rooms;
                        // Stamped when the message is due: a late writer's delay counts.
                        let late = Instant::now().saturating_duration_since(due);
                        let stamp = stats::now_us().saturating_sub(late.as_micros() as u64);
                        buf[..8].copy_from_slice(&stamp.to_le_bytes());
                        for (_, c) in share.iter_mut().filter(|(r, _)| *r == room) {
                            c.write_all(&buf).context("write")?;
                            writes += 1;
                        }
                    }
                    Ok((writes, behind_max))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("writer panicked")))
            })
            .collect()
    });
    let (mut writes, mut behind_max) = (0u64, Duration::ZERO);
    for r in results {
        let (w, b) = r?;
        writes += w;
        behind_max = behind_max.max(b);
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu1 = sys::self_cpu();
    let sink1 = sys::sample_pid(sink_pid);
    drop(shares);
    let report: Value = serde_json::from_str(next_line()?.trim()).context("reader report")?;
    let _ = child.wait();
    let writer_cpu = (cpu1.0 - cpu0.0) + (cpu1.1 - cpu0.1);
    let reader_cpu = match (sink0, sink1) {
        (Some(a), Some(b)) => b.cpu_s - a.cpu_s,
        _ => f64::NAN,
    };
    let read = report["records"].as_u64().unwrap_or(0);
    let per = |cpu: f64, n: u64| {
        if n > 0 && cpu.is_finite() {
            json!((cpu * 1e6 / n as f64 * 1000.0).round() / 1000.0)
        } else {
            Value::Null
        }
    };
    Ok(json!({
        "mode": "floor",
        "ok": read == writes && behind_max < Duration::from_millis(100),
        "connections": connections,
        "rooms": rooms,
        "rate": rate,
        "record_bytes": record,
        "writers": writers,
        "messages": total,
        "writes": writes,
        "records_read": read,
        "writes_per_s": (writes as f64 / wall).round(),
        "wall_s": (wall * 1000.0).round() / 1000.0,
        "behind_max_ms": behind_max.as_millis() as u64,
        "writer_cpu_s": (writer_cpu * 1000.0).round() / 1000.0,
        "writer_cpu_us_per_write": per(writer_cpu, writes),
        "reader_cpu_us_per_read": per(reader_cpu, read),
        "latency": report["latency"].clone(),
    }))
}

/// The reader: accepts `connections`, prints its port then `ready`, reads fixed-size
/// records until every connection closes (or the deadline), prints its report.
pub fn sink(connections: usize, record: usize, deadline: f64) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", l.local_addr()?.port());
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..connections {
            let (mut s, _) = tokio::time::timeout(Duration::from_secs(30), l.accept())
                .await
                .context("accept timed out")??;
            s.set_nodelay(true)?;
            tasks.spawn(async move {
                let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let mut buf = vec![0u8; 16 * 1024];
                let (mut have, mut n) = (0usize, 0u64);
                loop {
                    let got = s.read(&mut buf[have..]).await?;
                    if got == 0 {
                        return Ok::<_, anyhow::Error>((h, n));
                    }
                    let at = stats::now_us();
                    have += got;
                    let mut off = 0;
                    while have - off >= record {
                        let mut t = [0u8; 8];
                        t.copy_from_slice(&buf[off..off + 8]);
                        let _ = h.record(at.saturating_sub(u64::from_le_bytes(t)).max(1));
                        n += 1;
                        off += record;
                    }
                    buf.copy_within(off..have, 0);
                    have -= off;
                }
            });
        }
        println!("ready");
        let mut all = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut records = 0u64;
        let end = tokio::time::sleep(Duration::from_secs_f64(deadline));
        tokio::pin!(end);
        loop {
            tokio::select! {
                _ = &mut end => break,
                r = tasks.join_next() => match r {
                    None => break,
                    Some(Ok(Ok((h, n)))) => {
                        let _ = all.add(&h);
                        records += n;
                    }
                    Some(_) => {}
                },
            }
        }
        println!(
            "{}",
            json!({"records": records, "latency": stats::summary(&all)})
        );
        std::io::stdout().flush()?;
        Ok(())
    })
}
