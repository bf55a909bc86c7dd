//! The OAuth 2.0 / OIDC flows: client authentication, the token grants,
//! revocation, introspection and userinfo. Nothing here sees HTTP: the
//! handlers in [`crate::http`] parse requests into these types.

pub mod authorize;
mod client_auth;
mod introspect;
mod login;
mod revoke;
pub(crate) mod token;
mod userinfo;

pub use client_auth::{ClientCredentials, SecretFailureBudget, authenticate_client};
pub use introspect::{Introspection, introspect};
pub use login::{LoginRefusal, LoginSuccess, LoginWaits, verify_login};
pub use revoke::revoke;
pub use token::{
    EMAIL_NOT_VERIFIED, TokenGrant, TokenRequest, cookie_session_login, cookie_session_refresh,
    end_cookie_session, exchange,
};
pub use userinfo::{UserInfo, check_access_token, userinfo};

use crate::domain::Scope;

/// The OIDC scopes every client that acts for users may ask for (SPEC §10).
pub const OIDC_SCOPES: [&str; 3] = ["openid", "profile", "email"];

/// Refuses text holding U+0000 before it reaches the database (SPEC §10).
pub fn has_nul(text: &str) -> bool {
    text.contains('\0')
}

/// Parses a requested `scope`; absent or empty means "the default".
pub fn parse_requested_scope(scope: Option<&str>) -> Result<Option<Scope>, crate::error::Error> {
    match scope {
        None => Ok(None),
        Some(text) => {
            let scope = Scope::parse(text)
                .map_err(|e| crate::error::Error::oauth_with(crate::error::OAuthCode::InvalidScope, e))?;
            Ok((!scope.is_empty()).then_some(scope))
        }
    }
}
