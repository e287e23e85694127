//! `gateway plugin NAME COMMAND [FLAGS]`: runs a command a plugin declares (the `Commands`
//! capability) in this process, with the plugin loaded as the config configures it and the
//! host services it has in the gateway.

use std::sync::Arc;
use std::time::Duration;

use abi_stable::std_types::{RErr, ROk};
use plugin_abi::ffi::{self, CommandSpec, RawCommandCall, RawKeyValue};

use crate::config::{GatewayConfig, PluginConfig};
use crate::metrics::Metrics;
use crate::plugin;
use crate::services::Services;
use crate::services::events::EventBus;
use crate::services::http::{HttpClient, HttpTarget};
use crate::services::kv::{EmbeddedKv, KvLimits, KvStore};
use crate::services::lookup::Lookup;
use crate::upstream::Upstreams;

/// What the command printed and the status to exit with.
#[derive(Debug, Default)]
pub struct Ran {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    fn failed(status: i32, message: impl std::fmt::Display) -> Ran {
        Ran { status, stdout: String::new(), stderr: format!("error: {message}\n") }
    }
}

/// Runs `args` (a command and its flags) against plugin instance `name` of `config`. Errors
/// that stop it before the plugin's command runs (no such plugin, a load failure, no commands)
/// are returned as a failed [`Ran`] with the reason, as are flags clap refuses (status 2).
pub fn run(config: &GatewayConfig, name: &str, args: &[String]) -> Ran {
    let entry = match find_entry(config, name) {
        Ok(entry) => entry,
        Err(e) => return Ran::failed(1, e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
        Ok(r) => r,
        Err(e) => return Ran::failed(1, format!("cannot start the async runtime: {e}")),
    };
    let _entered = runtime.enter();
    let (services, warning) = match services(config) {
        Ok(s) => s,
        Err(e) => return Ran::failed(1, e),
    };
    let mut ran = match plugin::load(entry, &config.data_dir.join("plugins"), &[], &services) {
        Ok(loaded) => {
            let ran = match loaded.cap::<ffi::CommandsV1>() {
                Some(cap) => call(&runtime, &cap, name, args),
                None => Ran::failed(
                    1,
                    format!("plugin `{name}` declares no commands: expected it to export the Commands capability"),
                ),
            };
            drop(loaded);
            ran
        }
        Err(e) => Ran::failed(1, e),
    };
    services.events.shutdown();
    services.kv.shutdown();
    drop(_entered);
    runtime.shutdown_timeout(Duration::from_secs(5));
    if let Some(warning) = warning {
        ran.stderr.insert_str(0, &warning);
    }
    ran
}

/// The enabled entry whose instance name is `name` (its `name`, or the name its file declares).
fn find_entry<'c>(config: &'c GatewayConfig, name: &str) -> Result<&'c PluginConfig, String> {
    let mut known = Vec::new();
    for entry in config.enabled_plugins() {
        let instance = match &entry.name {
            Some(n) => n.clone(),
            None => match plugin::inspect(&entry.path) {
                Ok(inspected) => inspected.info.name,
                Err(_) => continue,
            },
        };
        if instance == name {
            return Ok(entry);
        }
        known.push(instance);
    }
    Err(format!("no enabled plugin named `{name}` in the config; expected one of {known:?}"))
}

/// The host services, as the gateway opens them. KV is the gateway's store unless a running
/// gateway holds it: then an empty in-memory store, and a warning saying so.
fn services(config: &GatewayConfig) -> Result<(Arc<Services>, Option<String>), String> {
    let metrics = Arc::new(Metrics::default());
    let limits = KvLimits { max_key_bytes: config.kv.max_key_bytes, max_value_bytes: config.kv.max_value_bytes };
    let path = config.data_dir.join("kv.redb");
    let (kv, warning): (Arc<dyn KvStore>, _) = match EmbeddedKv::open(&path, limits) {
        Ok(kv) => (kv, None),
        Err(e) => {
            let memory = EmbeddedKv::with_backend("memory", redb::backends::InMemoryBackend::new, limits)
                .map_err(|e| e.to_string())?;
            (memory, Some(format!("warning: {e}; the command runs with an empty KV store whose writes are not kept\n")))
        }
    };
    // Keys stored through the admin API join the pools, as in the gateway (none from the
    // in-memory stand-in).
    let upstreams = Upstreams::from_config(config, Some(&*kv));
    let http = Arc::new(HttpClient::new(HttpTarget::all(&upstreams), metrics.clone()));
    let events = EventBus::start(config.event_queue, metrics.events_dropped.clone());
    let lookup = Lookup::from_config(config, &upstreams);
    Ok((Services::new(kv, events, lookup, config.logging.clone(), metrics, http), warning))
}

/// Parses `args` with the plugin's declared commands and runs the one named.
fn call(
    runtime: &tokio::runtime::Runtime,
    cap: &plugin_abi::ffi::Cap<ffi::CommandsV1>,
    name: &str,
    args: &[String],
) -> Ran {
    let specs = cap.commands();
    let cli = parser(name, specs);
    let matches =
        match cli.try_get_matches_from(std::iter::once(format!("gateway plugin {name}")).chain(args.iter().cloned())) {
            Ok(m) => m,
            Err(e) => {
                let text = e.render().to_string();
                return if e.use_stderr() {
                    Ran { status: 2, stdout: String::new(), stderr: text }
                } else {
                    Ran { status: 0, stdout: text, stderr: String::new() }
                };
            }
        };
    let Some((command, sub)) = matches.subcommand() else {
        return Ran { status: 2, stdout: String::new(), stderr: parser(name, specs).render_help().to_string() };
    };
    let Some(spec) = specs.iter().find(|s| s.name.as_str() == command) else {
        return Ran::failed(2, format!("unknown command `{command}`"));
    };
    let flags: Vec<(String, String)> = spec
        .flags
        .iter()
        .filter_map(|f| {
            let id = f.name.as_str();
            let value = if f.takes_value { sub.get_one::<String>(id).cloned()? } else { sub.get_flag(id).to_string() };
            Some((id.to_owned(), value))
        })
        .collect();
    let raw_flags: Vec<RawKeyValue<'_>> =
        flags.iter().map(|(k, v)| RawKeyValue { key: k.as_str().into(), value: v.as_str().into() }).collect();
    let raw = RawCommandCall { command: command.into(), flags: raw_flags.as_slice().into() };
    match runtime.block_on(cap.run(&raw)) {
        ROk(out) => Ran { status: out.status, stdout: out.stdout.into(), stderr: out.stderr.into() },
        RErr(e) => Ran::failed(1, format!("plugin `{name}`, command `{command}`: {}", e.message)),
    }
}

/// The clap parser for plugin `name`'s commands.
fn parser(name: &str, specs: &[CommandSpec]) -> clap::Command {
    let commands = specs.iter().map(|spec| {
        let flags = spec.flags.iter().map(|f| {
            let arg = clap::Arg::new(f.name.as_str().to_owned())
                .long(f.name.as_str().to_owned())
                .help(f.help.as_str().to_owned());
            if !f.takes_value {
                return arg.action(clap::ArgAction::SetTrue);
            }
            let arg = arg.num_args(1).required(f.required).value_name("VALUE");
            if f.default.is_empty() { arg } else { arg.default_value(f.default.as_str().to_owned()) }
        });
        clap::Command::new(spec.name.as_str().to_owned()).about(spec.about.as_str().to_owned()).args(flags)
    });
    clap::Command::new(format!("gateway plugin {name}"))
        .about(format!("Commands of plugin `{name}`, loaded with its settings from the config"))
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommands(commands)
}
