//! Records as data collectors see them, and the hand-over to them.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use plugin_abi::ffi::{self, RawAnalytics, RawBudget, RawProxyLog};

use super::Pipeline;
use crate::record::Record;

/// Where finished requests go: the collector queue, which hands each record to the collectors
/// of the pipeline that served it.
pub trait RecordSink: Send + Sync {
    fn submit(&self, pipeline: &Arc<Pipeline>, record: Record);
}

impl Pipeline {
    /// Hands one finished request to every data collector. Runs on the collector thread.
    pub fn collect(&self, rec: &Record) {
        for hook in &self.collectors {
            if hook.slot.is_quarantined() {
                continue;
            }
            use ffi::DataCollectorV1 as D;
            // A hook the plugin did not write is skipped; its "unwritten" answer is no failure.
            let real = |r: abi_stable::std_types::RResult<(), ffi::PluginError>| {
                r.into_result().err().filter(|e| e.code != ffi::code::UNWRITTEN)
            };
            let mut failed = None;
            if !hook.unwritten(D::on_proxy_log) {
                let log = rec.raw_proxy_log();
                failed = real(hook.invoke_untraced(D::on_proxy_log, false, |cap| cap.on_proxy_log(&log)));
            }
            if let Some(analytics) = rec.raw_analytics().filter(|_| !hook.unwritten(D::on_analytics)) {
                let r = hook.invoke_untraced(D::on_analytics, false, |cap| cap.on_analytics(&analytics));
                failed = failed.or(real(r));
            }
            if let Some(budget) = rec.raw_budget().filter(|_| !hook.unwritten(D::on_budget)) {
                let r = hook.invoke_untraced(D::on_budget, false, |cap| cap.on_budget(&budget));
                failed = failed.or(real(r));
            }
            if let Some(e) = failed {
                hook.slot.metrics.collector_errors.fetch_add(1, Relaxed);
                tracing::warn!(plugin = hook.slot.name(), code = e.code, "data collector failed: {}", e.message);
            }
        }
    }
}

/// The views of a [`Record`] each collector hook gets.
pub(super) trait Views {
    fn raw_proxy_log(&self) -> RawProxyLog<'_>;
    fn raw_analytics(&self) -> Option<RawAnalytics<'_>>;
    fn raw_budget(&self) -> Option<RawBudget<'_>>;
}

impl Views for Record {
    fn raw_proxy_log(&self) -> RawProxyLog<'_> {
        RawProxyLog {
            request_id: self.request_id.as_str().into(),
            app_id: self.app_id.as_str().into(),
            user_id: self.user_id.as_str().into(),
            method: self.method.as_str().into(),
            path: self.path.as_str().into(),
            model: self.model.as_str().into(),
            status: self.status,
            request_bytes: self.request_bytes,
            response_bytes: self.response_bytes,
            latency_us: self.latency_us,
            unix_ms: self.unix_ms,
        }
    }

    /// Analytics exist for requests that reached an upstream.
    fn raw_analytics(&self) -> Option<RawAnalytics<'_>> {
        if self.upstream.is_empty() {
            return None;
        }
        let usage = self.usage.unwrap_or_default();
        Some(RawAnalytics {
            request_id: self.request_id.as_str().into(),
            app_id: self.app_id.as_str().into(),
            user_id: self.user_id.as_str().into(),
            model: self.model.as_str().into(),
            upstream: self.upstream.as_str().into(),
            status: self.status,
            streamed: self.streamed,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.total_tokens,
            latency_us: self.latency_us,
            ttft_us: self.ttft_us,
        })
    }

    /// Budget records exist for authenticated requests that used tokens.
    fn raw_budget(&self) -> Option<RawBudget<'_>> {
        let usage = self.usage.filter(|u| u.total_tokens > 0)?;
        if self.app_id.is_empty() {
            return None;
        }
        Some(RawBudget {
            app_id: self.app_id.as_str().into(),
            user_id: self.user_id.as_str().into(),
            model: self.model.as_str().into(),
            total_tokens: usage.total_tokens,
        })
    }
}
