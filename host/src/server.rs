//! Connections: accepting, limits (connection cap, header and write timeouts), and graceful
//! draining. Each request goes to [`routes::handle`].

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use http::StatusCode;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;

use crate::app::App;
use crate::error::ApiError;
use crate::metrics::Gauge;
use crate::routes::handle;

/// Serves `listener` until `shutdown` resolves, then lets open connections finish (up to 10 s).
/// At most `limits.max_connections` connections are served at once, and a write to a client
/// that stays blocked for `limits.write_timeout_ms` cuts its connection.
pub async fn serve(app: Arc<App>, listener: TcpListener, shutdown: impl std::future::Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let limits = &app.config.limits;
    // hyper refuses heads beyond its buffer outright; our own, friendlier check runs below that.
    let max_buf = (limits.max_header_bytes * 4).max(8192);
    let header_timeout = Duration::from_millis(limits.header_timeout_ms);
    let write_timeout = Duration::from_millis(limits.write_timeout_ms);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let max_connections = limits.max_connections;
    let refusing = Arc::new(Semaphore::new(REFUSALS_ANSWERED));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            app.metrics.connections_refused.fetch_add(1, Relaxed);
            // A few refusals are answered with a 503; beyond that, a flood is simply closed.
            if let Ok(answering) = refusing.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    refuse(stream, max_connections).await;
                    drop(answering);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let mut io = TimeoutStream::new(stream);
        io.set_write_timeout(Some(write_timeout));
        let app = app.clone();
        let svc_app = app.clone();
        let service = service_fn(move |req| {
            let app = svc_app.clone();
            async move { Ok::<_, Infallible>(handle(&app, req, peer).await) }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .max_buf_size(max_buf)
            .serve_connection(TokioIo::new(Box::pin(io)), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _slot = slot;
            let _open = Gauge::new(&app.metrics.open_connections);
            if let Err(e) = conn.await {
                if is_timeout(&e) {
                    app.metrics.write_timeouts.fetch_add(1, Relaxed);
                    tracing::info!(%peer, "client stopped reading: connection cut after {} ms", write_timeout.as_millis());
                } else {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after 10 s; stopping anyway");
    }
}

/// Connections over the cap that get a 503 at once; more are closed without an answer.
const REFUSALS_ANSWERED: usize = 64;

/// Whether `e` (or what caused it) is an I/O timeout.
fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Answers a connection over the cap with a 503 and closes it, without reading its request.
async fn refuse(mut stream: tokio::net::TcpStream, cap: usize) {
    use tokio::io::AsyncWriteExt;
    let body = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "too_many_connections",
        format!("the gateway serves at most {cap} connections at once; try again shortly"),
    )
    .body();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\nretry-after: 1\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}
