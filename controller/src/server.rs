//! Roles, listeners and graceful shutdown.
//!
//! `mica-controller <role>…` runs one or more roles in one process:
//!
//! | role | what | state |
//! |---|---|---|
//! | `api` | the HTTP APIs, one listener each | identity, compute, image, placement, network |
//! | `scheduler` | placement candidates → filters → weighers, on the `scheduler` topic | implemented ([`crate::roles`]) |
//! | `conductor` | multi-step operations as sagas, on the `conductor` topic | implemented ([`crate::roles`]) |
//! | `console-proxy` | noVNC and serial WebSocket proxy on `[api] console_proxy_listen` | implemented ([`crate::api::console_proxy`]) |
//! | `metadata` | what guests read at 169.254.169.254, through their host's proxy, on `[api] metadata_listen` | implemented ([`crate::api::metadata`]); needs `[metadata] shared_secret` |
//! | `all` | every role, migrations applied at start | runs what exists, says what doesn't |
//!
//! Asking for a role that does not exist yet by name fails at once with a
//! clear message; `all` runs the implemented roles and logs, for each
//! missing one, that it is not implemented yet.
//!
//! SIGINT or SIGTERM stops accepting connections and gives in-flight
//! requests `[api] shutdown_grace_secs` to finish.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api;
use crate::app::{App, ServiceKind, identity, images};
use crate::config::Config;
use crate::db::Db;
use crate::error::{Error, Result};

/// A role of the controller process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// The HTTP APIs.
    Api,
    /// The scheduler.
    Scheduler,
    /// The conductor.
    Conductor,
    /// The console proxy.
    ConsoleProxy,
    /// The metadata service.
    Metadata,
}

impl Role {
    /// Parses a role name; `all` expands to every role.
    pub fn parse(name: &str) -> Option<Vec<Role>> {
        Some(match name {
            "api" => vec![Role::Api],
            "scheduler" => vec![Role::Scheduler],
            "conductor" => vec![Role::Conductor],
            "console-proxy" => vec![Role::ConsoleProxy],
            "metadata" => vec![Role::Metadata],
            "all" => vec![
                Role::Api,
                Role::Scheduler,
                Role::Conductor,
                Role::ConsoleProxy,
                Role::Metadata,
            ],
            _ => return None,
        })
    }

    /// The role's name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Api => "api",
            Role::Scheduler => "scheduler",
            Role::Conductor => "conductor",
            Role::ConsoleProxy => "console-proxy",
            Role::Metadata => "metadata",
        }
    }

    /// Why the role can't run yet, if it can't.
    pub fn not_implemented(self) -> Option<&'static str> {
        match self {
            Role::Api | Role::Scheduler | Role::Conductor | Role::ConsoleProxy | Role::Metadata => {
                None
            }
        }
    }
}

/// The services whose API this build serves (the `api` role's).
pub const IMPLEMENTED_APIS: [ServiceKind; 5] = [
    ServiceKind::Identity,
    ServiceKind::Compute,
    ServiceKind::Image,
    ServiceKind::Placement,
    ServiceKind::Network,
];

/// The role whose listener `kind` is.
pub fn role_of(kind: ServiceKind) -> Role {
    match kind {
        ServiceKind::ConsoleProxy => Role::ConsoleProxy,
        ServiceKind::Metadata => Role::Metadata,
        _ => Role::Api,
    }
}

/// The router of one API, with the shared middleware.
pub fn router(kind: ServiceKind, app: Arc<App>) -> Router {
    let r = match kind {
        ServiceKind::Identity => api::identity::router(app),
        ServiceKind::Image => api::image::router(app),
        ServiceKind::Placement => api::placement::router(app),
        ServiceKind::Compute => api::compute::router(app),
        ServiceKind::Network => api::network::router(app),
        ServiceKind::ConsoleProxy => api::console_proxy::router(app),
        ServiceKind::Metadata => api::metadata::router(app),
    };
    let style = style_of(kind);
    // The console proxy answers a bad token (NUL or not) with its own 401
    // and sends only the token's hash to the database; the metadata service
    // answers guests in plain text.
    let r = if matches!(kind, ServiceKind::ConsoleProxy | ServiceKind::Metadata) {
        r
    } else {
        r.layer(axum::middleware::from_fn(move |req, next| {
            api::refuse_nul(style, req, next)
        }))
    };
    r.layer(axum::middleware::from_fn(api::request_context))
}

/// Binds the listener of every implemented API, of the console proxy and,
/// when `[metadata] shared_secret` is set, of the metadata service, that
/// has a listen address.
pub async fn bind(config: &Config) -> Result<Vec<(ServiceKind, TcpListener)>> {
    let mut roles = vec![Role::Api, Role::ConsoleProxy];
    if config.metadata.shared_secret.is_empty() {
        tracing::warn!("[metadata] shared_secret is empty: not serving the metadata service");
    } else {
        roles.push(Role::Metadata);
    }
    bind_roles(config, &roles).await
}

/// Binds the listeners of `roles` that have a listen address.
pub async fn bind_roles(
    config: &Config,
    roles: &[Role],
) -> Result<Vec<(ServiceKind, TcpListener)>> {
    let mut out = Vec::new();
    for kind in ServiceKind::ALL {
        let addr = kind.listen(&config.api);
        if addr.is_empty() || !roles.contains(&role_of(kind)) {
            continue;
        }
        if role_of(kind) == Role::Api && !IMPLEMENTED_APIS.contains(&kind) {
            tracing::warn!(
                api = kind.catalog_type(),
                listen = addr,
                "this API is not implemented yet; not listening"
            );
            continue;
        }
        let l = TcpListener::bind(addr).await.map_err(|e| {
            Error::internal(
                format!("binding the {} API to {addr}", kind.catalog_type()),
                e,
            )
        })?;
        out.push((kind, l));
    }
    Ok(out)
}

/// Running listeners.
pub struct Server {
    /// Where each API listens.
    pub addrs: BTreeMap<ServiceKind, SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Serves `listeners` until [`Server::shutdown`].
    pub fn start(app: Arc<App>, listeners: Vec<(ServiceKind, TcpListener)>) -> Result<Server> {
        let (stop, _) = watch::channel(false);
        let mut addrs = BTreeMap::new();
        let mut tasks = Vec::new();
        for (kind, listener) in listeners {
            let addr = listener.local_addr()?;
            addrs.insert(kind, addr);
            let router = router(kind, app.clone());
            let rx = stop.subscribe();
            tracing::info!(api = kind.catalog_type(), %addr, "listening");
            let limits = Limits::of(&app.config, kind);
            tasks.push(tokio::spawn(serve(listener, router, limits, rx)));
        }
        // Expired tokens are swept in the background.
        let mut rx = stop.subscribe();
        let sweeper = app.clone();
        tasks.push(tokio::spawn(async move {
            let every =
                Duration::from_secs(sweeper.config.identity.token_cleanup_interval_secs.max(1));
            loop {
                tokio::select! {
                    _ = stopped(&mut rx) => break,
                    _ = tokio::time::sleep(every) => {
                        match identity::sweep_expired_tokens(&sweeper).await {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(deleted = n, "swept expired tokens"),
                            Err(e) => tracing::warn!(error = ?e, "sweeping expired tokens failed"),
                        }
                        match crate::app::compute::consoles::sweep_expired(&sweeper).await {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(deleted = n, "swept expired console tokens"),
                            Err(e) => tracing::warn!(error = ?e, "sweeping expired console tokens failed"),
                        }
                    }
                }
            }
        }));
        Ok(Server { addrs, stop, tasks })
    }

    /// The address of one API.
    pub fn addr(&self, kind: ServiceKind) -> Option<SocketAddr> {
        self.addrs.get(&kind).copied()
    }

    /// Stops accepting, lets in-flight requests finish for up to `grace`,
    /// then aborts what is left.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(true);
        let mut tasks = self.tasks;
        let all = futures_util::future::join_all(tasks.iter_mut());
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("grace period over; aborting the remaining requests");
            for t in &tasks {
                t.abort();
            }
        }
    }
}

/// What one listener allows its clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time to send a complete request head (hyper counts it from when it
    /// waits for one: on a kept-alive connection, the idle time too).
    pub header_timeout: Option<Duration>,
    /// Longest wait for the next piece of a request body.
    pub body_timeout: Option<Duration>,
    /// Connections served at once.
    pub max_connections: usize,
    /// How refusals are written.
    pub style: api::ErrorStyle,
}

impl Limits {
    /// `[api]`'s limits for the listener of `kind`.
    pub fn of(config: &Config, kind: ServiceKind) -> Limits {
        let secs = |s: u64| (s > 0).then(|| Duration::from_secs(s));
        Limits {
            header_timeout: secs(config.api.header_timeout_secs),
            body_timeout: secs(config.api.body_timeout_secs),
            max_connections: if config.api.max_connections == 0 {
                tokio::sync::Semaphore::MAX_PERMITS
            } else {
                config.api.max_connections
            },
            style: style_of(kind),
        }
    }
}

/// How each API writes its errors.
pub fn style_of(kind: ServiceKind) -> api::ErrorStyle {
    match kind {
        ServiceKind::Identity => api::ErrorStyle::Keystone,
        ServiceKind::Placement => api::ErrorStyle::Placement,
        ServiceKind::Network => api::ErrorStyle::Neutron,
        _ => api::ErrorStyle::Nova,
    }
}

/// Serves HTTP/1.1 (with upgrades, for the console proxy's WebSockets) on
/// `listener` until `stop`: each connection under `limits` (a header
/// time-out from hyper, a body time-out from [`api::body_deadline`]), at
/// most `max_connections` at once; one more is answered 503 with
/// Retry-After and closed. On `stop`, accepting ends and every connection
/// finishes its request in flight, then closes.
async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut conns = tokio::task::JoinSet::new();
    let router = match limits.body_timeout {
        Some(t) => router.layer(axum::middleware::from_fn(move |req, next| {
            api::body_deadline(t, req, next)
        })),
        None => router,
    };
    loop {
        let (stream, peer) = tokio::select! {
            _ = stopped(&mut stop) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, most likely: give others a moment.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = limits.max_connections, "too many connections; refusing one");
            tokio::spawn(refuse_busy(stream, limits.style));
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let mut stop = stop.clone();
        conns.spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended");
                    }
                }
                _ = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    while conns.join_next().await.is_some() {}
}

/// Answers a connection beyond the cap: 503 with Retry-After, in the API's
/// error body, then closes it (never waiting on the client for long).
async fn refuse_busy(mut stream: tokio::net::TcpStream, style: api::ErrorStyle) {
    use axum::response::IntoResponse;
    use tokio::io::AsyncWriteExt;
    let e = Error::new(
        crate::error::Kind::ServiceUnavailable,
        "Too many connections; retry shortly.",
    )
    .with_retry_after(1);
    let resp = api::render_error(style, e.into_response(), None, false).await;
    let body = axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), write).await;
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Waits for SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler works");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Runs `roles` until a shutdown signal.
pub async fn run(config: Config, names: &[String]) -> Result<()> {
    let mut roles = Vec::new();
    let mut all = false;
    for n in names {
        let parsed = Role::parse(n).ok_or_else(|| {
            Error::bad_request(format!(
                "unknown role `{n}`: the roles are api, scheduler, conductor, console-proxy, metadata, all"
            ))
        })?;
        all |= n == "all";
        for r in parsed {
            if !roles.contains(&r) {
                roles.push(r);
            }
        }
    }
    roles.sort();
    if roles.contains(&Role::Metadata) && config.metadata.shared_secret.is_empty() {
        if all {
            tracing::warn!("[metadata] shared_secret is empty: not running the metadata role");
            roles.retain(|r| *r != Role::Metadata);
        } else {
            return Err(Error::bad_request(
                "the metadata role needs [metadata] shared_secret (the compute hosts' proxies sign with it)",
            ));
        }
    }
    let mut runnable = Vec::new();
    for r in &roles {
        match r.not_implemented() {
            None => runnable.push(*r),
            Some(why) if all => {
                tracing::warn!(
                    role = r.name(),
                    "role not implemented yet ({why}); not running it"
                )
            }
            Some(why) => {
                return Err(Error::not_implemented(format!(
                    "the `{}` role is not implemented yet ({why})",
                    r.name()
                )));
            }
        }
    }
    let config = Arc::new(config);
    let db = Db::connect(&config.database).await?;
    if all {
        db.migrate().await?;
    } else {
        check_migrated(&db).await?;
    }
    let app = Arc::new(App::new(db.clone(), config.clone())?);
    // The compute API hands work to the conductor over the bus.
    app.connect_rpc().await?;
    // Uploads are the image API's: a scheduler- or conductor-only process
    // leaves the store alone.
    if runnable.contains(&Role::Api) {
        let requeued = images::recover_interrupted_uploads(&app).await?;
        if requeued > 0 {
            tracing::warn!(
                images = requeued,
                "requeued images whose upload was interrupted by a restart"
            );
        }
    }
    let listeners = bind_roles(&config, &runnable).await?;
    let server = Server::start(app.clone(), listeners)?;
    let scheduler = runnable.contains(&Role::Scheduler);
    let conductor = runnable.contains(&Role::Conductor);
    let workers = if scheduler || conductor {
        let rpc = crate::roles::connect(&app, "mica-controller").await?;
        let options = crate::conductor::ConductorOptions::from_config(&app);
        Some(crate::roles::Workers::start(app.clone(), rpc, scheduler, conductor, options).await?)
    } else {
        None
    };
    tracing::info!(
        roles = ?runnable.iter().map(|r| r.name()).collect::<Vec<_>>(),
        "mica-controller running"
    );
    shutdown_signal().await;
    tracing::info!("shutting down");
    if let Some(w) = workers {
        w.shutdown().await;
    }
    server
        .shutdown(Duration::from_secs(config.api.shutdown_grace_secs))
        .await;
    db.close().await;
    Ok(())
}

/// Fails unless every migration of this binary is applied.
pub async fn check_migrated(db: &Db) -> Result<()> {
    let missing: Vec<String> = db
        .missing_migrations()
        .await?
        .into_iter()
        .map(|(v, d)| format!("{v} {d}"))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::new(
            crate::error::Kind::ServiceUnavailable,
            format!(
                "the database is missing migrations ({}); run `mica-controller db sync`",
                missing.join(", ")
            ),
        ))
    }
}

/// The public URL of every Mica API, for the catalog.
pub fn public_urls(config: &Config) -> Vec<(ServiceKind, String)> {
    ServiceKind::ALL
        .iter()
        .filter_map(|k| k.public_url(&config.api).map(|u| (*k, u)))
        .collect()
}
