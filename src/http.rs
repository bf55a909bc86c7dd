//! The HTTP surface, described with poem-openapi: the only module that sees
//! requests. Handlers parse, call a flow, and shape the answer.

pub mod accounts;
pub mod admin;
pub mod body;
pub mod cookies;
pub mod discovery;
pub mod headers;
pub mod idle;
pub mod limits;
pub mod oauth2;
pub mod ops;
pub mod pages;
mod raw_json;
pub mod session;
pub mod signin;

pub use raw_json::RawJson;

use poem_openapi::Tags;

#[derive(Tags)]
pub enum ApiTag {
    /// OAuth 2.0 endpoints (RFC 6749, 7009, 7662) and OIDC userinfo.
    OAuth2,
    /// Discovery documents and the key set (RFC 8414, OIDC Discovery, RFC 7517).
    Discovery,
    /// Registration, e-mail verification, password reset, the user's own account.
    Accounts,
    /// Cookie sessions for first-party web apps (SPEC §11).
    Session,
    /// Administration: users, clients, keys (role `admin`).
    Admin,
    /// Health and readiness.
    Operations,
}

/// The user behind a Bearer access token: checked, live, not disabled.
pub async fn signed_in_user(
    state: &crate::app::AppState,
    auth: oauth2::BearerAuth,
) -> Result<(crate::tokens::jwt::AccessClaims, crate::store::user::UserRow), crate::error::Error> {
    let oauth2::BearerAuth::UserBearer(oauth2::UserBearer(bearer)) = auth else {
        return Err(crate::error::Error::MissingBearer);
    };
    let (claims, user) = crate::oauth::check_access_token(state, &bearer.token, crate::now()).await?;
    let user = user.ok_or_else(crate::error::Error::invalid_token)?;
    Ok((claims, user))
}

/// [`signed_in_user`], who must have the role `admin`.
pub async fn signed_in_admin(
    state: &crate::app::AppState,
    auth: oauth2::BearerAuth,
) -> Result<crate::store::user::UserRow, crate::error::Error> {
    let (_, user) = signed_in_user(state, auth).await?;
    if user.roles().iter().any(|r| r == "admin") {
        Ok(user)
    } else {
        tracing::warn!(event = "admin_refused", user_id = %user.id, "not an admin");
        Err(crate::error::Error::forbidden(
            "forbidden",
            "This needs the admin role",
        ))
    }
}
