// A host cannot make an instance pointer of its own to call a hook with.
use plugin_abi::ffi::InstancePtr;

fn main() {
    let _forged = InstancePtr(std::ptr::null());
}
