//! Credential pools: the keys an `openai` upstream is called with, which one each call uses, and
//! what a refusal does to it.
//!
//! A pool holds the upstream's keys from its config (`api_key_env`, `[[upstreams.credentials]]`)
//! and those the operator stored through the admin API (kept in the host's KV store, so they
//! outlive restarts and config edits). Each call picks an available key of the best (lowest)
//! priority, round-robin or fill-first. A 429 cools the key down for the upstream's
//! `Retry-After` (or `rate_limit_cooldown_secs`), a 401 or 403 for `auth_failure_cooldown_secs`,
//! and the call is sent again with the next available key, so the client does not notice; when
//! every key has been tried, the client gets the upstream's last answer, and when every key is
//! cooling before the call, a 429 with `Retry-After` saying when the first is back.
//!
//! Picking costs one scan of the keys and no allocation; the common pool of one key, one check.
//! With a scheduler plugin bound, a pick also builds the list of candidates it is offered.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use crate::config::Scheduling;
use crate::services::kv::KvStore;

/// Keys per pool at most: a request's tried keys are a bit set.
pub const MAX_CREDENTIALS: usize = 128;

/// The host's KV namespace for stored credentials (plugin namespaces are instance names, which
/// cannot start with `@`); keys are `{upstream}/{id}`.
pub const KV_NAMESPACE: &str = "@credentials";

/// Where a credential comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Config,
    Store,
}

/// One key, and what the pool knows about it.
pub struct Credential {
    pub id: String,
    pub source: Source,
    pub priority: i32,
    value: HeaderValue,
    /// Milliseconds since the pool's epoch until which it is cooling; 0: available.
    cooling_until_ms: AtomicU64,
    /// The status that last cooled it down (0: none yet).
    last_refusal: AtomicU16,
    calls: AtomicU64,
    refusals: AtomicU64,
}

/// A stored credential, as kept in KV (the key stays on the host).
#[derive(Serialize, Deserialize)]
pub struct Stored {
    pub api_key: String,
    #[serde(default)]
    pub priority: i32,
}

/// How long a refusal takes a key out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cooldowns {
    pub rate_limited: Duration,
    pub refused: Duration,
}

/// Every key was cooling when the call was to be made.
#[derive(Debug)]
pub struct AllCooling {
    pub retry_after: Duration,
    /// How many keys (their ids and refusals go to the log, not to clients).
    pub count: usize,
}

/// A plugin that picks keys (the `Scheduler` capability, bound by the pipeline).
pub trait PickPlugin: Send + Sync {
    /// An index into `candidates`, a built-in policy, or `None` (the plugin failed: the pool's
    /// own policy picks).
    fn pick(&self, upstream: &str, call: CallFor<'_>, attempt: u32, candidates: &[Candidate<'_>])
    -> Option<PluginPick>;
}

/// What a call is for, as far as the caller knows: the model asked for (empty for a call a
/// plugin makes through the host HTTP client) and whether it streams.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallFor<'a> {
    pub model: &'a str,
    pub stream: bool,
}

/// A key offered to a scheduler plugin: what the pool knows of it, never the key.
pub struct Candidate<'a> {
    pub id: &'a str,
    pub priority: i32,
    pub calls: u64,
    pub refusals: u64,
    /// 0: never refused.
    pub last_refusal: u16,
}

/// What a scheduler plugin chose.
pub enum PluginPick {
    Candidate(usize),
    Builtin(Scheduling),
}

pub struct Pool {
    upstream: String,
    /// The scheduler plugin's instance name, if the config names one.
    pub scheduler: Option<String>,
    plugin: ArcSwapOption<Box<dyn PickPlugin>>,
    /// `Authorization: Bearer <key>`, or the key as it is in another header.
    header: HeaderName,
    policy: Scheduling,
    cooldowns: Cooldowns,
    /// Keys one call tries at most (the first and its failovers).
    pub max_attempts: u32,
    credentials: ArcSwap<Vec<Arc<Credential>>>,
    next: AtomicUsize,
    epoch: Instant,
    /// Calls sent again with another key after a refusal.
    pub failovers: AtomicU64,
    /// Calls refused with a 429 because every key was cooling.
    pub exhausted: AtomicU64,
}

/// What the pool needs from an upstream's config.
pub struct PoolConfig<'a> {
    pub upstream: &'a str,
    pub header: HeaderName,
    pub policy: Scheduling,
    pub scheduler: Option<String>,
    pub cooldowns: Cooldowns,
    pub max_attempts: u32,
    /// `(id, environment variable, priority)`.
    pub keys: Vec<(&'a str, &'a str, i32)>,
}

impl Pool {
    /// The pool of `config`'s keys (a variable that is not set is skipped, with a warning) and
    /// those stored in `kv` for this upstream.
    pub fn new(config: PoolConfig<'_>, kv: Option<&dyn KvStore>) -> Pool {
        let mut pool = Pool {
            upstream: config.upstream.to_owned(),
            scheduler: config.scheduler,
            plugin: ArcSwapOption::empty(),
            header: config.header,
            policy: config.policy,
            cooldowns: config.cooldowns,
            max_attempts: config.max_attempts.max(1),
            credentials: ArcSwap::from_pointee(Vec::new()),
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
            failovers: AtomicU64::new(0),
            exhausted: AtomicU64::new(0),
        };
        let mut keys = Vec::new();
        for (id, var, priority) in config.keys {
            match std::env::var(var) {
                Ok(key) => match pool.credential(id, Source::Config, priority, &key) {
                    Ok(c) => keys.push(Arc::new(c)),
                    Err(e) => tracing::warn!(upstream = config.upstream, credential = id, var, "{e}: skipped"),
                },
                Err(_) => tracing::warn!(
                    upstream = config.upstream,
                    credential = id,
                    var,
                    "API key variable is not set: this credential is skipped"
                ),
            }
        }
        if let Some(kv) = kv {
            for stored in pool.load_stored(kv) {
                if keys.len() >= MAX_CREDENTIALS {
                    tracing::warn!(
                        upstream = config.upstream,
                        "more than {MAX_CREDENTIALS} credentials: the rest are left out"
                    );
                    break;
                }
                if keys.iter().any(|k: &Arc<Credential>| k.id == stored.id) {
                    tracing::warn!(
                        upstream = config.upstream,
                        credential = %stored.id,
                        "a stored credential has the id of one in the config file: the config's is used"
                    );
                    continue;
                }
                keys.push(stored);
            }
        }
        pool.credentials = ArcSwap::from_pointee(sorted(keys));
        pool
    }

    /// A pool of literal `(id, priority, key)`s (benchmarks and tests; configs name variables).
    pub fn from_keys(upstream: &str, policy: Scheduling, keys: &[(&str, i32, &str)]) -> Pool {
        let cooldowns = Cooldowns { rate_limited: Duration::from_secs(60), refused: Duration::from_secs(300) };
        let header = http::header::AUTHORIZATION;
        let config =
            PoolConfig { upstream, header, policy, scheduler: None, cooldowns, max_attempts: 3, keys: Vec::new() };
        let pool = Pool::new(config, None);
        let creds = keys.iter().filter_map(|(id, prio, key)| pool.credential(id, Source::Config, *prio, key).ok());
        pool.credentials.store(Arc::new(sorted(creds.map(Arc::new).collect())));
        pool
    }

    fn credential(&self, id: &str, source: Source, priority: i32, key: &str) -> Result<Credential, String> {
        let bearer = self.header == http::header::AUTHORIZATION;
        let text = if bearer { format!("Bearer {key}") } else { key.to_owned() };
        let mut value = HeaderValue::from_str(&text).map_err(|_| "the key is not a valid header value".to_owned())?;
        value.set_sensitive(true);
        Ok(Credential {
            id: id.to_owned(),
            source,
            priority,
            value,
            cooling_until_ms: AtomicU64::new(0),
            last_refusal: AtomicU16::new(0),
            calls: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
        })
    }

    fn load_stored(&self, kv: &dyn KvStore) -> Vec<Arc<Credential>> {
        let prefix = format!("{}/", self.upstream);
        let ids = kv.list(KV_NAMESPACE, &prefix, MAX_CREDENTIALS).unwrap_or_else(|e| {
            tracing::warn!(upstream = %self.upstream, "cannot list the stored credentials: {e}");
            Vec::new()
        });
        let mut out = Vec::new();
        for key in ids {
            let mut stored: Option<Stored> = None;
            let _ = kv.get(KV_NAMESPACE, &key, &mut |bytes| stored = serde_json::from_slice(bytes).ok());
            let id = &key[prefix.len()..];
            match stored.map(|s| self.credential(id, Source::Store, s.priority, &s.api_key)) {
                Some(Ok(c)) => out.push(Arc::new(c)),
                Some(Err(e)) => tracing::warn!(upstream = %self.upstream, credential = id, "stored credential: {e}"),
                None => tracing::warn!(upstream = %self.upstream, credential = id, "stored credential is unreadable"),
            }
        }
        out
    }

    /// The keys as they are now; a call holds this for all its attempts.
    pub fn snapshot(&self) -> Arc<Vec<Arc<Credential>>> {
        self.credentials.load_full()
    }

    fn now_ms(&self) -> u64 {
        // From 1, so that 0 means "not cooling".
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// The key for the next attempt, skipping those in `tried` (bit `i`: key `i` was tried);
    /// `Ok(None)` when the pool has no keys or all were tried.
    pub fn pick(&self, keys: &[Arc<Credential>], tried: u128, call: CallFor<'_>) -> Result<Option<usize>, AllCooling> {
        let n = keys.len().min(MAX_CREDENTIALS);
        // One pass reads each key's cooldown once: the best open priority, how many keys share
        // it, the first of them. Other calls may cool keys meanwhile; what a later pass reads
        // differently falls back on this one. The clock is read only once a key has cooled,
        // and a key whose rest is over is marked available again, so a pool with nothing
        // cooling never reads it.
        let mut now = 0;
        let (mut best, mut count, mut first) = (i32::MAX, 0usize, None);
        for (i, k) in keys[..n].iter().enumerate() {
            let mut until = k.cooling_until_ms.load(Relaxed);
            if until != 0 {
                if now == 0 {
                    now = self.now_ms();
                }
                if until <= now {
                    let _ = k.cooling_until_ms.compare_exchange(until, 0, Relaxed, Relaxed);
                    until = 0;
                }
            }
            if until != 0 || tried & (1 << i) != 0 {
                continue;
            }
            if first.is_none() || k.priority < best {
                (best, count, first) = (k.priority, 0, Some(i));
            }
            count += usize::from(k.priority == best);
        }
        let Some(first) = first else {
            if n == 0 || tried != 0 {
                return Ok(None);
            }
            return Err(self.all_cooling(&keys[..n], now));
        };
        let open = |i: usize| tried & (1 << i) == 0 && keys[i].cooling_until_ms.load(Relaxed) <= now;
        let mut policy = self.policy;
        if let Some(plugin) = &*self.plugin.load() {
            match self.ask(plugin.as_ref().as_ref(), call, keys, n, tried, open) {
                Some(PluginPick::Candidate(i)) => return Ok(Some(i)),
                Some(PluginPick::Builtin(p)) => policy = p,
                None => {}
            }
        }
        match policy {
            Scheduling::FillFirst => Ok(Some(first)),
            // The next of the eligible keys in turn, fair however many others are skipped.
            Scheduling::RoundRobin => {
                let turn = self.next.fetch_add(1, Relaxed) % count;
                let eligible = |i: &usize| open(*i) && keys[*i].priority == best;
                Ok(Some((first..n).filter(eligible).nth(turn).unwrap_or(first)))
            }
        }
    }

    /// The scheduler plugin's pick among the open keys (`None`: it failed or chose a key it
    /// was not offered; the built-in policy picks).
    fn ask(
        &self,
        plugin: &dyn PickPlugin,
        call: CallFor<'_>,
        keys: &[Arc<Credential>],
        n: usize,
        tried: u128,
        open: impl Fn(usize) -> bool,
    ) -> Option<PluginPick> {
        // The open keys of the best priority: priorities stay the pool's (an overflow key
        // serves only while the better ones cool), the choice among equals is the plugin's.
        let best = (0..n).filter(|&i| open(i)).map(|i| keys[i].priority).min()?;
        let offered: Vec<usize> = (0..n).filter(|&i| open(i) && keys[i].priority == best).collect();
        if offered.is_empty() {
            return None;
        }
        let candidates: Vec<Candidate<'_>> = offered
            .iter()
            .map(|&i| {
                let k = &keys[i];
                Candidate {
                    id: &k.id,
                    priority: k.priority,
                    calls: k.calls.load(Relaxed),
                    refusals: k.refusals.load(Relaxed),
                    last_refusal: k.last_refusal.load(Relaxed),
                }
            })
            .collect();
        match plugin.pick(&self.upstream, call, tried.count_ones(), &candidates)? {
            PluginPick::Candidate(j) => match offered.get(j) {
                Some(&i) => Some(PluginPick::Candidate(i)),
                None => {
                    tracing::warn!(
                        upstream = %self.upstream,
                        picked = j,
                        offered = offered.len(),
                        "the scheduler picked a candidate it was not offered: the built-in policy picks"
                    );
                    None
                }
            },
            builtin => Some(builtin),
        }
    }

    /// Binds (or unbinds) the scheduler plugin; the pipeline that owns the plugin does, when it
    /// starts serving.
    pub fn bind(&self, plugin: Option<Box<dyn PickPlugin>>) {
        self.plugin.store(plugin.map(Arc::new));
    }

    fn all_cooling(&self, keys: &[Arc<Credential>], now: u64) -> AllCooling {
        self.exhausted.fetch_add(1, Relaxed);
        let first = keys.iter().map(|k| k.cooling_until_ms.load(Relaxed)).filter(|&u| u != 0).min().unwrap_or(now);
        let ids =
            keys.iter().map(|k| format!("{}: {}", k.id, k.last_refusal.load(Relaxed))).collect::<Vec<_>>().join(", ");
        tracing::warn!(upstream = %self.upstream, keys = ids, "every credential is cooling down");
        AllCooling { retry_after: Duration::from_millis(first.saturating_sub(now)), count: keys.len() }
    }

    /// Puts key `i`'s header on `headers` and counts the call.
    pub fn apply(&self, keys: &[Arc<Credential>], i: usize, headers: &mut HeaderMap) {
        keys[i].calls.fetch_add(1, Relaxed);
        headers.insert(self.header.clone(), keys[i].value.clone());
    }

    /// What the upstream's answer does to key `i`: a refusal cools it down; true if it did.
    pub fn answered(&self, keys: &[Arc<Credential>], i: usize, status: StatusCode, headers: &HeaderMap) -> bool {
        let cooldown = match status {
            StatusCode::TOO_MANY_REQUESTS => retry_after(headers).unwrap_or(self.cooldowns.rate_limited),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => self.cooldowns.refused,
            _ => return false,
        };
        let key = &keys[i];
        key.refusals.fetch_add(1, Relaxed);
        key.last_refusal.store(status.as_u16(), Relaxed);
        // A longer rest already running (a 401's, say) is not cut short by a later 429's.
        let until = self.now_ms().saturating_add(u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX));
        key.cooling_until_ms.fetch_max(until, Relaxed);
        tracing::warn!(
            upstream = %self.upstream,
            credential = %key.id,
            status = status.as_u16(),
            cooldown_secs = cooldown.as_secs_f64(),
            "credential refused: cooling down"
        );
        true
    }

    /// Adds (or replaces: its state starts afresh) stored credential `id`.
    pub fn store(&self, kv: &dyn KvStore, id: &str, stored: &Stored) -> Result<(), String> {
        let keys = self.snapshot();
        if keys.iter().any(|k| k.id == id && k.source == Source::Config) {
            return Err(format!("credential `{id}` is defined in the config file; edit it there"));
        }
        if keys.len() >= MAX_CREDENTIALS && !keys.iter().any(|k| k.id == id) {
            return Err(format!(
                "upstream `{}` has {MAX_CREDENTIALS} credentials, the most a pool holds",
                self.upstream
            ));
        }
        let credential = Arc::new(self.credential(id, Source::Store, stored.priority, &stored.api_key)?);
        let value = serde_json::to_vec(stored).map_err(|e| e.to_string())?;
        kv.set(KV_NAMESPACE, &format!("{}/{id}", self.upstream), &value, None).map_err(|e| e.to_string())?;
        // `rcu`: two writes at once both land.
        self.credentials.rcu(|keys| {
            let mut next: Vec<Arc<Credential>> =
                keys.iter().filter(|k| !(k.id == id && k.source == Source::Store)).cloned().collect();
            next.push(credential.clone());
            sorted(next)
        });
        Ok(())
    }

    /// Removes stored credential `id`; `Ok(false)` if there is none.
    pub fn remove(&self, kv: &dyn KvStore, id: &str) -> Result<bool, String> {
        let keys = self.snapshot();
        if keys.iter().any(|k| k.id == id && k.source == Source::Config) {
            return Err(format!("credential `{id}` is defined in the config file; remove it there"));
        }
        if !keys.iter().any(|k| k.id == id) {
            return Ok(false);
        }
        kv.delete(KV_NAMESPACE, &format!("{}/{id}", self.upstream)).map_err(|e| e.to_string())?;
        self.credentials.rcu(|keys| {
            keys.iter().filter(|k| !(k.id == id && k.source == Source::Store)).cloned().collect::<Vec<_>>()
        });
        Ok(true)
    }

    /// Each key's id, source, priority, state and counts (never the key).
    pub fn status(&self) -> serde_json::Value {
        let now = self.now_ms();
        let keys: Vec<serde_json::Value> = self
            .snapshot()
            .iter()
            .map(|k| {
                let until = k.cooling_until_ms.load(Relaxed);
                let cooling = until > now;
                serde_json::json!({
                    "id": k.id,
                    "source": k.source,
                    "priority": k.priority,
                    "state": if cooling { "cooling" } else { "available" },
                    "cooling_secs": if cooling { (until - now) as f64 / 1e3 } else { 0.0 },
                    "last_refusal": match k.last_refusal.load(Relaxed) { 0 => None, s => Some(s) },
                    "calls": k.calls.load(Relaxed),
                    "refusals": k.refusals.load(Relaxed),
                })
            })
            .collect();
        serde_json::json!({
            "scheduling": self.policy,
            "scheduler": self.scheduler,
            "credentials": keys,
            "failovers": self.failovers.load(Relaxed),
            "exhausted": self.exhausted.load(Relaxed),
        })
    }
}

/// The pools' metrics in Prometheus text, each metric's lines together under its `# TYPE`.
pub fn render(pools: &[&Pool], out: &mut String) {
    use std::fmt::Write;
    if pools.is_empty() {
        return;
    }
    type PerPool = (&'static str, &'static str, fn(&Pool) -> u64);
    type PerKey = (&'static str, &'static str, fn(&Credential, u64) -> u64);
    let per_pool: [PerPool; 2] = [
        ("gateway_upstream_failovers_total", "counter", |p| p.failovers.load(Relaxed)),
        ("gateway_upstream_credentials_exhausted_total", "counter", |p| p.exhausted.load(Relaxed)),
    ];
    for (name, kind, value) in per_pool {
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for p in pools {
            let _ = writeln!(out, "{name}{{upstream=\"{}\"}} {}", p.upstream, value(p));
        }
    }
    let per_key: [PerKey; 3] = [
        ("gateway_credential_calls_total", "counter", |k, _| k.calls.load(Relaxed)),
        ("gateway_credential_refusals_total", "counter", |k, _| k.refusals.load(Relaxed)),
        ("gateway_credential_cooling", "gauge", |k, now| u64::from(k.cooling_until_ms.load(Relaxed) > now)),
    ];
    for (name, kind, value) in per_key {
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for p in pools {
            let now = p.now_ms();
            for k in p.snapshot().iter() {
                let _ =
                    writeln!(out, "{name}{{upstream=\"{}\",credential=\"{}\"}} {}", p.upstream, k.id, value(k, now));
            }
        }
    }
}

/// By priority, config order within one (a stable sort).
fn sorted(mut keys: Vec<Arc<Credential>>) -> Vec<Arc<Credential>> {
    keys.sort_by_key(|k| k.priority);
    keys
}

/// A `Retry-After` of delay-seconds (an HTTP date is not followed: the default cooldown applies).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: f64 = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
}

/// Whether `id` can name a credential: 1–64 ASCII letters, digits, `-`, `_`, `.`.
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(policy: Scheduling, keys: &[(&str, i32)]) -> Pool {
        let keys: Vec<(&str, i32, &str)> = keys.iter().map(|(id, prio)| (*id, *prio, "k")).collect();
        Pool::from_keys("u", policy, &keys)
    }

    fn ids(p: &Pool, picks: usize) -> Vec<String> {
        let keys = p.snapshot();
        (0..picks).map(|_| keys[p.pick(&keys, 0, CallFor::default()).unwrap().unwrap()].id.clone()).collect()
    }

    #[test]
    fn round_robin_spreads_over_the_best_priority_and_fill_first_stays() {
        let p = pool(Scheduling::RoundRobin, &[("a", 0), ("b", 0), ("spare", 1)]);
        assert_eq!(ids(&p, 4), ["a", "b", "a", "b"]);
        let p = pool(Scheduling::FillFirst, &[("a", 0), ("b", 0), ("spare", 1)]);
        assert_eq!(ids(&p, 3), ["a", "a", "a"]);
    }

    #[test]
    fn a_refusal_cools_a_key_and_the_next_one_serves() {
        let p = pool(Scheduling::FillFirst, &[("a", 0), ("b", 0), ("spare", 1)]);
        let keys = p.snapshot();
        let mut limited = HeaderMap::new();
        limited.insert(http::header::RETRY_AFTER, HeaderValue::from_static("30"));
        assert!(p.answered(&keys, 0, StatusCode::TOO_MANY_REQUESTS, &limited));
        assert!(!p.answered(&keys, 1, StatusCode::INTERNAL_SERVER_ERROR, &HeaderMap::new()));
        assert_eq!(ids(&p, 2), ["b", "b"]);
        assert!(p.answered(&keys, 1, StatusCode::UNAUTHORIZED, &HeaderMap::new()));
        // Only the lower priority is left.
        assert_eq!(ids(&p, 1), ["spare"]);
        // Within one call, tried keys are skipped; all tried: none.
        assert_eq!(p.pick(&keys, 0b100, CallFor::default()).unwrap(), None);
        assert!(p.answered(&keys, 2, StatusCode::FORBIDDEN, &HeaderMap::new()));
        let cooling = p.pick(&keys, 0, CallFor::default()).unwrap_err();
        assert!((29..=30).contains(&cooling.retry_after.as_secs()), "{cooling:?}");
        assert_eq!(cooling.count, 3);
        assert_eq!(p.exhausted.load(Relaxed), 1);
    }

    #[test]
    fn picks_stay_valid_while_other_calls_cool_keys() {
        let p = Arc::new(pool(Scheduling::RoundRobin, &[("a", 0), ("b", 0), ("c", 1), ("d", 1)]));
        let workers: Vec<_> = (0..4)
            .map(|t| {
                let p = p.clone();
                std::thread::spawn(move || {
                    let keys = p.snapshot();
                    let mut short = HeaderMap::new();
                    short.insert(http::header::RETRY_AFTER, HeaderValue::from_static("0.001"));
                    let (mut picked, mut refused) = (0, 0);
                    for i in 0..20_000 {
                        match p.pick(&keys, 0, CallFor::default()) {
                            // A 1 ms rest: keys cool and come back all the time.
                            Ok(Some(k)) if (i + t) % 3 == 0 => {
                                p.answered(&keys, k, StatusCode::TOO_MANY_REQUESTS, &short);
                            }
                            Ok(Some(_)) => picked += 1,
                            Ok(None) => panic!("keys that were never tried are not `None`"),
                            Err(cooling) => {
                                assert_eq!(cooling.count, 4, "{cooling:?}");
                                refused += 1;
                            }
                        }
                    }
                    (picked, refused)
                })
            })
            .collect();
        let (picked, refused) =
            workers.into_iter().map(|w| w.join().unwrap()).fold((0, 0), |(a, b), (p, r)| (a + p, b + r));
        // Both paths ran: keys were picked while others cooled and came back.
        assert!(picked > 0, "no pick succeeded ({refused} refused)");
    }

    /// Picks the last candidate it is offered, and keeps what each pick was for.
    struct Last(std::sync::Mutex<Vec<(String, bool, u32, usize)>>);

    impl PickPlugin for Last {
        fn pick(&self, _: &str, call: CallFor<'_>, attempt: u32, candidates: &[Candidate<'_>]) -> Option<PluginPick> {
            self.0.lock().unwrap().push((call.model.to_owned(), call.stream, attempt, candidates.len()));
            Some(PluginPick::Candidate(candidates.len() - 1))
        }
    }

    #[test]
    fn a_scheduler_plugin_is_offered_the_open_keys_and_what_the_call_is_for() {
        let p = pool(Scheduling::RoundRobin, &[("a", 0), ("b", 0), ("c", 1)]);
        let seen = Arc::new(Last(std::sync::Mutex::default()));
        struct Shared(Arc<Last>);
        impl PickPlugin for Shared {
            fn pick(&self, u: &str, call: CallFor<'_>, attempt: u32, c: &[Candidate<'_>]) -> Option<PluginPick> {
                self.0.pick(u, call, attempt, c)
            }
        }
        p.bind(Some(Box::new(Shared(seen.clone()))));
        let keys = p.snapshot();
        let call = CallFor { model: "gpt-4o", stream: true };
        // Offered the best priority's open keys, a and b: it takes the last, b.
        assert_eq!(p.pick(&keys, 0, call).unwrap(), Some(1));
        // The second attempt of the same call: the tried key is not offered.
        assert_eq!(p.pick(&keys, 0b010, call).unwrap(), Some(0));
        // Both of the best priority tried: the overflow key c.
        assert_eq!(p.pick(&keys, 0b011, call).unwrap(), Some(2));
        let seen = seen.0.lock().unwrap().clone();
        let m = || "gpt-4o".to_owned();
        assert_eq!(seen, [(m(), true, 0, 2), (m(), true, 1, 1), (m(), true, 2, 1)]);
        p.bind(None);
        assert_eq!(p.pick(&keys, 0, call).unwrap(), Some(0), "unbound: the pool's own policy");
    }

    #[test]
    fn retry_after_is_delay_seconds() {
        let h = |v: &'static str| {
            let mut m = HeaderMap::new();
            m.insert(http::header::RETRY_AFTER, HeaderValue::from_static(v));
            retry_after(&m)
        };
        assert_eq!(h("2"), Some(Duration::from_secs(2)));
        assert_eq!(h("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(h("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(h("-1"), None);
    }
}
