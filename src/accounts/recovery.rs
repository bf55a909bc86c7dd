//! Password reset by a mailed link.

use crate::app::AppState;
use crate::error::{Error, FieldProblem};
use crate::mail::{enqueue, templates};
use crate::store::account_token::{
    Purpose, consume_account_token, expire_account_tokens, find_live_account_token, insert_account_token,
};
use crate::store::session::revoke_user_sessions;
use crate::store::user::{find_user_by_email, mark_email_verified, update_user_password_hash};
use crate::tokens::{OpaqueToken, TokenDigest, TokenKind};

use super::{RESET_TTL, check_new_password, email_field, public_url, token_invalid};

/// Mails a reset link when the address has an account; says nothing either way.
#[tracing::instrument(skip_all)]
pub async fn request_password_reset(state: &AppState, email: Option<String>, now: i64) -> Result<(), Error> {
    let email = email_field(email.as_deref()).map_err(|p| Error::validation(vec![p]))?;
    let mut tx = state.db.begin_write().await?;
    if let Some(user) = find_user_by_email(tx.conn(), email.lower()).await?
        && user.is_active()
    {
        let token = OpaqueToken::generate(TokenKind::PasswordReset);
        insert_account_token(
            tx.conn(),
            &token.digest(),
            &user.id,
            Purpose::ResetPassword,
            now,
            now + RESET_TTL,
        )
        .await?;
        let link = format!("{}/reset-password?token={}", public_url(state), token.expose());
        let letter = templates::password_reset(&link);
        enqueue(
            tx.conn(),
            &user.email,
            Some(&user.id),
            &letter,
            now,
            now + RESET_TTL,
        )
        .await?;
    }
    tx.commit().await?;
    state.mail_wakeup.notify_one();
    Ok(())
}

/// Sets a new password with a reset token (single use, one hour) and ends
/// every session of the user. The mailbox is proven, so the address counts
/// as verified.
#[tracing::instrument(skip_all)]
pub async fn confirm_password_reset(
    state: &AppState,
    token: Option<String>,
    new_password: Option<String>,
    now: i64,
) -> Result<(), Error> {
    let mut problems = Vec::new();
    if token.is_none() {
        problems.push(FieldProblem::new("token", "required", "is required"));
    }
    let password = match new_password.as_deref() {
        None => {
            problems.push(FieldProblem::new("new_password", "required", "is required"));
            None
        }
        Some(text) => check_new_password(state, "new_password", text)
            .map_err(|p| problems.push(p))
            .ok(),
    };
    let (Some(token), Some(password), true) = (token, password, problems.is_empty()) else {
        return Err(Error::validation(problems));
    };
    if !token.starts_with(TokenKind::PasswordReset.prefix()) || token.len() > 256 {
        return Err(token_invalid());
    }
    // Check the token before paying for argon2: a made-up token costs nothing.
    let digest = TokenDigest::of(&token);
    if find_live_account_token(state.db.pool(), &digest, Purpose::ResetPassword, now)
        .await?
        .is_none()
    {
        return Err(token_invalid());
    }
    let hash = state.hasher.hash(password.into_secret()).await?;
    let mut tx = state.db.begin_write().await?;
    let Some(user_id) = consume_account_token(tx.conn(), &digest, Purpose::ResetPassword, now).await? else {
        return Err(token_invalid());
    };
    update_user_password_hash(tx.conn(), &user_id, &hash).await?;
    expire_account_tokens(tx.conn(), &user_id, Purpose::ResetPassword, now).await?;
    mark_email_verified(tx.conn(), &user_id, now).await?;
    let ended = revoke_user_sessions(tx.conn(), &user_id, now).await?;
    tx.commit().await?;
    tracing::info!(event = "password_reset", %user_id, sessions_ended = ended, "password reset");
    Ok(())
}
