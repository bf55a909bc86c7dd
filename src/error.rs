//! The one error type and its two wire shapes: RFC 6749 §5.2 JSON on
//! `/oauth2/*` (with RFC 6750 §3 for bearer tokens) and RFC 9457
//! `application/problem+json` everywhere else.
//!
//! Flows return [`Error`]; only this module decides status, headers and body.
//! Internal detail is logged, never rendered.

use std::borrow::Cow;
use std::fmt;

use poem::Response;
use poem::http::StatusCode;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};

/// RFC 6749 §5.2 error codes, plus RFC 6750 §3.1 for bearer tokens and
/// RFC 7009 §2.2.1. `Display` is the wire string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthCode {
    /// "The request is missing a required parameter, includes an unsupported
    /// parameter value (other than grant type), repeats a parameter, … or is
    /// otherwise malformed."
    InvalidRequest,
    /// "Client authentication failed (e.g., unknown client, no client
    /// authentication included, or unsupported authentication method)."
    InvalidClient,
    /// "The provided authorization grant … or refresh token is invalid,
    /// expired, revoked, … or was issued to another client."
    InvalidGrant,
    /// "The authenticated client is not authorized to use this authorization
    /// grant type."
    UnauthorizedClient,
    /// "The authorization grant type is not supported by the authorization server."
    UnsupportedGrantType,
    /// "The requested scope is invalid, unknown, malformed, or exceeds the
    /// scope granted by the resource owner."
    InvalidScope,
    /// RFC 6749 §4.1.2.1, borrowed for rate limiting (SPEC §10).
    TemporarilyUnavailable,
    /// RFC 6749 §4.1.2.1: an unexpected condition.
    ServerError,
    /// RFC 6750 §3.1: "The access token provided is expired, revoked,
    /// malformed, or invalid for other reasons."
    InvalidToken,
    /// RFC 6750 §3.1: "The request requires higher privileges than provided
    /// by the access token."
    InsufficientScope,
    /// RFC 6749 §4.1.2.1: "The resource owner or authorization server denied the request."
    AccessDenied,
    /// RFC 6749 §4.1.2.1: "The authorization server does not support obtaining
    /// an authorization code using this method."
    UnsupportedResponseType,
    /// OIDC Core §3.1.2.6: `prompt=none` but the user is not signed in.
    LoginRequired,
    /// OIDC Core §3.1.2.6: `prompt=none` but consent is needed.
    ConsentRequired,
    /// OIDC Core §3.1.2.6: the `request` parameter is not supported.
    RequestNotSupported,
    /// OIDC Core §3.1.2.6: the `request_uri` parameter is not supported.
    RequestUriNotSupported,
}

impl OAuthCode {
    pub fn as_str(self) -> &'static str {
        match self {
            OAuthCode::InvalidRequest => "invalid_request",
            OAuthCode::InvalidClient => "invalid_client",
            OAuthCode::InvalidGrant => "invalid_grant",
            OAuthCode::UnauthorizedClient => "unauthorized_client",
            OAuthCode::UnsupportedGrantType => "unsupported_grant_type",
            OAuthCode::InvalidScope => "invalid_scope",
            OAuthCode::TemporarilyUnavailable => "temporarily_unavailable",
            OAuthCode::ServerError => "server_error",
            OAuthCode::InvalidToken => "invalid_token",
            OAuthCode::InsufficientScope => "insufficient_scope",
            OAuthCode::AccessDenied => "access_denied",
            OAuthCode::UnsupportedResponseType => "unsupported_response_type",
            OAuthCode::LoginRequired => "login_required",
            OAuthCode::ConsentRequired => "consent_required",
            OAuthCode::RequestNotSupported => "request_not_supported",
            OAuthCode::RequestUriNotSupported => "request_uri_not_supported",
        }
    }
}

impl fmt::Display for OAuthCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the client tried to authenticate, which decides the challenge header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    None,
    /// `WWW-Authenticate: Basic` (RFC 6749 §5.2, invalid_client over Basic).
    Basic,
    /// `WWW-Authenticate: Bearer` (RFC 6750 §3).
    Bearer,
}

#[derive(Debug)]
pub enum Error {
    OAuth {
        code: OAuthCode,
        description: Option<Cow<'static, str>>,
        challenge: Challenge,
    },
    /// RFC 6750 §3.1: no credentials at all: 401 and a bare challenge.
    MissingBearer,
    Problem(Box<Problem>),
    RateLimited {
        retry_after: u64,
    },
    Internal(anyhow::Error),
}

impl Error {
    pub fn oauth(code: OAuthCode) -> Error {
        Error::OAuth {
            code,
            description: None,
            challenge: Challenge::None,
        }
    }

    pub fn oauth_with(code: OAuthCode, description: impl Into<Cow<'static, str>>) -> Error {
        Error::OAuth {
            code,
            description: Some(description.into()),
            challenge: Challenge::None,
        }
    }

    pub fn invalid_request(description: impl Into<Cow<'static, str>>) -> Error {
        Error::oauth_with(OAuthCode::InvalidRequest, description)
    }

    pub fn invalid_grant() -> Error {
        Error::oauth(OAuthCode::InvalidGrant)
    }

    pub fn invalid_client(challenge: Challenge) -> Error {
        Error::OAuth {
            code: OAuthCode::InvalidClient,
            description: None,
            challenge,
        }
    }

    pub fn invalid_token() -> Error {
        Error::OAuth {
            code: OAuthCode::InvalidToken,
            description: None,
            challenge: Challenge::Bearer,
        }
    }

    pub fn insufficient_scope(description: &'static str) -> Error {
        Error::OAuth {
            code: OAuthCode::InsufficientScope,
            description: Some(description.into()),
            challenge: Challenge::Bearer,
        }
    }
}

impl Error {
    pub fn problem(status: StatusCode, code: &'static str, title: &'static str) -> Error {
        Error::Problem(Box::new(Problem::new(status, code, title)))
    }

    pub fn validation(errors: Vec<FieldProblem>) -> Error {
        Error::Problem(Box::new(Problem::validation(errors)))
    }

    pub fn not_found() -> Error {
        Error::problem(StatusCode::NOT_FOUND, "not_found", "No such resource")
    }

    pub fn forbidden(code: &'static str, title: &'static str) -> Error {
        Error::problem(StatusCode::FORBIDDEN, code, title)
    }
}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Error {
        Error::Internal(e)
    }
}

/// RFC 6749 §5.2 error body.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct OAuthErrorBody {
    /// An RFC 6749 §5.2 (or RFC 6750 §3.1) error code.
    pub error: String,
    /// Human-readable detail, when it helps the client developer.
    #[oai(skip_serializing_if_is_none)]
    pub error_description: Option<String>,
}

impl poem_openapi::types::Example for OAuthErrorBody {
    fn example() -> Self {
        OAuthErrorBody {
            error: "invalid_grant".into(),
            error_description: None,
        }
    }
}

/// RFC 9457 problem details.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[oai(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    #[oai(skip_serializing_if_is_none)]
    pub detail: Option<String>,
    /// A stable, machine-readable code for the failure.
    pub code: String,
    /// For `422`: every field that failed validation.
    #[oai(skip_serializing_if_is_none)]
    pub errors: Option<Vec<FieldProblem>>,
}

/// One invalid field of a request body.
#[derive(Debug, Clone, Object)]
pub struct FieldProblem {
    /// The field's name in the request body.
    pub field: String,
    /// A stable code, e.g. `required`, `invalid_email`, `password_too_short`.
    pub code: String,
    pub message: String,
}

impl FieldProblem {
    pub fn new(field: &str, code: &str, message: impl Into<String>) -> FieldProblem {
        FieldProblem {
            field: field.to_owned(),
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

impl poem_openapi::types::Example for Problem {
    fn example() -> Self {
        Problem::new(StatusCode::NOT_FOUND, "not_found", "No such resource")
    }
}

impl Problem {
    pub fn new(status: StatusCode, code: &str, title: &str) -> Problem {
        Problem {
            type_: format!("urn:gatehouse:problem:{code}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: None,
            code: code.to_owned(),
            errors: None,
        }
    }

    /// `422`: the body was well-formed but these fields are not acceptable.
    pub fn validation(errors: Vec<FieldProblem>) -> Problem {
        let mut p = Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "Some fields are not valid",
        );
        p.detail = Some("see `errors` for each field".into());
        p.errors = Some(errors);
        p
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Problem {
        self.detail = Some(detail.into());
        self
    }

    pub fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = poem_openapi::types::ToJSON::to_json_string(&self);
        Response::builder()
            .status(status)
            .content_type("application/problem+json")
            .body(body)
    }
}

const NO_STORE: &str = "no-store";

/// The error answers of `/oauth2/token`, `/oauth2/revoke` and `/oauth2/introspect`.
#[derive(ApiResponse, Debug)]
pub enum OAuthErrorResponse {
    /// `invalid_request`, `invalid_grant`, `unauthorized_client`,
    /// `unsupported_grant_type` or `invalid_scope` (RFC 6749 §5.2).
    #[oai(status = 400)]
    BadRequest(
        Json<OAuthErrorBody>,
        #[oai(header = "Cache-Control")] String,
        #[oai(header = "Pragma")] String,
    ),
    /// `invalid_client`: client authentication failed. `WWW-Authenticate: Basic`
    /// when the client used HTTP Basic.
    #[oai(status = 401)]
    Unauthorized(
        Json<OAuthErrorBody>,
        #[oai(header = "WWW-Authenticate")] Option<String>,
        #[oai(header = "Cache-Control")] String,
        #[oai(header = "Pragma")] String,
    ),
    /// `invalid_request`: the body is over 64 KiB.
    #[oai(status = 413)]
    PayloadTooLarge(
        Json<OAuthErrorBody>,
        #[oai(header = "Cache-Control")] String,
        #[oai(header = "Pragma")] String,
    ),
    /// `temporarily_unavailable`: too many requests; retry after the given seconds.
    #[oai(status = 429)]
    TooManyRequests(
        Json<OAuthErrorBody>,
        #[oai(header = "Retry-After")] u64,
        #[oai(header = "Cache-Control")] String,
        #[oai(header = "Pragma")] String,
    ),
    /// `server_error`: something failed on our side; nothing is revealed.
    #[oai(status = 500)]
    ServerError(
        Json<OAuthErrorBody>,
        #[oai(header = "Cache-Control")] String,
        #[oai(header = "Pragma")] String,
    ),
    /// `temporarily_unavailable`: the database is out of reach; try again shortly.
    #[oai(status = 503)]
    Unavailable(
        Json<OAuthErrorBody>,
        #[oai(header = "Cache-Control")] String,
        #[oai(header = "Pragma")] String,
    ),
}

/// The body of a bearer-token error: empty when no token was sent.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct BearerErrorBody {
    /// An RFC 6750 §3.1 error code; absent when the request had no token.
    #[oai(skip_serializing_if_is_none)]
    pub error: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub error_description: Option<String>,
}

impl poem_openapi::types::Example for BearerErrorBody {
    fn example() -> Self {
        BearerErrorBody {
            error: Some("invalid_token".into()),
            error_description: None,
        }
    }
}

/// The error answers of bearer-protected `/oauth2/*` resources (RFC 6750 §3).
#[derive(ApiResponse, Debug)]
pub enum BearerErrorResponse {
    /// No token (`WWW-Authenticate: Bearer` with no error code) or a bad,
    /// expired or revoked one (`error="invalid_token"`).
    #[oai(status = 401)]
    Unauthorized(
        Json<BearerErrorBody>,
        #[oai(header = "WWW-Authenticate")] String,
        #[oai(header = "Cache-Control")] String,
    ),
    /// The token lacks a required scope (`error="insufficient_scope"`).
    #[oai(status = 403)]
    Forbidden(
        Json<BearerErrorBody>,
        #[oai(header = "WWW-Authenticate")] String,
        #[oai(header = "Cache-Control")] String,
    ),
    /// Too many requests.
    #[oai(status = 429)]
    TooManyRequests(Json<OAuthErrorBody>, #[oai(header = "Retry-After")] u64),
    /// Something failed on our side.
    #[oai(status = 500)]
    ServerError(Json<OAuthErrorBody>),
    /// `temporarily_unavailable`: the database is out of reach; try again shortly.
    #[oai(status = 503)]
    Unavailable(Json<OAuthErrorBody>),
}

/// The error answers outside `/oauth2/*`: RFC 9457 problem details.
#[derive(ApiResponse, Debug)]
pub enum ProblemResponse {
    /// Malformed request: the body is not JSON of the expected shape, or a
    /// token in it is unknown, used or expired.
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// No Bearer token (`code: unauthenticated`) or a bad, expired or revoked
    /// one (`code: invalid_token`).
    #[oai(status = 401, content_type = "application/problem+json")]
    Unauthorized(Json<Problem>, #[oai(header = "WWW-Authenticate")] String),
    /// Authenticated but not allowed: not an admin (`forbidden`), or a wrong
    /// current password (`wrong_password`).
    #[oai(status = 403, content_type = "application/problem+json")]
    Forbidden(Json<Problem>),
    /// No such resource.
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// The request conflicts with the current state (e.g. retiring the only key).
    #[oai(status = 409, content_type = "application/problem+json")]
    Conflict(Json<Problem>),
    /// The body is over the size limit (`code: payload_too_large`).
    #[oai(status = 413, content_type = "application/problem+json")]
    PayloadTooLarge(Json<Problem>),
    /// The body is not `application/json` (`code: unsupported_media_type`).
    #[oai(status = 415, content_type = "application/problem+json")]
    UnsupportedMediaType(Json<Problem>),
    /// Validation failed; `errors` lists every bad field.
    #[oai(status = 422, content_type = "application/problem+json")]
    Unprocessable(Json<Problem>),
    /// Too many requests; retry after the given seconds.
    #[oai(status = 429, content_type = "application/problem+json")]
    TooManyRequests(Json<Problem>, #[oai(header = "Retry-After")] u64),
    /// Something failed on our side; nothing is revealed.
    #[oai(status = 500, content_type = "application/problem+json")]
    Internal(Json<Problem>),
    /// The database is out of reach (`code: unavailable`); try again shortly.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>),
}

impl From<Error> for ProblemResponse {
    fn from(e: Error) -> Self {
        let unauthorized = |code: &str, title: &str, challenge: String| {
            ProblemResponse::Unauthorized(
                Json(Problem::new(StatusCode::UNAUTHORIZED, code, title)),
                challenge,
            )
        };
        match e {
            Error::MissingBearer => unauthorized(
                "unauthenticated",
                "A Bearer access token is required",
                "Bearer realm=\"gatehouse\"".to_owned(),
            ),
            Error::OAuth {
                code: OAuthCode::InsufficientScope,
                ..
            } => ProblemResponse::Forbidden(Json(Problem::new(
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                "The access token lacks a required scope",
            ))),
            Error::OAuth {
                code, description, ..
            } => {
                let mut p = Problem::new(
                    StatusCode::UNAUTHORIZED,
                    code.as_str(),
                    "The access token is not valid",
                );
                p.detail = description.map(Cow::into_owned);
                ProblemResponse::Unauthorized(Json(p), bearer_challenge(OAuthCode::InvalidToken, None))
            }
            Error::Problem(p) => match p.status {
                400 => ProblemResponse::BadRequest(Json(*p)),
                403 => ProblemResponse::Forbidden(Json(*p)),
                404 => ProblemResponse::NotFound(Json(*p)),
                409 => ProblemResponse::Conflict(Json(*p)),
                413 => ProblemResponse::PayloadTooLarge(Json(*p)),
                415 => ProblemResponse::UnsupportedMediaType(Json(*p)),
                422 => ProblemResponse::Unprocessable(Json(*p)),
                _ => {
                    tracing::error!(status = p.status, code = %p.code, "unexpected problem status");
                    ProblemResponse::Internal(Json(Problem::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "Internal server error",
                    )))
                }
            },
            Error::RateLimited { retry_after } => ProblemResponse::TooManyRequests(
                Json(Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "Too many requests",
                )),
                retry_after.max(1),
            ),
            Error::Internal(e) if database_unavailable(&e) => {
                log_unavailable(&e);
                ProblemResponse::Unavailable(Json(
                    Problem::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "Service unavailable",
                    )
                    .with_detail("the database is out of reach; try again shortly"),
                ))
            }
            Error::Internal(e) => {
                log_internal(&e);
                ProblemResponse::Internal(Json(Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "Internal server error",
                )))
            }
        }
    }
}

fn log_internal(e: &anyhow::Error) {
    tracing::error!(error = %format!("{e:#}"), "internal error");
}

/// Is this failure the database being out of reach (refused, reset, no
/// connection within the pool's acquire timeout, shutting down; an SQLite
/// file locked by another process past `busy_timeout`, unreadable or gone)
/// rather than a bug? Such requests are answered 503, and the next ones
/// succeed once the database is back.
pub fn database_unavailable(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| match cause.downcast_ref::<sqlx::Error>() {
        Some(
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed,
        ) => true,
        // SQLite: still busy or locked after `busy_timeout` (another process
        // holds the file), or the file cannot be read or opened.
        Some(sqlx::Error::Database(db)) if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() => db
            .code()
            .and_then(|code| code.parse().ok())
            .is_some_and(crate::store::reader::is_unavailable_code),
        // PostgreSQL: SQLSTATE class 08 (connection exception), 57P
        // (operator intervention: shutdown, cannot connect now) and 57014 (a
        // lane's statement_timeout cancelled a query the server was too slow
        // for).
        Some(sqlx::Error::Database(db)) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P") || code == "57014"),
        _ => cause
            .downcast_ref::<rusqlite::Error>()
            .is_some_and(crate::store::reader::is_unavailable),
    })
}

fn log_unavailable(e: &anyhow::Error) {
    tracing::warn!(error = %format!("{e:#}"), "database unavailable");
}

fn body(code: OAuthCode, description: Option<Cow<'static, str>>) -> Json<OAuthErrorBody> {
    Json(OAuthErrorBody {
        error: code.as_str().to_owned(),
        error_description: description.map(Cow::into_owned),
    })
}

impl From<Error> for OAuthErrorResponse {
    fn from(e: Error) -> Self {
        let no_store = || NO_STORE.to_owned();
        let no_cache = || "no-cache".to_owned();
        match e {
            Error::OAuth {
                code: OAuthCode::InvalidClient,
                description,
                challenge,
            } => OAuthErrorResponse::Unauthorized(
                body(OAuthCode::InvalidClient, description),
                (challenge == Challenge::Basic).then(|| "Basic realm=\"gatehouse\"".to_owned()),
                no_store(),
                no_cache(),
            ),
            Error::OAuth {
                code, description, ..
            } => OAuthErrorResponse::BadRequest(body(code, description), no_store(), no_cache()),
            Error::MissingBearer => OAuthErrorResponse::BadRequest(
                body(OAuthCode::InvalidRequest, Some("credentials are missing".into())),
                no_store(),
                no_cache(),
            ),
            Error::Problem(p) => OAuthErrorResponse::BadRequest(
                body(OAuthCode::InvalidRequest, p.detail.map(Cow::Owned)),
                no_store(),
                no_cache(),
            ),
            Error::RateLimited { retry_after } => OAuthErrorResponse::TooManyRequests(
                body(OAuthCode::TemporarilyUnavailable, None),
                retry_after.max(1),
                no_store(),
                no_cache(),
            ),
            Error::Internal(e) if database_unavailable(&e) => {
                log_unavailable(&e);
                OAuthErrorResponse::Unavailable(
                    body(OAuthCode::TemporarilyUnavailable, None),
                    no_store(),
                    no_cache(),
                )
            }
            Error::Internal(e) => {
                log_internal(&e);
                OAuthErrorResponse::ServerError(body(OAuthCode::ServerError, None), no_store(), no_cache())
            }
        }
    }
}

fn bearer_challenge(code: OAuthCode, description: Option<&str>) -> String {
    match description {
        Some(d) => format!(
            "Bearer realm=\"gatehouse\", error=\"{code}\", error_description=\"{}\"",
            d.replace(['"', '\\'], "")
        ),
        None => format!("Bearer realm=\"gatehouse\", error=\"{code}\""),
    }
}

fn bearer_body(code: OAuthCode, description: Option<&str>) -> Json<BearerErrorBody> {
    Json(BearerErrorBody {
        error: Some(code.as_str().to_owned()),
        error_description: description.map(str::to_owned),
    })
}

impl From<Error> for BearerErrorResponse {
    fn from(e: Error) -> Self {
        let no_store = || NO_STORE.to_owned();
        match e {
            // RFC 6750 §3.1: no error code when the request had no credentials.
            Error::MissingBearer => BearerErrorResponse::Unauthorized(
                Json(BearerErrorBody {
                    error: None,
                    error_description: None,
                }),
                "Bearer realm=\"gatehouse\"".to_owned(),
                no_store(),
            ),
            Error::OAuth {
                code: OAuthCode::InsufficientScope,
                description,
                ..
            } => BearerErrorResponse::Forbidden(
                bearer_body(OAuthCode::InsufficientScope, description.as_deref()),
                bearer_challenge(OAuthCode::InsufficientScope, description.as_deref()),
                no_store(),
            ),
            Error::OAuth {
                code, description, ..
            } => BearerErrorResponse::Unauthorized(
                bearer_body(code, description.as_deref()),
                bearer_challenge(code, description.as_deref()),
                no_store(),
            ),
            Error::Problem(_) => BearerErrorResponse::Unauthorized(
                bearer_body(OAuthCode::InvalidToken, None),
                bearer_challenge(OAuthCode::InvalidToken, None),
                no_store(),
            ),
            Error::RateLimited { retry_after } => BearerErrorResponse::TooManyRequests(
                body(OAuthCode::TemporarilyUnavailable, None),
                retry_after.max(1),
            ),
            Error::Internal(e) if database_unavailable(&e) => {
                log_unavailable(&e);
                BearerErrorResponse::Unavailable(body(OAuthCode::TemporarilyUnavailable, None))
            }
            Error::Internal(e) => {
                log_internal(&e);
                BearerErrorResponse::ServerError(body(OAuthCode::ServerError, None))
            }
        }
    }
}

/// Renders a failure that never reached a handler (no route, wrong method,
/// unparsable body or parameters) in the shape its path calls for. The
/// parser's own message is not echoed: it may quote the input.
pub fn render_unhandled(path: &str, err: poem::Error) -> Response {
    if err.is_from_response() {
        return err.into_response();
    }
    let status = err.status();
    let (code, title, detail) = match status {
        StatusCode::NOT_FOUND => ("not_found", "Not found", "there is no resource at this path"),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "Method not allowed",
            "this resource does not accept that method",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            "Unsupported media type",
            "the request body has a content type this resource does not accept",
        ),
        StatusCode::SERVICE_UNAVAILABLE => (
            "unavailable",
            "Service unavailable",
            "the request could not be served in time; try again",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "payload_too_large",
            "Payload too large",
            "the request body is too large",
        ),
        s if s.is_server_error() && s != StatusCode::SERVICE_UNAVAILABLE => {
            tracing::error!(error = %err, "unhandled internal error");
            (
                "internal",
                "Internal server error",
                "something failed on our side",
            )
        }
        _ => (
            "bad_request",
            "Bad request",
            "the request could not be parsed: check its parameters, content type and encoding",
        ),
    };
    if path.starts_with("/oauth2/") {
        let (status, code) = match status {
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED | StatusCode::PAYLOAD_TOO_LARGE => {
                (status, OAuthCode::InvalidRequest)
            }
            StatusCode::SERVICE_UNAVAILABLE => (status, OAuthCode::TemporarilyUnavailable),
            s if s.is_server_error() => (StatusCode::INTERNAL_SERVER_ERROR, OAuthCode::ServerError),
            _ => (StatusCode::BAD_REQUEST, OAuthCode::InvalidRequest),
        };
        let body = poem_openapi::types::ToJSON::to_json_string(&OAuthErrorBody {
            error: code.as_str().to_owned(),
            error_description: Some(detail.to_owned()),
        });
        return Response::builder()
            .status(status)
            .content_type("application/json")
            .header("Cache-Control", NO_STORE)
            .header("Pragma", "no-cache")
            .body(body);
    }
    let status = if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        status
    };
    Problem::new(status, code, title)
        .with_detail(detail)
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_client_over_basic_carries_the_challenge() {
        let r = OAuthErrorResponse::from(Error::invalid_client(Challenge::Basic));
        match r {
            OAuthErrorResponse::Unauthorized(body, challenge, cache, _) => {
                assert_eq!(body.0.error, "invalid_client");
                assert!(challenge.unwrap().starts_with("Basic"));
                assert_eq!(cache, "no-store");
            }
            other => panic!("{other:?}"),
        }
        match OAuthErrorResponse::from(Error::invalid_client(Challenge::None)) {
            OAuthErrorResponse::Unauthorized(_, challenge, _, _) => assert!(challenge.is_none()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unreachable_database_is_503_temporarily_unavailable() {
        let lost = || anyhow::Error::new(sqlx::Error::PoolTimedOut).context("select refresh token");
        match OAuthErrorResponse::from(Error::Internal(lost())) {
            OAuthErrorResponse::Unavailable(body, cache, _) => {
                assert_eq!(body.0.error, "temporarily_unavailable");
                assert_eq!(cache, "no-store");
            }
            other => panic!("{other:?}"),
        }
        match ProblemResponse::from(Error::Internal(lost())) {
            ProblemResponse::Unavailable(p) => {
                assert_eq!((p.0.status, p.0.code.as_str()), (503, "unavailable"))
            }
            other => panic!("{other:?}"),
        }
        // Anything else stays a 500.
        let bug = anyhow::Error::new(sqlx::Error::RowNotFound).context("select user");
        assert!(matches!(
            OAuthErrorResponse::from(Error::Internal(bug)),
            OAuthErrorResponse::ServerError(..)
        ));
    }

    /// SQLite held by another process past `busy_timeout` is "not now"
    /// (503), like an unreachable PostgreSQL; a constraint failure is not.
    #[tokio::test]
    async fn sqlite_busy_past_its_timeout_is_unavailable() -> anyhow::Result<()> {
        use sqlx::{Connection as _, Executor as _};
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("busy.db");
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut conn = sqlx::AnyConnection::connect(&url).await?;
        conn.execute("create table t (v integer primary key); pragma busy_timeout = 0;")
            .await?;
        let holder = rusqlite::Connection::open(&path)?;
        holder.execute_batch("begin exclusive;")?;
        let busy = conn.execute("insert into t (v) values (1)").await;
        let busy = anyhow::Error::new(busy.expect_err("the file is locked")).context("insert");
        assert!(database_unavailable(&busy), "{busy:#}");
        holder.execute_batch("commit;")?;
        conn.execute("insert into t (v) values (1)").await?;
        let duplicate = conn.execute("insert into t (v) values (1)").await;
        let duplicate = anyhow::Error::new(duplicate.expect_err("a duplicate key")).context("insert");
        assert!(!database_unavailable(&duplicate), "{duplicate:#}");
        Ok(())
    }

    #[test]
    fn internal_errors_reveal_nothing() {
        let r = OAuthErrorResponse::from(Error::Internal(anyhow::anyhow!("secret detail")));
        match r {
            OAuthErrorResponse::ServerError(body, ..) => {
                assert_eq!(body.0.error, "server_error");
                assert!(body.0.error_description.is_none());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bearer_errors_follow_rfc_6750() {
        match BearerErrorResponse::from(Error::MissingBearer) {
            BearerErrorResponse::Unauthorized(_, challenge, _) => assert!(!challenge.contains("error=")),
            other => panic!("{other:?}"),
        }
        match BearerErrorResponse::from(Error::invalid_token()) {
            BearerErrorResponse::Unauthorized(_, challenge, _) => {
                assert!(challenge.contains("error=\"invalid_token\""))
            }
            other => panic!("{other:?}"),
        }
        match BearerErrorResponse::from(Error::insufficient_scope("needs openid")) {
            BearerErrorResponse::Forbidden(_, challenge, _) => {
                assert!(challenge.contains("error=\"insufficient_scope\""))
            }
            other => panic!("{other:?}"),
        }
    }
}
