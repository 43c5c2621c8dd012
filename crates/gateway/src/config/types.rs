//! Setting values parsed once, when the configuration is read: durations in the unit
//! of their flag, CIDR lists, allowed Origins, hook URLs and header names. A leaf: it
//! imports nothing of the crate, and the modules that use these types (limits, http,
//! hooks) import them from here.

use hyper::header::HeaderName;
use hyper::Uri;
use std::net::IpAddr;
use std::num::ParseIntError;
use std::time::Duration;

/// A setting whose value cannot be used; the message names the flag and says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SettingError(pub String);

/// Splits a comma-separated list, trimming and dropping empty items.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
        .collect()
}

/// The longest duration any setting takes: ten years. A longer one is refused at start
/// rather than overflowing a deadline (`Instant + Duration` panics) on a request path.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A whole number of seconds (flags named in seconds), at most [`MAX_DURATION`].
pub fn secs(s: &str) -> Result<Duration, String> {
    bounded(s.parse().map(Duration::from_secs))
}

/// A whole number of milliseconds (flags ending in `-ms`), at most [`MAX_DURATION`].
pub fn millis(s: &str) -> Result<Duration, String> {
    bounded(s.parse().map(Duration::from_millis))
}

fn bounded(d: Result<Duration, ParseIntError>) -> Result<Duration, String> {
    match d {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        Ok(_) => Err(format!(
            "at most {} seconds (ten years)",
            MAX_DURATION.as_secs()
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// One item of a comma-separated list, without the spaces around it.
pub fn item(s: &str) -> Result<String, std::convert::Infallible> {
    Ok(s.trim().to_string())
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

/// A comma-separated CIDR list, `--trusted-proxies` (`10.0.0.0/8,::1/128`; a bare
/// address is /32 or /128; empty items are ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cidrs(Vec<Cidr>);

impl Cidrs {
    /// Parses the list.
    pub fn parse(list: &str) -> Result<Cidrs, SettingError> {
        let bad = |m: String| SettingError(format!("--trusted-proxies: {m}"));
        split_list(list)
            .iter()
            .map(|item| {
                let (a, b) = item.split_once('/').unwrap_or((item, ""));
                let addr: IpAddr = a
                    .parse()
                    .map_err(|_| bad(format!("{item:?} is not an address or CIDR")))?;
                let max = if addr.is_ipv4() { 32 } else { 128 };
                let bits = if b.is_empty() {
                    max
                } else {
                    b.parse::<u8>()
                        .ok()
                        .filter(|n| *n <= max)
                        .ok_or_else(|| bad(format!("bad prefix length in {item:?}")))?
                };
                Ok(Cidr { addr, bits })
            })
            .collect::<Result<_, _>>()
            .map(Cidrs)
    }
}

impl std::ops::Deref for Cidrs {
    type Target = [Cidr];
    fn deref(&self) -> &[Cidr] {
        &self.0
    }
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
    /// Parses `--allowed-origins`: comma-separated, `*` (or nothing) for any.
    pub fn parse(s: &str) -> Self {
        let items = split_list(s);
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

    /// [`Origins::parse`] as a clap value parser.
    pub fn parser(s: &str) -> Result<Self, std::convert::Infallible> {
        Ok(Self::parse(s))
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

/// A hook's URL: plain `http://` with a host, or none (the setting absent or empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookUrl(pub Option<Uri>);

impl HookUrl {
    /// A parser of the flag `flag` (named in its messages).
    pub fn parser(flag: &'static str) -> impl Fn(&str) -> Result<HookUrl, SettingError> + Clone {
        move |url| {
            if url.is_empty() {
                return Ok(HookUrl(None));
            }
            let bad = |reason: String| SettingError(format!("{flag}: {reason}"));
            let uri: Uri = url
                .parse()
                .map_err(|e| bad(format!("{url:?} is not a URL: {e}")))?;
            if uri.scheme_str() != Some("http") {
                return Err(bad(format!(
                    "{url:?}: only http:// is supported (put a TLS proxy in front of a remote backend)"
                )));
            }
            if uri.host().is_none() {
                return Err(bad(format!("{url:?} names no host")));
            }
            Ok(HookUrl(Some(uri)))
        }
    }

    /// Whether a URL is set.
    pub fn is_some(&self) -> bool {
        self.0.is_some()
    }
}

/// A comma-separated list of request header names (`--hook-forward-headers`),
/// lower-cased; empty items are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderNames(pub Vec<HeaderName>);

impl HeaderNames {
    /// Parses the list.
    pub fn parse(list: &str) -> Result<HeaderNames, SettingError> {
        split_list(list)
            .into_iter()
            .map(|h| {
                HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).map_err(|_| {
                    SettingError(format!(
                        "--hook-forward-headers: {h:?} is not a header name"
                    ))
                })
            })
            .collect::<Result<_, _>>()
            .map(HeaderNames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        assert!(Cidrs::parse("::1/128,192.168.0.0/16").is_ok());
        assert!(Cidrs::parse("1.2.3.4/33").is_err());
        let c = Cidrs::parse("10.0.0.0/8, ").expect("cidrs");
        assert_eq!(c.len(), 1);
        assert!(c[0].contains("10.1.2.3".parse().expect("ip")));
        assert!(c[0].contains("::ffff:10.1.2.3".parse().expect("ip")));
        assert!(!c[0].contains("11.1.2.3".parse().expect("ip")));
        let e = Cidrs::parse("nonsense").unwrap_err();
        assert_eq!(
            e.to_string(),
            "--trusted-proxies: \"nonsense\" is not an address or CIDR"
        );
    }

    #[test]
    fn durations_keep_the_unit_of_their_flag() {
        assert_eq!(secs("25"), Ok(Duration::from_secs(25)));
        assert_eq!(millis("25"), Ok(Duration::from_millis(25)));
        assert!(secs("-1").is_err());
        assert!(secs("1.5").is_err());
    }

    #[test]
    fn durations_that_would_overflow_a_deadline_are_refused() {
        assert_eq!(secs("315360000"), Ok(MAX_DURATION));
        assert!(secs("315360001").is_err());
        assert!(secs("18446744073709551615").is_err());
        assert!(millis("18446744073709551615").is_err());
        assert_eq!(millis("1000"), Ok(Duration::from_secs(1)));
    }

    #[test]
    fn hook_urls_and_headers() {
        let p = HookUrl::parser("--hook-join-url");
        assert_eq!(p(""), Ok(HookUrl(None)));
        assert!(p("http://127.0.0.1:1/j").expect("url").is_some());
        let e = p("https://x/j").unwrap_err().to_string();
        assert!(
            e.starts_with("--hook-join-url: ") && e.contains("only http://"),
            "{e}"
        );
        assert!(p("http:///x").is_err());
        let h = HeaderNames::parse("X-Tenant, ,authorization").expect("names");
        assert_eq!(h.0.len(), 2);
        assert_eq!(h.0[0].as_str(), "x-tenant");
        assert!(HeaderNames::parse("bad header").is_err());
    }
}
