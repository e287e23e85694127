//! Plugin routes (capability `Routes`): the table built from every plugin's declarations when a
//! pipeline is made, and one request's way to a handler through it.
//!
//! Endpoint and resource routes live under `/plugins/{name}/`, management routes under
//! `/admin/plugins/{name}/`. The table is part of the pipeline snapshot: a hot swap changes a
//! plugin's routes with its version, and a request in a handler keeps the version it started on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use abi_stable::std_types::{RErr, ROk, RResult, RSome, RVec};
use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode};
use plugin_abi::ffi::{self, Cap, PluginError, RStream, RawKeyValue, RawRoute, RawRouteRequest, route_kind};

use super::request::{raw_headers, scratch};
use super::{ContextState, Hook, Pipeline, RequestState, Stop};
use crate::body::GatewayBody;
use crate::error::ApiError;

impl super::Outcome for RVec<RawRoute> {
    fn error(&self) -> Option<&PluginError> {
        None
    }
}

/// Management paths the gateway serves itself under `/admin/plugins/{name}/`.
const RESERVED_MANAGEMENT: &[&str] = &["reload"];

/// Which prefix a request came in under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    /// `/plugins/{name}/`: endpoint and resource routes.
    Plugins,
    /// `/admin/plugins/{name}/`: management routes (the caller already showed the admin token).
    Admin,
}

/// A route as a plugin declared it, in the host's own memory: what a plugin returns carries
/// the plugin's deallocator, and must not outlive its library (the table may).
#[derive(Debug, Clone)]
struct Declared {
    kind: u8,
    method: String,
    path: String,
    description: String,
}

impl Declared {
    fn of(r: RawRoute) -> Declared {
        Declared {
            kind: r.kind,
            method: r.method.into_string(),
            path: r.path.into_string(),
            description: r.description.into_string(),
        }
    }
}

/// One plugin's routes, as declared, and routers over them by method.
struct PluginRoutes {
    /// Index into `Pipeline::routes`.
    hook: usize,
    declared: Vec<Declared>,
    plugins: Methods,
    admin: Methods,
}

/// Routers by method; `*` routes in their own.
#[derive(Default)]
struct Methods {
    by_method: Vec<(String, matchit::Router<usize>)>,
    any: matchit::Router<usize>,
}

impl Methods {
    fn insert(&mut self, method: &str, path: &str, index: usize) -> Result<(), matchit::InsertError> {
        if method == "*" {
            return self.any.insert(path, index);
        }
        let router = match self.by_method.iter_mut().position(|(m, _)| m == method) {
            Some(i) => &mut self.by_method[i].1,
            None => {
                self.by_method.push((method.to_owned(), matchit::Router::new()));
                &mut self.by_method.last_mut().expect("just pushed").1
            }
        };
        router.insert(path, index)
    }

    /// The route for `method` at `path` (the method's own first, then `*`), or whether the path
    /// exists for some other method (for a 405).
    fn find<'p>(&self, method: &str, path: &'p str) -> Found<'_, 'p> {
        let own = self.by_method.iter().find(|(m, _)| m == method).and_then(|(_, r)| r.at(path).ok());
        if let Some(m) = own.or_else(|| self.any.at(path).ok()) {
            return Found::Route(*m.value, m.params);
        }
        let allowed: Vec<&str> =
            self.by_method.iter().filter(|(_, r)| r.at(path).is_ok()).map(|(m, _)| m.as_str()).collect();
        if allowed.is_empty() { Found::NoPath } else { Found::OtherMethods(allowed) }
    }
}

enum Found<'r, 'p> {
    Route(usize, matchit::Params<'r, 'p>),
    OtherMethods(Vec<&'r str>),
    NoPath,
}

/// Every plugin's routes in one pipeline.
#[derive(Default)]
pub struct RouteTable {
    plugins: HashMap<String, PluginRoutes>,
    /// Declarations a load must refuse, each naming the plugin and both routes.
    errors: Vec<String>,
}

/// `/` + the declared path, as the routers hold it.
fn router_path(path: &str) -> String {
    format!("/{}", path.trim_start_matches('/'))
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        route_kind::ENDPOINT => "endpoint",
        route_kind::MANAGEMENT => "management",
        route_kind::RESOURCE => "resource",
        _ => "unknown",
    }
}

/// Whether two declared routes could answer the same request: their prefix and methods
/// overlap and a router cannot tell their paths apart.
fn conflict(a: &Declared, b: &Declared) -> Option<String> {
    let admin = |r: &Declared| r.kind == route_kind::MANAGEMENT;
    let methods_overlap = a.method == b.method || a.method == "*" || b.method == "*";
    if admin(a) != admin(b) || !methods_overlap {
        return None;
    }
    let mut router = matchit::Router::new();
    router.insert(router_path(&a.path), ()).ok()?;
    router.insert(router_path(&b.path), ()).err().map(|e| e.to_string())
}

impl RouteTable {
    pub(super) fn build(hooks: &[Hook<ffi::RoutesV1>]) -> RouteTable {
        let mut table = RouteTable::default();
        for (hook_index, hook) in hooks.iter().enumerate() {
            let name = hook.slot.name();
            let declared: Vec<Declared> =
                hook.invoke(ffi::RoutesV1::routes, false, |cap| cap.routes()).into_iter().map(Declared::of).collect();
            let mut routes = PluginRoutes {
                hook: hook_index,
                declared: Vec::new(),
                plugins: Methods::default(),
                admin: Methods::default(),
            };
            for (i, route) in declared.iter().enumerate() {
                let describe = |r: &Declared| format!("{} {} `{}`", kind_name(r.kind), r.method, r.path);
                if let Err(e) = check_declaration(route) {
                    table.errors.push(format!("plugin `{name}`: {} is invalid: {e}", describe(route)));
                    continue;
                }
                if let Some(earlier) = declared[..i].iter().find(|r| conflict(r, route).is_some()) {
                    table.errors.push(format!(
                        "plugin `{name}`: {} conflicts with its {}: expected every request to match one route at most",
                        describe(route),
                        describe(earlier)
                    ));
                    continue;
                }
                let first = route.path.split('/').find(|s| !s.is_empty()).unwrap_or("");
                if route.kind == route_kind::MANAGEMENT && RESERVED_MANAGEMENT.contains(&first) {
                    table.errors.push(format!(
                        "plugin `{name}`: {} conflicts with the gateway's own `/admin/plugins/{name}/{first}`",
                        describe(route)
                    ));
                    continue;
                }
                let methods =
                    if route.kind == route_kind::MANAGEMENT { &mut routes.admin } else { &mut routes.plugins };
                if let Err(e) = methods.insert(&route.method, &router_path(&route.path), i) {
                    table.errors.push(format!("plugin `{name}`: {} is invalid: {e}", describe(route)));
                }
            }
            routes.declared = declared;
            table.plugins.insert(name.to_owned(), routes);
        }
        table
    }

    /// What a load must refuse: invalid or conflicting declarations.
    pub fn errors(&self) -> &[String] {
        &self.errors
    }

    /// Every plugin's declared routes, for the admin API: (plugin, kind, method, full path,
    /// description).
    pub fn list(&self) -> Vec<serde_json::Value> {
        let mut names: Vec<&String> = self.plugins.keys().collect();
        names.sort();
        names
            .into_iter()
            .flat_map(|name| {
                self.plugins[name].declared.iter().map(move |r| {
                    let prefix = if r.kind == route_kind::MANAGEMENT { "/admin/plugins" } else { "/plugins" };
                    serde_json::json!({
                        "plugin": name,
                        "kind": kind_name(r.kind),
                        "method": r.method,
                        "path": format!("{prefix}/{name}{}", router_path(&r.path)),
                        "description": r.description,
                    })
                })
            })
            .collect()
    }
}

/// A declaration the gateway can serve: a method it knows (or `*`), a kind it knows.
fn check_declaration(r: &Declared) -> Result<(), String> {
    if r.kind > route_kind::RESOURCE {
        return Err(format!("kind {}: expected endpoint (0), management (1) or resource (2)", r.kind));
    }
    if r.method != "*" && Method::from_bytes(r.method.as_bytes()).is_err() {
        return Err(format!("method {:?}: expected an HTTP method or `*`", r.method));
    }
    Ok(())
}

/// What a plugin route request needs besides the pipeline.
pub struct RouteEnv {
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
    /// Bounds the handler's answer (a stream's chunks are not bounded: an SSE endpoint may be
    /// quiet for long).
    pub answer_timeout: Duration,
    pub request_id: String,
    pub peer: SocketAddr,
}

/// `path` split into the plugin's name and the path under it (`""` for the plugin's root).
fn split_plugin(path: &str, prefix: Prefix) -> Option<(&str, &str)> {
    let rest = path.strip_prefix(match prefix {
        Prefix::Plugins => "/plugins/",
        Prefix::Admin => "/admin/plugins/",
    })?;
    Some(rest.split_once('/').map_or((rest, ""), |(name, rel)| (name, rel)))
}

impl Pipeline {
    /// Serves a request to a plugin route: finds the plugin and the route, reads the body,
    /// runs the auth plugins first for an endpoint whose plugin wants them, calls the handler.
    pub async fn serve_route(
        self: &Arc<Self>,
        env: RouteEnv,
        prefix: Prefix,
        req: http::Request<hyper::body::Incoming>,
    ) -> Response<GatewayBody> {
        match self.route_call(&env, prefix, req).await {
            Ok(resp) => resp,
            Err(e) => crate::body::error_response(&e),
        }
    }

    async fn route_call(
        self: &Arc<Self>,
        env: &RouteEnv,
        prefix: Prefix,
        req: http::Request<hyper::body::Incoming>,
    ) -> Result<Response<GatewayBody>, ApiError> {
        let path = req.uri().path().to_owned();
        let not_found = || ApiError::not_found(&path);
        let (name, relative) = split_plugin(&path, prefix).ok_or_else(not_found)?;
        let routes = self.route_table.plugins.get(name).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "unknown_plugin_route",
                format!("no loaded plugin instance `{name}` serves routes"),
            )
        })?;
        let methods = if prefix == Prefix::Admin { &routes.admin } else { &routes.plugins };
        let lookup = router_path(relative);
        let (index, params) = match methods.find(req.method().as_str(), &lookup) {
            Found::Route(index, params) => (index, params),
            Found::OtherMethods(allowed) => {
                return Err(ApiError::method_not_allowed(req.method(), &path, &allowed.join(", ")));
            }
            Found::NoPath => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    "unknown_plugin_route",
                    format!("plugin `{name}` has no route `{lookup}` here"),
                ));
            }
        };
        let params: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        let hook = &self.routes[routes.hook];
        let declared = &routes.declared[index];
        let (parts, body) = req.into_parts();
        let body = crate::pipeline::flow::read_body(body, env.max_body_bytes, env.body_timeout, &parts.headers).await?;
        let ctx = ContextState {
            request_id: env.request_id.clone(),
            client_ip: env.peer.ip().to_string(),
            ..ContextState::default()
        };
        let mut state = RequestState::new(parts.method, parts.uri, parts.headers, body, ctx);
        if declared.kind == route_kind::ENDPOINT && hook.slot.plugin.endpoint_auth && self.requires_auth() {
            let credential = crate::pipeline::flow::credential(&state.headers).to_owned();
            match self.auth(&mut state, &credential) {
                Ok(()) => {}
                Err(Stop::Error(e)) => return Err(e),
                Err(Stop::Respond(resp)) => return Ok(crate::pipeline::flow::into_response(resp, &env.request_id)),
            }
        }
        let Some(probe) = hook.quarantine_check()? else {
            return Err(ApiError::plugin_quarantined(name));
        };
        let future = {
            let metadata = state.ctx.raw_metadata();
            let headers = raw_headers(&state.headers, scratch());
            let params: Vec<RawKeyValue<'_>> =
                params.iter().map(|(k, v)| RawKeyValue { key: k.as_str().into(), value: v.as_str().into() }).collect();
            let raw = RawRouteRequest {
                ctx: state.ctx.raw(&metadata),
                route: index as u32,
                method: state.method.as_str().into(),
                path: state.uri.path().into(),
                relative_path: relative.into(),
                params: params.as_slice().into(),
                query: state.uri.query().unwrap_or("").into(),
                headers: headers.as_slice().into(),
                body: state.body.as_ref().into(),
            };
            let limit = env.answer_timeout;
            let handling = hook.cap.handle(&raw);
            async move {
                tokio::time::timeout(limit, handling).await.unwrap_or_else(|_| {
                    RErr(PluginError {
                        code: ffi::code::INTERNAL,
                        message: format!("did not answer within {} ms (limits.executor_timeout_ms)", limit.as_millis())
                            .into(),
                    })
                })
            }
        };
        let reply = match hook.invoke_async(ffi::RoutesV1::handle, probe, future).await {
            ROk(reply) => reply,
            RErr(e) => {
                tracing::error!(plugin = name, request_id = %env.request_id, code = e.code, "route handler failed: {}", e.message);
                return Err(ApiError::plugin_failed(name, "route", e.code, &env.request_id));
            }
        };
        let status = StatusCode::from_u16(reply.status).ok().filter(|_| (200..600).contains(&reply.status)).ok_or_else(|| {
            tracing::error!(plugin = name, request_id = %env.request_id, status = reply.status, "route answered with an invalid status");
            ApiError::plugin_failed(name, "route", ffi::code::INTERNAL, &env.request_id)
        })?;
        let headers: HeaderMap =
            super::executor::header_map(reply.headers.iter().map(|h| (h.name.as_str(), h.value.as_str())));
        let first = Bytes::from(reply.body.into_vec());
        let body = match reply.stream {
            RSome(stream) => GatewayBody::Frames(Box::pin(RouteBody {
                first: (!first.is_empty()).then_some(first),
                stream: Some(stream),
                _cap: hook.cap.clone(),
                _pipeline: self.clone(),
                plugin: name.to_owned(),
            })),
            _ => GatewayBody::full(first),
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        if let Ok(v) = http::HeaderValue::from_str(&env.request_id) {
            resp.headers_mut().insert("x-request-id", v);
        }
        Ok(resp)
    }

    /// The declared routes, for the admin API.
    pub fn routes(&self) -> Vec<serde_json::Value> {
        self.route_table.list()
    }
}

/// A route's streamed body: the plugin's chunks as they come. Holds the plugin's instance (the
/// stream is its code) and the pipeline it came from.
struct RouteBody {
    first: Option<Bytes>,
    // Declared before the handles: dropped (ending the stream inside the plugin) first.
    stream: Option<RStream<RResult<RVec<u8>, PluginError>>>,
    _cap: Cap<ffi::RoutesV1>,
    _pipeline: Arc<Pipeline>,
    plugin: String,
}

impl futures_util::Stream for RouteBody {
    type Item = Bytes;
    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(first));
        }
        let Some(stream) = self.stream.as_mut() else { return Poll::Ready(None) };
        match stream.poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(ROk(chunk))) => Poll::Ready(Some(Bytes::from(chunk.into_vec()))),
            Poll::Ready(Some(RErr(e))) => {
                tracing::warn!(plugin = %self.plugin, code = e.code, "route stream failed, ending it: {}", e.message);
                self.stream = None;
                Poll::Ready(None)
            }
            Poll::Ready(None) => {
                self.stream = None;
                Poll::Ready(None)
            }
        }
    }
}
