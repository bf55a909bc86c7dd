//! Persistence on SQLite or PostgreSQL through one `AnyPool` and one SQL text.
//!
//! Ids are TEXT, instants BIGINT Unix seconds, digests BLOB/BYTEA: the types
//! `AnyPool` carries on both backends. On SQLite every write transaction is
//! opened with `BEGIN IMMEDIATE` (a deferred BEGIN that reads then writes
//! fails with "database is locked" instead of waiting) and writes of this
//! process queue on one async mutex, so they never spin on the busy handler;
//! `busy_timeout` covers other processes such as the CLI.

pub mod account_token;
pub mod browser;
pub mod client;
pub mod client_cache;
pub mod key;
pub mod login_attempt;
pub mod mail;
pub mod prune;
pub mod revocation;
pub mod session;
pub mod user;

use std::ops::{Deref, DerefMut};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Executor, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

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
    /// SQLite only: the same file opened without create, for [`Db::ping`].
    ping_options: Option<AnyConnectOptions>,
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

/// The longest [`Db::ping`] waits for an answer.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// PostgreSQL: the longest a request waits for a connection before it is
/// answered 503. A server that stopped answering must not hold requests for
/// the whole request timeout; a healthy pool hands one out in milliseconds.
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
                    .acquire_timeout(Duration::from_secs(10))
                    .after_connect(|conn, _meta| {
                        Box::pin(async move {
                            conn.execute(
                                "pragma journal_mode = wal; pragma busy_timeout = 10000; \
                                 pragma foreign_keys = on; pragma synchronous = normal;",
                            )
                            .await?;
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
                    .connect_with(options)
                    .await
            }
        }
        .context("connecting to the database")?;
        Ok(Db {
            pool,
            backend,
            write_lock: (backend == Backend::Sqlite).then(|| Arc::new(Mutex::new(()))),
            ping_options,
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

    pub async fn close(&self) {
        self.pool.close().await;
    }
}
