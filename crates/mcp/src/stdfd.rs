//! The relay's own stdin and stdout as non-blocking, reactor-driven
//! streams when they are pipes or sockets (as MCP clients give them).
//!
//! `tokio::io::stdin()`/`stdout()` do every read and write on the blocking
//! thread pool: two thread hand-offs per message each way, a visible share
//! of the latency the relay adds to a call. A terminal or a regular file
//! keeps those (its descriptor is shared with the shell, or cannot be
//! polled), so only FIFOs and sockets are switched to non-blocking mode,
//! and their previous flags are put back when the stream is dropped.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A pipe or socket end in non-blocking mode, polled by the reactor.
pub struct StdFd {
    io: AsyncFd<File>,
    /// The descriptor's flags before we set `O_NONBLOCK`.
    restore: libc::c_int,
}

impl StdFd {
    /// `fd` (0 or 1) as a reactor-driven stream, or `None` when it is not a
    /// FIFO or socket (the caller then uses tokio's blocking stdio).
    pub fn new(fd: RawFd) -> Option<StdFd> {
        // SAFETY: fstat/fcntl/dup on a descriptor number; no memory is
        // shared beyond the stat buffer we own.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd, &mut st) != 0 {
                return None;
            }
            let kind = st.st_mode & libc::S_IFMT;
            if kind != libc::S_IFIFO && kind != libc::S_IFSOCK {
                return None;
            }
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 {
                return None;
            }
            let own = libc::dup(fd);
            if own < 0 {
                return None;
            }
            // The duplicate shares the open file description, so this sets
            // the mode for both (and `Drop` puts it back for both).
            if libc::fcntl(own, libc::F_SETFL, flags | libc::O_NONBLOCK) != 0 {
                libc::close(own);
                return None;
            }
            let file = File::from_raw_fd(own);
            // The File owns `own` and lives inside the AsyncFd, so the
            // descriptor stays open and the same until the AsyncFd drops.
            match AsyncFd::register(file) {
                Ok(io) => Some(StdFd { io, restore: flags }),
                Err(_) => {
                    libc::fcntl(fd, libc::F_SETFL, flags);
                    None
                }
            }
        }
    }
}

impl Drop for StdFd {
    fn drop(&mut self) {
        // SAFETY: fcntl on the descriptor we own until the File closes it.
        unsafe {
            libc::fcntl(self.io.get_ref().as_raw_fd(), libc::F_SETFL, self.restore);
        }
    }
}

impl AsyncRead for StdFd {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.io.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|f| f.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for StdFd {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.io.poll_write_ready(cx))?;
            match guard.try_io(|f| f.get_ref().write(data)) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Writes go straight to the descriptor: nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn flags(fd: RawFd) -> libc::c_int {
        // SAFETY: F_GETFL on a descriptor the test owns.
        unsafe { libc::fcntl(fd, libc::F_GETFL) }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_socket_is_read_and_written_through_the_reactor_and_its_mode_restored() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let before = flags(ours.as_raw_fd());
        assert_eq!(before & libc::O_NONBLOCK, 0);
        let mut io = StdFd::new(ours.as_raw_fd()).expect("a socket is pollable");
        assert_ne!(flags(ours.as_raw_fd()) & libc::O_NONBLOCK, 0);
        let peer = std::thread::spawn(move || {
            let mut theirs = theirs;
            theirs.write_all(b"ping\n").unwrap();
            let mut buf = [0u8; 5];
            theirs.read_exact(&mut buf).unwrap();
            buf
        });
        let mut buf = [0u8; 5];
        io.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping\n");
        io.write_all(b"pong\n").await.unwrap();
        assert_eq!(&peer.join().unwrap(), b"pong\n");
        drop(io);
        assert_eq!(flags(ours.as_raw_fd()), before, "the mode is put back");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_pipe_reads_to_its_end() {
        let mut fds = [0; 2];
        // SAFETY: pipe() fills the two descriptors we pass it.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors are fresh and owned here.
        let (r, mut w) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        let mut io = StdFd::new(r.as_raw_fd()).expect("a pipe is pollable");
        w.write_all(b"a line\n").unwrap();
        drop(w);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"a line\n");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_regular_file_keeps_blocking_stdio() {
        let f = tempfile::tempfile().unwrap();
        assert!(StdFd::new(f.as_raw_fd()).is_none());
        assert_eq!(flags(f.as_raw_fd()) & libc::O_NONBLOCK, 0);
    }
}
