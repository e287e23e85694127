//! Plugin log lines with key-value fields of their own, as tracing events whose field names
//! are known only at run time.
//!
//! tracing names an event's fields in its callsite's static metadata. For each distinct
//! (level, field names) a plugin logs with, this makes one callsite (leaked: tracing keeps
//! registered callsites for the life of the process), registers it, and dispatches the line as
//! an event of that callsite, so every subscriber (the log's fmt layer, a JSON layer, a trace
//! exporter) sees ordinary fields. At most [`MAX_CALLSITES`] are made; past that, a line
//! carries its fields in one `fields` field.

use std::collections::HashMap;
use std::sync::{LazyLock, OnceLock};

use parking_lot::Mutex;
use tracing::callsite::{Callsite, Identifier};
use tracing::field::{Field, FieldSet, Value};
use tracing::metadata::Kind;
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata};

/// Fields of one line kept; more are dropped and counted in `fields_dropped`.
pub const MAX_FIELDS: usize = 16;
/// Distinct (level, names) sets given a callsite of their own.
pub const MAX_CALLSITES: usize = 1024;
/// The fields every plugin line has, before its own.
const FIXED: [&str; 3] = ["message", "plugin", "version"];
/// Every slot a line can fill: the fixed ones, its own, and `fields_dropped`.
const SLOTS: usize = FIXED.len() + MAX_FIELDS + 1;

struct Dynamic {
    meta: OnceLock<Metadata<'static>>,
}

impl Callsite for Dynamic {
    fn set_interest(&self, _: Interest) {}

    fn metadata(&self) -> &Metadata<'_> {
        self.meta.get().expect("a dynamic callsite's metadata is set before it is registered")
    }
}

type Key = (Level, Vec<String>);

static CALLSITES: LazyLock<Mutex<HashMap<Key, &'static Dynamic>>> = LazyLock::new(Mutex::default);

/// The callsite for a line at `level` with fields `names`, made the first time.
fn callsite(level: Level, names: Vec<String>) -> Option<&'static Dynamic> {
    let mut sites = CALLSITES.lock();
    let key = (level, names);
    if let Some(site) = sites.get(&key) {
        return Some(site);
    }
    if sites.len() >= MAX_CALLSITES {
        return None;
    }
    let site: &'static Dynamic = Box::leak(Box::new(Dynamic { meta: OnceLock::new() }));
    let names: Vec<&'static str> =
        FIXED.iter().copied().chain(key.1.iter().map(|n| &*Box::leak(n.clone().into_boxed_str()))).collect();
    let fields = FieldSet::new(Box::leak(names.into_boxed_slice()), Identifier(site));
    let meta = Metadata::new("plugin log", "plugin", level, None, None, None, fields, Kind::EVENT);
    let _ = site.meta.set(meta);
    tracing::callsite::register(site);
    sites.insert(key, site);
    Some(site)
}

/// A field name as the log shows it: ASCII letters, digits, `_` and `.` (others become `_`);
/// the gateway's own names get a `field.` prefix.
fn clean(name: &str) -> String {
    let name: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '.' { c } else { '_' }).collect();
    match name.as_str() {
        "" => "_".to_owned(),
        "message" | "plugin" | "version" | "fields" | "fields_dropped" => format!("field.{name}"),
        _ => name,
    }
}

/// Logs one line of plugin `plugin` (version `version`) with `fields`.
pub fn emit(level: Level, plugin: &str, version: &str, message: &str, fields: &[(&str, &str)]) {
    let mut names: Vec<String> = Vec::with_capacity(fields.len().min(MAX_FIELDS) + 1);
    let mut values: Vec<&str> = Vec::with_capacity(names.capacity());
    for (name, value) in fields {
        let name = clean(name);
        if names.len() < MAX_FIELDS && !names.contains(&name) {
            names.push(name);
            values.push(value);
        }
    }
    let dropped = fields.len() - names.len();
    if dropped > 0 {
        names.push("fields_dropped".to_owned());
    }
    let Some(site) = callsite(level, names) else {
        let fields = plugin_abi::ffi::with_fields("", fields);
        match level {
            Level::ERROR => {
                tracing::error!(target: "plugin", plugin, version, fields = fields.trim_start(), "{message}")
            }
            Level::WARN => tracing::warn!(target: "plugin", plugin, version, fields = fields.trim_start(), "{message}"),
            Level::INFO => tracing::info!(target: "plugin", plugin, version, fields = fields.trim_start(), "{message}"),
            Level::DEBUG => {
                tracing::debug!(target: "plugin", plugin, version, fields = fields.trim_start(), "{message}")
            }
            _ => tracing::trace!(target: "plugin", plugin, version, fields = fields.trim_start(), "{message}"),
        }
        return;
    };
    let meta = site.metadata();
    if !tracing::dispatcher::get_default(|d| d.enabled(meta)) {
        return;
    }
    let all: Vec<Field> = meta.fields().iter().collect();
    let text = format_args!("{message}");
    let mut slots: [(&Field, Option<&dyn Value>); SLOTS] = [(&all[0], None); SLOTS];
    slots[0] = (&all[0], Some(&text));
    slots[1] = (&all[1], Some(&plugin));
    slots[2] = (&all[2], Some(&version));
    for (i, value) in values.iter().enumerate() {
        slots[FIXED.len() + i] = (&all[FIXED.len() + i], Some(value));
    }
    if dropped > 0 {
        slots[FIXED.len() + values.len()] = (&all[FIXED.len() + values.len()], Some(&dropped));
    }
    Event::dispatch(meta, &meta.fields().value_set(&slots));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cleaned_and_the_gateways_own_prefixed() {
        assert_eq!(clean("upstream"), "upstream");
        assert_eq!(clean("gen_ai.model"), "gen_ai.model");
        assert_eq!(clean("a b/c"), "a_b_c");
        assert_eq!(clean(""), "_");
        assert_eq!(clean("plugin"), "field.plugin");
    }

    #[test]
    fn one_callsite_per_level_and_names() {
        let a = callsite(Level::INFO, vec!["x-test-only".into()]).unwrap();
        let b = callsite(Level::INFO, vec!["x-test-only".into()]).unwrap();
        let c = callsite(Level::WARN, vec!["x-test-only".into()]).unwrap();
        assert!(std::ptr::eq(a, b) && !std::ptr::eq(a, c));
        let names: Vec<&str> = a.metadata().fields().iter().map(|f| f.name()).collect();
        assert_eq!(names, ["message", "plugin", "version", "x-test-only"]);
    }
}
