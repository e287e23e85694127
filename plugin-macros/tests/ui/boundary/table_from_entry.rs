// A table read from an entry would be `&'static` into a library that can be unloaded.
use plugin_abi::ffi::{PreAuthV1, TableEntry};

fn table(entry: &TableEntry) -> &'static PreAuthV1 {
    unsafe { entry.get::<PreAuthV1>() }.unwrap()
}

fn main() {}
