//! `/session/*` (SPEC §11): cookie sessions for a first-party web app on the
//! same site. The tokens of a password login live in HttpOnly cookies the
//! app's script never sees; a readable `gatehouse_csrf` cookie is echoed in
//! the `X-CSRF-Token` header (double submit).
//!
//! Every call needs an allowed `Origin` (the issuer's, or one in
//! `GATEHOUSE_CORS_ORIGINS`), checked before the body is read; refresh and
//! logout also need the CSRF header. A browser always sends `Origin` on a
//! cross-origin or non-GET `fetch`, so a missing one is refused, not trusted.
//!
//! Stable problem codes: `origin_not_allowed`, `csrf_failed` (403),
//! `invalid_credentials` (400: unknown user, wrong password, disabled user
//! and back-off all answer it), `email_not_verified` (403, SPEC §10),
//! `client_not_allowed` (403: unknown client, not `--first-party`, or
//! without the refresh_token grant), `session_ended` (401: no, unknown,
//! used, expired or revoked refresh cookie; the cookies are cleared).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use poem::http::{HeaderMap, HeaderValue, StatusCode, header};
use poem::web::Data;
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response};
use poem_openapi::param::Header;
use poem_openapi::payload::Json;
use poem_openapi::registry::{MetaResponses, Registry};
use poem_openapi::{ApiResponse, Object, OpenApi};
use secrecy::SecretString;
use subtle::ConstantTimeEq;

use super::ApiTag;
use super::cookies::{self, CookieSpec};
use crate::app::AppState;
use crate::error::{Error, FieldProblem, OAuthCode, Problem};
use crate::oauth::{TokenGrant, cookie_session_login, cookie_session_refresh, end_cookie_session};
use crate::store::client::find_client;

pub struct SessionApi;

/// The double-submit header of refresh and logout.
const CSRF_HEADER: &str = "x-csrf-token";
/// Longer text than this in a field is refused before any lookup.
const MAX_FIELD: usize = 1024;

#[derive(Debug, Object)]
pub struct SessionLoginBody {
    /// Required: the account's e-mail address.
    pub email: Option<String>,
    /// Required.
    #[oai(write_only)]
    pub password: Option<String>,
    /// Required: a client created `--first-party` with the refresh_token grant.
    pub client_id: Option<String>,
}

/// A live cookie session. The tokens themselves are only in HttpOnly cookies.
#[derive(Debug, Object)]
#[oai(example)]
pub struct SessionBody {
    /// Seconds until the access cookie expires; refresh before then.
    pub expires_in: i64,
    /// Seconds until the refresh cookie expires (idle lifetime, or the
    /// login's absolute limit if that comes first).
    pub refresh_expires_in: i64,
    /// The scopes of the access token, space-separated.
    pub scope: String,
    /// The value of the `gatehouse_csrf` cookie, to send as `X-CSRF-Token`.
    /// Given here too for an app on another allowed origin, whose script
    /// cannot read a host-only cookie of ours; it is not a credential.
    pub csrf_token: String,
}

impl poem_openapi::types::Example for SessionBody {
    fn example() -> Self {
        SessionBody {
            expires_in: 900,
            refresh_expires_in: 2_592_000,
            scope: "email profile".into(),
            csrf_token: "kq3v0pM1o8z4bWcXw3cJ0Hc2m0r9u1mC4d3kq0tG2sA".into(),
        }
    }
}

/// The answers of `POST /session/login`.
#[derive(ApiResponse, Debug)]
pub enum LoginResponse {
    /// Signed in. Three `Set-Cookie` lines: `gatehouse_access` (HttpOnly,
    /// `Path=/`), `gatehouse_refresh` (HttpOnly, `Path=/session`) and
    /// `gatehouse_csrf` (readable, `Path=/`); `SameSite` and `Domain` as
    /// configured, `Secure` when the issuer is https.
    #[oai(
        status = 200,
        header(name = "Set-Cookie", ty = "String", description = "One line per cookie."),
        header(name = "Cache-Control", ty = "String", description = "`no-store`.")
    )]
    Ok(Json<SessionBody>),
    /// The body is not JSON of the expected shape (`bad_request`), or the
    /// e-mail address and password do not match an active account
    /// (`invalid_credentials`; the same answer whatever the reason).
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// `origin_not_allowed`: `Origin` missing or not allowed;
    /// `client_not_allowed`: the client is unknown, not first-party, or
    /// lacks the refresh_token grant; `email_not_verified`: the password was
    /// right but the address is not verified yet.
    #[oai(status = 403, content_type = "application/problem+json")]
    Forbidden(Json<Problem>),
    /// The body is over the size limit (`payload_too_large`).
    #[oai(status = 413, content_type = "application/problem+json")]
    PayloadTooLarge(Json<Problem>),
    /// The body is not `application/json` (`unsupported_media_type`).
    #[oai(status = 415, content_type = "application/problem+json")]
    UnsupportedMediaType(Json<Problem>),
    /// Validation failed; `errors` lists every missing or bad field.
    #[oai(status = 422, content_type = "application/problem+json")]
    Unprocessable(Json<Problem>),
    /// Too many requests from this address; retry after the given seconds.
    #[oai(status = 429, content_type = "application/problem+json")]
    TooManyRequests(Json<Problem>, #[oai(header = "Retry-After")] u64),
    /// Something failed on our side; nothing is revealed.
    #[oai(status = 500, content_type = "application/problem+json")]
    Internal(Json<Problem>),
    /// The database is out of reach for a moment (`unavailable`); try again.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>),
}

/// The answers of `POST /session/refresh`.
#[derive(ApiResponse, Debug)]
pub enum RefreshResponse {
    /// Rotated: new `gatehouse_access`, `gatehouse_refresh` and
    /// `gatehouse_csrf` cookies; the old refresh cookie is used up.
    #[oai(
        status = 200,
        header(name = "Set-Cookie", ty = "String", description = "One line per cookie."),
        header(name = "Cache-Control", ty = "String", description = "`no-store`.")
    )]
    Ok(Json<SessionBody>),
    /// `session_ended`: no refresh cookie, or one that is unknown, expired,
    /// revoked or already used (a used one ends its whole chain, RFC 9700
    /// §4.14.2). The three cookies are cleared. No `WWW-Authenticate`:
    /// cookies are not an HTTP authentication scheme.
    #[oai(
        status = 401,
        content_type = "application/problem+json",
        header(
            name = "Set-Cookie",
            ty = "String",
            description = "Clears the three cookies (`Max-Age=0`)."
        )
    )]
    Unauthorized(Json<Problem>),
    /// `origin_not_allowed`: `Origin` missing or not allowed; `csrf_failed`:
    /// `X-CSRF-Token` missing or not equal to the `gatehouse_csrf` cookie.
    /// Nothing changes.
    #[oai(status = 403, content_type = "application/problem+json")]
    Forbidden(Json<Problem>),
    /// The body is over the size limit (`payload_too_large`).
    #[oai(status = 413, content_type = "application/problem+json")]
    PayloadTooLarge(Json<Problem>),
    /// Something failed on our side; nothing is revealed.
    #[oai(status = 500, content_type = "application/problem+json")]
    Internal(Json<Problem>),
    /// The database is out of reach for a moment (`unavailable`); try again.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>),
}

/// The answers of `POST /session/logout`.
#[derive(ApiResponse, Debug)]
pub enum LogoutResponse {
    /// Signed out: the refresh chain and the access token are revoked, and
    /// the three cookies cleared (`Max-Age=0`).
    #[oai(
        status = 204,
        header(
            name = "Set-Cookie",
            ty = "String",
            description = "Clears the three cookies (`Max-Age=0`)."
        ),
        header(name = "Cache-Control", ty = "String", description = "`no-store`.")
    )]
    Done,
    /// `origin_not_allowed`: `Origin` missing or not allowed; `csrf_failed`:
    /// `X-CSRF-Token` missing or not equal to the `gatehouse_csrf` cookie.
    /// Nothing changes.
    #[oai(status = 403, content_type = "application/problem+json")]
    Forbidden(Json<Problem>),
    /// The body is over the size limit (`payload_too_large`).
    #[oai(status = 413, content_type = "application/problem+json")]
    PayloadTooLarge(Json<Problem>),
    /// Something failed on our side; nothing is revealed.
    #[oai(status = 500, content_type = "application/problem+json")]
    Internal(Json<Problem>),
    /// The database is out of reach for a moment (`unavailable`); try again.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>),
}

/// An answer of ours with its `Set-Cookie` lines (poem-openapi writes one
/// value per header field; a response may need three of one name) and
/// `Cache-Control: no-store`. Documented as the answer it wraps.
pub struct WithCookies<T> {
    answer: T,
    cookies: Vec<String>,
}

impl<T> WithCookies<T> {
    fn new(answer: T, cookies: Vec<String>) -> WithCookies<T> {
        WithCookies { answer, cookies }
    }

    fn bare(answer: T) -> WithCookies<T> {
        WithCookies::new(answer, Vec::new())
    }
}

impl<T: IntoResponse> IntoResponse for WithCookies<T> {
    fn into_response(self) -> Response {
        let mut resp = self.answer.into_response();
        let headers = resp.headers_mut();
        for cookie in self.cookies {
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                headers.append(header::SET_COOKIE, value);
            }
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

impl<T: ApiResponse> ApiResponse for WithCookies<T> {
    fn meta() -> MetaResponses {
        T::meta()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

fn problem(status: StatusCode, code: &str, title: &str) -> Json<Problem> {
    Json(Problem::new(status, code, title))
}

/// A failure on our side, logged: 503 while the database is out of reach
/// (the next try may work), 500 otherwise; nothing is revealed.
enum Failure {
    Unavailable(Json<Problem>),
    Internal(Json<Problem>),
}

fn failure(e: &Error) -> Failure {
    let unavailable = match e {
        Error::Internal(inner) => super::pages::log_failure("session", inner),
        other => super::pages::log_failure("session", &anyhow::anyhow!("unexpected: {other:?}")),
    };
    if unavailable {
        Failure::Unavailable(problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
        ))
    } else {
        Failure::Internal(problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
        ))
    }
}

macro_rules! failure_into {
    ($($answer:ident),*) => {$(
        impl From<Failure> for $answer {
            fn from(f: Failure) -> $answer {
                match f {
                    Failure::Unavailable(p) => $answer::Unavailable(p),
                    Failure::Internal(p) => $answer::Internal(p),
                }
            }
        }
    )*};
}
failure_into!(LoginResponse, RefreshResponse, LogoutResponse);

// ---------------------------------------------------------------- guards

/// The request's `Origin` is the issuer's or one configured in
/// `GATEHOUSE_CORS_ORIGINS`. Absent and `null` are refused.
fn origin_allowed(state: &AppState, headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::ORIGIN).iter();
    let (Some(origin), None) = (values.next(), values.next()) else {
        return false;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    origin != "null"
        && (origin.eq_ignore_ascii_case(cookies::issuer_origin(&state.issuer))
            || state.settings.cors_origins.iter().any(|o| o == origin))
}

/// The `X-CSRF-Token` header equals the `gatehouse_csrf` cookie, compared in
/// constant time; both must be present and non-empty.
fn csrf_matches(req: &Request) -> bool {
    let Some(cookie) = cookies::read(req, cookies::CSRF) else {
        return false;
    };
    let mut values = req.headers().get_all(CSRF_HEADER).iter();
    let (Some(sent), None) = (values.next(), values.next()) else {
        return false;
    };
    !sent.is_empty() && bool::from(sent.as_bytes().ct_eq(cookie.as_bytes()))
}

fn refused(code: &str, title: &str) -> Response {
    WithCookies::bare(LogoutResponse::Forbidden(problem(
        StatusCode::FORBIDDEN,
        code,
        title,
    )))
    .into_response()
}

fn refused_origin(req: &Request) -> Option<Response> {
    let allowed = req
        .data::<AppState>()
        .is_some_and(|state| origin_allowed(state, req.headers()));
    if allowed {
        return None;
    }
    tracing::warn!(
        event = "origin_refused",
        path = %req.uri().path(),
        "cookie-session call from an origin that is not allowed"
    );
    Some(refused("origin_not_allowed", "This origin is not allowed"))
}

/// Before the body is read: the `Origin` check of every `/session/*` call.
fn guard_origin(ep: impl Endpoint + 'static) -> impl Endpoint {
    ep.around(|ep, req| async move {
        if let Some(refusal) = refused_origin(&req) {
            return Ok(refusal);
        }
        ep.call(req).await.map(IntoResponse::into_response)
    })
}

/// The `Origin` check, then the double-submit CSRF check.
fn guard_origin_and_csrf(ep: impl Endpoint + 'static) -> impl Endpoint {
    ep.around(|ep, req| async move {
        if let Some(refusal) = refused_origin(&req) {
            return Ok(refusal);
        }
        if !csrf_matches(&req) {
            tracing::warn!(
                event = "csrf_refused",
                path = %req.uri().path(),
                "cookie-session call without a matching X-CSRF-Token"
            );
            return Ok(refused("csrf_failed", "The CSRF token is missing or wrong"));
        }
        ep.call(req).await.map(IntoResponse::into_response)
    })
}

// ---------------------------------------------------------------- cookies

/// A fresh double-submit value: 256 random bits, base64url.
fn new_csrf_value() -> Result<String, Error> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| anyhow::anyhow!("the random source failed"))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

fn specs(access_age: Option<i64>, refresh_age: Option<i64>) -> [CookieSpec<'static>; 3] {
    [
        CookieSpec {
            name: cookies::ACCESS,
            path: "/",
            http_only: true,
            max_age: access_age,
        },
        CookieSpec {
            name: cookies::REFRESH,
            path: "/session",
            http_only: true,
            max_age: refresh_age,
        },
        // Readable by the app's script: it echoes the value in a header.
        CookieSpec {
            name: cookies::CSRF,
            path: "/",
            http_only: false,
            max_age: refresh_age,
        },
    ]
}

fn secure(state: &AppState) -> bool {
    cookies::secure(&state.issuer)
}

/// The three cookies of a new or rotated session, and its body.
fn session_cookies(
    state: &AppState,
    grant: &TokenGrant,
    refresh_lives: i64,
) -> Result<(Vec<String>, SessionBody), Error> {
    let Some(refresh) = &grant.refresh_token else {
        // The client has the refresh_token grant, checked before any token was made.
        return Err(anyhow::anyhow!("a cookie session got no refresh token").into());
    };
    let csrf = new_csrf_value()?;
    let [access_spec, refresh_spec, csrf_spec] = specs(Some(grant.expires_in), Some(refresh_lives));
    let secure = secure(state);
    let cookies = vec![
        cookies::set(&state.settings, secure, access_spec, &grant.access_token),
        cookies::set(&state.settings, secure, refresh_spec, refresh.expose()),
        cookies::set(&state.settings, secure, csrf_spec, &csrf),
    ];
    let body = SessionBody {
        expires_in: grant.expires_in,
        refresh_expires_in: refresh_lives,
        scope: grant.scope.to_string(),
        csrf_token: csrf,
    };
    Ok((cookies, body))
}

/// `Set-Cookie` lines that remove the three cookies.
fn cleared(state: &AppState) -> Vec<String> {
    let secure = secure(state);
    specs(None, None)
        .into_iter()
        .map(|spec| cookies::clear(&state.settings, secure, spec))
        .collect()
}

// ---------------------------------------------------------------- handlers

/// `None` and a 422 entry when the field is missing, too long or holds U+0000.
fn field(name: &str, value: Option<String>, problems: &mut Vec<FieldProblem>) -> Option<String> {
    match value {
        None => {
            problems.push(FieldProblem::new(name, "required", "is required"));
            None
        }
        Some(v) if v.contains('\0') => {
            problems.push(FieldProblem::new(name, "invalid", "must not contain U+0000"));
            None
        }
        Some(v) if v.len() > MAX_FIELD => {
            problems.push(FieldProblem::new(
                name,
                "too_long",
                format!("must be at most {MAX_FIELD} bytes"),
            ));
            None
        }
        Some(v) => Some(v),
    }
}

fn login_error(e: Error) -> LoginResponse {
    match e {
        Error::OAuth {
            code: OAuthCode::UnauthorizedClient,
            ..
        } => client_not_allowed(),
        // SPEC §10: the one refusal that may differ, because the password was right.
        Error::OAuth {
            code: OAuthCode::InvalidGrant,
            description: Some(d),
            ..
        } if d == crate::oauth::EMAIL_NOT_VERIFIED => LoginResponse::Forbidden(problem(
            StatusCode::FORBIDDEN,
            "email_not_verified",
            "The e-mail address is not verified yet",
        )),
        // Unknown user, wrong password, disabled, backed off: one answer.
        Error::OAuth { .. } => invalid_credentials(),
        Error::RateLimited { retry_after } => LoginResponse::TooManyRequests(
            problem(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "Too many requests"),
            retry_after.max(1),
        ),
        e => failure(&e).into(),
    }
}

fn invalid_credentials() -> LoginResponse {
    LoginResponse::BadRequest(problem(
        StatusCode::BAD_REQUEST,
        "invalid_credentials",
        "Wrong e-mail address or password",
    ))
}

fn client_not_allowed() -> LoginResponse {
    LoginResponse::Forbidden(problem(
        StatusCode::FORBIDDEN,
        "client_not_allowed",
        "This client may not use cookie sessions",
    ))
}

fn session_ended(state: &AppState) -> WithCookies<RefreshResponse> {
    WithCookies::new(
        RefreshResponse::Unauthorized(problem(
            StatusCode::UNAUTHORIZED,
            "session_ended",
            "The session has ended; sign in again",
        )),
        cleared(state),
    )
}

#[OpenApi]
impl SessionApi {
    /// Sign in a first-party web app's user into cookies. Needs an allowed
    /// `Origin`. The client must be `--first-party` with the refresh_token
    /// grant; no client secret (a browser cannot keep one). The tokens go
    /// into HttpOnly cookies, never into the body; a refresh cookie the
    /// browser still held ends its old session.
    #[oai(
        path = "/session/login",
        method = "post",
        operation_id = "session_login",
        tag = "ApiTag::Session",
        transform = "guard_origin"
    )]
    async fn login(
        &self,
        req: &Request,
        Data(state): Data<&AppState>,
        body: Json<SessionLoginBody>,
    ) -> WithCookies<LoginResponse> {
        let now = crate::now();
        let Json(body) = body;
        let mut problems = Vec::new();
        let email = field("email", body.email, &mut problems);
        let password = field("password", body.password, &mut problems);
        let client_id = field("client_id", body.client_id, &mut problems);
        let (Some(email), Some(password), Some(client_id)) = (email, password, client_id) else {
            return WithCookies::bare(LoginResponse::Unprocessable(Json(Problem::validation(problems))));
        };
        let client = match find_client(state.db.pool(), &client_id).await {
            Ok(Some(client)) => client,
            Ok(None) => return WithCookies::bare(client_not_allowed()),
            Err(e) => return WithCookies::bare(login_error(e.into())),
        };
        let grant =
            match cookie_session_login(state, &client, &email, SecretString::from(password), now).await {
                Ok(grant) => grant,
                Err(e) => return WithCookies::bare(login_error(e)),
            };
        // The chain this browser held before is unreachable once its cookie
        // is overwritten: end it rather than leave it live.
        if let Err(e) = end_cookie_session(state, cookies::read(req, cookies::REFRESH), None, now).await {
            // Logged; the new session stands regardless.
            let _ = failure(&e);
        }
        let refresh_lives = state
            .settings
            .refresh_token_ttl
            .min(state.settings.session_max_age);
        match session_cookies(state, &grant, refresh_lives) {
            Ok((cookies, body)) => WithCookies::new(LoginResponse::Ok(Json(body)), cookies),
            Err(e) => WithCookies::bare(login_error(e)),
        }
    }

    /// Rotate the session: the refresh cookie is used up and replaced, with
    /// a new access token and a new CSRF value. Needs an allowed `Origin`
    /// and `X-CSRF-Token` equal to the `gatehouse_csrf` cookie. The refresh
    /// token names its client, so no `client_id` is sent. A refresh cookie
    /// presented twice ends its whole chain (RFC 9700 §4.14.2).
    #[oai(
        path = "/session/refresh",
        method = "post",
        operation_id = "session_refresh",
        tag = "ApiTag::Session",
        transform = "guard_origin_and_csrf"
    )]
    async fn refresh(
        &self,
        req: &Request,
        Data(state): Data<&AppState>,
        /// Required: the value of the `gatehouse_csrf` cookie (double submit).
        #[oai(name = "X-CSRF-Token")]
        _csrf: Header<Option<String>>,
    ) -> WithCookies<RefreshResponse> {
        let now = crate::now();
        let Some(refresh) = cookies::read(req, cookies::REFRESH) else {
            return session_ended(state);
        };
        let (grant, lives) =
            match cookie_session_refresh(state, SecretString::from(refresh.to_owned()), now).await {
                Ok(rotated) => rotated,
                Err(Error::OAuth { .. }) => return session_ended(state),
                Err(e) => return WithCookies::bare(failure(&e).into()),
            };
        match session_cookies(state, &grant, lives) {
            Ok((cookies, body)) => WithCookies::new(RefreshResponse::Ok(Json(body)), cookies),
            Err(e) => WithCookies::bare(failure(&e).into()),
        }
    }

    /// Sign out: revoke the refresh chain and the access token, and clear
    /// the three cookies. Needs an allowed `Origin` and `X-CSRF-Token` equal
    /// to the `gatehouse_csrf` cookie.
    #[oai(
        path = "/session/logout",
        method = "post",
        operation_id = "session_logout",
        tag = "ApiTag::Session",
        transform = "guard_origin_and_csrf"
    )]
    async fn logout(
        &self,
        req: &Request,
        Data(state): Data<&AppState>,
        /// Required: the value of the `gatehouse_csrf` cookie (double submit).
        #[oai(name = "X-CSRF-Token")]
        _csrf: Header<Option<String>>,
    ) -> WithCookies<LogoutResponse> {
        let ended = end_cookie_session(
            state,
            cookies::read(req, cookies::REFRESH),
            cookies::read(req, cookies::ACCESS),
            crate::now(),
        )
        .await;
        match ended {
            Ok(()) => WithCookies::new(LogoutResponse::Done, cleared(state)),
            Err(e) => WithCookies::bare(failure(&e).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_needs_header_and_cookie_equal() {
        let req = |cookie: Option<&str>, header: Option<&str>| {
            let mut b = Request::builder();
            if let Some(c) = cookie {
                b = b.header("cookie", format!("gatehouse_csrf={c}"));
            }
            if let Some(h) = header {
                b = b.header(CSRF_HEADER, h);
            }
            b.finish()
        };
        assert!(csrf_matches(&req(Some("abc"), Some("abc"))));
        assert!(!csrf_matches(&req(Some("abc"), Some("abd"))));
        assert!(!csrf_matches(&req(Some("abc"), Some("ab"))));
        assert!(!csrf_matches(&req(Some("abc"), None)));
        assert!(!csrf_matches(&req(None, Some("abc"))));
        assert!(!csrf_matches(&req(None, Some(""))));
    }
}
