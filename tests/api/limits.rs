//! Abuse limits (SPEC §8, §10): per-IP request budgets, per-username login
//! back-off held in the database, and the per-client budget for wrong secrets.

use std::time::Duration;

use serde_json::Value;
use sqlx::Connection;

use crate::helpers::*;

/// 6 a minute: a burst of 2, then one every 10 s.
const TINY_BUDGET: &str = "6";

fn retry_after(resp: &reqwest::Response) -> u64 {
    resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in whole seconds")
}

/// A token request that fails fast (no client), so it costs nothing but the budget.
async fn anonymous_token_request(app: &TestApp, forwarded_for: Option<&str>) -> reqwest::Response {
    let mut req = app
        .http
        .post(app.url("/oauth2/token"))
        .form(&[("grant_type", "client_credentials")]);
    if let Some(xff) = forwarded_for {
        req = req.header("x-forwarded-for", xff);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn the_token_endpoint_answers_429_temporarily_unavailable_once_an_ip_spends_its_budget() {
    let app = TestApp::spawn_with(|c| c.rate_limit_per_minute = TINY_BUDGET.into()).await;

    for n in 0..2 {
        let resp = anonymous_token_request(&app, None).await;
        assert_eq!(resp.status(), 401, "request {n} is within the burst");
    }
    let resp = anonymous_token_request(&app, None).await;

    assert_eq!(resp.status(), 429);
    let wait = retry_after(&resp);
    assert!((1..=10).contains(&wait), "Retry-After {wait}");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert!(resp.headers().contains_key("x-request-id"));
    assert_eq!(
        resp.text().await.unwrap(),
        r#"{"error":"temporarily_unavailable"}"#
    );
    // Endpoints outside the budget still answer.
    let jwks = app
        .http
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(jwks.status(), 200);
}

#[tokio::test]
async fn the_account_api_and_hosted_pages_answer_429_problem_json_once_an_ip_spends_its_budget() {
    let app = TestApp::spawn_with(|c| c.rate_limit_per_minute = TINY_BUDGET.into()).await;
    let me = || app.http.get(app.url("/accounts/me")).send();

    assert_eq!(me().await.unwrap().status(), 401);
    assert_eq!(me().await.unwrap().status(), 401);
    let resp = me().await.unwrap();

    assert_eq!(resp.status(), 429);
    assert!((1..=10).contains(&retry_after(&resp)));
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], 429);
    assert_eq!(body["code"], "rate_limited", "{body}");
    // The hosted pages spend the same budget.
    let page = app
        .http
        .get(app.url("/verify-email?token=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 429);
    assert_eq!(page.headers()["content-type"], "application/problem+json");
    let health = app.http.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn forwarded_for_names_the_client_only_behind_a_trusted_proxy() {
    // The test client connects from 127.0.0.1: here that is a trusted proxy.
    let proxied = TestApp::spawn_with(|c| {
        c.rate_limit_per_minute = TINY_BUDGET.into();
        c.trusted_proxies = "127.0.0.1/32".into();
    })
    .await;
    let status = |resp: reqwest::Response| resp.status().as_u16();

    for _ in 0..2 {
        assert_eq!(
            status(anonymous_token_request(&proxied, Some("203.0.113.1")).await),
            401
        );
    }
    assert_eq!(
        status(anonymous_token_request(&proxied, Some("203.0.113.1")).await),
        429,
        "203.0.113.1 spent its budget"
    );
    assert_eq!(
        status(anonymous_token_request(&proxied, Some("203.0.113.2")).await),
        401,
        "another client behind the proxy has its own budget"
    );
    assert_eq!(
        status(anonymous_token_request(&proxied, Some("198.51.100.7, 203.0.113.1")).await),
        429,
        "hops left of the rightmost untrusted one are the client's own words"
    );

    // Without trusted proxies the header is ignored: one budget for the peer.
    let direct = TestApp::spawn_with(|c| c.rate_limit_per_minute = TINY_BUDGET.into()).await;
    for xff in ["203.0.113.1", "203.0.113.2"] {
        assert_eq!(status(anonymous_token_request(&direct, Some(xff)).await), 401);
    }
    assert_eq!(
        status(anonymous_token_request(&direct, Some("203.0.113.3")).await),
        429,
        "X-Forwarded-For from an untrusted peer changes nothing"
    );
}

async fn password_login(
    app: &TestApp,
    client: &TestClient,
    email: &str,
    password: &str,
) -> (u16, String, String) {
    let resp = app
        .token(
            client,
            &[
                ("grant_type", "password"),
                ("username", email),
                ("password", password),
            ],
        )
        .await;
    let status = resp.status().as_u16();
    let cache = resp.headers()["cache-control"].to_str().unwrap().to_owned();
    (status, cache, resp.text().await.unwrap())
}

/// The key of ada@example.com's login attempts: its SHA-256.
fn ada_digest() -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"ada@example.com")
        .as_ref()
        .to_vec()
}

fn unix_now() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.expect("after 1970").as_secs() as i64
}

/// `login_backoff_after` = 2: the first back-off lasts 1–2 s, the next 3–4 s.
async fn backoff_app() -> TestApp {
    TestApp::spawn_with(|c| c.login_backoff_after = "2".into()).await
}

#[tokio::test]
async fn failed_logins_back_off_on_every_instance_with_the_answer_of_a_wrong_password() {
    let app = backoff_app().await;
    let sibling = app.spawn_sibling().await;
    let client = app.web_client().await;
    app.create_user("ada@example.com").await;
    let wrong = (
        400,
        "no-store".to_owned(),
        r#"{"error":"invalid_grant"}"#.to_owned(),
    );

    // Two failures start the back-off: now even the right password is refused,
    // with exactly the answer of a wrong one.
    for _ in 0..2 {
        assert_eq!(
            password_login(&app, &client, "ada@example.com", "not it").await,
            wrong
        );
    }
    assert_eq!(
        password_login(&app, &client, "ada@example.com", PASSWORD).await,
        wrong,
        "backed off: the right password is refused like a wrong one"
    );

    // After it, one more failure backs off twice as long, on both instances,
    // whatever case the username is typed in.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        password_login(&app, &client, "ada@example.com", "not it").await,
        wrong
    );
    assert_eq!(
        password_login(&app, &client, "Ada@Example.com", PASSWORD).await,
        wrong
    );
    assert_eq!(
        password_login(&sibling, &client, "ada@example.com", PASSWORD).await,
        wrong,
        "the back-off is in the database: another instance holds it too"
    );

    // It ends by itself, and a success starts the count again.
    tokio::time::sleep(Duration::from_millis(4100)).await;
    let (status, _, _) = password_login(&sibling, &client, "ada@example.com", PASSWORD).await;
    assert_eq!(status, 200, "the back-off has ended");
    assert_eq!(
        password_login(&app, &client, "ada@example.com", "not it").await,
        wrong
    );
    let (status, _, _) = password_login(&app, &client, "ada@example.com", PASSWORD).await;
    assert_eq!(status, 200, "one failure after a success is not a back-off");
}

#[tokio::test]
async fn right_passwords_typed_side_by_side_all_get_in_on_every_instance() {
    // Each attempt counts as a failure while it is checked: 6 at once, with
    // 2 failures allowed, used to find the account backed off by the others.
    let app = backoff_app().await;
    let sibling = app.spawn_sibling().await;
    let client = app.web_client().await;
    app.create_user("fleet@example.com").await;

    let logins = (0..6).map(|i| {
        let (at, client) = (if i % 2 == 0 { &app } else { &sibling }, &client);
        async move { password_login(at, client, "fleet@example.com", PASSWORD).await.0 }
    });
    let statuses = futures_join_all(logins).await;

    assert_eq!(statuses, vec![200; 6]);
    let mut db = sqlx::AnyConnection::connect(&app.config.database_url)
        .await
        .unwrap();
    let (left,): (i64,) = sqlx::query_as("select count(*) from login_attempt")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(left, 0, "the last success cleared the count");
    let _ = db.close().await;
}

#[tokio::test]
async fn guesses_sent_side_by_side_reach_the_password_check_only_as_the_schedule_allows() {
    let app = backoff_app().await;
    let sibling = app.spawn_sibling().await;
    let client = app.web_client().await;
    app.create_user("ada@example.com").await;
    let mut db = sqlx::AnyConnection::connect(&app.config.database_url)
        .await
        .unwrap();
    // 4 failures, the back-off they earned over: the next attempt backs the
    // account off for 16 s as soon as it starts.
    sqlx::query(
        "insert into login_attempt (username_digest, failures, last_attempt_at, blocked_until) \
         values ($1, 4, $2, 0)",
    )
    .bind(ada_digest())
    .bind(unix_now())
    .execute(&mut db)
    .await
    .unwrap();

    // One guess is checked; the others wait for it to fail, then are
    // refused uncounted.
    let guesses = (0..10).map(|i| {
        let (at, client) = (if i % 2 == 0 { &app } else { &sibling }, &client);
        async move { password_login(at, client, "ada@example.com", "not it").await.0 }
    });
    assert_eq!(futures_join_all(guesses).await, vec![400; 10]);

    let row: (i64, i64) = sqlx::query_as("select failures, in_flight from login_attempt")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(row, (5, 0), "one more guess checked, none still in flight");
    let (status, _, _) = password_login(&app, &client, "ada@example.com", PASSWORD).await;
    assert_eq!(
        status, 400,
        "nothing in flight: the right password is refused at once"
    );
    let _ = db.close().await;
}

#[tokio::test]
async fn an_attempt_that_never_finishes_holds_logins_back_no_longer_than_half_the_request_timeout() {
    // Requests time out after 8 s: a login waits at most 4 s.
    let app = TestApp::spawn_with(|c| {
        c.login_backoff_after = "2".into();
        c.request_timeout = "8".into();
    })
    .await;
    let client = app.web_client().await;
    app.create_user("ada@example.com").await;
    let mut db = sqlx::AnyConnection::connect(&app.config.database_url)
        .await
        .unwrap();
    // As an instance that died checking the second attempt leaves the row.
    let died = |blocked_until: i64, in_flight_until: i64| {
        sqlx::query(
            "insert into login_attempt \
             (username_digest, failures, last_attempt_at, blocked_until, in_flight, in_flight_until) \
             values ($1, 2, $2, $3, 1, $4)",
        )
        .bind(ada_digest())
        .bind(unix_now())
        .bind(blocked_until)
        .bind(in_flight_until)
    };
    let forget = || sqlx::query("delete from login_attempt");

    // Its attempt gone stale: refused, as any backed-off login.
    died(unix_now() + 600, unix_now() - 1)
        .execute(&mut db)
        .await
        .unwrap();
    let (status, _, _) = password_login(&app, &client, "ada@example.com", PASSWORD).await;
    assert_eq!(status, 400);

    // Still in flight, for all the login knows: it waits, and the back-off
    // ends first.
    forget().execute(&mut db).await.unwrap();
    died(unix_now() + 3, unix_now() + 30)
        .execute(&mut db)
        .await
        .unwrap();
    let waited = std::time::Instant::now();
    let (status, _, _) = password_login(&app, &client, "ada@example.com", PASSWORD).await;
    assert_eq!(status, 200);
    assert!(
        waited.elapsed() >= Duration::from_secs(1),
        "{:?}",
        waited.elapsed()
    );

    // A long back-off: it waits 4 s, then is refused with `invalid_grant`.
    forget().execute(&mut db).await.unwrap();
    died(unix_now() + 600, unix_now() + 30)
        .execute(&mut db)
        .await
        .unwrap();
    let waited = std::time::Instant::now();
    let (status, _, body) = password_login(&app, &client, "ada@example.com", PASSWORD).await;
    assert_eq!((status, body.as_str()), (400, r#"{"error":"invalid_grant"}"#));
    assert!(
        waited.elapsed() >= Duration::from_secs(3),
        "{:?}",
        waited.elapsed()
    );
    let _ = db.close().await;
}

#[tokio::test]
async fn unknown_usernames_back_off_too_and_are_stored_only_as_digests() {
    let app = backoff_app().await;
    let client = app.web_client().await;
    let wrong = (
        400,
        "no-store".to_owned(),
        r#"{"error":"invalid_grant"}"#.to_owned(),
    );

    // Failures for an address with no account, in two back-off rounds.
    for _ in 0..2 {
        assert_eq!(
            password_login(&app, &client, "ghost@example.com", PASSWORD).await,
            wrong
        );
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        password_login(&app, &client, "ghost@example.com", PASSWORD).await,
        wrong
    );

    // The account appears now; its back-off was earned before it existed.
    app.create_user("ghost@example.com").await;
    assert_eq!(
        password_login(&app, &client, "ghost@example.com", PASSWORD).await,
        wrong,
        "the back-off does not depend on the account existing"
    );

    let mut db = sqlx::AnyConnection::connect(&app.config.database_url)
        .await
        .unwrap();
    let rows: Vec<(Vec<u8>, i64)> = sqlx::query_as("select username_digest, failures from login_attempt")
        .fetch_all(&mut db)
        .await
        .unwrap();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"ghost@example.com");
    assert_eq!(rows, vec![(digest.as_ref().to_vec(), 3)]);
    let _ = db.close().await;
}

#[tokio::test]
async fn wrong_client_secrets_are_refused_once_over_budget_but_the_right_one_always_works() {
    let app = TestApp::spawn().await;
    let api = app.create_client(&["--grant", "client_credentials"]).await;
    let guesser = TestClient {
        id: api.id.clone(),
        secret: Some("ghs_not_the_secret".into()),
    };
    let grant = [("grant_type", "client_credentials")];

    for n in 0..10 {
        let resp = app.token(&guesser, &grant).await;
        assert_eq!(resp.status(), 401, "wrong secret {n} is answered as usual");
    }
    let resp = app.token(&guesser, &grant).await;
    assert_eq!(resp.status(), 429, "the budget is spent");
    assert!((1..=6).contains(&retry_after(&resp)));
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(
        resp.text().await.unwrap(),
        r#"{"error":"temporarily_unavailable"}"#
    );

    // The right secret is never held back, over Basic or in the body.
    assert_eq!(app.token(&api, &grant).await.status(), 200);
    let resp = app
        .http
        .post(app.url("/oauth2/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", api.id.as_str()),
            ("client_secret", api.secret.as_deref().unwrap()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Wrong guesses stay refused; another client is not affected.
    assert_eq!(app.token(&guesser, &grant).await.status(), 429);
    let other = app.create_client(&["--grant", "client_credentials"]).await;
    let other_guesser = TestClient {
        id: other.id,
        secret: Some("ghs_not_the_secret".into()),
    };
    assert_eq!(app.token(&other_guesser, &grant).await.status(), 401);
}
