//! `/oauth2/*`: token, revoke, introspect (form-encoded, RFC 6749 §5.2
//! errors) and userinfo (Bearer, RFC 6750 §3 errors).

use poem::web::Data;
use poem_openapi::auth::{Basic, Bearer};
use poem_openapi::param::Query;
use poem_openapi::payload::{Form, Html, Json};
use poem_openapi::{ApiResponse, Object, OpenApi, SecurityScheme};
use secrecy::SecretString;
use serde::Deserialize;

use super::pages::{message_html, page_csp};
use super::signin::AuthorizeAnswer;
use super::{ApiTag, RawJson};
use crate::app::AppState;
use crate::domain::GrantType;
use crate::error::{BearerErrorResponse, Error, OAuthCode, OAuthErrorResponse};
use crate::oauth::{self, ClientCredentials, TokenRequest, has_nul, parse_requested_scope};

pub struct OAuth2Api;

/// Client authentication with HTTP Basic (`client_secret_basic`): the
/// client id and secret, each form-encoded (RFC 6749 §2.3.1).
#[derive(SecurityScheme)]
#[oai(ty = "basic")]
pub struct ClientBasic(Basic);

/// `client_secret_basic`, or the credentials in the form body
/// (`client_secret_post`, or `client_id` alone for a public client).
#[derive(SecurityScheme)]
pub enum ClientAuth {
    ClientBasic(ClientBasic),
    #[oai(fallback)]
    InBody,
}

/// A user's access token (RFC 6750).
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT")]
pub struct UserBearer(pub Bearer);

#[derive(SecurityScheme)]
pub enum BearerAuth {
    UserBearer(UserBearer),
    #[oai(fallback)]
    Missing,
}

/// RFC 6749 §4.1.3, §4.3.2, §4.4.2 and §6 token request.
#[derive(Debug, Object, Deserialize)]
pub struct TokenForm {
    /// `password`, `refresh_token`, `client_credentials` or `authorization_code`.
    pub grant_type: String,
    /// The authorization code (authorization_code grant).
    #[oai(write_only)]
    pub code: Option<String>,
    /// The redirect_uri of the authorization request, when it named one.
    pub redirect_uri: Option<String>,
    /// The PKCE verifier (RFC 7636 §4.5).
    #[oai(write_only)]
    pub code_verifier: Option<String>,
    /// The user's e-mail address (password grant).
    pub username: Option<String>,
    /// The user's password (password grant).
    #[oai(write_only)]
    pub password: Option<String>,
    /// The refresh token (refresh_token grant).
    #[oai(write_only)]
    pub refresh_token: Option<String>,
    /// Space-separated scopes; the client's default when absent.
    pub scope: Option<String>,
    /// The client (`client_secret_post`, or a public client).
    pub client_id: Option<String>,
    /// The client secret (`client_secret_post`).
    #[oai(write_only)]
    pub client_secret: Option<String>,
}

/// RFC 7009 §2.1 / RFC 7662 §2.1 request.
#[derive(Debug, Object, Deserialize)]
pub struct TokenForm2 {
    /// The token to revoke or introspect.
    #[oai(write_only)]
    pub token: String,
    /// `access_token` or `refresh_token`; a hint only.
    pub token_type_hint: Option<String>,
    pub client_id: Option<String>,
    #[oai(write_only)]
    pub client_secret: Option<String>,
}

/// RFC 6749 §5.1 successful token response.
// `Object` gives the schema; the body is what serde writes (`TokenResponse`).
#[derive(Debug, Object, serde::Serialize)]
#[oai(example)]
pub struct TokenBody {
    /// An RFC 9068 JWT, signed RS256.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    /// The scope granted.
    pub scope: String,
    /// Single use: each refresh returns a new one.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// OIDC id_token, when `openid` was granted.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
}

impl poem_openapi::types::Example for TokenBody {
    fn example() -> Self {
        TokenBody {
            access_token: "eyJhbGciOiJSUzI1NiIsInR5cCI6ImF0K2p3dCIsImtpZCI6Ii4uLiJ9.eyJpc3MiOiIuLi4ifQ.c2ln"
                .into(),
            token_type: "Bearer".into(),
            expires_in: 900,
            scope: "openid profile email".into(),
            refresh_token: Some("gatehouse_rt_2YotnFZFEjr1zCsicMWpAA2YotnFZFEjr1zCsicMWp".into()),
            id_token: None,
        }
    }
}

/// The body is serialised straight from [`TokenBody`] (`RawJson`), not
/// through a `serde_json::Value` as `Json` does.
#[derive(ApiResponse)]
pub enum TokenResponse {
    /// Tokens issued.
    #[oai(status = 200)]
    Ok(
        RawJson<TokenBody>,
        #[oai(header = "Cache-Control")] String,
        #[oai(header = "Pragma")] String,
    ),
}

#[derive(ApiResponse)]
pub enum AuthorizeResponse {
    /// To the hosted login or consent page; or back to the redirect URI with
    /// `code`, `state` and `iss` (RFC 9207), or with `error`,
    /// `error_description`, `state` and `iss` (RFC 6749 §4.1.2.1).
    #[oai(status = 302)]
    Found(
        #[oai(header = "Location")] String,
        #[oai(header = "Cache-Control")] String,
    ),
    /// The client or the redirect URI cannot be trusted: an HTML page says
    /// why, and the browser is not redirected.
    #[oai(status = 400)]
    Refused(
        Html<String>,
        #[oai(header = "Content-Security-Policy")] String,
        #[oai(header = "Cache-Control")] String,
    ),
    /// Something went wrong on our side: an HTML page.
    #[oai(status = 500)]
    Broken(Html<String>, #[oai(header = "Cache-Control")] String),
    /// The database is out of reach for a moment: an HTML page.
    #[oai(status = 503)]
    Unavailable(Html<String>, #[oai(header = "Cache-Control")] String),
}

#[derive(ApiResponse)]
pub enum RevokeResponse {
    /// Revoked, or nothing to revoke (RFC 7009 §2.2).
    #[oai(status = 200)]
    Ok(#[oai(header = "Cache-Control")] String),
}

/// RFC 7662 §2.2 introspection response; inactive is exactly `{"active":false}`.
#[derive(Debug, Object)]
#[oai(example)]
pub struct IntrospectionBody {
    pub active: bool,
    #[oai(skip_serializing_if_is_none)]
    pub sub: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub client_id: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub scope: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub exp: Option<i64>,
    #[oai(skip_serializing_if_is_none)]
    pub iat: Option<i64>,
    #[oai(skip_serializing_if_is_none)]
    pub iss: Option<String>,
    /// A string, or an array of strings.
    #[oai(skip_serializing_if_is_none)]
    pub aud: Option<serde_json::Value>,
    /// The user's e-mail address.
    #[oai(skip_serializing_if_is_none)]
    pub username: Option<String>,
    /// `Bearer` for access tokens.
    #[oai(skip_serializing_if_is_none)]
    pub token_type: Option<String>,
}

impl poem_openapi::types::Example for IntrospectionBody {
    fn example() -> Self {
        IntrospectionBody {
            active: true,
            sub: Some("0b8f1e9e-4a57-4a51-9c55-6f7b0f7f9a11".into()),
            client_id: Some("6f1c3c35-2c4f-4d8a-a3c1-1d0f0f1b2a77".into()),
            scope: Some("openid profile".into()),
            exp: Some(1_767_225_600),
            iat: Some(1_767_224_700),
            iss: Some("http://127.0.0.1:8080".into()),
            aud: Some(serde_json::Value::String("http://127.0.0.1:8080".into())),
            username: Some("ada@example.com".into()),
            token_type: Some("Bearer".into()),
        }
    }
}

#[derive(ApiResponse)]
pub enum IntrospectResponse {
    /// The token's state.
    #[oai(status = 200)]
    Ok(Json<IntrospectionBody>, #[oai(header = "Cache-Control")] String),
}

/// OIDC Core §5.3.2 userinfo response.
#[derive(Debug, Object)]
#[oai(example)]
pub struct UserInfoBody {
    pub sub: String,
    /// With the `email` scope.
    #[oai(skip_serializing_if_is_none)]
    pub email: Option<String>,
    /// With the `email` scope.
    #[oai(skip_serializing_if_is_none)]
    pub email_verified: Option<bool>,
    /// With the `profile` scope, when set.
    #[oai(skip_serializing_if_is_none)]
    pub name: Option<String>,
}

impl poem_openapi::types::Example for UserInfoBody {
    fn example() -> Self {
        UserInfoBody {
            sub: "0b8f1e9e-4a57-4a51-9c55-6f7b0f7f9a11".into(),
            email: Some("ada@example.com".into()),
            email_verified: Some(true),
            name: Some("Ada".into()),
        }
    }
}

#[derive(ApiResponse)]
pub enum UserInfoResponse {
    /// Claims about the signed-in user.
    #[oai(status = 200)]
    Ok(Json<UserInfoBody>, #[oai(header = "Cache-Control")] String),
}

const MAX_FIELD: usize = 4096;

/// RFC 6749 §2.3.1: Basic credentials are form-encoded before base64.
fn form_decode(text: &str) -> Option<String> {
    let spaced = text.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// Whether the request carried `Authorization: Basic …` at all, parsable or not.
fn basic_attempted(req: &poem::Request) -> bool {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .split(' ')
                .next()
                .is_some_and(|scheme| scheme.eq_ignore_ascii_case("basic"))
        })
}

fn client_credentials(
    req: &poem::Request,
    auth: ClientAuth,
    client_id: Option<String>,
    client_secret: Option<String>,
) -> Result<ClientCredentials, Error> {
    // RFC 6749 §3.2: a parameter sent without a value is treated as omitted.
    let client_id = client_id.filter(|v| !v.is_empty());
    let client_secret = client_secret.filter(|v| !v.is_empty());
    let basic = match auth {
        ClientAuth::ClientBasic(ClientBasic(b)) => {
            let id = form_decode(&b.username)
                .ok_or_else(|| Error::invalid_client(crate::error::Challenge::Basic))?;
            let secret = form_decode(&b.password)
                .ok_or_else(|| Error::invalid_client(crate::error::Challenge::Basic))?;
            Some((id, SecretString::from(secret)))
        }
        // A Basic header poem could not decode is still a failed Basic attempt.
        ClientAuth::InBody if basic_attempted(req) => {
            return Err(Error::invalid_client(crate::error::Challenge::Basic));
        }
        ClientAuth::InBody => None,
    };
    for field in [&client_id, &client_secret].into_iter().flatten() {
        if field.len() > MAX_FIELD || has_nul(field) {
            return Err(Error::invalid_request("client credentials are malformed"));
        }
    }
    Ok(ClientCredentials {
        basic,
        form_id: client_id,
        form_secret: client_secret.map(SecretString::from),
    })
}

fn required(value: Option<String>, name: &'static str) -> Result<String, Error> {
    match value {
        Some(v) if v.is_empty() => Err(Error::invalid_request(format!("{name} is empty"))),
        Some(v) if v.len() > MAX_FIELD || has_nul(&v) => {
            Err(Error::invalid_request(format!("{name} is malformed")))
        }
        Some(v) => Ok(v),
        None => Err(Error::invalid_request(format!("{name} is missing"))),
    }
}

/// Strings stop here: the form becomes one [`TokenRequest`] variant.
/// An optional parameter: empty means absent (RFC 6749 §3.2).
fn optional(value: Option<String>, name: &'static str) -> Result<Option<String>, Error> {
    match value {
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => required(Some(v), name).map(Some),
        None => Ok(None),
    }
}

fn parse_token_request(form: &mut TokenForm) -> Result<TokenRequest, Error> {
    let grant = GrantType::parse(&form.grant_type).ok_or_else(|| {
        Error::oauth_with(
            OAuthCode::UnsupportedGrantType,
            "grant_type must be password, refresh_token, client_credentials or authorization_code",
        )
    })?;
    if form.scope.as_deref().is_some_and(has_nul) {
        return Err(Error::invalid_request("scope is malformed"));
    }
    let scope = parse_requested_scope(form.scope.as_deref())?;
    Ok(match grant {
        GrantType::Password => TokenRequest::Password {
            username: required(form.username.take(), "username")?,
            password: SecretString::from(required(form.password.take(), "password")?),
            scope,
        },
        GrantType::RefreshToken => TokenRequest::RefreshToken {
            refresh_token: SecretString::from(required(form.refresh_token.take(), "refresh_token")?),
            scope,
        },
        GrantType::ClientCredentials => TokenRequest::ClientCredentials { scope },
        GrantType::AuthorizationCode => TokenRequest::AuthorizationCode {
            code: SecretString::from(required(form.code.take(), "code")?),
            redirect_uri: optional(form.redirect_uri.take(), "redirect_uri")?,
            code_verifier: optional(form.code_verifier.take(), "code_verifier")?.map(SecretString::from),
        },
    })
}

fn no_store() -> String {
    "no-store".to_owned()
}

#[OpenApi]
impl OAuth2Api {
    /// Authorization endpoint (RFC 6749 §4.1.1, RFC 7636, OIDC Core §3.1.2.1):
    /// a browser is sent here. `response_type=code` only; `redirect_uri` must
    /// be registered for the client; PKCE with S256 is required for public
    /// clients. Parameters may not repeat.
    #[oai(
        path = "/oauth2/authorize",
        method = "get",
        operation_id = "authorize",
        tag = "ApiTag::OAuth2"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn authorize(
        &self,
        req: &poem::Request,
        Data(app): Data<&AppState>,
        /// `code`.
        response_type: Query<Option<String>>,
        client_id: Query<Option<String>>,
        /// One of the client's registered redirect URIs, exactly.
        redirect_uri: Query<Option<String>>,
        /// Space-separated; the client's default when absent.
        scope: Query<Option<String>>,
        /// Returned unchanged with the code or the error.
        state: Query<Option<String>>,
        /// Put into the id_token.
        nonce: Query<Option<String>>,
        /// BASE64URL(SHA-256(code_verifier)), 43 characters.
        code_challenge: Query<Option<String>>,
        /// `S256`.
        code_challenge_method: Query<Option<String>>,
        /// `none`, `login` or `consent`.
        prompt: Query<Option<String>>,
        /// Seconds since the last sign-in beyond which the user signs in again.
        max_age: Query<Option<String>>,
        /// Pre-fills the e-mail field.
        login_hint: Query<Option<String>>,
        /// `query` only.
        response_mode: Query<Option<String>>,
    ) -> AuthorizeResponse {
        // Read from the raw query string, which also catches repeated parameters.
        let _ = (
            response_type,
            client_id,
            redirect_uri,
            scope,
            state,
            nonce,
            code_challenge,
            code_challenge_method,
            prompt,
            max_age,
            login_hint,
            response_mode,
        );
        match super::signin::authorize(app, req).await {
            AuthorizeAnswer::Redirect(location) => AuthorizeResponse::Found(location, no_store()),
            AuthorizeAnswer::Refused(text) => AuthorizeResponse::Refused(
                Html(message_html("Sign-in request not valid", text, "error")),
                page_csp(),
                no_store(),
            ),
            AuthorizeAnswer::Broken { unavailable: true } => AuthorizeResponse::Unavailable(
                Html(message_html(
                    "Please try again",
                    "The service is briefly unavailable. Try again in a moment.",
                    "error",
                )),
                no_store(),
            ),
            AuthorizeAnswer::Broken { unavailable: false } => AuthorizeResponse::Broken(
                Html(message_html(
                    "Something went wrong",
                    "Please try again later.",
                    "error",
                )),
                no_store(),
            ),
        }
    }

    /// Token endpoint (RFC 6749 §3.2): the `password`, `refresh_token` and
    /// `client_credentials` grants. The password grant is for first-party
    /// apps only (RFC 9700 §2.4). Every answer carries `Cache-Control: no-store`.
    #[oai(
        path = "/oauth2/token",
        method = "post",
        operation_id = "token",
        tag = "ApiTag::OAuth2"
    )]
    async fn token(
        &self,
        req: &poem::Request,
        Data(state): Data<&AppState>,
        auth: ClientAuth,
        form: Form<TokenForm>,
    ) -> Result<TokenResponse, OAuthErrorResponse> {
        let now = crate::now();
        let Form(mut form) = form;
        let creds = client_credentials(req, auth, form.client_id.take(), form.client_secret.take())?;
        let request = parse_token_request(&mut form);
        let client = oauth::authenticate_client(state, creds).await?;
        let grant = oauth::exchange(state, &client, request?, now).await?;
        let body = TokenBody {
            access_token: grant.access_token,
            token_type: "Bearer".into(),
            expires_in: grant.expires_in,
            scope: grant.scope.to_string(),
            refresh_token: grant.refresh_token.map(|t| t.expose().to_owned()),
            id_token: grant.id_token,
        };
        let body = serde_json::to_vec(&body)
            .map_err(|e| Error::from(anyhow::Error::new(e).context("serialising the token answer")))?;
        Ok(TokenResponse::Ok(
            RawJson::new(body.into()),
            no_store(),
            "no-cache".into(),
        ))
    }

    /// Token revocation (RFC 7009): a refresh token ends its whole chain;
    /// unknown tokens are answered 200 as well.
    #[oai(
        path = "/oauth2/revoke",
        method = "post",
        operation_id = "revoke",
        tag = "ApiTag::OAuth2"
    )]
    async fn revoke(
        &self,
        req: &poem::Request,
        Data(state): Data<&AppState>,
        auth: ClientAuth,
        form: Form<TokenForm2>,
    ) -> Result<RevokeResponse, OAuthErrorResponse> {
        let now = crate::now();
        let Form(form) = form;
        let creds = client_credentials(req, auth, form.client_id, form.client_secret)?;
        let client = oauth::authenticate_client(state, creds).await?;
        if form.token.len() <= MAX_FIELD && !has_nul(&form.token) {
            oauth::revoke(state, &client, &form.token, now).await?;
        }
        Ok(RevokeResponse::Ok(no_store()))
    }

    /// Token introspection (RFC 7662), for confidential clients. Anything
    /// expired, revoked, forged or unknown is exactly `{"active":false}`.
    #[oai(
        path = "/oauth2/introspect",
        method = "post",
        operation_id = "introspect",
        tag = "ApiTag::OAuth2"
    )]
    async fn introspect(
        &self,
        req: &poem::Request,
        Data(state): Data<&AppState>,
        auth: ClientAuth,
        form: Form<TokenForm2>,
    ) -> Result<IntrospectResponse, OAuthErrorResponse> {
        let now = crate::now();
        let Form(form) = form;
        let creds = client_credentials(req, auth, form.client_id, form.client_secret)?;
        let client = oauth::authenticate_client(state, creds).await?;
        let found = if form.token.len() <= MAX_FIELD && !has_nul(&form.token) {
            oauth::introspect(state, &client, &form.token, now).await?
        } else {
            oauth::Introspection::default()
        };
        Ok(IntrospectResponse::Ok(
            Json(IntrospectionBody {
                active: found.active,
                sub: found.sub,
                client_id: found.client_id,
                scope: found.scope,
                exp: found.exp,
                iat: found.iat,
                iss: found.iss,
                aud: found.aud.and_then(|a| serde_json::to_value(a).ok()),
                username: found.username,
                token_type: found.token_type,
            }),
            no_store(),
        ))
    }

    /// OIDC userinfo (GET): needs a Bearer token with the `openid` scope.
    #[oai(
        path = "/oauth2/userinfo",
        method = "get",
        operation_id = "userinfo",
        tag = "ApiTag::OAuth2"
    )]
    async fn userinfo_get(
        &self,
        Data(state): Data<&AppState>,
        auth: BearerAuth,
    ) -> Result<UserInfoResponse, BearerErrorResponse> {
        userinfo(state, auth).await
    }

    /// OIDC userinfo (POST): the same as GET.
    #[oai(
        path = "/oauth2/userinfo",
        method = "post",
        operation_id = "userinfo_post",
        tag = "ApiTag::OAuth2"
    )]
    async fn userinfo_post(
        &self,
        Data(state): Data<&AppState>,
        auth: BearerAuth,
    ) -> Result<UserInfoResponse, BearerErrorResponse> {
        userinfo(state, auth).await
    }
}

async fn userinfo(state: &AppState, auth: BearerAuth) -> Result<UserInfoResponse, BearerErrorResponse> {
    let now = crate::now();
    let BearerAuth::UserBearer(UserBearer(bearer)) = auth else {
        return Err(Error::MissingBearer.into());
    };
    let info = oauth::userinfo(state, &bearer.token, now).await?;
    Ok(UserInfoResponse::Ok(
        Json(UserInfoBody {
            sub: info.sub,
            email: info.email,
            email_verified: info.email_verified,
            name: info.name,
        }),
        no_store(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_decoded() {
        assert_eq!(form_decode("a%2Bb+c").as_deref(), Some("a+b c"));
        assert_eq!(form_decode("%FF"), None);
    }

    /// The token answer is written by serde and documented by poem-openapi:
    /// both must give the same JSON, with and without the optional tokens.
    #[test]
    fn the_token_answer_is_what_its_schema_says() {
        use poem_openapi::types::{Example, ToJSON};
        let full = TokenBody::example();
        let bare = TokenBody {
            refresh_token: None,
            id_token: None,
            ..TokenBody::example()
        };
        for body in [full, bare] {
            let written: serde_json::Value = serde_json::to_value(&body).expect("serialisable");
            assert_eq!(Some(written), body.to_json());
        }
    }
}

#[cfg(test)]
mod proptests {
    use crate::domain::Scope;
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    use proptest::prelude::*;
    use secrecy::ExposeSecret;

    use super::*;

    fn code_of(e: &Error) -> Option<OAuthCode> {
        match e {
            Error::OAuth { code, .. } => Some(*code),
            _ => None,
        }
    }

    fn field() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            Just(Some(String::new())),
            "[a-zA-Z0-9@.+ -]{1,40}".prop_map(Some),
            "\\PC{0,40}".prop_map(Some),
            any::<String>().prop_map(Some),
            "[a-z]{0,8}\\x00[a-z]{0,8}".prop_map(Some),
            "x{4090,4100}".prop_map(Some),
        ]
    }

    fn plain(v: &Option<String>) -> bool {
        v.as_deref()
            .is_some_and(|v| !v.is_empty() && v.len() <= MAX_FIELD && !v.contains('\0'))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn basic_credentials_decode_what_a_client_form_encodes(text in any::<String>(), plus in any::<bool>()) {
            let encoded = utf8_percent_encode(&text, NON_ALPHANUMERIC).to_string();
            let encoded = if plus { encoded.replace("%20", "+") } else { encoded };
            prop_assert_eq!(form_decode(&encoded), Some(text));
        }

        #[test]
        fn form_decoding_never_panics(text in prop_oneof![any::<String>(), "[%0-9A-Fa-f+]{0,40}"]) {
            if let Some(decoded) = form_decode(&text) {
                prop_assert!(decoded.len() <= text.len());
            }
        }

        #[test]
        fn token_requests_parse_into_exactly_one_grant_or_an_rfc_6749_error(
            grant_type in prop_oneof![
                Just("password".to_owned()),
                Just("refresh_token".to_owned()),
                Just("client_credentials".to_owned()),
                Just("authorization_code".to_owned()),
                "\\PC{0,20}",
            ],
            username in field(),
            password in field(),
            refresh_token in field(),
            scope in prop_oneof![
                Just(None),
                Just(Some(String::new())),
                Just(Some("openid email".to_owned())),
                "[\\x21-\\x7E ]{0,30}".prop_map(Some),
                any::<String>().prop_map(Some),
            ],
        ) {
            let mut form = TokenForm {
                grant_type: grant_type.clone(),
                username: username.clone(),
                password: password.clone(),
                refresh_token: refresh_token.clone(),
                scope: scope.clone(),
                client_id: None,
                client_secret: None,
                code: refresh_token.clone(),
                redirect_uri: None,
                code_verifier: None,
            };
            let scope_ok = scope.as_deref().is_none_or(|s| !s.contains('\0') && Scope::parse(s).is_ok());
            match parse_token_request(&mut form) {
                Ok(TokenRequest::Password { username: u, password: p, scope: s }) => {
                    prop_assert_eq!(grant_type.as_str(), "password");
                    prop_assert!(plain(&username) && plain(&password) && scope_ok);
                    prop_assert_eq!(Some(u), username);
                    prop_assert_eq!(Some(p.expose_secret().to_owned()), password);
                    prop_assert_eq!(s.is_none(), scope.as_deref().is_none_or(|t| t.trim_matches(' ').is_empty()));
                }
                Ok(TokenRequest::RefreshToken { refresh_token: r, .. }) => {
                    prop_assert_eq!(grant_type.as_str(), "refresh_token");
                    prop_assert!(plain(&refresh_token) && scope_ok);
                    prop_assert_eq!(Some(r.expose_secret().to_owned()), refresh_token);
                }
                Ok(TokenRequest::ClientCredentials { .. }) => {
                    prop_assert_eq!(grant_type.as_str(), "client_credentials");
                    prop_assert!(scope_ok);
                }
                Ok(TokenRequest::AuthorizationCode { code: c, .. }) => {
                    prop_assert_eq!(grant_type.as_str(), "authorization_code");
                    prop_assert!(plain(&refresh_token) && scope_ok);
                    prop_assert_eq!(Some(c.expose_secret().to_owned()), refresh_token);
                }
                Err(e) => {
                    let code = code_of(&e);
                    if GrantType::parse(&grant_type).is_none() {
                        prop_assert_eq!(code, Some(OAuthCode::UnsupportedGrantType));
                    } else if !scope_ok {
                        prop_assert!(matches!(code, Some(OAuthCode::InvalidScope | OAuthCode::InvalidRequest)));
                    } else {
                        prop_assert_eq!(code, Some(OAuthCode::InvalidRequest));
                        let fields_ok = match grant_type.as_str() {
                            "password" => plain(&username) && plain(&password),
                            "refresh_token" | "authorization_code" => plain(&refresh_token),
                            _ => true,
                        };
                        prop_assert!(!fields_ok);
                    }
                }
            }
        }
    }
}
