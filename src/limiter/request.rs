//! The limiter's own request and decision types: what Envoy asks and what we answer,
//! free of any wire format. The gRPC and HTTP edges convert to and from these.

use serde_json::{Map, Value};

use crate::rules::Unit;

/// One `ShouldRateLimit` call.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    pub domain: &'a str,
    pub descriptors: Vec<Descriptor<'a>>,
    /// The request-level addend; 0 means 1.
    pub hits_addend: u32,
}

/// One descriptor: ordered entries plus per-descriptor options.
#[derive(Debug, Clone, Default)]
pub struct Descriptor<'a> {
    pub entries: Vec<(&'a str, &'a str)>,
    /// A limit given by Envoy instead of the config's.
    pub limit: Option<LimitOverride>,
    /// A per-descriptor addend; wins over the request's, and 0 only checks.
    pub hits_addend: Option<u64>,
    /// Give the addend back instead of consuming it.
    pub is_negative_hits: bool,
}

/// A limit carried in the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitOverride {
    pub requests_per_unit: u32,
    /// `None` when the request named a unit we do not know.
    pub unit: Option<Unit>,
}

/// Whether a descriptor (or the whole call) may pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Code {
    #[default]
    Ok,
    OverLimit,
}

/// The limit a status was decided against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentLimit {
    pub requests_per_unit: u32,
    /// `None` (the wire's UNKNOWN) for a refusal that is no windowed limit, such as a
    /// quota domain's `tenant_not_active`.
    pub unit: Option<Unit>,
    pub name: Option<String>,
}

/// The answer for one descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Status {
    pub code: Code,
    pub current_limit: Option<CurrentLimit>,
    pub limit_remaining: u32,
    /// Seconds until the window resets; `None` when no limit applied.
    pub duration_until_reset: Option<u64>,
}

/// The answer for a whole call.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decision {
    pub overall_code: Code,
    /// One per request descriptor, in request order.
    pub statuses: Vec<Status>,
    pub response_headers: Vec<(String, String)>,
    pub dynamic_metadata: Option<Map<String, Value>>,
    /// A body for Envoy to answer an OVER_LIMIT call with (a quota refusal's JSON).
    pub raw_body: Option<String>,
}

/// Why a call could not be decided. These become gRPC errors, so Envoy's
/// `failure_mode_deny` chooses between failing open and closed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DecideError {
    #[error("rate limit domain must not be empty")]
    EmptyDomain,
    #[error("rate limit descriptor list must not be empty")]
    EmptyDescriptors,
    #[error("no rate limit configuration loaded")]
    NoRules,
    #[error("descriptor {index}: the request's limit override has an unknown unit")]
    UnknownOverrideUnit { index: usize },
    #[error("descriptor {index}: the estimate '{value}' is not a whole number of tokens")]
    InvalidEstimate { index: usize, value: String },
    #[error("the usage of request {request_id:?} cannot be recorded: {field} {message}")]
    InvalidUsage {
        request_id: String,
        field: String,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}
