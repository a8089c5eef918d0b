//! Bodies stream through the gateway frame by frame; these wrappers only
//! count bytes, enforce a size limit, and notice when a body ends.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

/// Error type of every body the gateway passes on.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of requests to upstreams and responses to clients.
pub type ProxyBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// A body of a few bytes (problem+json answers, policy replies).
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    use http_body_util::BodyExt;
    http_body_util::Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

/// The request body grew past the route's limit.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub struct BodyTooLarge {
    /// The limit, bytes.
    pub limit: u64,
}

/// The stream a body is read from failed (a malformed chunk, a cut
/// connection, an idle timeout): the fault of whoever sends the body, not of
/// whoever it was being passed to.
#[derive(Debug, thiserror::Error)]
#[error("the body's sender failed: {0}")]
pub struct SourceFailed(#[source] pub BoxError);

/// Whether `e`, or an error it wraps, says the body's sender (not the
/// receiver) failed or overran its limit.
pub fn sender_at_fault(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<SourceFailed>() || err.is::<BodyTooLarge>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Counters shared between a body wrapper and the request path.
#[derive(Debug, Default)]
pub struct BodyStats {
    /// Bytes passed so far.
    pub bytes: AtomicU64,
    /// The body ended normally.
    pub finished: AtomicBool,
    /// The body was cut for exceeding its limit.
    pub over_limit: AtomicBool,
    /// The body's source failed ([`SourceFailed`]).
    pub source_failed: AtomicBool,
}

pin_project! {
    /// Counts the bytes of a body, and cuts it with [`BodyTooLarge`] past `limit`.
    pub struct Counted<B> {
        #[pin]
        inner: B,
        limit: Option<u64>,
        stats: Arc<BodyStats>,
    }
}

impl<B> Counted<B> {
    /// Wrap `inner`; `limit` in bytes, none for unlimited.
    pub fn new(inner: B, limit: Option<u64>, stats: Arc<BodyStats>) -> Self {
        Counted { inner, limit, stats }
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let total = this.stats.bytes.fetch_add(data.len() as u64, Ordering::Relaxed) + data.len() as u64;
                    if let Some(limit) = *this.limit
                        && total > limit
                    {
                        this.stats.over_limit.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit }))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.stats.source_failed.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(Box::new(SourceFailed(e.into())))))
            }
            Poll::Ready(None) => {
                this.stats.finished.store(true, Ordering::Relaxed);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
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
    /// Calls `on_done` exactly once: when the body ends, fails, or is dropped
    /// unfinished (the client went away). The request's completion hooks and
    /// audit record hang off this.
    pub struct Finish<B, F: FnOnce(Ending)> {
        #[pin]
        inner: B,
        on_done: Option<F>,
        // An empty body may never be polled: it is complete as it is.
        empty: bool,
    }

    impl<B, F: FnOnce(Ending)> PinnedDrop for Finish<B, F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(f) = this.on_done.take() {
                f(if *this.empty { Ending::Complete } else { Ending::Dropped });
            }
        }
    }
}

/// How a response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// All of it was sent.
    Complete,
    /// Reading it from the upstream failed.
    Failed,
    /// The client went away before the end.
    Dropped,
}

impl<B: Body, F: FnOnce(Ending)> Finish<B, F> {
    /// Wrap `inner`.
    pub fn new(inner: B, on_done: F) -> Self {
        let empty = inner.is_end_stream();
        Finish { inner, on_done: Some(on_done), empty }
    }
}

impl<B, F> Body for Finish<B, F>
where
    B: Body<Data = Bytes, Error = BoxError>,
    F: FnOnce(Ending),
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        let ending = match &polled {
            Poll::Ready(None) => Some(Ending::Complete),
            Poll::Ready(Some(Err(_))) => Some(Ending::Failed),
            // hyper stops polling once a body says it has ended.
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => Some(Ending::Complete),
            _ => None,
        };
        if let Some(ending) = ending
            && let Some(f) = this.on_done.take()
        {
            f(ending);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
