//! What stands between the network and the handlers: bounds that keep a
//! flood of requests, or a few huge ones, from growing memory until the pod
//! is killed (and a memory store loses every counter).
//!
//! - **Connections**: at most `server.max_connections` at once; past that
//!   the listener stops accepting (the kernel's backlog holds the rest;
//!   see `crate::listen`).
//! - **Streams**: at most `server.max_concurrent_streams` calls on one
//!   HTTP/2 connection (set on the server), with small flow-control
//!   windows so a peer cannot park much unread data.
//! - **Calls**: at most `server.max_in_flight` in progress; one more is
//!   answered `UNAVAILABLE` at once, before anything is read.
//! - **Messages**: a request message larger than `server.max_request_bytes`
//!   is refused with `RESOURCE_EXHAUSTED` as soon as its 5-byte gRPC frame
//!   header arrives, before the message is buffered; the bytes of the
//!   messages being read count against `server.memory_budget`, and a
//!   message that would pass it is refused with `RESOURCE_EXHAUSTED` too.
//! - **Shape**: a `content-type` other than `application/grpc` is answered
//!   HTTP 415 (as the gRPC spec asks), and a unary call that carries a
//!   second message is `INVALID_ARGUMENT`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

/// The bounds, from `limits.server`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_request_bytes: usize,
    pub memory_budget: usize,
    pub max_in_flight: usize,
}

/// Counters shared by every connection.
#[derive(Debug)]
struct Shared {
    limits: Limits,
    /// Bytes of request messages being read now.
    buffered: AtomicUsize,
    /// Calls in progress now.
    in_flight: AtomicUsize,
}

/// The layer, added to the server once.
#[derive(Debug, Clone)]
pub struct GuardLayer {
    shared: Arc<Shared>,
}

impl GuardLayer {
    pub fn new(limits: Limits) -> GuardLayer {
        GuardLayer {
            shared: Arc::new(Shared {
                limits,
                buffered: AtomicUsize::new(0),
                in_flight: AtomicUsize::new(0),
            }),
        }
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service the layer makes.
#[derive(Debug, Clone)]
pub struct Guard<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// Held for the length of one call.
struct Admitted(Arc<Shared>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Release);
    }
}

fn is_grpc(req: &Request<Body>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct == "application/grpc"
                || ct.starts_with("application/grpc+")
                || ct.starts_with("application/grpc;")
        })
}

/// Methods whose calls carry a stream of messages: reflection's. Every
/// other method limitsd serves takes exactly one.
fn is_client_streaming(path: &str) -> bool {
    path.starts_with("/grpc.reflection.")
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<Request<Body>> for Guard<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if !is_grpc(&req) {
            let response = Response::builder()
                .status(http::StatusCode::UNSUPPORTED_MEDIA_TYPE)
                .header(http::header::CONTENT_TYPE, "text/plain")
                .body(Body::new(http_body_util::Full::new(Bytes::from_static(
                    b"limitsd speaks gRPC: content-type must be application/grpc\n",
                ))))
                .expect("a static response");
            return Box::pin(std::future::ready(Ok(response)));
        }
        let limits = self.shared.limits;
        if self.shared.in_flight.fetch_add(1, Ordering::AcqRel) >= limits.max_in_flight {
            self.shared.in_flight.fetch_sub(1, Ordering::Release);
            crate::ops::metrics::shed("in_flight");
            let status = Status::unavailable(format!(
                "overloaded: {} calls are in progress (limits.server.max_in_flight); retry with backoff",
                limits.max_in_flight
            ));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        let admitted = Admitted(self.shared.clone());
        let streaming = is_client_streaming(req.uri().path());
        let req = req.map(|body| {
            Body::new(Guarded {
                inner: body,
                shared: self.shared.clone(),
                header: [0; 5],
                have: 0,
                payload_left: 0,
                messages: 0,
                single: !streaming,
                reserved: 0,
            })
        });
        // The clone that was made ready is the one called (tower's rule);
        // the clone left behind serves the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(req).await;
            drop(admitted);
            response
        })
    }
}

/// A request body read through the gRPC framing: each message's 5-byte
/// header (compression flag, big-endian length) is checked before the
/// message itself is let through.
struct Guarded {
    inner: Body,
    shared: Arc<Shared>,
    /// The header being read, and how much of it has arrived.
    header: [u8; 5],
    have: usize,
    /// Bytes of the current message still to come.
    payload_left: usize,
    messages: usize,
    /// At most one message (a unary call, or a server-streaming one).
    single: bool,
    /// Bytes counted against the memory budget, given back on drop.
    reserved: usize,
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.shared
            .buffered
            .fetch_sub(self.reserved, Ordering::Release);
    }
}

impl Guarded {
    /// Follows the framing through one chunk; an error refuses the call.
    fn inspect(&mut self, mut chunk: &[u8]) -> Result<(), Status> {
        while !chunk.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(chunk.len());
                self.payload_left -= n;
                chunk.advance(n);
                continue;
            }
            let n = (5 - self.have).min(chunk.len());
            self.header[self.have..self.have + n].copy_from_slice(&chunk[..n]);
            self.have += n;
            chunk.advance(n);
            if self.have < 5 {
                break;
            }
            self.have = 0;
            let len =
                u32::from_be_bytes(self.header[1..5].try_into().expect("four bytes")) as usize;
            self.admit(len)?;
            self.payload_left = len;
        }
        Ok(())
    }

    /// Checks one message about to be read, of `len` bytes.
    fn admit(&mut self, len: usize) -> Result<(), Status> {
        self.messages += 1;
        if self.single && self.messages > 1 {
            return Err(Status::invalid_argument(
                "request: a unary call carries exactly one message; this one carries more",
            ));
        }
        let limits = self.shared.limits;
        if len > limits.max_request_bytes {
            crate::ops::metrics::shed("message_size");
            return Err(Status::resource_exhausted(format!(
                "request: the message is {len} bytes, more than the {} limitsd accepts \
                 (limits.server.max_request_bytes)",
                limits.max_request_bytes
            )));
        }
        let before = self.shared.buffered.fetch_add(len, Ordering::AcqRel);
        if before + len > limits.memory_budget {
            self.shared.buffered.fetch_sub(len, Ordering::Release);
            crate::ops::metrics::shed("memory");
            return Err(Status::resource_exhausted(format!(
                "overloaded: requests being read hold {before} bytes, and this one would pass \
                 the memory budget of {} (limits.server.memory_budget); retry with backoff",
                limits.memory_budget
            )));
        }
        self.reserved += len;
        Ok(())
    }
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && let Err(status) = this.inspect(data)
                {
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Status::from_error(e.into())))),
            Poll::Ready(None) => Poll::Ready(None),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn guarded(single: bool, limits: Limits) -> Guarded {
        Guarded {
            inner: Body::empty(),
            shared: Arc::new(Shared {
                limits,
                buffered: AtomicUsize::new(0),
                in_flight: AtomicUsize::new(0),
            }),
            header: [0; 5],
            have: 0,
            payload_left: 0,
            messages: 0,
            single,
            reserved: 0,
        }
    }

    fn frame(len: u32) -> Vec<u8> {
        let mut v = vec![0];
        v.extend_from_slice(&len.to_be_bytes());
        v.extend(std::iter::repeat_n(7u8, len as usize));
        v
    }

    const LIMITS: Limits = Limits {
        max_request_bytes: 100,
        memory_budget: 150,
        max_in_flight: 10,
    };

    #[test]
    fn follows_frames_split_anywhere() {
        let bytes = [frame(3), frame(100)].concat();
        for cut in 0..bytes.len() {
            let mut g = guarded(false, LIMITS);
            g.inspect(&bytes[..cut]).unwrap();
            g.inspect(&bytes[cut..]).unwrap();
            assert_eq!(g.messages, 2, "cut at {cut}");
            assert_eq!(g.reserved, 103);
        }
    }

    #[test]
    fn refuses_a_large_message_at_its_header() {
        let mut g = guarded(true, LIMITS);
        let e = g.inspect(&frame(101)[..5]).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().contains("max_request_bytes"), "{}", e.message());
        assert_eq!(g.reserved, 0);
    }

    #[test]
    fn refuses_a_second_message_in_a_unary_call() {
        let mut g = guarded(true, LIMITS);
        g.inspect(&frame(2)).unwrap();
        let e = g.inspect(&frame(2)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn the_memory_budget_is_shared_and_given_back() {
        let mut a = guarded(true, LIMITS);
        let mut b = guarded(true, LIMITS);
        b.shared = a.shared.clone();
        a.inspect(&frame(100)[..5]).unwrap();
        let e = b.inspect(&frame(60)[..5]).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().contains("memory_budget"));
        let shared = a.shared.clone();
        drop(a);
        assert_eq!(shared.buffered.load(Ordering::Acquire), 0);
        b.messages = 0;
        b.inspect(&frame(60)[..5]).unwrap();
    }
}
