//! Password hashing with argon2id, always on the blocking pool behind a
//! semaphore sized to the cores, never on the async workers.

use std::sync::Arc;

use anyhow::Context;
use argon2::password_hash::{Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

/// OWASP's argon2id minimum: m = 19 MiB, t = 2, p = 1.
fn params() -> Params {
    Params::new(19_456, 2, 1, None).unwrap_or_default()
}

#[derive(Clone)]
pub struct Hasher {
    permits: Arc<Semaphore>,
    /// Verified when there is no user, so that path takes the same time.
    dummy_hash: Arc<str>,
}

/// The outcome of checking a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Wrong,
    Right,
    /// Right, and the stored hash uses weaker parameters than ours.
    RightNeedsRehash,
}

impl Hasher {
    pub fn new() -> anyhow::Result<Hasher> {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let dummy = hash_blocking(&SecretString::from("gatehouse dummy password"))?;
        Ok(Hasher {
            permits: Arc::new(Semaphore::new(cores)),
            dummy_hash: dummy.into(),
        })
    }

    /// How many hashes may run at once.
    pub fn permits(&self) -> usize {
        self.permits.available_permits()
    }

    pub async fn hash(&self, password: SecretString) -> anyhow::Result<String> {
        // The permit moves into the blocking job: if this future is dropped
        // (client gone, timeout), the slot stays taken until argon2 is done.
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .context("hasher closed")?;
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            span.in_scope(|| hash_blocking(&password))
        })
        .await
        .context("hash task")?
    }

    /// Checks `password` against `stored`, or against the dummy hash when
    /// `stored` is `None`; the answer is then always [`Verdict::Wrong`].
    pub async fn verify(&self, password: SecretString, stored: Option<String>) -> anyhow::Result<Verdict> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .context("hasher closed")?;
        let real = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.dummy_hash.to_string());
        let span = tracing::Span::current();
        let verdict = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            span.in_scope(|| verify_blocking(&password, &hash))
        })
        .await
        .context("verify task")?;
        Ok(if real { verdict } else { Verdict::Wrong })
    }
}

/// Blocks reserved for each hash's memory: 33 MiB, above glibc's largest
/// dynamic mmap threshold (32 MiB), so the block is always its own mapping
/// and goes back to the kernel when the hash is done. argon2's own 19 MiB
/// `Vec` is not: after the first free glibc raises its threshold and keeps
/// freed blocks in per-thread arenas, up to 38 MiB each, which held a server
/// at ~480 MB RSS after a password flood. Only the `m_cost` blocks used are
/// touched, so resident memory is 19 MiB a hash all the same.
const RESERVED_BLOCKS: usize = 33 * 1024;

/// argon2's `PasswordHasher::hash_password`, with memory from
/// [`RESERVED_BLOCKS`].
fn hash_with<'a>(
    algorithm: Algorithm,
    version: Version,
    params: Params,
    password: &[u8],
    salt: Salt<'a>,
) -> argon2::password_hash::Result<PasswordHash<'a>> {
    let argon2 = Argon2::new(algorithm, version, params);
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_bytes)?;
    let count = argon2.params().block_count();
    let mut blocks: Vec<Block> = Vec::with_capacity(count.max(RESERVED_BLOCKS));
    blocks.resize(count, Block::default());
    let len = argon2.params().output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let output = Output::init_with(len, |out| {
        Ok(argon2.hash_password_into_with_memory(password, salt_bytes, out, &mut blocks[..])?)
    })?;
    Ok(PasswordHash {
        algorithm: algorithm.ident(),
        version: Some(version.into()),
        params: ParamsString::try_from(argon2.params())?,
        salt: Some(salt),
        hash: Some(output),
    })
}

pub fn hash_blocking(password: &SecretString) -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| anyhow::anyhow!("random source failed"))?;
    let salt = SaltString::encode_b64(&bytes).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    hash_with(
        Algorithm::Argon2id,
        Version::V0x13,
        params(),
        password.expose_secret().as_bytes(),
        salt.as_salt(),
    )
    .map(|h| h.to_string())
    .map_err(|e| anyhow::anyhow!("argon2: {e}"))
}

fn verify_blocking(password: &SecretString, stored: &str) -> Verdict {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return Verdict::Wrong;
    };
    // What `PasswordVerifier::verify_password` does: hash again with the
    // stored algorithm, version, parameters and salt; compare in constant
    // time (`Output`'s `PartialEq`).
    let recomputed = (|| {
        let algorithm = Algorithm::try_from(parsed.algorithm)?;
        let version = parsed
            .version
            .map(Version::try_from)
            .transpose()?
            .unwrap_or_default();
        let params = Params::try_from(&parsed)?;
        let salt = parsed.salt.ok_or(argon2::password_hash::Error::SaltInvalid(
            argon2::password_hash::errors::InvalidValue::Malformed,
        ))?;
        hash_with(
            algorithm,
            version,
            params,
            password.expose_secret().as_bytes(),
            salt,
        )
    })();
    match (recomputed, &parsed.hash) {
        (Ok(again), Some(stored)) if again.hash.as_ref() == Some(stored) => {}
        _ => return Verdict::Wrong,
    }
    let ours = params();
    let weaker = parsed.algorithm.as_str() != "argon2id"
        || Params::try_from(&parsed)
            .map(|p| p.m_cost() < ours.m_cost() || p.t_cost() < ours.t_cost())
            .unwrap_or(true);
    if weaker {
        Verdict::RightNeedsRehash
    } else {
        Verdict::Right
    }
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::PasswordHasher as _;

    use super::*;

    #[test]
    fn hashes_verify_and_weak_ones_ask_for_a_rehash() {
        let pw = SecretString::from("correct horse battery staple");
        let hash = hash_blocking(&pw).unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert_eq!(verify_blocking(&pw, &hash), Verdict::Right);
        assert_eq!(
            verify_blocking(&SecretString::from("nope"), &hash),
            Verdict::Wrong
        );
        let weak = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8, 1, 1, None).unwrap(),
        )
        .hash_password(b"pw", &SaltString::encode_b64(b"0123456789abcdef").unwrap())
        .unwrap()
        .to_string();
        assert_eq!(
            verify_blocking(&SecretString::from("pw"), &weak),
            Verdict::RightNeedsRehash
        );
        assert_eq!(verify_blocking(&pw, "not a hash"), Verdict::Wrong);
    }
}
