use plugin_abi::*;

#[derive(Plugin)]
#[plugin(
    name = "everything",
    version = "2.3.4",
    author = "me",
    description = "implements every capability",
    repository = "https://example.invalid/everything",
    capabilities(PreAuth, Auth, PostAuth, RequestInterceptor, Response, StreamChunk, StreamComplete, DataCollector, ConfigProvider),
    required(Auth, PostAuth)
)]
struct Everything;

impl Plugin for Everything {
    fn init(_: Config<'_>, _: Host) -> Result<Self, PluginError> {
        Ok(Everything)
    }
}
impl PreAuth for Everything {
    fn on_pre_auth(&self, _: &Request<'_>) -> Result<Decision, PluginError> {
        Ok(Decision::Continue)
    }
}
impl Auth for Everything {
    fn authenticate(&self, _: &str, _: &Request<'_>) -> Result<AuthDecision, PluginError> {
        Ok(AuthDecision::Pass)
    }
}
impl PostAuth for Everything {
    fn on_post_auth(&self, _: &Request<'_>) -> Result<Decision, PluginError> {
        Ok(Decision::Continue)
    }
}
impl RequestInterceptor for Everything {}
impl Response for Everything {}
impl StreamChunk for Everything {
    type State = ();
    fn on_stream_start(&self, _: &Context<'_>, _: &UpstreamResponse<'_>) -> Result<Option<()>, PluginError> {
        Ok(None)
    }
    fn on_chunk(&self, _: &mut (), _: &Chunk<'_>) -> Result<ChunkDecision, PluginError> {
        Ok(ChunkDecision::Pass)
    }
}
impl StreamComplete for Everything {
    fn on_stream_complete(&self, _: &Context<'_>, _: &StreamSummary) -> Result<(), PluginError> {
        Ok(())
    }
}
impl DataCollector for Everything {}
impl ConfigProvider for Everything {
    const SCHEMA: &'static str = "{}";
}

fn main() {}
