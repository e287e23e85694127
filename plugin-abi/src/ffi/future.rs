//! Futures and streams that cross the C ABI, in both directions: a plugin's async hook returns an
//! [`RFuture`] the host polls on its tokio runtime, and a host service (the HTTP client) returns
//! one the plugin awaits. Neither side needs the other's runtime.
//!
//! Why not `async-ffi`: its consumer side re-raises a panic from the producer's `poll` as a panic
//! in the consumer, it has no stream type, and it allocates on every waker clone across the
//! boundary in both directions. Here:
//!
//! * A panic inside `poll` (or inside the future's drop) is caught on the side that made the
//!   future; the consumer gets the output type's error value ([`FromPanic`]) and never panics.
//! * Wakers cross as an [`RWaker`]: a data pointer and a vtable of `extern "C"` functions that
//!   live in the code of whoever made the waker. A waker that comes back to the side that made it
//!   is unwrapped to the original `Waker` (a pointer compare), so a plugin future awaiting a host
//!   service wakes the host's task directly, without a wrapper per hop. Polling allocates nothing;
//!   only cloning a waker across the boundary allocates (one box).
//! * The code behind a plugin-made future stays mapped while the host holds it: the host wraps
//!   every [`RFuture`] from a plugin with the plugin's instance (`InstanceFuture` in `define.rs`),
//!   and a host future handed to a plugin keeps the plugin's library loaded for as long as it
//!   may hold a waker the plugin made (`KeepAlive`).

use std::ffi::c_void;
use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

use abi_stable::StableAbi;
use abi_stable::std_types::{RErr, RNone, ROption, RResult, RSome, RString};

use super::{PluginError, code};
use crate::sdk::catch;

/// A waker as it crosses the boundary. Borrowed for the duration of a `poll` call; keep it only
/// through `clone`.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct RWaker {
    data: *const c_void,
    vtable: &'static RWakerVTable,
}

/// The functions behind an [`RWaker`], in the code of the side that made it.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct RWakerVTable {
    /// An owned copy, to be released with `wake` or `drop`.
    clone: extern "C" fn(data: *const c_void) -> RWaker,
    /// Wakes and releases an owned waker.
    wake: extern "C" fn(data: *const c_void),
    wake_by_ref: extern "C" fn(data: *const c_void),
    /// Releases an owned waker.
    drop: extern "C" fn(data: *const c_void),
}

// ---- native `Waker` → `RWaker` (this side's vtables) ----

/// `data` is a `*const Waker` borrowed for one poll.
static BORROWED: RWakerVTable =
    RWakerVTable { clone: native_clone, wake: native_wake_by_ref, wake_by_ref: native_wake_by_ref, drop: noop };
/// `data` is a `Box<Waker>`.
static OWNED: RWakerVTable =
    RWakerVTable { clone: native_clone, wake: native_wake, wake_by_ref: native_wake_by_ref, drop: native_drop };

/// Runs `f`; a panic (a foreign waker's code may panic) is swallowed: it must not unwind
/// through an `extern "C"` frame.
fn quietly(f: impl FnOnce()) {
    let _ = catch(f);
}

extern "C" fn native_clone(data: *const c_void) -> RWaker {
    // SAFETY: `data` is a live `Waker` (borrowed for this poll, or boxed by `native_clone`).
    let waker = unsafe { &*(data as *const Waker) };
    let cloned = catch(|| waker.clone()).unwrap_or_else(|_| Waker::noop().clone());
    RWaker { data: Box::into_raw(Box::new(cloned)) as *const c_void, vtable: &OWNED }
}

extern "C" fn native_wake(data: *const c_void) {
    // SAFETY: `data` is the `Box<Waker>` made by `native_clone`, released here exactly once.
    let waker = unsafe { Box::from_raw(data as *mut Waker) };
    quietly(move || waker.wake());
}

extern "C" fn native_wake_by_ref(data: *const c_void) {
    // SAFETY: `data` is a live `Waker`.
    let waker = unsafe { &*(data as *const Waker) };
    quietly(|| waker.wake_by_ref());
}

extern "C" fn native_drop(data: *const c_void) {
    // SAFETY: `data` is the `Box<Waker>` made by `native_clone`, released here exactly once.
    let waker = unsafe { Box::from_raw(data as *mut Waker) };
    quietly(move || drop(waker));
}

extern "C" fn noop(_: *const c_void) {}

impl RWaker {
    /// `waker` as it crosses the boundary, borrowed for one call. A waker that came from the
    /// other side is handed back as the `RWaker` it was.
    fn borrow(waker: &Waker) -> RWaker {
        let data = waker.data();
        if std::ptr::eq(waker.vtable(), &FOREIGN_BORROWED) {
            // SAFETY: FOREIGN_BORROWED wakers point to an `RWaker` borrowed for this poll.
            return unsafe { *(data as *const RWaker) };
        }
        if std::ptr::eq(waker.vtable(), &FOREIGN_OWNED) {
            // SAFETY: FOREIGN_OWNED wakers point to a `Box<RWaker>` owned by the `Waker`.
            return unsafe { *(data as *const RWaker) };
        }
        RWaker { data: waker as *const Waker as *const c_void, vtable: &BORROWED }
    }

    /// Runs `f` with a `Waker` for this `RWaker`: the original `Waker` if this side made it.
    fn with_waker<R>(&self, f: impl FnOnce(&Waker) -> R) -> R {
        if std::ptr::eq(self.vtable, &BORROWED) || std::ptr::eq(self.vtable, &OWNED) {
            // SAFETY: this side's vtables are only used with a live `Waker` behind `data`.
            return f(unsafe { &*(self.data as *const Waker) });
        }
        let raw = RawWaker::new(self as *const RWaker as *const (), &FOREIGN_BORROWED);
        // SAFETY: FOREIGN_BORROWED's functions uphold the RawWaker contract for an `RWaker`
        // borrowed for this call; `ManuallyDrop` because this `Waker` owns nothing.
        let waker = ManuallyDrop::new(unsafe { Waker::from_raw(raw) });
        f(&waker)
    }
}

// ---- `RWaker` from the other side → `Waker` (the other side's functions behind ours) ----

/// `data` is a `*const RWaker` borrowed for one poll.
static FOREIGN_BORROWED: RawWakerVTable =
    RawWakerVTable::new(foreign_clone, foreign_wake_by_ref, foreign_wake_by_ref, foreign_noop);
/// `data` is a `Box<RWaker>` holding an owned `RWaker`.
static FOREIGN_OWNED: RawWakerVTable =
    RawWakerVTable::new(foreign_clone, foreign_wake, foreign_wake_by_ref, foreign_drop);

unsafe fn foreign_clone(data: *const ()) -> RawWaker {
    // SAFETY: `data` points to a live `RWaker` (both FOREIGN vtables).
    let rw = unsafe { &*(data as *const RWaker) };
    let owned = (rw.vtable.clone)(rw.data);
    RawWaker::new(Box::into_raw(Box::new(owned)) as *const (), &FOREIGN_OWNED)
}

unsafe fn foreign_wake(data: *const ()) {
    // SAFETY: `data` is the `Box<RWaker>` made by `foreign_clone`, consumed here.
    let rw = unsafe { Box::from_raw(data as *mut RWaker) };
    (rw.vtable.wake)(rw.data);
}

unsafe fn foreign_wake_by_ref(data: *const ()) {
    // SAFETY: `data` points to a live `RWaker`.
    let rw = unsafe { &*(data as *const RWaker) };
    (rw.vtable.wake_by_ref)(rw.data);
}

unsafe fn foreign_drop(data: *const ()) {
    // SAFETY: `data` is the `Box<RWaker>` made by `foreign_clone`, released here.
    let rw = unsafe { Box::from_raw(data as *mut RWaker) };
    (rw.vtable.drop)(rw.data);
}

unsafe fn foreign_noop(_: *const ()) {}

// ---- futures and streams ----

/// A poll result as it crosses the boundary.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub enum RPoll<T> {
    Ready(T),
    Pending,
}

/// The value a future or stream item takes when the code producing it panicked.
pub trait FromPanic {
    fn from_panic(message: String) -> Self;
}

impl<T> FromPanic for RResult<T, PluginError> {
    fn from_panic(message: String) -> Self {
        RErr(PluginError { code: code::PANIC, message: format!("plugin panicked: {message}").into() })
    }
}

impl FromPanic for () {
    fn from_panic(_: String) -> Self {}
}

/// What a future or stream reports when dropping its state panicked.
pub type DropReport = ROption<RString>;

/// A `Send` future across the C ABI. Dropping it drops the future inside the code that made it.
#[repr(C)]
#[derive(StableAbi)]
pub struct RFuture<T> {
    state: *mut c_void,
    poll: extern "C" fn(state: *mut c_void, waker: &RWaker) -> RPoll<T>,
    /// Frees the state; returns the message of a panic in the future's drop, if any.
    drop: extern "C" fn(state: *mut c_void) -> DropReport,
}

// SAFETY: `RFuture::new` only accepts `Send` futures; the state is used by one poller at a time.
unsafe impl<T: Send> Send for RFuture<T> {}

/// Producer-side state: the future, then nothing once it finished or panicked.
/// Lives in one heap allocation that never moves until it is freed, so the future inside is
/// pinned where it is (one allocation per future, not two).
struct State<F>(Option<F>);

impl<F> State<F> {
    /// The future, pinned in place.
    fn pinned(&mut self) -> Option<Pin<&mut F>> {
        // SAFETY: a `State` is only ever reached through the `Box` made in `new`, which is not
        // moved until it is freed; the future is never moved out of it, only dropped in place
        // (`self.0 = None`).
        self.0.as_mut().map(|f| unsafe { Pin::new_unchecked(f) })
    }
}

impl<T: FromPanic> RFuture<T> {
    /// Wraps `future` for the other side to poll. A panic while polling becomes the output
    /// `T::from_panic(message)`; polling after that (or after completion) stays pending.
    pub fn new<F: Future<Output = T> + Send + 'static>(future: F) -> Self {
        extern "C" fn poll<F: Future>(state: *mut c_void, waker: &RWaker) -> RPoll<F::Output>
        where
            F::Output: FromPanic,
        {
            // SAFETY: `state` is the `State<F>` boxed by `new`, polled by one side at a time.
            let state = unsafe { &mut *(state as *mut State<F>) };
            let Some(mut future) = state.pinned() else { return RPoll::Pending };
            let polled = waker.with_waker(|w| catch(|| future.as_mut().poll(&mut Context::from_waker(w))));
            match polled {
                Ok(Poll::Pending) => RPoll::Pending,
                Ok(Poll::Ready(v)) => {
                    let _ = catch(|| state.0 = None);
                    RPoll::Ready(v)
                }
                Err(message) => {
                    // A panicked future is dropped (guarded) and never polled again.
                    let _ = catch(|| state.0 = None);
                    RPoll::Ready(F::Output::from_panic(message))
                }
            }
        }
        extern "C" fn drop<F>(state: *mut c_void) -> DropReport {
            // SAFETY: `state` is the `State<F>` boxed by `new`, freed here exactly once.
            let state = unsafe { Box::from_raw(state as *mut State<F>) };
            match catch(move || std::mem::drop(state)) {
                Ok(()) => RNone,
                Err(message) => RSome(message.into()),
            }
        }
        let state = Box::new(State(Some(future)));
        RFuture { state: Box::into_raw(state) as *mut c_void, poll: poll::<F>, drop: drop::<F> }
    }

    /// A future that is ready at once.
    pub fn ready(value: T) -> Self
    where
        T: Send + 'static,
    {
        RFuture::new(std::future::ready(value))
    }

    /// Drops the future now, returning the message of a panic in its drop, if any.
    pub fn close(self) -> Option<String> {
        let this = ManuallyDrop::new(self);
        (this.drop)(this.state).into_option().map(RString::into_string)
    }
}

impl<T> Future for RFuture<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let rw = RWaker::borrow(cx.waker());
        match (self.poll)(self.state, &rw) {
            RPoll::Ready(v) => Poll::Ready(v),
            RPoll::Pending => Poll::Pending,
        }
    }
}

impl<T> Drop for RFuture<T> {
    fn drop(&mut self) {
        // A panic in the producer's drop was caught there; a consumer that cares uses `close`.
        let _ = (self.drop)(self.state);
    }
}

/// A `Send` stream across the C ABI: items until `RNone`. Dropping it drops the stream inside
/// the code that made it.
#[repr(C)]
#[derive(StableAbi)]
pub struct RStream<T> {
    state: *mut c_void,
    poll_next: extern "C" fn(state: *mut c_void, waker: &RWaker) -> RPoll<ROption<T>>,
    drop: extern "C" fn(state: *mut c_void) -> DropReport,
}

// SAFETY: as for `RFuture`.
unsafe impl<T: Send> Send for RStream<T> {}

/// Something that yields items asynchronously: what [`RStream::new`] wraps. (A minimal
/// `Stream` trait, so that plugins need no `futures` dependency.)
pub trait ItemSource: Send + 'static {
    type Item;
    fn poll_item(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>>;
}

impl<T: FromPanic> RStream<T> {
    /// Wraps `source`. A panic while polling yields one `T::from_panic(message)` item, then the
    /// stream ends.
    pub fn new<S: ItemSource<Item = T>>(source: S) -> Self {
        extern "C" fn poll_next<S: ItemSource>(state: *mut c_void, waker: &RWaker) -> RPoll<ROption<S::Item>>
        where
            S::Item: FromPanic,
        {
            // SAFETY: `state` is the `State<S>` boxed by `new`, polled by one side at a time.
            let state = unsafe { &mut *(state as *mut State<S>) };
            let Some(mut source) = state.pinned() else { return RPoll::Ready(RNone) };
            let polled = waker.with_waker(|w| catch(|| source.as_mut().poll_item(&mut Context::from_waker(w))));
            match polled {
                Ok(Poll::Pending) => RPoll::Pending,
                Ok(Poll::Ready(Some(item))) => RPoll::Ready(RSome(item)),
                Ok(Poll::Ready(None)) => {
                    let _ = catch(|| state.0 = None);
                    RPoll::Ready(RNone)
                }
                Err(message) => {
                    // Ends the stream; the panicked source is dropped (guarded) now.
                    let item = S::Item::from_panic(message);
                    let _ = catch(|| state.0 = None);
                    RPoll::Ready(RSome(item))
                }
            }
        }
        extern "C" fn drop<S>(state: *mut c_void) -> DropReport {
            // SAFETY: `state` is the `State<S>` boxed by `new`, freed here exactly once.
            let state = unsafe { Box::from_raw(state as *mut State<S>) };
            match catch(move || std::mem::drop(state)) {
                Ok(()) => RNone,
                Err(message) => RSome(message.into()),
            }
        }
        let state = Box::new(State(Some(source)));
        RStream { state: Box::into_raw(state) as *mut c_void, poll_next: poll_next::<S>, drop: drop::<S> }
    }

    /// A stream of one item.
    pub fn once(item: T) -> Self
    where
        T: Send + 'static,
    {
        struct Once<T>(Option<T>);
        impl<T: Send + 'static> ItemSource for Once<T> {
            type Item = T;
            fn poll_item(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<T>> {
                // SAFETY: `Once` is never pinned structurally: the item is moved out, not the field.
                Poll::Ready(unsafe { self.get_unchecked_mut() }.0.take())
            }
        }
        RStream::new(Once(Some(item)))
    }

    /// Drops the stream now, returning the message of a panic in its drop, if any.
    pub fn close(self) -> Option<String> {
        let this = ManuallyDrop::new(self);
        (this.drop)(this.state).into_option().map(RString::into_string)
    }
}

impl<T> RStream<T> {
    /// The next item, `None` at the end.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let rw = RWaker::borrow(cx.waker());
        match (self.poll_next)(self.state, &rw) {
            RPoll::Ready(v) => Poll::Ready(v.into_option()),
            RPoll::Pending => Poll::Pending,
        }
    }

    /// Waits for the next item, `None` at the end.
    pub fn next_item(&mut self) -> impl Future<Output = Option<T>> + '_ {
        std::future::poll_fn(move |cx| self.poll_next(cx))
    }
}

impl<T> Drop for RStream<T> {
    fn drop(&mut self) {
        let _ = (self.drop)(self.state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::task::Wake;

    struct Counter(AtomicUsize);
    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    fn poll_once<F: Future + Unpin>(f: &mut F, waker: &Waker) -> Poll<F::Output> {
        Pin::new(f).poll(&mut Context::from_waker(waker))
    }

    /// Pending once, registering the waker it is given; ready the second time.
    struct Twice(Option<Waker>, u32);
    impl Future for Twice {
        type Output = RResult<u32, PluginError>;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            if self.0.is_none() {
                self.0 = Some(cx.waker().clone());
                self.0.as_ref().unwrap().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(abi_stable::std_types::ROk(self.1))
        }
    }

    #[test]
    fn a_future_is_polled_through_the_table_and_wakes_the_original_waker() {
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut f = RFuture::new(Twice(None, 7));
        assert!(poll_once(&mut f, &waker).is_pending());
        assert_eq!(counter.0.load(SeqCst), 1);
        assert_eq!(poll_once(&mut f, &waker), Poll::Ready(abi_stable::std_types::ROk(7)));
        // Finished futures stay pending rather than being polled again.
        assert!(poll_once(&mut f, &waker).is_pending());
    }

    #[test]
    fn a_panic_while_polling_is_an_error_value() {
        let waker = Waker::noop();
        let mut f = RFuture::<RResult<u32, PluginError>>::new(async { panic!("boom in poll") });
        match poll_once(&mut f, waker) {
            Poll::Ready(RErr(e)) => {
                assert_eq!(e.code, code::PANIC);
                assert!(e.message.contains("boom in poll"), "{}", e.message);
            }
            other => panic!("expected a panic error, got {other:?}"),
        }
    }

    struct PanicsOnDrop;
    impl Drop for PanicsOnDrop {
        fn drop(&mut self) {
            panic!("boom in drop");
        }
    }

    #[test]
    fn a_panic_in_the_futures_drop_is_reported_not_raised() {
        let guard = PanicsOnDrop;
        let f = RFuture::<RResult<(), PluginError>>::new(async move {
            let _g = &guard;
            std::future::pending::<()>().await;
            abi_stable::std_types::ROk(())
        });
        assert_eq!(f.close().as_deref(), Some("boom in drop"));
        let f = RFuture::<()>::new(async move {
            let _g = PanicsOnDrop;
        });
        drop(f); // must not unwind
    }

    /// A waker made by "the other side": its own vtable, counting calls.
    static WAKES: AtomicUsize = AtomicUsize::new(0);
    static CLONES: AtomicUsize = AtomicUsize::new(0);
    static DROPS: AtomicUsize = AtomicUsize::new(0);
    extern "C" fn other_clone(data: *const c_void) -> RWaker {
        CLONES.fetch_add(1, SeqCst);
        RWaker { data, vtable: &OTHER }
    }
    extern "C" fn other_wake(_: *const c_void) {
        WAKES.fetch_add(1, SeqCst);
        DROPS.fetch_add(1, SeqCst);
    }
    extern "C" fn other_wake_by_ref(_: *const c_void) {
        WAKES.fetch_add(1, SeqCst);
    }
    extern "C" fn other_drop(_: *const c_void) {
        DROPS.fetch_add(1, SeqCst);
    }
    static OTHER: RWakerVTable =
        RWakerVTable { clone: other_clone, wake: other_wake, wake_by_ref: other_wake_by_ref, drop: other_drop };

    #[test]
    fn a_foreign_waker_is_wrapped_cloned_and_released_through_its_own_vtable() {
        let rw = RWaker { data: std::ptr::null(), vtable: &OTHER };
        let mut kept = None;
        rw.with_waker(|w| {
            // Handing it back across the boundary gives the same RWaker, no wrapper.
            let back = RWaker::borrow(w);
            assert!(std::ptr::eq(back.vtable, &OTHER));
            w.wake_by_ref();
            kept = Some(w.clone());
        });
        assert_eq!((WAKES.load(SeqCst), CLONES.load(SeqCst)), (1, 1));
        let kept = kept.unwrap();
        let again = kept.clone();
        assert_eq!(CLONES.load(SeqCst), 2);
        assert!(std::ptr::eq(RWaker::borrow(&again).vtable, &OTHER));
        again.wake();
        drop(kept);
        assert_eq!((WAKES.load(SeqCst), DROPS.load(SeqCst)), (2, 2));
    }

    struct Numbers(u32);
    impl ItemSource for Numbers {
        type Item = RResult<u32, PluginError>;
        fn poll_item(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.0 += 1;
            match self.0 {
                1 | 2 => Poll::Ready(Some(abi_stable::std_types::ROk(self.0))),
                3 => panic!("boom in stream"),
                _ => Poll::Ready(None),
            }
        }
    }

    #[test]
    fn a_stream_yields_items_then_its_panic_as_an_error_then_ends() {
        let mut s = RStream::new(Numbers(0));
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(s.poll_next(&mut cx), Poll::Ready(Some(abi_stable::std_types::ROk(1))));
        assert_eq!(s.poll_next(&mut cx), Poll::Ready(Some(abi_stable::std_types::ROk(2))));
        match s.poll_next(&mut cx) {
            Poll::Ready(Some(RErr(e))) => assert!(e.message.contains("boom in stream")),
            other => panic!("expected the panic as an error, got {other:?}"),
        }
        assert_eq!(s.poll_next(&mut cx), Poll::Ready(None));
    }
}
