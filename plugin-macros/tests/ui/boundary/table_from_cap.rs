// The host reaches hooks through `Cap` methods only: neither the table nor the instance pointer.
use plugin_abi::ffi::{Cap, PreAuthV1};

fn raw_parts(cap: &Cap<PreAuthV1>) {
    let _table = cap.table();
    let _ptr = cap.instance().ptr();
}

fn main() {}
