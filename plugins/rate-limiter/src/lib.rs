//! Per-app request limits, counted in host KV so that they survive restarts and reloads.
//!
//! PostAuth counts the request in the current window and answers 429 (with `Retry-After`) once
//! the app is over its limit, publishing a `ratelimit.exceeded` event; the response headers phase
//! stamps `x-ratelimit-limit`, `x-ratelimit-remaining` and `x-ratelimit-reset` on every response.
//! Counting waits for a KV commit: configure this plugin with `isolate = true`.
#![forbid(unsafe_code)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use plugin_abi::{
    Changes, Config, ConfigProvider, Context, Decision, Direction, Host, Plugin, PluginError, PostAuth, Reply, Request,
    Response, UpstreamResponse,
};

#[derive(plugin_abi::Plugin)]
#[plugin(name = "rate-limiter", capabilities(PostAuth, Response, ConfigProvider))]
pub struct RateLimiter {
    host: Host,
    limit: i64,
    /// 0: one window forever (a quota).
    window_secs: u64,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    requests_per_window: i64,
    #[serde(default = "default_window")]
    window_secs: u64,
}

fn default_window() -> u64 {
    60
}

impl Plugin for RateLimiter {
    fn init(config: Config<'_>, host: Host) -> Result<Self, PluginError> {
        let s: Settings = config.parse()?;
        Ok(RateLimiter { host, limit: s.requests_per_window, window_secs: s.window_secs })
    }
}

impl ConfigProvider for RateLimiter {
    const SCHEMA: &'static str = r#"{
        "type": "object",
        "required": ["requests_per_window"],
        "additionalProperties": false,
        "properties": {
            "requests_per_window": { "type": "integer", "minimum": 1 },
            "window_secs": { "type": "integer", "minimum": 0 }
        }
    }"#;
}

/// The counter for one caller in one window.
pub struct Window {
    pub key: String,
    /// Seconds until the window resets; 0 for a quota.
    pub reset_secs: u64,
    pub ttl: Duration,
}

impl RateLimiter {
    pub fn window(&self, caller: &str, now_secs: u64) -> Window {
        if self.window_secs == 0 {
            return Window { key: format!("quota:{caller}"), reset_secs: 0, ttl: Duration::ZERO };
        }
        let index = now_secs / self.window_secs;
        Window {
            key: format!("{caller}:{index}"),
            reset_secs: (index + 1) * self.window_secs - now_secs,
            // Kept a little past its window, then dropped by the host.
            ttl: Duration::from_secs(self.window_secs * 2),
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl PostAuth for RateLimiter {
    fn on_post_auth(&self, req: &Request<'_>) -> Result<Decision, PluginError> {
        let ctx = req.context();
        let caller = ctx.app_id().unwrap_or(ctx.client_ip());
        let window = self.window(caller, now_secs());
        let count = self.host.kv_increment(&window.key, 1, window.ttl)?;
        let remaining = (self.limit - count).max(0);
        if count > self.limit {
            let event = serde_json::json!({ "caller": caller, "limit": self.limit, "count": count }).to_string();
            // A full event queue must not turn a 429 into a 500.
            if let Err(e) = self.host.publish("ratelimit.exceeded", event.as_bytes(), Direction::Local) {
                self.host.warn(&format!("could not publish ratelimit.exceeded: {e}"));
            }
            let message =
                format!("rate limit exceeded: expected at most {} requests per window, found {count}", self.limit);
            let reply = Reply::error(429, "rate_limit_error", "rate_limit_exceeded", &message)
                .header("retry-after", window.reset_secs.max(1).to_string())
                .header("x-ratelimit-limit", self.limit.to_string())
                .header("x-ratelimit-remaining", "0")
                .header("x-ratelimit-reset", window.reset_secs.to_string());
            return Ok(Decision::Respond(reply));
        }
        Ok(Decision::Modify(
            Changes::new()
                .metadata("ratelimit.limit", self.limit.to_string())
                .metadata("ratelimit.remaining", remaining.to_string())
                .metadata("ratelimit.reset", window.reset_secs.to_string()),
        ))
    }
}

impl Response for RateLimiter {
    fn on_response_headers(&self, ctx: &Context<'_>, _resp: &UpstreamResponse<'_>) -> Result<Decision, PluginError> {
        let (Some(limit), Some(remaining), Some(reset)) =
            (ctx.metadata("ratelimit.limit"), ctx.metadata("ratelimit.remaining"), ctx.metadata("ratelimit.reset"))
        else {
            return Ok(Decision::Continue);
        };
        Ok(Decision::Modify(
            Changes::new()
                .set_header("x-ratelimit-limit", limit)
                .set_header("x-ratelimit-remaining", remaining)
                .set_header("x-ratelimit-reset", reset),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_abi::testing::{MockHost, TestRequest, TestResponse};

    #[test]
    fn counts_per_app_in_host_kv_and_refuses_over_the_limit() {
        let host = MockHost::new();
        let p: RateLimiter = host.init(r#"{"requests_per_window": 2, "window_secs": 0}"#).unwrap();
        let req = TestRequest::post("/v1/chat/completions").app("app-1", "u");
        for remaining in ["1", "0"] {
            let Decision::Modify(changes) = req.with(|r| p.on_post_auth(r)).unwrap() else {
                panic!("expected a count")
            };
            let stamped = req
                .clone()
                .metadata("ratelimit.limit", "2")
                .metadata("ratelimit.remaining", remaining)
                .metadata("ratelimit.reset", "0");
            let Decision::Modify(h) =
                stamped.with_context(|c| TestResponse::new(200).with(|r| p.on_response_headers(c, r))).unwrap()
            else {
                panic!("expected headers")
            };
            assert!(h.headers_set().any(|(n, v)| n == "x-ratelimit-remaining" && v == remaining));
            assert!(!changes.is_empty());
        }
        let Decision::Respond(reply) = req.with(|r| p.on_post_auth(r)).unwrap() else { panic!("expected 429") };
        assert_eq!(reply.status(), 429);
        assert_eq!(reply.header_value("retry-after"), Some("1"));
        assert_eq!(reply.header_value("x-ratelimit-remaining"), Some("0"));
        assert_eq!(host.kv_keys(), ["quota:app-1"]);
        assert_eq!(host.published()[0].0, "ratelimit.exceeded");
        // Another app has its own counter.
        let other = TestRequest::post("/").app("app-2", "u");
        assert!(matches!(other.with(|r| p.on_post_auth(r)).unwrap(), Decision::Modify(_)));
    }

    #[test]
    fn windows_reset() {
        let p: RateLimiter = MockHost::new().init(r#"{"requests_per_window": 1, "window_secs": 60}"#).unwrap();
        let w = p.window("app", 125);
        assert_eq!((w.key.as_str(), w.reset_secs), ("app:2", 55));
        assert_eq!(p.window("app", 180).key, "app:3");
    }
}
