//! A real browser: headless Chromium driven over W3C WebDriver by
//! chromedriver. It signs in through `/login`, consents, lands on the
//! client's redirect URI, signs out through `/logout`, and renders `/docs`;
//! Chromium's console log must show no Content Security Policy violation
//! on any of these pages.
//!
//! The WebDriver client is the dozen commands these tests use, spoken as
//! JSON over the `reqwest` already in the tree (W3C WebDriver §6–§17), plus
//! chromedriver's log endpoint. The client application is a small local
//! listener answering every path, so that its redirect URI
//! `http://127.0.0.1:<port>/cb` is a real page.
//!
//! Without Chromium or chromedriver the tests say so and pass, except when
//! `CI` is set: CI installs both (`.ci/run`), so there a missing browser is
//! a failure, never a skip.

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use openidconnect::PkceCodeChallenge;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use url::Url;

use crate::helpers::*;

/// Everything one test does in the browser, from chromedriver's start.
const TEST_BUDGET: Duration = Duration::from_secs(60);
/// One wait for a page or an element.
const WAIT: Duration = Duration::from_secs(15);
/// W3C WebDriver §12.2: the key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One browser at a time: two Chromiums on a 2-core box beside the rest of
/// the suite are slow enough to hit the time bounds.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Chromium and chromedriver, or `None` (with the reason printed) when
/// absent outside CI.
fn browser_binaries() -> Option<(PathBuf, PathBuf)> {
    let chromium = find_binary(&["chromium", "chromium-browser"]);
    let driver = find_binary(&["chromedriver"]);
    match (chromium, driver) {
        (Some(c), Some(d)) => Some((c, d)),
        (c, d) => {
            let missing = [("chromium", c.is_none()), ("chromedriver", d.is_none())]
                .iter()
                .filter(|(_, m)| *m)
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(" and ");
            if std::env::var("CI").is_ok_and(|v| !v.is_empty()) {
                panic!("CI is set but {missing} is not installed (apt-get install chromium chromium-driver)");
            }
            println!(
                "SKIPPED: {missing} not found (/usr/bin or PATH); \
                 apt-get install chromium chromium-driver to run the browser tests"
            );
            None
        }
    }
}

fn find_binary(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::iter::once(PathBuf::from("/usr/bin")).chain(std::env::split_paths(&path));
    dirs.flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("local address")
        .port()
}

/// chromedriver as a child process, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start(binary: &std::path::Path, http: &reqwest::Client) -> Driver {
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(resp) = http.get(format!("{}/status", driver.url)).send().await
                && let Ok(status) = resp.json::<Value>().await
                && status["value"]["ready"] == true
            {
                return driver;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver not ready within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One WebDriver session: a headless Chromium.
struct Browser {
    http: reqwest::Client,
    session: String,
}

impl Browser {
    async fn open(driver: &Driver, chromium: &std::path::Path, http: reqwest::Client) -> Browser {
        let capabilities = json!({
            "capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium,
                    // --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1024,768"],
                },
                // The console log, where Chromium reports CSP violations.
                "goog:loggingPrefs": {"browser": "ALL"},
            }}
        });
        let resp = http
            .post(format!("{}/session", driver.url))
            .json(&capabilities)
            .send()
            .await
            .expect("new session sent");
        let status = resp.status();
        let body: Value = resp.json().await.expect("new session JSON");
        assert!(status.is_success(), "new session refused: {body}");
        let id = body["value"]["sessionId"].as_str().expect("sessionId");
        let browser = Browser {
            http,
            session: format!("{}/session/{id}", driver.url),
        };
        browser
            .command(
                Method::POST,
                "/timeouts",
                json!({"implicit": 5_000, "pageLoad": 20_000, "script": 5_000}),
            )
            .await;
        browser
    }

    /// One command; panics with WebDriver's error on failure.
    async fn command(&self, method: Method, path: &str, body: Value) -> Value {
        self.try_command(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("WebDriver {path}: {e}"))
    }

    async fn try_command(&self, method: Method, path: &str, body: Value) -> Result<Value, String> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.session));
        if method == Method::POST {
            req = req.json(&body);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body: Value = resp.json().await.map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(body["value"].clone())
        } else {
            Err(format!("{status}: {}", body["value"]))
        }
    }

    async fn goto(&self, url: &str) {
        self.command(Method::POST, "/url", json!({ "url": url })).await;
    }

    async fn current_url(&self) -> Url {
        let url = self.command(Method::GET, "/url", Value::Null).await;
        Url::parse(url.as_str().expect("a URL string")).expect("a valid URL")
    }

    /// Waits until the current URL satisfies `want`; returns it.
    async fn wait_for_url(&self, what: &str, want: impl Fn(&Url) -> bool) -> Url {
        let deadline = Instant::now() + WAIT;
        loop {
            let url = self.current_url().await;
            if want(&url) {
                return url;
            }
            assert!(
                Instant::now() < deadline,
                "not at {what} within {WAIT:?}; at {url}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An element by CSS selector or XPath (`using`), waiting up to the implicit timeout.
    async fn find(&self, using: &str, value: &str) -> String {
        let found = self
            .command(
                Method::POST,
                "/element",
                json!({ "using": using, "value": value }),
            )
            .await;
        found[ELEMENT].as_str().expect("an element reference").to_owned()
    }

    async fn count(&self, css: &str) -> usize {
        let found = self
            .command(
                Method::POST,
                "/elements",
                json!({ "using": "css selector", "value": css }),
            )
            .await;
        found.as_array().map_or(0, Vec::len)
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.find("css selector", css).await;
        self.command(
            Method::POST,
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    /// Clicks the button whose text is `label`.
    async fn click_button(&self, label: &str) {
        let element = self
            .find("xpath", &format!("//button[normalize-space()='{label}']"))
            .await;
        self.command(Method::POST, &format!("/element/{element}/click"), json!({}))
            .await;
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.command(Method::GET, "/screenshot", Value::Null).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("base64 PNG"))
            .expect("base64");
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
        std::fs::write(&path, png).expect("screenshot written");
        path
    }

    /// The console log since the last call (chromedriver clears what it returns).
    async fn console(&self) -> Vec<String> {
        let body = json!({ "type": "browser" });
        let entries = match self.try_command(Method::POST, "/se/log", body.clone()).await {
            Ok(entries) => entries,
            Err(_) => self.command(Method::POST, "/log", body).await,
        };
        entries
            .as_array()
            .expect("log entries")
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e["level"].as_str().unwrap_or("?"),
                    e["message"].as_str().unwrap_or("")
                )
            })
            .collect()
    }

    /// Fails on any CSP violation in the console log since the last read.
    async fn assert_no_csp_violation(&self, page: &str) {
        let log = self.console().await;
        let violations: Vec<&String> = log.iter().filter(|l| mentions_csp(l)).collect();
        assert!(violations.is_empty(), "CSP violations on {page}: {violations:#?}");
        if !log.is_empty() {
            println!("console on {page} (no CSP violation): {log:#?}");
        }
    }

    async fn quit(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(10), self.http.delete(&self.session).send()).await;
    }
}

fn mentions_csp(line: &str) -> bool {
    line.contains("Content Security Policy") || line.contains("Content-Security-Policy")
}

/// Runs `test` against a fresh headless Chromium, within [`TEST_BUDGET`];
/// the session and chromedriver are ended whatever happens.
async fn with_browser<F, Fut>(test: F)
where
    F: FnOnce(Arc<Browser>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some((chromium, chromedriver)) = browser_binaries() else {
        return;
    };
    let _one = ONE_BROWSER.lock().await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client");
    let started = Instant::now();
    let driver = tokio::time::timeout(WAIT, Driver::start(&chromedriver, &http))
        .await
        .expect("chromedriver started in time");
    let browser = Arc::new(
        tokio::time::timeout(WAIT, Browser::open(&driver, &chromium, http))
            .await
            .expect("Chromium started in time"),
    );
    let mut task = tokio::spawn(test(browser.clone()));
    let left = TEST_BUDGET.saturating_sub(started.elapsed());
    let outcome = tokio::time::timeout(left, &mut task).await;
    task.abort();
    browser.quit().await;
    drop(driver);
    match outcome {
        Err(_) => panic!("browser test exceeded {TEST_BUDGET:?}"),
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(Err(e)) => panic!("browser test task failed: {e}"),
        Ok(Ok(())) => {}
    }
}

/// The client application: answers every path with a small page (so the
/// browser can land on its redirect URIs), and `/csp-probe` with a page
/// that breaks its own CSP, to prove the console check sees violations.
async fn client_site() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the client site");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split(' ').nth(1).unwrap_or("/");
                let (csp, body) = if path.starts_with("/csp-probe") {
                    (
                        "Content-Security-Policy: default-src 'none'\r\n",
                        "<!doctype html><title>probe</title><script>document.title = 'ran';</script>",
                    )
                } else {
                    ("", "<!doctype html><title>client</title><p>client page</p>")
                };
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n{csp}\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    port
}

fn param(url: &Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[tokio::test]
async fn chromium_signs_in_consents_lands_on_the_redirect_uri_and_signs_out() {
    let app = TestApp::spawn().await;
    let site = client_site().await;
    let redirect_uri = format!("http://127.0.0.1:{site}/cb");
    let bye = format!("http://127.0.0.1:{site}/bye");
    let client = app
        .create_client(&[
            "--grant",
            "authorization_code",
            // Registered without a port: RFC 8252 §7.3 loopback, any port.
            "--redirect-uri",
            "http://127.0.0.1/cb",
            "--post-logout-redirect-uri",
            &bye,
        ])
        .await;
    let email = "browser@example.com";
    app.create_user(email).await;

    with_browser(move |browser| async move {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let authorize = |state: &str| {
            Url::parse_with_params(
                &app.url("/oauth2/authorize"),
                [
                    ("response_type", "code"),
                    ("client_id", client.id.as_str()),
                    ("redirect_uri", redirect_uri.as_str()),
                    ("scope", "openid profile email"),
                    ("state", state),
                    ("nonce", "browser-nonce"),
                    ("code_challenge", challenge.as_str()),
                    ("code_challenge_method", "S256"),
                ],
            )
            .expect("authorize URL")
        };
        let issuer = Url::parse(&app.base).expect("issuer");
        let at = |path: &'static str| {
            let issuer = issuer.clone();
            move |u: &Url| u.origin() == issuer.origin() && u.path() == path
        };

        // Sign in.
        browser.goto(authorize("state-1").as_str()).await;
        browser.wait_for_url("/login", at("/login")).await;
        browser
            .find(
                "css selector",
                "form[action='/login'] input[type=email][name=email]",
            )
            .await;
        let shot = browser.screenshot("browser-login.png").await;
        println!("login page screenshot: {}", shot.display());
        browser.assert_no_csp_violation("/login").await;
        browser.type_into("input[name=email]", email).await;
        browser.type_into("input[name=password]", PASSWORD).await;
        browser.click_button("Sign in").await;

        // Consent.
        browser.wait_for_url("/consent", at("/consent")).await;
        browser.assert_no_csp_violation("/consent").await;
        browser.click_button("Allow").await;

        // Back at the client, with the code.
        let callback = browser
            .wait_for_url("the redirect URI", |u| {
                u.as_str().starts_with(&format!("{redirect_uri}?"))
            })
            .await;
        assert_eq!(param(&callback, "error"), None, "{callback}");
        assert_eq!(param(&callback, "state").as_deref(), Some("state-1"));
        assert_eq!(param(&callback, "iss").as_deref(), Some(app.base.as_str()));
        let code = param(&callback, "code").expect("a code");

        // The client exchanges it.
        let resp = app
            .token(
                &client,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", &redirect_uri),
                    ("code_verifier", verifier.secret()),
                ],
            )
            .await;
        assert_eq!(resp.status(), 200, "code exchange");
        let tokens: Value = resp.json().await.expect("token JSON");
        let id_token = tokens["id_token"].as_str().expect("an id_token").to_owned();
        let (_, claims) = jwt_parts(&id_token);
        assert_eq!(claims["nonce"], "browser-nonce");
        assert_eq!(claims["aud"], client.id.as_str());
        assert_eq!(
            app.userinfo(tokens["access_token"].as_str().expect("access_token"))
                .await
                .status(),
            200
        );

        // RP-initiated logout.
        let logout = Url::parse_with_params(
            &app.url("/logout"),
            [
                ("id_token_hint", id_token.as_str()),
                ("post_logout_redirect_uri", bye.as_str()),
                ("state", "bye-state"),
            ],
        )
        .expect("logout URL");
        browser.goto(logout.as_str()).await;
        browser.wait_for_url("/logout", at("/logout")).await;
        browser.assert_no_csp_violation("/logout").await;
        browser.click_button("Sign out").await;
        let gone = browser
            .wait_for_url("the post-logout URI", |u| {
                u.as_str().starts_with(&format!("{bye}?"))
            })
            .await;
        assert_eq!(param(&gone, "state").as_deref(), Some("bye-state"));

        // The session is over: the same request asks for the password again.
        browser.goto(authorize("state-2").as_str()).await;
        browser.wait_for_url("/login again", at("/login")).await;
        browser.assert_no_csp_violation("/login after logout").await;
    })
    .await;
}

#[tokio::test]
async fn chromium_renders_swagger_ui_on_docs_without_csp_violations() {
    let app = TestApp::spawn().await;
    let site = client_site().await;

    with_browser(move |browser| async move {
        // The check is not vacuous: a page breaking its own CSP shows up.
        browser.goto(&format!("http://127.0.0.1:{site}/csp-probe")).await;
        let log = browser.console().await;
        assert!(
            log.iter().any(|l| mentions_csp(l)),
            "the console log should report the probe's violation: {log:#?}"
        );

        browser.goto(&app.url("/docs")).await;
        browser.find("css selector", ".swagger-ui .info .title").await;
        let deadline = Instant::now() + WAIT;
        while browser.count(".swagger-ui .opblock").await == 0 {
            assert!(
                Instant::now() < deadline,
                "no operations rendered on /docs within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let shot = browser.screenshot("browser-docs.png").await;
        println!("/docs screenshot: {}", shot.display());
        browser.assert_no_csp_violation("/docs").await;
    })
    .await;
}
