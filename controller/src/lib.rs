//! `mica-controller`: the OpenStack-compatible control plane of Mica.
//!
//! Layers, outermost first:
//!
//! - [`api`]: thin HTTP handlers, one router per OpenStack API, and the
//!   edge where errors become each service's error body;
//! - [`app`]: validation, [`policy`], names to ids — no HTTP, no SQL;
//! - [`db`]: the datastore, every SQL statement, PostgreSQL and SQLite.
//!
//! Around them: [`config`] (one TOML file), [`error`] (one error type),
//! [`server`] (roles, listeners, shutdown) and [`testing`] (databases and
//! servers for tests and benchmarks).

pub mod api;
pub mod app;
pub mod conductor;
pub mod config;
pub mod context;
pub mod db;
pub mod error;
pub mod policy;
pub mod roles;
pub mod saga;
pub mod scheduler;
pub mod server;
pub mod testing;

pub use error::{Error, Kind, Result};
