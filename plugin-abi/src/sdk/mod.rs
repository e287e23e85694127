//! The safe SDK plugin authors program against.

mod capability;
pub(crate) mod chat;
pub(crate) mod commands;
mod decision;
mod delta;
pub(crate) mod executor;
mod host;
mod http;
pub(crate) mod routes;
pub(crate) mod scheduler;
mod stream;
mod view;

pub use crate::ffi::{CommandSpec, FlagSpec, UiAsset, UiManifest};
pub use capability::*;
pub use chat::{Chat, Message};
pub use commands::{CommandCall, CommandOutput, Commands};
pub use decision::*;
pub use delta::{Delta, DeltaReader};
pub use executor::{
    ChunkStream, ExecError, ExecRequest, ExecResponse, Executor, ExecutorInfo, ExecutorModel, HttpPassthrough,
};
pub use host::{App, Config, Direction, Event, Host, Level, Model, StopSignal};
pub use http::{HttpRequest, HttpResponse};
pub use routes::{BodyStream, Route, RouteKind, RouteRequest, RouteResponse, Routes};
pub use scheduler::{Candidate, Pick, PickRequest, Scheduler};
pub use view::{Chunk, Context, Headers, History, Request, Upstream, UpstreamResponse};

/// Runs `f`, turning a panic into its message. The payload is dropped inside a guard of its own:
/// a payload whose `Drop` panics (`panic_any(x)`) would otherwise panic again where nothing
/// catches it; such a payload is leaked instead.
pub(crate) fn catch<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let message = panic_message(&*payload).to_owned();
        if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
            std::mem::forget(again);
        }
        message
    })
}

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
