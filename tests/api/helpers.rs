//! `TestApp`: a real server on an ephemeral port, its own keys and database.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use gatehouse::app::Application;
use gatehouse::cli::Cli;
use gatehouse::config::Config;
use serde_json::Value;
use sqlx::Connection;
use sqlx::Executor;

pub struct TestApp {
    /// e.g. `http://127.0.0.1:41234`, also the issuer.
    pub base: String,
    pub http: reqwest::Client,
    pub config: Config,
    pub dir: std::sync::Arc<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// A client as printed by `gatehouse clients create`.
#[derive(Debug, Clone)]
pub struct TestClient {
    pub id: String,
    pub secret: Option<String>,
}

pub const PASSWORD: &str = "correct horse battery staple";

fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        // Kept for the whole test run: the writer thread lives as long as the process.
        std::mem::forget(gatehouse::telemetry::init(gatehouse::config::LogFormat::Pretty));
    }
}

/// A fresh database: a new PostgreSQL database under
/// `GATEHOUSE_TEST_DATABASE_URL` when set, else a SQLite file in `dir`.
///
/// A PostgreSQL database is named after the test process
/// (`gatehouse_test_<pid>_<uuid>`) and outlives it. The first test of a run
/// drops those of processes that have ended: what earlier runs left.
pub async fn fresh_database(dir: &std::path::Path) -> String {
    match std::env::var("GATEHOUSE_TEST_DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => {
            sqlx::any::install_default_drivers();
            let mut conn = sqlx::AnyConnection::connect(&url)
                .await
                .expect("connect to PostgreSQL");
            static SWEPT: AtomicBool = AtomicBool::new(false);
            if !SWEPT.swap(true, Ordering::SeqCst) {
                drop_abandoned_databases(&mut conn).await;
            }
            let name = format!(
                "gatehouse_test_{}_{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            );
            conn.execute(format!("create database {name}").as_str())
                .await
                .expect("create database");
            let _ = conn.close().await;
            let (base, _) = url.rsplit_once('/').expect("a database URL with a path");
            format!("{base}/{name}")
        }
        _ => format!("sqlite://{}", dir.join("gatehouse.db").display()),
    }
}

/// Drops the test databases of processes that have ended, the unit tests'
/// included, and those whose name carries no process id (made before it
/// did). Best effort: a database still in use stays. Only where `/proc`
/// tells which processes run.
async fn drop_abandoned_databases(conn: &mut sqlx::AnyConnection) {
    if !std::path::Path::new("/proc/self").exists() {
        return;
    }
    let names: Vec<(String,)> =
        sqlx::query_as("select datname::text from pg_database where datname like 'gatehouse\\_test\\_%'")
            .fetch_all(&mut *conn)
            .await
            .unwrap_or_default();
    for (name,) in names {
        let owner = name
            .trim_start_matches("gatehouse_test_")
            .split_once('_')
            .and_then(|(pid, _)| pid.parse::<u32>().ok());
        let running = owner.is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if !running {
            let _ = conn
                .execute(format!("drop database if exists \"{name}\"").as_str())
                .await;
        }
    }
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        TestApp::spawn_with(|_| {}).await
    }

    /// Spawns with the test defaults changed by `tweak`.
    pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
        init_logs();
        let dir = tempfile::tempdir().expect("temp dir");
        let url = fresh_database(dir.path()).await;
        let mut config = Config::for_tests(dir.path(), &url);
        tweak(&mut config);
        TestApp::start(config, std::sync::Arc::new(dir)).await
    }

    /// A second instance on the same database and keys directory.
    pub async fn spawn_sibling(&self) -> TestApp {
        let mut config = self.config.clone();
        config.listen = "127.0.0.1:0".into();
        config.issuer = Some(self.base.clone());
        TestApp::start_at(config, self.dir.clone()).await
    }

    async fn start(mut config: Config, dir: std::sync::Arc<tempfile::TempDir>) -> TestApp {
        // Port 0: the server binds first, and the issuer names the real port.
        config.listen = "127.0.0.1:0".into();
        TestApp::start_at(config, dir).await
    }

    async fn start_at(mut config: Config, dir: std::sync::Arc<tempfile::TempDir>) -> TestApp {
        let settings = config.settings().expect("valid test settings");
        let app = Application::build(settings).await.expect("application builds");
        let port = app.port();
        let base = config
            .issuer
            .clone()
            .unwrap_or_else(|| format!("http://127.0.0.1:{port}"));
        config.listen = format!("127.0.0.1:{port}");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(app.run_until(async move {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        config.issuer = Some(base.clone());
        TestApp {
            base,
            http,
            config,
            dir,
            stop: Some(stop),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Runs a CLI command against this app's database and keys; returns its JSON.
    pub async fn cli(&self, args: &[&str]) -> Value {
        self.try_cli(args, "")
            .await
            .unwrap_or_else(|e| panic!("gatehouse {args:?} failed: {e:#}"))
    }

    /// Runs a CLI command with `input` on standard input.
    pub async fn try_cli(&self, args: &[&str], input: &str) -> anyhow::Result<Value> {
        let keys_dir = self.config.keys_dir.display().to_string();
        let mut argv = vec![
            "gatehouse",
            "--database-url",
            &self.config.database_url,
            "--keys-dir",
            &keys_dir,
            "--jwks-max-age",
            &self.config.jwks_max_age,
            "--access-token-ttl",
            &self.config.access_token_ttl,
        ];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv)?;
        let settings = cli.config.settings()?;
        let mut out = Vec::new();
        let mut input = std::io::Cursor::new(input.as_bytes().to_vec());
        gatehouse::cli::execute(cli.command.expect("a command"), settings, &mut input, &mut out).await?;
        Ok(serde_json::from_slice(&out)?)
    }

    /// `clients create` with the given flags.
    pub async fn create_client(&self, flags: &[&str]) -> TestClient {
        let mut args = vec!["clients", "create", "--name", "test"];
        args.extend_from_slice(flags);
        let v = self.cli(&args).await;
        TestClient {
            id: v["client_id"].as_str().expect("client_id").to_owned(),
            secret: v["client_secret"].as_str().map(str::to_owned),
        }
    }

    /// A confidential client with the password and refresh grants.
    pub async fn web_client(&self) -> TestClient {
        self.create_client(&["--grant", "password", "--grant", "refresh_token"])
            .await
    }

    /// A verified user with [`PASSWORD`]; returns its id.
    pub async fn create_user(&self, email: &str) -> String {
        let v = self
            .try_cli(
                &[
                    "users",
                    "create",
                    "--email",
                    email,
                    "--password-stdin",
                    "--verified",
                ],
                PASSWORD,
            )
            .await
            .expect("users create");
        v["id"].as_str().expect("id").to_owned()
    }

    /// POST /oauth2/token with Basic auth when the client has a secret.
    pub async fn token(&self, client: &TestClient, form: &[(&str, &str)]) -> reqwest::Response {
        self.post_form("/oauth2/token", client, form).await
    }

    /// POST a form to `path`, authenticating `client` (Basic, or client_id in the body).
    pub async fn post_form(
        &self,
        path: &str,
        client: &TestClient,
        form: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut fields: Vec<(&str, &str)> = form.to_vec();
        let mut req = self.http.post(self.url(path));
        match &client.secret {
            Some(secret) => req = req.basic_auth(&client.id, Some(secret)),
            None => fields.push(("client_id", &client.id)),
        }
        req.form(&fields).send().await.expect("request sent")
    }

    /// A successful password grant's JSON.
    pub async fn login(&self, client: &TestClient, email: &str, scope: Option<&str>) -> Value {
        let mut form = vec![
            ("grant_type", "password"),
            ("username", email),
            ("password", PASSWORD),
        ];
        if let Some(scope) = scope {
            form.push(("scope", scope));
        }
        let resp = self.token(client, &form).await;
        assert_eq!(resp.status(), 200, "login failed");
        resp.json().await.expect("token JSON")
    }

    pub async fn refresh(&self, client: &TestClient, refresh_token: &str) -> reqwest::Response {
        self.token(
            client,
            &[("grant_type", "refresh_token"), ("refresh_token", refresh_token)],
        )
        .await
    }

    /// `POST /oauth2/revoke` of `token` by `client` (RFC 7009), no hint.
    pub async fn revoke(&self, client: &TestClient, token: &str) -> reqwest::Response {
        self.post_form("/oauth2/revoke", client, &[("token", token)])
            .await
    }

    pub async fn introspect(&self, client: &TestClient, token: &str) -> Value {
        let resp = self
            .post_form("/oauth2/introspect", client, &[("token", token)])
            .await;
        assert_eq!(resp.status(), 200);
        resp.json().await.expect("introspection JSON")
    }

    pub async fn userinfo(&self, access_token: &str) -> reqwest::Response {
        self.http
            .get(self.url("/oauth2/userinfo"))
            .bearer_auth(access_token)
            .send()
            .await
            .expect("request sent")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Decodes a JWT's header and claims without checking anything.
pub fn jwt_parts(token: &str) -> (Value, Value) {
    use base64::Engine;
    let mut parts = token.split('.');
    let mut decode = |what: &str| -> Value {
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts.next().unwrap_or_else(|| panic!("no {what}")))
            .expect("base64url");
        serde_json::from_slice(&b).expect("JSON")
    };
    let header = decode("header");
    let claims = decode("claims");
    (header, claims)
}

// ---------------------------------------------------------------------------
// Real server processes, a database proxy and direct SQL, for the cluster
// and fault tests: several instances are several processes in production.

/// Is the test database PostgreSQL (`GATEHOUSE_TEST_DATABASE_URL`)?
pub fn on_postgres() -> bool {
    std::env::var("GATEHOUSE_TEST_DATABASE_URL").is_ok_and(|u| u.starts_with("postgres"))
}

/// The `gatehouse` binary, without the GATEHOUSE_* variables of the test's
/// own environment.
pub fn gatehouse_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    for (key, _) in std::env::vars() {
        if key.starts_with("GATEHOUSE_") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// The variables that point a process at `config`'s database, keys, mail
/// and limits: what an operator sets on every instance alike.
pub fn shared_env(config: &Config) -> Vec<(String, String)> {
    let mut env = vec![
        ("GATEHOUSE_DATABASE_URL", config.database_url.clone()),
        ("GATEHOUSE_KEYS_DIR", config.keys_dir.display().to_string()),
        ("GATEHOUSE_MAIL_OUTBOX", config.mail_outbox.display().to_string()),
        ("GATEHOUSE_JWKS_MAX_AGE", config.jwks_max_age.clone()),
        ("GATEHOUSE_ACCESS_TOKEN_TTL", config.access_token_ttl.clone()),
        (
            "GATEHOUSE_RATE_LIMIT_PER_MINUTE",
            config.rate_limit_per_minute.clone(),
        ),
        (
            "GATEHOUSE_LOGIN_BACKOFF_AFTER",
            config.login_backoff_after.clone(),
        ),
        (
            "GATEHOUSE_REQUIRE_VERIFIED_EMAIL",
            config.require_verified_email.clone(),
        ),
        ("GATEHOUSE_LOG_FORMAT", "json".to_owned()),
    ];
    if let Some(issuer) = &config.issuer {
        env.push(("GATEHOUSE_ISSUER", issuer.clone()));
    }
    if let Some(smtp) = &config.smtp_url {
        env.push(("GATEHOUSE_SMTP_URL", smtp.clone()));
    }
    env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// A free port on 127.0.0.1 (bound, then released for the child to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `gatehouse serve` as a child process; SIGKILLed when dropped.
pub struct ServerProcess {
    child: std::process::Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    pub http: reqwest::Client,
    log: std::path::PathBuf,
}

impl ServerProcess {
    /// Starts the binary on `app`'s database and keys directory, with `app`'s
    /// issuer (instances behind one load balancer share it) and `extra` on
    /// top; waits until `/ready` answers 200.
    pub async fn start(app: &TestApp, extra: &[(&str, &str)]) -> ServerProcess {
        let port = free_port();
        let log = app.dir.path().join(format!("server-{port}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let child = gatehouse_command()
            .current_dir(app.dir.path())
            .envs(shared_env(&app.config))
            .env("GATEHOUSE_LISTEN", format!("127.0.0.1:{port}"))
            .envs(extra.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .expect("gatehouse starts");
        let mut server = ServerProcess {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client"),
            log,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(resp) = server.http.get(server.url("/ready")).send().await
                && resp.status() == 200
            {
                return server;
            }
            if let Some(exit) = server.child.try_wait().expect("child status") {
                panic!("gatehouse exited with {exit}:\n{}", server.output());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not ready within 20 s:\n{}",
                server.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `kill -9`: no shutdown, no drain, no chance to commit anything more.
    pub fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL on Unix
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// POST /oauth2/token as `client` (Basic when it has a secret).
    pub async fn token(
        &self,
        client: &TestClient,
        form: &[(&str, &str)],
    ) -> reqwest::Result<reqwest::Response> {
        let mut fields: Vec<(&str, &str)> = form.to_vec();
        let mut req = self.http.post(self.url("/oauth2/token"));
        match &client.secret {
            Some(secret) => req = req.basic_auth(&client.id, Some(secret)),
            None => fields.push(("client_id", &client.id)),
        }
        req.form(&fields).send().await
    }

    pub async fn refresh(
        &self,
        client: &TestClient,
        refresh_token: &str,
    ) -> reqwest::Result<reqwest::Response> {
        self.token(
            client,
            &[("grant_type", "refresh_token"), ("refresh_token", refresh_token)],
        )
        .await
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Asks `probe` every 50 ms until it answers `want` or `within` has passed;
/// returns its last answer and how long that took. For changes that reach a
/// running server by its once-a-second poll (clients changed by the CLI).
pub async fn poll_until<T, F>(within: Duration, want: T, mut probe: impl FnMut() -> F) -> (T, Duration)
where
    T: PartialEq,
    F: std::future::Future<Output = T>,
{
    let started = std::time::Instant::now();
    loop {
        let answer = probe().await;
        if answer == want || started.elapsed() > within {
            return (answer, started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `cmd` to its end, or kills it after `within`: exit status (None if
/// killed), standard error, and how long it ran.
pub async fn run_bounded(
    mut cmd: std::process::Command,
    within: Duration,
) -> (Option<std::process::ExitStatus>, String, Duration) {
    use std::io::Read;
    let started = std::time::Instant::now();
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("gatehouse starts");
    let status = loop {
        if let Some(status) = child.try_wait().expect("child status") {
            break Some(status);
        }
        if started.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = started.elapsed();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    (status, stderr, took)
}

/// A pool on `app`'s database, for checking rows directly.
pub async fn test_db(app: &TestApp) -> gatehouse::store::Db {
    gatehouse::store::Db::connect(&app.config.database_url)
        .await
        .expect("connect to the test database")
}

/// What the store keeps of an opaque token: its SHA-256.
pub fn digest_of(token: &str) -> Vec<u8> {
    gatehouse::tokens::TokenDigest::of(token).as_bytes().to_vec()
}

/// What a [`DbProxy`] does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward to the database.
    Pass,
    /// Close every connection at once: a stopped server or a reset network.
    Refuse,
    /// Hold every connection and forward nothing: a host that vanished
    /// without a word (packets dropped), the case that makes clients hang.
    Blackhole,
}

/// A TCP proxy in front of PostgreSQL whose mode the test switches; leaving
/// `Pass` also applies the new mode to the connections already open.
pub struct DbProxy {
    pub port: u16,
    mode: std::sync::Arc<tokio::sync::watch::Sender<ProxyMode>>,
}

impl DbProxy {
    pub async fn start(upstream: String) -> DbProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let mode = std::sync::Arc::new(tokio::sync::watch::channel(ProxyMode::Pass).0);
        let modes = mode.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut watch = modes.subscribe();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    // Wait out a black hole, holding the socket; a refusal closes it.
                    loop {
                        match *watch.borrow_and_update() {
                            ProxyMode::Pass => break,
                            ProxyMode::Refuse => return,
                            ProxyMode::Blackhole => {}
                        }
                        if watch.changed().await.is_err() {
                            return;
                        }
                    }
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
                        _ = watch.wait_for(|m| *m != ProxyMode::Pass) => {}
                    }
                    // Out of `Pass`: drop now, or hold silently until the mode changes.
                    if *watch.borrow_and_update() == ProxyMode::Blackhole {
                        let _ = watch.changed().await;
                    }
                });
            }
        });
        DbProxy { port, mode }
    }

    pub fn set(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
    }
}

/// `url` with its host and port replaced by `127.0.0.1:<port>` (a [`DbProxy`]).
pub fn via_port(url: &str, port: u16) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let userinfo = authority
        .rsplit_once('@')
        .map(|(u, _)| format!("{u}@"))
        .unwrap_or_default();
    format!("{scheme}://{userinfo}127.0.0.1:{port}{path}")
}

/// `host:port` of a PostgreSQL URL.
pub fn postgres_host(url: &str) -> String {
    let rest = url.split_once("://").expect("a URL").1;
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    }
}

/// A fresh, empty test database (no migrations, no keys), as
/// [`TestApp::spawn`] makes one: PostgreSQL or a SQLite file in `dir`.
pub async fn empty_database_url(dir: &std::path::Path) -> String {
    fresh_database(dir).await
}

/// Runs futures concurrently on this task, like `futures::future::join_all`.
pub async fn futures_join_all<T, F: std::future::Future<Output = T>>(
    futures: impl Iterator<Item = F>,
) -> Vec<T> {
    let mut set: Vec<_> = futures.map(Box::pin).collect();
    let mut out: Vec<Option<T>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}
