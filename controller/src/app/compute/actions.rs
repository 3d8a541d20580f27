//! Server actions (`POST /servers/{id}/action`) with Nova's state checks.
//!
//! Each action names the vm_states (and task states) it may start from,
//! whether the server must have run once (`launched_at`), and the task
//! state it sets. The check and the task start are one compare-and-set
//! ([`crate::db::instances::start_task`]), so two actions on one server
//! never both pass. A refused action answers 409 with Nova's message
//! ("Cannot 'stop' instance <uuid> while it is in vm_state stopped"); a
//! locked server 409 "Instance <uuid> is locked" for non-admins.
//!
//! Accepted actions are recorded as instance actions and cast to the
//! conductor (`run_instance_action`). The conductor interface carries the
//! power actions (stop, start, reboot, pause, unpause, suspend, resume) and
//! delete; the others (resize and its confirm/revert, migrate, live
//! migration, evacuate, rebuild, rescue, snapshots, crash dumps) are checked
//! like Nova checks them and then answer 501 until the conductor can carry
//! them out, changing nothing.

use mica_rpc::conductor::InstanceAction;

use super::servers::{get_visible, not_found};
use super::states::{task, vm};
use crate::app::App;
use crate::app::network::security_groups as sg_app;
use crate::context::Context;
use crate::db::instances::{self as store, Change, Expect, InstanceRow};
use crate::db::{hosts, network as net_store};
use crate::error::{Error, Kind, Result};
use crate::policy::Target;

/// What an action requires and does.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// The name in 409 messages (`stop`, `reboot`, `confirmResize`, …).
    pub name: &'static str,
    /// The policy rule.
    pub policy: &'static str,
    /// Allowed vm_states (`None`: any).
    pub vm_states: Option<&'static [&'static str]>,
    /// Allowed task states (`None`: any).
    pub task_states: Option<&'static [Option<&'static str>]>,
    /// The server must have run at least once.
    pub must_have_launched: bool,
    /// The task state the action sets.
    pub task: Option<&'static str>,
    /// The instance action recorded (`stop`, `reboot`, …).
    pub record: &'static str,
}

const NO_TASK: &[Option<&str>] = &[None];

/// Nova's rules for the actions of the state table.
pub mod rules {
    use super::*;

    /// `os-stop`.
    pub const STOP: Rule = Rule {
        name: "stop",
        policy: "os_compute_api:servers:stop",
        vm_states: Some(&[vm::ACTIVE, vm::ERROR]),
        task_states: Some(NO_TASK),
        must_have_launched: true,
        task: Some(task::POWERING_OFF),
        record: "stop",
    };
    /// `os-start`.
    pub const START: Rule = Rule {
        name: "start",
        policy: "os_compute_api:servers:start",
        vm_states: Some(&[vm::STOPPED]),
        task_states: Some(NO_TASK),
        must_have_launched: true,
        task: Some(task::POWERING_ON),
        record: "start",
    };
    /// `reboot` SOFT.
    pub const REBOOT_SOFT: Rule = Rule {
        name: "reboot",
        policy: "os_compute_api:servers:reboot",
        vm_states: Some(&[vm::ACTIVE]),
        task_states: Some(NO_TASK),
        must_have_launched: true,
        task: Some(task::REBOOTING),
        record: "reboot",
    };
    /// `reboot` HARD.
    pub const REBOOT_HARD: Rule = Rule {
        name: "reboot",
        policy: "os_compute_api:servers:reboot",
        vm_states: Some(&[
            vm::ACTIVE,
            vm::STOPPED,
            vm::PAUSED,
            vm::SUSPENDED,
            vm::ERROR,
        ]),
        task_states: Some(&task::ALLOW_REBOOT),
        must_have_launched: true,
        task: Some(task::REBOOTING_HARD),
        record: "reboot",
    };
    /// `pause`.
    pub const PAUSE: Rule = Rule {
        name: "pause",
        policy: "os_compute_api:os-pause-server:pause",
        vm_states: Some(&[vm::ACTIVE]),
        task_states: Some(NO_TASK),
        must_have_launched: true,
        task: Some(task::PAUSING),
        record: "pause",
    };
    /// `unpause`.
    pub const UNPAUSE: Rule = Rule {
        name: "unpause",
        policy: "os_compute_api:os-pause-server:unpause",
        vm_states: Some(&[vm::PAUSED]),
        task_states: Some(NO_TASK),
        must_have_launched: true,
        task: Some(task::UNPAUSING),
        record: "unpause",
    };
    /// `suspend`.
    pub const SUSPEND: Rule = Rule {
        name: "suspend",
        policy: "os_compute_api:os-suspend-server:suspend",
        vm_states: Some(&[vm::ACTIVE]),
        task_states: Some(NO_TASK),
        must_have_launched: true,
        task: Some(task::SUSPENDING),
        record: "suspend",
    };
    /// `resume`.
    pub const RESUME: Rule = Rule {
        name: "resume",
        policy: "os_compute_api:os-suspend-server:resume",
        vm_states: Some(&[vm::SUSPENDED]),
        task_states: Some(NO_TASK),
        must_have_launched: true,
        task: Some(task::RESUMING),
        record: "resume",
    };
    /// `resize`.
    pub const RESIZE: Rule = Rule {
        name: "resize",
        policy: "os_compute_api:servers:resize",
        vm_states: Some(&[vm::ACTIVE, vm::STOPPED]),
        task_states: Some(NO_TASK),
        must_have_launched: true,
        task: Some(task::RESIZE_PREP),
        record: "resize",
    };
    /// `migrate` (a resize to the same flavor on another host).
    pub const MIGRATE: Rule = Rule {
        name: "migrate",
        policy: "os_compute_api:os-migrate-server:migrate",
        vm_states: Some(&[vm::ACTIVE, vm::STOPPED]),
        task_states: Some(NO_TASK),
        must_have_launched: true,
        task: Some(task::RESIZE_PREP),
        record: "migrate",
    };
    /// `confirmResize`.
    pub const CONFIRM_RESIZE: Rule = Rule {
        name: "confirmResize",
        policy: "os_compute_api:servers:confirm_resize",
        vm_states: Some(&[vm::RESIZED]),
        task_states: Some(NO_TASK),
        must_have_launched: true,
        task: Some(task::RESIZE_CONFIRMING),
        record: "confirmResize",
    };
    /// `revertResize`.
    pub const REVERT_RESIZE: Rule = Rule {
        name: "revertResize",
        policy: "os_compute_api:servers:revert_resize",
        vm_states: Some(&[vm::RESIZED]),
        task_states: Some(NO_TASK),
        must_have_launched: true,
        task: Some(task::RESIZE_REVERTING),
        record: "revertResize",
    };
    /// `rescue`.
    pub const RESCUE: Rule = Rule {
        name: "rescue",
        policy: "os_compute_api:os-rescue",
        vm_states: Some(&[vm::ACTIVE, vm::STOPPED, vm::ERROR]),
        task_states: Some(NO_TASK),
        must_have_launched: true,
        task: Some(task::RESCUING),
        record: "rescue",
    };
    /// `unrescue`.
    pub const UNRESCUE: Rule = Rule {
        name: "unrescue",
        policy: "os_compute_api:os-unrescue",
        vm_states: Some(&[vm::RESCUED]),
        task_states: Some(NO_TASK),
        must_have_launched: true,
        task: Some(task::UNRESCUING),
        record: "unrescue",
    };
    /// `createImage`.
    pub const CREATE_IMAGE: Rule = Rule {
        name: "createImage",
        policy: "os_compute_api:servers:create_image",
        vm_states: Some(&[vm::ACTIVE, vm::STOPPED, vm::PAUSED, vm::SUSPENDED]),
        task_states: Some(NO_TASK),
        must_have_launched: true,
        task: Some(task::IMAGE_SNAPSHOT_PENDING),
        record: "createImage",
    };
    /// `os-migrateLive`.
    pub const LIVE_MIGRATE: Rule = Rule {
        name: "os-migrateLive",
        policy: "os_compute_api:os-migrate-server:migrate_live",
        vm_states: Some(&[vm::ACTIVE, vm::PAUSED]),
        task_states: Some(NO_TASK),
        must_have_launched: true,
        task: Some(task::MIGRATING),
        record: "live-migration",
    };
    /// `evacuate`.
    pub const EVACUATE: Rule = Rule {
        name: "evacuate",
        policy: "os_compute_api:os-evacuate",
        vm_states: Some(&[vm::ACTIVE, vm::STOPPED, vm::ERROR]),
        task_states: Some(NO_TASK),
        must_have_launched: true,
        task: Some(task::REBUILDING),
        record: "evacuate",
    };
    /// `rebuild`.
    pub const REBUILD: Rule = Rule {
        name: "rebuild",
        policy: "os_compute_api:servers:rebuild",
        vm_states: Some(&[vm::ACTIVE, vm::STOPPED, vm::ERROR]),
        task_states: Some(NO_TASK),
        must_have_launched: true,
        task: Some(task::REBUILDING),
        record: "rebuild",
    };
    /// `trigger_crash_dump` (2.17).
    pub const CRASH_DUMP: Rule = Rule {
        name: "trigger_crash_dump",
        policy: "os_compute_api:servers:reboot",
        vm_states: Some(&[vm::ACTIVE, vm::PAUSED, vm::RESCUED, vm::RESIZED, vm::ERROR]),
        task_states: Some(NO_TASK),
        must_have_launched: true,
        task: None,
        record: "trigger_crash_dump",
    };
}

/// Nova's 409 for a state that does not allow an action.
pub fn invalid_state(action: &str, id: &str, attr: &str, state: &str) -> Error {
    Error::conflict(format!(
        "Cannot '{action}' instance {id} while it is in {attr} {state}"
    ))
}

/// Why `rule` refuses `row`, if it does (Nova's order: vm_state, task
/// state, launched_at).
pub fn refusal(rule: &Rule, row: &InstanceRow) -> Option<Error> {
    if let Some(v) = rule.vm_states
        && !v.contains(&row.vm_state.as_str())
    {
        return Some(invalid_state(
            rule.name,
            &row.uuid,
            "vm_state",
            &row.vm_state,
        ));
    }
    if let Some(t) = rule.task_states
        && !t.contains(&row.task_state.as_deref())
    {
        return Some(invalid_state(
            rule.name,
            &row.uuid,
            "task_state",
            row.task_state.as_deref().unwrap_or("None"),
        ));
    }
    if rule.must_have_launched && row.launched_at.is_none() {
        return Some(invalid_state(rule.name, &row.uuid, "launched_at", "None"));
    }
    None
}

/// Loads the server, checks policy, the lock and the state, without
/// changing anything.
pub async fn check(app: &App, ctx: &Context, id: &str, rule: &Rule) -> Result<InstanceRow> {
    let row = get_visible(app, ctx, id).await?;
    app.policy
        .enforce(rule.policy, ctx, Target::project(&row.project_id))?;
    if row.locked && !ctx.is_admin() {
        return Err(Error::conflict(format!("Instance {id} is locked")));
    }
    if let Some(e) = refusal(rule, &row) {
        return Err(e);
    }
    Ok(row)
}

/// Checks, starts the task (compare-and-set), records the instance action
/// and casts it to the conductor. A cast that fails puts the task back.
pub async fn run(
    app: &App,
    ctx: &Context,
    request_id: &str,
    id: &str,
    rule: &Rule,
    action: InstanceAction,
) -> Result<()> {
    let row = check(app, ctx, id, rule).await?;
    let started = store::start_task(
        app.db.pool(),
        id,
        rule.vm_states,
        rule.task_states.unwrap_or(&[None]),
        rule.task,
    )
    .await?;
    if started.is_none() {
        // Someone changed it since we looked: explain with what it is now.
        let now = get_visible(app, ctx, id).await?;
        return Err(refusal(rule, &now).unwrap_or_else(|| {
            invalid_state(
                rule.name,
                id,
                "task_state",
                now.task_state.as_deref().unwrap_or("None"),
            )
        }));
    }
    {
        let mut conn = app.db.pool().acquire().await?;
        store::start_action(
            &mut conn,
            id,
            request_id,
            rule.record,
            &row.project_id,
            &ctx.user_id,
        )
        .await?;
    }
    let rpc = app.rpc()?.with_request_id(request_id);
    let sent = rpc
        .cast_method::<mica_rpc::conductor::RunInstanceAction>(
            mica_rpc::Topic::conductor(),
            &mica_rpc::conductor::RunInstanceActionRequest {
                request_id: request_id.to_owned(),
                instance_uuid: id.to_owned(),
                action,
            },
        )
        .await;
    if let Err(e) = sent {
        let _ = store::update_instance(
            app.db.pool(),
            id,
            &Expect {
                task_state: Some(rule.task.map(str::to_owned)),
                ..Default::default()
            },
            &Change {
                task_state: Some(row.task_state.clone()),
                ..Default::default()
            },
        )
        .await;
        let mut conn = app.db.pool().acquire().await?;
        store::finish_action(&mut *conn, id, request_id, true).await?;
        return Err(Error::new(
            Kind::ServiceUnavailable,
            "The conductor could not be reached; try again later.",
        )
        .with_source(e));
    }
    Ok(())
}

/// Checks an action the conductor cannot carry out yet; answers 501 when
/// the state would allow it, changing nothing.
pub async fn not_yet(app: &App, ctx: &Context, id: &str, rule: &Rule) -> Result<()> {
    check(app, ctx, id, rule).await?;
    Err(Error::not_implemented(format!(
        "Mica cannot '{}' servers yet: the conductor does not carry out this operation.",
        rule.name
    )))
}

/// `resize`: the new flavor must exist and differ (400), then as
/// [`not_yet`].
pub async fn resize(app: &App, ctx: &Context, id: &str, flavor_ref: &str) -> Result<()> {
    let row = check(app, ctx, id, &rules::RESIZE).await?;
    let flavor_id = super::common::id_from_href(flavor_ref);
    let f = super::flavors::get(app, ctx, &flavor_id)
        .await
        .map_err(|_| Error::bad_request(format!("Flavor {flavor_id} could not be found.")))?;
    if f.row.id == row.flavor_id {
        return Err(Error::bad_request(
            "When resizing, instances must change flavor!",
        ));
    }
    not_yet(app, ctx, id, &rules::RESIZE).await
}

/// `evacuate`: the host must be down (400 otherwise), then as [`not_yet`].
pub async fn evacuate(app: &App, ctx: &Context, id: &str) -> Result<()> {
    let row = check(app, ctx, id, &rules::EVACUATE).await?;
    if let Some(h) = &row.host {
        let services = hosts::list_services(app.db.pool(), Some(h), Some("nova-compute")).await?;
        let now = crate::db::Timestamp::now();
        let up = services
            .iter()
            .any(|s| super::servers::is_up(s, now, app.config.compute.service_down_time_secs));
        if up {
            return Err(Error::bad_request(format!(
                "Compute service of {h} is still in use."
            )));
        }
    }
    not_yet(app, ctx, id, &rules::EVACUATE).await
}

/// `lock` (with a reason from 2.73).
pub async fn lock(
    app: &App,
    ctx: &Context,
    request_id: &str,
    id: &str,
    reason: Option<&str>,
) -> Result<()> {
    let row = get_visible(app, ctx, id).await?;
    app.policy.enforce(
        "os_compute_api:os-lock-server:lock",
        ctx,
        Target::project(&row.project_id),
    )?;
    let by = if ctx.project_id() == Some(row.project_id.as_str()) {
        "owner"
    } else {
        "admin"
    };
    if row.locked {
        // Nova: locking again keeps the first locker.
        return Ok(());
    }
    if !store::set_lock(app.db.pool(), id, true, Some(by), reason).await? {
        return Err(not_found(id));
    }
    record_done(app, ctx, request_id, &row, "lock").await
}

/// `unlock`; a server locked by an admin needs the override rule.
pub async fn unlock(app: &App, ctx: &Context, request_id: &str, id: &str) -> Result<()> {
    let row = get_visible(app, ctx, id).await?;
    app.policy.enforce(
        "os_compute_api:os-lock-server:unlock",
        ctx,
        Target::project(&row.project_id),
    )?;
    if row.locked_by.as_deref() == Some("admin")
        && ctx.project_id() == Some(row.project_id.as_str())
    {
        app.policy.enforce(
            "os_compute_api:os-lock-server:unlock:unlock_override",
            ctx,
            Target::project(&row.project_id),
        )?;
    }
    if !store::set_lock(app.db.pool(), id, false, None, None).await? {
        return Err(not_found(id));
    }
    record_done(app, ctx, request_id, &row, "unlock").await
}

async fn record_done(
    app: &App,
    ctx: &Context,
    request_id: &str,
    row: &InstanceRow,
    action: &str,
) -> Result<()> {
    let mut conn = app.db.pool().acquire().await?;
    store::start_action(
        &mut conn,
        &row.uuid,
        request_id,
        action,
        &row.project_id,
        &ctx.user_id,
    )
    .await?;
    store::finish_action(&mut *conn, &row.uuid, request_id, false).await?;
    Ok(())
}

/// `addSecurityGroup`: the group joins the server and each of its ports;
/// hosts of affected ports get the change.
pub async fn add_security_group(app: &App, ctx: &Context, id: &str, name: &str) -> Result<()> {
    let row = get_visible(app, ctx, id).await?;
    app.policy.enforce(
        "os_compute_api:os-security-groups:add",
        ctx,
        Target::project(&row.project_id),
    )?;
    let g = match sg_app::resolve_name_or_id(app, &row.project_id, name).await {
        Ok(g) => g,
        Err(e) if e.is(Kind::NotFound) => {
            return Err(Error::not_found(format!(
                "Security group {name} not found for project {}.",
                row.project_id
            )));
        }
        Err(e) => return Err(e),
    };
    let touched = app
        .db
        .retry(|| async {
            let mut tx = app.db.begin().await?;
            if !store::touch(&mut *tx, id).await? {
                return Err(not_found(id));
            }
            store::add_security_group(&mut *tx, id, &g.id).await?;
            let mut ports = Vec::new();
            for p in net_store::ports_of_instance(&mut tx, id).await? {
                if !p.row.port_security_enabled {
                    continue;
                }
                let mut groups = p.security_groups.clone();
                if !groups.contains(&g.id) {
                    groups.push(g.id.clone());
                    net_store::set_port_security_groups(&mut tx, &p.row.id, &groups).await?;
                    ports.push(p.row.id.clone());
                }
            }
            tx.commit().await?;
            Ok(ports)
        })
        .await?;
    sg_app::push_for_groups(app, std::slice::from_ref(&g.id), &touched).await;
    Ok(())
}

/// `removeSecurityGroup`: 400 when the server does not have it.
pub async fn remove_security_group(app: &App, ctx: &Context, id: &str, name: &str) -> Result<()> {
    let row = get_visible(app, ctx, id).await?;
    app.policy.enforce(
        "os_compute_api:os-security-groups:remove",
        ctx,
        Target::project(&row.project_id),
    )?;
    let g = match sg_app::resolve_name_or_id(app, &row.project_id, name).await {
        Ok(g) => g,
        Err(e) if e.is(Kind::NotFound) => {
            return Err(Error::not_found(format!(
                "Security group {name} not found for project {}.",
                row.project_id
            )));
        }
        Err(e) => return Err(e),
    };
    let touched = app
        .db
        .retry(|| async {
            let mut tx = app.db.begin().await?;
            if !store::touch(&mut *tx, id).await? {
                return Err(not_found(id));
            }
            let mut had = store::remove_security_group(&mut *tx, id, &g.id).await?;
            let mut ports = Vec::new();
            for p in net_store::ports_of_instance(&mut tx, id).await? {
                if p.security_groups.contains(&g.id) {
                    had = true;
                    let groups: Vec<String> = p
                        .security_groups
                        .iter()
                        .filter(|x| **x != g.id)
                        .cloned()
                        .collect();
                    net_store::set_port_security_groups(&mut tx, &p.row.id, &groups).await?;
                    ports.push(p.row.id.clone());
                }
            }
            if !had {
                return Err(Error::bad_request(format!(
                    "Security group {} not associated with the instance {id}",
                    g.name
                )));
            }
            tx.commit().await?;
            Ok(ports)
        })
        .await?;
    sg_app::push_for_groups(app, std::slice::from_ref(&g.id), &touched).await;
    Ok(())
}

/// `os-resetState` (admins): sets vm_state `active` or `error` and clears
/// the task, as Nova does to rescue stuck servers.
pub async fn reset_state(
    app: &App,
    ctx: &Context,
    request_id: &str,
    id: &str,
    state: &str,
) -> Result<()> {
    let row = get_visible(app, ctx, id).await?;
    app.policy.enforce(
        "os_compute_api:os-admin-actions:reset_state",
        ctx,
        Target::project(&row.project_id),
    )?;
    let vm_state = match state {
        "active" => vm::ACTIVE,
        "error" => vm::ERROR,
        _ => {
            return Err(Error::bad_request(format!(
                "Invalid input for field/attribute state. Value: {state}. '{state}' is not one of ['active', 'error']"
            )));
        }
    };
    store::update_instance(
        app.db.pool(),
        id,
        &Expect::default(),
        &Change {
            vm_state: Some(vm_state.into()),
            task_state: Some(None),
            ..Default::default()
        },
    )
    .await?
    .ok_or_else(|| not_found(id))?;
    record_done(app, ctx, request_id, &row, "resetState").await
}
