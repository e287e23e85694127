//! Reads `#[plugin(...)]` attributes into a [`PluginSpec`], collecting every error in one pass.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{DeriveInput, Ident, LitStr};

const KEYS: &[&str] = &["name", "version", "author", "description", "repository", "capabilities", "required"];

pub struct PluginSpec {
    pub ident: Ident,
    pub name: LitStr,
    pub version: Option<LitStr>,
    pub author: Option<LitStr>,
    pub description: Option<LitStr>,
    pub repository: Option<LitStr>,
    /// As written. The derive knows no capability by name: each is looked up as
    /// `plugin_abi::__private::caps::Name`, which the capability's definition declares.
    pub capabilities: Vec<Ident>,
    /// Capabilities the plugin cannot work without (exported too): a host that lacks one
    /// refuses the plugin instead of skipping the table.
    pub required: Vec<Ident>,
}

/// Collects errors so that all of them are reported at once, each on its own token.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, span: Span, message: impl std::fmt::Display) {
        let e = syn::Error::new(span, message);
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }
}

fn list(items: &[&str]) -> String {
    items.iter().map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", ")
}

pub fn parse(input: &DeriveInput) -> Result<PluginSpec, syn::Error> {
    let mut errors = Errors::default();
    match &input.data {
        syn::Data::Struct(_) => {}
        syn::Data::Enum(e) => {
            errors.push(e.enum_token.span, "`#[derive(Plugin)]` only works on structs, found an enum")
        }
        syn::Data::Union(u) => {
            errors.push(u.union_token.span, "`#[derive(Plugin)]` only works on structs, found a union")
        }
    }
    if let Some(param) = input.generics.params.first() {
        errors.push(
            param.span(),
            "a plugin type cannot be generic: the gateway loads exactly one concrete type per library",
        );
    }

    let mut name = None;
    let mut version = None;
    let mut author = None;
    let mut description = None;
    let mut repository = None;
    let mut capabilities: Option<Vec<Ident>> = None;
    let mut required: Option<Vec<Ident>> = None;

    for attr in input.attrs.iter().filter(|a| a.path().is_ident("plugin")) {
        let result = attr.parse_nested_meta(|meta| {
            let key = meta.path.require_ident()?.clone();
            let key_str = key.to_string();
            let slot = match key_str.as_str() {
                "name" => &mut name,
                "version" => &mut version,
                "author" => &mut author,
                "description" => &mut description,
                "repository" => &mut repository,
                "capabilities" | "required" => {
                    let list = if key_str == "capabilities" { &mut capabilities } else { &mut required };
                    if list.is_some() {
                        errors.push(key.span(), format!("duplicate key `{key}`"));
                    }
                    let mut caps: Vec<Ident> = Vec::new();
                    meta.parse_nested_meta(|cap| {
                        let ident = cap.path.require_ident()?.clone();
                        if caps.contains(&ident) {
                            errors.push(ident.span(), format!("capability `{ident}` is listed twice"));
                        } else {
                            caps.push(ident);
                        }
                        Ok(())
                    })?;
                    list.get_or_insert_with(Vec::new).extend(caps);
                    return Ok(());
                }
                _ => {
                    errors.push(key.span(), format!("unknown key `{key}`; expected one of {}", list(KEYS)));
                    // Skip the value so that parsing goes on with the next key.
                    if meta.input.peek(syn::Token![=]) {
                        meta.value()?.parse::<syn::Expr>()?;
                    } else if meta.input.peek(syn::token::Paren) {
                        meta.parse_nested_meta(|_| Ok(()))?;
                    }
                    return Ok(());
                }
            };
            let value: LitStr = meta.value()?.parse()?;
            if slot.is_some() {
                errors.push(key.span(), format!("duplicate key `{key}`"));
            } else {
                *slot = Some(value);
            }
            Ok(())
        });
        if let Err(e) = result {
            errors.push(e.span(), e);
        }
    }

    match &name {
        None => errors.push(
            input.ident.span(),
            "missing plugin name: add `#[plugin(name = \"...\")]`; the gateway config refers to plugins by it",
        ),
        Some(n) => {
            let v = n.value();
            if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
                errors.push(
                    n.span(),
                    format!("invalid plugin name {v:?}: expected ASCII letters, digits, `-`, `_` or `.`"),
                );
            }
        }
    }

    match (errors.0, name) {
        (Some(e), _) => Err(e),
        (None, Some(name)) => Ok(PluginSpec {
            ident: input.ident.clone(),
            name,
            version,
            author,
            description,
            repository,
            capabilities: capabilities.unwrap_or_default(),
            required: required.unwrap_or_default(),
        }),
        (None, None) => unreachable!("a missing name is reported above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(src: &str) -> Vec<String> {
        let input: DeriveInput = syn::parse_str(src).unwrap();
        match parse(&input) {
            Ok(_) => vec![],
            Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn accepts_a_full_spec() {
        let input: DeriveInput = syn::parse_str(
            r#"#[plugin(name = "a", version = "1.2.3", author = "me", capabilities(PreAuth, Response), required(Auth))] struct A;"#,
        )
        .unwrap();
        let spec = parse(&input).unwrap();
        assert_eq!(spec.name.value(), "a");
        assert_eq!(spec.version.unwrap().value(), "1.2.3");
        let caps: Vec<_> = spec.capabilities.iter().map(|c| c.to_string()).collect();
        assert_eq!(caps, ["PreAuth", "Response"]);
        assert_eq!(spec.required[0].to_string(), "Auth");
    }

    #[test]
    fn reports_every_error_at_once() {
        let errs = errors(
            r#"#[plugin(name = "a", name = "b", capabilities(Foo, PreAuth, PreAuth), colour = "red")] struct A<T>(T);"#,
        );
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs[0].contains("generic"));
        assert!(errs.iter().any(|e| e == "duplicate key `name`"));
        assert!(errs.iter().any(|e| e == "capability `PreAuth` is listed twice"));
        assert!(errs.iter().any(|e| e.starts_with("unknown key `colour`")));
    }

    #[test]
    fn requires_a_valid_name_and_a_struct() {
        assert!(errors("struct A;")[0].starts_with("missing plugin name"));
        assert!(errors(r#"#[plugin(name = "a b")] struct A;"#)[0].starts_with("invalid plugin name"));
        assert!(errors(r#"#[plugin(name = "a")] enum A {}"#)[0].contains("found an enum"));
    }
}
