use plugin_abi::*;

#[derive(Plugin)]
#[plugin(name = "x")]
struct X<T>(T);

fn main() {}
