//! Checking an e-mail address and password: shared by the password grant,
//! the hosted `/login` page and `/session/login`, so that back-off, timing
//! and answers are the same wherever a password is typed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::app::AppState;
use crate::error::Error;
use crate::password::Verdict;
use crate::store::login_attempt::{
    AttemptRules, FINISH_FAILED_ATTEMPT, LoginGate, begin_login_attempt_direct,
    begin_login_attempt_with_user, clear_login_attempts, finish_failed_attempt, peek_login_attempt,
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

/// A username and password that passed, with the attempt still in flight:
/// the caller clears its back-off row with the login it records, then calls
/// [`InFlight::cleared`].
pub struct LoginSuccess {
    pub user: UserRow,
    pub attempt: InFlight,
}

/// A counted attempt in flight (`store::login_attempt`), from the moment its
/// count is known to be committed. If it is dropped before it is settled (an
/// error, a cancelled or timed-out request, a login that could not be
/// recorded), it takes itself out of the in-flight count in the background,
/// so that no later login waits for it. (A request cancelled while the
/// counting statement is out, or after a success's clearing commit but
/// before [`InFlight::cleared`], leaves the count to expire, or takes one
/// from a new row: a waiting login is then refused a little early.)
pub struct InFlight {
    state: AppState,
    digest: TokenDigest,
    settled: bool,
}

impl InFlight {
    /// The username's back-off key.
    pub fn digest(&self) -> &TokenDigest {
        &self.digest
    }

    /// The login was recorded and cleared the back-off row with it.
    pub fn cleared(mut self) {
        self.settled = true;
        self.state.login_waits.settled(&self.digest);
    }

    /// The attempt failed: taken out of the count before the refusal is
    /// answered, exactly once even if the request is cancelled meanwhile.
    async fn failed(mut self) {
        self.settled = true;
        let (state, digest) = (self.state.clone(), self.digest.clone());
        let _ = tokio::spawn(async move { finish_failed(&state, &digest).await }).await;
    }
}

/// The logins of this instance waiting for a username's attempts in flight
/// ([`wait_for_gate`]), woken as soon as one of its attempts here settles;
/// attempts on other instances are seen by polling. Keyed by username, so
/// that a settled attempt wakes only the waiters it concerns.
#[derive(Default)]
pub struct LoginWaits(Mutex<HashMap<TokenDigest, Waiters>>);

/// One username's waiters: how many, and what wakes them.
#[derive(Default)]
struct Waiters {
    count: usize,
    wake: Arc<tokio::sync::Notify>,
}

impl LoginWaits {
    /// To call once an attempt for `username` (its digest) is settled and
    /// committed, or given up: wakes this instance's waiters for it, if any.
    fn settled(&self, username: &TokenDigest) {
        let waits = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(waiters) = waits.get(username) {
            waiters.wake.notify_waiters();
        }
    }

    /// Registers a waiter for `username` until the returned handle is dropped.
    fn wait(&self, username: &TokenDigest) -> Waiting<'_> {
        let mut waits = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let waiters = waits.entry(username.clone()).or_default();
        waiters.count += 1;
        Waiting {
            waits: self,
            username: username.clone(),
            wake: waiters.wake.clone(),
        }
    }
}

/// A registered waiter of [`LoginWaits`].
struct Waiting<'a> {
    waits: &'a LoginWaits,
    username: TokenDigest,
    wake: Arc<tokio::sync::Notify>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut waits = self.waits.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(waiters) = waits.get_mut(&self.username) {
            // Each handle counted once, when it was made.
            debug_assert!(waiters.count > 0, "a waiter left twice");
            waiters.count = waiters.count.saturating_sub(1);
            if waiters.count == 0 {
                waits.remove(&self.username);
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let (state, digest) = (self.state.clone(), self.digest.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(async move { finish_failed(&state, &digest).await })),
            // Only when the runtime is already gone: the count expires.
            Err(_) => tracing::warn!("login attempt left in flight: no runtime to settle it"),
        }
    }
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
    // An open gate's attempt comes with its guard: settled whatever happens.
    let Started {
        gate,
        user,
        in_flight,
    } = wait_for_gate(state, &attempt, email, now).await?;
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
            if let Some(in_flight) = in_flight {
                in_flight.failed().await;
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
    // Open, or the match above returned.
    let Some(in_flight) = in_flight else {
        return Err(LoginRefusal::Invalid);
    };
    if state.settings.require_verified_email && user.email_verified_at.is_none() {
        // The password was right: the count starts again.
        let mut tx = state.db.begin_write().await?;
        clear_login_attempts(tx.conn(), in_flight.digest()).await?;
        tx.commit().await?;
        in_flight.cleared();
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
    Ok(LoginSuccess {
        user,
        attempt: in_flight,
    })
}

/// The longest a login waits for the attempts in flight that back its
/// username off, before it is refused like any backed-off attempt; at most
/// half the request timeout, which leaves the other half for the argon2
/// check that follows, so that the refusal is still `invalid_grant` rather
/// than the timeout's 503 (unless the machine is far behind).
const MAX_WAIT: Duration = Duration::from_secs(10);
/// The first pause before looking again, doubling up to [`MAX_PAUSE`]: an
/// argon2 check takes some tens of milliseconds.
const FIRST_PAUSE: Duration = Duration::from_millis(20);
const MAX_PAUSE: Duration = Duration::from_millis(250);

/// Starts the attempt. While the username is backed off and attempts are
/// still in flight (any of them may succeed and clear it), waits, only
/// reading the row (as soon as one of them settles on this instance, else
/// after a pause), until none is or the back-off is over, and starts it
/// again: on whichever instance those attempts run. Right passwords typed
/// side by side thus get in one after another, while the guesses that reach
/// the password check stay those the schedule allows.
async fn wait_for_gate(
    state: &AppState,
    attempt: &TokenDigest,
    email: Option<&str>,
    now: i64,
) -> Result<Started, LoginRefusal> {
    let timeout = Duration::from_secs(state.settings.request_timeout.unsigned_abs());
    let limit = MAX_WAIT.min(timeout / 2);
    let waited_from = tokio::time::Instant::now();
    let mut pause = FIRST_PAUSE;
    let mut at = now;
    let mut waiting: Option<Waiting<'_>> = None;
    loop {
        // A `Notified` hears every settlement from its creation: once this
        // login waits, it listens from before each read of the row, so that
        // no settlement here after that read goes unnoticed. (Before its
        // first wait, one in between is seen at the first pause.)
        let listening = waiting.as_ref().map(|w| Arc::clone(&w.wake));
        let early = listening.as_deref().map(tokio::sync::Notify::notified);
        let started = begin_attempt(state, attempt, email, at).await?;
        if !matches!(started.gate, LoginGate::BackedOff { in_flight, .. } if in_flight > 0) {
            return Ok(started);
        }
        // Woken by a settlement on this instance, else at the next pause (a
        // settlement on another instance).
        let wake = match &listening {
            Some(wake) => Arc::clone(wake),
            None => Arc::clone(&waiting.insert(state.login_waits.wait(attempt)).wake),
        };
        let mut settled = std::pin::pin!(match early {
            Some(early) => early,
            None => wake.notified(),
        });
        loop {
            if waited_from.elapsed() + pause > limit {
                return Ok(started);
            }
            tokio::select! {
                () = settled.as_mut() => {}
                () = tokio::time::sleep(pause) => pause = (pause * 2).min(MAX_PAUSE),
            }
            settled.set(wake.notified());
            at = crate::now().max(now);
            match peek_login_attempt(&state.db, attempt, at).await? {
                Some((until, in_flight)) if at < until && in_flight > 0 => {}
                // Cleared, over, or nothing left in flight: start again.
                _ => break,
            }
        }
    }
}

/// What one try at the gate found.
struct Started {
    gate: LoginGate,
    /// The user the address names.
    user: Option<UserRow>,
    /// The attempt's guard, if the gate opened.
    in_flight: Option<InFlight>,
}

/// One try at the gate.
async fn begin_attempt(
    state: &AppState,
    attempt: &TokenDigest,
    email: Option<&str>,
    now: i64,
) -> Result<Started, LoginRefusal> {
    let guard = |gate: &LoginGate| {
        gate.is_open().then(|| InFlight {
            state: state.clone(),
            digest: attempt.clone(),
            settled: false,
        })
    };
    let rules = AttemptRules {
        backoff_after: state.settings.login_backoff_after,
        // Whole seconds: an attempt started late in second `now` may run
        // into the second after its timeout.
        in_flight_for: state.settings.request_timeout.saturating_add(1),
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
            let in_flight = guard(&gate);
            let user = match email {
                Some(email) => find_login_user(&state.db, email).await?,
                None => None,
            };
            Ok(Started {
                gate,
                user,
                in_flight,
            })
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
            let (gate, user) = counted;
            Ok(Started {
                in_flight: guard(&gate),
                gate,
                user,
            })
        }
    }
}

/// Takes a failed attempt out of the in-flight count. Best effort: the
/// refusal stands either way, and an attempt left in flight stops counting
/// a request timeout and a second after the username's last attempt
/// started.
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
            async {
                let _writer = state.db.writer().await;
                let mut lane = state.db.lane().await?;
                state
                    .db
                    .bounded(finish_failed_attempt(lane.conn(), attempt))
                    .await?;
                lane.release();
                Ok(())
            }
            .await
        }
    };
    if let Err(e) = finished {
        tracing::warn!("failed login left in flight: {e:#}");
    }
    state.login_waits.settled(attempt);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A settled attempt wakes the waiters of its username, not others', and
    /// the last waiter to leave takes its entry with it.
    #[tokio::test]
    async fn a_settled_attempt_wakes_only_its_usernames_waiters() {
        let waits = LoginWaits::default();
        let (ada, bob) = (TokenDigest::of("ada"), TokenDigest::of("bob"));
        let first = waits.wait(&ada);
        let second = waits.wait(&ada);
        let other = waits.wait(&bob);
        let (ada_wake, bob_wake) = (first.wake.clone(), other.wake.clone());
        let mut woken = std::pin::pin!(ada_wake.notified());
        let mut not_woken = std::pin::pin!(bob_wake.notified());

        waits.settled(&ada);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(woken.as_mut().poll(&mut cx).is_ready(), "ada's waiter woken");
        assert!(
            not_woken.as_mut().poll(&mut cx).is_pending(),
            "bob's waiter left asleep"
        );

        drop(first);
        assert_eq!(waits.0.lock().unwrap().len(), 2, "ada still has a waiter");
        drop((second, other));
        assert_eq!(waits.0.lock().unwrap().len(), 0, "no waiter, no entry");
    }

    /// A successful check hands back its attempt still in flight. Dropped
    /// unsettled (an error or a cancelled request later on), it takes itself
    /// out of the count; settled as cleared, it leaves the row to the
    /// caller's statement.
    #[tokio::test]
    async fn an_attempt_given_up_halfway_leaves_nothing_in_flight() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let url = crate::store::test_database(dir.path()).await?;
        let mut config = crate::config::Config::for_tests(dir.path(), &url);
        config.listen = "127.0.0.1:0".into();
        let app = crate::app::Application::build(config.settings()?).await?;
        let state = app.state().clone();
        let password = SecretString::from("correct horse battery staple");
        let user = UserRow {
            id: "u-in-flight".into(),
            email: "ada@example.com".into(),
            email_lower: "ada@example.com".into(),
            password_hash: crate::password::hash_blocking(&password)?,
            name: None,
            roles: String::new(),
            email_verified_at: Some(0),
            disabled_at: None,
            created_at: 0,
        };
        assert!(crate::store::user::insert_user(state.db.pool(), &user).await?);
        let in_flight = || async {
            let (n,): (i64,) = sqlx::query_as("select in_flight from login_attempt")
                .fetch_one(state.db.pool())
                .await?;
            anyhow::Ok(n)
        };
        let login = || async {
            verify_login(&state, "Ada@Example.com", &password, crate::now())
                .await
                .map_err(|e| anyhow::anyhow!("refused: {e:?}"))
        };

        let success = login().await?;
        assert_eq!(in_flight().await?, 1);
        drop(success);
        let dropped_at = std::time::Instant::now();
        while in_flight().await? != 0 {
            assert!(dropped_at.elapsed() < Duration::from_secs(5), "still in flight");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        login().await?.attempt.cleared();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(in_flight().await?, 1, "settled: the caller clears the row");
        Ok(())
    }
}
