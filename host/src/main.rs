//! `gateway [--config FILE]` runs the gateway; `gateway check PLUGIN.so` inspects a plugin;
//! `gateway kv list|get` reads a plugin's KV namespace from a stopped gateway's data directory;
//! `gateway plugin NAME COMMAND [FLAGS]` runs a command plugin NAME declares.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gateway::plugin;

#[derive(Parser)]
#[command(version, about = "LLM API gateway with in-process native plugins")]
struct Cli {
    /// Gateway config (TOML). Without it, the embedded default: mock upstream, example plugins.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Print a plugin's metadata, ABI version, capabilities and config schema, without starting
    /// the gateway. Exits non-zero with the reason if the file is not a loadable plugin, or if
    /// `--plugin-config` does not satisfy its schema (every violation is listed).
    Check {
        path: PathBuf,
        /// A plugin config to validate: a TOML file (as under `[plugins.config]`) or JSON.
        #[arg(long)]
        plugin_config: Option<PathBuf>,
    },
    /// Write a new plugin crate: the chosen capabilities, each doing something small, a unit
    /// test per capability against a mock host, and the config snippet that loads it.
    NewPlugin {
        /// The plugin's name (letters, digits, `-`); also the crate's directory unless `--dir`.
        name: String,
        /// Comma-separated: PreAuth, PostAuth, RequestInterceptor, Response, DataCollector, Lifecycle.
        #[arg(long, value_delimiter = ',', default_value = "PostAuth,Response")]
        capabilities: Vec<String>,
        /// Where to write it (must not exist). Default: ./NAME
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The plugin-abi crate to depend on. Default: the one this gateway was built from.
        #[arg(long)]
        plugin_abi: Option<PathBuf>,
    },
    /// Run a command plugin instance NAME declares, with the plugin loaded as the config (put
    /// `--config` before `plugin`) configures it; `gateway plugin NAME --help` lists them.
    /// Prints what the command writes and exits with its status.
    Plugin {
        /// The plugin instance's name, then the command and its flags (all passed on: `--help`
        /// after NAME is the plugin's).
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            required = true,
            value_name = "NAME [COMMAND [FLAGS]]"
        )]
        args: Vec<String>,
    },
    /// Read a plugin instance's KV namespace from the data directory of a gateway that is not
    /// running (the config's `data_dir`; with no `--config`, the default's `./data`).
    Kv {
        #[command(subcommand)]
        command: KvCommand,
    },
}

#[derive(Subcommand)]
enum KvCommand {
    /// Keys of plugin instance PLUGIN starting with PREFIX, one per line.
    List {
        plugin: String,
        #[arg(default_value = "")]
        prefix: String,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// The value of KEY: as text if it is UTF-8, else in hex; an 8-byte value is also shown as
    /// the number a `kv_increment` counter holds (little-endian i64).
    Get { plugin: String, key: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Check { path, plugin_config } => check(&path, plugin_config.as_deref()),
        Command::Run => run(cli.config),
        Command::Kv { command } => kv(cli.config, command),
        Command::Plugin { args } => plugin_command(cli.config, &args[0], &args[1..]),
        Command::NewPlugin { name, capabilities, dir, plugin_abi } => {
            let plugin_abi =
                plugin_abi.unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../plugin-abi")));
            let plugin_abi = std::fs::canonicalize(&plugin_abi).unwrap_or(plugin_abi);
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let spec = gateway::scaffold::Spec { name, capabilities, plugin_abi };
            match gateway::scaffold::write(&spec, &dir) {
                Ok(files) => {
                    for f in files {
                        println!("wrote {}", f.display());
                    }
                    println!("next: cd {} && cargo test && cargo build --release", dir.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The config file's settings, or the embedded default's; `None` (the reason printed) if they
/// cannot be read.
fn settings(config: Option<&std::path::Path>) -> Option<gateway::config::GatewayConfig> {
    let loaded = match config {
        Some(path) => gateway::config::GatewayConfig::load(path),
        None => gateway::config::GatewayConfig::embedded_default(),
    };
    loaded.map_err(|e| eprintln!("error: {e}")).ok()
}

fn plugin_command(config: Option<PathBuf>, name: &str, args: &[String]) -> ExitCode {
    gateway::logging::init_with_default("warn");
    let Some(settings) = settings(config.as_deref()) else { return ExitCode::FAILURE };
    let ran = gateway::command::run(&settings, name, args);
    print!("{}", ran.stdout);
    eprint!("{}", ran.stderr);
    ExitCode::from(u8::try_from(ran.status).unwrap_or(1))
}

fn kv(config: Option<PathBuf>, command: KvCommand) -> ExitCode {
    use gateway::services::kv::{EmbeddedKv, KvLimits, KvStore};
    let Some(settings) = settings(config.as_deref()) else { return ExitCode::FAILURE };
    let path = settings.data_dir.join("kv.redb");
    if !path.is_file() {
        eprintln!("error: no KV store at {}: expected the data_dir of a gateway that has run", path.display());
        return ExitCode::FAILURE;
    }
    let limits = KvLimits { max_key_bytes: settings.kv.max_key_bytes, max_value_bytes: settings.kv.max_value_bytes };
    let store = match EmbeddedKv::open(&path, limits) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match command {
        KvCommand::List { plugin, prefix, limit } => store.list(&plugin, &prefix, limit).map(|keys| {
            for key in keys {
                println!("{key}");
            }
            true
        }),
        KvCommand::Get { plugin, key } => store.get(&plugin, &key, &mut |value| print_value(value)),
    };
    store.shutdown();
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("no such key (or it expired)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_value(value: &[u8]) {
    match std::str::from_utf8(value) {
        Ok(text) => println!("{text}"),
        Err(_) => println!("{}", value.iter().map(|b| format!("{b:02x}")).collect::<String>()),
    }
    if let Ok(bytes) = <[u8; 8]>::try_from(value) {
        println!("(as a kv_increment counter: {})", i64::from_le_bytes(bytes));
    }
}

/// A plugin config file as JSON: `.json` files as they are, anything else as TOML.
fn read_plugin_config(path: &std::path::Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| format!("{}: expected JSON, found {e}", path.display()))
    } else {
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| format!("{}: expected TOML, found {e}", path.display()))?;
        serde_json::to_value(table).map_err(|e| e.to_string())
    }
}

fn check(path: &std::path::Path, plugin_config: Option<&std::path::Path>) -> ExitCode {
    match plugin::inspect(path) {
        Ok(inspected) => {
            let info = &inspected.info;
            println!("name:         {}", info.name);
            println!("version:      {}", info.version);
            println!("author:       {}", info.author);
            println!("description:  {}", info.description);
            println!("repository:   {}", info.repository);
            println!("abi:          {} (gateway speaks {})", info.abi_version, plugin::host_abi_version());
            println!("capabilities: {}", info.capabilities.join(", "));
            if !info.required.is_empty() {
                println!("required:     {}", info.required.join(", "));
            }
            match &info.config_schema {
                Some(schema) => println!(
                    "config schema:\n{}",
                    serde_json::to_string_pretty(schema).unwrap_or_else(|_| schema.to_string())
                ),
                None => println!("config schema: (none)"),
            }
            let Some(config_path) = plugin_config else { return ExitCode::SUCCESS };
            let config = match read_plugin_config(config_path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match plugin::schema_errors(info, &config) {
                Ok(errors) if errors.is_empty() => {
                    println!("config:       {} satisfies the schema", config_path.display());
                    ExitCode::SUCCESS
                }
                Ok(errors) => {
                    eprintln!("config {} breaks the schema in {} place(s):", config_path.display(), errors.len());
                    for (field, rule) in errors {
                        eprintln!("  at `{field}`: {rule}");
                    }
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Option<PathBuf>) -> ExitCode {
    let Some(settings) = settings(config.as_deref()) else { return ExitCode::FAILURE };
    let telemetry = gateway::logging::init_with("info", &settings.telemetry);
    let result = gateway::run::run(settings, config);
    // Spans still queued are sent before the process ends.
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
