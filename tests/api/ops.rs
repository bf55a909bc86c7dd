//! Operating it (SPEC §8): `/metrics` with template routes and the flow
//! counters, `/ready` flipping when the database goes and comes back, and the
//! real binary's JSON logs free of every secret while every flow runs.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::smtp_sink::{ReceivedMail, SmtpSink};

/// Generous limits, so only what a test means to count is counted.
fn roomy(config: &mut gatehouse::config::Config) {
    config.rate_limit_per_minute = "100000".into();
}

async fn scrape(app: &TestApp) -> String {
    let resp = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    resp.text().await.unwrap()
}

/// The value of the sample written exactly as `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_the_token_flows() {
    let app = TestApp::spawn_with(roomy).await;
    let web = app.web_client().await;
    let api = app.create_client(&["--grant", "client_credentials"]).await;
    let admin_id = app.create_user("root@example.com").await;
    app.cli(&[
        "users",
        "set-role",
        "--email",
        "root@example.com",
        "--role",
        "admin",
    ])
    .await;

    // Tokens: one per grant, a reused refresh token and two wrong passwords.
    let login = app.login(&web, "root@example.com", None).await;
    let at = login["access_token"].as_str().unwrap();
    let first_refresh = login["refresh_token"].as_str().unwrap();
    // Concrete paths under one template (before the reuse ends this login).
    let nobody = uuid::Uuid::new_v4().to_string();
    for (id, status) in [(&admin_id, 200), (&nobody, 404)] {
        let resp = app
            .http
            .get(app.url(&format!("/admin/users/{id}")))
            .bearer_auth(at)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status);
    }
    assert_eq!(app.refresh(&web, first_refresh).await.status(), 200);
    assert_eq!(app.refresh(&web, first_refresh).await.status(), 400, "reuse");
    assert_eq!(
        app.token(&api, &[("grant_type", "client_credentials")])
            .await
            .status(),
        200
    );
    for _ in 0..2 {
        let resp = app
            .token(
                &web,
                &[
                    ("grant_type", "password"),
                    ("username", "root@example.com"),
                    ("password", "not the password"),
                ],
            )
            .await;
        assert_eq!(resp.status(), 400);
    }
    let resp = app
        .http
        .get(app.url(&format!("/no/such/{nobody}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(
        app.http.get(app.url("/health")).send().await.unwrap().status(),
        200
    );

    let text = scrape(&app).await;
    let has = |series: &str, value: f64| {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    };
    has(
        r#"gatehouse_http_requests_total{route="/admin/users/{id}",method="GET",status="200"}"#,
        1.0,
    );
    has(
        r#"gatehouse_http_requests_total{route="/admin/users/{id}",method="GET",status="404"}"#,
        1.0,
    );
    has(
        r#"gatehouse_http_requests_total{route="unmatched",method="GET",status="404"}"#,
        1.0,
    );
    has(
        r#"gatehouse_http_requests_total{route="/oauth2/token",method="POST",status="200"}"#,
        3.0,
    );
    has(
        r#"gatehouse_http_requests_total{route="/oauth2/token",method="POST",status="400"}"#,
        3.0,
    );
    has(
        r#"gatehouse_http_requests_total{route="/health",method="GET",status="200"}"#,
        1.0,
    );
    assert!(
        !text.contains(&admin_id) && !text.contains(&nobody),
        "no concrete path in a label:\n{text}"
    );
    for line in text
        .lines()
        .filter(|l| l.starts_with("gatehouse_http_requests_total{"))
    {
        let status = line.split("status=\"").nth(1).unwrap();
        assert!(
            status.len() > 4 && status[..3].bytes().all(|b| b.is_ascii_digit()) && &status[3..4] == "\"",
            "numeric status label: {line}"
        );
    }

    // The latency histogram: every bucket, +Inf equal to the count, a sum.
    let buckets: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(r#"gatehouse_http_request_duration_seconds_bucket{route="/oauth2/token","#))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(buckets.len(), 12, "11 bounds and +Inf:\n{text}");
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "cumulative");
    has(
        r#"gatehouse_http_request_duration_seconds_bucket{route="/oauth2/token",le="+Inf"}"#,
        6.0,
    );
    has(
        r#"gatehouse_http_request_duration_seconds_count{route="/oauth2/token"}"#,
        6.0,
    );
    let sum = sample(
        &text,
        r#"gatehouse_http_request_duration_seconds_sum{route="/oauth2/token"}"#,
    )
    .unwrap();
    assert!(sum > 0.0 && sum < 60.0, "{sum}");
    assert!(text.contains("# TYPE gatehouse_http_request_duration_seconds histogram"));
    assert!(text.contains("# TYPE gatehouse_http_requests_total counter"));

    // The flows' own counters.
    has(r#"gatehouse_tokens_issued_total{grant="password"}"#, 1.0);
    has(r#"gatehouse_tokens_issued_total{grant="refresh_token"}"#, 1.0);
    has(
        r#"gatehouse_tokens_issued_total{grant="client_credentials"}"#,
        1.0,
    );
    has("gatehouse_login_failures_total", 2.0);
    has("gatehouse_refresh_reuse_detected_total", 1.0);
    has("gatehouse_rate_limited_total", 0.0);
    has("gatehouse_mail_queue_depth", 0.0);
    assert!(text.contains("# TYPE gatehouse_mail_queue_depth gauge"));

    // The scrape itself is counted, under its own route.
    let again = scrape(&app).await;
    assert_eq!(
        sample(
            &again,
            r#"gatehouse_http_requests_total{route="/metrics",method="GET",status="200"}"#
        ),
        Some(1.0)
    );
    // Not part of the API document.
    let spec: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["paths"].get("/metrics").is_none());
}

#[tokio::test]
async fn metrics_count_rate_limited_requests() {
    let app = TestApp::spawn_with(|c| c.rate_limit_per_minute = "2".into()).await;
    let web = app.web_client().await;
    let mut refused = 0;
    for _ in 0..6 {
        let resp = app
            .token(
                &web,
                &[("grant_type", "refresh_token"), ("refresh_token", "ghr_x")],
            )
            .await;
        if resp.status() == 429 {
            refused += 1;
        }
    }
    assert!(refused > 0, "the limit applied");
    let text = scrape(&app).await;
    assert_eq!(
        sample(&text, "gatehouse_rate_limited_total"),
        Some(f64::from(refused))
    );
    assert_eq!(
        sample(
            &text,
            r#"gatehouse_http_requests_total{route="/oauth2/token",method="POST",status="429"}"#
        ),
        Some(f64::from(refused))
    );
}

#[tokio::test]
async fn mail_queue_depth_counts_messages_waiting_to_be_sent() {
    let sink = SmtpSink::start().await;
    let url = sink.url();
    let app = TestApp::spawn_with(move |c| {
        roomy(c);
        c.smtp_url = Some(url);
    })
    .await;
    sink.defer(true);
    let resp = app
        .http
        .post(app.url("/accounts"))
        .json(&json!({"email": "ada@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);

    let depth = |want: f64| {
        let app = &app;
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let text = scrape(app).await;
                let got = sample(&text, "gatehouse_mail_queue_depth");
                if got == Some(want) {
                    return;
                }
                assert!(Instant::now() < deadline, "queue depth {got:?}, wanted {want}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // Deferred by the server: still queued.
    let deadline = Instant::now() + Duration::from_secs(5);
    while sink.deferred().is_empty() {
        assert!(Instant::now() < deadline, "the first attempt was deferred");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    depth(1.0).await;
    sink.defer(false);
    sink.wait_for(1, Duration::from_secs(10)).await;
    depth(0.0).await;
}

// ---------------------------------------------------------------------------
// /ready

/// A TCP proxy in front of PostgreSQL that can cut every connection and
/// refuse new ones, then let them through again.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    cut: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(tokio::sync::watch::channel(0_u64).0);
        let (up2, cut2) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                // Subscribing marks the current generation as seen.
                let mut cut = cut2.subscribe();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy { port, up, cut }
    }

    /// The database is gone: open connections drop, new ones are refused.
    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|generation| *generation += 1);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// `(scheme://userinfo@, host:port, /rest)` of a database URL.
fn split_url(url: &str) -> (String, String, String) {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h.to_owned()),
        None => (String::new(), authority.to_owned()),
    };
    let host = if host.contains(':') {
        host
    } else {
        format!("{host}:5432")
    };
    (format!("{scheme}://{userinfo}"), host, path.to_owned())
}

/// `GET /ready`: its status, its `status` field and how long it took.
async fn ready(app: &TestApp) -> (u16, String, Duration) {
    let started = Instant::now();
    let resp = app.http.get(app.url("/ready")).send().await.unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    (
        status,
        body["status"].as_str().unwrap_or_default().to_owned(),
        started.elapsed(),
    )
}

async fn ready_within(app: &TestApp, want: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (status, _, _) = ready(app).await;
        if status == want {
            return;
        }
        assert!(Instant::now() < deadline, "/ready stayed {status}, wanted {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SQLite: the file is moved away (pooled connections keep it open, so
/// `/ready` opens it afresh), then moved back. PostgreSQL: a proxy drops
/// every connection and refuses new ones, then lets them through again.
/// Either way `/ready` answers 503 within the ping timeout and 200 again by
/// itself, with no restart.
#[tokio::test]
async fn ready_answers_503_fast_while_the_database_is_gone_and_recovers_by_itself() {
    let postgres = std::env::var("GATEHOUSE_TEST_DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"));
    let proxy = match &postgres {
        Some(url) => Some(Proxy::start(split_url(url).1).await),
        None => None,
    };
    let proxy_port = proxy.as_ref().map(|p| p.port);
    let app = TestApp::spawn_with(move |c| {
        if let Some(port) = proxy_port {
            let (prefix, _, path) = split_url(&c.database_url);
            c.database_url = format!("{prefix}127.0.0.1:{port}{path}");
        }
    })
    .await;
    assert_eq!(ready(&app).await.0, 200);

    let db_file = app.dir.path().join("gatehouse.db");
    let away = app.dir.path().join("gatehouse.db.away");
    match &proxy {
        Some(proxy) => proxy.cut(),
        None => std::fs::rename(&db_file, &away).unwrap(),
    }
    let (status, body, took) = ready(&app).await;
    assert_eq!((status, body.as_str()), (503, "unavailable"));
    assert!(
        took < gatehouse::store::PING_TIMEOUT + Duration::from_secs(2),
        "answered in {took:?}"
    );
    // Still down a moment later, and the process still serves.
    assert_eq!(ready(&app).await.0, 503);
    assert_eq!(
        app.http.get(app.url("/health")).send().await.unwrap().status(),
        200
    );

    match &proxy {
        Some(proxy) => proxy.restore(),
        None => std::fs::rename(&away, &db_file).unwrap(),
    }
    ready_within(&app, 200, Duration::from_secs(15)).await;
    // And the database really serves again.
    let client = app.web_client().await;
    app.create_user("ada@example.com").await;
    app.login(&client, "ada@example.com", None).await;
}

// ---------------------------------------------------------------------------
// The log grep

fn gatehouse() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    for (key, _) in std::env::vars() {
        if key.starts_with("GATEHOUSE_") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// The real binary, its environment and its captured output.
struct Served {
    child: std::process::Child,
    base: String,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
    log: PathBuf,
    /// Standard error of the CLI runs.
    cli_log: String,
    http: reqwest::Client,
}

impl Served {
    async fn start() -> Served {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let env: Vec<(String, String)> = [
            ("GATEHOUSE_LISTEN", format!("127.0.0.1:{port}")),
            ("GATEHOUSE_DATABASE_URL", fresh_database(dir.path()).await),
            (
                "GATEHOUSE_KEYS_DIR",
                dir.path().join("keys").display().to_string(),
            ),
            (
                "GATEHOUSE_MAIL_OUTBOX",
                dir.path().join("outbox").display().to_string(),
            ),
            ("GATEHOUSE_LOG_FORMAT", "json".into()),
            ("GATEHOUSE_RATE_LIMIT_PER_MINUTE", "100000".into()),
            ("GATEHOUSE_LOGIN_BACKOFF_AFTER", "3".into()),
            // Everything of ours, and debug from every library but sqlx's statements.
            ("RUST_LOG", "debug,gatehouse=trace,sqlx=warn".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let log = dir.path().join("server.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = gatehouse()
            .current_dir(dir.path())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let served = Served {
            child,
            base: format!("http://127.0.0.1:{port}"),
            env,
            dir,
            log,
            cli_log: String::new(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(resp) = served.http.get(served.url("/ready")).send().await
                && resp.status() == 200
            {
                break;
            }
            assert!(Instant::now() < deadline, "the server became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        served
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A CLI command run by the same binary on the same database and keys.
    fn cli(&mut self, args: &[&str], input: &str) -> Value {
        use std::io::Write;
        let mut child = gatehouse()
            .current_dir(self.dir.path())
            .envs(
                self.env
                    .iter()
                    .filter(|(k, _)| k != "GATEHOUSE_LISTEN")
                    .map(|(k, v)| (k, v)),
            )
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        self.cli_log.push_str(&String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "gatehouse {args:?}: {}", self.cli_log);
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn outbox(&self) -> PathBuf {
        self.dir.path().join("outbox")
    }

    /// The token of the first link to `path` in a not yet `seen` outbox message.
    async fn mailed_token(&self, path: &str, seen: &mut HashSet<String>) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for entry in std::fs::read_dir(self.outbox()).into_iter().flatten().flatten() {
                let file = entry.path();
                if file.extension().is_none_or(|e| e != "eml") {
                    continue;
                }
                let Ok(raw) = std::fs::read_to_string(&file) else {
                    continue;
                };
                if let Some(token) = ReceivedMail::parse(&raw).token(path)
                    && seen.insert(token.clone())
                {
                    return token;
                }
            }
            assert!(Instant::now() < deadline, "a mail with a {path} link");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then the whole captured output.
    async fn stop(mut self) -> (String, String) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        let exit = loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                break exit;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("no exit within 30 s of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(exit.code(), Some(0), "exit 0 after SIGTERM");
        (std::fs::read_to_string(&self.log).unwrap(), self.cli_log.clone())
    }
}

const USER_PASSWORD: &str = "Sekrit-Passw0rd-XYZZY-123";
const CHANGED_PASSWORD: &str = "Sekrit-Passw0rd-PLUGH-456";
const RESET_PASSWORD: &str = "Sekrit-Passw0rd-FROTZ-789";
const FORM_RESET_PASSWORD: &str = "Sekrit-Passw0rd-GNUSTO-246";
const ADMIN_PASSWORD: &str = "Sekrit-Passw0rd-REZROV-135";
const WRONG_PASSWORD: &str = "Sekrit-Wr0ng-Guess-YOMIN-802";
const FOREIGN_BEARER: &str = "Sekrit-Bearer-Garbage-NITFOL-000";

/// What to look for: the secret itself and, for tokens, the part after the
/// prefix and each JWT segment that carries it (the signature).
fn fingerprints(secret: &str) -> Vec<String> {
    let mut out = vec![secret.to_owned()];
    if let Some((_, random)) = secret.split_once('_') {
        out.push(random.to_owned());
    }
    if secret.matches('.').count() == 2 {
        out.push(secret.rsplit('.').next().unwrap().to_owned());
    }
    out.retain(|s| s.len() >= 16);
    out
}

fn basic(id: &str, secret: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
}

/// Every flow, with recognisable secrets, through the real binary with JSON
/// logs at debug level; then not one secret in the output, which still holds
/// one line per request and the security events.
#[tokio::test]
async fn no_secret_reaches_the_logs_while_every_flow_runs() {
    let mut s = Served::start().await;
    let mut secrets: Vec<(&'static str, String)> = [
        USER_PASSWORD,
        CHANGED_PASSWORD,
        RESET_PASSWORD,
        FORM_RESET_PASSWORD,
        ADMIN_PASSWORD,
        WRONG_PASSWORD,
        FOREIGN_BEARER,
    ]
    .into_iter()
    .map(|p| ("password", p.to_owned()))
    .collect();
    let mut keep = |what: &'static str, value: &Value| {
        if let Some(v) = value.as_str() {
            secrets.push((what, v.to_owned()));
        }
    };

    // CLI: a confidential client and an admin.
    let web = s.cli(
        &[
            "clients",
            "create",
            "--name",
            "web",
            "--grant",
            "password",
            "--grant",
            "refresh_token",
        ],
        "",
    );
    let web_id = web["client_id"].as_str().unwrap().to_owned();
    let web_secret = web["client_secret"].as_str().unwrap().to_owned();
    keep("client secret", &web["client_secret"]);
    keep("basic credentials", &json!(basic(&web_id, &web_secret)));
    s.cli(
        &[
            "users",
            "create",
            "--email",
            "root@example.com",
            "--password-stdin",
            "--verified",
        ],
        ADMIN_PASSWORD,
    );
    s.cli(
        &[
            "users",
            "set-role",
            "--email",
            "root@example.com",
            "--role",
            "admin",
        ],
        "",
    );
    let http = s.http.clone();
    let token = |form: Vec<(&'static str, String)>| {
        let req = http.post(s.url("/oauth2/token"));
        let (id, secret) = (web_id.clone(), web_secret.clone());
        async move { req.basic_auth(id, Some(secret)).form(&form).send().await.unwrap() }
    };
    let json_of = |resp: reqwest::Response| async move {
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        (status.as_u16(), body)
    };

    // Open endpoints.
    for path in [
        "/health",
        "/ready",
        "/metrics",
        "/.well-known/openid-configuration",
        "/.well-known/jwks.json",
        "/openapi.json",
        "/docs",
    ] {
        http.get(s.url(path)).send().await.unwrap();
    }

    // Register, verify by the page and by the API.
    let mut seen = HashSet::new();
    let resp = http
        .post(s.url("/accounts"))
        .json(&json!({"email": "lee@example.com", "password": USER_PASSWORD, "name": "Lee"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let verification = s.mailed_token("/verify-email", &mut seen).await;
    keep("verification token", &json!(verification));
    let page = http
        .get(s.url(&format!("/verify-email?token={verification}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let resp = http
        .post(s.url("/accounts/verify-email"))
        .json(&json!({"token": verification}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = http
        .post(s.url("/verify-email"))
        .form(&[("token", verification.as_str())])
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error(), "used once already");

    // Password grant (Basic, then secret in the body), userinfo, introspection.
    let (status, login) = json_of(
        token(vec![
            ("grant_type", "password".into()),
            ("username", "lee@example.com".into()),
            ("password", USER_PASSWORD.into()),
            ("scope", "openid profile email".into()),
        ])
        .await,
    )
    .await;
    assert_eq!(status, 200, "{login}");
    for field in ["access_token", "refresh_token", "id_token"] {
        keep("token", &login[field]);
    }
    let at = login["access_token"].as_str().unwrap().to_owned();
    let rt = login["refresh_token"].as_str().unwrap().to_owned();
    let (status, body) = json_of(
        http.post(s.url("/oauth2/token"))
            .form(&[
                ("grant_type", "password"),
                ("username", "lee@example.com"),
                ("password", USER_PASSWORD),
                ("client_id", &web_id),
                ("client_secret", &web_secret),
            ])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    keep("token", &body["access_token"]);
    keep("token", &body["refresh_token"]);
    for method in [reqwest::Method::GET, reqwest::Method::POST] {
        let resp = http
            .request(method, s.url("/oauth2/userinfo"))
            .bearer_auth(&at)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    for t in [&at, &rt, &FOREIGN_BEARER.to_owned()] {
        let resp = http
            .post(s.url("/oauth2/introspect"))
            .basic_auth(&web_id, Some(&web_secret))
            .form(&[("token", t.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(
        http.get(s.url("/oauth2/userinfo"))
            .bearer_auth(FOREIGN_BEARER)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // A wrong client secret, in Basic.
    let resp = http
        .post(s.url("/oauth2/token"))
        .basic_auth(&web_id, Some(WRONG_PASSWORD))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", rt.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // Refresh, reuse (the chain ends), then a new login's refresh token revoked.
    let (status, refreshed) = json_of(
        token(vec![
            ("grant_type", "refresh_token".into()),
            ("refresh_token", rt.clone()),
        ])
        .await,
    )
    .await;
    assert_eq!(status, 200, "{refreshed}");
    for field in ["access_token", "refresh_token", "id_token"] {
        keep("token", &refreshed[field]);
    }
    let (status, _) = json_of(
        token(vec![
            ("grant_type", "refresh_token".into()),
            ("refresh_token", rt.clone()),
        ])
        .await,
    )
    .await;
    assert_eq!(status, 400, "reuse");
    let (_, again) = json_of(
        token(vec![
            ("grant_type", "password".into()),
            ("username", "lee@example.com".into()),
            ("password", USER_PASSWORD.into()),
        ])
        .await,
    )
    .await;
    keep("token", &again["access_token"]);
    keep("token", &again["refresh_token"]);
    for t in ["refresh_token", "access_token"] {
        let resp = http
            .post(s.url("/oauth2/revoke"))
            .basic_auth(&web_id, Some(&web_secret))
            .form(&[("token", again[t].as_str().unwrap())])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }

    // Wrong passwords: on the account (below the back-off), and on a name
    // nobody has until the back-off starts.
    let (status, _) = json_of(
        token(vec![
            ("grant_type", "password".into()),
            ("username", "lee@example.com".into()),
            ("password", WRONG_PASSWORD.into()),
        ])
        .await,
    )
    .await;
    assert_eq!(status, 400);
    for _ in 0..4 {
        let (status, _) = json_of(
            token(vec![
                ("grant_type", "password".into()),
                ("username", "ghost@example.com".into()),
                ("password", WRONG_PASSWORD.into()),
            ])
            .await,
        )
        .await;
        assert_eq!(status, 400);
    }

    // The account: profile, password change (wrong current one first),
    // malformed bodies holding a password.
    let (_, fresh) = json_of(
        token(vec![
            ("grant_type", "password".into()),
            ("username", "lee@example.com".into()),
            ("password", USER_PASSWORD.into()),
        ])
        .await,
    )
    .await;
    keep("token", &fresh["access_token"]);
    keep("token", &fresh["refresh_token"]);
    let fresh_at = fresh["access_token"].as_str().unwrap().to_owned();
    let me = http
        .get(s.url("/accounts/me"))
        .bearer_auth(&fresh_at)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    let patch = http
        .patch(s.url("/accounts/me"))
        .bearer_auth(&fresh_at)
        .json(&json!({"name": "Lee L."}))
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), 200);
    for (current, status) in [(WRONG_PASSWORD, 403), (USER_PASSWORD, 204)] {
        let resp = http
            .post(s.url("/accounts/me/password"))
            .bearer_auth(&fresh_at)
            .json(&json!({"current_password": current, "new_password": CHANGED_PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status);
    }
    for body in [
        json!({"email": 5, "password": USER_PASSWORD}),
        json!({"email": "x@example.com", "password": [USER_PASSWORD]}),
    ] {
        let resp = http.post(s.url("/accounts")).json(&body).send().await.unwrap();
        assert!(resp.status().is_client_error(), "{}", resp.status());
    }
    let resp = http
        .post(s.url("/accounts"))
        .header("content-type", "application/json")
        .body(format!(
            "{{\"email\":\"x@example.com\",\"password\":\"{USER_PASSWORD}\""
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = http
        .post(s.url("/oauth2/token"))
        .form(&[
            ("grant_type", WRONG_PASSWORD),
            ("client_id", &web_id),
            ("client_secret", &web_secret),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    // Password reset: by the API, then by the page's form.
    let resp = http
        .post(s.url("/accounts/password-reset"))
        .json(&json!({"email": "lee@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let reset = s.mailed_token("/reset-password", &mut seen).await;
    keep("reset token", &json!(reset));
    let page = http
        .get(s.url(&format!("/reset-password?token={reset}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let resp = http
        .post(s.url("/accounts/password-reset/confirm"))
        .json(&json!({"token": reset, "new_password": RESET_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = http
        .post(s.url("/accounts/password-reset"))
        .json(&json!({"email": "lee@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let reset = s.mailed_token("/reset-password", &mut seen).await;
    keep("reset token", &json!(reset));
    let resp = http
        .post(s.url("/reset-password"))
        .form(&[("token", reset.as_str()), ("new_password", FORM_RESET_PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // The admin API: users, a client created and its secret rotated, a key rotation.
    let (status, admin) = json_of(
        token(vec![
            ("grant_type", "password".into()),
            ("username", "root@example.com".into()),
            ("password", ADMIN_PASSWORD.into()),
        ])
        .await,
    )
    .await;
    assert_eq!(status, 200, "{admin}");
    keep("token", &admin["access_token"]);
    keep("token", &admin["refresh_token"]);
    let admin_at = admin["access_token"].as_str().unwrap().to_owned();
    let call = |method: reqwest::Method, path: String, body: Option<Value>| {
        let mut req = http.request(method, s.url(&path)).bearer_auth(&admin_at);
        if let Some(body) = body {
            req = req.json(&body);
        }
        async move { req.send().await.unwrap() }
    };
    let (status, users) = json_of(call(reqwest::Method::GET, "/admin/users".into(), None).await).await;
    assert_eq!(status, 200, "{users}");
    let lee_id = users["users"]
        .as_array()
        .and_then(|all| all.iter().find(|u| u["email"] == "lee@example.com"))
        .map(|u| u["id"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("lee in {users}"));
    let resp = call(reqwest::Method::GET, format!("/admin/users/{lee_id}"), None).await;
    assert_eq!(resp.status(), 200);
    let (status, created) = json_of(
        call(
            reqwest::Method::POST,
            "/admin/clients".into(),
            Some(json!({"name": "api", "grant_types": ["client_credentials"], "scopes": ["reports"]})),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201, "{created}");
    keep("client secret", &created["client_secret"]);
    let api_id = created["client_id"].as_str().unwrap().to_owned();
    let (status, rotated) = json_of(
        call(
            reqwest::Method::POST,
            format!("/admin/clients/{api_id}/secret"),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    keep("client secret", &rotated["client_secret"]);
    let api_secret = rotated["client_secret"].as_str().unwrap().to_owned();
    keep("basic credentials", &json!(basic(&api_id, &api_secret)));
    let (status, cc) = json_of(
        http.post(s.url("/oauth2/token"))
            .basic_auth(&api_id, Some(&api_secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{cc}");
    keep("token", &cc["access_token"]);
    let resp = call(reqwest::Method::POST, "/admin/keys/rotate".into(), None).await;
    assert!(resp.status().is_success(), "{}", resp.status());

    // The account goes: logout everywhere, then delete (wrong password first).
    let mut sign_in = async || {
        let (status, login) = json_of(
            token(vec![
                ("grant_type", "password".into()),
                ("username", "lee@example.com".into()),
                ("password", FORM_RESET_PASSWORD.into()),
            ])
            .await,
        )
        .await;
        assert_eq!(status, 200, "{login}");
        keep("token", &login["access_token"]);
        keep("token", &login["refresh_token"]);
        login["access_token"].as_str().unwrap().to_owned()
    };
    let resp = http
        .post(s.url("/accounts/me/logout-all"))
        .bearer_auth(sign_in().await)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let last_at = sign_in().await;
    for (password, status) in [(WRONG_PASSWORD, 403), (FORM_RESET_PASSWORD, 204)] {
        let resp = http
            .delete(s.url("/accounts/me"))
            .bearer_auth(&last_at)
            .json(&json!({"password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status);
    }

    let (log, cli_log) = s.stop().await;

    // The output is JSON, one object per line, and says what happened.
    assert!(!log.trim().is_empty(), "the server logged");
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.iter().all(Value::is_object));
    let requests: Vec<&Value> = lines.iter().filter(|l| l["message"] == "request").collect();
    assert!(requests.len() > 30, "one line per request: {}", requests.len());
    for line in &requests {
        assert!(
            line["request_id"].as_str().is_some_and(|id| !id.is_empty()),
            "{line}"
        );
        assert!(line["method"].is_string() && line["route"].is_string(), "{line}");
        assert!(
            line["status"].is_u64() && line["latency_ms"].is_number(),
            "{line}"
        );
        assert!(line.get("path").is_none(), "the template, not the path: {line}");
    }
    let routed = |route: &str, status: u64| {
        requests
            .iter()
            .any(|l| l["route"] == route && l["status"] == status)
    };
    assert!(routed("/oauth2/token", 200));
    assert!(routed("/admin/users/{id}", 200));
    assert!(routed("/verify-email", 200));
    assert!(!log.contains(&format!("/admin/users/{lee_id}")));
    let events: HashSet<&str> = lines.iter().filter_map(|l| l["event"].as_str()).collect();
    for event in [
        "login_failed",
        "account_locked",
        "refresh_reuse_detected",
        "key_rotated",
    ] {
        assert!(events.contains(event), "event {event} in {events:?}");
    }
    // Security events carry the request id of the request that caused them.
    let failed = lines.iter().find(|l| l["event"] == "login_failed").unwrap();
    let in_span = |l: &Value| {
        l["span"]["request_id"].is_string()
            || l["spans"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["request_id"].is_string()))
    };
    assert!(in_span(failed), "request id on {failed}");

    // And not one secret, anywhere.
    let everything = format!("{log}\n{cli_log}");
    for (what, secret) in &secrets {
        for print in fingerprints(secret) {
            if let Some(line) = everything.lines().find(|l| l.contains(&print)) {
                panic!("a {what} is in the logs: {line}");
            }
        }
    }
    let lower = everything.to_ascii_lowercase();
    for needle in [
        "authorization: basic",
        "authorization: bearer",
        "basic ",
        "bearer ey",
    ] {
        assert!(!lower.contains(needle), "{needle:?} in the logs");
    }
    assert!(
        secrets.iter().filter(|(what, _)| *what == "token").count() >= 15,
        "the tokens were collected"
    );
}

#[tokio::test]
async fn access_lines_reach_the_log_soon_and_none_is_lost_at_shutdown() {
    // Lines are buffered and written by a thread every few milliseconds:
    // the first arrives soon, and none of a burst is lost by the SIGTERM
    // that follows it at once.
    let app = TestApp::spawn().await;
    let server = ServerProcess::start(&app, &[("GATEHOUSE_LOG_FORMAT", "json")]).await;
    let lines_with = |id: &str| {
        server
            .output()
            .lines()
            .filter(|l| l.contains(&format!("\"request_id\":\"{id}\"")))
            .count()
    };

    let started = Instant::now();
    let resp = server
        .http
        .get(server.url("/health"))
        .header("x-request-id", "soon-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    while lines_with("soon-1") == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "no access line within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("access line written {:?} after the request", started.elapsed());

    // About 600 KiB of lines, then SIGTERM at once.
    for n in 0..2000 {
        server
            .http
            .get(server.url("/health"))
            .header("x-request-id", format!("burst-{n}"))
            .send()
            .await
            .unwrap();
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // "shutting down" is logged after every request line, and written last.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.output().contains("\"message\":\"shutting down\"") {
        assert!(Instant::now() < deadline, "no shutdown line within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = server.output();
    for n in [0, 999, 1999] {
        assert_eq!(lines_with(&format!("burst-{n}")), 1, "line of burst-{n}");
    }
    let burst = log
        .lines()
        .filter(|l| l.contains("\"request_id\":\"burst-"))
        .count();
    assert_eq!(burst, 2000, "every line of the burst is in the log");
}
