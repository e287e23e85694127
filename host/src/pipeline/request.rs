//! One request as the pipeline holds it, the borrowed views hooks see, and applying what hooks
//! changed.

use abi_stable::std_types::{RSome, RVec};
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use plugin_abi::ffi::chat::ChatCache;
use plugin_abi::ffi::{Mutations, OwnedHeader, RawContext, RawHeader, RawKeyValue, RawRequest, Reply, property};

/// Per-request context: what hooks see through [`plugin_abi::Context`].
#[derive(Debug, Default, Clone)]
pub struct ContextState {
    pub request_id: String,
    pub app_id: String,
    pub user_id: String,
    pub model: String,
    pub client_ip: String,
    pub metadata: Vec<(String, String)>,
}

impl ContextState {
    /// The metadata part of the view; allocates only if some hook set metadata.
    pub fn raw_metadata(&self) -> Vec<RawKeyValue<'_>> {
        self.metadata.iter().map(|(k, v)| RawKeyValue { key: k.as_str().into(), value: v.as_str().into() }).collect()
    }

    pub fn raw<'a>(&'a self, metadata: &'a [RawKeyValue<'a>]) -> RawContext<'a> {
        RawContext {
            request_id: self.request_id.as_str().into(),
            app_id: self.app_id.as_str().into(),
            user_id: self.user_id.as_str().into(),
            model: self.model.as_str().into(),
            client_ip: self.client_ip.as_str().into(),
            metadata: metadata.into(),
        }
    }
}

/// The client request after the hooks so far.
pub struct RequestState {
    pub method: http::Method,
    pub uri: http::Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub ctx: ContextState,
    /// The body's chat parse, made when a hook first asks ([`plugin_abi::Request::chat`]).
    pub chat: ChatCache,
    /// The body's `stream` flag, as the gateway last read it.
    pub stream: bool,
    /// Some hook replaced the body (or set the model) since the gateway last read it.
    pub body_changed: bool,
}

/// Reuses `buf`'s allocation for views of another borrow. Safe: the in-place `collect` of an
/// emptied vector keeps the allocation when the element layouts match, and allocates otherwise.
pub fn recycle<'b>(mut buf: Vec<RawHeader<'_>>) -> Vec<RawHeader<'b>> {
    buf.clear();
    buf.into_iter().map(|_| -> RawHeader<'b> { unreachable!("the vector is empty") }).collect()
}

thread_local! {
    /// One header-view buffer per worker thread, reused by every phase of every request, so
    /// that building views allocates only while a thread warms up.
    static SCRATCH: std::cell::Cell<Vec<RawHeader<'static>>> = const { std::cell::Cell::new(Vec::new()) };
}

/// This thread's view buffer, empty; hand it back with [`give_back`].
pub fn scratch() -> Vec<RawHeader<'static>> {
    SCRATCH.with(std::cell::Cell::take)
}

pub fn give_back(buf: Vec<RawHeader<'_>>) {
    SCRATCH.with(|s| s.set(recycle(buf)));
}

/// Views of `headers`, written into `buf`.
pub fn raw_headers<'a>(headers: &'a HeaderMap, mut buf: Vec<RawHeader<'a>>) -> Vec<RawHeader<'a>> {
    buf.extend(
        headers.iter().map(|(name, value)| RawHeader { name: name.as_str().into(), value: value.as_bytes().into() }),
    );
    buf
}

impl RequestState {
    pub fn new(method: http::Method, uri: http::Uri, headers: HeaderMap, body: Bytes, ctx: ContextState) -> Self {
        RequestState { method, uri, headers, body, ctx, chat: ChatCache::default(), stream: false, body_changed: false }
    }

    pub fn raw<'a>(&'a self, headers: &'a [RawHeader<'a>], metadata: &'a [RawKeyValue<'a>]) -> RawRequest<'a> {
        RawRequest {
            method: self.method.as_str().into(),
            path: self.uri.path().into(),
            query: self.uri.query().unwrap_or("").into(),
            headers: headers.into(),
            body: self.body.as_ref().into(),
            ctx: self.ctx.raw(metadata),
        }
    }

    /// Applies a request hook's changes (the status field does not apply to requests): all of
    /// them, or on an error none.
    pub fn apply(&mut self, m: Mutations) -> Result<(), String> {
        let mut set = m.set_headers;
        let mut model = None;
        if set.iter().any(|h| property::is_property(&h.name)) {
            let mut headers = RVec::with_capacity(set.len());
            for h in set {
                match h.name.as_str() {
                    property::MODEL => model = Some(h.value),
                    _ => headers.push(h),
                }
            }
            set = headers;
        }
        let mut body = match m.body {
            RSome(body) => Some(Bytes::from(body.into_vec())),
            _ => None,
        };
        if let Some(model) = model {
            let base = body.as_ref().unwrap_or(&self.body);
            body = Some(crate::body::with_model(base, &model).map_err(|e| format!("set_model: {e}"))?);
        }
        apply_headers(&mut self.headers, &set, &m.remove_headers)?;
        if let Some(body) = body {
            self.body = body;
            self.headers.remove(http::header::CONTENT_LENGTH);
            self.chat.clear();
            self.body_changed = true;
        }
        self.ctx.metadata.extend(m.metadata.into_iter().map(|kv| (kv.key.into_string(), kv.value.into_string())));
        Ok(())
    }
}

/// Header changes one hook may ask for: a hook must not be able to grow a header map without
/// bound (`HeaderMap::insert` panics past 32768 entries).
pub const MAX_HEADER_CHANGES: usize = 256;

/// Sets and removes headers as a hook asked; a name or value that HTTP does not allow, or too many
/// changes, is the plugin's error. All or nothing: on an error `headers` is unchanged.
pub fn apply_headers(
    headers: &mut HeaderMap,
    set: &[OwnedHeader],
    remove: &[abi_stable::std_types::RString],
) -> Result<(), String> {
    let changes = set.len() + remove.len();
    if changes > MAX_HEADER_CHANGES {
        return Err(format!("too many header changes: expected at most {MAX_HEADER_CHANGES}, found {changes}"));
    }
    let name_of = |name: &str| {
        if property::is_property(name) {
            return Err(format!(
                "invalid header name {name:?}: `:` names a request property, and the only one is `{}` (request hooks only)",
                property::MODEL
            ));
        }
        HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("invalid header name {name:?}"))
    };
    let removed = remove.iter().map(|n| name_of(n.as_str())).collect::<Result<Vec<_>, _>>()?;
    let added = set
        .iter()
        .map(|h| {
            let name = name_of(h.name.as_str())?;
            let value = HeaderValue::from_str(h.value.as_str())
                .map_err(|_| format!("invalid value for header `{name}`: {:?}", h.value.as_str()))?;
            Ok((name, value))
        })
        .collect::<Result<Vec<_>, String>>()?;
    for name in removed {
        headers.remove(name);
    }
    for (name, value) in added {
        // Only reachable after many plugins each added many headers: refused, never a panic.
        headers.try_insert(name, value).map_err(|_| "too many headers: the response header map is full".to_owned())?;
    }
    Ok(())
}

/// A plugin's reply as an HTTP response head and body.
pub fn reply_parts(reply: Reply) -> Result<(http::StatusCode, HeaderMap, Bytes), String> {
    let status = http::StatusCode::from_u16(reply.status).map_err(|_| format!("invalid status {}", reply.status))?;
    let mut headers = HeaderMap::new();
    apply_headers(&mut headers, &reply.headers, &[])?;
    Ok((status, headers, Bytes::from(reply.body.into_vec())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycled_buffers_keep_their_allocation() {
        let mut headers = HeaderMap::new();
        headers.insert("a", HeaderValue::from_static("1"));
        headers.insert("b", HeaderValue::from_static("2"));
        let view = raw_headers(&headers, Vec::with_capacity(16));
        assert_eq!(view.len(), 2);
        let ptr = view.as_ptr() as usize;
        let again = raw_headers(&headers, recycle(view));
        assert_eq!(again.as_ptr() as usize, ptr);
        assert_eq!(again[1].name.as_str(), "b");
    }

    #[test]
    fn mutations_replace_headers_body_and_add_metadata() {
        let mut state = RequestState::new(
            http::Method::POST,
            "/v1/chat/completions?x=1".parse().unwrap(),
            HeaderMap::new(),
            Bytes::from_static(b"{}"),
            ContextState::default(),
        );
        state.headers.insert("x-old", HeaderValue::from_static("1"));
        let m = Mutations {
            set_headers: vec![OwnedHeader { name: "x-new".into(), value: "2".into() }].into(),
            remove_headers: vec!["x-old".into()].into(),
            body: abi_stable::std_types::RSome(b"{\"a\":1}".to_vec().into()),
            status: 0,
            metadata: vec![plugin_abi::ffi::OwnedKeyValue { key: "k".into(), value: "v".into() }].into(),
        };
        state.apply(m).unwrap();
        assert!(state.headers.get("x-old").is_none());
        assert_eq!(state.headers["x-new"], "2");
        assert_eq!(&state.body[..], b"{\"a\":1}");
        assert_eq!(state.ctx.metadata, [("k".to_string(), "v".to_string())]);
        let bad = Mutations {
            set_headers: vec![OwnedHeader { name: "bad name".into(), value: "".into() }].into(),
            ..Default::default()
        };
        assert!(state.apply(bad).unwrap_err().contains("invalid header name"));
    }

    fn state(body: &'static [u8]) -> RequestState {
        RequestState::new(
            http::Method::POST,
            "/v1/chat/completions".parse().unwrap(),
            HeaderMap::new(),
            Bytes::from_static(body),
            ContextState::default(),
        )
    }

    fn set(name: &str, value: &str) -> Mutations {
        Mutations {
            set_headers: vec![OwnedHeader { name: name.into(), value: value.into() }].into(),
            ..Default::default()
        }
    }

    #[test]
    fn set_model_rewrites_only_the_model_and_clears_the_chat_parse() {
        let mut req = state(br#"{ "model" : "a",  "messages":[{"role":"user","content":"\u00e9"}], "n": 1.50 }"#);
        assert!(req.chat.get(&req.body).is_some());
        req.apply(set(property::MODEL, "b\"c")).unwrap();
        assert_eq!(
            &req.body[..],
            br#"{ "model" : "b\"c",  "messages":[{"role":"user","content":"\u00e9"}], "n": 1.50 }"#
        );
        assert!(req.body_changed && !req.chat.is_parsed());
        // With a new body in the same change, the model is set in the new body.
        let mut m = set(property::MODEL, "z");
        m.body = RSome(br#"{"model":"y","messages":[]}"#.to_vec().into());
        req.apply(m).unwrap();
        assert_eq!(&req.body[..], br#"{"model":"z","messages":[]}"#);
    }

    #[test]
    fn a_failed_set_model_or_an_unknown_property_changes_nothing() {
        let mut req = state(b"[1, 2]");
        let mut m = set(property::MODEL, "b");
        m.set_headers.push(OwnedHeader { name: "x-a".into(), value: "1".into() });
        let e = req.apply(m).unwrap_err();
        assert!(e.starts_with("set_model: expected a JSON object with one `model` field"), "{e}");
        assert!(req.headers.is_empty() && &req.body[..] == b"[1, 2]" && !req.body_changed);
        let e = req.apply(set(":path", "/x")).unwrap_err();
        assert!(e.contains("the only one is `:model`"), "{e}");
        let e = apply_headers(&mut HeaderMap::new(), &set(property::MODEL, "m").set_headers, &[]).unwrap_err();
        assert!(e.contains("request hooks only"), "{e}");
    }

    mod properties {
        use super::*;
        use abi_stable::std_types::RString;
        use proptest::prelude::*;

        /// Header names: mostly valid tokens, sometimes anything.
        fn name() -> impl Strategy<Value = String> {
            prop_oneof![4 => "[a-z][a-z0-9-]{0,12}", 1 => any::<String>()]
        }

        /// Header values: mostly visible ASCII, sometimes anything (control bytes, newlines).
        fn value() -> impl Strategy<Value = String> {
            prop_oneof![4 => "[ -~]{0,24}", 1 => any::<String>()]
        }

        fn start() -> HeaderMap {
            let mut headers = HeaderMap::new();
            headers.insert("x-keep", HeaderValue::from_static("1"));
            headers.insert("content-type", HeaderValue::from_static("application/json"));
            headers
        }

        proptest! {
            /// Any changes a plugin can send either apply exactly or leave the headers as they were,
            /// and never panic, however many there are.
            #[test]
            fn header_changes_apply_exactly_or_not_at_all(
                set in proptest::collection::vec((name(), value()), 0..40),
                remove in proptest::collection::vec(name(), 0..10),
                flood in 0usize..2,
            ) {
                let mut set: Vec<OwnedHeader> =
                    set.into_iter().map(|(n, v)| OwnedHeader { name: n.into(), value: v.into() }).collect();
                // Now and then, far more changes than allowed.
                if flood == 1 {
                    set.extend((0..40_000).map(|i| OwnedHeader { name: format!("x-{i}").into(), value: "v".into() }));
                }
                let remove: Vec<RString> = remove.into_iter().map(RString::from).collect();
                let mut headers = start();
                match apply_headers(&mut headers, &set, &remove) {
                    Err(e) => {
                        prop_assert_eq!(headers, start(), "a failed change left partial changes: {}", e);
                        prop_assert!(e.starts_with("invalid") || e.starts_with("too many"), "{}", e);
                    }
                    Ok(()) => {
                        prop_assert!(set.len() + remove.len() <= MAX_HEADER_CHANGES);
                        // The last value set for a name wins; names only removed are gone.
                        for h in &set {
                            let last = set.iter().rev().find(|o| o.name.eq_ignore_ascii_case(&h.name)).unwrap();
                            prop_assert_eq!(headers[h.name.as_str()].as_bytes(), last.value.as_bytes());
                        }
                        for name in &remove {
                            if !set.iter().any(|h| h.name.eq_ignore_ascii_case(name)) {
                                prop_assert!(headers.get(name.as_str()).is_none());
                            }
                        }
                    }
                }
            }

            /// A plugin's reply with any status and headers becomes a response or a clear error.
            #[test]
            fn any_reply_becomes_a_response_or_an_error(
                status in any::<u16>(),
                set in proptest::collection::vec((name(), value()), 0..8),
            ) {
                let headers = set.into_iter().map(|(n, v)| OwnedHeader { name: n.into(), value: v.into() }).collect();
                let reply = Reply { status, headers, body: b"{}".to_vec().into() };
                match reply_parts(reply) {
                    Ok((s, _, body)) => {
                        prop_assert_eq!(s.as_u16(), status);
                        prop_assert_eq!(&body[..], b"{}");
                    }
                    Err(e) => prop_assert!(e.starts_with("invalid"), "{}", e),
                }
            }
        }
    }
}
