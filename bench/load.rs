//! gatehouse's load generator: keep-alive HTTP/1.1 connections, each a task
//! that sends one request, reads the whole answer and sends the next (like
//! wrk), on a current-thread runtime so it takes at most one core from the
//! server. It needs per-connection state for the refresh workload (rotation
//! chains, each token presented exactly once), which is why it is ours.
//!
//! ```text
//! load --url http://127.0.0.1:8080 --workload jwks [--connections 32]
//!      [--duration 10] [--warmup 2] [--client ID:SECRET] [--users FILE]
//!      [--pid SERVER_PID] [--jwks-rate 200]
//!      [--slices 1] [--settle 0.2] [--between 'SHELL COMMAND']
//! ```
//! Workloads: trivial (GET /), jwks, discovery, client_credentials, password,
//! refresh, introspect, userinfo, password+jwks. `--users` is a file of
//! `email password` lines. Prints one JSON object per workload on stdout.
//! With `--pid`, `password` and `password+jwks` also report the server's peak
//! RSS while they ran (the kernel's high-water mark, reset first).
//!
//! With `--slices N`, the workload runs in N slices of `--duration` seconds
//! each, and between them its connections stand idle (each finishes the
//! request it has out) while `--between` runs: the bench measures the
//! workload's ceiling there, before the first slice, between each two and
//! after the last. Its last line of output is kept as JSON (`between`), and
//! each slice's rate (`slices`), so that each slice compares with the
//! ceilings measured just before and after it. The first slice follows
//! `--warmup`, the others `--settle` (the pipeline filling again); the
//! connections, and the refresh chains, carry on from slice to slice.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Clone)]
struct Options {
    addr: String,
    host: String,
    workload: String,
    connections: usize,
    duration: Duration,
    warmup: Duration,
    client: Option<(String, String)>,
    users: Vec<(String, String)>,
    pid: Option<u32>,
    jwks_rate: f64,
    slices: usize,
    settle: Duration,
    between: Option<String>,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        addr: String::new(),
        host: String::new(),
        workload: String::new(),
        connections: 32,
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(2),
        client: None,
        users: Vec::new(),
        pid: None,
        jwks_rate: 200.0,
        slices: 1,
        settle: Duration::from_millis(200),
        between: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--url" => {
                let hostport = value
                    .strip_prefix("http://")
                    .context("--url: only http:// is supported")?
                    .trim_end_matches('/');
                o.addr = hostport.to_owned();
                o.host = hostport.to_owned();
            }
            "--workload" => o.workload = value,
            "--connections" => o.connections = value.parse()?,
            "--duration" => o.duration = Duration::from_secs_f64(value.parse()?),
            "--warmup" => o.warmup = Duration::from_secs_f64(value.parse()?),
            "--client" => {
                let (id, secret) = value.split_once(':').context("--client ID:SECRET")?;
                o.client = Some((id.to_owned(), secret.to_owned()));
            }
            "--users" => {
                let text = std::fs::read_to_string(&value).with_context(|| format!("reading {value}"))?;
                o.users = text
                    .lines()
                    .filter_map(|l| l.split_once(' '))
                    .map(|(e, p)| (e.to_owned(), p.to_owned()))
                    .collect();
            }
            "--pid" => o.pid = Some(value.parse()?),
            "--jwks-rate" => o.jwks_rate = value.parse()?,
            "--slices" => o.slices = value.parse::<usize>()?.max(1),
            "--settle" => o.settle = Duration::from_secs_f64(value.parse()?),
            "--between" => o.between = Some(value),
            _ => bail!("unknown flag {flag}"),
        }
    }
    if o.addr.is_empty() || o.workload.is_empty() {
        bail!("usage: load --url http://HOST:PORT --workload NAME [...]");
    }
    Ok(o)
}

/// One keep-alive connection that reconnects when the server closes it.
struct Conn {
    addr: String,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Conn {
    fn new(addr: &str) -> Conn {
        Conn {
            addr: addr.to_owned(),
            stream: None,
            buf: Vec::with_capacity(16 * 1024),
        }
    }

    async fn send(&mut self, request: &[u8]) -> anyhow::Result<Answer> {
        // One retry on a fresh connection if a kept-alive one was closed.
        for attempt in 0..2 {
            if self.stream.is_none() {
                let s = TcpStream::connect(&self.addr).await?;
                s.set_nodelay(true)?;
                self.stream = Some(s);
                self.buf.clear();
            }
            match self.exchange(request).await {
                Ok(answer) => return Ok(answer),
                Err(e) if attempt == 0 => {
                    self.stream = None;
                    let _ = e;
                }
                Err(e) => {
                    self.stream = None;
                    return Err(e);
                }
            }
        }
        bail!("unreachable")
    }

    async fn exchange(&mut self, request: &[u8]) -> anyhow::Result<Answer> {
        let Some(stream) = self.stream.as_mut() else {
            bail!("not connected")
        };
        stream.write_all(request).await?;
        self.buf.clear();
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head) = resp.parse(&self.buf)? {
                let status = resp.code.unwrap_or(0);
                let mut length = 0usize;
                let mut close = false;
                for h in resp.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        length = std::str::from_utf8(h.value)?.trim().parse()?;
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        bail!("chunked answers are not supported");
                    } else if h.name.eq_ignore_ascii_case("connection")
                        && h.value.eq_ignore_ascii_case(b"close")
                    {
                        close = true;
                    }
                }
                while self.buf.len() < head + length {
                    if stream.read_buf(&mut self.buf).await? == 0 {
                        bail!("connection closed mid-body");
                    }
                }
                let body = self.buf[head..head + length].to_vec();
                if close {
                    self.stream = None;
                }
                return Ok(Answer { status, body });
            }
            if stream.read_buf(&mut self.buf).await? == 0 {
                bail!("connection closed");
            }
        }
    }
}

fn get(o: &Options, path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {}\r\n{extra}\r\n", o.host).into_bytes()
}

fn post_form(o: &Options, path: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n{extra}\r\n{body}",
        o.host,
        body.len()
    )
    .into_bytes()
}

fn basic(o: &Options) -> anyhow::Result<&'static str> {
    use base64::Engine as _;
    // One client per run: encoded once, not per request (the driver shares the cores).
    static HEADER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(header) = HEADER.get() {
        return Ok(header);
    }
    let (id, secret) = o.client.as_ref().context("this workload needs --client")?;
    let creds = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    Ok(HEADER.get_or_init(|| format!("Authorization: Basic {creds}\r\n")))
}

fn form_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn password_request(o: &Options, n: usize, scope: &str) -> anyhow::Result<Vec<u8>> {
    if o.users.is_empty() {
        bail!("this workload needs --users");
    }
    let (email, password) = &o.users[n % o.users.len()];
    let body = format!(
        "grant_type=password&username={}&password={}&scope={}",
        form_encode(email),
        form_encode(password),
        form_encode(scope)
    );
    Ok(post_form(o, "/oauth2/token", basic(o)?, &body))
}

fn json_field(body: &[u8], field: &str) -> anyhow::Result<String> {
    let v: serde_json::Value = serde_json::from_slice(body)?;
    v.get(field)
        .and_then(|f| f.as_str())
        .map(str::to_owned)
        .with_context(|| format!("no {field} in {}", String::from_utf8_lossy(body)))
}

/// The new refresh token of a token answer, read without building a
/// `Value` of the whole answer (the driver shares the cores with the server).
fn refresh_token_of(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Grant<'a> {
        #[serde(borrow)]
        refresh_token: Option<&'a str>,
    }
    serde_json::from_slice::<Grant<'_>>(body)
        .ok()?
        .refresh_token
        .map(str::to_owned)
}

/// What one connection saw during the measured window.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    non_2xx: u64,
    errors: u64,
    /// Paced requests: the longest the driver's own timer woke it late for
    /// a request due while its connection was free (not still waiting for
    /// the answer before). About 1 ms at rest (tokio's timer resolution),
    /// more while this one thread is busy with the flood's connections or
    /// kept from running: a stall of the whole machine shows here, not only
    /// in the server's latency.
    late_max_us: u32,
}

/// How a connection makes its next request and reads the answer.
enum Source {
    Fixed(Vec<u8>),
    /// One user per connection (the users file's line `user` modulo its
    /// length): each user has at most a few logins in flight (two, for 32
    /// connections and 16 users). Taking the users in turn, a user sometimes
    /// had more in flight than the back-off allows
    /// (`GATEHOUSE_LOGIN_BACKOFF_AFTER`, 5): an attempt counts as a failure
    /// until it succeeds (`store::login_attempt`), so the next one waited
    /// for one of them to finish (before, it was refused).
    Password {
        user: usize,
    },
    /// Rotation chains: the current refresh token of each.
    Refresh {
        chains: VecDeque<String>,
    },
}

impl Source {
    fn request(&mut self, o: &Options) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(match self {
            Source::Fixed(r) => Some(r.clone()),
            Source::Password { user } => Some(password_request(o, *user, "read")?),
            Source::Refresh { chains } => match chains.front() {
                None => None,
                Some(token) => Some(post_form(
                    o,
                    "/oauth2/token",
                    basic(o)?,
                    &format!("grant_type=refresh_token&refresh_token={}", form_encode(token)),
                )),
            },
        })
    }

    fn answered(&mut self, answer: &Answer) {
        if let Source::Refresh { chains } = self {
            chains.pop_front();
            if (200..300).contains(&answer.status) {
                // The chain continues with its new token, at the back.
                if let Some(next) = refresh_token_of(&answer.body) {
                    chains.push_back(next);
                }
            }
        }
    }
}

/// One connection's slice: requests until `until`, answers counted from
/// `measure_from`. Gives back the connection and its source for the next.
async fn closed_loop(
    o: Options,
    mut conn: Conn,
    mut source: Source,
    measure_from: Instant,
    until: Instant,
) -> (Conn, Source, Tally) {
    let mut tally = Tally::default();
    while Instant::now() < until {
        let request = match source.request(&o) {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(_) => {
                tally.errors += 1;
                break;
            }
        };
        let sent = Instant::now();
        let answer = conn.send(&request).await;
        let done = Instant::now();
        // Like wrk: every answer that arrives in the window counts.
        let measured = done >= measure_from && done <= until;
        match answer {
            Ok(answer) => {
                if measured {
                    tally
                        .latencies_us
                        .push(done.duration_since(sent).as_micros() as u32);
                    if !(200..300).contains(&answer.status) {
                        tally.non_2xx += 1;
                    }
                }
                source.answered(&answer);
            }
            Err(_) => {
                if measured {
                    tally.errors += 1;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    (conn, source, tally)
}

/// Open loop: requests due at a fixed rate; latency counts from when each
/// was due, so a stalled server is not hidden (no coordinated omission).
async fn paced(
    mut conn: Conn,
    request: Vec<u8>,
    first: Instant,
    every: Duration,
    measure_from: Instant,
    until: Instant,
) -> (Conn, Tally) {
    let mut tally = Tally::default();
    let mut due = first;
    // When the previous answer came (none before the first request).
    let mut free_since: Option<Instant> = None;
    while due < until {
        tokio::time::sleep_until(due.into()).await;
        let woke = Instant::now();
        let answer = conn.send(&request).await;
        let done = Instant::now();
        if due >= measure_from {
            if free_since.is_none_or(|free| free < due) {
                let late = woke.saturating_duration_since(due).as_micros() as u32;
                tally.late_max_us = tally.late_max_us.max(late);
            }
            match answer {
                Ok(a) => {
                    tally
                        .latencies_us
                        .push(done.duration_since(due).as_micros() as u32);
                    if !(200..300).contains(&a.status) {
                        tally.non_2xx += 1;
                    }
                }
                Err(_) => tally.errors += 1,
            }
        }
        free_since = Some(done);
        due += every;
    }
    (conn, tally)
}

/// Requests per second, to two decimals: rounded to a whole request, a
/// password flood's 45/s moved a ratio by up to 1 %, either way.
fn per_second(requests: usize, seconds: f64) -> f64 {
    (requests as f64 / seconds * 100.0).round() / 100.0
}

fn summary(tallies: Vec<Tally>, seconds: f64) -> serde_json::Value {
    let mut all: Vec<u32> = Vec::new();
    let (mut non_2xx, mut errors) = (0, 0);
    for t in tallies {
        all.extend(t.latencies_us);
        non_2xx += t.non_2xx;
        errors += t.errors;
    }
    all.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return 0.0;
        }
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        (all[i] as f64 / 10.0).round() / 100.0
    };
    serde_json::json!({
        "requests": all.len(),
        "requests_per_s": per_second(all.len(), seconds),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "non_2xx": non_2xx,
        "errors": errors,
    })
}

/// This process's CPU time (user + system) so far.
fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime, stime are fields 14, 15 of the file (11, 12 after the name); 100 Hz.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Gets `count` fresh refresh tokens (one login each), `parallel` at a time.
async fn logins(o: &Options, count: usize, field: &str, scope: &str) -> anyhow::Result<Vec<String>> {
    let out = Rc::new(RefCell::new(Vec::new()));
    let parallel = 4;
    let mut tasks = Vec::new();
    for worker in 0..parallel {
        let (o, out, field, scope) = (o.clone(), out.clone(), field.to_owned(), scope.to_owned());
        tasks.push(tokio::task::spawn_local(async move {
            let mut conn = Conn::new(&o.addr);
            let mut n = worker;
            while n < count {
                let answer = conn.send(&password_request(&o, n, &scope)?).await?;
                if answer.status != 200 {
                    bail!(
                        "login answered {}: {}",
                        answer.status,
                        String::from_utf8_lossy(&answer.body)
                    );
                }
                out.borrow_mut().push(json_field(&answer.body, &field)?);
                n += parallel;
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let tokens = out.borrow().clone();
    Ok(tokens)
}

async fn run(o: Options) -> anyhow::Result<serde_json::Value> {
    let c = o.connections;
    let mut sources: Vec<Source> = match o.workload.as_str() {
        "trivial" => (0..c).map(|_| Source::Fixed(get(&o, "/", ""))).collect(),
        "jwks" => (0..c)
            .map(|_| Source::Fixed(get(&o, "/.well-known/jwks.json", "")))
            .collect(),
        "discovery" => (0..c)
            .map(|_| Source::Fixed(get(&o, "/.well-known/openid-configuration", "")))
            .collect(),
        "client_credentials" => {
            let r = post_form(
                &o,
                "/oauth2/token",
                basic(&o)?,
                "grant_type=client_credentials&scope=read",
            );
            (0..c).map(|_| Source::Fixed(r.clone())).collect()
        }
        "password" | "password+jwks" => (0..c).map(|user| Source::Password { user }).collect(),
        "refresh" => {
            // Four chains per connection, taken in turn: each token is
            // presented once, and never two of one chain at the same time.
            let tokens = logins(&o, c * 4, "refresh_token", "read").await?;
            let mut tokens = tokens.into_iter();
            (0..c)
                .map(|_| Source::Refresh {
                    chains: tokens.by_ref().take(4).collect(),
                })
                .collect()
        }
        "introspect" | "userinfo" => {
            let tokens = logins(
                &o,
                o.users.len().clamp(1, 8),
                "access_token",
                "openid profile email",
            )
            .await?;
            (0..c)
                .map(|i| {
                    let token = &tokens[i % tokens.len()];
                    Source::Fixed(if o.workload == "introspect" {
                        post_form(
                            &o,
                            "/oauth2/introspect",
                            basic(&o).unwrap_or_default(),
                            &format!("token={token}"),
                        )
                    } else {
                        get(
                            &o,
                            "/oauth2/userinfo",
                            &format!("Authorization: Bearer {token}\r\n"),
                        )
                    })
                })
                .collect()
        }
        other => bail!("unknown workload {other}"),
    };
    let flood_memory = o.pid.filter(|_| o.workload.starts_with("password"));
    let mut conns: Vec<(Conn, Source)> = sources.drain(..).map(|s| (Conn::new(&o.addr), s)).collect();
    // Eight connections share the JWKS rate of password+jwks, staggered evenly.
    let jwks_streams = if o.workload == "password+jwks" { 8u32 } else { 0 };
    let mut jwks_conns: Vec<Conn> = (0..jwks_streams).map(|_| Conn::new(&o.addr)).collect();
    let jwks_request = get(&o, "/.well-known/jwks.json", "");
    let mut between = Vec::new();
    let mut slice_rates = Vec::new();
    let (mut tallies, mut jwks) = (Vec::new(), Vec::new());
    let mut peak_rss_kib: Option<u64> = None;
    let cpu_before = cpu_time();
    for slice in 0..o.slices {
        if let Some(command) = &o.between {
            between.push(run_between(command)?);
        }
        let started = Instant::now();
        let measure_from = started + if slice == 0 { o.warmup } else { o.settle };
        let until = measure_from + o.duration;
        let mut tasks = Vec::new();
        for (conn, source) in conns.drain(..) {
            tasks.push(tokio::task::spawn_local(closed_loop(
                o.clone(),
                conn,
                source,
                measure_from,
                until,
            )));
        }
        let mut jwks_tasks = Vec::new();
        if jwks_streams > 0 {
            let every = Duration::from_secs_f64(f64::from(jwks_streams) / o.jwks_rate);
            for (i, conn) in (0u32..).zip(jwks_conns.drain(..)) {
                jwks_tasks.push(tokio::task::spawn_local(paced(
                    conn,
                    jwks_request.clone(),
                    started + every / jwks_streams * i,
                    every,
                    measure_from,
                    until,
                )));
            }
        }
        if let Some(pid) = flood_memory {
            tokio::time::sleep_until(measure_from.into()).await;
            if peak_rss_kib.is_none() {
                // Reset the high-water mark once the flood is under way.
                let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
            }
            let mut sampled = peak_rss_kib.unwrap_or(0);
            while Instant::now() < until {
                sampled = sampled.max(status_kib(pid, "VmRSS:").unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak_rss_kib = Some(sampled);
        }
        let mut answered = 0;
        for t in tasks {
            let (conn, source, tally) = t.await?;
            answered += tally.latencies_us.len();
            conns.push((conn, source));
            tallies.push(tally);
        }
        for t in jwks_tasks {
            let (conn, tally) = t.await?;
            jwks_conns.push(conn);
            jwks.push(tally);
        }
        slice_rates.push(per_second(answered, o.duration.as_secs_f64()));
    }
    if let Some(command) = &o.between {
        between.push(run_between(command)?);
    }
    if let Some(pid) = flood_memory {
        let kib = status_kib(pid, "VmHWM:")
            .unwrap_or(0)
            .max(peak_rss_kib.unwrap_or(0));
        peak_rss_kib = Some(kib);
    }
    let cpu = cpu_time().saturating_sub(cpu_before);
    let seconds = o.duration.as_secs_f64() * o.slices as f64;
    let mut out = summary(tallies, seconds);
    let total_requests = out["requests"].as_u64().unwrap_or(0).max(1);
    out["workload"] = o.workload.clone().into();
    out["connections"] = c.into();
    out["duration_s"] = seconds.into();
    // Includes the warm-up, settling and draining (not `--between`, a child
    // process): a slight overestimate of the driver's cost.
    let settling = o.warmup.as_secs_f64() + o.settle.as_secs_f64() * (o.slices - 1) as f64;
    out["driver_cpu_us_per_request"] =
        ((cpu.as_secs_f64() * 1e6 / (total_requests as f64 * (seconds + settling) / seconds)).round()).into();
    if o.between.is_some() {
        out["slices"] = slice_rates.into();
        out["between"] = between.into();
    }
    if !jwks.is_empty() {
        let late_max_us = jwks.iter().map(|t| t.late_max_us).max().unwrap_or(0);
        out["jwks"] = summary(jwks, seconds);
        out["jwks"]["driver_late_max_ms"] = (f64::from(late_max_us) / 1000.0).into();
        out["jwks"]["rate_per_s"] = o.jwks_rate.into();
    }
    if let Some(kib) = peak_rss_kib {
        out["peak_rss_kib"] = kib.into();
    }
    Ok(out)
}

/// Runs `--between` through `sh -c` while the connections stand idle, and
/// reads the last line it printed as JSON.
fn run_between(command: &str) -> anyhow::Result<serde_json::Value> {
    let output = std::process::Command::new("sh")
        .args(["-c", command])
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {command}"))?;
    if !output.status.success() {
        bail!("{command}: {}", output.status);
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).with_context(|| format!("{command} printed {last:?}"))
}

fn main() -> anyhow::Result<()> {
    let o = options()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let out = local.block_on(&rt, run(o))?;
    println!("{out}");
    Ok(())
}
