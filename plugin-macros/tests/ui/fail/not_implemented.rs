use plugin_abi::*;

#[derive(Plugin)]
#[plugin(name = "x", capabilities(PostAuth))]
struct X;

impl Plugin for X {
    fn init(_: Config<'_>, _: Host) -> Result<Self, PluginError> {
        Ok(X)
    }
}

fn main() {}
