//! Registration, e-mail verification and its resend.

use crate::app::AppState;
use crate::error::{Error, FieldProblem};
use crate::mail::{enqueue, templates};
use crate::store::account_token::{
    Purpose, consume_account_token, expire_account_tokens, insert_account_token,
};
use crate::store::user::{UserRow, find_user_by_email, insert_user, mark_email_verified};
use crate::tokens::{OpaqueToken, TokenDigest, TokenKind};

use super::{VERIFY_TTL, check_new_password, email_field, plain_text, public_url, token_invalid};

/// Registers an account, or, when the address already has one, mails its
/// owner a notice instead. The caller's answer is the same either way.
#[tracing::instrument(skip_all)]
pub async fn register(
    state: &AppState,
    email: Option<String>,
    password: Option<String>,
    name: Option<String>,
    now: i64,
) -> Result<(), Error> {
    let mut problems = Vec::new();
    let email = email_field(email.as_deref()).map_err(|p| problems.push(p)).ok();
    let password = match password.as_deref() {
        None => {
            problems.push(FieldProblem::new("password", "required", "is required"));
            None
        }
        Some(text) => check_new_password(state, "password", text)
            .map_err(|p| problems.push(p))
            .ok(),
    };
    let name = name.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty());
    if let Some(name) = &name
        && let Err(p) = plain_text("name", name, 200)
    {
        problems.push(p);
    }
    let (Some(email), Some(password), true) = (email, password, problems.is_empty()) else {
        return Err(Error::validation(problems));
    };
    // Hash whether or not the address is taken: both answers take as long.
    let hash = state.hasher.hash(password.into_secret()).await?;
    let mut tx = state.db.begin_write().await?;
    match find_user_by_email(tx.conn(), email.lower()).await? {
        Some(existing) => {
            let link = format!("{}/reset-password", public_url(state));
            let letter = templates::already_registered(&link);
            enqueue(
                tx.conn(),
                &existing.email,
                Some(&existing.id),
                &letter,
                now,
                now + VERIFY_TTL,
            )
            .await?;
        }
        None => {
            let user = UserRow {
                id: uuid::Uuid::new_v4().to_string(),
                email: email.as_str().to_owned(),
                email_lower: email.lower().to_owned(),
                password_hash: hash,
                name,
                roles: String::new(),
                email_verified_at: None,
                disabled_at: None,
                created_at: now,
            };
            if !insert_user(tx.conn(), &user).await? {
                // A concurrent registration of the same address won; it mails.
                return Ok(());
            }
            queue_verification(state, &mut tx, &user, now).await?;
            tracing::info!(event = "account_registered", user_id = %user.id, "account registered");
        }
    }
    tx.commit().await?;
    state.mail_wakeup.notify_one();
    Ok(())
}

async fn queue_verification(
    state: &AppState,
    tx: &mut crate::store::WriteTx,
    user: &UserRow,
    now: i64,
) -> anyhow::Result<()> {
    let token = OpaqueToken::generate(TokenKind::VerifyEmail);
    insert_account_token(
        tx.conn(),
        &token.digest(),
        &user.id,
        Purpose::VerifyEmail,
        now,
        now + VERIFY_TTL,
    )
    .await?;
    let link = format!("{}/verify-email?token={}", public_url(state), token.expose());
    let letter = templates::verify_email(&link);
    enqueue(
        tx.conn(),
        &user.email,
        Some(&user.id),
        &letter,
        now,
        now + VERIFY_TTL,
    )
    .await
}

/// Marks the address verified; the token works once, for 24 hours.
#[tracing::instrument(skip_all)]
pub async fn verify_email(state: &AppState, token: &str, now: i64) -> Result<(), Error> {
    if !token.starts_with(TokenKind::VerifyEmail.prefix()) || token.len() > 256 {
        return Err(token_invalid());
    }
    let mut tx = state.db.begin_write().await?;
    let Some(user_id) =
        consume_account_token(tx.conn(), &TokenDigest::of(token), Purpose::VerifyEmail, now).await?
    else {
        return Err(token_invalid());
    };
    mark_email_verified(tx.conn(), &user_id, now).await?;
    expire_account_tokens(tx.conn(), &user_id, Purpose::VerifyEmail, now).await?;
    tx.commit().await?;
    tracing::info!(event = "email_verified", %user_id, "e-mail address verified");
    Ok(())
}

/// Mails a new verification link when the address has an unverified
/// account; says nothing either way.
#[tracing::instrument(skip_all)]
pub async fn resend_verification(state: &AppState, email: Option<String>, now: i64) -> Result<(), Error> {
    let email = email_field(email.as_deref()).map_err(|p| Error::validation(vec![p]))?;
    let mut tx = state.db.begin_write().await?;
    if let Some(user) = find_user_by_email(tx.conn(), email.lower()).await?
        && user.email_verified_at.is_none()
        && user.is_active()
    {
        queue_verification(state, &mut tx, &user, now).await?;
    }
    tx.commit().await?;
    state.mail_wakeup.notify_one();
    Ok(())
}
