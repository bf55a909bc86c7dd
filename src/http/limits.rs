//! Per-client-IP request budgets (SPEC §1 `GATEHOUSE_RATE_LIMIT_PER_MINUTE`,
//! §8, §10) on the endpoints worth hammering: the token and revocation
//! endpoints, the account API and the hosted pages that take passwords or
//! mailed tokens.
//!
//! Each client IP has one GCRA budget (governor): the configured number of
//! requests a minute, with a burst of a third of it. So with the default of
//! 60, an address may send 20 requests at once and then one a second; a
//! person signing in, verifying an e-mail or resetting a password sends a
//! handful. Refusals are 429 with `Retry-After` in whole seconds, rounded up:
//! `{"error":"temporarily_unavailable"}` on `/oauth2/*` (SPEC §10), problem+json
//! (`rate_limited`) elsewhere.
//!
//! The client IP is the TCP peer, or, only when the peer is a trusted proxy
//! (`GATEHOUSE_TRUSTED_PROXIES`), the rightmost `X-Forwarded-For` hop that is
//! not itself a trusted proxy: every hop left of it may have been written by
//! the client. IPv6 addresses share the budget of their /64, the block one
//! host usually holds, or an attacker would have 2^64 budgets.
//!
//! Not limited: `/oauth2/introspect` and `/oauth2/userinfo`, which resource
//! servers call per request from a few addresses (their credentials are a
//! client secret, covered by the per-client failure budget, or a bearer
//! token), and CORS preflights, which carry no credentials.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use poem::http::{HeaderMap, Method};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};

use crate::app::AppState;
use crate::config::{Cidr, Settings};
use crate::error::{Error, OAuthErrorResponse, ProblemResponse};

/// Stale budgets (indistinguishable from fresh ones) are dropped this often,
/// so the map holds only the addresses seen in the last minute or two.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Is this request counted against its client's budget?
fn is_limited(method: &Method, path: &str) -> bool {
    if method == Method::OPTIONS {
        return false;
    }
    // `/login` and `/session/login` are the password forms of SPEC §11.
    matches!(
        path,
        "/oauth2/token"
            | "/oauth2/revoke"
            | "/verify-email"
            | "/reset-password"
            | "/login"
            | "/session/login"
    ) || path == "/accounts"
        || path.starts_with("/accounts/")
}

/// The budget of `per_minute` requests a minute, bursting to a third of it.
pub fn quota(per_minute: u32) -> Quota {
    let rate = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(per_minute / 3).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(rate).allow_burst(burst)
}

/// `Retry-After` in whole seconds: rounded up, at least 1 (SPEC §10).
pub fn whole_seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// A keyed GCRA limiter whose stale keys are pruned on a timer, so it holds
/// only the keys seen recently however many pass by.
struct PrunedLimiter<K: std::hash::Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    started: Instant,
    /// Milliseconds since `started` when the next prune is due.
    next_prune: AtomicU64,
}

impl<K: std::hash::Hash + Eq + Clone> PrunedLimiter<K> {
    fn new(quota: Quota) -> Self {
        PrunedLimiter {
            limiter: RateLimiter::keyed(quota),
            started: Instant::now(),
            next_prune: AtomicU64::new(millis(PRUNE_EVERY)),
        }
    }

    /// Spends one request of `key`'s budget, or says how long to wait.
    fn check(&self, key: &K) -> Result<(), Duration> {
        self.prune_if_due();
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }

    fn prune_if_due(&self) {
        let now = millis(self.started.elapsed());
        let due = self.next_prune.load(Ordering::Relaxed);
        // One caller wins the exchange and prunes; the others go on.
        if now >= due
            && self
                .next_prune
                .compare_exchange(
                    due,
                    now + millis(PRUNE_EVERY),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.limiter.len()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The per-client-IP limit as a poem middleware; see the module docs.
#[derive(Clone)]
pub struct ClientIpLimit {
    inner: Arc<Inner>,
}

struct Inner {
    budgets: PrunedLimiter<IpAddr>,
    trusted_proxies: Vec<Cidr>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl ClientIpLimit {
    pub fn new(state: &AppState) -> ClientIpLimit {
        ClientIpLimit::from_settings(&state.settings, state.metrics.clone())
    }

    fn from_settings(settings: &Settings, metrics: Arc<crate::metrics::Metrics>) -> ClientIpLimit {
        ClientIpLimit {
            inner: Arc::new(Inner {
                budgets: PrunedLimiter::new(quota(settings.rate_limit_per_minute)),
                trusted_proxies: settings.trusted_proxies.clone(),
                metrics,
            }),
        }
    }
}

impl<E: Endpoint> Middleware<E> for ClientIpLimit {
    type Output = ClientIpLimitEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        ClientIpLimitEndpoint {
            ep,
            inner: self.inner.clone(),
        }
    }
}

pub struct ClientIpLimitEndpoint<E> {
    ep: E,
    inner: Arc<Inner>,
}

impl<E: Endpoint> Endpoint for ClientIpLimitEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        let path = req.uri().path();
        if is_limited(req.method(), path) {
            let peer = req.remote_addr().as_socket_addr().map(SocketAddr::ip);
            let ip = client_ip(peer, req.headers(), &self.inner.trusted_proxies);
            if let Err(wait) = self.inner.budgets.check(&budget_key(ip)) {
                let retry_after = whole_seconds(wait);
                tracing::warn!(
                    event = "rate_limited",
                    client_ip = %ip,
                    path = %path,
                    retry_after,
                    "per-IP request budget spent"
                );
                self.inner.metrics.rate_limited();
                return Ok(too_many_requests(path, retry_after));
            }
        }
        self.ep.call(req).await.map(IntoResponse::into_response)
    }
}

/// 429 in the shape the path calls for (SPEC §10).
fn too_many_requests(path: &str, retry_after: u64) -> Response {
    let err = Error::RateLimited { retry_after };
    if path.starts_with("/oauth2/") {
        OAuthErrorResponse::from(err).into_response()
    } else {
        ProblemResponse::from(err).into_response()
    }
}

/// The client's address: the peer, or the rightmost `X-Forwarded-For` hop
/// that is not a trusted proxy when the peer is one.
fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let peer = peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ip| ip.to_canonical());
    let is_trusted = |ip: IpAddr| trusted.iter().any(|cidr| cidr.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    // Several header lines read as one comma-separated list, in order (RFC 9110 §5.3).
    let hops: Vec<Option<&str>> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|line| match line.to_str() {
            Ok(text) => text.split(',').map(|hop| Some(hop.trim())).collect::<Vec<_>>(),
            Err(_) => vec![None],
        })
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        // A hop we cannot read was not written by a proxy we trust: stop at
        // the last address a trusted proxy vouched for.
        let Some(ip) = hop.and_then(parse_hop) else {
            return client;
        };
        client = ip;
        if !is_trusted(ip) {
            return ip;
        }
    }
    // Every hop is a trusted proxy: the leftmost is as far as we can see.
    client
}

/// An `X-Forwarded-For` hop: an address, possibly with a port (`[::1]:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

/// The budget an address spends: its own for IPv4, its /64 for IPv6.
fn budget_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u128::from(u64::MAX)))),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use poem::http::HeaderValue;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    #[test]
    fn the_client_ip_comes_from_forwarded_for_only_behind_a_trusted_proxy() {
        let proxies = [
            Cidr::parse("10.0.0.0/8").unwrap(),
            Cidr::parse("127.0.0.1").unwrap(),
        ];
        // (label, peer, X-Forwarded-For lines, trusted proxies, client IP)
        type Case<'a> = (&'a str, &'a str, &'a [&'a str], &'a [Cidr], &'a str);
        let cases: &[Case] = &[
            (
                "no proxies trusted",
                "203.0.113.9",
                &["198.51.100.1"],
                &[],
                "203.0.113.9",
            ),
            (
                "untrusted peer",
                "203.0.113.9",
                &["198.51.100.1"],
                &proxies,
                "203.0.113.9",
            ),
            (
                "trusted peer, one hop",
                "10.1.2.3",
                &["198.51.100.1"],
                &proxies,
                "198.51.100.1",
            ),
            (
                "rightmost untrusted hop wins over spoofed ones",
                "10.1.2.3",
                &["6.6.6.6, 198.51.100.1, 10.9.9.9"],
                &proxies,
                "198.51.100.1",
            ),
            (
                "several header lines are one list",
                "127.0.0.1",
                &["6.6.6.6", "198.51.100.1", "10.0.0.1"],
                &proxies,
                "198.51.100.1",
            ),
            ("trusted peer, no header", "10.1.2.3", &[], &proxies, "10.1.2.3"),
            (
                "garbage stops at the last vouched address",
                "10.1.2.3",
                &["198.51.100.1, not-an-ip"],
                &proxies,
                "10.1.2.3",
            ),
            (
                "all hops trusted",
                "10.1.2.3",
                &["10.0.0.7, 10.0.0.8"],
                &proxies,
                "10.0.0.7",
            ),
            (
                "ports and brackets",
                "10.1.2.3",
                &["[2001:db8::1]:4711"],
                &proxies,
                "2001:db8::1",
            ),
            (
                "mapped IPv4 peer",
                "::ffff:10.1.2.3",
                &["198.51.100.1"],
                &proxies,
                "198.51.100.1",
            ),
        ];
        for (label, peer, headers, trusted, want) in cases {
            assert_eq!(
                client_ip(Some(ip(peer)), &xff(headers), trusted),
                ip(want),
                "{label}"
            );
        }
    }

    #[test]
    fn ipv6_clients_share_their_slash_64() {
        assert_eq!(budget_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            budget_key(ip("2001:db8:1:2:ffff::9")),
            budget_key(ip("2001:db8:1:2::1"))
        );
        assert_ne!(
            budget_key(ip("2001:db8:1:3::1")),
            budget_key(ip("2001:db8:1:2::1"))
        );
        assert_eq!(budget_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(budget_key(ip("192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1000)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(9)), 9);
    }

    #[test]
    fn the_budget_bursts_to_a_third_then_refills_per_minute() {
        let limiter = PrunedLimiter::new(quota(60));
        let key = ip("192.0.2.1");
        for n in 0..20 {
            assert!(limiter.check(&key).is_ok(), "request {n}");
        }
        let wait = limiter.check(&key).unwrap_err();
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        // Another address has its own budget.
        assert!(limiter.check(&ip("192.0.2.2")).is_ok());
        // A tiny budget still allows one request.
        let one = PrunedLimiter::new(quota(1));
        assert!(one.check(&key).is_ok());
        assert!(one.check(&key).unwrap_err() > Duration::from_secs(50));
    }

    #[test]
    fn stale_budgets_are_pruned() {
        let limiter = PrunedLimiter::new(quota(600_000));
        for n in 0..100u8 {
            limiter.check(&IpAddr::V4(Ipv4Addr::new(192, 0, 2, n))).unwrap();
        }
        assert_eq!(limiter.len(), 100);
        // 10,000 a second: every budget is full again within a millisecond.
        std::thread::sleep(Duration::from_millis(20));
        limiter.next_prune.store(0, Ordering::Relaxed);
        limiter.check(&ip("198.51.100.1")).unwrap();
        assert!(limiter.len() <= 1, "{}", limiter.len());
    }

    #[test]
    fn only_the_guessable_endpoints_are_limited() {
        let post = Method::POST;
        for path in [
            "/oauth2/token",
            "/oauth2/revoke",
            "/accounts",
            "/accounts/me",
            "/accounts/password-reset/confirm",
            "/verify-email",
            "/reset-password",
        ] {
            assert!(is_limited(&post, path), "{path}");
        }
        for path in [
            "/oauth2/introspect",
            "/oauth2/userinfo",
            "/health",
            "/.well-known/jwks.json",
            "/accountsx",
        ] {
            assert!(!is_limited(&post, path), "{path}");
        }
        assert!(!is_limited(&Method::OPTIONS, "/accounts"));
        assert!(is_limited(&Method::GET, "/accounts/me"));
    }
}
