//! JWTs: RFC 9068 access tokens and OIDC id_tokens, signed RS256 with a
//! key parsed once, checked with no clock leeway.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, Validation};
use serde::{Deserialize, Serialize};

use crate::keys::{KeySet, SigningKey};

/// `aud`: one string or several (RFC 7519 §4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn from_list(list: &[String]) -> Audience {
        match list {
            [one] => Audience::One(one.clone()),
            many => Audience::Many(many.to_vec()),
        }
    }
}

/// RFC 9068 §2.2 access-token claims.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: Audience,
    pub client_id: String,
    pub scope: String,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
    /// The login session, for tokens issued to a user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
}

impl AccessClaims {
    pub fn has_scope(&self, wanted: &str) -> bool {
        self.scope.split(' ').any(|s| s == wanted)
    }
}

/// OIDC Core §2 id_token claims.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub auth_time: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `typ` of access tokens (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";
/// `typ` of id_tokens.
pub const ID_TOKEN_TYP: &str = "JWT";

#[derive(Serialize)]
struct Header<'a> {
    alg: &'static str,
    typ: &'a str,
    kid: &'a str,
}

/// Signs `claims` as a compact JWS with `RS256`.
pub fn encode(key: &SigningKey, typ: &str, claims: &impl Serialize) -> anyhow::Result<String> {
    let header = serde_json::to_vec(&Header {
        alg: "RS256",
        typ,
        kid: &key.kid,
    })?;
    let claims = serde_json::to_vec(claims)?;
    let mut out = String::with_capacity(64 + claims.len() * 4 / 3 + 344);
    URL_SAFE_NO_PAD.encode_string(header, &mut out);
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(claims, &mut out);
    let signature = key.sign(out.as_bytes())?;
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut out);
    Ok(out)
}

/// Why a presented token was refused; all of them are `invalid_token` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("not a JWT")]
    Malformed,
    #[error("header not acceptable")]
    Header,
    #[error("signed by an unknown key")]
    UnknownKey,
    #[error("signature, claims or lifetime not acceptable")]
    Claims,
}

/// Checks an access token we issued: RS256 only, `typ: at+jwt`, a published
/// `kid`, no key-locating headers (`jku`, `x5u`, `jwk`, `x5c`), our `iss`,
/// one of our audiences, not expired, not before its time. No leeway.
pub fn verify_access_token(
    token: &str,
    keys: &KeySet,
    issuer: &str,
    audiences: &[String],
) -> Result<AccessClaims, Rejection> {
    if token.len() > 8192 || token.split('.').count() != 3 {
        return Err(Rejection::Malformed);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::Malformed)?;
    let typ_ok = header.typ.as_deref().is_some_and(|t| {
        t.eq_ignore_ascii_case(ACCESS_TOKEN_TYP) || t.eq_ignore_ascii_case("application/at+jwt")
    });
    if header.alg != Algorithm::RS256
        || !typ_ok
        || header.jku.is_some()
        || header.x5u.is_some()
        || header.jwk.is_some()
        || header.x5c.is_some()
        || header.crit.is_some()
    {
        return Err(Rejection::Header);
    }
    let kid = header.kid.as_deref().ok_or(Rejection::Header)?;
    let key = keys.verifier(kid).ok_or(Rejection::UnknownKey)?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.leeway = 0;
    validation.validate_nbf = true;
    validation.set_issuer(&[issuer]);
    validation.set_audience(audiences);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<AccessClaims>(token, &key.decoding, &validation)
        .map(|data| data.claims)
        .map_err(|_| Rejection::Claims)
}
