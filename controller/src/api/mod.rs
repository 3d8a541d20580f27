//! The HTTP edge: one router per OpenStack API, thin handlers over the app
//! layer, and the middleware every API shares:
//!
//! - a request id (`x-openstack-request-id: req-<uuid>`) in a `tracing`
//!   span around the request, and one log line per request;
//! - error rendering: handlers return [`Error`]; the service's renderer turns
//!   it (and any error response axum makes itself: unknown path, wrong
//!   method, bad path parameter) into that service's OpenStack error body —
//!   Keystone's `{"error": {code, message, title}}`, placement's
//!   `{"errors": [{status, title, detail, code, request_id}]}`, and
//!   `{"<name>": {code, message}}` for the others (see API.md).

pub mod compute;
pub mod console_proxy;
pub mod identity;
pub mod image;
pub mod metadata;
pub mod network;
pub mod openapi;
pub mod placement;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::app::{App, ServiceKind, identity as id_app};
use crate::context::Context;
use crate::error::{Error, Kind};

/// The state every handler gets.
pub type State = Arc<App>;

/// The request id of a request, in its extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// What an error response carries until the service renders it.
#[derive(Debug, Clone)]
pub struct ErrorInfo {
    /// The kind.
    pub kind: Kind,
    /// The user-facing message.
    pub message: String,
    /// The machine-readable code, if any.
    pub code: Option<&'static str>,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if self.kind == Kind::Internal {
            tracing::error!(error = ?self, "internal error");
        } else {
            tracing::debug!(error = ?self, "request failed");
        }
        let status =
            StatusCode::from_u16(self.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = status.into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp.extensions_mut().insert(ErrorInfo {
            kind: self.kind,
            message: self.message,
            code: self.code,
        });
        resp
    }
}

/// Tags each request with an id and a span, logs it, and echoes the id.
pub async fn request_context(mut req: Request, next: Next) -> Response {
    let id = format!("req-{}", uuid::Uuid::new_v4());
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path(),
        user_id = tracing::field::Empty,
    );
    let started = Instant::now();
    let has_body = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v != "0")
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    async move {
        let mut resp = next.run(req).await;
        let status = resp.status().as_u16();
        if has_body && status >= 400 {
            // An error may leave part of the request body unread; then the
            // connection can't carry another request, and saying so keeps
            // clients from reusing it.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        tracing::info!(
            status,
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "request done"
        );
        if let Ok(v) = HeaderValue::from_str(&id) {
            resp.headers_mut().insert("x-openstack-request-id", v);
        }
        resp
    }
    .instrument(span)
    .await
}

/// How a service renders errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorStyle {
    /// Keystone: `{"error": {"code", "message", "title"}}`.
    Keystone,
    /// Placement: `{"errors": [{"status", "title", "detail", "code", "request_id"}]}`.
    Placement,
    /// Nova and the others: `{"<name>": {"code", "message"}}`.
    Nova,
    /// Neutron: `{"NeutronError": {"type", "message", "detail"}}`.
    Neutron,
}

fn kind_of_status(status: StatusCode) -> Kind {
    match status.as_u16() {
        400 => Kind::BadRequest,
        401 => Kind::Unauthorized,
        403 => Kind::Forbidden,
        404 => Kind::NotFound,
        405 => Kind::MethodNotAllowed,
        406 => Kind::NotAcceptable,
        408 => Kind::RequestTimeout,
        409 => Kind::Conflict,
        413 => Kind::PayloadTooLarge,
        415 => Kind::UnsupportedMediaType,
        422 => Kind::BadRequest,
        501 => Kind::NotImplemented,
        503 => Kind::ServiceUnavailable,
        _ => Kind::Internal,
    }
}

/// Turns an error response into the service's body. Responses that already
/// have a JSON body are left alone.
pub async fn render_error(
    style: ErrorStyle,
    resp: Response,
    request_id: Option<String>,
    with_code: bool,
) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let info = resp.extensions().get::<ErrorInfo>().cloned();
    let (mut parts, body) = resp.into_parts();
    let info = match info {
        Some(i) => i,
        None => {
            let is_json = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/json"));
            if is_json {
                return Response::from_parts(parts, body);
            }
            // axum's own rejections: plain text; keep the text as message.
            let bytes = axum::body::to_bytes(body, 64 * 1024)
                .await
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes).trim().to_owned();
            let kind = kind_of_status(status);
            let message = match (kind, text.is_empty()) {
                (Kind::NotFound, true) => "The resource could not be found.".to_owned(),
                (Kind::MethodNotAllowed, true) => {
                    "The method is not allowed for the requested URL.".to_owned()
                }
                (_, true) => kind.title().to_owned(),
                (_, false) => text,
            };
            ErrorInfo {
                kind,
                message,
                code: None,
            }
        }
    };
    let body = match style {
        ErrorStyle::Keystone => serde_json::json!({
            "error": {
                "code": status.as_u16(),
                "message": info.message,
                "title": info.kind.title(),
            }
        }),
        ErrorStyle::Placement => {
            let mut e = serde_json::json!({
                "status": status.as_u16(),
                "title": info.kind.title(),
                "detail": info.message,
                "request_id": request_id,
            });
            if with_code {
                e["code"] = info.code.unwrap_or(crate::db::placement::UNDEFINED).into();
            }
            serde_json::json!({ "errors": [e] })
        }
        ErrorStyle::Nova => serde_json::json!({
            info.kind.nova_name(): {
                "code": status.as_u16(),
                "message": info.message,
            }
        }),
        ErrorStyle::Neutron => serde_json::json!({
            "NeutronError": {
                "type": info.code.map(str::to_owned).unwrap_or_else(|| {
                    format!("HTTP{}", info.kind.title().replace(' ', ""))
                }),
                "message": info.message,
                "detail": "",
            }
        }),
    };
    let bytes = serde_json::to_vec(&body).expect("JSON values serialize");
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(bytes))
}

/// The authenticated caller of a request (`X-Auth-Token`).
pub struct Auth(pub Context);

impl FromRequestParts<State> for Auth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, app: &State) -> Result<Self, Error> {
        let token = parts
            .headers
            .get("x-auth-token")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Error::unauthorized("The request you have made requires authentication.")
            })?;
        let ctx = id_app::validate_token(app, token).await?;
        tracing::Span::current().record("user_id", ctx.user_id.as_str());
        Ok(Auth(ctx))
    }
}

/// A JSON request body, limited to `[api] max_json_body_bytes`; malformed
/// JSON and wrong types are 400 with serde's explanation.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<State> for JsonBody<T> {
    type Rejection = Error;

    async fn from_request(req: Request, app: &State) -> Result<Self, Error> {
        let limit = app.config.api.max_json_body_bytes;
        let bytes = read_limited(req.into_body(), limit).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// A request body whose next piece took longer than `[api]
/// body_timeout_secs`.
#[derive(Debug)]
pub struct BodyTimedOut(Duration);

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} s",
            crate::error::BODY_TIMED_OUT,
            self.0.as_secs_f64().round()
        )
    }
}

impl std::error::Error for BodyTimedOut {}

/// A request body that fails with [`BodyTimedOut`] when its next frame
/// does not come within the time-out.
struct DeadlineBody {
    inner: Body,
    timeout: Duration,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for DeadlineBody {
    type Data = bytes::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let deadline = tokio::time::Instant::now() + this.timeout;
                this.sleep.as_mut().reset(deadline);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut(this.timeout))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Puts `[api] body_timeout_secs` on the request body: a client that
/// stops sending its body (shorter than its Content-Length, a stalled
/// upload) makes the read fail, the request answers 408 and the
/// connection closes.
pub async fn body_deadline(timeout: Duration, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let body = DeadlineBody {
        inner: body,
        timeout,
        sleep: Box::pin(tokio::time::sleep(timeout)),
    };
    next.run(Request::from_parts(parts, Body::new(body))).await
}

/// Whether a body read failed on [`BodyTimedOut`].
pub fn body_timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if c.is::<BodyTimedOut>() || c.to_string().starts_with(crate::error::BODY_TIMED_OUT) {
            return true;
        }
        cur = c.source();
    }
    false
}

/// The error for a body that stopped coming.
pub fn body_timeout_error() -> Error {
    Error::new(
        Kind::RequestTimeout,
        "The request body did not arrive in time.",
    )
}

/// Reads a body of at most `limit` bytes (413 beyond).
pub async fn read_limited(body: Body, limit: usize) -> Result<bytes::Bytes, Error> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if body_timed_out(&e) {
            return body_timeout_error();
        }
        let too_big = std::error::Error::source(&e)
            .is_some_and(|s| s.to_string().contains("length limit exceeded"))
            || e.to_string().contains("length limit exceeded");
        if too_big {
            Error::too_large(format!(
                "Request body is larger than the limit of {limit} bytes."
            ))
        } else {
            Error::bad_request(format!("Could not read the request body: {e}"))
        }
    })
}

/// Parses JSON with a 400 that says what is wrong.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    if bytes.is_empty() {
        return Err(Error::bad_request(
            "Malformed request body: the body is empty.",
        ));
    }
    let parsed = serde_json::from_slice(bytes).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "Malformed request body"
            }
            _ => "Invalid input for the request body",
        };
        Error::bad_request(format!("{what}: {e}"))
    })?;
    // A NUL can only come as the escape `\u0000` (a raw one is not JSON);
    // PostgreSQL refuses it in text, so it never gets that far.
    if bytes.windows(6).any(|w| w == b"\\u0000")
        && let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes)
        && has_nul(&v)
    {
        return Err(nul_error("the request body"));
    }
    Ok(parsed)
}

/// Whether a JSON value holds a NUL character in a string or key.
fn has_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(has_nul),
        serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

fn nul_error(where_: &str) -> Error {
    Error::bad_request(format!(
        "Invalid input: NUL characters are not allowed in {where_}."
    ))
}

/// Refuses (400, in the service's error style) a request whose path or
/// query string holds a NUL character (`%00`): no name or id has one, and
/// PostgreSQL would refuse it.
pub async fn refuse_nul(style: ErrorStyle, req: Request, next: Next) -> Response {
    let uri = req.uri();
    let in_path = percent_decode(uri.path()).contains('\0');
    let in_query = uri
        .query()
        .is_some_and(|q| percent_decode(q).contains('\0'));
    if in_path || in_query {
        let rid = req.extensions().get::<RequestId>().map(|r| r.0.clone());
        let e = nul_error(if in_path {
            "the URL"
        } else {
            "the query string"
        });
        return render_error(style, e.into_response(), rid, false).await;
    }
    next.run(req).await
}

/// The query string as (key, value) pairs, in order, repeated keys kept.
pub fn query_pairs(uri: &axum::http::Uri) -> Vec<(String, String)> {
    uri.query().map(url_decode_pairs).unwrap_or_default()
}

fn url_decode_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Percent-encodes a query component (unreserved characters kept).
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes and `+` (as space) in a query component.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The base URL a client used to reach this listener (`http://host:port`),
/// from the configured public URL of the service or the `Host` header.
pub fn base_url(app: &App, kind: ServiceKind, headers: &HeaderMap) -> String {
    let o = kind.public_url_override(&app.config.api);
    if !o.is_empty() {
        let o = o.trim_end_matches('/');
        return o.strip_suffix(kind.url_path()).unwrap_or(o).to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

/// A JSON response with a status.
pub fn json(status: StatusCode, value: serde_json::Value) -> Response {
    (status, axum::Json(value)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let uri: axum::http::Uri = "/v2/images?id=in%3Aa%2Cb&name=my+image&tag=x&tag=y&bad=%zz&e="
            .parse()
            .unwrap();
        assert_eq!(
            query_pairs(&uri),
            vec![
                ("id".to_owned(), "in:a,b".to_owned()),
                ("name".to_owned(), "my image".to_owned()),
                ("tag".to_owned(), "x".to_owned()),
                ("tag".to_owned(), "y".to_owned()),
                ("bad".to_owned(), "%zz".to_owned()),
                ("e".to_owned(), "".to_owned()),
            ]
        );
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%41"), "A");
    }
}
