//! Access tokens revoked before they expire (RFC 7009), remembered by `jti`.

use anyhow::Context;
use sqlx::{Any, Executor};

use crate::store::batch::{self, Batch};
use crate::store::{Db, LaneQuery};

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
    if let Some(batch) = db.revoked_jtis()
        && let Some(found) = batch.ask(jti.to_owned()).await
    {
        return found;
    }
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

/// [`is_access_token_revoked`] for many `jti`s in one statement (PostgreSQL).
pub struct RevokedJtis;

impl Batch for RevokedJtis {
    type Key = String;
    type Answer = bool;
    const WHAT: &'static str = "select revoked access tokens";

    fn statement(len: usize) -> (&'static str, usize) {
        static SQL: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
            batch::statements(|n| {
                format!(
                    "select k.i from (values {}) as k (i, jti) \
                     where exists (select 1 from revoked_access_token r where r.jti = k.jti)",
                    batch::values(n, &["bigint", "text"])
                )
            })
        });
        batch::statement(&SQL, len)
    }

    fn run<'c>(conn: &'c mut sqlx::AnyConnection, keys: &'c [String]) -> LaneQuery<'c, Vec<bool>> {
        Box::pin(async move {
            let (sql, size) = Self::statement(keys.len());
            let mut query = sqlx::query(sql);
            for (i, jti) in keys.iter().enumerate() {
                query = query.bind(i as i64).bind(jti.as_str());
            }
            for _ in keys.len()..size {
                query = query.bind(-1i64).bind("");
            }
            let rows = query.fetch_all(conn).await?;
            let found = batch::by_index(&rows, keys.len(), |_| Ok(()))?;
            Ok(found.iter().map(Option::is_some).collect())
        })
    }
}
