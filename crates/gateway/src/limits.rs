//! Limits that protect a node from its clients: the per-connection rate limiter, the
//! per-IP connection count, trusted proxies for X-Forwarded-For, and allowed Origins.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A token bucket. Pure: the caller passes `now`, so tests need no clock.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilling `rate` tokens per second up to `burst`.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Counts connections per client IP, and apart from them the HTTP requests in progress
/// per client IP (/client/commands and the API). A [`IpGuard`] gives the slot back when
/// dropped.
#[derive(Debug, Default)]
pub struct IpLimiter {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
    requests: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's (or one request's) slot in the [`IpLimiter`].
#[derive(Debug)]
pub struct IpGuard {
    limiter: Arc<IpLimiter>,
    ip: IpAddr,
    request: bool,
}

impl IpLimiter {
    /// At most `max` connections per IP (0: unlimited).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(IpLimiter {
            max,
            counts: Mutex::new(HashMap::new()),
            requests: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a slot for `ip`, or `None` when it has `max` already.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpGuard> {
        self.take(ip, self.max, false)
    }

    /// Takes a slot for one HTTP request of `ip`, or `None` when it has `max` requests
    /// in progress already (0: unlimited). Counted apart from connections.
    pub fn acquire_request(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpGuard> {
        self.take(ip, max, true)
    }

    fn map(&self, request: bool) -> &Mutex<HashMap<IpAddr, usize>> {
        if request {
            &self.requests
        } else {
            &self.counts
        }
    }

    fn take(self: &Arc<Self>, ip: IpAddr, max: usize, request: bool) -> Option<IpGuard> {
        let mut c = self.map(request).lock().unwrap_or_else(|p| p.into_inner());
        let n = c.entry(ip).or_insert(0);
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(IpGuard {
            limiter: self.clone(),
            ip,
            request,
        })
    }
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        let mut c = self
            .limiter
            .map(self.request)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = c.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.remove(&self.ip);
            }
        }
    }
}

/// Token buckets per user, for requests that have no connection (the HTTP fallback).
#[derive(Debug)]
pub struct UserRateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<roomcast_protocol::UserId, TokenBucket>>,
}

impl UserRateLimiter {
    /// Buckets of `rate` per second and `burst` tokens.
    pub fn new(rate: f64, burst: f64) -> Self {
        UserRateLimiter {
            rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `user`.
    pub fn allow(&self, user: &roomcast_protocol::UserId) -> bool {
        let now = Instant::now();
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() > 100_000 {
            // Forget buckets idle long enough to be full again: bounded memory.
            let full_after = std::time::Duration::from_secs_f64(self.burst / self.rate);
            b.retain(|_, bucket| now.saturating_duration_since(bucket.last) < full_after);
        }
        b.entry(user.clone())
            .or_insert_with(|| TokenBucket::new(self.rate, self.burst, now))
            .try_take(now)
    }
}

/// A network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    bits: u8,
}

impl Cidr {
    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.bits)
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.bits)
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            (IpAddr::V6(_), IpAddr::V4(v4)) => self.contains(IpAddr::V6(v4.to_ipv6_mapped())),
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6
                .to_ipv4_mapped()
                .is_some_and(|v4| self.contains(IpAddr::V4(v4))),
        }
    }
}

/// Parses a comma-separated CIDR list (`10.0.0.0/8,::1/128`; a bare address is /32 or /128).
pub fn parse_cidrs(list: &str) -> Result<Vec<Cidr>, String> {
    crate::config::split_list(list)
        .iter()
        .map(|item| {
            let (a, b) = item.split_once('/').unwrap_or((item, ""));
            let addr: IpAddr = a
                .parse()
                .map_err(|_| format!("--trusted-proxies: {item:?} is not an address or CIDR"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let bits = if b.is_empty() {
                max
            } else {
                b.parse::<u8>()
                    .ok()
                    .filter(|n| *n <= max)
                    .ok_or_else(|| format!("--trusted-proxies: bad prefix length in {item:?}"))?
            };
            Ok(Cidr { addr, bits })
        })
        .collect()
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the right-most
/// address of X-Forwarded-For that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[Cidr]) -> IpAddr {
    if !trusted.iter().any(|c| c.contains(peer)) {
        return peer;
    }
    let Some(xff) = forwarded_for else {
        return peer;
    };
    let mut ip = peer;
    for part in xff.rsplit(',') {
        match part.trim().parse::<IpAddr>() {
            Ok(a) => {
                ip = a;
                if !trusted.iter().any(|c| c.contains(a)) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    ip
}

/// Allowed Origins: any, or an exact list (scheme, host and port compared exactly).
#[derive(Debug, Clone)]
pub enum Origins {
    /// `*`.
    Any,
    /// Exact origins, lower-cased, without a trailing slash.
    List(Vec<String>),
}

impl Origins {
    /// Parses `--allowed-origins`.
    pub fn parse(s: &str) -> Self {
        let items = crate::config::split_list(s);
        if items.is_empty() || items.iter().any(|i| i == "*") {
            return Origins::Any;
        }
        Origins::List(
            items
                .into_iter()
                .map(|i| i.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        )
    }

    /// Whether a request with this Origin header may connect (no header: not a browser: yes).
    pub fn allows(&self, origin: Option<&str>) -> bool {
        match (self, origin) {
            (Origins::Any, _) | (_, None) => true,
            (Origins::List(list), Some(o)) => {
                let o = o.trim().trim_end_matches('/').to_ascii_lowercase();
                list.contains(&o)
            }
        }
    }

    /// Whether a request with this Origin header value may connect. A header that is
    /// present but not visible ASCII (a non-ASCII byte) matches no listed Origin: it is
    /// refused by a list and allowed only by `*`, never treated as absent.
    pub fn allows_header(&self, origin: Option<&hyper::header::HeaderValue>) -> bool {
        match origin.map(|v| v.to_str()) {
            None => true,
            Some(Ok(o)) => self.allows(Some(o)),
            Some(Err(_)) => matches!(self, Origins::Any),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 2.0, t0);
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0));
        assert!(b.try_take(t0 + Duration::from_millis(100)));
        assert!(!b.try_take(t0 + Duration::from_millis(100)));
        assert!(b.try_take(t0 + Duration::from_secs(10)));
        assert!(b.try_take(t0 + Duration::from_secs(10)));
        assert!(
            !b.try_take(t0 + Duration::from_secs(10)),
            "burst caps the refill"
        );
    }

    #[test]
    fn ip_limits() {
        let l = IpLimiter::new(2);
        let ip: IpAddr = "10.1.1.1".parse().expect("ip");
        let a = l.acquire(ip);
        let b = l.acquire(ip);
        assert!(a.is_some() && b.is_some());
        assert!(l.acquire(ip).is_none());
        drop(a);
        assert!(l.acquire(ip).is_some());
        // Requests are counted apart from connections, against the limit given.
        let r1 = l.acquire_request(ip, 1);
        assert!(r1.is_some());
        assert!(l.acquire_request(ip, 1).is_none());
        drop(r1);
        assert!(l.acquire_request(ip, 1).is_some());
        assert!(l.acquire_request(ip, 0).is_some(), "0: unlimited");
    }

    #[test]
    fn forwarded_for_only_from_trusted() {
        let trusted = parse_cidrs("127.0.0.0/8,10.0.0.0/8").expect("cidrs");
        let p = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(
            client_ip(p("127.0.0.1"), Some("1.2.3.4"), &trusted),
            p("1.2.3.4")
        );
        assert_eq!(
            client_ip(p("8.8.8.8"), Some("1.2.3.4"), &trusted),
            p("8.8.8.8")
        );
        assert_eq!(
            client_ip(p("127.0.0.1"), Some("9.9.9.9, 1.2.3.4, 10.0.0.5"), &trusted),
            p("1.2.3.4")
        );
        assert_eq!(
            client_ip(p("127.0.0.1"), Some("garbage"), &trusted),
            p("127.0.0.1")
        );
        assert!(parse_cidrs("::1/128,192.168.0.0/16").is_ok());
        assert!(parse_cidrs("1.2.3.4/33").is_err());
    }

    #[test]
    fn origins_match_exactly() {
        let o = Origins::parse("https://app.example.com,http://localhost:3000");
        assert!(o.allows(Some("https://app.example.com")));
        assert!(o.allows(None));
        assert!(!o.allows(Some("https://app.example.com.evil.io")));
        assert!(!o.allows(Some("http://app.example.com")));
        assert!(!o.allows(Some("http://localhost:30001")));
        assert!(Origins::parse("*").allows(Some("http://x")));
        let bad = hyper::header::HeaderValue::from_bytes(b"https://app.example.com\xff")
            .expect("header value");
        assert!(!o.allows_header(Some(&bad)), "unreadable Origin is refused");
        assert!(o.allows_header(None));
        assert!(Origins::parse("*").allows_header(Some(&bad)));
    }
}
