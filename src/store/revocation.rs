//! Access tokens revoked before they expire (RFC 7009), remembered by `jti`.

use anyhow::Context;
use sqlx::{Any, Executor};

#[tracing::instrument(level = "debug", skip_all)]
pub async fn insert_revoked_access_token<'e>(
    ex: impl Executor<'e, Database = Any>,
    jti: &str,
    expires_at: i64,
) -> anyhow::Result<()> {
    // Revoking twice is not an error (RFC 7009 §2.2).
    sqlx::query(
        "insert into revoked_access_token (jti, expires_at) values ($1, $2) on conflict (jti) do nothing",
    )
    .bind(jti)
    .bind(expires_at)
    .execute(ex)
    .await
    .context("insert revoked access token")?;
    Ok(())
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn is_access_token_revoked<'e>(
    ex: impl Executor<'e, Database = Any>,
    jti: &str,
) -> anyhow::Result<bool> {
    let row: Option<(i64,)> = sqlx::query_as("select 1 from revoked_access_token where jti = $1")
        .bind(jti)
        .fetch_optional(ex)
        .await
        .context("select revoked access token")?;
    Ok(row.is_some())
}
