//! SQLite: the WAL is copied back into the database by a task of its own,
//! not by whichever commit takes it past a size.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses
//! `wal_autocheckpoint`, and that commit holds the process's one writer
//! while it copies the log back and waits for two fsyncs. Under sustained
//! refresh load that stopped every rotation for 20-30 ms about three times a
//! second. So this process's connections never checkpoint
//! (`wal_autocheckpoint = 0`, see `SQLITE_PRAGMAS`); this task does, every
//! [`INTERVAL`], on a connection of its own and without the write lock: a
//! PASSIVE checkpoint copies what is committed while the writer goes on
//! appending.
//!
//! SQLite starts the log over (from its first frame) at a commit only when
//! all of it has been copied back and no read is still using it, which a
//! busy writer rarely lets happen. So once the log holds [`RESTART_PAGES`]
//! the task takes the write lock and runs a RESTART checkpoint: it copies
//! what was written during the first pass and waits (at most
//! [`RESTART_WAIT_MS`]) for the reads in flight to end, so that the next
//! commit starts the log over. Writers wait for that copy and its two
//! fsyncs, a few milliseconds, once per restart. A CLI command runs the same
//! task while it lasts; what it leaves in the log the server's task copies,
//! or SQLite does when the last connection to the file closes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::Context;
use rusqlite::Connection;
use tokio::sync::Mutex;

use super::reader::{Reader, open_existing};

/// How often the log is copied back.
const INTERVAL: Duration = Duration::from_millis(250);

/// Log length (pages) from which the task starts the log over: 10 MiB with
/// the 1 KiB pages gatehouse makes databases with (40 MiB for one made
/// with 4 KiB pages, before it did).
const RESTART_PAGES: i64 = 10_000;

/// How long a RESTART checkpoint waits for reads in flight (and another
/// process's writer) before it gives up until the next tick.
const RESTART_WAIT_MS: u32 = 100;

/// Starts the task for the database `reader` reads. It ends at its first
/// tick after the reader is closed or dropped (with the last handle of its
/// database).
pub(super) fn start(reader: &Arc<Reader>, write_lock: &Arc<Mutex<()>>) {
    let path = reader.path().to_path_buf();
    tokio::spawn(run(
        path,
        Arc::downgrade(reader),
        Arc::downgrade(write_lock),
        INTERVAL,
        RESTART_PAGES,
    ));
}

async fn run(
    path: PathBuf,
    reader: Weak<Reader>,
    write_lock: Weak<Mutex<()>>,
    interval: Duration,
    restart_pages: i64,
) {
    let mut conn = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticker.tick().await;
        let open = reader.upgrade().is_some_and(|r| !r.is_closed());
        let Some(lock) = write_lock.upgrade().filter(|_| open) else {
            return;
        };
        let outcome = tick(&mut conn, &path, &lock, restart_pages).await;
        // One warning when checkpoints start failing (the file went away, the
        // disk is full), one line when they work again; not one per tick.
        match outcome {
            Err(e) if !failing => {
                failing = true;
                tracing::warn!("copying the SQLite write-ahead log into the database failed: {e:#}");
            }
            Ok(()) if failing => {
                failing = false;
                tracing::info!("copying the SQLite write-ahead log into the database works again");
            }
            _ => {}
        }
    }
}

/// One tick: a PASSIVE checkpoint, then, if the log has grown to
/// `restart_pages`, a RESTART checkpoint under the write lock. `conn` is
/// opened when `None`, and dropped when a checkpoint on it failed.
async fn tick(
    conn: &mut Option<Connection>,
    path: &Path,
    write_lock: &Mutex<()>,
    restart_pages: i64,
) -> anyhow::Result<()> {
    let log = checkpoint(conn, path, Mode::Passive).await?;
    if log >= restart_pages {
        let _writer = write_lock.lock().await;
        checkpoint(conn, path, Mode::Restart).await?;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Copies what it can now, waiting for nobody.
    Passive,
    /// Copies everything, then waits for reads of the log to end, so that
    /// the next commit starts it over.
    Restart,
}

/// One checkpoint on `conn`, on a blocking thread: the frames in the log
/// (-1 while another process checkpoints).
async fn checkpoint(conn: &mut Option<Connection>, path: &Path, mode: Mode) -> anyhow::Result<i64> {
    let (kept, path) = (conn.take(), path.to_path_buf());
    let (kept, seen) = tokio::task::spawn_blocking(move || {
        let conn = match kept {
            Some(conn) => conn,
            None => match open(&path) {
                Ok(conn) => conn,
                Err(e) => return (None, Err(e)),
            },
        };
        let sql = match mode {
            Mode::Passive => "pragma wal_checkpoint(passive)",
            Mode::Restart => "pragma wal_checkpoint(restart)",
        };
        let seen = conn
            .query_row(sql, [], |row| row.get(1))
            .context("checkpointing the SQLite write-ahead log");
        (seen.is_ok().then_some(conn), seen)
    })
    .await
    .context("the checkpoint thread stopped")?;
    *conn = kept;
    seen
}

fn open(path: &Path) -> anyhow::Result<Connection> {
    let conn = open_existing(path).context("opening the SQLite database to checkpoint it")?;
    // `synchronous` decides the checkpoint's fsyncs: the same as the
    // writers'. `busy_timeout` bounds only the RESTART checkpoint's wait; a
    // PASSIVE one never waits.
    conn.execute_batch(&format!(
        "pragma synchronous = normal; pragma busy_timeout = {RESTART_WAIT_MS};"
    ))?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::Duration;

    use super::{Reader, run, tick};

    const PAGE: u64 = 1024;

    /// A WAL database of 1 KiB pages whose writer never checkpoints, a
    /// reader on it, and a write lock.
    struct Fixture {
        _dir: tempfile::TempDir,
        path: PathBuf,
        writer: rusqlite::Connection,
        reader: Arc<Reader>,
        lock: Arc<tokio::sync::Mutex<()>>,
    }

    fn fixture() -> anyhow::Result<Fixture> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("gatehouse.db");
        let writer = rusqlite::Connection::open(&path)?;
        writer.execute_batch(
            "pragma page_size = 1024; pragma journal_mode = wal; pragma synchronous = normal; \
             pragma wal_autocheckpoint = 0; create table t (v blob not null);",
        )?;
        let reader = Arc::new(
            Reader::new(&format!("sqlite://{}", path.display()))?
                .ok_or_else(|| anyhow::anyhow!("no reader for a file"))?,
        );
        Ok(Fixture {
            _dir: dir,
            path,
            writer,
            reader,
            lock: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// The task, with a short interval and a restart size of 300 pages.
    fn start(f: &Fixture) -> tokio::task::JoinHandle<()> {
        tokio::spawn(run(
            f.path.clone(),
            Arc::downgrade(&f.reader),
            Arc::downgrade(&f.lock),
            Duration::from_millis(10),
            300,
        ))
    }

    /// One row per page.
    fn write_pages(writer: &rusqlite::Connection, pages: usize) -> rusqlite::Result<()> {
        for _ in 0..pages {
            writer.execute("insert into t (v) values (zeroblob(900))", [])?;
        }
        Ok(())
    }

    /// The size of the database file: only a checkpoint writes to it.
    fn size(path: &Path) -> u64 {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "{what}: not within 10 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    #[tokio::test]
    async fn the_log_is_copied_into_the_database_without_the_write_lock() -> anyhow::Result<()> {
        let f = fixture()?;
        let _task = start(&f);
        let _held = f.lock.lock().await;
        write_pages(&f.writer, 50)?;
        until("the rows copied back", || size(&f.path) >= 50 * PAGE).await
    }

    #[tokio::test]
    async fn a_long_log_starts_over_once_the_reads_that_held_it_back_end() -> anyhow::Result<()> {
        let f = fixture()?;
        write_pages(&f.writer, 400)?;
        // A read that stays open holds the log back: nothing written after it
        // began can be copied until it ends.
        let long_read = rusqlite::Connection::open(&f.path)?;
        long_read.execute_batch("begin; select count(*) from t;")?;
        write_pages(&f.writer, 10)?;
        let held = f.lock.lock().await;
        let (path, lock) = (f.path.clone(), f.lock.clone());
        let ticked = tokio::spawn(async move { tick(&mut None, &path, &lock, 300).await });
        // The PASSIVE pass copies the first 400 rows; then the tick waits for
        // the write lock, which this test holds, as a writer would.
        until("the first pass", || size(&f.path) >= 400 * PAGE).await?;
        long_read.execute_batch("commit;")?;
        drop(held);
        ticked.await??;
        // The next commit starts the log over: it holds that commit alone.
        write_pages(&f.writer, 1)?;
        let log: i64 = f
            .writer
            .query_row("pragma wal_checkpoint(passive)", [], |row| row.get(1))?;
        assert!(log < 10, "the log holds {log} frames");
        Ok(())
    }

    #[tokio::test]
    async fn the_task_ends_when_its_database_is_closed() -> anyhow::Result<()> {
        let f = fixture()?;
        let task = start(&f);
        f.reader.close();
        tokio::time::timeout(Duration::from_secs(5), task).await??;
        Ok(())
    }
}
