//! Routing: which handler serves which method and path, and the small endpoints (models,
//! health, metrics). Chat and token counting run in the pipeline ([`flow`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::admin::{admin, admin_check, executor_http};
use crate::app::App;
use crate::body::{GatewayBody, error_response, json_response};
use crate::error::ApiError;
use crate::metrics::Gauge;
use crate::pipeline::{Prefix, RouteEnv, flow};

pub async fn handle(app: &Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> Response<GatewayBody> {
    let started = Instant::now();
    let _inflight = Gauge::new(&app.metrics.inflight_requests);
    let path = req.uri().path();
    let resp = match (req.method(), path) {
        (&Method::POST, "/v1/chat/completions") => {
            flow::chat(&app.env(), app.pipeline.load_full(), app.request_id(), req, peer, started).await
        }
        (&Method::POST, "/v1/count_tokens") => {
            flow::count_tokens(&app.env(), app.pipeline.load_full(), app.request_id(), req, peer, started).await
        }
        (&Method::GET, "/v1/models") => models(app),
        (&Method::GET, "/healthz") => json_response(StatusCode::OK, Bytes::from_static(b"{\"status\":\"ok\"}")),
        (&Method::GET, "/metrics") => {
            let mut text = app.metrics.render();
            let pipeline = app.pipeline.load();
            let pools: Vec<_> = pipeline.upstreams.upstreams.iter().filter_map(|u| u.pool()).collect();
            crate::upstream::credentials::render(&pools, &mut text);
            let mut resp = Response::new(GatewayBody::full(text));
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
            resp
        }
        (m, "/v1/chat/completions" | "/v1/count_tokens") => {
            error_response(&ApiError::method_not_allowed(m, path, "POST"))
        }
        (_, p) if p.starts_with("/admin/executors/") && p.contains("/http/") => executor_http(app, req).await,
        (_, p) if p.starts_with("/admin/upstreams/") => crate::admin::credentials(app, req).await,
        (_, p) if p == "/ui" || p.starts_with("/ui/") => crate::ui::serve(app, req).await,
        (_, p) if p.starts_with("/plugins/") => plugin_route(app, Prefix::Plugins, req, peer).await,
        (_, p) if is_management_route(p) => match admin_check(app, req.method(), req.headers()) {
            Ok(()) => plugin_route(app, Prefix::Admin, req, peer).await,
            Err(denied) => denied,
        },
        (m, "/v1/models" | "/healthz" | "/metrics") => error_response(&ApiError::method_not_allowed(m, path, "GET")),
        (m, p) if p.starts_with("/admin/") => admin(app, m, p, req.headers()).await,
        _ => error_response(&ApiError::not_found(path)),
    };
    app.metrics.count_request(resp.status().as_u16(), started.elapsed());
    resp
}

/// `/admin/plugins/{name}/PATH` for a PATH the gateway does not serve itself: a plugin's
/// management route.
fn is_management_route(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/admin/plugins/") else { return false };
    rest.split_once('/').is_some_and(|(_, sub)| !sub.is_empty() && sub != "reload")
}

async fn plugin_route(
    app: &Arc<App>,
    prefix: Prefix,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<GatewayBody> {
    let limits = &app.config.limits;
    let env = RouteEnv {
        max_body_bytes: limits.max_body_bytes,
        body_timeout: Duration::from_millis(limits.body_timeout_ms),
        answer_timeout: Duration::from_millis(limits.executor_timeout_ms),
        request_id: app.request_id(),
        peer,
    };
    app.pipeline.load_full().serve_route(env, prefix, req).await
}

fn models(app: &App) -> Response<GatewayBody> {
    let pipeline = app.pipeline.load();
    let upstreams = &*pipeline.upstreams;
    let data: Vec<serde_json::Value> = upstreams
        .models
        .iter()
        .map(|m| {
            let owner = upstreams.routes.get(m).map_or("", |r| upstreams.owner(r));
            serde_json::json!({ "id": m, "object": "model", "created": 0, "owned_by": owner })
        })
        .collect();
    json_response(StatusCode::OK, Bytes::from(serde_json::json!({ "object": "list", "data": data }).to_string()))
}
