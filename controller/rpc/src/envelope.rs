//! The message envelope: every message on the bus is one JSON object.
//!
//! ```json
//! {"mica_rpc": 1, "kind": "call", "id": "5f0c…", "method": "get_console_output",
//!  "version": "1.0", "reply_to": "mica.rpc_reply.<client>.<n>", "request_id": "req-…",
//!  "sent_at_ms": 1732170000000, "payload": {…}}
//! {"mica_rpc": 1, "kind": "reply", "id": "5f0c…", "result": {"ok": {…}}}
//! {"mica_rpc": 1, "kind": "reply", "id": "5f0c…",
//!  "result": {"error": {"code": "no_such_method", "message": "…"}}}
//! ```
//!
//! A call's `id` is its correlation id: the reply carries the same `id`.
//! `reply_to` names the caller's reply queue, which belongs to the caller's
//! current connection: a call re-sent after a reconnection carries the new one.
//! Over AMQP the same values are also in the message properties (`reply_to`,
//! `correlation_id`, `message_id`, `type` = method) for tools.
//!
//! # Versioning rules
//! 1. **Envelope format** (`mica_rpc`, an integer). Readers ignore fields they
//!    do not know, so adding an optional field does not change it. It is bumped
//!    only for a change old readers would misread; a reader that gets a format
//!    newer than [`FORMAT`] dead-letters the message (and answers a call with
//!    `unsupported_version`).
//! 2. **Interface version** (`version`, `"major.minor"`), per topic, like
//!    oslo.messaging's: a server declares the version it implements
//!    ([`crate::Dispatcher::new`]) and accepts a message whose version has the
//!    same major and a minor not above its own. Adding a method or an optional
//!    request field is a minor bump; removing or changing the meaning of
//!    anything is a major bump. A sender sends the lowest version that has
//!    what it needs, so servers not yet upgraded still take the message.
//! 3. **Payloads** are the method's request and response types. They must
//!    tolerate unknown fields (never `deny_unknown_fields`) and give new fields
//!    a `#[serde(default)]`, so old and new peers read each other.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::RemoteError;

/// The envelope format this build writes and the newest it reads.
pub const FORMAT: u32 = 1;

/// An interface version, `major.minor`, written as the string `"1.3"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Incompatible changes.
    pub major: u16,
    /// Compatible additions.
    pub minor: u16,
}

impl Version {
    /// `major.minor`.
    pub const fn new(major: u16, minor: u16) -> Self {
        Self { major, minor }
    }

    /// Can a server implementing `self` handle a message sent as `requested`?
    /// Same major, and the server's minor is at least the requested one.
    pub fn can_serve(self, requested: Version) -> bool {
        self.major == requested.major && self.minor >= requested.minor
    }
}

impl Default for Version {
    fn default() -> Self {
        Version::new(1, 0)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A version string that is not `major.minor`.
#[derive(Debug, thiserror::Error)]
#[error("invalid version {0:?}: expected \"major.minor\"")]
pub struct ParseVersionError(String);

impl FromStr for Version {
    type Err = ParseVersionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseVersionError(s.into());
        let (major, minor) = s.split_once('.').ok_or_else(err)?;
        Ok(Version::new(
            major.parse().map_err(|_| err())?,
            minor.parse().map_err(|_| err())?,
        ))
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A request that wants a reply.
    Call,
    /// A request that wants none.
    Cast,
    /// The reply to a call.
    Reply,
}

/// The outcome a reply carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The handler's response.
    Ok(serde_json::Value),
    /// The handler's (or the server's) error.
    Error(RemoteError),
}

/// One message. Unknown fields are ignored when reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Envelope format, see the module docs.
    #[serde(rename = "mica_rpc")]
    pub format: u32,
    /// Call, cast or reply.
    pub kind: Kind,
    /// Message id; for a call, its correlation id, repeated in the reply.
    pub id: String,
    /// Method name (calls and casts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Interface version the sender needs (calls and casts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Version>,
    /// Calls: the caller's reply queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// The request id of the API request this message serves, for logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// When it was sent, in milliseconds since the Unix epoch (for logs only:
    /// hosts' clocks differ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at_ms: Option<u64>,
    /// The request (calls and casts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    /// The outcome (replies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Outcome>,
}

impl Envelope {
    /// A call or cast.
    pub fn request(
        kind: Kind,
        method: &str,
        version: Version,
        request_id: Option<String>,
        payload: serde_json::Value,
    ) -> Self {
        Self {
            format: FORMAT,
            kind,
            id: uuid::Uuid::new_v4().to_string(),
            method: Some(method.into()),
            version: Some(version),
            reply_to: None,
            request_id,
            sent_at_ms: Some(now_ms()),
            payload: Some(payload),
            result: None,
        }
    }

    /// The reply to the call `id`.
    pub fn reply(id: &str, result: Outcome) -> Self {
        Self {
            format: FORMAT,
            kind: Kind::Reply,
            id: id.into(),
            method: None,
            version: None,
            reply_to: None,
            request_id: None,
            sent_at_ms: Some(now_ms()),
            payload: None,
            result: Some(result),
        }
    }

    /// JSON bytes.
    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings, numbers and `Value`s always serialises.
        serde_json::to_vec(self).expect("an envelope always serialises")
    }

    /// Parses JSON bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn version_rules() {
        let v = |s: &str| s.parse::<Version>().unwrap();
        assert!(v("1.3").can_serve(v("1.0")));
        assert!(v("1.3").can_serve(v("1.3")));
        assert!(!v("1.3").can_serve(v("1.4")));
        assert!(!v("2.0").can_serve(v("1.0")));
        assert!(!v("1.0").can_serve(v("2.0")));
        assert!("1".parse::<Version>().is_err());
        assert!("1.x".parse::<Version>().is_err());
        assert_eq!(json!(v("4.12")), json!("4.12"));
    }

    #[test]
    fn round_trip() {
        let e = Envelope::request(
            Kind::Call,
            "ping",
            Version::new(1, 2),
            Some("req-1".into()),
            json!({"a": 1}),
        );
        assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
        let r = Envelope::reply(
            &e.id,
            Outcome::Error(RemoteError::new("no_such_method", "x")),
        );
        let text = String::from_utf8(r.encode()).unwrap();
        assert!(text.contains(r#""result":{"error":{"code":"no_such_method""#));
        assert_eq!(Envelope::decode(text.as_bytes()).unwrap(), r);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let text = r#"{"mica_rpc": 1, "kind": "cast", "id": "x", "method": "m",
            "version": "1.0", "payload": {"n": 1}, "priority": "high",
            "trace": {"span": 7}}"#;
        let e = Envelope::decode(text.as_bytes()).unwrap();
        assert_eq!(e.kind, Kind::Cast);
        assert_eq!(e.payload, Some(json!({"n": 1})));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Envelope::decode(b"not json").is_err());
        assert!(Envelope::decode(br#"{"kind": "cast"}"#).is_err());
        assert!(Envelope::decode(br#"{"mica_rpc":1,"kind":"stream","id":"x"}"#).is_err());
    }
}
