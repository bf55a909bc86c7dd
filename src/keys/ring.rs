//! The key ring: which keys are published, which one signs, reloaded from the database.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;

use super::file::{SigningKey, read_key_dir, read_key_file, write_key_file};
use crate::store::Db;
use crate::store::key::{KeyRow, insert_key, list_keys};

/// Where a key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Published, not yet signing (waiting out the JWKS max-age).
    Pending,
    /// Published and signing.
    Active,
    /// Published, no longer signing: tokens it signed may still be live.
    Retired,
    /// No longer published.
    Expired,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Active => "active",
            KeyState::Retired => "retired",
            KeyState::Expired => "expired",
        }
    }
}

#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub key: Arc<SigningKey>,
    pub row: KeyRow,
}

/// One consistent view of the keys, rebuilt on every reload.
#[derive(Debug, Default)]
pub struct KeySet {
    /// Published keys, oldest `signs_from` first.
    published: Vec<KeyEntry>,
    jwks: bytes::Bytes,
    etag: Arc<str>,
    /// Access tokens verified with these keys, forgotten with them.
    verified: crate::tokens::jwt::Verified,
}

#[derive(Serialize)]
struct Jwks<'a> {
    keys: Vec<&'a super::file::Jwk>,
}

/// Seconds by which instances may lag a key-state change: `now` is whole
/// seconds (rounded down) and each instance reloads the state once a second.
pub const RELOAD_SLACK: i64 = 2;

/// The state of a key at `now`, given how long its tokens live.
pub fn key_state(row: &KeyRow, now: i64, token_lifetime: i64) -> KeyState {
    match row.retired_at {
        // A retired key stays published until the last token it signed
        // (possibly up to RELOAD_SLACK after `retired_at`) has expired.
        Some(retired) if now >= retired + token_lifetime + RELOAD_SLACK => KeyState::Expired,
        Some(_) => KeyState::Retired,
        None if now < row.signs_from => KeyState::Pending,
        None => KeyState::Active,
    }
}

/// The states of all keys, as [`KeySet::signer`] sees them: when no key is
/// active, the oldest pending one signs and so is reported active.
pub fn key_states(rows: &[KeyRow], now: i64, token_lifetime: i64) -> Vec<KeyState> {
    let mut states: Vec<KeyState> = rows.iter().map(|r| key_state(r, now, token_lifetime)).collect();
    if !states.contains(&KeyState::Active) {
        let fallback = (0..rows.len())
            .filter(|&i| states[i] == KeyState::Pending)
            .min_by_key(|&i| rows[i].signs_from);
        if let Some(i) = fallback {
            states[i] = KeyState::Active;
        }
    }
    states
}

impl KeySet {
    fn build(entries: Vec<KeyEntry>, now: i64, token_lifetime: i64) -> KeySet {
        let published: Vec<KeyEntry> = entries
            .into_iter()
            .filter(|e| key_state(&e.row, now, token_lifetime) != KeyState::Expired)
            .collect();
        let jwks = serde_json::to_string(&Jwks {
            keys: published.iter().map(|e| &e.key.jwk).collect(),
        })
        .unwrap_or_else(|_| String::from(r#"{"keys":[]}"#));
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, jwks.as_bytes());
        let etag = format!("\"{}\"", URL_SAFE_NO_PAD.encode(&digest.as_ref()[..16]));
        KeySet {
            published,
            jwks: bytes::Bytes::from(jwks),
            etag: etag.into(),
            verified: Default::default(),
        }
    }

    /// The key that signs at `now`: the newest active one; if none is active
    /// yet (the only active key was just retired), the oldest pending one,
    /// which is already published.
    pub fn signer(&self, now: i64) -> Option<&Arc<SigningKey>> {
        let live = || self.published.iter().filter(|e| e.row.retired_at.is_none());
        live()
            .filter(|e| e.row.signs_from <= now)
            .max_by_key(|e| e.row.signs_from)
            .or_else(|| live().min_by_key(|e| e.row.signs_from))
            .map(|e| &e.key)
    }

    /// A published key by `kid`: the only keys a token may be verified with.
    pub fn verifier(&self, kid: &str) -> Option<&Arc<SigningKey>> {
        self.published.iter().find(|e| e.key.kid == kid).map(|e| &e.key)
    }

    pub fn verified(&self) -> &crate::tokens::jwt::Verified {
        &self.verified
    }

    pub fn jwks(&self) -> &bytes::Bytes {
        &self.jwks
    }

    /// A strong validator for the JWKS body.
    pub fn etag(&self) -> &Arc<str> {
        &self.etag
    }
}

/// The shared, reloadable key ring of a running server.
pub struct KeyRing {
    dir: PathBuf,
    token_lifetime: i64,
    current: RwLock<Arc<KeySet>>,
}

impl KeyRing {
    /// `token_lifetime`: the longest life of a signed token, which a retired
    /// key stays published for.
    pub fn new(dir: PathBuf, token_lifetime: i64) -> KeyRing {
        KeyRing {
            dir,
            token_lifetime,
            current: RwLock::new(Arc::new(KeySet::default())),
        }
    }

    pub fn current(&self) -> Arc<KeySet> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Re-reads key state from the database; loads key files not yet in memory.
    pub async fn reload(&self, db: &Db, now: i64) -> anyhow::Result<()> {
        let rows = list_keys(db.pool()).await?;
        let loaded: HashMap<String, Arc<SigningKey>> = {
            let current = self.current();
            current
                .published
                .iter()
                .map(|e| (e.key.kid.clone(), e.key.clone()))
                .collect()
        };
        let mut entries = Vec::with_capacity(rows.len());
        let mut missing = Vec::new();
        for row in rows {
            if key_state(&row, now, self.token_lifetime) == KeyState::Expired {
                continue;
            }
            match loaded.get(&row.kid) {
                Some(key) => entries.push(KeyEntry {
                    key: key.clone(),
                    row,
                }),
                None => missing.push(row),
            }
        }
        if !missing.is_empty() {
            let dir = self.dir.clone();
            let found = tokio::task::spawn_blocking(move || load_files(&dir, missing))
                .await
                .context("loading key files")??;
            entries.extend(found);
        }
        entries.sort_by_key(|e| e.row.signs_from);
        let set = KeySet::build(entries, now, self.token_lifetime);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        Ok(())
    }
}

fn load_files(dir: &Path, rows: Vec<KeyRow>) -> anyhow::Result<Vec<KeyEntry>> {
    let mut out = Vec::new();
    let mut scanned: Option<Vec<SigningKey>> = None;
    for row in rows {
        let named = dir.join(format!("{}.pem", row.kid));
        let key = match read_key_file(&named) {
            Ok(key) if key.kid == row.kid => Some(key),
            _ => {
                // A key imported under another file name.
                let all = match scanned.as_mut() {
                    Some(all) => all,
                    None => scanned.insert(read_key_dir(dir)?),
                };
                all.iter()
                    .position(|k| k.kid == row.kid)
                    .map(|i| all.swap_remove(i))
            }
        };
        match key {
            Some(key) => out.push(KeyEntry {
                key: Arc::new(key),
                row,
            }),
            None => tracing::warn!(kid = %row.kid, dir = %dir.display(), "no key file for this kid"),
        }
    }
    Ok(out)
}

/// Makes sure at least one key exists. On a first start with no key state,
/// imports the PEM files found in the directory, or writes a new key there.
/// This is the only time a server writes to the keys directory.
pub async fn bootstrap(db: &Db, dir: &Path, now: i64) -> anyhow::Result<()> {
    if !list_keys(db.pool()).await?.is_empty() {
        return Ok(());
    }
    let owned = dir.to_owned();
    let existing = tokio::task::spawn_blocking(move || read_key_dir(&owned)).await??;
    if existing.is_empty() {
        let (kid, _) = generate_and_store(db, dir, 0).await?;
        tracing::info!(event = "key_generated", %kid, "generated the first signing key");
        return Ok(());
    }
    let mut tx = db.begin_write().await?;
    for key in existing {
        insert_key(
            tx.conn(),
            &KeyRow {
                kid: key.kid.clone(),
                created_at: now,
                signs_from: now,
                retired_at: None,
            },
        )
        .await?;
    }
    tx.commit().await
}

/// Generates a key, writes its file, and records it as signing `delay`
/// seconds after it is recorded (and so published). Returns the kid and the
/// instant it signs from.
pub async fn generate_and_store(db: &Db, dir: &Path, delay: i64) -> anyhow::Result<(String, i64)> {
    let dir = dir.to_owned();
    let kid = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        let (key, der) = SigningKey::generate()?;
        write_key_file(&dir, &key.kid, &der)?;
        Ok(key.kid)
    })
    .await??;
    // Read the clock after key generation, which may take a while.
    let now = crate::now();
    let signs_from = now + delay;
    let mut tx = db.begin_write().await?;
    insert_key(
        tx.conn(),
        &KeyRow {
            kid: kid.clone(),
            created_at: now,
            signs_from,
            retired_at: None,
        },
    )
    .await?;
    tx.commit().await?;
    Ok((kid, signs_from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kid: &str, signs_from: i64, retired_at: Option<i64>) -> KeyRow {
        KeyRow {
            kid: kid.into(),
            created_at: 0,
            signs_from,
            retired_at,
        }
    }

    #[test]
    fn a_key_lives_through_pending_active_retired_expired() {
        let k = row("k", 100, None);
        assert_eq!(key_state(&k, 99, 900), KeyState::Pending);
        assert_eq!(key_state(&k, 100, 900), KeyState::Active);
        let k = row("k", 100, Some(200));
        assert_eq!(
            key_state(&k, 200 + 900 + RELOAD_SLACK - 1, 900),
            KeyState::Retired
        );
        assert_eq!(key_state(&k, 200 + 900 + RELOAD_SLACK, 900), KeyState::Expired);
    }

    #[test]
    fn the_oldest_pending_key_signs_when_none_is_active() {
        let rows = [row("old", 0, Some(50)), row("a", 200, None), row("b", 300, None)];
        assert_eq!(
            key_states(&rows, 100, 900),
            [KeyState::Retired, KeyState::Active, KeyState::Pending]
        );
    }
}
