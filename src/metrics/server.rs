//! The HTTP endpoints an SRE scrapes and probes: `/metrics` (Prometheus text format),
//! `/healthz` (the process is up) and `/readyz` (the pipeline has started and nothing it needs is
//! failing: see [`Health`]; the body says why not).

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use super::PipelineMetrics;
use super::health::Health;

/// Shared with the server: the metrics and the pipeline's health.
#[derive(Clone)]
pub struct ServerState {
    pub metrics: PipelineMetrics,
    pub health: Health,
}

async fn metrics(State(s): State<ServerState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn ready(State(s): State<ServerState>) -> impl IntoResponse {
    match s.health.report() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

/// Binds `addr` and serves until the task is dropped; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    state: ServerState,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics server stopped: {e}");
        }
    });
    Ok((bound, task))
}
