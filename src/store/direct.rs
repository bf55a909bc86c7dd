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
//! same way ([`while_locked`]): 20 ms at a time on this thread, the worker free
//! between tries. Measured in a password flood: the async workers' context
//! switches went from 14.6 to 4.8 per login, sqlx's worker thread from 3.8 %
//! of a core to none, and the hashing threads' share of the server's CPU
//! samples (`perf`) from 92.5 % to 94.3 %.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::rotation::{connection, while_locked};

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
    /// `work` succeeded. Call it holding the process's write lock. Opening
    /// the connection, and a transaction, that meet another process's lock
    /// are tried again ([`while_locked`]); `work` may therefore run more
    /// than once, each time in a transaction of its own that was rolled back.
    pub(super) async fn write<T>(
        &self,
        work: impl FnMut(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner).take();
        let done = self.write_on(&mut conn, work).await;
        // A connection whose transaction failed is closed rather than kept.
        if done.is_ok() && !self.closed.load(Ordering::Acquire) {
            *self.conn.lock().unwrap_or_else(PoisonError::into_inner) = conn;
        }
        done
    }

    async fn write_on<T>(
        &self,
        slot: &mut Option<Connection>,
        mut work: impl FnMut(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.open()?;
        let conn = connection(slot, &self.path).await?;
        while_locked(|| {
            self.open()?;
            transaction(conn, &mut work)
        })
        .await
    }

    /// Fails once [`DirectWriter::close`] was called.
    fn open(&self) -> rusqlite::Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                Some("the database is closing".into()),
            ));
        }
        Ok(())
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
