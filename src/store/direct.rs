//! SQLite on a file: a password login's writes on the calling thread.
//!
//! Through sqlx, each statement of a transaction is a hand-off to the
//! connection's worker thread and back; a login's two transactions (its
//! attempt, then its session and first refresh token) took six. In a
//! password flood the async workers and that thread sleep between them, so
//! each hand-off woke two threads, each time taking a core from a hashing
//! thread. Here each transaction runs through rusqlite on a connection kept
//! for this, under the process's write lock, like the refresh rotations'
//! writer ([`super::rotation`]), and waits for another process's lock the
//! same way: [`BUSY_WAIT`] at a time on this thread, the worker free
//! between tries. Measured in a password flood: the async workers' context
//! switches went from 14.6 to 4.8 per login, sqlx's worker thread from 3.8 %
//! of a core to none, and the hashing threads' share of the server's CPU
//! samples (`perf`) from 92.5 % to 94.3 %.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::rotation::{BUSY_WAIT, LOCKED_FOR};

pub(super) struct DirectWriter {
    path: PathBuf,
    /// Taken out while a transaction runs, put back only after one
    /// succeeded and while the database is open.
    conn: Mutex<Option<Connection>>,
    closed: AtomicBool,
}

impl DirectWriter {
    pub(super) fn new(path: PathBuf) -> DirectWriter {
        DirectWriter {
            path,
            conn: Mutex::new(None),
            closed: AtomicBool::new(false),
        }
    }

    /// Runs `work` in a transaction (`BEGIN IMMEDIATE`) and commits it if
    /// `work` succeeded. Call it holding the process's write lock. A
    /// transaction that meets another process's lock is tried again until
    /// [`LOCKED_FOR`] has passed (so is opening the connection); `work` may
    /// therefore run more than once, each time in a transaction of its own
    /// that was rolled back.
    pub(super) async fn write<T>(
        &self,
        mut work: impl FnMut(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner).take();
        let started = Instant::now();
        let done = loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                    Some("the database is closing".into()),
                ));
            }
            let tried = match super::rotation::connection(&mut conn, &self.path).await {
                Ok(conn) => transaction(conn, &mut work),
                Err(e) => Err(e),
            };
            match tried {
                Err(e) if super::reader::is_locked(&e) && started.elapsed() < LOCKED_FOR => {
                    tokio::time::sleep(BUSY_WAIT).await;
                }
                done => break done,
            }
        };
        // A connection whose transaction failed is closed rather than kept.
        if done.is_ok() && !self.closed.load(Ordering::Acquire) {
            *self.conn.lock().unwrap_or_else(PoisonError::into_inner) = conn;
        }
        done
    }

    /// No transaction runs any more and no connection is kept (the database
    /// is shutting down).
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.conn.lock().unwrap_or_else(PoisonError::into_inner).take();
    }
}

fn transaction<T>(
    conn: &mut Connection,
    work: &mut impl FnMut(&Transaction<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let out = work(&tx)?;
    tx.commit()?;
    Ok(out)
}
