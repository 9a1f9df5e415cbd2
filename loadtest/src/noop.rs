//! The no-op RateLimitService: the same tonic server stack as tollgate, answering OK at
//! once with one OK status per descriptor. Its throughput in the same run is the ceiling
//! the transport (and the load generator) allows, so tollgate's numbers are read as a
//! ratio to it.

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tollgate::edge::rls_server::RateLimitServer;
use tonic::{Request, Response, Status};

/// Answers every call with OK.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopRls;

impl NoopRls {
    /// The answer to `request`: overall OK, one OK status per descriptor.
    pub fn answer(request: &RateLimitRequest) -> RateLimitResponse {
        let ok = DescriptorStatus {
            code: Code::Ok as i32,
            ..DescriptorStatus::default()
        };
        RateLimitResponse {
            overall_code: Code::Ok as i32,
            statuses: vec![ok; request.descriptors.len()],
            ..RateLimitResponse::default()
        }
    }

    /// The service on tollgate's own server glue, ready for
    /// `tonic::transport::Server::add_service`.
    pub fn service() -> RateLimitServer<NoopRls> {
        RateLimitServer::new(NoopRls)
    }
}

#[tonic::async_trait]
impl RateLimitService for NoopRls {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        Ok(Response::new(Self::answer(request.get_ref())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Generator, Params, Scenario};

    #[test]
    fn answers_ok_with_one_status_per_descriptor() {
        let request = Generator::new(Scenario::Five, Params::default(), 0).next_request();
        let answer = NoopRls::answer(&request);
        assert_eq!(answer.overall_code, Code::Ok as i32);
        assert_eq!(answer.statuses.len(), 5);
        assert!(answer.statuses.iter().all(|s| s.code == Code::Ok as i32));
    }
}
