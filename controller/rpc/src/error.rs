//! Errors: [`RpcError`] for the caller, [`RemoteError`] for what a handler
//! sends back.

use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Codes the RPC layer itself puts in a [`RemoteError`]. Handlers choose their
/// own codes for application errors (e.g. `"image_not_found"`).
pub mod codes {
    /// The server has no handler for the method.
    pub const NO_SUCH_METHOD: &str = "no_such_method";
    /// The server implements an interface version the message is not
    /// compatible with (see [`crate::Version::can_serve`]).
    pub const UNSUPPORTED_VERSION: &str = "unsupported_version";
    /// The payload could not be decoded into the handler's request type.
    pub const INVALID_REQUEST: &str = "invalid_request";
    /// The handler panicked; the panic was contained and the server goes on.
    pub const HANDLER_PANICKED: &str = "handler_panicked";
    /// The handler's response could not be encoded.
    pub const INTERNAL: &str = "internal";
}

/// An error raised by the remote handler of a call, carried back to the caller.
///
/// `code` is a stable machine-readable string, `message` is for humans, and
/// `data` optionally carries a typed error serialised as JSON, which the caller
/// gets back with [`RemoteError::data`]:
///
/// ```
/// use mica_rpc::RemoteError;
/// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
/// enum BuildError { ImageNotFound { image: String } }
///
/// let err = RemoteError::new("build_failed", "image xyz not found")
///     .with_data(&BuildError::ImageNotFound { image: "xyz".into() });
/// assert_eq!(err.data::<BuildError>(), Some(BuildError::ImageNotFound { image: "xyz".into() }));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RemoteError {
    /// Stable code, e.g. `no_such_method` or an application code.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// Optional structured details (a typed error serialised as JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl RemoteError {
    /// An error with a code and a message and no data.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            data: None,
        }
    }

    /// Attaches a typed value as `data`. A value that cannot be serialised is
    /// left out (the code and message still travel).
    #[must_use]
    pub fn with_data<T: Serialize + ?Sized>(mut self, data: &T) -> Self {
        self.data = serde_json::to_value(data).ok();
        self
    }

    /// Decodes `data` as `T`; `None` when absent or of another shape.
    pub fn data<T: DeserializeOwned>(&self) -> Option<T> {
        self.data
            .as_ref()
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    /// True when the code is `code`.
    pub fn is(&self, code: &str) -> bool {
        self.code == code
    }
}

/// Handlers may return a plain `String` as their error: it becomes a
/// [`RemoteError`] with code `error`.
impl From<String> for RemoteError {
    fn from(message: String) -> Self {
        RemoteError::new("error", message)
    }
}

impl From<&str> for RemoteError {
    fn from(message: &str) -> Self {
        RemoteError::new("error", message)
    }
}

/// Everything a `call`, `cast` or `connect` can fail with.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// No reply came within the call's timeout. The request may or may not
    /// have been handled.
    #[error("{method} on {topic}: no reply within {after:?}")]
    Timeout {
        /// Method called.
        method: String,
        /// Topic it was sent to.
        topic: String,
        /// The timeout that ran out.
        after: Duration,
    },
    /// The remote handler returned an error (or the server refused the
    /// message: unknown method, incompatible version, undecodable payload).
    #[error("remote error: {0}")]
    Remote(#[from] RemoteError),
    /// The connection to the broker was lost after the call's request had
    /// been published and before its reply arrived; the reply cannot arrive
    /// any more. The request may or may not have been handled: retry only
    /// what is idempotent.
    #[error("{method} on {topic}: connection to the broker lost while waiting for the reply")]
    ConnectionLost {
        /// Method called.
        method: String,
        /// Topic it was sent to.
        topic: String,
    },
    /// The broker did not take the message within the publish timeout (for
    /// a call, the call's timeout): it was unreachable, or did not confirm.
    /// The message was most likely not sent; only one whose confirm was
    /// still on its way when the time ran out may have been.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The request could not be encoded as JSON.
    #[error("cannot encode the request")]
    Encode(#[source] serde_json::Error),
    /// The reply could not be decoded into the expected response type.
    #[error("cannot decode the reply to {method}")]
    Decode {
        /// Method called.
        method: String,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// The transport URL is not understood.
    #[error("invalid transport URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// A topic, host or member name is not usable as a queue name.
    #[error("invalid name {0:?}: use 1-100 characters out of [A-Za-z0-9._:-]")]
    InvalidName(String),
    /// The broker refused something that retrying will not fix (access
    /// refused, a queue declared with other arguments, …).
    #[error("broker refused: {0}")]
    Broker(String),
    /// The `Rpc` handle was shut down.
    #[error("the RPC client is closed")]
    Closed,
}

impl RpcError {
    /// The remote error, when this is one.
    pub fn remote(&self) -> Option<&RemoteError> {
        match self {
            RpcError::Remote(e) => Some(e),
            _ => None,
        }
    }
}

/// Shortens a payload for a log line.
pub(crate) struct Snippet<'a>(pub &'a [u8]);

impl fmt::Display for Snippet<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX: usize = 200;
        let text = String::from_utf8_lossy(&self.0[..self.0.len().min(MAX)]);
        write!(f, "{text:?}")?;
        if self.0.len() > MAX {
            write!(f, "… ({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}
