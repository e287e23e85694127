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

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
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
    /// `id: status` of each key, for the message.
    pub keys: String,
}

pub struct Pool {
    upstream: String,
    header: HeaderName,
    /// `Authorization: Bearer <key>`, or the key as it is in `header`.
    bearer: bool,
    policy: Scheduling,
    cooldowns: Cooldowns,
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
    pub cooldowns: Cooldowns,
    /// `(id, environment variable, priority)`.
    pub keys: Vec<(&'a str, &'a str, i32)>,
}

impl Pool {
    /// The pool of `config`'s keys (a variable that is not set is skipped, with a warning) and
    /// those stored in `kv` for this upstream.
    pub fn new(config: PoolConfig<'_>, kv: Option<&dyn KvStore>) -> Pool {
        let bearer = config.header == http::header::AUTHORIZATION;
        let mut pool = Pool {
            upstream: config.upstream.to_owned(),
            header: config.header,
            bearer,
            policy: config.policy,
            cooldowns: config.cooldowns,
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
            keys.extend(pool.load_stored(kv));
        }
        pool.credentials = ArcSwap::from_pointee(sorted(keys));
        pool
    }

    /// A pool of literal `(id, priority, key)`s (benchmarks and tests; configs name variables).
    pub fn from_keys(upstream: &str, policy: Scheduling, keys: &[(&str, i32, &str)]) -> Pool {
        let cooldowns = Cooldowns { rate_limited: Duration::from_secs(60), refused: Duration::from_secs(300) };
        let config = PoolConfig { upstream, header: http::header::AUTHORIZATION, policy, cooldowns, keys: Vec::new() };
        let pool = Pool::new(config, None);
        let creds = keys.iter().filter_map(|(id, prio, key)| pool.credential(id, Source::Config, *prio, key).ok());
        pool.credentials.store(Arc::new(sorted(creds.map(Arc::new).collect())));
        pool
    }

    fn credential(&self, id: &str, source: Source, priority: i32, key: &str) -> Result<Credential, String> {
        let text = if self.bearer { format!("Bearer {key}") } else { key.to_owned() };
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

    pub fn header(&self) -> &HeaderName {
        &self.header
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
    pub fn pick(&self, keys: &[Arc<Credential>], tried: u128) -> Result<Option<usize>, AllCooling> {
        let n = keys.len().min(MAX_CREDENTIALS);
        // The clock is read only while some key has cooled; one whose rest is over is marked
        // available again, so a pool with nothing cooling never reads it.
        let cooled = keys[..n].iter().any(|k| k.cooling_until_ms.load(Relaxed) != 0);
        let now = if cooled { self.now_ms() } else { 0 };
        if cooled {
            for k in &keys[..n] {
                let until = k.cooling_until_ms.load(Relaxed);
                if until != 0 && until <= now {
                    let _ = k.cooling_until_ms.compare_exchange(until, 0, Relaxed, Relaxed);
                }
            }
        }
        let open = |i: usize| tried & (1 << i) == 0 && keys[i].cooling_until_ms.load(Relaxed) <= now;
        let Some(best) = (0..n).filter(|&i| open(i)).map(|i| keys[i].priority).min() else {
            if n == 0 || tried != 0 {
                return Ok(None);
            }
            return Err(self.all_cooling(keys, now));
        };
        let eligible = |i: &usize| open(*i) && keys[*i].priority == best;
        let turn = match self.policy {
            Scheduling::FillFirst => 0,
            // The next of the eligible keys in turn, fair however many others are skipped.
            Scheduling::RoundRobin => self.next.fetch_add(1, Relaxed) % (0..n).filter(eligible).count(),
        };
        Ok((0..n).filter(eligible).nth(turn))
    }

    fn all_cooling(&self, keys: &[Arc<Credential>], now: u64) -> AllCooling {
        self.exhausted.fetch_add(1, Relaxed);
        let first = keys.iter().map(|k| k.cooling_until_ms.load(Relaxed)).min().unwrap_or(now);
        let keys =
            keys.iter().map(|k| format!("{}: {}", k.id, k.last_refusal.load(Relaxed))).collect::<Vec<_>>().join(", ");
        AllCooling { retry_after: Duration::from_millis(first.saturating_sub(now)), keys }
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
        key.cooling_until_ms.store(self.now_ms() + cooldown.as_millis() as u64, Relaxed);
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
        let credential = self.credential(id, Source::Store, stored.priority, &stored.api_key)?;
        let value = serde_json::to_vec(stored).map_err(|e| e.to_string())?;
        kv.set(KV_NAMESPACE, &format!("{}/{id}", self.upstream), &value, None).map_err(|e| e.to_string())?;
        let mut next: Vec<Arc<Credential>> = keys.iter().filter(|k| k.id != id).cloned().collect();
        next.push(Arc::new(credential));
        self.credentials.store(Arc::new(sorted(next)));
        Ok(())
    }

    /// Removes stored credential `id`; `Ok(false)` if there is none.
    pub fn remove(&self, kv: &dyn KvStore, id: &str) -> Result<bool, String> {
        let keys = self.snapshot();
        match keys.iter().find(|k| k.id == id) {
            None => Ok(false),
            Some(k) if k.source == Source::Config => {
                Err(format!("credential `{id}` is defined in the config file; remove it there"))
            }
            Some(_) => {
                kv.delete(KV_NAMESPACE, &format!("{}/{id}", self.upstream)).map_err(|e| e.to_string())?;
                let next = keys.iter().filter(|k| k.id != id).cloned().collect();
                self.credentials.store(Arc::new(next));
                Ok(true)
            }
        }
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
            "credentials": keys,
            "failovers": self.failovers.load(Relaxed),
            "exhausted": self.exhausted.load(Relaxed),
        })
    }

    /// Prometheus lines for this pool.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let u = &self.upstream;
        let _ = writeln!(out, "gateway_upstream_failovers_total{{upstream=\"{u}\"}} {}", self.failovers.load(Relaxed));
        let _ = writeln!(
            out,
            "gateway_upstream_credentials_exhausted_total{{upstream=\"{u}\"}} {}",
            self.exhausted.load(Relaxed)
        );
        let now = self.now_ms();
        for k in self.snapshot().iter() {
            let id = &k.id;
            let _ = writeln!(
                out,
                "gateway_credential_calls_total{{upstream=\"{u}\",credential=\"{id}\"}} {}",
                k.calls.load(Relaxed)
            );
            let _ = writeln!(
                out,
                "gateway_credential_refusals_total{{upstream=\"{u}\",credential=\"{id}\"}} {}",
                k.refusals.load(Relaxed)
            );
            let cooling = u8::from(k.cooling_until_ms.load(Relaxed) > now);
            let _ = writeln!(out, "gateway_credential_cooling{{upstream=\"{u}\",credential=\"{id}\"}} {cooling}");
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
        (0..picks).map(|_| keys[p.pick(&keys, 0).unwrap().unwrap()].id.clone()).collect()
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
        assert_eq!(p.pick(&keys, 0b100).unwrap(), None);
        assert!(p.answered(&keys, 2, StatusCode::FORBIDDEN, &HeaderMap::new()));
        let cooling = p.pick(&keys, 0).unwrap_err();
        assert!((29..=30).contains(&cooling.retry_after.as_secs()), "{cooling:?}");
        assert_eq!(cooling.keys, "a: 429, b: 401, spare: 403");
        assert_eq!(p.exhausted.load(Relaxed), 1);
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
