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
