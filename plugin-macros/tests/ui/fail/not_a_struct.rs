use plugin_abi::*;

#[derive(Plugin)]
#[plugin(name = "x")]
enum X {
    A,
}

fn main() {}
