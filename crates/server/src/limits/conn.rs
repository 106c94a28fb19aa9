//! Connection hygiene of one listener: caps checked at accept, and
//! deadlines for each phase of a connection's life.
//!
//! - **Caps.** [`Connections`] counts open connections in all and per
//!   source address (IPv4-mapped IPv6 counts as IPv4). A connection over
//!   either cap is answered at once — `503` when the listener is full,
//!   `429` when its address is — with code `too_many_connections`, and
//!   closed: it never holds a descriptor or a task.
//! - **Deadlines.** A watchdog per connection enforces, from shared state
//!   the socket wrapper and the service wrapper keep up to date:
//!   the *head deadline* (a request's head must arrive in full within
//!   `header_read_timeout` of its first byte — of the accept, for the first
//!   request — so partial headers and byte-trickles are cut off), and the
//!   *idle deadline* (`idle_timeout` between a response and the next
//!   request). While a request is in flight neither runs: a long-poll or
//!   an event stream is bounded by its handler, not here. A request body
//!   must arrive in full within `body_read_timeout` of its head
//!   ([`BodyTimedOut`]). A connection that switched protocols (`101`,
//!   e.g. a WebSocket) has no deadlines here: what took it over bounds it.
//!
//! A connection past a deadline is closed by failing its next read, which
//! the HTTP server treats as the client going away.
//!
//! - **Lingering close.** A connection the server ends while the client
//!   may still be sending (a body refused from its `Content-Length` with
//!   `413`, a request answered before its body was read) is not closed
//!   outright: closing a socket with unread bytes makes the kernel send a
//!   reset, and a client still writing its body then fails with `EPIPE` or
//!   a reset instead of reading the answer already sent. The write side is
//!   shut (the client sees the end of the answer), and what still arrives
//!   is read and dropped until the client closes, for at most
//!   [`LINGER_TIME`] in all and [`LINGER_IDLE`] without a byte, as web
//!   servers do. The connection keeps its place under the caps meanwhile.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use axum::serve::{IncomingStream, Listener};
use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

/// The limits of one listener. The defaults suit a gateway reached
/// directly or through a reverse proxy (see `docs/security.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnLimits {
    /// Most connections open at once; more are answered `503` and closed.
    pub max_connections: usize,
    /// Most connections open at once from one source address; more are
    /// answered `429` and closed. Behind a reverse proxy every client
    /// shares the proxy's address, so this must leave the proxy room.
    pub max_per_address: usize,
    /// How long a request's head may take to arrive in full, from its first
    /// byte (from the accept, for a connection's first request).
    pub header_read_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// How long a request's body may take to arrive in full, from its head.
    pub body_read_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: 8192,
            max_per_address: 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            body_read_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a connection was turned away at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnRefusal {
    /// The listener holds `max_connections` already.
    Full,
    /// The source address holds `max_per_address` already.
    AddressFull,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// Open connections, in all and by source address, under their caps.
#[derive(Debug)]
pub struct Connections {
    max_total: usize,
    max_per_address: usize,
    open: Mutex<Open>,
    refused: AtomicU64,
}

impl Connections {
    pub fn new(max_total: usize, max_per_address: usize) -> Arc<Connections> {
        Arc::new(Connections {
            max_total,
            max_per_address,
            open: Mutex::new(Open::default()),
            refused: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a slot for a connection from `addr`, if both caps allow.
    pub fn try_open(self: &Arc<Self>, addr: IpAddr) -> Result<ConnSlot, ConnRefusal> {
        let addr = addr.to_canonical();
        let mut open = self.lock();
        let refusal = if open.total >= self.max_total {
            Some(ConnRefusal::Full)
        } else if open.by_address.get(&addr).copied().unwrap_or(0) >= self.max_per_address {
            Some(ConnRefusal::AddressFull)
        } else {
            None
        };
        if let Some(r) = refusal {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(r);
        }
        open.total += 1;
        *open.by_address.entry(addr).or_insert(0) += 1;
        Ok(ConnSlot {
            conns: self.clone(),
            addr,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().total
    }

    /// Connections turned away at accept since the start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// One open connection's place under the caps; dropping it frees it.
#[derive(Debug)]
pub struct ConnSlot {
    conns: Arc<Connections>,
    addr: IpAddr,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut open = self.conns.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_address.get_mut(&self.addr) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.by_address.remove(&self.addr);
            }
        }
    }
}

/// Where a connection is in its life, as the deadlines need it.
#[derive(Debug)]
struct Phase {
    /// Requests handed to the service whose response has not ended.
    in_flight: usize,
    /// When the connection last went idle (its last response ended).
    idle_since: Instant,
    /// When the head being read began to arrive; `None` while idle.
    head_since: Option<Instant>,
    /// A deadline passed: reads fail from now on.
    expired: bool,
    /// Switched protocols (`101`): no longer HTTP requests, so no head or
    /// idle deadline; whoever took the connection over bounds it.
    upgraded: bool,
    /// Who to wake to notice `expired` (the connection's task).
    reader: Option<Waker>,
}

/// The deadline a connection is under now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deadline {
    /// The head's or the idle deadline.
    At(Instant),
    /// None while a request is in flight (its handler bounds it).
    InFlight,
    /// None ever again: the connection switched protocols.
    Gone,
}

/// State shared by a connection's socket wrapper, its service wrapper and
/// its watchdog.
#[derive(Debug)]
pub struct ConnState {
    phase: Mutex<Phase>,
}

impl ConnState {
    fn new(now: Instant) -> ConnState {
        ConnState {
            phase: Mutex::new(Phase {
                in_flight: 0,
                idle_since: now,
                // The first request's head is timed from the accept: a
                // connection that sends nothing is a partial head too.
                head_since: Some(now),
                expired: false,
                upgraded: false,
                reader: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers who reads; true if the connection is past a deadline.
    fn register_reader(&self, waker: &Waker) -> bool {
        let mut p = self.lock();
        if p.expired {
            return true;
        }
        if !p.reader.as_ref().is_some_and(|w| w.will_wake(waker)) {
            p.reader = Some(waker.clone());
        }
        false
    }

    fn bytes_arrived(&self, now: Instant) {
        let mut p = self.lock();
        if p.in_flight == 0 && p.head_since.is_none() {
            p.head_since = Some(now);
        }
    }

    fn request_started(&self) {
        let mut p = self.lock();
        p.in_flight += 1;
        p.head_since = None;
    }

    fn request_ended(&self, now: Instant) {
        let mut p = self.lock();
        p.in_flight = p.in_flight.saturating_sub(1);
        if p.in_flight == 0 {
            p.idle_since = now;
        }
    }

    fn upgraded(&self) {
        self.lock().upgraded = true;
    }

    fn deadline(&self, limits: &ConnLimits) -> Deadline {
        let p = self.lock();
        if p.upgraded {
            return Deadline::Gone;
        }
        if p.in_flight > 0 {
            return Deadline::InFlight;
        }
        Deadline::At(match p.head_since {
            Some(h) => h + limits.header_read_timeout,
            None => p.idle_since + limits.idle_timeout,
        })
    }

    fn expire(&self) {
        let mut p = self.lock();
        p.expired = true;
        let reader = p.reader.take();
        drop(p);
        if let Some(w) = reader {
            w.wake();
        }
    }
}

/// Ends the connection once it passes a deadline (see the module docs).
///
/// It is not told of phase changes: it looks at the connection at least
/// every `min(header_read_timeout, idle_timeout)`, and at the deadline it
/// saw. That is exact, because a deadline set after a look lies at least
/// that period after the look, so the next look sees it in time — and a
/// request costs the watchdog no wake-up and no timer.
async fn watchdog(state: Arc<ConnState>, limits: ConnLimits) {
    let period = limits.header_read_timeout.min(limits.idle_timeout);
    let sleep = tokio::time::sleep(period);
    tokio::pin!(sleep);
    loop {
        let now = Instant::now();
        let next = match state.deadline(&limits) {
            Deadline::Gone => return,
            Deadline::At(d) if now >= d => {
                state.expire();
                return;
            }
            Deadline::At(d) => d.min(now + period),
            Deadline::InFlight => now + period,
        };
        sleep.as_mut().reset(next);
        sleep.as_mut().await;
    }
}

/// An accepted connection under the listener's limits: its place under
/// the caps is held until it is closed (after lingering, if the client had
/// not closed its side), and its reads fail once it is past a deadline.
#[derive(Debug)]
pub struct LimitedIo {
    stream: Lingering<TcpStream>,
    state: Arc<ConnState>,
    watchdog: tokio::task::JoinHandle<()>,
}

impl Drop for LimitedIo {
    fn drop(&mut self) {
        self.watchdog.abort();
        // Past a deadline nothing was answered that the client must read.
        if self.state.lock().expired {
            self.stream.close_at_once();
        }
    }
}

impl AsyncRead for LimitedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.state.register_reader(cx.waker()) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client was too slow to send a request, or idle too long",
            )));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.bytes_arrived(Instant::now());
        }
        r
    }
}

impl AsyncWrite for LimitedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The longest a closed connection lingers, reading and dropping what the
/// client still sends (see the module docs).
pub const LINGER_TIME: Duration = Duration::from_secs(5);
/// A lingering connection is closed once the client sends nothing for
/// this long.
pub const LINGER_IDLE: Duration = Duration::from_secs(2);

/// A server's side of a client connection that closes with a lingering
/// close (see the module docs) when dropped before the client closed its
/// side. Used by every listener that speaks HTTP to clients.
#[derive(Debug)]
pub struct Lingering<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    /// `None` only once dropped (taken to linger).
    io: Option<I>,
    /// Kept until the connection is closed: its place under the caps.
    slot: Option<ConnSlot>,
    /// The client closed its side (a read returned the end), or there is
    /// nothing to linger for.
    done: bool,
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> Lingering<I> {
    pub fn new(io: I) -> Lingering<I> {
        Lingering {
            io: Some(io),
            slot: None,
            done: false,
        }
    }

    /// Closes without lingering when dropped.
    pub fn close_at_once(&mut self) {
        self.done = true;
    }

    fn io(&mut self) -> Pin<&mut I> {
        Pin::new(self.io.as_mut().expect("open until dropped"))
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for Lingering<I> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (Some(io), Ok(rt)) = (self.io.take(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        rt.spawn(linger(io, self.slot.take()));
    }
}

/// Shuts the write side and reads until the client closes, for at most
/// [`LINGER_TIME`] (and [`LINGER_IDLE`] without a byte); then the socket
/// closes without a reset.
async fn linger<I: AsyncRead + AsyncWrite + Unpin>(mut io: I, _slot: Option<ConnSlot>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = io.shutdown().await;
    let end = Instant::now() + LINGER_TIME;
    let mut scratch = vec![0u8; 16 * 1024];
    loop {
        let idle = (Instant::now() + LINGER_IDLE).min(end);
        match tokio::time::timeout_at(idle, io.read(&mut scratch)).await {
            Ok(Ok(n)) if n > 0 => continue,
            _ => return,
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for Lingering<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = self.io().poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() == before && buf.remaining() > 0 {
            self.done = true;
        }
        r
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Lingering<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.io().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.io().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io().poll_shutdown(cx)
    }
}

/// A TCP listener that applies [`ConnLimits`] to what it accepts.
#[derive(Debug)]
pub struct LimitedListener {
    inner: TcpListener,
    conns: Arc<Connections>,
    limits: ConnLimits,
}

impl LimitedListener {
    pub fn new(inner: TcpListener, limits: ConnLimits) -> LimitedListener {
        LimitedListener {
            conns: Connections::new(limits.max_connections, limits.max_per_address),
            inner,
            limits,
        }
    }

    /// The connection counts, for metrics.
    pub fn connections(&self) -> Arc<Connections> {
        self.conns.clone()
    }
}

impl Listener for LimitedListener {
    type Io = LimitedIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (LimitedIo, SocketAddr) {
        loop {
            let (stream, addr) = match self.inner.accept().await {
                Ok(a) => a,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            };
            match self.conns.try_open(addr.ip()) {
                Ok(slot) => {
                    // An answer streamed in pieces (a relayed MCP answer,
                    // an event stream) writes each piece as it comes: with
                    // Nagle's algorithm a small piece waited for the
                    // client's delayed ACK of the one before.
                    let _ = stream.set_nodelay(true);
                    let state = Arc::new(ConnState::new(Instant::now()));
                    let watchdog = tokio::spawn(watchdog(state.clone(), self.limits.clone()));
                    let mut stream = Lingering::new(stream);
                    stream.slot = Some(slot);
                    let io = LimitedIo {
                        stream,
                        state,
                        watchdog,
                    };
                    return (io, addr);
                }
                Err(why) => refuse(stream, why),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Answers a connection over a cap without reading from it, and closes
/// it: one non-blocking write, straight to the socket (the reactor has not
/// seen this socket yet, so tokio's `try_write` would not even try).
fn refuse(stream: TcpStream, why: ConnRefusal) {
    let (status, message) = match why {
        ConnRefusal::Full => (
            "503 Service Unavailable",
            "the gateway holds as many connections as it may; retry shortly",
        ),
        ConnRefusal::AddressFull => (
            "429 Too Many Requests",
            "your address holds as many connections as one address may; close some and retry",
        ),
    };
    let body = format!(r#"{{"error":{{"code":"too_many_connections","message":"{message}"}}}}"#);
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    if let Ok(s) = stream.into_std() {
        use std::io::Write;
        let _ = (&s).write(answer.as_bytes());
    }
    tracing::debug!(?why, "connection refused at accept");
}

/// An accept that failed: a connection reset before we took it is nobody's
/// problem; running out of descriptors is, and is retried shortly (the
/// caps should keep it from happening; see [`raise_open_files_limit`]).
async fn accept_failed(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::warn!(error = %e, "accept failed; retrying");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// A request body that fails once `body_read_timeout` has passed since its
/// head arrived.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in full within {} s", .0.as_secs())]
pub struct BodyTimedOut(pub Duration);

impl BodyTimedOut {
    /// The timeout somewhere in `e`'s chain of causes (a body extractor's
    /// rejection wraps it), if the body failed for that.
    pub fn in_causes<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyTimedOut> {
        let mut cause = Some(e);
        while let Some(c) = cause {
            if let Some(t) = c.downcast_ref::<BodyTimedOut>() {
                return Some(t);
            }
            cause = c.source();
        }
        None
    }
}

struct DeadlineBody {
    inner: Body,
    deadline: Instant,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::BoxError>>> {
        if let Poll::Ready(f) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(f.map(|r| r.map_err(Into::into)));
        }
        let deadline = self.deadline;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut(self.timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that marks its request ended when it is dropped
/// (written in full, or abandoned).
struct EndsRequest {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for EndsRequest {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A request from its head until its response ends (or is dropped unsent).
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn start(state: Arc<ConnState>) -> InFlight {
        state.request_started();
        InFlight(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended(Instant::now());
    }
}

/// The router as one connection's service: marks requests in flight,
/// bounds how long their bodies take, and gives handlers the peer
/// address (`ConnectInfo<SocketAddr>`).
#[derive(Clone)]
pub struct Tracked {
    router: Router,
    state: Arc<ConnState>,
    peer: SocketAddr,
    body_timeout: Duration,
}

impl tower_service::Service<Request> for Tracked {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let in_flight = InFlight::start(self.state.clone());
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let timeout = self.body_timeout;
        let deadline = Instant::now() + timeout;
        let req = req.map(|inner| {
            if http_body::Body::is_end_stream(&inner) {
                inner
            } else {
                Body::new(DeadlineBody {
                    inner,
                    deadline,
                    timeout,
                    sleep: None,
                })
            }
        });
        let mut router = self.router.clone();
        let state = self.state.clone();
        Box::pin(async move {
            std::future::poll_fn(|cx| {
                tower_service::Service::<Request>::poll_ready(&mut router, cx)
            })
            .await?;
            let resp = tower_service::Service::call(&mut router, req).await?;
            if resp.status() == axum::http::StatusCode::SWITCHING_PROTOCOLS {
                state.upgraded();
            }
            Ok(resp.map(|inner| {
                Body::new(EndsRequest {
                    inner,
                    _in_flight: in_flight,
                })
            }))
        })
    }
}

/// Makes a [`Tracked`] service per accepted connection.
#[derive(Clone)]
pub struct MakeTracked {
    router: Router,
    body_timeout: Duration,
}

impl<'a> tower_service::Service<IncomingStream<'a, LimitedListener>> for MakeTracked {
    type Response = Tracked;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Tracked, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, s: IncomingStream<'a, LimitedListener>) -> Self::Future {
        std::future::ready(Ok(Tracked {
            router: self.router.clone(),
            state: s.io().state.clone(),
            peer: *s.remote_addr(),
            body_timeout: self.body_timeout,
        }))
    }
}

/// Serves `router` on `listener` under its limits; `.with_graceful_shutdown`
/// works as with `axum::serve`.
pub fn serve(
    listener: LimitedListener,
    router: Router,
) -> axum::serve::Serve<LimitedListener, MakeTracked, Tracked> {
    let body_timeout = listener.limits.body_read_timeout;
    axum::serve(
        listener,
        MakeTracked {
            router,
            body_timeout,
        },
    )
}

/// The accept queue a listener asks the kernel for. tokio's default (1024)
/// overflows under a burst of connections: the kernel then drops the
/// handshakes' last packets and clients sit connected to nobody until they
/// retransmit, seconds later. Linux caps it at `net.core.somaxconn` (4096 by
/// default since 5.4).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` (with `SO_REUSEADDR`, as tokio's own bind) and listens with
/// [`LISTEN_BACKLOG`].
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Raises this process's soft limit on open files to its hard limit (at
/// most 2^20), as Go's runtime does at start: a default soft limit of 1024
/// would otherwise cap the gateway far below its connection limit. Returns
/// the soft limit in force afterwards, when it can be read.
pub fn raise_open_files_limit() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the rlimit we own and pass by pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return None;
    }
    let want = r.rlim_max.min(1 << 20);
    if r.rlim_cur < want {
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: r.rlim_max,
        };
        // SAFETY: setrlimit reads the rlimit we own; failure leaves the
        // limit as it was, which we then report.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            r.rlim_cur = want;
        }
    }
    // rlim_t is not u64 on every platform.
    #[allow(clippy::unnecessary_cast)]
    Some(r.rlim_cur as u64)
}

/// Descriptors kept for everything but this listener's connections: the
/// store, the log, keys, other listeners' sockets and upstream connections.
pub const RESERVED_DESCRIPTORS: u64 = 256;

/// `limits` with its connection caps lowered, if need be, to what the
/// open-files limit `soft` leaves after [`RESERVED_DESCRIPTORS`]: a cap the
/// process cannot reach would let a flood exhaust descriptors first (and
/// then every accept, and every file the store opens, fails).
pub fn fit_to_open_files(mut limits: ConnLimits, soft: Option<u64>) -> ConnLimits {
    if let Some(soft) = soft {
        let room = usize::try_from(soft.saturating_sub(RESERVED_DESCRIPTORS).max(16))
            .unwrap_or(usize::MAX);
        if limits.max_connections > room {
            tracing::warn!(
                configured = limits.max_connections,
                open_files_limit = soft,
                "max_connections lowered to {room} to stay under the open-files limit; raise `ulimit -n` (LimitNOFILE=) to allow more"
            );
            limits.max_connections = room;
        }
        limits.max_per_address = limits.max_per_address.min(limits.max_connections);
    }
    limits
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Notify;

    #[test]
    fn caps_count_in_all_and_per_address() {
        let c = Connections::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let s1 = c.try_open(a).unwrap();
        let _s2 = c.try_open(mapped).unwrap();
        assert_eq!(
            c.try_open(a).unwrap_err(),
            ConnRefusal::AddressFull,
            "IPv4-mapped IPv6 is the same address"
        );
        let _s3 = c.try_open(b).unwrap();
        assert_eq!(c.try_open(b).unwrap_err(), ConnRefusal::Full);
        assert_eq!((c.open(), c.refused()), (3, 2));
        drop(s1);
        assert_eq!(c.open(), 2);
        let _s4 = c.try_open(b).unwrap();
    }

    #[tokio::test]
    async fn an_accepted_connection_sends_small_writes_at_once() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut listener = LimitedListener::new(tcp, ConnLimits::default());
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (io, _) = listener.accept().await;
        let stream = io.stream.io.as_ref().unwrap();
        assert!(
            stream.nodelay().unwrap(),
            "Nagle's algorithm held a streamed answer's last piece for the client's delayed ACK"
        );
    }

    #[test]
    fn caps_fit_under_the_open_files_limit() {
        let l = fit_to_open_files(ConnLimits::default(), Some(1024));
        assert_eq!((l.max_connections, l.max_per_address), (768, 768));
        let l = fit_to_open_files(ConnLimits::default(), Some(1 << 20));
        assert_eq!(l, ConnLimits::default());
        assert_eq!(
            fit_to_open_files(ConnLimits::default(), None),
            ConnLimits::default()
        );
    }

    /// The deadlines as the watchdog reads them: the head from accept,
    /// none in flight, idle after a response, the head from its first byte.
    #[test]
    fn deadlines_follow_the_connection() {
        let limits = ConnLimits::default();
        let t0 = Instant::now();
        let s = ConnState::new(t0);
        assert_eq!(
            s.deadline(&limits),
            Deadline::At(t0 + limits.header_read_timeout)
        );
        s.request_started();
        assert_eq!(
            s.deadline(&limits),
            Deadline::InFlight,
            "a request in flight is its handler's business"
        );
        let t1 = t0 + Duration::from_secs(300);
        s.request_ended(t1);
        assert_eq!(s.deadline(&limits), Deadline::At(t1 + limits.idle_timeout));
        let t2 = t1 + Duration::from_secs(5);
        s.bytes_arrived(t2);
        assert_eq!(
            s.deadline(&limits),
            Deadline::At(t2 + limits.header_read_timeout)
        );
        s.bytes_arrived(t2 + Duration::from_secs(5));
        assert_eq!(
            s.deadline(&limits),
            Deadline::At(t2 + limits.header_read_timeout),
            "a trickle does not move the head's deadline"
        );
        s.upgraded();
        assert_eq!(
            s.deadline(&limits),
            Deadline::Gone,
            "an upgraded connection is no longer HTTP"
        );
    }

    /// The watchdog ends a connection past its deadline: reads fail from
    /// then on, and the reader is woken to see it.
    #[tokio::test]
    async fn the_watchdog_expires_a_silent_connection() {
        let limits = ConnLimits {
            header_read_timeout: Duration::from_millis(50),
            ..ConnLimits::default()
        };
        let state = Arc::new(ConnState::new(Instant::now()));
        let woken = Arc::new(Notify::new());
        let w = woken.clone();
        let waker = futures_util::task::waker(Arc::new(NotifyWaker(w)));
        assert!(!state.register_reader(&waker));
        let dog = tokio::spawn(watchdog(state.clone(), limits));
        tokio::time::timeout(Duration::from_secs(10), dog)
            .await
            .expect("the watchdog fires")
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), woken.notified())
            .await
            .expect("the reader is woken");
        assert!(state.register_reader(&waker), "reads fail once expired");
    }

    /// A deadline set after the watchdog looked, and sooner than its next
    /// look would be without it, is kept to: the watchdog is not told of
    /// the change, yet the connection expires at the new deadline, not at
    /// the look after it.
    #[tokio::test]
    async fn a_deadline_set_between_two_looks_is_kept() {
        let limits = ConnLimits {
            header_read_timeout: Duration::from_millis(1000),
            idle_timeout: Duration::from_millis(1500),
            ..ConnLimits::default()
        };
        let t0 = Instant::now();
        let state = Arc::new(ConnState::new(t0));
        let dog = tokio::spawn(watchdog(state.clone(), limits.clone()));
        // The watchdog has looked (head deadline t0 + 1 s); a request
        // comes and goes, which sets the idle deadline ~1.5 s out.
        tokio::time::sleep(Duration::from_millis(20)).await;
        state.request_started();
        let ended = Instant::now();
        state.request_ended(ended);
        let deadline = ended + limits.idle_timeout;
        tokio::time::timeout(Duration::from_secs(10), dog)
            .await
            .expect("the watchdog fires")
            .unwrap();
        let at = Instant::now();
        assert!(at >= deadline, "expired {:?} early", deadline - at);
        // A watchdog that waited a whole period past its look at t0 + 1 s
        // would have fired at t0 + 2 s.
        assert!(
            at < t0 + Duration::from_millis(1900),
            "expired {:?} after its deadline",
            at - deadline
        );
    }

    struct NotifyWaker(Arc<Notify>);

    impl futures_util::task::ArcWake for NotifyWaker {
        fn wake_by_ref(me: &Arc<Self>) {
            me.0.notify_one();
        }
    }
}
