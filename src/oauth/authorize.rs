//! The authorization endpoint's decisions (RFC 6749 §4.1, RFC 7636, OIDC
//! Core §3.1.2, RFC 9207, RFC 9700 §4): which request is valid, whether the
//! browser must sign in or consent first, and the code it gets back.
//!
//! The request travels as its query string: from `/oauth2/authorize` to the
//! login and consent pages and back, and is checked again at every step, so
//! nothing a page carries can widen it.

use std::collections::HashMap;

use url::Url;

use super::token::resolve_scope;
use crate::app::AppState;
use crate::domain::{GrantType, Scope};
use crate::error::{Error, OAuthCode};
use crate::store::browser::{BrowserSession, NewCode, find_consent, insert_code, save_consent};
use crate::store::client::{Client, find_client};
use crate::tokens::{OpaqueToken, TokenKind};

/// How long a code lives (SPEC §11).
pub const CODE_TTL: i64 = 60;
/// The longest query string we take: links, not documents.
const MAX_QUERY: usize = 8192;

/// A failed authorization request.
#[derive(Debug)]
pub enum AuthorizeError {
    /// The client or the redirect URI cannot be trusted: shown on a page,
    /// never redirected (RFC 6749 §4.1.2.1).
    Page(&'static str),
    /// Sent back to the client's redirect URI with `error`, `state` and `iss`.
    Redirect(String),
    Internal(Error),
}

impl From<Error> for AuthorizeError {
    fn from(e: Error) -> AuthorizeError {
        AuthorizeError::Internal(e)
    }
}

impl From<anyhow::Error> for AuthorizeError {
    fn from(e: anyhow::Error) -> AuthorizeError {
        AuthorizeError::Internal(Error::Internal(e))
    }
}

/// `prompt` (OIDC Core §3.1.2.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prompt {
    pub none: bool,
    pub login: bool,
    pub consent: bool,
}

/// A checked authorization request, its client and redirect URI trusted.
#[derive(Debug, Clone)]
pub struct AuthorizeRequest {
    pub client: Client,
    pub redirect_uri: String,
    /// The request named the redirect URI (the exchange must repeat it).
    pub redirect_uri_given: bool,
    pub scope: Scope,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub prompt: Prompt,
    pub max_age: Option<i64>,
    pub login_hint: Option<String>,
    /// The query string it came from, to carry through the pages.
    pub query: String,
}

/// What the browser gets next.
#[derive(Debug)]
pub enum Next {
    /// Show the login page.
    Login,
    /// Show the consent page.
    Consent,
    /// Send the browser back to the client (a code, or an error).
    Redirect(String),
}

/// The parameters, each at most once (RFC 6749 §3.1).
fn parameters(query: &str) -> Result<HashMap<String, String>, &'static str> {
    let mut map = HashMap::new();
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if value.contains('\0') {
            return Err("a parameter holds a NUL character");
        }
        if map.insert(name.into_owned(), value.into_owned()).is_some() {
            return Err("a parameter was sent more than once");
        }
    }
    Ok(map)
}

/// Adds `pairs` to a redirect URI's own query (RFC 6749 §3.1.2 keeps it).
pub fn with_query(uri: &str, pairs: &[(&str, &str)]) -> String {
    match Url::parse(uri) {
        Ok(mut url) => {
            {
                let mut query = url.query_pairs_mut();
                for (k, v) in pairs {
                    query.append_pair(k, v);
                }
            }
            url.to_string()
        }
        // Registered URIs always parse; keep the original otherwise.
        Err(_) => uri.to_owned(),
    }
}

impl AuthorizeRequest {
    /// The error response: `error`, `error_description`, `state`, `iss`.
    pub fn error(&self, issuer: &str, code: OAuthCode, description: &str) -> AuthorizeError {
        AuthorizeError::Redirect(error_redirect(
            &self.redirect_uri,
            issuer,
            self.state.as_deref(),
            code,
            description,
        ))
    }
}

fn error_redirect(
    redirect_uri: &str,
    issuer: &str,
    state: Option<&str>,
    code: OAuthCode,
    description: &str,
) -> String {
    let code = code.to_string();
    let mut pairs = vec![("error", code.as_str()), ("error_description", description)];
    if let Some(state) = state {
        pairs.push(("state", state));
    }
    pairs.push(("iss", issuer));
    with_query(redirect_uri, &pairs)
}

/// Checks an authorization request, in the order RFC 6749 §4.1.2.1 asks:
/// first the client and redirect URI (errors on a page), then the rest
/// (errors sent back).
pub async fn parse_request(state: &AppState, query: &str) -> Result<AuthorizeRequest, AuthorizeError> {
    if query.len() > MAX_QUERY {
        return Err(AuthorizeError::Page("The request is too long."));
    }
    let mut params = parameters(query).map_err(AuthorizeError::Page)?;
    let client_id = params
        .remove("client_id")
        .filter(|c| !c.is_empty())
        .ok_or(AuthorizeError::Page(
            "The request names no client (client_id is missing).",
        ))?;
    let client = if uuid::Uuid::try_parse(&client_id).is_ok() {
        find_client(state.db.pool(), &client_id).await?
    } else {
        None
    };
    let client = client.ok_or(AuthorizeError::Page(
        "The application is not known here (unknown client_id).",
    ))?;
    let given = params.remove("redirect_uri").filter(|r| !r.is_empty());
    let scope_text = params.remove("scope");
    let openid = scope_text
        .as_deref()
        .is_some_and(|s| s.split(' ').any(|t| t == "openid"));
    let (redirect_uri, redirect_uri_given) = match given {
        Some(uri) => match client.redirect_uri(&uri) {
            Some(_) => (uri, true),
            None => {
                return Err(AuthorizeError::Page(
                    "The redirect_uri is not registered for this application.",
                ));
            }
        },
        // OAuth lets a client with one registered URI leave it out; OIDC does not.
        None => match client.redirect_uris.as_slice() {
            [only] if !openid => (only.as_str().to_owned(), false),
            _ => return Err(AuthorizeError::Page("The request has no redirect_uri.")),
        },
    };
    let issuer = state.issuer.as_str();
    let st = params.remove("state");
    let fail = |code: OAuthCode, description: &str| {
        AuthorizeError::Redirect(error_redirect(
            &redirect_uri,
            issuer,
            st.as_deref(),
            code,
            description,
        ))
    };
    if st.as_ref().is_some_and(|s| s.len() > 2048) {
        return Err(fail(OAuthCode::InvalidRequest, "state is too long"));
    }
    if !client.has_grant(GrantType::AuthorizationCode) {
        return Err(fail(
            OAuthCode::UnauthorizedClient,
            "this client may not use the authorization code grant",
        ));
    }
    if params.contains_key("request") {
        return Err(fail(
            OAuthCode::RequestNotSupported,
            "request objects are not supported",
        ));
    }
    if params.contains_key("request_uri") {
        return Err(fail(
            OAuthCode::RequestUriNotSupported,
            "request_uri is not supported",
        ));
    }
    match params.remove("response_type").as_deref() {
        Some("code") => {}
        None | Some("") => return Err(fail(OAuthCode::InvalidRequest, "response_type is missing")),
        Some(_) => {
            return Err(fail(
                OAuthCode::UnsupportedResponseType,
                "only response_type=code is supported",
            ));
        }
    }
    match params.remove("response_mode").as_deref() {
        None | Some("query") => {}
        Some(_) => {
            return Err(fail(
                OAuthCode::InvalidRequest,
                "only response_mode=query is supported",
            ));
        }
    }
    let requested = match scope_text.as_deref() {
        None => None,
        Some(text) => match Scope::parse(text) {
            Ok(scope) if scope.is_empty() => None,
            Ok(scope) => Some(scope),
            Err(e) => return Err(fail(OAuthCode::InvalidScope, e)),
        },
    };
    let scope = resolve_scope(&client, true, requested).map_err(|_| {
        fail(
            OAuthCode::InvalidScope,
            "the requested scope is not allowed for this client",
        )
    })?;
    let challenge = params.remove("code_challenge").filter(|c| !c.is_empty());
    let method = params.remove("code_challenge_method");
    let code_challenge = match (challenge, method.as_deref()) {
        (Some(c), Some("S256")) => {
            // BASE64URL of a SHA-256: 43 characters (RFC 7636 §4.2).
            let well_formed = c.len() == 43
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !well_formed {
                return Err(fail(OAuthCode::InvalidRequest, "code_challenge is malformed"));
            }
            Some(c)
        }
        (Some(_), None | Some("plain")) => {
            return Err(fail(
                OAuthCode::InvalidRequest,
                "code_challenge_method must be S256 (plain is not accepted)",
            ));
        }
        (None, Some("S256")) => return Err(fail(OAuthCode::InvalidRequest, "code_challenge is missing")),
        (_, Some(_)) => {
            return Err(fail(
                OAuthCode::InvalidRequest,
                "code_challenge_method must be S256",
            ));
        }
        (None, None) if client.is_public() => {
            return Err(fail(
                OAuthCode::InvalidRequest,
                "public clients must use PKCE: send code_challenge with code_challenge_method=S256",
            ));
        }
        (None, None) => None,
    };
    let nonce = params.remove("nonce").filter(|n| !n.is_empty());
    if nonce.as_ref().is_some_and(|n| n.len() > 512) {
        return Err(fail(OAuthCode::InvalidRequest, "nonce is too long"));
    }
    let mut prompt = Prompt::default();
    for value in params.remove("prompt").unwrap_or_default().split(' ') {
        match value {
            "" | "select_account" => {}
            "none" => prompt.none = true,
            "login" => prompt.login = true,
            "consent" => prompt.consent = true,
            _ => return Err(fail(OAuthCode::InvalidRequest, "prompt has an unknown value")),
        }
    }
    if prompt.none && (prompt.login || prompt.consent) {
        return Err(fail(
            OAuthCode::InvalidRequest,
            "prompt=none cannot be combined with other values",
        ));
    }
    let max_age = match params.remove("max_age") {
        None => None,
        Some(text) => match text.parse::<i64>() {
            Ok(age) if age >= 0 => Some(age),
            _ => {
                return Err(fail(
                    OAuthCode::InvalidRequest,
                    "max_age must be a whole number of seconds",
                ));
            }
        },
    };
    let login_hint = params
        .remove("login_hint")
        .filter(|h| !h.is_empty() && h.len() <= 254);
    Ok(AuthorizeRequest {
        client,
        redirect_uri,
        redirect_uri_given,
        scope,
        state: st,
        nonce,
        code_challenge,
        prompt,
        max_age,
        login_hint,
        query: query.to_owned(),
    })
}

/// What a request needs next, given the browser's session (if any).
/// `fresh` is true right after the user signed in on our login page, when
/// `prompt=login` and `max_age` are satisfied by that very login.
pub async fn next_step(
    state: &AppState,
    request: &AuthorizeRequest,
    session: Option<&BrowserSession>,
    fresh: bool,
    now: i64,
) -> Result<Next, AuthorizeError> {
    let issuer = state.issuer.as_str();
    let must_login = match session {
        None => true,
        Some(s) => {
            !fresh && (request.prompt.login || request.max_age.is_some_and(|age| now - s.auth_time > age))
        }
    };
    let Some(session) = session.filter(|_| !must_login) else {
        if request.prompt.none {
            return Err(request.error(issuer, OAuthCode::LoginRequired, "the user is not signed in"));
        }
        return Ok(Next::Login);
    };
    if needs_consent(state, request, &session.user_id).await? {
        if request.prompt.none {
            return Err(request.error(
                issuer,
                OAuthCode::ConsentRequired,
                "the user has not approved this client",
            ));
        }
        return Ok(Next::Consent);
    }
    issue_code(state, request, session, now).await.map(Next::Redirect)
}

async fn needs_consent(
    state: &AppState,
    request: &AuthorizeRequest,
    user_id: &str,
) -> Result<bool, AuthorizeError> {
    if request.client.first_party {
        return Ok(false);
    }
    if request.prompt.consent {
        return Ok(true);
    }
    let given = find_consent(state.db.pool(), user_id, &request.client.id).await?;
    Ok(!given
        .and_then(|text| Scope::parse(&text).ok())
        .is_some_and(|approved| request.scope.is_subset(&approved)))
}

/// The user approved the consent page: remember it and issue the code.
pub async fn approve(
    state: &AppState,
    request: &AuthorizeRequest,
    session: &BrowserSession,
    now: i64,
) -> Result<String, AuthorizeError> {
    let mut tx = state.db.begin_write().await?;
    let previous = find_consent(tx.conn(), &session.user_id, &request.client.id).await?;
    let approved = previous
        .and_then(|text| Scope::parse(&text).ok())
        .map_or_else(|| request.scope.clone(), |p| p.union(&request.scope));
    save_consent(
        tx.conn(),
        &session.user_id,
        &request.client.id,
        &approved.to_string(),
        now,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(event = "consent_given", user_id = %session.user_id, client_id = %request.client.id, "consent given");
    issue_code(state, request, session, now).await
}

/// The user declined on the consent page (RFC 6749 §4.1.2.1 `access_denied`).
pub fn deny(state: &AppState, request: &AuthorizeRequest) -> String {
    error_redirect(
        &request.redirect_uri,
        &state.issuer,
        request.state.as_deref(),
        OAuthCode::AccessDenied,
        "the user declined",
    )
}

/// Makes a code for the signed-in browser; returns where to send it.
async fn issue_code(
    state: &AppState,
    request: &AuthorizeRequest,
    session: &BrowserSession,
    now: i64,
) -> Result<String, AuthorizeError> {
    let code = OpaqueToken::generate(TokenKind::AuthorizationCode);
    let scope = request.scope.to_string();
    let mut tx = state.db.begin_write().await?;
    insert_code(
        tx.conn(),
        &code.digest(),
        &NewCode {
            client_id: &request.client.id,
            browser_session_id: &session.id,
            redirect_uri: &request.redirect_uri,
            redirect_uri_given: request.redirect_uri_given,
            scope: &scope,
            nonce: request.nonce.as_deref(),
            code_challenge: request.code_challenge.as_deref(),
            expires_at: now + CODE_TTL,
        },
    )
    .await?;
    tx.commit().await?;
    tracing::info!(event = "code_issued", client_id = %request.client.id, "authorization code issued");
    let mut pairs = vec![("code", code.expose())];
    if let Some(st) = request.state.as_deref() {
        pairs.push(("state", st));
    }
    pairs.push(("iss", state.issuer.as_str()));
    Ok(with_query(&request.redirect_uri, &pairs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_refuse_repeats_and_nul() {
        assert!(parameters("a=1&b=2").is_ok());
        assert!(parameters("a=1&a=2").is_err());
        assert!(parameters("a=%00").is_err());
    }

    #[test]
    fn responses_keep_the_redirect_uris_own_query() {
        assert_eq!(
            with_query(
                "https://app.example/cb?tenant=a",
                &[("code", "x y"), ("state", "s&t")]
            ),
            "https://app.example/cb?tenant=a&code=x+y&state=s%26t"
        );
        assert_eq!(
            with_query("com.example.app:/cb", &[("code", "c")]),
            "com.example.app:/cb?code=c"
        );
    }
}
