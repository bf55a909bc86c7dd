//! Access tokens revoked before they expire (RFC 7009), remembered by `jti`.

use anyhow::Context;
use sqlx::{Any, Executor};

use crate::store::Db;

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

/// On this thread on SQLite ([`Db::reader`]), else on a lane.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn is_access_token_revoked(db: &Db, jti: &str) -> anyhow::Result<bool> {
    const SQL: &str = "select 1 from revoked_access_token where jti = $1";
    db.hot_read(
        "select revoked access token",
        |c| c.prepare_cached(SQL)?.exists(rusqlite::named_params! {"$1": jti}),
        |conn| {
            let query = sqlx::query_as::<_, (i64,)>(SQL)
                .bind(jti.to_owned())
                .fetch_optional(conn);
            Box::pin(async move { Ok(query.await?.is_some()) })
        },
    )
    .await
}
