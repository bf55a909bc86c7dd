//! SQLite: refresh rotations of concurrent requests written together.
//!
//! SQLite has one writer, and every statement is a trip to its connection's
//! worker thread; with the cores busy signing tokens, waiting for that thread
//! is most of a rotation's cost. So rotations queue here and one task writes
//! whatever has queued in a single statement (at most [`MAX_BATCH`]), under
//! the process's write lock: one trip per batch instead of one per refresh.
//! Each rotation is still all or nothing, and exactly one of several
//! rotations of one token wins (a token queued twice is refused the second
//! time; a used one is skipped by the statement).

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::Context;
use sqlx::Row;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::Lanes;
use crate::tokens::TokenDigest;

/// Rotations written by one statement, at most (four parameters each).
const MAX_BATCH: usize = 64;

/// One rotation: insert `next` in place of `used`, if `used` is still live.
pub struct Rotation {
    pub used: TokenDigest,
    pub next: TokenDigest,
    pub now: i64,
    pub expires_at: i64,
}

/// `Ok(true)`: rotated; `Ok(false)`: `used` was used already, or its chain
/// ended; `Err`: the batch failed, so the caller retries on its own and gets
/// its own error.
type Answer = Result<bool, ()>;

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

    /// Queues one rotation and waits for its batch. `Err` gives it back when
    /// it could not be written as part of one: the caller writes it alone.
    async fn rotate(&self, rotation: Rotation) -> Result<bool, Rotation> {
        let (answer, answered) = oneshot::channel();
        let copy = Rotation {
            used: rotation.used.clone(),
            next: rotation.next.clone(),
            ..rotation
        };
        if self.sender.send((rotation, answer)).is_err() {
            return Err(copy);
        }
        match answered.await {
            Ok(Ok(rotated)) => Ok(rotated),
            _ => Err(copy),
        }
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
        match write(&lanes, &rotations).await {
            Ok(rotated) => {
                for (rotation, answer) in first {
                    let _ = answer.send(Ok(rotated.contains(rotation.used.as_bytes())));
                }
            }
            Err(e) => {
                tracing::warn!("writing {} refresh rotations together failed: {e:#}", first.len());
                for (_, answer) in first {
                    let _ = answer.send(Err(()));
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

/// Writes `rotations` (distinct `used` digests) in one statement; returns
/// the digests it consumed. Batches are padded to a power of two with rows
/// that match nothing, so only a handful of statement texts are prepared.
pub(super) async fn write(lanes: &Lanes, rotations: &[&Rotation]) -> anyhow::Result<HashSet<Vec<u8>>> {
    const NOTHING: [u8; 32] = [0; 32];
    let size = rotations.len().next_power_of_two();
    let rows: Vec<String> = (0..size)
        .map(|i| {
            let p = 4 * i;
            format!("(${}, ${}, ${}, ${})", p + 1, p + 2, p + 3, p + 4)
        })
        .collect();
    let sql = format!(
        "with v (used, next, now, expires_at) as (values {}) \
         insert into refresh_token (digest, session_id, issued_at, expires_at, parent) \
         select v.next, r.session_id, v.now, v.expires_at, r.digest from v \
         join refresh_token r on r.digest = v.used \
         join login_session s on s.id = r.session_id \
         where r.used_at is null and s.revoked_at is null \
         returning parent",
        rows.join(", ")
    );
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
    let consumed = query
        .fetch_all(lane.conn())
        .await
        .context("rotate refresh tokens")?;
    lane.release();
    consumed
        .iter()
        .map(|row| row.try_get::<Vec<u8>, _>(0).context("a consumed digest"))
        .collect()
}

impl super::Db {
    /// Queues `rotation` for the next batch; if that batch failed, writes it
    /// alone, so the caller gets its own error.
    pub(super) async fn rotate_on_sqlite(&self, rotation: Rotation) -> anyhow::Result<bool> {
        let Some(queue) = &self.rotations else {
            anyhow::bail!("no rotation queue on PostgreSQL");
        };
        let rotation = match queue.rotate(rotation).await {
            Ok(rotated) => return Ok(rotated),
            Err(rotation) => rotation,
        };
        let _writer = self.writer().await;
        let consumed = write(&self.lanes, &[&rotation]).await?;
        Ok(consumed.contains(rotation.used.as_bytes()))
    }
}
