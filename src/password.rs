//! Password hashing with argon2id, on a few threads of its own (one per
//! core), never on the async workers.
//!
//! The threads take jobs from one queue: a thread that finishes a hash starts
//! the next at once. (On the blocking pool behind a semaphore, the next hash
//! started only once an async worker had run to hand it over, and with every
//! core busy hashing that worker waited for the scheduler: a gap between
//! hashes.) A job whose requester has gone (its request timed out, the client
//! left) is dropped unstarted. Each thread keeps argon2's 19 MiB from one
//! hash to the next while jobs wait, and gives it back when none does
//! ([`Memory`]).

use std::sync::{Arc, Mutex, PoisonError, TryLockError, mpsc};

use anyhow::Context;
use argon2::password_hash::{Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::oneshot;

/// OWASP's argon2id minimum: m = 19 MiB, t = 2, p = 1.
fn params() -> Params {
    Params::new(19_456, 2, 1, None).unwrap_or_default()
}

#[derive(Clone)]
pub struct Hasher {
    jobs: mpsc::Sender<Job>,
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

enum Work {
    Hash(oneshot::Sender<anyhow::Result<String>>),
    Verify(String, oneshot::Sender<Verdict>),
}

struct Job {
    password: SecretString,
    work: Work,
    span: tracing::Span,
    request: Option<Arc<str>>,
}

impl Job {
    fn run(self, memory: &mut Memory) {
        let Job {
            password,
            work,
            span,
            request,
        } = self;
        let _entered = span.enter();
        crate::telemetry::request::run_for(request, || work.run(&password, memory));
    }
}

impl Work {
    fn run(self, password: &SecretString, memory: &mut Memory) {
        match self {
            Work::Hash(answer) if !answer.is_closed() => {
                let _ = answer.send(hash_in(memory, password));
            }
            Work::Verify(stored, answer) if !answer.is_closed() => {
                let _ = answer.send(verify_in(memory, password, &stored));
            }
            // Nobody waits for this one any more.
            _ => {}
        }
    }
}

impl Hasher {
    /// Starts one hashing thread per core; they end with the last clone.
    pub fn new() -> anyhow::Result<Hasher> {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let dummy = hash_blocking(&SecretString::from("gatehouse dummy password"))?;
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..cores {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name("gatehouse-argon2".into())
                .spawn(move || {
                    let mut memory = Memory::default();
                    loop {
                        // One idle thread waits on the queue at a time. A
                        // thread about to wait, for a job or for the queue,
                        // gives its memory back first.
                        let next = match queue.try_lock() {
                            Ok(queue) => queue.try_recv().ok(),
                            Err(TryLockError::Poisoned(queue)) => queue.into_inner().try_recv().ok(),
                            Err(TryLockError::WouldBlock) => None,
                        };
                        let job = match next {
                            Some(job) => Ok(job),
                            None => {
                                memory.release();
                                queue.lock().unwrap_or_else(PoisonError::into_inner).recv()
                            }
                        };
                        match job {
                            // A panic ends the job (its caller sees an
                            // error), not the thread.
                            Ok(job) => {
                                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                    job.run(&mut memory)
                                }));
                                if ran.is_err() {
                                    memory.release();
                                    tracing::error!("a password hashing job panicked");
                                }
                            }
                            Err(_) => return,
                        }
                    }
                })
                .context("starting a password hashing thread")?;
        }
        Ok(Hasher {
            jobs,
            dummy_hash: dummy.into(),
        })
    }

    fn queue(&self, password: SecretString, work: Work) -> anyhow::Result<()> {
        let span = tracing::Span::current();
        let request = crate::telemetry::request::current();
        self.jobs
            .send(Job {
                password,
                work,
                span,
                request,
            })
            .map_err(|_| anyhow::anyhow!("hasher closed"))
    }

    pub async fn hash(&self, password: SecretString) -> anyhow::Result<String> {
        let (answer, answered) = oneshot::channel();
        self.queue(password, Work::Hash(answer))?;
        answered.await.context("hash job")?
    }

    /// Checks `password` against `stored`, or against the dummy hash when
    /// `stored` is `None`; the answer is then always [`Verdict::Wrong`].
    pub async fn verify(&self, password: SecretString, stored: Option<String>) -> anyhow::Result<Verdict> {
        let real = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.dummy_hash.to_string());
        let (answer, answered) = oneshot::channel();
        self.queue(password, Work::Verify(hash, answer))?;
        let verdict = answered.await.context("verify job")?;
        Ok(if real { verdict } else { Verdict::Wrong })
    }
}

/// Blocks reserved for a hashing thread's memory: 33 MiB, so that the block
/// goes back to the kernel when it is dropped under either allocator. The
/// server allocates with jemalloc (`src/main.rs`), which serves anything
/// past its `oversize_threshold` (8 MiB) from an arena that returns freed
/// pages at once. The ceilings bench and the tests use glibc, where 33 MiB
/// is above its largest dynamic mmap threshold (32 MiB): always a mapping
/// of its own. argon2's own 19 MiB `Vec` is not: after the first free glibc
/// raises its threshold and keeps freed blocks in per-thread arenas, up to
/// 38 MiB each, which held a server at ~480 MB RSS after a password flood
/// (before jemalloc). Only the `m_cost` blocks used are touched, so
/// resident memory is 19 MiB a thread all the same.
const RESERVED_BLOCKS: usize = 33 * 1024;

/// argon2's working memory, kept by a hashing thread from one hash to the
/// next while jobs come back to back, and given back when its queue runs
/// dry. A fresh 19 MiB mapping for every hash cost a page fault per 4 KiB
/// and the kernel zeroing each page: in a password flood a third of the
/// CPU went to the kernel, not to argon2. Nothing needs clearing between
/// hashes: argon2's first pass writes every block before any is read.
#[derive(Default)]
pub struct Memory(Vec<Block>);

impl Memory {
    fn blocks(&mut self, count: usize) -> &mut [Block] {
        if self.0.len() < count {
            self.0 = Vec::new();
            self.0.reserve_exact(count.max(RESERVED_BLOCKS));
            advise_huge_pages(&mut self.0, count);
            self.0.resize(count, Block::default());
        }
        &mut self.0[..count]
    }

    /// Gives the blocks back to the kernel.
    pub fn release(&mut self) {
        self.0 = Vec::new();
    }
}

/// Asks the kernel to back the first `count` blocks with 2 MiB pages
/// (transparent huge pages, which most kernels give only to memory advised
/// so), before any of it is touched. argon2 reads blocks all over its
/// 19 MiB, and with 4 KiB pages that is 4,864 pages, far more than the TLB
/// holds: most reads of a reference block missed it. Measured with the
/// bench's password workload, back to back: 103 and 106 -> 110 and 113
/// logins/s. Only whole huge pages inside the blocks used are advised, so
/// resident memory stays at most 19 MiB a thread. Best effort: with THP off
/// the advice is ignored. With THP's `defrag` setting at `madvise` (the
/// default) the first touch may compact memory first; it happens once per
/// flood, when a thread takes its memory back.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn advise_huge_pages(blocks: &mut Vec<Block>, count: usize) {
    const HUGE_PAGE: usize = 2 << 20;
    let start = blocks.as_mut_ptr().cast::<u8>();
    let bytes = count.min(blocks.capacity()) * std::mem::size_of::<Block>();
    let address = start as usize;
    // Only whole huge pages inside the blocks used.
    let skip = address.next_multiple_of(HUGE_PAGE) - address;
    let len = bytes.saturating_sub(skip) / HUGE_PAGE * HUGE_PAGE;
    if len > 0 {
        // SAFETY: `skip..skip + len` lies inside the allocation `blocks` owns
        // and keeps for the call, and MADV_HUGEPAGE is advice only: it
        // changes which pages the kernel backs the range with, never what
        // the memory holds.
        unsafe { libc::madvise(start.wrapping_add(skip).cast(), len, libc::MADV_HUGEPAGE) };
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_: &mut Vec<Block>, _: usize) {}

/// argon2's `PasswordHasher::hash_password`, in `memory`.
fn hash_with<'a>(
    memory: &mut Memory,
    algorithm: Algorithm,
    version: Version,
    params: Params,
    password: &[u8],
    salt: Salt<'a>,
) -> argon2::password_hash::Result<PasswordHash<'a>> {
    let argon2 = Argon2::new(algorithm, version, params);
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_bytes)?;
    let blocks = memory.blocks(argon2.params().block_count());
    let len = argon2.params().output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let output = Output::init_with(len, |out| {
        Ok(argon2.hash_password_into_with_memory(password, salt_bytes, out, &mut *blocks)?)
    })?;
    Ok(PasswordHash {
        algorithm: algorithm.ident(),
        version: Some(version.into()),
        params: ParamsString::try_from(argon2.params())?,
        salt: Some(salt),
        hash: Some(output),
    })
}

/// Hashes one password on this thread, in memory of its own.
pub fn hash_blocking(password: &SecretString) -> anyhow::Result<String> {
    hash_in(&mut Memory::default(), password)
}

/// Hashes `password` with our parameters and a fresh salt, in `memory`.
pub fn hash_in(memory: &mut Memory, password: &SecretString) -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| anyhow::anyhow!("random source failed"))?;
    let salt = SaltString::encode_b64(&bytes).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    hash_with(
        memory,
        Algorithm::Argon2id,
        Version::V0x13,
        params(),
        password.expose_secret().as_bytes(),
        salt.as_salt(),
    )
    .map(|h| h.to_string())
    .map_err(|e| anyhow::anyhow!("argon2: {e}"))
}

fn verify_in(memory: &mut Memory, password: &SecretString, stored: &str) -> Verdict {
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
            memory,
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

    #[tokio::test]
    async fn the_hashing_threads_answer_each_job_and_skip_abandoned_ones() -> anyhow::Result<()> {
        let hasher = Hasher::new()?;
        let hash = hasher.hash(SecretString::from("correct horse")).await?;
        // Queued, then abandoned (polled once, then dropped): the threads
        // skip them and answer the jobs behind them.
        for _ in 0..8 {
            let gone =
                tokio::time::timeout(std::time::Duration::ZERO, hasher.hash(SecretString::from("gone")));
            let _ = gone.await;
        }
        let checks = ["correct horse", "wrong horse", "correct horse"]
            .map(|pw| hasher.verify(SecretString::from(pw), Some(hash.clone())));
        let [a, b, c] = checks;
        let (a, b, c) = tokio::join!(a, b, c);
        assert_eq!((a?, b?, c?), (Verdict::Right, Verdict::Wrong, Verdict::Right));
        // No stored hash: the dummy is checked, and the answer is always Wrong.
        let dummy = hasher
            .verify(SecretString::from("gatehouse dummy password"), None)
            .await?;
        assert_eq!(dummy, Verdict::Wrong);
        Ok(())
    }

    #[test]
    fn hashes_verify_and_weak_ones_ask_for_a_rehash() {
        // One memory for every check, as a hashing thread keeps it.
        let memory = &mut Memory::default();
        let pw = SecretString::from("correct horse battery staple");
        let hash = hash_in(memory, &pw).unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert_eq!(verify_in(memory, &pw, &hash), Verdict::Right);
        assert_eq!(
            verify_in(memory, &SecretString::from("nope"), &hash),
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
            verify_in(memory, &SecretString::from("pw"), &weak),
            Verdict::RightNeedsRehash
        );
        assert_eq!(verify_in(memory, &pw, "not a hash"), Verdict::Wrong);
        assert_eq!(verify_in(memory, &pw, &hash), Verdict::Right);
    }

    #[test]
    fn a_hash_in_used_memory_is_the_hash_in_fresh_memory() {
        let salt = SaltString::encode_b64(b"fixed salt bytes").unwrap();
        let fresh = Argon2::new(Algorithm::Argon2id, Version::V0x13, params())
            .hash_password(b"correct horse", &salt)
            .unwrap()
            .to_string();
        // Memory left full of another password's blocks.
        let memory = &mut Memory::default();
        hash_in(memory, &SecretString::from("another password")).unwrap();
        let used = hash_with(
            memory,
            Algorithm::Argon2id,
            Version::V0x13,
            params(),
            b"correct horse",
            salt.as_salt(),
        )
        .unwrap()
        .to_string();
        assert_eq!(used, fresh);
    }
}
