//! The admin page at `/ui/` and plugins' own pages under `/ui/plugins/{name}/`.
//!
//! The page is plain HTML, CSS and one script compiled into the binary; it reads the admin
//! API with a session cookie set by its sign-in form. Plugin pages are the files of the
//! plugin's `Ui` capability in the pipeline serving the request, so a hot swap changes them with
//! the plugin's version.

use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::admin::{SESSION_COOKIE, is_admin, session_for};
use crate::app::App;
use crate::body::{GatewayBody, error_response};
use crate::error::ApiError;
use crate::pipeline::Asset;

const INDEX: &str = include_str!("ui/index.html");
const LOGIN: &str = include_str!("ui/login.html");
static SCRIPT: LazyLock<Asset> =
    LazyLock::new(|| own_asset(include_bytes!("ui/app.js"), "text/javascript; charset=utf-8"));
static STYLE: LazyLock<Asset> = LazyLock::new(|| own_asset(include_bytes!("ui/style.css"), "text/css; charset=utf-8"));
/// The longest sign-in form read.
const MAX_FORM_BYTES: usize = 4096;
/// The gateway's own pages load nothing from elsewhere and run no inline script.
const OWN_PAGE_POLICY: &str = "default-src 'self'; frame-ancestors 'none'; form-action 'self'";

/// Serves `/ui` and everything under it.
pub(crate) async fn serve(app: &Arc<App>, req: Request<Incoming>) -> Response<GatewayBody> {
    let (method, path) = (req.method().clone(), req.uri().path());
    let readable = matches!(method, Method::GET | Method::HEAD);
    match (readable, method == Method::POST, path) {
        (true, _, "/ui") => redirect("/ui/", None),
        (true, _, "/ui/") => {
            if is_admin(app, &method, req.headers()) {
                page(INDEX.to_owned())
            } else {
                page(login_page(app, req.uri().query()))
            }
        }
        (true, _, "/ui/app.js") => asset(req.headers(), &SCRIPT),
        (true, _, "/ui/style.css") => asset(req.headers(), &STYLE),
        (_, true, "/ui/login") => login(app, req).await,
        (_, true, "/ui/logout") => {
            redirect("/ui/", Some(format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")))
        }
        (true, _, p) if p.starts_with("/ui/plugins/") => plugin_page(app, &method, req.headers(), p),
        (_, _, p @ ("/ui/" | "/ui/app.js" | "/ui/style.css")) => {
            error_response(&ApiError::method_not_allowed(&method, p, "GET"))
        }
        (_, _, p @ ("/ui/login" | "/ui/logout")) => error_response(&ApiError::method_not_allowed(&method, p, "POST")),
        (_, _, p) => error_response(&ApiError::not_found(p)),
    }
}

/// The sign-in page, saying why the last attempt failed, if one did.
fn login_page(app: &App, query: Option<&str>) -> String {
    let error = if app.admin_token.is_none() {
        "<p class=\"error\">The admin page is disabled: set <code>[admin] token</code> or GATEWAY_ADMIN_TOKEN.</p>"
    } else if query.is_some_and(|q| q.split('&').any(|kv| kv == "denied")) {
        "<p class=\"error\" id=\"error\">That is not the admin token.</p>"
    } else {
        ""
    };
    LOGIN.replace("{{error}}", error)
}

/// `POST /ui/login` with form field `token`: sets the session cookie and goes to the page.
async fn login(app: &App, req: Request<Incoming>) -> Response<GatewayBody> {
    let body = match Limited::new(req.into_body(), MAX_FORM_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return error_response(&ApiError::too_large(MAX_FORM_BYTES, None)),
    };
    let given = form_urlencoded::parse(&body).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned());
    match (&app.admin_token, given) {
        (Some(token), Some(given)) if crate::admin::constant_time_eq(token.as_bytes(), given.as_bytes()) => {
            let cookie = format!("{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict", session_for(token));
            redirect("/ui/", Some(cookie))
        }
        _ => redirect("/ui/?denied", None),
    }
}

/// `GET /ui/plugins/{name}/{path}`: a file of plugin `name`'s UI (its entry page for an empty
/// path). Needs the admin session or token; a browser without one is sent to sign in.
fn plugin_page(app: &App, method: &Method, headers: &HeaderMap, path: &str) -> Response<GatewayBody> {
    if !is_admin(app, method, headers) {
        return redirect("/ui/", None);
    }
    let rest = &path["/ui/plugins/".len()..];
    let (name, file) = rest.split_once('/').unwrap_or((rest, ""));
    let pipeline = app.pipeline.load();
    let Some(ui) = pipeline.plugin_ui(name) else {
        return error_response(&ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "unknown_plugin_ui",
            format!("no plugin `{name}` with a UI is loaded"),
        ));
    };
    if file.is_empty() && !rest.contains('/') {
        return redirect(&format!("/ui/plugins/{name}/"), None);
    }
    let file = if file.is_empty() { ui.entry.as_str() } else { file };
    match ui.assets.get(file) {
        Some(found) => asset(headers, found),
        None => error_response(&ApiError::not_found(path)),
    }
}

fn own_asset(body: &'static [u8], content_type: &str) -> Asset {
    Asset::new(content_type.to_owned(), Bytes::from_static(body))
}

/// A file, or `304 Not Modified` when the client's copy (`If-None-Match`) is current.
/// `no-cache`: the browser keeps it but asks each time, since a hot swap can change it.
fn asset(headers: &HeaderMap, asset: &Asset) -> Response<GatewayBody> {
    let current = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == asset.etag || tag.trim() == "*");
    let mut resp = if current {
        let mut r = Response::new(GatewayBody::full(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(GatewayBody::full(asset.body.clone()));
        if let Ok(v) = HeaderValue::from_str(&asset.content_type) {
            r.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        r
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&asset.etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    resp
}

/// One of the gateway's own pages: never cached (it depends on the session).
fn page(html: String) -> Response<GatewayBody> {
    let mut resp = Response::new(GatewayBody::full(html));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(OWN_PAGE_POLICY));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    resp
}

/// `303 See Other` to `to`, setting `cookie` if given.
fn redirect(to: &str, cookie: Option<String>) -> Response<GatewayBody> {
    let mut resp = Response::new(GatewayBody::full(Bytes::new()));
    *resp.status_mut() = StatusCode::SEE_OTHER;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(to) {
        h.insert(header::LOCATION, v);
    }
    if let Some(v) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert(header::SET_COOKIE, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
