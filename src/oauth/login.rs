//! Checking an e-mail address and password: shared by the password grant,
//! the hosted `/login` page and `/session/login`, so that back-off, timing
//! and answers are the same wherever a password is typed.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::app::AppState;
use crate::error::Error;
use crate::password::Verdict;
use crate::store::login_attempt::{
    AttemptRules, FINISH_FAILED_ATTEMPT, LoginGate, begin_login_attempt_direct,
    begin_login_attempt_with_user, clear_login_attempts, finish_failed_attempt,
};
use crate::store::user::{UserRow, find_login_user, update_user_password_hash};
use crate::tokens::TokenDigest;

/// Why a login was refused.
#[derive(Debug)]
pub enum LoginRefusal {
    /// Unknown user, wrong password, disabled, or backed off: one answer for all.
    Invalid,
    /// The password was right but the address is not verified yet (SPEC §10).
    Unverified,
    Internal(Error),
}

impl From<Error> for LoginRefusal {
    fn from(e: Error) -> LoginRefusal {
        LoginRefusal::Internal(e)
    }
}

impl From<anyhow::Error> for LoginRefusal {
    fn from(e: anyhow::Error) -> LoginRefusal {
        LoginRefusal::Internal(Error::Internal(e))
    }
}

/// A username and password that passed, with the back-off key to clear once
/// the login is recorded.
pub struct LoginSuccess {
    pub user: UserRow,
    pub attempt: TokenDigest,
}

/// Checks a password login. Every refusal costs one argon2 verification and
/// counts towards the username's back-off (SPEC §10), account or not.
pub async fn verify_login(
    state: &AppState,
    username: &str,
    password: &SecretString,
    now: i64,
) -> Result<LoginSuccess, LoginRefusal> {
    let lookup = crate::domain::normalise_username(username);
    // The attempt counts as a failure until it succeeds.
    let attempt = TokenDigest::of(&lookup);
    let email = (lookup.len() <= 254).then_some(lookup.as_str());
    let (gate, user) = wait_for_gate(state, &attempt, email, now).await?;
    // Hashes are of the NFKC form (SPEC §6), whatever form was typed.
    let password = crate::domain::normalise_password(password.expose_secret());
    // Unknown users verify a dummy hash and backed-off ones verify all the
    // same: every refusal costs one argon2 run.
    let verdict = state
        .hasher
        .verify(password.clone(), user.as_ref().map(|u| u.password_hash.clone()))
        .await?;
    let user = match user {
        Some(user) if gate.is_open() && verdict != Verdict::Wrong && user.is_active() => user,
        _ => {
            tracing::warn!(
                event = "login_failed",
                backed_off = !gate.is_open(),
                "login refused"
            );
            state.metrics.login_failed();
            if gate.is_open() {
                finish_failed(state, &attempt).await;
            }
            if let LoginGate::Open { failures, backoff } = gate
                && backoff > 0
            {
                tracing::warn!(
                    event = "account_locked",
                    failures,
                    backoff_seconds = backoff,
                    "login back-off started"
                );
            }
            return Err(LoginRefusal::Invalid);
        }
    };
    if state.settings.require_verified_email && user.email_verified_at.is_none() {
        // The password was right: the count starts again.
        let mut tx = state.db.begin_write().await?;
        clear_login_attempts(tx.conn(), &attempt).await?;
        tx.commit().await?;
        return Err(LoginRefusal::Unverified);
    }
    if verdict == Verdict::RightNeedsRehash {
        // Best effort: a failure here must not fail the login.
        match state.hasher.hash(password).await {
            Ok(hash) => match state.db.begin_write().await {
                Ok(mut tx) => {
                    if update_user_password_hash(tx.conn(), &user.id, &hash)
                        .await
                        .is_ok()
                    {
                        let _ = tx.commit().await;
                    }
                }
                Err(e) => tracing::warn!("password rehash skipped: {e:#}"),
            },
            Err(e) => tracing::warn!("password rehash failed: {e:#}"),
        }
    }
    Ok(LoginSuccess { user, attempt })
}

/// The longest a login waits for the attempts in flight that back its
/// username off, before it is refused like any backed-off attempt.
const MAX_WAIT: Duration = Duration::from_secs(10);
/// The first pause before asking again, doubling up to [`MAX_PAUSE`]: an
/// argon2 check takes some tens of milliseconds.
const FIRST_PAUSE: Duration = Duration::from_millis(20);
const MAX_PAUSE: Duration = Duration::from_millis(250);

/// Starts the attempt. While the username is backed off only until the
/// attempts in flight finish (one of them may succeed and clear it), waits
/// and asks again, on whichever instance those run: so right passwords
/// typed side by side all get in, while the guesses that reach the password
/// check stay those the schedule allows.
async fn wait_for_gate(
    state: &AppState,
    attempt: &TokenDigest,
    email: Option<&str>,
    now: i64,
) -> Result<(LoginGate, Option<UserRow>), LoginRefusal> {
    let waited_from = tokio::time::Instant::now();
    let mut pause = FIRST_PAUSE;
    let mut at = now;
    loop {
        let (gate, user) = begin_attempt(state, attempt, email, at).await?;
        match gate {
            LoginGate::BackedOff { in_flight, .. }
                if in_flight > 0 && waited_from.elapsed() + pause <= MAX_WAIT =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
                at = crate::now().max(now);
            }
            _ => return Ok((gate, user)),
        }
    }
}

/// One try at the gate, with the user the address names.
async fn begin_attempt(
    state: &AppState,
    attempt: &TokenDigest,
    email: Option<&str>,
    now: i64,
) -> Result<(LoginGate, Option<UserRow>), LoginRefusal> {
    let rules = AttemptRules {
        backoff_after: state.settings.login_backoff_after,
        // Whole seconds: an attempt started late in second `now` may run
        // into the second after its timeout.
        in_flight_for: state.settings.request_timeout + 1,
    };
    // On an SQLite file the attempt on this thread (`Db::direct_write`) and
    // the user through the reader; else both on one lane (a pooled
    // connection costs one more trip, a ping, when it is given back), on
    // PostgreSQL in one statement.
    let direct = state
        .db
        .direct_write("count login attempt", |tx| {
            begin_login_attempt_direct(tx, attempt, now, rules)
        })
        .await;
    match direct {
        Some(gate) => {
            let gate = gate?;
            let user = match email {
                Some(email) => find_login_user(&state.db, email).await?,
                None => None,
            };
            Ok((gate, user))
        }
        None => {
            let _writer = state.db.writer().await;
            let mut lane = state.db.lane().await?;
            let counted = state
                .db
                .bounded(begin_login_attempt_with_user(
                    lane.conn(),
                    state.db.backend(),
                    attempt,
                    email,
                    now,
                    rules,
                ))
                .await?;
            lane.release();
            Ok(counted)
        }
    }
}

/// Takes a failed attempt out of the in-flight count. Best effort: the
/// refusal stands either way, and an attempt left in flight stops counting
/// when its request would have timed out.
async fn finish_failed(state: &AppState, attempt: &TokenDigest) {
    let direct = state
        .db
        .direct_write("finish login attempt", |tx| {
            tx.prepare_cached(FINISH_FAILED_ATTEMPT)?
                .execute(rusqlite::named_params! {"$1": attempt.as_bytes()})
        })
        .await;
    let finished = match direct {
        Some(done) => done.map(drop),
        None => {
            // One statement: no transaction, only SQLite's write lock.
            let _writer = state.db.writer().await;
            finish_failed_attempt(state.db.pool(), attempt).await
        }
    };
    if let Err(e) = finished {
        tracing::warn!("failed login left in flight: {e:#}");
    }
}
