//! Prometheus metrics: a small registry of atomics, rendered in the text
//! exposition format 0.0.4 by `GET /metrics`.
//!
//! Label sets are bounded: `route` is a path template known at start-up (or
//! `unmatched`), `method` one of the standard methods (or `other`), `status`
//! a three-digit code, `grant` one of [`GrantType::ALL`]. Nothing a client
//! sends can create a new series.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `gatehouse_http_requests_total` | counter | `route`, `method`, `status` |
//! | `gatehouse_http_request_duration_seconds` | histogram | `route` |
//! | `gatehouse_tokens_issued_total` | counter | `grant` |
//! | `gatehouse_login_failures_total` | counter | |
//! | `gatehouse_rate_limited_total` | counter | |
//! | `gatehouse_refresh_reuse_detected_total` | counter | |
//! | `gatehouse_mail_queue_depth` | gauge | |

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use poem::http::Method;
use poem_openapi::registry::MetaApi;

use crate::domain::GrantType;

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `route` label of a request no route matched.
pub const UNMATCHED: &str = "unmatched";

/// Routes served outside the OpenAPI service (see `app::routes`), matched
/// exactly; keep in step with it.
const PLAIN_ROUTES: &[&str] = &[
    "/verify-email",
    "/reset-password",
    "/login",
    "/consent",
    "/logout",
    "/openapi.json",
    "/openapi.yaml",
    "/metrics",
];

/// Nested services: every path under these prefixes takes the prefix as its route.
const NESTED_ROUTES: &[&str] = &["/docs"];

/// Upper bounds of the latency buckets, in seconds (Prometheus' defaults).
const BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The registry; one per application, in `AppState`.
pub struct Metrics {
    routes: RouteTable,
    requests: RwLock<HashMap<RequestKey, AtomicU64>>,
    latency: RwLock<HashMap<Arc<str>, Histogram>>,
    tokens_issued: [AtomicU64; GrantType::ALL.len()],
    login_failures: AtomicU64,
    rate_limited: AtomicU64,
    refresh_reuse: AtomicU64,
}

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct RequestKey {
    route: Arc<str>,
    method: &'static str,
    status: u16,
}

impl Metrics {
    /// A registry whose route templates are those of `apis` (from
    /// `poem_openapi::OpenApi::meta()`) plus the plain routes.
    pub fn new(apis: Vec<MetaApi>) -> Metrics {
        Metrics {
            routes: RouteTable::new(apis),
            requests: RwLock::new(HashMap::new()),
            latency: RwLock::new(HashMap::new()),
            tokens_issued: std::array::from_fn(|_| AtomicU64::new(0)),
            login_failures: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            refresh_reuse: AtomicU64::new(0),
        }
    }

    /// The `route` label of a request: the template of the operation that
    /// answered it when known, else the template `path` matches, else
    /// [`UNMATCHED`].
    pub fn route(&self, operation_id: Option<&str>, path: &str) -> Arc<str> {
        self.routes.resolve(operation_id, path)
    }

    /// Counts one answered request and its latency.
    pub fn observe_request(&self, route: &Arc<str>, method: &Method, status: u16, elapsed: Duration) {
        let key = RequestKey {
            route: route.clone(),
            method: method_label(method),
            status,
        };
        bump(&self.requests, key, |c| {
            c.fetch_add(1, Ordering::Relaxed);
        });
        bump(&self.latency, route.clone(), |h| h.observe(elapsed));
    }

    /// A grant handed out tokens.
    pub fn token_issued(&self, grant: GrantType) {
        if let Some(i) = GrantType::ALL.iter().position(|g| *g == grant) {
            self.tokens_issued[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A password login was refused.
    pub fn login_failed(&self) {
        self.login_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// A request was refused by a rate limit (answered 429).
    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// A used refresh token was presented again and its chain revoked.
    pub fn refresh_reuse_detected(&self) {
        self.refresh_reuse.fetch_add(1, Ordering::Relaxed);
    }

    /// The text exposition; `mail_queue_depth` is left out when unknown
    /// (the database did not answer).
    pub fn render(&self, mail_queue_depth: Option<i64>) -> String {
        let mut out = String::with_capacity(8 * 1024);

        header(
            &mut out,
            "gatehouse_http_requests_total",
            "counter",
            "HTTP requests answered, by route template, method and status code.",
        );
        let mut requests: Vec<(RequestKey, u64)> = read(&self.requests)
            .iter()
            .map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed)))
            .collect();
        requests.sort();
        for (key, value) in requests {
            let _ = writeln!(
                out,
                "gatehouse_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{}\"}} {value}",
                escape(&key.route),
                key.method,
                key.status
            );
        }

        header(
            &mut out,
            "gatehouse_http_request_duration_seconds",
            "histogram",
            "Time from receiving a request to having its answer, by route template.",
        );
        let mut latency: Vec<(Arc<str>, HistogramSnapshot)> = read(&self.latency)
            .iter()
            .map(|(route, h)| (route.clone(), h.snapshot()))
            .collect();
        latency.sort_by(|a, b| a.0.cmp(&b.0));
        for (route, h) in latency {
            let route = escape(&route);
            let mut cumulative = 0;
            for (bound, count) in BUCKETS.iter().zip(h.buckets) {
                cumulative += count;
                let _ = writeln!(
                    out,
                    "gatehouse_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "gatehouse_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "gatehouse_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum_seconds
            );
            let _ = writeln!(
                out,
                "gatehouse_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count
            );
        }

        header(
            &mut out,
            "gatehouse_tokens_issued_total",
            "counter",
            "Successful token responses, by grant type.",
        );
        for (grant, count) in GrantType::ALL.iter().zip(&self.tokens_issued) {
            let _ = writeln!(
                out,
                "gatehouse_tokens_issued_total{{grant=\"{}\"}} {}",
                grant.as_str(),
                count.load(Ordering::Relaxed)
            );
        }

        let simple = [
            (
                "gatehouse_login_failures_total",
                "Refused password logins (wrong password, unknown or disabled account, back-off).",
                &self.login_failures,
            ),
            (
                "gatehouse_rate_limited_total",
                "Requests refused by a rate limit.",
                &self.rate_limited,
            ),
            (
                "gatehouse_refresh_reuse_detected_total",
                "Used refresh tokens presented again; each revoked its login's chain.",
                &self.refresh_reuse,
            ),
        ];
        for (name, help, value) in simple {
            header(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }

        if let Some(depth) = mail_queue_depth {
            header(
                &mut out,
                "gatehouse_mail_queue_depth",
                "gauge",
                "Queued messages not yet sent whose link is still valid.",
            );
            let _ = writeln!(out, "gatehouse_mail_queue_depth {depth}");
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Label values: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// Applies `f` to the entry of `key`, creating it on first sight; the common
/// case takes only the read lock.
fn bump<K: std::hash::Hash + Eq, V: Default>(lock: &RwLock<HashMap<K, V>>, key: K, f: impl Fn(&V)) {
    if let Some(v) = read(lock).get(&key) {
        f(v);
        return;
    }
    let mut map = lock.write().unwrap_or_else(PoisonError::into_inner);
    f(map.entry(key).or_default());
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[derive(Default)]
struct Histogram {
    /// Observations per bucket, not cumulative; above the last bound only in `count`.
    buckets: [AtomicU64; BUCKETS.len()],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

struct HistogramSnapshot {
    buckets: [u64; BUCKETS.len()],
    sum_seconds: f64,
    count: u64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> HistogramSnapshot {
        // Read `count` last: a concurrent observation may then show in a
        // bucket before the count, never the other way round. Prometheus
        // tolerates either; this keeps `+Inf` >= every bucket.
        let buckets = std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed));
        let sum_seconds = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let count = self.count.load(Ordering::Relaxed);
        let count = count.max(buckets.iter().sum());
        HistogramSnapshot {
            buckets,
            sum_seconds,
            count,
        }
    }
}

/// Path templates: by operation id, and as segments to match a concrete path.
struct RouteTable {
    by_operation: HashMap<&'static str, Arc<str>>,
    templates: Vec<(Vec<Segment>, Arc<str>)>,
    nested: Vec<Arc<str>>,
    unmatched: Arc<str>,
}

enum Segment {
    Literal(String),
    Param,
}

impl RouteTable {
    fn new(apis: Vec<MetaApi>) -> RouteTable {
        let mut by_operation = HashMap::new();
        let mut templates: Vec<(Vec<Segment>, Arc<str>)> = Vec::new();
        let mut add = |template: &str| -> Arc<str> {
            if let Some((_, existing)) = templates.iter().find(|(_, t)| &**t == template) {
                return existing.clone();
            }
            let shared: Arc<str> = Arc::from(template);
            let segments = split(template)
                .map(|s| {
                    if s.starts_with('{') && s.ends_with('}') {
                        Segment::Param
                    } else {
                        Segment::Literal(s.to_owned())
                    }
                })
                .collect();
            templates.push((segments, shared.clone()));
            shared
        };
        for api in apis {
            for path in api.paths {
                let shared = add(&path.path);
                for op in path.operations {
                    if let Some(id) = op.operation_id {
                        by_operation.insert(id, shared.clone());
                    }
                }
            }
        }
        for plain in PLAIN_ROUTES {
            add(plain);
        }
        RouteTable {
            by_operation,
            templates,
            nested: NESTED_ROUTES.iter().map(|p| Arc::from(*p)).collect(),
            unmatched: Arc::from(UNMATCHED),
        }
    }

    fn resolve(&self, operation_id: Option<&str>, path: &str) -> Arc<str> {
        if let Some(route) = operation_id.and_then(|id| self.by_operation.get(id)) {
            return route.clone();
        }
        let parts: Vec<&str> = split(path).collect();
        // The most literal segments wins: `/accounts/me` over `/accounts/{x}`.
        let mut best: Option<(usize, &Arc<str>)> = None;
        for (segments, template) in &self.templates {
            if segments.len() != parts.len() {
                continue;
            }
            let mut literals = 0;
            let fits = segments.iter().zip(&parts).all(|(segment, part)| match segment {
                Segment::Literal(l) => {
                    literals += 1;
                    l == part
                }
                Segment::Param => !part.is_empty(),
            });
            if fits && best.is_none_or(|(n, _)| literals > n) {
                best = Some((literals, template));
            }
        }
        if let Some((_, template)) = best {
            return template.clone();
        }
        for prefix in &self.nested {
            let rest = path.strip_prefix(&**prefix);
            if rest.is_some_and(|r| r.is_empty() || r.starts_with('/')) {
                return prefix.clone();
            }
        }
        self.unmatched.clone()
    }
}

/// Path segments after the leading slash; a trailing slash gives an empty last one.
fn split(path: &str) -> impl Iterator<Item = &str> {
    path.strip_prefix('/').unwrap_or(path).split('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        Metrics::new(<crate::http::admin::AdminApi as poem_openapi::OpenApi>::meta())
    }

    #[test]
    fn routes_are_templates_and_unknown_paths_are_unmatched() {
        let m = metrics();
        let id = "0b0e7c9e-3f7a-4f5e-9a53-2d0c5a1b7e11";
        assert_eq!(
            &*m.route(None, &format!("/admin/users/{id}")),
            "/admin/users/{id}"
        );
        assert_eq!(
            &*m.route(None, &format!("/admin/users/{id}/roles")),
            "/admin/users/{id}/roles"
        );
        assert_eq!(&*m.route(None, "/admin/users"), "/admin/users");
        assert_eq!(&*m.route(None, "/admin/keys/rotate"), "/admin/keys/rotate");
        assert_eq!(
            &*m.route(Some("admin_get_user"), "/whatever"),
            "/admin/users/{id}"
        );
        assert_eq!(&*m.route(None, "/metrics"), "/metrics");
        assert_eq!(&*m.route(None, "/docs"), "/docs");
        assert_eq!(&*m.route(None, "/docs/index.js"), "/docs");
        assert_eq!(&*m.route(None, "/docsx"), UNMATCHED);
        assert_eq!(&*m.route(None, "/admin/users/x/y/z"), UNMATCHED);
        assert_eq!(&*m.route(None, "/admin/users//roles"), UNMATCHED);
        assert_eq!(&*m.route(None, "/"), UNMATCHED);
        assert_eq!(&*m.route(Some("no_such_operation"), "/nowhere"), UNMATCHED);
    }

    #[test]
    fn render_gives_the_text_format_with_cumulative_buckets() {
        let m = metrics();
        let route = m.route(None, "/admin/users");
        m.observe_request(&route, &Method::GET, 200, Duration::from_millis(3));
        m.observe_request(&route, &Method::GET, 200, Duration::from_millis(30));
        m.observe_request(
            &route,
            &Method::from_bytes(b"BREW").unwrap(),
            405,
            Duration::from_secs(20),
        );
        m.token_issued(GrantType::RefreshToken);
        m.login_failed();
        m.login_failed();
        m.rate_limited();
        m.refresh_reuse_detected();
        let text = m.render(Some(4));
        let has = |line: &str| text.lines().any(|l| l == line);
        assert!(has(
            r#"gatehouse_http_requests_total{route="/admin/users",method="GET",status="200"} 2"#
        ));
        assert!(has(
            r#"gatehouse_http_requests_total{route="/admin/users",method="other",status="405"} 1"#
        ));
        assert!(has(
            r#"gatehouse_http_request_duration_seconds_bucket{route="/admin/users",le="0.005"} 1"#
        ));
        assert!(has(
            r#"gatehouse_http_request_duration_seconds_bucket{route="/admin/users",le="0.025"} 1"#
        ));
        assert!(has(
            r#"gatehouse_http_request_duration_seconds_bucket{route="/admin/users",le="0.05"} 2"#
        ));
        assert!(has(
            r#"gatehouse_http_request_duration_seconds_bucket{route="/admin/users",le="10"} 2"#
        ));
        assert!(has(
            r#"gatehouse_http_request_duration_seconds_bucket{route="/admin/users",le="+Inf"} 3"#
        ));
        assert!(has(
            r#"gatehouse_http_request_duration_seconds_sum{route="/admin/users"} 20.033"#
        ));
        assert!(has(
            r#"gatehouse_http_request_duration_seconds_count{route="/admin/users"} 3"#
        ));
        assert!(has(r#"gatehouse_tokens_issued_total{grant="password"} 0"#));
        assert!(has(r#"gatehouse_tokens_issued_total{grant="refresh_token"} 1"#));
        assert!(has("gatehouse_login_failures_total 2"));
        assert!(has("gatehouse_rate_limited_total 1"));
        assert!(has("gatehouse_refresh_reuse_detected_total 1"));
        assert!(has("gatehouse_mail_queue_depth 4"));
        assert!(has("# TYPE gatehouse_http_request_duration_seconds histogram"));
        assert!(!m.render(None).contains("gatehouse_mail_queue_depth"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
