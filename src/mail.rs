//! Mail: messages are queued in the database in the transaction that made
//! the token they carry; a background sender delivers them (SMTP, or `.eml`
//! files in the outbox when no SMTP server is configured).

mod sender;
pub mod templates;
mod transport;

pub use sender::{LEASE, backoff, run_sender};
pub use transport::{DeliveryError, Mailer, message_id, message_id_host};

use crate::store::mail::{NewMail, insert_mail};

/// A message ready to queue: subject and both bodies.
#[derive(Debug, Clone)]
pub struct Letter {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Queues `letter` for `recipient` on `conn` (inside the caller's transaction).
/// Wake the sender after the commit with `AppState::mail_wakeup`.
pub async fn enqueue(
    conn: &mut sqlx::AnyConnection,
    recipient: &str,
    user_id: Option<&str>,
    letter: &Letter,
    now: i64,
    expires_at: i64,
) -> anyhow::Result<()> {
    let id = uuid::Uuid::new_v4().to_string();
    insert_mail(
        conn,
        &NewMail {
            id: &id,
            recipient,
            subject: &letter.subject,
            body_text: &letter.text,
            body_html: &letter.html,
            user_id,
            created_at: now,
            expires_at,
        },
    )
    .await
}
