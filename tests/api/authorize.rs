//! Browser sign-in over plain HTTP (SPEC §11): the authorization endpoint,
//! the hosted login, consent and logout pages, the authorization_code grant,
//! and the attacks on them. A `Browser` here is a cookie jar of one cookie
//! that follows nothing by itself, so every hop is checked.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use crate::helpers::{PASSWORD, TestApp, TestClient, jwt_parts};

const CB: &str = "http://127.0.0.1/cb";
const BYE: &str = "https://app.example/signed-out";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

/// One answer: status, `Location`, the session cookie it set, the body.
struct Hop {
    status: u16,
    location: Option<String>,
    set_session: Option<String>,
    body: String,
}

struct Browser<'a> {
    app: &'a TestApp,
    cookie: Option<String>,
}

fn session_cookie_of(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("gatehouse_session="))
        .map(str::to_owned)
}

/// The value of hidden field `name` in a page.
fn hidden(body: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = body
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {body}"))
        + marker.len();
    let end = body[start..].find('"').unwrap() + start;
    body[start..end]
        .replace("&amp;", "&")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
}

/// The query parameters of a URL.
fn params(url: &str) -> std::collections::HashMap<String, String> {
    let url = reqwest::Url::parse(url).unwrap();
    url.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

impl<'a> Browser<'a> {
    fn new(app: &'a TestApp) -> Browser<'a> {
        Browser { app, cookie: None }
    }

    fn absolute(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_owned()
        } else {
            self.app.url(path)
        }
    }

    async fn keep(&mut self, resp: reqwest::Response) -> Hop {
        let set_session = session_cookie_of(&resp);
        if let Some(set) = &set_session {
            let value = set
                .split(';')
                .next()
                .unwrap()
                .trim_start_matches("gatehouse_session=");
            self.cookie = (!value.is_empty()).then(|| value.to_owned());
        }
        Hop {
            status: resp.status().as_u16(),
            location: resp
                .headers()
                .get("location")
                .map(|l| l.to_str().unwrap().to_owned()),
            set_session,
            body: resp.text().await.unwrap(),
        }
    }

    async fn get(&mut self, path: &str) -> Hop {
        let mut req = self.app.http.get(self.absolute(path));
        if let Some(c) = &self.cookie {
            req = req.header("cookie", format!("gatehouse_session={c}"));
        }
        let resp = req.send().await.unwrap();
        self.keep(resp).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)], origin: Option<&str>) -> Hop {
        let mut req = self.app.http.post(self.absolute(path)).form(form);
        if let Some(c) = &self.cookie {
            req = req.header("cookie", format!("gatehouse_session={c}"));
        }
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let resp = req.send().await.unwrap();
        self.keep(resp).await
    }

    /// Fills the login page at `path` and posts it from our own origin.
    async fn log_in(&mut self, path: &str, email: &str, password: &str) -> Hop {
        let page = self.get(path).await;
        assert_eq!(page.status, 200, "login page: {}", page.body);
        let csrf = hidden(&page.body, "csrf_token");
        let request = hidden(&page.body, "request");
        let origin = self.app.base.clone();
        self.post(
            "/login",
            &[
                ("email", email),
                ("password", password),
                ("csrf_token", &csrf),
                ("request", &request),
            ],
            Some(&origin),
        )
        .await
    }

    /// Approves the consent page at `path`.
    async fn approve(&mut self, path: &str) -> Hop {
        let page = self.get(path).await;
        assert_eq!(page.status, 200, "consent page: {}", page.body);
        let allow = page.body.find("value=\"approve\"").expect("an approve form");
        let deny = page.body.find("value=\"deny\"").expect("a deny form");
        assert!(allow < deny, "the approving form comes first");
        let csrf = hidden(&page.body, "csrf_token");
        let request = hidden(&page.body, "request");
        let origin = self.app.base.clone();
        self.post(
            "/consent",
            &[
                ("csrf_token", &csrf),
                ("request", &request),
                ("decision", "approve"),
            ],
            Some(&origin),
        )
        .await
    }

    /// Signs in through the pages and returns the final redirect to the client.
    async fn authorize(&mut self, query: &str) -> String {
        let first = self.get(&format!("/oauth2/authorize?{query}")).await;
        assert_eq!(first.status, 302, "{}", first.body);
        let mut next = first.location.unwrap();
        if next.contains("/login?") {
            let hop = self.log_in(&next, "ada@example.com", PASSWORD).await;
            assert_eq!(hop.status, 303, "login: {}", hop.body);
            next = hop.location.unwrap();
        }
        if next.contains("/consent?") {
            let hop = self.approve(&next).await;
            assert_eq!(hop.status, 303, "consent: {}", hop.body);
            next = hop.location.unwrap();
        }
        next
    }
}

fn encode(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn query(client: &TestClient, extra: &[(&str, &str)]) -> String {
    let mut pairs = vec![
        ("response_type", "code"),
        ("client_id", client.id.as_str()),
        ("redirect_uri", CB),
        ("scope", "openid email profile"),
        ("state", "st-123"),
        ("nonce", "n-456"),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ];
    for (k, v) in extra {
        pairs.retain(|(name, _)| name != k);
        if !v.is_empty() {
            pairs.push((k, v));
        }
    }
    encode(&pairs)
}

async fn setup(app: &TestApp, flags: &[&str]) -> TestClient {
    app.create_user("ada@example.com").await;
    let mut all = vec![
        "--grant",
        "authorization_code",
        "--grant",
        "refresh_token",
        "--redirect-uri",
        CB,
        "--post-logout-redirect-uri",
        BYE,
    ];
    all.extend_from_slice(flags);
    app.create_client(&all).await
}

async fn exchange(
    app: &TestApp,
    client: &TestClient,
    code: &str,
    verifier: Option<&str>,
) -> reqwest::Response {
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", CB),
    ];
    if let Some(v) = verifier {
        form.push(("code_verifier", v));
    }
    app.token(client, &form).await
}

fn code_of(location: &str) -> String {
    let p = params(location);
    p.get("code")
        .unwrap_or_else(|| panic!("no code in {location}"))
        .clone()
}

#[tokio::test]
async fn a_user_signs_in_consents_and_the_client_gets_tokens_for_the_browser_session() {
    let app = TestApp::spawn().await;
    let client = setup(&app, &[]).await;
    let mut browser = Browser::new(&app);

    let to_client = browser.authorize(&query(&client, &[])).await;
    assert!(to_client.starts_with("http://127.0.0.1/cb?"), "{to_client}");
    let p = params(&to_client);
    assert_eq!(p["state"], "st-123");
    assert_eq!(p["iss"], app.base, "RFC 9207");
    let resp = exchange(&app, &client, &p["code"], Some(VERIFIER)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let tokens: Value = resp.json().await.unwrap();
    let (_, id) = jwt_parts(tokens["id_token"].as_str().unwrap());
    assert_eq!(id["nonce"], "n-456");
    assert_eq!(id["aud"], client.id);
    assert_eq!(id["email"], "ada@example.com");
    let (_, access) = jwt_parts(tokens["access_token"].as_str().unwrap());
    assert_eq!(access["sid"], id["sid"], "one sid for the browser session");
    assert!(access["auth_time"].as_i64().is_some());
    let info = app.userinfo(tokens["access_token"].as_str().unwrap()).await;
    assert_eq!(info.status(), 200);

    // Signed in and consented: a second request comes straight back, same sid.
    let again = browser
        .get(&format!("/oauth2/authorize?{}", query(&client, &[])))
        .await;
    assert_eq!(again.status, 302);
    let location = again.location.unwrap();
    assert!(location.starts_with(CB), "no page this time: {location}");
    let second: Value = exchange(&app, &client, &code_of(&location), Some(VERIFIER))
        .await
        .json()
        .await
        .unwrap();
    let (_, access2) = jwt_parts(second["access_token"].as_str().unwrap());
    assert_eq!(access2["sid"], access["sid"]);

    // The refresh chain works and keeps the sid.
    let refreshed = app
        .refresh(&client, tokens["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(refreshed.status(), 200);
    let refreshed: Value = refreshed.json().await.unwrap();
    let (_, access3) = jwt_parts(refreshed["access_token"].as_str().unwrap());
    assert_eq!(access3["sid"], access["sid"]);
}

#[tokio::test]
async fn first_party_clients_skip_consent_and_a_loopback_port_may_differ() {
    let app = TestApp::spawn().await;
    let client = setup(&app, &["--first-party", "--public"]).await;
    let mut browser = Browser::new(&app);
    let q = query(&client, &[("redirect_uri", "http://127.0.0.1:53682/cb")]);
    let first = browser.get(&format!("/oauth2/authorize?{q}")).await;
    let hop = browser
        .log_in(&first.location.unwrap(), "ada@example.com", PASSWORD)
        .await;
    let location = hop.location.unwrap();
    assert!(location.starts_with("http://127.0.0.1:53682/cb?"), "{location}");
    let resp = app
        .token(
            &client,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code_of(&location)),
                ("redirect_uri", "http://127.0.0.1:53682/cb"),
                ("code_verifier", VERIFIER),
            ],
        )
        .await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
}

#[tokio::test]
async fn pkce_is_required_for_public_clients_and_checked_at_the_exchange() {
    let app = TestApp::spawn().await;
    let public = setup(&app, &["--public", "--first-party"]).await;
    let confidential = app
        .create_client(&[
            "--grant",
            "authorization_code",
            "--redirect-uri",
            CB,
            "--first-party",
        ])
        .await;
    let mut browser = Browser::new(&app);

    // A public client without a challenge, or with `plain`: back with invalid_request.
    for extra in [
        vec![("code_challenge", ""), ("code_challenge_method", "")],
        vec![("code_challenge_method", "plain")],
        vec![("code_challenge_method", "")],
        vec![("code_challenge", "short")],
    ] {
        let hop = browser
            .get(&format!("/oauth2/authorize?{}", query(&public, &extra)))
            .await;
        assert_eq!(hop.status, 302);
        let p = params(hop.location.as_deref().unwrap());
        assert_eq!(p["error"], "invalid_request", "{extra:?}");
        assert_eq!(p["state"], "st-123");
        assert_eq!(p["iss"], app.base);
    }

    // Wrong verifier, missing verifier: refused, and the code is used up.
    for verifier in [Some("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXK"), None] {
        let location = browser.authorize(&query(&public, &[])).await;
        let code = code_of(&location);
        let resp = exchange(&app, &public, &code, verifier).await;
        assert_eq!(resp.status(), 400);
        assert_eq!(resp.json::<Value>().await.unwrap()["error"], "invalid_grant");
        let retry = exchange(&app, &public, &code, Some(VERIFIER)).await;
        assert_eq!(retry.status(), 400, "a failed attempt used the code up");
    }

    // A confidential client may skip PKCE, but a verifier without a
    // challenge is a downgrade attempt (RFC 9700 §2.1.1).
    let q = query(
        &confidential,
        &[("code_challenge", ""), ("code_challenge_method", "")],
    );
    let location = browser.authorize(&q).await;
    let resp = exchange(&app, &confidential, &code_of(&location), Some(VERIFIER)).await;
    assert_eq!(resp.status(), 400);
    let location = browser.authorize(&q).await;
    let resp = exchange(&app, &confidential, &code_of(&location), None).await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn a_replayed_code_is_refused_and_revokes_what_it_issued() {
    let app = TestApp::spawn().await;
    let client = setup(&app, &["--first-party"]).await;
    let mut browser = Browser::new(&app);
    let code = code_of(&browser.authorize(&query(&client, &[])).await);
    let tokens: Value = exchange(&app, &client, &code, Some(VERIFIER))
        .await
        .json()
        .await
        .unwrap();
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(app.userinfo(access).await.status(), 200);

    let replay = exchange(&app, &client, &code, Some(VERIFIER)).await;
    assert_eq!(replay.status(), 400);
    assert_eq!(replay.json::<Value>().await.unwrap()["error"], "invalid_grant");
    assert_eq!(
        app.userinfo(access).await.status(),
        401,
        "the access token is revoked"
    );
    assert_eq!(
        app.introspect(&client, access).await,
        serde_json::json!({"active": false})
    );
    let refresh = app
        .refresh(&client, tokens["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(refresh.status(), 400, "the refresh chain is revoked");
}

#[tokio::test]
async fn a_code_is_bound_to_its_client_and_redirect_uri() {
    let app = TestApp::spawn().await;
    let client = setup(&app, &["--first-party"]).await;
    let other = app
        .create_client(&[
            "--grant",
            "authorization_code",
            "--redirect-uri",
            CB,
            "--first-party",
        ])
        .await;
    let mut browser = Browser::new(&app);

    let code = code_of(&browser.authorize(&query(&client, &[])).await);
    let stolen = exchange(&app, &other, &code, Some(VERIFIER)).await;
    assert_eq!(stolen.status(), 400);
    assert_eq!(stolen.json::<Value>().await.unwrap()["error"], "invalid_grant");

    let code = code_of(&browser.authorize(&query(&client, &[])).await);
    let resp = app
        .token(
            &client,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", "http://127.0.0.1/other"),
                ("code_verifier", VERIFIER),
            ],
        )
        .await;
    assert_eq!(resp.status(), 400);

    // A client without the grant may not exchange codes at all.
    let password_only = app.web_client().await;
    let resp = exchange(&app, &password_only, "gatehouse_ac_x", Some(VERIFIER)).await;
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"],
        "unauthorized_client"
    );
}

#[tokio::test]
async fn untrusted_clients_and_redirect_uris_get_a_page_never_a_redirect() {
    let app = TestApp::spawn().await;
    app.create_user("ada@example.com").await;
    let client = app
        .create_client(&[
            "--grant",
            "authorization_code",
            "--redirect-uri",
            "https://app.example/callback",
        ])
        .await;
    let mut browser = Browser::new(&app);
    let tricks = [
        "https://app.example/callback/",
        "https://app.example/callbackx",
        "https://app.example/callback/../evil",
        "https://app.example/callback?x=1",
        "https://APP.example/callback",
        "https://app.example/Callback",
        "https://app.example.evil.example/callback",
        "https://evil.example/?https://app.example/callback",
        "https://app.example@evil.example/callback",
        "http://app.example/callback",
        "https://app.example/callback#frag",
        "//evil.example/callback",
    ];
    for trick in tricks {
        let q = encode(&[
            ("response_type", "code"),
            ("client_id", client.id.as_str()),
            ("redirect_uri", trick),
            ("state", "s"),
        ]);
        let hop = browser.get(&format!("/oauth2/authorize?{q}")).await;
        assert_eq!(hop.status, 400, "{trick}");
        assert!(hop.location.is_none(), "{trick} was followed");
        assert!(hop.body.contains("not registered"), "{trick}: {}", hop.body);
    }
    for q in [
        String::new(),
        "response_type=code&redirect_uri=https%3A%2F%2Fapp.example%2Fcallback".to_owned(),
        "response_type=code&client_id=nope&redirect_uri=https%3A%2F%2Fapp.example%2Fcallback".to_owned(),
        format!(
            "response_type=code&client_id={}&client_id={}&redirect_uri=https%3A%2F%2Fapp.example%2Fcallback",
            client.id, client.id
        ),
    ] {
        let hop = browser.get(&format!("/oauth2/authorize?{q}")).await;
        assert_eq!(hop.status, 400, "{q}");
        assert!(hop.location.is_none());
        assert!(hop.body.starts_with("<!doctype html>"));
    }
    // Once the client and URI are trusted, errors go back with state and iss.
    let q = encode(&[
        ("response_type", "token"),
        ("client_id", client.id.as_str()),
        ("redirect_uri", "https://app.example/callback"),
        ("state", "s&t"),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ]);
    let hop = browser.get(&format!("/oauth2/authorize?{q}")).await;
    assert_eq!(hop.status, 302);
    let location = hop.location.unwrap();
    assert!(
        location.starts_with("https://app.example/callback?"),
        "{location}"
    );
    let p = params(&location);
    assert_eq!(p["error"], "unsupported_response_type");
    assert_eq!(p["state"], "s&t");
    assert_eq!(p["iss"], app.base);
}

#[tokio::test]
async fn forms_need_our_csrf_token_and_origin() {
    let app = TestApp::spawn().await;
    let client = setup(&app, &[]).await;
    let mut browser = Browser::new(&app);
    let q = query(&client, &[]);
    let page = browser.get(&format!("/login?{q}")).await;
    let csrf = hidden(&page.body, "csrf_token");
    let origin = app.base.clone();
    let form = |csrf: &str| {
        vec![
            ("email".to_owned(), "ada@example.com".to_owned()),
            ("password".to_owned(), PASSWORD.to_owned()),
            ("csrf_token".to_owned(), csrf.to_owned()),
            ("request".to_owned(), q.clone()),
        ]
    };
    let as_refs = |f: &Vec<(String, String)>| -> Vec<(String, String)> { f.clone() };
    for (fields, origin, why) in [
        (as_refs(&form("")), Some(origin.as_str()), "empty CSRF token"),
        (
            as_refs(&form("forged")),
            Some(origin.as_str()),
            "wrong CSRF token",
        ),
        (
            as_refs(&form(&csrf)),
            Some("https://evil.example"),
            "foreign Origin",
        ),
    ] {
        let refs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let hop = browser.post("/login", &refs, origin).await;
        assert_eq!(hop.status, 403, "{why}");
        assert!(hop.set_session.is_none(), "{why}: signed in anyway");
    }
    // Another browser's token does not fit this browser's cookie.
    let mut other = Browser::new(&app);
    let theirs = hidden(&other.get(&format!("/login?{q}")).await.body, "csrf_token");
    let fields = form(&theirs);
    let refs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(browser.post("/login", &refs, Some(&origin)).await.status, 403);

    // Signed in, the consent and logout forms hold the same line.
    let fields = form(&csrf);
    let refs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let hop = browser.post("/login", &refs, Some(&origin)).await;
    assert_eq!(hop.status, 303);
    let consent = hop.location.unwrap();
    assert!(consent.starts_with("/consent?"));
    let page = browser.get(&consent).await;
    let request = hidden(&page.body, "request");
    for (token, origin) in [
        ("", Some(origin.as_str())),
        ("x", None),
        (csrf.as_str(), Some(origin.as_str())),
    ] {
        let hop = browser
            .post(
                "/consent",
                &[
                    ("csrf_token", token),
                    ("request", &request),
                    ("decision", "approve"),
                ],
                origin,
            )
            .await;
        assert_eq!(hop.status, 403, "consent with {token:?}: stale or forged");
    }
    let hop = browser
        .post("/logout", &[("csrf_token", "x")], Some(&origin))
        .await;
    assert_eq!(hop.status, 403);
    assert!(
        browser
            .get(&format!("/oauth2/authorize?{q}"))
            .await
            .location
            .unwrap()
            .contains("/consent?"),
        "still signed in"
    );
}

#[tokio::test]
async fn a_planted_session_cookie_is_replaced_at_login() {
    let app = TestApp::spawn().await;
    let client = setup(&app, &["--first-party"]).await;
    let mut victim = Browser::new(&app);
    // The attacker's value, planted in the victim's browser.
    let planted = "gatehouse_bs_AttackerChoseThisValueAttackerChoseThisValue0";
    victim.cookie = Some(planted.to_owned());
    let q = query(&client, &[]);
    let hop = victim
        .log_in(&format!("/login?{q}"), "ada@example.com", PASSWORD)
        .await;
    assert_eq!(hop.status, 303);
    let set = hop.set_session.expect("a new cookie at login");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Lax") && set.contains("Path=/"),
        "{set}"
    );
    assert!(!set.contains("Secure"), "http issuer: {set}");
    let new_value = victim.cookie.clone().unwrap();
    assert_ne!(new_value, planted, "the value changed at login");
    assert!(new_value.starts_with("gatehouse_bs_"));
    // The planted value signs nobody in.
    let mut attacker = Browser::new(&app);
    attacker.cookie = Some(planted.to_owned());
    let hop = attacker.get(&format!("/oauth2/authorize?{q}")).await;
    assert!(hop.location.unwrap().contains("/login?"));
}

#[tokio::test]
async fn the_login_page_says_the_same_for_unknown_users_and_wrong_passwords() {
    let app = TestApp::spawn().await;
    let client = setup(&app, &[]).await;
    let q = query(&client, &[]);
    let mut answers = Vec::new();
    for (email, password) in [
        ("ada@example.com", "wrong password!"),
        ("nobody@example.com", PASSWORD),
    ] {
        let mut browser = Browser::new(&app);
        let hop = browser.log_in(&format!("/login?{q}"), email, password).await;
        let csrf_free = hop
            .body
            .lines()
            .filter(|l| !l.contains("csrf_token") && !l.contains("name=\"email\""))
            .collect::<Vec<_>>()
            .join("\n");
        answers.push((hop.status, csrf_free));
    }
    assert_eq!(answers[0].0, 400);
    assert_eq!(answers[0], answers[1], "the page tells nothing about the account");
    assert!(answers[0].1.contains("Wrong e-mail address or password"));
}

#[tokio::test]
async fn prompt_and_max_age_decide_when_to_ask_again() {
    let app = TestApp::spawn().await;
    let client = setup(&app, &[]).await;
    let mut browser = Browser::new(&app);
    // prompt=none, not signed in: login_required, back to the client.
    let hop = browser
        .get(&format!(
            "/oauth2/authorize?{}",
            query(&client, &[("prompt", "none")])
        ))
        .await;
    let p = params(&hop.location.unwrap());
    assert_eq!(p["error"], "login_required");
    assert_eq!(p["state"], "st-123");

    // Signed in but never consented: consent_required.
    let first = browser
        .get(&format!("/oauth2/authorize?{}", query(&client, &[])))
        .await;
    let hop = browser
        .log_in(&first.location.unwrap(), "ada@example.com", PASSWORD)
        .await;
    assert!(hop.location.unwrap().starts_with("/consent?"));
    let hop = browser
        .get(&format!(
            "/oauth2/authorize?{}",
            query(&client, &[("prompt", "none")])
        ))
        .await;
    assert_eq!(params(&hop.location.unwrap())["error"], "consent_required");

    // Consented: prompt=none now answers with a code.
    let _ = browser.authorize(&query(&client, &[])).await;
    let hop = browser
        .get(&format!(
            "/oauth2/authorize?{}",
            query(&client, &[("prompt", "none")])
        ))
        .await;
    assert!(params(&hop.location.unwrap()).contains_key("code"));

    // prompt=login and a passed max_age send the user to the login page.
    let hop = browser
        .get(&format!(
            "/oauth2/authorize?{}",
            query(&client, &[("prompt", "login")])
        ))
        .await;
    assert!(hop.location.unwrap().contains("/login?"));
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let hop = browser
        .get(&format!(
            "/oauth2/authorize?{}",
            query(&client, &[("max_age", "0")])
        ))
        .await;
    let login = hop.location.unwrap();
    assert!(login.contains("/login?"), "{login}");
    // Signing in again satisfies it; auth_time moves on.
    let hop = browser.log_in(&login, "ada@example.com", PASSWORD).await;
    let code = code_of(&hop.location.unwrap());
    let tokens: Value = exchange(&app, &client, &code, Some(VERIFIER))
        .await
        .json()
        .await
        .unwrap();
    let (_, id) = jwt_parts(tokens["id_token"].as_str().unwrap());
    assert!(gatehouse::now() - id["auth_time"].as_i64().unwrap() <= 1);
}

#[tokio::test]
async fn logout_ends_the_session_and_redirects_only_where_registered() {
    let app = TestApp::spawn().await;
    let client = setup(&app, &["--first-party"]).await;
    let mut browser = Browser::new(&app);
    let code = code_of(&browser.authorize(&query(&client, &[])).await);
    let tokens: Value = exchange(&app, &client, &code, Some(VERIFIER))
        .await
        .json()
        .await
        .unwrap();
    let id_token = tokens["id_token"].as_str().unwrap();

    for bad in [
        "https://evil.example/signed-out",
        "https://app.example/signed-out/",
        "https://app.example/signed-outx",
        "https://APP.example/signed-out",
    ] {
        let q = encode(&[
            ("id_token_hint", id_token),
            ("post_logout_redirect_uri", bad),
            ("state", "s"),
        ]);
        let hop = browser.get(&format!("/logout?{q}")).await;
        assert_eq!(hop.status, 400, "{bad}");
        assert!(hop.location.is_none());
    }
    // Without a client to check it against, no redirect either.
    let q = encode(&[("post_logout_redirect_uri", BYE)]);
    assert_eq!(browser.get(&format!("/logout?{q}")).await.status, 400);
    // A forged hint is refused.
    let forged = format!("{}x", id_token);
    let q = encode(&[
        ("id_token_hint", forged.as_str()),
        ("post_logout_redirect_uri", BYE),
    ]);
    assert_eq!(browser.get(&format!("/logout?{q}")).await.status, 400);

    let q = encode(&[
        ("id_token_hint", id_token),
        ("post_logout_redirect_uri", BYE),
        ("state", "bye-state"),
    ]);
    let page = browser.get(&format!("/logout?{q}")).await;
    assert_eq!(page.status, 200, "asks first: {}", page.body);
    let csrf = hidden(&page.body, "csrf_token");
    let request = hidden(&page.body, "request");
    let origin = app.base.clone();
    let hop = browser
        .post(
            "/logout",
            &[("csrf_token", &csrf), ("request", &request)],
            Some(&origin),
        )
        .await;
    assert_eq!(hop.status, 303);
    assert_eq!(
        hop.location.as_deref(),
        Some("https://app.example/signed-out?state=bye-state")
    );
    assert!(hop.set_session.unwrap().contains("Max-Age=0"), "cookie cleared");

    // Everything the session issued is over.
    assert_eq!(
        app.userinfo(tokens["access_token"].as_str().unwrap())
            .await
            .status(),
        401
    );
    assert_eq!(
        app.refresh(&client, tokens["refresh_token"].as_str().unwrap())
            .await
            .status(),
        400
    );
    let hop = browser
        .get(&format!("/oauth2/authorize?{}", query(&client, &[])))
        .await;
    assert!(hop.location.unwrap().contains("/login?"));
    // Signed out already: straight to the registered URI.
    let hop = browser.get(&format!("/logout?{q}")).await;
    assert_eq!(hop.status, 302);
    assert_eq!(
        hop.location.as_deref(),
        Some("https://app.example/signed-out?state=bye-state")
    );
}

#[tokio::test]
async fn logout_all_and_a_password_change_end_browser_sessions() {
    let app = TestApp::spawn().await;
    let client = setup(&app, &["--first-party"]).await;
    for call in ["logout-all", "password"] {
        let mut browser = Browser::new(&app);
        let code = code_of(&browser.authorize(&query(&client, &[])).await);
        let tokens: Value = exchange(&app, &client, &code, Some(VERIFIER))
            .await
            .json()
            .await
            .unwrap();
        // Another browser, signed in too.
        let mut other = Browser::new(&app);
        let _ = other.authorize(&query(&client, &[])).await;
        let access = tokens["access_token"].as_str().unwrap();
        let resp = if call == "logout-all" {
            app.http
                .post(app.url("/accounts/me/logout-all"))
                .bearer_auth(access)
                .send()
                .await
                .unwrap()
        } else {
            app.http
                .post(app.url("/accounts/me/password"))
                .bearer_auth(access)
                .json(&serde_json::json!({"current_password": PASSWORD, "new_password": "a new long passphrase here"}))
                .send()
                .await
                .unwrap()
        };
        assert_eq!(resp.status(), 204, "{call}");
        let hop = other
            .get(&format!("/oauth2/authorize?{}", query(&client, &[])))
            .await;
        assert!(
            hop.location.unwrap().contains("/login?"),
            "{call}: the other browser is signed out"
        );
        if call == "password" {
            // The caller's own browser session stays (SPEC §6: other sessions end).
            let hop = browser
                .get(&format!("/oauth2/authorize?{}", query(&client, &[])))
                .await;
            assert!(hop.location.unwrap().starts_with(CB));
        }
    }
}

#[tokio::test]
async fn clients_register_redirect_uris_from_the_cli_and_the_admin_api() {
    let app = TestApp::spawn().await;
    let made = app
        .cli(&[
            "clients",
            "create",
            "--name",
            "spa",
            "--public",
            "--grant",
            "authorization_code",
            "--redirect-uri",
            "https://app.example/cb",
            "--redirect-uri",
            "com.example.app:/oauth2redirect",
            "--post-logout-redirect-uri",
            BYE,
            "--first-party",
        ])
        .await;
    assert_eq!(
        made["redirect_uris"],
        serde_json::json!(["https://app.example/cb", "com.example.app:/oauth2redirect"])
    );
    assert_eq!(made["post_logout_redirect_uris"], serde_json::json!([BYE]));
    assert_eq!(made["first_party"], true);
    for bad in [
        vec!["--grant", "authorization_code"],
        vec![
            "--grant",
            "authorization_code",
            "--redirect-uri",
            "http://app.example/cb",
        ],
        vec![
            "--grant",
            "authorization_code",
            "--redirect-uri",
            "javascript:alert(1)",
        ],
        vec![
            "--grant",
            "authorization_code",
            "--redirect-uri",
            "https://app.example/cb#x",
        ],
    ] {
        let mut args = vec!["clients", "create", "--name", "bad"];
        args.extend(bad.iter());
        assert!(app.try_cli(&args, "").await.is_err(), "{bad:?}");
    }

    app.create_user("root@example.com").await;
    app.cli(&[
        "users",
        "set-role",
        "--email",
        "root@example.com",
        "--role",
        "admin",
    ])
    .await;
    let web = app.web_client().await;
    let admin = app.login(&web, "root@example.com", None).await;
    let token = admin["access_token"].as_str().unwrap();
    let id = made["client_id"].as_str().unwrap();
    let resp = app
        .http
        .patch(app.url(&format!("/admin/clients/{id}")))
        .bearer_auth(token)
        .json(&serde_json::json!({"redirect_uris": ["https://app.example/new"], "first_party": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["redirect_uris"],
        serde_json::json!(["https://app.example/new"])
    );
    assert_eq!(body["first_party"], false);
    assert_eq!(body["post_logout_redirect_uris"], serde_json::json!([BYE]));
    let resp = app
        .http
        .patch(app.url(&format!("/admin/clients/{id}")))
        .bearer_auth(token)
        .json(&serde_json::json!({"redirect_uris": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422, "the code grant needs a redirect URI");
}

/// `BASE64URL(SHA-256(VERIFIER))` is `CHALLENGE` (RFC 7636 Appendix B).
#[test]
fn the_test_verifier_fits_its_challenge() {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, VERIFIER.as_bytes());
    assert_eq!(URL_SAFE_NO_PAD.encode(digest.as_ref()), CHALLENGE);
}
