//! Credential scheduler: each key of a pool may take `quotas[id]` calls per `window_secs` (a key
//! without a quota is unlimited). The key with the most quota left takes the call (ties: the
//! gateway's order, best priority first); when every key it is offered has used its quota, it
//! leaves the pick to the gateway's round-robin. Counts are this instance's, in memory: they
//! start afresh when it is reloaded.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use plugin_abi::{Config, ConfigProvider, Host, Pick, PickRequest, Plugin, PluginError, Scheduler};

#[derive(plugin_abi::Plugin)]
#[plugin(name = "quota-scheduler")]
pub struct QuotaScheduler {
    quotas: BTreeMap<String, u64>,
    window: Duration,
    started: Instant,
    /// By upstream, then key id: the window it was counted in, and the calls in it.
    used: Mutex<HashMap<String, HashMap<String, (u64, u64)>>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    quotas: BTreeMap<String, u64>,
    #[serde(default = "day")]
    window_secs: u64,
}

fn day() -> u64 {
    86_400
}

impl Plugin for QuotaScheduler {
    fn init(config: Config<'_>, _host: Host) -> Result<Self, PluginError> {
        let settings: Settings = config.parse()?;
        Ok(QuotaScheduler {
            quotas: settings.quotas,
            window: Duration::from_secs(settings.window_secs.max(1)),
            started: Instant::now(),
            used: Mutex::default(),
        })
    }
}

impl ConfigProvider for QuotaScheduler {
    const SCHEMA: &'static str = r#"{
        "type": "object",
        "required": ["quotas"],
        "additionalProperties": false,
        "properties": {
            "quotas": { "type": "object", "additionalProperties": { "type": "integer", "minimum": 0 } },
            "window_secs": { "type": "integer", "minimum": 1 }
        }
    }"#;
}

impl Scheduler for QuotaScheduler {
    fn pick(&self, req: &PickRequest<'_>) -> Result<Pick, PluginError> {
        let window = self.started.elapsed().as_secs() / self.window.as_secs();
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let counts = match used.get_mut(req.upstream()) {
            Some(counts) => counts,
            None => used.entry(req.upstream().to_owned()).or_default(),
        };
        let calls = |id: &str| counts.get(id).filter(|(w, _)| *w == window).map_or(0, |(_, n)| *n);
        // The first of those with the most quota left (a key without a quota: unlimited).
        let mut best: Option<(usize, &str, u64)> = None;
        for (i, c) in req.candidates().enumerate() {
            let left = self.quotas.get(c.id()).map_or(u64::MAX, |q| q.saturating_sub(calls(c.id())));
            if best.is_none_or(|(_, _, most)| left > most) {
                best = Some((i, c.id(), left));
            }
        }
        let Some((index, id, _)) = best.filter(|(_, _, left)| *left > 0) else {
            return Ok(Pick::RoundRobin);
        };
        let count = match counts.get_mut(id) {
            Some(count) => count,
            None => counts.entry(id.to_owned()).or_insert((window, 0)),
        };
        if count.0 != window {
            *count = (window, 0);
        }
        count.1 += 1;
        Ok(Pick::Candidate(index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_abi::ffi::{RawCandidate, RawPickRequest};
    use plugin_abi::testing::MockHost;

    fn pick(plugin: &QuotaScheduler, ids: &[&str]) -> Pick {
        let candidates: Vec<RawCandidate<'_>> = ids
            .iter()
            .map(|id| RawCandidate { id: (*id).into(), priority: 0, calls: 0, refusals: 0, last_refusal: 0 })
            .collect();
        let raw = RawPickRequest {
            upstream: "u".into(),
            model: "m".into(),
            stream: false,
            attempt: 0,
            candidates: candidates.as_slice().into(),
        };
        plugin.pick(&PickRequest::new(&raw)).unwrap()
    }

    #[test]
    fn the_key_with_the_most_quota_left_takes_each_call_until_all_are_used() {
        let plugin: QuotaScheduler = MockHost::new().init(r#"{"quotas": {"a": 3, "b": 1, "c": 2}}"#).unwrap();
        let keys = ["a", "b", "c"];
        let picks: Vec<Pick> = (0..6).map(|_| pick(&plugin, &keys)).collect();
        let names: Vec<&str> = picks
            .iter()
            .map(|p| match p {
                Pick::Candidate(i) => keys[*i],
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(names, ["a", "a", "c", "a", "b", "c"]);
        assert_eq!(pick(&plugin, &keys), Pick::RoundRobin);
        // A key without a quota is never used up.
        assert_eq!(pick(&plugin, &["a", "free"]), Pick::Candidate(1));
    }

    #[test]
    fn refuses_a_negative_quota() {
        let err = MockHost::new().init::<QuotaScheduler>(r#"{"quotas": {"a": -1}}"#).err().unwrap();
        assert_eq!(err.code, plugin_abi::ffi::code::INVALID_CONFIG);
    }
}
