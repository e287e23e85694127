use plugin_abi::*;

#[derive(Plugin)]
#[plugin(name = "x", version = "1.0.0")]
#[plugin(name = "y")]
struct X;

fn main() {}
