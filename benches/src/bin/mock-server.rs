//! The gateway's mock LLM as a standalone OpenAI-compatible HTTP server: the upstream every
//! target of the end-to-end load run talks to. `mock-server [--chunks N]`; prints
//! `listening on http://ADDR` once bound to an ephemeral port on 127.0.0.1.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use gateway::server::sse_frame;
use gateway::upstream::mock::MockUpstream;
use http::{Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::sync::Arc;

/// A response body sent as a sequence of frames: one for JSON, one per SSE event for streams.
struct Frames(VecDeque<Bytes>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

#[derive(serde::Deserialize)]
struct Peek {
    #[serde(default)]
    model: String,
    #[serde(default)]
    stream: bool,
}

fn reply(status: StatusCode, content_type: &'static str, frames: VecDeque<Bytes>) -> Response<Frames> {
    let mut resp = Response::new(Frames(frames));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    resp
}

async fn handle(mock: &MockUpstream, req: http::Request<Incoming>) -> Response<Frames> {
    let error = |status, message: String| {
        let body = serde_json::json!({ "error": { "message": message, "type": "invalid_request_error" } });
        reply(status, "application/json", VecDeque::from([Bytes::from(body.to_string())]))
    };
    if !req.uri().path().ends_with("/chat/completions") {
        return error(StatusCode::NOT_FOUND, format!("no route {}", req.uri().path()));
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let peek: Peek = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let answer = match mock.reply(&body, &peek.model) {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e:?}")),
    };
    if !peek.stream {
        return reply(StatusCode::OK, "application/json", VecDeque::from([answer.completion()]));
    }
    let mut frames: VecDeque<Bytes> = answer.chunks().iter().map(|c| sse_frame(c)).collect();
    frames.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
    reply(StatusCode::OK, "text/event-stream", frames)
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
