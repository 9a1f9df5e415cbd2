//! The integration suite: whole apps on port 0, called over gRPC and HTTP.

mod concurrency;
mod helpers;
mod http;
mod reload;
mod rls;
