//! Tokens we check: userinfo, introspection, revocation, and their effect at once.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::helpers::*;

const INACTIVE: &str = r#"{"active":false}"#;

async fn introspect_text(app: &TestApp, client: &TestClient, token: &str) -> String {
    let resp = app
        .post_form("/oauth2/introspect", client, &[("token", token)])
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    resp.text().await.unwrap()
}

#[tokio::test]
async fn userinfo_answers_with_the_claims_the_scopes_allow() {
    let app = TestApp::spawn().await;
    let client = app.web_client().await;
    let id = app.create_user("ada@example.com").await;
    let with_email = app.login(&client, "ada@example.com", Some("openid email")).await;
    let without_openid = app.login(&client, "ada@example.com", Some("email")).await;

    let resp = app.userinfo(with_email["access_token"].as_str().unwrap()).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"sub": id, "email": "ada@example.com", "email_verified": true})
    );

    let resp = app
        .http
        .post(app.url("/oauth2/userinfo"))
        .bearer_auth(with_email["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "POST works too");

    let resp = app
        .userinfo(without_openid["access_token"].as_str().unwrap())
        .await;
    assert_eq!(resp.status(), 403);
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("error=\"insufficient_scope\"")
    );
}

#[tokio::test]
async fn userinfo_errors_follow_rfc_6750() {
    let app = TestApp::spawn().await;

    let resp = app.http.get(app.url("/oauth2/userinfo")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(
        challenge.starts_with("Bearer") && !challenge.contains("error="),
        "{challenge}"
    );

    let resp = app.userinfo("not.a.token").await;
    assert_eq!(resp.status(), 401);
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("error=\"invalid_token\"")
    );
}

#[tokio::test]
async fn introspection_describes_active_tokens_and_nothing_else() {
    let app = TestApp::spawn().await;
    let client = app.web_client().await;
    let other = app.web_client().await;
    let public = app.create_client(&["--public", "--grant", "password"]).await;
    let id = app.create_user("ada@example.com").await;
    let login = app.login(&client, "ada@example.com", Some("openid")).await;
    let at = login["access_token"].as_str().unwrap();
    let rt = login["refresh_token"].as_str().unwrap();

    let seen = app.introspect(&other, at).await;
    assert_eq!(seen["active"], true);
    assert_eq!(seen["sub"], id.as_str());
    assert_eq!(seen["client_id"], client.id.as_str());
    assert_eq!(seen["scope"], "openid");
    assert_eq!(seen["iss"], app.base.as_str());
    assert_eq!(seen["aud"], app.base.as_str());
    assert_eq!(seen["username"], "ada@example.com");
    assert_eq!(seen["token_type"], "Bearer");
    assert!(seen["exp"].is_i64() && seen["iat"].is_i64());

    // A refresh token only by its own client.
    let seen = app.introspect(&client, rt).await;
    assert_eq!(
        (seen["active"].as_bool(), seen["sub"].as_str()),
        (Some(true), Some(id.as_str()))
    );
    assert_eq!(introspect_text(&app, &other, rt).await, INACTIVE);

    // Forged, tampered and unknown tokens.
    let mut parts: Vec<&str> = at.split('.').collect();
    let forged_claims = URL_SAFE_NO_PAD.encode(br#"{"sub":"someone-else"}"#);
    parts[1] = &forged_claims;
    let tampered = parts.join(".");
    let alg_none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"at+jwt"}"#),
        at.split('.').nth(1).unwrap()
    );
    for token in [tampered.as_str(), alg_none.as_str(), "garbage", "ghr_unknown", ""] {
        assert_eq!(introspect_text(&app, &client, token).await, INACTIVE, "{token}");
    }
    // An id_token is not an access token.
    assert_eq!(
        introspect_text(&app, &client, login["id_token"].as_str().unwrap()).await,
        INACTIVE
    );

    // Public clients may not introspect.
    let resp = app
        .post_form("/oauth2/introspect", &public, &[("token", at)])
        .await;
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn expired_access_tokens_are_inactive() {
    let app = TestApp::spawn_with(|c| c.access_token_ttl = "1".into()).await;
    let client = app.web_client().await;
    app.create_user("ada@example.com").await;
    let login = app.login(&client, "ada@example.com", Some("openid")).await;
    let at = login["access_token"].as_str().unwrap();

    tokio::time::sleep(Duration::from_millis(2100)).await;

    assert_eq!(introspect_text(&app, &client, at).await, INACTIVE);
    assert_eq!(app.userinfo(at).await.status(), 401);
}

#[tokio::test]
async fn revoking_a_refresh_token_ends_its_chain() {
    let app = TestApp::spawn().await;
    let client = app.web_client().await;
    app.create_user("ada@example.com").await;
    let login = app.login(&client, "ada@example.com", Some("openid")).await;
    let rt = login["refresh_token"].as_str().unwrap();

    let resp = app
        .post_form(
            "/oauth2/revoke",
            &client,
            &[("token", rt), ("token_type_hint", "refresh_token")],
        )
        .await;
    assert_eq!(resp.status(), 200);

    assert_eq!(app.refresh(&client, rt).await.status(), 400);
    assert_eq!(
        introspect_text(&app, &client, login["access_token"].as_str().unwrap()).await,
        INACTIVE
    );
    assert_eq!(
        app.userinfo(login["access_token"].as_str().unwrap())
            .await
            .status(),
        401
    );
}

#[tokio::test]
async fn revoking_an_access_token_deactivates_it_at_once() {
    let app = TestApp::spawn().await;
    let client = app.web_client().await;
    app.create_user("ada@example.com").await;
    let login = app.login(&client, "ada@example.com", Some("openid")).await;
    let at = login["access_token"].as_str().unwrap();
    // Verified once before it is revoked: the verification is remembered,
    // the revocation must still count.
    assert_eq!(app.userinfo(at).await.status(), 200);

    let resp = app.revoke(&client, at).await;
    assert_eq!(resp.status(), 200);

    assert_eq!(introspect_text(&app, &client, at).await, INACTIVE);
    assert_eq!(app.userinfo(at).await.status(), 401);
    // The refresh chain is untouched.
    assert_eq!(
        app.refresh(&client, login["refresh_token"].as_str().unwrap())
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn revoking_unknown_or_foreign_tokens_is_a_quiet_success() {
    let app = TestApp::spawn().await;
    let client = app.web_client().await;
    let other = app.web_client().await;
    app.create_user("ada@example.com").await;
    let login = app.login(&client, "ada@example.com", None).await;
    let rt = login["refresh_token"].as_str().unwrap();

    for token in ["ghr_unknown", "whatever", rt] {
        let resp = app.revoke(&other, token).await;
        assert_eq!(resp.status(), 200, "{token}");
    }
    // Another client cannot revoke it.
    assert_eq!(app.refresh(&client, rt).await.status(), 200);

    let resp = app
        .http
        .post(app.url("/oauth2/revoke"))
        .form(&[("token", rt)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "revocation needs client authentication");
}

#[tokio::test]
async fn disabling_a_user_ends_their_tokens_at_once() {
    let app = TestApp::spawn().await;
    let client = app.web_client().await;
    app.create_user("ada@example.com").await;
    let login = app.login(&client, "ada@example.com", Some("openid")).await;

    app.cli(&["users", "disable", "--email", "ada@example.com"]).await;

    assert_eq!(
        introspect_text(&app, &client, login["access_token"].as_str().unwrap()).await,
        INACTIVE
    );
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

#[tokio::test]
async fn deleting_a_client_ends_its_tokens() {
    let app = TestApp::spawn().await;
    let api = app.create_client(&["--grant", "client_credentials"]).await;
    let watcher = app.create_client(&["--grant", "client_credentials"]).await;
    let resp = app.token(&api, &[("grant_type", "client_credentials")]).await;
    let at = resp.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.introspect(&watcher, &at).await["active"], true);

    app.cli(&["clients", "delete", "--id", &api.id]).await;

    // Another process deleted the client: the server's poll drops its cached
    // copy within about a second.
    let (answer, took) = poll_until(Duration::from_secs(3), INACTIVE.to_owned(), || {
        introspect_text(&app, &watcher, &at)
    })
    .await;
    assert_eq!(answer, INACTIVE, "the token is still active after {took:?}");
    assert_eq!(
        app.token(&api, &[("grant_type", "client_credentials")])
            .await
            .status(),
        401
    );
}

/// Concurrent checks share database statements (batched on PostgreSQL, on
/// the calling thread on SQLite): each must still get its own token's answer.
#[tokio::test]
async fn concurrent_bearer_checks_each_get_their_own_answer() {
    let app = TestApp::spawn().await;
    let web = app.web_client().await;
    let api = app.create_client(&["--grant", "client_credentials"]).await;
    let mut subs = Vec::new();
    let mut user_tokens = Vec::new();
    for name in ["ada", "dan", "bob", "cy"] {
        let email = format!("{name}@example.com");
        subs.push(app.create_user(&email).await);
        user_tokens.push(app.login(&web, &email, Some("openid")).await);
    }
    // bob's login ends (its refresh token revoked); cy's access token is revoked.
    let bob_rt = user_tokens[2]["refresh_token"].as_str().unwrap();
    let ended = app.revoke(&web, bob_rt).await;
    assert_eq!(ended.status(), 200);
    let cy_at = user_tokens[3]["access_token"].as_str().unwrap();
    assert_eq!(app.revoke(&web, cy_at).await.status(), 200);
    let mut client_tokens = Vec::new();
    for _ in 0..2 {
        let resp = app.token(&api, &[("grant_type", "client_credentials")]).await;
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        client_tokens.push(body["access_token"].as_str().unwrap().to_owned());
    }
    assert_eq!(app.revoke(&api, &client_tokens[1]).await.status(), 200);

    // 96 checks at once, the six tokens interleaved.
    let checks = (0..96).map(|i| {
        let (app, api, user_tokens, client_tokens) = (&app, &api, &user_tokens, &client_tokens);
        async move {
            let which = i % 6;
            if which < 4 {
                let resp = app
                    .userinfo(user_tokens[which]["access_token"].as_str().unwrap())
                    .await;
                let status = resp.status().as_u16();
                let sub = resp
                    .json::<Value>()
                    .await
                    .ok()
                    .and_then(|v| v["sub"].as_str().map(str::to_owned));
                (which, status, sub)
            } else {
                let body = app.introspect(api, &client_tokens[which - 4]).await;
                let active = body["active"].as_bool().unwrap();
                (which, if active { 200 } else { 401 }, None)
            }
        }
    });
    let answers = futures_join_all(checks).await;
    assert_eq!(answers.len(), 96);
    for (which, status, sub) in answers {
        match which {
            // ada and dan: live, and each sees only their own claims.
            0 | 1 => assert_eq!((status, sub.as_deref()), (200, Some(subs[which].as_str()))),
            // bob's login ended, cy's token revoked: refused.
            2 | 3 => assert_eq!(status, 401, "token {which}"),
            // The live client token is active, the revoked one is not.
            4 => assert_eq!(status, 200),
            _ => assert_eq!(status, 401),
        }
    }
}

/// The claims of a JWT, unverified (the server made it).
fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// PostgreSQL's batch statements, run directly: every key gets its own
/// answer in its own place, padding rows (3 keys run as 4) match nothing,
/// and a key that appears twice is answered twice. (A batch that fails makes
/// each request ask alone, so the HTTP tests alone would not notice.)
#[tokio::test]
async fn postgres_batch_statements_answer_each_key_in_its_place() {
    use gatehouse::store::batch::Batch;
    use gatehouse::store::revocation::RevokedJtis;
    use gatehouse::store::session::{LiveRotation, LiveRotations};
    use gatehouse::store::user::{TokenHolderKey, TokenHolders};
    use gatehouse::tokens::{OpaqueToken, TokenDigest, TokenKind};

    if !on_postgres() {
        eprintln!("skipped: the batch statements run on PostgreSQL only");
        return;
    }
    let app = TestApp::spawn().await;
    let web = app.web_client().await;
    let ada_id = app.create_user("ada@example.com").await;
    app.create_user("bob@example.com").await;
    let ada = app.login(&web, "ada@example.com", Some("openid")).await;
    let bob = app.login(&web, "bob@example.com", Some("openid")).await;
    let bob_rt = bob["refresh_token"].as_str().unwrap();
    assert_eq!(app.revoke(&web, bob_rt).await.status(), 200);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let key = |login: &Value| {
        let c = claims(login["access_token"].as_str().unwrap());
        TokenHolderKey {
            sub: c["sub"].as_str().unwrap().to_owned(),
            jti: c["jti"].as_str().unwrap().to_owned(),
            sid: c["sid"].as_str().unwrap().to_owned(),
            client_id: c["client_id"].as_str().unwrap().to_owned(),
            now,
        }
    };
    let db = test_db(&app).await;
    let mut lane = db.lane().await.unwrap();

    let holders = TokenHolders::run(lane.conn(), &[key(&ada), key(&bob), key(&ada)])
        .await
        .unwrap();
    let ids: Vec<Option<&str>> = holders
        .iter()
        .map(|u| u.as_ref().map(|u| u.id.as_str()))
        .collect();
    assert_eq!(ids, [Some(ada_id.as_str()), None, Some(ada_id.as_str())]);

    let ada_at = ada["access_token"].as_str().unwrap();
    assert_eq!(app.revoke(&web, ada_at).await.status(), 200);
    let jtis = [key(&ada).jti, key(&bob).jti, key(&ada).jti];
    let revoked = RevokedJtis::run(lane.conn(), &jtis).await.unwrap();
    assert_eq!(revoked, [true, false, true]);

    let next = OpaqueToken::generate(TokenKind::RefreshToken);
    let rotation = |rt: &str, next: TokenDigest| LiveRotation {
        used: TokenDigest::of(rt),
        next,
        client_id: web.id.clone(),
        now,
        ttl: 3600,
    };
    let unknown = OpaqueToken::generate(TokenKind::RefreshToken);
    let again = OpaqueToken::generate(TokenKind::RefreshToken);
    let ada_rt = ada["refresh_token"].as_str().unwrap();
    let rotations = [
        rotation(ada_rt, next.digest()),
        rotation(bob_rt, OpaqueToken::generate(TokenKind::RefreshToken).digest()),
        rotation(
            unknown.expose(),
            OpaqueToken::generate(TokenKind::RefreshToken).digest(),
        ),
        // ada's token a second time, in the same batch: rotated once.
        rotation(ada_rt, again.digest()),
    ];
    let rotated = LiveRotations::run(lane.conn(), &rotations).await.unwrap();
    let rotated: Vec<Option<&str>> = rotated
        .iter()
        .map(|r| r.as_ref().map(|r| r.user.id.as_str()))
        .collect();
    let ada_won = [Some(ada_id.as_str()), None, None, None];
    let again_won = [None, None, None, Some(ada_id.as_str())];
    assert!(rotated == ada_won || rotated == again_won, "{rotated:?}");
    lane.release();
    // ada's old refresh token is used up; the one the statement wrote works,
    // and only that one.
    let (written, not_written) = if rotated == ada_won {
        (&next, &again)
    } else {
        (&again, &next)
    };
    assert_eq!(app.refresh(&web, not_written.expose()).await.status(), 400);
    assert_eq!(app.refresh(&web, written.expose()).await.status(), 200);
}

/// PostgreSQL's batch statements look every key up by index, with the plan
/// PostgreSQL caches for a prepared statement on a young database (its
/// statistics stale or missing): no sequential scan, no hash or merge join,
/// no index read whole; for every batch size. A cached plan for 8 rotations
/// that joined every login with every key once doubled PostgreSQL's work per
/// refresh. The rotations' update reaches each row it consumes by the row's
/// address, found in the same statement: the plan cached while the token
/// table was small and almost all used (from fresh statistics) once read its
/// whole index for every batch instead.
#[tokio::test]
async fn postgres_batch_statements_look_every_key_up_by_index() {
    use gatehouse::store::batch::Batch;
    use gatehouse::store::revocation::RevokedJtis;
    use gatehouse::store::session::LiveRotations;
    use gatehouse::store::user::TokenHolders;
    use sqlx::Executor;

    if !on_postgres() {
        eprintln!("skipped: the batch statements run on PostgreSQL only");
        return;
    }
    let app = TestApp::spawn().await;
    let web = app.web_client().await;
    app.create_user("ada@example.com").await;
    for _ in 0..3 {
        app.login(&web, "ada@example.com", Some("openid")).await;
    }
    let db = test_db(&app).await;
    let mut lane = db.lane().await.unwrap();
    let sizes = || (0..=gatehouse::store::batch::MAX_BATCH.trailing_zeros()).map(|p| 1 << p);
    let statements = sizes().flat_map(|n| {
        [
            ("token holders", TokenHolders::statement(n)),
            ("revoked access tokens", RevokedJtis::statement(n)),
            ("refresh rotations", LiveRotations::statement(n)),
        ]
    });
    for (what, (sql, n)) in statements {
        let plan = assert_keys_looked_up(lane.conn(), &format!("{what} ({n} keys)"), sql).await;
        if what == "refresh rotations" {
            assert!(plan.contains("Tid Scan on refresh_token"), "{n} keys:\n{plan}");
        }
    }
    // A small token table whose rows are almost all used, with statistics
    // that say so.
    let conn = lane.conn();
    conn.execute(
        "insert into refresh_token (digest, session_id, issued_at, expires_at, used_at) \
         select sha256(g::text::bytea), 'no-such-login', 1, 2, 1 from generate_series(1, 50) g",
    )
    .await
    .unwrap();
    conn.execute("analyze refresh_token").await.unwrap();
    for (sql, n) in sizes().map(LiveRotations::statement) {
        let plan = assert_keys_looked_up(
            lane.conn(),
            &format!("refresh rotations ({n} keys), 50 used"),
            sql,
        )
        .await;
        assert!(plan.contains("Tid Scan on refresh_token"), "{n} keys:\n{plan}");
    }
    lane.release();
}

/// The generic plan PostgreSQL caches for `sql` looks every key up: no
/// sequential scan, no hash or merge join, every index scan with a
/// condition. Returns the plan.
async fn assert_keys_looked_up(conn: &mut sqlx::AnyConnection, what: &str, sql: &str) -> String {
    use sqlx::{Executor, Row};

    // Prepared and explained with the simple protocol, so `$n` are the
    // prepared statement's own parameters; the generic plan is the one
    // cached after a few runs, made without the values.
    let parameters = sql
        .split('$')
        .skip(1)
        .filter_map(|s| {
            s.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .unwrap();
    conn.execute(&*format!("prepare planned as {sql}")).await.unwrap();
    conn.execute("set plan_cache_mode = force_generic_plan")
        .await
        .unwrap();
    let nulls = vec!["null"; parameters].join(", ");
    let rows = conn
        .fetch_all(&*format!("explain execute planned ({nulls})"))
        .await
        .unwrap();
    conn.execute("deallocate planned; reset plan_cache_mode")
        .await
        .unwrap();
    let plan: Vec<String> = rows.iter().map(|r| r.get::<String, _>(0)).collect();
    let shown = plan.join("\n");
    for banned in ["Seq Scan", "Hash", "Merge Join"] {
        assert!(!shown.contains(banned), "{what}: {banned} in\n{shown}");
    }
    // Every index scan has a condition: it looks a key up.
    for (i, line) in plan.iter().enumerate() {
        if line.contains("Index Scan using") || line.contains("Index Only Scan using") {
            let conditioned = plan[i + 1..]
                .iter()
                .take_while(|l| !l.contains("->"))
                .any(|l| l.contains("Index Cond:"));
            assert!(conditioned, "{what}: an index read whole in\n{shown}");
        }
    }
    shown
}
