// Nobody outside the SDK can point a host handle at memory of its own, nor read where it points.
use plugin_abi::ffi::HostHandle;

fn repoint(mut handle: HostHandle) -> HostHandle {
    let _where = handle.ctx;
    handle.ctx = std::ptr::null();
    handle
}

fn main() {}
