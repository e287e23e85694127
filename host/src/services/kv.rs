//! Plugin key-value storage: the [`KvStore`] trait plugins reach through the host, and its
//! embedded implementation, an in-memory mirror backed by redb.
//!
//! Reads never touch the disk: under a read lock, two map lookups and a clone of the value's
//! `Arc` (no copy, no allocation); the caller's closure then runs on the bytes with no lock held,
//! so it may call back into the store. Writes update the mirror, then
//! wait for a commit by the writer thread, which batches every write queued meanwhile into one
//! redb transaction (group commit), so a write is durable when it returns and concurrent
//! writers share an fsync. redb's commits are crash-safe: a `kill -9` loses nothing that was
//! acknowledged and never leaves a torn database.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use parking_lot::{Mutex, RwLock};
use redb::{Database, ReadableTable, TableDefinition};

/// Keys are `"{namespace}/{key}"`; values are 8 bytes of expiry (unix ms, little-endian, 0 for
/// never) followed by the value.
const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");

/// Why a KV call failed. Messages say what was expected and what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvError(pub String);

impl std::fmt::Display for KvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KvError {}

/// A store of per-namespace keys. The embedded store serves one gateway; a shared one (Redis,
/// say) would implement the same trait to serve several.
pub trait KvStore: Send + Sync {
    /// Calls `read` with the value in place; false if absent or expired.
    fn get(&self, ns: &str, key: &str, read: &mut dyn FnMut(&[u8])) -> Result<bool, KvError>;
    fn set(&self, ns: &str, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), KvError>;
    fn delete(&self, ns: &str, key: &str) -> Result<bool, KvError>;
    fn list(&self, ns: &str, prefix: &str, limit: usize) -> Result<Vec<String>, KvError>;
    /// Adds `delta` to an 8-byte little-endian counter (absent or expired: 0) and returns the new
    /// value; `ttl` applies when the counter is created.
    fn increment(&self, ns: &str, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, KvError>;
    /// Commits what is pending and refuses later writes. Default: nothing to do.
    fn shutdown(&self) {}
}

#[derive(Debug, Clone, Copy)]
pub struct KvLimits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
}

struct Entry {
    /// Shared, so that a read clones the handle under the lock and reads the bytes after it.
    value: Arc<[u8]>,
    /// Unix ms; 0 never expires.
    expires: u64,
}

impl Entry {
    fn live(&self, now: u64) -> bool {
        self.expires == 0 || self.expires > now
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The expiry of a write with `ttl`: 0 (never) without one, else now + `ttl` in unix ms. A TTL too
/// large for that saturates to `u64::MAX`, which is as good as never and is not 0.
fn expiry(ttl: Option<Duration>) -> u64 {
    ttl.filter(|t| !t.is_zero())
        .map_or(0, |t| now_ms().saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX)))
}

enum Op {
    Put { key: String, value: Arc<[u8]>, expires: u64 },
    Delete { key: String },
}

struct Write {
    op: Op,
    /// Told the commit's outcome; `None` for housekeeping writes nobody waits for.
    done: Option<Sender<Result<(), KvError>>>,
}

pub struct EmbeddedKv {
    mirror: RwLock<HashMap<String, BTreeMap<String, Entry>>>,
    writes: Mutex<Option<Sender<Write>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    limits: KvLimits,
}

impl EmbeddedKv {
    /// Opens (or creates) the store at `path` and loads it into memory.
    pub fn open(path: &Path, limits: KvLimits) -> Result<Arc<Self>, KvError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| KvError(format!("cannot create {}: {e}", dir.display())))?;
        }
        let db =
            Database::create(path).map_err(|e| KvError(format!("cannot open KV store {}: {e}", path.display())))?;
        let mut mirror: HashMap<String, BTreeMap<String, Entry>> = HashMap::new();
        let now = now_ms();
        {
            let txn = db.begin_write().map_err(|e| KvError(e.to_string()))?;
            txn.open_table(TABLE).map_err(|e| KvError(e.to_string()))?;
            txn.commit().map_err(|e| KvError(e.to_string()))?;
            let txn = db.begin_read().map_err(|e| KvError(e.to_string()))?;
            let table = txn.open_table(TABLE).map_err(|e| KvError(e.to_string()))?;
            for item in table.iter().map_err(|e| KvError(e.to_string()))? {
                let (k, v) = item.map_err(|e| KvError(e.to_string()))?;
                let (full, raw) = (k.value(), v.value());
                let (Some((ns, key)), Some(expires)) = (full.split_once('/'), raw.get(..8)) else { continue };
                let entry = Entry {
                    value: Arc::from(&raw[8..]),
                    expires: u64::from_le_bytes(expires.try_into().expect("8 bytes")),
                };
                if entry.live(now) {
                    mirror.entry(ns.to_owned()).or_default().insert(key.to_owned(), entry);
                }
            }
        }
        let (tx, rx) = unbounded::<Write>();
        let kv = Arc::new(EmbeddedKv {
            mirror: RwLock::new(mirror),
            writes: Mutex::new(Some(tx)),
            writer: Mutex::new(None),
            limits,
        });
        let weak = Arc::downgrade(&kv);
        let writer = std::thread::Builder::new()
            .name("kv-writer".into())
            .spawn(move || writer_loop(db, rx, weak))
            .map_err(|e| KvError(format!("cannot start the KV writer: {e}")))?;
        *kv.writer.lock() = Some(writer);
        Ok(kv)
    }

    fn check(&self, key: &str, value: Option<&[u8]>) -> Result<(), KvError> {
        if key.is_empty() {
            return Err(KvError("empty key: expected 1 or more bytes".into()));
        }
        if key.len() > self.limits.max_key_bytes {
            return Err(KvError(format!(
                "key too long: expected at most {} bytes, found {}",
                self.limits.max_key_bytes,
                key.len()
            )));
        }
        if let Some(v) = value.filter(|v| v.len() > self.limits.max_value_bytes) {
            return Err(KvError(format!(
                "value too large: expected at most {} bytes, found {}",
                self.limits.max_value_bytes,
                v.len()
            )));
        }
        Ok(())
    }

    /// Queues `op` and returns the receiver its commit result arrives on. Called with the
    /// mirror's write lock held, so that commits happen in the order the mirror changed.
    fn queue(&self, op: Op) -> Result<Receiver<Result<(), KvError>>, KvError> {
        let (done, wait) = bounded(1);
        let writes = self.writes.lock();
        let tx = writes.as_ref().ok_or_else(|| KvError("the KV store is shut down".into()))?;
        tx.send(Write { op, done: Some(done) }).map_err(|_| KvError("the KV writer stopped".into()))?;
        Ok(wait)
    }

    fn wait(wait: Receiver<Result<(), KvError>>) -> Result<(), KvError> {
        wait.recv().map_err(|_| KvError("the KV writer stopped before committing".into()))?
    }

    /// Commits what is queued and stops the writer. Later writes fail.
    fn close(&self) {
        self.writes.lock().take();
        if let Some(writer) = self.writer.lock().take() {
            let _ = writer.join();
        }
    }

    /// Drops expired entries from memory and queues their deletion on disk.
    fn sweep(&self) {
        let now = now_ms();
        let mut mirror = self.mirror.write();
        let writes = self.writes.lock();
        let Some(tx) = writes.as_ref() else { return };
        for (ns, entries) in mirror.iter_mut() {
            entries.retain(|key, e| {
                let live = e.live(now);
                if !live {
                    let _ = tx.send(Write { op: Op::Delete { key: format!("{ns}/{key}") }, done: None });
                }
                live
            });
        }
        mirror.retain(|_, entries| !entries.is_empty());
    }
}

impl Drop for EmbeddedKv {
    fn drop(&mut self) {
        self.writes.get_mut().take();
    }
}

fn writer_loop(db: Database, rx: Receiver<Write>, kv: std::sync::Weak<EmbeddedKv>) {
    const SWEEP_EVERY: Duration = Duration::from_secs(10);
    let mut last_sweep = std::time::Instant::now();
    loop {
        let first = match rx.recv_timeout(SWEEP_EVERY) {
            Ok(w) => Some(w),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        };
        if last_sweep.elapsed() >= SWEEP_EVERY {
            last_sweep = std::time::Instant::now();
            if let Some(kv) = kv.upgrade() {
                kv.sweep();
            }
        }
        let Some(first) = first else { continue };
        // Group commit: everything queued while the last commit ran goes into this one.
        let batch: Vec<Write> = std::iter::once(first).chain(rx.try_iter().take(4095)).collect();
        let result = commit(&db, &batch).map_err(KvError);
        if let Err(e) = &result {
            tracing::error!("KV commit failed: {e}");
        }
        for w in batch {
            if let Some(done) = w.done {
                let _ = done.send(result.clone());
            }
        }
    }
}

fn commit(db: &Database, batch: &[Write]) -> Result<(), String> {
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut table = txn.open_table(TABLE).map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        for w in batch {
            match &w.op {
                Op::Put { key, value, expires } => {
                    buf.clear();
                    buf.extend_from_slice(&expires.to_le_bytes());
                    buf.extend_from_slice(value);
                    table.insert(key.as_str(), buf.as_slice()).map_err(|e| e.to_string())?;
                }
                Op::Delete { key } => {
                    table.remove(key.as_str()).map_err(|e| e.to_string())?;
                }
            }
        }
    }
    txn.commit().map_err(|e| e.to_string())
}

impl KvStore for EmbeddedKv {
    fn get(&self, ns: &str, key: &str, read: &mut dyn FnMut(&[u8])) -> Result<bool, KvError> {
        let now = now_ms();
        // Clone the handle (one atomic increment) and release the lock before the closure runs:
        // it is plugin code, which may call back into the store or take its time.
        let value = match self.mirror.read().get(ns).and_then(|m| m.get(key)) {
            Some(e) if e.live(now) => Arc::clone(&e.value),
            _ => return Ok(false),
        };
        read(&value);
        Ok(true)
    }

    fn set(&self, ns: &str, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), KvError> {
        self.check(key, Some(value))?;
        let expires = expiry(ttl);
        let wait = {
            let mut mirror = self.mirror.write();
            let value: Arc<[u8]> = Arc::from(value);
            let wait = self.queue(Op::Put { key: format!("{ns}/{key}"), value: Arc::clone(&value), expires })?;
            mirror.entry(ns.to_owned()).or_default().insert(key.to_owned(), Entry { value, expires });
            wait
        };
        Self::wait(wait)
    }

    fn delete(&self, ns: &str, key: &str) -> Result<bool, KvError> {
        self.check(key, None)?;
        let (existed, wait) = {
            let mut mirror = self.mirror.write();
            let Some(old) = mirror.get_mut(ns).and_then(|m| m.remove(key)) else { return Ok(false) };
            (old.live(now_ms()), self.queue(Op::Delete { key: format!("{ns}/{key}") })?)
        };
        Self::wait(wait)?;
        Ok(existed)
    }

    fn list(&self, ns: &str, prefix: &str, limit: usize) -> Result<Vec<String>, KvError> {
        let now = now_ms();
        let mirror = self.mirror.read();
        let Some(entries) = mirror.get(ns) else { return Ok(Vec::new()) };
        Ok(entries
            .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, e)| e.live(now))
            .map(|(k, _)| k.clone())
            .take(limit)
            .collect())
    }

    fn increment(&self, ns: &str, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
        self.check(key, None)?;
        let (next, wait) = {
            let mut mirror = self.mirror.write();
            let entries = mirror.entry(ns.to_owned()).or_default();
            let (current, expires) = match entries.get(key).filter(|e| e.live(now_ms())) {
                Some(e) => {
                    let bytes: [u8; 8] = e.value[..].try_into().map_err(|_| {
                        KvError(format!(
                            "`{key}` is not a counter: expected an 8-byte value, found {} bytes",
                            e.value.len()
                        ))
                    })?;
                    (i64::from_le_bytes(bytes), e.expires)
                }
                None => (0, expiry(ttl)),
            };
            let next = current.checked_add(delta).ok_or_else(|| KvError(format!("counter `{key}` would overflow")))?;
            let value: Arc<[u8]> = Arc::from(next.to_le_bytes().as_slice());
            let wait = self.queue(Op::Put { key: format!("{ns}/{key}"), value: Arc::clone(&value), expires })?;
            entries.insert(key.to_owned(), Entry { value, expires });
            (next, wait)
        };
        Self::wait(wait)?;
        Ok(next)
    }

    fn shutdown(&self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: KvLimits = KvLimits { max_key_bytes: 16, max_value_bytes: 32 };

    fn value(kv: &EmbeddedKv, ns: &str, key: &str) -> Option<Vec<u8>> {
        let mut out = None;
        kv.get(ns, key, &mut |v| out = Some(v.to_vec())).unwrap();
        out
    }

    #[test]
    fn namespaces_ttl_lists_and_counters_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        {
            let kv = EmbeddedKv::open(&path, LIMITS).unwrap();
            kv.set("a", "k1", b"one", None).unwrap();
            kv.set("a", "k2", b"two", None).unwrap();
            kv.set("b", "k1", b"other", None).unwrap();
            kv.set("a", "gone", b"x", Some(Duration::from_millis(1))).unwrap();
            assert_eq!(kv.increment("a", "n", 5, None).unwrap(), 5);
            assert_eq!(kv.increment("a", "n", -2, None).unwrap(), 3);
            assert!(kv.delete("a", "k2").unwrap());
            assert!(!kv.delete("a", "k2").unwrap());
            std::thread::sleep(Duration::from_millis(5));
            assert_eq!(value(&kv, "a", "gone"), None);
            kv.close();
        }
        let kv = EmbeddedKv::open(&path, LIMITS).unwrap();
        assert_eq!(value(&kv, "a", "k1").as_deref(), Some(&b"one"[..]));
        assert_eq!(value(&kv, "b", "k1").as_deref(), Some(&b"other"[..]));
        assert_eq!(value(&kv, "a", "k2"), None);
        assert_eq!(kv.list("a", "k", 10).unwrap(), ["k1"]);
        assert_eq!(kv.list("a", "", 10).unwrap(), ["k1", "n"]);
        assert_eq!(kv.increment("a", "n", 1, None).unwrap(), 4);
        assert!(kv.increment("a", "k1", 1, None).unwrap_err().0.contains("not a counter"));
    }

    #[test]
    fn a_read_closure_runs_without_the_lock_on_the_stored_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let kv = EmbeddedKv::open(&dir.path().join("kv.redb"), LIMITS).unwrap();
        kv.set("a", "k", b"old", None).unwrap();
        let stored = Arc::clone(&kv.mirror.read()["a"]["k"].value);
        let mut calls = 0;
        let found = kv
            .get("a", "k", &mut |v| {
                calls += 1;
                assert_eq!(v.as_ptr(), stored.as_ptr(), "expected the stored bytes in place, found a copy");
                assert!(kv.mirror.try_write().is_some(), "expected no KV lock held while the closure runs");
                // What deadlocked: a write from inside the read closure.
                kv.set("a", "k", b"new", None).unwrap();
                assert_eq!(v, b"old", "expected the closure's bytes to stay as they were");
            })
            .unwrap();
        assert!(found && calls == 1, "expected one call on a present key, found {calls}");
        assert_eq!(value(&kv, "a", "k").as_deref(), Some(&b"new"[..]));
    }

    #[test]
    fn size_limits_name_what_was_expected_and_found() {
        let dir = tempfile::tempdir().unwrap();
        let kv = EmbeddedKv::open(&dir.path().join("kv.redb"), LIMITS).unwrap();
        let err = kv.set("a", &"k".repeat(17), b"v", None).unwrap_err();
        assert_eq!(err.0, "key too long: expected at most 16 bytes, found 17");
        let err = kv.set("a", "k", &[0; 33], None).unwrap_err();
        assert_eq!(err.0, "value too large: expected at most 32 bytes, found 33");
        assert!(kv.set("a", "", b"v", None).unwrap_err().0.starts_with("empty key"));
    }

    #[test]
    fn a_huge_ttl_saturates_instead_of_expiring_at_once() {
        assert_eq!(expiry(Some(Duration::MAX)), u64::MAX);
        assert_eq!(expiry(Some(Duration::from_millis(u64::MAX))), u64::MAX);
        assert_eq!(expiry(Some(Duration::ZERO)), 0, "a zero TTL means no expiry");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        {
            let kv = EmbeddedKv::open(&path, LIMITS).unwrap();
            kv.set("a", "k", b"v", Some(Duration::MAX)).unwrap();
            assert_eq!(kv.increment("a", "n", 1, Some(Duration::from_secs(u64::MAX))).unwrap(), 1);
            assert_eq!(value(&kv, "a", "k").as_deref(), Some(&b"v"[..]));
            assert_eq!(kv.increment("a", "n", 1, None).unwrap(), 2, "expected the counter to live on");
            kv.close();
        }
        let kv = EmbeddedKv::open(&path, LIMITS).unwrap();
        assert_eq!(value(&kv, "a", "k").as_deref(), Some(&b"v"[..]), "expected the key to survive a reopen");
    }

    #[test]
    fn concurrent_increments_are_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let kv = EmbeddedKv::open(&dir.path().join("kv.redb"), LIMITS).unwrap();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..50 {
                        kv.increment("ns", "c", 1, None).unwrap();
                    }
                });
            }
        });
        assert_eq!(kv.increment("ns", "c", 0, None).unwrap(), 200);
    }
}
