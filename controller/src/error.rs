//! The one error type of the controller.
//!
//! Every layer (datastore, app, handlers) returns [`Error`]: a transport-neutral
//! [`Kind`], a short message that is safe to show to the user, an optional
//! machine-readable code (placement's `placement.concurrent_update`, …) and,
//! for errors the user must not see the details of, an internal cause that is
//! only logged. The mapping to an HTTP status and to each OpenStack service's
//! error body happens once, at the edge (`api::errors`).
//!
//! Database errors convert here: unique-constraint violations become
//! [`Kind::Conflict`] (409), foreign-key violations [`Kind::Conflict`] too (the
//! referenced object is in use or gone), everything else is internal.

use std::fmt;

/// What went wrong, independent of the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The request is malformed or invalid (400).
    BadRequest,
    /// No valid credentials (401).
    Unauthorized,
    /// Authenticated but not allowed (403); quota exceeded is also 403.
    Forbidden,
    /// The object does not exist, or is not visible to the caller (404).
    NotFound,
    /// The method is not allowed on this resource (405).
    MethodNotAllowed,
    /// The requested microversion or media type cannot be served (406).
    NotAcceptable,
    /// The client did not send its request in time (408).
    RequestTimeout,
    /// The request conflicts with the current state (409).
    Conflict,
    /// The request body is larger than allowed (413).
    PayloadTooLarge,
    /// The request's content type is not supported (415).
    UnsupportedMediaType,
    /// A bug or an unexpected failure of a dependency (500).
    Internal,
    /// The operation exists in the API but is not implemented (501).
    NotImplemented,
    /// A dependency is unavailable; retrying later may succeed (503).
    ServiceUnavailable,
}

impl Kind {
    /// The HTTP status code of this kind.
    pub fn status(self) -> u16 {
        match self {
            Kind::BadRequest => 400,
            Kind::Unauthorized => 401,
            Kind::Forbidden => 403,
            Kind::NotFound => 404,
            Kind::MethodNotAllowed => 405,
            Kind::NotAcceptable => 406,
            Kind::RequestTimeout => 408,
            Kind::Conflict => 409,
            Kind::PayloadTooLarge => 413,
            Kind::UnsupportedMediaType => 415,
            Kind::Internal => 500,
            Kind::NotImplemented => 501,
            Kind::ServiceUnavailable => 503,
        }
    }

    /// The HTTP reason phrase, used as `title` by Keystone and placement.
    pub fn title(self) -> &'static str {
        match self {
            Kind::BadRequest => "Bad Request",
            Kind::Unauthorized => "Unauthorized",
            Kind::Forbidden => "Forbidden",
            Kind::NotFound => "Not Found",
            Kind::MethodNotAllowed => "Method Not Allowed",
            Kind::NotAcceptable => "Not Acceptable",
            Kind::RequestTimeout => "Request Timeout",
            Kind::Conflict => "Conflict",
            Kind::PayloadTooLarge => "Request Entity Too Large",
            Kind::UnsupportedMediaType => "Unsupported Media Type",
            Kind::Internal => "Internal Server Error",
            Kind::NotImplemented => "Not Implemented",
            Kind::ServiceUnavailable => "Service Unavailable",
        }
    }

    /// The top-level key of a Nova-style error body (`{"itemNotFound": {…}}`).
    pub fn nova_name(self) -> &'static str {
        match self {
            Kind::BadRequest => "badRequest",
            Kind::Unauthorized => "unauthorized",
            Kind::Forbidden => "forbidden",
            Kind::NotFound => "itemNotFound",
            Kind::MethodNotAllowed => "badMethod",
            Kind::NotAcceptable => "notAcceptable",
            Kind::RequestTimeout => "requestTimeout",
            Kind::Conflict => "conflictingRequest",
            Kind::PayloadTooLarge => "overLimit",
            Kind::UnsupportedMediaType => "badMediaType",
            Kind::Internal => "computeFault",
            Kind::NotImplemented => "notImplemented",
            Kind::ServiceUnavailable => "serviceUnavailable",
        }
    }
}

/// The controller's error: a kind, a message for the user, an optional code,
/// and an optional cause for the logs.
pub struct Error {
    /// What went wrong.
    pub kind: Kind,
    /// Shown to the user; never contains internal details.
    pub message: String,
    /// A stable machine-readable code (placement's error codes).
    pub code: Option<&'static str>,
    /// The underlying cause, logged but never shown.
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
    /// Seconds to send as `Retry-After` (overload answers).
    pub retry_after: Option<u64>,
}

/// How a request body that stopped coming is described (the start of
/// `api::BodyTimedOut`'s message, which reaches the app layer as text).
pub const BODY_TIMED_OUT: &str = "no request body data for";

/// Shorthand for results with the controller's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` with a user-facing `message`.
    pub fn new(kind: Kind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            code: None,
            source: None,
            retry_after: None,
        }
    }

    /// Adds a `Retry-After` of `secs` to the answer.
    pub fn with_retry_after(mut self, secs: u64) -> Error {
        self.retry_after = Some(secs);
        self
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Error {
        Error::new(Kind::BadRequest, message)
    }
    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Error {
        Error::new(Kind::Unauthorized, message)
    }
    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Error {
        Error::new(Kind::Forbidden, message)
    }
    /// 404.
    pub fn not_found(message: impl Into<String>) -> Error {
        Error::new(Kind::NotFound, message)
    }
    /// 409.
    pub fn conflict(message: impl Into<String>) -> Error {
        Error::new(Kind::Conflict, message)
    }
    /// 413.
    pub fn too_large(message: impl Into<String>) -> Error {
        Error::new(Kind::PayloadTooLarge, message)
    }
    /// 501.
    pub fn not_implemented(message: impl Into<String>) -> Error {
        Error::new(Kind::NotImplemented, message)
    }

    /// 500 with a generic message for the user; `context` and `source` are
    /// logged when the error reaches the edge.
    pub fn internal(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        let context = context.into();
        Error {
            kind: Kind::Internal,
            message: "An unexpected error prevented the server from fulfilling your request."
                .into(),
            code: None,
            source: Some(Box::new(Contextual {
                context,
                source: source.into(),
            })),
            retry_after: None,
        }
    }

    /// Attaches a machine-readable code.
    pub fn with_code(mut self, code: &'static str) -> Error {
        self.code = Some(code);
        self
    }

    /// Whether this is a `kind` error.
    pub fn is(&self, kind: Kind) -> bool {
        self.kind == kind
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(code) = self.code {
            d.field("code", &code);
        }
        if let Some(source) = &self.source {
            d.field("source", &format_args!("{source}"));
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

/// An internal cause with a sentence of context.
#[derive(Debug)]
struct Contextual {
    context: String,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl fmt::Display for Contextual {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, self.source)
    }
}

impl std::error::Error for Contextual {}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Error {
        if let sqlx::Error::Database(db) = &e {
            match db.kind() {
                sqlx::error::ErrorKind::UniqueViolation => {
                    let what = db.constraint().map(str::to_owned).unwrap_or_else(|| {
                        // SQLite names the columns instead: "UNIQUE constraint failed: t.c".
                        db.message()
                            .rsplit(": ")
                            .next()
                            .unwrap_or_default()
                            .to_owned()
                    });
                    let mut err = Error::conflict(format!("Duplicate entry ({what})."));
                    err.source = Some(Box::new(e));
                    return err;
                }
                // SQLSTATE class 22, "data exception": a value the database
                // refuses (a NUL in text, a number out of range, a string too
                // long) came from the request.
                // (A SQLSTATE has five characters; SQLite's codes are numbers.)
                _ if db
                    .code()
                    .is_some_and(|c| c.len() == 5 && c.starts_with("22")) =>
                {
                    let mut err = Error::bad_request(
                        "Invalid input: the database refused a value of the request.",
                    );
                    err.source = Some(Box::new(e));
                    return err;
                }
                sqlx::error::ErrorKind::ForeignKeyViolation => {
                    let mut err =
                        Error::conflict("The object refers to, or is referred to by, another.");
                    err.source = Some(Box::new(e));
                    return err;
                }
                _ => {}
            }
        }
        if matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed) {
            let mut err = Error::new(
                Kind::ServiceUnavailable,
                "The database is busy; try again later.",
            );
            err.source = Some(Box::new(e));
            return err;
        }
        Error::internal("database", e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::internal("i/o", e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_hide_their_cause() {
        let e = Error::internal("reading the store", std::io::Error::other("disk on fire"));
        assert_eq!(e.kind.status(), 500);
        assert!(!e.message.contains("disk on fire"));
        let shown = format!("{:?}", e);
        assert!(shown.contains("disk on fire"), "{shown}");
    }

    #[test]
    fn every_kind_has_a_distinct_status_and_name() {
        let kinds = [
            Kind::BadRequest,
            Kind::Unauthorized,
            Kind::Forbidden,
            Kind::NotFound,
            Kind::MethodNotAllowed,
            Kind::NotAcceptable,
            Kind::Conflict,
            Kind::PayloadTooLarge,
            Kind::UnsupportedMediaType,
            Kind::Internal,
            Kind::NotImplemented,
            Kind::ServiceUnavailable,
        ];
        let statuses: std::collections::HashSet<_> = kinds.iter().map(|k| k.status()).collect();
        let names: std::collections::HashSet<_> = kinds.iter().map(|k| k.nova_name()).collect();
        assert_eq!(statuses.len(), kinds.len());
        assert_eq!(names.len(), kinds.len());
    }
}
