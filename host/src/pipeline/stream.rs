//! Stream-chunk plugins over one stream: a header-only start, one call per chunk, and an end call
//! that always happens (also when the client goes away: each [`Stream`] ends itself when dropped),
//! so plugin state is never leaked.

use std::sync::Arc;

use abi_stable::std_types::RVec;
use bytes::Bytes;
use plugin_abi::ffi::{self, ChunkHistory, ChunkOutcome, Stream, StreamStarted};

use super::{ContextState, Pipeline, ResponseState};
use crate::error::ApiError;

struct Active {
    /// Index into `Pipeline::stream_chunk`.
    hook: usize,
    /// Ends the stream in the plugin when dropped.
    stream: Stream,
    /// Only for plugins that opted in; holds chunks as the client received them.
    history: Option<ChunkHistory<Bytes>>,
}

/// A chunk as the plugins left it: the upstream's bytes, or a plugin's replacement, read where
/// the plugin put it (no copy and no host allocation per replaced chunk).
pub enum ChunkData {
    Upstream(Bytes),
    Replaced(RVec<u8>),
}

impl std::ops::Deref for ChunkData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ChunkData::Upstream(b) => b,
            ChunkData::Replaced(v) => v,
        }
    }
}

/// The stream-chunk plugins observing one stream.
pub struct StreamFilters {
    // Declared (so dropped) before `pipeline`: the streams end while the pipeline still holds
    // their plugins, so an instance never shuts down inside a stream's end on a worker thread.
    active: Vec<Active>,
    pipeline: Arc<Pipeline>,
    index: u64,
}

impl StreamFilters {
    pub(super) fn start(pipeline: Arc<Pipeline>, ctx: &ContextState, head: &ResponseState) -> Result<Self, ApiError> {
        let mut filters = StreamFilters { active: Vec::new(), pipeline: pipeline.clone(), index: 0 };
        if pipeline.stream_chunk.is_empty() {
            return Ok(filters);
        }
        let metadata = ctx.raw_metadata();
        let raw_ctx = ctx.raw(&metadata);
        let headers = super::raw_headers(&head.headers, Vec::new());
        let raw = head.raw(&headers, false);
        for (i, hook) in pipeline.stream_chunk.iter().enumerate() {
            let Some(probe) = hook.quarantine_check()? else { continue };
            let which = ffi::StreamChunkV1::on_stream_start;
            match hook.invoke(which, probe, |cap| cap.start_stream(&raw_ctx, &raw)) {
                StreamStarted::Skip => {}
                StreamStarted::Observe(stream) => {
                    let history = ChunkHistory::new(hook.cap.history());
                    let history = history.is_enabled().then_some(history);
                    filters.active.push(Active { hook: i, stream, history });
                }
                StreamStarted::Fail(e) => {
                    // `filters` ends the streams already started when it drops.
                    if let Some(err) = hook.fail(which, &e, &ctx.request_id) {
                        return Err(err);
                    }
                }
            }
        }
        Ok(filters)
    }

    /// Whether any plugin observes this stream.
    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// Runs one chunk of request `request_id` through the observing plugins in order.
    /// `Ok(None)`: a plugin dropped it.
    pub fn on_chunk(&mut self, data: Bytes, request_id: &str) -> Result<Option<ChunkData>, ApiError> {
        let index = self.index;
        self.index += 1;
        let mut current = ChunkData::Upstream(data);
        if self.active.is_empty() {
            return Ok(Some(current));
        }
        for active in &mut self.active {
            let hook = &self.pipeline.stream_chunk[active.hook];
            if hook.slot.is_quarantined() {
                // Quarantined mid-stream: no probing here (a probe is one request's whole call).
                hook.skip_quarantined()?;
                continue;
            }
            let (stream, history) = (&mut active.stream, active.history.as_ref());
            let which = ffi::StreamChunkV1::on_chunk;
            match hook.invoke_untraced(which, false, |_| stream.on_chunk(index, &current, history)) {
                ChunkOutcome::Pass => {}
                ChunkOutcome::Replace(bytes) => current = ChunkData::Replaced(bytes),
                ChunkOutcome::Drop => return Ok(None),
                ChunkOutcome::Fail(e) => {
                    if let Some(err) = hook.fail(which, &e, request_id) {
                        return Err(err);
                    }
                }
            }
        }
        for active in &mut self.active {
            if let Some(history) = &mut active.history {
                history.push(match &current {
                    ChunkData::Upstream(b) => b.clone(),
                    ChunkData::Replaced(v) => Bytes::copy_from_slice(v),
                });
            }
        }
        Ok(Some(current))
    }
}
