//! Clients as the token, revocation and introspection endpoints see them:
//! read from the database once, then kept in memory.
//!
//! Every change to the `client` table moves a counter (`client_generation`,
//! kept by triggers). Each instance polls it once a second, with its key
//! reload, and drops every cached client when it moves; changes made through
//! this instance's admin API drop them at once. So a client deleted, changed
//! or given a new secret elsewhere (the CLI, another instance) stops being
//! honoured here within about a second; a new client is found at once, since
//! only clients that exist are cached.
//!
//! If the poll has not answered for a few seconds, the cache is bypassed.
//!
//! Users and their tokens are not cached: revocation, logout and disabling a
//! user take effect at once (SPEC §5).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::Db;
use super::client::{Client, find_client};

pub struct ClientCache {
    clients: RwLock<HashMap<String, Arc<Client>>>,
    /// Moves on every [`ClientCache::invalidate`]: a lookup that raced with
    /// one does not store what it read.
    epoch: AtomicU64,
    /// The database's `client_generation` last seen; -1 before the first poll.
    generation: AtomicI64,
    started: Instant,
    /// Milliseconds after `started` of the last poll that answered.
    confirmed_ms: AtomicU64,
}

/// Without a poll that answered for this long (the database is slow or out
/// of reach), the cache is not trusted: every lookup reads the database.
const TRUST_FOR: Duration = Duration::from_secs(3);

impl ClientCache {
    pub fn new() -> ClientCache {
        ClientCache {
            clients: RwLock::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            generation: AtomicI64::new(-1),
            started: Instant::now(),
            confirmed_ms: AtomicU64::new(0),
        }
    }

    fn trusted(&self) -> bool {
        let confirmed = Duration::from_millis(self.confirmed_ms.load(Ordering::Acquire));
        self.generation.load(Ordering::Acquire) >= 0 && self.started.elapsed() < confirmed + TRUST_FOR
    }

    /// The client with this id, from memory or else from the database.
    pub async fn find(&self, db: &Db, id: &str) -> anyhow::Result<Option<Arc<Client>>> {
        if !self.trusted() {
            return Ok(find_client(db.pool(), id).await?.map(Arc::new));
        }
        if let Some(client) = self
            .clients
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
        {
            return Ok(Some(client.clone()));
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let Some(client) = find_client(db.pool(), id).await? else {
            return Ok(None);
        };
        let client = Arc::new(client);
        let mut clients = self.clients.write().unwrap_or_else(PoisonError::into_inner);
        if self.epoch.load(Ordering::Acquire) == epoch {
            clients.insert(client.id.clone(), client.clone());
        }
        Ok(Some(client))
    }

    /// Drops every cached client.
    pub fn invalidate(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.clients
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Reads the database's client generation; drops the cache when it moved.
    pub async fn follow(&self, db: &Db) -> anyhow::Result<()> {
        let (generation,): (i64,) = sqlx::query_as("select generation from client_generation where id = 1")
            .fetch_one(db.pool())
            .await
            .context("select client generation")?;
        if self.generation.swap(generation, Ordering::AcqRel) != generation {
            self.invalidate();
        }
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.confirmed_ms.store(now, Ordering::Release);
        Ok(())
    }
}

impl Default for ClientCache {
    fn default() -> Self {
        ClientCache::new()
    }
}
