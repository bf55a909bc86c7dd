//! The token endpoint: grants, client authentication, scopes, refresh rotation.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::*;

async fn json(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON body"))
}

#[tokio::test]
async fn password_grant_issues_an_rfc_9068_access_token_and_a_refresh_token() {
    let app = TestApp::spawn().await;
    let client = app.web_client().await;
    let user_id = app.create_user("ada@example.com").await;
    app.cli(&[
        "users",
        "set-role",
        "--email",
        "ada@example.com",
        "--role",
        "admin",
    ])
    .await;

    let resp = app
        .token(
            &client,
            &[
                ("grant_type", "password"),
                ("username", "Ada@Example.com"),
                ("password", PASSWORD),
            ],
        )
        .await;

    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert_eq!(
        body["scope"], "email profile",
        "default scope for a user-facing client"
    );
    assert!(
        body["refresh_token"]
            .as_str()
            .unwrap()
            .starts_with("gatehouse_rt_")
    );
    assert!(body.get("id_token").is_none(), "no id_token without openid");
    let (header, claims) = jwt_parts(body["access_token"].as_str().unwrap());
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "RS256");
    assert!(header["kid"].is_string());
    assert_eq!(claims["iss"], app.base.as_str());
    assert_eq!(claims["aud"], app.base.as_str());
    assert_eq!(claims["sub"], user_id.as_str());
    assert_eq!(claims["client_id"], client.id.as_str());
    assert_eq!(claims["roles"], serde_json::json!(["admin"]));
    assert!(claims["sid"].is_string() && claims["jti"].is_string());
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );
}

#[tokio::test]
async fn openid_scope_adds_an_id_token_for_the_client() {
    let app = TestApp::spawn().await;
    let client = app.web_client().await;
    app.create_user("ada@example.com").await;

    let body = app.login(&client, "ada@example.com", Some("openid email")).await;

    let (header, claims) = jwt_parts(body["id_token"].as_str().expect("id_token"));
    assert_eq!(header["typ"], "JWT");
    assert_eq!(claims["aud"], client.id.as_str());
    assert_eq!(claims["email"], "ada@example.com");
    assert_eq!(claims["email_verified"], true);
    assert!(claims["auth_time"].is_i64());
}

#[tokio::test]
async fn login_failures_look_alike_and_take_alike_time() {
    let app = TestApp::spawn().await;
    let client = app.web_client().await;
    app.create_user("ada@example.com").await;
    app.create_user("off@example.com").await;
    app.cli(&["users", "disable", "--email", "off@example.com"]).await;

    let cases = [
        ("unknown user", "nobody@example.com", PASSWORD),
        ("wrong password", "ada@example.com", "not the password"),
        ("disabled user", "off@example.com", PASSWORD),
    ];
    let mut bodies = Vec::new();
    let mut fastest = Vec::new();
    for (label, username, password) in cases {
        let mut best = Duration::MAX;
        for _ in 0..5 {
            let started = Instant::now();
            let resp = app
                .token(
                    &client,
                    &[
                        ("grant_type", "password"),
                        ("username", username),
                        ("password", password),
                    ],
                )
                .await;
            best = best.min(started.elapsed());
            assert_eq!(resp.status(), 400, "{label}");
            assert_eq!(resp.headers()["cache-control"], "no-store", "{label}");
            bodies.push((label, resp.text().await.unwrap()));
        }
        fastest.push((label, best));
    }

    for (label, body) in &bodies {
        assert_eq!(body, r#"{"error":"invalid_grant"}"#, "{label}");
    }
    let (_, wrong) = fastest[1];
    for (label, took) in &fastest {
        // Every refusal costs one argon2 verification, so none is much faster
        // (skipping argon2 would make it ~30x faster; 0.3 leaves room for noise).
        assert!(
            took.as_secs_f64() > wrong.as_secs_f64() * 0.3,
            "{label} took {took:?}, wrong password {wrong:?}"
        );
    }
}

#[tokio::test]
async fn unverified_users_are_refused_only_while_verification_is_required() {
    let app = TestApp::spawn().await;
    let client = app.web_client().await;
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
    let form = [
        ("grant_type", "password"),
        ("username", "new@example.com"),
        ("password", PASSWORD),
    ];

    let (status, body) = json(app.token(&client, &form).await).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(body["error_description"], "email not verified");

    let relaxed = TestApp::spawn_with(|c| c.require_verified_email = "false".into()).await;
    let client = relaxed.web_client().await;
    relaxed
        .try_cli(
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
    assert_eq!(relaxed.token(&client, &form).await.status(), 200);
}

#[tokio::test]
async fn reused_refresh_token_revokes_the_chain() {
    let app = TestApp::spawn().await;
    let client = app.web_client().await;
    app.create_user("ada@example.com").await;
    let first = app.login(&client, "ada@example.com", None).await;
    let rt1 = first["refresh_token"].as_str().unwrap();

    let (status, second) = json(app.refresh(&client, rt1).await).await;
    assert_eq!(status, 200);
    let rt2 = second["refresh_token"].as_str().unwrap();
    assert_ne!(rt1, rt2);
    let (_, a1) = jwt_parts(first["access_token"].as_str().unwrap());
    let (_, a2) = jwt_parts(second["access_token"].as_str().unwrap());
    assert_eq!(a1["sid"], a2["sid"], "sid is the same across rotations");

    let (status, body) = json(app.refresh(&client, rt1).await).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));

    // The whole chain is gone: the newest refresh token and the access tokens.
    let (status, _) = json(app.refresh(&client, rt2).await).await;
    assert_eq!(status, 400);
    let seen = app
        .introspect(&client, second["access_token"].as_str().unwrap())
        .await;
    assert_eq!(seen, serde_json::json!({"active": false}));
}

#[tokio::test]
async fn concurrent_refreshes_of_one_token_have_exactly_one_winner() {
    let app = TestApp::spawn().await;
    let client = app.web_client().await;
    app.create_user("ada@example.com").await;
    let login = app.login(&client, "ada@example.com", None).await;
    let rt = login["refresh_token"].as_str().unwrap().to_owned();

    let attempts = (0..10).map(|_| {
        let (app, client, rt) = (&app, &client, rt.clone());
        async move { app.refresh(client, &rt).await.status().as_u16() }
    });
    let statuses = futures_join_all(attempts).await;

    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 400).count(), 9, "{statuses:?}");
}

#[tokio::test]
async fn refreshes_arriving_together_each_rotate_their_own_chain_exactly_once() {
    // Rotations that arrive together are written by shared statements
    // (SQLite's queue, PostgreSQL's batches): here the batches mix single
    // refreshes of distinct chains, three racing refreshes of one token per
    // chain, and a chain that ended before.
    let app = TestApp::spawn().await;
    let client = app.web_client().await;
    app.create_user("ada@example.com").await;
    let mut tokens = Vec::new();
    for _ in 0..12 {
        let login = app.login(&client, "ada@example.com", None).await;
        tokens.push(login["refresh_token"].as_str().unwrap().to_owned());
    }
    let raced = |chain: usize| chain.is_multiple_of(2);
    let ended = 11;
    assert_eq!(app.revoke(&client, &tokens[ended]).await.status(), 200);

    let (app_ref, client_ref) = (&app, &client);
    let attempts = tokens.iter().enumerate().flat_map(|(chain, rt)| {
        let tries = if raced(chain) { 3 } else { 1 };
        (0..tries).map(move |_| {
            let (app, client) = (app_ref, client_ref);
            async move {
                let resp = app.refresh(client, rt).await;
                let status = resp.status().as_u16();
                let next = resp.json::<Value>().await.unwrap()["refresh_token"]
                    .as_str()
                    .map(str::to_owned);
                (chain, status, next)
            }
        })
    });
    let answers = futures_join_all(attempts).await;

    for chain in 0..tokens.len() {
        let of_chain: Vec<_> = answers.iter().filter(|(c, _, _)| *c == chain).collect();
        let won: Vec<_> = of_chain.iter().filter(|(_, status, _)| *status == 200).collect();
        let refused = of_chain.iter().filter(|(_, status, _)| *status == 400).count();
        if chain == ended {
            assert_eq!(refused, of_chain.len(), "chain {chain}: {of_chain:?}");
            continue;
        }
        assert_eq!(won.len(), 1, "chain {chain}: {of_chain:?}");
        assert_eq!(of_chain.len() - 1, refused, "chain {chain}: {of_chain:?}");
        let next = won[0].2.as_deref().unwrap();
        // The successor is live, unless the race ended the chain (RFC 9700:
        // a second use of one refresh token is reuse).
        let expected = if raced(chain) { 400 } else { 200 };
        assert_eq!(
            app.refresh(&client, next).await.status(),
            expected,
            "chain {chain}"
        );
    }
}

#[tokio::test]
async fn refresh_may_narrow_the_scope_but_never_widen_it() {
    let app = TestApp::spawn().await;
    let client = app.web_client().await;
    app.create_user("ada@example.com").await;
    let login = app
        .login(&client, "ada@example.com", Some("openid profile"))
        .await;

    let narrowed = app
        .token(
            &client,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", login["refresh_token"].as_str().unwrap()),
                ("scope", "openid"),
            ],
        )
        .await;
    let (status, narrowed) = json(narrowed).await;
    assert_eq!((status, narrowed["scope"].as_str()), (200, Some("openid")));

    let widened = app
        .token(
            &client,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", narrowed["refresh_token"].as_str().unwrap()),
                ("scope", "openid profile email"),
            ],
        )
        .await;
    let (status, body) = json(widened).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_scope")));

    // Without a scope, the refresh grant gives the original scope back.
    let again = app
        .refresh(&client, narrowed["refresh_token"].as_str().unwrap())
        .await;
    let (status, body) = json(again).await;
    assert_eq!((status, body["scope"].as_str()), (200, Some("openid profile")));
}

#[tokio::test]
async fn refresh_tokens_are_bound_to_their_client() {
    let app = TestApp::spawn().await;
    let owner = app.web_client().await;
    let other = app.web_client().await;
    app.create_user("ada@example.com").await;
    let login = app.login(&owner, "ada@example.com", None).await;
    let rt = login["refresh_token"].as_str().unwrap();

    let (status, body) = json(app.refresh(&other, rt).await).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));

    // The foreign attempt consumed nothing.
    assert_eq!(app.refresh(&owner, rt).await.status(), 200);
}

#[tokio::test]
async fn a_disabled_users_refresh_token_is_refused_and_kept_unused() {
    let app = TestApp::spawn().await;
    let client = app.web_client().await;
    app.create_user("ada@example.com").await;
    let login = app.login(&client, "ada@example.com", None).await;
    let rt = login["refresh_token"].as_str().unwrap();
    // Only the account's flag, not its logins (which `users disable` also
    // ends): the rotation itself must look at the user.
    let db = test_db(&app).await;
    let set_disabled = |at: Option<i64>| {
        sqlx::query("update user_account set disabled_at = $1 where email_lower = $2")
            .bind(at)
            .bind("ada@example.com")
            .execute(db.pool())
    };
    set_disabled(Some(gatehouse::now())).await.unwrap();

    let (status, body) = json(app.refresh(&client, rt).await).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));

    set_disabled(None).await.unwrap();
    let (status, body) = json(app.refresh(&client, rt).await).await;
    assert_eq!(status, 200, "the refused attempt consumed nothing: {body}");
}

#[tokio::test]
async fn refresh_tokens_end_at_the_idle_and_the_absolute_deadline() {
    let idle = TestApp::spawn_with(|c| c.refresh_token_ttl = "1".into()).await;
    let client = idle.web_client().await;
    idle.create_user("ada@example.com").await;
    let login = idle.login(&client, "ada@example.com", None).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        idle.refresh(&client, login["refresh_token"].as_str().unwrap())
            .await
            .status(),
        400
    );

    let absolute = TestApp::spawn_with(|c| c.session_max_age = "2".into()).await;
    let client = absolute.web_client().await;
    absolute.create_user("ada@example.com").await;
    let login = absolute.login(&client, "ada@example.com", None).await;
    let (status, next) = json(
        absolute
            .refresh(&client, login["refresh_token"].as_str().unwrap())
            .await,
    )
    .await;
    assert_eq!(status, 200, "a fresh chain refreshes");
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(
        absolute
            .refresh(&client, next["refresh_token"].as_str().unwrap())
            .await
            .status(),
        400
    );
}

#[tokio::test]
async fn client_credentials_issue_a_client_token_without_refresh() {
    let app = TestApp::spawn().await;
    let api = app
        .create_client(&[
            "--grant",
            "client_credentials",
            "--scope",
            "read",
            "--scope",
            "write",
        ])
        .await;

    let (status, body) = json(app.token(&api, &[("grant_type", "client_credentials")]).await).await;
    assert_eq!(status, 200);
    assert_eq!(body["scope"], "read write");
    assert!(body.get("refresh_token").is_none() && body.get("id_token").is_none());
    let (_, claims) = jwt_parts(body["access_token"].as_str().unwrap());
    assert_eq!(claims["sub"], api.id.as_str());
    assert!(claims.get("sid").is_none() && claims.get("roles").is_none());

    let (status, body) = json(
        app.token(&api, &[("grant_type", "client_credentials"), ("scope", "read")])
            .await,
    )
    .await;
    assert_eq!((status, body["scope"].as_str()), (200, Some("read")));
    let (status, body) = json(
        app.token(&api, &[("grant_type", "client_credentials"), ("scope", "openid")])
            .await,
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_scope")));
}

#[tokio::test]
async fn grants_a_client_was_not_given_are_refused() {
    let app = TestApp::spawn().await;
    let api = app.create_client(&["--grant", "client_credentials"]).await;
    let mobile = app.create_client(&["--public", "--grant", "password"]).await;
    app.create_user("ada@example.com").await;

    let cases = [
        (
            "password on a machine client",
            &api,
            vec![
                ("grant_type", "password"),
                ("username", "ada@example.com"),
                ("password", PASSWORD),
            ],
            "unauthorized_client",
        ),
        (
            "client_credentials on a public client",
            &mobile,
            vec![("grant_type", "client_credentials")],
            "unauthorized_client",
        ),
        (
            "refresh on a client without it",
            &api,
            vec![("grant_type", "refresh_token"), ("refresh_token", "ghr_x")],
            "unauthorized_client",
        ),
        (
            "unknown grant",
            &api,
            vec![("grant_type", "implicit")],
            "unsupported_grant_type",
        ),
        (
            "missing password",
            &mobile,
            vec![("grant_type", "password"), ("username", "ada@example.com")],
            "invalid_request",
        ),
        (
            "unknown scope",
            &mobile,
            vec![
                ("grant_type", "password"),
                ("username", "ada@example.com"),
                ("password", PASSWORD),
                ("scope", "admin"),
            ],
            "invalid_scope",
        ),
    ];
    for (label, client, form, error) in cases {
        let resp = app.token(client, &form).await;
        assert_eq!(resp.headers()["cache-control"], "no-store", "{label}");
        let (status, body) = json(resp).await;
        assert_eq!((status, body["error"].as_str()), (400, Some(error)), "{label}");
    }
}

#[tokio::test]
async fn clients_authenticate_by_basic_by_post_or_as_public() {
    let app = TestApp::spawn().await;
    let web = app.create_client(&["--grant", "client_credentials"]).await;
    let secret = web.secret.clone().unwrap();
    let public = app.create_client(&["--public", "--grant", "password"]).await;
    app.create_user("ada@example.com").await;
    let url = app.url("/oauth2/token");

    // client_secret_post
    let resp = app
        .http
        .post(&url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &web.id),
            ("client_secret", &secret),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // A wrong secret over Basic: 401 with a Basic challenge.
    let resp = app
        .http
        .post(&url)
        .basic_auth(&web.id, Some("ghs_wrong"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(resp.json::<Value>().await.unwrap()["error"], "invalid_client");

    // A wrong secret in the body: 401 without a challenge.
    let resp = app
        .http
        .post(&url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &web.id),
            ("client_secret", "nope"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().get("www-authenticate").is_none());

    // A confidential client that leaves out its secret, and an unknown client.
    for id in [
        web.id.as_str(),
        "00000000-0000-4000-8000-000000000000",
        "not-a-uuid",
    ] {
        let resp = app
            .http
            .post(&url)
            .form(&[("grant_type", "client_credentials"), ("client_id", id)])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{id}");
    }

    // Two methods at once.
    let resp = app
        .http
        .post(&url)
        .basic_auth(&web.id, Some(&secret))
        .form(&[("grant_type", "client_credentials"), ("client_secret", &secret)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    // A public client names itself.
    let resp = app
        .http
        .post(&url)
        .form(&[
            ("grant_type", "password"),
            ("client_id", &public.id),
            ("username", "ada@example.com"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn concurrent_writes_all_succeed() {
    // On SQLite, writes queue for the one writer instead of failing with
    // "database is locked"; on PostgreSQL they simply run side by side.
    let app = TestApp::spawn().await;
    let client = app.web_client().await;
    app.create_user("ada@example.com").await;
    let mut chains = Vec::new();
    for _ in 0..8 {
        let login = app.login(&client, "ada@example.com", None).await;
        chains.push((
            login["refresh_token"].as_str().unwrap().to_owned(),
            login["access_token"].as_str().unwrap().to_owned(),
        ));
    }

    // Each chain is refreshed while unrelated revocations write too.
    let writes = chains
        .iter()
        .flat_map(|(rt, at)| [(true, rt), (false, at)])
        .map(|(refresh, token)| {
            let (app, client) = (&app, &client);
            async move {
                if refresh {
                    app.refresh(client, token).await.status().as_u16()
                } else {
                    app.revoke(client, token).await.status().as_u16()
                }
            }
        });
    let statuses = futures_join_all(writes).await;

    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    for (_, at) in &chains {
        assert_eq!(
            app.introspect(&client, at).await,
            serde_json::json!({"active": false})
        );
    }
}

#[tokio::test]
async fn dead_rows_are_pruned_and_live_ones_kept() {
    let app = TestApp::spawn_with(|c| c.access_token_ttl = "60".into()).await;
    let client = app.web_client().await;
    app.create_user("ada@example.com").await;
    let ended = app.login(&client, "ada@example.com", None).await;
    let live = app.login(&client, "ada@example.com", None).await;
    // End one chain, rotate the live one (its used token stays for reuse detection).
    for token in ["refresh_token", "access_token"] {
        let revoked = app.revoke(&client, ended[token].as_str().unwrap()).await;
        assert_eq!(revoked.status(), 200, "{token}");
    }
    let rotated = json(
        app.refresh(&client, live["refresh_token"].as_str().unwrap())
            .await,
    )
    .await
    .1;

    let db = gatehouse::store::Db::connect(&app.config.database_url)
        .await
        .unwrap();
    let count = |table: &'static str| {
        let db = db.clone();
        async move {
            let (n,): (i64,) = sqlx::query_as(&format!("select count(*) from {table}"))
                .fetch_one(db.pool())
                .await
                .unwrap();
            n
        }
    };
    assert_eq!(
        (count("login_session").await, count("refresh_token").await),
        (2, 3)
    );

    // Now: nothing is old enough yet.
    let now = gatehouse::now();
    assert_eq!(gatehouse::store::prune::prune(&db, now).await.unwrap(), 0);
    // Two days later the revoked chain and the revoked access token's row go;
    // the live chain stays.
    let pruned = gatehouse::store::prune::prune(&db, now + 2 * 86_400)
        .await
        .unwrap();
    assert_eq!(
        pruned, 2,
        "one ended session (with its token) and one revoked access token row"
    );
    assert_eq!(
        (count("login_session").await, count("revoked_access_token").await),
        (1, 0)
    );
    assert_eq!(
        app.refresh(&client, rotated["refresh_token"].as_str().unwrap())
            .await
            .status(),
        200
    );

    // A failed login's count is forgotten a day later and pruned.
    let form = [
        ("grant_type", "password"),
        ("username", "nobody@example.com"),
        ("password", "wrong"),
    ];
    assert_eq!(app.token(&client, &form).await.status(), 400);
    assert_eq!(count("login_attempt").await, 1);
    assert_eq!(
        gatehouse::store::prune::prune(&db, now + 2 * 86_400)
            .await
            .unwrap(),
        1
    );
    assert_eq!(count("login_attempt").await, 0);
    db.close().await;
}

#[tokio::test]
async fn a_malformed_basic_header_still_gets_a_basic_challenge() {
    let app = TestApp::spawn().await;
    for header in ["Basic !!!not-base64", "Basic bm9jb2xvbg==", "basic "] {
        let resp = app
            .http
            .post(app.url("/oauth2/token"))
            .header("authorization", header)
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{header}");
        assert!(
            resp.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Basic"),
            "{header}"
        );
    }
}
