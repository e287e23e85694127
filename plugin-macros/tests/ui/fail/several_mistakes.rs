use plugin_abi::*;

// Every mistake is reported at once, each on its own token.
#[derive(Plugin)]
#[plugin(name = "x", capabilities(PreAuth, PreAuth), colour = "red")]
#[plugin(capabilities(Telepathy))]
struct X;

fn main() {}
