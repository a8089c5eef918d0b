//! What one client may hold on a listener, and for how long: connections
//! and requests in flight, a stalled request body, a response nobody reads,
//! the first bytes of a connection, and HTTP/2 streams (rapid reset,
//! CONTINUATION floods). Configured per `[[listeners]]`; the listen stage
//! applies them with a line or two each.

use crate::body::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// The limits of one listener (`[[listeners]]` keys of the same names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Time to send a request head; also the time a new connection has to
    /// send its first bytes (before HTTP/1 or HTTP/2 is even known).
    pub header_timeout: Duration,
    /// Longest pause while a request body is being read (408 after it).
    pub body_idle_timeout: Duration,
    /// Longest a write to the client may wait (a client that stops reading
    /// its response): the connection is closed after it.
    pub write_timeout: Duration,
    /// Open connections; more are answered 503 and closed.
    pub max_connections: usize,
    /// Requests being answered at once (until their response body ends); more get 503.
    pub max_requests_in_flight: usize,
    /// HTTP/2 streams a client may open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 streams a client may reset before the gateway accepted them
    /// (CVE-2023-44487, rapid reset); GOAWAY past it.
    pub h2_max_pending_accept_reset_streams: usize,
    /// HTTP/2 streams the gateway may reset for protocol errors of the
    /// client on one connection; GOAWAY past it.
    pub h2_max_local_error_reset_streams: usize,
}

/// The counters behind a listener's limits, shared by its connections.
#[derive(Debug)]
pub struct Gates {
    connections: Arc<Semaphore>,
    requests: Arc<Semaphore>,
    /// The listener's `body_idle_timeout_ms`.
    pub body_idle_timeout: Duration,
}

impl Gates {
    /// Gates sized for `limits`.
    pub fn new(limits: &Limits) -> Gates {
        Gates {
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            requests: Arc::new(Semaphore::new(limits.max_requests_in_flight)),
            body_idle_timeout: limits.body_idle_timeout,
        }
    }

    /// A place for one more connection, if the listener has one.
    pub fn connection(&self) -> Option<OwnedSemaphorePermit> {
        self.connections.clone().try_acquire_owned().ok()
    }

    /// A place for one more request in flight, if the listener has one.
    pub fn request(&self) -> Option<OwnedSemaphorePermit> {
        self.requests.clone().try_acquire_owned().ok()
    }
}

/// Apply the HTTP/1 and HTTP/2 settings of `limits` to a connection builder.
pub fn configure(builder: &mut auto::Builder<TokioExecutor>, limits: &Limits, max_head: usize) {
    use hyper_util::rt::TokioTimer;
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true).max_buf_size(max_head);
    builder
        .http2()
        .timer(TokioTimer::new())
        // Bounds the HPACK-decoded header list, however many CONTINUATION frames carry it.
        .max_header_list_size(max_head as u32)
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.h2_max_pending_accept_reset_streams)
        .max_local_error_reset_streams(limits.h2_max_local_error_reset_streams);
}

/// The answer to a connection over `max_connections`: a fixed 503
/// problem+json, then close. Bounded by a second whatever the client does.
pub async fn refuse_connection(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BODY: &str = r#"{"type":"urn:portcullis:problem:overloaded","title":"Service Unavailable","status":503,"detail":"The gateway is at capacity; retry later."}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        // Read what the client already sent, so closing does not reset the answer away.
        let mut buf = [0u8; 8192];
        let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await;
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

pin_project! {
    /// A connection's socket with two deadlines hyper does not have: the
    /// first `sniff` bytes must arrive within the header timeout (hyper-util
    /// reads them to tell HTTP/2 from HTTP/1 with no timer of its own), and
    /// no write may wait longer than the write timeout.
    pub struct TimedIo<T> {
        #[pin]
        inner: T,
        first_bytes_left: usize,
        first_bytes_deadline: Pin<Box<Sleep>>,
        write_timeout: Duration,
        write_waiting: bool,
        write_deadline: Pin<Box<Sleep>>,
    }
}

/// Bytes hyper-util reads to choose the protocol (the HTTP/2 preface).
const SNIFF: usize = 24;

impl<T> TimedIo<T> {
    /// Wrap a fresh connection.
    pub fn new(inner: T, limits: &Limits) -> Self {
        let now = Instant::now();
        TimedIo {
            inner,
            first_bytes_left: SNIFF,
            first_bytes_deadline: Box::pin(tokio::time::sleep_until(now + limits.header_timeout)),
            write_timeout: limits.write_timeout,
            write_waiting: false,
            write_deadline: Box::pin(tokio::time::sleep_until(now + limits.write_timeout)),
        }
    }
}

fn timed_out(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what.to_string())
}

impl<T: AsyncWrite> TimedIo<T> {
    /// Run one write-side poll under the write deadline.
    fn timed<R>(self: Pin<&mut Self>, cx: &mut Context<'_>, op: impl FnOnce(Pin<&mut T>, &mut Context<'_>) -> Poll<std::io::Result<R>>) -> Poll<std::io::Result<R>> {
        let this = self.project();
        match op(this.inner, cx) {
            Poll::Ready(r) => {
                *this.write_waiting = false;
                // The gateway answers only once the protocol is known: whatever
                // the first request's size (`GET / HTTP/1.0` is 18 bytes), the
                // first-bytes deadline is over.
                *this.first_bytes_left = 0;
                Poll::Ready(r)
            }
            Poll::Pending => {
                if !*this.write_waiting {
                    *this.write_waiting = true;
                    this.write_deadline.as_mut().reset(Instant::now() + *this.write_timeout);
                }
                ready!(this.write_deadline.as_mut().poll(cx));
                Poll::Ready(Err(timed_out("the client did not read its response in time")))
            }
        }
    }
}

impl<T: AsyncRead> AsyncRead for TimedIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        match this.inner.poll_read(cx, buf) {
            Poll::Ready(r) => {
                *this.first_bytes_left = this.first_bytes_left.saturating_sub(buf.filled().len() - before);
                Poll::Ready(r)
            }
            Poll::Pending if *this.first_bytes_left > 0 => {
                ready!(this.first_bytes_deadline.as_mut().poll(cx));
                Poll::Ready(Err(timed_out("the client sent no request in time")))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite> AsyncWrite for TimedIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.timed(cx, |io, cx| io.poll_write(cx, buf))
    }
    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        self.timed(cx, |io, cx| io.poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.timed(cx, |io, cx| io.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.timed(cx, |io, cx| io.poll_shutdown(cx))
    }
}

/// A request body that has stalled longer than the listener allows.
#[derive(Debug, thiserror::Error)]
#[error("the request body stalled for more than {0:?}")]
pub struct BodyIdle(pub Duration);

pin_project! {
    /// A request body that fails with [`BodyIdle`] when the client sends
    /// nothing for `timeout` while the gateway is waiting for it.
    pub struct IdleBody<B> {
        #[pin]
        inner: B,
        timeout: Duration,
        waiting: bool,
        #[pin]
        deadline: Sleep,
        stalled: Arc<AtomicBool>,
    }
}

impl<B> IdleBody<B> {
    /// Wrap `inner`; `stalled` turns true when the timeout cut it.
    pub fn new(inner: B, timeout: Duration, stalled: Arc<AtomicBool>) -> Self {
        IdleBody { inner, timeout, waiting: false, deadline: tokio::time::sleep(timeout), stalled }
    }
}

impl<B> Body for IdleBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                *this.waiting = false;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let mut deadline = this.deadline;
                if !*this.waiting {
                    *this.waiting = true;
                    deadline.as_mut().reset(Instant::now() + *this.timeout);
                }
                ready!(deadline.poll(cx));
                this.stalled.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(Box::new(BodyIdle(*this.timeout)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// A response body that keeps its request's in-flight place until it ends.
    pub struct Holding<B> {
        #[pin]
        inner: B,
        permit: Option<OwnedSemaphorePermit>,
    }
}

impl<B> Holding<B> {
    /// Hold `permit` as long as `inner` is alive.
    pub fn new(inner: B, permit: OwnedSemaphorePermit) -> Self {
        Holding { inner, permit: Some(permit) }
    }
}

impl<B: Body> Body for Holding<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if frame.is_none() {
            this.permit.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn channel_body(rx: tokio::sync::mpsc::Receiver<Bytes>, timeout: Duration, stalled: Arc<AtomicBool>) -> IdleBody<impl Body<Data = Bytes, Error = std::convert::Infallible>> {
        let mut rx = rx;
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))));
        IdleBody::new(http_body_util::StreamBody::new(stream), timeout, stalled)
    }

    #[tokio::test]
    async fn a_stalled_body_fails_a_flowing_one_does_not() {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let stalled = Arc::new(AtomicBool::new(false));
        let err = channel_body(rx, Duration::from_millis(200), stalled.clone()).collect().await.map(|_| ()).expect_err("a body that never comes is cut");
        assert!(err.is::<BodyIdle>());
        assert!(stalled.load(Ordering::Relaxed));
        drop(tx);

        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let stalled = Arc::new(AtomicBool::new(false));
        tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                tx.send(Bytes::from_static(b"x")).await.unwrap();
            }
        });
        let body = channel_body(rx, Duration::from_secs(5), stalled.clone()).collect().await.expect("each pause is short");
        assert_eq!(body.to_bytes().len(), 5);
        assert!(!stalled.load(Ordering::Relaxed));
    }

    fn limits() -> Limits {
        Limits {
            header_timeout: Duration::from_millis(200),
            body_idle_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_millis(200),
            max_connections: 1,
            max_requests_in_flight: 1,
            h2_max_concurrent_streams: 1,
            h2_max_pending_accept_reset_streams: 1,
            h2_max_local_error_reset_streams: 1,
        }
    }

    #[tokio::test]
    async fn a_write_nobody_reads_times_out() {
        use tokio::io::AsyncWriteExt;
        let (_client, server) = tokio::io::duplex(1024);
        let mut io = TimedIo::new(server, &limits());
        let err = io.write_all(&[0u8; 64 * 1024]).await.expect_err("the peer never reads");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_connection_that_sends_too_few_bytes_times_out_then_reads_freely() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(1024);
        let mut io = TimedIo::new(server, &limits());
        client.write_all(b"GET /").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(io.read(&mut buf).await.unwrap(), 5);
        let err = io.read(&mut buf).await.expect_err("19 more bytes never come");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);

        let (mut client, server) = tokio::io::duplex(1024);
        let mut io = TimedIo::new(server, &limits());
        client.write_all(&[b'x'; 24]).await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 24);
        // Past the first bytes, waiting is the HTTP codec's business (its own timers).
        let later = tokio::time::timeout(Duration::from_millis(400), io.read(&mut buf)).await;
        assert!(later.is_err(), "no deadline after the first bytes");

        // A short first request that was answered: no deadline either.
        let (mut client, server) = tokio::io::duplex(1024);
        let mut io = TimedIo::new(server, &limits());
        client.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 18);
        io.write_all(b"HTTP/1.0 200 OK\r\n\r\n").await.unwrap();
        let later = tokio::time::timeout(Duration::from_millis(400), io.read(&mut buf)).await;
        assert!(later.is_err(), "no deadline once the gateway has answered");
        drop(client);
    }
}
