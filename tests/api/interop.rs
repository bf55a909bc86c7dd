//! Stock clients, unchanged: the `oauth2` crate speaks to the token endpoint,
//! and `jsonwebtoken` verifies what it issues against the keys a resource
//! server finds through discovery.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use oauth2::basic::{BasicClient, BasicErrorResponseType, BasicTokenType};
use oauth2::{
    AuthType, ClientId, ClientSecret, EndpointNotSet, EndpointSet, RefreshToken, RequestTokenError,
    ResourceOwnerPassword, ResourceOwnerUsername, Scope, TokenResponse, TokenUrl,
};
use serde_json::Value;

use crate::helpers::*;

type OAuthClient = BasicClient<EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// The HTTP client the `oauth2` docs recommend: no redirects followed.
fn http_client() -> oauth2::reqwest::Client {
    oauth2::reqwest::ClientBuilder::new()
        .redirect(oauth2::reqwest::redirect::Policy::none())
        .build()
        .expect("http client")
}

/// An `oauth2` client for `client`, configured only with the token endpoint.
fn oauth_client(app: &TestApp, client: &TestClient, auth: AuthType) -> OAuthClient {
    let mut c = BasicClient::new(ClientId::new(client.id.clone()))
        .set_token_uri(TokenUrl::new(app.url("/oauth2/token")).expect("token URL"))
        .set_auth_type(auth);
    if let Some(secret) = &client.secret {
        c = c.set_client_secret(ClientSecret::new(secret.clone()));
    }
    c
}

/// What a resource server does once: discovery, then the JWKS at `jwks_uri`.
pub async fn discovered_jwks(app: &TestApp) -> JwkSet {
    let discovery: Value = app
        .http
        .get(app.url("/.well-known/openid-configuration"))
        .send()
        .await
        .expect("discovery fetched")
        .json()
        .await
        .expect("discovery JSON");
    let jwks_uri = discovery["jwks_uri"].as_str().expect("jwks_uri");
    fetch_jwks(&app.http, jwks_uri).await
}

pub async fn fetch_jwks(http: &reqwest::Client, jwks_uri: &str) -> JwkSet {
    let resp = http.get(jwks_uri).send().await.expect("JWKS fetched");
    assert_eq!(resp.status(), 200, "GET {jwks_uri}");
    resp.json().await.expect("a JWK set")
}

/// Verifies a JWT the way a stock verifier does: the key named by `kid` in
/// `jwks`, RS256 only, `iss` and `aud` checked, `exp` required. Returns the
/// header `typ` and the claims.
pub fn verify(token: &str, jwks: &JwkSet, issuer: &str, audience: &str) -> Result<(String, Value), String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| format!("header: {e}"))?;
    let kid = header.kid.ok_or("no kid in the header")?;
    let jwk = jwks
        .find(&kid)
        .ok_or_else(|| format!("kid {kid} is not in the JWKS"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("JWK: {e}"))?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    let data = jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(|e| format!("{e}"))?;
    Ok((header.typ.unwrap_or_default(), data.claims))
}

/// An access token checked as a resource server checks it (RFC 9068 §4).
pub fn verify_access_token(token: &str, jwks: &JwkSet, app: &TestApp) -> Value {
    let (typ, claims) =
        verify(token, jwks, &app.base, &app.base).unwrap_or_else(|e| panic!("access token refused: {e}"));
    assert_eq!(typ, "at+jwt", "RFC 9068 §2.1 typ");
    claims
}

pub fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token)
        .expect("a JWT header")
        .kid
        .expect("a kid")
}

#[tokio::test]
async fn the_oauth2_crate_logs_in_and_refreshes_with_basic_auth() {
    let app = TestApp::spawn().await;
    let client = app.web_client().await;
    app.create_user("ada@example.com").await;
    let oauth = oauth_client(&app, &client, AuthType::BasicAuth);
    let http = http_client();

    let login = oauth
        .exchange_password(
            &ResourceOwnerUsername::new("ada@example.com".into()),
            &ResourceOwnerPassword::new(PASSWORD.into()),
        )
        .add_scope(Scope::new("openid".into()))
        .add_scope(Scope::new("email".into()))
        .request_async(&http)
        .await
        .expect("password grant through the oauth2 crate");

    assert_eq!(*login.token_type(), BasicTokenType::Bearer);
    assert_eq!(login.expires_in().map(|d| d.as_secs()), Some(900));
    let mut scopes: Vec<String> = login
        .scopes()
        .expect("scope")
        .iter()
        .map(|s| s.to_string())
        .collect();
    scopes.sort();
    assert_eq!(scopes, ["email", "openid"]);
    let first_refresh = login.refresh_token().expect("a refresh token").clone();

    let refreshed = oauth
        .exchange_refresh_token(&first_refresh)
        .request_async(&http)
        .await
        .expect("refresh through the oauth2 crate");

    let second_refresh = refreshed.refresh_token().expect("a new refresh token");
    assert_ne!(
        second_refresh.secret(),
        first_refresh.secret(),
        "refresh tokens rotate"
    );
    assert_ne!(refreshed.access_token().secret(), login.access_token().secret());
    let jwks = discovered_jwks(&app).await;
    let before = verify_access_token(login.access_token().secret(), &jwks, &app);
    let after = verify_access_token(refreshed.access_token().secret(), &jwks, &app);
    assert_eq!(after["sid"], before["sid"], "one login, one sid across rotations");

    // Replaying the used refresh token is refused in a form the crate understands.
    let replay = oauth
        .exchange_refresh_token(&first_refresh)
        .request_async(&http)
        .await;
    match replay {
        Err(RequestTokenError::ServerResponse(e)) => {
            assert_eq!(*e.error(), BasicErrorResponseType::InvalidGrant)
        }
        other => panic!("expected invalid_grant, got {other:?}"),
    }
}

#[tokio::test]
async fn the_oauth2_crate_sees_invalid_grant_for_a_wrong_password() {
    let app = TestApp::spawn().await;
    let client = app.web_client().await;
    app.create_user("ada@example.com").await;
    let oauth = oauth_client(&app, &client, AuthType::BasicAuth);

    let result = oauth
        .exchange_password(
            &ResourceOwnerUsername::new("ada@example.com".into()),
            &ResourceOwnerPassword::new("not the password".into()),
        )
        .request_async(&http_client())
        .await;

    match result {
        Err(RequestTokenError::ServerResponse(e)) => {
            assert_eq!(*e.error(), BasicErrorResponseType::InvalidGrant, "{e:?}")
        }
        other => panic!("expected a parsed invalid_grant error response, got {other:?}"),
    }
}

#[tokio::test]
async fn the_oauth2_crate_gets_client_credentials_tokens_with_basic_and_post_auth() {
    let app = TestApp::spawn().await;
    let client = app
        .create_client(&["--grant", "client_credentials", "--scope", "read"])
        .await;
    let http = http_client();
    let jwks = discovered_jwks(&app).await;

    for auth in [AuthType::BasicAuth, AuthType::RequestBody] {
        let label = format!("{auth:?}");
        let oauth = oauth_client(&app, &client, auth);

        let token = oauth
            .exchange_client_credentials()
            .add_scope(Scope::new("read".into()))
            .request_async(&http)
            .await
            .unwrap_or_else(|e| panic!("client_credentials with {label}: {e:?}"));

        assert!(
            token.refresh_token().is_none(),
            "{label}: no refresh token for client_credentials"
        );
        assert_eq!(token.scopes().map(|s| s.len()), Some(1), "{label}");
        let claims = verify_access_token(token.access_token().secret(), &jwks, &app);
        assert_eq!(claims["sub"], client.id.as_str(), "{label}: sub is the client");
        assert_eq!(claims["client_id"], client.id.as_str(), "{label}");
        assert_eq!(claims["scope"], "read", "{label}");
        assert!(claims.get("sid").is_none(), "{label}: no login session: {claims}");
        assert!(claims.get("roles").is_none(), "{label}: no user roles: {claims}");
    }
}

#[tokio::test]
async fn a_public_client_uses_the_oauth2_crate_with_its_client_id_alone() {
    let app = TestApp::spawn().await;
    let client = app
        .create_client(&["--public", "--grant", "password", "--grant", "refresh_token"])
        .await;
    assert!(client.secret.is_none());
    app.create_user("ada@example.com").await;
    let oauth = oauth_client(&app, &client, AuthType::BasicAuth);
    let http = http_client();

    let login = oauth
        .exchange_password(
            &ResourceOwnerUsername::new("ada@example.com".into()),
            &ResourceOwnerPassword::new(PASSWORD.into()),
        )
        .request_async(&http)
        .await
        .expect("password grant for a public client");
    let refreshed = oauth
        .exchange_refresh_token(&RefreshToken::new(
            login.refresh_token().expect("refresh token").secret().clone(),
        ))
        .request_async(&http)
        .await
        .expect("refresh for a public client");

    let jwks = discovered_jwks(&app).await;
    let claims = verify_access_token(refreshed.access_token().secret(), &jwks, &app);
    assert_eq!(claims["client_id"], client.id.as_str());
}

#[tokio::test]
async fn jsonwebtoken_verifies_every_issued_token_against_the_discovered_jwks() {
    let app = TestApp::spawn().await;
    let web = app.web_client().await;
    let service = app
        .create_client(&["--grant", "client_credentials", "--scope", "read"])
        .await;
    let user_id = app.create_user("ada@example.com").await;
    let login = app
        .login(&web, "ada@example.com", Some("openid profile email"))
        .await;
    let refreshed: Value = app
        .refresh(&web, login["refresh_token"].as_str().expect("refresh_token"))
        .await
        .json()
        .await
        .expect("refresh JSON");
    let cc: Value = app
        .token(&service, &[("grant_type", "client_credentials")])
        .await
        .json()
        .await
        .expect("client_credentials JSON");

    let jwks = discovered_jwks(&app).await;

    for body in [&login, &refreshed] {
        let access = body["access_token"].as_str().expect("access_token");
        let claims = verify_access_token(access, &jwks, &app);
        for claim in [
            "iss",
            "sub",
            "aud",
            "client_id",
            "scope",
            "exp",
            "iat",
            "jti",
            "sid",
            "roles",
        ] {
            assert!(
                claims.get(claim).is_some(),
                "user access token lacks {claim}: {claims}"
            );
        }
        assert_eq!(claims["sub"], user_id.as_str());
        assert_eq!(claims["client_id"], web.id.as_str());
        assert!(claims["roles"].is_array(), "roles is an array: {claims}");
        assert!(claims["sid"].is_string());
        assert!(claims["exp"].as_i64() > claims["iat"].as_i64());

        let id_token = body["id_token"].as_str().expect("id_token with openid");
        let (_, id) =
            verify(id_token, &jwks, &app.base, &web.id).unwrap_or_else(|e| panic!("id_token refused: {e}"));
        assert_eq!(id["sub"], user_id.as_str());
        assert_eq!(
            id["sid"], claims["sid"],
            "the id_token names the same login session"
        );
        assert_eq!(id["email"], "ada@example.com");
    }
    let service_claims = verify_access_token(cc["access_token"].as_str().expect("access_token"), &jwks, &app);
    assert_eq!(service_claims["sub"], service.id.as_str());
    assert!(service_claims.get("sid").is_none());

    // The verifier really checks: a token for another audience, or altered, is refused.
    let access = login["access_token"].as_str().expect("access_token");
    assert!(
        verify(access, &jwks, &app.base, &web.id).is_err(),
        "audience is checked"
    );
    assert!(
        verify(access, &jwks, "http://elsewhere.example", &app.base).is_err(),
        "issuer is checked"
    );
    let id_token = login["id_token"].as_str().expect("id_token");
    assert!(
        verify(id_token, &jwks, &app.base, &app.base).is_err(),
        "an id_token is not an access token"
    );
    let (head, rest) = access.split_once('.').expect("a JWT");
    let (_, signature) = rest.split_once('.').expect("a JWT");
    let (_, other_payload) = cc["access_token"]
        .as_str()
        .expect("jwt")
        .split_once('.')
        .expect("a JWT");
    let (other_payload, _) = other_payload.split_once('.').expect("a JWT");
    let spliced = format!("{head}.{other_payload}.{signature}");
    assert!(
        verify(&spliced, &jwks, &app.base, &app.base).is_err(),
        "the signature is checked"
    );
}
