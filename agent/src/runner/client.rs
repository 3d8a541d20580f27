//! A client for mica-vmm's control socket: HTTP/1.1 with JSON bodies over a
//! Unix stream socket, one request per connection.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mica_vmm_api::{
    ActionAnswer, ErrorBody, RebootRequest, RequestedState, ShutdownRequest, StateRequest, VmInfo,
    paths,
};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;

/// Longest answer read.
const MAX_ANSWER: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the VMM's control socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {path}: no answer within {after:?}")]
    Timeout { path: PathBuf, after: Duration },
    #[error("control socket {path}: malformed answer ({reason})")]
    Malformed { path: PathBuf, reason: String },
    /// The VMM refused: 409 when the VM's state does not allow the action.
    #[error("the VMM answered {status}: {message}")]
    Refused { status: u16, message: String },
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct VmmClient {
    path: PathBuf,
    timeout: Duration,
}

impl VmmClient {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            timeout: Duration::from_secs(10),
        }
    }

    /// `GET /vm`.
    pub async fn info(&self) -> Result<VmInfo, ClientError> {
        self.json("GET", paths::VM, None).await
    }

    /// `PUT /vm/state`.
    pub async fn set_state(&self, state: RequestedState) -> Result<ActionAnswer, ClientError> {
        let body = serde_json::to_vec(&StateRequest { state }).expect("serializes");
        self.json("PUT", paths::VM_STATE, Some(body)).await
    }

    /// `POST /vm/shutdown`: the ACPI power button; the VMM stops the VM
    /// itself after `timeout_s`.
    pub async fn shutdown(&self, timeout_s: u64) -> Result<ActionAnswer, ClientError> {
        let body = serde_json::to_vec(&ShutdownRequest { timeout_s }).expect("serializes");
        self.json("POST", paths::VM_SHUTDOWN, Some(body)).await
    }

    /// `POST /vm/stop`.
    pub async fn stop(&self) -> Result<ActionAnswer, ClientError> {
        self.json("POST", paths::VM_STOP, None).await
    }

    /// `POST /vm/reboot`.
    pub async fn reboot(&self, hard: bool) -> Result<ActionAnswer, ClientError> {
        let body = serde_json::to_vec(&RebootRequest { hard }).expect("serializes");
        self.json("POST", paths::VM_REBOOT, Some(body)).await
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let (status, body) = self.request(method, path, body).await?;
        if !(200..300).contains(&status) {
            let message = serde_json::from_slice::<ErrorBody>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(ClientError::Refused { status, message });
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Malformed {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }

    /// One request; returns the status and the body.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        match tokio::time::timeout(self.timeout, self.exchange(method, path, body)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                path: self.path.clone(),
                after: self.timeout,
            }),
        }
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let mut stream =
            UnixStream::connect(&self.path)
                .await
                .map_err(|source| ClientError::Connect {
                    path: self.path.clone(),
                    source,
                })?;
        let io = |source| ClientError::Io {
            path: self.path.clone(),
            source,
        };
        let body = body.unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if !body.is_empty() {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.map_err(io)?;
        stream.write_all(&body).await.map_err(io)?;
        let mut answer = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let n = stream.read(&mut buf).await.map_err(io)?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            if answer.len() > MAX_ANSWER {
                return Err(self.malformed("answer too long"));
            }
            if let Some(done) = complete(&answer) {
                answer.truncate(done);
                break;
            }
        }
        parse_answer(&answer).ok_or_else(|| self.malformed("not an HTTP/1.1 answer"))
    }

    fn malformed(&self, reason: &str) -> ClientError {
        ClientError::Malformed {
            path: self.path.clone(),
            reason: reason.to_owned(),
        }
    }
}

/// The length of a complete answer in `buf` (head and `Content-Length`
/// bytes of body), if it is complete.
fn complete(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    (buf.len() >= head_end + len).then_some(head_end + len)
}

fn parse_answer(buf: &[u8]) -> Option<(u16, Vec<u8>)> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let status_line = head.lines().next()?;
    let mut parts = status_line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    Some((status, buf[head_end..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        let a = b"HTTP/1.1 409 Conflict\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n{\"error\":\"busy\"}x";
        assert_eq!(complete(a), Some(a.len() - 1));
        let (status, body) = parse_answer(&a[..a.len() - 1]).unwrap();
        assert_eq!(status, 409);
        assert_eq!(body, b"{\"error\":\"busy\"}");
        assert_eq!(
            complete(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"),
            None
        );
        assert!(parse_answer(b"garbage\r\n\r\n").is_none());
    }

    #[tokio::test]
    async fn a_request_round_trips_over_a_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = vec![0u8; 4096];
            let n = s.read(&mut req).await.unwrap();
            let req = String::from_utf8_lossy(&req[..n]).into_owned();
            let body = "{\"state\":\"paused\"}";
            s.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await
            .unwrap();
            req
        });
        let answer = VmmClient::new(&path)
            .set_state(RequestedState::Paused)
            .await
            .unwrap();
        assert_eq!(answer.state, mica_vmm_api::VmState::Paused);
        let req = server.await.unwrap();
        assert!(req.starts_with("PUT /vm/state HTTP/1.1\r\n"), "{req}");
        assert!(req.ends_with("{\"state\":\"paused\"}"), "{req}");
        // Nobody listening: a connect error.
        drop(dir);
        assert!(matches!(
            VmmClient::new(&path).info().await,
            Err(ClientError::Connect { .. })
        ));
    }
}
