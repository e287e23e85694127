//! The `Commands` capability: a command line of the plugin's own (CLIProxyAPI's
//! `CommandLinePlugin`), `gateway plugin NAME COMMAND [FLAGS]`.

use std::future::Future;

use abi_stable::std_types::{RErr, ROk, RResult};

use crate::{Plugin, PluginError, ffi};

/// Commands the operator runs as `gateway plugin NAME COMMAND [--FLAG VALUE]...`. The gateway
/// parses the flags with the [`CommandSpec`](crate::CommandSpec)s declared here (clap: `--help`,
/// missing or unknown flags are answered before the plugin is called), loads this plugin with
/// its configured settings in a process of its own (`init`, then [`Commands::run_command`],
/// then `shutdown`), prints what the command wrote and exits with its status. The host services
/// work as in the gateway; KV is the gateway's own when the gateway is not running.
#[diagnostic::on_unimplemented(
    message = "`{Self}` lists capability `Commands` but does not implement `plugin_abi::Commands`",
    label = "listed here"
)]
pub trait Commands: Plugin {
    const COMMANDS: &'static [crate::CommandSpec];

    /// Runs `call.command`. An error is printed as `error: MESSAGE` and exits with status 1.
    fn run_command(&self, call: CommandCall) -> impl Future<Output = Result<CommandOutput, PluginError>> + Send;
}

/// A command to run, with its flags as given (defaults applied; a switch that was given is
/// `"true"`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommandCall {
    pub command: String,
    pub flags: Vec<(String, String)>,
}

impl CommandCall {
    pub fn new(command: &str) -> Self {
        CommandCall { command: command.to_owned(), flags: Vec::new() }
    }

    /// With `--name value` (for tests of a command outside the gateway).
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.flags.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The value of flag `name`, if it was given or has a default.
    pub fn flag(&self, name: &str) -> Option<&str> {
        self.flags.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Whether switch `name` was given.
    pub fn switch(&self, name: &str) -> bool {
        self.flag(name) == Some("true")
    }

    pub(crate) fn from_raw(raw: &ffi::RawCommandCall<'_>) -> Self {
        CommandCall {
            command: raw.command.as_str().to_owned(),
            flags: raw.flags.iter().map(|kv| (kv.key.as_str().to_owned(), kv.value.as_str().to_owned())).collect(),
        }
    }
}

/// What a command printed, and the status the process exits with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommandOutput {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    /// Success, printing `stdout`.
    pub fn ok(stdout: impl Into<String>) -> Self {
        CommandOutput { status: 0, stdout: stdout.into(), stderr: String::new() }
    }

    /// Failure with `status`, printing `stderr`.
    pub fn failed(status: i32, stderr: impl Into<String>) -> Self {
        CommandOutput { status, stdout: String::new(), stderr: stderr.into() }
    }
}

pub(crate) fn output_future(
    f: impl Future<Output = Result<CommandOutput, PluginError>> + Send + 'static,
) -> ffi::RFuture<RResult<ffi::CommandOutput, ffi::PluginError>> {
    ffi::RFuture::new(async move {
        match f.await {
            Ok(o) => ROk(ffi::CommandOutput { status: o.status, stdout: o.stdout.into(), stderr: o.stderr.into() }),
            Err(e) => RErr(e.into()),
        }
    })
}
