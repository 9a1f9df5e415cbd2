//! The generator's HTTP/2 connections: hyper's client connection, driven directly.
//!
//! A tonic `Channel` sends each call through a `tower` buffer: a task of its own that
//! hands the request to the connection's task, one more wake-up per request. On a small
//! machine the generator shares cores with the server it measures, so every microsecond
//! it spends per request is taken from the ceiling (and, in open loop, queues requests
//! behind the generator rather than the server). Here a call goes straight to the HTTP/2
//! connection's task.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::body::Body;

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A RateLimitService client on one HTTP/2 connection; clones share the connection.
pub type Client = RateLimitServiceClient<Connection>;

/// One HTTP/2 connection to the target, as the service tonic's generated client calls.
#[derive(Clone)]
pub struct Connection(SendRequest<Body>);

impl tower_service::Service<http::Request<Body>> for Connection {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        Box::pin(self.0.send_request(request))
    }
}

/// Opens `n` HTTP/2 connections to `target` (`http://host:port`), with TCP_NODELAY, each
/// attempt bounded by [`CONNECT_TIMEOUT`].
pub async fn connect(target: &str, n: usize) -> anyhow::Result<Vec<Client>> {
    let origin: http::Uri = target
        .parse()
        .with_context(|| format!("bad target {target}"))?;
    let authority = origin
        .authority()
        .with_context(|| format!("bad target {target}: no host:port"))?
        .to_string();
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let stream =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&authority))
                .await
                .map_err(|_| anyhow::anyhow!("cannot connect to {target}: timed out"))?
                .with_context(|| format!("cannot connect to {target}"))?;
        stream.set_nodelay(true)?;
        let (send, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("no HTTP/2 handshake with {target}"))?;
        tokio::spawn(async move {
            // Ends when the server or the last client closes the connection.
            let _ = connection.await;
        });
        clients.push(RateLimitServiceClient::with_origin(
            Connection(send),
            origin.clone(),
        ));
    }
    Ok(clients)
}
