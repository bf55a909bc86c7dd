//! Checking presented access tokens, and the OIDC userinfo answer.

use crate::app::AppState;
use crate::error::Error;
use crate::store::revocation::is_access_token_revoked;
use crate::store::user::{TokenHolder, UserRow, find_token_holder};
use crate::tokens::jwt::{AccessClaims, verify_access_token};

/// Verifies an access token and checks, in the database, that it was not
/// revoked and that its login, user or client still stands: revocation,
/// logout and disabling take effect at once on every instance.
pub async fn check_access_token(
    state: &AppState,
    token: &str,
    now: i64,
) -> Result<(AccessClaims, Option<UserRow>), Error> {
    let keys = state.keys.current();
    let claims = verify_access_token(token, &keys, &state.issuer, &state.audiences)
        .map_err(|_| Error::invalid_token())?;
    match &claims.sid {
        Some(sid) => {
            let holder = TokenHolder {
                sub: &claims.sub,
                jti: &claims.jti,
                sid,
                client_id: &claims.client_id,
            };
            match find_token_holder(&state.db, &holder, now).await? {
                Some(user) => Ok((claims, Some(user))),
                None => Err(Error::invalid_token()),
            }
        }
        None => {
            if is_access_token_revoked(&state.db, &claims.jti).await? {
                return Err(Error::invalid_token());
            }
            // A client's own token dies with the client.
            if state.clients.find(&state.db, &claims.client_id).await?.is_none() {
                return Err(Error::invalid_token());
            }
            Ok((claims, None))
        }
    }
}

/// OIDC Core §5.3.2 claims, by the scopes granted.
#[derive(Debug, Clone)]
pub struct UserInfo {
    pub sub: String,
    pub email: Option<String>,
    pub email_verified: Option<bool>,
    pub name: Option<String>,
}

pub async fn userinfo(state: &AppState, token: &str, now: i64) -> Result<UserInfo, Error> {
    let (claims, user) = check_access_token(state, token, now).await?;
    if !claims.has_scope("openid") {
        return Err(Error::insufficient_scope("the openid scope is required"));
    }
    let Some(user) = user else {
        return Err(Error::insufficient_scope("a token issued to a user is required"));
    };
    let email = claims.has_scope("email");
    Ok(UserInfo {
        sub: user.id.clone(),
        email: email.then(|| user.email.clone()),
        email_verified: email.then_some(user.email_verified_at.is_some()),
        name: if claims.has_scope("profile") {
            user.name.clone()
        } else {
            None
        },
    })
}
