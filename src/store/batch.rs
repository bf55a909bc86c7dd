//! PostgreSQL: the hottest statements of concurrent requests, run together:
//! the token checks of Bearer requests, and refresh rotations. (The SQLite
//! rotation writer, `store::rotation`, shares only the statement-text
//! helpers at the end: [`statements_up_to`] and [`statement`].)
//!
//! Every Bearer request checks its token in the database (SPEC §5: no stale
//! cache). One query per request spends most of its time on what does not
//! depend on the request: a round trip, a wake-up of a server process, and
//! starting the executor. So the requests that arrive while a query is out
//! queue here, and the next free worker asks for all of them (at most
//! [`MAX_BATCH`]) in one statement. A request that finds a worker idle is
//! asked for at once, alone: batching adds no wait, it only shares the trips
//! that queueing would have made anyway. (Rotations have one worker, so a
//! rotation may wait for the statement in flight: see
//! `session::LiveRotations`.) Each answer comes from a statement
//! that started after its request arrived, so a revocation committed before
//! the request is always seen. A batch of rotations is one transaction: one
//! commit, one flush of the log, for all of them.
//!
//! A batch's plan must start from its keys and look each one up by index,
//! whatever the table statistics say: on a young database they are stale,
//! and a cached plan for 8 rotations once joined every login with every key
//! (1,024 index probes for 8 rows) and later hashed the whole token table.
//! Lanes turn off hash and merge joins and sequential scans (see
//! `POSTGRES_LANE_SETTINGS`; without that the token-holder batch hashed every
//! login of the table), the rotation statement reaches each table through a
//! `lateral` subquery with `limit 1`, which the planner cannot reorder, and
//! updates each row it found by the row's address (`ctid`). A test checks
//! the cached plan of each batch statement for every batch size, and the
//! rotations' also on a small table of used tokens.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{ACQUIRE_TIMEOUT, Lane, LaneQuery, Lanes};

/// Keys asked in one statement, at most.
pub const MAX_BATCH: usize = 32;

/// Workers of a kind unless it says otherwise ([`Batch::WORKERS`]):
/// statements in flight at once. Two rather than three make batches larger:
/// userinfo 28,461 -> 31,297/s (2-3 pairs); rotations, which then had two
/// workers too, 3,490 -> 3,577/s with a fifth fewer commits.
const WORKERS: usize = 2;

/// One kind of batched statement.
pub trait Batch: Send + Sync + 'static {
    type Key: Send + Sync + 'static;
    type Answer: Send + 'static;
    /// Names the statement in errors.
    const WHAT: &'static str;
    /// How long a batch's statement may run, and a read's caller wait from
    /// its queueing, before they are answered 503. A write's is longer than
    /// the lanes' `statement_timeout`, so the server cancels a slow statement
    /// before its caller is answered (a commit stalled past that point may
    /// still land).
    const TIMEOUT: Duration = ACQUIRE_TIMEOUT;
    /// A write: its callers must learn how it ended. A read's caller stops
    /// waiting after [`Batch::TIMEOUT`] and is answered 503, whatever its
    /// batch does later. A write's statement starts only within
    /// [`ACQUIRE_TIMEOUT`] of its key's queueing (a key queued longer is
    /// answered 503 and written nowhere), and its caller waits until that
    /// statement has had its [`Batch::TIMEOUT`]. So a caller is told 503 for
    /// a write that then commits only if the commit stalls past that, or the
    /// request's own timeout (`GATEHOUSE_REQUEST_TIMEOUT`, 30 s by default)
    /// ends it first.
    const WRITE: bool = false;
    /// Workers: statements of this kind in flight at once.
    const WORKERS: usize = WORKERS;
    /// The statement for `len` keys, and how many rows it has (padded to a
    /// power of two, see [`statements`]).
    fn statement(len: usize) -> (&'static str, usize);
    /// One answer per key, in the keys' order.
    fn run<'c>(conn: &'c mut sqlx::AnyConnection, keys: &'c [Self::Key]) -> LaneQuery<'c, Vec<Self::Answer>>;
}

/// `Err(true)`: the database is out of reach, or a write's outcome is
/// unknown (answered 503); `Err(false)`: the batch failed otherwise, and the
/// caller asks alone to learn why.
type Answer<A> = Result<A, bool>;
/// A key, who waits for its answer, and when it was queued.
type Queued<R> = (
    <R as Batch>::Key,
    oneshot::Sender<Answer<<R as Batch>::Answer>>,
    Instant,
);

pub struct Batcher<R: Batch> {
    sender: mpsc::UnboundedSender<Queued<R>>,
}

impl<R: Batch> Batcher<R> {
    /// Starts the workers; they end when the batcher is dropped.
    pub(super) fn start(lanes: Arc<Lanes>) -> Batcher<R> {
        let (sender, receiver) = mpsc::unbounded_channel();
        let receiver = Arc::new(Mutex::new(receiver));
        debug_assert!(R::WORKERS > 0, "{}: no worker would answer", R::WHAT);
        for _ in 0..R::WORKERS {
            tokio::spawn(work::<R>(receiver.clone(), lanes.clone()));
        }
        Batcher { sender }
    }

    /// Queues `key` and waits for its answer; `None` when its batch failed
    /// for another reason than an unreachable database: the caller then asks
    /// alone, to get its own answer or error.
    pub async fn ask(&self, key: R::Key) -> Option<anyhow::Result<R::Answer>> {
        let (answer, answered) = oneshot::channel();
        if self.sender.send((key, answer, Instant::now())).is_err() {
            return None;
        }
        // Bounded here too: with the database silent, batches come back only
        // every few seconds, and a queue that grows meanwhile must not hold
        // its callers until the request timeout. A caller that stops waiting
        // is skipped by the workers. A write's caller waits out the longest
        // its statement may start late and run (the worker answers first).
        let wait = if R::WRITE {
            ACQUIRE_TIMEOUT + R::TIMEOUT + Duration::from_secs(1)
        } else {
            R::TIMEOUT
        };
        let answer = tokio::time::timeout(wait, answered)
            .await
            .unwrap_or(Ok(Err(true)))
            .unwrap_or(Err(false));
        match answer {
            Ok(found) => Some(Ok(found)),
            Err(true) => Some(Err(anyhow::Error::new(sqlx::Error::PoolTimedOut).context(R::WHAT))),
            Err(false) => None,
        }
    }
}

async fn work<R: Batch>(receiver: Arc<Mutex<mpsc::UnboundedReceiver<Queued<R>>>>, lanes: Arc<Lanes>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        // One worker waits for work at a time; it takes all that queued.
        if receiver.lock().await.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        // Nobody waits for these any more (a request timed out or went away).
        batch.retain(|(_, answer, _): &Queued<R>| !answer.is_closed());
        skip_late::<R>(&mut batch);
        if batch.is_empty() {
            continue;
        }
        let lane = lanes.lane().await;
        skip_late::<R>(&mut batch);
        if batch.is_empty() {
            if let Ok(lane) = lane {
                lane.release();
            }
            continue;
        }
        let (keys, answers): (Vec<R::Key>, Vec<_>) =
            batch.drain(..).map(|(key, answer, _)| (key, answer)).unzip();
        let found = match lane {
            Ok(mut lane) => run::<R>(&mut lane, &keys).await.inspect(|_| lane.release()),
            Err(e) => Err(e),
        };
        match found {
            Ok(found) if found.len() == keys.len() => {
                for (answer, value) in answers.into_iter().zip(found) {
                    let _ = answer.send(Ok(value));
                }
            }
            Ok(_) => {
                tracing::warn!(
                    "{}: a batch of {} got the wrong number of answers",
                    R::WHAT,
                    keys.len()
                );
                // A write that ran may have committed: asking again alone
                // would take its own rotation for a reuse.
                for answer in answers {
                    let _ = answer.send(Err(R::WRITE));
                }
            }
            Err(e) => {
                // A write is asked again alone only if the server refused its
                // statement (rolled back); after an error reading its rows it
                // may have committed.
                let refused = e
                    .downcast_ref::<sqlx::Error>()
                    .is_some_and(|e| matches!(e, sqlx::Error::Database(_)));
                let unavailable = crate::error::database_unavailable(&e) || (R::WRITE && !refused);
                if unavailable {
                    tracing::debug!("{}: a batch of {} failed: {e:#}", R::WHAT, keys.len());
                } else {
                    tracing::warn!("{}: a batch of {} failed: {e:#}", R::WHAT, keys.len());
                }
                for answer in answers {
                    let _ = answer.send(Err(unavailable));
                }
            }
        }
    }
}

/// A write's keys queued longer than [`ACQUIRE_TIMEOUT`] are answered 503
/// and written nowhere: their callers could stop waiting before the
/// statement ends.
fn skip_late<R: Batch>(batch: &mut Vec<Queued<R>>) {
    if !R::WRITE {
        return;
    }
    let (late, ready): (Vec<_>, Vec<_>) = batch
        .drain(..)
        .filter(|(_, answer, _)| !answer.is_closed())
        .partition(|(_, _, queued)| queued.elapsed() > ACQUIRE_TIMEOUT);
    for (_, answer, _) in late {
        let _ = answer.send(Err(true));
    }
    batch.extend(ready);
}

/// `key` alone, on a lane: a batch of one.
pub(super) async fn alone<R: Batch>(lanes: &Lanes, key: R::Key) -> anyhow::Result<R::Answer> {
    let mut found = ask::<R>(lanes, std::slice::from_ref(&key)).await?;
    found.pop().with_context(|| format!("{}: no answer", R::WHAT))
}

async fn ask<R: Batch>(lanes: &Lanes, keys: &[R::Key]) -> anyhow::Result<Vec<R::Answer>> {
    let mut lane = lanes.lane().await?;
    let found = run::<R>(&mut lane, keys).await?;
    lane.release();
    Ok(found)
}

/// The statement for `keys` on `lane`, bounded by [`Batch::TIMEOUT`].
async fn run<R: Batch>(lane: &mut Lane<'_>, keys: &[R::Key]) -> anyhow::Result<Vec<R::Answer>> {
    tokio::time::timeout(R::TIMEOUT, R::run(lane.conn(), keys))
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut))
        .context(R::WHAT)
}

/// The statement for each batch size (1, 2, 4 … [`MAX_BATCH`]), made by
/// `sql` once: batches are padded to a power of two with keys that match
/// nothing, so only these few texts are ever prepared.
pub fn statements(sql: impl Fn(usize) -> String) -> Vec<String> {
    statements_up_to(MAX_BATCH, sql)
}

/// As [`statements`], for batches of at most `max` keys (a power of two);
/// also used by the SQLite rotation writer (`store::rotation`).
pub fn statements_up_to(max: usize, sql: impl Fn(usize) -> String) -> Vec<String> {
    debug_assert!(max.is_power_of_two(), "batches of at most {max}");
    (0..=max.trailing_zeros()).map(|p| sql(1 << p)).collect()
}

/// `statements[…]` for `len` keys, and how many rows it has.
pub fn statement(statements: &[String], len: usize) -> (&str, usize) {
    debug_assert!(
        !statements.is_empty() && len <= 1 << (statements.len() - 1),
        "a batch of {len}"
    );
    let size = len.next_power_of_two();
    let index = (size.trailing_zeros() as usize).min(statements.len().saturating_sub(1));
    (statements.get(index).map_or("", String::as_str), size)
}

/// One answer per key, from rows that carry their key's index in column
/// `i`: `None` where no row matched; rows of padding (`i = -1`) are dropped.
pub fn by_index<T>(
    rows: &[sqlx::any::AnyRow],
    keys: usize,
    read: impl Fn(&sqlx::any::AnyRow) -> Result<T, sqlx::Error>,
) -> Result<Vec<Option<T>>, sqlx::Error> {
    use sqlx::Row;
    let mut found: Vec<Option<T>> = (0..keys).map(|_| None).collect();
    for row in rows {
        let i: i64 = row.try_get("i")?;
        if let Some(slot) = usize::try_from(i).ok().and_then(|i| found.get_mut(i)) {
            *slot = Some(read(row)?);
        }
    }
    Ok(found)
}

/// `($1::t1, $2::t2, …), …`: `rows` rows of one parameter per type.
pub fn values(rows: usize, types: &[&str]) -> String {
    (0..rows)
        .map(|r| {
            let cells: Vec<String> = types
                .iter()
                .enumerate()
                .map(|(c, t)| format!("${}::{t}", r * types.len() + c + 1))
                .collect();
            format!("({})", cells.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn values_number_parameters_row_by_row() {
        assert_eq!(
            super::values(2, &["bigint", "text", "text"]),
            "($1::bigint, $2::text, $3::text), ($4::bigint, $5::text, $6::text)"
        );
        let statements = super::statements(|n| n.to_string());
        assert_eq!(statements.len(), 6);
        assert_eq!(super::statement(&statements, 1), ("1", 1));
        assert_eq!(super::statement(&statements, 5), ("8", 8));
        assert_eq!(super::statement(&statements, 32), ("32", 32));
        // The SQLite rotation writer's larger batches.
        let statements = super::statements_up_to(64, |n| n.to_string());
        assert_eq!(statements.len(), 7);
        assert_eq!(super::statement(&statements, 33), ("64", 64));
        assert_eq!(super::statement(&statements, 64), ("64", 64));
    }
}
