//! The account life cycle end to end, mail read from a real SMTP server.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;
use crate::smtp_sink::SmtpSink;

const WAIT: Duration = Duration::from_secs(5);
const NEW_PASSWORD: &str = "a brand new passphrase";

async fn with_sink() -> (TestApp, SmtpSink) {
    let sink = SmtpSink::start().await;
    let url = sink.url();
    let app = TestApp::spawn_with(|c| c.smtp_url = Some(url)).await;
    (app, sink)
}

async fn post_json(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
    app.http.post(app.url(path)).json(&body).send().await.unwrap()
}

async fn register(app: &TestApp, email: &str) -> reqwest::Response {
    post_json(
        app,
        "/accounts",
        json!({"email": email, "password": PASSWORD, "name": "Ada"}),
    )
    .await
}

#[tokio::test]
async fn register_verify_then_log_in() {
    let (app, sink) = with_sink().await;
    let client = app.web_client().await;

    let resp = register(&app, "Ada@Example.com").await;
    assert_eq!(resp.status(), 202);
    let form = [
        ("grant_type", "password"),
        ("username", "ada@example.com"),
        ("password", PASSWORD),
    ];
    let body: Value = app.token(&client, &form).await.json().await.unwrap();
    assert_eq!(body["error_description"], "email not verified");

    let mail = sink.last_mail_to("Ada@Example.com", WAIT).await;
    assert!(mail.html.is_some() && mail.text.is_some(), "text and HTML parts");
    let link = mail
        .link(&format!("{}/verify-email?token=", app.base))
        .expect("a verification link");
    let token = mail.token("/verify-email").unwrap();
    assert!(token.starts_with("gatehouse_ev_"));

    // The page the link opens works without JavaScript: a form to post.
    let page = app.http.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(page.text().await.unwrap().contains("method=\"post\""));

    let resp = post_json(&app, "/accounts/verify-email", json!({"token": token})).await;
    assert_eq!(resp.status(), 204);
    let resp = post_json(&app, "/accounts/verify-email", json!({"token": token})).await;
    assert_eq!(resp.status(), 400, "single use");
    assert_eq!(resp.headers()["content-type"], "application/problem+json");

    let login = app.login(&client, "ada@example.com", Some("openid email")).await;
    let me: Value = app
        .http
        .get(app.url("/accounts/me"))
        .bearer_auth(login["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["email"], "Ada@Example.com", "stored as given");
    assert_eq!(me["email_verified"], true);
    assert_eq!(me["name"], "Ada");
    assert!(me["created_at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn the_verification_page_completes_with_a_plain_form_post() {
    let (app, sink) = with_sink().await;
    register(&app, "ada@example.com").await;
    let token = sink
        .last_mail_to("ada@example.com", WAIT)
        .await
        .token("/verify-email")
        .unwrap();

    let resp = app
        .http
        .post(app.url("/verify-email"))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("confirmed"));

    let foreign = app
        .http
        .post(app.url("/verify-email"))
        .header("origin", "https://evil.example")
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
}

#[tokio::test]
async fn registering_a_taken_address_answers_alike_and_mails_the_owner() {
    let (app, sink) = with_sink().await;
    let first = register(&app, "ada@example.com").await;
    let first_body = first.text().await.unwrap();
    sink.last_mail_to("ada@example.com", WAIT).await;

    let again = register(&app, "ADA@example.com").await;
    assert_eq!(again.status(), 202);
    assert_eq!(again.text().await.unwrap(), first_body);

    let mails = sink.wait_for(2, WAIT).await;
    let notice = mails.last().unwrap();
    assert_eq!(notice.header("subject"), Some("You already have an account"));
    assert!(notice.token("/verify-email").is_none());
    // Still one account.
    let users = app.cli(&["users", "list"]).await;
    assert_eq!(users.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn resend_and_reset_answer_byte_identically_for_known_and_unknown_addresses() {
    let (app, sink) = with_sink().await;
    app.create_user("known@example.com").await;

    for path in ["/accounts/verify-email/resend", "/accounts/password-reset"] {
        let known = post_json(&app, path, json!({"email": "known@example.com"})).await;
        let unknown = post_json(&app, path, json!({"email": "nobody@example.com"})).await;
        assert_eq!(
            (known.status(), unknown.status()),
            (reqwest::StatusCode::ACCEPTED, reqwest::StatusCode::ACCEPTED),
            "{path}"
        );
        assert_eq!(
            known.text().await.unwrap(),
            unknown.text().await.unwrap(),
            "{path}"
        );
    }
    // Only the reset of the known (already verified) address was mailed.
    let mails = sink.wait_for(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sink.received().len(), 1, "{mails:?}");
    assert!(mails[0].token("/reset-password").is_some());
}

#[tokio::test]
async fn password_reset_sets_a_new_password_and_ends_every_session() {
    let (app, sink) = with_sink().await;
    let client = app.web_client().await;
    app.create_user("ada@example.com").await;
    let before = app.login(&client, "ada@example.com", Some("openid")).await;

    assert_eq!(
        post_json(
            &app,
            "/accounts/password-reset",
            json!({"email": "ada@example.com"})
        )
        .await
        .status(),
        202
    );
    let token = sink
        .last_mail_to("ada@example.com", WAIT)
        .await
        .token("/reset-password")
        .unwrap();
    assert!(token.starts_with("gatehouse_pr_"));

    let weak = post_json(
        &app,
        "/accounts/password-reset/confirm",
        json!({"token": token, "new_password": "short"}),
    )
    .await;
    assert_eq!(weak.status(), 422);
    let resp = post_json(
        &app,
        "/accounts/password-reset/confirm",
        json!({"token": token, "new_password": NEW_PASSWORD}),
    )
    .await;
    assert_eq!(resp.status(), 204);
    let again = post_json(
        &app,
        "/accounts/password-reset/confirm",
        json!({"token": token, "new_password": NEW_PASSWORD}),
    )
    .await;
    assert_eq!(again.status(), 400, "single use");

    let old = app
        .token(
            &client,
            &[
                ("grant_type", "password"),
                ("username", "ada@example.com"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(old.status(), 400, "the old password is refused");
    assert_eq!(
        app.refresh(&client, before["refresh_token"].as_str().unwrap())
            .await
            .status(),
        400
    );
    assert_eq!(
        app.userinfo(before["access_token"].as_str().unwrap())
            .await
            .status(),
        401
    );
    let new = app
        .token(
            &client,
            &[
                ("grant_type", "password"),
                ("username", "ada@example.com"),
                ("password", NEW_PASSWORD),
            ],
        )
        .await;
    assert_eq!(new.status(), 200);
}

#[tokio::test]
async fn the_reset_page_sets_a_password_with_a_plain_form_post() {
    let (app, sink) = with_sink().await;
    app.create_user("ada@example.com").await;
    let resp = app
        .http
        .post(app.url("/reset-password"))
        .form(&[("email", "ada@example.com")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mail = sink.last_mail_to("ada@example.com", WAIT).await;
    let link = mail.link(&format!("{}/reset-password?token=", app.base)).unwrap();
    let token = mail.token("/reset-password").unwrap();

    let page = app.http.get(&link).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("name=\"new_password\"") && page.contains("<label for=\"new_password\">"));
    let resp = app
        .http
        .post(app.url("/reset-password"))
        .form(&[("token", token.as_str()), ("new_password", NEW_PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let client = app.web_client().await;
    let new = app
        .token(
            &client,
            &[
                ("grant_type", "password"),
                ("username", "ada@example.com"),
                ("password", NEW_PASSWORD),
            ],
        )
        .await;
    assert_eq!(new.status(), 200);
}

#[tokio::test]
async fn validation_failures_list_every_bad_field() {
    let app = TestApp::spawn().await;

    let resp = post_json(
        &app,
        "/accounts",
        json!({"email": "not an address", "password": "short", "name": "x\u{0}"}),
    )
    .await;
    assert_eq!(resp.status(), 422);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: Value = resp.json().await.unwrap();
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["email", "password", "name"]);
    assert_eq!(body["code"], "validation_failed");

    let resp = post_json(&app, "/accounts", json!({})).await;
    assert_eq!(resp.status(), 422);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errors"].as_array().unwrap().len(), 2);

    let resp = app
        .http
        .post(app.url("/accounts"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
}

async fn signed_in(app: &TestApp, email: &str) -> (TestClient, Value) {
    let client = app.web_client().await;
    app.create_user(email).await;
    let login = app.login(&client, email, Some("openid")).await;
    (client, login)
}

#[tokio::test]
async fn profile_can_be_read_and_renamed() {
    let app = TestApp::spawn().await;
    let (_, login) = signed_in(&app, "ada@example.com").await;
    let at = login["access_token"].as_str().unwrap();

    let resp = app
        .http
        .patch(app.url("/accounts/me"))
        .bearer_auth(at)
        .json(&json!({"name": "Ada L."}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["name"], "Ada L.");

    let resp = app.http.get(app.url("/accounts/me")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let resp = app
        .http
        .get(app.url("/accounts/me"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn changing_the_password_ends_the_other_sessions_only() {
    let app = TestApp::spawn().await;
    let (client, mine) = signed_in(&app, "ada@example.com").await;
    let other = app.login(&client, "ada@example.com", Some("openid")).await;
    let at = mine["access_token"].as_str().unwrap();

    let wrong = app
        .http
        .post(app.url("/accounts/me/password"))
        .bearer_auth(at)
        .json(&json!({"current_password": "not it", "new_password": NEW_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403);
    let resp = app
        .http
        .post(app.url("/accounts/me/password"))
        .bearer_auth(at)
        .json(&json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);

    assert_eq!(
        app.userinfo(at).await.status(),
        200,
        "the caller's session survives"
    );
    assert_eq!(
        app.refresh(&client, mine["refresh_token"].as_str().unwrap())
            .await
            .status(),
        200
    );
    assert_eq!(
        app.userinfo(other["access_token"].as_str().unwrap())
            .await
            .status(),
        401
    );
    assert_eq!(
        app.refresh(&client, other["refresh_token"].as_str().unwrap())
            .await
            .status(),
        400
    );
}

#[tokio::test]
async fn logout_all_ends_every_session() {
    let app = TestApp::spawn().await;
    let (client, one) = signed_in(&app, "ada@example.com").await;
    let two = app.login(&client, "ada@example.com", Some("openid")).await;

    let resp = app
        .http
        .post(app.url("/accounts/me/logout-all"))
        .bearer_auth(one["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);

    for login in [&one, &two] {
        assert_eq!(
            app.userinfo(login["access_token"].as_str().unwrap())
                .await
                .status(),
            401
        );
        assert_eq!(
            app.refresh(&client, login["refresh_token"].as_str().unwrap())
                .await
                .status(),
            400
        );
    }
}

#[tokio::test]
async fn deleting_the_account_removes_it_and_its_tokens() {
    let (app, sink) = with_sink().await;
    let (client, login) = signed_in(&app, "ada@example.com").await;
    let at = login["access_token"].as_str().unwrap();
    // A pending reset token and its mail.
    post_json(
        &app,
        "/accounts/password-reset",
        json!({"email": "ada@example.com"}),
    )
    .await;
    sink.last_mail_to("ada@example.com", WAIT).await;

    let wrong = app
        .http
        .delete(app.url("/accounts/me"))
        .bearer_auth(at)
        .json(&json!({"password": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403);
    let resp = app
        .http
        .delete(app.url("/accounts/me"))
        .bearer_auth(at)
        .json(&json!({"password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);

    assert_eq!(app.introspect(&client, at).await, json!({"active": false}));
    assert_eq!(
        app.refresh(&client, login["refresh_token"].as_str().unwrap())
            .await
            .status(),
        400
    );
    let db = gatehouse::store::Db::connect(&app.config.database_url)
        .await
        .unwrap();
    for table in [
        "user_account",
        "login_session",
        "refresh_token",
        "account_token",
        "mail_message",
    ] {
        let (count,): (i64,) = sqlx::query_as(&format!("select count(*) from {table}"))
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(count, 0, "{table} still has rows");
    }
    db.close().await;
}

#[tokio::test]
async fn registration_while_smtp_is_down_answers_at_once_and_mails_once_it_is_back() {
    let (app, mut sink) = with_sink().await;
    sink.stop().await;

    let started = std::time::Instant::now();
    let resp = register(&app, "ada@example.com").await;
    assert_eq!(resp.status(), 202);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the API does not wait for SMTP"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(sink.received().is_empty());

    sink.restart().await;
    let mail = sink
        .last_mail_to("ada@example.com", Duration::from_secs(20))
        .await;
    let token = mail.token("/verify-email").expect("the link survived the outage");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(sink.received().len(), 1, "delivered once");
    assert_eq!(
        post_json(&app, "/accounts/verify-email", json!({"token": token}))
            .await
            .status(),
        204
    );
}

#[tokio::test]
async fn a_password_change_lists_every_bad_field_and_kills_older_reset_links() {
    let (app, sink) = with_sink().await;
    let (_, login) = signed_in(&app, "ada@example.com").await;
    let at = login["access_token"].as_str().unwrap();
    post_json(
        &app,
        "/accounts/password-reset",
        json!({"email": "ada@example.com"}),
    )
    .await;
    let reset = sink
        .last_mail_to("ada@example.com", WAIT)
        .await
        .token("/reset-password")
        .unwrap();

    let resp = app
        .http
        .post(app.url("/accounts/me/password"))
        .bearer_auth(at)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body: Value = resp.json().await.unwrap();
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["current_password", "new_password"]);

    let resp = app
        .http
        .post(app.url("/accounts/me/password"))
        .bearer_auth(at)
        .json(&json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let late = post_json(
        &app,
        "/accounts/password-reset/confirm",
        json!({"token": reset, "new_password": "yet another passphrase"}),
    )
    .await;
    assert_eq!(late.status(), 400, "the older reset link no longer works");

    let me = app
        .http
        .get(app.url("/accounts/me"))
        .bearer_auth(at)
        .send()
        .await
        .unwrap();
    assert_eq!(me.headers()["cache-control"], "no-store");
}
