//! Password-login attempts per normalised username and the back-off they
//! earn (SPEC §10): after `GATEHOUSE_LOGIN_BACKOFF_AFTER` failures in a row,
//! attempts are refused for [`FIRST_BACKOFF`], doubling with each further
//! failure up to [`MAX_BACKOFF`]. A success clears the count; so do
//! [`FORGET_AFTER`] without any attempt.
//!
//! An attempt is counted as a failure when it *starts*, in one write
//! transaction that also checks the back-off, and the count is cleared if it
//! succeeds. Counting afterwards would let many parallel guesses pass the
//! check together each time a back-off ends; this way the guesses that reach
//! the password check are exactly those the schedule allows, on every
//! instance. Attempts refused during a back-off are not counted: the schedule
//! alone decides how long an account stays closed.

use anyhow::Context;
use sqlx::{Any, AnyConnection, Executor};

use crate::tokens::TokenDigest;

/// The first back-off. Instants are whole seconds and an attempt is refused
/// while `now < blocked_until`, so the first refusal lasts between 1 and 2 s.
pub const FIRST_BACKOFF: i64 = 2;
/// The longest back-off: 15 minutes (SPEC §1).
pub const MAX_BACKOFF: i64 = 15 * 60;
/// A count untouched this long starts again from zero.
pub const FORGET_AFTER: i64 = 24 * 3600;

/// What a starting attempt may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginGate {
    /// Check the password. `failures` already counts this attempt; if it
    /// fails, the username is backed off for `backoff` seconds (0: not yet).
    Open { failures: i64, backoff: i64 },
    /// Backed off until then: refuse whatever the password.
    BackedOff { until: i64 },
}

impl LoginGate {
    pub fn is_open(&self) -> bool {
        matches!(self, LoginGate::Open { .. })
    }
}

/// The back-off after `failures` failures in a row when it starts after
/// `after` of them: 0 before, then [`FIRST_BACKOFF`] doubling per failure,
/// at most [`MAX_BACKOFF`].
pub fn backoff_seconds(failures: i64, after: u32) -> i64 {
    let extra = failures - i64::from(after);
    if extra < 0 {
        return 0;
    }
    let doublings = u32::try_from(extra).unwrap_or(u32::MAX).min(16);
    FIRST_BACKOFF.saturating_mul(1_i64 << doublings).min(MAX_BACKOFF)
}

/// Starts an attempt for `username` (the digest of the normalised
/// username): refuses it during a back-off, otherwise counts it as a failure
/// and sets the back-off it earns should it fail. Run it in a write
/// transaction; on PostgreSQL the upsert locks the row until commit, on
/// SQLite the write transaction holds the whole database.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn begin_login_attempt(
    conn: &mut AnyConnection,
    username: &TokenDigest,
    now: i64,
    backoff_after: u32,
) -> anyhow::Result<LoginGate> {
    let (failures, last_attempt_at, blocked_until): (i64, i64, i64) = sqlx::query_as(
        "insert into login_attempt (username_digest, failures, last_attempt_at, blocked_until) \
         values ($1, 0, $2, 0) \
         on conflict (username_digest) do update set failures = login_attempt.failures \
         returning failures, last_attempt_at, blocked_until",
    )
    .bind(username.as_bytes().to_vec())
    .bind(now)
    .fetch_one(&mut *conn)
    .await
    .context("lock login attempts")?;
    if now < blocked_until {
        return Ok(LoginGate::BackedOff { until: blocked_until });
    }
    let failures = if last_attempt_at < now - FORGET_AFTER {
        1
    } else {
        failures.saturating_add(1)
    };
    let backoff = backoff_seconds(failures, backoff_after);
    sqlx::query(
        "update login_attempt set failures = $2, last_attempt_at = $3, blocked_until = $4 \
         where username_digest = $1",
    )
    .bind(username.as_bytes().to_vec())
    .bind(failures)
    .bind(now)
    .bind(if backoff > 0 { now + backoff } else { 0 })
    .execute(&mut *conn)
    .await
    .context("count login attempt")?;
    Ok(LoginGate::Open { failures, backoff })
}

/// A successful login: the username starts again from zero.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn clear_login_attempts<'e>(
    ex: impl Executor<'e, Database = Any>,
    username: &TokenDigest,
) -> anyhow::Result<()> {
    sqlx::query("delete from login_attempt where username_digest = $1")
        .bind(username.as_bytes().to_vec())
        .execute(ex)
        .await
        .context("clear login attempts")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_starts_after_the_threshold_and_doubles_to_fifteen_minutes() {
        let schedule: Vec<i64> = (1..=15).map(|f| backoff_seconds(f, 5)).collect();
        assert_eq!(
            schedule,
            [0, 0, 0, 0, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900]
        );
        assert_eq!(backoff_seconds(i64::MAX, 5), MAX_BACKOFF);
        assert_eq!(backoff_seconds(1, 1), FIRST_BACKOFF);
    }
}
