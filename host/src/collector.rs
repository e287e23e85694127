//! Data collectors run off the request path: a bounded crossbeam channel feeds one worker thread.
//! A full queue drops the record and counts it; it never blocks a request.
//!
//! The worker drains the queue every [`TICK`] instead of blocking on it: a blocked receiver is
//! woken by every send, which costs each request a futex wake and puts the collector thread on
//! a core the tokio workers need. Records reach collectors at most one tick late.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Sender, TryRecvError, TrySendError, bounded};
use plugin_abi::ffi::{RawAnalytics, RawBudget, RawProxyLog};

use crate::metrics::Metrics;
use crate::pipeline::Pipeline;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// One finished request.
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub request_id: String,
    pub app_id: String,
    pub user_id: String,
    pub method: String,
    pub path: String,
    pub model: String,
    /// Empty when the request never reached an upstream.
    pub upstream: String,
    pub status: u16,
    pub streamed: bool,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub latency_us: u64,
    pub ttft_us: u64,
    pub unix_ms: u64,
    pub usage: Option<Usage>,
}

impl Record {
    pub fn raw_proxy_log(&self) -> RawProxyLog<'_> {
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
    pub fn raw_analytics(&self) -> Option<RawAnalytics<'_>> {
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
    pub fn raw_budget(&self) -> Option<RawBudget<'_>> {
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

/// The queue and its worker. Records carry the pipeline that served them, so a collector always
/// sees the plugin version that handled the request.
pub struct Collector {
    tx: parking_lot::Mutex<Option<Sender<(Arc<Pipeline>, Record)>>>,
    worker: parking_lot::Mutex<Option<JoinHandle<()>>>,
    metrics: Arc<Metrics>,
}

/// How often the worker drains the queue. The queue must hold a tick's worth of records.
pub const TICK: Duration = Duration::from_millis(10);

impl Collector {
    pub fn start(capacity: usize, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = bounded::<(Arc<Pipeline>, Record)>(capacity);
        let worker = std::thread::Builder::new()
            .name("collector".into())
            .spawn(move || {
                loop {
                    match rx.try_recv() {
                        Ok((pipeline, record)) => pipeline.collect(&record),
                        Err(TryRecvError::Empty) => std::thread::park_timeout(TICK),
                        Err(TryRecvError::Disconnected) => return,
                    }
                }
            })
            .expect("spawning the collector thread");
        Collector { tx: parking_lot::Mutex::new(Some(tx)), worker: parking_lot::Mutex::new(Some(worker)), metrics }
    }

    /// Queues `record` for `pipeline`'s collectors, or drops and counts it if the queue is full.
    pub fn submit(&self, pipeline: &Arc<Pipeline>, record: Record) {
        if !pipeline.has_collectors() {
            return;
        }
        let tx = self.tx.lock();
        let Some(tx) = tx.as_ref() else { return };
        match tx.try_send((pipeline.clone(), record)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let dropped = self.metrics.collector_dropped.fetch_add(1, Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(dropped, "collector queue full: records dropped");
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Delivers what is queued, then stops the worker.
    pub fn shutdown(&self) {
        self.tx.lock().take();
        if let Some(worker) = self.worker.lock().take() {
            worker.thread().unpark();
            let _ = worker.join();
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.shutdown();
    }
}
