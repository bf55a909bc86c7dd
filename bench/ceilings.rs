//! This machine's ceilings, measured with gatehouse's own code paths: RS256
//! signatures per second with a parsed key (1 and 2 threads) and argon2id
//! hashes per second at our parameters (2 threads, each keeping its memory,
//! as the server's hashing threads do). Prints one JSON line.
//!
//! `cargo bench --bench ceilings` (release profile); `BENCH_SECONDS` sets the
//! duration of each measurement (default 3). `BENCH_ONLY=rs256_2t` or
//! `BENCH_ONLY=argon2_2t` measures only that one (the ceilings measured
//! between a workload's slices).

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use gatehouse::keys::SigningKey;
use gatehouse::password::Memory;
use gatehouse::tokens::jwt::{ACCESS_TOKEN_TYP, AccessClaims, Audience, encode};
use secrecy::SecretString;

/// Runs `work` on `threads` threads for `seconds`; each thread's first run
/// (its argon2 memory faulted in, the key's tables cold) is not timed: the
/// bench measures a ceiling for only a second between two slices of load.
fn per_second(threads: usize, seconds: f64, work: impl Fn() + Send + Sync + 'static) -> f64 {
    let work = Arc::new(work);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let warm = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (work, stop, done, warm) = (work.clone(), stop.clone(), done.clone(), warm.clone());
            std::thread::spawn(move || {
                work();
                warm.wait();
                while !stop.load(Ordering::Relaxed) {
                    work();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    warm.wait();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn main() -> anyhow::Result<()> {
    let seconds: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let (key, _) = SigningKey::generate()?;
    let key = Arc::new(key);
    // A token shaped like a client_credentials access token.
    let claims = AccessClaims {
        iss: "http://127.0.0.1:8080".into(),
        sub: "6f1c3c35-2c4f-4d8a-a3c1-1d0f0f1b2a77".into(),
        aud: Audience::One("http://127.0.0.1:8080".into()),
        client_id: "6f1c3c35-2c4f-4d8a-a3c1-1d0f0f1b2a77".into(),
        scope: "read".into(),
        exp: 1_900_000_000,
        iat: 1_899_999_100,
        jti: "0b8f1e9e-4a57-4a51-9c55-6f7b0f7f9a11".into(),
        auth_time: None,
        sid: None,
        roles: None,
    };
    let sign = {
        let key = key.clone();
        move || {
            let _ = std::hint::black_box(encode(&key, ACCESS_TOKEN_TYP, &claims));
        }
    };
    let sign = Arc::new(sign);
    let argon = || {
        // Each thread keeps its argon2 memory from one hash to the next, as
        // the server's hashing threads do while logins come back to back.
        thread_local! {
            static MEMORY: RefCell<Memory> = RefCell::new(Memory::default());
        }
        let password = SecretString::from("correct horse battery staple");
        let hashes = per_second(2, seconds, move || {
            MEMORY.with_borrow_mut(|memory| {
                let _ = std::hint::black_box(gatehouse::password::hash_in(memory, &password));
            })
        });
        (hashes * 10.0).round() / 10.0
    };
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let measured = match only.as_str() {
        "rs256_2t" => serde_json::json!({
            "rs256_signatures_per_s_2_threads": per_second(2, seconds, move || sign()).round(),
        }),
        "argon2_2t" => serde_json::json!({ "argon2id_hashes_per_s_2_threads": argon() }),
        "" => {
            let s1 = {
                let sign = sign.clone();
                per_second(1, seconds, move || sign())
            };
            let s2 = per_second(2, seconds, move || sign());
            serde_json::json!({
                "rs256_signatures_per_s_1_thread": s1.round(),
                "rs256_signatures_per_s_2_threads": s2.round(),
                "argon2id_hashes_per_s_2_threads": argon(),
            })
        }
        other => anyhow::bail!("BENCH_ONLY: rs256_2t or argon2_2t, not {other:?}"),
    };
    println!("{measured}");
    Ok(())
}
