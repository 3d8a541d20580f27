//! The console proxy (role `console-proxy`; Nova's `nova-novncproxy` and
//! `nova-serialproxy` in one listener): WebSocket connections carrying a
//! console token, piped to the instance's console through its agent's
//! console channel, and the noVNC web client's static files.
//!
//! - `GET /?token=…` or `/websockify?token=…` (or Nova's `token` cookie)
//!   with a WebSocket upgrade: the token is checked in the database
//!   *before* the upgrade and before anything is asked of a compute host
//!   (an invalid, expired or deleted instance's token is a 401 with a Nova
//!   error body); then the host is asked to open the console
//!   ([`crate::app::compute::consoles::open`]), the proxy dials the
//!   address it answers with the ticket, and only then upgrades (offering
//!   noVNC's `binary` subprotocol). Binary and text frames from the client
//!   go to the console; the console's bytes come back as binary frames. A
//!   browser's `Origin` must be the proxy's own host (or one of `[console]
//!   allowed_origins`), as Nova's proxy checks, else 403.
//! - `GET /vnc.html`, `/vnc_lite.html`, `/vnc_auto.html`: Mica's console
//!   page (built in; Nova's `?path=%3Ftoken%3D…` form), which runs noVNC.
//! - Any other `GET`: a file of `[console] novnc_dir`, where `make setup`
//!   unpacks the npm package `@novnc/novnc` (`/core/rfb.js`, `/vendor/…`:
//!   the library; the package has no page of its own); paths that leave
//!   the folder are refused.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{
    Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Request, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use mica_rpc::compute::ConsoleTicket;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{ErrorStyle, RequestId, State, percent_decode, query_pairs, render_error};
use crate::app::compute::consoles;
use crate::error::{Error, Kind, Result};

/// The proxy's routes.
pub fn router(app: State) -> Router {
    Router::new()
        .route("/", get(connect))
        .route("/websockify", get(connect))
        .fallback(static_file)
        .layer(axum::middleware::from_fn(nova_errors))
        .with_state(app)
}

async fn nova_errors(req: Request, next: Next) -> Response {
    let rid = req.extensions().get::<RequestId>().map(|r| r.0.clone());
    let resp = next.run(req).await;
    render_error(ErrorStyle::Nova, resp, rid, false).await
}

/// The token of `?token=`, else of the `token` cookie.
fn token_of(uri: &Uri, headers: &HeaderMap) -> Option<String> {
    if let Some((_, v)) = query_pairs(uri).into_iter().find(|(k, _)| k == "token") {
        return Some(v);
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == "token")
        .map(|(_, v)| v.to_owned())
}

async fn connect(
    AxState(app): AxState<State>,
    uri: Uri,
    headers: HeaderMap,
    ws: std::result::Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response> {
    let token = token_of(&uri, &headers);
    let ws = match ws {
        Ok(ws) => ws,
        // A browser at the bare address: the noVNC page.
        Err(_) if uri.path() == "/" && token.is_none() => {
            return Ok((
                StatusCode::FOUND,
                [(header::LOCATION, HeaderValue::from_static("/vnc.html"))],
            )
                .into_response());
        }
        Err(_) => {
            return Err(Error::bad_request(
                "The console proxy expects a WebSocket upgrade (GET with Upgrade: websocket) and ?token=<console token>.",
            ));
        }
    };
    check_origin(&headers, &app.config.console.allowed_origins)?;
    let Some(token) = token else {
        return Err(Error::unauthorized(
            "No console token: give it as ?token=<token> or in the token cookie.",
        ));
    };
    let opened = consoles::open(&app, &token).await?;
    let timeout = Duration::from_secs(app.config.console.connect_timeout_secs.max(1));
    let channel = dial(&opened.ticket, timeout).await.inspect_err(|e| {
        tracing::warn!(instance = %opened.instance_uuid, address = %opened.ticket.address, error = %e.message, "console channel");
    })?;
    let instance = opened.instance_uuid.clone();
    let kind = opened.kind.type_name();
    tracing::info!(instance = %instance, console = kind, "console connected");
    Ok(ws
        .protocols(["binary"])
        .on_upgrade(move |socket| async move {
            pipe(socket, channel).await;
            tracing::info!(instance = %instance, console = kind, "console closed");
        }))
}

/// `host[:port]` of an origin (`http://h:6080` → `h:6080`).
fn origin_host(origin: &str) -> &str {
    let rest = origin.split_once("://").map_or(origin, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

/// Refuses a browser's connection from a page of another origin.
fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<()> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        // Not a browser (or a page that sends none): the token alone decides.
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let o = origin_host(origin);
    let o_name = o.rsplit_once(':').map_or(o, |(n, _)| n);
    let ok = (!o.is_empty() && o.eq_ignore_ascii_case(host))
        || allowed
            .iter()
            .any(|a| a.eq_ignore_ascii_case(o) || a.eq_ignore_ascii_case(o_name));
    if ok {
        Ok(())
    } else {
        Err(Error::forbidden(format!(
            "Origin {origin} is not allowed to open consoles here ([console] allowed_origins)."
        )))
    }
}

/// Connects to an agent's console channel and presents the ticket.
async fn dial(ticket: &ConsoleTicket, timeout: Duration) -> Result<TcpStream> {
    let unreachable = |why: String| {
        Error::new(
            Kind::ServiceUnavailable,
            format!(
                "Cannot reach the console on its compute host ({}): {why}",
                ticket.address
            ),
        )
    };
    let attempt = async {
        let mut s = TcpStream::connect(&ticket.address)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        s.write_all(format!("{}\n", ticket.ticket).as_bytes())
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let mut line = Vec::new();
        loop {
            let mut b = [0u8; 1];
            match s.read(&mut b).await {
                Ok(0) => return Err(unreachable("the host closed the connection".into())),
                Ok(_) if b[0] == b'\n' => break,
                Ok(_) if line.len() > 512 => {
                    return Err(unreachable("the host's answer is too long".into()));
                }
                Ok(_) => line.push(b[0]),
                Err(e) => return Err(unreachable(e.to_string())),
            }
        }
        let line = String::from_utf8_lossy(&line).trim().to_owned();
        if line == "OK" {
            Ok(s)
        } else {
            let why = line.strip_prefix("ERR ").unwrap_or(&line).to_owned();
            Err(Error::conflict(format!(
                "The compute host refused the console: {why}"
            )))
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(unreachable(format!("no answer within {timeout:?}"))),
    }
}

/// Pipes frames to the channel and the channel's bytes back as binary
/// frames, until either side closes.
async fn pipe(socket: WebSocket, channel: TcpStream) {
    let _ = channel.set_nodelay(true);
    let (mut tcp_rx, mut tcp_tx) = channel.into_split();
    let (mut ws_tx, mut ws_rx) = socket.split();
    let to_console = async {
        while let Some(msg) = ws_rx.next().await {
            let data: bytes::Bytes = match msg {
                Ok(Message::Binary(b)) => b,
                Ok(Message::Text(t)) => bytes::Bytes::copy_from_slice(t.as_str().as_bytes()),
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            if tcp_tx.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = tcp_tx.shutdown().await;
    };
    let from_console = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match tcp_rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let frame = Message::Binary(bytes::Bytes::copy_from_slice(&buf[..n]));
                    if ws_tx.send(frame).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = ws_tx.send(Message::Close(None)).await;
    };
    // Either side ending ends the session.
    tokio::select! {
        _ = to_console => {}
        _ = from_console => {}
    }
}

/// The noVNC folder in force.
pub fn novnc_dir(configured: &str) -> PathBuf {
    if !configured.is_empty() {
        return PathBuf::from(configured);
    }
    if let Some(cache) = std::env::var_os("MICA_CACHE") {
        return Path::new(&cache).join("novnc");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/mica/novnc")
}

/// `path` (already decoded) as a relative path of plain components, or
/// none when it would leave the folder.
fn safe_relative(path: &str) -> Option<PathBuf> {
    if path.contains('\0') || path.contains('\\') {
        return None;
    }
    let mut out = PathBuf::new();
    for c in Path::new(path.trim_start_matches('/')).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

/// Mica's console page (see the module docs).
const CONSOLE_PAGE: &str = include_str!("console.html");

/// The names the console page is served at (Nova's and noVNC's).
const PAGE_NAMES: [&str; 3] = ["vnc.html", "vnc_lite.html", "vnc_auto.html"];

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "mp3" => "audio/mpeg",
        "oga" | "ogg" => "audio/ogg",
        "wasm" => "application/wasm",
        "txt" | "md" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

async fn static_file(AxState(app): AxState<State>, req: Request) -> Result<Response> {
    if req.method() != axum::http::Method::GET && req.method() != axum::http::Method::HEAD {
        return Err(Error::new(
            Kind::MethodNotAllowed,
            "The console proxy serves files with GET only.",
        ));
    }
    let raw = req.uri().path();
    let decoded = percent_decode(raw);
    let rel = safe_relative(&decoded)
        .ok_or_else(|| Error::bad_request(format!("Invalid path {raw:?}.")))?;
    let not_found = || Error::not_found(format!("{raw} could not be found."));
    if rel.as_os_str().is_empty() {
        return Err(not_found());
    }
    if PAGE_NAMES.iter().any(|p| rel == Path::new(p)) {
        return Ok((
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            CONSOLE_PAGE,
        )
            .into_response());
    }
    let dir = novnc_dir(&app.config.console.novnc_dir);
    let root = match tokio::fs::canonicalize(&dir).await {
        Ok(r) => r,
        Err(_) => {
            return Err(Error::not_found(format!(
                "{raw} could not be found: the noVNC web client is not installed (see [console] novnc_dir; `make setup` installs it)."
            )));
        }
    };
    // Symbolic links inside the folder must not lead out of it either.
    let full = tokio::fs::canonicalize(root.join(&rel))
        .await
        .map_err(|_| not_found())?;
    if !full.starts_with(&root) {
        return Err(Error::bad_request(format!("Invalid path {raw:?}.")));
    }
    let meta = tokio::fs::metadata(&full).await.map_err(|_| not_found())?;
    if !meta.is_file() {
        return Err(not_found());
    }
    let data = tokio::fs::read(&full).await.map_err(|_| not_found())?;
    Ok((
        [
            (header::CONTENT_TYPE, content_type(&full)),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        data,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside() {
        assert_eq!(safe_relative("/vnc.html"), Some(PathBuf::from("vnc.html")));
        assert_eq!(
            safe_relative("/app/ui.js"),
            Some(PathBuf::from("app/ui.js"))
        );
        assert_eq!(
            safe_relative("/./core/rfb.js"),
            Some(PathBuf::from("core/rfb.js"))
        );
        assert_eq!(safe_relative("/../etc/passwd"), None);
        assert_eq!(safe_relative("/app/../../etc/passwd"), None);
        assert_eq!(safe_relative("/a\\..\\b"), None);
        assert_eq!(safe_relative("/a\0b"), None);
    }

    #[test]
    fn origins_must_be_the_proxys_own_or_allowed() {
        let with = |origin: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_static("proxy:6080"));
            h.insert(header::ORIGIN, HeaderValue::from_static(origin));
            h
        };
        assert!(check_origin(&HeaderMap::new(), &[]).is_ok());
        assert!(check_origin(&with("http://proxy:6080"), &[]).is_ok());
        assert!(check_origin(&with("http://PROXY:6080"), &[]).is_ok());
        let e = check_origin(&with("http://evil.example"), &[]).unwrap_err();
        assert_eq!(e.kind, Kind::Forbidden);
        assert!(check_origin(&with("http://proxy:9999"), &[]).is_err());
        assert!(check_origin(&with("null"), &[]).is_err());
        let allowed = vec!["dashboard.example".to_owned()];
        assert!(check_origin(&with("https://dashboard.example"), &allowed).is_ok());
        assert!(check_origin(&with("https://dashboard.example:8443"), &allowed).is_ok());
    }

    #[test]
    fn tokens_come_from_the_query_or_the_cookie() {
        let uri: Uri = "/?token=abc".parse().unwrap();
        assert_eq!(token_of(&uri, &HeaderMap::new()).as_deref(), Some("abc"));
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; token=def"));
        let uri: Uri = "/websockify".parse().unwrap();
        assert_eq!(token_of(&uri, &h).as_deref(), Some("def"));
        assert_eq!(token_of(&uri, &HeaderMap::new()), None);
    }
}
