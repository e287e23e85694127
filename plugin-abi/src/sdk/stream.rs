//! A stream driven by an async step function, for the streams plugins hand the host (an
//! executor's chunks, a route's body).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::ffi;

/// Like `futures::stream::unfold`: `step` gets the state and returns the next item with the
/// new state, or `None` at the end.
pub(crate) struct Unfold<S, F, Fut> {
    state: Option<S>,
    step: F,
    pending: Option<Pin<Box<Fut>>>,
}

impl<S, F, Fut> Unfold<S, F, Fut> {
    pub(crate) fn new(state: S, step: F) -> Self {
        Unfold { state: Some(state), step, pending: None }
    }
}

impl<S, F, Fut, T> ffi::ItemSource for Unfold<S, F, Fut>
where
    S: Send + 'static,
    F: FnMut(S) -> Fut + Send + 'static,
    Fut: Future<Output = Option<(T, S)>> + Send + 'static,
{
    type Item = T;

    fn poll_item(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        // SAFETY: no field is structurally pinned: the future is boxed, the rest is moved freely.
        let this = unsafe { self.get_unchecked_mut() };
        if this.pending.is_none() {
            let Some(state) = this.state.take() else { return Poll::Ready(None) };
            this.pending = Some(Box::pin((this.step)(state)));
        }
        let Some(pending) = this.pending.as_mut() else { return Poll::Ready(None) };
        match pending.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(next) => {
                this.pending = None;
                Poll::Ready(next.map(|(item, state)| {
                    this.state = Some(state);
                    item
                }))
            }
        }
    }
}
