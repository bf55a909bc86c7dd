//! A stock relying party, unchanged: the `openidconnect` crate discovers the
//! provider, builds the authorization URL (PKCE S256, nonce, state), and,
//! once the user agent below has signed in through the hosted pages,
//! exchanges the code, verifies the id_token against the JWKS and calls
//! userinfo. The user agent is plain HTTP doing what a browser does with
//! these pages: follow `Location` by hand, keep the session cookie, post
//! the forms with their hidden fields and the issuer's `Origin`.

use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreIdToken, CoreProviderMetadata, CoreTokenType, CoreUserInfoClaims,
};
use openidconnect::{
    AccessTokenHash, AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope,
    TokenResponse,
};
use reqwest::header::{COOKIE, LOCATION, ORIGIN, SET_COOKIE};
use url::Url;

use crate::helpers::*;

const SESSION_COOKIE: &str = "gatehouse_session";

/// What the user agent saw on its way back to the client.
pub struct SignIn {
    /// The final `Location`: the redirect URI with `code`, `state`, `iss`.
    pub callback: Url,
    pub consent_shown: bool,
    /// The session cookie before and after the password was accepted.
    pub cookie_before_login: String,
    pub cookie_after_login: String,
}

/// A user agent with a one-cookie jar: follows redirects by hand (the
/// test's client never follows them) until `Location` leaves the issuer,
/// answering the login form with `email` and [`PASSWORD`] and approving
/// consent when asked.
pub async fn sign_in_as_browser(app: &TestApp, authorize_url: &Url, email: &str) -> SignIn {
    let issuer = Url::parse(&app.base).expect("issuer URL");
    let mut cookie: Option<String> = None;
    let mut cookie_before_login = None;
    let mut cookie_after_login = None;
    let mut consent_shown = false;
    let mut next = authorize_url.clone();
    let mut form: Option<(Url, Vec<(String, String)>)> = None;
    for _hop in 0..10 {
        let resp = match form.take() {
            Some((action, fields)) => {
                let mut req = app
                    .http
                    .post(action.as_str())
                    .form(&fields)
                    .header(ORIGIN, &app.base);
                if let Some(c) = &cookie {
                    req = req.header(COOKIE, format!("{SESSION_COOKIE}={c}"));
                }
                req.send().await.expect("form posted")
            }
            None => {
                let mut req = app.http.get(next.as_str());
                if let Some(c) = &cookie {
                    req = req.header(COOKIE, format!("{SESSION_COOKIE}={c}"));
                }
                req.send().await.expect("page fetched")
            }
        };
        let status = resp.status();
        let path = resp.url().path().to_owned();
        for value in resp.headers().get_all(SET_COOKIE) {
            let value = value.to_str().expect("ASCII Set-Cookie");
            if let Some(v) = cookie_value(value, SESSION_COOKIE) {
                assert!(value.contains("HttpOnly"), "session cookie not HttpOnly: {value}");
                assert!(
                    value.contains("SameSite=Lax"),
                    "session cookie not SameSite=Lax: {value}"
                );
                cookie = (!v.is_empty()).then(|| v.to_owned());
            }
        }
        if status.is_redirection() {
            let location = resp
                .headers()
                .get(LOCATION)
                .expect("Location")
                .to_str()
                .expect("ASCII");
            next = resp.url().join(location).expect("a valid Location");
            if path == "/login" {
                cookie_after_login = cookie.clone();
            }
            if next.origin() != issuer.origin() {
                return SignIn {
                    callback: next,
                    consent_shown,
                    cookie_before_login: cookie_before_login.expect("the login page was shown"),
                    cookie_after_login: cookie_after_login.expect("the login form was posted"),
                };
            }
            continue;
        }
        let page = resp.text().await.expect("page body");
        assert_eq!(status, 200, "GET {next}: {page}");
        let (action, mut fields) = first_form(&page);
        match action.as_str() {
            "/login" => {
                cookie_before_login = cookie.clone();
                fields.push(("email".into(), email.into()));
                fields.push(("password".into(), PASSWORD.into()));
            }
            "/consent" => {
                consent_shown = true;
                assert!(
                    fields.contains(&("decision".into(), "approve".into())),
                    "the first consent form approves: {page}"
                );
            }
            other => panic!("unexpected form posting to {other} on {next}: {page}"),
        }
        form = Some((issuer.join(&action).expect("form action"), fields));
    }
    panic!("no way back to the client after 10 hops; last at {next}");
}

/// The value of cookie `name` in a `Set-Cookie` header.
fn cookie_value<'a>(set_cookie: &'a str, name: &str) -> Option<&'a str> {
    let pair = set_cookie.split(';').next()?;
    let (n, v) = pair.split_once('=')?;
    (n.trim() == name).then(|| v.trim())
}

/// The first form of `page`: its `action` and its hidden inputs, as a
/// browser would submit them.
pub fn first_form(page: &str) -> (String, Vec<(String, String)>) {
    let start = page.find("<form").expect("a form on the page");
    let end = start + page[start..].find("</form>").expect("a closed form");
    let form = &page[start..end];
    let action = attribute(form, "action").expect("a form action");
    let fields = form
        .split("<input")
        .skip(1)
        .filter(|tag| attribute(tag, "type").as_deref() == Some("hidden"))
        .map(|tag| {
            (
                attribute(tag, "name").expect("a named input"),
                attribute(tag, "value").unwrap_or_default(),
            )
        })
        .collect();
    (action, fields)
}

/// `name="…"` in the tag starting `tag`, HTML-unescaped.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let tag = &tag[..tag.find('>')?];
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let value = &tag[start..start + tag[start..].find('"')?];
    Some(
        value
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

/// The parameters of the authorization response (RFC 6749 §4.1.2, RFC 9207).
fn query_param(url: &Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The whole flow for one client; `redirect_uri` is the one to use (the
/// registered one, or a loopback one on another port).
async fn full_flow(
    app: &TestApp,
    client: &TestClient,
    redirect_uri: &str,
    email: &str,
    expect_consent: bool,
) {
    let user_id = app.create_user(email).await;
    let http = &app.http; // follows no redirects, as the crate's docs require

    // Discovery, including the JWKS.
    let issuer = IssuerUrl::new(app.base.clone()).expect("issuer URL");
    let metadata = CoreProviderMetadata::discover_async(issuer, http)
        .await
        .expect("discovery accepted by openidconnect");
    assert_eq!(metadata.issuer().as_str(), app.base);
    assert_eq!(
        metadata.authorization_endpoint().as_str(),
        app.url("/oauth2/authorize")
    );
    let oidc = CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(client.id.clone()),
        client.secret.clone().map(ClientSecret::new),
    )
    .set_redirect_uri(RedirectUrl::new(redirect_uri.to_owned()).expect("redirect URI"));

    // The authorization request.
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (authorize_url, state, nonce) = oidc
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("profile".into()))
        .add_scope(Scope::new("email".into()))
        .set_pkce_challenge(challenge)
        .url();
    assert!(authorize_url.as_str().starts_with(&app.url("/oauth2/authorize?")));

    // The user signs in.
    let sign_in = sign_in_as_browser(app, &authorize_url, email).await;
    assert_eq!(sign_in.consent_shown, expect_consent, "consent page shown");
    assert_ne!(
        sign_in.cookie_before_login, sign_in.cookie_after_login,
        "the session cookie is rotated at login"
    );
    let callback = sign_in.callback;
    assert!(
        callback.as_str().starts_with(&format!("{redirect_uri}?")),
        "back at the redirect URI: {callback}"
    );
    assert_eq!(query_param(&callback, "error"), None, "{callback}");
    assert_eq!(
        query_param(&callback, "state").as_deref(),
        Some(state.secret().as_str())
    );
    assert_eq!(
        query_param(&callback, "iss").as_deref(),
        Some(app.base.as_str()),
        "RFC 9207 iss"
    );
    let code = query_param(&callback, "code").expect("a code");

    // The code exchange.
    let tokens = oidc
        .exchange_code(AuthorizationCode::new(code.clone()))
        .expect("token endpoint known")
        .set_pkce_verifier(verifier)
        .request_async(http)
        .await
        .expect("code exchanged");
    assert_eq!(*tokens.token_type(), CoreTokenType::Bearer);
    assert!(
        tokens.refresh_token().is_some(),
        "the client has the refresh grant"
    );

    // The id_token: signature through the JWKS, iss, aud, exp, nonce.
    let id_token: &CoreIdToken = tokens.id_token().expect("an id_token");
    let id_verifier = oidc.id_token_verifier();
    let claims = id_token.claims(&id_verifier, &nonce).expect("id_token verified");
    assert_eq!(claims.subject().as_str(), user_id);
    assert_eq!(claims.email().map(|e| e.as_str()), Some(email));
    assert!(claims.auth_time().is_some(), "auth_time");
    if let Some(expected) = claims.access_token_hash() {
        let actual = AccessTokenHash::from_token(
            tokens.access_token(),
            id_token.signing_alg().expect("signing alg"),
            id_token.signing_key(&id_verifier).expect("signing key"),
        )
        .expect("at_hash computed");
        assert_eq!(&actual, expected, "at_hash");
    }
    let (_, raw) = jwt_parts(&id_token.to_string());
    assert!(raw["sid"].is_string(), "sid in the id_token: {raw}");
    // Another nonce is refused: the crate does check it.
    assert!(
        id_token
            .claims(&id_verifier, &Nonce::new("another nonce".into()))
            .is_err()
    );

    // Userinfo, with the subject the id_token named.
    let info: CoreUserInfoClaims = oidc
        .user_info(tokens.access_token().clone(), Some(claims.subject().clone()))
        .expect("userinfo endpoint known")
        .request_async(http)
        .await
        .expect("userinfo");
    assert_eq!(info.subject().as_str(), user_id);
    assert_eq!(info.email().map(|e| e.as_str()), Some(email));

    // The code is single-use.
    let replay = oidc
        .exchange_code(AuthorizationCode::new(code))
        .expect("token endpoint known")
        .set_pkce_verifier(PkceCodeVerifier::new("x".repeat(43)))
        .request_async(http)
        .await;
    match replay {
        Err(RequestTokenError::ServerResponse(e)) => {
            assert_eq!(e.error().as_ref(), "invalid_grant")
        }
        other => panic!("a replayed code must be refused with invalid_grant: {other:?}"),
    }
}

#[tokio::test]
async fn openidconnect_signs_in_a_confidential_client_through_login_and_consent() {
    let app = TestApp::spawn().await;
    let client = app
        .create_client(&[
            "--grant",
            "authorization_code",
            "--grant",
            "refresh_token",
            "--redirect-uri",
            "https://rp.example.com/cb",
        ])
        .await;
    assert!(client.secret.is_some());

    full_flow(
        &app,
        &client,
        "https://rp.example.com/cb",
        "rp-confidential@example.com",
        true,
    )
    .await;
}

#[tokio::test]
async fn openidconnect_signs_in_a_public_first_party_client_on_a_loopback_port() {
    let app = TestApp::spawn().await;
    let client = app
        .create_client(&[
            "--public",
            "--first-party",
            "--grant",
            "authorization_code",
            "--grant",
            "refresh_token",
            "--redirect-uri",
            "http://127.0.0.1/cb",
        ])
        .await;
    assert!(client.secret.is_none());

    // RFC 8252 §7.3: a native app's loopback listener picks its port at run time.
    full_flow(
        &app,
        &client,
        "http://127.0.0.1:48123/cb",
        "rp-public@example.com",
        false,
    )
    .await;
}
