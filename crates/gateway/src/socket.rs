//! A client socket: [`Lane`], one TCP connection that its session reads and writes as a
//! stream and that the fan-out may also write whole frames to directly (an "express"
//! write: no queue, no wake-up of the session) while nothing else is waiting to go out;
//! and [`Watched`], which notices when a socket stops taking bytes (the write timeout of
//! docs/protocol.md section 4.5). A client that stops reading is found by time, not only by
//! the length of its outbound queue, because the kernel's buffers would otherwise hide it.
//! [`listen`] opens the node's listening socket.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Sleep;

/// The node's listening socket on `addr`, with room for `backlog` connections the node
/// has not accepted yet (the kernel caps it at net.core.somaxconn). `TcpListener::bind`
/// asks for 128: in a reconnect storm the 129th SYN is dropped and its client waits a
/// second (then three, then seven) before it tries again. Node.js and nginx ask for 511.
/// Call it inside the runtime.
pub fn listen(addr: std::net::SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As `TcpListener::bind`: a restarted node can bind while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog.max(1))
}

/// One accepted TCP connection, shared by its stream ([`LaneIo`], what HTTP and then the
/// WebSocket session read and write) and by express writes ([`Lane::try_send`]). One small
/// lock orders the two: an express write goes out only at a frame boundary of the stream
/// (nothing of the stream's is half written or waiting), and when the socket takes only
/// part of it, the rest goes out before any later byte of the stream.
#[derive(Debug)]
pub struct Lane {
    tcp: TcpStream,
    gate: Mutex<Gate>,
}

#[derive(Debug, Default)]
struct Gate {
    /// The stream's last write was refused or taken only in part: its writer holds bytes
    /// that must go out before anything else.
    held: bool,
    /// The rest of an express write the socket took only in part (empty: none).
    backlog: Box<[u8]>,
}

/// What an express write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The socket took all of it.
    All,
    /// The socket took part of it; the rest goes out at the stream's next write or flush,
    /// which the caller must cause (the session's flush).
    Part,
    /// Nothing was written: the stream holds bytes, or the socket is full or failed. The
    /// caller queues the frame for the session as usual.
    Not,
}

impl Lane {
    /// Shares an accepted socket.
    pub fn new(tcp: TcpStream) -> Arc<Self> {
        Arc::new(Lane {
            tcp,
            gate: Mutex::new(Gate::default()),
        })
    }

    fn gate(&self) -> MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `parts` (one frame) now if the socket is at a frame boundary and takes bytes;
    /// never waits.
    pub fn try_send(&self, parts: &[&[u8]]) -> Sent {
        let mut g = self.gate();
        if g.held || !g.backlog.is_empty() {
            return Sent::Not;
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let slices: [io::IoSlice<'_>; 2] = match parts {
            [a] => [io::IoSlice::new(a), io::IoSlice::new(&[])],
            [a, b] => [io::IoSlice::new(a), io::IoSlice::new(b)],
            _ => return Sent::Not,
        };
        match self.tcp.try_write_vectored(&slices) {
            Ok(n) if n >= total => Sent::All,
            Ok(0) | Err(_) => Sent::Not,
            Ok(n) => {
                let mut rest = Vec::with_capacity(total - n);
                let mut skip = n;
                for p in parts {
                    let k = skip.min(p.len());
                    rest.extend_from_slice(&p[k..]);
                    skip -= k;
                }
                g.backlog = rest.into_boxed_slice();
                Sent::Part
            }
        }
    }

    /// Keeps the rest of a frame the stream's writer gave up on half written (a kick while
    /// the socket was full): it goes out before any later byte, so that what follows (the
    /// Close) starts at a frame boundary.
    pub fn defer(&self, parts: &[&[u8]]) {
        let mut g = self.gate();
        let mut rest =
            Vec::with_capacity(g.backlog.len() + parts.iter().map(|p| p.len()).sum::<usize>());
        rest.extend_from_slice(&g.backlog);
        for p in parts {
            rest.extend_from_slice(p);
        }
        g.backlog = rest.into_boxed_slice();
        g.held = false;
    }

    /// Writes what is left of an express write; ready when none is left.
    fn poll_backlog(&self, g: &mut Gate, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !g.backlog.is_empty() {
            ready!(self.tcp.poll_write_ready(cx))?;
            match self.tcp.try_write(&g.backlog) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => g.backlog = g.backlog[n..].into(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// The stream side of a [`Lane`]: what hyper serves and the WebSocket session reads and
/// writes.
#[derive(Debug)]
pub struct LaneIo(pub Arc<Lane>);

/// Most bytes one read of a [`LaneIo`] takes (and zeroes first).
const READ_CHUNK: usize = 2048;

impl AsyncRead for LaneIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let tcp = &self.0.tcp;
        loop {
            ready!(tcp.poll_read_ready(cx))?;
            // Safe code reads into initialized bytes only, and hyper hands every read an
            // 8 KiB buffer that is not: zeroing all of it cost a handshake 16 KiB of
            // memset (callgrind). The WebSocket reads through tungstenite's 512-byte
            // buffer and a request is a few hundred bytes, so a read takes at most
            // READ_CHUNK and zeroes no more than that.
            let want = buf.remaining().min(READ_CHUNK);
            let dst = buf.initialize_unfilled_to(want);
            // A read that took less than it asked for emptied the socket: it is marked not
            // readable then, as tokio's own TcpStream does, so that the next poll waits for
            // the next event instead of finding out with a read that fails (one recvfrom
            // per frame a client sends, and per publish on the publishing node, strace).
            let mut got = 0;
            let read = tcp.try_io(Interest::READABLE, || {
                got = tcp.try_read(dst)?;
                if got > 0 && got < want {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(())
                }
            });
            match read {
                _ if got > 0 => {
                    buf.advance(got);
                    return Poll::Ready(Ok(()));
                }
                Ok(()) => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for LaneIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let lane = &*self.0;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut g = lane.gate();
        // Whatever this returns but "all of it", the writer above keeps bytes for later:
        // no express write may go out before them.
        g.held = true;
        ready!(lane.poll_backlog(&mut g, cx))?;
        loop {
            ready!(lane.tcp.poll_write_ready(cx))?;
            match lane.tcp.try_write_vectored(bufs) {
                Ok(n) => {
                    g.held = n < total;
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let lane = &*self.0;
        let mut g = lane.gate();
        lane.poll_backlog(&mut g, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let lane = &*self.0;
        {
            let mut g = lane.gate();
            ready!(lane.poll_backlog(&mut g, cx))?;
        }
        Poll::Ready(socket2::SockRef::from(&lane.tcp).shutdown(std::net::Shutdown::Write))
    }
}

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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A burst of connections larger than the default backlog (128) all complete while
    /// the node accepts none of them: the kernel queues them instead of dropping SYNs
    /// (with 128, the 130th connect would wait for SYN retries until the node accepted).
    #[tokio::test]
    async fn the_listen_backlog_holds_a_burst_the_node_has_not_accepted() {
        let listener = listen("127.0.0.1:0".parse().expect("addr"), 1024).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let connects = (0..400).map(|_| tokio::net::TcpStream::connect(addr));
        // A failure guard, not a measure: without the backlog this never completes.
        let all = tokio::time::timeout(
            Duration::from_secs(30),
            futures_util::future::join_all(connects),
        )
        .await
        .expect("every connect completes without an accept");
        assert_eq!(all.iter().filter(|c| c.is_ok()).count(), 400);
        drop(listener);
    }

    /// Express writes fill a real socket until one goes out in part; from then on no
    /// express write is taken, and the stream's next bytes go out only after the rest of
    /// that frame: the reader sees every express byte before any stream byte.
    #[tokio::test]
    async fn a_partial_express_write_goes_out_whole_before_the_stream() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let _ = socket2::SockRef::from(&server).set_send_buffer_size(4096);
        let lane = Lane::new(server);
        let chunk = [b'a'; 1000];
        let mut express = 0usize;
        loop {
            match lane.try_send(&[&chunk[..10], &chunk[10..]]) {
                Sent::All => express += chunk.len(),
                Sent::Part => {
                    express += chunk.len();
                    break;
                }
                Sent::Not => panic!("a socket with room refused an express write"),
            }
            assert!(express < 64 << 20, "the socket never filled");
        }
        assert_eq!(
            lane.try_send(&[b"x"]),
            Sent::Not,
            "the rest of a frame waits first"
        );
        let mut io = LaneIo(lane.clone());
        let stream_bytes = vec![b'b'; 5000];
        let writer = tokio::spawn(async move {
            io.write_all(&stream_bytes).await.expect("stream write");
            io.flush().await.expect("flush");
            io
        });
        let mut got = vec![0u8; express + 5000];
        client.read_exact(&mut got).await.expect("read all");
        let firsts = got.iter().take_while(|b| **b == b'a').count();
        assert_eq!(
            firsts, express,
            "every express byte comes before the stream's"
        );
        assert!(got[express..].iter().all(|b| *b == b'b'));
        let _io = writer.await.expect("writer");
        assert_eq!(lane.try_send(&[b"x"]), Sent::All, "at a boundary again");
    }

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
