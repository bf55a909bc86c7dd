//! Refresh rotations of concurrent requests, written together.
//!
//! SQLite has one writer, and every statement is a trip to its connection's
//! worker thread; with the cores busy signing tokens, waiting for that
//! thread is most of a rotation's cost. So on SQLite rotations queue here and
//! one task writes whatever has queued in a single statement (at most
//! [`MAX_BATCH`]) under the process's write lock. On PostgreSQL a refresh
//! rotates and reads in one statement, batched by `store::batch` (see
//! `session::rotate_live_refresh_token`); the statement here serves only the
//! refreshes there that narrow their scope, each request writing its own.
//!
//! Each rotation is all or nothing, and exactly one of several rotations of
//! one token wins: a token queued twice is refused the second time, a used
//! one is skipped by the statement (on PostgreSQL after waiting for the row
//! lock of a racing rotation), and a partial unique index on `parent` allows
//! one successor per token.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::Row;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{Backend, Lanes};
use crate::tokens::TokenDigest;

/// Rotations written by one statement, at most (four parameters each).
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

/// `Ok(true)`: rotated; `Ok(false)`: `used` was used already, or its chain
/// ended. `Err(true)`: the database is out of reach; `Err(false)`: the batch
/// failed otherwise, and the caller writes its rotation alone to learn why.
type Answer = Result<bool, bool>;

#[derive(Clone)]
pub struct RotationQueue {
    sender: mpsc::UnboundedSender<(Rotation, oneshot::Sender<Answer>)>,
}

impl RotationQueue {
    /// Starts the writer task; it ends when the last queue handle is dropped.
    pub(super) fn start(lanes: Arc<Lanes>, write_lock: Arc<Mutex<()>>) -> RotationQueue {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(write_batches(receiver, lanes, write_lock));
        RotationQueue { sender }
    }

    /// Queues one rotation at once; the receiver gets its batch's answer
    /// (`None`: the writer task is gone).
    fn queue(&self, rotation: &Rotation) -> Option<oneshot::Receiver<Answer>> {
        let (answer, answered) = oneshot::channel();
        let queued = Rotation {
            used: rotation.used.clone(),
            next: rotation.next.clone(),
            ..*rotation
        };
        self.sender.send((queued, answer)).ok().map(|()| answered)
    }
}

async fn write_batches(
    mut receiver: mpsc::UnboundedReceiver<(Rotation, oneshot::Sender<Answer>)>,
    lanes: Arc<Lanes>,
    write_lock: Arc<Mutex<()>>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let _writer = write_lock.lock().await;
        // A caller that gave up (its request timed out or was dropped) would
        // never see its new token, and its retry would end the chain: skip it.
        batch.retain(|(_, answer)| !answer.is_closed());
        let mut seen = HashSet::with_capacity(batch.len());
        let (first, again): (Vec<_>, Vec<_>) = batch
            .drain(..)
            .partition(|(r, _)| seen.insert(r.used.as_bytes().to_vec()));
        let rotations: Vec<&Rotation> = first.iter().map(|(r, _)| r).collect();
        match write(&lanes, Backend::Sqlite, &rotations).await {
            Ok(rotated) => {
                for (rotation, answer) in first {
                    let _ = answer.send(Ok(rotated.contains(rotation.used.as_bytes())));
                }
            }
            Err(e) => {
                let unavailable = crate::error::database_unavailable(&e);
                tracing::warn!("writing {} refresh rotations together failed: {e:#}", first.len());
                for (_, answer) in first {
                    let _ = answer.send(Err(unavailable));
                }
            }
        }
        // The same token twice in one batch: only its first rotation could
        // win. Answered after it, so the loser's reuse handling (which ends
        // the chain) cannot overtake the winner's write.
        for (_, answer) in again {
            let _ = answer.send(Ok(false));
        }
    }
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
        // finds the token used.
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

/// Writes `rotations` (distinct `used` digests) in one statement; returns
/// the digests it consumed. Batches are padded to a power of two with rows
/// that match nothing, so only a handful of statement texts are prepared.
async fn write(lanes: &Lanes, backend: Backend, rotations: &[&Rotation]) -> anyhow::Result<HashSet<Vec<u8>>> {
    const NOTHING: [u8; 32] = [0; 32];
    let size = rotations.len().next_power_of_two();
    let sql = batch_sql(backend, size);
    let mut query = sqlx::query(&sql);
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
    /// SQLite: queues `rotation` for the next batch at once, before the
    /// returned future is first polled, so the caller can do other work (sign
    /// the new tokens) while the writer thread writes it; if that batch failed
    /// for another reason than an unreachable database, writes it alone, so
    /// the caller gets its own answer or error. PostgreSQL: writes it when
    /// awaited.
    pub fn rotate(&self, rotation: Rotation) -> impl Future<Output = anyhow::Result<bool>> + Send + '_ {
        let queued = self.rotations.as_ref().map(|queue| queue.queue(&rotation));
        async move {
            let answer = match queued {
                // PostgreSQL (a refresh that narrows its scope): the request
                // writes its own, side by side with the others.
                None => {
                    let consumed = write(&self.lanes, self.backend, &[&rotation]).await?;
                    return Ok(consumed.contains(rotation.used.as_bytes()));
                }
                Some(None) => Err(false),
                Some(Some(answered)) => answered.await.unwrap_or(Err(false)),
            };
            match answer {
                Ok(rotated) => Ok(rotated),
                Err(true) => {
                    Err(anyhow::Error::new(sqlx::Error::PoolTimedOut).context("rotate refresh token"))
                }
                Err(false) => {
                    let _writer = self.writer().await;
                    let consumed = write(&self.lanes, self.backend, &[&rotation]).await?;
                    Ok(consumed.contains(rotation.used.as_bytes()))
                }
            }
        }
    }
}
