//! The scheduler and conductor roles of a controller process, over the bus
//! of `[messaging] transport_url`.
//!
//! - `scheduler`: a [`Scheduler`] with its host cache, serving
//!   `select_destinations` on the `scheduler` topic.
//! - `conductor`: the sagas and the `conductor` topic. It uses the
//!   scheduler of its own process when there is one (`all`, or
//!   `scheduler conductor`), and the `scheduler` topic otherwise.
//!
//! Any number of processes may run either role on one database and bus:
//! schedulers' claims are checked, conductors share sagas by lease.

use std::sync::Arc;
use std::time::Duration;

use mica_rpc::{Rpc, RpcOptions, Server};
use tokio::task::JoinHandle;

use crate::app::App;
use crate::conductor::{self, ConductorOptions};
use crate::error::{Error, Kind, Result};
use crate::scheduler::Scheduler;
use crate::scheduler::rpc::{self as sched_rpc, SchedulerClient};

/// Connects to the bus of `[messaging] transport_url`.
pub async fn connect(app: &App, name: &str) -> Result<Rpc> {
    Rpc::connect_with(
        &app.config.messaging.transport_url,
        rpc_options(&app.config.messaging, name),
    )
    .await
    .map_err(|e| {
        Error::new(
            Kind::ServiceUnavailable,
            format!("cannot reach the message bus: {e}"),
        )
    })
}

/// The bus options of `[messaging]`, for a connection called `name`.
pub fn rpc_options(m: &crate::config::Messaging, name: &str) -> RpcOptions {
    RpcOptions {
        connection_name: Some(name.to_owned()),
        namespace: m.namespace.clone(),
        queue_expiry: (m.queue_expiry_secs > 0).then(|| Duration::from_secs(m.queue_expiry_secs)),
        ..RpcOptions::default()
    }
}

/// The scheduler and conductor roles running in this process.
#[derive(Default)]
pub struct Workers {
    scheduler: Option<(Arc<Scheduler>, JoinHandle<()>, Server)>,
    conductor: Option<conductor::Running>,
}

impl Workers {
    /// Starts the scheduler (if `scheduler`) and the conductor (if
    /// `conductor`) on `rpc`.
    pub async fn start(
        app: Arc<App>,
        rpc: Rpc,
        scheduler: bool,
        conductor: bool,
        options: ConductorOptions,
    ) -> Result<Workers> {
        let mut w = Workers::default();
        if scheduler {
            let s = Scheduler::new(app.clone())?;
            let refresher = s.start();
            let server = sched_rpc::serve(&rpc, s.clone()).await.map_err(|e| {
                Error::new(
                    Kind::ServiceUnavailable,
                    format!("cannot serve the scheduler topic: {e}"),
                )
            })?;
            tracing::info!("scheduler running");
            w.scheduler = Some((s, refresher, server));
        }
        if conductor {
            let client = match &w.scheduler {
                Some((s, _, _)) => SchedulerClient::Local(s.clone()),
                None => SchedulerClient::Remote {
                    rpc: rpc.clone(),
                    timeout: Duration::from_secs(app.config.messaging.rpc_timeout_secs.max(1)),
                },
            };
            w.conductor = Some(conductor::Running::start(app, rpc, client, options).await?);
        }
        Ok(w)
    }

    /// The conductor of this process, if it runs one.
    pub fn conductor(&self) -> Option<&conductor::Running> {
        self.conductor.as_ref()
    }

    /// Stops both roles cleanly: messages being handled finish, sagas are
    /// handed over (their leases released).
    pub async fn shutdown(mut self) {
        if let Some(c) = self.conductor.take() {
            c.shutdown().await;
        }
        if let Some((_, refresher, server)) = self.scheduler.take() {
            server.shutdown().await;
            refresher.abort();
        }
    }

    /// Stops both roles at once, as a crash would (tests).
    pub fn halt(mut self) {
        if let Some(c) = self.conductor.take() {
            c.halt();
        }
        if let Some((_, refresher, server)) = self.scheduler.take() {
            drop(server);
            refresher.abort();
        }
    }
}
