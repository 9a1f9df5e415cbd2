//! The `RateLimitService` on the wire: envoy-types' generated server, with one change, the
//! answer's encoding.
//!
//! prost writes a message through `BufMut` a field, and a varint a byte, at a time. Into
//! tonic's `BytesMut` each of those writes is an out-of-line call that copies through
//! `memcpy`, even for one byte: a tollgate answer (a limit, the remaining count and the
//! reset per descriptor) took 40-odd of them, 3.7 % of the server's time with five
//! descriptors. Here the answer is encoded into a `Vec` (whose writes inline to plain
//! stores) and copied into tonic's buffer once. The bytes on the wire are the same.
//!
//! Everything else is the generated server's: the same path, the same unary call through
//! `tonic::server::Grpc` with its default limits, the same UNIMPLEMENTED for other paths.
//! The no-op baseline (`loadtest`) is served by this too, so it stays the same stack.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, SERVICE_NAME,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use prost::Message;
use tonic::body::Body;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::codegen::{Body as HttpBody, BoxFuture, Service, StdError, http};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstDecoder;

/// The gRPC path of `ShouldRateLimit`.
const SHOULD_RATE_LIMIT: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// Serves `T` as `envoy.service.ratelimit.v3.RateLimitService`.
pub struct RateLimitServer<T> {
    inner: Arc<T>,
}

impl<T> RateLimitServer<T> {
    /// The server for `service`, ready for `tonic::transport::Server::add_service`.
    pub fn new(service: T) -> Self {
        Self {
            inner: Arc::new(service),
        }
    }
}

impl<T> Clone for RateLimitServer<T> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T> NamedService for RateLimitServer<T> {
    const NAME: &'static str = SERVICE_NAME;
}

impl<T, B> Service<http::Request<B>> for RateLimitServer<T>
where
    T: RateLimitService,
    B: HttpBody + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != SHOULD_RATE_LIMIT {
            return Box::pin(async { Ok(unimplemented()) });
        }
        let method = ShouldRateLimit(Arc::clone(&self.inner));
        Box::pin(async move { Ok(Grpc::new(RateLimitCodec).unary(method, request).await) })
    }
}

/// The answer to a path this service does not have, as the generated server gives it.
fn unimplemented() -> http::Response<Body> {
    let mut response = http::Response::new(Body::default());
    let headers = response.headers_mut();
    headers.insert(
        Status::GRPC_STATUS,
        (tonic::Code::Unimplemented as i32).into(),
    );
    headers.insert(
        http::header::CONTENT_TYPE,
        tonic::metadata::GRPC_CONTENT_TYPE,
    );
    response
}

/// One `ShouldRateLimit` call, as tonic's unary handler wants it.
struct ShouldRateLimit<T>(Arc<T>);

impl<T: RateLimitService> UnaryService<RateLimitRequest> for ShouldRateLimit<T> {
    type Response = RateLimitResponse;
    type Future = BoxFuture<Response<RateLimitResponse>, Status>;

    fn call(&mut self, request: Request<RateLimitRequest>) -> Self::Future {
        let inner = Arc::clone(&self.0);
        Box::pin(async move { inner.should_rate_limit(request).await })
    }
}

/// Requests decoded by prost as tonic's codec does; answers encoded by [`AnswerEncoder`].
struct RateLimitCodec;

impl Codec for RateLimitCodec {
    type Encode = RateLimitResponse;
    type Decode = RateLimitRequest;
    type Encoder = AnswerEncoder;
    type Decoder = ProstDecoder<RateLimitRequest>;

    fn encoder(&mut self) -> Self::Encoder {
        AnswerEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::default()
    }
}

/// Encodes an answer into a `Vec` of its exact length, then copies it into tonic's buffer
/// in one write (see the module docs for why).
struct AnswerEncoder;

impl Encoder for AnswerEncoder {
    type Item = RateLimitResponse;
    type Error = Status;

    fn encode(&mut self, item: RateLimitResponse, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        bytes::BufMut::put_slice(buf, &item.encode_to_vec());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::HeaderValue;
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
        Code, DescriptorStatus, RateLimit,
    };
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
    use envoy_types::pb::google::protobuf::Duration;
    use tokio_stream::wrappers::TcpListenerStream;

    /// Answers every call with `.0`.
    struct Fixed(RateLimitResponse);

    #[tonic::async_trait]
    impl RateLimitService for Fixed {
        async fn should_rate_limit(
            &self,
            _: Request<RateLimitRequest>,
        ) -> Result<Response<RateLimitResponse>, Status> {
            Ok(Response::new(self.0.clone()))
        }
    }

    fn full_answer() -> RateLimitResponse {
        let status = |code: Code, remaining| DescriptorStatus {
            code: code as i32,
            current_limit: Some(RateLimit {
                name: "per-key".into(),
                requests_per_unit: 300_000,
                unit: 2,
            }),
            limit_remaining: remaining,
            duration_until_reset: Some(Duration {
                seconds: 42,
                nanos: 0,
            }),
            ..DescriptorStatus::default()
        };
        RateLimitResponse {
            overall_code: Code::OverLimit as i32,
            statuses: vec![status(Code::Ok, 129), status(Code::OverLimit, 0)],
            response_headers_to_add: vec![HeaderValue {
                key: "ratelimit-limit".into(),
                value: "300000".into(),
                ..HeaderValue::default()
            }],
            raw_body: b"slow down".to_vec(),
            ..RateLimitResponse::default()
        }
    }

    /// Serves `service` on a port of its own; the server stops with the test's runtime.
    async fn serve(service: RateLimitServer<Fixed>) -> tonic::transport::Channel {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn an_answer_arrives_field_for_field() {
        let channel = serve(RateLimitServer::new(Fixed(full_answer()))).await;
        let answer = RateLimitServiceClient::new(channel)
            .should_rate_limit(RateLimitRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer, full_answer());
    }

    #[tokio::test]
    async fn another_method_of_the_service_is_unimplemented() {
        let channel = serve(RateLimitServer::new(Fixed(full_answer()))).await;
        let mut client = tonic::client::Grpc::new(channel);
        client.ready().await.unwrap();
        let path = http::uri::PathAndQuery::from_static(
            "/envoy.service.ratelimit.v3.RateLimitService/Other",
        );
        let codec = tonic_prost::ProstCodec::<RateLimitRequest, RateLimitResponse>::default();
        let status = client
            .unary(Request::new(RateLimitRequest::default()), path, codec)
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unimplemented);
    }
}
