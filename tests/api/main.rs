//! The integration suite: whole apps on port 0, called over gRPC and HTTP.

mod concurrency;
mod extensions;
mod helpers;
mod http;
mod reload;
mod rls;
