//! Signing-key state: when each key was made, signs from and was retired.

use anyhow::Context;
use sqlx::{Any, Executor, FromRow};

#[derive(Debug, Clone, FromRow)]
pub struct KeyRow {
    pub kid: String,
    pub created_at: i64,
    pub signs_from: i64,
    pub retired_at: Option<i64>,
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn list_keys<'e>(ex: impl Executor<'e, Database = Any>) -> anyhow::Result<Vec<KeyRow>> {
    sqlx::query_as("select kid, created_at, signs_from, retired_at from signing_key order by signs_from, kid")
        .fetch_all(ex)
        .await
        .context("select signing keys")
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn insert_key<'e>(ex: impl Executor<'e, Database = Any>, row: &KeyRow) -> anyhow::Result<()> {
    sqlx::query(
        "insert into signing_key (kid, created_at, signs_from, retired_at) values ($1, $2, $3, $4) \
         on conflict (kid) do nothing",
    )
    .bind(&row.kid)
    .bind(row.created_at)
    .bind(row.signs_from)
    .bind(row.retired_at)
    .execute(ex)
    .await
    .context("insert signing key")?;
    Ok(())
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn retire_key<'e>(
    ex: impl Executor<'e, Database = Any>,
    kid: &str,
    now: i64,
) -> anyhow::Result<bool> {
    let done = sqlx::query("update signing_key set retired_at = $1 where kid = $2 and retired_at is null")
        .bind(now)
        .bind(kid)
        .execute(ex)
        .await
        .context("retire signing key")?;
    Ok(done.rows_affected() == 1)
}
