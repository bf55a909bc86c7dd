//! The background sender: delivers queued mail, retrying with back-off.
//!
//! Requests only queue mail (in their own transaction) and wake the sender,
//! so an SMTP outage never makes an API call fail or wait. The sender looks
//! for due messages when woken and at least once a second. Each message is
//! claimed with one conditional UPDATE that leases it for [`LEASE`] seconds,
//! so of several instances sharing one database exactly one sends it; a
//! crash after sending but before recording it means a second delivery after
//! the lease (at least once, normally exactly once, same `Message-ID`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tracing::Instrument;

use super::transport::{DeliveryError, Mailer};
use crate::store::Db;
use crate::store::mail::{
    abandon_mail, claim_mail, defer_mail, mark_mail_sent, purge_expired_mail, select_due_mail,
};

/// Seconds a claimed message is reserved for the instance sending it; well
/// above the longest SMTP conversation the mailer allows.
pub const LEASE: i64 = 60;
/// Messages examined per look at the queue.
const BATCH: i64 = 20;
/// Seconds between sweeps of expired bodies.
const PURGE_EVERY: i64 = 60;
/// Rows are forgotten this long after the token they carried expired.
const KEEP_AFTER_EXPIRY: i64 = 7 * 24 * 3600;
/// The longest wait between two attempts at one message.
const MAX_BACKOFF: i64 = 300;

/// Seconds to wait after the `attempts`-th failed attempt: 2, 4, 8, … capped
/// at five minutes.
pub fn backoff(attempts: i64) -> i64 {
    let exponent = attempts.clamp(1, 16) as u32;
    (1_i64 << exponent).min(MAX_BACKOFF)
}

/// Runs until `stop` turns true (or its sender is dropped). A message being
/// sent when the stop comes is finished and recorded first.
pub async fn run_sender(db: Db, mailer: Arc<Mailer>, wakeup: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    tracing::info!(transport = %mailer.describe(), "mail sender started");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_purge = 0;
    loop {
        if *stop.borrow() {
            break;
        }
        let now = crate::now();
        if now >= next_purge {
            next_purge = now + PURGE_EVERY;
            if let Err(e) = purge(&db, now).await {
                tracing::warn!("purging expired mail failed: {e:#}");
            }
        }
        let full_batch = match send_due(&db, &mailer, &stop).await {
            Ok(examined) => examined >= BATCH as usize,
            Err(e) => {
                tracing::warn!("mail queue unavailable: {e:#}");
                false
            }
        };
        if full_batch {
            // More may be due right now.
            continue;
        }
        tokio::select! {
            () = wakeup.notified() => {}
            _ = tick.tick() => {}
            changed = stop.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    tracing::info!("mail sender stopped");
}

async fn purge(db: &Db, now: i64) -> anyhow::Result<()> {
    let mut tx = db.begin_write().await?;
    let cleared = purge_expired_mail(tx.conn(), now, now - KEEP_AFTER_EXPIRY).await?;
    tx.commit().await?;
    if cleared > 0 {
        tracing::info!(count = cleared, "expired unsent mail dropped");
    }
    Ok(())
}

/// One look at the queue: claims and sends each due message in turn.
/// Returns how many candidates it examined.
async fn send_due(db: &Db, mailer: &Mailer, stop: &watch::Receiver<bool>) -> anyhow::Result<usize> {
    let ids = select_due_mail(db.pool(), crate::now(), BATCH).await?;
    for id in &ids {
        if *stop.borrow() {
            break;
        }
        let span = tracing::info_span!("mail", mail_id = %id);
        send_one(db, mailer, id).instrument(span).await?;
    }
    Ok(ids.len())
}

async fn send_one(db: &Db, mailer: &Mailer, id: &str) -> anyhow::Result<()> {
    let now = crate::now();
    let mut tx = db.begin_write().await?;
    let claimed = claim_mail(tx.conn(), id, now, now + LEASE).await?;
    tx.commit().await?;
    let Some(mail) = claimed else {
        // Another instance got it first, or it was sent meanwhile.
        return Ok(());
    };
    let result = mailer.deliver(&mail).await;
    let now = crate::now();
    let mut tx = db.begin_write().await?;
    match &result {
        Ok(()) => mark_mail_sent(tx.conn(), id, now).await?,
        Err(DeliveryError::Undeliverable(e)) => abandon_mail(tx.conn(), id, e).await?,
        Err(DeliveryError::Failed(e)) => defer_mail(tx.conn(), id, now + backoff(mail.attempts), e).await?,
    }
    tx.commit().await?;
    match result {
        Ok(()) => tracing::info!(attempts = mail.attempts, "mail delivered"),
        Err(DeliveryError::Undeliverable(e)) => {
            tracing::warn!(attempts = mail.attempts, error = %e, "mail undeliverable, dropped");
        }
        Err(DeliveryError::Failed(e)) => tracing::warn!(
            attempts = mail.attempts,
            retry_in_s = backoff(mail.attempts),
            error = %e,
            "mail delivery failed"
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_two_seconds_up_to_five_minutes() {
        let waits: Vec<i64> = (1..=10).map(backoff).collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff(0), 2);
        assert_eq!(backoff(i64::MAX), 300);
    }
}
