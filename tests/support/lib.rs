//! Helpers shared by the integration tests: where the built plugins are, and temp config.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use gateway::config::{FailMode, PluginConfig};

/// `target/<profile>`, where cargo puts the gateway binary and every plugin `.so`.
pub fn target_dir() -> PathBuf {
    // Test binaries live in target/<profile>/deps.
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

/// The built library of crate `crate_name` (`-` becomes `_`), which must exist.
pub fn plugin_so(crate_name: &str) -> PathBuf {
    let path = target_dir().join(format!("lib{}.so", crate_name.replace('-', "_")));
    assert!(
        path.is_file(),
        "{} is missing: build the workspace and the fixtures first (`make build`)",
        path.display()
    );
    path
}

/// The gateway executable.
pub fn gateway_bin() -> PathBuf {
    let path = target_dir().join("gateway");
    assert!(
        path.is_file(),
        "{} is missing: run `make build` first",
        path.display()
    );
    path
}

/// A plugin entry as the gateway config would give it, with a config given in TOML.
pub fn plugin_config(path: PathBuf, config_toml: &str) -> PluginConfig {
    PluginConfig {
        path,
        enabled: true,
        order: 0,
        on_error: FailMode::FailClosed,
        isolate: false,
        quarantine_after: 3,
        config: toml::from_str(config_toml).expect("test config is valid TOML"),
    }
}
