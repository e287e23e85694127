//! The safe SDK plugin authors program against.

mod capability;
mod decision;
mod host;
mod view;

pub use capability::*;
pub use decision::*;
pub use host::{App, Config, Direction, Event, Host, Level, Model, StopSignal};
pub use view::{Chunk, Context, Headers, History, Request, Upstream, UpstreamResponse};
