//! The HTTP side: health check, `/json`, the config dump and Prometheus metrics.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::health::Health;
use super::json::{JsonRequest, response_json};
use crate::limiter::{Code, DecideError, Limiter};
use crate::telemetry::Metrics;

/// Largest `/json` body accepted.
const MAX_JSON_BODY: usize = 1 << 20;

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct HttpState {
    pub limiter: Arc<Limiter>,
    pub health: Health,
    pub metrics: Metrics,
}

/// The HTTP routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthcheck", get(get_healthcheck))
        .route(
            "/json",
            post(post_json).layer(DefaultBodyLimit::max(MAX_JSON_BODY)),
        )
        .route("/rlconfig", get(get_rlconfig))
        .route("/metrics", get(get_metrics))
        .with_state(state)
}

/// `OK` with 200 when healthy, an empty 500 otherwise (as the reference answers).
async fn get_healthcheck(State(state): State<HttpState>) -> Response {
    if state.health.is_healthy() {
        (StatusCode::OK, "OK").into_response()
    } else {
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    }
}

/// A `ShouldRateLimit` call in proto3 JSON: 200 OK, 429 over limit, 400 for bad input or a
/// request the service rejects, 503 when the counter store is unavailable.
async fn post_json(State(state): State<HttpState>, body: Bytes) -> Response {
    let bad_request =
        |why: String| (StatusCode::BAD_REQUEST, format!("Bad Request: {why}\n")).into_response();
    let parsed: JsonRequest = match serde_json::from_slice(&body) {
        Ok(parsed) => parsed,
        Err(e) => return bad_request(format!("invalid RateLimitRequest JSON: {e}")),
    };
    let request = match parsed.to_request() {
        Ok(request) => request,
        Err(why) => return bad_request(why),
    };
    match state.limiter.decide(&request).await {
        Ok(decision) => {
            let status = match decision.overall_code {
                Code::Ok => StatusCode::OK,
                Code::OverLimit => StatusCode::TOO_MANY_REQUESTS,
            };
            (status, axum::Json(response_json(&decision))).into_response()
        }
        Err(error @ DecideError::Store(_)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Service Unavailable: {error}\n"),
        )
            .into_response(),
        Err(error) => {
            state.metrics.service.service_error.increment(1);
            bad_request(error.to_string())
        }
    }
}

/// The loaded rules, one line per limited node.
async fn get_rlconfig(State(state): State<HttpState>) -> String {
    state
        .limiter
        .rules()
        .load()
        .as_ref()
        .map(|rules| rules.dump())
        .unwrap_or_default()
}

async fn get_metrics(State(state): State<HttpState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
