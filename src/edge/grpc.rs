//! The gRPC edge: Envoy's `RateLimitService`, converted to and from the limiter's types.

use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code as WireCode, DescriptorStatus, RateLimit, rate_limit::Unit as WireUnit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::{self as pbuf, value::Kind};
use tonic::{Request as GrpcRequest, Response, Status as GrpcStatus};

use crate::limiter::{
    Code, DecideError, Decision, Descriptor, LimitOverride, Limiter, Request, Status,
};
use crate::rules::Unit;
use crate::telemetry::Metrics;

/// `ShouldRateLimit`, served by the limiter.
pub struct RateLimitGrpc {
    limiter: Arc<Limiter>,
    metrics: Metrics,
}

impl RateLimitGrpc {
    /// The service over `limiter`.
    pub fn new(limiter: Arc<Limiter>, metrics: Metrics) -> Self {
        Self { limiter, metrics }
    }
}

#[tonic::async_trait]
impl RateLimitService for RateLimitGrpc {
    async fn should_rate_limit(
        &self,
        request: GrpcRequest<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, GrpcStatus> {
        let started = Instant::now();
        self.metrics.service.total_requests.increment(1);
        let wire = request.into_inner();
        let outcome = self.limiter.decide(&request_from_wire(&wire)).await;
        self.metrics
            .service
            .response_time
            .record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(decision) => Ok(Response::new(response_to_wire(decision))),
            Err(error) => Err(status_of(&error, &self.metrics)),
        }
    }
}

/// The gRPC status for a failed call: the reference's UNKNOWN for request and config
/// errors, UNAVAILABLE for the store so Envoy's `failure_mode_deny` applies at once.
pub fn status_of(error: &DecideError, metrics: &Metrics) -> GrpcStatus {
    match error {
        DecideError::Store(_) => GrpcStatus::unavailable(error.to_string()),
        _ => {
            metrics.service.service_error.increment(1);
            GrpcStatus::unknown(error.to_string())
        }
    }
}

/// Borrows the limiter's view of a wire request.
pub fn request_from_wire(wire: &RateLimitRequest) -> Request<'_> {
    Request {
        domain: &wire.domain,
        descriptors: wire.descriptors.iter().map(descriptor_from_wire).collect(),
        hits_addend: wire.hits_addend,
    }
}

fn descriptor_from_wire(wire: &RateLimitDescriptor) -> Descriptor<'_> {
    Descriptor {
        entries: wire
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect(),
        limit: wire.limit.as_ref().map(|l| LimitOverride {
            requests_per_unit: l.requests_per_unit,
            unit: unit_from_wire(l.unit),
        }),
        hits_addend: wire.hits_addend.map(|h| h.value),
        is_negative_hits: wire.is_negative_hits,
    }
}

/// `envoy.type.v3.RateLimitUnit` and the response's unit share their numbers.
pub fn unit_from_wire(unit: i32) -> Option<Unit> {
    match WireUnit::try_from(unit).ok()? {
        WireUnit::Unknown => None,
        WireUnit::Second => Some(Unit::Second),
        WireUnit::Minute => Some(Unit::Minute),
        WireUnit::Hour => Some(Unit::Hour),
        WireUnit::Day => Some(Unit::Day),
        WireUnit::Week => Some(Unit::Week),
        WireUnit::Month => Some(Unit::Month),
        WireUnit::Year => Some(Unit::Year),
    }
}

fn unit_to_wire(unit: Unit) -> WireUnit {
    match unit {
        Unit::Second => WireUnit::Second,
        Unit::Minute => WireUnit::Minute,
        Unit::Hour => WireUnit::Hour,
        Unit::Day => WireUnit::Day,
        Unit::Week => WireUnit::Week,
        Unit::Month => WireUnit::Month,
        Unit::Year => WireUnit::Year,
    }
}

fn code_to_wire(code: Code) -> WireCode {
    match code {
        Code::Ok => WireCode::Ok,
        Code::OverLimit => WireCode::OverLimit,
    }
}

/// The wire response for a decision.
pub fn response_to_wire(decision: Decision) -> RateLimitResponse {
    RateLimitResponse {
        overall_code: code_to_wire(decision.overall_code) as i32,
        statuses: decision.statuses.into_iter().map(status_to_wire).collect(),
        response_headers_to_add: decision
            .response_headers
            .into_iter()
            .map(|(key, value)| HeaderValue {
                key,
                value,
                ..HeaderValue::default()
            })
            .collect(),
        dynamic_metadata: decision.dynamic_metadata.map(struct_from_json),
        raw_body: decision
            .raw_body
            .map(String::into_bytes)
            .unwrap_or_default(),
        ..RateLimitResponse::default()
    }
}

fn status_to_wire(status: Status) -> DescriptorStatus {
    DescriptorStatus {
        code: code_to_wire(status.code) as i32,
        current_limit: status.current_limit.map(|l| RateLimit {
            name: l.name.unwrap_or_default(),
            requests_per_unit: l.requests_per_unit,
            unit: l.unit.map_or(WireUnit::Unknown, unit_to_wire) as i32,
        }),
        limit_remaining: status.limit_remaining,
        duration_until_reset: status.duration_until_reset.map(|secs| pbuf::Duration {
            seconds: secs as i64,
            nanos: 0,
        }),
        ..DescriptorStatus::default()
    }
}

fn struct_from_json(map: serde_json::Map<String, serde_json::Value>) -> pbuf::Struct {
    pbuf::Struct {
        fields: map
            .into_iter()
            .map(|(k, v)| (k, value_from_json(v)))
            .collect(),
    }
}

fn value_from_json(value: serde_json::Value) -> pbuf::Value {
    use serde_json::Value as J;
    let kind = match value {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        J::String(s) => Kind::StringValue(s),
        J::Array(items) => Kind::ListValue(pbuf::ListValue {
            values: items.into_iter().map(value_from_json).collect(),
        }),
        J::Object(map) => Kind::StructValue(struct_from_json(map)),
    };
    pbuf::Value { kind: Some(kind) }
}
