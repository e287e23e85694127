//! The `Scheduler` capability: which key of an upstream's credential pool a call uses
//! (CLIProxyAPI's `Scheduler`). The gateway keeps the pool: it hands the scheduler only the keys
//! that are available (not cooling after a refusal, not yet tried by this call) and of the best
//! priority among those, and it fails over to another pick when the provider refuses the one
//! chosen.

use crate::{Plugin, PluginError, ffi};

/// Picks a key for each call to the upstreams whose config names this plugin
/// (`scheduler = "NAME"`). Called inline on the worker making the call, once per attempt: keep
/// it to a few microseconds, no I/O. An error, a panic or an index out of range makes the
/// gateway pick with the upstream's own `scheduling` policy instead: a request never fails
/// because its scheduler did.
#[diagnostic::on_unimplemented(
    message = "`{Self}` lists capability `Scheduler` but does not implement `plugin_abi::Scheduler`",
    label = "listed here"
)]
pub trait Scheduler: Plugin {
    fn pick(&self, req: &PickRequest<'_>) -> Result<Pick, PluginError>;
}

/// A scheduler's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// The candidate at this index of [`PickRequest::candidates`].
    Candidate(usize),
    /// The gateway's round-robin over the best priority.
    RoundRobin,
    /// The gateway's fill-first: the first available key of the best priority.
    FillFirst,
}

/// One pick: the upstream, the attempt (0 first, then one more per failover), the candidates.
pub struct PickRequest<'a> {
    raw: &'a ffi::RawPickRequest<'a>,
}

impl<'a> PickRequest<'a> {
    pub fn new(raw: &'a ffi::RawPickRequest<'a>) -> Self {
        PickRequest { raw }
    }

    pub fn upstream(&self) -> &'a str {
        self.raw.upstream.as_str()
    }

    /// The model sent upstream; empty for a call a plugin makes through the host HTTP client
    /// (an executor's), which the gateway cannot see into.
    pub fn model(&self) -> &'a str {
        self.raw.model.as_str()
    }

    /// Whether the call streams (false for a plugin's call through the host HTTP client).
    pub fn stream(&self) -> bool {
        self.raw.stream
    }

    pub fn attempt(&self) -> u32 {
        self.raw.attempt
    }

    /// The available keys of the best priority (priorities stay the gateway's: a key of a
    /// worse one serves only while these cool); never empty.
    pub fn candidates(&self) -> impl ExactSizeIterator<Item = Candidate<'a>> + 'a {
        self.raw.candidates.as_slice().iter().map(|raw| Candidate { raw })
    }
}

/// A key the scheduler may pick (its id and what the gateway knows of it; never the key).
#[derive(Clone, Copy)]
pub struct Candidate<'a> {
    raw: &'a ffi::RawCandidate<'a>,
}

impl<'a> Candidate<'a> {
    pub fn id(&self) -> &'a str {
        self.raw.id.as_str()
    }

    /// Lower is preferred by the gateway's own policies.
    pub fn priority(&self) -> i32 {
        self.raw.priority
    }

    /// Calls made with it since it joined the pool.
    pub fn calls(&self) -> u64 {
        self.raw.calls
    }

    /// Times the provider refused it (429, 401, 403).
    pub fn refusals(&self) -> u64 {
        self.raw.refusals
    }

    /// The status of its last refusal, if any.
    pub fn last_refusal(&self) -> Option<u16> {
        (self.raw.last_refusal != 0).then_some(self.raw.last_refusal)
    }
}

pub(crate) fn pick_to_raw(pick: Result<Pick, PluginError>) -> ffi::RawPick {
    match pick {
        Ok(Pick::Candidate(i)) => ffi::RawPick::Candidate(u32::try_from(i).unwrap_or(u32::MAX)),
        Ok(Pick::RoundRobin) => ffi::RawPick::RoundRobin,
        Ok(Pick::FillFirst) => ffi::RawPick::FillFirst,
        Err(e) => ffi::RawPick::Fail(e.into()),
    }
}
