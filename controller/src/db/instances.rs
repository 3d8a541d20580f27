//! Instance tables: instances, their metadata, tags, faults, instance
//! actions and events, and the instance's security groups.
//!
//! # State changes
//!
//! Every write to an instance bumps its `generation`. Writers that act on
//! what they read say so: [`update_instance`] takes an [`Expect`] (the
//! generation seen, the task state it must still be in, …) and changes
//! nothing when the row moved on, so a late report can never roll a newer
//! state back. The API starts a task with [`start_task`], a compare-and-set
//! of `task_state` guarded by the allowed `vm_state`s, which is also how two
//! concurrent actions on one instance are kept apart (the second gets 409).
//!
//! Instances are soft-deleted ([`mark_deleted`]): the row stays with
//! `deleted = TRUE` and `vm_state = 'deleted'` so that its instance actions
//! remain readable; every "live" query filters `deleted = FALSE`.

use std::collections::BTreeMap;

use sqlx::{Any, AnyConnection, Executor};

use super::{Backend, Sql, Timestamp};
use crate::error::Result;

/// An instance row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct InstanceRow {
    /// UUID (the server id).
    pub uuid: String,
    /// Owning project.
    pub project_id: String,
    /// The user who created it.
    pub user_id: String,
    /// Name.
    pub display_name: String,
    /// Description (2.19).
    pub display_description: Option<String>,
    /// The guest's host name.
    pub hostname: String,
    /// `r-xxxxxxxx`, shared by the instances of one create request.
    pub reservation_id: String,
    /// Index within its create request.
    pub launch_index: i64,
    /// Image id, `''` when booted from a volume.
    pub image_ref: String,
    /// Kernel image id (image property).
    pub kernel_id: Option<String>,
    /// Ramdisk image id (image property).
    pub ramdisk_id: Option<String>,
    /// Flavor id (the flavor's public id at the time).
    pub flavor_id: String,
    /// Flavor name at the time.
    pub flavor_name: String,
    /// vCPUs.
    pub vcpus: i64,
    /// RAM in MiB.
    pub memory_mb: i64,
    /// Root disk in GiB.
    pub root_gb: i64,
    /// Ephemeral disk in GiB.
    pub ephemeral_gb: i64,
    /// Swap in MiB.
    pub swap_mb: i64,
    /// Flavor extra specs (JSON object of strings).
    pub flavor_extra_specs: String,
    /// During a resize: the flavor before (JSON [`FlavorCopy`]).
    pub old_flavor: Option<String>,
    /// During a resize: the flavor after (JSON [`FlavorCopy`]).
    pub new_flavor: Option<String>,
    /// Key pair name.
    pub key_name: Option<String>,
    /// Key pair public key.
    pub key_data: Option<String>,
    /// Base64 user data.
    pub user_data: Option<String>,
    /// `''` or `'True'`.
    pub config_drive: String,
    /// `MANUAL` or `AUTO`.
    pub disk_config: String,
    /// accessIPv4.
    pub access_ip_v4: Option<String>,
    /// accessIPv6.
    pub access_ip_v6: Option<String>,
    /// `/dev/vda`, once built.
    pub root_device_name: Option<String>,
    /// The zone the instance is in.
    pub availability_zone: Option<String>,
    /// The zone the user asked for.
    pub requested_availability_zone: Option<String>,
    /// Host an admin forced.
    pub forced_host: Option<String>,
    /// Node an admin forced.
    pub forced_node: Option<String>,
    /// `os:scheduler_hints` (JSON object).
    pub scheduler_hints: String,
    /// Compute host.
    pub host: Option<String>,
    /// Compute node (hypervisor host name).
    pub node: Option<String>,
    /// The host it was first built on.
    pub launched_on: Option<String>,
    /// The running VMM incarnation.
    pub vmm_id: Option<String>,
    /// Nova's vm_state.
    pub vm_state: String,
    /// Nova's task_state.
    pub task_state: Option<String>,
    /// Nova's power_state code.
    pub power_state: i64,
    /// Build progress, 0–100.
    pub progress: i64,
    /// Locked against changes by non-admins.
    #[sqlx(try_from = "super::Flag")]
    pub locked: bool,
    /// `owner` or `admin`.
    pub locked_by: Option<String>,
    /// Why (2.73).
    pub locked_reason: Option<String>,
    /// When it first ran.
    pub launched_at: Option<Timestamp>,
    /// When it was terminated.
    pub terminated_at: Option<Timestamp>,
    /// Created.
    pub created_at: Timestamp,
    /// Last changed.
    pub updated_at: Timestamp,
    /// Soft-deleted.
    #[sqlx(try_from = "super::Flag")]
    pub deleted: bool,
    /// When.
    pub deleted_at: Option<Timestamp>,
    /// Bumped by every change.
    pub generation: i64,
}

/// A flavor as an instance keeps it (`old_flavor`, `new_flavor`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FlavorCopy {
    /// Flavor id.
    pub id: String,
    /// Name.
    pub name: String,
    /// vCPUs.
    pub vcpus: i64,
    /// RAM in MiB.
    pub memory_mb: i64,
    /// Root disk in GiB.
    pub root_gb: i64,
    /// Ephemeral disk in GiB.
    pub ephemeral_gb: i64,
    /// Swap in MiB.
    pub swap_mb: i64,
    /// Extra specs.
    #[serde(default)]
    pub extra_specs: BTreeMap<String, String>,
}

impl InstanceRow {
    /// The instance's current flavor.
    pub fn flavor(&self) -> FlavorCopy {
        FlavorCopy {
            id: self.flavor_id.clone(),
            name: self.flavor_name.clone(),
            vcpus: self.vcpus,
            memory_mb: self.memory_mb,
            root_gb: self.root_gb,
            ephemeral_gb: self.ephemeral_gb,
            swap_mb: self.swap_mb,
            extra_specs: serde_json::from_str(&self.flavor_extra_specs).unwrap_or_default(),
        }
    }
}

const COLUMNS: &str = "uuid, project_id, user_id, display_name, display_description, hostname, \
    reservation_id, launch_index, image_ref, kernel_id, ramdisk_id, flavor_id, flavor_name, vcpus, \
    memory_mb, root_gb, ephemeral_gb, swap_mb, flavor_extra_specs, old_flavor, new_flavor, key_name, \
    key_data, user_data, config_drive, disk_config, access_ip_v4, access_ip_v6, root_device_name, \
    availability_zone, requested_availability_zone, forced_host, forced_node, scheduler_hints, host, \
    node, launched_on, vmm_id, vm_state, task_state, power_state, progress, locked, locked_by, \
    locked_reason, launched_at, terminated_at, created_at, updated_at, deleted, deleted_at, generation";

/// Inserts an instance.
pub async fn insert_instance(conn: &mut AnyConnection, i: &InstanceRow) -> Result<()> {
    let mut q = Sql::new(format!("INSERT INTO instances ({COLUMNS}) VALUES ("));
    q.bind(i.uuid.clone())
        .push(", ")
        .bind(i.project_id.clone())
        .push(", ")
        .bind(i.user_id.clone())
        .push(", ")
        .bind(i.display_name.clone())
        .push(", ")
        .bind(i.display_description.clone())
        .push(", ")
        .bind(i.hostname.clone())
        .push(", ")
        .bind(i.reservation_id.clone())
        .push(", ")
        .bind(i.launch_index)
        .push(", ")
        .bind(i.image_ref.clone())
        .push(", ")
        .bind(i.kernel_id.clone())
        .push(", ")
        .bind(i.ramdisk_id.clone())
        .push(", ")
        .bind(i.flavor_id.clone())
        .push(", ")
        .bind(i.flavor_name.clone())
        .push(", ")
        .bind(i.vcpus)
        .push(", ")
        .bind(i.memory_mb)
        .push(", ")
        .bind(i.root_gb)
        .push(", ")
        .bind(i.ephemeral_gb)
        .push(", ")
        .bind(i.swap_mb)
        .push(", ")
        .bind(i.flavor_extra_specs.clone())
        .push(", ")
        .bind(i.old_flavor.clone())
        .push(", ")
        .bind(i.new_flavor.clone())
        .push(", ")
        .bind(i.key_name.clone())
        .push(", ")
        .bind(i.key_data.clone())
        .push(", ")
        .bind(i.user_data.clone())
        .push(", ")
        .bind(i.config_drive.clone())
        .push(", ")
        .bind(i.disk_config.clone())
        .push(", ")
        .bind(i.access_ip_v4.clone())
        .push(", ")
        .bind(i.access_ip_v6.clone())
        .push(", ")
        .bind(i.root_device_name.clone())
        .push(", ")
        .bind(i.availability_zone.clone())
        .push(", ")
        .bind(i.requested_availability_zone.clone())
        .push(", ")
        .bind(i.forced_host.clone())
        .push(", ")
        .bind(i.forced_node.clone())
        .push(", ")
        .bind(i.scheduler_hints.clone())
        .push(", ")
        .bind(i.host.clone())
        .push(", ")
        .bind(i.node.clone())
        .push(", ")
        .bind(i.launched_on.clone())
        .push(", ")
        .bind(i.vmm_id.clone())
        .push(", ")
        .bind(i.vm_state.clone())
        .push(", ")
        .bind(i.task_state.clone())
        .push(", ")
        .bind(i.power_state)
        .push(", ")
        .bind(i.progress)
        .push(", ")
        .bind(i.locked)
        .push(", ")
        .bind(i.locked_by.clone())
        .push(", ")
        .bind(i.locked_reason.clone())
        .push(", ")
        .bind(i.launched_at.map(|t| t.to_db()))
        .push(", ")
        .bind(i.terminated_at.map(|t| t.to_db()))
        .push(", ")
        .bind(i.created_at)
        .push(", ")
        .bind(i.updated_at)
        .push(", ")
        .bind(i.deleted)
        .push(", ")
        .bind(i.deleted_at.map(|t| t.to_db()))
        .push(", ")
        .bind(i.generation)
        .push(")");
    q.execute(&mut *conn).await?;
    Ok(())
}

/// A live (not deleted) instance by uuid.
pub async fn get_instance<'e>(
    ex: impl Executor<'e, Database = Any>,
    uuid: &str,
) -> Result<Option<InstanceRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM instances WHERE uuid = $1 AND deleted = FALSE"
    ))
    .bind(uuid)
    .fetch_optional(ex)
    .await?)
}

/// An instance by uuid, deleted or not.
pub async fn get_instance_any<'e>(
    ex: impl Executor<'e, Database = Any>,
    uuid: &str,
) -> Result<Option<InstanceRow>> {
    Ok(
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM instances WHERE uuid = $1"))
            .bind(uuid)
            .fetch_optional(ex)
            .await?,
    )
}

/// Live instances by uuid, in no particular order (missing ones are left out).
pub async fn get_instances<'e>(
    ex: impl Executor<'e, Database = Any>,
    uuids: &[String],
) -> Result<Vec<InstanceRow>> {
    let mut q = Sql::new(format!(
        "SELECT {COLUMNS} FROM instances WHERE deleted = FALSE AND uuid IN ("
    ));
    q.bind_list(uuids.to_vec()).push(")");
    q.fetch_all(ex).await
}

/// The live instances on a compute host.
pub async fn list_instances_on_host<'e>(
    ex: impl Executor<'e, Database = Any>,
    host: &str,
) -> Result<Vec<InstanceRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM instances WHERE host = $1 AND deleted = FALSE ORDER BY created_at, uuid"
    ))
    .bind(host)
    .fetch_all(ex)
    .await?)
}

/// How many live instances each host has (hosts with none are left out).
pub async fn count_instances_by_host<'e>(
    ex: impl Executor<'e, Database = Any>,
) -> Result<BTreeMap<String, i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT host, COUNT(*) FROM instances WHERE deleted = FALSE AND host IS NOT NULL GROUP BY host",
    )
    .fetch_all(ex)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Live instances in a task state that has not changed since `before`
/// (for the conductor's periodic reset of stuck tasks).
pub async fn list_stale_tasks<'e>(
    ex: impl Executor<'e, Database = Any>,
    before: Timestamp,
) -> Result<Vec<InstanceRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM instances WHERE deleted = FALSE AND task_state IS NOT NULL \
         AND updated_at < $1 ORDER BY updated_at"
    ))
    .bind(before)
    .fetch_all(ex)
    .await?)
}

/// Live instances in `vm_state`, oldest first (the conductor's resume
/// after a restart reads `building` ones).
pub async fn list_in_vm_state<'e>(
    ex: impl Executor<'e, Database = Any>,
    vm_state: &str,
) -> Result<Vec<InstanceRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM instances WHERE deleted = FALSE AND vm_state = $1 ORDER BY created_at, uuid"
    ))
    .bind(vm_state)
    .fetch_all(ex)
    .await?)
}

/// What an [`update_instance`] requires of the row it changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Expect {
    /// The generation the writer read.
    pub generation: Option<i64>,
    /// The task state it must still be in (`Some(None)`: no task).
    pub task_state: Option<Option<String>>,
    /// One of these vm states.
    pub vm_states: Option<Vec<String>>,
    /// The VMM incarnation it must still run (`Some(None)`: none).
    pub vmm_id: Option<Option<String>>,
    /// The host it must still be on (`Some(None)`: none yet).
    pub host: Option<Option<String>>,
}

/// Fields an [`update_instance`] sets; `None` leaves a field alone,
/// `Some(None)` clears a nullable one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Change {
    /// vm_state.
    pub vm_state: Option<String>,
    /// task_state.
    pub task_state: Option<Option<String>>,
    /// power_state code.
    pub power_state: Option<i64>,
    /// Compute host.
    pub host: Option<Option<String>>,
    /// Compute node.
    pub node: Option<Option<String>>,
    /// First host.
    pub launched_on: Option<Option<String>>,
    /// VMM incarnation.
    pub vmm_id: Option<Option<String>>,
    /// Availability zone.
    pub availability_zone: Option<Option<String>>,
    /// Progress.
    pub progress: Option<i64>,
    /// Launched at.
    pub launched_at: Option<Option<Timestamp>>,
    /// Terminated at.
    pub terminated_at: Option<Option<Timestamp>>,
    /// Root device name.
    pub root_device_name: Option<Option<String>>,
    /// The current flavor (resize): replaces every flavor column.
    pub flavor: Option<FlavorCopy>,
    /// Old flavor (JSON) during a resize.
    pub old_flavor: Option<Option<FlavorCopy>>,
    /// New flavor (JSON) during a resize.
    pub new_flavor: Option<Option<FlavorCopy>>,
}

fn set_opt_text(q: &mut Sql, col: &str, v: &Option<Option<String>>) {
    if let Some(v) = v {
        q.push(", ").push(col).push(" = ").bind(v.clone());
    }
}

/// Changes a live instance if it meets `expect`; bumps its generation and
/// `updated_at`. Returns the new generation, or `None` when the instance
/// is gone or no longer meets `expect` (nothing changed).
pub async fn update_instance<'e>(
    ex: impl Executor<'e, Database = Any>,
    uuid: &str,
    expect: &Expect,
    change: &Change,
) -> Result<Option<i64>> {
    let mut q = Sql::new("UPDATE instances SET generation = generation + 1, updated_at = ");
    q.bind(Timestamp::now());
    if let Some(v) = &change.vm_state {
        q.push(", vm_state = ").bind(v.clone());
    }
    set_opt_text(&mut q, "task_state", &change.task_state);
    if let Some(p) = change.power_state {
        q.push(", power_state = ").bind(p);
    }
    set_opt_text(&mut q, "host", &change.host);
    set_opt_text(&mut q, "node", &change.node);
    set_opt_text(&mut q, "launched_on", &change.launched_on);
    set_opt_text(&mut q, "vmm_id", &change.vmm_id);
    set_opt_text(&mut q, "availability_zone", &change.availability_zone);
    set_opt_text(&mut q, "root_device_name", &change.root_device_name);
    if let Some(p) = change.progress {
        q.push(", progress = ").bind(p);
    }
    if let Some(t) = &change.launched_at {
        q.push(", launched_at = ").bind(t.map(|t| t.to_db()));
    }
    if let Some(t) = &change.terminated_at {
        q.push(", terminated_at = ").bind(t.map(|t| t.to_db()));
    }
    if let Some(f) = &change.flavor {
        q.push(", flavor_id = ")
            .bind(f.id.clone())
            .push(", flavor_name = ")
            .bind(f.name.clone())
            .push(", vcpus = ")
            .bind(f.vcpus)
            .push(", memory_mb = ")
            .bind(f.memory_mb)
            .push(", root_gb = ")
            .bind(f.root_gb)
            .push(", ephemeral_gb = ")
            .bind(f.ephemeral_gb)
            .push(", swap_mb = ")
            .bind(f.swap_mb)
            .push(", flavor_extra_specs = ")
            .bind(serde_json::to_string(&f.extra_specs).expect("maps serialize"));
    }
    let json = |f: &Option<FlavorCopy>| {
        f.as_ref()
            .map(|f| serde_json::to_string(f).expect("flavors serialize"))
    };
    if let Some(f) = &change.old_flavor {
        q.push(", old_flavor = ").bind(json(f));
    }
    if let Some(f) = &change.new_flavor {
        q.push(", new_flavor = ").bind(json(f));
    }
    q.push(" WHERE uuid = ")
        .bind(uuid.to_owned())
        .push(" AND deleted = FALSE");
    add_expect(&mut q, expect);
    q.push(" RETURNING generation");
    let rows: Vec<(i64,)> = q.fetch_all(ex).await?;
    Ok(rows.first().map(|(g,)| *g))
}

fn add_expect(q: &mut Sql, expect: &Expect) {
    if let Some(g) = expect.generation {
        q.push(" AND generation = ").bind(g);
    }
    match &expect.task_state {
        Some(None) => {
            q.push(" AND task_state IS NULL");
        }
        Some(Some(t)) => {
            q.push(" AND task_state = ").bind(t.clone());
        }
        None => {}
    }
    if let Some(states) = &expect.vm_states {
        q.push(" AND vm_state IN (")
            .bind_list(states.clone())
            .push(")");
    }
    match &expect.vmm_id {
        Some(None) => {
            q.push(" AND vmm_id IS NULL");
        }
        Some(Some(v)) => {
            q.push(" AND vmm_id = ").bind(v.clone());
        }
        None => {}
    }
    match &expect.host {
        Some(None) => {
            q.push(" AND host IS NULL");
        }
        Some(Some(h)) => {
            q.push(" AND host = ").bind(h.clone());
        }
        None => {}
    }
}

/// Starts a task: sets `task_state` to `task` if the instance is live, in
/// one of `vm_states` (any when `None`) and its task state is one of
/// `from_tasks` (`None` in the list: no task). Returns the new generation,
/// or `None` when the state did not allow it (read the row to say why).
pub async fn start_task<'e>(
    ex: impl Executor<'e, Database = Any>,
    uuid: &str,
    vm_states: Option<&[&str]>,
    from_tasks: &[Option<&str>],
    task: Option<&str>,
) -> Result<Option<i64>> {
    let mut q = Sql::new("UPDATE instances SET generation = generation + 1, updated_at = ");
    q.bind(Timestamp::now())
        .push(", task_state = ")
        .bind(task.map(str::to_owned))
        .push(" WHERE uuid = ")
        .bind(uuid.to_owned())
        .push(" AND deleted = FALSE");
    if let Some(states) = vm_states {
        q.push(" AND vm_state IN (")
            .bind_list(states.iter().map(|s| s.to_string()))
            .push(")");
    }
    let named: Vec<String> = from_tasks.iter().flatten().map(|s| s.to_string()).collect();
    let none_ok = from_tasks.iter().any(Option::is_none);
    q.push(" AND (");
    if none_ok {
        q.push("task_state IS NULL OR ");
    }
    q.push("task_state IN (").bind_list(named).push("))");
    q.push(" RETURNING generation");
    let rows: Vec<(i64,)> = q.fetch_all(ex).await?;
    Ok(rows.first().map(|(g,)| *g))
}

/// Updates the user-editable fields of a live instance (name, description,
/// host name, access IPs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserUpdate {
    /// Name.
    pub display_name: Option<String>,
    /// Description (`Some(None)` clears).
    pub display_description: Option<Option<String>>,
    /// Host name (2.90).
    pub hostname: Option<String>,
    /// accessIPv4 (`Some(None)` clears).
    pub access_ip_v4: Option<Option<String>>,
    /// accessIPv6 (`Some(None)` clears).
    pub access_ip_v6: Option<Option<String>>,
    /// Disk config.
    pub disk_config: Option<String>,
}

/// Applies a [`UserUpdate`]; false when the instance is gone.
pub async fn update_user_fields<'e>(
    ex: impl Executor<'e, Database = Any>,
    uuid: &str,
    u: &UserUpdate,
) -> Result<bool> {
    let mut q = Sql::new("UPDATE instances SET generation = generation + 1, updated_at = ");
    q.bind(Timestamp::now());
    if let Some(n) = &u.display_name {
        q.push(", display_name = ").bind(n.clone());
    }
    if let Some(d) = &u.display_description {
        q.push(", display_description = ").bind(d.clone());
    }
    if let Some(h) = &u.hostname {
        q.push(", hostname = ").bind(h.clone());
    }
    if let Some(a) = &u.access_ip_v4 {
        q.push(", access_ip_v4 = ").bind(a.clone());
    }
    if let Some(a) = &u.access_ip_v6 {
        q.push(", access_ip_v6 = ").bind(a.clone());
    }
    if let Some(d) = &u.disk_config {
        q.push(", disk_config = ").bind(d.clone());
    }
    q.push(" WHERE uuid = ")
        .bind(uuid.to_owned())
        .push(" AND deleted = FALSE");
    Ok(q.execute(ex).await? == 1)
}

/// Locks or unlocks a live instance; false when it is gone.
pub async fn set_lock<'e>(
    ex: impl Executor<'e, Database = Any>,
    uuid: &str,
    locked: bool,
    by: Option<&str>,
    reason: Option<&str>,
) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE instances SET locked = $1, locked_by = $2, locked_reason = $3, \
         generation = generation + 1, updated_at = $4 WHERE uuid = $5 AND deleted = FALSE",
    )
    .bind(locked)
    .bind(by)
    .bind(reason)
    .bind(Timestamp::now())
    .bind(uuid)
    .execute(ex)
    .await?
    .rows_affected()
        == 1)
}

/// Soft-deletes a live instance: `vm_state` deleted, no task, `deleted`,
/// `deleted_at` and `terminated_at` now. Removes its group membership and
/// security groups (its ports are the network module's). False when it was
/// already gone, or did not meet `expect`.
pub async fn mark_deleted(conn: &mut AnyConnection, uuid: &str, expect: &Expect) -> Result<bool> {
    let now = Timestamp::now();
    let mut q = Sql::new(
        "UPDATE instances SET vm_state = 'deleted', task_state = NULL, power_state = 0, \
         deleted = TRUE, generation = generation + 1, deleted_at = ",
    );
    q.bind(now)
        .push(", terminated_at = ")
        .bind(now)
        .push(", updated_at = ")
        .bind(now)
        .push(" WHERE uuid = ")
        .bind(uuid.to_owned())
        .push(" AND deleted = FALSE");
    add_expect(&mut q, expect);
    if q.execute(&mut *conn).await? != 1 {
        return Ok(false);
    }
    sqlx::query("DELETE FROM server_group_members WHERE instance_uuid = $1")
        .bind(uuid)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM instance_security_groups WHERE instance_uuid = $1")
        .bind(uuid)
        .execute(&mut *conn)
        .await?;
    super::consoles::delete_for_instance(&mut *conn, uuid).await?;
    Ok(true)
}

// ---- listing -------------------------------------------------------------------

/// Keys servers can be sorted by (Nova's `sort_key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// created_at.
    CreatedAt,
    /// updated_at.
    UpdatedAt,
    /// uuid.
    Uuid,
    /// display_name.
    DisplayName,
    /// display_description.
    DisplayDescription,
    /// hostname.
    Hostname,
    /// host (admin).
    Host,
    /// node (admin).
    Node,
    /// vm_state.
    VmState,
    /// task_state.
    TaskState,
    /// power_state.
    PowerState,
    /// image_ref.
    ImageRef,
    /// flavor id (Nova's instance_type_id).
    FlavorId,
    /// key_name.
    KeyName,
    /// launched_at.
    LaunchedAt,
    /// terminated_at.
    TerminatedAt,
    /// availability_zone.
    AvailabilityZone,
    /// project_id.
    ProjectId,
    /// user_id.
    UserId,
    /// launch_index.
    LaunchIndex,
    /// progress.
    Progress,
    /// locked (2.73).
    Locked,
    /// vcpus.
    Vcpus,
    /// memory_mb.
    MemoryMb,
    /// root_gb.
    RootGb,
    /// ephemeral_gb.
    EphemeralGb,
    /// config_drive.
    ConfigDrive,
    /// access_ip_v4.
    AccessIpV4,
    /// access_ip_v6.
    AccessIpV6,
    /// reservation_id.
    ReservationId,
    /// kernel_id.
    KernelId,
    /// ramdisk_id.
    RamdiskId,
    /// root_device_name.
    RootDeviceName,
    /// launched_on.
    LaunchedOn,
}

impl SortKey {
    /// The key of a Nova `sort_key` value.
    pub fn parse(s: &str) -> Option<SortKey> {
        Some(match s {
            "created_at" => SortKey::CreatedAt,
            "updated_at" => SortKey::UpdatedAt,
            "uuid" => SortKey::Uuid,
            "display_name" => SortKey::DisplayName,
            "display_description" => SortKey::DisplayDescription,
            "hostname" => SortKey::Hostname,
            "host" => SortKey::Host,
            "node" => SortKey::Node,
            "vm_state" => SortKey::VmState,
            "task_state" => SortKey::TaskState,
            "power_state" => SortKey::PowerState,
            "image_ref" => SortKey::ImageRef,
            "instance_type_id" => SortKey::FlavorId,
            "key_name" => SortKey::KeyName,
            "launched_at" => SortKey::LaunchedAt,
            "terminated_at" => SortKey::TerminatedAt,
            "availability_zone" => SortKey::AvailabilityZone,
            "project_id" => SortKey::ProjectId,
            "user_id" => SortKey::UserId,
            "launch_index" => SortKey::LaunchIndex,
            "progress" => SortKey::Progress,
            "locked" => SortKey::Locked,
            "vcpus" => SortKey::Vcpus,
            "memory_mb" => SortKey::MemoryMb,
            "root_gb" => SortKey::RootGb,
            "ephemeral_gb" => SortKey::EphemeralGb,
            "config_drive" => SortKey::ConfigDrive,
            "access_ip_v4" => SortKey::AccessIpV4,
            "access_ip_v6" => SortKey::AccessIpV6,
            "reservation_id" => SortKey::ReservationId,
            "kernel_id" => SortKey::KernelId,
            "ramdisk_id" => SortKey::RamdiskId,
            "root_device_name" => SortKey::RootDeviceName,
            "launched_on" => SortKey::LaunchedOn,
            _ => return None,
        })
    }

    fn column(self) -> (&'static str, bool) {
        // (never-NULL expression, is text)
        match self {
            SortKey::CreatedAt => ("created_at", true),
            SortKey::UpdatedAt => ("updated_at", true),
            SortKey::Uuid => ("uuid", true),
            SortKey::DisplayName => ("display_name", true),
            SortKey::DisplayDescription => ("COALESCE(display_description, '')", true),
            SortKey::Hostname => ("hostname", true),
            SortKey::Host => ("COALESCE(host, '')", true),
            SortKey::Node => ("COALESCE(node, '')", true),
            SortKey::VmState => ("vm_state", true),
            SortKey::TaskState => ("COALESCE(task_state, '')", true),
            SortKey::PowerState => ("power_state", false),
            SortKey::ImageRef => ("image_ref", true),
            SortKey::FlavorId => ("flavor_id", true),
            SortKey::KeyName => ("COALESCE(key_name, '')", true),
            SortKey::LaunchedAt => ("COALESCE(launched_at, '')", true),
            SortKey::TerminatedAt => ("COALESCE(terminated_at, '')", true),
            SortKey::AvailabilityZone => ("COALESCE(availability_zone, '')", true),
            SortKey::ProjectId => ("project_id", true),
            SortKey::UserId => ("user_id", true),
            SortKey::LaunchIndex => ("launch_index", false),
            SortKey::Progress => ("progress", false),
            SortKey::Locked => ("CASE WHEN locked THEN 1 ELSE 0 END", false),
            SortKey::Vcpus => ("vcpus", false),
            SortKey::MemoryMb => ("memory_mb", false),
            SortKey::RootGb => ("root_gb", false),
            SortKey::EphemeralGb => ("ephemeral_gb", false),
            SortKey::ConfigDrive => ("config_drive", true),
            SortKey::AccessIpV4 => ("COALESCE(access_ip_v4, '')", true),
            SortKey::AccessIpV6 => ("COALESCE(access_ip_v6, '')", true),
            SortKey::ReservationId => ("reservation_id", true),
            SortKey::KernelId => ("COALESCE(kernel_id, '')", true),
            SortKey::RamdiskId => ("COALESCE(ramdisk_id, '')", true),
            SortKey::RootDeviceName => ("COALESCE(root_device_name, '')", true),
            SortKey::LaunchedOn => ("COALESCE(launched_on, '')", true),
        }
    }

    fn expr(self, backend: Backend) -> String {
        let (e, text) = self.column();
        if text && backend == Backend::Postgres {
            format!("({e} COLLATE \"C\")")
        } else {
            e.to_owned()
        }
    }

    fn marker_value(self, m: &InstanceRow) -> MarkerValue {
        let t = |s: &str| MarkerValue::Text(s.to_owned());
        let o = |s: &Option<String>| MarkerValue::Text(s.clone().unwrap_or_default());
        let ts =
            |s: &Option<Timestamp>| MarkerValue::Text(s.map(|t| t.to_db()).unwrap_or_default());
        match self {
            SortKey::CreatedAt => MarkerValue::Text(m.created_at.to_db()),
            SortKey::UpdatedAt => MarkerValue::Text(m.updated_at.to_db()),
            SortKey::Uuid => t(&m.uuid),
            SortKey::DisplayName => t(&m.display_name),
            SortKey::DisplayDescription => o(&m.display_description),
            SortKey::Hostname => t(&m.hostname),
            SortKey::Host => o(&m.host),
            SortKey::Node => o(&m.node),
            SortKey::VmState => t(&m.vm_state),
            SortKey::TaskState => o(&m.task_state),
            SortKey::PowerState => MarkerValue::Int(m.power_state),
            SortKey::ImageRef => t(&m.image_ref),
            SortKey::FlavorId => t(&m.flavor_id),
            SortKey::KeyName => o(&m.key_name),
            SortKey::LaunchedAt => ts(&m.launched_at),
            SortKey::TerminatedAt => ts(&m.terminated_at),
            SortKey::AvailabilityZone => o(&m.availability_zone),
            SortKey::ProjectId => t(&m.project_id),
            SortKey::UserId => t(&m.user_id),
            SortKey::LaunchIndex => MarkerValue::Int(m.launch_index),
            SortKey::Progress => MarkerValue::Int(m.progress),
            SortKey::Locked => MarkerValue::Int(i64::from(m.locked)),
            SortKey::Vcpus => MarkerValue::Int(m.vcpus),
            SortKey::MemoryMb => MarkerValue::Int(m.memory_mb),
            SortKey::RootGb => MarkerValue::Int(m.root_gb),
            SortKey::EphemeralGb => MarkerValue::Int(m.ephemeral_gb),
            SortKey::ConfigDrive => t(&m.config_drive),
            SortKey::AccessIpV4 => o(&m.access_ip_v4),
            SortKey::AccessIpV6 => o(&m.access_ip_v6),
            SortKey::ReservationId => t(&m.reservation_id),
            SortKey::KernelId => o(&m.kernel_id),
            SortKey::RamdiskId => o(&m.ramdisk_id),
            SortKey::RootDeviceName => o(&m.root_device_name),
            SortKey::LaunchedOn => o(&m.launched_on),
        }
    }
}

enum MarkerValue {
    Text(String),
    Int(i64),
}

fn bind_marker(q: &mut Sql, v: MarkerValue) {
    match v {
        MarkerValue::Text(s) => q.bind(s),
        MarkerValue::Int(n) => q.bind(n),
    };
}

/// Which instances a listing covers, by deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Deleted {
    /// Live ones (the default).
    #[default]
    No,
    /// Deleted ones only (`deleted=True`, admins).
    Only,
    /// Both (`changes-since` given).
    Any,
}

/// A server listing: every filter is ANDed.
#[derive(Debug, Clone, Default)]
pub struct InstanceQuery {
    /// Only this project's (`None`: every project, for admins).
    pub project_id: Option<String>,
    /// Deleted or not.
    pub deleted: Deleted,
    /// Exact uuids (`uuid=`).
    pub uuids: Option<Vec<String>>,
    /// Any of these vm states.
    pub vm_states: Option<Vec<String>>,
    /// Any of these task states (`None` in the list: no task).
    pub task_states: Option<Vec<Option<String>>>,
    /// Exact host.
    pub host: Option<String>,
    /// Exact node.
    pub node: Option<String>,
    /// Image id.
    pub image_ref: Option<String>,
    /// Flavor id.
    pub flavor_id: Option<String>,
    /// Reservation id.
    pub reservation_id: Option<String>,
    /// User id.
    pub user_id: Option<String>,
    /// Key name.
    pub key_name: Option<String>,
    /// Availability zone.
    pub availability_zone: Option<String>,
    /// Exact (case-sensitive) hostname.
    pub hostname: Option<String>,
    /// Locked or not.
    pub locked: Option<bool>,
    /// Power state.
    pub power_state: Option<i64>,
    /// Progress.
    pub progress: Option<i64>,
    /// Launch index.
    pub launch_index: Option<i64>,
    /// Config drive.
    pub config_drive: Option<String>,
    /// `changes-since`: updated at or after.
    pub changes_since: Option<Timestamp>,
    /// `changes-before`: updated at or before.
    pub changes_before: Option<Timestamp>,
    /// `launched_at` at or after.
    pub launched_after: Option<Timestamp>,
    /// `terminated_at` at or before.
    pub terminated_before: Option<Timestamp>,
    /// Every one of these tags.
    pub tags: Vec<String>,
    /// Any of these tags.
    pub tags_any: Vec<String>,
    /// None of these (all together).
    pub not_tags: Vec<String>,
    /// None of these (any).
    pub not_tags_any: Vec<String>,
    /// `LOWER(display_name) LIKE` this pattern (lower-case, `\` escapes):
    /// the name filter when it is a plain substring.
    pub name_like: Option<String>,
    /// Only these uuids, if given (from the IP or name regex filters, done by
    /// the caller).
    pub restrict_to: Option<Vec<String>>,
    /// Sort keys and directions (`true`: ascending); `uuid` ends the list.
    pub sort: Vec<(SortKey, bool)>,
    /// Start after this instance.
    pub marker: Option<InstanceRow>,
    /// Page size (`None`: no limit).
    pub limit: Option<i64>,
}

fn add_filters(q: &mut Sql, f: &InstanceQuery) {
    match f.deleted {
        Deleted::No => {
            q.push(" AND deleted = FALSE");
        }
        Deleted::Only => {
            q.push(" AND deleted = TRUE");
        }
        Deleted::Any => {}
    }
    if let Some(p) = &f.project_id {
        q.push(" AND project_id = ").bind(p.clone());
    }
    if let Some(u) = &f.uuids {
        q.push(" AND uuid IN (").bind_list(u.clone()).push(")");
    }
    if let Some(pattern) = &f.name_like {
        q.push(" AND LOWER(display_name) LIKE ")
            .bind(pattern.clone())
            .push(" ESCAPE '\\'");
    }
    if let Some(u) = &f.restrict_to {
        q.push(" AND uuid IN (").bind_list(u.clone()).push(")");
    }
    if let Some(v) = &f.vm_states {
        q.push(" AND vm_state IN (").bind_list(v.clone()).push(")");
    }
    if let Some(t) = &f.task_states {
        let named: Vec<String> = t.iter().flatten().cloned().collect();
        q.push(" AND (");
        if t.iter().any(Option::is_none) {
            q.push("task_state IS NULL OR ");
        }
        q.push("task_state IN (").bind_list(named).push("))");
    }
    let eq = |q: &mut Sql, col: &str, v: &Option<String>| {
        if let Some(v) = v {
            q.push(" AND ").push(col).push(" = ").bind(v.clone());
        }
    };
    eq(q, "host", &f.host);
    eq(q, "node", &f.node);
    eq(q, "image_ref", &f.image_ref);
    eq(q, "flavor_id", &f.flavor_id);
    eq(q, "reservation_id", &f.reservation_id);
    eq(q, "user_id", &f.user_id);
    eq(q, "key_name", &f.key_name);
    eq(q, "availability_zone", &f.availability_zone);
    eq(q, "hostname", &f.hostname);
    eq(q, "config_drive", &f.config_drive);
    if let Some(l) = f.locked {
        q.push(" AND locked = ").bind(l);
    }
    if let Some(p) = f.power_state {
        q.push(" AND power_state = ").bind(p);
    }
    if let Some(p) = f.progress {
        q.push(" AND progress = ").bind(p);
    }
    if let Some(p) = f.launch_index {
        q.push(" AND launch_index = ").bind(p);
    }
    if let Some(t) = f.changes_since {
        q.push(" AND updated_at >= ").bind(t);
    }
    if let Some(t) = f.changes_before {
        q.push(" AND updated_at <= ").bind(t);
    }
    if let Some(t) = f.launched_after {
        q.push(" AND launched_at >= ").bind(t);
    }
    if let Some(t) = f.terminated_before {
        q.push(" AND terminated_at <= ").bind(t);
    }
    for t in &f.tags {
        q.push(" AND EXISTS (SELECT 1 FROM instance_tags t WHERE t.instance_uuid = instances.uuid AND t.tag = ")
            .bind(t.clone())
            .push(")");
    }
    if !f.tags_any.is_empty() {
        q.push(" AND EXISTS (SELECT 1 FROM instance_tags t WHERE t.instance_uuid = instances.uuid AND t.tag IN (")
            .bind_list(f.tags_any.clone())
            .push("))");
    }
    if !f.not_tags.is_empty() {
        // Not having every one of them.
        q.push(" AND (SELECT COUNT(*) FROM instance_tags t WHERE t.instance_uuid = instances.uuid AND t.tag IN (")
            .bind_list(f.not_tags.clone())
            .push(")) < ")
            .bind(f.not_tags.len() as i64);
    }
    if !f.not_tags_any.is_empty() {
        q.push(" AND NOT EXISTS (SELECT 1 FROM instance_tags t WHERE t.instance_uuid = instances.uuid AND t.tag IN (")
            .bind_list(f.not_tags_any.clone())
            .push("))");
    }
}

/// One page of instances matching `query`, in its order.
pub async fn list_instances<'e>(
    ex: impl Executor<'e, Database = Any>,
    backend: Backend,
    query: &InstanceQuery,
) -> Result<Vec<InstanceRow>> {
    let mut q = Sql::new(format!("SELECT {COLUMNS} FROM instances WHERE 1 = 1"));
    add_filters(&mut q, query);
    let mut keys = query.sort.clone();
    if keys.is_empty() {
        keys.push((SortKey::CreatedAt, false));
    }
    if !keys.iter().any(|(k, _)| *k == SortKey::Uuid) {
        let dir = keys.last().map(|(_, asc)| *asc).unwrap_or(false);
        keys.push((SortKey::Uuid, dir));
    }
    if let Some(m) = &query.marker {
        q.push(" AND (");
        for (i, (key, asc)) in keys.iter().enumerate() {
            if i > 0 {
                q.push(" OR ");
            }
            q.push("(");
            for (prev, _) in &keys[..i] {
                q.push(prev.expr(backend)).push(" = ");
                bind_marker(&mut q, prev.marker_value(m));
                q.push(" AND ");
            }
            q.push(key.expr(backend))
                .push(if *asc { " > " } else { " < " });
            bind_marker(&mut q, key.marker_value(m));
            q.push(")");
        }
        q.push(")");
    }
    q.push(" ORDER BY ");
    for (i, (key, asc)) in keys.iter().enumerate() {
        if i > 0 {
            q.push(", ");
        }
        q.push(key.expr(backend))
            .push(if *asc { " ASC" } else { " DESC" });
    }
    if let Some(l) = query.limit {
        q.push(" LIMIT ").bind(l);
    }
    q.fetch_all(ex).await
}

/// (uuid, display_name) of the instances matching `query`'s filters (no
/// paging), for filters done outside SQL (name as a regex).
pub async fn list_names<'e>(
    ex: impl Executor<'e, Database = Any>,
    query: &InstanceQuery,
) -> Result<Vec<(String, String)>> {
    let mut q = Sql::new("SELECT uuid, display_name FROM instances WHERE 1 = 1");
    add_filters(&mut q, query);
    q.fetch_all(ex).await
}

// ---- metadata and tags ---------------------------------------------------------

/// Metadata of many instances: uuid → key → value.
pub async fn metadata_of<'e>(
    ex: impl Executor<'e, Database = Any>,
    uuids: &[String],
) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
    let mut q = Sql::new(
        "SELECT instance_uuid, key, value FROM instance_metadata WHERE instance_uuid IN (",
    );
    q.bind_list(uuids.to_vec()).push(")");
    let rows: Vec<(String, String, String)> = q.fetch_all(ex).await?;
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (u, k, v) in rows {
        out.entry(u).or_default().insert(k, v);
    }
    Ok(out)
}

/// Replaces an instance's metadata.
pub async fn replace_metadata(
    conn: &mut AnyConnection,
    uuid: &str,
    meta: &BTreeMap<String, String>,
) -> Result<()> {
    sqlx::query("DELETE FROM instance_metadata WHERE instance_uuid = $1")
        .bind(uuid)
        .execute(&mut *conn)
        .await?;
    merge_metadata(conn, uuid, meta).await
}

/// Sets keys of an instance's metadata, keeping the others.
pub async fn merge_metadata(
    conn: &mut AnyConnection,
    uuid: &str,
    meta: &BTreeMap<String, String>,
) -> Result<()> {
    for (k, v) in meta {
        sqlx::query(
            "INSERT INTO instance_metadata (instance_uuid, key, value) VALUES ($1, $2, $3) \
             ON CONFLICT (instance_uuid, key) DO UPDATE SET value = excluded.value",
        )
        .bind(uuid)
        .bind(k)
        .bind(v)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Removes one metadata key; false when there was none.
pub async fn delete_metadata_key<'e>(
    ex: impl Executor<'e, Database = Any>,
    uuid: &str,
    key: &str,
) -> Result<bool> {
    Ok(
        sqlx::query("DELETE FROM instance_metadata WHERE instance_uuid = $1 AND key = $2")
            .bind(uuid)
            .bind(key)
            .execute(ex)
            .await?
            .rows_affected()
            == 1,
    )
}

/// Tags of many instances: uuid → sorted tags.
pub async fn tags_of<'e>(
    ex: impl Executor<'e, Database = Any>,
    uuids: &[String],
) -> Result<BTreeMap<String, Vec<String>>> {
    let mut q = Sql::new("SELECT instance_uuid, tag FROM instance_tags WHERE instance_uuid IN (");
    q.bind_list(uuids.to_vec()).push(") ORDER BY tag");
    let rows: Vec<(String, String)> = q.fetch_all(ex).await?;
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (u, t) in rows {
        out.entry(u).or_default().push(t);
    }
    Ok(out)
}

/// Replaces an instance's tags.
pub async fn replace_tags(conn: &mut AnyConnection, uuid: &str, tags: &[String]) -> Result<()> {
    sqlx::query("DELETE FROM instance_tags WHERE instance_uuid = $1")
        .bind(uuid)
        .execute(&mut *conn)
        .await?;
    for t in tags {
        add_tag(&mut *conn, uuid, t).await?;
    }
    Ok(())
}

/// Adds a tag (idempotent).
pub async fn add_tag<'e>(
    ex: impl Executor<'e, Database = Any>,
    uuid: &str,
    tag: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO instance_tags (instance_uuid, tag) VALUES ($1, $2) \
         ON CONFLICT (instance_uuid, tag) DO NOTHING",
    )
    .bind(uuid)
    .bind(tag)
    .execute(ex)
    .await?;
    Ok(())
}

/// Removes a tag; false when the instance did not have it.
pub async fn remove_tag<'e>(
    ex: impl Executor<'e, Database = Any>,
    uuid: &str,
    tag: &str,
) -> Result<bool> {
    Ok(
        sqlx::query("DELETE FROM instance_tags WHERE instance_uuid = $1 AND tag = $2")
            .bind(uuid)
            .bind(tag)
            .execute(ex)
            .await?
            .rows_affected()
            == 1,
    )
}

/// Bumps an instance's generation and `updated_at` (a change to its
/// metadata, tags or security groups); false when it is gone.
pub async fn touch<'e>(ex: impl Executor<'e, Database = Any>, uuid: &str) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE instances SET generation = generation + 1, updated_at = $1 WHERE uuid = $2 AND deleted = FALSE",
    )
    .bind(Timestamp::now())
    .bind(uuid)
    .execute(ex)
    .await?
    .rows_affected()
        == 1)
}

// ---- faults ---------------------------------------------------------------------

/// An instance fault.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Fault {
    /// Row id.
    pub id: i64,
    /// The instance.
    pub instance_uuid: String,
    /// HTTP-like code (500 for most build failures).
    pub code: i64,
    /// For users.
    pub message: String,
    /// For admins.
    pub details: String,
    /// Where it happened.
    pub host: Option<String>,
    /// When.
    pub created_at: Timestamp,
}

/// Records a fault.
pub async fn record_fault<'e>(
    ex: impl Executor<'e, Database = Any>,
    uuid: &str,
    code: i64,
    message: &str,
    details: &str,
    host: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO instance_faults (instance_uuid, code, message, details, host, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(uuid)
    .bind(code)
    .bind(message)
    .bind(details)
    .bind(host)
    .bind(Timestamp::now())
    .execute(ex)
    .await?;
    Ok(())
}

/// The newest fault of each of `uuids` that has one.
pub async fn latest_faults<'e>(
    ex: impl Executor<'e, Database = Any>,
    uuids: &[String],
) -> Result<BTreeMap<String, Fault>> {
    let mut q = Sql::new(
        "SELECT f.id, f.instance_uuid, f.code, f.message, f.details, f.host, f.created_at \
         FROM instance_faults f WHERE f.id = (SELECT MAX(g.id) FROM instance_faults g \
         WHERE g.instance_uuid = f.instance_uuid) AND f.instance_uuid IN (",
    );
    q.bind_list(uuids.to_vec()).push(")");
    let rows: Vec<Fault> = q.fetch_all(ex).await?;
    Ok(rows
        .into_iter()
        .map(|f| (f.instance_uuid.clone(), f))
        .collect())
}

// ---- instance actions and events ------------------------------------------------------

/// An instance action (one per request and instance).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Action {
    /// Row id.
    pub id: i64,
    /// The instance.
    pub instance_uuid: String,
    /// The API request's id.
    pub request_id: String,
    /// `create`, `stop`, `reboot`, …
    pub action: String,
    /// Project of the caller.
    pub project_id: String,
    /// The caller.
    pub user_id: String,
    /// Started.
    pub start_time: Timestamp,
    /// Finished.
    pub finish_time: Option<Timestamp>,
    /// `Error` when an event failed.
    pub message: Option<String>,
    /// Last changed.
    pub updated_at: Timestamp,
}

/// An event of an instance action.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Event {
    /// Row id.
    pub id: i64,
    /// The action.
    pub action_id: i64,
    /// `compute_stop_instance`, `conductor_schedule_and_build_instances`, …
    pub event: String,
    /// Started.
    pub start_time: Timestamp,
    /// Finished.
    pub finish_time: Option<Timestamp>,
    /// `Success` or `Error`.
    pub result: Option<String>,
    /// For admins.
    pub traceback: Option<String>,
    /// Where it ran.
    pub host: Option<String>,
    /// For users (2.84).
    pub details: Option<String>,
}

/// Records the start of an action (idempotent per instance and request).
/// Returns its id.
pub async fn start_action(
    conn: &mut AnyConnection,
    uuid: &str,
    request_id: &str,
    action: &str,
    project_id: &str,
    user_id: &str,
) -> Result<i64> {
    let now = Timestamp::now();
    sqlx::query(
        "INSERT INTO instance_actions (instance_uuid, request_id, action, project_id, user_id, \
         start_time, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (instance_uuid, request_id) DO NOTHING",
    )
    .bind(uuid)
    .bind(request_id)
    .bind(action)
    .bind(project_id)
    .bind(user_id)
    .bind(now)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(sqlx::query_scalar(
        "SELECT id FROM instance_actions WHERE instance_uuid = $1 AND request_id = $2",
    )
    .bind(uuid)
    .bind(request_id)
    .fetch_one(&mut *conn)
    .await?)
}

/// Marks an action finished (`message` `Error` when it failed); false when
/// there is no such action.
pub async fn finish_action<'e>(
    ex: impl Executor<'e, Database = Any>,
    uuid: &str,
    request_id: &str,
    failed: bool,
) -> Result<bool> {
    let now = Timestamp::now();
    let mut q = Sql::new("UPDATE instance_actions SET finish_time = ");
    q.bind(now).push(", updated_at = ").bind(now);
    if failed {
        q.push(", message = 'Error'");
    }
    q.push(" WHERE instance_uuid = ")
        .bind(uuid.to_owned())
        .push(" AND request_id = ")
        .bind(request_id.to_owned());
    Ok(q.execute(ex).await? == 1)
}

/// Records the start of an event of the action of (`uuid`, `request_id`);
/// idempotent (an unfinished event of that name is reused). Returns the
/// event id, or `None` when the action does not exist.
pub async fn start_event(
    conn: &mut AnyConnection,
    uuid: &str,
    request_id: &str,
    event: &str,
    host: Option<&str>,
) -> Result<Option<i64>> {
    let action: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM instance_actions WHERE instance_uuid = $1 AND request_id = $2",
    )
    .bind(uuid)
    .bind(request_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(action_id) = action else {
        return Ok(None);
    };
    let open: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM instance_action_events WHERE action_id = $1 AND event = $2 \
         AND finish_time IS NULL ORDER BY id DESC LIMIT 1",
    )
    .bind(action_id)
    .bind(event)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(id) = open {
        return Ok(Some(id));
    }
    let now = Timestamp::now();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO instance_action_events (action_id, event, start_time, host) \
         VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(action_id)
    .bind(event)
    .bind(now)
    .bind(host)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query("UPDATE instance_actions SET updated_at = $1 WHERE id = $2")
        .bind(now)
        .bind(action_id)
        .execute(&mut *conn)
        .await?;
    Ok(Some(id))
}

/// Finishes the newest unfinished event `event` of the action of (`uuid`,
/// `request_id`) with `Success` or `Error` (starting it first if it was
/// never started). An error also marks the action `Error`. False when the
/// action does not exist.
#[allow(clippy::too_many_arguments)]
pub async fn finish_event(
    conn: &mut AnyConnection,
    uuid: &str,
    request_id: &str,
    event: &str,
    host: Option<&str>,
    ok: bool,
    details: Option<&str>,
    traceback: Option<&str>,
) -> Result<bool> {
    let Some(id) = start_event(conn, uuid, request_id, event, host).await? else {
        return Ok(false);
    };
    let now = Timestamp::now();
    sqlx::query(
        "UPDATE instance_action_events SET finish_time = $1, result = $2, details = $3, \
         traceback = $4 WHERE id = $5",
    )
    .bind(now)
    .bind(if ok { "Success" } else { "Error" })
    .bind(details)
    .bind(traceback)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    let mut q = Sql::new("UPDATE instance_actions SET updated_at = ");
    q.bind(now);
    if !ok {
        q.push(", message = 'Error'");
    }
    q.push(" WHERE instance_uuid = ")
        .bind(uuid.to_owned())
        .push(" AND request_id = ")
        .bind(request_id.to_owned());
    q.execute(&mut *conn).await?;
    Ok(true)
}

/// The actions of an instance, newest first, optionally only those updated
/// in [`since`, `before`], paged by a marker request id.
pub async fn list_actions<'e>(
    ex: impl Executor<'e, Database = Any>,
    uuid: &str,
    since: Option<Timestamp>,
    before: Option<Timestamp>,
    after_id: Option<i64>,
    limit: Option<i64>,
) -> Result<Vec<Action>> {
    let mut q = Sql::new("SELECT * FROM instance_actions WHERE instance_uuid = ");
    q.bind(uuid.to_owned());
    if let Some(t) = since {
        q.push(" AND updated_at >= ").bind(t);
    }
    if let Some(t) = before {
        q.push(" AND updated_at <= ").bind(t);
    }
    if let Some(id) = after_id {
        q.push(" AND id < ").bind(id);
    }
    q.push(" ORDER BY id DESC");
    if let Some(l) = limit {
        q.push(" LIMIT ").bind(l);
    }
    q.fetch_all(ex).await
}

/// One action of an instance by request id.
pub async fn get_action<'e>(
    ex: impl Executor<'e, Database = Any>,
    uuid: &str,
    request_id: &str,
) -> Result<Option<Action>> {
    Ok(sqlx::query_as(
        "SELECT * FROM instance_actions WHERE instance_uuid = $1 AND request_id = $2",
    )
    .bind(uuid)
    .bind(request_id)
    .fetch_optional(ex)
    .await?)
}

/// The events of an action, oldest first.
pub async fn list_events<'e>(
    ex: impl Executor<'e, Database = Any>,
    action_id: i64,
) -> Result<Vec<Event>> {
    Ok(
        sqlx::query_as("SELECT * FROM instance_action_events WHERE action_id = $1 ORDER BY id")
            .bind(action_id)
            .fetch_all(ex)
            .await?,
    )
}

// ---- security groups of an instance ----------------------------------------------------

/// Security group ids of many instances: uuid → ids.
pub async fn security_groups_of<'e>(
    ex: impl Executor<'e, Database = Any>,
    uuids: &[String],
) -> Result<BTreeMap<String, Vec<String>>> {
    let mut q = Sql::new(
        "SELECT instance_uuid, security_group_id FROM instance_security_groups WHERE instance_uuid IN (",
    );
    q.bind_list(uuids.to_vec()).push(")");
    let rows: Vec<(String, String)> = q.fetch_all(ex).await?;
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (u, g) in rows {
        out.entry(u).or_default().push(g);
    }
    Ok(out)
}

/// Adds a security group to an instance (idempotent).
pub async fn add_security_group<'e>(
    ex: impl Executor<'e, Database = Any>,
    uuid: &str,
    group_id: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO instance_security_groups (instance_uuid, security_group_id) VALUES ($1, $2) \
         ON CONFLICT (instance_uuid, security_group_id) DO NOTHING",
    )
    .bind(uuid)
    .bind(group_id)
    .execute(ex)
    .await?;
    Ok(())
}

/// Removes a security group from an instance; false when it did not have it.
pub async fn remove_security_group<'e>(
    ex: impl Executor<'e, Database = Any>,
    uuid: &str,
    group_id: &str,
) -> Result<bool> {
    Ok(sqlx::query(
        "DELETE FROM instance_security_groups WHERE instance_uuid = $1 AND security_group_id = $2",
    )
    .bind(uuid)
    .bind(group_id)
    .execute(ex)
    .await?
    .rows_affected()
        == 1)
}

/// Counts every instance row (benchmarks and tests).
pub async fn count_all<'e>(ex: impl Executor<'e, Database = Any>) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM instances")
        .fetch_one(ex)
        .await?)
}
