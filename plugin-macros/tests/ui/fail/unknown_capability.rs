use plugin_abi::*;

#[derive(Plugin)]
#[plugin(name = "x", capabilities(PostAuth, Preauth))]
struct X;

fn main() {}
