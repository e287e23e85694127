// A plugin's metadata strings live in its library: they cannot outlive it.
use std::sync::Arc;
use plugin_abi::ffi::Library;

fn name(lib: Arc<Library>) -> &'static str {
    lib.metadata().name
}

fn main() {}
