//! SQLite only: the hottest reads run on the calling thread.
//!
//! sqlx gives each SQLite connection a worker thread, so every query is two
//! thread hand-offs (command in, rows out) and, under load, two context
//! switches: for one indexed lookup that costs more than the lookup itself.
//! The queries every Bearer request and every refresh makes (the token's
//! holder, a revoked `jti`, the refresh grant) run here instead, through
//! rusqlite on the same SQLite library, on a few connections kept for this
//! ([`crate::store::Db::hot_read`]). Each is one statement on a WAL database,
//! which does not wait for the writer. A read that does meet a lock (a
//! checkpoint, recovery) waits [`BUSY_TIMEOUT_MS`] at most on this thread and
//! then goes to a lane, whose worker thread waits out the long timeout.
//!
//! The SQL texts are the ones the PostgreSQL path runs; parameters are bound
//! by name (`$1`, …), as SQLite names them.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use anyhow::Context;
use rusqlite::{Connection, OpenFlags};

/// A read that meets a lock waits this long on the calling thread at most.
const BUSY_TIMEOUT_MS: u32 = 50;

pub struct Reader {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Connections kept between reads: one per core (reads run on the async
    /// workers, one per core), at least 4.
    keep: usize,
    closed: std::sync::atomic::AtomicBool,
}

impl Reader {
    /// A reader for the database `url` names, whose file must exist; `None`
    /// for an in-memory database, which other connections cannot see, or one
    /// not in WAL mode, where a read would wait for the writer.
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
            keep: std::thread::available_parallelism().map_or(4, |n| n.get().max(4)),
            closed: std::sync::atomic::AtomicBool::new(false),
        };
        // Fails now, at start, if the file cannot be read this way.
        let conn = reader.open().context("opening the SQLite database for reading")?;
        let mode: String = conn.query_row("pragma journal_mode", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Ok(None);
        }
        reader.give_back(conn);
        Ok(Some(reader))
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = open_existing(&self.path)?;
        // No memory map: a read after another connection's commit drops the
        // page cache and, with a map, unmaps the whole file too (munmap(2)
        // and a TLB shootdown on every core, then page faults). Under
        // refresh load that was a third of each read; with pread(2) refresh
        // rotations went from 3,546 to 3,769/s (three pairs), introspection
        // and userinfo unchanged.
        conn.execute_batch(&format!(
            "pragma busy_timeout = {BUSY_TIMEOUT_MS}; pragma query_only = on; pragma mmap_size = 0;"
        ))?;
        Ok(conn)
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.keep && !self.closed.load(std::sync::atomic::Ordering::Acquire) {
            idle.push(conn);
        }
    }

    /// Runs `read` on a connection of this reader, on this thread; `None`
    /// when the database stayed locked for [`BUSY_TIMEOUT_MS`]. A connection
    /// whose read failed is closed rather than kept.
    pub fn read<T>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> anyhow::Result<Option<T>> {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(anyhow::Error::new(sqlx::Error::PoolClosed));
        }
        let kept = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let conn = match kept {
            Some(conn) => conn,
            None => self.open().context("opening the SQLite database for reading")?,
        };
        match read(&conn) {
            Ok(out) => {
                self.give_back(conn);
                Ok(Some(out))
            }
            Err(e) if is_locked(&e) => {
                self.give_back(conn);
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The database file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Whether [`Reader::close`] was called: the database is shutting down.
    pub fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// No read is served any more (answered 503); kept connections close.
    pub fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::Release);
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }
}

/// Opens the database file read-write without create: a file that
/// disappeared is an error, never a fresh empty database.
pub(super) fn open_existing(path: &std::path::Path) -> rusqlite::Result<Connection> {
    Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
}

pub(super) fn is_locked(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked};
    matches!(e.sqlite_error_code(), Some(DatabaseBusy | DatabaseLocked))
}

/// rusqlite's failures that mean "not now" rather than "wrong": the file
/// cannot be opened or read, or its locks misbehave.
pub fn is_unavailable(e: &rusqlite::Error) -> bool {
    e.sqlite_error()
        .is_some_and(|e| is_unavailable_code(e.extended_code))
}

/// The same test for an SQLite result code, primary or extended (sqlx's
/// SQLite errors carry the extended one): busy or locked (past
/// `busy_timeout`), an I/O error, a file that cannot be opened, or a
/// locking protocol failure.
pub fn is_unavailable_code(code: i32) -> bool {
    use rusqlite::ffi;
    matches!(
        code & 0xff,
        ffi::SQLITE_BUSY
            | ffi::SQLITE_LOCKED
            | ffi::SQLITE_IOERR
            | ffi::SQLITE_CANTOPEN
            | ffi::SQLITE_PROTOCOL
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

    /// A WAL database with a table `t`, a connection that writes it, and a
    /// reader on it.
    fn wal_database() -> anyhow::Result<(tempfile::TempDir, rusqlite::Connection, Reader)> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("gatehouse.db");
        let writer = rusqlite::Connection::open(&path)?;
        writer.execute_batch("pragma journal_mode = wal; create table t (v integer not null);")?;
        let reader = Reader::new(&format!("sqlite://{}", path.display()))?
            .ok_or_else(|| anyhow::anyhow!("no reader for a file"))?;
        Ok((dir, writer, reader))
    }

    #[test]
    fn a_database_not_in_wal_mode_has_no_reader() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("gatehouse.db");
        rusqlite::Connection::open(&path)?.execute_batch("create table t (v integer not null);")?;
        assert!(Reader::new(&format!("sqlite://{}", path.display()))?.is_none());
        Ok(())
    }

    #[test]
    fn a_read_that_stays_locked_gives_way_after_the_short_timeout() -> anyhow::Result<()> {
        let (_dir, writer, reader) = wal_database()?;
        // In exclusive locking mode a WAL writer keeps the file to itself
        // (once no other connection has it open).
        reader
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        writer.execute_batch("pragma locking_mode = exclusive; insert into t (v) values (1);")?;
        let started = std::time::Instant::now();
        let read = reader.read(|c| c.query_row("select count(*) from t", [], |r| r.get::<_, i64>(0)))?;
        assert_eq!(read, None, "a locked read is handed to a lane");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        // Its connection is kept, and reads again once the lock is gone.
        drop(writer);
        assert_eq!(
            reader.read(|c| c.query_row("select count(*) from t", [], |r| r.get::<_, i64>(0)))?,
            Some(1)
        );
        Ok(())
    }

    #[test]
    fn reads_see_every_commit_made_before_them_and_none_after_close() -> anyhow::Result<()> {
        let (_dir, writer, reader) = wal_database()?;
        let count = || {
            reader.read(|c| {
                c.prepare_cached("select count(*) from t")?
                    .query_row([], |r| r.get::<_, i64>(0))
            })
        };
        for n in 1..=3 {
            writer.execute("insert into t (v) values ($1)", [n])?;
            // The same kept connection, a fresh snapshot each statement.
            assert_eq!(count()?, Some(n));
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
