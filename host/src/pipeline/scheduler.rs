//! Scheduler plugins bound to the credential pools that name them (see
//! [`crate::upstream::credentials`]): the pool asks, the plugin picks among the keys it is
//! offered. A plugin that fails, panics, is quarantined or answers out of range leaves the pick
//! to the pool's own policy; requests never fail for it.

use std::sync::Arc;

use abi_stable::std_types::RSlice;
use plugin_abi::ffi::{self, RawCandidate, RawPick, RawPickRequest};

use super::{Hook, Outcome, Pipeline};
use crate::config::Scheduling;
use crate::upstream::credentials::{CallFor, Candidate, PickPlugin, PluginPick};

impl Outcome for RawPick {
    fn error(&self) -> Option<&ffi::PluginError> {
        match self {
            RawPick::Fail(e) => Some(e),
            _ => None,
        }
    }
}

/// One plugin's `Scheduler` hook, as a pool holds it.
struct Bound(Arc<Hook<ffi::SchedulerV1>>);

impl PickPlugin for Bound {
    fn pick(
        &self,
        upstream: &str,
        call: CallFor<'_>,
        attempt: u32,
        candidates: &[Candidate<'_>],
    ) -> Option<PluginPick> {
        let hook = &self.0;
        // Quarantined: the pool's policy picks, until the breaker lets one call probe it.
        let probe = hook.slot.admit()?;
        let raw: Vec<RawCandidate<'_>> = candidates
            .iter()
            .map(|c| RawCandidate {
                id: c.id.into(),
                priority: c.priority,
                calls: c.calls,
                refusals: c.refusals,
                last_refusal: c.last_refusal,
            })
            .collect();
        let req = RawPickRequest {
            upstream: upstream.into(),
            model: call.model.into(),
            stream: call.stream,
            attempt,
            candidates: RSlice::from_slice(&raw),
        };
        let which = ffi::SchedulerV1::pick;
        match hook.invoke(which, probe, |cap| cap.pick(&req)) {
            RawPick::Candidate(i) => Some(PluginPick::Candidate(i as usize)),
            RawPick::RoundRobin => Some(PluginPick::Builtin(Scheduling::RoundRobin)),
            RawPick::FillFirst => Some(PluginPick::Builtin(Scheduling::FillFirst)),
            RawPick::Fail(e) => {
                tracing::warn!(
                    plugin = hook.slot.name(),
                    upstream,
                    code = e.code,
                    "scheduler failed, the upstream's own policy picks: {}",
                    e.message
                );
                None
            }
        }
    }
}

impl Pipeline {
    /// Binds each pool that names a scheduler to this pipeline's instance of it, once this
    /// pipeline serves (a pipeline that is built and refused binds nothing).
    pub fn bind_schedulers(&self) {
        for upstream in &self.upstreams.upstreams {
            let Some(pool) = upstream.pool() else { continue };
            let Some(name) = &pool.scheduler else { continue };
            let hook = self.schedulers.iter().find(|h| h.slot.name() == name);
            pool.bind(hook.map(|h| Box::new(Bound(h.clone())) as Box<dyn PickPlugin>));
        }
    }

    /// Lets go of every scheduler (the gateway is shutting down: no plugin outlives it in a pool).
    pub fn unbind_schedulers(&self) {
        for upstream in &self.upstreams.upstreams {
            if let Some(pool) = upstream.pool() {
                pool.bind(None);
            }
        }
    }

    /// Every pool's scheduler is loaded with the `Scheduler` capability.
    pub(super) fn check_schedulers(&self) -> Result<(), String> {
        for upstream in &self.upstreams.upstreams {
            let Some(name) = upstream.pool().and_then(|p| p.scheduler.as_ref()) else { continue };
            if !self.schedulers.iter().any(|h| h.slot.name() == name) {
                let has: Vec<&str> = self.schedulers.iter().map(|h| h.slot.name()).collect();
                return Err(format!(
                    "upstream `{}`: scheduler `{name}` is not a loaded plugin with the Scheduler capability; expected one of {has:?}",
                    upstream.name()
                ));
            }
        }
        Ok(())
    }
}
