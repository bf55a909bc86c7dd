//! Closing connections that sit idle.
//!
//! poem's own `Server::idle_timeout` wakes a watchdog task on every read,
//! write and flush of every connection, and that task arms a new timer each
//! time: task wake-ups and timer operations on every request, 2–4 µs of
//! the 40 µs a JWKS answer cost the server. Here a connection notes the
//! time of its last successful read or write, and its one timer is checked
//! only when a read or a write has to wait; when it fires early (there was
//! activity since it was set) it is set again for the new deadline.
//!
//! A connection with no read or write for the whole timeout reads end of
//! stream, and one whose client has stopped reading an answer fails its
//! write with `TimedOut`; hyper then drops the connection. hyper watches
//! the read side while a handler runs too, so a request in flight that long
//! would be dropped with it: the timeout must be longer than any request
//! may take (see `app::idle_timeout`). The timer keeps one waker, that of the
//! last read or write that waited, which is enough for hyper's one task per
//! connection; flush and shutdown do not check it (a TCP stream's never
//! wait).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use poem::http::uri::Scheme;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Accepts through `inner`, closing connections idle for `timeout`.
pub struct IdleAcceptor<A> {
    inner: A,
    timeout: Duration,
}

impl<A> IdleAcceptor<A> {
    pub fn new(inner: A, timeout: Duration) -> IdleAcceptor<A> {
        IdleAcceptor { inner, timeout }
    }
}

impl<A: Acceptor> Acceptor for IdleAcceptor<A> {
    type Io = IdleIo<A::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        let (io, local, remote, scheme) = self.inner.accept().await?;
        Ok((IdleIo::new(io, self.timeout), local, remote, scheme))
    }
}

/// A connection that ends once idle for its timeout.
pub struct IdleIo<T> {
    inner: T,
    timeout: Duration,
    /// The last successful read or write.
    active_at: Instant,
    /// Fires at or before `active_at + timeout`.
    timer: Pin<Box<Sleep>>,
}

impl<T> IdleIo<T> {
    pub fn new(inner: T, timeout: Duration) -> IdleIo<T> {
        // Far enough to mean never, near enough to add to an instant.
        let timeout = timeout.min(Duration::from_secs(100 * 365 * 24 * 3600));
        let now = Instant::now();
        IdleIo {
            inner,
            timeout,
            active_at: now,
            timer: Box::pin(tokio::time::sleep_until(now + timeout)),
        }
    }

    /// Whether the connection has been idle for its timeout; if not, the
    /// timer is set to wake `cx` when it might have been.
    fn idle(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            let deadline = self.active_at + self.timeout;
            if Instant::now() >= deadline {
                return true;
            }
            self.timer.as_mut().reset(deadline);
        }
    }

    /// Notes activity when `poll` is ready, else checks the timer.
    fn track<R>(&mut self, cx: &mut Context<'_>, poll: Poll<R>, idle: impl FnOnce() -> R) -> Poll<R> {
        match poll {
            Poll::Ready(r) => {
                self.active_at = Instant::now();
                Poll::Ready(r)
            }
            Poll::Pending if self.idle(cx) => Poll::Ready(idle()),
            Poll::Pending => Poll::Pending,
        }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection idle")
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        // Idle: nothing read, which is end of stream.
        this.track(cx, poll, || Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.track(cx, poll, || Err(timed_out()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.track(cx, poll, || Err(timed_out()))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(300);
    /// How late a timer may fire on a busy machine.
    const SLACK: Duration = Duration::from_secs(2);

    fn about(elapsed: Duration, expected: Duration) -> bool {
        elapsed >= expected && elapsed < expected + SLACK
    }

    #[tokio::test]
    async fn an_idle_connection_reads_end_of_stream_after_the_timeout() {
        let (_client, server) = tokio::io::duplex(64);
        let mut server = IdleIo::new(server, TIMEOUT);
        let started = Instant::now();
        assert_eq!(server.read(&mut [0u8; 8]).await.unwrap(), 0);
        assert!(about(started.elapsed(), TIMEOUT), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn activity_moves_the_deadline() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut server = IdleIo::new(server, TIMEOUT);
        let talker = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(TIMEOUT * 2 / 3).await;
                client.write_all(b"x").await.unwrap();
            }
            client
        });
        let started = Instant::now();
        for _ in 0..3 {
            assert_eq!(server.read(&mut [0u8; 8]).await.unwrap(), 1, "still open");
        }
        let last_read = Instant::now();
        assert!(
            started.elapsed() >= TIMEOUT * 2,
            "kept open past its first deadline"
        );
        assert_eq!(server.read(&mut [0u8; 8]).await.unwrap(), 0, "idle at last");
        assert!(about(last_read.elapsed(), TIMEOUT), "{:?}", last_read.elapsed());
        drop(talker.await.unwrap());
    }

    #[tokio::test]
    async fn a_timeout_too_long_to_add_to_an_instant_means_never() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut server = IdleIo::new(server, Duration::MAX);
        client.write_all(b"x").await.unwrap();
        assert_eq!(server.read(&mut [0u8; 8]).await.unwrap(), 1);
        let waiting = tokio::time::timeout(TIMEOUT, server.read(&mut [0u8; 8])).await;
        assert!(waiting.is_err(), "still open");
    }

    #[tokio::test]
    async fn a_write_the_client_does_not_read_times_out() {
        let (_client, server) = tokio::io::duplex(4);
        let mut server = IdleIo::new(server, TIMEOUT);
        let started = Instant::now();
        let err = server.write_all(b"more than the pipe holds").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(about(started.elapsed(), TIMEOUT), "{:?}", started.elapsed());
    }
}
