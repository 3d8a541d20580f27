//! The app layer: validation, policy, names to ids, between the thin HTTP
//! handlers (`api`) and the datastore (`db`). Nothing here knows about HTTP
//! and nothing here holds SQL.

pub mod compute;
pub mod identity;
pub mod images;
pub mod metadata;
pub mod network;
pub mod placement;

use std::sync::Arc;

use crate::config::Config;
use crate::db::Db;
use crate::error::{Error, Result};
use crate::policy::Policy;

/// The OpenStack APIs Mica serves, each on its own listener and catalog entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceKind {
    /// Keystone v3.
    Identity,
    /// Nova v2.1.
    Compute,
    /// Glance v2.
    Image,
    /// Placement.
    Placement,
    /// Neutron v2.0 subset.
    Network,
    /// The metadata service for guests.
    Metadata,
    /// noVNC and serial console proxy.
    ConsoleProxy,
}

impl ServiceKind {
    /// Every service, in catalog order.
    pub const ALL: [ServiceKind; 7] = [
        ServiceKind::Identity,
        ServiceKind::Compute,
        ServiceKind::Image,
        ServiceKind::Placement,
        ServiceKind::Network,
        ServiceKind::Metadata,
        ServiceKind::ConsoleProxy,
    ];

    /// The catalog `type`.
    pub fn catalog_type(self) -> &'static str {
        match self {
            ServiceKind::Identity => "identity",
            ServiceKind::Compute => "compute",
            ServiceKind::Image => "image",
            ServiceKind::Placement => "placement",
            ServiceKind::Network => "network",
            ServiceKind::Metadata => "metadata",
            ServiceKind::ConsoleProxy => "console-proxy",
        }
    }

    /// The catalog `name` (the OpenStack service it stands in for).
    pub fn catalog_name(self) -> &'static str {
        match self {
            ServiceKind::Identity => "keystone",
            ServiceKind::Compute => "nova",
            ServiceKind::Image => "glance",
            ServiceKind::Placement => "placement",
            ServiceKind::Network => "neutron",
            ServiceKind::Metadata => "nova-metadata",
            ServiceKind::ConsoleProxy => "nova-novncproxy",
        }
    }

    /// The path the catalog URL ends with.
    pub fn url_path(self) -> &'static str {
        match self {
            ServiceKind::Identity => "/v3",
            ServiceKind::Compute => "/v2.1",
            _ => "",
        }
    }

    /// The `[api]` listen address of this service.
    pub fn listen(self, c: &crate::config::Api) -> &str {
        match self {
            ServiceKind::Identity => &c.identity_listen,
            ServiceKind::Compute => &c.compute_listen,
            ServiceKind::Image => &c.image_listen,
            ServiceKind::Placement => &c.placement_listen,
            ServiceKind::Network => &c.network_listen,
            ServiceKind::Metadata => &c.metadata_listen,
            ServiceKind::ConsoleProxy => &c.console_proxy_listen,
        }
    }

    /// The `[api]` public URL override of this service.
    pub fn public_url_override(self, c: &crate::config::Api) -> &str {
        match self {
            ServiceKind::Identity => &c.identity_public_url,
            ServiceKind::Compute => &c.compute_public_url,
            ServiceKind::Image => &c.image_public_url,
            ServiceKind::Placement => &c.placement_public_url,
            ServiceKind::Network => &c.network_public_url,
            ServiceKind::Metadata => &c.metadata_public_url,
            ServiceKind::ConsoleProxy => &c.console_proxy_public_url,
        }
    }

    /// The public URL clients use: the override when set, otherwise
    /// `http://<public_host>:<listen port><path>`. `None` when the service has
    /// no listener and no override.
    pub fn public_url(self, c: &crate::config::Api) -> Option<String> {
        let o = self.public_url_override(c);
        if !o.is_empty() {
            return Some(o.trim_end_matches('/').to_owned());
        }
        let listen = self.listen(c);
        let port = listen.rsplit(':').next()?.parse::<u16>().ok()?;
        Some(format!(
            "http://{}:{}{}",
            c.public_host,
            port,
            self.url_path()
        ))
    }
}

/// Shared state of the app layer: the database, the configuration, the
/// policy, the image store, and the message bus.
pub struct App {
    /// The database.
    pub db: Db,
    /// The configuration.
    pub config: Arc<Config>,
    /// The policy rules in force.
    pub policy: Policy,
    /// Where image data lives.
    pub images: images::Store,
    /// The RPC bus (`[messaging] transport_url`), once connected
    /// ([`App::connect_rpc`]).
    rpc: std::sync::OnceLock<mica_rpc::Rpc>,
    /// Turns for Argon2 runs (`[identity] max_concurrent_password_checks`).
    pub password_checks: Arc<tokio::sync::Semaphore>,
}

impl App {
    /// Builds the app layer over a connected database.
    pub fn new(db: Db, config: Arc<Config>) -> Result<App> {
        let policy = Policy::new(&config.policy).map_err(Error::bad_request)?;
        let images = images::Store::open(&config.image.store_dir)?;
        let password_checks = Arc::new(tokio::sync::Semaphore::new(
            config.identity.max_concurrent_password_checks.max(1),
        ));
        Ok(App {
            db,
            config,
            policy,
            images,
            rpc: std::sync::OnceLock::new(),
            password_checks,
        })
    }

    /// Connects to the RPC bus of `[messaging] transport_url` (once; later
    /// calls keep the first connection).
    pub async fn connect_rpc(&self) -> Result<()> {
        if self.rpc.get().is_some() {
            return Ok(());
        }
        let m = &self.config.messaging;
        let options = crate::roles::rpc_options(m, "mica-controller api");
        let rpc = mica_rpc::Rpc::connect_with(&m.transport_url, options)
            .await
            .map_err(|e| {
                Error::new(
                    crate::error::Kind::ServiceUnavailable,
                    "The message bus is unavailable.",
                )
                .with_source(e)
            })?;
        let _ = self.rpc.set(rpc);
        Ok(())
    }

    /// Uses an already connected bus (tests, and roles sharing one).
    pub fn set_rpc(&self, rpc: mica_rpc::Rpc) {
        let _ = self.rpc.set(rpc);
    }

    /// The RPC bus; 503 when it was never connected.
    pub fn rpc(&self) -> Result<&mica_rpc::Rpc> {
        self.rpc.get().ok_or_else(|| {
            Error::new(
                crate::error::Kind::ServiceUnavailable,
                "The message bus is not connected.",
            )
        })
    }
}

/// A new id in Keystone's style: 32 lowercase hex digits.
pub fn hex_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
