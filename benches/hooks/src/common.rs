// The stream filter shared by bench-hooks and bench-hooks-history (included with `#[path]`),
// so that the two differ only in their history opt-in.

use plugin_abi::{Chunk, ChunkDecision, UpstreamResponse};

pub fn chunk(c: &Chunk<'_>) -> ChunkDecision {
    std::hint::black_box((c.data().len(), c.history().len()));
    ChunkDecision::Pass
}

pub fn start(head: &UpstreamResponse<'_>) -> Option<()> {
    (head.status() == 200).then_some(())
}
