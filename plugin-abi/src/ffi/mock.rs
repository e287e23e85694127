//! The raw side of [`crate::testing::MockHost`] and of [`ChunkHistory`].

use std::collections::{BTreeMap, VecDeque};
use std::ffi::c_void;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abi_stable::std_types::RSlice;

use super::*;

/// The mock host's state: an in-memory KV, synchronous events, and lookups set by the test.
#[derive(Default)]
pub(crate) struct MockServices {
    /// (level, message, fields).
    pub(crate) logs: Mutex<Vec<LogLine>>,
    pub(crate) kv: Mutex<BTreeMap<String, (Vec<u8>, Option<Instant>)>>,
    pub(crate) subscribers: Mutex<Vec<(u64, String, Arc<Subscriber>)>>,
    pub(crate) published: Mutex<Vec<(String, Vec<u8>, u8)>>,
    pub(crate) apps: Mutex<Vec<AppInfo>>,
    pub(crate) models: Mutex<Vec<ModelInfo>>,
    pub(crate) keys: Mutex<Vec<(String, String, String)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn expiry(ttl_ms: u64) -> Option<Instant> {
    (ttl_ms > 0).then(|| Instant::now() + Duration::from_millis(ttl_ms))
}

fn live(entry: &(Vec<u8>, Option<Instant>)) -> bool {
    entry.1.is_none_or(|at| at > Instant::now())
}

pub(crate) type LogLine = (u8, String, Vec<(String, String)>);

impl HostServices for MockServices {
    fn log(&self, level: u8, message: &str) {
        lock(&self.logs).push((level, message.to_owned(), Vec::new()));
    }

    fn log_fields(&self, level: u8, message: &str, fields: &[(&str, &str)]) {
        let fields = fields.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        lock(&self.logs).push((level, message.to_owned(), fields));
    }

    fn kv_get(&self, key: &str, read: &mut dyn FnMut(&[u8])) -> ServiceResult<bool> {
        // A copy, so that `read` runs unlocked and may call the host again, as it may on the
        // gateway.
        let value = lock(&self.kv).get(key).filter(|e| live(e)).map(|(value, _)| value.clone());
        match value {
            Some(value) => {
                read(&value);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn kv_set(&self, key: &str, value: &[u8], ttl_ms: u64) -> ServiceResult<()> {
        lock(&self.kv).insert(key.to_owned(), (value.to_vec(), expiry(ttl_ms)));
        Ok(())
    }

    fn kv_delete(&self, key: &str) -> ServiceResult<bool> {
        Ok(lock(&self.kv).remove(key).is_some_and(|e| live(&e)))
    }

    fn kv_list(&self, prefix: &str, limit: usize) -> ServiceResult<Vec<String>> {
        let kv = lock(&self.kv);
        Ok(kv
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, e)| live(e))
            .map(|(k, _)| k.clone())
            .take(limit)
            .collect())
    }

    fn kv_increment(&self, key: &str, delta: i64, ttl_ms: u64) -> ServiceResult<i64> {
        let mut kv = lock(&self.kv);
        let (current, expires) = match kv.get(key).filter(|e| live(e)) {
            Some((value, expires)) => {
                let bytes: [u8; 8] = value.as_slice().try_into().map_err(|_| format!("`{key}` is not a counter"))?;
                (i64::from_le_bytes(bytes), *expires)
            }
            None => (0, expiry(ttl_ms)),
        };
        let next = current.checked_add(delta).ok_or_else(|| format!("counter `{key}` would overflow"))?;
        kv.insert(key.to_owned(), (next.to_le_bytes().to_vec(), expires));
        Ok(next)
    }

    fn publish(&self, topic: &str, payload: &[u8], direction: u8) -> ServiceResult<()> {
        lock(&self.published).push((topic.to_owned(), payload.to_vec(), direction));
        let subscribers: Vec<Arc<Subscriber>> = lock(&self.subscribers)
            .iter()
            .filter(|(_, t, _)| t.is_empty() || t == topic)
            .map(|(_, _, s)| s.clone())
            .collect();
        let event =
            RawEvent { topic: topic.into(), payload: RSlice::from_slice(payload), direction, source: "mock".into() };
        for s in subscribers {
            s.deliver(&event);
        }
        Ok(())
    }

    fn subscribe(&self, topic: &str, subscriber: Subscriber) -> ServiceResult<u64> {
        let mut subs = lock(&self.subscribers);
        let id = subs.iter().map(|(id, _, _)| *id).max().unwrap_or(0) + 1;
        subs.push((id, topic.to_owned(), Arc::new(subscriber)));
        Ok(id)
    }

    fn unsubscribe(&self, id: u64) -> bool {
        let mut subs = lock(&self.subscribers);
        let before = subs.len();
        subs.retain(|(i, _, _)| *i != id);
        subs.len() != before
    }

    fn get_app(&self, id: &str) -> Option<AppInfo> {
        lock(&self.apps).iter().find(|a| a.id.as_str() == id).cloned()
    }

    fn list_apps(&self) -> Vec<AppInfo> {
        lock(&self.apps).clone()
    }

    fn model_info(&self, model: &str) -> Option<ModelInfo> {
        lock(&self.models).iter().find(|m| m.name.as_str() == model).cloned()
    }

    fn validate_credential(&self, credential: &str) -> Option<(String, String)> {
        lock(&self.keys).iter().find(|(k, _, _)| k == credential).map(|(_, a, u)| (a.clone(), u.clone()))
    }
}

/// The earlier chunks of one stream, bounded by [`HistoryLimits`]; handed to plugins in place.
pub struct ChunkHistory<B> {
    chunks: VecDeque<B>,
    bytes: u64,
    limits: HistoryLimits,
}

impl<B: AsRef<[u8]>> ChunkHistory<B> {
    pub fn new(limits: HistoryLimits) -> Self {
        ChunkHistory { chunks: VecDeque::new(), bytes: 0, limits }
    }

    pub fn is_enabled(&self) -> bool {
        self.limits.max_chunks > 0 && self.limits.max_bytes > 0
    }

    /// Keeps `chunk`, evicting the oldest ones beyond the limits. A chunk larger than the byte
    /// limit on its own is not kept.
    pub fn push(&mut self, chunk: B) {
        if !self.is_enabled() {
            return;
        }
        let len = chunk.as_ref().len() as u64;
        if len > self.limits.max_bytes {
            self.chunks.clear();
            self.bytes = 0;
            return;
        }
        while self.chunks.len() >= self.limits.max_chunks as usize || self.bytes + len > self.limits.max_bytes {
            match self.chunks.pop_front() {
                Some(old) => self.bytes -= old.as_ref().len() as u64,
                None => break,
            }
        }
        self.bytes += len;
        self.chunks.push_back(chunk);
    }

    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// A view valid while `self` is neither moved nor changed.
    pub(crate) fn raw(&self) -> RawHistory {
        RawHistory {
            ctx: self as *const Self as *const c_void,
            len: self.chunks.len() as u32,
            bytes: self.bytes,
            get: history_get::<B>,
        }
    }
}

/// An empty history, for plugins that did not opt in.
pub const NO_HISTORY: RawHistory = RawHistory { ctx: std::ptr::null(), len: 0, bytes: 0, get: no_history_get };

extern "C" fn no_history_get(_ctx: *const c_void, _index: u32) -> RSlice<'static, u8> {
    RSlice::from_slice(&[])
}

extern "C" fn history_get<B: AsRef<[u8]>>(ctx: *const c_void, index: u32) -> RSlice<'static, u8> {
    // SAFETY: `ctx` comes from `ChunkHistory::raw`, whose view the host only hands out while the
    // history is alive and unchanged; the returned slice is used within that same call.
    let history = unsafe { &*(ctx as *const ChunkHistory<B>) };
    match history.chunks.get(index as usize) {
        // SAFETY: the lifetime is widened to 'static only for the FFI type; the SDK narrows it
        // back to the chunk call (`History<'a>`), during which the buffer is not changed.
        Some(chunk) => unsafe {
            std::mem::transmute::<RSlice<'_, u8>, RSlice<'static, u8>>(RSlice::from_slice(chunk.as_ref()))
        },
        None => RSlice::from_slice(&[]),
    }
}

/// The config schema in a derived plugin's metadata (its `ConfigProvider` table), if it has one.
#[cfg(feature = "testing")]
pub(crate) fn schema_of(meta: &PluginMetadata) -> Option<&'static str> {
    let entry =
        meta.capabilities.iter().find(|e| e.id == ConfigProviderV1::ID && e.version == ConfigProviderV1::VERSION)?;
    // SAFETY: a derived plugin's metadata holds `'static` tables of this crate, in this binary.
    let table = unsafe { entry.get::<ConfigProviderV1>() }.ok()?;
    Some((table.schema)().as_str())
}
