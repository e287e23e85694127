//! The admin API, behind the admin token: plugin status and reloads, executors and their
//! passthrough.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::app::App;
use crate::body::{GatewayBody, error_response, json_response};
use crate::error::ApiError;
use crate::pipeline::{ContextState, RequestState};
use crate::reload::ReloadError;

/// The admin UI's session cookie.
pub const SESSION_COOKIE: &str = "gateway_session";

/// The session value for admin token `token`: derived from it (the cookie never holds the token
/// itself), valid as long as the token is.
pub fn session_for(token: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("llm-gateway admin session\0{token}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The value of cookie `name` in `headers`.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether `headers` carry the admin token (`Authorization: Bearer`, `x-admin-token`) or the
/// admin UI's session cookie. A request that only has the cookie and changes something must
/// also send `x-gateway-ui: 1`, which a page of another site cannot add (no CORS here): the
/// session cannot be used from elsewhere.
pub fn is_admin(app: &App, method: &Method, headers: &HeaderMap) -> bool {
    let Some(token) = &app.admin_token else { return false };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-admin-token").and_then(|v| v.to_str().ok()));
    if let Some(given) = given {
        return constant_time_eq(token.as_bytes(), given.as_bytes());
    }
    let Some(session) = cookie(headers, SESSION_COOKIE) else { return false };
    let safe = matches!(*method, Method::GET | Method::HEAD);
    (safe || headers.get("x-gateway-ui").is_some_and(|v| v == "1"))
        && constant_time_eq(session_for(token).as_bytes(), session.as_bytes())
}

/// `Err` with the 401 to send unless `headers` carry the admin token (or the UI's session).
pub(crate) fn admin_check(app: &App, method: &Method, headers: &HeaderMap) -> Result<(), Response<GatewayBody>> {
    if !is_admin(app, method, headers) {
        let e = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "admin_unauthorized",
            if app.admin_token.is_some() {
                "admin endpoints need `Authorization: Bearer <admin token>`"
            } else {
                "admin endpoints are disabled: set [admin] token or GATEWAY_ADMIN_TOKEN"
            },
        );
        return Err(error_response(&e));
    }
    Ok(())
}

/// `GET /admin/plugins`, `GET /admin/routes`, `GET /admin/executors`, `POST /admin/plugins/{name}/reload`,
/// `POST /admin/reload`.
pub(crate) async fn admin(app: &Arc<App>, method: &Method, path: &str, headers: &HeaderMap) -> Response<GatewayBody> {
    if let Err(denied) = admin_check(app, method, headers) {
        return denied;
    }
    let json = |status, value: serde_json::Value| json_response(status, Bytes::from(value.to_string()));
    let segments: Vec<&str> = path.trim_start_matches("/admin/").split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::GET, ["plugins"]) => {
            json(StatusCode::OK, serde_json::json!({ "plugins": app.registry.status(&app.live()) }))
        }
        (&Method::GET, ["upstreams"]) => json(StatusCode::OK, upstreams(app)),
        (&Method::GET, ["routes"]) => {
            json(StatusCode::OK, serde_json::json!({ "routes": app.pipeline.load().routes() }))
        }
        (&Method::GET, ["executors"]) => {
            let pipeline = app.pipeline.load();
            let executors: Vec<serde_json::Value> = pipeline
                .executor_names()
                .map(|name| match pipeline.describe_executor(name) {
                    Ok(info) => serde_json::json!({ "name": name, "executor": info }),
                    Err(e) => serde_json::json!({ "name": name, "error": e }),
                })
                .collect();
            json(StatusCode::OK, serde_json::json!({ "executors": executors }))
        }
        (&Method::POST, ["reload"]) => {
            let worker = app.clone();
            match tokio::task::spawn_blocking(move || worker.registry.apply(&worker.live())).await {
                Ok(Ok(applied)) => json(StatusCode::OK, serde_json::to_value(applied).unwrap_or_default()),
                Ok(Err(e)) => error_response(&ApiError::new(
                    if matches!(e, ReloadError::ShuttingDown) {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::UNPROCESSABLE_ENTITY
                    },
                    "invalid_request_error",
                    "reload_failed",
                    format!("{e}; nothing changed, the running config keeps serving"),
                )),
                Err(e) => error_response(&ApiError::upstream(format!("reload task failed: {e}"))),
            }
        }
        (&Method::POST, ["plugins", name, "reload"]) => {
            let (worker, name) = (app.clone(), (*name).to_owned());
            let result = tokio::task::spawn_blocking(move || worker.registry.reload(&worker.live(), &name)).await;
            match result {
                Ok(Ok(done)) => json(StatusCode::OK, serde_json::to_value(done).unwrap_or_default()),
                Ok(Err(e @ ReloadError::UnknownPlugin { .. })) => error_response(&ApiError::new(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    "unknown_plugin",
                    e.to_string(),
                )),
                Ok(Err(e)) => error_response(&ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_request_error",
                    "reload_failed",
                    format!("{e}; the running version keeps serving"),
                )),
                Err(e) => error_response(&ApiError::upstream(format!("reload task failed: {e}"))),
            }
        }
        _ => error_response(&ApiError::not_found(path)),
    }
}

/// `ANY /admin/executors/{name}/http/{path}`: the request, minus that prefix, passed through
/// to executor `name`'s `http_request` (which calls its provider with its credentials).
pub(crate) async fn executor_http(app: &Arc<App>, req: Request<Incoming>) -> Response<GatewayBody> {
    if let Err(denied) = admin_check(app, req.method(), req.headers()) {
        return denied;
    }
    let rest = req.uri().path().trim_start_matches("/admin/executors/");
    let Some((name, path)) = rest.split_once("/http") else {
        return error_response(&ApiError::not_found(req.uri().path()));
    };
    let name = name.to_owned();
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{}?{q}", if path.is_empty() { "/" } else { path }),
        None => if path.is_empty() { "/" } else { path }.to_owned(),
    };
    let Ok(uri) = path_and_query.parse::<http::Uri>() else {
        return error_response(&ApiError::invalid_request("invalid_path", "expected a valid path after /http"));
    };
    let limits = &app.config.limits;
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, limits.max_body_bytes).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return error_response(&ApiError::too_large(limits.max_body_bytes, None)),
    };
    let ctx = ContextState { request_id: app.request_id(), ..ContextState::default() };
    let state = RequestState::new(parts.method, uri, parts.headers, body, ctx);
    let pipeline = app.pipeline.load_full();
    match pipeline.executor_http(&name, &state, Duration::from_millis(app.config.limits.executor_timeout_ms)).await {
        Ok((status, headers, body)) => {
            let mut resp = Response::new(GatewayBody::full(body));
            *resp.status_mut() = status;
            *resp.headers_mut() = headers;
            resp
        }
        Err(e) => error_response(&e),
    }
}

/// `GET /admin/upstreams/{name}/credentials`: the pool's keys (ids, state, counts; never a
/// key); `PUT /admin/upstreams/{name}/credentials/{id}` with `{"api_key": "...", "priority": 0}`
/// stores a key (in the host's KV store: it outlives restarts) and adds it to the running pool,
/// or replaces it, its state afresh; `DELETE` of the same path removes a stored key.
pub(crate) async fn credentials(app: &Arc<App>, req: Request<Incoming>) -> Response<GatewayBody> {
    use crate::upstream::credentials::{Stored, valid_id};
    if let Err(denied) = admin_check(app, req.method(), req.headers()) {
        return denied;
    }
    let json = |status, value: serde_json::Value| json_response(status, Bytes::from(value.to_string()));
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches("/admin/upstreams/").split('/').collect();
    let (name, id) = match segments.as_slice() {
        [name, "credentials"] => (*name, None),
        [name, "credentials", id] => (*name, Some(*id)),
        _ => return error_response(&ApiError::not_found(&path)),
    };
    let pipeline = app.pipeline.load_full();
    let Some(upstream) = pipeline.upstreams.upstreams.iter().find(|u| u.name() == name) else {
        return error_response(&ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "unknown_upstream",
            format!(
                "no upstream `{name}`; expected one of {:?}",
                pipeline.upstreams.upstreams.iter().map(|u| u.name()).collect::<Vec<_>>()
            ),
        ));
    };
    let Some(pool) = upstream.pool() else {
        return error_response(&ApiError::invalid_request(
            "no_credentials",
            format!(
                "upstream `{name}` is of kind `{}`, which takes no credentials; expected an `openai` upstream",
                upstream.kind()
            ),
        ));
    };
    let refused =
        |status, code, message: String| error_response(&ApiError::new(status, "invalid_request_error", code, message));
    let kv = &*app.services.kv;
    match (req.method().clone(), id) {
        (Method::GET, None) => json(StatusCode::OK, pool.status()),
        (Method::PUT, Some(id)) => {
            if !valid_id(id) {
                return refused(
                    StatusCode::BAD_REQUEST,
                    "invalid_credential",
                    format!("credential id {id:?}: expected 1 to 64 ASCII letters, digits, `-`, `_` or `.`"),
                );
            }
            let body = match Limited::new(req.into_body(), 64 << 10).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return error_response(&ApiError::too_large(64 << 10, None)),
            };
            let stored: Stored = match serde_json::from_slice(&body) {
                Ok(s) => s,
                Err(e) => {
                    return refused(
                        StatusCode::BAD_REQUEST,
                        "invalid_credential",
                        format!("expected {{\"api_key\": \"...\", \"priority\": 0}}, found: {e}"),
                    );
                }
            };
            match pool.store(kv, id, &stored) {
                Ok(()) => json(StatusCode::OK, pool.status()),
                Err(e) => refused(StatusCode::CONFLICT, "credential_refused", e),
            }
        }
        (Method::DELETE, Some(id)) => match pool.remove(kv, id) {
            Ok(true) => json(StatusCode::OK, pool.status()),
            Ok(false) => refused(
                StatusCode::NOT_FOUND,
                "unknown_credential",
                format!("upstream `{name}` has no credential `{id}`"),
            ),
            Err(e) => refused(StatusCode::CONFLICT, "credential_refused", e),
        },
        (m, None) => error_response(&ApiError::method_not_allowed(&m, &path, "GET")),
        (m, Some(_)) => error_response(&ApiError::method_not_allowed(&m, &path, "PUT or DELETE")),
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `GET /admin/upstreams`: the upstreams and the models routed to them (or to executors).
fn upstreams(app: &App) -> serde_json::Value {
    let pipeline = app.pipeline.load();
    let u = &*pipeline.upstreams;
    let upstreams: Vec<serde_json::Value> = u
        .upstreams
        .iter()
        .map(|up| {
            let mut entry = serde_json::json!({ "name": up.name(), "kind": up.kind(), "base_url": up.base_url() });
            if let Some(pool) = up.pool() {
                entry["credentials"] = pool.status();
            }
            entry
        })
        .collect();
    let models: Vec<serde_json::Value> = u
        .models
        .iter()
        .filter_map(|m| u.routes.get(m))
        .map(|r| {
            serde_json::json!({
                "model": r.model,
                "upstream_model": r.upstream_model,
                "served_by": u.owner(r),
                "kind": u.owner_kind(r),
            })
        })
        .collect();
    serde_json::json!({ "upstreams": upstreams, "models": models })
}
