//! The `Routes` capability as plugin authors implement it: HTTP routes of the plugin's own, under
//! the gateway's prefixes (Tyk AI Studio's `CustomEndpointHandler`, CLIProxyAPI's
//! `ManagementAPI` with its resource routes).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use abi_stable::std_types::{RErr, RNone, ROk, RResult, RSome, RVec};

use crate::ffi;
use crate::sdk::stream::Unfold;
use crate::sdk::{Plugin, PluginError};

/// Where a route is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// `/plugins/{name}/PATH`. The gateway's auth plugins run first (the caller's app and user
    /// reach the handler), unless the operator sets `endpoint_auth = false` for the plugin.
    Endpoint,
    /// `/admin/plugins/{name}/PATH`, behind the gateway's admin token.
    Management,
    /// `/plugins/{name}/PATH`, public: no auth plugin runs, whatever the operator set.
    Resource,
}

/// A route the plugin declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub kind: RouteKind,
    /// `GET`, `POST`, ... or `*` for every method.
    pub method: String,
    /// Under the kind's prefix: literal segments, `{name}` for one segment, and a last
    /// `{*name}` for the rest of the path (`"hooks/{source}"`, `"files/{*path}"`).
    pub path: String,
    pub description: String,
}

impl Route {
    fn new(kind: RouteKind, method: &str, path: &str) -> Self {
        Route { kind, method: method.to_owned(), path: path.to_owned(), description: String::new() }
    }

    /// A route under `/plugins/{name}/`.
    pub fn endpoint(method: &str, path: &str) -> Self {
        Route::new(RouteKind::Endpoint, method, path)
    }

    /// A route under `/admin/plugins/{name}/`, behind the admin token.
    pub fn management(method: &str, path: &str) -> Self {
        Route::new(RouteKind::Management, method, path)
    }

    /// A public route under `/plugins/{name}/`.
    pub fn resource(method: &str, path: &str) -> Self {
        Route::new(RouteKind::Resource, method, path)
    }

    /// What the route does, for the admin API.
    pub fn describe(mut self, description: &str) -> Self {
        self.description = description.to_owned();
        self
    }
}

/// One request to a route. Owned: the handler's future outlives the call that starts it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteRequest {
    /// The index of the matched route in what [`Routes::routes`] returned.
    pub route: usize,
    pub method: String,
    /// The whole path, prefix included.
    pub path: String,
    /// The path under the prefix.
    pub relative_path: String,
    /// The route's `{name}` and `{*name}` parts.
    pub params: Vec<(String, String)>,
    /// The query string, without `?`.
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub request_id: String,
    /// The caller's app and user, when an auth plugin identified them (endpoints with auth).
    pub app_id: String,
    pub user_id: String,
    pub client_ip: String,
}

impl RouteRequest {
    pub(crate) fn from_raw(r: &ffi::RawRouteRequest<'_>) -> Self {
        RouteRequest {
            route: r.route as usize,
            method: r.method.as_str().to_owned(),
            path: r.path.as_str().to_owned(),
            relative_path: r.relative_path.as_str().to_owned(),
            params: r.params.iter().map(|kv| (kv.key.as_str().to_owned(), kv.value.as_str().to_owned())).collect(),
            query: r.query.as_str().to_owned(),
            headers: r
                .headers
                .iter()
                .map(|h| (h.name.as_str().to_owned(), String::from_utf8_lossy(h.value.as_slice()).into_owned()))
                .collect(),
            body: r.body.to_vec(),
            request_id: r.ctx.request_id.as_str().to_owned(),
            app_id: r.ctx.app_id.as_str().to_owned(),
            user_id: r.ctx.user_id.as_str().to_owned(),
            client_ip: r.ctx.client_ip.as_str().to_owned(),
        }
    }

    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The route parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The first query parameter `name`, as it appears in the query (not percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v)
    }
}

/// A route's answer.
pub struct RouteResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Body chunks sent as they come, after `body` (for SSE, each chunk one or more framed
    /// events).
    pub stream: Option<BodyStream>,
}

impl RouteResponse {
    pub fn new(status: u16) -> Self {
        RouteResponse { status, headers: Vec::new(), body: Vec::new(), stream: None }
    }

    /// A response with a JSON body.
    pub fn json(status: u16, body: &serde_json::Value) -> Self {
        RouteResponse::new(status).header("content-type", "application/json").body(body.to_string())
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Streams `stream` after the body; the client receives each chunk as it is produced.
    pub fn stream(mut self, stream: BodyStream) -> Self {
        self.stream = Some(stream);
        self
    }
}

impl std::fmt::Debug for RouteResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteResponse")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &String::from_utf8_lossy(&self.body))
            .field("stream", &self.stream.is_some())
            .finish()
    }
}

/// Body chunks of a streamed route response; an error ends the stream (the client sees the
/// connection close).
pub struct BodyStream(Pin<Box<dyn ffi::ItemSource<Item = Result<Vec<u8>, PluginError>>>>);

impl BodyStream {
    /// A stream driven by `step`, which gets the state and returns the next chunk with the new
    /// state, or `None` at the end (like `futures::stream::unfold`).
    pub fn unfold<S, F, Fut>(state: S, step: F) -> Self
    where
        S: Send + 'static,
        F: FnMut(S) -> Fut + Send + 'static,
        Fut: Future<Output = Option<(Result<Vec<u8>, PluginError>, S)>> + Send + 'static,
    {
        BodyStream(Box::pin(Unfold::new(state, step)))
    }

    /// A stream of the given chunks.
    pub fn from_chunks(chunks: Vec<Vec<u8>>) -> Self {
        BodyStream::unfold(chunks.into_iter(), |mut it| async move { it.next().map(|c| (Ok(c), it)) })
    }

    /// The next chunk (for tests of a route outside the gateway).
    pub async fn next_chunk(&mut self) -> Option<Result<Vec<u8>, PluginError>> {
        std::future::poll_fn(|cx| self.0.as_mut().poll_item(cx)).await
    }
}

/// Serves HTTP routes of its own. The routes are asked for once each time the plugin loads;
/// the gateway matches requests to them (method and path), reads the body within its limits,
/// and calls [`Routes::handle`], whose future runs on the gateway's runtime (dropping it, as
/// when the client goes away, cancels it). A hot swap changes the routes with the version:
/// requests already in a handler finish on the version they started on.
#[diagnostic::on_unimplemented(
    message = "`{Self}` lists capability `Routes` but does not implement `plugin_abi::Routes`",
    label = "listed here"
)]
pub trait Routes: Plugin {
    fn routes(&self) -> Vec<Route>;

    /// One request to route `req.route`. An error is a 500 naming the plugin (its message goes
    /// to the gateway's log).
    fn handle(&self, req: RouteRequest) -> impl Future<Output = Result<RouteResponse, PluginError>> + Send;
}

// ---- the glue the `Routes` definition uses ----

pub(crate) fn routes_to_raw(routes: Vec<Route>) -> RVec<ffi::RawRoute> {
    routes
        .into_iter()
        .map(|r| ffi::RawRoute {
            kind: match r.kind {
                RouteKind::Endpoint => ffi::route_kind::ENDPOINT,
                RouteKind::Management => ffi::route_kind::MANAGEMENT,
                RouteKind::Resource => ffi::route_kind::RESOURCE,
            },
            method: r.method.into(),
            path: r.path.into(),
            description: r.description.into(),
        })
        .collect()
}

struct Chunks(BodyStream);

impl ffi::ItemSource for Chunks {
    type Item = RResult<RVec<u8>, ffi::PluginError>;
    fn poll_item(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.0.as_mut().poll_item(cx).map(|item| {
            item.map(|r| match r {
                Ok(chunk) => ROk(chunk.into()),
                Err(e) => RErr(e.into()),
            })
        })
    }
}

pub(crate) fn reply_future(
    f: impl Future<Output = Result<RouteResponse, PluginError>> + Send + 'static,
) -> ffi::RFuture<RResult<ffi::RouteReply, ffi::PluginError>> {
    ffi::RFuture::new(async move {
        match f.await {
            Ok(r) => ROk(ffi::RouteReply {
                status: r.status,
                headers: r
                    .headers
                    .into_iter()
                    .map(|(name, value)| ffi::OwnedHeader { name: name.into(), value: value.into() })
                    .collect(),
                body: r.body.into(),
                stream: match r.stream {
                    Some(stream) => RSome(ffi::RStream::new(Chunks(stream))),
                    None => RNone,
                },
            }),
            Err(e) => RErr(e.into()),
        }
    })
}
