//! Single-use tokens mailed to users: e-mail verification and password reset.

use anyhow::Context;
use sqlx::{Any, Executor};

use crate::tokens::TokenDigest;

/// What a mailed token is for; stored as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    VerifyEmail,
    ResetPassword,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::VerifyEmail => "verify_email",
            Purpose::ResetPassword => "reset_password",
        }
    }
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn insert_account_token<'e>(
    ex: impl Executor<'e, Database = Any>,
    digest: &TokenDigest,
    user_id: &str,
    purpose: Purpose,
    now: i64,
    expires_at: i64,
) -> anyhow::Result<()> {
    sqlx::query(
        "insert into account_token (digest, user_id, purpose, created_at, expires_at) values ($1, $2, $3, $4, $5)",
    )
    .bind(digest.as_bytes().to_vec())
    .bind(user_id)
    .bind(purpose.as_str())
    .bind(now)
    .bind(expires_at)
    .execute(ex)
    .await
    .context("insert account token")?;
    Ok(())
}

/// Uses a live token once; returns its user, or `None` if unknown, used or expired.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn consume_account_token<'e>(
    ex: impl Executor<'e, Database = Any>,
    digest: &TokenDigest,
    purpose: Purpose,
    now: i64,
) -> anyhow::Result<Option<String>> {
    let row: Option<(String,)> = sqlx::query_as(
        "update account_token set used_at = $1 where digest = $2 and purpose = $3 \
         and used_at is null and expires_at > $1 returning user_id",
    )
    .bind(now)
    .bind(digest.as_bytes().to_vec())
    .bind(purpose.as_str())
    .fetch_optional(ex)
    .await
    .context("consume account token")?;
    Ok(row.map(|(id,)| id))
}

/// Ends every outstanding token of a user for one purpose.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn expire_account_tokens<'e>(
    ex: impl Executor<'e, Database = Any>,
    user_id: &str,
    purpose: Purpose,
    now: i64,
) -> anyhow::Result<()> {
    sqlx::query(
        "update account_token set used_at = $1 where user_id = $2 and purpose = $3 and used_at is null",
    )
    .bind(now)
    .bind(user_id)
    .bind(purpose.as_str())
    .execute(ex)
    .await
    .context("expire account tokens")?;
    Ok(())
}

/// The user of a live token, without using it.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn find_live_account_token<'e>(
    ex: impl Executor<'e, Database = Any>,
    digest: &TokenDigest,
    purpose: Purpose,
    now: i64,
) -> anyhow::Result<Option<String>> {
    let row: Option<(String,)> = sqlx::query_as(
        "select user_id from account_token where digest = $1 and purpose = $2 \
         and used_at is null and expires_at > $3",
    )
    .bind(digest.as_bytes().to_vec())
    .bind(purpose.as_str())
    .bind(now)
    .fetch_optional(ex)
    .await
    .context("select account token")?;
    Ok(row.map(|(id,)| id))
}
