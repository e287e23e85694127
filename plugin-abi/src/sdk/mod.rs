//! The safe SDK plugin authors program against.

mod capability;
mod decision;
mod host;
mod view;

pub use capability::*;
pub use decision::*;
pub use host::{App, Config, Direction, Event, Host, Level, Model, StopSignal};
pub use view::{Chunk, Context, Headers, History, Request, Upstream, UpstreamResponse};

/// The text of a caught panic.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}
