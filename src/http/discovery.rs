//! Discovery documents (OIDC Discovery 1.0 §3, RFC 8414) and the JWKS (RFC 7517).

use poem::web::Data;
use poem_openapi::param::Header;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::{ApiTag, RawJson};
use crate::app::AppState;

pub struct DiscoveryApi;

/// Provider metadata: every field OIDC Discovery 1.0 §3 and RFC 8414 §2 require.
#[derive(Debug, Clone, Object, serde::Serialize)]
#[oai(example)]
pub struct ProviderMetadata {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    pub userinfo_endpoint: String,
    pub revocation_endpoint: String,
    pub introspection_endpoint: String,
    /// OIDC RP-Initiated Logout 1.0 §2.1.
    pub end_session_endpoint: String,
    pub service_documentation: String,
    pub grant_types_supported: Vec<String>,
    pub response_types_supported: Vec<String>,
    pub response_modes_supported: Vec<String>,
    /// RFC 7636: S256 only.
    pub code_challenge_methods_supported: Vec<String>,
    /// RFC 9207: `iss` is in every authorization response.
    pub authorization_response_iss_parameter_supported: bool,
    pub prompt_values_supported: Vec<String>,
    pub subject_types_supported: Vec<String>,
    pub id_token_signing_alg_values_supported: Vec<String>,
    pub token_endpoint_auth_methods_supported: Vec<String>,
    pub revocation_endpoint_auth_methods_supported: Vec<String>,
    pub introspection_endpoint_auth_methods_supported: Vec<String>,
    pub scopes_supported: Vec<String>,
    pub claims_supported: Vec<String>,
}

impl ProviderMetadata {
    pub fn new(issuer: &str) -> ProviderMetadata {
        let strings = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        ProviderMetadata {
            issuer: issuer.to_owned(),
            authorization_endpoint: format!("{issuer}/oauth2/authorize"),
            token_endpoint: format!("{issuer}/oauth2/token"),
            jwks_uri: format!("{issuer}/.well-known/jwks.json"),
            userinfo_endpoint: format!("{issuer}/oauth2/userinfo"),
            revocation_endpoint: format!("{issuer}/oauth2/revoke"),
            introspection_endpoint: format!("{issuer}/oauth2/introspect"),
            end_session_endpoint: format!("{issuer}/logout"),
            service_documentation: format!("{issuer}/docs"),
            grant_types_supported: strings(&[
                "authorization_code",
                "password",
                "refresh_token",
                "client_credentials",
            ]),
            response_types_supported: strings(&["code"]),
            response_modes_supported: strings(&["query"]),
            code_challenge_methods_supported: strings(&["S256"]),
            authorization_response_iss_parameter_supported: true,
            prompt_values_supported: strings(&["none", "login", "consent"]),
            subject_types_supported: strings(&["public"]),
            id_token_signing_alg_values_supported: strings(&["RS256"]),
            token_endpoint_auth_methods_supported: strings(&[
                "client_secret_basic",
                "client_secret_post",
                "none",
            ]),
            revocation_endpoint_auth_methods_supported: strings(&[
                "client_secret_basic",
                "client_secret_post",
                "none",
            ]),
            introspection_endpoint_auth_methods_supported: strings(&[
                "client_secret_basic",
                "client_secret_post",
            ]),
            scopes_supported: strings(&crate::oauth::OIDC_SCOPES),
            claims_supported: strings(&[
                "sub",
                "iss",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "nonce",
                "sid",
                "email",
                "email_verified",
                "name",
            ]),
        }
    }
}

impl poem_openapi::types::Example for ProviderMetadata {
    fn example() -> Self {
        ProviderMetadata::new("http://127.0.0.1:8080")
    }
}

/// One public key (RFC 7517 §4).
#[derive(Debug, Clone, Object)]
pub struct JsonWebKey {
    pub kty: String,
    #[oai(rename = "use")]
    pub use_: String,
    pub alg: String,
    /// RFC 7638 thumbprint of the key.
    pub kid: String,
    pub n: String,
    pub e: String,
}

/// RFC 7517 §5 key set.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct JsonWebKeySet {
    pub keys: Vec<JsonWebKey>,
}

impl poem_openapi::types::Example for JsonWebKeySet {
    fn example() -> Self {
        JsonWebKeySet {
            keys: vec![JsonWebKey {
                kty: "RSA".into(),
                use_: "sig".into(),
                alg: "RS256".into(),
                kid: "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs".into(),
                n: "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP…".into(),
                e: "AQAB".into(),
            }],
        }
    }
}

#[derive(ApiResponse)]
pub enum DiscoveryResponse {
    /// The provider metadata.
    #[oai(status = 200)]
    Ok(RawJson<ProviderMetadata>, #[oai(header = "Cache-Control")] String),
}

#[derive(ApiResponse)]
pub enum JwksResponse {
    /// The published keys: every key that signs, will sign, or signed a token
    /// that may still be live.
    #[oai(status = 200)]
    Ok(
        RawJson<JsonWebKeySet>,
        #[oai(header = "Cache-Control")] String,
        #[oai(header = "ETag")] String,
    ),
    /// The key set is unchanged since the `ETag` given in `If-None-Match`.
    #[oai(status = 304)]
    NotModified(
        #[oai(header = "Cache-Control")] String,
        #[oai(header = "ETag")] String,
    ),
}

/// RFC 9110 §13.1.2: weak comparison, a list, or `*`.
fn none_match(header: &str, etag: &str) -> bool {
    header
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

#[OpenApi]
impl DiscoveryApi {
    /// OpenID Provider metadata (OIDC Discovery 1.0 §4).
    #[oai(
        path = "/.well-known/openid-configuration",
        method = "get",
        operation_id = "openid_configuration",
        tag = "ApiTag::Discovery"
    )]
    async fn openid_configuration(&self, Data(state): Data<&AppState>) -> DiscoveryResponse {
        DiscoveryResponse::Ok(
            RawJson::new(state.discovery.clone()),
            "public, max-age=3600".into(),
        )
    }

    /// Authorization server metadata (RFC 8414 §3).
    #[oai(
        path = "/.well-known/oauth-authorization-server",
        method = "get",
        operation_id = "oauth_authorization_server",
        tag = "ApiTag::Discovery"
    )]
    async fn oauth_authorization_server(&self, Data(state): Data<&AppState>) -> DiscoveryResponse {
        DiscoveryResponse::Ok(
            RawJson::new(state.discovery.clone()),
            "public, max-age=3600".into(),
        )
    }

    /// The signing keys (RFC 7517), cacheable; `If-None-Match` answers 304.
    #[oai(
        path = "/.well-known/jwks.json",
        method = "get",
        operation_id = "jwks",
        tag = "ApiTag::Discovery"
    )]
    async fn jwks(
        &self,
        Data(state): Data<&AppState>,
        #[oai(name = "If-None-Match")] if_none_match: Header<Option<String>>,
    ) -> JwksResponse {
        let keys = state.keys.current();
        let cache = format!("public, max-age={}", state.settings.jwks_max_age);
        let etag = keys.etag().to_string();
        if if_none_match.0.as_deref().is_some_and(|h| none_match(h, &etag)) {
            return JwksResponse::NotModified(cache, etag);
        }
        JwksResponse::Ok(RawJson::new(keys.jwks().clone()), cache, etag)
    }
}

#[cfg(test)]
mod tests {
    use super::none_match;

    #[test]
    fn if_none_match_uses_weak_comparison() {
        assert!(none_match("\"abc\"", "\"abc\""));
        assert!(none_match("W/\"abc\"", "\"abc\""));
        assert!(none_match("\"x\", \"abc\"", "\"abc\""));
        assert!(none_match("*", "\"abc\""));
        assert!(!none_match("\"abd\"", "\"abc\""));
    }
}
