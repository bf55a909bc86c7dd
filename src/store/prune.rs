//! Bounded storage: rows that can no longer matter are deleted in batches,
//! so the database does not grow without end. (Mail is pruned by the mail
//! sender, see `crate::mail`.)

use anyhow::Context;

use super::Db;

/// Rows deleted per statement; each batch is its own short transaction.
pub const BATCH: i64 = 500;

/// Each pruning statement deletes at most `$2` rows matching it at `$1`.
const STATEMENTS: [(&str, &str); 7] = [
    (
        // Kept a day past expiry, so that a replayed code is recognised
        // (and what it issued revoked) rather than merely unknown.
        "authorization codes",
        "delete from authorization_code where digest in (select digest from authorization_code \
         where expires_at <= $1 - 86400 limit $2)",
    ),
    (
        // Deleting one deletes the refresh chains started through it.
        "browser sessions",
        "delete from browser_session where id in (select id from browser_session \
         where expires_at <= $1 or ended_at <= $1 - 86400 limit $2)",
    ),
    (
        "login sessions",
        // Revoked logins are kept a day for the record; deleting a login
        // deletes its refresh tokens.
        "delete from login_session where id in (select id from login_session \
         where expires_at <= $1 or revoked_at <= $1 - 86400 limit $2)",
    ),
    (
        "refresh tokens",
        "delete from refresh_token where digest in (select digest from refresh_token \
         where expires_at <= $1 limit $2)",
    ),
    (
        "account tokens",
        "delete from account_token where digest in (select digest from account_token \
         where used_at is not null or expires_at <= $1 limit $2)",
    ),
    (
        // Counts forgotten anyway (login_attempt::FORGET_AFTER, a day), so
        // guessing made-up usernames does not grow the table without end.
        "login attempts",
        "delete from login_attempt where username_digest in (select username_digest from login_attempt \
         where last_attempt_at < $1 - 86400 and blocked_until <= $1 limit $2)",
    ),
    (
        "revoked access tokens",
        "delete from revoked_access_token where jti in (select jti from revoked_access_token \
         where expires_at <= $1 limit $2)",
    ),
];

/// Deletes everything prunable at `now`; returns how many rows went.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn prune(db: &Db, now: i64) -> anyhow::Result<u64> {
    let mut total = 0;
    for (what, sql) in STATEMENTS {
        loop {
            let mut tx = db.begin_write().await?;
            let done = sqlx::query(sql)
                .bind(now)
                .bind(BATCH)
                .execute(tx.conn())
                .await
                .with_context(|| format!("pruning {what}"))?
                .rows_affected();
            tx.commit().await?;
            total += done;
            if done < BATCH as u64 {
                break;
            }
            // Let other writers in between batches.
            tokio::task::yield_now().await;
        }
    }
    Ok(total)
}
