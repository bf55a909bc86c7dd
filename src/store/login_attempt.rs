//! Password-login attempts per normalised username and the back-off they
//! earn (SPEC §10): after `GATEHOUSE_LOGIN_BACKOFF_AFTER` failures in a row,
//! attempts are refused for [`FIRST_BACKOFF`], doubling with each further
//! failure up to [`MAX_BACKOFF`]. A success clears the count; so do
//! [`FORGET_AFTER`] without any attempt.
//!
//! An attempt is counted as a failure when it *starts*, in one statement
//! that also checks the back-off, and the count is cleared if it succeeds.
//! Counting afterwards would let many parallel guesses pass the check
//! together each time a back-off ends; this way the guesses that reach the
//! password check are exactly those the schedule allows, on every instance.
//! Attempts refused during a back-off are not counted: the schedule alone
//! decides how long an account stays closed.
//!
//! Counting at the start would also refuse right passwords checked side by
//! side: with more logins of one account in flight than the back-off allows,
//! the last ones found it backed off by the others, which had not failed.
//! So each row also counts the attempts in flight (started, not finished),
//! and the gate tells a back-off they could still lift from one earned by
//! failures alone ([`LoginGate::BackedOff::in_flight`]): the caller waits
//! for the first kind and asks again. A success deletes the row; a failure
//! takes itself out of the in-flight count ([`finish_failed_attempt`]), and
//! so, nearly always, does one given up halfway (an error, a request
//! cancelled: `oauth::login::InFlight`). One that never finishes at all
//! (its instance died) stops counting as in flight
//! [`AttemptRules::in_flight_for`] after the username's last attempt
//! started.

use anyhow::Context;
use sqlx::{Any, Executor, FromRow, Row};

use super::user::UserRow;
use crate::tokens::TokenDigest;

/// The first back-off. Instants are whole seconds and an attempt is refused
/// while `now < blocked_until`, so the first refusal lasts between 1 and 2 s.
pub const FIRST_BACKOFF: i64 = 2;
/// The longest back-off: 15 minutes (SPEC §1).
pub const MAX_BACKOFF: i64 = 15 * 60;
/// A count untouched this long starts again from zero.
pub const FORGET_AFTER: i64 = 24 * 3600;

// [`begin_login_attempt`]'s SQL caps the doubling at 16 like
// [`backoff_seconds`], which needs the cap reached by then.
const _: () = assert!(FIRST_BACKOFF << 16 >= MAX_BACKOFF);

/// The settings an attempt is counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptRules {
    /// Failures in a row before the back-off starts
    /// (`GATEHOUSE_LOGIN_BACKOFF_AFTER`).
    pub backoff_after: u32,
    /// Seconds after the username's last attempt started at which the
    /// attempts still unfinished no longer count as in flight: the request
    /// timeout and a second (instants are whole seconds), since no attempt
    /// outlives its request.
    pub in_flight_for: i64,
}

/// What a starting attempt may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginGate {
    /// Check the password. `failures` already counts this attempt; if it
    /// fails, the username is backed off for `backoff` seconds (0: not yet).
    Open { failures: i64, backoff: i64 },
    /// Backed off until then: refuse whatever the password, unless
    /// `in_flight` attempts, any of which may still succeed and clear the
    /// back-off, are being checked; then wait and ask again.
    BackedOff { until: i64, in_flight: i64 },
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

/// The failures counting the starting attempt, from the row it updates:
/// 1 if the last attempt is older than [`FORGET_AFTER`] (`$4`), else one
/// more.
const COUNTED: &str =
    "(case when login_attempt.last_attempt_at < $4 then 1 else login_attempt.failures + 1 end)";

/// [`begin_login_attempt`]'s statement: [`backoff_seconds`] in SQL, with
/// `$5` = after, `$6` = [`FIRST_BACKOFF`], `$7` = [`MAX_BACKOFF`] and `$8` =
/// the doublings from which [`MAX_BACKOFF`] applies; the attempt is in
/// flight until `$9`, with those of the row still in flight at `$2`. A row
/// backed off at `$2` is not updated, so nothing is returned for it.
static BEGIN_ATTEMPT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "insert into login_attempt \
             (username_digest, failures, last_attempt_at, blocked_until, in_flight, in_flight_until) \
         values ($1, 1, $2, $3, 1, $9) \
         on conflict (username_digest) do update set \
             failures = {COUNTED}, \
             last_attempt_at = $2, \
             blocked_until = case \
                 when {COUNTED} < $5 then 0 \
                 when {COUNTED} - $5 >= $8 then $2 + $7 \
                 else $2 + ($6 << cast({COUNTED} - $5 as integer)) end, \
             in_flight = (case when login_attempt.in_flight_until < $2 then 0 \
                 else login_attempt.in_flight end) + 1, \
             in_flight_until = $9 \
         where login_attempt.blocked_until <= $2 \
         returning failures"
    )
});

/// Starts an attempt for `username` (the digest of the normalised
/// username): refuses it during a back-off, otherwise counts it as a failure
/// and in flight, and sets the back-off it earns should it fail. One
/// statement, so atomic: on PostgreSQL concurrent attempts wait for the
/// row's lock and see each other's counts. On SQLite run it under
/// [`super::Db::writer`]. A backed-off username is left as it is (refusals
/// count nothing).
#[tracing::instrument(level = "debug", skip_all)]
pub async fn begin_login_attempt(
    conn: &mut sqlx::AnyConnection,
    username: &TokenDigest,
    now: i64,
    rules: AttemptRules,
) -> anyhow::Result<LoginGate> {
    let counted = attempt_query(&BEGIN_ATTEMPT, username, now, rules)
        .fetch_optional(&mut *conn)
        .await
        .context("count login attempt")?;
    match counted.map(|row| row.try_get::<i64, _>(0)).transpose()? {
        Some(failures) => Ok(open_gate(failures, rules)),
        None => backed_off(conn, username, now).await,
    }
}

/// The gate of a username whose attempt was refused: backed off until the
/// row says, with the attempts it still has in flight. A row gone
/// meanwhile was cleared by a success (or pruned): then one in flight, so
/// that the caller asks again.
async fn backed_off(
    conn: &mut sqlx::AnyConnection,
    username: &TokenDigest,
    now: i64,
) -> anyhow::Result<LoginGate> {
    let (until, in_flight): (i64, i64) = sqlx::query_as(BLOCKED_UNTIL)
        .bind(username.as_bytes().to_vec())
        .bind(now)
        .fetch_optional(conn)
        .await
        .context("read login back-off")?
        .unwrap_or((now + 1, 1));
    Ok(LoginGate::BackedOff { until, in_flight })
}

/// [`begin_login_attempt`] and the lookup of the user `email_lower` names
/// (none: no lookup) on one connection. On PostgreSQL one statement does
/// both (one round trip fewer for every login); SQLite cannot put an
/// `insert` in a `with`, so there they are two, to run under
/// [`super::Db::writer`] as [`begin_login_attempt`] says.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn begin_login_attempt_with_user(
    conn: &mut sqlx::AnyConnection,
    backend: super::Backend,
    username: &TokenDigest,
    email_lower: Option<&str>,
    now: i64,
    rules: AttemptRules,
) -> anyhow::Result<(LoginGate, Option<UserRow>)> {
    if backend == super::Backend::Sqlite {
        let gate = begin_login_attempt(&mut *conn, username, now, rules).await?;
        let user = match email_lower {
            Some(email) => super::user::find_user_by_email(conn, email).await?,
            None => None,
        };
        return Ok((gate, user));
    }
    let row = attempt_query(&BEGIN_ATTEMPT_WITH_USER, username, now, rules)
        .bind(email_lower.map(str::to_owned))
        .fetch_one(&mut *conn)
        .await
        .context("count login attempt")?;
    let user = match row.try_get::<Option<String>, _>("id")? {
        Some(_) => Some(UserRow::from_row(&row)?),
        None => None,
    };
    let gate = match row.try_get::<Option<i64>, _>("counted_failures")? {
        Some(failures) => open_gate(failures, rules),
        None => backed_off(conn, username, now).await?,
    };
    Ok((gate, user))
}

/// [`BEGIN_ATTEMPT`] and the user with `email_lower = $10` (a row of nulls
/// for none), for PostgreSQL. The count is null for a backed-off username.
static BEGIN_ATTEMPT_WITH_USER: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "with counted as ({}) \
         select (select failures from counted) as counted_failures, {} \
         from (select 1) as one left join user_account u on u.email_lower = $10",
        *BEGIN_ATTEMPT,
        super::user::qualified_columns("u"),
    )
});

/// [`begin_login_attempt`] in a transaction of [`super::Db::direct_write`].
pub fn begin_login_attempt_direct(
    tx: &rusqlite::Transaction<'_>,
    username: &TokenDigest,
    now: i64,
    rules: AttemptRules,
) -> rusqlite::Result<LoginGate> {
    use rusqlite::OptionalExtension;
    let [p2, p3, p4, p5, p6, p7, p8, p9] = attempt_parameters(now, rules);
    let counted: Option<i64> = tx
        .prepare_cached(&BEGIN_ATTEMPT)?
        .query_row(
            rusqlite::named_params! {
                "$1": username.as_bytes(), "$2": p2, "$3": p3, "$4": p4,
                "$5": p5, "$6": p6, "$7": p7, "$8": p8, "$9": p9,
            },
            |row| row.get(0),
        )
        .optional()?;
    match counted {
        Some(failures) => Ok(open_gate(failures, rules)),
        None => {
            let (until, in_flight) = tx
                .prepare_cached(BLOCKED_UNTIL)?
                .query_row(
                    rusqlite::named_params! {"$1": username.as_bytes(), "$2": now},
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?
                .unwrap_or((now + 1, 1));
            Ok(LoginGate::BackedOff { until, in_flight })
        }
    }
}

/// `sql`, which starts with [`BEGIN_ATTEMPT`], with that statement's
/// parameters `$1` to `$9` bound.
fn attempt_query<'q>(
    sql: &'q str,
    username: &TokenDigest,
    now: i64,
    rules: AttemptRules,
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
    let query = sqlx::query(sql).bind(username.as_bytes().to_vec());
    attempt_parameters(now, rules)
        .into_iter()
        .fold(query, |query, parameter| query.bind(parameter))
}

/// [`BEGIN_ATTEMPT`]'s parameters after the username: `$2` to `$9`.
fn attempt_parameters(now: i64, rules: AttemptRules) -> [i64; 8] {
    let first = backoff_seconds(1, rules.backoff_after);
    let capped_from = (0..16_i64)
        .find(|d| FIRST_BACKOFF << d >= MAX_BACKOFF)
        .unwrap_or(16);
    [
        now,
        if first > 0 { now + first } else { 0 },
        now - FORGET_AFTER,
        i64::from(rules.backoff_after),
        FIRST_BACKOFF,
        MAX_BACKOFF,
        capped_from,
        now.saturating_add(rules.in_flight_for),
    ]
}

fn open_gate(failures: i64, rules: AttemptRules) -> LoginGate {
    LoginGate::Open {
        failures,
        backoff: backoff_seconds(failures, rules.backoff_after),
    }
}

/// A backed-off username's end of back-off and its attempts in flight at `$2`.
const BLOCKED_UNTIL: &str = "select blocked_until, \
     case when in_flight_until < $2 then 0 else in_flight end \
     from login_attempt where username_digest = $1";

/// A username's end of back-off and its attempts in flight at `now`,
/// reading only (none: no row, never counted, cleared or pruned): what a
/// login waiting for those attempts looks at.
pub async fn peek_login_attempt(
    db: &super::Db,
    username: &TokenDigest,
    now: i64,
) -> anyhow::Result<Option<(i64, i64)>> {
    use rusqlite::OptionalExtension;
    db.hot_read(
        "read login back-off",
        |c| {
            c.prepare_cached(BLOCKED_UNTIL)?
                .query_row(
                    rusqlite::named_params! {"$1": username.as_bytes(), "$2": now},
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
        },
        |conn| {
            Box::pin(
                sqlx::query_as(BLOCKED_UNTIL)
                    .bind(username.as_bytes().to_vec())
                    .bind(now)
                    .fetch_optional(conn),
            )
        },
    )
    .await
}

/// [`finish_failed_attempt`]'s statement.
pub const FINISH_FAILED_ATTEMPT: &str = "update login_attempt set in_flight = in_flight - 1 \
     where username_digest = $1 and in_flight > 0";

/// A counted attempt failed: it stays counted, and is no longer in flight.
/// (Had the row been cleared by a success meanwhile and started again, or
/// were this a success cancelled just after its clearing commit, this takes
/// one off the new row's count: a waiting attempt is then refused a little
/// early, never let in.)
#[tracing::instrument(level = "debug", skip_all)]
pub async fn finish_failed_attempt<'e>(
    ex: impl Executor<'e, Database = Any>,
    username: &TokenDigest,
) -> anyhow::Result<()> {
    execute_for(ex, FINISH_FAILED_ATTEMPT, username, "finish login attempt").await
}

/// [`clear_login_attempts`]' statement.
pub const CLEAR_LOGIN_ATTEMPTS: &str = "delete from login_attempt where username_digest = $1";

/// A successful login: the username starts again from zero.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn clear_login_attempts<'e>(
    ex: impl Executor<'e, Database = Any>,
    username: &TokenDigest,
) -> anyhow::Result<()> {
    execute_for(ex, CLEAR_LOGIN_ATTEMPTS, username, "clear login attempts").await
}

/// Runs `sql`, whose one parameter `$1` is the username's digest.
async fn execute_for<'e>(
    ex: impl Executor<'e, Database = Any>,
    sql: &'static str,
    username: &TokenDigest,
    what: &'static str,
) -> anyhow::Result<()> {
    sqlx::query(sql)
        .bind(username.as_bytes().to_vec())
        .execute(ex)
        .await
        .context(what)?;
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

    /// The statement against the rule it implements, step by step: the
    /// count, the back-off it earns, refusals that count nothing, a count
    /// forgotten after a day, and the attempts in flight: those started at
    /// an even instant fail at once, the others never finish and stop
    /// counting `in_flight_for` after the last start.
    #[tokio::test]
    async fn the_statement_keeps_the_schedule() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let db = crate::store::Db::connect(&crate::store::test_database(dir.path()).await?).await?;
        db.migrate().await?;
        // Through sqlx, with the user lookup (one statement on PostgreSQL),
        // and on an SQLite file through rusqlite on this thread.
        #[derive(Debug, Clone, Copy, PartialEq)]
        enum Path {
            Sqlx,
            WithUser,
            Direct,
        }
        let paths: &[Path] = match db.backend() {
            crate::store::Backend::Sqlite => &[Path::Sqlx, Path::WithUser, Path::Direct],
            crate::store::Backend::Postgres => &[Path::Sqlx, Path::WithUser],
        };
        let account = UserRow {
            id: "u-attempts".into(),
            email: "Someone@example.com".into(),
            email_lower: "someone@example.com".into(),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA".into(),
            name: None,
            roles: String::new(),
            email_verified_at: None,
            disabled_at: None,
            created_at: 0,
        };
        assert!(super::super::user::insert_user(db.pool(), &account).await?);
        // Refusals seen with attempts in flight, and with none.
        let mut refused = [0; 2];
        for (&path, after) in paths.iter().flat_map(|d| [(d, 1), (d, 2), (d, 5)]) {
            let rules = AttemptRules {
                backoff_after: after,
                in_flight_for: 3,
            };
            let user = TokenDigest::of(&format!("user-{after}-{path:?}@example.com"));
            // (failures, last_attempt_at, blocked_until), as the module doc says,
            // and (in_flight, in_flight_until).
            let mut model: Option<(i64, i64, i64)> = None;
            let mut flight = (0_i64, 0_i64);
            let live = |(count, until): (i64, i64), now: i64| if until < now { 0 } else { count };
            let mut now = 1_000_000;
            // Exactly a day after the last attempt it still counts; a
            // second more and it is forgotten.
            let steps = [
                0,
                0,
                0,
                1,
                1,
                2,
                3,
                5,
                9,
                17,
                33,
                65,
                129,
                257,
                513,
                901,
                901,
                901,
                FORGET_AFTER,
                1,
                0,
                0,
                FORGET_AFTER + 1,
                0,
                0,
            ];
            for step in steps {
                now += step;
                let expected = match model {
                    Some((_, _, until)) if now < until => LoginGate::BackedOff {
                        until,
                        in_flight: live(flight, now),
                    },
                    _ => {
                        flight = (live(flight, now) + 1, now + 3);
                        let failures = match model {
                            Some((f, last, _)) if last >= now - FORGET_AFTER => f + 1,
                            _ => 1,
                        };
                        let backoff = backoff_seconds(failures, after);
                        model = Some((failures, now, if backoff > 0 { now + backoff } else { 0 }));
                        LoginGate::Open { failures, backoff }
                    }
                };
                let gate = match path {
                    Path::Direct => db
                        .direct_write("count", |tx| begin_login_attempt_direct(tx, &user, now, rules))
                        .await
                        .context("an SQLite file takes direct writes")??,
                    Path::Sqlx => {
                        begin_login_attempt(&mut *db.pool().acquire().await?, &user, now, rules).await?
                    }
                    Path::WithUser => {
                        // The account, an unknown address and no lookup, in turn.
                        let email = ["someone@example.com", "nobody@example.com", ""][(now % 3) as usize];
                        let (gate, found) = begin_login_attempt_with_user(
                            &mut *db.pool().acquire().await?,
                            db.backend(),
                            &user,
                            (!email.is_empty()).then_some(email),
                            now,
                            rules,
                        )
                        .await?;
                        let expected = (email == account.email_lower).then_some(account.id.as_str());
                        assert_eq!(found.as_ref().map(|u| u.id.as_str()), expected, "at {now}");
                        gate
                    }
                };
                assert_eq!(gate, expected, "after {after}, at {now}, path: {path:?}");
                if let LoginGate::BackedOff { in_flight, .. } = gate {
                    refused[usize::from(in_flight > 0)] += 1;
                }
                if gate.is_open() && now % 2 == 0 {
                    finish_failed_attempt(db.pool(), &user).await?;
                    flight.0 = (flight.0 - 1).max(0);
                }
                let (failures, last, blocked, in_flight, in_flight_until): (i64, i64, i64, i64, i64) =
                    sqlx::query_as(
                        "select failures, last_attempt_at, blocked_until, in_flight, in_flight_until \
                         from login_attempt where username_digest = $1",
                    )
                    .bind(user.as_bytes().to_vec())
                    .fetch_one(db.pool())
                    .await?;
                let here = format!("after {after}, at {now}, path: {path:?}");
                assert_eq!(Some((failures, last, blocked)), model, "{here}");
                assert_eq!((in_flight, in_flight_until), flight, "{here}");
            }
        }
        assert!(refused.iter().all(|&n| n > 0), "{refused:?}");
        db.close().await;
        Ok(())
    }
}
