//! The outgoing mail queue.

use anyhow::Context;
use sqlx::{Any, Executor};

/// A message to queue; its bodies may hold a link with a token.
#[derive(Debug, Clone)]
pub struct NewMail<'a> {
    pub id: &'a str,
    pub recipient: &'a str,
    pub subject: &'a str,
    pub body_text: &'a str,
    pub body_html: &'a str,
    pub user_id: Option<&'a str>,
    pub created_at: i64,
    /// Never sent after this (the token it carries is dead by then).
    pub expires_at: i64,
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn insert_mail<'e>(
    ex: impl Executor<'e, Database = Any>,
    mail: &NewMail<'_>,
) -> anyhow::Result<()> {
    sqlx::query(
        "insert into mail_message (id, recipient, subject, body_text, body_html, user_id, created_at, \
         expires_at, next_attempt_at) values ($1, $2, $3, $4, $5, $6, $7, $8, $7)",
    )
    .bind(mail.id)
    .bind(mail.recipient)
    .bind(mail.subject)
    .bind(mail.body_text)
    .bind(mail.body_html)
    .bind(mail.user_id)
    .bind(mail.created_at)
    .bind(mail.expires_at)
    .execute(ex)
    .await
    .context("insert mail")?;
    Ok(())
}

/// A message claimed for one delivery attempt.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedMailRow {
    pub id: String,
    pub recipient: String,
    pub subject: String,
    pub body_text: String,
    pub body_html: String,
    /// Attempts so far, this one included.
    pub attempts: i64,
}

/// Ids of messages due for an attempt at `now`, oldest due first. Reading them
/// claims nothing: [`claim_mail`] decides who sends each one.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn select_due_mail<'e>(
    ex: impl Executor<'e, Database = Any>,
    now: i64,
    limit: i64,
) -> anyhow::Result<Vec<String>> {
    let ids: Vec<(String,)> = sqlx::query_as(
        "select id from mail_message where sent_at is null and body_text is not null \
         and next_attempt_at <= $1 and expires_at > $1 and (lease_until is null or lease_until < $1) \
         order by next_attempt_at, created_at limit $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(ex)
    .await
    .context("select due mail")?;
    Ok(ids.into_iter().map(|(id,)| id).collect())
}

/// Leases message `id` until `lease_until` and counts the attempt, if it is
/// still due and nobody else holds it. One conditional UPDATE, so of several
/// instances sharing the database exactly one gets the row.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn claim_mail<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
    now: i64,
    lease_until: i64,
) -> anyhow::Result<Option<ClaimedMailRow>> {
    sqlx::query_as::<_, ClaimedMailRow>(
        "update mail_message set lease_until = $2, attempts = attempts + 1 \
         where id = $1 and sent_at is null and body_text is not null and body_html is not null \
         and next_attempt_at <= $3 and expires_at > $3 and (lease_until is null or lease_until < $3) \
         returning id, recipient, subject, body_text, body_html, attempts",
    )
    .bind(id)
    .bind(lease_until)
    .bind(now)
    .fetch_optional(ex)
    .await
    .context("claim mail")
}

/// Records a delivery and deletes the bodies (SPEC §2: they may hold a link).
#[tracing::instrument(level = "debug", skip_all)]
pub async fn mark_mail_sent<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
    now: i64,
) -> anyhow::Result<()> {
    sqlx::query(
        "update mail_message set sent_at = $2, body_text = null, body_html = null, lease_until = null, \
         last_error = null where id = $1",
    )
    .bind(id)
    .bind(now)
    .execute(ex)
    .await
    .context("mark mail sent")?;
    Ok(())
}

/// Releases the lease after a failed attempt and schedules the next one.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn defer_mail<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
    next_attempt_at: i64,
    error: &str,
) -> anyhow::Result<()> {
    sqlx::query(
        "update mail_message set next_attempt_at = $2, lease_until = null, last_error = $3 where id = $1",
    )
    .bind(id)
    .bind(next_attempt_at)
    .bind(error)
    .execute(ex)
    .await
    .context("defer mail")?;
    Ok(())
}

/// Gives up on a message that can never be sent (e.g. an address lettre
/// cannot parse): its bodies go, the error stays for the operator.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn abandon_mail<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
    error: &str,
) -> anyhow::Result<()> {
    sqlx::query(
        "update mail_message set body_text = null, body_html = null, lease_until = null, last_error = $2 \
         where id = $1",
    )
    .bind(id)
    .bind(error)
    .execute(ex)
    .await
    .context("abandon mail")?;
    Ok(())
}

/// Deletes the bodies of unsent messages whose token has expired (SPEC §2),
/// and forgets messages (sent or not) whose token expired before `forget_before`.
/// Returns the number of bodies cleared.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn purge_expired_mail(
    conn: &mut sqlx::AnyConnection,
    now: i64,
    forget_before: i64,
) -> anyhow::Result<u64> {
    let cleared = sqlx::query(
        "update mail_message set body_text = null, body_html = null \
         where sent_at is null and expires_at <= $1 and (body_text is not null or body_html is not null)",
    )
    .bind(now)
    .execute(&mut *conn)
    .await
    .context("clear expired mail bodies")?
    .rows_affected();
    sqlx::query("delete from mail_message where expires_at < $1")
        .bind(forget_before)
        .execute(&mut *conn)
        .await
        .context("delete old mail")?;
    Ok(cleared)
}

/// Messages still to be sent: unsent, with their bodies, link not yet expired.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn count_queued_mail<'e>(ex: impl Executor<'e, Database = Any>, now: i64) -> anyhow::Result<i64> {
    let (count,): (i64,) = sqlx::query_as(
        "select count(*) from mail_message where sent_at is null and body_text is not null and expires_at > $1",
    )
    .bind(now)
    .fetch_one(ex)
    .await
    .context("count queued mail")?;
    Ok(count)
}
