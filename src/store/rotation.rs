//! Refresh rotations of concurrent requests, written together.
//!
//! SQLite has one writer. On a database file, rotations queue here and a
//! task of their own writes whatever has queued (at most [`MAX_BATCH`]) in
//! one transaction under the process's write lock, through rusqlite on a
//! connection it keeps: sqlx would take each statement to its connection's
//! worker thread and back, two hand-offs that a request waits for. On
//! PostgreSQL a refresh rotates and reads in one statement, batched by
//! `store::batch` (see `session::rotate_live_refresh_token`); the statement
//! here serves only the refreshes there that narrow their scope, each
//! request writing its own (as on an in-memory SQLite database, which no
//! second connection can see).
//!
//! A refresh that keeps its scope is decided by the writer ([`LiveRotation`]):
//! its statement checks what the grant would check on the row (live, the
//! client's, its user active), and the same transaction reads the grants it
//! rotated, from pages its connection has cached. Before, each request read
//! its grant on a connection of its own, whose cache the writer's last
//! commit had emptied: about 40 µs of CPU per refresh to fetch every page
//! again.
//!
//! Each rotation is all or nothing, and exactly one of several rotations of
//! one token wins: a token queued twice is refused the second time, a used
//! one is skipped by the statement (on PostgreSQL after waiting for the row
//! lock of a racing rotation). On SQLite a trigger also refuses a successor
//! for a token that is used or missing; on PostgreSQL nothing but these
//! statements inserts a token with a `parent`, and each inserts only what its
//! update consumed.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use anyhow::Context;
use rusqlite::types::Value;
use rusqlite::{Connection, TransactionBehavior};
use sqlx::Row;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::session::{GRANT_SELECT, LiveRotation, RefreshGrantRow};
use super::{Backend, Lanes, batch};
use crate::tokens::TokenDigest;

/// Rotations written by one transaction, at most.
const MAX_BATCH: usize = 64;

/// PostgreSQL: how long a rotation's statement may run before its caller is
/// answered 503; half a second more than the lanes' `statement_timeout`,
/// which cancels a slow one on the server first (a commit stalled past that
/// point may still land; the client's retry then counts as reuse and ends
/// the chain).
pub(super) const ROTATION_TIMEOUT: Duration = Duration::from_secs(3);

/// One rotation: insert `next` in place of `used`, if `used` is still live.
pub struct Rotation {
    pub used: TokenDigest,
    pub next: TokenDigest,
    pub now: i64,
    pub expires_at: i64,
}

/// A rotation waiting for the writer task, with where its answer goes.
enum Queued {
    /// One its caller read and checked first: answered whether it rotated.
    Checked(Rotation, oneshot::Sender<anyhow::Result<bool>>),
    /// One the writer checks: answered with the grant it continues.
    Live(
        LiveRotation,
        oneshot::Sender<anyhow::Result<Option<RefreshGrantRow>>>,
    ),
}

impl Queued {
    fn used(&self) -> &TokenDigest {
        match self {
            Queued::Checked(r, _) => &r.used,
            Queued::Live(r, _) => &r.used,
        }
    }

    /// Its caller gave up (its request timed out or was dropped).
    fn abandoned(&self) -> bool {
        match self {
            Queued::Checked(_, answer) => answer.is_closed(),
            Queued::Live(_, answer) => answer.is_closed(),
        }
    }

    /// Answers "not rotated": another rotation of its token won.
    fn lost(self) {
        match self {
            Queued::Checked(_, answer) => drop(answer.send(Ok(false))),
            Queued::Live(_, answer) => drop(answer.send(Ok(None))),
        }
    }

    /// Answers with a failure.
    fn fail(self, e: anyhow::Error) {
        match self {
            Queued::Checked(_, answer) => drop(answer.send(Err(e))),
            Queued::Live(_, answer) => drop(answer.send(Err(e))),
        }
    }
}

#[derive(Clone)]
pub struct RotationQueue {
    sender: mpsc::UnboundedSender<Queued>,
    closed: Arc<AtomicBool>,
}

impl RotationQueue {
    /// Starts the writer task for the database file `path`; it ends when the
    /// last handle of the queue is dropped.
    pub(super) fn start(path: PathBuf, write_lock: Arc<Mutex<()>>) -> RotationQueue {
        let (sender, receiver) = mpsc::unbounded_channel();
        let closed = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            path,
            conn: None,
            write_lock,
            closed: closed.clone(),
        };
        tokio::spawn(writer.run(receiver));
        RotationQueue { sender, closed }
    }

    /// No rotation is written any more (answered 503); the writer drops its
    /// connection at its next batch, or when the last handle goes.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Queues `rotation` at once; the answer comes when its batch is written.
    fn queue(&self, rotation: &Rotation) -> impl Future<Output = anyhow::Result<bool>> + Send + use<> {
        let (answer, answered) = oneshot::channel();
        let queued = Rotation {
            used: rotation.used.clone(),
            next: rotation.next.clone(),
            ..*rotation
        };
        // Not sent (the writer is gone): `answer` is dropped with it.
        let _ = self.sender.send(Queued::Checked(queued, answer));
        answer_of(answered)
    }

    /// As [`RotationQueue::queue`], for a rotation the writer checks.
    fn queue_live(
        &self,
        rotation: LiveRotation,
    ) -> impl Future<Output = anyhow::Result<Option<RefreshGrantRow>>> + Send + use<> {
        let (answer, answered) = oneshot::channel();
        let _ = self.sender.send(Queued::Live(rotation, answer));
        answer_of(answered)
    }
}

/// The writer's answer; if it dropped the question (it stopped), 503.
async fn answer_of<T>(answered: oneshot::Receiver<anyhow::Result<T>>) -> anyhow::Result<T> {
    answered.await.unwrap_or_else(|_| Err(writer_gone()))
}

/// The writer task stopped (the database is shutting down): answered 503.
fn writer_gone() -> anyhow::Error {
    anyhow::Error::new(sqlx::Error::PoolClosed).context("the refresh rotation writer stopped")
}

/// The writer task's state: its connection, opened when first needed and
/// again after it could not be.
struct Writer {
    path: PathBuf,
    conn: Option<Connection>,
    write_lock: Arc<Mutex<()>>,
    closed: Arc<AtomicBool>,
}

impl Writer {
    async fn run(mut self, mut receiver: mpsc::UnboundedReceiver<Queued>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let lock = self.write_lock.clone();
            let _writer = lock.lock().await;
            if self.closed.load(Ordering::Acquire) {
                self.conn = None;
                for queued in batch.drain(..) {
                    queued.fail(writer_gone());
                }
                continue;
            }
            // A caller that gave up would never see its new token, and its
            // retry would end the chain: skip it.
            batch.retain(|queued| !queued.abandoned());
            let mut seen = HashSet::with_capacity(batch.len());
            let (first, again): (Vec<_>, Vec<_>) = batch
                .drain(..)
                .partition(|q| seen.insert(q.used().as_bytes().to_vec()));
            self.write(first).await;
            // The same token twice in one batch: only its first rotation
            // could win. Answered after it, so the loser's reuse handling
            // (which ends the chain) cannot overtake the winner's write.
            for queued in again {
                queued.lost();
            }
        }
    }

    /// Writes `batch` (distinct `used` digests) in one transaction and
    /// answers each; if that failed for another reason than an unreachable
    /// database, writes each alone, so each gets its own answer or error.
    async fn write(&mut self, batch: Vec<Queued>) {
        if batch.is_empty() {
            return;
        }
        let conn = match connection(&mut self.conn, &self.path).await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!("opening the SQLite database for refresh rotations failed: {e}");
                for queued in batch {
                    queued.fail(again(&e).context("opening the SQLite database for refresh rotations"));
                }
                return;
            }
        };
        let mut written = match write_waiting(conn, &batch).await {
            Ok(written) => written,
            Err(e) if super::reader::is_unavailable(&e) => {
                tracing::warn!("writing {} refresh rotations failed: {e}", batch.len());
                for queued in batch {
                    queued.fail(again(&e));
                }
                return;
            }
            Err(e) => {
                tracing::warn!("writing {} refresh rotations together failed: {e}", batch.len());
                for queued in batch {
                    match write_waiting(conn, std::slice::from_ref(&queued)).await {
                        Ok(mut written) => written.answer(queued),
                        Err(e) => queued.fail(anyhow::Error::new(e).context("rotate refresh token")),
                    }
                }
                return;
            }
        };
        for queued in batch {
            written.answer(queued);
        }
    }
}

/// A writer's connection (this one's, and [`super::direct`]'s), opened if
/// it is not yet; an open that meets another process's lock is tried again
/// ([`while_locked`]).
pub(super) async fn connection<'c>(
    slot: &'c mut Option<Connection>,
    path: &std::path::Path,
) -> rusqlite::Result<&'c mut Connection> {
    match slot {
        Some(conn) => Ok(conn),
        empty => Ok(empty.insert(while_locked(|| open_writer(path)).await?)),
    }
}

/// A connection for writes on the calling thread.
fn open_writer(path: &std::path::Path) -> rusqlite::Result<Connection> {
    let conn = super::reader::open_existing(path)?;
    // Before the pragmas too: `journal_mode` waits for another process's
    // lock this long at most, not rusqlite's default 5 s, on an async worker.
    conn.busy_timeout(BUSY_WAIT)?;
    conn.execute_batch(super::SQLITE_PRAGMAS)?;
    // Temporary data in memory: a batch's statement journal (to undo
    // one statement of its transaction), which past 64 KiB went to a
    // file created and deleted within the transaction, and the rows
    // an insert with a trigger selects before inserting them.
    conn.execute_batch("pragma temp_store = memory;")?;
    // `SQLITE_PRAGMAS` set the pool's 10 s.
    conn.busy_timeout(BUSY_WAIT)?;
    // One text per batch size (1 to MAX_BATCH, powers of two) for
    // each of the three statements: more than rusqlite keeps by
    // default (16), and a statement evicted is parsed again.
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// The writer runs its transactions on an async worker, as signing does
/// (a batch takes a few hundred microseconds): a lock held by another
/// process (a CLI command) is waited for [`BUSY_WAIT`] at a time there, and
/// between tries the worker is free, up to [`LOCKED_FOR`] in all, as long
/// as the other connections' `busy_timeout`. On a thread of its own, whose
/// every wake-up waited for a core, the cores idled 6-8 % of the time.
pub(super) const BUSY_WAIT: Duration = Duration::from_millis(20);
pub(super) const LOCKED_FOR: Duration = Duration::from_secs(10);

async fn write_waiting(conn: &mut Connection, batch: &[Queued]) -> rusqlite::Result<Written> {
    while_locked(|| write_batch(conn, batch)).await
}

/// Runs `attempt` again while it meets another process's lock: every
/// [`BUSY_WAIT`], the worker free between tries, up to [`LOCKED_FOR`].
pub(super) async fn while_locked<T>(mut attempt: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let started = std::time::Instant::now();
    loop {
        match attempt() {
            Err(e) if super::reader::is_locked(&e) && started.elapsed() < LOCKED_FOR => {
                tokio::time::sleep(BUSY_WAIT).await;
            }
            done => return done,
        }
    }
}

/// The same failure again, for each rotation of a batch that met it (so
/// each is answered as `crate::error::database_unavailable` judges it).
fn again(e: &rusqlite::Error) -> anyhow::Error {
    let again = match e.sqlite_error() {
        Some(code) => rusqlite::Error::SqliteFailure(*code, Some(e.to_string())),
        None => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
            Some(e.to_string()),
        ),
    };
    anyhow::Error::new(again).context("rotate refresh tokens")
}

/// What one transaction rotated: the `used` digests of checked rotations,
/// and the grants live ones continue, by `used`.
struct Written {
    consumed: HashSet<Vec<u8>>,
    grants: HashMap<Vec<u8>, RefreshGrantRow>,
}

impl Written {
    fn answer(&mut self, queued: Queued) {
        match queued {
            Queued::Checked(r, answer) => drop(answer.send(Ok(self.consumed.contains(r.used.as_bytes())))),
            Queued::Live(r, answer) => drop(answer.send(Ok(self.grants.remove(r.used.as_bytes())))),
        }
    }
}

/// `rotations`, in one transaction: a statement for those
/// checked by their callers, one for those the writer checks, and the read
/// of the grants those continue.
fn write_batch(conn: &mut Connection, rotations: &[Queued]) -> rusqlite::Result<Written> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (mut checked, mut live): (Vec<&Rotation>, Vec<&LiveRotation>) = (Vec::new(), Vec::new());
    for queued in rotations {
        match queued {
            Queued::Checked(r, _) => checked.push(r),
            Queued::Live(r, _) => live.push(r),
        }
    }
    let mut written = Written {
        consumed: HashSet::new(),
        grants: HashMap::new(),
    };
    if !checked.is_empty() {
        let rows = checked.iter().map(|r| {
            [
                r.used.as_bytes().to_vec().into(),
                r.next.as_bytes().to_vec().into(),
                r.now.into(),
                r.expires_at.into(),
            ]
        });
        let (size, values) = padded(rows, || [nothing(), nothing(), 0.into(), 0.into()]);
        let mut statement = tx.prepare_cached(batch::statement(&SQLITE_BATCH_SQL, size).0)?;
        let mut rows = statement.query(rusqlite::params_from_iter(values))?;
        while let Some(row) = rows.next()? {
            written.consumed.insert(row.get(0)?);
        }
    }
    if !live.is_empty() {
        let rows = live.iter().map(|r| {
            [
                r.used.as_bytes().to_vec().into(),
                r.next.as_bytes().to_vec().into(),
                r.client_id.clone().into(),
                r.now.into(),
                r.ttl.into(),
            ]
        });
        let (size, values) = padded(rows, || {
            [nothing(), nothing(), String::new().into(), 0.into(), 0.into()]
        });
        let mut consumed: Vec<Vec<u8>> = Vec::with_capacity(live.len());
        let mut statement = tx.prepare_cached(batch::statement(&LIVE_SQL, size).0)?;
        let mut rows = statement.query(rusqlite::params_from_iter(values))?;
        while let Some(row) = rows.next()? {
            consumed.push(row.get(0)?);
        }
        drop(rows);
        if !consumed.is_empty() {
            let (size, values) = padded(consumed.into_iter().map(|d| [d.into()]), || [nothing()]);
            let mut statement = tx.prepare_cached(batch::statement(&GRANT_SQL, size).0)?;
            let mut rows = statement.query(rusqlite::params_from_iter(values))?;
            while let Some(row) = rows.next()? {
                written
                    .grants
                    .insert(row.get("digest")?, RefreshGrantRow::from_sqlite(row)?);
            }
        }
    }
    tx.commit()?;
    Ok(written)
}

/// `rows` as one parameter list, padded with rows that match nothing to a
/// power of two rows, so only a handful of statement texts are prepared;
/// and that number of rows.
fn padded<const N: usize>(
    rows: impl ExactSizeIterator<Item = [Value; N]>,
    nothing: impl Fn() -> [Value; N],
) -> (usize, Vec<Value>) {
    let (count, size) = (rows.len(), rows.len().next_power_of_two());
    let mut values = Vec::with_capacity(N * size);
    rows.for_each(|row| values.extend(row));
    (count..size).for_each(|_| values.extend(nothing()));
    (size, values)
}

/// Statement texts, one for each batch size (1 to [`MAX_BATCH`] rotations,
/// powers of two), each built once: not formatted again for every batch
/// only to look up the prepared statement it names.
type Texts = LazyLock<Vec<String>>;

fn texts(sql: impl Fn(usize) -> String) -> Vec<String> {
    batch::statements_up_to(MAX_BATCH, sql)
}

/// The writer's statement for rotations it checks ([`live_sql`]).
static LIVE_SQL: Texts = LazyLock::new(|| texts(live_sql));
/// [`batch_sql`] on SQLite: the writer's checked rotations, and single ones
/// on a database in memory.
static SQLITE_BATCH_SQL: Texts = LazyLock::new(|| texts(|n| batch_sql(Backend::Sqlite, n)));
/// [`batch_sql`] on PostgreSQL; [`write`] is given one rotation at a time.
static POSTGRES_BATCH_SQL: Texts = LazyLock::new(|| texts(|n| batch_sql(Backend::Postgres, n)));
/// The grants of `n` rotated tokens, by their digests.
static GRANT_SQL: Texts = LazyLock::new(|| {
    texts(|n| {
        let params: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
        format!("{} where r.digest in ({})", *GRANT_SELECT, params.join(", "))
    })
});

/// A digest no token has.
fn nothing() -> Value {
    Value::Blob(vec![0; 32])
}

/// SQLite: the statement for `size` rotations the writer checks, with the
/// checks of `RefreshRow::is_live`, the client binding and
/// `UserRow::is_active`; the new token lives `ttl` seconds, never past its
/// login. Returns the digests it consumed.
fn live_sql(size: usize) -> String {
    let rows: Vec<String> = (0..size)
        .map(|i| {
            let p = 5 * i;
            format!("(${}, ${}, ${}, ${}, ${})", p + 1, p + 2, p + 3, p + 4, p + 5)
        })
        .collect();
    // The `refresh_token_rotated` trigger consumes each parent.
    format!(
        "with v (used, next, client_id, now, ttl) as (values {}) \
         insert into refresh_token (digest, session_id, issued_at, expires_at, parent) \
         select v.next, r.session_id, v.now, min(v.now + v.ttl, s.expires_at), r.digest from v \
         join refresh_token r on r.digest = v.used \
         join login_session s on s.id = r.session_id \
         join user_account u on u.id = s.user_id \
         where r.used_at is null and r.expires_at > v.now and s.client_id = v.client_id \
         and s.revoked_at is null and s.expires_at > v.now and u.disabled_at is null \
         returning parent",
        rows.join(", ")
    )
}

/// The statement for `size` rotations.
fn batch_sql(backend: Backend, size: usize) -> String {
    let rows: Vec<String> = (0..size)
        .map(|i| {
            let p = 4 * i;
            match backend {
                Backend::Sqlite => format!("(${}, ${}, ${}, ${})", p + 1, p + 2, p + 3, p + 4),
                Backend::Postgres => format!(
                    "(${}::bytea, ${}::bytea, ${}::bigint, ${}::bigint)",
                    p + 1,
                    p + 2,
                    p + 3,
                    p + 4
                ),
            }
        })
        .collect();
    let rows = rows.join(", ");
    match backend {
        // The `refresh_token_rotated` trigger consumes each parent.
        Backend::Sqlite => format!(
            "with v (used, next, now, expires_at) as (values {rows}) \
             insert into refresh_token (digest, session_id, issued_at, expires_at, parent) \
             select v.next, r.session_id, v.now, v.expires_at, r.digest from v \
             join refresh_token r on r.digest = v.used \
             join login_session s on s.id = r.session_id \
             where r.used_at is null and s.revoked_at is null \
             returning parent"
        ),
        // The update takes each row's lock: a racing rotation waits, then
        // finds the token used. Only rows it consumed get a successor: no
        // index guards that on PostgreSQL (migration 0007).
        Backend::Postgres => format!(
            "with v (used, next, now, expires_at) as (values {rows}), \
             consumed as (update refresh_token r set used_at = v.now from v, login_session s \
             where r.digest = v.used and r.used_at is null and s.id = r.session_id and s.revoked_at is null \
             returning r.digest, r.session_id, v.next, v.now, v.expires_at) \
             insert into refresh_token (digest, session_id, issued_at, expires_at, parent) \
             select next, session_id, now, expires_at, digest from consumed \
             returning parent"
        ),
    }
}

/// Writes `rotations` (distinct `used` digests) in one statement on a lane;
/// returns the digests it consumed (PostgreSQL, and SQLite in memory).
/// Batches are padded to a power of two with rows that match nothing, so
/// only a handful of statement texts are prepared.
async fn write(lanes: &Lanes, backend: Backend, rotations: &[&Rotation]) -> anyhow::Result<HashSet<Vec<u8>>> {
    const NOTHING: [u8; 32] = [0; 32];
    let texts = match backend {
        Backend::Sqlite => &SQLITE_BATCH_SQL,
        Backend::Postgres => &POSTGRES_BATCH_SQL,
    };
    let (sql, size) = batch::statement(texts, rotations.len());
    let mut query = sqlx::query(sql);
    for r in rotations {
        query = query
            .bind(r.used.as_bytes().to_vec())
            .bind(r.next.as_bytes().to_vec())
            .bind(r.now)
            .bind(r.expires_at);
    }
    for _ in rotations.len()..size {
        query = query
            .bind(NOTHING.to_vec())
            .bind(NOTHING.to_vec())
            .bind(0i64)
            .bind(0i64);
    }
    let mut lane = lanes.lane().await?;
    let run = query.fetch_all(lane.conn());
    let consumed = match backend {
        Backend::Sqlite => run.await,
        Backend::Postgres => tokio::time::timeout(ROTATION_TIMEOUT, run)
            .await
            .unwrap_or(Err(sqlx::Error::PoolTimedOut)),
    }
    .context("rotate refresh tokens")?;
    lane.release();
    consumed
        .iter()
        .map(|row| row.try_get::<Vec<u8>, _>(0).context("a consumed digest"))
        .collect()
}

impl super::Db {
    /// SQLite on a file: queues `rotation` for the writer task at once,
    /// before the returned future is first polled, so the caller can do
    /// other work (sign the new tokens) while it is written. Otherwise
    /// (PostgreSQL, a refresh that narrows its scope; SQLite in memory) the
    /// request writes its own when awaited, side by side with the others.
    pub fn rotate(&self, rotation: Rotation) -> impl Future<Output = anyhow::Result<bool>> + Send + '_ {
        let queued = self.rotations.as_ref().map(|queue| queue.queue(&rotation));
        async move {
            if let Some(answered) = queued {
                return answered.await;
            }
            let _writer = self.writer().await;
            let consumed = write(&self.lanes, self.backend, &[&rotation]).await?;
            Ok(consumed.contains(rotation.used.as_bytes()))
        }
    }

    /// SQLite on a file: has the writer task rotate `rotation` if it is
    /// live, bound to its client and its user active, and read the grant it
    /// continues. `None` when nothing was rotated, and always on a database
    /// without that task (the caller then reads and rotates itself).
    pub(super) async fn rotate_live_sqlite(
        &self,
        rotation: LiveRotation,
    ) -> anyhow::Result<Option<RefreshGrantRow>> {
        match &self.rotations {
            Some(queue) => queue.queue_live(rotation).await,
            None => Ok(None),
        }
    }
}
