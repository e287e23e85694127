//! Compile-pass and compile-fail cases for `#[derive(Plugin)]`, with committed `.stderr` files;
//! and, in `ui/boundary`, for the safety boundary of `plugin-abi`'s API: what safe Rust, host or
//! plugin, must not be able to do (forge an instance, host handle or stream state, hold a table
//! or a metadata string past its library, destroy an instance by hand). One trybuild run, so
//! they share one build of the dependencies.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
    t.compile_fail("tests/ui/boundary/*.rs");
}
