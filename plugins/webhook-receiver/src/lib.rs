//! Routes: a webhook receiver. `POST /plugins/webhook-receiver/hooks/{source}` takes a webhook
//! whose body is signed with HMAC-SHA256 (`x-signature-256: sha256=<hex>`, as GitHub signs),
//! refuses one whose signature does not match, and publishes the body as the event
//! `webhook.{source}`. Operators watch the webhooks arrive on a management route that streams
//! them (SSE), and read counts on another; `health` is public. Its page in the admin UI
//! (`/ui/plugins/webhook-receiver/`) shows both.
//!
//! The signature is the caller's proof: the operator turns the gateway's auth plugins off for
//! this plugin's endpoints (`endpoint_auth = false`). With them on, `whoami` shows the app and
//! user the gateway identified.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use hmac::{Hmac, Mac};
use plugin_abi::{
    BodyStream, Config, ConfigProvider, Direction, Host, Level, Plugin, PluginError, Route, RouteRequest,
    RouteResponse, Routes, Ui, UiAsset, UiManifest,
};
use serde_json::json;
use sha2::Sha256;

#[derive(plugin_abi::Plugin)]
#[plugin(name = "webhook-receiver", capabilities(Routes, Ui, ConfigProvider))]
pub struct WebhookReceiver {
    secret: Vec<u8>,
    host: Host,
    feed: Arc<Mutex<Feed>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    secret: String,
    /// Webhooks kept for the event stream to replay.
    #[serde(default = "default_keep")]
    keep: usize,
}

fn default_keep() -> usize {
    100
}

/// Received webhooks, for the stream and the counts.
#[derive(Default)]
struct Feed {
    /// (sequence number, source, body), oldest first, at most `keep`.
    recent: VecDeque<(u64, String, String)>,
    keep: usize,
    next: u64,
    rejected: u64,
    by_source: BTreeMap<String, u64>,
    /// Streams waiting for the next webhook.
    waiting: Vec<Waker>,
}

impl Feed {
    fn push(&mut self, source: &str, body: String) {
        self.recent.push_back((self.next, source.to_owned(), body));
        self.next += 1;
        while self.recent.len() > self.keep {
            self.recent.pop_front();
        }
        *self.by_source.entry(source.to_owned()).or_default() += 1;
        for waker in self.waiting.drain(..) {
            waker.wake();
        }
    }
}

impl Plugin for WebhookReceiver {
    fn init(config: Config<'_>, host: Host) -> Result<Self, PluginError> {
        let s: Settings = config.parse()?;
        let feed = Feed { keep: s.keep, ..Feed::default() };
        Ok(WebhookReceiver { secret: s.secret.into_bytes(), host, feed: Arc::new(Mutex::new(feed)) })
    }
}

impl ConfigProvider for WebhookReceiver {
    const SCHEMA: &'static str = r#"{
        "type": "object",
        "required": ["secret"],
        "additionalProperties": false,
        "properties": {
            "secret": { "type": "string", "minLength": 16 },
            "keep": { "type": "integer", "minimum": 1, "maximum": 100000 }
        }
    }"#;
}

/// The routes, by their index in `routes()`.
const HOOKS: usize = 0;
const WHOAMI: usize = 1;
const STATS: usize = 2;
const EVENTS: usize = 3;
const HEALTH: usize = 4;

fn lock(feed: &Mutex<Feed>) -> std::sync::MutexGuard<'_, Feed> {
    feed.lock().unwrap_or_else(|e| e.into_inner())
}

fn error(status: u16, message: &str) -> RouteResponse {
    RouteResponse::json(status, &json!({ "error": { "message": message } }))
}

impl WebhookReceiver {
    /// Whether `signature` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under the secret,
    /// compared in constant time.
    fn signed(&self, body: &[u8], signature: Option<&str>) -> bool {
        let Some(hex) = signature.and_then(|s| s.strip_prefix("sha256=")) else { return false };
        let Some(expected) = decode_hex(hex) else { return false };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.secret) else { return false };
        mac.update(body);
        mac.verify_slice(&expected).is_ok()
    }

    fn receive(&self, req: &RouteRequest) -> RouteResponse {
        let source = req.param("source").unwrap_or("unknown");
        if !self.signed(&req.body, req.header("x-signature-256")) {
            lock(&self.feed).rejected += 1;
            let fields =
                [("source", source), ("request_id", req.request_id.as_str()), ("client_ip", req.client_ip.as_str())];
            self.host.log_with(Level::Warn, "webhook rejected: bad or missing signature", &fields);
            return error(
                401,
                "expected `x-signature-256: sha256=<hex HMAC-SHA256 of the body>` under the shared secret",
            );
        }
        let body = String::from_utf8_lossy(&req.body).into_owned();
        if let Err(e) = self.host.publish(&format!("webhook.{source}"), body.as_bytes(), Direction::Local) {
            self.host.warn(&format!("webhook from {source} received but not published: {}", e.message));
        }
        let bytes = body.len().to_string();
        lock(&self.feed).push(source, body);
        self.host.log_with(Level::Info, "webhook received", &[("source", source), ("bytes", &bytes)]);
        RouteResponse::json(202, &json!({ "accepted": true, "source": source }))
    }

    /// Webhooks as server-sent events: those kept after `after` (default: none), then each new
    /// one as it arrives; with `limit`, the stream ends after that many.
    fn events(&self, req: &RouteRequest) -> RouteResponse {
        let after: Option<u64> = req.query_param("after").and_then(|v| v.parse().ok());
        let limit: Option<u64> = req.query_param("limit").and_then(|v| v.parse().ok());
        let cursor = after.map_or_else(|| lock(&self.feed).next, |a| a + 1);
        let feed = self.feed.clone();
        let stream = BodyStream::unfold((feed, cursor, limit), |(feed, cursor, limit)| async move {
            if limit == Some(0) {
                return None;
            }
            let (seq, source, body) = std::future::poll_fn(|cx| {
                let mut feed = lock(&feed);
                match feed.recent.iter().find(|(seq, ..)| *seq >= cursor) {
                    Some(found) => Poll::Ready(found.clone()),
                    None => {
                        feed.waiting.push(cx.waker().clone());
                        Poll::Pending
                    }
                }
            })
            .await;
            let event = json!({ "seq": seq, "source": source, "body": body });
            let chunk = format!("id: {seq}\nevent: webhook\ndata: {event}\n\n").into_bytes();
            Some((Ok(chunk), (feed, seq + 1, limit.map(|l| l - 1))))
        });
        RouteResponse::new(200)
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .stream(stream)
    }
}

impl Ui for WebhookReceiver {
    const MANIFEST: UiManifest = UiManifest::new("Webhooks").admin_routes("stats events");
    const ASSETS: &'static [UiAsset] = &[
        UiAsset::new("index.html", "", include_bytes!("../ui/index.html")),
        UiAsset::new("app.js", "", include_bytes!("../ui/app.js")),
    ];
}

impl Routes for WebhookReceiver {
    fn routes(&self) -> Vec<Route> {
        vec![
            Route::endpoint("POST", "hooks/{source}").describe("receives a signed webhook and publishes it"),
            Route::endpoint("GET", "whoami").describe("the app and user the gateway identified"),
            Route::management("GET", "stats").describe("webhooks received and rejected"),
            Route::management("GET", "events").describe("received webhooks as server-sent events"),
            Route::resource("GET", "health").describe("liveness"),
        ]
    }

    async fn handle(&self, req: RouteRequest) -> Result<RouteResponse, PluginError> {
        Ok(match req.route {
            HOOKS => self.receive(&req),
            WHOAMI => RouteResponse::json(200, &json!({ "app": req.app_id, "user": req.user_id })),
            STATS => {
                let feed = lock(&self.feed);
                RouteResponse::json(
                    200,
                    &json!({ "received": feed.next, "rejected": feed.rejected, "by_source": feed.by_source }),
                )
            }
            EVENTS => self.events(&req),
            HEALTH => RouteResponse::json(200, &json!({ "status": "ok" })),
            other => error(404, &format!("no route {other}")),
        })
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}

/// `sha256=<hex>` of `body` under `secret`: how a sender signs (for tests and for the README).
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_abi::testing::{MockHost, block_on};

    const SECRET: &str = "a-shared-secret-of-length";

    fn plugin() -> (MockHost, WebhookReceiver) {
        let host = MockHost::new();
        let p = host.init(&json!({ "secret": SECRET, "keep": 2 }).to_string()).unwrap();
        (host, p)
    }

    fn hook(body: &str, signature: Option<String>) -> RouteRequest {
        let mut req = RouteRequest {
            route: HOOKS,
            method: "POST".into(),
            params: vec![("source".into(), "github".into())],
            body: body.as_bytes().to_vec(),
            ..RouteRequest::default()
        };
        if let Some(s) = signature {
            req.headers.push(("X-Signature-256".into(), s));
        }
        req
    }

    #[test]
    fn a_signed_webhook_is_published_and_a_forged_one_refused() {
        let (host, p) = plugin();
        let body = r#"{"action":"opened"}"#;
        let ok = block_on(p.handle(hook(body, Some(signature(SECRET.as_bytes(), body.as_bytes()))))).unwrap();
        assert_eq!(ok.status, 202);
        assert_eq!(host.published(), [("webhook.github".to_owned(), body.as_bytes().to_vec(), 0)]);
        for forged in [None, Some(signature(b"another-secret-entirely", body.as_bytes())), Some("sha256=zz".into())] {
            assert_eq!(block_on(p.handle(hook(body, forged))).unwrap().status, 401);
        }
        let stats = block_on(p.handle(RouteRequest { route: STATS, ..RouteRequest::default() })).unwrap();
        let stats: serde_json::Value = serde_json::from_slice(&stats.body).unwrap();
        assert_eq!(stats, json!({ "received": 1, "rejected": 3, "by_source": { "github": 1 } }));
    }

    #[test]
    fn the_event_stream_replays_what_is_kept_then_ends_at_its_limit() {
        let (_host, p) = plugin();
        for n in 0..3 {
            let body = format!("{{\"n\":{n}}}");
            let sig = signature(SECRET.as_bytes(), body.as_bytes());
            assert_eq!(block_on(p.handle(hook(&body, Some(sig)))).unwrap().status, 202);
        }
        let req = RouteRequest { route: EVENTS, query: "after=0&limit=2".into(), ..RouteRequest::default() };
        let mut resp = block_on(p.handle(req)).unwrap();
        let mut stream = resp.stream.take().expect("a stream");
        // Only two are kept: sequence 0 is gone, 1 and 2 are replayed.
        let first = String::from_utf8(block_on(stream.next_chunk()).unwrap().unwrap()).unwrap();
        assert!(first.starts_with("id: 1\nevent: webhook\ndata: ") && first.contains(r#"\"n\":1"#), "{first}");
        let second = String::from_utf8(block_on(stream.next_chunk()).unwrap().unwrap()).unwrap();
        assert!(second.starts_with("id: 2\n"), "{second}");
        assert!(block_on(stream.next_chunk()).is_none());
    }
}
