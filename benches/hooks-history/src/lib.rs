//! Benchmark plugin: bench-hooks' stream filter, opted in to a history of 64 chunks / 1 MiB.

#[path = "../../hooks/src/common.rs"]
mod common;

use plugin_abi::{Chunk, ChunkDecision, Context, HistoryLimits, PluginError, StreamChunk, UpstreamResponse};

#[derive(plugin_abi::Plugin)]
#[plugin(name = "bench-hooks-history", capabilities(StreamChunk))]
pub struct BenchHistory;

impl plugin_abi::Plugin for BenchHistory {
    fn init(_config: plugin_abi::Config<'_>, _host: plugin_abi::Host) -> Result<Self, PluginError> {
        Ok(BenchHistory)
    }
}

impl StreamChunk for BenchHistory {
    const HISTORY: HistoryLimits = HistoryLimits { max_chunks: 64, max_bytes: 1 << 20 };
    type State = ();
    fn on_stream_start(&self, _ctx: &Context<'_>, head: &UpstreamResponse<'_>) -> Result<Option<()>, PluginError> {
        Ok(common::start(head))
    }
    fn on_chunk(&self, _state: &mut (), chunk: &Chunk<'_>) -> Result<ChunkDecision, PluginError> {
        Ok(common::chunk(chunk))
    }
}
