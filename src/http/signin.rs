//! Browser sign-in (SPEC §11): `GET /oauth2/authorize` and the hosted
//! `/login`, `/consent` and `/logout` pages.
//!
//! The browser holds one cookie, `gatehouse_session`: before sign-in a
//! random value the server does not store, after it a new value (rotated at
//! login, so a planted one is worthless) whose digest names a
//! `browser_session` row. Every form carries a CSRF token derived from the
//! cookie, and a post whose `Origin` is another site's is refused. The
//! authorization request rides along as its query string in a hidden
//! `request` field and is checked again on every step.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use poem::http::StatusCode;
use poem::web::{Data, Form};
use poem::{Request, Response, handler};
use secrecy::SecretString;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::cookies::{self, SESSION_COOKIE};
use super::pages::{failure_page, foreign_origin, log_failure, message, page_sending_to, refused_origin};
use crate::app::AppState;
use crate::domain::RedirectUri;
use crate::mail::templates::escape_html;
use crate::oauth::authorize::{self, AuthorizeError, AuthorizeRequest, Next};
use crate::oauth::{LoginRefusal, LoginSuccess, verify_login};
use crate::store::browser::{
    BrowserSession, end_browser_session, find_browser_session, insert_browser_session,
};
use crate::store::client::find_client;
use crate::store::login_attempt::clear_login_attempts;
use crate::store::user::find_user;
use crate::tokens::jwt::verify_id_token_hint;
use crate::tokens::{OpaqueToken, TokenDigest, TokenKind};

/// The CSRF token of the forms a browser holding `cookie` is shown.
fn csrf_token(cookie: &str) -> String {
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        format!("gatehouse csrf\0{cookie}").as_bytes(),
    );
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

fn csrf_ok(cookie: Option<&str>, presented: Option<&str>) -> bool {
    match (cookie, presented) {
        (Some(cookie), Some(presented)) => csrf_token(cookie).as_bytes().ct_eq(presented.as_bytes()).into(),
        _ => false,
    }
}

/// The checks every form post passes first: our `Origin` (when sent) and
/// the CSRF token of this browser's cookie. `Some` is the refusal.
fn refuse_post(state: &AppState, req: &Request, page: &str, csrf: Option<&str>) -> Option<Response> {
    if foreign_origin(state, req) {
        return Some(refused_origin());
    }
    if !csrf_ok(session_cookie(req), csrf) {
        tracing::warn!(
            event = "csrf_refused",
            page,
            "form post without a valid CSRF token"
        );
        return Some(expired_form());
    }
    None
}

fn secure(state: &AppState) -> bool {
    cookies::secure(&state.issuer)
}

/// The cookie the browser sent, when it is one of ours in shape.
fn session_cookie(req: &Request) -> Option<&str> {
    cookies::read(req, cookies::SESSION)
        .filter(|v| v.starts_with(TokenKind::BrowserSession.prefix()) && v.len() <= 128)
}

/// The signed-in browser session behind the cookie, if any.
async fn current_session(
    state: &AppState,
    req: &Request,
    now: i64,
) -> anyhow::Result<Option<BrowserSession>> {
    match session_cookie(req) {
        Some(value) => find_browser_session(state.db.pool(), &TokenDigest::of(value), now).await,
        None => Ok(None),
    }
}

/// The cookie to use on a page: the browser's own, or a fresh anonymous
/// one (returned as the `Set-Cookie` to send).
fn cookie_for_page(state: &AppState, req: &Request) -> (String, Option<String>) {
    match session_cookie(req) {
        Some(value) => (value.to_owned(), None),
        None => {
            let value = OpaqueToken::generate(TokenKind::BrowserSession)
                .expose()
                .to_owned();
            let header = cookies::set(&state.settings, secure(state), SESSION_COOKIE, &value);
            (value, Some(header))
        }
    }
}

fn with_cookie(mut resp: Response, set_cookie: Option<String>) -> Response {
    if let Some(header) = set_cookie
        && let Ok(value) = header.parse()
    {
        resp.headers_mut().append("set-cookie", value);
    }
    resp
}

fn see_other(location: &str) -> Response {
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header("Location", location)
        .header("Cache-Control", "no-store")
        .finish()
}

fn found(location: &str) -> Response {
    Response::builder()
        .status(StatusCode::FOUND)
        .header("Location", location)
        .header("Cache-Control", "no-store")
        .finish()
}

/// A failure on our side, logged; 503 while the database is out of reach.
fn broken(what: &str, e: &crate::error::Error) -> Response {
    match e {
        crate::error::Error::Internal(inner) => failure_page(what, inner),
        other => failure_page(what, &anyhow::anyhow!("{other:?}")),
    }
}

fn expired_form() -> Response {
    message(
        StatusCode::FORBIDDEN,
        "This form has expired",
        "Go back, reload the page and try again.",
        "error",
    )
}

/// An authorization error as the browser should see it.
fn authorize_failure(e: AuthorizeError, status: StatusCode) -> Response {
    match e {
        AuthorizeError::Page(text) => message(
            status_for_page(status),
            "Sign-in request not valid",
            text,
            "error",
        ),
        AuthorizeError::Redirect(location) => found(&location),
        AuthorizeError::Internal(e) => broken("sign-in", &e),
    }
}

fn status_for_page(status: StatusCode) -> StatusCode {
    if status.is_success() {
        StatusCode::BAD_REQUEST
    } else {
        status
    }
}

fn hidden(name: &str, value: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
        escape_html(value)
    )
}

/// Origins a request's forms may end at: the client's redirect URI.
fn targets(request: Option<&AuthorizeRequest>) -> Vec<String> {
    request
        .and_then(|r| RedirectUri::origin(&r.redirect_uri))
        .into_iter()
        .collect()
}

// ---------------------------------------------------------------- authorize

/// What `GET /oauth2/authorize` answers.
pub enum AuthorizeAnswer {
    /// 302 to the login page, the consent page, or back to the client.
    Redirect(String),
    /// 400: the client or redirect URI cannot be trusted; the page says why.
    Refused(&'static str),
    /// 503 while the database is out of reach, else 500.
    Broken { unavailable: bool },
}

/// `GET /oauth2/authorize`: checks the request, then sends the browser to
/// the login page, the consent page, or back to the client.
pub async fn authorize(state: &AppState, req: &Request) -> AuthorizeAnswer {
    let now = crate::now();
    let query = req.uri().query().unwrap_or_default();
    let outcome = async {
        let request = authorize::parse_request(state, query).await?;
        let session = current_session(state, req, now).await?;
        Ok(
            match authorize::next_step(state, &request, session.as_ref(), false, now).await? {
                Next::Login => format!("{}/login?{}", state.issuer, request.query),
                Next::Consent => format!("{}/consent?{}", state.issuer, request.query),
                Next::Redirect(location) => location,
            },
        )
    }
    .await;
    match outcome {
        Ok(location) | Err(AuthorizeError::Redirect(location)) => AuthorizeAnswer::Redirect(location),
        Err(AuthorizeError::Page(text)) => AuthorizeAnswer::Refused(text),
        Err(AuthorizeError::Internal(e)) => {
            let unavailable = match &e {
                crate::error::Error::Internal(inner) => log_failure("authorize", inner),
                other => log_failure("authorize", &anyhow::anyhow!("{other:?}")),
            };
            AuthorizeAnswer::Broken { unavailable }
        }
    }
}

// ---------------------------------------------------------------- login

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    email: Option<String>,
    password: Option<String>,
    csrf_token: Option<String>,
    #[serde(default)]
    request: String,
}

fn login_form(csrf: &str, request: Option<&AuthorizeRequest>, email: &str, error: Option<&str>) -> String {
    let intro = match request {
        Some(r) => format!(
            "<p>Sign in to continue to <strong>{}</strong>.</p>\n",
            escape_html(&r.client.name)
        ),
        None => String::new(),
    };
    let error = error.map_or(String::new(), |e| {
        format!(
            "<p class=\"error\" id=\"login-error\" role=\"alert\">{}</p>\n",
            escape_html(e)
        )
    });
    let query = request.map_or("", |r| r.query.as_str());
    format!(
        "{intro}{error}<form method=\"post\" action=\"/login\">\n\
         <label for=\"email\">E-mail address</label>\n\
         <input id=\"email\" name=\"email\" type=\"email\" autocomplete=\"username\" required maxlength=\"254\" value=\"{}\">\n\
         <label for=\"password\">Password</label>\n\
         <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required maxlength=\"128\">\n\
         {}{}\n<button type=\"submit\">Sign in</button></form>\n\
         <p class=\"muted\"><a href=\"/reset-password\">Forgot your password?</a></p>\n",
        escape_html(email),
        hidden("csrf_token", &csrf_token(csrf)),
        hidden("request", query),
    )
}

/// `GET /login`: the sign-in form (with an authorization request in the
/// query), or who is signed in.
#[handler]
pub async fn login_page(req: &Request, Data(state): Data<&AppState>) -> Response {
    let now = crate::now();
    let query = req.uri().query().unwrap_or_default();
    let request = if query.is_empty() {
        None
    } else {
        match authorize::parse_request(state, query).await {
            Ok(request) => Some(request),
            Err(e) => return authorize_failure(e, StatusCode::BAD_REQUEST),
        }
    };
    let (cookie, set_cookie) = cookie_for_page(state, req);
    if request.is_none() {
        match current_session(state, req, now).await {
            Ok(Some(session)) => {
                return with_cookie(signed_in_page(state, &session, &cookie).await, set_cookie);
            }
            Ok(None) => {}
            Err(e) => return failure_page("login", &e),
        }
    }
    let email = request
        .as_ref()
        .and_then(|r| r.login_hint.clone())
        .unwrap_or_default();
    let body = login_form(&cookie, request.as_ref(), &email, None);
    with_cookie(
        page_sending_to(StatusCode::OK, "Sign in", &body, &targets(request.as_ref())),
        set_cookie,
    )
}

async fn signed_in_page(state: &AppState, session: &BrowserSession, cookie: &str) -> Response {
    let email = match find_user(state.db.pool(), &session.user_id).await {
        Ok(Some(user)) => user.email,
        _ => String::new(),
    };
    page_sending_to(
        StatusCode::OK,
        "You are signed in",
        &format!(
            "<p class=\"ok\">Signed in as <strong>{}</strong>.</p>\n\
             <form method=\"post\" action=\"/logout\">{}\n<button type=\"submit\">Sign out</button></form>\n",
            escape_html(&email),
            hidden("csrf_token", &csrf_token(cookie)),
        ),
        &[],
    )
}

/// `POST /login`: checks the password, starts a browser session under a
/// new cookie value, and carries on with the authorization request.
#[handler]
pub async fn login_submit(
    req: &Request,
    Data(state): Data<&AppState>,
    Form(form): Form<LoginForm>,
) -> Response {
    let now = crate::now();
    if let Some(refused) = refuse_post(state, req, "login", form.csrf_token.as_deref()) {
        return refused;
    }
    // A valid CSRF token means there is a cookie.
    let Some(cookie) = session_cookie(req) else {
        return expired_form();
    };
    let request = if form.request.is_empty() {
        None
    } else {
        match authorize::parse_request(state, &form.request).await {
            Ok(request) => Some(request),
            Err(e) => return authorize_failure(e, StatusCode::BAD_REQUEST),
        }
    };
    let email = form.email.unwrap_or_default();
    let password = SecretString::from(form.password.unwrap_or_default());
    let again = |text: &str, status: StatusCode| {
        page_sending_to(
            status,
            "Sign in",
            &login_form(cookie, request.as_ref(), &email, Some(text)),
            &targets(request.as_ref()),
        )
    };
    if email.contains('\0') || email.len() > 254 {
        return again("Wrong e-mail address or password.", StatusCode::BAD_REQUEST);
    }
    let LoginSuccess { user, attempt } = match verify_login(state, &email, &password, now).await {
        Ok(success) => success,
        // One answer for unknown, wrong, disabled and backed off.
        Err(LoginRefusal::Invalid) => {
            return again("Wrong e-mail address or password.", StatusCode::BAD_REQUEST);
        }
        Err(LoginRefusal::Unverified) => {
            return again(
                "Confirm your e-mail address first: follow the link we sent you.",
                StatusCode::FORBIDDEN,
            );
        }
        Err(LoginRefusal::Internal(e)) => return broken("login", &e),
    };
    // A new cookie value at every sign-in: a value planted before it is worthless.
    let value = OpaqueToken::generate(TokenKind::BrowserSession);
    let session = BrowserSession {
        id: uuid::Uuid::new_v4().to_string(),
        user_id: user.id.clone(),
        auth_time: now,
        expires_at: now + state.settings.session_max_age,
    };
    let started: anyhow::Result<()> = async {
        let previous = find_browser_session(state.db.pool(), &TokenDigest::of(cookie), now).await?;
        let mut tx = state.db.begin_write().await?;
        clear_login_attempts(tx.conn(), attempt.digest()).await?;
        if let Some(previous) = previous {
            end_browser_session(tx.conn(), &previous.id, now).await?;
        }
        insert_browser_session(tx.conn(), &session, &value.digest()).await?;
        tx.commit().await?;
        Ok(())
    }
    .await;
    if let Err(e) = started {
        return failure_page("login", &e);
    }
    attempt.cleared();
    tracing::info!(event = "login_succeeded", user_id = %user.id, "browser sign-in");
    let set_cookie = cookies::set(&state.settings, secure(state), SESSION_COOKIE, value.expose());
    let resp = match request {
        None => see_other("/login"),
        Some(request) => match authorize::next_step(state, &request, Some(&session), true, now).await {
            Ok(Next::Consent) => see_other(&format!("/consent?{}", request.query)),
            Ok(Next::Redirect(location)) => see_other(&location),
            Ok(Next::Login) => see_other(&format!("/login?{}", request.query)),
            Err(AuthorizeError::Redirect(location)) => see_other(&location),
            Err(e) => authorize_failure(e, StatusCode::OK),
        },
    };
    with_cookie(resp, Some(set_cookie))
}

// ---------------------------------------------------------------- consent

#[derive(Debug, Deserialize)]
pub struct ConsentForm {
    csrf_token: Option<String>,
    #[serde(default)]
    request: String,
    decision: Option<String>,
}

fn describe_scope(scope: &str) -> &str {
    match scope {
        "openid" => "Know who you are (your account id)",
        "profile" => "See your name",
        "email" => "See your e-mail address and whether it is confirmed",
        other => other,
    }
}

/// `GET /consent`: what the client asks for, approve first, then decline.
#[handler]
pub async fn consent_page(req: &Request, Data(state): Data<&AppState>) -> Response {
    let now = crate::now();
    let query = req.uri().query().unwrap_or_default();
    let request = match authorize::parse_request(state, query).await {
        Ok(request) => request,
        Err(e) => return authorize_failure(e, StatusCode::BAD_REQUEST),
    };
    let (Some(cookie), Ok(Some(_))) = (session_cookie(req), current_session(state, req, now).await) else {
        return found(&format!("/login?{}", request.query));
    };
    let items: String = request
        .scope
        .iter()
        .map(|s| format!("<li>{}</li>", escape_html(describe_scope(s))))
        .collect();
    let fields = format!(
        "{}{}",
        hidden("csrf_token", &csrf_token(cookie)),
        hidden("request", &request.query)
    );
    let body = format!(
        "<p><strong>{}</strong> asks to:</p>\n<ul class=\"scopes\">{items}</ul>\n\
         <form method=\"post\" action=\"/consent\">{fields}{}\n<button type=\"submit\">Allow</button></form>\n\
         <form method=\"post\" action=\"/consent\">{fields}{}\n<button type=\"submit\" class=\"secondary\">Deny</button></form>\n",
        escape_html(&request.client.name),
        hidden("decision", "approve"),
        hidden("decision", "deny"),
    );
    page_sending_to(StatusCode::OK, "Allow access?", &body, &targets(Some(&request)))
}

/// `POST /consent`: approve (remember and issue a code) or deny.
#[handler]
pub async fn consent_submit(
    req: &Request,
    Data(state): Data<&AppState>,
    Form(form): Form<ConsentForm>,
) -> Response {
    let now = crate::now();
    if let Some(refused) = refuse_post(state, req, "consent", form.csrf_token.as_deref()) {
        return refused;
    }
    let request = match authorize::parse_request(state, &form.request).await {
        Ok(request) => request,
        Err(e) => return authorize_failure(e, StatusCode::BAD_REQUEST),
    };
    let session = match current_session(state, req, now).await {
        Ok(Some(session)) => session,
        Ok(None) => return see_other(&format!("/login?{}", request.query)),
        Err(e) => return authorize_failure(AuthorizeError::from(e), StatusCode::OK),
    };
    match form.decision.as_deref() {
        Some("approve") => match authorize::approve(state, &request, &session, now).await {
            Ok(location) => see_other(&location),
            Err(AuthorizeError::Redirect(location)) => see_other(&location),
            Err(e) => authorize_failure(e, StatusCode::OK),
        },
        Some("deny") => {
            tracing::info!(event = "consent_denied", client_id = %request.client.id, "consent denied");
            see_other(&authorize::deny(state, &request))
        }
        _ => message(
            StatusCode::BAD_REQUEST,
            "Allow access?",
            "Choose Allow or Deny.",
            "error",
        ),
    }
}

// ---------------------------------------------------------------- logout

/// Where an RP-initiated logout (OIDC RP-Initiated Logout 1.0 §2) goes
/// afterwards, once checked: a registered post-logout URI with `state`.
async fn logout_target(state: &AppState, query: &str) -> Result<Option<String>, &'static str> {
    let mut hint = None;
    let mut client_id = None;
    let mut post_logout = None;
    let mut st = None;
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let slot = match name.as_ref() {
            "id_token_hint" => &mut hint,
            "client_id" => &mut client_id,
            "post_logout_redirect_uri" => &mut post_logout,
            "state" => &mut st,
            _ => continue,
        };
        if slot.replace(value.into_owned()).is_some() {
            return Err("A parameter was sent more than once.");
        }
    }
    let hinted = match hint.filter(|h| !h.is_empty()) {
        Some(token) => {
            let keys = state.keys.current();
            let claims = verify_id_token_hint(&token, &keys, &state.issuer)
                .map_err(|_| "The id_token_hint is not an ID token this server issued.")?;
            Some(claims.aud)
        }
        None => None,
    };
    let client_id = match (client_id.filter(|c| !c.is_empty()), hinted) {
        (Some(given), Some(aud)) if given != aud => {
            return Err("The client_id does not match the id_token_hint.");
        }
        (given, aud) => given.or(aud),
    };
    let Some(uri) = post_logout.filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    let client = match client_id {
        Some(id) if uuid::Uuid::try_parse(&id).is_ok() => {
            find_client(state.db.pool(), &id).await.ok().flatten()
        }
        _ => None,
    };
    let Some(client) = client else {
        return Err("A post_logout_redirect_uri needs an id_token_hint or client_id naming its application.");
    };
    if client.post_logout_redirect_uri(&uri).is_none() {
        return Err("The post_logout_redirect_uri is not registered for this application.");
    }
    let pairs: Vec<(&str, &str)> = st.as_deref().map(|s| ("state", s)).into_iter().collect();
    Ok(Some(authorize::with_query(&uri, &pairs)))
}

#[derive(Debug, Deserialize)]
pub struct LogoutForm {
    csrf_token: Option<String>,
    #[serde(default)]
    request: String,
}

fn signed_out(target: Option<&str>) -> Response {
    match target {
        Some(location) => see_other(location),
        None => message(
            StatusCode::OK,
            "You are signed out",
            "You can close this window.",
            "ok",
        ),
    }
}

/// `GET /logout`: asks to confirm when signed in; otherwise goes straight on.
#[handler]
pub async fn logout_page(req: &Request, Data(state): Data<&AppState>) -> Response {
    let now = crate::now();
    let query = req.uri().query().unwrap_or_default();
    let target = match logout_target(state, query).await {
        Ok(target) => target,
        Err(text) => {
            return message(
                StatusCode::BAD_REQUEST,
                "Sign-out request not valid",
                text,
                "error",
            );
        }
    };
    let session = match current_session(state, req, now).await {
        Ok(session) => session,
        Err(e) => return failure_page("logout", &e),
    };
    let (Some(cookie), Some(_)) = (session_cookie(req), session) else {
        return match target {
            Some(location) => found(&location),
            None => signed_out(None),
        };
    };
    let form_targets: Vec<String> = target
        .as_deref()
        .and_then(RedirectUri::origin)
        .into_iter()
        .collect();
    page_sending_to(
        StatusCode::OK,
        "Sign out?",
        &format!(
            "<p>Do you want to sign out of gatehouse on this device?</p>\n\
             <form method=\"post\" action=\"/logout\">{}{}\n<button type=\"submit\">Sign out</button></form>\n",
            hidden("csrf_token", &csrf_token(cookie)),
            hidden("request", query),
        ),
        &form_targets,
    )
}

/// `POST /logout`: ends the browser session and its refresh chains, clears
/// the cookie, then goes where the request asked.
#[handler]
pub async fn logout_submit(
    req: &Request,
    Data(state): Data<&AppState>,
    Form(form): Form<LogoutForm>,
) -> Response {
    let now = crate::now();
    if let Some(refused) = refuse_post(state, req, "logout", form.csrf_token.as_deref()) {
        return refused;
    }
    let target = match logout_target(state, &form.request).await {
        Ok(target) => target,
        Err(text) => {
            return message(
                StatusCode::BAD_REQUEST,
                "Sign-out request not valid",
                text,
                "error",
            );
        }
    };
    let ended: anyhow::Result<()> = async {
        if let Some(session) = current_session(state, req, now).await? {
            let mut tx = state.db.begin_write().await?;
            end_browser_session(tx.conn(), &session.id, now).await?;
            tx.commit().await?;
            tracing::info!(event = "logout", user_id = %session.user_id, "browser session ended");
        }
        Ok(())
    }
    .await;
    if let Err(e) = ended {
        return failure_page("logout", &e);
    }
    let clear = cookies::clear(&state.settings, secure(state), SESSION_COOKIE);
    with_cookie(signed_out(target.as_deref()), Some(clear))
}
