//! What plugin authors import: the safe SDK (one trait per capability), the `#[derive(Plugin)]`
//! macro, and a mock host for unit tests. The raw C ABI lives in [`ffi`], the only module with
//! `unsafe` code; the host uses it directly.
//!
//! ```
//! use plugin_abi::{Decision, Plugin, PluginError, PostAuth, Request};
//!
//! #[derive(plugin_abi::Plugin)]
//! #[plugin(name = "hello", capabilities(PostAuth))]
//! struct Hello;
//!
//! impl Plugin for Hello {
//!     fn init(_: plugin_abi::Config<'_>, _: plugin_abi::Host) -> Result<Self, PluginError> { Ok(Hello) }
//! }
//!
//! impl PostAuth for Hello {
//!     fn on_post_auth(&self, _req: &Request<'_>) -> Result<Decision, PluginError> { Ok(Decision::Continue) }
//! }
//! ```

pub mod ffi;
#[cfg(feature = "schema")]
pub mod schema;
mod sdk;
#[cfg(feature = "testing")]
pub mod testing;

pub use ffi::HistoryLimits;
pub use plugin_macros::Plugin;
pub use sdk::*;

/// The ABI version this crate defines (its package version).
pub const ABI_VERSION: &str = env!("CARGO_PKG_VERSION");

#[doc(hidden)]
pub mod __private {
    pub use crate::ffi::TableId;
    pub use crate::ffi::caps;
    pub use crate::ffi::define::{Entry, Implemented, Marker, NotImplemented, exported_entries};
    pub use crate::ffi::glue::{Exported, lib_header};
    pub use crate::ffi::{PluginMetadata, TableEntry};
    pub use abi_stable::library::LibHeader;
    pub use abi_stable::std_types::{RSlice, RStr};
}

// `docs/plugin-guide.md`, the plugin author's guide: every Rust example in it runs as a doctest.
// Its examples test with `plugin_abi::testing`, so it is here with that feature (on in the
// workspace's test builds, and for docs.rs).
pub mod guide {
    #![cfg_attr(feature = "testing", doc = include_str!("../../docs/plugin-guide.md"))]
    #![cfg_attr(
        not(feature = "testing"),
        doc = "The plugin author's guide, `docs/plugin-guide.md`: build these docs with `--features testing` to read it here."
    )]
}
