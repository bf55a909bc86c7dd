//! Token introspection (RFC 7662), for confidential clients.

use crate::app::AppState;
use crate::error::{Error, OAuthCode};
use crate::store::client::Client;
use crate::store::session::{RefreshGrantRow, find_refresh_grant};
use crate::tokens::jwt::Audience;
use crate::tokens::{TokenDigest, TokenKind};

/// An introspection answer; `None` fields are left out. Inactive is exactly
/// `{"active": false}`.
#[derive(Debug, Default)]
pub struct Introspection {
    pub active: bool,
    pub sub: Option<String>,
    pub client_id: Option<String>,
    pub scope: Option<String>,
    pub exp: Option<i64>,
    pub iat: Option<i64>,
    pub iss: Option<String>,
    pub aud: Option<Audience>,
    pub username: Option<String>,
    pub token_type: Option<String>,
}

impl Introspection {
    fn inactive() -> Introspection {
        Introspection::default()
    }
}

/// SPEC §10: any confidential client may introspect any access token; a
/// refresh token only by the client it was issued to.
#[tracing::instrument(skip_all, fields(client_id = %client.id))]
pub async fn introspect(
    state: &AppState,
    client: &Client,
    token: &str,
    now: i64,
) -> Result<Introspection, Error> {
    if client.is_public() {
        return Err(Error::oauth_with(
            OAuthCode::InvalidClient,
            "introspection is for confidential clients",
        ));
    }
    if token.starts_with(TokenKind::RefreshToken.prefix()) {
        // The token, its login and its user in one query, as the refresh grant reads them.
        let found = find_refresh_grant(&state.db, &TokenDigest::of(token)).await?;
        let Some(RefreshGrantRow { token: row, user }) = found else {
            return Ok(Introspection::inactive());
        };
        if row.client_id != client.id || !row.is_live(now) || !user.is_active() {
            return Ok(Introspection::inactive());
        }
        return Ok(Introspection {
            active: true,
            sub: Some(user.id),
            client_id: Some(row.client_id),
            scope: Some(row.scope),
            exp: Some(row.expires_at.min(row.session_expires_at)),
            iat: Some(row.issued_at),
            iss: Some(state.issuer.clone()),
            aud: None,
            username: Some(user.email),
            token_type: None,
        });
    }
    match super::check_access_token(state, token, now).await {
        Ok((claims, user)) => Ok(Introspection {
            active: true,
            sub: Some(claims.sub),
            client_id: Some(claims.client_id),
            scope: Some(claims.scope),
            exp: Some(claims.exp),
            iat: Some(claims.iat),
            iss: Some(claims.iss),
            aud: Some(claims.aud),
            username: user.map(|u| u.email),
            token_type: Some("Bearer".into()),
        }),
        Err(Error::Internal(e)) => Err(Error::Internal(e)),
        Err(_) => Ok(Introspection::inactive()),
    }
}
