//! Plugin key-value storage: the [`KvStore`] trait plugins reach through the host, and its
//! embedded implementation, an in-memory mirror of committed data backed by redb.
//!
//! Reads never touch the disk: under a read lock, two map lookups and a clone of the value's
//! `Arc` (no copy, no allocation); the caller's closure then runs on the bytes with no lock held,
//! so it may call back into the store.
//!
//! Writes go to one writer thread. It takes every write queued meanwhile as one batch (group
//! commit: concurrent writers share an fsync), works out each result (an increment's count,
//! whether a delete found its key) from committed data and the batch's earlier writes, commits
//! the batch in one redb transaction, and only then applies it to the mirror and answers the
//! callers. So readers see committed data only, in commit order; a write returns once durable;
//! increments are atomic without any caller-side lock. redb's commits are crash-safe: a
//! `kill -9` loses nothing that was acknowledged and never leaves a torn database.
//!
//! When a commit fails (disk full, I/O error), every write of the batch gets the error and none
//! of it becomes visible. redb refuses a database after an I/O error, so the writer drops it and
//! reopens it before the next write, reloading the mirror from what the disk holds; while that
//! fails, writes report that the store cannot be reopened and reads serve the last committed
//! data. (After a failed fsync the disk may hold the batch all the same; the reload then shows
//! it, as a restart would.)

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use parking_lot::{Mutex, RwLock};
use redb::{Builder, Database, ReadableTable, StorageBackend, TableDefinition};

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

#[derive(Clone)]
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

/// Committed entries by namespace, then key.
type Mirror = HashMap<String, BTreeMap<String, Entry>>;

/// A batch's effect: per `(namespace, key)`, the new entry, or `None` if removed.
type Changes = HashMap<(String, String), Option<Entry>>;

/// Opens the database, first at start and again after an I/O error.
type Opener = Box<dyn FnMut() -> Result<Database, redb::DatabaseError> + Send>;

/// What a caller asks for; the writer thread works out the result against committed data, so
/// no write depends on another that may still fail.
enum Op {
    Set { value: Arc<[u8]>, expires: u64 },
    Delete,
    Increment { delta: i64, ttl: Option<Duration> },
}

struct Write {
    ns: String,
    key: String,
    op: Op,
    /// Told the outcome once committed: the new count for an increment, 1 if a delete removed a
    /// live key, else 0.
    done: Sender<Result<i64, KvError>>,
}

pub struct EmbeddedKv {
    /// Committed data only: the writer thread changes it after each successful commit.
    mirror: Arc<RwLock<Mirror>>,
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
        let file = path.to_owned();
        Self::start(path.display().to_string(), Box::new(move || Database::create(&file)), limits)
    }

    /// Opens (or creates) the store on the redb storage backend `backend` returns. `backend` is
    /// called again to reopen the store after an I/O error and must then return a backend on the
    /// same storage. `name` identifies the store in errors.
    pub fn with_backend<B: StorageBackend>(
        name: &str,
        mut backend: impl FnMut() -> B + Send + 'static,
        limits: KvLimits,
    ) -> Result<Arc<Self>, KvError> {
        Self::start(name.to_owned(), Box::new(move || Builder::new().create_with_backend(backend())), limits)
    }

    fn start(name: String, mut open: Opener, limits: KvLimits) -> Result<Arc<Self>, KvError> {
        let db = open().map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => KvError(format!(
                "cannot open KV store {name}: it is locked by another process, most likely a gateway (or \
                 `gateway kv`) running on the same data_dir; stop it, or give this one another data_dir"
            )),
            e => KvError(format!("cannot open KV store {name}: {e}")),
        })?;
        let mirror = load(&db).map_err(|e| KvError(format!("cannot load KV store {name}: {e}")))?;
        let mirror = Arc::new(RwLock::new(mirror));
        let (tx, rx) = unbounded::<Write>();
        let mut writer = Writer { name, open, db: Some(db), mirror: Arc::clone(&mirror) };
        let writer = std::thread::Builder::new()
            .name("kv-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| KvError(format!("cannot start the KV writer: {e}")))?;
        Ok(Arc::new(EmbeddedKv { mirror, writes: Mutex::new(Some(tx)), writer: Mutex::new(Some(writer)), limits }))
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

    /// Hands `op` to the writer thread and waits until it is committed (or failed).
    fn request(&self, ns: &str, key: &str, op: Op) -> Result<i64, KvError> {
        let (done, outcome) = bounded(1);
        {
            let writes = self.writes.lock();
            let tx = writes.as_ref().ok_or_else(|| KvError("the KV store is shut down".into()))?;
            tx.send(Write { ns: ns.to_owned(), key: key.to_owned(), op, done })
                .map_err(|_| KvError("the KV writer stopped".into()))?;
        }
        outcome.recv().map_err(|_| KvError("the KV writer stopped before committing".into()))?
    }

    /// Commits what is queued and stops the writer. Later writes fail.
    fn close(&self) {
        self.writes.lock().take();
        if let Some(writer) = self.writer.lock().take() {
            let _ = writer.join();
        }
    }
}

impl Drop for EmbeddedKv {
    fn drop(&mut self) {
        self.writes.get_mut().take();
    }
}

/// Creates the table if needed and reads every live entry.
#[allow(clippy::result_large_err, reason = "called once per open, the error goes straight into a message")]
fn load(db: &Database) -> Result<Mirror, redb::Error> {
    let txn = db.begin_write()?;
    txn.open_table(TABLE)?;
    txn.commit()?;
    let txn = db.begin_read()?;
    let table = txn.open_table(TABLE)?;
    let mut mirror = Mirror::new();
    let now = now_ms();
    for item in table.iter()? {
        let (k, v) = item?;
        let (full, raw) = (k.value(), v.value());
        let (Some((ns, key)), Some(expires)) = (full.split_once('/'), raw.get(..8)) else { continue };
        let entry =
            Entry { value: Arc::from(&raw[8..]), expires: u64::from_le_bytes(expires.try_into().expect("8 bytes")) };
        if entry.live(now) {
            mirror.entry(ns.to_owned()).or_default().insert(key.to_owned(), entry);
        }
    }
    Ok(mirror)
}

/// The writer thread's state: the only code that changes the database and the mirror.
struct Writer {
    /// Identifies the store in errors: its path, or the name given with its backend.
    name: String,
    open: Opener,
    /// `None` after a failed commit, until reopening succeeds.
    db: Option<Database>,
    mirror: Arc<RwLock<Mirror>>,
}

impl Writer {
    fn run(&mut self, rx: Receiver<Write>) {
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
                self.sweep();
            }
            let Some(first) = first else { continue };
            // Group commit: everything queued while the last commit ran goes into this one.
            let batch: Vec<Write> = std::iter::once(first).chain(rx.try_iter().take(4095)).collect();
            self.write(batch);
        }
    }

    /// The database, reopened (and the mirror reloaded from it) if the last commit failed.
    fn db(&mut self) -> Result<&Database, KvError> {
        let db = match self.db.take() {
            Some(db) => db,
            None => {
                let db = (self.open)().map_err(|e| {
                    KvError(format!(
                        "KV store {} unavailable: expected to reopen it after an I/O error, found: {e}",
                        self.name
                    ))
                })?;
                let mirror = load(&db).map_err(|e| {
                    KvError(format!(
                        "KV store {} unavailable: expected to reload it after an I/O error, found: {e}",
                        self.name
                    ))
                })?;
                *self.mirror.write() = mirror;
                tracing::info!("KV store {} reopened after an I/O error", self.name);
                db
            }
        };
        Ok(self.db.insert(db))
    }

    /// Works out, commits and applies one batch, then answers its callers.
    fn write(&mut self, batch: Vec<Write>) {
        // Reopen first, so that results are worked out on what the disk holds.
        if let Err(e) = self.db() {
            tracing::error!("{e}");
            for w in batch {
                let _ = w.done.send(Err(e.clone()));
            }
            return;
        }
        let now = now_ms();
        let mut changes = Changes::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        {
            let mirror = self.mirror.read();
            for Write { ns, key, op, done } in batch {
                let slot = (ns, key);
                let current = match changes.get(&slot) {
                    Some(change) => change.clone(),
                    None => mirror.get(&slot.0).and_then(|m| m.get(&slot.1)).cloned(),
                };
                match outcome(op, &slot.1, current, now) {
                    Ok((reply, change)) => {
                        if let Some(change) = change {
                            changes.insert(slot, change);
                        }
                        replies.push((done, Ok(reply)));
                    }
                    Err(e) => replies.push((done, Err(e))),
                }
            }
        }
        let stored = self.store(changes);
        for (done, reply) in replies {
            let _ = done.send(match (&stored, reply) {
                (Err(e), Ok(_)) => Err(e.clone()),
                (_, reply) => reply,
            });
        }
    }

    /// Commits `changes`, then applies them to the mirror. On failure applies nothing and drops
    /// the database, which redb will not use again after an I/O error; the next write reopens it.
    fn store(&mut self, changes: Changes) -> Result<(), KvError> {
        if changes.is_empty() {
            return Ok(());
        }
        if let Err(e) = commit(self.db()?, &changes) {
            self.db = None;
            let e = KvError(format!("KV commit failed: expected the write stored in {}, found: {e}", self.name));
            tracing::error!("{e}; the store reopens at the next write");
            return Err(e);
        }
        let mut mirror = self.mirror.write();
        for ((ns, key), change) in changes {
            match change {
                Some(entry) => {
                    mirror.entry(ns).or_default().insert(key, entry);
                }
                None => {
                    if let Some(entries) = mirror.get_mut(&ns) {
                        entries.remove(&key);
                        if entries.is_empty() {
                            mirror.remove(&ns);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Deletes expired entries, on disk and then in memory.
    fn sweep(&mut self) {
        // Reopen first: the expired keys are picked from what the disk holds.
        if self.db().is_err() {
            return;
        }
        let now = now_ms();
        let expired: Changes = self
            .mirror
            .read()
            .iter()
            .flat_map(|(ns, entries)| {
                entries.iter().filter(|(_, e)| !e.live(now)).map(|(key, _)| ((ns.clone(), key.clone()), None))
            })
            .collect();
        // A failure is logged by `store`, and the keys stay expired: nothing is lost.
        let _ = self.store(expired);
    }
}

/// What `op` on `key`, whose committed (or earlier in the batch) entry is `current`, returns to
/// its caller, and the change it makes (`None`: none).
fn outcome(op: Op, key: &str, current: Option<Entry>, now: u64) -> Result<(i64, Option<Option<Entry>>), KvError> {
    match op {
        Op::Set { value, expires } => Ok((0, Some(Some(Entry { value, expires })))),
        Op::Delete => Ok(match current {
            Some(e) => (i64::from(e.live(now)), Some(None)),
            None => (0, None),
        }),
        Op::Increment { delta, ttl } => {
            let (count, expires) = match current.filter(|e| e.live(now)) {
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
            let next = count.checked_add(delta).ok_or_else(|| KvError(format!("counter `{key}` would overflow")))?;
            Ok((next, Some(Some(Entry { value: Arc::from(next.to_le_bytes().as_slice()), expires }))))
        }
    }
}

#[allow(clippy::result_large_err, reason = "called once per batch, the error goes straight into a message")]
fn commit(db: &Database, changes: &Changes) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(TABLE)?;
        let (mut full, mut buf) = (String::new(), Vec::new());
        for ((ns, key), change) in changes {
            full.clear();
            full.push_str(ns);
            full.push('/');
            full.push_str(key);
            match change {
                Some(entry) => {
                    buf.clear();
                    buf.extend_from_slice(&entry.expires.to_le_bytes());
                    buf.extend_from_slice(&entry.value);
                    table.insert(full.as_str(), buf.as_slice())?;
                }
                None => {
                    table.remove(full.as_str())?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
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
        self.request(ns, key, Op::Set { value: Arc::from(value), expires: expiry(ttl) }).map(|_| ())
    }

    fn delete(&self, ns: &str, key: &str) -> Result<bool, KvError> {
        self.check(key, None)?;
        // Absent from committed data: nothing to write. A write still in flight is concurrent with
        // this delete, which may then come first; one that returned is in the mirror.
        if !self.mirror.read().get(ns).is_some_and(|m| m.contains_key(key)) {
            return Ok(false);
        }
        Ok(self.request(ns, key, Op::Delete)? == 1)
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
        self.request(ns, key, Op::Increment { delta, ttl })
    }

    fn shutdown(&self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

    use redb::backends::InMemoryBackend;

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

    /// Storage in memory that survives the stores opened on it, and whose writes, syncs and
    /// resizes fail while `failing` is set: a full or failing disk.
    #[derive(Debug, Default)]
    struct Disk {
        data: InMemoryBackend,
        failing: AtomicBool,
    }

    impl Disk {
        fn fault(&self) -> io::Result<()> {
            if self.failing.load(SeqCst) { Err(io::Error::other("injected I/O error")) } else { Ok(()) }
        }
    }

    #[derive(Debug)]
    struct OnDisk(Arc<Disk>);

    impl StorageBackend for OnDisk {
        fn len(&self) -> io::Result<u64> {
            StorageBackend::len(&self.0.data)
        }
        fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
            StorageBackend::read(&self.0.data, offset, len)
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.0.fault()?;
            StorageBackend::set_len(&self.0.data, len)
        }
        fn sync_data(&self, eventual: bool) -> io::Result<()> {
            self.0.fault()?;
            StorageBackend::sync_data(&self.0.data, eventual)
        }
        fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            self.0.fault()?;
            StorageBackend::write(&self.0.data, offset, data)
        }
    }

    fn open_on(disk: &Arc<Disk>) -> Arc<EmbeddedKv> {
        let disk = Arc::clone(disk);
        EmbeddedKv::with_backend("test disk", move || OnDisk(Arc::clone(&disk)), LIMITS).unwrap()
    }

    #[test]
    fn a_failed_commit_is_reported_and_invisible_and_the_store_recovers() {
        let disk = Arc::new(Disk::default());
        let kv = open_on(&disk);
        kv.set("a", "k", b"one", None).unwrap();
        assert_eq!(kv.increment("a", "n", 1, None).unwrap(), 1);

        disk.failing.store(true, SeqCst);
        let err = kv.set("a", "k", b"two", None).unwrap_err();
        assert!(err.0.starts_with("KV commit failed: expected the write stored in test disk"), "found: {err}");
        assert!(err.0.contains("injected I/O error"), "expected the cause in the error, found: {err}");
        assert_eq!(value(&kv, "a", "k").as_deref(), Some(&b"one"[..]), "expected the failed write invisible");
        // The disk still fails: every kind of write fails, loudly, and none shows.
        for err in [
            kv.increment("a", "n", 1, None).unwrap_err(),
            kv.set("a", "new", b"x", None).unwrap_err(),
            kv.delete("a", "k").unwrap_err(),
        ] {
            assert!(err.0.contains("injected I/O error"), "expected the cause in the error, found: {err}");
        }
        assert_eq!(value(&kv, "a", "k").as_deref(), Some(&b"one"[..]));
        assert_eq!(value(&kv, "a", "n"), Some(1i64.to_le_bytes().to_vec()));
        assert_eq!(kv.list("a", "", 10).unwrap(), ["k", "n"]);

        disk.failing.store(false, SeqCst);
        kv.set("a", "k", b"three", None).unwrap();
        assert_eq!(kv.increment("a", "n", 1, None).unwrap(), 2, "expected the failed increment not counted");
        assert_eq!(value(&kv, "a", "k").as_deref(), Some(&b"three"[..]));
        kv.close();

        let kv = open_on(&disk);
        assert_eq!(value(&kv, "a", "k").as_deref(), Some(&b"three"[..]), "expected the committed value after reopen");
        assert_eq!(kv.list("a", "", 10).unwrap(), ["k", "n"]);
        assert_eq!(kv.increment("a", "n", 0, None).unwrap(), 2);
    }

    #[test]
    fn concurrent_increments_through_a_disk_fault_count_exactly_the_committed_ones() {
        let disk = Arc::new(Disk::default());
        let kv = open_on(&disk);
        let mut counts: Vec<i64> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|t| {
                    let (kv, disk) = (&kv, &disk);
                    s.spawn(move || {
                        let mut counts = Vec::new();
                        for i in 0..50 {
                            // Worker 0 breaks the disk for its increments 20..30 (so at least
                            // those fail) and whatever the others commit meanwhile.
                            if t == 0 && (i == 20 || i == 30) {
                                disk.failing.store(i == 20, SeqCst);
                            }
                            match kv.increment("ns", "c", 1, None) {
                                Ok(n) => counts.push(n),
                                Err(e) => assert!(e.0.contains("injected I/O error"), "found: {e}"),
                            }
                        }
                        counts
                    })
                })
                .collect();
            workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
        });
        counts.sort_unstable();
        let committed = counts.len() as i64;
        assert!(committed <= 190, "expected at least 10 failed increments, found {} failed", 200 - committed);
        assert_eq!(counts, (1..=committed).collect::<Vec<_>>(), "expected each success to count once, failures never");
        kv.close();
        let kv = open_on(&disk);
        assert_eq!(kv.increment("ns", "c", 0, None).unwrap(), committed, "expected the committed count after reopen");
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
