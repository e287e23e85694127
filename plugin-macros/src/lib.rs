//! `#[derive(Plugin)]`: writes a plugin's root-module export and every `extern "C"` wrapper, so
//! that a plugin author writes safe Rust only. Parsing and expansion work on `proc_macro2` and are
//! unit-tested; `tests/ui` holds the compile-fail cases.
#![forbid(unsafe_code)]

mod expand;
mod parse;

/// See `plugin_abi::Plugin` for the attribute syntax.
#[proc_macro_derive(Plugin, attributes(plugin))]
pub fn derive_plugin(input: proc_macro::TokenStream) -> proc_macro::TokenStream {
    expand::derive(syn::parse_macro_input!(input as syn::DeriveInput)).into()
}
