//! Request metrics as a tower layer around the client-facing gRPC services: every unary call of
//! `raftlog.v1.Broker`, `raftlog.v1.Queues` and `raftlog.v1.Cluster` is counted by method and status code
//! (`raftlog_requests_total`) and timed (`raftlog_request_duration_seconds`), from its arrival to
//! its answer, without any handler having to remember it.
//!
//! Streaming methods are left to their handlers: a stream's answer is its first header, which
//! says nothing about its messages, so a produce stream counts each message itself (with method
//! `ProduceStream`, [`crate::metrics::MessageMetrics`]) and a Subscribe stream is not a request
//! with a latency.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Instant;

use prost::Message;

/// The unary methods that are counted, by request path (`/raftlog.v1.Broker/Produce`), with
/// their `method` label (`Produce`). Read from the compiled proto descriptors, so a new method
/// is counted without anyone listing it; the labels live for the whole process.
static UNARY_METHODS: LazyLock<HashMap<String, &'static str>> = LazyLock::new(|| {
    let set = prost_types::FileDescriptorSet::decode(raftlog_proto::FILE_DESCRIPTOR_SET)
        .expect("the compiled descriptor set decodes");
    let mut methods = HashMap::new();
    for file in &set.file {
        let package = file.package();
        for service in &file.service {
            let full = format!("{package}.{}", service.name());
            if ![
                "raftlog.v1.Broker",
                "raftlog.v1.Cluster",
                "raftlog.v1.Queues",
            ]
            .contains(&full.as_str())
            {
                continue;
            }
            for method in &service.method {
                if method.client_streaming() || method.server_streaming() {
                    continue;
                }
                let label: &'static str = Box::leak(method.name().to_string().into_boxed_str());
                methods.insert(format!("/{full}/{}", method.name()), label);
            }
        }
    }
    methods
});

/// Adds [`RequestMetrics`] to a tonic server.
#[derive(Clone, Copy, Default)]
pub struct RequestMetricsLayer;

impl RequestMetricsLayer {
    pub fn new() -> Self {
        LazyLock::force(&UNARY_METHODS);
        Self
    }
}

impl<S> tower::Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestMetrics { inner }
    }
}

/// The service [`RequestMetricsLayer`] wraps around the server's routes.
#[derive(Clone)]
pub struct RequestMetrics<S> {
    inner: S,
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for RequestMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Observed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = UNARY_METHODS.get(request.uri().path()).copied();
        Observed {
            call: self.inner.call(request),
            method,
            start: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A call in progress; records its metrics when the answer is ready.
    pub struct Observed<F> {
        #[pin]
        call: F,
        // None: not a counted method.
        method: Option<&'static str>,
        start: Instant,
    }
}

impl<F, ResBody, E> Future for Observed<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.call.poll(cx));
        if let (Some(method), Ok(response)) = (*this.method, &result) {
            // tonic answers an error with its status in the headers (a trailers-only response);
            // a success has no status there (it follows in the trailers, always OK for a unary
            // call that produced its message).
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map_or(tonic::Code::Ok, tonic::Code::from_i32);
            crate::metrics::observed(method, code, *this.start);
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    /// Every unary method of the client services is counted, under its proto name; streams are
    /// not.
    #[test]
    fn counts_the_unary_methods_of_the_client_services() {
        let methods = &*super::UNARY_METHODS;
        assert_eq!(methods.get("/raftlog.v1.Broker/Produce"), Some(&"Produce"));
        assert_eq!(methods.get("/raftlog.v1.Broker/Fetch"), Some(&"Fetch"));
        assert_eq!(methods.get("/raftlog.v1.Cluster/Status"), Some(&"Status"));
        assert!(!methods.contains_key("/raftlog.v1.Broker/ProduceStream"));
        assert!(!methods.contains_key("/raftlog.v1.Broker/Subscribe"));
        assert!(!methods
            .keys()
            .any(|path| path.starts_with("/raftlog.raft.")));
    }
}
