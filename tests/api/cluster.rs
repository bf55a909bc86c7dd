//! Several instances on one database (SPEC §2, §3, issue 6 §2): each test
//! runs two real `gatehouse serve` processes, A and B, on the test database
//! (PostgreSQL under `GATEHOUSE_TEST_DATABASE_URL`, else one SQLite file that
//! both open) and one keys directory, as an operator runs them behind a load
//! balancer. The in-process `TestApp` only holds the directory and runs the
//! CLI.
//!
//! Also shown elsewhere with in-process siblings:
//! `keys::a_sibling_instance_shares_keys_and_picks_up_a_rotation_without_restart`,
//! `limits::failed_logins_back_off_on_every_instance_with_the_answer_of_a_wrong_password`,
//! `mail::two_instances_on_one_database_deliver_each_message_once`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::*;
use crate::interop::{fetch_jwks, kid_of, verify_access_token};
use crate::smtp_sink::SmtpSink;

/// The test app (database, keys, CLI) and two server processes on it.
async fn pair(tweak: impl FnOnce(&mut gatehouse::config::Config)) -> (TestApp, ServerProcess, ServerProcess) {
    let app = TestApp::spawn_with(tweak).await;
    let a = ServerProcess::start(&app, &[]).await;
    let b = ServerProcess::start(&app, &[]).await;
    (app, a, b)
}

async fn json_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn login(server: &ServerProcess, client: &TestClient, email: &str) -> Value {
    let resp = server
        .token(
            client,
            &[
                ("grant_type", "password"),
                ("username", email),
                ("password", PASSWORD),
                ("scope", "openid profile email"),
            ],
        )
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 200, "login at {}: {body}", server.base);
    body
}

async fn introspect(server: &ServerProcess, client: &TestClient, token: &str) -> Value {
    let resp = server
        .http
        .post(server.url("/oauth2/introspect"))
        .basic_auth(&client.id, client.secret.as_deref())
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn userinfo(server: &ServerProcess, access_token: &str) -> u16 {
    server
        .http
        .get(server.url("/oauth2/userinfo"))
        .bearer_auth(access_token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn str_of<'v>(v: &'v Value, field: &str) -> &'v str {
    v[field].as_str().unwrap_or_else(|| panic!("{field} in {v}"))
}

#[tokio::test]
async fn a_token_from_one_process_verifies_introspects_and_refreshes_at_the_other() {
    let (app, a, b) = pair(|_| {}).await;
    let web = app.web_client().await;
    app.create_user("ada@example.com").await;

    let issued = login(&a, &web, "ada@example.com").await;
    let at = str_of(&issued, "access_token");

    // B's JWKS verifies A's signature; B introspects it and serves userinfo.
    let jwks_b = fetch_jwks(&b.http, &b.url("/.well-known/jwks.json")).await;
    let claims = verify_access_token(at, &jwks_b, &app);
    let found = introspect(&b, &web, at).await;
    assert_eq!(found["active"], true, "{found}");
    assert_eq!(found["sub"], claims["sub"]);
    assert_eq!(userinfo(&b, at).await, 200);

    // B rotates A's refresh token; the result verifies at A and keeps the sid.
    let (status, refreshed) = json_of(b.refresh(&web, str_of(&issued, "refresh_token")).await.unwrap()).await;
    assert_eq!(status, 200, "{refreshed}");
    let jwks_a = fetch_jwks(&a.http, &a.url("/.well-known/jwks.json")).await;
    let again = verify_access_token(str_of(&refreshed, "access_token"), &jwks_a, &app);
    assert_eq!(again["sid"], claims["sid"], "one login, one sid");
    let rt2 = str_of(&refreshed, "refresh_token");
    assert_eq!(introspect(&a, &web, rt2).await["active"], true);
    // And A takes B's refresh token in turn.
    assert_eq!(a.refresh(&web, rt2).await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_refresh_token_replayed_at_the_other_process_ends_the_chain_on_both() {
    let (app, a, b) = pair(|_| {}).await;
    let web = app.web_client().await;
    app.create_user("ada@example.com").await;

    // Refreshed at A, then the old token replayed at B.
    let issued = login(&a, &web, "ada@example.com").await;
    let rt1 = str_of(&issued, "refresh_token");
    let (status, rotated) = json_of(a.refresh(&web, rt1).await.unwrap()).await;
    assert_eq!(status, 200);
    let (status, body) = json_of(b.refresh(&web, rt1).await.unwrap()).await;
    assert_eq!((status, str_of(&body, "error")), (400, "invalid_grant"));

    // The whole chain is dead everywhere: the newest refresh token, and the
    // access tokens of the login, at both processes.
    let rt2 = str_of(&rotated, "refresh_token");
    for (server, name) in [(&a, "A"), (&b, "B")] {
        assert_eq!(
            introspect(server, &web, rt2).await,
            serde_json::json!({"active": false}),
            "{name}"
        );
        for at in [&issued, &rotated].map(|t| str_of(t, "access_token")) {
            assert_eq!(introspect(server, &web, at).await["active"], false, "{name}");
            assert_eq!(userinfo(server, at).await, 401, "{name}");
        }
    }
    for server in [&a, &b] {
        let (status, body) = json_of(server.refresh(&web, rt2).await.unwrap()).await;
        assert_eq!((status, str_of(&body, "error")), (400, "invalid_grant"));
    }

    // One token sent to both at the same moment: exactly one 200, and the
    // loser's answer ends the chain the winner just extended.
    for round in 0..5 {
        let issued = login(&b, &web, "ada@example.com").await;
        let rt = str_of(&issued, "refresh_token");
        let (ra, rb) = tokio::join!(a.refresh(&web, rt), b.refresh(&web, rt));
        let (sa, ba) = json_of(ra.unwrap()).await;
        let (sb, bb) = json_of(rb.unwrap()).await;
        let mut statuses = [sa, sb];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 400], "round {round}: {ba} {bb}");
        let winner = if sa == 200 { &ba } else { &bb };
        for server in [&a, &b] {
            let at = str_of(winner, "access_token");
            assert_eq!(
                introspect(server, &web, at).await["active"],
                false,
                "round {round}"
            );
        }
        assert_eq!(
            a.refresh(&web, str_of(winner, "refresh_token"))
                .await
                .unwrap()
                .status(),
            400,
            "round {round}: the winner's token died with the chain"
        );
    }
}

async fn attempt(server: &ServerProcess, web: &TestClient, password: &str) -> (u16, String) {
    let resp = server
        .token(
            web,
            &[
                ("grant_type", "password"),
                ("username", "ada@example.com"),
                ("password", password),
            ],
        )
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

#[tokio::test]
async fn failed_logins_at_one_process_back_off_the_account_at_the_other() {
    // With 2, the first back-off lasts 1–2 s (see limits.rs).
    let (app, a, b) = pair(|c| c.login_backoff_after = "2".into()).await;
    let web = app.web_client().await;
    app.create_user("ada@example.com").await;
    let wrong = (400, r#"{"error":"invalid_grant"}"#.to_owned());

    for _ in 0..2 {
        assert_eq!(attempt(&a, &web, "not the password").await, wrong);
    }
    // B has seen no failure itself, yet refuses the right password.
    assert_eq!(
        attempt(&b, &web, PASSWORD).await,
        wrong,
        "the back-off lives in the database"
    );

    // It is a back-off, not a broken login: B lets the account in once it ends.
    let started = Instant::now();
    loop {
        let (status, _) = attempt(&b, &web, PASSWORD).await;
        if status == 200 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "the back-off ended");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `GATEHOUSE_JWKS_MAX_AGE` of the servers and the CLI in the next test.
const MAX_AGE: u64 = 3;

async fn jwks_kids(server: &ServerProcess) -> (Vec<String>, String) {
    let resp = server
        .http
        .get(server.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let cache = resp.headers()["cache-control"].to_str().unwrap().to_owned();
    let body: Value = resp.json().await.unwrap();
    let kids = body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| str_of(k, "kid").to_owned())
        .collect();
    (kids, cache)
}

async fn service_kid(server: &ServerProcess, client: &TestClient) -> String {
    let resp = server
        .token(client, &[("grant_type", "client_credentials")])
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 200, "{body}");
    kid_of(str_of(&body, "access_token"))
}

#[tokio::test]
async fn a_key_rotated_with_the_cli_is_published_by_both_within_the_jwks_max_age() {
    let (app, a, b) = pair(|c| c.jwks_max_age = MAX_AGE.to_string()).await;
    let api = app.create_client(&["--grant", "client_credentials"]).await;
    let (before, cache) = jwks_kids(&a).await;
    assert_eq!(before.len(), 1);
    assert_eq!(cache, format!("public, max-age={MAX_AGE}"));
    assert_eq!(jwks_kids(&b).await, (before.clone(), cache));

    // The operator's command, the real binary, with the servers' settings.
    let started = Instant::now();
    let out = gatehouse_command()
        .current_dir(app.dir.path())
        .envs(shared_env(&app.config))
        .args(["keys", "rotate"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let finished = Instant::now();
    let rotated: Value = serde_json::from_slice(&out.stdout).unwrap();
    let new = str_of(&rotated, "kid").to_owned();
    assert!(!before.contains(&new));

    // Published by both within the max-age (in fact within a reload, ~1 s),
    // while both still sign with the old key.
    let mut published = HashMap::new();
    while published.len() < 2 {
        for (name, server) in [("A", &a), ("B", &b)] {
            if !published.contains_key(name) && jwks_kids(server).await.0.contains(&new) {
                published.insert(name, started.elapsed());
                assert_eq!(
                    service_kid(server, &api).await,
                    before[0],
                    "{name} signs with the new key too early"
                );
            }
        }
        assert!(
            finished.elapsed() < Duration::from_secs(MAX_AGE),
            "not published by both within the max-age: {published:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Both sign with it once a verifier's cached JWKS must hold it; each
    // instance's tokens verify with the other's key set.
    let mut signing = HashMap::new();
    while signing.len() < 2 {
        for (name, server) in [("A", &a), ("B", &b)] {
            if !signing.contains_key(name) && service_kid(server, &api).await == new {
                signing.insert(name, started.elapsed());
            }
        }
        // Signs from (whole seconds) the command's clock + the max-age,
        // seen within a reload (1 s) by each instance.
        assert!(
            finished.elapsed() < Duration::from_secs(MAX_AGE + 3),
            "both sign with the new key soon after the max-age: {signing:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = signing.values().min().unwrap();
    assert!(
        *first >= Duration::from_secs(MAX_AGE - 1),
        "signed {first:?} after the rotation began, before a cached JWKS could hold the key"
    );
    println!(
        "`keys rotate` took {:?}; published at {published:?}, signing at {signing:?} after it began",
        finished - started
    );
    for (signer, verifier) in [(&a, &b), (&b, &a)] {
        let resp = signer
            .token(&api, &[("grant_type", "client_credentials")])
            .await
            .unwrap();
        let (_, body) = json_of(resp).await;
        let jwks = fetch_jwks(&verifier.http, &verifier.url("/.well-known/jwks.json")).await;
        verify_access_token(str_of(&body, "access_token"), &jwks, &app);
    }
}

#[tokio::test]
async fn mail_queued_at_either_process_is_sent_once() {
    let sink = SmtpSink::start().await;
    let smtp = sink.url();
    let (app, a, b) = pair(move |c| c.smtp_url = Some(smtp)).await;
    let db = test_db(&app).await;

    // Registrations through both; each queues one verification mail.
    let recipients: Vec<String> = (0..8).map(|n| format!("user{n}@example.com")).collect();
    for (n, email) in recipients.iter().enumerate() {
        let server = if n % 2 == 0 { &a } else { &b };
        let resp = server
            .http
            .post(server.url("/accounts"))
            .json(&serde_json::json!({"email": email, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
    }

    // Once every row is marked sent, no instance picks it again: what the
    // sink holds then is all there will ever be.
    let started = Instant::now();
    loop {
        let (queued, unsent): (i64, i64) = sqlx::query_as(
            "select count(*), coalesce(sum(case when sent_at is null then 1 else 0 end), 0) from mail_message",
        )
        .fetch_one(db.pool())
        .await
        .unwrap();
        if queued == 8 && unsent == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{unsent} of {queued} unsent"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut to: Vec<String> = sink.envelopes().iter().flat_map(|e| e.rcpt_to.clone()).collect();
    to.sort();
    assert_eq!(to, recipients, "each message to its recipient, exactly once");
    let mut ids: Vec<String> = sink.received().iter().map(|m| m.message_id()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 8, "eight distinct messages");
}
