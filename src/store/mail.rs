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

#[tracing::instrument(skip_all)]
pub async fn insert_mail<'e>(ex: impl Executor<'e, Database = Any>, mail: &NewMail<'_>) -> anyhow::Result<()> {
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
