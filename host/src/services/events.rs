//! Local publish/subscribe for plugins: events queue into a bounded channel and are delivered
//! on the event thread, off the request path. Each subscription belongs to one plugin instance
//! and ends with it.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};
use parking_lot::Mutex;
use plugin_abi::ffi::{RawEvent, Subscriber};

/// How long ending a plugin's subscriptions waits for a delivery in progress.
pub const END_WAIT: Duration = Duration::from_secs(2);
/// How long shutdown waits for queued events to be delivered.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

struct Subscription {
    id: u64,
    owner: u64,
    /// Empty: every topic.
    topic: String,
    subscriber: Arc<Subscriber>,
}

struct Event {
    topic: String,
    payload: Vec<u8>,
    direction: u8,
    source: String,
}

#[derive(Default)]
struct Subscriptions {
    live: Vec<Subscription>,
    /// Owners whose subscriptions ended: they may not subscribe again (a plugin subscribing from
    /// its shutdown, or from a thread racing it, would otherwise outlive its instance).
    ended: HashSet<u64>,
}

pub struct EventBus {
    subscriptions: Mutex<Subscriptions>,
    /// Held by the event thread while it delivers one event: ending a plugin's subscriptions
    /// takes it too (for at most `END_WAIT`), so that normally no callback into the plugin is
    /// still running once that returns. One that blocks longer keeps running; its `Subscriber`
    /// keeps the plugin's library mapped until it returns.
    delivering: Arc<Mutex<()>>,
    tx: Mutex<Option<Sender<Event>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
    /// Closed by the event thread when it ends.
    finished: Mutex<Option<Receiver<()>>>,
    next_id: AtomicU64,
    /// Events refused because the queue was full (`gateway_events_dropped_total`).
    dropped: Arc<AtomicU64>,
}

impl EventBus {
    /// A bus with a queue of `capacity` events; refusals are counted in `dropped`.
    pub fn start(capacity: usize, dropped: Arc<AtomicU64>) -> Arc<EventBus> {
        let (tx, rx) = bounded::<Event>(capacity);
        let bus = Arc::new(EventBus {
            subscriptions: Mutex::new(Subscriptions::default()),
            delivering: Arc::new(Mutex::new(())),
            tx: Mutex::new(Some(tx)),
            worker: Mutex::new(None),
            finished: Mutex::new(None),
            next_id: AtomicU64::new(1),
            dropped,
        });
        let weak = Arc::downgrade(&bus);
        let (finishing, finished) = bounded::<()>(0);
        let worker = std::thread::Builder::new()
            .name("events".into())
            .spawn(move || {
                let _finishing = finishing;
                for event in rx {
                    let Some(bus) = weak.upgrade() else { return };
                    bus.deliver(&event);
                }
            })
            .expect("spawning the event thread");
        *bus.worker.lock() = Some(worker);
        *bus.finished.lock() = Some(finished);
        bus
    }

    fn deliver(&self, event: &Event) {
        let _delivering = self.delivering.lock();
        let targets: Vec<Arc<Subscriber>> = self
            .subscriptions
            .lock()
            .live
            .iter()
            .filter(|s| s.topic.is_empty() || s.topic == event.topic)
            .map(|s| s.subscriber.clone())
            .collect();
        let raw = RawEvent {
            topic: event.topic.as_str().into(),
            payload: event.payload.as_slice().into(),
            direction: event.direction,
            source: event.source.as_str().into(),
        };
        for target in targets {
            target.deliver(&raw);
        }
    }

    pub fn publish(&self, source: &str, topic: &str, payload: &[u8], direction: u8) -> Result<(), String> {
        let tx = self.tx.lock();
        let tx = tx.as_ref().ok_or("the event bus is shut down")?;
        let event = Event { topic: topic.to_owned(), payload: payload.to_vec(), direction, source: source.to_owned() };
        match tx.try_send(event) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Relaxed);
                Err(format!("event queue full: expected room for 1 more of {} events", tx.capacity().unwrap_or(0)))
            }
            Err(TrySendError::Disconnected(_)) => Err("the event bus is shut down".into()),
        }
    }

    /// Refused once `owner`'s subscriptions have ended; the subscriber is then dropped here.
    pub fn subscribe(&self, owner: u64, topic: &str, subscriber: Subscriber) -> Result<u64, String> {
        let mut subs = self.subscriptions.lock();
        if subs.ended.contains(&owner) {
            drop(subs);
            drop(subscriber);
            return Err("cannot subscribe: this plugin instance is shutting down".into());
        }
        let id = self.next_id.fetch_add(1, Relaxed);
        subs.live.push(Subscription { id, owner, topic: topic.to_owned(), subscriber: Arc::new(subscriber) });
        Ok(id)
    }

    /// Ends subscription `id` if `owner` holds it.
    pub fn unsubscribe(&self, owner: u64, id: u64) -> bool {
        let removed = {
            let mut subs = self.subscriptions.lock();
            let at = subs.live.iter().position(|s| s.id == id && s.owner == owner);
            at.map(|i| subs.live.remove(i))
        };
        removed.is_some()
    }

    /// Ends every subscription of `owner` for good. Waits (up to [`END_WAIT`]) for a delivery in
    /// progress, so that normally no callback of the plugin is running when this returns; a
    /// subscriber that blocks longer is left to finish on its own (the subscriber keeps its
    /// library loaded), so that one stuck plugin cannot stall unloads and shutdown.
    pub fn end_owner(&self, owner: u64) {
        let ended: Vec<Subscription> = {
            let mut subs = self.subscriptions.lock();
            subs.ended.insert(owner);
            let (ended, kept) = std::mem::take(&mut subs.live).into_iter().partition(|s| s.owner == owner);
            subs.live = kept;
            ended
        };
        if ended.is_empty() {
            return;
        }
        if self.delivering.try_lock_for(END_WAIT).is_none() {
            tracing::warn!(
                "an event subscriber is still running after {} s: ending subscriptions without waiting for it",
                END_WAIT.as_secs()
            );
        }
        drop(ended);
    }

    /// Forgets `owner` once nothing can subscribe in its name any more (its services are gone).
    pub fn forget_owner(&self, owner: u64) {
        self.subscriptions.lock().ended.remove(&owner);
    }

    /// Delivers what is queued, then stops the event thread; gives up waiting after
    /// [`SHUTDOWN_WAIT`] (a subscriber that blocks must not keep the gateway from stopping).
    pub fn shutdown(&self) {
        self.tx.lock().take();
        let Some(finished) = self.finished.lock().take() else { return };
        match finished.recv_timeout(SHUTDOWN_WAIT) {
            Err(RecvTimeoutError::Timeout) => {
                tracing::warn!(
                    "the event thread is still delivering after {} s: not waiting for it",
                    SHUTDOWN_WAIT.as_secs()
                );
            }
            _ => {
                if let Some(worker) = self.worker.lock().take() {
                    let _ = worker.join();
                }
            }
        }
    }
}
