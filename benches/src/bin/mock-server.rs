//! The gateway's mock LLM as a standalone HTTP server: the upstream every target of the
//! end-to-end load run talks to. It speaks OpenAI's chat completions (`POST …/chat/completions`)
//! and Anthropic's Messages API (`POST …/v1/messages`), streaming or not; the answers are
//! `MockUpstream::http`'s. `mock-server [--chunks N]`; prints `listening on http://ADDR` once
//! bound to an ephemeral port on 127.0.0.1.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use gateway::upstream::mock::MockUpstream;
use http::{Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// A response body sent as a sequence of frames: one for JSON, one per SSE event for streams,
/// with `delay` between one frame and the next.
struct Frames {
    frames: VecDeque<Bytes>,
    delay: Duration,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(pause) = &mut this.pause {
            ready!(pause.as_mut().poll(cx));
            this.pause = None;
        }
        let Some(frame) = this.frames.pop_front() else { return Poll::Ready(None) };
        if !this.delay.is_zero() && !this.frames.is_empty() {
            this.pause = Some(Box::pin(tokio::time::sleep(this.delay)));
        }
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }
}

fn reply(status: StatusCode, content_type: &'static str, frames: VecDeque<Bytes>, delay: Duration) -> Response<Frames> {
    let mut resp = Response::new(Frames { frames, delay, pause: None });
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    resp
}

async fn handle(mock: &MockUpstream, req: http::Request<Incoming>) -> Response<Frames> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let message = format!("expected a request body, found an error reading it: {e}");
            let body = serde_json::json!({ "error": { "message": message, "type": "invalid_request_error" } });
            let frames = VecDeque::from([Bytes::from(body.to_string())]);
            return reply(StatusCode::BAD_REQUEST, "application/json", frames, Duration::ZERO);
        }
    };
    let (status, content_type, frames, delay) =
        mock.http(&parts.method, parts.uri.path(), &parts.headers, &body).into_frames();
    reply(status, content_type, frames, delay)
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let chunks = args.iter().position(|a| a == "--chunks").and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(8);
    let mock = Arc::new(MockUpstream::new(chunks, std::time::Duration::ZERO));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening on http://{}", listener.local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let mock = mock.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let mock = mock.clone();
                    async move { Ok::<_, Infallible>(handle(&mock, req).await) }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    })
}
