//! The read-only admin endpoint (SPEC §8) on `admin.listen`: `/live`, `/ready`, `/status`,
//! `/metrics`. Every handler only reads [`Sources`]; none can change anything, so exposing it
//! on a management network is safe. Mutations go through the control socket.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::Sources;
use crate::metrics::metrics;
use crate::shutdown::Shutdown;

/// Binds `addr` now (so a taken port fails the start with a clear error) and returns the
/// server future, which runs until `stop` turns true.
pub(crate) async fn bind(
    addr: SocketAddr,
    sources: Sources,
    mut stop: Shutdown,
) -> std::io::Result<impl std::future::Future<Output = ()> + Send> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = router(sources);
    Ok(async move {
        let shutdown = async move {
            let _ = stop.wait().await;
        };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %e, "admin endpoint stopped");
        }
    })
}

pub(crate) fn router(sources: Sources) -> Router {
    Router::new()
        .route("/live", get(|| async { "live\n" }))
        .route("/ready", get(ready))
        .route("/status", get(status))
        .route("/metrics", get(metrics_text))
        .with_state(sources)
}

async fn ready(State(sources): State<Sources>) -> Response {
    if sources.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let zk = sources.zk.borrow().clone();
        let why = format!("not ready: state {}, zookeeper {}\n", sources.lifecycle().as_str(), zk.state);
        (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
    }
}

async fn status(State(sources): State<Sources>) -> Response {
    axum::Json(sources.status()).into_response()
}

async fn metrics_text(State(sources): State<Sources>) -> Response {
    sources.refresh_metrics();
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], metrics().encode())
        .into_response()
}
