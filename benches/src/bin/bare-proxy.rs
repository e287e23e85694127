//! The floor for one hop: a hyper pass-through proxy with no logic. It forwards every request
//! to `UPSTREAM` (same method, path, headers and body, streamed both ways) over hyper's pooled
//! client. `bare-proxy http://UPSTREAM`; prints `listening on http://ADDR`.

use std::convert::Infallible;

use http::Uri;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

type Body = http_body_util::combinators::BoxBody<bytes::Bytes, hyper::Error>;

fn main() -> std::io::Result<()> {
    let upstream: Uri = std::env::args().nth(1).expect("usage: bare-proxy http://UPSTREAM").parse().expect("a URI");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new()).build(connector);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening on http://{}", listener.local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let (client, upstream) = (client.clone(), upstream.clone());
            tokio::spawn(async move {
                let service = service_fn(move |mut req: http::Request<Incoming>| {
                    let (client, upstream) = (client.clone(), upstream.clone());
                    async move {
                        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
                        let mut parts = upstream.into_parts();
                        parts.path_and_query = Some(path.parse().expect("a path from a valid URI"));
                        *req.uri_mut() = Uri::from_parts(parts).expect("upstream URI with the request's path");
                        req.headers_mut().remove(http::header::HOST);
                        let resp = match client.request(req).await {
                            Ok(resp) => resp.map(|b| http_body_util::BodyExt::boxed(b)),
                            Err(e) => {
                                let mut resp = http::Response::new(body_of(format!("upstream failed: {e}")));
                                *resp.status_mut() = http::StatusCode::BAD_GATEWAY;
                                resp
                            }
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    })
}

fn body_of(text: String) -> Body {
    use http_body_util::BodyExt;
    http_body_util::Full::new(bytes::Bytes::from(text)).map_err(|never| match never {}).boxed()
}
