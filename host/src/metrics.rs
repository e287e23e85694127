//! Prometheus metrics: lock-free atomics on the hot path, rendered as text on `GET /metrics`.
//!
//! Hand-rolled rather than `prometheus-client`, whose histograms take a lock per observation:
//! hooks are timed on every call, and a lock there would cost more than the hook itself.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;

/// Histogram bucket upper bounds, in seconds: 1 µs to 10 s.
const BUCKETS: [f64; 15] = [1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];

#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(d.as_nanos() as u64, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// The upper bound of the bucket that holds quantile `q` of the observations, in seconds
    /// (`None` without observations; past the last bucket, its bound).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count.load(Relaxed);
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            seen += count.load(Relaxed);
            if seen >= rank {
                return Some(*bound);
            }
        }
        BUCKETS.last().copied()
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            cumulative += count.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum_ns.load(Relaxed) as f64 / 1e9);
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Per plugin and hook: calls, errors (including panics), panics, and latency.
#[derive(Default)]
pub struct HookMetrics {
    pub calls: AtomicU64,
    pub errors: AtomicU64,
    pub panics: AtomicU64,
    pub latency: Histogram,
}

/// Per plugin and upstream: calls through the host HTTP client.
#[derive(Default)]
pub struct HttpCallMetrics {
    pub calls: AtomicU64,
    /// No response, a 5xx, or a body that broke off.
    pub errors: AtomicU64,
    pub response_bytes: AtomicU64,
    pub latency: Histogram,
}

/// Everything the gateway counts. Per-hook entries are created when a pipeline is built, so the
/// request path only touches atomics it already holds.
pub struct Metrics {
    /// Indexed by `status - 100`.
    requests: Box<[AtomicU64]>,
    pub request_latency: Histogram,
    pub open_connections: AtomicU64,
    pub inflight_requests: AtomicU64,
    pub collector_dropped: AtomicU64,
    pub collector_errors: AtomicU64,
    pub quarantined: AtomicU64,
    /// Connections refused at `limits.max_connections`.
    pub connections_refused: AtomicU64,
    /// Connections cut because a write to the client stalled past `limits.write_timeout_ms`.
    pub write_timeouts: AtomicU64,
    /// Whole-config reloads refused (the running config kept serving).
    pub config_reload_failures: AtomicU64,
    /// Plugin events refused because the event queue was full (shared with the event bus).
    pub events_dropped: Arc<AtomicU64>,
    hooks: Mutex<Vec<(String, &'static str, Arc<HookMetrics>)>>,
    /// Counters by (metric name, plugin).
    plugin_counters: Mutex<Vec<(&'static str, String, Arc<AtomicU64>)>>,
    /// By (plugin, upstream).
    http_calls: Mutex<Vec<(String, String, Arc<HttpCallMetrics>)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: (100..600).map(|_| AtomicU64::new(0)).collect(),
            request_latency: Histogram::default(),
            open_connections: AtomicU64::new(0),
            inflight_requests: AtomicU64::new(0),
            collector_dropped: AtomicU64::new(0),
            collector_errors: AtomicU64::new(0),
            quarantined: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            write_timeouts: AtomicU64::new(0),
            config_reload_failures: AtomicU64::new(0),
            events_dropped: Arc::default(),
            hooks: Mutex::default(),
            plugin_counters: Mutex::default(),
            http_calls: Mutex::default(),
        }
    }
}

impl Metrics {
    /// The counter for one plugin's hook, created on first use.
    pub fn hook(&self, plugin: &str, hook: &'static str) -> Arc<HookMetrics> {
        let mut hooks = self.hooks.lock();
        if let Some((_, _, m)) = hooks.iter().find(|(p, h, _)| p == plugin && *h == hook) {
            return m.clone();
        }
        let m = Arc::new(HookMetrics::default());
        hooks.push((plugin.to_owned(), hook, m.clone()));
        m
    }

    /// The counters for one plugin's calls to one upstream, created on first use.
    pub fn http_call(&self, plugin: &str, upstream: &str) -> Arc<HttpCallMetrics> {
        let mut calls = self.http_calls.lock();
        if let Some((_, _, m)) = calls.iter().find(|(p, u, _)| p == plugin && u == upstream) {
            return m.clone();
        }
        let m = Arc::new(HttpCallMetrics::default());
        calls.push((plugin.to_owned(), upstream.to_owned(), m.clone()));
        m
    }

    /// A per-plugin counter, rendered as `name{plugin="..."}`; created on first use.
    pub fn plugin_counter(&self, name: &'static str, plugin: &str) -> Arc<AtomicU64> {
        let mut counters = self.plugin_counters.lock();
        if let Some((_, _, c)) = counters.iter().find(|(n, p, _)| *n == name && p == plugin) {
            return c.clone();
        }
        let c = Arc::new(AtomicU64::new(0));
        counters.push((name, plugin.to_owned(), c.clone()));
        c
    }

    /// Per hook of `plugin`: its name, calls, errors and p99 latency in µs (bucket bound).
    pub fn hook_stats(&self, plugin: &str) -> Vec<serde_json::Value> {
        self.hooks
            .lock()
            .iter()
            .filter(|(p, _, _)| p == plugin)
            .map(|(_, hook, m)| {
                serde_json::json!({
                    "hook": hook,
                    "calls": m.calls.load(Relaxed),
                    "errors": m.errors.load(Relaxed),
                    "p99_us": m.latency.quantile(0.99).map(|s| (s * 1e6).round()),
                })
            })
            .collect()
    }

    /// Calls and errors per (plugin, hook).
    pub fn hook_totals(&self) -> Vec<(String, u64, u64)> {
        self.hooks.lock().iter().map(|(p, _, m)| (p.clone(), m.calls.load(Relaxed), m.errors.load(Relaxed))).collect()
    }

    pub fn count_request(&self, status: u16, took: Duration) {
        self.request_latency.observe(took);
        if let Some(counter) = self.requests.get(usize::from(status).wrapping_sub(100)) {
            counter.fetch_add(1, Relaxed);
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        out.push_str("# TYPE gateway_requests_total counter\n");
        for (i, counter) in self.requests.iter().enumerate() {
            let n = counter.load(Relaxed);
            if n > 0 {
                let _ = writeln!(out, "gateway_requests_total{{status=\"{}\"}} {n}", i + 100);
            }
        }
        out.push_str("# TYPE gateway_request_duration_seconds histogram\n");
        self.request_latency.render(&mut out, "gateway_request_duration_seconds", "");
        for (name, value) in [
            ("gateway_open_connections", &self.open_connections),
            ("gateway_inflight_requests", &self.inflight_requests),
        ] {
            let _ = writeln!(out, "# TYPE {name} gauge\n{name} {}", value.load(Relaxed));
        }
        for (name, value) in [
            ("gateway_collector_dropped_total", &self.collector_dropped),
            ("gateway_collector_errors_total", &self.collector_errors),
            ("gateway_plugins_quarantined_total", &self.quarantined),
            ("gateway_events_dropped_total", &*self.events_dropped),
            ("gateway_connections_refused_total", &self.connections_refused),
            ("gateway_write_timeouts_total", &self.write_timeouts),
            ("gateway_config_reload_failures_total", &self.config_reload_failures),
        ] {
            let _ = writeln!(out, "# TYPE {name} counter\n{name} {}", value.load(Relaxed));
        }
        let mut names: Vec<&'static str> = self.plugin_counters.lock().iter().map(|(n, _, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            let _ = writeln!(out, "# TYPE {name} counter");
            for (_, plugin, c) in self.plugin_counters.lock().iter().filter(|(n, _, _)| *n == name) {
                let _ = writeln!(out, "{name}{{plugin=\"{plugin}\"}} {}", c.load(Relaxed));
            }
        }
        let hooks = self.hooks.lock();
        out.push_str("# TYPE gateway_plugin_hook_calls_total counter\n");
        for (plugin, hook, m) in hooks.iter() {
            let _ = writeln!(
                out,
                "gateway_plugin_hook_calls_total{{plugin=\"{plugin}\",hook=\"{hook}\"}} {}",
                m.calls.load(Relaxed)
            );
        }
        out.push_str("# TYPE gateway_plugin_hook_errors_total counter\n");
        for (plugin, hook, m) in hooks.iter() {
            let _ = writeln!(
                out,
                "gateway_plugin_hook_errors_total{{plugin=\"{plugin}\",hook=\"{hook}\"}} {}",
                m.errors.load(Relaxed)
            );
        }
        out.push_str("# TYPE gateway_plugin_hook_panics_total counter\n");
        for (plugin, hook, m) in hooks.iter() {
            let _ = writeln!(
                out,
                "gateway_plugin_hook_panics_total{{plugin=\"{plugin}\",hook=\"{hook}\"}} {}",
                m.panics.load(Relaxed)
            );
        }
        out.push_str("# TYPE gateway_plugin_hook_duration_seconds histogram\n");
        for (plugin, hook, m) in hooks.iter() {
            m.latency.render(
                &mut out,
                "gateway_plugin_hook_duration_seconds",
                &format!("plugin=\"{plugin}\",hook=\"{hook}\""),
            );
        }
        drop(hooks);
        let calls = self.http_calls.lock();
        for (name, field) in [
            ("gateway_http_client_calls_total", 0),
            ("gateway_http_client_errors_total", 1),
            ("gateway_http_client_response_bytes_total", 2),
        ] {
            let _ = writeln!(out, "# TYPE {name} counter");
            for (plugin, upstream, m) in calls.iter() {
                let value = [&m.calls, &m.errors, &m.response_bytes][field].load(Relaxed);
                let _ = writeln!(out, "{name}{{plugin=\"{plugin}\",upstream=\"{upstream}\"}} {value}");
            }
        }
        out.push_str("# TYPE gateway_http_client_duration_seconds histogram\n");
        for (plugin, upstream, m) in calls.iter() {
            m.latency.render(
                &mut out,
                "gateway_http_client_duration_seconds",
                &format!("plugin=\"{plugin}\",upstream=\"{upstream}\""),
            );
        }
        out
    }
}

/// Counts a value up while alive.
pub struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    pub fn new(g: &'a AtomicU64) -> Self {
        g.fetch_add(1, Relaxed);
        Gauge(g)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_nanos(500));
        h.observe(Duration::from_micros(20));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.000001\"} 1"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.00005\"} 2"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"10\"} 2"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 3"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 3"), "{out}");
    }

    #[test]
    fn a_quantile_is_the_bound_of_the_bucket_that_holds_it() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.99), None);
        for _ in 0..98 {
            h.observe(Duration::from_micros(3));
        }
        h.observe(Duration::from_micros(40));
        h.observe(Duration::from_millis(2));
        assert_eq!(h.quantile(0.5), Some(5e-6));
        assert_eq!(h.quantile(0.99), Some(5e-5));
        assert_eq!(h.quantile(1.0), Some(5e-3));
    }

    #[test]
    fn hook_metrics_are_shared_per_plugin_and_hook() {
        let m = Metrics::default();
        m.hook("p", "pre_auth").calls.fetch_add(2, Relaxed);
        m.hook("p", "pre_auth").calls.fetch_add(1, Relaxed);
        m.count_request(200, Duration::from_millis(1));
        let text = m.render();
        assert!(text.contains("gateway_plugin_hook_calls_total{plugin=\"p\",hook=\"pre_auth\"} 3"), "{text}");
        assert!(text.contains("gateway_requests_total{status=\"200\"} 1"), "{text}");
    }
}
