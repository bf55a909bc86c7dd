//! Bad input gets a standard error shape, never plain text, never a 500.

use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn malformed_token_requests_get_rfc_6749_errors() {
    let app = TestApp::spawn().await;
    let url = app.url("/oauth2/token");
    let cases: Vec<(&str, reqwest::RequestBuilder)> = vec![
        (
            "JSON body",
            app.http
                .post(&url)
                .header("content-type", "application/json")
                .body(r#"{"grant_type":"password"}"#),
        ),
        ("no body", app.http.post(&url)),
        ("no grant_type", app.http.post(&url).form(&[("username", "x")])),
        (
            "NUL in a field",
            app.http
                .post(&url)
                .form(&[("grant_type", "password"), ("client_id", "a\0b")]),
        ),
        (
            "repeated parameter",
            app.http
                .post(&url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body("grant_type=password&grant_type=client_credentials"),
        ),
    ];
    for (label, req) in cases {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 400, "{label}");
        assert_eq!(resp.headers()["cache-control"], "no-store", "{label}");
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{label}"
        );
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "invalid_request", "{label}");
    }
}

#[tokio::test]
async fn unknown_paths_and_methods_get_json_errors() {
    let app = TestApp::spawn().await;

    let resp = app.http.get(app.url("/no/such/thing")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        (body["status"].as_u64(), body["code"].as_str()),
        (Some(404), Some("not_found"))
    );

    let resp = app.http.get(app.url("/oauth2/nothing")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"], "invalid_request");

    let resp = app.http.get(app.url("/oauth2/token")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(resp.json::<Value>().await.unwrap()["error"], "invalid_request");
}

#[tokio::test]
async fn every_answer_carries_a_request_id_and_security_headers() {
    let app = TestApp::spawn().await;

    let resp = app
        .http
        .get(app.url("/health"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "trace-me-42");
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    assert_eq!(resp.headers()["x-frame-options"], "DENY");
    assert_eq!(resp.headers()["referrer-policy"], "no-referrer");

    let resp = app
        .http
        .get(app.url("/ready"))
        .header("x-request-id", "bad id\t!")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-request-id"].to_str().unwrap();
    assert!(
        uuid::Uuid::try_parse(id).is_ok(),
        "an insane id is replaced: {id}"
    );
}

#[tokio::test]
async fn bodies_over_64_kib_are_refused_with_413() {
    let app = TestApp::spawn().await;
    let big = "a".repeat(70 * 1024);

    let resp = app
        .http
        .post(app.url("/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("grant_type=password&username={big}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"], "invalid_request");

    // Chunked, without a Content-Length.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(&app.config.listen).await.unwrap();
    let mut request = String::from(
        "POST /accounts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    );
    for chunk in big.as_bytes().chunks(4096) {
        request.push_str(&format!(
            "{:x}\r\n{}\r\n",
            chunk.len(),
            String::from_utf8_lossy(chunk)
        ));
    }
    request.push_str("0\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{answer}"
    );
}

#[tokio::test]
async fn html_and_json_answers_carry_a_strict_csp_and_docs_its_own() {
    let app = TestApp::spawn().await;

    let json = app.http.get(app.url("/health")).send().await.unwrap();
    let csp = json.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");

    let docs = app.http.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    let csp = docs.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'unsafe-inline'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(
        docs.headers().get("strict-transport-security").is_none(),
        "no HSTS over http"
    );
}

#[tokio::test]
async fn cors_answers_only_the_configured_origins() {
    let app = TestApp::spawn_with(|c| c.cors_origins = "https://app.example".into()).await;

    let preflight = app
        .http
        .request(reqwest::Method::OPTIONS, app.url("/oauth2/token"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(preflight.headers()["access-control-allow-credentials"], "true");

    let stranger = app
        .http
        .request(reqwest::Method::OPTIONS, app.url("/oauth2/token"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(stranger.status(), 403);
    assert!(stranger.headers().get("access-control-allow-origin").is_none());

    let simple = app
        .http
        .get(app.url("/health"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(simple.headers().get("access-control-allow-origin").is_none());
    let allowed = app
        .http
        .get(app.url("/health"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
}

#[tokio::test]
async fn an_https_issuer_gets_hsts() {
    let app = TestApp::spawn_with(|c| c.issuer = Some("https://id.example".into())).await;
    let resp = reqwest::Client::new()
        .get(format!("http://{}/health", app.config.listen))
        .send()
        .await
        .unwrap();
    assert!(
        resp.headers()["strict-transport-security"]
            .to_str()
            .unwrap()
            .starts_with("max-age=")
    );
}

#[tokio::test]
async fn a_request_that_outlives_the_timeout_gets_503_not_a_hang() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn_with(|c| c.request_timeout = "1".into()).await;

    // A slow upload: the headers promise a body that never fully arrives.
    let mut tcp = tokio::net::TcpStream::connect(&app.config.listen).await.unwrap();
    tcp.write_all(
        b"POST /oauth2/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
          Content-Length: 100\r\nConnection: close\r\n\r\ngrant_type=",
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);

    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "answered promptly"
    );
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("temporarily_unavailable"), "{answer}");
}
