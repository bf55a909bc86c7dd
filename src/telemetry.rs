//! Logging with tracing: `pretty` for people, `json` for machines.
//!
//! A request formats its line and appends it to a shared buffer; a writer
//! thread writes the buffer to stderr every [`FLUSH_EVERY`], in one write(2).
//! Nothing wakes that thread per line (a wake-up is a futex call and a
//! context switch, dearer than formatting the line), and nothing is dropped:
//! a buffer that grows past [`FLUSH_AT`] between two ticks is written out by
//! the request that filled it. Dropping the [`LogGuard`] writes what is left,
//! and lines logged after that are written at once.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// How long a line may wait in the buffer.
const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// A buffer this large is written out at once, by whoever filled it.
const FLUSH_AT: usize = 256 * 1024;

/// Keeps the writer thread; dropping it writes out every buffered line.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    writer: Option<(Arc<Batch>, std::thread::JoinHandle<()>)>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some((batch, thread)) = self.writer.take() {
            *batch.stopping.lock().unwrap_or_else(PoisonError::into_inner) = true;
            batch.stop.notify_one();
            // A stderr that blocks (a full pipe nobody reads) must not hang
            // the exit: wait a second at most for the thread's last write.
            let deadline = std::time::Instant::now() + Duration::from_secs(1);
            while !thread.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            // From here on every line is written as it comes.
            batch.direct.store(true, Ordering::Release);
            batch.write_out();
        }
    }
}

/// Writes out what is buffered now; for a process about to abort.
pub fn flush() {
    if let Some(batch) = BATCH.get() {
        batch.write_out();
    }
}

static BATCH: OnceLock<Arc<Batch>> = OnceLock::new();

/// Installs the global subscriber; `RUST_LOG` overrides the default level.
pub fn init(format: LogFormat) -> LogGuard {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,poem=warn"));
    let batch = Arc::new(Batch::default());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(batch.clone());
    let installed = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if installed.is_err() {
        return LogGuard { writer: None };
    }
    let _ = BATCH.set(batch.clone());
    let flusher = batch.clone();
    let thread = std::thread::Builder::new()
        .name("gatehouse-log".into())
        .spawn(move || flusher.run());
    match thread {
        Ok(thread) => LogGuard {
            writer: Some((batch, thread)),
        },
        Err(_) => {
            // No writer thread: every line is written as it comes.
            batch.direct.store(true, Ordering::Release);
            LogGuard { writer: None }
        }
    }
}

/// The shared buffer of formatted lines.
#[derive(Default)]
struct Batch {
    lines: Mutex<Vec<u8>>,
    /// Held while writing to stderr, so batches leave in the order they filled.
    out: Mutex<()>,
    stopping: Mutex<bool>,
    stop: Condvar,
    /// No writer thread (any more): `write` writes each line itself.
    direct: AtomicBool,
}

impl Batch {
    fn run(&self) {
        let mut stopping = self.stopping.lock().unwrap_or_else(PoisonError::into_inner);
        while !*stopping {
            stopping = self
                .stop
                .wait_timeout(stopping, FLUSH_EVERY)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            self.write_out();
        }
    }

    fn write_out(&self) {
        let _out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        let lines = std::mem::take(&mut *self.lines.lock().unwrap_or_else(PoisonError::into_inner));
        if !lines.is_empty() {
            let mut stderr = std::io::stderr().lock();
            let _ = stderr.write_all(&lines);
            let _ = stderr.flush();
        }
    }
}

impl Write for &Batch {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let full = {
            let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
            lines.extend_from_slice(buf);
            lines.len() >= FLUSH_AT
        };
        if full || self.direct.load(Ordering::Acquire) {
            self.write_out();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
