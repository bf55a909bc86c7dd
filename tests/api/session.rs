//! `/session/*` (SPEC §11): cookie sessions for a first-party web app.
//! reqwest keeps no cookies here, so each test reads `Set-Cookie` itself and
//! sends back what a browser would.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, TestClient};

/// One `Set-Cookie` line, parsed.
#[derive(Debug, Clone)]
struct SetCookie {
    name: String,
    value: String,
    /// Attribute names as sent (`HttpOnly`), and `Name=value` ones by name.
    flags: Vec<String>,
    attrs: HashMap<String, String>,
}

impl SetCookie {
    fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f.eq_ignore_ascii_case(flag))
    }

    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
}

fn set_cookies(resp: &reqwest::Response) -> HashMap<String, SetCookie> {
    let mut out = HashMap::new();
    for header in resp.headers().get_all("set-cookie") {
        let text = header.to_str().expect("ASCII Set-Cookie");
        let mut parts = text.split(';').map(str::trim);
        let (name, value) = parts.next().unwrap().split_once('=').expect("name=value");
        let mut cookie = SetCookie {
            name: name.to_owned(),
            value: value.to_owned(),
            flags: Vec::new(),
            attrs: HashMap::new(),
        };
        for part in parts {
            match part.split_once('=') {
                Some((k, v)) => {
                    cookie.attrs.insert(k.to_ascii_lowercase(), v.to_owned());
                }
                None => cookie.flags.push(part.to_owned()),
            }
        }
        assert!(
            out.insert(cookie.name.clone(), cookie).is_none(),
            "one Set-Cookie per name: {text}"
        );
    }
    out
}

/// The cookies a browser holds after a `/session/*` answer.
#[derive(Debug, Clone, Default)]
struct Jar {
    access: String,
    refresh: String,
    csrf: String,
}

impl Jar {
    fn from(cookies: &HashMap<String, SetCookie>) -> Jar {
        let value = |name: &str| {
            cookies
                .get(name)
                .unwrap_or_else(|| panic!("no {name} cookie"))
                .value
                .clone()
        };
        Jar {
            access: value("gatehouse_access"),
            refresh: value("gatehouse_refresh"),
            csrf: value("gatehouse_csrf"),
        }
    }

    /// The `Cookie` header a browser sends to `/session/*` (all three match).
    fn header(&self) -> String {
        format!(
            "gatehouse_access={}; gatehouse_refresh={}; gatehouse_csrf={}",
            self.access, self.refresh, self.csrf
        )
    }
}

struct Call<'a> {
    origin: Option<&'a str>,
    csrf: Option<&'a str>,
    cookie: Option<String>,
    body: Option<Value>,
}

impl Call<'_> {
    fn none() -> Call<'static> {
        Call {
            origin: None,
            csrf: None,
            cookie: None,
            body: None,
        }
    }
}

async fn post(app: &TestApp, base: &str, path: &str, call: Call<'_>) -> reqwest::Response {
    let mut req = app.http.post(format!("{base}{path}"));
    if let Some(origin) = call.origin {
        req = req.header("origin", origin);
    }
    if let Some(csrf) = call.csrf {
        req = req.header("x-csrf-token", csrf);
    }
    if let Some(cookie) = call.cookie {
        req = req.header("cookie", cookie);
    }
    if let Some(body) = call.body {
        req = req.json(&body);
    }
    req.send().await.expect("request sent")
}

/// A first-party client that may use cookie sessions, asking for `openid` too.
async fn first_party(app: &TestApp) -> TestClient {
    app.create_client(&[
        "--public",
        "--grant",
        "refresh_token",
        "--first-party",
        "--scope",
        "openid",
        "--scope",
        "profile",
        "--scope",
        "email",
    ])
    .await
}

fn login_body(email: &str, password: &str, client: &TestClient) -> Value {
    json!({"email": email, "password": password, "client_id": client.id})
}

/// Signs in through `/session/login` from the issuer's own origin.
/// `POST /session/login` from the issuer's own origin.
async fn login_from_issuer(
    app: &TestApp,
    email: &str,
    password: &str,
    client: &TestClient,
) -> reqwest::Response {
    post(
        app,
        &app.base,
        "/session/login",
        Call {
            origin: Some(&app.base),
            body: Some(login_body(email, password, client)),
            ..Call::none()
        },
    )
    .await
}

async fn sign_in(app: &TestApp, client: &TestClient, email: &str) -> (Jar, Value) {
    let resp = login_from_issuer(app, email, PASSWORD, client).await;
    assert_eq!(resp.status(), 200, "session login failed");
    let jar = Jar::from(&set_cookies(&resp));
    (jar, resp.json().await.unwrap())
}

async fn refresh(app: &TestApp, jar: &Jar) -> reqwest::Response {
    post(
        app,
        &app.base,
        "/session/refresh",
        Call {
            origin: Some(&app.base),
            csrf: Some(&jar.csrf),
            cookie: Some(jar.header()),
            ..Call::none()
        },
    )
    .await
}

async fn assert_problem(resp: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(resp.status(), status, "expected {code}");
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    body
}

/// A confidential client that may introspect.
async fn resource_server(app: &TestApp) -> TestClient {
    app.create_client(&["--grant", "client_credentials"]).await
}

fn assert_all_cleared(cookies: &HashMap<String, SetCookie>) {
    for name in ["gatehouse_access", "gatehouse_refresh", "gatehouse_csrf"] {
        let c = cookies.get(name).unwrap_or_else(|| panic!("{name} not cleared"));
        assert_eq!(c.value, "", "{name}");
        assert_eq!(c.attr("Max-Age"), Some("0"), "{name}");
    }
}

#[tokio::test]
async fn login_sets_the_three_cookies_with_their_attributes() {
    let app = TestApp::spawn().await;
    let client = first_party(&app).await;
    app.create_user("ada@example.com").await;

    let resp = login_from_issuer(&app, "ada@example.com", PASSWORD, &client).await;

    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let cookies = set_cookies(&resp);
    assert_eq!(cookies.len(), 3);
    let access = &cookies["gatehouse_access"];
    assert!(access.has("HttpOnly"));
    assert_eq!(access.attr("Path"), Some("/"));
    assert_eq!(access.attr("Max-Age"), Some("900"));
    let refresh = &cookies["gatehouse_refresh"];
    assert!(refresh.has("HttpOnly"));
    assert_eq!(refresh.attr("Path"), Some("/session"));
    assert_eq!(refresh.attr("Max-Age"), Some("2592000"));
    assert!(refresh.value.starts_with("gatehouse_rt_"));
    let csrf = &cookies["gatehouse_csrf"];
    assert!(!csrf.has("HttpOnly"), "the app's script reads it");
    assert_eq!(csrf.attr("Path"), Some("/"));
    assert!(csrf.value.len() >= 43, "at least 256 bits of base64url");
    for c in cookies.values() {
        assert_eq!(c.attr("SameSite"), Some("Lax"), "{}", c.name);
        assert!(!c.has("Secure"), "http issuer: {}", c.name);
        assert_eq!(c.attr("Domain"), None, "host-only by default: {}", c.name);
    }
    let (access, refresh, csrf) = (access.value.clone(), refresh.value.clone(), csrf.value.clone());
    let text = resp.text().await.unwrap();
    assert!(
        !text.contains(&access) && !text.contains(&refresh),
        "no token in the body"
    );
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["expires_in"], 900);
    assert_eq!(body["scope"], "email openid profile");
    assert_eq!(body["csrf_token"], csrf.as_str());

    // A second login sets a new CSRF value (and new tokens).
    let (second, _) = sign_in(&app, &client, "ada@example.com").await;
    assert_ne!(second.csrf, csrf);
    assert_ne!(second.refresh, refresh);
}

#[tokio::test]
async fn an_https_issuer_marks_the_cookies_secure_with_the_configured_domain_and_samesite() {
    let app = TestApp::spawn_with(|cfg| {
        cfg.issuer = Some("https://id.example.test".into());
        cfg.cookie_domain = Some("example.test".into());
        cfg.cookie_samesite = "strict".into();
    })
    .await;
    // The issuer is https behind a proxy; the test talks plain http to the port.
    let base = format!("http://{}", app.config.listen);
    let client = first_party(&app).await;
    app.create_user("ada@example.com").await;

    let resp = post(
        &app,
        &base,
        "/session/login",
        Call {
            origin: Some("https://id.example.test"),
            body: Some(login_body("ada@example.com", PASSWORD, &client)),
            ..Call::none()
        },
    )
    .await;

    assert_eq!(resp.status(), 200);
    let cookies = set_cookies(&resp);
    assert_eq!(cookies.len(), 3);
    for c in cookies.values() {
        assert!(c.has("Secure"), "{}", c.name);
        assert_eq!(c.attr("Domain"), Some("example.test"), "{}", c.name);
        assert_eq!(c.attr("SameSite"), Some("Strict"), "{}", c.name);
    }
    let jar = Jar::from(&cookies);

    // Logout clears them with the same attributes, or the browser keeps them.
    let resp = post(
        &app,
        &base,
        "/session/logout",
        Call {
            origin: Some("https://id.example.test"),
            csrf: Some(&jar.csrf),
            cookie: Some(jar.header()),
            ..Call::none()
        },
    )
    .await;
    assert_eq!(resp.status(), 204);
    let cleared = set_cookies(&resp);
    assert_all_cleared(&cleared);
    for c in cleared.values() {
        assert!(
            c.has("Secure") && c.attr("Domain") == Some("example.test"),
            "{c:?}"
        );
    }
}

#[tokio::test]
async fn a_configured_cors_origin_may_sign_in() {
    let app = TestApp::spawn_with(|cfg| cfg.cors_origins = "https://app.example.test".into()).await;
    let client = first_party(&app).await;
    app.create_user("ada@example.com").await;

    let resp = post(
        &app,
        &app.base,
        "/session/login",
        Call {
            origin: Some("https://app.example.test"),
            body: Some(login_body("ada@example.com", PASSWORD, &client)),
            ..Call::none()
        },
    )
    .await;

    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example.test"
    );
    assert_eq!(resp.headers()["access-control-allow-credentials"], "true");
    assert_eq!(set_cookies(&resp).len(), 3);
}

#[tokio::test]
async fn the_access_cookie_is_a_bearer_token_that_introspects_active() {
    let app = TestApp::spawn().await;
    let client = first_party(&app).await;
    let rs = resource_server(&app).await;
    let user_id = app.create_user("ada@example.com").await;
    let (jar, _) = sign_in(&app, &client, "ada@example.com").await;

    let resp = app.userinfo(&jar.access).await;
    assert_eq!(resp.status(), 200);
    let info: Value = resp.json().await.unwrap();
    assert_eq!(info["sub"], user_id.as_str());

    let active = app.introspect(&rs, &jar.access).await;
    assert_eq!(active["active"], true);
    assert_eq!(active["client_id"], client.id.as_str());
    assert_eq!(active["sub"], user_id.as_str());
}

#[tokio::test]
async fn refresh_rotates_and_a_reused_refresh_cookie_ends_the_chain() {
    let app = TestApp::spawn().await;
    let client = first_party(&app).await;
    let rs = resource_server(&app).await;
    app.create_user("ada@example.com").await;
    let (first, _) = sign_in(&app, &client, "ada@example.com").await;

    // Rotation: every cookie is new.
    let resp = refresh(&app, &first).await;
    assert_eq!(resp.status(), 200);
    let cookies = set_cookies(&resp);
    assert_eq!(cookies["gatehouse_refresh"].attr("Path"), Some("/session"));
    let second = Jar::from(&cookies);
    assert_ne!(second.access, first.access);
    assert_ne!(second.refresh, first.refresh);
    assert_ne!(second.csrf, first.csrf);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["csrf_token"], second.csrf.as_str());
    assert_eq!(app.introspect(&rs, &second.access).await["active"], true);

    // The old refresh cookie again (with a valid CSRF pair): reuse.
    let reused = Jar {
        refresh: first.refresh.clone(),
        ..second.clone()
    };
    let resp = refresh(&app, &reused).await;
    assert_all_cleared(&set_cookies(&resp));
    assert_problem(resp, 401, "session_ended").await;

    // The whole chain is dead: the new refresh cookie and its access token too.
    let resp = refresh(&app, &second).await;
    assert_problem(resp, 401, "session_ended").await;
    assert_eq!(app.introspect(&rs, &second.access).await["active"], false);
    assert_eq!(app.userinfo(&second.access).await.status(), 401);
}

#[tokio::test]
async fn refresh_without_a_refresh_cookie_ends_the_session() {
    let app = TestApp::spawn().await;
    let resp = post(
        &app,
        &app.base,
        "/session/refresh",
        Call {
            origin: Some(&app.base),
            csrf: Some("abc"),
            cookie: Some("gatehouse_csrf=abc".into()),
            ..Call::none()
        },
    )
    .await;
    assert_all_cleared(&set_cookies(&resp));
    assert_problem(resp, 401, "session_ended").await;
}

#[tokio::test]
async fn logout_revokes_the_tokens_and_clears_the_cookies() {
    let app = TestApp::spawn().await;
    let client = first_party(&app).await;
    let rs = resource_server(&app).await;
    app.create_user("ada@example.com").await;
    let (jar, _) = sign_in(&app, &client, "ada@example.com").await;

    let resp = post(
        &app,
        &app.base,
        "/session/logout",
        Call {
            origin: Some(&app.base),
            csrf: Some(&jar.csrf),
            cookie: Some(jar.header()),
            ..Call::none()
        },
    )
    .await;

    assert_eq!(resp.status(), 204);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_all_cleared(&set_cookies(&resp));
    assert_eq!(app.introspect(&rs, &jar.access).await["active"], false);
    assert_eq!(app.userinfo(&jar.access).await.status(), 401);
    assert_problem(refresh(&app, &jar).await, 401, "session_ended").await;
}

#[tokio::test]
async fn a_missing_or_foreign_origin_is_refused_and_nothing_changes() {
    let app = TestApp::spawn_with(|cfg| cfg.cors_origins = "https://app.example.test".into()).await;
    let client = first_party(&app).await;
    let rs = resource_server(&app).await;
    app.create_user("ada@example.com").await;
    let (jar, _) = sign_in(&app, &client, "ada@example.com").await;

    let origins = [
        ("missing", None),
        ("another site", Some("https://evil.example")),
        ("null", Some("null")),
        (
            "the issuer's host on another scheme",
            Some(&*app.base.replacen("http://", "https://", 1)),
        ),
    ];
    for (label, origin) in origins {
        for path in ["/session/login", "/session/refresh", "/session/logout"] {
            let resp = post(
                &app,
                &app.base,
                path,
                Call {
                    origin,
                    csrf: Some(&jar.csrf),
                    cookie: Some(jar.header()),
                    body: Some(login_body("ada@example.com", PASSWORD, &client)),
                },
            )
            .await;
            assert!(
                resp.headers().get("set-cookie").is_none(),
                "{label} {path}: no cookie changes"
            );
            let body = assert_problem(resp, 403, "origin_not_allowed").await;
            assert_eq!(body["status"], 403, "{label} {path}");
        }
    }

    // Nothing changed: the session still works and rotates normally.
    assert_eq!(app.introspect(&rs, &jar.access).await["active"], true);
    assert_eq!(refresh(&app, &jar).await.status(), 200);
}

#[tokio::test]
async fn a_missing_or_wrong_csrf_header_is_refused_and_nothing_changes() {
    let app = TestApp::spawn().await;
    let client = first_party(&app).await;
    let rs = resource_server(&app).await;
    app.create_user("ada@example.com").await;
    let (jar, _) = sign_in(&app, &client, "ada@example.com").await;
    let without_csrf_cookie = format!(
        "gatehouse_access={}; gatehouse_refresh={}",
        jar.access, jar.refresh
    );
    let wrong = format!("{}x", jar.csrf);

    let cases: [(&str, Option<&str>, String); 5] = [
        ("no header", None, jar.header()),
        ("wrong header", Some(&wrong), jar.header()),
        ("empty header", Some(""), jar.header()),
        ("a prefix of the cookie", Some(&jar.csrf[..20]), jar.header()),
        ("header but no cookie", Some(&jar.csrf), without_csrf_cookie),
    ];
    for (label, csrf, cookie) in cases {
        for path in ["/session/refresh", "/session/logout"] {
            let resp = post(
                &app,
                &app.base,
                path,
                Call {
                    origin: Some(&app.base),
                    csrf,
                    cookie: Some(cookie.clone()),
                    body: None,
                },
            )
            .await;
            assert!(resp.headers().get("set-cookie").is_none(), "{label} {path}");
            assert_problem(resp, 403, "csrf_failed").await;
        }
    }

    assert_eq!(app.introspect(&rs, &jar.access).await["active"], true);
    assert_eq!(refresh(&app, &jar).await.status(), 200);
}

#[tokio::test]
async fn clients_that_may_not_use_cookie_sessions_are_refused() {
    let app = TestApp::spawn().await;
    app.create_user("ada@example.com").await;
    let not_first_party = app
        .create_client(&["--public", "--grant", "password", "--grant", "refresh_token"])
        .await;
    let no_refresh_grant = app
        .create_client(&["--public", "--grant", "password", "--first-party"])
        .await;
    let unknown = TestClient {
        id: uuid::Uuid::new_v4().to_string(),
        secret: None,
    };

    for (label, client) in [
        ("not first-party", &not_first_party),
        ("no refresh_token grant", &no_refresh_grant),
        ("unknown", &unknown),
    ] {
        let resp = login_from_issuer(&app, "ada@example.com", PASSWORD, client).await;
        assert!(resp.headers().get("set-cookie").is_none(), "{label}");
        assert_problem(resp, 403, "client_not_allowed").await;
    }
}

#[tokio::test]
async fn a_wrong_password_answers_exactly_like_an_unknown_or_disabled_user() {
    let app = TestApp::spawn().await;
    let client = first_party(&app).await;
    app.create_user("ada@example.com").await;
    app.create_user("bob@example.com").await;
    app.cli(&["users", "disable", "--email", "bob@example.com"]).await;

    let mut answers = Vec::new();
    for (label, email, password) in [
        ("wrong password", "ada@example.com", "not the password at all"),
        ("unknown user", "nobody@example.com", PASSWORD),
        ("disabled user", "bob@example.com", PASSWORD),
    ] {
        let resp = login_from_issuer(&app, email, password, &client).await;
        assert!(resp.headers().get("set-cookie").is_none(), "{label}");
        let body = assert_problem(resp, 400, "invalid_credentials").await;
        answers.push(body);
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
}

#[tokio::test]
async fn an_unverified_address_has_its_own_code() {
    let app = TestApp::spawn().await;
    let client = first_party(&app).await;
    app.try_cli(
        &[
            "users",
            "create",
            "--email",
            "new@example.com",
            "--password-stdin",
        ],
        PASSWORD,
    )
    .await
    .unwrap();

    let resp = login_from_issuer(&app, "new@example.com", PASSWORD, &client).await;

    assert!(resp.headers().get("set-cookie").is_none());
    assert_problem(resp, 403, "email_not_verified").await;
}

#[tokio::test]
async fn missing_fields_are_listed_and_malformed_json_is_a_bad_request() {
    let app = TestApp::spawn().await;

    let resp = post(
        &app,
        &app.base,
        "/session/login",
        Call {
            origin: Some(&app.base),
            body: Some(json!({"email": "ada@example.com\u{0}"})),
            ..Call::none()
        },
    )
    .await;
    let body = assert_problem(resp, 422, "validation_failed").await;
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["email", "password", "client_id"]);

    let resp = app
        .http
        .post(app.url("/session/login"))
        .header("origin", &app.base)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_problem(resp, 400, "bad_request").await;
}
