// Destroying an instance is its `Drop`'s job, exactly once: the root module is not reachable.
use std::sync::Arc;
use plugin_abi::ffi::{Instance, Library};

fn destroy(lib: &Arc<Library>, instance: &Arc<Instance>) {
    (lib.root.destroy())(instance.ptr);
}

fn main() {}
