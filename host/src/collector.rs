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

use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, RecordSink};
use crate::record::Record;

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

    /// Delivers what is queued, then stops the worker.
    pub fn shutdown(&self) {
        self.tx.lock().take();
        if let Some(worker) = self.worker.lock().take() {
            worker.thread().unpark();
            let _ = worker.join();
        }
    }
}

impl RecordSink for Collector {
    /// Queues `record` for `pipeline`'s collectors, or drops and counts it if the queue is full.
    fn submit(&self, pipeline: &Arc<Pipeline>, record: Record) {
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
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.shutdown();
    }
}
