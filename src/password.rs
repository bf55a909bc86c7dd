//! Password hashing with argon2id, always on the blocking pool behind a
//! semaphore sized to the cores, never on the async workers.

use std::sync::Arc;

use anyhow::Context;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

/// OWASP's argon2id minimum: m = 19 MiB, t = 2, p = 1.
fn params() -> Params {
    Params::new(19_456, 2, 1, None).unwrap_or_default()
}

fn argon2() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params())
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

pub fn hash_blocking(password: &SecretString) -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| anyhow::anyhow!("random source failed"))?;
    let salt = SaltString::encode_b64(&bytes).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    argon2()
        .hash_password(password.expose_secret().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))
}

fn verify_blocking(password: &SecretString, stored: &str) -> Verdict {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return Verdict::Wrong;
    };
    if argon2()
        .verify_password(password.expose_secret().as_bytes(), &parsed)
        .is_err()
    {
        return Verdict::Wrong;
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
