//! Logging with tracing: `pretty` for people, `json` for machines.
//!
//! A request formats its line and appends it to its thread's buffer; a
//! writer thread gathers the buffers and writes them to stderr every
//! [`FLUSH_EVERY`], in one write(2). Nothing wakes that thread per line (a
//! wake-up is a futex call and a context switch, dearer than formatting the
//! line), threads do not share a buffer (one lock taken by every line from
//! both cores was a third of what a line cost), and nothing is dropped: a
//! buffer that grows past [`FLUSH_AT`] between two ticks is written out by
//! the thread that filled it. Lines of one thread keep their order (but for
//! one logged while the thread is being torn down, written at once); lines
//! of different threads logged within one tick may not (each has its time).
//! Dropping the [`LogGuard`] writes what is left, and lines logged after
//! that are written at once.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

mod json;
mod pretty;
pub mod request;

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
        LogFormat::Pretty => builder.event_format(pretty::PrettyLines::default()).try_init(),
        // As `.json()` did: no colour codes, whatever the terminal.
        LogFormat::Json => builder
            .with_ansi(false)
            .fmt_fields(json::JsonFieldList)
            .event_format(json::JsonLines)
            .try_init(),
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

/// One thread's formatted lines, shared with the writer thread only.
type Lines = Arc<Mutex<Vec<u8>>>;

thread_local! {
    /// This thread's buffer, once it logged a line; it belongs to the one
    /// [`Batch`] of the process, the installed subscriber's.
    static LINES: std::cell::RefCell<Option<Lines>> = const { std::cell::RefCell::new(None) };
}

/// The buffers of every thread that logged, and the writer's state.
#[derive(Default)]
struct Batch {
    threads: Mutex<Vec<Lines>>,
    /// Held while writing to stderr, so batches leave in the order they
    /// filled; keeps the gathered bytes' allocation between ticks.
    out: Mutex<Vec<u8>>,
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

    /// Writes out every thread's lines.
    fn write_out(&self) {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        self.gather(&mut out);
        if !out.is_empty() {
            let mut stderr = std::io::stderr().lock();
            let _ = stderr.write_all(&out);
            let _ = stderr.flush();
            out.clear();
        }
    }

    /// Moves every thread's lines to `out`, a thread's in the order it
    /// logged them; forgets the buffers of threads that ended.
    fn gather(&self, out: &mut Vec<u8>) {
        self.threads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|thread| {
                let mut lines = thread.lock().unwrap_or_else(PoisonError::into_inner);
                out.extend_from_slice(&lines);
                lines.clear();
                // Counted under the lock: a thread that ended cannot append
                // any more, and one still running keeps its buffer.
                Arc::strong_count(thread) > 1
            });
    }

    /// Appends `line` to this thread's buffer; `true` when it is full.
    fn append(&self, line: &[u8]) -> bool {
        let appended = LINES.try_with(|mine| {
            let mut mine = mine.try_borrow_mut().ok()?;
            let lines = mine.get_or_insert_with(|| {
                let lines = Lines::default();
                self.threads
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(lines.clone());
                lines
            });
            let mut lines = lines.lock().unwrap_or_else(PoisonError::into_inner);
            lines.extend_from_slice(line);
            Some(lines.len() >= FLUSH_AT)
        });
        match appended {
            Ok(Some(full)) => full,
            // A thread being torn down, or a line logged while this thread
            // was appending one: written at once instead.
            _ => {
                let _out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
                let _ = std::io::stderr().lock().write_all(line);
                false
            }
        }
    }
}

impl Write for &Batch {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.direct.load(Ordering::Acquire) {
            let _out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = std::io::stderr().lock().write_all(buf);
        } else if self.append(buf) || self.direct.load(Ordering::Acquire) {
            // Full, or the guard's last gather may have run before this
            // line was appended: written out now rather than never.
            self.write_out();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A log destination the tests can read back.
#[cfg(test)]
mod testing {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    pub struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;

        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    impl Buffer {
        pub fn lines(&self) -> Vec<String> {
            let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            text.lines().map(str::to_owned).collect()
        }
    }

    /// The lines `log` logs under the subscriber `subscriber` builds around
    /// a buffer.
    pub fn capture<S>(subscriber: impl FnOnce(Buffer) -> S, log: impl FnOnce()) -> Vec<String>
    where
        S: tracing::Subscriber + Send + Sync + 'static,
    {
        let buffer = Buffer::default();
        tracing::subscriber::with_default(subscriber(buffer.clone()), log);
        buffer.lines()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_is_gathered_in_its_threads_order_and_ended_threads_are_forgotten() {
        let batch = Arc::new(Batch::default());
        let writers: Vec<_> = (0..3)
            .map(|t| {
                let batch = batch.clone();
                std::thread::spawn(move || {
                    for n in 0..100 {
                        let _ = (&*batch).write(format!("{t} {n}\n").as_bytes());
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().map_err(|_| "a writer panicked").unwrap();
        }
        let mut out = Vec::new();
        batch.gather(&mut out);
        let text = String::from_utf8(out).unwrap();
        for t in 0..3 {
            let mine: Vec<String> = text
                .lines()
                .filter(|l| l.starts_with(&format!("{t} ")))
                .map(str::to_owned)
                .collect();
            let expected: Vec<String> = (0..100).map(|n| format!("{t} {n}")).collect();
            assert_eq!(mine, expected, "thread {t}'s lines");
        }
        assert_eq!(text.lines().count(), 300);
        // The three threads ended: their buffers were dropped with them.
        assert!(batch.threads.lock().unwrap().is_empty());
        let mut again = Vec::new();
        batch.gather(&mut again);
        assert!(again.is_empty(), "nothing is written twice");
    }
}
