// A stream state is the plugin's; the host cannot make one, nor end one twice.
use plugin_abi::ffi::{Cap, StreamChunkV1, StreamState};

fn end_twice(cap: &Cap<StreamChunkV1>) {
    let state = StreamState(std::ptr::null_mut());
    cap.on_stream_end(state);
    cap.on_stream_end(state);
}

fn main() {}
