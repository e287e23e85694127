//! The safe SDK plugin authors program against.

mod capability;
mod decision;
mod host;
mod view;

pub use capability::*;
pub use decision::*;
pub use host::{Config, Host, Level};
pub use view::{Chunk, Context, Headers, History, Request, Upstream, UpstreamResponse};
