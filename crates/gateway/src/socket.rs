//! A client socket that notices when it stops taking bytes: the write timeout of
//! docs/protocol.md section 4.5. A client that stops reading is found by time, not only by the
//! length of its outbound queue, because the kernel's buffers would otherwise hide it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// A socket whose writes fail with [`Stalled`] once it has accepted no bytes for the
/// write timeout while a write waits. The timer exists only while the socket is full, so
/// an idle or healthy connection pays one `Option` for it.
pub struct Watched<S> {
    io: S,
    limit: Duration,
    /// Armed when a write finds the socket full; dropped when it takes bytes again.
    stall: Option<Pin<Box<Sleep>>>,
}

/// The error of a write to a socket that took nothing for the write timeout.
#[derive(Debug, thiserror::Error)]
#[error("the socket accepted no bytes for the write timeout")]
pub struct Stalled;

/// Whether an I/O error is the write timeout.
pub fn is_stalled(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Stalled>())
}

impl<S> Watched<S> {
    /// Watches `io`, failing writes after `limit` without progress.
    pub fn new(io: S, limit: Duration) -> Self {
        Watched {
            io,
            limit,
            stall: None,
        }
    }

    /// Turns a write's poll result into the same result with the stall timer applied.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<T>>,
        progress: bool,
    ) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => {
                let limit = self.limit;
                let timer = self
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, Stalled)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
            ready => {
                if progress {
                    self.stall = None;
                }
                ready
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        let progress = matches!(r, Poll::Ready(Ok(n)) if n > 0);
        self.watch(cx, r, progress)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        let progress = matches!(r, Poll::Ready(Ok(n)) if n > 0);
        self.watch(cx, r, progress)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, r, true)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_socket_that_takes_nothing_fails_after_the_limit_and_one_that_reads_does_not() {
        // A pipe with room for 16 bytes whose reader reads nothing.
        let (a, mut b) = tokio::io::duplex(16);
        let mut w = Watched::new(a, Duration::from_secs(10));
        w.write_all(&[0; 16]).await.expect("fits the buffer");
        let e = w.write_all(&[0; 16]).await.expect_err("nothing is read");
        assert!(is_stalled(&e), "{e}");

        // Progress resets the timer: a reader that takes a byte at a time keeps it alive
        // for longer than the limit in all.
        let (a, mut b2) = tokio::io::duplex(1);
        let mut w = Watched::new(a, Duration::from_secs(10));
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut got = 0;
            let mut byte = [0u8; 1];
            while got < 5 {
                tokio::time::sleep(Duration::from_secs(6)).await;
                got += b2.read(&mut byte).await.expect("read");
            }
        });
        w.write_all(&[0; 5])
            .await
            .expect("a slow reader is not stalled");
        reader.await.expect("reader");
        drop(b.shutdown().await);
    }
}
