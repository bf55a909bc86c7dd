//! The binary and its CLI: start-up, configuration errors, the committed
//! OpenAPI document, and the client/user commands' effects.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

fn gatehouse() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    for (key, _) in std::env::vars() {
        if key.starts_with("GATEHOUSE_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

#[test]
fn committed_openapi_document_matches_the_code() {
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json"))
        .unwrap_or_default();
    let generated = gatehouse::app::openapi_json();
    assert!(
        committed.trim_end() == generated.trim_end(),
        "openapi/openapi.json is stale; regenerate it with:\n    cargo run -- openapi > openapi/openapi.json"
    );
}

#[test]
fn a_bad_setting_stops_startup_with_one_line_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("GATEHOUSE_ACCESS_TOKEN_TTL", "soon"),
        ("GATEHOUSE_LISTEN", "nowhere"),
        ("GATEHOUSE_LOG_FORMAT", "xml"),
        ("GATEHOUSE_REQUIRE_VERIFIED_EMAIL", "perhaps"),
    ];
    for (variable, value) in cases {
        let out = gatehouse()
            .current_dir(dir.path())
            .env(variable, value)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{variable}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{variable}: {stderr}");
        assert!(stderr.contains(variable), "{variable}: {stderr}");
    }
    assert!(
        !dir.path().join("gatehouse.db").exists(),
        "nothing is created on a bad setting"
    );
}

#[test]
fn an_unwritable_empty_keys_directory_stops_startup_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), "not a directory").unwrap();
    let out = gatehouse()
        .current_dir(dir.path())
        .env("GATEHOUSE_LISTEN", "127.0.0.1:0")
        .env("GATEHOUSE_KEYS_DIR", dir.path().join("file/keys"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.trim_end().lines().last().unwrap_or_default();
    assert!(last.contains("GATEHOUSE_KEYS_DIR"), "{stderr}");
}

#[tokio::test]
async fn the_binary_starts_with_no_configuration_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = gatehouse()
        .current_dir(dir.path())
        .env("GATEHOUSE_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..100 {
        if let Ok(resp) = http.get(format!("http://127.0.0.1:{port}/ready")).send().await {
            ready = resp.status() == 200;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "the server became ready");

    let discovery: Value = http
        .get(format!(
            "http://127.0.0.1:{port}/.well-known/openid-configuration"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discovery["issuer"], format!("http://127.0.0.1:{port}"));
    assert!(dir.path().join("gatehouse.db").exists());
    assert!(
        dir.path().join("gatehouse.db-wal").exists(),
        "SQLite runs in WAL mode"
    );
    let keys: Vec<_> = std::fs::read_dir(dir.path().join("keys")).unwrap().collect();
    assert_eq!(keys.len(), 1, "one key generated");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut exited = None;
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    assert_eq!(exited.map(|s| s.code()), Some(Some(0)), "exit 0 after SIGTERM");
}

#[tokio::test]
async fn rotating_a_client_secret_retires_the_old_one() {
    let app = TestApp::spawn().await;
    let api = app.create_client(&["--grant", "client_credentials"]).await;
    let cc = [("grant_type", "client_credentials")];
    // The server now holds the client in its cache.
    assert_eq!(app.token(&api, &cc).await.status(), 200);

    let rotated = app.cli(&["clients", "rotate-secret", "--id", &api.id]).await;
    let fresh = TestClient {
        id: api.id.clone(),
        secret: rotated["client_secret"].as_str().map(str::to_owned),
    };

    assert_ne!(fresh.secret, api.secret);
    // Another process changed the client: the server's poll drops its copy
    // within about a second.
    let (status, took) = poll_until(Duration::from_secs(3), 401, || async {
        app.token(&api, &cc).await.status().as_u16()
    })
    .await;
    assert_eq!(status, 401, "the old secret still works after {took:?}");
    println!("old client secret refused {took:?} after the CLI rotated it");
    assert_eq!(
        app.token(&fresh, &[("grant_type", "client_credentials")])
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn cli_refuses_what_would_break_the_rules() {
    let app = TestApp::spawn().await;
    app.create_user("ada@example.com").await;

    let cases: [(&str, Vec<&str>, &str); 5] = [
        (
            "public client_credentials",
            vec![
                "clients",
                "create",
                "--name",
                "x",
                "--public",
                "--grant",
                "client_credentials",
            ],
            "",
        ),
        (
            "unknown grant",
            vec!["clients", "create", "--name", "x", "--grant", "implicit"],
            "",
        ),
        (
            "same e-mail in other case",
            vec![
                "users",
                "create",
                "--email",
                "ADA@example.com",
                "--password-stdin",
            ],
            PASSWORD,
        ),
        (
            "short password",
            vec![
                "users",
                "create",
                "--email",
                "bob@example.com",
                "--password-stdin",
            ],
            "short",
        ),
        (
            "bad role",
            vec![
                "users",
                "set-role",
                "--email",
                "ada@example.com",
                "--role",
                "Bad Role",
            ],
            "",
        ),
    ];
    for (label, args, input) in cases {
        assert!(app.try_cli(&args, input).await.is_err(), "{label}");
    }
}

#[tokio::test]
async fn roles_set_with_the_cli_appear_in_the_next_access_token() {
    let app = TestApp::spawn().await;
    let client = app.web_client().await;
    app.create_user("ada@example.com").await;

    app.cli(&[
        "users",
        "set-role",
        "--email",
        "ada@example.com",
        "--role",
        "admin",
        "--role",
        "billing",
    ])
    .await;
    let login = app.login(&client, "ada@example.com", None).await;

    let (_, claims) = jwt_parts(login["access_token"].as_str().unwrap());
    assert_eq!(claims["roles"], serde_json::json!(["admin", "billing"]));
    let users = app.cli(&["users", "list"]).await;
    assert_eq!(users[0]["roles"], serde_json::json!(["admin", "billing"]));
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish_then_exits_0() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = gatehouse()
        .current_dir(dir.path())
        .env("GATEHOUSE_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if http
            .get(format!("http://127.0.0.1:{port}/ready"))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A request whose body is still on its way when SIGTERM arrives.
    let body = "grant_type=client_credentials&client_id=00000000-0000-4000-8000-000000000000";
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!(
        "POST /oauth2/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&body.as_bytes()[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    tcp.write_all(&body.as_bytes()[10..]).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 401"),
        "the in-flight request got its answer: {answer}"
    );
    assert!(answer.contains("invalid_client"), "{answer}");

    let mut exited = None;
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    assert_eq!(exited.map(|s| s.code()), Some(Some(0)), "exit 0 after SIGTERM");
    assert!(
        http.get(format!("http://127.0.0.1:{port}/health"))
            .send()
            .await
            .is_err(),
        "no longer accepting"
    );
}
