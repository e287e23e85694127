//! `gateway [--config FILE]` runs the gateway; `gateway check PLUGIN.so` inspects a plugin.
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
    /// the gateway. Exits non-zero with the reason if the file is not a loadable plugin.
    Check { path: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Check { path } => check(&path),
        Command::Run => run(cli.config),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
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
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Option<PathBuf>) -> ExitCode {
    gateway::logging::init();
    let loaded = match &config {
        Some(path) => gateway::config::GatewayConfig::load(path),
        None => gateway::config::GatewayConfig::embedded_default(),
    };
    let settings = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match gateway::run::run(settings, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
