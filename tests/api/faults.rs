//! Faults (issue 6 §3): an instance killed with `kill -9` in the middle of
//! writes, PostgreSQL unreachable for a while, and start-up with keys or a
//! database it cannot use. Each test is bounded in time; each checks the
//! database itself afterwards, not only the HTTP answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Mutex;

use crate::helpers::*;

/// A refresh chain as its client sees it.
#[derive(Debug, Default)]
struct Chain {
    /// The refresh token the client holds now.
    token: String,
    /// Every refresh token a 200 delivered to the client.
    acknowledged: Vec<String>,
    /// Ended by `invalid_grant`: the client replayed a token whose refresh
    /// had committed on the killed instance though its answer never came.
    ended: bool,
}

/// Per login: all its refresh tokens, the unused ones, and whether it was ended.
#[derive(Debug, sqlx::FromRow)]
struct SessionTally {
    id: String,
    revoked: i64,
    tokens: i64,
    unused: i64,
}

async fn tally(db: &gatehouse::store::Db) -> Vec<SessionTally> {
    sqlx::query_as(
        "select s.id, case when s.revoked_at is null then 0 else 1 end as revoked, \
         count(r.digest) as tokens, \
         coalesce(sum(case when r.digest is not null and r.used_at is null then 1 else 0 end), 0) as unused \
         from login_session s left join refresh_token r on r.session_id = s.id \
         group by s.id, s.revoked_at",
    )
    .fetch_all(db.pool())
    .await
    .unwrap()
}

/// The session holding the refresh token `token`, if the token was stored.
async fn session_of(db: &gatehouse::store::Db, token: &str) -> Option<(String, Option<i64>)> {
    sqlx::query_as("select session_id, used_at from refresh_token where digest = $1")
        .bind(digest_of(token))
        .fetch_optional(db.pool())
        .await
        .unwrap()
}

/// No half-written login or refresh: every login has a refresh token, every
/// chain at most one unused token, and every chain not ended exactly one
/// (a consumed token without its successor would be a torn refresh).
fn assert_whole(sessions: &[SessionTally]) {
    for s in sessions {
        assert!(s.tokens >= 1, "login {} has no refresh token", s.id);
        assert!(
            s.unused <= 1,
            "chain {} has {} live refresh tokens",
            s.id,
            s.unused
        );
        if s.revoked == 0 {
            assert_eq!(s.unused, 1, "chain {} was consumed without a successor", s.id);
        }
    }
}

async fn login_tokens(app: &TestApp, client: &TestClient, n: usize) -> Vec<String> {
    let mut tokens = Vec::new();
    for _ in 0..n {
        let body = app.login(client, "ada@example.com", None).await;
        tokens.push(body["refresh_token"].as_str().unwrap().to_owned());
    }
    tokens
}

/// Every acknowledged refresh token is in the database. When every client
/// got its last answer (`settled`), the token each holds is its chain's live
/// one; otherwise a held token may have been consumed by a refresh that
/// committed while its answer died with the process (`assert_whole` then
/// shows the successor is the chain's one live token). Returns the number
/// acknowledged and the number consumed unanswered.
async fn assert_acknowledged_kept(
    db: &gatehouse::store::Db,
    chains: &[Arc<Mutex<Chain>>],
    settled: bool,
) -> (usize, usize) {
    let (mut acknowledged, mut unanswered) = (0, 0);
    for chain in chains {
        let chain = chain.lock().await;
        for token in &chain.acknowledged {
            assert!(
                session_of(db, token).await.is_some(),
                "an acknowledged refresh token was lost"
            );
            acknowledged += 1;
        }
        if !chain.ended {
            let (_, used_at) = session_of(db, &chain.token)
                .await
                .expect("the held token is stored");
            if used_at.is_some() {
                assert!(!settled, "the token a settled client holds was consumed");
                unanswered += 1;
            }
        }
    }
    (acknowledged, unanswered)
}

#[tokio::test]
async fn kill_9_of_one_instance_during_a_refresh_load_leaves_whole_chains_and_the_other_never_fails() {
    const CHAINS: usize = 8;
    let app = TestApp::spawn().await;
    let web = app.web_client().await;
    app.create_user("ada@example.com").await;
    let firsts = login_tokens(&app, &web, CHAINS).await;
    let mut a = ServerProcess::start(&app, &[]).await;
    let b = Arc::new(ServerProcess::start(&app, &[]).await);
    let a_http = a.http.clone();
    let a_url = a.url("/oauth2/token");

    let chains: Vec<Arc<Mutex<Chain>>> = firsts
        .into_iter()
        .map(|token| {
            Arc::new(Mutex::new(Chain {
                token,
                ..Chain::default()
            }))
        })
        .collect();
    let done = Arc::new(AtomicUsize::new(0));
    let a_in_flight = Arc::new(AtomicUsize::new(0));
    let a_lost = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let b_failures = Arc::new(Mutex::new(Vec::<String>::new()));

    // Each chain alternates between A and B; once A fails it stays on B and
    // presents the same token again, as a client retrying would.
    let mut tasks = tokio::task::JoinSet::new();
    for (n, chain) in chains.iter().enumerate() {
        let (chain, web, b) = (chain.clone(), web.clone(), b.clone());
        let (a_http, a_url) = (a_http.clone(), a_url.clone());
        let (done, a_in_flight, a_lost, stop, b_failures) = (
            done.clone(),
            a_in_flight.clone(),
            a_lost.clone(),
            stop.clone(),
            b_failures.clone(),
        );
        tasks.spawn(async move {
            let mut a_gone = false;
            let mut step = n;
            while !stop.load(Ordering::SeqCst) {
                step += 1;
                let token = chain.lock().await.token.clone();
                let form = [("grant_type", "refresh_token"), ("refresh_token", token.as_str())];
                let on_a = !a_gone && step % 2 == 0;
                let sent = if on_a {
                    a_in_flight.fetch_add(1, Ordering::SeqCst);
                    let sent = a_http
                        .post(&a_url)
                        .basic_auth(&web.id, web.secret.as_deref())
                        .form(&form)
                        .send()
                        .await;
                    a_in_flight.fetch_sub(1, Ordering::SeqCst);
                    sent
                } else {
                    b.token(&web, &form).await
                };
                let resp = match sent {
                    Ok(resp) => resp,
                    Err(_) if on_a => {
                        a_gone = true;
                        a_lost.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                    Err(e) => {
                        b_failures.lock().await.push(format!("no answer from B: {e}"));
                        return;
                    }
                };
                let status = resp.status().as_u16();
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                let mut chain = chain.lock().await;
                match status {
                    200 => {
                        let next = body["refresh_token"].as_str().unwrap().to_owned();
                        chain.acknowledged.push(next.clone());
                        chain.token = next;
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                    400 if a_gone && body["error"] == "invalid_grant" => {
                        chain.ended = true;
                        return;
                    }
                    _ if on_a => panic!("A answered {status} {body}"),
                    _ => {
                        b_failures
                            .lock()
                            .await
                            .push(format!("B answered {status} {body}"));
                        return;
                    }
                }
            }
        });
    }

    // Kill A while it has refreshes in flight, after some traffic.
    let deadline = Instant::now() + Duration::from_secs(20);
    while done.load(Ordering::SeqCst) < 60 || a_in_flight.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "the load got going");
        tokio::task::yield_now().await;
    }
    let in_flight = a_in_flight.load(Ordering::SeqCst);
    a.kill();
    let at_kill = done.load(Ordering::SeqCst);
    // B carries on alone for a while.
    while done.load(Ordering::SeqCst) < at_kill + 10 * CHAINS && !tasks.is_empty() {
        assert!(Instant::now() < deadline, "B kept refreshing after the kill");
        if let Some(joined) = tokio::time::timeout(Duration::from_millis(20), tasks.join_next())
            .await
            .ok()
            .flatten()
        {
            joined.unwrap();
        }
    }
    stop.store(true, Ordering::SeqCst);
    while let Some(joined) = tokio::time::timeout(Duration::from_secs(15), tasks.join_next())
        .await
        .expect("the load stopped")
    {
        joined.unwrap();
    }

    // B never failed, and it still answers.
    let failures = b_failures.lock().await;
    assert!(failures.is_empty(), "{failures:?}");
    let lost = a_lost.load(Ordering::SeqCst);
    assert!(lost >= 1, "the load went on against the killed A");
    let db = test_db(&app).await;
    assert_whole(&tally(&db).await);
    let (acknowledged, _) = assert_acknowledged_kept(&db, &chains, true).await;
    let mut ended = 0;
    for chain in &chains {
        ended += usize::from(chain.lock().await.ended);
    }
    println!(
        "{acknowledged} refreshes acknowledged ({at_kill} before the kill, {in_flight} in flight at A); \
         {lost} chains then found A gone and retried at B; {ended} of {CHAINS} chains ended there as reuse \
         (their refresh had committed at A, its answer lost); B: no 5xx"
    );
    assert_eq!(b.http.get(b.url("/ready")).send().await.unwrap().status(), 200);
}

/// One SQLite file (or PostgreSQL database), one process, refreshes and
/// registrations in flight, `kill -9`; the database opens, passes SQLite's
/// integrity check, and holds every refresh token and account whose answer
/// reached the client.
#[tokio::test]
async fn kill_9_during_writes_loses_no_acknowledged_refresh_and_leaves_an_intact_database() {
    const CHAINS: usize = 6;
    const REGISTRARS: usize = 2;
    let app = TestApp::spawn().await;
    let web = app.web_client().await;
    app.create_user("ada@example.com").await;
    let firsts = login_tokens(&app, &web, CHAINS).await;
    let server = Arc::new(ServerProcess::start(&app, &[]).await);

    let chains: Vec<Arc<Mutex<Chain>>> = firsts
        .into_iter()
        .map(|token| {
            Arc::new(Mutex::new(Chain {
                token,
                ..Chain::default()
            }))
        })
        .collect();
    let registered = Arc::new(Mutex::new(Vec::<String>::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for chain in &chains {
        let (chain, web, server, done) = (chain.clone(), web.clone(), server.clone(), done.clone());
        tasks.spawn(async move {
            loop {
                let token = chain.lock().await.token.clone();
                let Ok(resp) = server.refresh(&web, &token).await else {
                    return; // killed
                };
                let status = resp.status().as_u16();
                let Ok(body) = resp.json::<Value>().await else {
                    return; // killed while answering
                };
                assert_eq!(status, 200, "{body}");
                let next = body["refresh_token"].as_str().unwrap().to_owned();
                let mut chain = chain.lock().await;
                chain.acknowledged.push(next.clone());
                chain.token = next;
                done.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    for r in 0..REGISTRARS {
        let (server, registered, done) = (server.clone(), registered.clone(), done.clone());
        tasks.spawn(async move {
            for n in 0.. {
                let email = format!("r{r}-{n}@example.com");
                let Ok(resp) = server
                    .http
                    .post(server.url("/accounts"))
                    .json(&serde_json::json!({"email": email, "password": PASSWORD}))
                    .send()
                    .await
                else {
                    return;
                };
                assert_eq!(resp.status(), 202);
                registered.lock().await.push(email);
                done.fetch_add(1, Ordering::SeqCst);
            }
        });
    }

    let deadline = Instant::now() + Duration::from_secs(20);
    while done.load(Ordering::SeqCst) < 100 {
        assert!(Instant::now() < deadline, "the load got going");
        tokio::task::yield_now().await;
    }
    let at_kill = done.load(Ordering::SeqCst);
    // `kill -9` by pid: the Arc is shared with the load tasks.
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    while let Some(joined) = tokio::time::timeout(Duration::from_secs(15), tasks.join_next())
        .await
        .expect("the load ended with the process")
    {
        joined.unwrap();
    }

    let db = test_db(&app).await;
    if on_postgres() {
        println!("PostgreSQL: no SQLite integrity check; the rows are checked below");
    } else {
        let (check,): (String,) = sqlx::query_as("pragma integrity_check")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(check, "ok");
        // Created by the server: 1 KiB pages (src/store.rs, SQLITE_PRAGMAS).
        let (page_size,): (i64,) = sqlx::query_as("pragma page_size")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(page_size, 1024);
    }
    assert_whole(&tally(&db).await);
    let (acknowledged, unanswered) = assert_acknowledged_kept(&db, &chains, false).await;
    let registered = registered.lock().await;
    for email in registered.iter() {
        let found: Option<(String,)> = sqlx::query_as("select id from user_account where email = $1")
            .bind(email)
            .fetch_optional(db.pool())
            .await
            .unwrap();
        assert!(found.is_some(), "acknowledged registration of {email} lost");
    }
    println!(
        "killed after {at_kill} acknowledged writes: {acknowledged} refreshes and {} registrations all kept; \
         {unanswered} refreshes committed with their answer lost",
        registered.len()
    );
}

/// One request while the database is away: status, the body as JSON, the
/// content type and how long the answer took.
async fn timed(req: reqwest::RequestBuilder) -> (u16, Value, String, Duration) {
    let started = Instant::now();
    let resp = req
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .expect("an answer, not a hang");
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body, content_type, started.elapsed())
}

/// The longest a request may take to fail while the database is away.
const FAIL_FAST: Duration = Duration::from_secs(5);

#[tokio::test]
async fn while_postgres_is_unreachable_requests_fail_fast_with_503_and_recover_without_restart() {
    let Some(url) = std::env::var("GATEHOUSE_TEST_DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"))
    else {
        println!(
            "skipped: SQLite is a file in the process, with no server to become unreachable \
             (ops.rs covers /ready with the file moved away); set GATEHOUSE_TEST_DATABASE_URL"
        );
        return;
    };
    let proxy = DbProxy::start(postgres_host(&url)).await;
    let port = proxy.port;
    let app = TestApp::spawn_with(move |c| c.database_url = via_port(&c.database_url, port)).await;
    let web = app.web_client().await;
    let first_party = app
        .create_client(&["--grant", "refresh_token", "--first-party", "--public"])
        .await;
    app.create_user("ada@example.com").await;
    let login = app.login(&web, "ada@example.com", None).await;
    let at = login["access_token"].as_str().unwrap().to_owned();
    let mut rt = login["refresh_token"].as_str().unwrap().to_owned();

    for mode in [ProxyMode::Refuse, ProxyMode::Blackhole] {
        proxy.set(mode);
        let down = Instant::now();

        // All at once, each against the clock: /ready, the token endpoint
        // (RFC 6749 JSON), a Bearer-protected OAuth endpoint (the same), and
        // the account API (problem+json).
        let email = format!("{mode:?}@example.com").to_lowercase();
        let token = |form: Vec<(&'static str, String)>| {
            app.http
                .post(app.url("/oauth2/token"))
                .basic_auth(&web.id, web.secret.as_deref())
                .form(&form)
        };
        let oauth = "application/json";
        let problem = "application/problem+json";
        let cases = [
            ("ready", app.http.get(app.url("/ready")), oauth),
            (
                "refresh",
                token(vec![
                    ("grant_type", "refresh_token".into()),
                    ("refresh_token", rt.clone()),
                ]),
                oauth,
            ),
            (
                "password",
                token(vec![
                    ("grant_type", "password".into()),
                    ("username", "ada@example.com".into()),
                    ("password", PASSWORD.into()),
                ]),
                oauth,
            ),
            (
                "userinfo",
                app.http.get(app.url("/oauth2/userinfo")).bearer_auth(&at),
                oauth,
            ),
            (
                "register",
                app.http
                    .post(app.url("/accounts"))
                    .json(&serde_json::json!({"email": email, "password": PASSWORD})),
                problem,
            ),
            (
                "profile",
                app.http.get(app.url("/accounts/me")).bearer_auth(&at),
                problem,
            ),
            (
                "cookie session",
                app.http
                    .post(app.url("/session/login"))
                    .header("origin", app.base.as_str())
                    .json(&serde_json::json!({
                        "email": "ada@example.com",
                        "password": PASSWORD,
                        "client_id": first_party.id,
                    })),
                problem,
            ),
        ];
        let mut answers = tokio::task::JoinSet::new();
        for (name, req, shape) in cases {
            answers.spawn(async move { (name, shape, timed(req).await) });
        }
        // A burst of Bearer checks, more than a few batches' worth
        // (store::batch): each still fails fast, none waits in the queue.
        for _ in 0..64 {
            let req = app.http.get(app.url("/oauth2/userinfo")).bearer_auth(&at);
            answers.spawn(async move { ("userinfo burst", oauth, timed(req).await) });
        }
        let mut slowest = Duration::ZERO;
        while let Some(answer) = answers.join_next().await {
            let (name, shape, (status, body, content_type, took)) = answer.unwrap();
            assert_eq!(status, 503, "{mode:?} {name}: {body}");
            assert!(took < FAIL_FAST, "{mode:?} {name}: took {took:?}");
            assert!(content_type.starts_with(shape), "{mode:?} {name}: {content_type}");
            match name {
                "ready" => assert_eq!(body["status"], "unavailable", "{body}"),
                _ if shape == oauth => assert_eq!(body["error"], "temporarily_unavailable", "{name}: {body}"),
                _ => assert_eq!(
                    (&body["status"], &body["code"]),
                    (&503.into(), &"unavailable".into()),
                    "{body}"
                ),
            }
            slowest = slowest.max(took);
        }
        // What needs no database still serves.
        for path in ["/health", "/.well-known/jwks.json"] {
            let (status, _, _, _) = timed(app.http.get(app.url(path))).await;
            assert_eq!(status, 200, "{path}");
        }

        // Back: the same process serves again, and the refresh token the
        // failed attempts presented was not consumed by them.
        proxy.set(ProxyMode::Pass);
        let back = Instant::now();
        let (recovered, next) = loop {
            let resp = app.refresh(&web, &rt).await;
            if resp.status() == 200 {
                let body: Value = resp.json().await.unwrap();
                break (back.elapsed(), body["refresh_token"].as_str().unwrap().to_owned());
            }
            assert_eq!(resp.status(), 503, "{mode:?}: only unavailable until it is back");
            assert!(back.elapsed() < Duration::from_secs(10), "{mode:?}: no recovery");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        rt = next;
        let (status, _, _, _) = timed(app.http.get(app.url("/ready"))).await;
        assert_eq!(status, 200);
        let resp = app
            .http
            .post(app.url("/accounts"))
            .json(&serde_json::json!({"email": email, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        println!(
            "{mode:?}: down {:?}; slowest 503 {slowest:?}; first refresh after restore in {recovered:?}",
            back - down
        );
    }
}

/// A directory no process of this test can write to, even as root: the
/// directory is fine, the process is not allowed in.
fn unwritable_empty_dir(parent: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = parent.join("keys");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    dir
}

/// Root ignores file modes, so as root the binary runs as `nobody`.
fn as_unprivileged(cmd: &mut std::process::Command, parent: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    // /proc/self belongs to the effective user.
    let root = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
    if root.unwrap_or(false) {
        // nobody must reach the temp dir (and its SQLite file) to get as far as the keys.
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o777)).unwrap();
        cmd.uid(65534).gid(65534);
    }
}

#[tokio::test]
async fn an_empty_keys_directory_that_cannot_be_written_stops_startup_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let keys = unwritable_empty_dir(dir.path());
    let url = empty_database_url(dir.path()).await;
    let mut cmd = gatehouse_command();
    cmd.current_dir(dir.path())
        .env("HOME", dir.path())
        .env("GATEHOUSE_LISTEN", "127.0.0.1:0")
        .env("GATEHOUSE_DATABASE_URL", &url)
        .env("GATEHOUSE_KEYS_DIR", &keys);
    as_unprivileged(&mut cmd, dir.path());

    let (status, stderr, took) = run_bounded(cmd, Duration::from_secs(10)).await;

    let status = status.unwrap_or_else(|| panic!("still running after 10 s: {stderr}"));
    assert!(!status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    for needle in ["GATEHOUSE_KEYS_DIR", keys.to_str().unwrap(), "ermission denied"] {
        assert!(lines[0].contains(needle), "{needle:?} in {stderr}");
    }
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(std::fs::read_dir(&keys).unwrap().count(), 0);
    println!("{took:?}: {}", lines[0]);
}

#[tokio::test]
async fn a_database_that_cannot_be_reached_at_start_stops_startup_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        // Nothing listens on port 1.
        ("postgres://postgres@127.0.0.1:1/gatehouse", "127.0.0.1:1"),
        // A directory that does not exist.
        (
            &*format!("sqlite://{}/missing/gatehouse.db", dir.path().display()),
            "missing/gatehouse.db",
        ),
    ];
    for (url, names) in cases {
        let mut cmd = gatehouse_command();
        cmd.current_dir(dir.path())
            .env("GATEHOUSE_LISTEN", "127.0.0.1:0")
            .env("GATEHOUSE_DATABASE_URL", url)
            .env("GATEHOUSE_KEYS_DIR", dir.path().join("keys"));

        let (status, stderr, took) = run_bounded(cmd, Duration::from_secs(15)).await;

        let status = status.unwrap_or_else(|| panic!("{url}: still running after 15 s: {stderr}"));
        assert!(!status.success(), "{url}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{url}: one line: {stderr}");
        for needle in ["GATEHOUSE_DATABASE_URL", names] {
            assert!(lines[0].contains(needle), "{url}: {needle:?} in {stderr}");
        }
        assert!(took < Duration::from_secs(5), "{url}: took {took:?}");
        println!("{took:?}: {}", lines[0]);
    }
    assert!(
        !dir.path().join("keys").exists(),
        "nothing written before the database"
    );
}
