//! One request as the pipeline holds it, the borrowed views hooks see, and applying what hooks
//! changed.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use plugin_abi::ffi::{Mutations, OwnedHeader, RawContext, RawHeader, RawKeyValue, RawRequest, Reply};

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

    /// Applies a request hook's changes (the status field does not apply to requests).
    pub fn apply(&mut self, m: Mutations) -> Result<(), String> {
        apply_headers(&mut self.headers, &m.set_headers, &m.remove_headers)?;
        if let abi_stable::std_types::RSome(body) = m.body {
            self.body = Bytes::from(body.into_vec());
            self.headers.remove(http::header::CONTENT_LENGTH);
        }
        self.ctx.metadata.extend(m.metadata.into_iter().map(|kv| (kv.key.into_string(), kv.value.into_string())));
        Ok(())
    }
}

/// Sets and removes headers as a hook asked; a name or value that HTTP does not allow is the
/// plugin's error.
pub fn apply_headers(
    headers: &mut HeaderMap,
    set: &[OwnedHeader],
    remove: &[abi_stable::std_types::RString],
) -> Result<(), String> {
    for name in remove {
        let name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("invalid header name {:?}", name.as_str()))?;
        headers.remove(name);
    }
    for h in set {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("invalid header name {:?}", h.name.as_str()))?;
        let value = HeaderValue::from_str(h.value.as_str())
            .map_err(|_| format!("invalid value for header `{name}`: {:?}", h.value.as_str()))?;
        headers.insert(name, value);
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
        let mut state = RequestState {
            method: http::Method::POST,
            uri: "/v1/chat/completions?x=1".parse().unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"{}"),
            ctx: ContextState::default(),
        };
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
}
