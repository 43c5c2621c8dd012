//! Process-level helpers: the file limit, our own CPU time, sampling the servers'
//! CPU and RSS from /proc, and the loopback-only rule for targets.

use anyhow::{bail, Context, Result};
use nix::sys::resource::{getrlimit, getrusage, setrlimit, Resource, UsageWho};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit")?;
    }
    Ok(hard)
}

/// CPU time (user, system) of this process so far, in seconds.
pub fn self_cpu() -> (f64, f64) {
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            (tv(u.user_time()), tv(u.system_time()))
        }
        Err(_) => (0.0, 0.0),
    }
}

/// Peak RSS of this process, KiB.
pub fn self_max_rss_kib() -> u64 {
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|u| u.max_rss() as u64)
        .unwrap_or(0)
}

fn clk_tck() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

/// One sample of a server process: CPU seconds (utime+stime) and RSS in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    pub cpu_s: f64,
    pub rss_kib: u64,
}

/// Samples /proc/PID; None when the process is gone.
pub fn sample_pid(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: field 3 (state) is f[0]; utime is field 14, stime field 15.
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(ProcSample {
        cpu_s: (ut + st) / clk_tck(),
        rss_kib,
    })
}

/// A parsed target: scheme (ws only), loopback socket address, and the base path.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host_port: String,
    pub base_path: String,
}

/// Parses `ws://host:port[/path]`, refusing anything that is not a loopback address.
pub fn parse_target(url: &str) -> Result<Target> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("http://"))
        .with_context(|| format!("{url}: only ws:// (or http://) loopback URLs are accepted"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (host, port) = if let Some(h) = authority.strip_prefix('[') {
        let end = h.find(']').context("bad IPv6 literal")?;
        (&h[..end], h[end + 1..].trim_start_matches(':'))
    } else {
        authority.rsplit_once(':').unwrap_or((authority, "80"))
    };
    let port: u16 = port.parse().with_context(|| format!("{url}: bad port"))?;
    let ip: IpAddr = if host == "localhost" {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse()
            .with_context(|| format!("{url}: host must be an IP literal or localhost"))?
    };
    if !ip.is_loopback() {
        bail!(
            "{url}: refusing a non-loopback target ({ip}); this generator only loads this machine"
        );
    }
    Ok(Target {
        addr: SocketAddr::new(ip, port),
        host_port: authority.to_string(),
        base_path: path.trim_end_matches('/').to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only() {
        assert!(parse_target("ws://127.0.0.1:8080").is_ok());
        assert!(parse_target("ws://localhost:1/x").is_ok());
        assert!(parse_target("ws://[::1]:80").is_ok());
        assert!(parse_target("ws://10.0.0.1:8080").is_err());
        assert!(parse_target("ws://example.com:8080").is_err());
        assert!(parse_target("wss://127.0.0.1:8080").is_err());
    }

    #[test]
    fn samples_self() {
        let s = sample_pid(std::process::id()).expect("own /proc entry");
        assert!(s.rss_kib > 0);
    }
}
