//! Turns a [`PluginSpec`] into the plugin's exports.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::{DeriveInput, Ident, LitStr};

use crate::parse::{PluginSpec, parse};

pub fn derive(input: DeriveInput) -> TokenStream {
    match parse(&input) {
        Ok(spec) => expand(&spec),
        Err(e) => e.to_compile_error(),
    }
}

fn lit_or(value: &Option<LitStr>, default: TokenStream) -> TokenStream {
    match value {
        Some(v) => quote!(#v),
        None => default,
    }
}

pub fn expand(spec: &PluginSpec) -> TokenStream {
    let ident = &spec.ident;
    let name = &spec.name;
    let version = lit_or(&spec.version, quote!(::core::env!("CARGO_PKG_VERSION")));
    let author = lit_or(&spec.author, quote!(::core::env!("CARGO_PKG_AUTHORS")));
    let description = lit_or(&spec.description, quote!(::core::env!("CARGO_PKG_DESCRIPTION")));
    let repository = lit_or(&spec.repository, quote!(::core::env!("CARGO_PKG_REPOSITORY")));
    // Spanned on the capability as written, so "does not implement" points at it.
    // Each listed capability is a marker type its definition declares; its table entry for this
    // plugin type exists only if the type implements the capability's trait. A misspelled name
    // is an unknown type (rustc suggests the near ones); a missing impl an unmet bound.
    // Every capability the type implements is exported, found by probing each known one (the
    // derive knows none by name). A listed capability is also checked: each is a marker type its
    // definition declares, whose entry exists only if the type implements the capability's
    // trait. A misspelled name is an unknown type (rustc suggests the near ones); a listed but
    // unimplemented one an unmet bound, spanned on the name as written.
    let checks = spec.capabilities.iter().chain(&spec.required).map(|cap| {
        let ty = Ident::new(&ident.to_string(), cap.span());
        quote_spanned!(cap.span()=> const _: ::plugin_abi::__private::TableEntry =
            <::plugin_abi::__private::caps::#cap as ::plugin_abi::__private::Entry<#ty>>::ENTRY;)
    });
    let required = spec
        .required
        .iter()
        .map(|cap| quote_spanned!(cap.span()=> __p::TableId::of::<<__p::caps::#cap as __p::Marker>::Table>()));
    let export = Ident::new(&abi_stable_shared::mangled_root_module_loader_name(), Span::call_site());
    let abort_message = format!(
        "plugin `{}` is being built with `panic = \"abort\"`: the gateway contains a plugin's panics only \
         when they unwind (with abort, any panic in the plugin ends the whole gateway, and the gateway \
         refuses to load it); remove `panic = \"abort\"` from the Cargo profile or `-C panic=abort` from RUSTFLAGS",
        name.value()
    );
    quote! {
        #[cfg(panic = "abort")]
        ::core::compile_error!(#abort_message);

        const _: () = {
            use ::plugin_abi::__private as __p;

            #(#checks)*

            impl __p::Exported for #ident {
                fn metadata() -> &'static __p::PluginMetadata {
                    use __p::{Implemented as _, NotImplemented as _};
                    static ENTRIES: ::std::sync::OnceLock<::std::vec::Vec<__p::TableEntry>> =
                        ::std::sync::OnceLock::new();
                    static METADATA: ::std::sync::OnceLock<__p::PluginMetadata> = ::std::sync::OnceLock::new();
                    METADATA.get_or_init(|| {
                        let entries = ENTRIES.get_or_init(|| {
                            __p::exported_entries::<#ident>(::plugin_abi::__implemented_capabilities!(#ident))
                        });
                        __p::PluginMetadata {
                            name: __p::RStr::from_str(#name),
                            version: __p::RStr::from_str(#version),
                            author: __p::RStr::from_str(#author),
                            description: __p::RStr::from_str(#description),
                            repository: __p::RStr::from_str(#repository),
                            capabilities: __p::RSlice::from_slice(entries),
                        }
                    })
                }
                const REQUIRED: &'static [__p::TableId] = &[#(#required),*];
            }

            #[unsafe(no_mangle)]
            pub static #export: __p::LibHeader = __p::lib_header::<#ident>();
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_one_root_module_with_listed_capabilities() {
        let input: DeriveInput =
            syn::parse_str(r#"#[plugin(name = "x", capabilities(PostAuth, StreamChunk))] struct X;"#).unwrap();
        let out = derive(input).to_string();
        assert!(out.contains("caps :: PostAuth as :: plugin_abi :: __private :: Entry < X >"), "{out}");
        assert!(out.contains("caps :: StreamChunk as :: plugin_abi :: __private :: Entry < X >"), "{out}");
        assert!(out.contains("__implemented_capabilities ! (X)"), "{out}");
        assert!(out.contains("no_mangle"), "{out}");
        assert!(out.contains("CARGO_PKG_VERSION"), "{out}");
        assert_eq!(out.matches("LibHeader").count(), 1);
    }

    #[test]
    fn refuses_to_build_with_panic_abort() {
        let input: DeriveInput = syn::parse_str(r#"#[plugin(name = "x", capabilities(PostAuth))] struct X;"#).unwrap();
        let out = derive(input).to_string();
        assert!(out.contains(r#"# [cfg (panic = "abort")] :: core :: compile_error !"#), "{out}");
    }

    #[test]
    fn emits_only_errors_for_a_bad_spec() {
        let input: DeriveInput = syn::parse_str("struct X;").unwrap();
        let out = derive(input).to_string();
        assert!(out.contains("compile_error"), "{out}");
        assert!(!out.contains("LibHeader"), "{out}");
    }
}
