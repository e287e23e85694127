//! What the gateway records of each finished request (and of each call a plugin makes through
//! the host HTTP client), for the data collectors. Plain data: the pipeline turns it into the
//! views collectors see, the collector queue carries it.

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
