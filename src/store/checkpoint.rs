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
//! SQLite starts the log over (from its first frame) only after a
//! checkpoint has copied all of it, which a busy writer never lets a pass do.
//! So once the log holds [`RESTART_PAGES`] the task copies the rest under
//! the write lock, a short wait: only what was written during the first
//! pass is left. A CLI command runs the same task while it lasts; what it
//! leaves in the log the server's task copies, or SQLite does when the last
//! connection to the file closes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::Context;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::Mutex;

use super::reader::Reader;

/// How often the log is copied back.
const INTERVAL: Duration = Duration::from_millis(250);

/// Log length (pages) from which the task copies the rest of it under the
/// write lock, so that the next commit starts the log over: 10 MiB with the
/// 1 KiB pages gatehouse's databases are made with.
const RESTART_PAGES: i64 = 10_000;

/// Starts the task for the database `reader` reads; it ends once the
/// reader is closed or dropped (with the last handle of its database).
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
        let (kept, first) = pass(conn.take(), &path).await;
        let outcome = match first {
            // The writer appended more while this pass ran: copy that too,
            // with the writer held, so that its next commit starts the log over.
            Ok(log) if log >= restart_pages => {
                let _writer = lock.lock().await;
                let (kept_again, rest) = pass(kept, &path).await;
                conn = kept_again;
                rest
            }
            other => {
                conn = kept;
                other
            }
        };
        // One warning when checkpoints start failing (the file went away, the
        // disk is full), one line when they work again; not one per pass.
        match outcome {
            Err(e) if !failing => {
                failing = true;
                tracing::warn!("copying the SQLite write-ahead log into the database failed: {e:#}");
            }
            Ok(_) if failing => {
                failing = false;
                tracing::info!("copying the SQLite write-ahead log into the database works again");
            }
            _ => {}
        }
    }
}

/// One PASSIVE checkpoint on `conn` (opened first if `None`), on a blocking
/// thread: the log's length in pages when it started. Gives the connection
/// back unless it failed.
async fn pass(conn: Option<Connection>, path: &Path) -> (Option<Connection>, anyhow::Result<i64>) {
    let path = path.to_path_buf();
    let ran = tokio::task::spawn_blocking(move || {
        let conn = match conn {
            Some(conn) => conn,
            None => match open(&path) {
                Ok(conn) => conn,
                Err(e) => return (None, Err(e)),
            },
        };
        let seen = checkpoint(&conn);
        (seen.is_ok().then_some(conn), seen)
    })
    .await;
    match ran {
        Ok(out) => out,
        Err(e) => (
            None,
            Err(anyhow::Error::new(e).context("the checkpoint task stopped")),
        ),
    }
}

fn open(path: &Path) -> anyhow::Result<Connection> {
    // Read-write without create: a file that disappeared is an error.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .context("opening the SQLite database to checkpoint it")?;
    // `synchronous` decides the checkpoint's fsyncs: the same as the writers'.
    conn.execute_batch("pragma synchronous = normal; pragma wal_autocheckpoint = 0;")?;
    Ok(conn)
}

fn checkpoint(conn: &Connection) -> anyhow::Result<i64> {
    // A PASSIVE checkpoint never waits: another checkpoint running at the
    // same time (say, the CLI's) makes this one report "busy" and copy less.
    conn.query_row("pragma wal_checkpoint(passive)", [], |row| row.get(1))
        .context("checkpointing the SQLite write-ahead log")
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use super::{Reader, run};

    const PAGE: u64 = 1024;

    /// A WAL database of 1 KiB pages whose writer never checkpoints, a
    /// reader on it, and the task, started with a short interval and a
    /// restart size of 300 pages.
    struct Fixture {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        writer: rusqlite::Connection,
        reader: Arc<Reader>,
        lock: Arc<tokio::sync::Mutex<()>>,
        task: tokio::task::JoinHandle<()>,
    }

    fn fixture() -> anyhow::Result<Fixture> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("gatehouse.db");
        let writer = rusqlite::Connection::open(&path)?;
        writer.execute_batch(
            "pragma page_size = 1024; pragma journal_mode = wal; pragma wal_autocheckpoint = 0; \
             create table t (v blob not null);",
        )?;
        let reader = Arc::new(
            Reader::new(&format!("sqlite://{}", path.display()))?
                .ok_or_else(|| anyhow::anyhow!("no reader for a file"))?,
        );
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        let task = tokio::spawn(run(
            path.clone(),
            Arc::downgrade(&reader),
            Arc::downgrade(&lock),
            Duration::from_millis(10),
            300,
        ));
        Ok(Fixture {
            _dir: dir,
            path,
            writer,
            reader,
            lock,
            task,
        })
    }

    /// One row per page.
    fn write_pages(writer: &rusqlite::Connection, pages: usize) -> rusqlite::Result<()> {
        for _ in 0..pages {
            writer.execute("insert into t (v) values (zeroblob(900))", [])?;
        }
        Ok(())
    }

    fn size(path: &Path) -> u64 {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }

    fn wal(path: &Path) -> std::path::PathBuf {
        path.with_extension("db-wal")
    }

    #[tokio::test]
    async fn the_log_is_copied_into_the_database_without_the_write_lock() -> anyhow::Result<()> {
        let f = fixture()?;
        let _held = f.lock.lock().await;
        write_pages(&f.writer, 50)?;
        assert!(size(&wal(&f.path)) >= 50 * PAGE, "the rows are in the log");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        // Only a checkpoint writes pages into the database file.
        while size(&f.path) < 50 * PAGE {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "no checkpoint within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_writer_s_log_starts_over_once_it_is_long() -> anyhow::Result<()> {
        let f = fixture()?;
        let (path, lock) = (f.path.clone(), f.lock.clone());
        // 3,000 commits, each under the write lock as the server's are, with
        // hardly a pause between them for a pass to finish in.
        let longest = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
            let mut longest = 0;
            for _ in 0..3_000 {
                let _writer = lock.blocking_lock();
                write_pages(&f.writer, 1)?;
                longest = longest.max(size(&wal(&path)));
            }
            Ok(longest)
        })
        .await??;
        // Without a restart the log would hold all 3,000 pages.
        assert!(longest < 1_500 * PAGE, "the log grew to {longest} bytes");
        Ok(())
    }

    #[tokio::test]
    async fn the_task_ends_when_its_database_is_closed() -> anyhow::Result<()> {
        let f = fixture()?;
        f.reader.close();
        tokio::time::timeout(Duration::from_secs(5), f.task).await??;
        Ok(())
    }
}
