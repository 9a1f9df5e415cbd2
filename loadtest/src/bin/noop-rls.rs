//! `noop-rls`: a RateLimitService that answers OK at once, on tonic's default server like
//! tollgate's, as the baseline. Accepted connections get TCP_NODELAY (the transport at its
//! best); `--nagle` leaves Nagle's algorithm on instead.

use std::net::SocketAddr;

use clap::Parser;
use loadtest::noop::NoopRls;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

// The same allocator as tollgate, so the baseline stays the ceiling of the same stack.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A no-op Envoy RateLimitService: every call is answered OK at once.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Where to listen for gRPC.
    #[arg(long, default_value = "127.0.0.1:8081")]
    addr: SocketAddr,
    /// Leave Nagle's algorithm on for accepted connections (no TCP_NODELAY).
    #[arg(long)]
    nagle: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let listener = TcpListener::bind(cli.addr).await?;
    eprintln!("noop-rls serving on {}", listener.local_addr()?);
    tonic::transport::Server::builder()
        .add_service(NoopRls::service())
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(!cli.nagle)),
            shutdown_signal(),
        )
        .await?;
    Ok(())
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let terminate = async {
        match term.as_mut() {
            Some(signal) => {
                signal.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
