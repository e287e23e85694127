use plugin_abi::*;

#[derive(Plugin)]
#[plugin(name = "x", capabilities(PostAuth, Preauth))]
struct X;

impl Plugin for X {
    fn init(_: Config<'_>, _: Host) -> Result<Self, PluginError> {
        Ok(X)
    }
}

impl PostAuth for X {
    fn on_post_auth(&self, _: &Request<'_>) -> Result<Decision, PluginError> {
        Ok(Decision::Continue)
    }
}

fn main() {}
