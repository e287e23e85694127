use plugin_abi::*;

#[derive(Plugin)]
#[plugin(version = "1.0.0", capabilities(PostAuth))]
struct X;

fn main() {}
