//! HTTP requests and responses: what `on_request` gets and returns, and what
//! `Room::fetch` sends to other rooms.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::partyhost::party::types as wit;

/// An HTTP request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// Upper-case method, e.g. `GET`.
    pub method: String,
    /// The full URL for incoming requests; for `Room::fetch`, a path such
    /// as `/subscribe` is enough.
    pub url: String,
    /// Headers with lower-case names.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// A `GET` of `url`.
    pub fn get(url: impl Into<String>) -> Self {
        Self { method: "GET".into(), url: url.into(), ..Self::default() }
    }

    /// A `POST` of `value` as JSON to `url`.
    pub fn post_json<T: Serialize>(url: impl Into<String>, value: &T) -> Self {
        Self {
            method: "POST".into(),
            url: url.into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(value).unwrap_or_default(),
        }
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The URL's path, without query: `/parties/main/lobby/x`.
    pub fn path(&self) -> &str {
        let after_scheme = self.url.split_once("://").map_or(self.url.as_str(), |(_, rest)| rest);
        let path = if self.url.contains("://") {
            after_scheme.find('/').map_or("/", |i| &after_scheme[i..])
        } else {
            after_scheme
        };
        path.split(['?', '#']).next().unwrap_or("/")
    }

    /// The first value of `name` in the URL's query, decoded as
    /// `URLSearchParams` does (`%XX`, and `+` for a space); `Some("")` for a
    /// bare `name`.
    pub fn query(&self, name: &str) -> Option<String> {
        let query = self.url.split_once('?')?.1.split('#').next()?;
        query.split('&').find_map(|pair| match pair.split_once('=') {
            Some((key, value)) => (key == name).then(|| percent_decode(value)),
            None => (pair == name).then(String::new),
        })
    }

    /// The body as text (lossy).
    pub fn body_text(&self) -> String {
        body_text(&self.body)
    }

    /// The body parsed as JSON.
    ///
    /// # Errors
    /// When the body is not JSON of type `T`.
    pub fn body_json<T: DeserializeOwned>(&self) -> Result<T, crate::Error> {
        body_json(&self.body)
    }

    pub(crate) fn to_wit(&self) -> wit::Request {
        wit::Request {
            method: self.method.clone(),
            url: self.url.clone(),
            headers: headers_to_wit(&self.headers),
            body: self.body.clone(),
        }
    }

    pub(crate) fn from_wit(r: wit::Request) -> Self {
        Self { method: r.method, url: r.url, headers: headers_from_wit(r.headers), body: r.body }
    }
}

/// An HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A 200 response with `value` as JSON.
    pub fn json<T: Serialize>(value: &T) -> Self {
        Self {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(value).unwrap_or_default(),
        }
    }

    /// A response with a plain-text body.
    pub fn text(status: u16, text: impl Into<String>) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
            body: text.into().into_bytes(),
        }
    }

    /// 404 Not Found.
    pub fn not_found() -> Self {
        Self::text(404, "Not found")
    }

    /// The body as text (lossy).
    pub fn body_text(&self) -> String {
        body_text(&self.body)
    }

    /// The body parsed as JSON.
    ///
    /// # Errors
    /// When the body is not JSON of type `T`.
    pub fn body_json<T: DeserializeOwned>(&self) -> Result<T, crate::Error> {
        body_json(&self.body)
    }

    pub(crate) fn to_wit(&self) -> wit::Response {
        wit::Response { status: self.status, headers: headers_to_wit(&self.headers), body: self.body.clone() }
    }

    pub(crate) fn from_wit(r: wit::Response) -> Self {
        Self { status: r.status, headers: headers_from_wit(r.headers), body: r.body }
    }
}

fn body_text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

fn body_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, crate::Error> {
    Ok(serde_json::from_slice(body)?)
}

fn headers_to_wit(headers: &[(String, String)]) -> Vec<wit::Header> {
    headers.iter().map(|(name, value)| wit::Header { name: name.clone(), value: value.clone() }).collect()
}

fn headers_from_wit(headers: Vec<wit::Header>) -> Vec<(String, String)> {
    headers.into_iter().map(|h| (h.name, h.value)).collect()
}

/// `%XX` escapes and `+` decoded (lossy UTF-8); a malformed escape stays.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| text.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
