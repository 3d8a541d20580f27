//! Building an instance: one [`Build`] saga per attempt (see the diagram in
//! [`super`]). Attempt `n + 1` is created by the unwound hook of attempt
//! `n` when its host failed in a way another host might not (a retryable
//! report, a timeout, a host that went down), until `[scheduler]
//! max_attempts`; then, or when no host fits, the instance goes to ERROR
//! with a fault whose details list every attempt.

use std::time::Duration;

use mica_rpc::RemoteError;
use mica_rpc::Topic;
use mica_rpc::compute::{BuildAndRunInstance, BuildRequest, TerminateInstance, TerminateRequest};
use mica_rpc::conductor::{BuildFinished, ScheduleAndBuildRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Conductor, persist, spec};
use crate::app::compute::states::{power, task, vm};
use crate::db::instances::{self, Change, Expect, InstanceRow};
use crate::db::{Timestamp, hosts, network, scheduler as sched_store};
use crate::error::Result;
use crate::saga::{BoxFut, Engine, Failure, SagaKind, Step, StepCx, StepError, output};
use crate::scheduler::rpc::SelectOutcome;
use crate::scheduler::{Alternate, NoValidHost, Placing, Selection};

/// Event names of the `create` instance action (Nova's).
pub const EVENT_SCHEDULE: &str = "conductor_schedule_and_build_instances";
/// The compute side of a build.
pub const EVENT_BUILD: &str = "compute_build_and_run_instance";

/// One attempt at building an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildParams {
    /// The instance.
    pub instance_uuid: String,
    /// The API request that created it (its `create` instance action).
    pub request_id: String,
    /// 1 for the first host, 2 for the first alternate, …
    pub attempt: u32,
    /// Hosts earlier attempts failed on.
    #[serde(default)]
    pub tried: Vec<String>,
    /// Hosts to try next, from the first scheduling decision.
    #[serde(default)]
    pub alternates: Vec<Alternate>,
    /// What went wrong in earlier attempts (for the fault's details).
    #[serde(default)]
    pub failures: Vec<String>,
}

/// The saga id of attempt `attempt` for `instance`.
pub fn saga_id(instance: &str, attempt: u32) -> String {
    format!("build:{instance}:{attempt}")
}

/// The signal key of a build report.
pub fn signal_key(instance: &str, vmm_id: &str) -> String {
    format!("build:{instance}:{vmm_id}")
}

/// The build saga.
pub struct Build;

type Cx = StepCx<Conductor, BuildParams>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Ids {
    vmm_id: String,
}

fn gone(uuid: &str) -> StepError {
    StepError::Fail(Failure::new(
        format!("Instance {uuid} was deleted while it was being built."),
        "",
    ))
}

impl SagaKind<Conductor> for Build {
    const KIND: &'static str = "build";
    type Params = BuildParams;

    fn steps() -> Vec<Step<Conductor, BuildParams>> {
        vec![
            Step::forward("ids", |cx| Box::pin(ids(cx))),
            Step::new(
                "schedule",
                |cx| Box::pin(schedule(cx)),
                |cx| Box::pin(unschedule(cx)),
            ),
            Step::new(
                "assign",
                |cx| Box::pin(assign(cx)),
                |cx| Box::pin(unassign(cx)),
            ),
            Step::new("cast", |cx| Box::pin(cast(cx)), |cx| Box::pin(uncast(cx))),
            Step::forward("wait", |cx| Box::pin(wait(cx))),
            Step::forward("active", |cx| Box::pin(active(cx))),
        ]
    }

    fn target(p: &BuildParams) -> Option<String> {
        Some(p.instance_uuid.clone())
    }

    fn unwound(cx: Cx, failure: Failure) -> BoxFut<Result<(), StepError>> {
        Box::pin(unwound(cx, failure))
    }
}

async fn ids(_cx: Cx) -> Result<Value, StepError> {
    output(&Ids {
        vmm_id: uuid::Uuid::new_v4().to_string(),
    })
}

async fn live(cx: &Cx) -> Result<InstanceRow, StepError> {
    let uuid = &cx.params.instance_uuid;
    instances::get_instance(cx.ctx.app.db.pool(), uuid)
        .await?
        .ok_or_else(|| gone(uuid))
}

async fn schedule(cx: Cx) -> Result<Value, StepError> {
    let p = &cx.params;
    let inst = live(&cx).await?;
    if inst.vm_state != vm::BUILDING {
        return Err(gone(&p.instance_uuid));
    }
    if p.attempt == 1 {
        event_start(&cx, EVENT_SCHEDULE, None).await?;
    }
    let spec = spec::request_spec(&cx.ctx, &inst, &p.tried).await?;
    let alternates: Vec<Alternate> = p
        .alternates
        .iter()
        .filter(|a| !p.tried.contains(&a.host))
        .cloned()
        .collect();
    if !alternates.is_empty()
        && let Some(sel) = cx
            .ctx
            .scheduler
            .claim_alternate(&spec, &p.instance_uuid, &alternates)
            .await?
    {
        return output(&sel);
    }
    let placing = [Placing {
        instance_uuid: p.instance_uuid.clone(),
    }];
    match cx.ctx.scheduler.select(&spec, &placing).await?.pop() {
        Some(SelectOutcome::Selected(sel)) => {
            if p.attempt == 1 {
                event_finish(&cx, EVENT_SCHEDULE, None, true, None).await?;
            }
            output(&sel)
        }
        Some(SelectOutcome::NoValidHost { details }) => {
            Err(Failure::new(NoValidHost::MESSAGE, details).into())
        }
        None => Err(Failure::new(NoValidHost::MESSAGE, "the scheduler answered nothing").into()),
    }
}

/// Frees the placement allocations of an instance.
pub async fn free_allocations(app: &crate::app::App, uuid: &str) -> Result<()> {
    let Some((c, _)) = crate::db::placement::consumer_allocations(app.db.pool(), uuid).await?
    else {
        return Ok(());
    };
    crate::app::placement::claim(
        app,
        &[crate::db::placement::Claim {
            consumer_uuid: uuid.to_owned(),
            project_id: c.project_id,
            user_id: c.user_id,
            consumer_generation: crate::db::placement::ConsumerGeneration::Unchecked,
            allocations: Default::default(),
        }],
        &Default::default(),
    )
    .await
}

async fn unschedule(cx: Cx) -> Result<(), StepError> {
    free_allocations(&cx.ctx.app, &cx.params.instance_uuid).await?;
    Ok(())
}

/// The availability zone of `host`.
async fn zone_of(cx: &Cx, host: &str) -> Result<String> {
    Ok(hosts::host_zones(cx.ctx.app.db.pool())
        .await?
        .remove(host)
        .unwrap_or_else(|| cx.ctx.app.config.compute.default_availability_zone.clone()))
}

async fn assign(cx: Cx) -> Result<Value, StepError> {
    let p = &cx.params;
    let sel: Selection = cx.output("schedule")?;
    let zone = zone_of(&cx, &sel.host).await?;
    let db = &cx.ctx.app.db;
    let assigned = db
        .retry(|| async {
            let mut tx = db.begin().await?;
            let g = instances::update_instance(
                &mut *tx,
                &p.instance_uuid,
                &Expect {
                    vm_states: Some(vec![vm::BUILDING.into()]),
                    task_state: Some(Some(task::SCHEDULING.into())),
                    ..Expect::default()
                },
                &Change {
                    task_state: Some(Some(task::SPAWNING.into())),
                    host: Some(Some(sel.host.clone())),
                    node: Some(Some(sel.host.clone())),
                    launched_on: Some(Some(sel.host.clone())),
                    availability_zone: Some(Some(zone.clone())),
                    ..Change::default()
                },
            )
            .await?;
            if g.is_some() {
                network::bind_device_ports(&mut *tx, &p.instance_uuid, &sel.host, "DOWN").await?;
                tx.commit().await?;
            }
            Ok(g.is_some())
        })
        .await?;
    if !assigned {
        // Already assigned by an earlier run of this step?
        let inst = live(&cx).await?;
        if !(inst.vm_state == vm::BUILDING
            && inst.task_state.as_deref() == Some(task::SPAWNING)
            && inst.host.as_deref() == Some(sel.host.as_str()))
        {
            return Err(gone(&p.instance_uuid));
        }
    }
    output(&sel.host)
}

async fn unassign(cx: Cx) -> Result<(), StepError> {
    let uuid = &cx.params.instance_uuid;
    let db = &cx.ctx.app.db;
    db.retry(|| async {
        let mut tx = db.begin().await?;
        let back = instances::update_instance(
            &mut *tx,
            uuid,
            &Expect {
                vm_states: Some(vec![vm::BUILDING.into()]),
                task_state: Some(Some(task::SPAWNING.into())),
                ..Expect::default()
            },
            &Change {
                task_state: Some(Some(task::SCHEDULING.into())),
                host: Some(None),
                node: Some(None),
                ..Change::default()
            },
        )
        .await?;
        if back.is_none() {
            // Another task (a delete) took over: leave its task state, but
            // the instance is on no host any more.
            instances::update_instance(
                &mut *tx,
                uuid,
                &Expect {
                    vm_states: Some(vec![vm::BUILDING.into()]),
                    ..Expect::default()
                },
                &Change {
                    host: Some(None),
                    node: Some(None),
                    ..Change::default()
                },
            )
            .await?;
        }
        network::bind_device_ports(&mut *tx, uuid, "", "DOWN").await?;
        tx.commit().await?;
        Ok(())
    })
    .await?;
    Ok(())
}

async fn cast(cx: Cx) -> Result<Value, StepError> {
    let p = &cx.params;
    let sel: Selection = cx.output("schedule")?;
    let ids: Ids = cx.output("ids")?;
    let inst = live(&cx).await?;
    let instance = spec::instance_spec(&cx.ctx, &inst).await?;
    event_start(&cx, EVENT_BUILD, Some(&sel.host)).await?;
    cx.ctx
        .rpc
        .cast_method::<BuildAndRunInstance>(
            Topic::compute(&sel.host),
            &BuildRequest {
                instance,
                vmm_id: ids.vmm_id,
                attempt: p.attempt,
            },
        )
        .await
        .map_err(|e| StepError::Transient(format!("casting the build: {e}")))?;
    output(&sel.host)
}

/// Asks `host` to remove everything of `uuid` (idempotent on the agent).
pub async fn cast_terminate(
    c: &Conductor,
    host: &str,
    uuid: &str,
    shutdown_timeout_s: u64,
) -> Result<(), StepError> {
    c.rpc
        .cast_method::<TerminateInstance>(
            Topic::compute(host),
            &TerminateRequest {
                instance_uuid: uuid.to_owned(),
                shutdown_timeout_s,
            },
        )
        .await
        .map_err(|e| StepError::Transient(format!("casting terminate_instance: {e}")))
}

async fn uncast(cx: Cx) -> Result<(), StepError> {
    let host: String = cx.output("cast")?;
    cast_terminate(&cx.ctx, &host, &cx.params.instance_uuid, 0).await
}

/// How often a waiting step looks at the host and the instance.
const CHECK_EVERY: Duration = Duration::from_secs(1);

async fn wait(cx: Cx) -> Result<Value, StepError> {
    let p = &cx.params;
    let host: String = cx.output("cast")?;
    let ids: Ids = cx.output("ids")?;
    let key = signal_key(&p.instance_uuid, &ids.vmm_id);
    let timeout = cx.ctx.cfg().build_timeout_secs;
    let deadline = deadline(cx.started_at, timeout);
    let mut waiter = cx.waiter(&key);
    let mut checks = 0u32;
    loop {
        let until = match deadline {
            Some(d) => d.min(tokio::time::Instant::now() + CHECK_EVERY),
            None => tokio::time::Instant::now() + CHECK_EVERY,
        };
        if let Some(v) = waiter.wait(until).await? {
            let report: BuildFinished = serde_json::from_value(v).map_err(|e| {
                StepError::Fail(Failure::new(
                    "An internal error occurred.",
                    format!("build report: {e}"),
                ))
            })?;
            return match report.result {
                Ok(running) => output(&running.power_state.code()),
                Err(f) => Err(StepError::Fail(Failure {
                    step: String::new(),
                    message: f.message,
                    details: f.details,
                    retryable: f.retryable,
                    data: json!({"host": host}),
                })),
            };
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return Err(Failure::retryable(
                format!(
                    "Build of instance {} timed out on host {host}.",
                    p.instance_uuid
                ),
                format!("no report from {host} within {timeout} s"),
            )
            .with_data(json!({"host": host}))
            .into());
        }
        if !cx.ctx.host_is_up(&host).await? {
            return Err(Failure::retryable(
                format!(
                    "Compute host {host} went down while building instance {}.",
                    p.instance_uuid
                ),
                format!("{host} has not reported within service_down_time"),
            )
            .with_data(json!({"host": host}))
            .into());
        }
        checks += 1;
        if checks.is_multiple_of(INSTANCE_CHECK_EVERY) {
            let inst = live(&cx).await?;
            if inst.task_state.as_deref() != Some(task::SPAWNING) {
                return Err(gone(&p.instance_uuid));
            }
        }
    }
}

/// Every how many host checks a waiting build looks at its instance (a
/// delete during a build is noticed within this many × `CHECK_EVERY`).
const INSTANCE_CHECK_EVERY: u32 = 3;

/// The instant `timeout_secs` after `started` (none for 0).
pub fn deadline(started: Timestamp, timeout_secs: u64) -> Option<tokio::time::Instant> {
    if timeout_secs == 0 {
        return None;
    }
    let elapsed = Timestamp::now().0.signed_duration_since(started.0);
    let left = chrono::Duration::seconds(timeout_secs as i64) - elapsed;
    let left = left.to_std().unwrap_or(Duration::ZERO);
    Some(tokio::time::Instant::now() + left)
}

async fn active(cx: Cx) -> Result<Value, StepError> {
    let p = &cx.params;
    let host: String = cx.output("cast")?;
    let ids: Ids = cx.output("ids")?;
    let power: u8 = cx.output("wait")?;
    let db = &cx.ctx.app.db;
    let done = db
        .retry(|| async {
            let mut tx = db.begin().await?;
            let g = instances::update_instance(
                &mut *tx,
                &p.instance_uuid,
                &Expect {
                    vm_states: Some(vec![vm::BUILDING.into()]),
                    task_state: Some(Some(task::SPAWNING.into())),
                    ..Expect::default()
                },
                &Change {
                    vm_state: Some(vm::ACTIVE.into()),
                    task_state: Some(None),
                    power_state: Some(i64::from(power)),
                    vmm_id: Some(Some(ids.vmm_id.clone())),
                    launched_at: Some(Some(Timestamp::now())),
                    progress: Some(100),
                    ..Change::default()
                },
            )
            .await?;
            if g.is_none() {
                return Ok(false);
            }
            network::bind_device_ports(&mut *tx, &p.instance_uuid, &host, "ACTIVE").await?;
            instances::finish_event(
                &mut tx,
                &p.instance_uuid,
                &p.request_id,
                EVENT_BUILD,
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
        let inst = live(&cx).await?;
        if !(inst.vm_state == vm::ACTIVE && inst.vmm_id.as_deref() == Some(ids.vmm_id.as_str())) {
            return Err(gone(&p.instance_uuid));
        }
    }
    sched_store::reset_failed_builds(db.pool(), &host).await?;
    output(&())
}

async fn event_start(cx: &Cx, event: &str, host: Option<&str>) -> Result<(), StepError> {
    let mut conn = cx
        .ctx
        .app
        .db
        .pool()
        .acquire()
        .await
        .map_err(crate::error::Error::from)?;
    instances::start_event(
        &mut conn,
        &cx.params.instance_uuid,
        &cx.params.request_id,
        event,
        host,
    )
    .await?;
    Ok(())
}

async fn event_finish(
    cx: &Cx,
    event: &str,
    host: Option<&str>,
    ok: bool,
    details: Option<&str>,
) -> Result<(), StepError> {
    let mut conn = cx
        .ctx
        .app
        .db
        .pool()
        .acquire()
        .await
        .map_err(crate::error::Error::from)?;
    instances::finish_event(
        &mut conn,
        &cx.params.instance_uuid,
        &cx.params.request_id,
        event,
        host,
        ok,
        details,
        None,
    )
    .await?;
    Ok(())
}

async fn unwound(cx: Cx, failure: Failure) -> Result<(), StepError> {
    let p = &cx.params;
    let app = &cx.ctx.app;
    let Some(inst) = instances::get_instance(app.db.pool(), &p.instance_uuid).await? else {
        return Ok(());
    };
    if inst.vm_state != vm::BUILDING || inst.task_state.as_deref() == Some(task::DELETING) {
        // Deleted meanwhile, or another task owns it now.
        return Ok(());
    }
    let selection: Option<Selection> = cx.output("schedule").ok();
    let host_failed = failure.retryable && cx.has_output("cast");
    let host = selection.as_ref().map(|s| s.host.clone());
    let mut failures = p.failures.clone();
    failures.push(match &host {
        Some(h) => format!(
            "attempt {} on {h}: {} {}",
            p.attempt, failure.message, failure.details
        ),
        None => format!(
            "attempt {}: {} {}",
            p.attempt, failure.message, failure.details
        ),
    });
    if let Some(h) = host.as_deref().filter(|_| cx.has_output("cast")) {
        event_finish(&cx, EVENT_BUILD, Some(h), false, Some(&failure.message)).await?;
    }
    if host_failed && let Some(h) = &host {
        sched_store::add_failed_build(app.db.pool(), h).await?;
    }
    let max = app.config.scheduler.max_attempts.max(1);
    if host_failed && p.attempt < max {
        let mut tried = p.tried.clone();
        tried.extend(host.clone());
        let next = BuildParams {
            instance_uuid: p.instance_uuid.clone(),
            request_id: p.request_id.clone(),
            attempt: p.attempt + 1,
            alternates: selection
                .map(|s| s.alternates)
                .unwrap_or_else(|| p.alternates.clone())
                .into_iter()
                .filter(|a| !tried.contains(&a.host))
                .collect(),
            tried,
            failures,
        };
        tracing::info!(instance = %p.instance_uuid, attempt = next.attempt, "rescheduling the build on another host");
        cx.engine()
            .create::<Build>(&saga_id(&p.instance_uuid, next.attempt), &next)
            .await?;
        return Ok(());
    }
    let (message, details) = if failure.step == "schedule" && p.attempt == 1 {
        (failure.message.clone(), failures.join("\n"))
    } else if failure.step == "schedule" || host_failed {
        (
            format!(
                "{} Exceeded maximum number of retries ({max}) building instance {}.",
                NoValidHost::MESSAGE.trim_end_matches(" There are not enough hosts available."),
                p.instance_uuid
            ),
            failures.join("\n"),
        )
    } else {
        (failure.message.clone(), failures.join("\n"))
    };
    let db = &app.db;
    db.retry(|| async {
        let mut tx = db.begin().await?;
        let g = instances::update_instance(
            &mut *tx,
            &p.instance_uuid,
            &Expect {
                vm_states: Some(vec![vm::BUILDING.into()]),
                ..Expect::default()
            },
            &Change {
                vm_state: Some(vm::ERROR.into()),
                task_state: Some(None),
                power_state: Some(power::NOSTATE),
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
                &details,
                host.as_deref(),
            )
            .await?;
            if failure.step == "schedule" {
                instances::finish_event(
                    &mut tx,
                    &p.instance_uuid,
                    &p.request_id,
                    EVENT_SCHEDULE,
                    None,
                    false,
                    Some(&message),
                    None,
                )
                .await?;
            }
            instances::finish_action(&mut *tx, &p.instance_uuid, &p.request_id, true).await?;
        }
        tx.commit().await?;
        Ok(())
    })
    .await?;
    tracing::warn!(instance = %p.instance_uuid, %message, "build failed; instance in ERROR");
    Ok(())
}

/// `schedule_and_build` from the API: one saga per instance (created
/// together; a redelivered request creates nothing new). The instances of
/// a multi-create are scheduled together first, so that each sees the
/// others (they spread, or pack, as the weighers say); each saga then
/// finds its claim.
pub async fn schedule_and_build(
    engine: &Engine<Conductor>,
    req: ScheduleAndBuildRequest,
) -> std::result::Result<(), RemoteError> {
    let sagas: Vec<(String, BuildParams)> = req
        .instance_uuids
        .iter()
        .map(|u| {
            (
                saga_id(u, 1),
                BuildParams {
                    instance_uuid: u.clone(),
                    request_id: req.request_id.clone(),
                    attempt: 1,
                    tried: vec![],
                    alternates: vec![],
                    failures: vec![],
                },
            )
        })
        .collect();
    let created = persist("creating build sagas", || {
        engine.create_many_deferred::<Build>(&sagas)
    })
    .await?;
    if created.len() > 1
        && let Err(e) = preclaim(
            engine.ctx(),
            &created
                .iter()
                .map(|r| r.target.clone().unwrap_or_default())
                .collect::<Vec<_>>(),
        )
        .await
    {
        tracing::warn!(error = ?e, "scheduling the instances of a request together failed; each will be scheduled alone");
    }
    engine.launch(created);
    Ok(())
}

async fn preclaim(c: &Conductor, uuids: &[String]) -> Result<()> {
    let instances = instances::get_instances(c.app.db.pool(), uuids).await?;
    let Some(first) = instances.first() else {
        return Ok(());
    };
    let spec = spec::request_spec(c, first, &[]).await?;
    let placing: Vec<Placing> = uuids
        .iter()
        .filter(|u| {
            instances
                .iter()
                .any(|i| i.uuid == **u && i.vm_state == vm::BUILDING)
        })
        .map(|u| Placing {
            instance_uuid: u.clone(),
        })
        .collect();
    let outcomes = c.scheduler.select(&spec, &placing).await?;
    let placed = outcomes
        .iter()
        .filter(|o| matches!(o, SelectOutcome::Selected(_)))
        .count();
    tracing::info!(
        instances = placing.len(),
        placed,
        "scheduled a multi-create together"
    );
    Ok(())
}
