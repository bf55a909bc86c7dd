//! Browser sign-in (SPEC §11): browser sessions behind the
//! `gatehouse_session` cookie, authorization codes, and consent given.

use anyhow::Context;
use sqlx::{Any, Executor, FromRow};

use crate::tokens::TokenDigest;

/// A signed-in browser: the `sid` of every token issued through it.
#[derive(Debug, Clone, FromRow)]
pub struct BrowserSession {
    pub id: String,
    pub user_id: String,
    pub auth_time: i64,
    pub expires_at: i64,
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn insert_browser_session<'e>(
    ex: impl Executor<'e, Database = Any>,
    session: &BrowserSession,
    digest: &TokenDigest,
) -> anyhow::Result<()> {
    sqlx::query(
        "insert into browser_session (id, digest, user_id, auth_time, expires_at) values ($1, $2, $3, $4, $5)",
    )
    .bind(&session.id)
    .bind(digest.as_bytes().to_vec())
    .bind(&session.user_id)
    .bind(session.auth_time)
    .bind(session.expires_at)
    .execute(ex)
    .await
    .context("insert browser session")?;
    Ok(())
}

/// The live session behind a cookie: not ended, not expired, its user active.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn find_browser_session<'e>(
    ex: impl Executor<'e, Database = Any>,
    digest: &TokenDigest,
    now: i64,
) -> anyhow::Result<Option<BrowserSession>> {
    sqlx::query_as(
        "select b.id, b.user_id, b.auth_time, b.expires_at from browser_session b \
         join user_account u on u.id = b.user_id \
         where b.digest = $1 and b.ended_at is null and b.expires_at > $2 and u.disabled_at is null",
    )
    .bind(digest.as_bytes().to_vec())
    .bind(now)
    .fetch_optional(ex)
    .await
    .context("select browser session")
}

/// A live browser session by its id (the `sid`).
#[tracing::instrument(level = "debug", skip_all)]
pub async fn find_live_browser_session<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
    now: i64,
) -> anyhow::Result<Option<BrowserSession>> {
    sqlx::query_as(
        "select id, user_id, auth_time, expires_at from browser_session \
         where id = $1 and ended_at is null and expires_at > $2",
    )
    .bind(id)
    .bind(now)
    .fetch_optional(ex)
    .await
    .context("select browser session by id")
}

/// Ends a browser session and every refresh chain started through it.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn end_browser_session(ex: &mut sqlx::AnyConnection, id: &str, now: i64) -> anyhow::Result<()> {
    sqlx::query("update browser_session set ended_at = $1 where id = $2 and ended_at is null")
        .bind(now)
        .bind(id)
        .execute(&mut *ex)
        .await
        .context("end browser session")?;
    sqlx::query(
        "update login_session set revoked_at = $1 where browser_session_id = $2 and revoked_at is null",
    )
    .bind(now)
    .bind(id)
    .execute(&mut *ex)
    .await
    .context("end the browser session's chains")?;
    Ok(())
}

/// An authorization code as stored: everything the exchange must check.
#[derive(Debug, Clone, FromRow)]
pub struct CodeRow {
    pub client_id: String,
    pub browser_session_id: String,
    pub redirect_uri: String,
    pub redirect_uri_given: i64,
    pub scope: String,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub login_session_id: Option<String>,
    pub access_jti: Option<String>,
    pub access_expires_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct NewCode<'a> {
    pub client_id: &'a str,
    pub browser_session_id: &'a str,
    pub redirect_uri: &'a str,
    pub redirect_uri_given: bool,
    pub scope: &'a str,
    pub nonce: Option<&'a str>,
    pub code_challenge: Option<&'a str>,
    pub expires_at: i64,
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn insert_code<'e>(
    ex: impl Executor<'e, Database = Any>,
    digest: &TokenDigest,
    code: &NewCode<'_>,
) -> anyhow::Result<()> {
    sqlx::query(
        "insert into authorization_code (digest, client_id, browser_session_id, redirect_uri, \
         redirect_uri_given, scope, nonce, code_challenge, expires_at) \
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(digest.as_bytes().to_vec())
    .bind(code.client_id)
    .bind(code.browser_session_id)
    .bind(code.redirect_uri)
    .bind(i64::from(code.redirect_uri_given))
    .bind(code.scope)
    .bind(code.nonce)
    .bind(code.code_challenge)
    .bind(code.expires_at)
    .execute(ex)
    .await
    .context("insert authorization code")?;
    Ok(())
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn find_code<'e>(
    ex: impl Executor<'e, Database = Any>,
    digest: &TokenDigest,
) -> anyhow::Result<Option<CodeRow>> {
    sqlx::query_as(
        "select client_id, browser_session_id, redirect_uri, redirect_uri_given, scope, nonce, \
         code_challenge, expires_at, used_at, login_session_id, access_jti, access_expires_at \
         from authorization_code where digest = $1",
    )
    .bind(digest.as_bytes().to_vec())
    .fetch_optional(ex)
    .await
    .context("select authorization code")
}

/// Marks a code used: true for exactly one caller, however many race.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn consume_code<'e>(
    ex: impl Executor<'e, Database = Any>,
    digest: &TokenDigest,
    now: i64,
) -> anyhow::Result<bool> {
    let done =
        sqlx::query("update authorization_code set used_at = $1 where digest = $2 and used_at is null")
            .bind(now)
            .bind(digest.as_bytes().to_vec())
            .execute(ex)
            .await
            .context("consume authorization code")?;
    Ok(done.rows_affected() == 1)
}

/// Records what an exchange issued, so that a replay can revoke it.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn record_code_issue<'e>(
    ex: impl Executor<'e, Database = Any>,
    digest: &TokenDigest,
    login_session_id: &str,
    access_jti: &str,
    access_expires_at: i64,
) -> anyhow::Result<()> {
    sqlx::query(
        "update authorization_code set login_session_id = $1, access_jti = $2, access_expires_at = $3 \
         where digest = $4",
    )
    .bind(login_session_id)
    .bind(access_jti)
    .bind(access_expires_at)
    .bind(digest.as_bytes().to_vec())
    .execute(ex)
    .await
    .context("record code issue")?;
    Ok(())
}

/// The scope a user approved for a client, if any.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn find_consent<'e>(
    ex: impl Executor<'e, Database = Any>,
    user_id: &str,
    client_id: &str,
) -> anyhow::Result<Option<String>> {
    let row: Option<(String,)> =
        sqlx::query_as("select scope from consent where user_id = $1 and client_id = $2")
            .bind(user_id)
            .bind(client_id)
            .fetch_optional(ex)
            .await
            .context("select consent")?;
    Ok(row.map(|(scope,)| scope))
}

/// Stores (or widens) the scope a user approved for a client.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn save_consent<'e>(
    ex: impl Executor<'e, Database = Any>,
    user_id: &str,
    client_id: &str,
    scope: &str,
    now: i64,
) -> anyhow::Result<()> {
    sqlx::query(
        "insert into consent (user_id, client_id, scope, granted_at) values ($1, $2, $3, $4) \
         on conflict (user_id, client_id) do update set scope = excluded.scope, granted_at = excluded.granted_at",
    )
    .bind(user_id)
    .bind(client_id)
    .bind(scope)
    .bind(now)
    .execute(ex)
    .await
    .map(|_| ())
    .or_else(|e| match e.as_database_error() {
        // The user or client was deleted meanwhile: nothing to remember.
        Some(db) if db.is_foreign_key_violation() => Ok(()),
        _ => Err(e),
    })
    .context("save consent")
}
