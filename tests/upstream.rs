//! The `openai` upstream against real and hostile servers: HTTPS with a generated certificate,
//! the cleartext check at start-up, response and SSE event size limits, multi-line events, and
//! what clients learn when an upstream fails.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use gateway_tests::{Gateway, chat_body};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;

const MOCK_BACKEND: &str =
    "[[upstreams]]\nname = \"mock\"\nkind = \"mock\"\n[[models]]\nname = \"mock-gpt\"\nupstream = \"mock\"\n";

/// A runtime for the test's own servers; dropping it stops them.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
}

/// A CA and a certificate for 127.0.0.1 signed by it, generated for this test.
struct TestPki {
    ca_pem: String,
    server: rustls::ServerConfig,
}

fn test_pki() -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "gateway test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf =
        CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().signed_by(&leaf_key, &ca, &ca_key).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    TestPki { ca_pem: ca.pem(), server }
}

/// Terminates TLS on 127.0.0.1 and relays the plaintext to `backend`: an HTTPS upstream.
async fn tls_relay(server: rustls::ServerConfig, backend: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake: nothing to relay.
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let Ok(mut plain) = TcpStream::connect(backend).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

/// Reads one HTTP request (head and content-length body) and returns it as text.
async fn read_request(s: &mut TcpStream) -> String {
    let (mut buf, mut tmp) = (Vec::new(), [0u8; 4096]);
    loop {
        let n = s.read(&mut tmp).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(h) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..h]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= h + 4 + len {
                break;
            }
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// A hand-written upstream on 127.0.0.1: each connection gets `respond(request)` written raw,
/// then is closed.
async fn raw_upstream(respond: fn(&str) -> Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let request = read_request(&mut s).await;
                // The gateway may hang up mid-body once it has seen enough.
                let _ = s.write_all(&respond(&request)).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

const COMPLETION: &str = r#"{"id":"c1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"fine"},"finish_reason":"stop"}]}"#;

fn json_response(body: &str, declared_len: Option<usize>) -> Vec<u8> {
    let length = declared_len.map(|n| format!("content-length: {n}\r\n")).unwrap_or_default();
    format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{length}connection: close\r\n\r\n{body}").into_bytes()
}

fn sse_response(events: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n{events}").into_bytes()
}

/// Answers by the prompt: oversized bodies and events, a multi-line event, or a normal reply.
fn hostile(request: &str) -> Vec<u8> {
    let big = "x".repeat(100_000);
    if request.contains("big-declared") {
        json_response(&big, Some(big.len()))
    } else if request.contains("big-undeclared") {
        // No content-length: the body runs until the connection closes.
        json_response(&big, None)
    } else if request.contains("big-first-event") {
        sse_response(&format!("data: {big}\n\n"))
    } else if request.contains("big-later-event") {
        sse_response(&format!("data: {{\"n\":1}}\n\ndata: {big}\n\ndata: [DONE]\n\n"))
    } else if request.contains("multi-line") {
        sse_response("data: {\ndata:   \"n\": 1\r\ndata: }\n\ndata: {\"n\":2}\n\ndata: [DONE]\n\n")
    } else if request.contains("\"stream\":true") {
        sse_response("data: {\"n\":1}\n\ndata: [DONE]\n\n")
    } else {
        json_response(COMPLETION, Some(COMPLETION.len()))
    }
}

fn hostile_gateway(addr: SocketAddr) -> Gateway {
    Gateway::start(&format!(
        "[[upstreams]]\nname = \"hostile\"\nkind = \"openai\"\nbase_url = \"http://{addr}/v1\"\n\
         max_response_bytes = 4096\nmax_event_bytes = 1024\n[[models]]\nname = \"h\"\nupstream = \"hostile\"\n"
    ))
}

fn assert_still_serving(gw: &Gateway) {
    let r = gw.chat(None, &chat_body("h", "ok", false));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["choices"][0]["message"]["content"], "fine");
    let r = gw.chat(None, &chat_body("h", "ok", true));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, "data: {\"n\":1}\n\ndata: [DONE]\n\n");
}

#[test]
fn an_https_upstream_with_a_generated_certificate_answers_and_streams() {
    let rt = runtime();
    let backend = Gateway::start(MOCK_BACKEND);
    let pki = test_pki();
    let tls = rt.block_on(tls_relay(pki.server, backend.addr));
    let certs = tempfile::tempdir().unwrap();
    let ca_file = certs.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let front = Gateway::start(&format!(
        "[[upstreams]]\nname = \"secure\"\nkind = \"openai\"\nbase_url = \"https://{tls}/v1\"\nca_file = {:?}\n\
         [[models]]\nname = \"front-gpt\"\nupstream = \"secure\"\nupstream_model = \"mock-gpt\"\n",
        ca_file.display().to_string()
    ));
    let r = front.chat(None, &chat_body("front-gpt", "over TLS", false));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["choices"][0]["message"]["content"], "Mock reply to: over TLS");
    let r = front.chat(None, &chat_body("front-gpt", "streamed over TLS", true));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.streamed_text(), "Mock reply to: streamed over TLS");
    assert_eq!(r.events().last().map(String::as_str), Some("[DONE]"));
}

/// Without the test CA the certificate is refused; the client learns the upstream's name and a
/// short reason, never its address; the log has the details.
#[test]
fn an_untrusted_certificate_is_refused_and_the_client_does_not_see_the_url() {
    let rt = runtime();
    let backend = Gateway::start(MOCK_BACKEND);
    let tls = rt.block_on(tls_relay(test_pki().server, backend.addr));
    let front = Gateway::start(&format!(
        "[[upstreams]]\nname = \"secure\"\nkind = \"openai\"\nbase_url = \"https://{tls}/v1\"\n\
         [[models]]\nname = \"front-gpt\"\nupstream = \"secure\"\nupstream_model = \"mock-gpt\"\n"
    ));
    let r = front.chat(None, &chat_body("front-gpt", "hi", false));
    assert_eq!(r.status, 502, "{}", r.body);
    let message = r.error()["message"].as_str().unwrap().to_owned();
    assert_eq!(message, "upstream `secure`: could not connect (connection or TLS handshake failed)");
    assert!(!r.body.contains(&tls.port().to_string()) && !r.body.contains("127.0.0.1"), "{}", r.body);
    assert!(front.wait_for_log("UnknownIssuer"), "{}", front.logs());
    assert!(front.logs().contains(&format!("https://{tls}/v1/chat/completions")), "{}", front.logs());
}

#[test]
fn an_unreachable_upstream_is_named_without_its_address() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let gw = Gateway::start(&format!(
        "[[upstreams]]\nname = \"gone\"\nkind = \"openai\"\nbase_url = \"http://{closed}/v1\"\n\
         [[models]]\nname = \"g\"\nupstream = \"gone\"\n"
    ));
    let r = gw.chat(None, &chat_body("g", "hi", false));
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.error()["message"], "upstream `gone`: could not connect (connection or TLS handshake failed)");
    assert!(!r.body.contains(&closed.port().to_string()), "{}", r.body);
    assert!(gw.wait_for_log(&format!("http://{closed}/v1/chat/completions")), "{}", gw.logs());
}

#[test]
fn cleartext_http_to_a_remote_host_is_refused_at_start_up() {
    let upstream = "[[upstreams]]\nname = \"remote\"\nkind = \"openai\"\nbase_url = \"http://api.example.com/v1\"\n";
    let stderr = Gateway::refused(upstream);
    for needle in ["upstream `remote`", "host `api.example.com`", "expected https://", "allow_insecure_http = true"] {
        assert!(stderr.contains(needle), "{needle:?} missing from: {stderr}");
    }
    // Allowed explicitly, it starts (nothing is called, so no network is needed).
    let gw = Gateway::start(&format!("{upstream}allow_insecure_http = true\n"));
    assert_eq!(gw.get("/healthz").status, 200);
}

#[test]
fn a_response_body_over_the_limit_is_a_502_and_the_gateway_keeps_serving() {
    let rt = runtime();
    let gw = hostile_gateway(rt.block_on(raw_upstream(hostile)));
    let r = gw.chat(None, &chat_body("h", "big-declared", false));
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(
        r.error()["message"],
        "upstream `hostile`: response body too large: expected at most 4096 bytes, found 100000 (its content-length)"
    );
    let r = gw.chat(None, &chat_body("h", "big-undeclared", false));
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(
        r.error()["message"],
        "upstream `hostile`: response body too large: expected at most 4096 bytes, found more"
    );
    assert_still_serving(&gw);
}

#[test]
fn an_sse_event_over_the_limit_ends_the_stream_with_a_clear_error() {
    let rt = runtime();
    let gw = hostile_gateway(rt.block_on(raw_upstream(hostile)));
    // Before any event: an error status.
    let r = gw.chat(None, &chat_body("h", "big-first-event", true));
    assert_eq!(r.status, 502, "{}", r.body);
    let message = r.error()["message"].as_str().unwrap().to_owned();
    assert!(
        message.starts_with("upstream `hostile`: SSE event too large: expected at most 1024 bytes, found "),
        "{message}"
    );
    // After an event was sent: the stream ends with an error event and no [DONE].
    let r = gw.chat(None, &chat_body("h", "big-later-event", true));
    assert_eq!(r.status, 200, "{}", r.body);
    let events = r.events();
    assert_eq!(events.len(), 2, "{}", r.body);
    assert_eq!(events[0], "{\"n\":1}");
    let error: serde_json::Value = serde_json::from_str(&events[1]).unwrap();
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("upstream `hostile`: SSE event too large: expected at most 1024 bytes, found "),
        "{message}"
    );
    assert_still_serving(&gw);
}

#[test]
fn a_multi_line_event_reaches_the_client_framed_line_by_line() {
    let rt = runtime();
    let gw = hostile_gateway(rt.block_on(raw_upstream(hostile)));
    let r = gw.chat(None, &chat_body("h", "multi-line", true));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, "data: {\ndata:   \"n\": 1\ndata: }\n\ndata: {\"n\":2}\n\ndata: [DONE]\n\n");
}

/// An upstream that sends each of `events` after `gap`, then keeps the connection open for
/// `hold` without sending more.
async fn paced_upstream(
    events: &'static [&'static str],
    gap: std::time::Duration,
    hold: std::time::Duration,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                read_request(&mut s).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for event in events {
                    tokio::time::sleep(gap).await;
                    if s.write_all(event.as_bytes()).await.is_err() {
                        return;
                    }
                }
                tokio::time::sleep(hold).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// `timeout_ms` bounds the wait for each event, not the whole stream: events 300 ms apart pass
/// a 1 s timeout however long the stream runs (1.5 s here), and a silence longer than it ends
/// the stream with an error event.
#[test]
fn the_upstream_timeout_bounds_each_wait_for_an_event_not_the_stream() {
    let rt = runtime();
    let gap = std::time::Duration::from_millis(300);
    let paced = rt.block_on(paced_upstream(
        &[
            "data: {\"n\":1}\n\n",
            "data: {\"n\":2}\n\n",
            "data: {\"n\":3}\n\n",
            "data: {\"n\":4}\n\n",
            "data: [DONE]\n\n",
        ],
        gap,
        std::time::Duration::ZERO,
    ));
    let stalled = rt.block_on(paced_upstream(&["data: {\"n\":1}\n\n"], gap, std::time::Duration::from_secs(4)));
    let gw = Gateway::start(&format!(
        "[[upstreams]]\nname = \"paced\"\nkind = \"openai\"\nbase_url = \"http://{paced}/v1\"\ntimeout_ms = 1000\n\
         [[upstreams]]\nname = \"stalled\"\nkind = \"openai\"\nbase_url = \"http://{stalled}/v1\"\ntimeout_ms = 1000\n\
         [[models]]\nname = \"paced\"\nupstream = \"paced\"\n[[models]]\nname = \"stalled\"\nupstream = \"stalled\"\n"
    ));
    let r = gw.chat(None, &chat_body("paced", "hi", true));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, "data: {\"n\":1}\n\ndata: {\"n\":2}\n\ndata: {\"n\":3}\n\ndata: {\"n\":4}\n\ndata: [DONE]\n\n");
    let r = gw.chat(None, &chat_body("stalled", "hi", true));
    assert_eq!(r.status, 200, "{}", r.body);
    let events = r.events();
    assert_eq!(events[0], "{\"n\":1}", "{}", r.body);
    let error: serde_json::Value = serde_json::from_str(&events[1]).unwrap();
    assert_eq!(error["error"]["message"], "upstream `stalled` stalled mid-stream");
    assert!(!r.body.contains("[DONE]"), "{}", r.body);
}
