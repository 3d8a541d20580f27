//! The scheduler as an RPC service on the `scheduler` topic (Nova's
//! `select_destinations`), and the client the conductor uses: in-process
//! when the same process runs the scheduler role, over the bus otherwise.
//!
//! Both methods are calls and both are safe to repeat: an instance that
//! already holds allocations gets the same host back, so a call that timed
//! out (and may have run) is simply made again.

use std::sync::Arc;
use std::time::Duration;

use mica_rpc::{
    Dispatcher, Method, RemoteError, Rpc, RpcError, Server, Subscription, Topic, Version,
};
use serde::{Deserialize, Serialize};

use super::{Alternate, Placing, RequestSpec, Scheduler, Selection};
use crate::error::{Error, Kind, Result};

/// The version of the scheduler interface.
pub const VERSION: Version = Version::new(1, 0);

/// The outcome for one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectOutcome {
    /// Placed and claimed.
    Selected(Selection),
    /// No host can take it.
    NoValidHost {
        /// Hosts left after each stage.
        details: String,
    },
}

/// Choose and claim hosts for instances of one request.
pub struct SelectDestinations;

/// [`SelectDestinations`]' request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelectRequest {
    /// What every instance needs.
    pub spec: RequestSpec,
    /// The instances, in order.
    pub instances: Vec<Placing>,
}

impl Method for SelectDestinations {
    const NAME: &'static str = "select_destinations";
    type Request = SelectRequest;
    type Response = Vec<SelectOutcome>;
}

/// Claim an instance on the first alternate that takes it.
pub struct ClaimAlternate;

/// [`ClaimAlternate`]'s request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlternateRequest {
    /// What the instance needs.
    pub spec: RequestSpec,
    /// The instance.
    pub instance_uuid: String,
    /// Hosts to try, in order.
    pub alternates: Vec<Alternate>,
}

impl Method for ClaimAlternate {
    const NAME: &'static str = "claim_alternate";
    type Request = AlternateRequest;
    type Response = Option<Selection>;
}

fn remote(e: Error) -> RemoteError {
    RemoteError::new(
        if e.kind == Kind::ServiceUnavailable {
            "unavailable"
        } else {
            "scheduler_error"
        },
        format!("{e:?}"),
    )
}

/// Serves `scheduler` on the `scheduler` topic.
pub async fn serve(rpc: &Rpc, scheduler: Arc<Scheduler>) -> std::result::Result<Server, RpcError> {
    let s1 = scheduler.clone();
    let s2 = scheduler;
    let dispatcher = Dispatcher::new(VERSION)
        .handle_method::<SelectDestinations>(move |_ctx, req: SelectRequest| {
            let s = s1.clone();
            async move {
                select_local(&s, &req.spec, &req.instances)
                    .await
                    .map_err(remote)
            }
        })
        .handle_method::<ClaimAlternate>(move |_ctx, req: AlternateRequest| {
            let s = s2.clone();
            async move {
                s.claim_alternate(&req.spec, &req.instance_uuid, &req.alternates)
                    .await
                    .map_err(remote)
            }
        });
    rpc.serve([Subscription::Topic(Topic::scheduler())], dispatcher)
        .await
}

async fn select_local(
    s: &Scheduler,
    spec: &RequestSpec,
    instances: &[Placing],
) -> Result<Vec<SelectOutcome>> {
    Ok(s.schedule(spec, instances)
        .await?
        .into_iter()
        .map(|r| match r {
            Ok(sel) => SelectOutcome::Selected(sel),
            Err(no) => SelectOutcome::NoValidHost {
                details: no.details,
            },
        })
        .collect())
}

/// How the conductor reaches a scheduler.
#[derive(Clone)]
pub enum SchedulerClient {
    /// The scheduler of this process.
    Local(Arc<Scheduler>),
    /// A scheduler replica over the bus.
    Remote {
        /// The bus.
        rpc: Rpc,
        /// Call timeout.
        timeout: Duration,
    },
}

fn rpc_error(e: RpcError) -> Error {
    // Every failure to get an answer is worth trying again: the methods are
    // safe to repeat.
    Error::new(
        Kind::ServiceUnavailable,
        format!("the scheduler did not answer: {e}"),
    )
}

impl SchedulerClient {
    /// Chooses and claims hosts for `instances`.
    pub async fn select(
        &self,
        spec: &RequestSpec,
        instances: &[Placing],
    ) -> Result<Vec<SelectOutcome>> {
        match self {
            SchedulerClient::Local(s) => select_local(s, spec, instances).await,
            SchedulerClient::Remote { rpc, timeout } => rpc
                .call_method::<SelectDestinations>(
                    Topic::scheduler(),
                    &SelectRequest {
                        spec: spec.clone(),
                        instances: instances.to_vec(),
                    },
                    *timeout,
                )
                .await
                .map_err(rpc_error),
        }
    }

    /// Claims `instance` on the first of `alternates` that takes it.
    pub async fn claim_alternate(
        &self,
        spec: &RequestSpec,
        instance: &str,
        alternates: &[Alternate],
    ) -> Result<Option<Selection>> {
        match self {
            SchedulerClient::Local(s) => s.claim_alternate(spec, instance, alternates).await,
            SchedulerClient::Remote { rpc, timeout } => rpc
                .call_method::<ClaimAlternate>(
                    Topic::scheduler(),
                    &AlternateRequest {
                        spec: spec.clone(),
                        instance_uuid: instance.to_owned(),
                        alternates: alternates.to_vec(),
                    },
                    *timeout,
                )
                .await
                .map_err(rpc_error),
        }
    }
}
