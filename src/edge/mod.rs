//! The edges: gRPC for Envoy, HTTP for people and probes. They convert wire formats to
//! the limiter's types and back, and hold no decision logic.

pub mod grpc;
pub mod health;
pub mod http;
pub mod json;
pub mod rls_server;
