//! Discovery: OIDC Discovery 1.0 and RFC 8414 metadata that stock clients can
//! configure themselves from, and whose every endpoint answers.

use serde_json::Value;

use crate::helpers::*;

const DOCUMENTS: [&str; 2] = [
    "/.well-known/openid-configuration",
    "/.well-known/oauth-authorization-server",
];

async fn metadata(app: &TestApp, path: &str) -> Value {
    let resp = app.http.get(app.url(path)).send().await.expect("sent");
    assert_eq!(resp.status(), 200, "{path}");
    resp.json().await.expect("metadata JSON")
}

fn strings(doc: &Value, field: &str) -> Vec<String> {
    doc[field]
        .as_array()
        .unwrap_or_else(|| panic!("{field} is an array: {doc}"))
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("{field} holds strings"))
                .to_owned()
        })
        .collect()
}

fn assert_contains(doc: &Value, field: &str, wanted: &[&str]) {
    let have = strings(doc, field);
    for w in wanted {
        assert!(have.iter().any(|h| h == w), "{field} lacks {w}: {have:?}");
    }
}

#[tokio::test]
async fn both_discovery_documents_describe_the_provider() {
    let app = TestApp::spawn().await;

    for path in DOCUMENTS {
        let resp = app.http.get(app.url(path)).send().await.expect("sent");

        assert_eq!(resp.status(), 200, "{path}");
        let cache = resp.headers()["cache-control"]
            .to_str()
            .expect("ASCII")
            .to_owned();
        assert!(cache.starts_with("public"), "{path}: Cache-Control {cache}");
        let content_type = resp.headers()["content-type"].to_str().expect("ASCII").to_owned();
        assert!(
            content_type.starts_with("application/json"),
            "{path}: {content_type}"
        );
        let doc: Value = resp.json().await.expect("JSON");
        assert_eq!(
            doc["issuer"],
            app.base.as_str(),
            "{path}: issuer is exactly the iss of tokens"
        );
        let endpoints = [
            ("token_endpoint", "/oauth2/token"),
            ("jwks_uri", "/.well-known/jwks.json"),
            ("userinfo_endpoint", "/oauth2/userinfo"),
            ("revocation_endpoint", "/oauth2/revoke"),
            ("introspection_endpoint", "/oauth2/introspect"),
            ("authorization_endpoint", "/oauth2/authorize"),
            ("end_session_endpoint", "/logout"),
        ];
        for (field, suffix) in endpoints {
            assert_eq!(doc[field], app.url(suffix).as_str(), "{path}: {field}");
        }
        assert!(
            doc["service_documentation"]
                .as_str()
                .is_some_and(|u| u.starts_with(&app.base)),
            "{path}: service_documentation"
        );
        assert_contains(
            &doc,
            "grant_types_supported",
            &[
                "authorization_code",
                "password",
                "refresh_token",
                "client_credentials",
            ],
        );
        assert_eq!(strings(&doc, "response_types_supported"), ["code"], "{path}");
        assert_eq!(
            strings(&doc, "code_challenge_methods_supported"),
            ["S256"],
            "{path}"
        );
        assert_eq!(
            doc["authorization_response_iss_parameter_supported"], true,
            "{path}: RFC 9207"
        );
        assert_contains(&doc, "subject_types_supported", &["public"]);
        assert_contains(&doc, "id_token_signing_alg_values_supported", &["RS256"]);
        assert!(
            !strings(&doc, "id_token_signing_alg_values_supported")
                .iter()
                .any(|a| a == "none"),
            "{path}: unsigned id_tokens offered"
        );
        assert_contains(
            &doc,
            "token_endpoint_auth_methods_supported",
            &["client_secret_basic", "client_secret_post", "none"],
        );
        assert_contains(&doc, "scopes_supported", &["openid", "profile", "email"]);
        assert_contains(&doc, "claims_supported", &["sub", "iss", "email"]);
    }
    assert_eq!(
        metadata(&app, DOCUMENTS[0]).await,
        metadata(&app, DOCUMENTS[1]).await,
        "one provider, one description"
    );
}

#[tokio::test]
async fn every_endpoint_the_discovery_document_names_answers() {
    let app = TestApp::spawn().await;
    let doc = metadata(&app, DOCUMENTS[0]).await;
    let url = |field: &str| {
        doc[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field}"))
            .to_owned()
    };

    let jwks = app.http.get(url("jwks_uri")).send().await.expect("sent");
    let token = app
        .http
        .post(url("token_endpoint"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("")
        .send()
        .await
        .expect("sent");
    let userinfo = app.http.get(url("userinfo_endpoint")).send().await.expect("sent");
    let revoke = app
        .http
        .post(url("revocation_endpoint"))
        .form(&[("token", "x")])
        .send()
        .await
        .expect("sent");
    let introspect = app
        .http
        .post(url("introspection_endpoint"))
        .form(&[("token", "x")])
        .send()
        .await
        .expect("sent");
    let docs = app
        .http
        .get(url("service_documentation"))
        .send()
        .await
        .expect("sent");

    assert_eq!(jwks.status(), 200);
    let jwks: Value = jwks.json().await.expect("JWKS JSON");
    assert!(!jwks["keys"].as_array().expect("keys").is_empty());

    assert_eq!(token.status(), 400, "an empty token request");
    assert_eq!(token.headers()["cache-control"], "no-store");
    let body: Value = token.json().await.expect("RFC 6749 §5.2 JSON error");
    assert!(body["error"].is_string(), "{body}");

    assert_eq!(userinfo.status(), 401, "userinfo without a token");
    assert!(
        userinfo.headers()["www-authenticate"]
            .to_str()
            .expect("ASCII")
            .starts_with("Bearer")
    );

    for (name, resp) in [("revocation", revoke), ("introspection", introspect)] {
        assert_eq!(resp.status(), 401, "{name} without client authentication");
        let body: Value = resp.json().await.expect("JSON error");
        assert_eq!(body["error"], "invalid_client", "{name}");
    }

    assert_eq!(docs.status(), 200, "service_documentation");
}
