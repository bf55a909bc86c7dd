//! Signing keys: the JWKS as a cacheable document, key files, and rotation and
//! retirement that never leave a verifier holding a token it cannot check.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use crate::helpers::*;
use crate::interop::{fetch_jwks, kid_of, verify, verify_access_token};

/// Unix time now, in seconds with a fraction.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

async fn jwks_json(app: &TestApp) -> Value {
    let resp = app
        .http
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .expect("JWKS fetched");
    assert_eq!(resp.status(), 200);
    resp.json().await.expect("JWKS JSON")
}

async fn published_kids(app: &TestApp) -> Vec<String> {
    jwks_json(app).await["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].as_str().expect("kid").to_owned())
        .collect()
}

/// Polls the JWKS until `done(kids)` holds, failing once `within` has passed since `since`.
async fn wait_for_jwks(app: &TestApp, since: Instant, within: Duration, done: impl Fn(&[String]) -> bool) {
    loop {
        let kids = published_kids(app).await;
        if done(&kids) {
            return;
        }
        assert!(
            since.elapsed() < within,
            "JWKS of {} still {kids:?} after {within:?}",
            app.base
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client_credentials access token.
async fn service_token(app: &TestApp, client: &TestClient) -> String {
    let resp = app.token(client, &[("grant_type", "client_credentials")]).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("token JSON");
    body["access_token"].as_str().expect("access_token").to_owned()
}

async fn service_client(app: &TestApp) -> TestClient {
    app.create_client(&["--grant", "client_credentials", "--scope", "read"])
        .await
}

fn key_states(list: &Value) -> Vec<(String, String)> {
    list.as_array()
        .expect("keys list is an array")
        .iter()
        .map(|k| {
            (
                k["kid"].as_str().expect("kid").to_owned(),
                k["state"].as_str().expect("state").to_owned(),
            )
        })
        .collect()
}

fn state_of(list: &Value, kid: &str) -> String {
    key_states(list)
        .into_iter()
        .find(|(k, _)| k == kid)
        .unwrap_or_else(|| panic!("{kid} not in {list}"))
        .1
}

/// Waits until a CLI command started now would read the clock just before a
/// whole second: key state is kept in whole seconds, and this is where
/// rounding a publish or retire delay down would show. Returns at once when
/// the CLI is too slow to aim with.
async fn just_before_a_whole_second(app: &TestApp) {
    let started = Instant::now();
    app.cli(&["keys", "list"]).await;
    let cli_takes = started.elapsed().as_secs_f64();
    let aim = 1.0 - cli_takes - 0.05;
    if aim < 0.2 {
        return;
    }
    let frac = unix_now().fract();
    let wait = if frac < aim { aim - frac } else { 1.0 - frac + aim };
    tokio::time::sleep(Duration::from_secs_f64(wait)).await;
}

/// RFC 7638 §3: SHA-256 over the required members, sorted, no whitespace.
fn thumbprint(n: &str, e: &str) -> String {
    let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// Quick key timings and no rate limit in the way of polling.
fn fast_keys(c: &mut gatehouse::config::Config) {
    c.jwks_max_age = "1".into();
    c.rate_limit_per_minute = "100000".into();
}

#[tokio::test]
async fn jwks_is_cacheable_with_a_strong_etag_and_answers_304() {
    let app = TestApp::spawn_with(|c| c.jwks_max_age = "120".into()).await;
    let url = app.url("/.well-known/jwks.json");

    let first = app.http.get(&url).send().await.expect("sent");
    let unchanged = {
        let etag = first.headers()["etag"].to_str().expect("ASCII ETag").to_owned();
        app.http
            .get(&url)
            .header("If-None-Match", &etag)
            .send()
            .await
            .expect("sent")
    };
    let other = app
        .http
        .get(&url)
        .header("If-None-Match", "\"something-else\"")
        .send()
        .await
        .expect("sent");

    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["cache-control"], "public, max-age=120");
    let etag = first.headers()["etag"].to_str().expect("ASCII").to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2,
        "strong ETag: {etag}"
    );
    let content_type = first.headers()["content-type"]
        .to_str()
        .expect("ASCII")
        .to_owned();
    assert!(
        content_type.starts_with("application/json") || content_type.starts_with("application/jwk-set+json")
    );
    let body: Value = first.json().await.expect("JSON");
    let keys = body["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1);
    let key = keys[0].as_object().expect("a JWK");
    assert_eq!(key["kty"], "RSA");
    assert_eq!(key["use"], "sig");
    assert_eq!(key["alg"], "RS256");
    assert!(key["n"].is_string() && key["e"].is_string() && key["kid"].is_string());
    for private in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
        assert!(!key.contains_key(private), "private member {private} published");
    }

    assert_eq!(unchanged.status(), 304);
    assert_eq!(unchanged.headers()["etag"], etag.as_str());
    assert_eq!(unchanged.headers()["cache-control"], "public, max-age=120");
    assert!(
        unchanged.bytes().await.expect("body").is_empty(),
        "304 has no body"
    );

    assert_eq!(other.status(), 200);
    assert_eq!(other.headers()["etag"], etag.as_str());
}

#[tokio::test]
async fn kid_is_the_rfc_7638_thumbprint_of_the_published_key() {
    let app = TestApp::spawn().await;

    let jwks = jwks_json(&app).await;

    let key = &jwks["keys"][0];
    let (n, e) = (key["n"].as_str().expect("n"), key["e"].as_str().expect("e"));
    assert_eq!(key["kid"], thumbprint(n, e).as_str());
    let modulus = URL_SAFE_NO_PAD.decode(n).expect("n is base64url without padding");
    assert_eq!(modulus.len(), 256, "RSA-2048, no leading zero octet");
    assert_eq!(e, "AQAB");
}

#[tokio::test]
async fn first_start_writes_a_pkcs8_key_file_only_its_owner_can_read() {
    let app = TestApp::spawn().await;
    let kid = published_kids(&app).await.remove(0);

    let files: Vec<std::path::PathBuf> = std::fs::read_dir(&app.config.keys_dir)
        .expect("keys dir exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "pem"))
        .collect();

    assert_eq!(files.len(), 1, "one key file: {files:?}");
    let text = std::fs::read_to_string(&files[0]).expect("readable by the owner");
    assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8 PEM");
    assert!(text.trim_end().ends_with("-----END PRIVATE KEY-----"));
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("base64 PEM body");
    let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(&der).expect("a PKCS#8 RSA private key");
    let public = aws_lc_rs::signature::KeyPair::public_key(&pair);
    let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
    let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
    assert_eq!(thumbprint(&n, &e), kid, "the file holds the published key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files[0])
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "mode {:o}", mode & 0o777);
    }
}

#[tokio::test]
async fn rotated_key_never_breaks_a_verifier() {
    // Arrange: a token from the first key, and a verifier's cached copy of the JWKS.
    let app = TestApp::spawn_with(fast_keys).await;
    let max_age = 1.0;
    let client = service_client(&app).await;
    let confidential = app.web_client().await;
    let old_token = service_token(&app, &client).await;
    let old = kid_of(&old_token);
    let jwks_uri = app.url("/.well-known/jwks.json");
    let mut stale_sent = unix_now();
    let mut stale = fetch_jwks(&app.http, &jwks_uri).await;

    // Act: rotate, then watch the JWKS as a verifier would.
    just_before_a_whole_second(&app).await;
    let new = app.cli(&["keys", "rotate"]).await["kid"]
        .as_str()
        .expect("kid")
        .to_owned();
    // Published at once: every instance within a reload of the command's end.
    let rotated = Instant::now();
    assert_ne!(new, old);
    let fresh = loop {
        let sent = unix_now();
        let jwks = fetch_jwks(&app.http, &jwks_uri).await;
        if jwks.find(&new).is_some() {
            break jwks;
        }
        (stale, stale_sent) = (jwks, sent);
        assert!(
            rotated.elapsed() < Duration::from_millis(1500),
            "new key not published in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // A verifier that fetched the JWKS just before the new key appeared may
    // keep that copy for max-age: every token issued until then must verify with it.
    let stale_until = stale_sent + max_age;
    let mut first_new = None;
    let mut old_kid_tokens = 0;
    while rotated.elapsed() < Duration::from_secs(5) {
        let token = service_token(&app, &client).await;
        let received = unix_now();
        if received < stale_until {
            let (typ, _) = verify(&token, &stale, &app.base, &app.base).unwrap_or_else(|e| {
                panic!(
                    "a verifier may cache the JWKS for {max_age} s; one fetched {:.3} s ago cannot check a new token: {e}",
                    received - stale_sent
                )
            });
            assert_eq!(typ, "at+jwt");
        }
        if kid_of(&token) == new {
            first_new = Some(token);
            break;
        }
        assert_eq!(kid_of(&token), old);
        old_kid_tokens += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Assert
    let new_token = first_new.expect("the new key signs once its publish delay has passed");
    assert!(
        old_kid_tokens > 0,
        "the new key signed as soon as it was published"
    );
    assert!(
        fresh.find(&old).is_some() && fresh.find(&new).is_some(),
        "both keys published"
    );
    let now_jwks = fetch_jwks(&app.http, &jwks_uri).await;
    verify_access_token(&old_token, &now_jwks, &app);
    verify_access_token(&new_token, &now_jwks, &app);
    verify_access_token(&new_token, &fresh, &app);
    assert_eq!(app.introspect(&confidential, &old_token).await["active"], true);
    assert_eq!(app.introspect(&confidential, &new_token).await["active"], true);
    let list = app.cli(&["keys", "list"]).await;
    assert_eq!(state_of(&list, &new), "active");
}

#[tokio::test]
async fn a_rotation_shows_as_pending_and_a_retirement_as_retired_in_keys_list() {
    let app = TestApp::spawn().await; // default max-age: the new key stays pending
    let first = app.cli(&["keys", "list"]).await;
    let states = key_states(&first);
    assert_eq!(states.len(), 1);
    let (old, state) = &states[0];
    assert_eq!(state, "active");

    let new = app.cli(&["keys", "rotate"]).await["kid"]
        .as_str()
        .expect("kid")
        .to_owned();
    let rotated = app.cli(&["keys", "list"]).await;
    app.cli(&["keys", "retire", &format!("--kid={old}")]).await;
    let retired = app.cli(&["keys", "list"]).await;

    assert_eq!(state_of(&rotated, old), "active");
    assert_eq!(state_of(&rotated, &new), "pending");
    assert_eq!(state_of(&retired, old), "retired");
    for key in retired.as_array().expect("array") {
        assert!(
            key["created_at"].as_str().is_some_and(|t| t.ends_with('Z')),
            "RFC 3339 UTC: {key}"
        );
    }
}

#[tokio::test]
async fn retired_key_stops_signing_at_once_and_leaves_the_jwks_after_its_tokens_expire() {
    // Arrange: a second key published but pending; tokens live 2 s.
    let app = TestApp::spawn_with(|c| {
        c.jwks_max_age = "60".into();
        c.access_token_ttl = "2".into();
        c.rate_limit_per_minute = "100000".into();
    })
    .await;
    let client = service_client(&app).await;
    let old = kid_of(&service_token(&app, &client).await);
    let new = app.cli(&["keys", "rotate"]).await["kid"]
        .as_str()
        .expect("kid")
        .to_owned();
    // Published at once: every instance within a reload of the command's end.
    let rotated = Instant::now();
    wait_for_jwks(&app, rotated, Duration::from_millis(1500), |kids| {
        kids.contains(&new)
    })
    .await;
    assert_eq!(
        kid_of(&service_token(&app, &client).await),
        old,
        "a pending key does not sign"
    );

    // Act: retire the old key, and collect every token it still signs.
    just_before_a_whole_second(&app).await;
    let retired = Instant::now();
    app.cli(&["keys", "retire", &format!("--kid={old}")]).await;
    let mut last_old_exp = 0.0_f64;
    let switched = loop {
        let token = service_token(&app, &client).await;
        if kid_of(&token) == new {
            break retired.elapsed();
        }
        last_old_exp = last_old_exp.max(jwt_parts(&token).1["exp"].as_f64().expect("exp"));
        assert!(
            retired.elapsed() < Duration::from_millis(1500),
            "the retired key still signs"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let still_published = published_kids(&app).await;
    let gone = loop {
        let kids = published_kids(&app).await;
        let received = unix_now();
        if !kids.contains(&old) {
            break received;
        }
        assert!(
            retired.elapsed() < Duration::from_secs(6),
            "the retired key never left the JWKS"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Assert
    assert!(
        switched < Duration::from_millis(1500),
        "stopped signing within a reload: {switched:?}"
    );
    assert!(still_published.contains(&old), "kept while its tokens live");
    assert!(
        last_old_exp == 0.0 || gone >= last_old_exp,
        "the retired key left the JWKS {:.3} s before a token it signed (exp {last_old_exp}) expired",
        last_old_exp - gone
    );
    assert!(
        app.try_cli(&["keys", "retire", &format!("--kid={new}")], "")
            .await
            .is_err(),
        "retiring the only signing key is refused"
    );
    assert_eq!(
        kid_of(&service_token(&app, &client).await),
        new,
        "the remaining key signs"
    );
}

#[tokio::test]
async fn retiring_the_only_key_is_refused() {
    let app = TestApp::spawn().await;
    let kid = published_kids(&app).await.remove(0);

    let result = app
        .try_cli(&["keys", "retire", &format!("--kid={kid}")], "")
        .await;

    let error = result.expect_err("retired the only signing key");
    assert!(
        error.downcast_ref::<clap::Error>().is_none(),
        "refused by the command, not by clap: {error}"
    );
    let list = app.cli(&["keys", "list"]).await;
    assert_eq!(state_of(&list, &kid), "active");
    assert!(
        app.try_cli(&["keys", "retire", "--kid", "no-such-kid"], "")
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_sibling_instance_shares_keys_and_picks_up_a_rotation_without_restart() {
    let app = TestApp::spawn_with(fast_keys).await;
    let sibling = app.spawn_sibling().await;
    let client = service_client(&app).await;
    let confidential = app.web_client().await;
    assert_eq!(
        published_kids(&app).await,
        published_kids(&sibling).await,
        "one key set"
    );

    let new = app.cli(&["keys", "rotate"]).await["kid"]
        .as_str()
        .expect("kid")
        .to_owned();
    // Published at once: every instance within a reload of the command's end.
    let rotated = Instant::now();

    // Both instances publish the new key within a reload of the rotation.
    let within = Duration::from_millis(1500);
    wait_for_jwks(&app, rotated, within, |k| k.contains(&new)).await;
    wait_for_jwks(&sibling, rotated, within, |k| k.contains(&new)).await;
    assert_eq!(published_kids(&app).await.len(), 2);
    // A token from one instance is good at the other.
    let token = service_token(&app, &client).await;
    let sibling_jwks = fetch_jwks(&sibling.http, &sibling.url("/.well-known/jwks.json")).await;
    verify_access_token(&token, &sibling_jwks, &sibling);
    assert_eq!(sibling.introspect(&confidential, &token).await["active"], true);
}

#[tokio::test]
async fn keys_retire_takes_a_kid_that_starts_with_a_hyphen() {
    // A base64url thumbprint starts with '-' once in 64 keys; the operator
    // pastes it after `--kid` as the README shows.
    let app = TestApp::spawn().await;

    let result = app
        .try_cli(
            &[
                "keys",
                "retire",
                "--kid",
                "-5GlVv5ZaNpunWO5MVyy2pJnW8HwtYOCa_9JRs-1tVc",
            ],
            "",
        )
        .await;

    let error = result.expect_err("no such key");
    assert!(
        error.downcast_ref::<clap::Error>().is_none(),
        "the kid was parsed as a flag: {error}"
    );
}
