//! Login sessions (`sid`) and their refresh-token chains.

use anyhow::Context;
use rusqlite::OptionalExtension;
use sqlx::{Any, Executor, FromRow};

use crate::store::batch::{self, Batch};
use crate::store::login_attempt::{CLEAR_LOGIN_ATTEMPTS, clear_login_attempts};
use crate::store::rotation::Rotation;
use crate::store::user::UserRow;
use crate::store::{Backend, Db, LaneQuery};
use crate::tokens::TokenDigest;

#[derive(Debug, Clone)]
pub struct NewSession<'a> {
    pub id: &'a str,
    pub user_id: &'a str,
    pub client_id: &'a str,
    pub scope: &'a str,
    pub auth_time: i64,
    pub expires_at: i64,
    /// Set for a chain started by an authorization code: its browser session.
    pub browser_session_id: Option<&'a str>,
}

/// A new login's first refresh token: its digest and when it expires. It is
/// issued at the login's `auth_time`.
pub struct FirstRefresh {
    pub digest: TokenDigest,
    pub expires_at: i64,
}

/// A password login that passed: clears the username's failed attempts
/// (`attempt`, its digest), starts the login and its refresh chain, all or
/// nothing. False if its user or client no longer exists.
///
/// PostgreSQL: one statement, where a transaction of three statements was
/// five round trips (logins 101, 105, 104 -> 107, 106, 105 per s in
/// back-to-back pairs); SQLite: one transaction, on this thread on a file
/// (`Db::direct_write`), else on a lane.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn start_password_login(
    db: &Db,
    attempt: &TokenDigest,
    session: &NewSession<'_>,
    refresh: Option<FirstRefresh>,
) -> anyhow::Result<bool> {
    match db.backend() {
        Backend::Sqlite => start_on_sqlite(db, attempt, session, refresh).await,
        Backend::Postgres => start_on_postgres(db, attempt, session, refresh).await,
    }
}

async fn start_on_sqlite(
    db: &Db,
    attempt: &TokenDigest,
    session: &NewSession<'_>,
    refresh: Option<FirstRefresh>,
) -> anyhow::Result<bool> {
    let direct = db
        .direct_write("start login", |tx| {
            tx.prepare_cached(CLEAR_LOGIN_ATTEMPTS)?
                .execute(rusqlite::named_params! {"$1": attempt.as_bytes()})?;
            tx.prepare_cached(INSERT_SESSION)?
                .execute(rusqlite::named_params! {
                    "$1": session.id, "$2": session.user_id, "$3": session.client_id,
                    "$4": session.scope, "$5": session.auth_time, "$6": session.expires_at,
                    "$7": session.browser_session_id,
                })?;
            if let Some(refresh) = &refresh {
                tx.prepare_cached(INSERT_REFRESH_TOKEN)?
                    .execute(rusqlite::named_params! {
                        "$1": refresh.digest.as_bytes(), "$2": session.id,
                        "$3": session.auth_time, "$4": refresh.expires_at,
                    })?;
            }
            Ok(())
        })
        .await;
    match direct {
        Some(Ok(())) => return Ok(true),
        // The user or client was deleted meanwhile (all of it rolled back).
        Some(Err(e)) if e.downcast_ref().is_some_and(is_foreign_key_violation) => return Ok(false),
        Some(Err(e)) => return Err(e),
        None => {}
    }
    let mut tx = db.begin_lane_write().await?;
    clear_login_attempts(tx.conn(), attempt).await?;
    if !insert_session(tx.conn(), session).await? {
        tx.rollback().await?;
        return Ok(false);
    }
    if let Some(refresh) = refresh {
        insert_refresh_token(
            tx.conn(),
            &refresh.digest,
            session.id,
            session.auth_time,
            refresh.expires_at,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}

fn is_foreign_key_violation(e: &rusqlite::Error) -> bool {
    e.sqlite_error()
        .is_some_and(|e| e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY)
}

async fn start_on_postgres(
    db: &Db,
    attempt: &TokenDigest,
    session: &NewSession<'_>,
    refresh: Option<FirstRefresh>,
) -> anyhow::Result<bool> {
    // Every part of the statement runs, referenced or not; a foreign key
    // violation (the user or client gone) fails all of it.
    const STATEMENT: &str = "with cleared as (delete from login_attempt where username_digest = $1), \
         started as (insert into login_session \
         (id, user_id, client_id, scope, auth_time, expires_at, browser_session_id) \
         values ($2, $3, $4, $5, $6, $7, $8) returning id), \
         chained as (insert into refresh_token (digest, session_id, issued_at, expires_at) \
         select $9, id, $6, $10 from started where $9 is not null) \
         select count(*) from started";
    let (digest, expires_at) = match &refresh {
        Some(r) => (Some(r.digest.as_bytes().to_vec()), r.expires_at),
        None => (None, 0),
    };
    let mut lane = db.lane().await?;
    let conn = lane.conn();
    let started = db
        .bounded(async {
            sqlx::query_scalar::<_, i64>(STATEMENT)
                .bind(attempt.as_bytes().to_vec())
                .bind(session.id)
                .bind(session.user_id)
                .bind(session.client_id)
                .bind(session.scope)
                .bind(session.auth_time)
                .bind(session.expires_at)
                .bind(session.browser_session_id)
                .bind(digest)
                .bind(expires_at)
                .fetch_one(conn)
                .await
                .map(|n| n == 1)
                .or_else(|e| match e.as_database_error() {
                    Some(db) if db.is_foreign_key_violation() => Ok(false),
                    _ => Err(e),
                })
                .context("start login")
        })
        .await?;
    lane.release();
    Ok(started)
}

/// A refresh token with the session it belongs to.
#[derive(Debug, Clone, FromRow)]
pub struct RefreshRow {
    pub session_id: String,
    pub issued_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub user_id: String,
    pub client_id: String,
    pub scope: String,
    pub auth_time: i64,
    pub session_expires_at: i64,
    pub revoked_at: Option<i64>,
    pub browser_session_id: Option<String>,
}

impl RefreshRow {
    /// Live: unused, its chain not ended, neither deadline passed.
    pub fn is_live(&self, now: i64) -> bool {
        self.used_at.is_none()
            && self.revoked_at.is_none()
            && now < self.expires_at
            && now < self.session_expires_at
    }

    /// The `sid` its tokens carry: the browser session for browser sign-in
    /// (SPEC §10), else the login itself.
    pub fn sid(&self) -> &str {
        self.browser_session_id.as_deref().unwrap_or(&self.session_id)
    }
}

const INSERT_SESSION: &str = "insert into login_session \
     (id, user_id, client_id, scope, auth_time, expires_at, browser_session_id) \
     values ($1, $2, $3, $4, $5, $6, $7)";

const INSERT_REFRESH_TOKEN: &str =
    "insert into refresh_token (digest, session_id, issued_at, expires_at) values ($1, $2, $3, $4)";

/// Starts a login; false if its user or client no longer exists.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn insert_session<'e>(
    ex: impl Executor<'e, Database = Any>,
    s: &NewSession<'_>,
) -> anyhow::Result<bool> {
    sqlx::query(INSERT_SESSION)
        .bind(s.id)
        .bind(s.user_id)
        .bind(s.client_id)
        .bind(s.scope)
        .bind(s.auth_time)
        .bind(s.expires_at)
        .bind(s.browser_session_id)
        .execute(ex)
        .await
        .map(|_| true)
        .or_else(|e| match e.as_database_error() {
            // The user or client was deleted meanwhile.
            Some(db) if db.is_foreign_key_violation() => Ok(false),
            _ => Err(e),
        })
        .context("insert session")
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn insert_refresh_token<'e>(
    ex: impl Executor<'e, Database = Any>,
    digest: &TokenDigest,
    session_id: &str,
    issued_at: i64,
    expires_at: i64,
) -> anyhow::Result<()> {
    sqlx::query(INSERT_REFRESH_TOKEN)
        .bind(digest.as_bytes().to_vec())
        .bind(session_id)
        .bind(issued_at)
        .bind(expires_at)
        .execute(ex)
        .await
        .context("insert refresh token")?;
    Ok(())
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn find_refresh_token<'e>(
    ex: impl Executor<'e, Database = Any>,
    digest: &TokenDigest,
) -> anyhow::Result<Option<RefreshRow>> {
    sqlx::query_as(
        "select r.session_id, r.issued_at, r.expires_at, r.used_at, s.user_id, s.client_id, s.scope, \
         s.auth_time, s.expires_at as session_expires_at, s.revoked_at, s.browser_session_id \
         from refresh_token r join login_session s on s.id = r.session_id where r.digest = $1",
    )
    .bind(digest.as_bytes().to_vec())
    .fetch_optional(ex)
    .await
    .context("select refresh token")
}

/// A refresh token, its login and its user, as the refresh grant needs them.
#[derive(Debug, Clone, FromRow)]
pub struct RefreshGrantRow {
    #[sqlx(flatten)]
    pub token: RefreshRow,
    #[sqlx(flatten)]
    pub user: UserRow,
}

impl RefreshGrantRow {
    /// From a row read by [`crate::store::reader`], by column name.
    pub(super) fn from_sqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<RefreshGrantRow> {
        Ok(RefreshGrantRow {
            token: RefreshRow::from_sqlite(row)?,
            user: UserRow::from_sqlite(row)?,
        })
    }
}

impl RefreshRow {
    /// From a row read by [`crate::store::reader`], by column name.
    fn from_sqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<RefreshRow> {
        Ok(RefreshRow {
            session_id: row.get("session_id")?,
            issued_at: row.get("issued_at")?,
            expires_at: row.get("expires_at")?,
            used_at: row.get("used_at")?,
            user_id: row.get("user_id")?,
            client_id: row.get("client_id")?,
            scope: row.get("scope")?,
            auth_time: row.get("auth_time")?,
            session_expires_at: row.get("session_expires_at")?,
            revoked_at: row.get("revoked_at")?,
            browser_session_id: row.get("browser_session_id")?,
        })
    }
}

/// A refresh token (`r`), its login (`s`) and its user (`u`), as
/// [`RefreshGrantRow`] reads them, with the token's digest; a `where` follows.
pub(super) static GRANT_SELECT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "select r.digest, r.session_id, r.issued_at, r.expires_at, r.used_at, s.user_id, s.client_id, \
         s.scope, s.auth_time, s.expires_at as session_expires_at, s.revoked_at, s.browser_session_id, {} \
         from refresh_token r join login_session s on s.id = r.session_id \
         join user_account u on u.id = s.user_id",
        crate::store::user::qualified_columns("u")
    )
});

/// Reads what a refresh needs in one query, outside any write lock: the
/// decision is made again, atomically, by [`rotate_refresh_token`]. On this
/// thread on SQLite ([`Db::reader`]), else on a lane.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn find_refresh_grant(db: &Db, digest: &TokenDigest) -> anyhow::Result<Option<RefreshGrantRow>> {
    static SQL: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| format!("{} where r.digest = $1", *GRANT_SELECT));
    db.hot_read(
        "select refresh grant",
        |c| {
            c.prepare_cached(&SQL)?
                .query_row(
                    rusqlite::named_params! {"$1": digest.as_bytes()},
                    RefreshGrantRow::from_sqlite,
                )
                .optional()
        },
        |conn| {
            Box::pin(
                sqlx::query_as(SQL.as_str())
                    .bind(digest.as_bytes().to_vec())
                    .fetch_optional(conn),
            )
        },
    )
    .await
}

/// Rotates a refresh token atomically: inserts `next` (expiring at
/// `expires_at`) and consumes `used`, only while `used` is unconsumed and its
/// chain not ended. True for exactly one caller, however many race; false
/// means the token was used or its chain ended meanwhile. On SQLite
/// concurrent rotations share one transaction (`store::rotation`), and the
/// rotation is queued before the returned future is first polled; on
/// PostgreSQL (a refresh that narrows its scope) it is written when awaited.
pub fn rotate_refresh_token<'a>(
    db: &'a Db,
    used: &TokenDigest,
    next: &TokenDigest,
    now: i64,
    expires_at: i64,
) -> impl Future<Output = anyhow::Result<bool>> + Send + 'a {
    db.rotate(Rotation {
        used: used.clone(),
        next: next.clone(),
        now,
        expires_at,
    })
}

/// Rotates a refresh token and reads what the refresh grant needs, only if
/// it is live, bound to the client and its user active (the checks the grant
/// makes on [`find_refresh_grant`]'s row). `None` when nothing was rotated;
/// the caller then reads the token to learn why. SQLite: the writer task
/// rotates and reads in one transaction (`store::rotation`); in memory it
/// rotates nothing here. PostgreSQL: one statement.
///
/// One statement instead of a read and a write halves the round trips and
/// the server's work per refresh (2,589 → about 3,100 refreshes/s). The
/// update takes the row's lock, so a racing rotation of the same token waits
/// and then finds it used. Concurrent refreshes share one statement and one
/// commit ([`crate::store::batch`]). Together with plans kept on the indexes
/// (the lateral lookups below, and the lanes' settings), PostgreSQL's work
/// per refresh went from about 130 to 60 µs, and refreshes from 4,100 to
/// 5,500/s; either alone gained nothing. Two rotations of one token in a
/// batch update it once, and only one of them gets a row.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn rotate_live_refresh_token(
    db: &Db,
    rotation: LiveRotation,
) -> anyhow::Result<Option<RefreshGrantRow>> {
    if db.backend() == Backend::Sqlite {
        return db.rotate_live_sqlite(rotation).await;
    }
    let Some(batch) = db.live_rotations() else {
        return db.alone::<LiveRotations>(rotation).await;
    };
    match batch.ask(rotation.clone()).await {
        Some(found) => found,
        None => db.alone::<LiveRotations>(rotation).await,
    }
}

/// [`rotate_live_refresh_token`]'s statement, for one token or many.
pub struct LiveRotations;

/// One rotation for [`LiveRotations`]: `next` replaces `used` and lives
/// `ttl` seconds, never past its login.
#[derive(Clone)]
pub struct LiveRotation {
    pub used: TokenDigest,
    pub next: TokenDigest,
    pub client_id: String,
    pub now: i64,
    pub ttl: i64,
}

impl Batch for LiveRotations {
    type Key = LiveRotation;
    type Answer = Option<RefreshGrantRow>;
    const WHAT: &'static str = "rotate and read refresh tokens";
    const TIMEOUT: std::time::Duration = crate::store::rotation::ROTATION_TIMEOUT;
    const WRITE: bool = true;
    /// One: each batch then takes all that queued while the last one was
    /// written, about twice as many rotations per commit as with two
    /// workers (9.6-13.4 against 5.5-7.2 under refresh load), and
    /// PostgreSQL spends a quarter less CPU per refresh: 2,317 against
    /// 2,160 refreshes/s, means of 6 alternating pairs on a slow, noisy host. With two, a batch
    /// started as soon as one key queued. (One worker had measured 2,400 to
    /// 2,600/s, far below two; the last time, its cached plan was found
    /// reading the whole token index for every batch: see below.)
    ///
    /// The cost: whatever holds the worker holds every rotation of this
    /// instance, where with two the other went on. A refresh may wait for a
    /// whole statement and its commit before its own starts; a statement
    /// may wait for row locks (a racing rotation of the same token by
    /// another instance, or a deletion of its login, user or client, whose
    /// trigger locks the login's tokens), up to the lanes'
    /// `statement_timeout`, after which its whole batch is answered 503;
    /// and the worker may wait for a lane (`ACQUIRE_TIMEOUT`).
    const WORKERS: usize = 1;

    // Only rows `consumed` (under their row locks) get a successor: no index
    // guards that on PostgreSQL (migration 0007). The update finds each row
    // by the address `found` read it at: a plan joining on the digest, cached
    // while the table was small and its rows almost all used, read the whole
    // index for every batch. A row updated meanwhile is checked again at its
    // newest version and skipped: every update of a token sets `used_at`
    // (a rotation's). Were one ever skipped while live, the grant would read
    // it and rotate it by digest (`oauth::token`): slower, still right. The
    // last select names its columns: `*` would also return `tid`, a type
    // the `Any` driver cannot read.
    fn statement(len: usize) -> (&'static str, usize) {
        static SQL: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
            batch::statements(|n| {
                format!(
                    "with k (i, used, next, client_id, now, ttl) as (values {}), \
                     found as materialized (select k.i, k.next, k.now, k.ttl, r.tid, r.digest, \
                     r.session_id, r.issued_at, r.expires_at, s.user_id, s.client_id, s.scope, s.auth_time, \
                     s.expires_at as session_expires_at, s.revoked_at, s.browser_session_id, {} from k \
                     cross join lateral (select r.ctid as tid, * from refresh_token r where r.digest = k.used \
                     and r.used_at is null and r.expires_at > k.now limit 1) r \
                     cross join lateral (select * from login_session s where s.id = r.session_id \
                     and s.client_id = k.client_id and s.revoked_at is null and s.expires_at > k.now limit 1) s \
                     cross join lateral (select * from user_account u where u.id = s.user_id \
                     and u.disabled_at is null limit 1) u), \
                     consumed as (update refresh_token r set used_at = f.now from found f \
                     where r.ctid = f.tid and r.used_at is null returning f.*, r.used_at), \
                     inserted as (insert into refresh_token (digest, session_id, issued_at, expires_at, parent) \
                     select next, session_id, now, least(now + ttl, session_expires_at), digest from consumed) \
                     select i, session_id, issued_at, expires_at, used_at, user_id, client_id, scope, auth_time, \
                     session_expires_at, revoked_at, browser_session_id, {} from consumed",
                    batch::values(n, &["bigint", "bytea", "bytea", "text", "bigint", "bigint"]),
                    crate::store::user::qualified_columns("u"),
                    crate::store::user::COLUMNS,
                )
            })
        });
        batch::statement(&SQL, len)
    }

    fn run<'c>(
        conn: &'c mut sqlx::AnyConnection,
        keys: &'c [LiveRotation],
    ) -> LaneQuery<'c, Vec<Option<RefreshGrantRow>>> {
        Box::pin(async move {
            const NOTHING: [u8; 32] = [0; 32];
            let (sql, size) = Self::statement(keys.len());
            let mut query = sqlx::query(sql);
            // In the order of their tokens, so that two batches lock the rows
            // they share in the same order and never deadlock.
            let mut order: Vec<(usize, &LiveRotation)> = keys.iter().enumerate().collect();
            order.sort_by(|(_, a), (_, b)| a.used.as_bytes().cmp(b.used.as_bytes()));
            for (i, k) in order {
                query = query
                    .bind(i as i64)
                    .bind(k.used.as_bytes().to_vec())
                    .bind(k.next.as_bytes().to_vec())
                    .bind(k.client_id.as_str())
                    .bind(k.now)
                    .bind(k.ttl);
            }
            for _ in keys.len()..size {
                query = query
                    .bind(-1i64)
                    .bind(NOTHING.to_vec())
                    .bind(NOTHING.to_vec())
                    .bind("")
                    .bind(0i64)
                    .bind(0i64);
            }
            let rows = query.fetch_all(conn).await?;
            batch::by_index(&rows, keys.len(), |row| RefreshGrantRow::from_row(row))
        })
    }
}

/// Ends one login: its refresh chain and the access tokens carrying its `sid`.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn revoke_session<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
    now: i64,
) -> anyhow::Result<()> {
    sqlx::query("update login_session set revoked_at = $1 where id = $2 and revoked_at is null")
        .bind(now)
        .bind(id)
        .execute(ex)
        .await
        .context("revoke session")?;
    Ok(())
}

/// Ends every login of a user, browser sessions included.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn revoke_user_sessions(
    ex: &mut sqlx::AnyConnection,
    user_id: &str,
    now: i64,
) -> anyhow::Result<u64> {
    let done =
        sqlx::query("update login_session set revoked_at = $1 where user_id = $2 and revoked_at is null")
            .bind(now)
            .bind(user_id)
            .execute(&mut *ex)
            .await
            .context("revoke user sessions")?;
    let browsers =
        sqlx::query("update browser_session set ended_at = $1 where user_id = $2 and ended_at is null")
            .bind(now)
            .bind(user_id)
            .execute(&mut *ex)
            .await
            .context("end browser sessions")?;
    Ok(done.rows_affected() + browsers.rows_affected())
}

/// Ends every login of a user but one (the caller's own, by `sid`: a login,
/// or a browser session with its chains).
#[tracing::instrument(level = "debug", skip_all)]
pub async fn revoke_user_sessions_except(
    ex: &mut sqlx::AnyConnection,
    user_id: &str,
    keep_sid: &str,
    now: i64,
) -> anyhow::Result<u64> {
    let done = sqlx::query(
        "update login_session set revoked_at = $1 where user_id = $2 and id <> $3 \
         and (browser_session_id is null or browser_session_id <> $3) and revoked_at is null",
    )
    .bind(now)
    .bind(user_id)
    .bind(keep_sid)
    .execute(&mut *ex)
    .await
    .context("revoke other sessions")?;
    let browsers = sqlx::query(
        "update browser_session set ended_at = $1 where user_id = $2 and id <> $3 and ended_at is null",
    )
    .bind(now)
    .bind(user_id)
    .bind(keep_sid)
    .execute(&mut *ex)
    .await
    .context("end other browser sessions")?;
    Ok(done.rows_affected() + browsers.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn count(db: &Db, table: &str) -> anyhow::Result<i64> {
        let sql = format!("select count(*) from {table}");
        Ok(sqlx::query_scalar(&sql).fetch_one(db.pool()).await?)
    }

    /// A migrated test database (in `dir` on SQLite) with client `c` and
    /// user `u`.
    async fn with_client_and_user(dir: &std::path::Path) -> anyhow::Result<Db> {
        let db = Db::connect(&crate::store::test_database(dir).await?).await?;
        db.migrate().await?;
        sqlx::query(
            "insert into client (id, name, grant_types, scopes, created_at, redirect_uris, \
             post_logout_redirect_uris) values ('c', 'c', 'password', 'read', 0, '', '')",
        )
        .execute(db.pool())
        .await?;
        sqlx::query(
            "insert into user_account (id, email, email_lower, password_hash, roles, created_at) \
             values ('u', 'a@example.com', 'a@example.com', 'h', '', 0)",
        )
        .execute(db.pool())
        .await?;
        Ok(db)
    }

    async fn assert_gone(db: &Db, tokens: &[&str]) -> anyhow::Result<()> {
        for token in tokens {
            let found = find_refresh_token(db.pool(), &TokenDigest::of(token)).await?;
            assert!(found.is_none(), "refresh token {token} outlived its login");
        }
        Ok(())
    }

    fn session<'a>(id: &'a str, user_id: &'a str) -> NewSession<'a> {
        NewSession {
            id,
            user_id,
            client_id: "c",
            scope: "read",
            auth_time: 100,
            expires_at: 1_000,
            browser_session_id: None,
        }
    }

    /// On the database the tests run on: a login whose user is gone writes
    /// nothing and keeps the failed attempts; one whose user exists clears
    /// them and starts its login and its chain.
    #[tokio::test]
    async fn a_password_login_starts_all_or_nothing() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let db = with_client_and_user(dir.path()).await?;
        let attempt = TokenDigest::of("a@example.com");
        let mut conn = db.pool().acquire().await?;
        crate::store::login_attempt::begin_login_attempt(
            &mut conn,
            &attempt,
            100,
            crate::store::login_attempt::AttemptRules {
                backoff_after: 5,
                in_flight_for: 30,
            },
        )
        .await?;
        drop(conn);
        let first = || FirstRefresh {
            digest: TokenDigest::of("rt"),
            expires_at: 500,
        };

        assert!(!start_password_login(&db, &attempt, &session("s0", "gone"), Some(first())).await?);
        for (table, rows) in [("login_attempt", 1), ("login_session", 0), ("refresh_token", 0)] {
            assert_eq!(count(&db, table).await?, rows, "{table}");
        }

        assert!(start_password_login(&db, &attempt, &session("s1", "u"), Some(first())).await?);
        for (table, rows) in [("login_attempt", 0), ("login_session", 1), ("refresh_token", 1)] {
            assert_eq!(count(&db, table).await?, rows, "{table}");
        }
        let token = find_refresh_token(db.pool(), &TokenDigest::of("rt"))
            .await?
            .context("the first refresh token")?;
        assert_eq!(
            (
                token.session_id.as_str(),
                token.user_id.as_str(),
                token.issued_at,
                token.expires_at
            ),
            ("s1", "u", 100, 500)
        );
        assert_eq!((token.used_at, token.session_expires_at), (None, 1_000));

        // A client without the refresh_token grant: the login alone.
        assert!(start_password_login(&db, &attempt, &session("s2", "u"), None).await?);
        assert_eq!(count(&db, "login_session").await?, 2);
        assert_eq!(count(&db, "refresh_token").await?, 1);
        db.close().await;
        Ok(())
    }

    /// A token gets one successor. Its rotation consumes it; a second
    /// rotation of it rotates nothing, also one that raced a transaction
    /// consuming it (it waits for the lock, then finds the token used). On
    /// SQLite the database also refuses, from any statement, a successor whose
    /// parent is used or missing (a trigger, where a unique index on `parent`
    /// was).
    #[tokio::test]
    async fn a_refresh_token_gets_one_successor() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let db = with_client_and_user(dir.path()).await?;
        let first = FirstRefresh {
            digest: TokenDigest::of("rt"),
            expires_at: 500,
        };
        assert!(start_password_login(&db, &TokenDigest::of("a"), &session("s1", "u"), Some(first)).await?);
        let rotation = |used: &str, next: &str| LiveRotation {
            used: TokenDigest::of(used),
            next: TokenDigest::of(next),
            client_id: "c".to_owned(),
            now: 200,
            ttl: 100,
        };
        let successors = |token: &str| {
            sqlx::query_scalar::<_, i64>("select count(*) from refresh_token where parent = $1")
                .bind(TokenDigest::of(token).as_bytes().to_vec())
                .fetch_one(db.pool())
        };

        let found = rotate_live_refresh_token(&db, rotation("rt", "rt2")).await?;
        assert_eq!(found.map(|f| f.token.session_id), Some("s1".to_owned()));
        assert!(
            rotate_live_refresh_token(&db, rotation("rt", "rt3"))
                .await?
                .is_none()
        );
        assert_eq!(successors("rt").await?, 1);
        assert!(
            find_refresh_token(db.pool(), &TokenDigest::of("rt3"))
                .await?
                .is_none()
        );

        let mut consuming = db.pool().begin().await?;
        sqlx::query("update refresh_token set used_at = 150 where digest = $1")
            .bind(TokenDigest::of("rt2").as_bytes().to_vec())
            .execute(&mut *consuming)
            .await?;
        let hold = std::time::Duration::from_millis(200);
        let started = std::time::Instant::now();
        let (raced, committed) = tokio::join!(
            async {
                let raced = rotate_live_refresh_token(&db, rotation("rt2", "rt4")).await;
                (raced, started.elapsed())
            },
            async {
                tokio::time::sleep(hold).await;
                consuming.commit().await
            }
        );
        committed?;
        let (raced, waited) = raced;
        assert!(raced?.is_none());
        assert!(
            waited >= hold,
            "the rotation did not wait for the lock: {waited:?}"
        );
        assert_eq!(successors("rt2").await?, 0);
        assert!(
            find_refresh_token(db.pool(), &TokenDigest::of("rt4"))
                .await?
                .is_none()
        );

        if db.backend() == Backend::Sqlite {
            // A used parent (rt), and one that does not exist.
            for (next, parent) in [("rt5", "rt"), ("rt6", "none")] {
                let refused = sqlx::query(
                    "insert into refresh_token (digest, session_id, issued_at, expires_at, parent) \
                     values ($1, 's1', 200, 500, $2)",
                )
                .bind(TokenDigest::of(next).as_bytes().to_vec())
                .bind(TokenDigest::of(parent).as_bytes().to_vec())
                .execute(db.pool())
                .await;
                let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
                assert!(message.contains("used or missing"), "{parent}: {message}");
                assert!(
                    find_refresh_token(db.pool(), &TokenDigest::of(next))
                        .await?
                        .is_none()
                );
            }
        }
        db.close().await;
        Ok(())
    }

    /// A login's refresh tokens go with it: when the login is deleted, and
    /// when its user or its client is (on PostgreSQL by a trigger, on SQLite
    /// by the foreign key's cascade).
    #[tokio::test]
    async fn a_deleted_login_takes_its_refresh_tokens() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let db = with_client_and_user(dir.path()).await?;
        for (sid, tokens) in [("s1", ["a1", "a2"]), ("s2", ["b1", "b2"]), ("s3", ["c1", "c2"])] {
            let first = FirstRefresh {
                digest: TokenDigest::of(tokens[0]),
                expires_at: 500,
            };
            let attempt = TokenDigest::of(sid);
            assert!(start_password_login(&db, &attempt, &session(sid, "u"), Some(first)).await?);
            sqlx::query("insert into refresh_token (digest, session_id, issued_at, expires_at) values ($1, $2, 0, 500)")
                .bind(TokenDigest::of(tokens[1]).as_bytes().to_vec())
                .bind(sid)
                .execute(db.pool())
                .await?;
        }
        assert_eq!(count(&db, "refresh_token").await?, 6);

        sqlx::query("delete from login_session where id = 's1'")
            .execute(db.pool())
            .await?;
        assert_eq!(count(&db, "refresh_token").await?, 4);
        assert_gone(&db, &["a1", "a2"]).await?;

        sqlx::query(
            "insert into client (id, name, grant_types, scopes, created_at, redirect_uris, \
             post_logout_redirect_uris) values ('d', 'd', 'password', 'read', 0, '', '')",
        )
        .execute(db.pool())
        .await?;
        sqlx::query("update login_session set client_id = 'd' where id = 's2'")
            .execute(db.pool())
            .await?;
        sqlx::query("delete from client where id = 'd'")
            .execute(db.pool())
            .await?;
        assert_eq!(count(&db, "login_session").await?, 1);
        assert_eq!(count(&db, "refresh_token").await?, 2);
        assert_gone(&db, &["b1", "b2"]).await?;

        sqlx::query("delete from user_account where id = 'u'")
            .execute(db.pool())
            .await?;
        assert_eq!(count(&db, "login_session").await?, 0);
        assert_eq!(count(&db, "refresh_token").await?, 0);
        db.close().await;
        Ok(())
    }
}
