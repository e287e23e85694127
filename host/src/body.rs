//! The gateway's response body: a whole buffer, or frames made as the connection asks for them.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};

use crate::error::ApiError;

pub enum GatewayBody {
    Full(Option<Bytes>),
    /// Frames produced when the connection polls for them, on its own task: no task hand-off
    /// per frame, and the producer reads no further ahead than the client reads.
    Frames(Pin<Box<dyn futures_util::Stream<Item = Bytes> + Send>>),
}

impl GatewayBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        GatewayBody::Full(Some(bytes.into()))
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            GatewayBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            GatewayBody::Frames(frames) => frames.as_mut().poll_next(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, GatewayBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            GatewayBody::Full(None) => SizeHint::with_exact(0),
            GatewayBody::Frames(_) => SizeHint::default(),
        }
    }
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: Bytes) -> Response<GatewayBody> {
    let mut resp = Response::new(GatewayBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// An error response in OpenAI's shape.
pub fn error_response(e: &ApiError) -> Response<GatewayBody> {
    let mut resp = json_response(e.status, e.body());
    e.add_headers(resp.headers_mut());
    resp
}

/// `body` with its `model` field set to `model`, the rest byte for byte as it was (no parse
/// into a tree, no re-serialisation).
pub fn with_model(body: &[u8], model: &str) -> Result<Bytes, String> {
    #[derive(serde::Deserialize)]
    struct Model<'a> {
        #[serde(borrow)]
        model: &'a serde_json::value::RawValue,
    }
    let found: Model<'_> = serde_json::from_slice(body)
        .map_err(|e| format!("expected a JSON object with one `model` field, found {e}"))?;
    let old = found.model.get();
    // `old` is a slice of `body`: its offset is a difference of addresses.
    let at = old.as_ptr() as usize - body.as_ptr() as usize;
    let quoted = serde_json::to_string(model).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(body.len() - old.len() + quoted.len());
    out.extend_from_slice(&body[..at]);
    out.extend_from_slice(quoted.as_bytes());
    out.extend_from_slice(&body[at + old.len()..]);
    Ok(Bytes::from(out))
}
