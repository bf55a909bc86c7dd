//! Token revocation (RFC 7009).

use crate::app::AppState;
use crate::error::Error;
use crate::store::client::Client;
use crate::store::revocation::insert_revoked_access_token;
use crate::store::session::{find_refresh_token, revoke_session};
use crate::tokens::jwt::verify_access_token;
use crate::tokens::{TokenDigest, TokenKind};

/// Revokes a refresh token (ending its chain) or an access token. Unknown,
/// invalid or foreign tokens are ignored: the answer is 200 either way
/// (RFC 7009 §2.2), so nothing is learnt from it.
#[tracing::instrument(skip_all, fields(client_id = %client.id))]
pub async fn revoke(state: &AppState, client: &Client, token: &str, now: i64) -> Result<(), Error> {
    if token.starts_with(TokenKind::RefreshToken.prefix()) {
        let digest = TokenDigest::of(token);
        if let Some(row) = find_refresh_token(state.db.pool(), &digest).await?
            && row.client_id == client.id
        {
            let mut tx = state.db.begin_write().await?;
            revoke_session(tx.conn(), &row.session_id, now).await?;
            tx.commit().await?;
            tracing::info!(event = "refresh_token_revoked", sid = %row.session_id, "chain ended");
        }
        return Ok(());
    }
    let keys = state.keys.current();
    if let Ok(claims) = verify_access_token(token, &keys, &state.issuer, &state.audiences)
        && claims.client_id == client.id
    {
        let mut tx = state.db.begin_write().await?;
        insert_revoked_access_token(tx.conn(), &claims.jti, claims.exp).await?;
        tx.commit().await?;
        tracing::info!(event = "access_token_revoked", "access token revoked");
    }
    Ok(())
}
