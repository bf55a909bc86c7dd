//! `TestApp`: a real server on an ephemeral port, its own keys and database.

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
        gatehouse::telemetry::init(gatehouse::config::LogFormat::Pretty);
    }
}

/// A fresh database: a new PostgreSQL database under
/// `GATEHOUSE_TEST_DATABASE_URL` when set, else a SQLite file in `dir`.
async fn fresh_database(dir: &std::path::Path) -> String {
    match std::env::var("GATEHOUSE_TEST_DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => {
            sqlx::any::install_default_drivers();
            let name = format!("gatehouse_test_{}", uuid::Uuid::new_v4().simple());
            let mut conn = sqlx::AnyConnection::connect(&url)
                .await
                .expect("connect to PostgreSQL");
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
