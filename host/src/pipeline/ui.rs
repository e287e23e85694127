//! Plugin UIs (capability `Ui`): each plugin's static files and manifest, copied out of the
//! plugin when a pipeline is made (so a file is served from the host's memory, and a swap
//! changes a plugin's pages with its version).

use std::collections::HashMap;

use bytes::Bytes;
use plugin_abi::ffi;
use sha2::{Digest, Sha256};

use super::Hook;

/// One static file.
pub struct Asset {
    pub content_type: String,
    pub body: Bytes,
    /// A strong validator: the SHA-256 of the body, quoted.
    pub etag: String,
}

/// One plugin's UI.
pub struct PluginUi {
    pub title: String,
    pub sidebar: String,
    pub entry: String,
    pub admin_routes: Vec<String>,
    pub assets: HashMap<String, Asset>,
}

/// Every plugin's UI in one pipeline.
#[derive(Default)]
pub struct UiTable {
    plugins: HashMap<String, PluginUi>,
    /// What is wrong with the declarations; a pipeline with errors is refused.
    errors: Vec<String>,
}

/// The content type for a file, from its extension, when the plugin did not give one.
pub fn content_type_of(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext.to_ascii_lowercase()).as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("txt") => "text/plain; charset=utf-8",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}

impl Asset {
    pub fn new(content_type: String, body: Bytes) -> Self {
        let digest = Sha256::digest(&body);
        let etag = format!("\"{}\"", digest.iter().take(16).map(|b| format!("{b:02x}")).collect::<String>());
        Asset { content_type, body, etag }
    }
}

impl PluginUi {
    /// Plugin `name`'s UI, copied out of its library; what is wrong with it goes to `errors`.
    fn copy(name: &str, m: &ffi::UiManifest, files: &[ffi::UiAsset], errors: &mut Vec<String>) -> PluginUi {
        let mut assets = HashMap::new();
        for a in files {
            let path = a.path.as_str().trim_start_matches('/').to_owned();
            if path.is_empty() || path.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
                errors.push(format!(
                    "plugin `{name}` declares UI file `{}`: expected a relative path like `app.js` or `img/logo.svg`",
                    a.path.as_str()
                ));
                continue;
            }
            let content_type = match a.content_type.as_str() {
                "" => content_type_of(&path).to_owned(),
                given => given.to_owned(),
            };
            let asset = Asset::new(content_type, Bytes::copy_from_slice(a.body.as_slice()));
            if assets.insert(path.clone(), asset).is_some() {
                errors.push(format!("plugin `{name}` declares UI file `{path}` twice"));
            }
        }
        let entry = m.entry.as_str().trim_start_matches('/');
        if !assets.contains_key(entry) {
            let mut files: Vec<&str> = assets.keys().map(String::as_str).collect();
            files.sort_unstable();
            errors.push(format!(
                "plugin `{name}`'s UI entry page is `{entry}`, but its files are [{}]",
                files.join(", ")
            ));
        }
        PluginUi {
            title: m.title.as_str().to_owned(),
            sidebar: m.sidebar.as_str().to_owned(),
            entry: entry.to_owned(),
            admin_routes: m.admin_routes.as_str().split_whitespace().map(str::to_owned).collect(),
            assets,
        }
    }
}

impl UiTable {
    pub(super) fn build(hooks: &[Hook<ffi::UiV1>]) -> UiTable {
        let mut table = UiTable::default();
        for hook in hooks {
            let name = hook.slot.name();
            let ui = PluginUi::copy(name, hook.cap.manifest(), hook.cap.assets(), &mut table.errors);
            table.plugins.insert(name.to_owned(), ui);
        }
        table
    }

    pub fn errors(&self) -> &[String] {
        &self.errors
    }

    pub fn plugin(&self, name: &str) -> Option<&PluginUi> {
        self.plugins.get(name)
    }
}

impl super::Pipeline {
    /// Plugin `name`'s UI manifest, for the admin API; `null` if it has no UI.
    pub fn ui_manifest(&self, name: &str) -> serde_json::Value {
        self.ui.plugin(name).map_or(serde_json::Value::Null, |ui| {
            serde_json::json!({
                "title": ui.title,
                "sidebar": ui.sidebar,
                "entry": format!("/ui/plugins/{name}/{}", ui.entry),
                "admin_routes": ui.admin_routes.iter().map(|r| format!("/admin/plugins/{name}/{r}")).collect::<Vec<_>>(),
            })
        })
    }

    /// Plugin `name`'s UI, if it has one.
    pub fn plugin_ui(&self, name: &str) -> Option<&PluginUi> {
        self.ui.plugin(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_abi::{UiAsset, UiManifest};

    #[test]
    fn files_get_a_content_type_and_an_etag_that_follows_the_body() {
        let mut errors = Vec::new();
        let files = [
            UiAsset::new("/index.html", "", b"<p>hi</p>"),
            UiAsset::new("data.bin", "application/x-custom", b"1"),
            UiAsset::new("img/logo.svg", "", b"<svg/>"),
        ];
        let ui = PluginUi::copy("p", &UiManifest::new("P").admin_routes("stats  events"), &files, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(ui.assets["index.html"].content_type, "text/html; charset=utf-8");
        assert_eq!(ui.assets["data.bin"].content_type, "application/x-custom");
        assert_eq!(ui.assets["img/logo.svg"].content_type, "image/svg+xml");
        assert_eq!(ui.admin_routes, ["stats", "events"]);
        let (a, b) =
            (Asset::new(String::new(), Bytes::from_static(b"a")), Asset::new(String::new(), Bytes::from_static(b"b")));
        assert_ne!(a.etag, b.etag);
        assert!(a.etag.starts_with('"') && a.etag.ends_with('"') && a.etag.len() == 34, "{}", a.etag);
    }

    #[test]
    fn a_missing_entry_page_a_duplicate_or_an_escaping_path_is_an_error_naming_it() {
        let mut errors = Vec::new();
        let files = [
            UiAsset::new("app.js", "", b""),
            UiAsset::new("app.js", "", b""),
            UiAsset::new("../etc/passwd", "", b""),
            UiAsset::new("a//b", "", b""),
        ];
        PluginUi::copy("p", &UiManifest::new("P"), &files, &mut errors);
        assert_eq!(
            errors,
            [
                "plugin `p` declares UI file `app.js` twice",
                "plugin `p` declares UI file `../etc/passwd`: expected a relative path like `app.js` or `img/logo.svg`",
                "plugin `p` declares UI file `a//b`: expected a relative path like `app.js` or `img/logo.svg`",
                "plugin `p`'s UI entry page is `index.html`, but its files are [app.js]",
            ]
        );
    }
}
