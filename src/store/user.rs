//! User accounts.

use anyhow::Context;
use rusqlite::OptionalExtension;
use sqlx::{Any, Executor, FromRow};

use crate::store::batch::{self, Batch};
use crate::store::{Db, LaneQuery};

#[derive(Debug, Clone, FromRow)]
pub struct UserRow {
    pub id: String,
    pub email: String,
    pub email_lower: String,
    pub password_hash: String,
    pub name: Option<String>,
    pub roles: String,
    pub email_verified_at: Option<i64>,
    pub disabled_at: Option<i64>,
    pub created_at: i64,
}

impl UserRow {
    /// From a row read by [`crate::store::reader`], by column name.
    pub fn from_sqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<UserRow> {
        Ok(UserRow {
            id: row.get("id")?,
            email: row.get("email")?,
            email_lower: row.get("email_lower")?,
            password_hash: row.get("password_hash")?,
            name: row.get("name")?,
            roles: row.get("roles")?,
            email_verified_at: row.get("email_verified_at")?,
            disabled_at: row.get("disabled_at")?,
            created_at: row.get("created_at")?,
        })
    }

    pub fn roles(&self) -> Vec<String> {
        self.roles
            .split(' ')
            .filter(|r| !r.is_empty())
            .map(str::to_owned)
            .collect()
    }

    pub fn is_active(&self) -> bool {
        self.disabled_at.is_none()
    }
}

/// [`UserRow`]'s columns.
pub(super) const COLUMNS: &str =
    "id, email, email_lower, password_hash, name, roles, email_verified_at, disabled_at, created_at";

/// [`UserRow`]'s columns, each prefixed with `alias.`, for joins.
pub fn qualified_columns(alias: &str) -> String {
    COLUMNS
        .split(", ")
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Inserts a user; false when the e-mail address is already taken.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn insert_user<'e>(ex: impl Executor<'e, Database = Any>, user: &UserRow) -> anyhow::Result<bool> {
    sqlx::query(
        "insert into user_account (id, email, email_lower, password_hash, name, roles, \
         email_verified_at, disabled_at, created_at) values ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&user.id)
    .bind(&user.email)
    .bind(&user.email_lower)
    .bind(&user.password_hash)
    .bind(&user.name)
    .bind(&user.roles)
    .bind(user.email_verified_at)
    .bind(user.disabled_at)
    .bind(user.created_at)
    .execute(ex)
    .await
    .map(|_| true)
    .or_else(|e| match e.as_database_error() {
        // The e-mail address is taken (`email_lower` is unique).
        Some(db) if db.is_unique_violation() => Ok(false),
        _ => Err(e),
    })
    .context("insert user")
}

static BY_EMAIL: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("select {COLUMNS} from user_account where email_lower = $1"));

#[tracing::instrument(level = "debug", skip_all)]
pub async fn find_user_by_email<'e>(
    ex: impl Executor<'e, Database = Any>,
    email_lower: &str,
) -> anyhow::Result<Option<UserRow>> {
    sqlx::query_as(BY_EMAIL.as_str())
        .bind(email_lower)
        .fetch_optional(ex)
        .await
        .context("select user by email")
}

/// [`find_user_by_email`] for a login, outside any transaction: on this
/// thread on SQLite ([`Db::hot_read`]), else on a lane.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn find_login_user(db: &Db, email_lower: &str) -> anyhow::Result<Option<UserRow>> {
    db.hot_read(
        "select user by email",
        |c| {
            c.prepare_cached(&BY_EMAIL)?
                .query_row(rusqlite::named_params! {"$1": email_lower}, UserRow::from_sqlite)
                .optional()
        },
        |conn| {
            Box::pin(
                sqlx::query_as(BY_EMAIL.as_str())
                    .bind(email_lower.to_owned())
                    .fetch_optional(conn),
            )
        },
    )
    .await
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn find_user<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
) -> anyhow::Result<Option<UserRow>> {
    sqlx::query_as(&format!("select {COLUMNS} from user_account where id = $1"))
        .bind(id)
        .fetch_optional(ex)
        .await
        .context("select user")
}

/// SQL: user `u` holds the live login `sid` names: the login itself (the
/// password grant's `sid`), or `client_id`'s login in the browser session
/// `sid`. Two lookups by index; written as one `exists` with an `or`, SQLite
/// walked every login of the user instead (with about 40 logins a user,
/// introspection ran at 12,800 requests/s rather than 21,000).
fn holds_live_login(sid: &str, client_id: &str, now: &str) -> String {
    format!(
        "(exists (select 1 from login_session s where s.id = {sid} and s.user_id = u.id \
         and s.revoked_at is null and s.expires_at > {now}) \
         or exists (select 1 from login_session s where s.browser_session_id = {sid} \
         and s.client_id = {client_id} and s.user_id = u.id and s.revoked_at is null and s.expires_at > {now}))"
    )
}

/// The user behind a user's access token, in one round trip: the token's
/// `jti` not revoked, its login (or, for a browser session's `sid`, this
/// client's chain in it) live, the user present and not disabled. On this
/// thread on SQLite ([`Db::reader`]), else on a lane.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn find_token_holder(
    db: &Db,
    token: &TokenHolder<'_>,
    now: i64,
) -> anyhow::Result<Option<UserRow>> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "select {COLUMNS} from user_account u where u.id = $1 and u.disabled_at is null \
             and not exists (select 1 from revoked_access_token r where r.jti = $2) and {}",
            holds_live_login("$3", "$4", "$5")
        )
    });
    if let Some(batch) = db.token_holders() {
        let key = TokenHolderKey {
            sub: token.sub.to_owned(),
            jti: token.jti.to_owned(),
            sid: token.sid.to_owned(),
            client_id: token.client_id.to_owned(),
            now,
        };
        if let Some(found) = batch.ask(key).await {
            return found;
        }
    }
    db.hot_read(
        "select token holder",
        |c| {
            let params = rusqlite::named_params! {
                "$1": token.sub, "$2": token.jti, "$3": token.sid, "$4": token.client_id, "$5": now,
            };
            c.prepare_cached(&SQL)?
                .query_row(params, UserRow::from_sqlite)
                .optional()
        },
        // Owned arguments: the lane, and so the query's lifetime, is chosen inside `hot_read`.
        |conn| {
            Box::pin(
                sqlx::query_as(SQL.as_str())
                    .bind(token.sub.to_owned())
                    .bind(token.jti.to_owned())
                    .bind(token.sid.to_owned())
                    .bind(token.client_id.to_owned())
                    .bind(now)
                    .fetch_optional(conn),
            )
        },
    )
    .await
}

/// [`find_token_holder`] for many tokens in one statement (PostgreSQL).
pub struct TokenHolders;

/// One token for [`TokenHolders`].
pub struct TokenHolderKey {
    pub sub: String,
    pub jti: String,
    pub sid: String,
    pub client_id: String,
    pub now: i64,
}

impl Batch for TokenHolders {
    type Key = TokenHolderKey;
    type Answer = Option<UserRow>;
    const WHAT: &'static str = "select token holders";

    fn statement(len: usize) -> (&'static str, usize) {
        static SQL: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
            batch::statements(|n| {
                format!(
                    "with k (i, sub, jti, sid, client_id) as (values {}) \
                     select k.i, {} from k join user_account u on u.id = k.sub where u.disabled_at is null \
                     and not exists (select 1 from revoked_access_token r where r.jti = k.jti) and {}",
                    batch::values(n, &["bigint", "text", "text", "text", "text"]),
                    qualified_columns("u"),
                    holds_live_login("k.sid", "k.client_id", &format!("${}::bigint", 5 * n + 1))
                )
            })
        });
        batch::statement(&SQL, len)
    }

    fn run<'c>(
        conn: &'c mut sqlx::AnyConnection,
        keys: &'c [TokenHolderKey],
    ) -> LaneQuery<'c, Vec<Option<UserRow>>> {
        Box::pin(async move {
            let (sql, size) = Self::statement(keys.len());
            let mut query = sqlx::query(sql);
            for (i, k) in keys.iter().enumerate() {
                query = query
                    .bind(i as i64)
                    .bind(k.sub.as_str())
                    .bind(k.jti.as_str())
                    .bind(k.sid.as_str())
                    .bind(k.client_id.as_str());
            }
            for _ in keys.len()..size {
                query = query.bind(-1i64).bind("").bind("").bind("").bind("");
            }
            // The latest instant of the batch: a login must be live now.
            let now = keys.iter().map(|k| k.now).max().unwrap_or_default();
            let rows = query.bind(now).fetch_all(conn).await?;
            batch::by_index(&rows, keys.len(), |row| UserRow::from_row(row))
        })
    }
}

/// What an access token says about whose it is.
#[derive(Debug, Clone, Copy)]
pub struct TokenHolder<'a> {
    pub sub: &'a str,
    pub jti: &'a str,
    pub sid: &'a str,
    pub client_id: &'a str,
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn list_users<'e>(ex: impl Executor<'e, Database = Any>) -> anyhow::Result<Vec<UserRow>> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from user_account order by created_at, id"
    ))
    .fetch_all(ex)
    .await
    .context("select users")
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn update_user_password_hash<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
    hash: &str,
) -> anyhow::Result<()> {
    sqlx::query("update user_account set password_hash = $1 where id = $2")
        .bind(hash)
        .bind(id)
        .execute(ex)
        .await
        .context("update password hash")?;
    Ok(())
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn update_user_name<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
    name: Option<&str>,
) -> anyhow::Result<()> {
    sqlx::query("update user_account set name = $1 where id = $2")
        .bind(name)
        .bind(id)
        .execute(ex)
        .await
        .context("update user name")?;
    Ok(())
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn mark_email_verified<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
    now: i64,
) -> anyhow::Result<()> {
    sqlx::query("update user_account set email_verified_at = coalesce(email_verified_at, $1) where id = $2")
        .bind(now)
        .bind(id)
        .execute(ex)
        .await
        .context("mark email verified")?;
    Ok(())
}

/// Deletes a user; sessions, refresh tokens, mailed tokens and queued mail go with it.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn delete_user<'e>(ex: impl Executor<'e, Database = Any>, id: &str) -> anyhow::Result<bool> {
    let done = sqlx::query("delete from user_account where id = $1")
        .bind(id)
        .execute(ex)
        .await
        .context("delete user")?;
    Ok(done.rows_affected() == 1)
}

/// Sets or clears `disabled_at`; false if there is no such user.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn set_user_disabled<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
    disabled_at: Option<i64>,
) -> anyhow::Result<bool> {
    let done = sqlx::query("update user_account set disabled_at = $1 where id = $2")
        .bind(disabled_at)
        .bind(id)
        .execute(ex)
        .await
        .context("set user disabled")?;
    Ok(done.rows_affected() == 1)
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn update_user_roles<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
    roles: &str,
) -> anyhow::Result<bool> {
    let done = sqlx::query("update user_account set roles = $1 where id = $2")
        .bind(roles)
        .bind(id)
        .execute(ex)
        .await
        .context("update user roles")?;
    Ok(done.rows_affected() == 1)
}

/// One page of users ordered by id, after `cursor` (an id) when given.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn list_users_page<'e>(
    ex: impl Executor<'e, Database = Any>,
    cursor: Option<&str>,
    limit: i64,
) -> anyhow::Result<Vec<UserRow>> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from user_account where id > $1 order by id limit $2"
    ))
    .bind(cursor.unwrap_or(""))
    .bind(limit)
    .fetch_all(ex)
    .await
    .context("select users page")
}
