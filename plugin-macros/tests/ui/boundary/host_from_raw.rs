// A plugin gets its `Host` from `init` only: it cannot wrap a handle of its own making.
use plugin_abi::Host;
use plugin_abi::ffi::HostHandle;

fn wrap(handle: HostHandle) -> Host {
    Host::from_raw(handle)
}

fn main() {}
