//! The raw side of [`crate::testing::MockHost`] and of [`ChunkHistory`].

use std::collections::VecDeque;
use std::ffi::c_void;
use std::sync::Mutex;

use abi_stable::std_types::RSlice;

use super::*;

/// What the mock host recorded.
#[derive(Default)]
pub(crate) struct MockServices {
    pub(crate) logs: Mutex<Vec<(u8, String)>>,
}

impl HostServices for MockServices {
    fn log(&self, level: u8, message: &str) {
        self.logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((level, message.to_owned()));
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
        ChunkHistory {
            chunks: VecDeque::new(),
            bytes: 0,
            limits,
        }
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
        while self.chunks.len() >= self.limits.max_chunks as usize
            || self.bytes + len > self.limits.max_bytes
        {
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
    pub fn raw(&self) -> RawHistory {
        RawHistory {
            ctx: self as *const Self as *const c_void,
            len: self.chunks.len() as u32,
            bytes: self.bytes,
            get: history_get::<B>,
        }
    }
}

/// An empty history, for plugins that did not opt in.
pub const NO_HISTORY: RawHistory = RawHistory {
    ctx: std::ptr::null(),
    len: 0,
    bytes: 0,
    get: no_history_get,
};

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
            std::mem::transmute::<RSlice<'_, u8>, RSlice<'static, u8>>(RSlice::from_slice(
                chunk.as_ref(),
            ))
        },
        None => RSlice::from_slice(&[]),
    }
}
