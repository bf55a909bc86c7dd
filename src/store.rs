//! Persistence on SQLite or PostgreSQL through one `AnyPool` and one SQL text.
//!
//! Ids are TEXT, instants BIGINT Unix seconds, digests BLOB/BYTEA: the types
//! `AnyPool` carries on both backends. On SQLite every write transaction is
//! opened with `BEGIN IMMEDIATE` (a deferred BEGIN that reads then writes
//! fails with "database is locked" instead of waiting) and writes of this
//! process queue on one async mutex, so they never spin on the busy handler;
//! `busy_timeout` covers other processes such as the CLI. A refresh rotation
//! is one statement instead (no transaction), and concurrent ones share a
//! statement (on SQLite `rotation`; on PostgreSQL [`batch`], those that keep
//! their scope). The hottest reads run on the calling thread on SQLite
//! ([`reader`]); on PostgreSQL on lanes ([`Db::lane`]) rather than through
//! the pool, those of concurrent requests asked together ([`batch`]).

pub mod account_token;
pub mod batch;
pub mod browser;
mod checkpoint;
pub mod client;
pub mod client_cache;
mod direct;
pub mod key;
pub mod login_attempt;
pub mod mail;
pub mod prune;
pub mod reader;
pub mod revocation;
pub mod rotation;
pub mod session;
pub mod user;

use std::ops::{Deref, DerefMut};
use std::str::FromStr;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use anyhow::Context;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Executor, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard, Semaphore, SemaphorePermit};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// SQLite only: one writer at a time in this process.
    write_lock: Option<Arc<Mutex<()>>>,
    /// SQLite only: the same file opened without create, for [`Db::ping`]
    /// (and the lanes).
    ping_options: Option<AnyConnectOptions>,
    /// Connections for the hot paths, see [`Db::lane`].
    lanes: Arc<Lanes>,
    /// SQLite on a file: refresh rotations, written in batches.
    rotations: Option<rotation::RotationQueue>,
    /// SQLite on a file: the hottest reads, on the calling thread.
    reader: Option<Arc<reader::Reader>>,
    /// SQLite on a file: a password login's writes, on the calling thread.
    direct: Option<Arc<direct::DirectWriter>>,
    /// PostgreSQL: the hottest reads of concurrent requests, asked together.
    token_holders: Option<Arc<batch::Batcher<user::TokenHolders>>>,
    revoked_jtis: Option<Arc<batch::Batcher<revocation::RevokedJtis>>>,
    live_rotations: Option<Arc<batch::Batcher<session::LiveRotations>>>,
}

/// A write transaction; on SQLite it also holds the process's write lock.
pub struct WriteTx {
    tx: Transaction<'static, Any>,
    _guard: Option<OwnedMutexGuard<()>>,
}

impl WriteTx {
    /// The connection to run statements on.
    pub fn conn(&mut self) -> &mut sqlx::AnyConnection {
        &mut self.tx
    }

    pub async fn commit(self) -> anyhow::Result<()> {
        self.tx.commit().await.context("commit")
    }
}

impl Deref for WriteTx {
    type Target = Transaction<'static, Any>;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

/// A write transaction on a lane ([`Db::begin_lane_write`]). Dropped
/// uncommitted (an error, a cancelled request), its connection is closed,
/// which rolls the transaction back.
pub struct LaneTx<'a> {
    db: &'a Db,
    lane: Lane<'a>,
    _guard: Option<OwnedMutexGuard<()>>,
}

impl LaneTx<'_> {
    /// The connection to run statements on.
    pub fn conn(&mut self) -> &mut sqlx::AnyConnection {
        self.lane.conn()
    }

    pub async fn commit(self) -> anyhow::Result<()> {
        self.end("commit").await
    }

    /// Undoes the transaction and keeps the connection (dropping it would
    /// close the connection, and the next lane would open a new one).
    pub async fn rollback(self) -> anyhow::Result<()> {
        self.end("rollback").await
    }

    /// Ends the transaction with `statement`; the lane goes back for reuse.
    async fn end(mut self, statement: &'static str) -> anyhow::Result<()> {
        let conn = self.lane.conn();
        self.db
            .bounded(async { conn.execute(statement).await.context(statement) })
            .await?;
        self.lane.release();
        Ok(())
    }
}

/// The longest [`Db::ping`] waits for an answer.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest a request waits for a pooled connection or a lane, for a new
/// lane's connection, and (PostgreSQL) for a lane query's answer, before it
/// is answered 503. A server that stopped answering must not hold requests
/// for the whole request timeout; a healthy pool hands one out in
/// milliseconds.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// `url` without credentials or options, to name the database in a message.
fn location(url: &str) -> String {
    let url = url.split('?').next().unwrap_or(url);
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_owned(),
    }
}

/// A database that cannot be opened or reached at start: one line naming
/// the variable, the place (no password) and the cause.
fn unusable(url: &str, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(crate::config::ConfigError {
        variable: "GATEHOUSE_DATABASE_URL",
        problem: format!("cannot open the database at {}: {e}", location(url)),
    })
}

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

impl Db {
    /// Connects; on SQLite creates the file and sets WAL and `busy_timeout`.
    pub async fn connect(url: &str) -> anyhow::Result<Db> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_owned(),
        };
        let options = AnyConnectOptions::from_str(&url).context("parsing the database URL")?;
        let ping_options = match backend {
            Backend::Sqlite => Some(
                AnyConnectOptions::from_str(&url.replace("mode=rwc", "mode=rw"))
                    .context("parsing the database URL")?,
            ),
            Backend::Postgres => None,
        };
        let pool = match (backend, &ping_options) {
            (Backend::Sqlite, Some(rw_options)) => {
                // Create the file once, here; the pool opens it read-write
                // without create, so a database file that disappears while
                // running is an error, never a fresh empty database.
                let created = <sqlx::AnyConnection as sqlx::Connection>::connect_with(&options)
                    .await
                    .map_err(|e| unusable(&url, e))?;
                sqlx::Connection::close(created)
                    .await
                    .context("creating the SQLite database")?;
                AnyPoolOptions::new()
                    .max_connections(8)
                    .min_connections(1)
                    // A connection to a local file does not go stale; a ping
                    // would be one more trip to its worker thread per query.
                    .test_before_acquire(false)
                    .acquire_timeout(Duration::from_secs(10))
                    .after_connect(|conn, _meta| {
                        Box::pin(async move {
                            conn.execute(SQLITE_PRAGMAS).await?;
                            Ok(())
                        })
                    })
                    .connect_with(rw_options.clone())
                    .await
            }
            _ => {
                // One plain attempt first: the pool retries a refused
                // connection until its timeout, then says only that it timed out.
                let first = <sqlx::AnyConnection as sqlx::Connection>::connect_with(&options);
                match tokio::time::timeout(ACQUIRE_TIMEOUT, first).await {
                    Ok(Ok(conn)) => {
                        let _ = sqlx::Connection::close(conn).await;
                    }
                    Ok(Err(e)) => return Err(unusable(&url, e)),
                    Err(_) => return Err(unusable(&url, format!("no answer within {ACQUIRE_TIMEOUT:?}"))),
                }
                AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_with(options.clone())
                    .await
            }
        }
        .context("connecting to the database")?;
        let lanes = Lanes {
            options: ping_options.clone().unwrap_or(options),
            sqlite: backend == Backend::Sqlite,
            idle: std::sync::Mutex::new(Vec::new()),
            permits: Semaphore::new(match backend {
                Backend::Sqlite => SQLITE_LANES,
                Backend::Postgres => POSTGRES_LANES,
            }),
        };
        let lanes = Arc::new(lanes);
        let write_lock = (backend == Backend::Sqlite).then(|| Arc::new(Mutex::new(())));
        let reader = match backend {
            Backend::Sqlite => reader::Reader::new(&url)?.map(Arc::new),
            Backend::Postgres => None,
        };
        let rotations = match (&reader, &write_lock) {
            (Some(reader), Some(lock)) => Some(rotation::RotationQueue::start(
                reader.path().to_path_buf(),
                lock.clone(),
            )),
            _ => None,
        };
        if let (Some(reader), Some(lock)) = (&reader, &write_lock) {
            checkpoint::start(reader, lock);
        }
        let direct = reader
            .as_ref()
            .map(|reader| Arc::new(direct::DirectWriter::new(reader.path().to_path_buf())));
        let postgres = backend == Backend::Postgres;
        let token_holders = postgres.then(|| Arc::new(batch::Batcher::start(lanes.clone())));
        let revoked_jtis = postgres.then(|| Arc::new(batch::Batcher::start(lanes.clone())));
        let live_rotations = postgres.then(|| Arc::new(batch::Batcher::start(lanes.clone())));
        Ok(Db {
            pool,
            backend,
            write_lock,
            ping_options,
            lanes,
            rotations,
            reader,
            direct,
            token_holders,
            revoked_jtis,
            live_rotations,
        })
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATOR,
            Backend::Postgres => &POSTGRES_MIGRATOR,
        };
        migrator.run(&self.pool).await.context("applying migrations")
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool, for reads outside a transaction.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// On SQLite, waits for this process's write lock; for a single write
    /// statement run outside a transaction. `None` on PostgreSQL.
    pub async fn writer(&self) -> Option<OwnedMutexGuard<()>> {
        match &self.write_lock {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        }
    }

    /// Opens a write transaction (`BEGIN IMMEDIATE` on SQLite).
    pub async fn begin_write(&self) -> anyhow::Result<WriteTx> {
        let guard = self.writer().await;
        let tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
        .context("beginning a write transaction")?;
        Ok(WriteTx { tx, _guard: guard })
    }

    /// [`Db::begin_write`] on a lane, for a hot path: a pooled connection
    /// costs a trip to be given back (a ping), and on PostgreSQL another to
    /// be taken.
    pub async fn begin_lane_write(&self) -> anyhow::Result<LaneTx<'_>> {
        let guard = self.writer().await;
        let mut lane = self.lane().await?;
        let begin = match self.backend {
            Backend::Sqlite => "begin immediate",
            Backend::Postgres => "begin",
        };
        let conn = lane.conn();
        self.bounded(async { conn.execute(begin).await.context("beginning a write transaction") })
            .await?;
        Ok(LaneTx {
            db: self,
            lane,
            _guard: guard,
        })
    }

    /// Is the database reachable? Answers within [`PING_TIMEOUT`] (the pool
    /// would wait its whole acquire timeout for a dead server). On SQLite it
    /// also opens the file afresh, without create: pooled connections keep a
    /// deleted or moved file open and would still say yes.
    pub async fn ping(&self) -> bool {
        let check = async {
            sqlx::query("select 1").execute(&self.pool).await?;
            if let Some(options) = &self.ping_options {
                let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect_with(options).await?;
                let read = sqlx::query("select count(*) from sqlite_master")
                    .execute(&mut conn)
                    .await;
                let _ = sqlx::Connection::close(conn).await;
                read?;
            }
            Ok::<(), sqlx::Error>(())
        };
        matches!(tokio::time::timeout(PING_TIMEOUT, check).await, Ok(Ok(())))
    }

    /// One hot-path read. SQLite on a file: on this thread, through
    /// [`reader`]. PostgreSQL, an in-memory database, or a file still busy
    /// after the reader's short wait: on a lane (where SQLite's worker thread
    /// waits out `busy_timeout`, not an async worker), bounded as
    /// [`Db::bounded`] says. `what` names the query in errors.
    pub async fn hot_read<T>(
        &self,
        what: &'static str,
        on_sqlite: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
        on_lane: impl for<'c> FnOnce(&'c mut sqlx::AnyConnection) -> LaneQuery<'c, T>,
    ) -> anyhow::Result<T> {
        if let Some(reader) = &self.reader
            && let Some(read) = reader.read(on_sqlite).transpose()
        {
            return read.context(what);
        }
        let mut lane = self.lane().await?;
        let query = on_lane(lane.conn());
        let out = self.bounded(async { query.await.context(what) }).await?;
        lane.release();
        Ok(out)
    }

    /// SQLite on a file: runs `work` in a write transaction on this thread
    /// ([`direct`]), under this process's write lock, and commits it if
    /// `work` succeeded; `work` may run again after another process's lock
    /// rolled it back. `None` on PostgreSQL and an in-memory database: the
    /// caller writes through sqlx. `what` names the writes in errors.
    pub async fn direct_write<T>(
        &self,
        what: &'static str,
        work: impl FnMut(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Option<anyhow::Result<T>> {
        let (direct, reader) = (self.direct.as_ref()?, self.reader.as_ref()?);
        let _writer = self.writer().await;
        if reader.is_closed() {
            return Some(Err(anyhow::Error::new(sqlx::Error::PoolClosed).context(what)));
        }
        Some(
            direct
                .write(work)
                .await
                .map_err(|e| anyhow::Error::new(e).context(what)),
        )
    }

    /// PostgreSQL: token-holder checks of concurrent requests, asked together.
    pub fn token_holders(&self) -> Option<&batch::Batcher<user::TokenHolders>> {
        self.token_holders.as_deref()
    }

    /// PostgreSQL: revoked-`jti` checks of concurrent requests, asked together.
    pub fn revoked_jtis(&self) -> Option<&batch::Batcher<revocation::RevokedJtis>> {
        self.revoked_jtis.as_deref()
    }

    /// PostgreSQL: refresh rotations of concurrent requests, written together.
    pub fn live_rotations(&self) -> Option<&batch::Batcher<session::LiveRotations>> {
        self.live_rotations.as_deref()
    }

    /// Runs the statement of a [`batch::Batch`] for `key` alone, on a lane.
    pub async fn alone<R: batch::Batch>(&self, key: R::Key) -> anyhow::Result<R::Answer> {
        batch::alone::<R>(&self.lanes, key).await
    }

    /// A connection for one hot-path query, outside sqlx's pool; call
    /// [`Lane::release`] once the query succeeded.
    ///
    /// sqlx's pool pings a connection when it is taken and again when it is
    /// given back: a round trip to PostgreSQL, or a hop to the SQLite
    /// connection's worker thread, each time. For a single indexed query that
    /// is two thirds of the cost. (SQLite reads of a file run on [`reader`].) A lane is handed back without a ping, and
    /// only by [`Lane::release`]: a lane dropped mid-query (its request was
    /// cancelled) or after an error is closed, never reused. Waits at most
    /// [`ACQUIRE_TIMEOUT`] for a lane or a new connection, then fails as the
    /// pool does (`PoolTimedOut`, answered 503).
    pub async fn lane(&self) -> anyhow::Result<Lane<'_>> {
        self.lanes.lane().await
    }

    /// Runs a query made on a [`Lane`]: on PostgreSQL it fails after
    /// [`ACQUIRE_TIMEOUT`] as `PoolTimedOut` (answered 503), since a lane is
    /// not pinged first and a server that stopped answering would otherwise
    /// hold the request; the lane, dropped unreleased, is closed. SQLite
    /// waits as long as its `busy_timeout` says.
    pub async fn bounded<T>(&self, query: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
        match self.backend {
            Backend::Sqlite => query.await,
            Backend::Postgres => tokio::time::timeout(ACQUIRE_TIMEOUT, query)
                .await
                .unwrap_or_else(|_| {
                    Err(anyhow::Error::new(sqlx::Error::PoolTimedOut).context("no answer in time"))
                }),
        }
    }

    pub async fn close(&self) {
        if let Some(direct) = &self.direct {
            direct.close();
        }
        if let Some(reader) = &self.reader {
            reader.close();
        }
        if let Some(rotations) = &self.rotations {
            rotations.close();
        }
        self.pool.close().await;
        // No lane is handed out any more (`PoolClosed`, answered 503).
        self.lanes.permits.close();
        let idle = std::mem::take(&mut *self.lanes.idle.lock().unwrap_or_else(PoisonError::into_inner));
        for (conn, _) in idle {
            let _ = sqlx::Connection::close(conn).await;
        }
    }
}

/// A query on a lane, for [`Db::hot_read`].
pub type LaneQuery<'c, T> = std::pin::Pin<Box<dyn Future<Output = Result<T, sqlx::Error>> + Send + 'c>>;

/// SQLite: set on every connection.
/// `page_size`: a new database gets 1 KiB pages (an existing one keeps its
/// own). Every commit writes each page it touched whole into the WAL, and a
/// refresh touches a few index pages at random: with 4 KiB pages that was
/// about 23 KB written per refresh, with 1 KiB about 10, and the slowest
/// 1 % of refreshes went from 31-33 ms to 22 ms (throughput and the hot
/// reads unchanged).
/// `mmap_size`: pages are read from a mapping, not by a pread(2) each, after
/// another connection's commit made the page cache stale.
/// Rows over about 1 KB (mail bodies) now take an overflow page or two.
/// `wal_autocheckpoint = 0`: no commit copies the WAL back into the database;
/// a task of its own does ([`checkpoint`]), and writers wait only for the
/// last few milliseconds of it, when the log starts over (every 10,000
/// pages). Under sustained refresh load the WAL file grew to 18-25 MB.
/// `cache_size` stays SQLite's default, 2 MB (about 1,770 pages of 1 KiB).
/// Measured under refresh load, server CPU per refresh, two pairs each:
/// 256 KB cost about a quarter more (the rotation writer's pages no longer
/// fit and were fetched again), 8 MB saved nothing. Each commit that
/// followed an index page split walks the writer's whole cache: SQLite
/// parks a page at the lock page's number (1,048,577 with 1 KiB pages)
/// while it reorders the split, and the commit's truncation to the file's
/// size then visits every cached page. That walk was about 1 % of the CPU.
pub(super) const SQLITE_PRAGMAS: &str = "pragma page_size = 1024; pragma journal_mode = wal; \
     pragma busy_timeout = 10000; pragma foreign_keys = on; pragma synchronous = normal; \
     pragma mmap_size = 268435456; \
     pragma wal_autocheckpoint = 0;";

/// PostgreSQL: set on every lane. `statement_timeout` (milliseconds) is half
/// a second less than [`ACQUIRE_TIMEOUT`], so the server cancels a slow write
/// before its caller is answered 503, and every failure still comes within
/// about 3 s. Lanes run only keyed lookups and writes, and their plans are
/// cached per connection: with hash and merge joins and sequential scans
/// off, a plan made while the tables were small or their statistics stale
/// still probes the indexes (see [`batch`]).
const POSTGRES_LANE_SETTINGS: &str = "set statement_timeout = 2500; set enable_hashjoin = off; \
     set enable_mergejoin = off; set enable_seqscan = off";

/// A lane idle longer than this is pinged before it is used again (a
/// connection dropped by the server or a firewall while it sat unused).
const LANE_IDLE_PING: Duration = Duration::from_secs(30);

/// Lanes per process. SQLite: the rotation writer, and the hot reads of an
/// in-memory database (a file's run on [`reader`]). PostgreSQL: lanes
/// overlap their round trips (4 and 16 measured no better than 8).
const SQLITE_LANES: usize = 4;
const POSTGRES_LANES: usize = 8;

/// The connections behind [`Db::lane`].
struct Lanes {
    options: AnyConnectOptions,
    sqlite: bool,
    /// Connections not in use, with when they were given back.
    idle: std::sync::Mutex<Vec<(sqlx::AnyConnection, std::time::Instant)>>,
    permits: Semaphore,
}

impl Lanes {
    async fn lane(&self) -> anyhow::Result<Lane<'_>> {
        let permit = match tokio::time::timeout(ACQUIRE_TIMEOUT, self.permits.acquire()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_closed)) => return Err(anyhow::Error::new(sqlx::Error::PoolClosed)),
            Err(_) => {
                return Err(
                    anyhow::Error::new(sqlx::Error::PoolTimedOut).context("waiting for a database lane")
                );
            }
        };
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let conn = match idle {
            Some((conn, since)) if since.elapsed() < LANE_IDLE_PING => Some(conn),
            Some((mut conn, _)) => {
                let alive = tokio::time::timeout(PING_TIMEOUT, sqlx::Connection::ping(&mut conn)).await;
                matches!(alive, Ok(Ok(()))).then_some(conn)
            }
            None => None,
        };
        let conn = match conn {
            Some(conn) => conn,
            None => self.connect().await.context("opening a database lane")?,
        };
        Ok(Lane {
            lanes: self,
            conn: Some(conn),
            _permit: permit,
        })
    }

    async fn connect(&self) -> Result<sqlx::AnyConnection, sqlx::Error> {
        let open = async {
            let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect_with(&self.options).await?;
            if self.sqlite {
                conn.execute(SQLITE_PRAGMAS).await?;
            } else {
                // The server gives up on a slow statement itself, so a write
                // we answered 503 for is rolled back, not committed later.
                conn.execute(POSTGRES_LANE_SETTINGS).await?;
            }
            Ok(conn)
        };
        tokio::time::timeout(ACQUIRE_TIMEOUT, open)
            .await
            .unwrap_or(Err(sqlx::Error::PoolTimedOut))
    }
}

/// One connection from [`Db::lane`].
pub struct Lane<'a> {
    lanes: &'a Lanes,
    /// Taken by [`Lane::release`]; still here on drop means "close it".
    conn: Option<sqlx::AnyConnection>,
    _permit: SemaphorePermit<'a>,
}

impl Lane<'_> {
    pub fn conn(&mut self) -> &mut sqlx::AnyConnection {
        match &mut self.conn {
            Some(conn) => conn,
            // Only `release` takes it, and that consumes the lane.
            None => unreachable!("a lane is used after its release"),
        }
    }

    /// The query finished: the connection goes back for the next request.
    pub fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            self.lanes
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((conn, std::time::Instant::now()));
        }
    }
}

/// A fresh database: on PostgreSQL when `GATEHOUSE_TEST_DATABASE_URL`
/// names one (as the API tests do; their first test drops it once this
/// process has ended), else a SQLite file in `dir`.
#[cfg(test)]
pub(crate) async fn test_database(dir: &std::path::Path) -> anyhow::Result<String> {
    use sqlx::Connection as _;
    match std::env::var("GATEHOUSE_TEST_DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => {
            sqlx::any::install_default_drivers();
            let name = format!(
                "gatehouse_test_{}_{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            );
            let mut conn = sqlx::AnyConnection::connect(&url).await?;
            conn.execute(format!("create database {name}").as_str()).await?;
            conn.close().await?;
            let (base, _) = url.rsplit_once('/').context("a database URL with a path")?;
            Ok(format!("{base}/{name}"))
        }
        _ => Ok(format!("sqlite://{}", dir.join("a.db").display())),
    }
}
