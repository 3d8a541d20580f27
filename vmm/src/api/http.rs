//! A small HTTP/1.1 request parser and response writer: enough for a control
//! socket (no chunked bodies, no pipelining limits beyond sequential handling).

/// Longest request head (request line and headers).
pub const MAX_HEAD: usize = 8 << 10;
/// Longest request body.
pub const MAX_BODY: usize = 64 << 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path, without any query string.
    pub path: String,
    pub body: Vec<u8>,
    /// Whether the connection stays open after the answer.
    pub keep_alive: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("request head longer than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("request body longer than {MAX_BODY} bytes")]
    BodyTooLarge,
    #[error("malformed request line")]
    RequestLine,
    #[error("unsupported HTTP version {0:?}")]
    Version(String),
    #[error("malformed header line")]
    Header,
    #[error("invalid Content-Length")]
    ContentLength,
    #[error("Transfer-Encoding is not supported")]
    TransferEncoding,
}

impl ParseError {
    pub fn status(&self) -> u16 {
        match self {
            ParseError::HeadTooLarge => 431,
            ParseError::BodyTooLarge => 413,
            ParseError::Version(_) => 505,
            ParseError::TransferEncoding => 501,
            _ => 400,
        }
    }
}

/// Parses one request from the start of `buf`. `Ok(None)` while it is
/// incomplete; otherwise the request and the number of bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Request, usize)>, ParseError> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err(ParseError::HeadTooLarge);
        }
        return Ok(None);
    };
    if head_end > MAX_HEAD {
        return Err(ParseError::HeadTooLarge);
    }
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| ParseError::RequestLine)?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().ok_or(ParseError::RequestLine)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::RequestLine);
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ParseError::RequestLine);
    }
    if !target.starts_with('/') {
        return Err(ParseError::RequestLine);
    }
    let mut keep_alive = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        v => return Err(ParseError::Version(v.to_string())),
    };
    let mut content_length = 0usize;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(ParseError::Header)?;
        if name.is_empty() || name.contains(' ') {
            return Err(ParseError::Header);
        }
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => {
                content_length = value.parse().map_err(|_| ParseError::ContentLength)?;
                if content_length > MAX_BODY {
                    return Err(ParseError::BodyTooLarge);
                }
            }
            "transfer-encoding" => return Err(ParseError::TransferEncoding),
            "connection" => {
                let v = value.to_ascii_lowercase();
                if v.contains("close") {
                    keep_alive = false;
                } else if v.contains("keep-alive") {
                    keep_alive = true;
                }
            }
            _ => {}
        }
    }
    let body_start = head_end + 4;
    let total = body_start + content_length;
    if buf.len() < total {
        return Ok(None);
    }
    let path = target.split('?').next().unwrap_or(target).to_string();
    Ok(Some((
        Request {
            method: method.to_string(),
            path,
            body: buf[body_start..total].to_vec(),
            keep_alive,
        },
        total,
    )))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// An answer with a JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, body: &impl serde::Serialize) -> Self {
        Self {
            status,
            body: serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec()),
        }
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self, keep_alive: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n",
            self.status,
            reason(self.status),
            self.body.len(),
            if keep_alive {
                ""
            } else {
                "Connection: close\r\n"
            }
        )
        .into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_request_with_a_body_and_leaves_the_next() {
        let raw = b"PUT /vm/state?x=1 HTTP/1.1\r\nHost: localhost\r\ncontent-length: 18\r\n\r\n{\"state\":\"paused\"}GET /vm HTTP/1.1\r\n\r\n";
        let (req, used) = parse(raw).unwrap().unwrap();
        assert_eq!(req.method, "PUT");
        assert_eq!(req.path, "/vm/state");
        assert_eq!(req.body, br#"{"state":"paused"}"#);
        assert!(req.keep_alive);
        let (next, _) = parse(&raw[used..]).unwrap().unwrap();
        assert_eq!((next.method.as_str(), next.path.as_str()), ("GET", "/vm"));
    }

    #[test]
    fn waits_for_the_rest() {
        assert_eq!(parse(b"GET /vm HTTP/1.1\r\nHost: a"), Ok(None));
        assert_eq!(
            parse(b"POST /vm/stop HTTP/1.1\r\nContent-Length: 5\r\n\r\nab"),
            Ok(None)
        );
    }

    #[test]
    fn refuses_what_it_does_not_handle() {
        let cases: Vec<(&[u8], ParseError)> = vec![
            (b"GET /vm\r\n\r\n", ParseError::RequestLine),
            (b"get /vm HTTP/1.1\r\n\r\n", ParseError::RequestLine),
            (b"GET vm HTTP/1.1\r\n\r\n", ParseError::RequestLine),
            (
                b"GET /vm HTTP/2\r\n\r\n",
                ParseError::Version("HTTP/2".into()),
            ),
            (b"GET /vm HTTP/1.1\r\nNoColon\r\n\r\n", ParseError::Header),
            (
                b"GET /vm HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                ParseError::ContentLength,
            ),
            (
                b"GET /vm HTTP/1.1\r\nContent-Length: 999999\r\n\r\n",
                ParseError::BodyTooLarge,
            ),
            (
                b"POST /vm HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                ParseError::TransferEncoding,
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(parse(raw), Err(want), "{}", String::from_utf8_lossy(raw));
        }
        let huge = vec![b'a'; MAX_HEAD + 1];
        assert_eq!(parse(&huge), Err(ParseError::HeadTooLarge));
    }

    #[test]
    fn connection_close_and_http_1_0() {
        let (r, _) = parse(b"GET /vm HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!r.keep_alive);
        let (r, _) = parse(b"GET /vm HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!r.keep_alive);
    }

    #[test]
    fn responses_carry_their_length() {
        let r = Response::json(409, &serde_json::json!({"error": "no"}));
        let s = String::from_utf8(r.to_bytes(false)).unwrap();
        assert!(s.starts_with("HTTP/1.1 409 Conflict\r\n"), "{s}");
        assert!(s.contains("Content-Length: 14\r\n"));
        assert!(s.contains("Connection: close\r\n"));
        assert!(s.ends_with("\r\n\r\n{\"error\":\"no\"}"));
    }
}
