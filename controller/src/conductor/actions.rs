//! Actions on existing instances, accepted by the API (which checked the
//! state, set the `task_state` and recorded the instance action):
//!
//! ```text
//! power:  ids ─► check ─► cast power_action ─► wait for the report ─► finish
//!                 │undo: clear the task state (the vm_state stays)
//! delete: builds ─► check ─► cast terminate_instance ─► wait ─► free ─► finish
//!                   (a host that is down is not waited for: local delete)
//! ```
//!
//! A timeout, an error report or a host that goes down unwinds the saga:
//! the task state is cleared, the instance action's event says `Error`, and
//! the instance keeps the state it was in (a failed delete puts it in
//! ERROR, as Nova does). Nothing stays in a task state.

use std::time::Duration;

use mica_rpc::RemoteError;
use mica_rpc::Topic;
use mica_rpc::compute::{self, PowerAction, PowerActionRequest};
use mica_rpc::conductor::{ActionFinished, InstanceAction, RunInstanceActionRequest, Terminated};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::build::{cast_terminate, deadline, free_allocations};
use super::{Conductor, persist};
use crate::app::compute::lifecycle;
use crate::app::compute::states::{power, task, vm};
use crate::db::instances::{self, Change, Expect, InstanceRow};
use crate::db::sagas as saga_store;
use crate::error::Result;
use crate::saga::{BoxFut, Engine, Failure, SagaKind, Step, StepCx, StepError, output};

/// A power action on an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PowerParams {
    /// The instance.
    pub instance_uuid: String,
    /// The API request (its instance action).
    pub request_id: String,
    /// What to do.
    pub action: InstanceAction,
}

/// Deleting an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeleteParams {
    /// The instance.
    pub instance_uuid: String,
    /// The API request (its instance action).
    pub request_id: String,
}

/// The task state the API set for `action`, the vm_state it ends in, and
/// the instance action event's name.
pub fn plan(action: &InstanceAction) -> (&'static str, &'static str, &'static str) {
    match action {
        InstanceAction::Stop => (task::POWERING_OFF, vm::STOPPED, "compute_stop_instance"),
        InstanceAction::Start => (task::POWERING_ON, vm::ACTIVE, "compute_start_instance"),
        InstanceAction::Reboot { hard: false } => {
            (task::REBOOTING, vm::ACTIVE, "compute_reboot_instance")
        }
        InstanceAction::Reboot { hard: true } => {
            (task::REBOOTING_HARD, vm::ACTIVE, "compute_reboot_instance")
        }
        InstanceAction::Pause => (task::PAUSING, vm::PAUSED, "compute_pause_instance"),
        InstanceAction::Unpause => (task::UNPAUSING, vm::ACTIVE, "compute_unpause_instance"),
        InstanceAction::Suspend => (task::SUSPENDING, vm::SUSPENDED, "compute_suspend_instance"),
        InstanceAction::Resume => (task::RESUMING, vm::ACTIVE, "compute_resume_instance"),
        InstanceAction::Delete => (task::DELETING, vm::DELETED, EVENT_DELETE),
    }
}

/// The event of a delete.
pub const EVENT_DELETE: &str = "compute_terminate_instance";

/// The signal key of an action report.
pub fn action_key(instance: &str, request_id: &str) -> String {
    format!("action:{instance}:{request_id}")
}

/// The signal key of a terminate report.
pub fn terminate_key(instance: &str, host: &str) -> String {
    format!("terminate:{instance}:{host}")
}

/// The power action saga.
pub struct PowerSaga;

/// The delete saga.
pub struct DeleteSaga;

type PCx = StepCx<Conductor, PowerParams>;
type DCx = StepCx<Conductor, DeleteParams>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Checked {
    host: Option<String>,
    gone: bool,
}

fn gone(uuid: &str) -> StepError {
    StepError::Fail(Failure::new(
        format!("Instance {uuid} could not be found."),
        "",
    ))
}

impl SagaKind<Conductor> for PowerSaga {
    const KIND: &'static str = "instance_action";
    type Params = PowerParams;

    fn steps() -> Vec<Step<Conductor, PowerParams>> {
        vec![
            Step::forward("ids", |cx| Box::pin(p_ids(cx))),
            Step::new(
                "check",
                |cx| Box::pin(p_check(cx)),
                |cx| Box::pin(p_uncheck(cx)),
            ),
            Step::forward("cast", |cx| Box::pin(p_cast(cx))),
            Step::forward("wait", |cx| Box::pin(p_wait(cx))),
            Step::forward("finish", |cx| Box::pin(p_finish(cx))),
        ]
    }

    fn target(p: &PowerParams) -> Option<String> {
        Some(p.instance_uuid.clone())
    }

    fn unwound(cx: PCx, failure: Failure) -> BoxFut<Result<(), StepError>> {
        Box::pin(async move {
            let (_, _, event) = plan(&cx.params.action);
            let host: Option<Checked> = cx.output("check").ok();
            finish_event(
                &cx.ctx,
                &cx.params.instance_uuid,
                &cx.params.request_id,
                event,
                host.and_then(|c| c.host).as_deref(),
                false,
                Some(&failure.message),
            )
            .await?;
            tracing::warn!(instance = %cx.params.instance_uuid, action = event, message = %failure.message, "instance action failed");
            Ok(())
        })
    }
}

async fn p_ids(_cx: PCx) -> Result<Value, StepError> {
    output(&uuid::Uuid::new_v4().to_string())
}

async fn p_check(cx: PCx) -> Result<Value, StepError> {
    let p = &cx.params;
    let (expected, _, event) = plan(&p.action);
    let inst = instances::get_instance(cx.ctx.app.db.pool(), &p.instance_uuid)
        .await?
        .ok_or_else(|| gone(&p.instance_uuid))?;
    if inst.task_state.as_deref() != Some(expected) {
        return Err(Failure::new(
            format!(
                "Instance {} is no longer {expected} (task state {:?}).",
                p.instance_uuid, inst.task_state
            ),
            "",
        )
        .into());
    }
    let Some(host) = inst.host.clone() else {
        return Err(
            Failure::new(format!("Instance {} is on no host.", p.instance_uuid), "").into(),
        );
    };
    start_event(&cx.ctx, &p.instance_uuid, &p.request_id, event, Some(&host)).await?;
    output(&Checked {
        host: Some(host),
        gone: false,
    })
}

async fn p_uncheck(cx: PCx) -> Result<(), StepError> {
    let p = &cx.params;
    let (expected, _, _) = plan(&p.action);
    instances::update_instance(
        cx.ctx.app.db.pool(),
        &p.instance_uuid,
        &Expect {
            task_state: Some(Some(expected.into())),
            ..Expect::default()
        },
        &Change {
            task_state: Some(None),
            ..Change::default()
        },
    )
    .await?;
    Ok(())
}

fn agent_action(c: &Conductor, action: &InstanceAction, vmm_id: String) -> compute::Action {
    let shutdown_timeout_s = c.cfg().shutdown_timeout_secs;
    match action {
        InstanceAction::Stop => compute::Action::Stop { shutdown_timeout_s },
        InstanceAction::Start => compute::Action::Start { vmm_id },
        InstanceAction::Reboot { hard } => compute::Action::Reboot {
            hard: *hard,
            vmm_id,
            shutdown_timeout_s,
        },
        InstanceAction::Pause => compute::Action::Pause,
        InstanceAction::Unpause => compute::Action::Unpause,
        InstanceAction::Suspend => compute::Action::Suspend,
        // Delete has its own saga.
        InstanceAction::Resume | InstanceAction::Delete => compute::Action::Resume,
    }
}

async fn p_cast(cx: PCx) -> Result<Value, StepError> {
    let p = &cx.params;
    let checked: Checked = cx.output("check")?;
    let host = checked.host.unwrap_or_default();
    let vmm_id: String = cx.output("ids")?;
    cx.ctx
        .rpc
        .cast_method::<PowerAction>(
            Topic::compute(&host),
            &PowerActionRequest {
                instance_uuid: p.instance_uuid.clone(),
                request_id: p.request_id.clone(),
                action: agent_action(&cx.ctx, &p.action, vmm_id),
            },
        )
        .await
        .map_err(|e| StepError::Transient(format!("casting power_action: {e}")))?;
    output(&host)
}

const CHECK_EVERY: Duration = Duration::from_secs(2);

/// What a finished power action reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Outcome {
    power_state: u8,
    vmm_id: Option<String>,
}

async fn p_wait(cx: PCx) -> Result<Value, StepError> {
    let p = &cx.params;
    let host: String = cx.output("cast")?;
    let key = action_key(&p.instance_uuid, &p.request_id);
    let cfg = cx.ctx.cfg();
    let timeout = cfg.action_timeout_secs + cfg.shutdown_timeout_secs;
    let deadline = deadline(cx.started_at, timeout);
    let mut waiter = cx.waiter(&key);
    loop {
        let until = match deadline {
            Some(d) => d.min(tokio::time::Instant::now() + CHECK_EVERY),
            None => tokio::time::Instant::now() + CHECK_EVERY,
        };
        if let Some(v) = waiter.wait(until).await? {
            let report: ActionFinished = serde_json::from_value(v).map_err(|e| {
                StepError::Fail(Failure::new(
                    "An internal error occurred.",
                    format!("action report: {e}"),
                ))
            })?;
            return match report.result {
                Ok(state) => output(&Outcome {
                    power_state: state.code(),
                    vmm_id: report.vmm_id,
                }),
                Err(f) => Err(Failure::new(f.message, f.details).into()),
            };
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return Err(Failure::new(
                format!("Timed out waiting for compute host {host}."),
                format!("no report within {timeout} s"),
            )
            .into());
        }
        if !cx.ctx.host_is_up(&host).await? {
            return Err(Failure::new(format!("Compute host {host} is down."), "").into());
        }
        if instances::get_instance(cx.ctx.app.db.pool(), &p.instance_uuid)
            .await?
            .is_none()
        {
            return Err(gone(&p.instance_uuid));
        }
    }
}

async fn p_finish(cx: PCx) -> Result<Value, StepError> {
    let p = &cx.params;
    let (expected, target, event) = plan(&p.action);
    let host: String = cx.output("cast")?;
    let outcome: Outcome = cx.output("wait")?;
    let db = &cx.ctx.app.db;
    let done = db
        .retry(|| async {
            let mut tx = db.begin().await?;
            let g = instances::update_instance(
                &mut *tx,
                &p.instance_uuid,
                &Expect {
                    task_state: Some(Some(expected.into())),
                    ..Expect::default()
                },
                &Change {
                    vm_state: Some(target.into()),
                    task_state: Some(None),
                    power_state: Some(i64::from(outcome.power_state)),
                    vmm_id: Some(outcome.vmm_id.clone()),
                    ..Change::default()
                },
            )
            .await?;
            if g.is_none() {
                return Ok(false);
            }
            instances::finish_event(
                &mut tx,
                &p.instance_uuid,
                &p.request_id,
                event,
                Some(&host),
                true,
                None,
                None,
            )
            .await?;
            instances::finish_action(&mut *tx, &p.instance_uuid, &p.request_id, false).await?;
            tx.commit().await?;
            Ok(true)
        })
        .await?;
    if !done {
        let inst = instances::get_instance(db.pool(), &p.instance_uuid)
            .await?
            .ok_or_else(|| gone(&p.instance_uuid))?;
        if !(inst.task_state.is_none() && inst.vm_state == target) {
            return Err(Failure::new(
                format!("Instance {} changed while {expected}.", p.instance_uuid),
                format!(
                    "vm_state {} task_state {:?}",
                    inst.vm_state, inst.task_state
                ),
            )
            .into());
        }
    }
    output(&())
}

// ---- delete ----------------------------------------------------------------------

impl SagaKind<Conductor> for DeleteSaga {
    const KIND: &'static str = "delete";
    type Params = DeleteParams;

    fn steps() -> Vec<Step<Conductor, DeleteParams>> {
        vec![
            Step::forward("builds", |cx| Box::pin(d_builds(cx))),
            Step::new(
                "check",
                |cx| Box::pin(d_check(cx)),
                |cx| Box::pin(d_uncheck(cx)),
            ),
            Step::forward("terminate", |cx| Box::pin(d_terminate(cx))),
            Step::forward("wait", |cx| Box::pin(d_wait(cx))),
            Step::forward("free", |cx| Box::pin(d_free(cx))),
            Step::forward("finish", |cx| Box::pin(d_finish(cx))),
        ]
    }

    fn target(p: &DeleteParams) -> Option<String> {
        Some(p.instance_uuid.clone())
    }

    fn unwound(cx: DCx, failure: Failure) -> BoxFut<Result<(), StepError>> {
        Box::pin(async move {
            let p = &cx.params;
            let host: Option<String> = cx.output::<Checked>("check").ok().and_then(|c| c.host);
            let message = format!(
                "Failed to delete instance {}: {}",
                p.instance_uuid, failure.message
            );
            let db = &cx.ctx.app.db;
            db.retry(|| async {
                let mut tx = db.begin().await?;
                let g = instances::update_instance(
                    &mut *tx,
                    &p.instance_uuid,
                    &Expect::default(),
                    &Change {
                        vm_state: Some(vm::ERROR.into()),
                        task_state: Some(None),
                        ..Change::default()
                    },
                )
                .await?;
                if g.is_some() {
                    instances::record_fault(
                        &mut *tx,
                        &p.instance_uuid,
                        500,
                        &message,
                        &failure.details,
                        host.as_deref(),
                    )
                    .await?;
                    instances::finish_event(
                        &mut tx,
                        &p.instance_uuid,
                        &p.request_id,
                        EVENT_DELETE,
                        host.as_deref(),
                        false,
                        Some(&message),
                        None,
                    )
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            })
            .await?;
            tracing::warn!(instance = %p.instance_uuid, %message, "delete failed; instance in ERROR");
            Ok(())
        })
    }
}

async fn d_builds(cx: DCx) -> Result<Value, StepError> {
    // A build still running for this instance sees the `deleting` task
    // state at its next step and unwinds (freeing its claim, cleaning its
    // host); wait for that, so that what we delete is what is left.
    let uuid = &cx.params.instance_uuid;
    let give_up = deadline(cx.started_at, 300);
    loop {
        let sagas = saga_store::sagas_of_target(cx.ctx.app.db.pool(), uuid).await?;
        let building = sagas.iter().any(|s| {
            s.kind == <super::build::Build as SagaKind<Conductor>>::KIND
                && saga_store::state::ACTIVE.contains(&s.state.as_str())
        });
        if !building {
            return output(&());
        }
        if give_up.is_some_and(|d| tokio::time::Instant::now() >= d) {
            tracing::warn!(instance = %uuid, "a build saga is still running after 5 minutes; deleting anyway");
            return output(&());
        }
        cx.idle(Duration::from_millis(200)).await;
    }
}

async fn d_check(cx: DCx) -> Result<Value, StepError> {
    let p = &cx.params;
    let Some(inst) = instances::get_instance(cx.ctx.app.db.pool(), &p.instance_uuid).await? else {
        return output(&Checked {
            host: None,
            gone: true,
        });
    };
    if inst.task_state.as_deref() != Some(task::DELETING) {
        return Err(Failure::new(
            format!(
                "Instance {} is no longer being deleted (task state {:?}).",
                p.instance_uuid, inst.task_state
            ),
            "",
        )
        .into());
    }
    start_event(
        &cx.ctx,
        &p.instance_uuid,
        &p.request_id,
        EVENT_DELETE,
        inst.host.as_deref(),
    )
    .await?;
    output(&Checked {
        host: inst.host.clone(),
        gone: false,
    })
}

async fn d_uncheck(cx: DCx) -> Result<(), StepError> {
    instances::update_instance(
        cx.ctx.app.db.pool(),
        &cx.params.instance_uuid,
        &Expect {
            task_state: Some(Some(task::DELETING.into())),
            ..Expect::default()
        },
        &Change {
            task_state: Some(None),
            ..Change::default()
        },
    )
    .await?;
    Ok(())
}

async fn d_terminate(cx: DCx) -> Result<Value, StepError> {
    let checked: Checked = cx.output("check")?;
    let Some(host) = checked.host.filter(|_| !checked.gone) else {
        return output(&None::<String>);
    };
    if !cx.ctx.host_is_up(&host).await? {
        tracing::warn!(instance = %cx.params.instance_uuid, %host, "compute host is down: deleting the instance locally");
        return output(&None::<String>);
    }
    let key = terminate_key(&cx.params.instance_uuid, &host);
    cx.engine().clear_signal(&key).await?;
    cast_terminate(
        &cx.ctx,
        &host,
        &cx.params.instance_uuid,
        cx.ctx.cfg().shutdown_timeout_secs,
    )
    .await?;
    output(&Some(host))
}

async fn d_wait(cx: DCx) -> Result<Value, StepError> {
    let Some(host) = cx.output::<Option<String>>("terminate")? else {
        return output(&());
    };
    let key = terminate_key(&cx.params.instance_uuid, &host);
    let cfg = cx.ctx.cfg();
    let timeout = cfg.action_timeout_secs + cfg.shutdown_timeout_secs;
    let deadline = deadline(cx.started_at, timeout);
    let mut waiter = cx.waiter(&key);
    loop {
        let until = match deadline {
            Some(d) => d.min(tokio::time::Instant::now() + CHECK_EVERY),
            None => tokio::time::Instant::now() + CHECK_EVERY,
        };
        if let Some(v) = waiter.wait(until).await? {
            let report: Terminated = serde_json::from_value(v).map_err(|e| {
                StepError::Fail(Failure::new(
                    "An internal error occurred.",
                    format!("terminate report: {e}"),
                ))
            })?;
            return match report.result {
                Ok(()) => output(&()),
                Err(f) => Err(Failure::new(f.message, f.details).into()),
            };
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return Err(Failure::new(
                format!("Timed out waiting for compute host {host} to terminate the instance."),
                format!("no report within {timeout} s"),
            )
            .into());
        }
        if !cx.ctx.host_is_up(&host).await? {
            tracing::warn!(instance = %cx.params.instance_uuid, %host, "compute host went down: deleting the instance locally");
            return output(&());
        }
    }
}

async fn d_free(cx: DCx) -> Result<Value, StepError> {
    free_allocations(&cx.ctx.app, &cx.params.instance_uuid).await?;
    output(&())
}

async fn d_finish(cx: DCx) -> Result<Value, StepError> {
    let p = &cx.params;
    let host: Option<String> = cx.output::<Checked>("check")?.host;
    let app = &cx.ctx.app;
    {
        let mut conn = app
            .db
            .pool()
            .acquire()
            .await
            .map_err(crate::error::Error::from)?;
        instances::finish_event(
            &mut conn,
            &p.instance_uuid,
            &p.request_id,
            EVENT_DELETE,
            host.as_deref(),
            true,
            None,
            None,
        )
        .await?;
        instances::finish_action(&mut *conn, &p.instance_uuid, &p.request_id, false).await?;
    }
    let deleted = lifecycle::finish_delete(
        app,
        &p.instance_uuid,
        &Expect {
            task_state: Some(Some(task::DELETING.into())),
            ..Expect::default()
        },
    )
    .await?;
    if !deleted && let Some(inst) = instances::get_instance(app.db.pool(), &p.instance_uuid).await?
    {
        return Err(Failure::new(
            format!(
                "Instance {} changed while it was being deleted.",
                p.instance_uuid
            ),
            format!(
                "vm_state {} task_state {:?}",
                inst.vm_state, inst.task_state
            ),
        )
        .into());
    }
    output(&())
}

// ---- shared ------------------------------------------------------------------------

async fn start_event(
    c: &Conductor,
    uuid: &str,
    request_id: &str,
    event: &str,
    host: Option<&str>,
) -> Result<()> {
    let mut conn = c.app.db.pool().acquire().await?;
    instances::start_event(&mut conn, uuid, request_id, event, host).await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn finish_event(
    c: &Conductor,
    uuid: &str,
    request_id: &str,
    event: &str,
    host: Option<&str>,
    ok: bool,
    details: Option<&str>,
) -> Result<()> {
    let mut conn = c.app.db.pool().acquire().await?;
    instances::finish_event(&mut conn, uuid, request_id, event, host, ok, details, None).await?;
    instances::finish_action(&mut *conn, uuid, request_id, !ok).await?;
    Ok(())
}

/// The saga id of an action.
pub fn saga_id(req: &RunInstanceActionRequest) -> String {
    match req.action {
        InstanceAction::Delete => format!("delete:{}:{}", req.instance_uuid, req.request_id),
        _ => format!("action:{}:{}", req.instance_uuid, req.request_id),
    }
}

/// `run_instance_action` from the API: the saga of the action (a
/// redelivered request creates nothing new).
pub async fn run_instance_action(
    engine: &Engine<Conductor>,
    req: RunInstanceActionRequest,
) -> std::result::Result<(), RemoteError> {
    let id = saga_id(&req);
    match req.action {
        InstanceAction::Delete => {
            let params = DeleteParams {
                instance_uuid: req.instance_uuid.clone(),
                request_id: req.request_id.clone(),
            };
            persist("creating a delete saga", || {
                engine.create::<DeleteSaga>(&id, &params)
            })
            .await?;
        }
        _ => {
            let params = PowerParams {
                instance_uuid: req.instance_uuid.clone(),
                request_id: req.request_id.clone(),
                action: req.action.clone(),
            };
            persist("creating an action saga", || {
                engine.create::<PowerSaga>(&id, &params)
            })
            .await?;
        }
    }
    Ok(())
}

/// Whether an instance row is on `host` and free of tasks (power sync).
pub fn idle_on(inst: &InstanceRow, host: &str) -> bool {
    inst.host.as_deref() == Some(host) && inst.task_state.is_none()
}

/// The vm_state a power state found by the sync implies, if any (Nova's
/// `_sync_instance_power_state`: a VMM that stopped makes an active
/// instance stopped; nothing is restarted behind the user's back).
pub fn synced_vm_state(vm_state: &str, power_state: i64) -> Option<&'static str> {
    match (vm_state, power_state) {
        (vm::ACTIVE, power::SHUTDOWN | power::CRASHED | power::NOSTATE) => Some(vm::STOPPED),
        (vm::PAUSED | vm::SUSPENDED, power::SHUTDOWN | power::CRASHED | power::NOSTATE) => {
            Some(vm::STOPPED)
        }
        _ => None,
    }
}
