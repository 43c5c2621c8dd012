//! Limits that protect a node from its clients: the per-connection rate limiter, the
//! per-IP connection count, and the client address behind trusted proxies. The
//! configured values they apply (CIDRs, Origins) are parsed in crate::config::types.

pub use crate::config::types::{Cidr, Origins};
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::types::Cidrs;
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
        let trusted = Cidrs::parse("127.0.0.0/8,10.0.0.0/8").expect("cidrs");
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
        assert!(Cidrs::parse("::1/128,192.168.0.0/16").is_ok());
        assert!(Cidrs::parse("1.2.3.4/33").is_err());
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
