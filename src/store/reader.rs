//! SQLite only: the hottest reads run on the calling thread.
//!
//! sqlx gives each SQLite connection a worker thread, so every query is two
//! thread hand-offs (command in, rows out) and, under load, two context
//! switches: for one indexed lookup that costs more than the lookup itself.
//! The queries every Bearer request and every refresh makes (the token's
//! holder, a revoked `jti`, the refresh grant) run here instead, through
//! rusqlite on the same SQLite library, on a few connections kept for this.
//! They are single statements on a WAL database, so they never wait for the
//! writer; a read that does meet a lock gives up after [`BUSY_TIMEOUT_MS`]
//! (answered 503) rather than hold an async worker.
//!
//! The SQL texts are the ones the PostgreSQL path runs: SQLite numbers `$N`
//! parameters in order of first appearance, which is how they are bound.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use anyhow::Context;
use rusqlite::{Connection, OpenFlags};

/// A read that meets a lock (a checkpoint, recovery) waits this long at most.
const BUSY_TIMEOUT_MS: u32 = 250;
/// Connections kept between reads; more may be open while reads overlap.
const KEEP: usize = 4;

pub struct Reader {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    closed: std::sync::atomic::AtomicBool,
}

impl Reader {
    /// A reader for the database at `path`, which must exist; `None` for an
    /// in-memory database, which other connections cannot see.
    pub fn new(url: &str) -> anyhow::Result<Option<Reader>> {
        use std::str::FromStr;
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Ok(None);
        }
        let options =
            sqlx::sqlite::SqliteConnectOptions::from_str(url).context("parsing the database URL")?;
        let reader = Reader {
            path: options.get_filename().to_path_buf(),
            idle: Mutex::new(Vec::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
        };
        // Fails now, at start, if the file cannot be read this way.
        let conn = reader.open().context("opening the SQLite database for reading")?;
        reader.give_back(conn);
        Ok(Some(reader))
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        // Read-write without create: a file that disappeared is an error.
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.execute_batch(&format!(
            "pragma busy_timeout = {BUSY_TIMEOUT_MS}; pragma query_only = on; pragma mmap_size = 268435456;"
        ))?;
        Ok(conn)
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < KEEP && !self.closed.load(std::sync::atomic::Ordering::Acquire) {
            idle.push(conn);
        }
    }

    /// Runs `read` on a connection of this reader, on this thread. A
    /// connection whose read failed is closed rather than kept.
    pub fn read<T>(&self, read: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> anyhow::Result<T> {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(anyhow::Error::new(sqlx::Error::PoolClosed));
        }
        let kept = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let conn = match kept {
            Some(conn) => conn,
            None => self.open().context("opening the SQLite database for reading")?,
        };
        let out = read(&conn).context("reading the SQLite database")?;
        self.give_back(conn);
        Ok(out)
    }

    /// No read is served any more (answered 503); kept connections close.
    pub fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::Release);
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }
}

/// rusqlite's failures that mean "not now" rather than "wrong": the file is
/// locked past the timeout, or cannot be opened or read.
pub fn is_unavailable(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::{CannotOpen, DatabaseBusy, DatabaseLocked, SystemIoFailure};
    matches!(
        e.sqlite_error_code(),
        Some(DatabaseBusy | DatabaseLocked | CannotOpen | SystemIoFailure)
    )
}

#[cfg(test)]
mod tests {
    use super::Reader;

    #[test]
    fn an_in_memory_database_has_no_reader() -> anyhow::Result<()> {
        assert!(Reader::new("sqlite::memory:")?.is_none());
        assert!(Reader::new("sqlite://x.db?mode=memory")?.is_none());
        Ok(())
    }

    #[test]
    fn a_missing_file_is_an_error_not_a_new_database() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("absent.db");
        assert!(Reader::new(&format!("sqlite://{}", path.display())).is_err());
        assert!(!path.exists());
        Ok(())
    }

    #[test]
    fn reads_see_every_commit_made_before_them_and_none_after_close() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("gatehouse.db");
        let writer = rusqlite::Connection::open(&path)?;
        writer.execute_batch("pragma journal_mode = wal; create table t (v integer not null);")?;
        let reader = Reader::new(&format!("sqlite://{}", path.display()))?
            .ok_or_else(|| anyhow::anyhow!("no reader for a file"))?;
        let count = || {
            reader.read(|c| {
                c.prepare_cached("select count(*) from t")?
                    .query_row([], |r| r.get::<_, i64>(0))
            })
        };
        for n in 1..=3 {
            writer.execute("insert into t (v) values ($1)", [n])?;
            // The same kept connection, a fresh snapshot each statement.
            assert_eq!(count()?, n);
        }
        // Reads do not write, even by mistake.
        assert!(
            reader
                .read(|c| c.execute("insert into t (v) values (9)", []))
                .is_err()
        );
        reader.close();
        let closed = count().err().ok_or_else(|| anyhow::anyhow!("read after close"))?;
        assert!(crate::error::database_unavailable(&closed));
        Ok(())
    }
}
