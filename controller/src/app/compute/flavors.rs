//! Flavors: create, list, show, describe, delete; extra specs with
//! validation of known keys (2.86); private flavors and their access lists.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::common::{bool_field, int_field, invalid, project_of, str_field};
use crate::app::App;
use crate::context::Context;
use crate::db::Timestamp;
use crate::db::flavors::{self as store, Flavor, FlavorQuery, FlavorRow};
use crate::error::{Error, Kind, Result};
use crate::policy::Target;

/// The largest value of integer flavor fields (Nova's `db.MAX_INT`).
pub const MAX_INT: i64 = 2147483647;

/// Nova's 404 for a flavor.
pub fn not_found(id: &str) -> Error {
    Error::not_found(format!("Flavor {id} could not be found."))
}

/// Whether `ctx` may use `f` (public, admin, or on its access list).
pub async fn can_use(app: &App, ctx: &Context, f: &FlavorRow) -> Result<bool> {
    if f.is_public || ctx.is_admin() {
        return Ok(true);
    }
    match ctx.project_id() {
        Some(p) => store::has_access(app.db.pool(), &f.id, p).await,
        None => Ok(false),
    }
}

/// A flavor the caller may see.
pub async fn get(app: &App, ctx: &Context, id: &str) -> Result<Flavor> {
    let mut conn = app.db.pool().acquire().await?;
    let f = store::get_flavor(&mut conn, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    drop(conn);
    if !can_use(app, ctx, &f.row).await? {
        return Err(not_found(id));
    }
    Ok(f)
}

fn valid_flavor_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && !id.starts_with(' ')
        && !id.ends_with(' ')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_ ".contains(&b))
}

/// Creates a flavor from Nova's request body (`{"flavor": {…}}`'s inner
/// object). `with_description` from 2.55.
pub async fn create(
    app: &App,
    ctx: &Context,
    body: &Map<String, Value>,
    with_description: bool,
) -> Result<Flavor> {
    app.policy.enforce(
        "os_compute_api:os-flavor-manage:create",
        ctx,
        Target::default(),
    )?;
    let mut allowed = vec![
        "name",
        "id",
        "ram",
        "vcpus",
        "disk",
        "OS-FLV-EXT-DATA:ephemeral",
        "swap",
        "rxtx_factor",
        "os-flavor-access:is_public",
    ];
    if with_description {
        allowed.push("description");
    }
    for k in body.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(Error::bad_request(format!(
                "Invalid input for field/attribute flavor. Additional properties are not allowed ('{k}' was unexpected)"
            )));
        }
    }
    let name = body.get("name").ok_or_else(|| {
        Error::bad_request(
            "Invalid input for field/attribute flavor. 'name' is a required property",
        )
    })?;
    let name = str_field("name", name, 1, 255)?;
    if name.trim() != name {
        return Err(invalid(
            "name",
            &Value::String(name),
            "Leading/trailing whitespace is not allowed",
        ));
    }
    let id = match body.get("id") {
        None | Some(Value::Null) => uuid::Uuid::new_v4().to_string(),
        Some(v) => {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err(invalid("id", v, "is not of type 'string', 'null'")),
            };
            if !valid_flavor_id(&s) {
                return Err(invalid(
                    "id",
                    v,
                    "does not match '^(?! )[a-zA-Z0-9. _-]+(?<! )$'",
                ));
            }
            s
        }
    };
    let req = |k: &str| {
        body.get(k).ok_or_else(|| {
            Error::bad_request(format!(
                "Invalid input for field/attribute flavor. '{k}' is a required property"
            ))
        })
    };
    let ram = int_field("ram", req("ram")?, 1, MAX_INT)?;
    let vcpus = int_field("vcpus", req("vcpus")?, 1, MAX_INT)?;
    let disk = int_field("disk", req("disk")?, 0, MAX_INT)?;
    let ephemeral = match body.get("OS-FLV-EXT-DATA:ephemeral") {
        Some(v) => int_field("OS-FLV-EXT-DATA:ephemeral", v, 0, MAX_INT)?,
        None => 0,
    };
    let swap = match body.get("swap") {
        Some(Value::String(s)) if s.is_empty() => 0,
        Some(v) => int_field("swap", v, 0, MAX_INT)?,
        None => 0,
    };
    let rxtx = match body.get("rxtx_factor") {
        Some(v) => {
            let f = match v {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.parse::<f64>().ok(),
                _ => None,
            }
            .ok_or_else(|| invalid("rxtx_factor", v, "is not a number"))?;
            if !(f > 0.0 && f <= 3.40282e38) {
                return Err(invalid("rxtx_factor", v, "is not in range (0, 3.40282e38]"));
            }
            f
        }
        None => 1.0,
    };
    let is_public = match body.get("os-flavor-access:is_public") {
        Some(v) => bool_field("os-flavor-access:is_public", v)?,
        None => true,
    };
    let description = match body.get("description") {
        None | Some(Value::Null) => None,
        Some(v) => Some(str_field("description", v, 0, 65535)?),
    };
    let f = Flavor {
        row: FlavorRow {
            id: id.clone(),
            name: name.clone(),
            memory_mb: ram,
            vcpus,
            root_gb: disk,
            ephemeral_gb: ephemeral,
            swap_mb: swap,
            rxtx_factor: rxtx,
            is_public,
            disabled: false,
            description,
            created_at: Timestamp::now(),
            updated_at: None,
        },
        extra_specs: BTreeMap::new(),
    };
    let inserted = app
        .db
        .retry(|| async {
            let mut tx = app.db.begin().await?;
            if store::find_by_name(&mut *tx, &name).await?.is_some() {
                return Err(Error::conflict(format!(
                    "Flavor with name {name} already exists."
                )));
            }
            if store::get_flavor(&mut tx, &id).await?.is_some() {
                return Err(Error::conflict(format!(
                    "Flavor with ID {id} already exists."
                )));
            }
            store::insert_flavor(&mut tx, &f).await?;
            tx.commit().await?;
            Ok(())
        })
        .await;
    match inserted {
        Ok(()) => Ok(f),
        // A concurrent create with the same name or id.
        Err(e) if e.is(Kind::Conflict) && !e.message.starts_with("Flavor with") => Err(
            Error::conflict(format!("Flavor with name {name} already exists.")),
        ),
        Err(e) => Err(e),
    }
}

/// Keys flavors can be sorted by (`sort_key`), mapped to columns.
pub fn sort_column(key: &str) -> Option<&'static str> {
    Some(match key {
        "flavorid" | "id" => "id",
        "name" => "name",
        "memory_mb" => "memory_mb",
        "vcpus" => "vcpus",
        "root_gb" => "root_gb",
        "ephemeral_gb" => "ephemeral_gb",
        "swap" => "swap_mb",
        "rxtx_factor" => "rxtx_factor",
        "created_at" => "created_at",
        "description" => "description",
        _ => return None,
    })
}

/// Lists flavors (`is_public`, `minRam`, `minDisk`, `sort_key`, `sort_dir`,
/// `limit`, `marker`). Non-admins see public flavors and private ones they
/// have access to; admins choose with `is_public` (`None`/`all`: both).
pub async fn list(app: &App, ctx: &Context, params: &[(String, String)]) -> Result<Vec<Flavor>> {
    let max = app.config.compute.max_limit;
    let mut q = FlavorQuery {
        is_public: Some(true),
        sort: ("id".into(), true),
        limit: Some(max),
        ..Default::default()
    };
    let mut marker = None;
    for (k, v) in params {
        match k.as_str() {
            "is_public" if ctx.is_admin() => {
                q.is_public = match v.to_ascii_lowercase().as_str() {
                    "none" | "all" => None,
                    other => Some(super::common::parse_bool(other).ok_or_else(|| {
                        Error::bad_request(format!("Invalid is_public filter [{v}]"))
                    })?),
                };
            }
            "minRam" => {
                q.min_ram = Some(
                    v.parse()
                        .map_err(|_| Error::bad_request(format!("Invalid minRam filter [{v}]")))?,
                )
            }
            "minDisk" => {
                q.min_disk = Some(
                    v.parse()
                        .map_err(|_| Error::bad_request(format!("Invalid minDisk filter [{v}]")))?,
                )
            }
            "sort_key" => {
                q.sort.0 = sort_column(v)
                    .ok_or_else(|| Error::bad_request(format!("Invalid sort key: {v}")))?
                    .to_owned()
            }
            "sort_dir" => {
                q.sort.1 = match v.as_str() {
                    "asc" => true,
                    "desc" => false,
                    _ => {
                        return Err(Error::bad_request(format!(
                            "Invalid input for query parameters sort_dir. Value: {v}. '{v}' is not one of ['asc', 'desc']"
                        )));
                    }
                }
            }
            "limit" => {
                let n: i64 = v
                    .parse()
                    .map_err(|_| Error::bad_request("limit param must be an integer"))?;
                if n < 0 {
                    return Err(Error::bad_request("limit param must be positive"));
                }
                q.limit = Some(n.min(max));
            }
            "marker" => marker = Some(v.clone()),
            _ => {}
        }
    }
    if !ctx.is_admin() {
        q.project_id = Some(project_of(ctx)?.to_owned());
        if q.is_public == Some(true) {
            // Public, or private with access.
            q.is_public = None;
        }
    }
    let mut conn = app.db.pool().acquire().await?;
    if let Some(m) = marker {
        let f = store::get_flavor(&mut conn, &m)
            .await?
            .ok_or_else(|| Error::bad_request(format!("marker [{m}] not found")))?;
        q.marker = Some(f.row);
    }
    store::list_flavors(&mut conn, &q).await
}

/// Sets a flavor's description (2.55).
pub async fn update(
    app: &App,
    ctx: &Context,
    id: &str,
    description: Option<String>,
) -> Result<Flavor> {
    app.policy.enforce(
        "os_compute_api:os-flavor-manage:update",
        ctx,
        Target::default(),
    )?;
    let f = get(app, ctx, id).await?;
    store::set_description(app.db.pool(), &f.row.id, description.as_deref()).await?;
    get(app, ctx, id).await
}

/// Deletes a flavor (instances keep their copy).
pub async fn delete(app: &App, ctx: &Context, id: &str) -> Result<()> {
    app.policy.enforce(
        "os_compute_api:os-flavor-manage:delete",
        ctx,
        Target::default(),
    )?;
    if !store::delete_flavor(app.db.pool(), id).await? {
        return Err(not_found(id));
    }
    Ok(())
}

// ---- extra specs ---------------------------------------------------------------------

/// A flavor's extra specs (readers).
pub async fn extra_specs(app: &App, ctx: &Context, id: &str) -> Result<BTreeMap<String, String>> {
    app.policy.enforce(
        "os_compute_api:os-flavor-extra-specs:index",
        ctx,
        Target::default(),
    )?;
    Ok(get(app, ctx, id).await?.extra_specs)
}

/// Whether extra specs are shown inside flavors (2.61) for this caller.
pub fn show_extra_specs(app: &App, ctx: &Context) -> bool {
    app.policy.check(
        "os_compute_api:os-flavor-extra-specs:index",
        ctx,
        Target::default(),
    )
}

fn spec_value(key: &str, v: &Value) -> Result<String> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => if *b { "True" } else { "False" }.to_owned(),
        _ => {
            return Err(invalid(
                &format!("extra_specs/{key}"),
                v,
                "is not of type 'string', 'number', 'boolean'",
            ));
        }
    };
    if s.chars().count() > 255 {
        return Err(invalid(&format!("extra_specs/{key}"), v, "is too long"));
    }
    Ok(s)
}

fn valid_spec_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 255
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_:. {}".contains(&b))
}

fn one_of(key: &str, v: &str, allowed: &[&str]) -> Result<()> {
    if allowed.contains(&v) {
        Ok(())
    } else {
        Err(Error::bad_request(format!(
            "Validation failed; '{v}' is not one of: {} (extra spec '{key}').",
            allowed.join(", ")
        )))
    }
}

fn int_at_least(key: &str, v: &str, min: i64) -> Result<()> {
    match v.parse::<i64>() {
        Ok(n) if n >= min => Ok(()),
        _ => Err(Error::bad_request(format!(
            "Validation failed; '{v}' is not a valid integer of at least {min} (extra spec '{key}')."
        ))),
    }
}

fn boolean(key: &str, v: &str) -> Result<()> {
    super::common::parse_bool(v).map(|_| ()).ok_or_else(|| {
        Error::bad_request(format!(
            "Validation failed; '{v}' is not a valid boolean (extra spec '{key}')."
        ))
    })
}

/// Validates a known extra spec (Nova 2.86's validators, for the keys Mica
/// understands or passes on to its scheduler).
pub fn validate_extra_spec(key: &str, value: &str) -> Result<()> {
    let ns = key.split_once(':').map(|(n, _)| n);
    match key {
        "hw:cpu_policy" => return one_of(key, value, &["dedicated", "shared", "mixed"]),
        "hw:cpu_thread_policy" => return one_of(key, value, &["prefer", "isolate", "require"]),
        "hw:emulator_threads_policy" => return one_of(key, value, &["share", "isolate"]),
        "hw:mem_page_size" => {
            let ok = ["large", "small", "any"].contains(&value)
                || value
                    .trim_end_matches(|c: char| c.is_ascii_alphabetic())
                    .parse::<u64>()
                    .is_ok();
            return if ok {
                Ok(())
            } else {
                Err(Error::bad_request(format!(
                    "Validation failed; '{value}' is not a valid page size (extra spec '{key}')."
                )))
            };
        }
        "hw:numa_nodes" | "hw:cpu_sockets" | "hw:cpu_cores" | "hw:cpu_threads"
        | "hw:max_cpu_sockets" | "hw:max_cpu_cores" | "hw:max_cpu_threads" => {
            return int_at_least(key, value, 1);
        }
        "hw:watchdog_action" => {
            return one_of(
                key,
                value,
                &["none", "pause", "poweroff", "reset", "disabled"],
            );
        }
        "hw:boot_menu"
        | "hw:pmu"
        | "hw:vif_multiqueue_enabled"
        | "hw:hide_hypervisor_id"
        | "hw:secure_boot"
        | "hw_rng:allowed" => {
            return boolean(key, value);
        }
        "hw:tpm_version" => return one_of(key, value, &["1.2", "2.0"]),
        "hw:machine_type"
        | "hw:cpu_model"
        | "hw:cpu_realtime_mask"
        | "hw:cpu_dedicated_mask"
        | "hw:cpu_realtime"
        | "hw:mem_encryption"
        | "hw:serial_port_count"
        | "hw:pci_numa_affinity_policy"
        | "hw:locked_memory"
        | "hw:maxphysaddr_mode"
        | "hw:maxphysaddr_bits"
        | "hw:virtio_packed_ring"
        | "hw:vpmem"
        | "hw:tpm_model"
        | "hw:cpu_max_sockets"
        | "hw:cpu_max_cores"
        | "hw:cpu_max_threads"
        | "hw:ephemeral_encryption"
        | "hw:ephemeral_encryption_format"
        | "hw:viommu_model"
        | "hw:sound_model"
        | "hw:usb_model"
        | "hw:redirected_usb_ports"
        | "hw:cpu_realtime_" => return Ok(()),
        "hw_rng:rate_bytes" | "hw_rng:rate_period" => return int_at_least(key, value, 0),
        "hw_video:ram_max_mb" => return int_at_least(key, value, 0),
        "hide_hypervisor_id" => return boolean(key, value),
        _ => {}
    }
    match ns {
        Some("quota") => {
            let name = &key["quota:".len()..];
            let known = [
                "cpu_shares",
                "cpu_period",
                "cpu_quota",
                "cpu_limit",
                "cpu_reservation",
                "disk_read_bytes_sec",
                "disk_read_iops_sec",
                "disk_write_bytes_sec",
                "disk_write_iops_sec",
                "disk_total_bytes_sec",
                "disk_total_iops_sec",
                "vif_inbound_average",
                "vif_inbound_peak",
                "vif_inbound_burst",
                "vif_outbound_average",
                "vif_outbound_peak",
                "vif_outbound_burst",
                "memory_limit",
                "memory_reservation",
                "disk_io_limit",
            ];
            if !known.contains(&name) {
                return Err(unknown_spec(key));
            }
            int_at_least(key, value, 0)
        }
        Some("resources") => {
            // resources[group]:CLASS=<int>
            let class = key.split_once(':').map(|(_, c)| c).unwrap_or_default();
            let ok_class = !class.is_empty()
                && class
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            if !ok_class {
                return Err(unknown_spec(key));
            }
            int_at_least(key, value, 0)
        }
        Some("trait") => {
            let name = key.split_once(':').map(|(_, c)| c).unwrap_or_default();
            if name.is_empty() {
                return Err(unknown_spec(key));
            }
            one_of(key, value, &["required", "forbidden"])
        }
        Some("hw")
        | Some("hw_rng")
        | Some("hw_video")
        | Some("os")
        | Some("accel")
        | Some("pci_passthrough") => {
            let known_free = [
                "os:secure_boot",
                "os:monitors",
                "os:resolution",
                "accel:device_profile",
                "pci_passthrough:alias",
                "hw:numa_cpus",
                "hw:numa_mem",
            ];
            if known_free.iter().any(|k| key.starts_with(k)) {
                return Ok(());
            }
            Err(unknown_spec(key))
        }
        // aggregate_instance_extra_specs:*, capabilities:* and keys in
        // namespaces Nova does not know are free-form.
        _ => Ok(()),
    }
}

fn unknown_spec(key: &str) -> Error {
    Error::bad_request(format!(
        "Validation failed; extra spec '{key}' does not appear to be a valid extra spec."
    ))
}

/// Adds or replaces extra specs (`POST …/os-extra_specs`); validated from 2.86.
pub async fn set_extra_specs(
    app: &App,
    ctx: &Context,
    id: &str,
    specs: &Map<String, Value>,
    validate: bool,
) -> Result<BTreeMap<String, String>> {
    app.policy.enforce(
        "os_compute_api:os-flavor-extra-specs:manage",
        ctx,
        Target::default(),
    )?;
    let f = get(app, ctx, id).await?;
    let mut parsed = BTreeMap::new();
    for (k, v) in specs {
        if !valid_spec_key(k) {
            return Err(Error::bad_request(format!(
                "Invalid input for field/attribute extra_specs. Additional properties are not allowed ('{k}' does not match any of the regexes: '^[a-zA-Z0-9-_:. ]{{1,255}}$')"
            )));
        }
        let value = spec_value(k, v)?;
        if validate {
            validate_extra_spec(k, &value)?;
        }
        parsed.insert(k.clone(), value);
    }
    let mut conn = app.db.pool().acquire().await?;
    store::set_extra_specs(&mut conn, &f.row.id, &parsed).await?;
    Ok(parsed)
}

/// Removes one extra spec.
pub async fn delete_extra_spec(app: &App, ctx: &Context, id: &str, key: &str) -> Result<()> {
    app.policy.enforce(
        "os_compute_api:os-flavor-extra-specs:manage",
        ctx,
        Target::default(),
    )?;
    let f = get(app, ctx, id).await?;
    if !store::delete_extra_spec(app.db.pool(), &f.row.id, key).await? {
        return Err(Error::not_found(format!(
            "Flavor {id} has no extra specs with key {key}."
        )));
    }
    Ok(())
}

// ---- access lists -----------------------------------------------------------------------

/// The projects that may use a private flavor; 404 for public ones.
pub async fn access_list(app: &App, ctx: &Context, id: &str) -> Result<Vec<String>> {
    app.policy
        .enforce("os_compute_api:os-flavor-access", ctx, Target::default())?;
    let f = get(app, ctx, id).await?;
    if f.row.is_public {
        return Err(Error::not_found(
            "Access list not available for public flavors.",
        ));
    }
    store::access_list(app.db.pool(), id).await
}

/// Grants a project access to a private flavor (409 for public ones, 2.7).
pub async fn add_access(app: &App, ctx: &Context, id: &str, project: &str) -> Result<Vec<String>> {
    app.policy.enforce(
        "os_compute_api:os-flavor-access:manage",
        ctx,
        Target::default(),
    )?;
    let f = get(app, ctx, id).await?;
    if f.row.is_public {
        return Err(Error::conflict("Can not add access to a public flavor."));
    }
    match store::add_access(app.db.pool(), id, project).await {
        Ok(()) => {}
        Err(e) if e.is(Kind::Conflict) => {
            return Err(Error::conflict(format!(
                "Flavor access already exists for flavor {id} and project {project} combination."
            )));
        }
        Err(e) => return Err(e),
    }
    store::access_list(app.db.pool(), id).await
}

/// Revokes a project's access.
pub async fn remove_access(
    app: &App,
    ctx: &Context,
    id: &str,
    project: &str,
) -> Result<Vec<String>> {
    app.policy.enforce(
        "os_compute_api:os-flavor-access:manage",
        ctx,
        Target::default(),
    )?;
    let f = get(app, ctx, id).await?;
    if !store::remove_access(app.db.pool(), &f.row.id, project).await? {
        return Err(Error::not_found(format!(
            "Flavor access not found for {id} / {project} combination."
        )));
    }
    store::access_list(app.db.pool(), id).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_extra_specs_are_validated_others_pass() {
        assert!(validate_extra_spec("hw:cpu_policy", "dedicated").is_ok());
        assert!(validate_extra_spec("hw:cpu_policy", "fast").is_err());
        assert!(validate_extra_spec("hw:numa_nodes", "0").is_err());
        assert!(validate_extra_spec("hw:numa_nodes", "2").is_ok());
        assert!(validate_extra_spec("hw:mem_page_size", "2MB").is_ok());
        assert!(validate_extra_spec("hw:not_a_thing", "x").is_err());
        assert!(validate_extra_spec("quota:cpu_shares", "10").is_ok());
        assert!(validate_extra_spec("quota:cpu_shares", "-1").is_err());
        assert!(validate_extra_spec("resources:VCPU", "2").is_ok());
        assert!(validate_extra_spec("resources:vcpu", "2").is_err());
        assert!(validate_extra_spec("trait:HW_CPU_X86_AVX2", "required").is_ok());
        assert!(validate_extra_spec("trait:HW_CPU_X86_AVX2", "yes").is_err());
        assert!(validate_extra_spec("aggregate_instance_extra_specs:ssd", "true").is_ok());
        assert!(validate_extra_spec("my-own-key", "anything").is_ok());
        assert!(validate_extra_spec("hw_rng:allowed", "True").is_ok());
        assert!(validate_extra_spec("hw_rng:allowed", "perhaps").is_err());
        assert!(valid_spec_key("hw:cpu_policy"));
        assert!(!valid_spec_key("bad/key"));
        assert!(valid_flavor_id("m1.tiny-1"));
        assert!(!valid_flavor_id(" x"));
        assert!(!valid_flavor_id("a/b"));
    }
}
