//! Quotas: limits (defaults from `[quota]` and the `default` quota class,
//! per project, per user) and usage counted from the database.
//!
//! Checks that guard a create run inside the creating transaction, after
//! [`crate::db::quotas::lock_project`]: the count then includes every
//! committed competitor, and none can commit in between.

use std::collections::BTreeMap;

use serde_json::Value;
use sqlx::AnyConnection;

use super::common::{int_field, project_of};
use crate::app::App;
use crate::context::Context;
use crate::db::quotas::{self as store, InstanceUsage};
use crate::db::{flavors, server_groups};
use crate::error::{Error, Result};
use crate::policy::Target;

/// Every compute quota resource, in Nova's order.
pub const RESOURCES: [&str; 10] = [
    "instances",
    "cores",
    "ram",
    "metadata_items",
    "injected_files",
    "injected_file_content_bytes",
    "injected_file_path_length",
    "key_pairs",
    "server_groups",
    "server_group_members",
];

/// Resources dropped from quota sets at 2.57 (personality files).
pub const INJECTED: [&str; 3] = [
    "injected_files",
    "injected_file_content_bytes",
    "injected_file_path_length",
];

/// Network proxies shown in quota sets before 2.36 (Nova's fixed values).
pub const NETWORK_LEGACY: [(&str, i64); 4] = [
    ("fixed_ips", -1),
    ("floating_ips", 10),
    ("security_group_rules", 20),
    ("security_groups", 10),
];

/// The configured default of a resource.
pub fn config_default(app: &App, resource: &str) -> i64 {
    let q = &app.config.quota;
    match resource {
        "instances" => q.instances,
        "cores" => q.cores,
        "ram" => q.ram,
        "metadata_items" => q.metadata_items,
        "injected_files" => q.injected_files,
        "injected_file_content_bytes" => q.injected_file_content_bytes,
        "injected_file_path_length" => q.injected_file_path_length,
        "key_pairs" => q.key_pairs,
        "server_groups" => q.server_groups,
        "server_group_members" => q.server_group_members,
        _ => -1,
    }
}

/// The defaults: `[quota]`, overridden by the `default` quota class.
pub async fn defaults(conn: &mut AnyConnection, app: &App) -> Result<BTreeMap<String, i64>> {
    let class = store::class_limits(&mut *conn, "default").await?;
    Ok(RESOURCES
        .iter()
        .map(|r| {
            (
                (*r).to_owned(),
                class
                    .get(*r)
                    .copied()
                    .unwrap_or_else(|| config_default(app, r)),
            )
        })
        .collect())
}

/// The limits in force for a project, or for a user in it (a user's own
/// limit, else the project's, else the default).
pub async fn limits(
    conn: &mut AnyConnection,
    app: &App,
    project_id: &str,
    user_id: Option<&str>,
) -> Result<BTreeMap<String, i64>> {
    let mut out = defaults(conn, app).await?;
    for (k, v) in store::limits(&mut *conn, project_id, None).await? {
        out.insert(k, v);
    }
    if let Some(u) = user_id {
        for (k, v) in store::limits(&mut *conn, project_id, Some(u)).await? {
            out.insert(k, v);
        }
    }
    Ok(out)
}

/// Usage counted now: instances, cores, ram, server groups of the project
/// (or user); key pairs of the user.
pub async fn usage(
    conn: &mut AnyConnection,
    project_id: &str,
    user_id: Option<&str>,
    key_pair_user: &str,
) -> Result<BTreeMap<String, i64>> {
    let i = store::instance_usage(&mut *conn, project_id, user_id).await?;
    let mut out = BTreeMap::new();
    out.insert("instances".to_owned(), i.instances);
    out.insert("cores".to_owned(), i.cores);
    out.insert("ram".to_owned(), i.ram);
    out.insert(
        "server_groups".to_owned(),
        server_groups::count_groups(&mut *conn, project_id, user_id).await?,
    );
    out.insert(
        "key_pairs".to_owned(),
        flavors::count_key_pairs(&mut *conn, key_pair_user).await?,
    );
    Ok(out)
}

/// Nova's over-quota message for instances, cores and RAM.
fn too_many_instances(
    overs: &[&str],
    requested: &BTreeMap<&str, String>,
    used: &BTreeMap<&str, i64>,
    allowed: &BTreeMap<&str, i64>,
) -> Error {
    let join =
        |f: &dyn Fn(&str) -> String| overs.iter().map(|r| f(r)).collect::<Vec<_>>().join(", ");
    Error::forbidden(format!(
        "Quota exceeded for {}: Requested {}, but already used {} of {} {}",
        overs.join(", "),
        join(&|r| requested[r].clone()),
        join(&|r| used[r].to_string()),
        join(&|r| allowed[r].to_string()),
        overs.join(", ")
    ))
}

/// Checks instances, cores and RAM for `min..=max` new instances of
/// `vcpus`/`memory_mb` each, inside the caller's transaction after its
/// quota lock. Returns how many may be created (≤ `max`, ≥ `min`), or 403
/// with Nova's message.
#[allow(clippy::too_many_arguments)]
pub async fn check_instances(
    conn: &mut AnyConnection,
    app: &App,
    project_id: &str,
    user_id: &str,
    vcpus: i64,
    memory_mb: i64,
    min: i64,
    max: i64,
) -> Result<i64> {
    let user_limits = store::limits(&mut *conn, project_id, Some(user_id)).await?;
    let per_user = ["instances", "cores", "ram"]
        .iter()
        .any(|r| user_limits.contains_key(*r));
    // Check the project, then (if it has limits of its own) the user.
    let mut scopes: Vec<Option<&str>> = vec![None];
    if per_user {
        scopes.push(Some(user_id));
    }
    let mut allowed_count = max;
    for scope in scopes {
        let lim = limits(conn, app, project_id, scope).await?;
        let used: InstanceUsage = store::instance_usage(&mut *conn, project_id, scope).await?;
        let used_map: BTreeMap<&str, i64> = [
            ("instances", used.instances),
            ("cores", used.cores),
            ("ram", used.ram),
        ]
        .into_iter()
        .collect();
        let limit_map: BTreeMap<&str, i64> = ["instances", "cores", "ram"]
            .into_iter()
            .map(|r| (r, lim[r]))
            .collect();
        let headroom = |r: &str| -> Option<i64> {
            let l = limit_map[r];
            (l >= 0).then(|| (l - used_map[r]).max(0))
        };
        let mut fit = max;
        if let Some(h) = headroom("instances") {
            fit = fit.min(h);
        }
        if vcpus > 0
            && let Some(h) = headroom("cores")
        {
            fit = fit.min(h / vcpus);
        }
        if memory_mb > 0
            && let Some(h) = headroom("ram")
        {
            fit = fit.min(h / memory_mb);
        }
        if fit >= min {
            allowed_count = allowed_count.min(fit);
            continue;
        }
        // Over quota: which resources, Nova's way (for max_count).
        let deltas: BTreeMap<&str, i64> = [
            ("instances", max),
            ("cores", max * vcpus),
            ("ram", max * memory_mb),
        ]
        .into_iter()
        .collect();
        let mut overs: Vec<&str> = ["cores", "instances", "ram"]
            .into_iter()
            .filter(|r| limit_map[r] >= 0 && used_map[r] + deltas[r] > limit_map[r])
            .collect();
        if overs.is_empty() {
            overs.push("instances");
        }
        let count = if min == max {
            min.to_string()
        } else {
            format!("{min}-{max}")
        };
        let requested: BTreeMap<&str, String> = [
            ("instances", count),
            ("cores", (max * vcpus).to_string()),
            ("ram", (max * memory_mb).to_string()),
        ]
        .into_iter()
        .collect();
        return Err(too_many_instances(
            &overs, &requested, &used_map, &limit_map,
        ));
    }
    Ok(allowed_count)
}

/// Checks one more of a counted resource (`key_pairs`, `server_groups`)
/// against its limit; 403 with Nova's message otherwise.
pub async fn check_one_more(
    conn: &mut AnyConnection,
    app: &App,
    project_id: &str,
    user_id: &str,
    resource: &str,
) -> Result<()> {
    let lim = limits(conn, app, project_id, Some(user_id)).await?;
    let limit = lim.get(resource).copied().unwrap_or(-1);
    if limit < 0 {
        return Ok(());
    }
    let used = match resource {
        "key_pairs" => flavors::count_key_pairs(&mut *conn, user_id).await?,
        "server_groups" => server_groups::count_groups(&mut *conn, project_id, None).await?,
        _ => 0,
    };
    if used + 1 > limit {
        return Err(Error::forbidden(match resource {
            "key_pairs" => "Quota exceeded, too many key pairs.".to_owned(),
            "server_groups" => "Quota exceeded, too many server groups.".to_owned(),
            _ => format!("Quota exceeded for resources: ['{resource}']"),
        }));
    }
    Ok(())
}

/// Checks a group's member count after adding `adding` members.
pub async fn check_group_members(
    conn: &mut AnyConnection,
    app: &App,
    project_id: &str,
    user_id: &str,
    group_id: i64,
    adding: i64,
) -> Result<()> {
    let lim = limits(conn, app, project_id, Some(user_id)).await?;
    let limit = lim.get("server_group_members").copied().unwrap_or(-1);
    if limit < 0 {
        return Ok(());
    }
    let used = server_groups::count_members(&mut *conn, group_id).await?;
    if used + adding > limit {
        return Err(Error::forbidden(
            "Quota exceeded, too many servers in group",
        ));
    }
    Ok(())
}

/// Checks a metadata size against `metadata_items`.
pub async fn check_metadata(
    conn: &mut AnyConnection,
    app: &App,
    project_id: &str,
    user_id: &str,
    items: usize,
) -> Result<()> {
    let lim = limits(conn, app, project_id, Some(user_id)).await?;
    let limit = lim.get("metadata_items").copied().unwrap_or(-1);
    if limit >= 0 && items as i64 > limit {
        return Err(Error::forbidden(format!(
            "Quota exceeded for metadata_items: Requested {items}, but already used 0 of {limit} metadata_items"
        )));
    }
    Ok(())
}

// ---- the os-quota-sets API ------------------------------------------------------------

/// A quota set: limits, and with `detail` usage.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaSet {
    /// Resource → limit.
    pub limits: BTreeMap<String, i64>,
    /// Resource → in use (for `detail`).
    pub in_use: BTreeMap<String, i64>,
}

/// A project's (or user's) quotas, with usage.
pub async fn show(
    app: &App,
    ctx: &Context,
    project_id: &str,
    user_id: Option<&str>,
) -> Result<QuotaSet> {
    app.policy.enforce(
        "os_compute_api:os-quota-sets:show",
        ctx,
        Target::project(project_id),
    )?;
    let mut conn = app.db.pool().acquire().await?;
    let limits = limits(&mut conn, app, project_id, user_id).await?;
    let in_use = usage(
        &mut conn,
        project_id,
        user_id,
        user_id.unwrap_or(ctx.user_id.as_str()),
    )
    .await?;
    Ok(QuotaSet { limits, in_use })
}

/// The default quotas.
pub async fn show_defaults(app: &App, ctx: &Context) -> Result<BTreeMap<String, i64>> {
    app.policy.enforce(
        "os_compute_api:os-quota-sets:defaults",
        ctx,
        Target::default(),
    )?;
    let mut conn = app.db.pool().acquire().await?;
    defaults(&mut conn, app).await
}

/// Sets quotas (`{"cores": 40, "force": false, …}`): without `force`, a
/// limit below current usage is refused; a user's limit may not exceed the
/// project's.
pub async fn update(
    app: &App,
    ctx: &Context,
    project_id: &str,
    user_id: Option<&str>,
    body: &serde_json::Map<String, Value>,
    known: &[&str],
) -> Result<QuotaSet> {
    app.policy.enforce(
        "os_compute_api:os-quota-sets:update",
        ctx,
        Target::project(project_id),
    )?;
    let force = match body.get("force") {
        Some(v) => super::common::bool_field("force", v)?,
        None => false,
    };
    let mut changes: Vec<(String, i64)> = Vec::new();
    for (k, v) in body {
        if k == "force" {
            continue;
        }
        if !known.contains(&k.as_str()) {
            return Err(Error::bad_request(format!(
                "Invalid input for field/attribute quota_set. Value: {}. Additional properties are not allowed ('{k}' was unexpected)",
                Value::Object(body.clone())
            )));
        }
        if NETWORK_LEGACY.iter().any(|(r, _)| r == k) {
            // Accepted before 2.36 and ignored, as Nova does with neutron.
            int_field(k, v, -1, i64::from(i32::MAX))?;
            continue;
        }
        changes.push((k.clone(), int_field(k, v, -1, i64::from(i32::MAX))?));
    }
    app.db
        .retry(|| async {
            let mut tx = app.db.begin().await?;
            store::lock_project(&mut tx, project_id).await?;
            let current = usage(&mut tx, project_id, user_id, user_id.unwrap_or(&ctx.user_id)).await?;
            let project_limits = limits(&mut tx, app, project_id, None).await?;
            for (r, v) in &changes {
                if !force && *v >= 0 {
                    let used = current.get(r.as_str()).copied().unwrap_or(0);
                    if *v < used {
                        return Err(Error::bad_request(format!(
                            "Quota limit {v} for {r} must be greater than or equal to already used and reserved {used}."
                        )));
                    }
                }
                match user_id {
                    Some(_) => {
                        let p = project_limits.get(r).copied().unwrap_or(-1);
                        if p >= 0 && (*v < 0 || *v > p) {
                            return Err(Error::bad_request(format!(
                                "Quota limit {v} for {r} must be less than or equal to {p}."
                            )));
                        }
                    }
                    None => {
                        if *v >= 0
                            && let Some(m) = store::max_user_limit(&mut *tx, project_id, r).await?
                            && m > *v
                        {
                            return Err(Error::bad_request(format!(
                                "Quota limit {v} for {r} must be greater than or equal to the limit {m} of one of the project's users."
                            )));
                        }
                    }
                }
                store::set_limit(&mut *tx, project_id, user_id, r, *v).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await?;
    let mut conn = app.db.pool().acquire().await?;
    Ok(QuotaSet {
        limits: limits(&mut conn, app, project_id, user_id).await?,
        in_use: BTreeMap::new(),
    })
}

/// Resets a project's (or user's) quotas to the defaults.
pub async fn delete(
    app: &App,
    ctx: &Context,
    project_id: &str,
    user_id: Option<&str>,
) -> Result<()> {
    app.policy.enforce(
        "os_compute_api:os-quota-sets:delete",
        ctx,
        Target::project(project_id),
    )?;
    store::delete_limits(
        app.db.pool(),
        store::QuotaService::Compute,
        project_id,
        user_id,
    )
    .await?;
    Ok(())
}

/// A quota class's limits (`default` is the only class Nova honours).
pub async fn show_class(app: &App, ctx: &Context, _class: &str) -> Result<BTreeMap<String, i64>> {
    app.policy.enforce(
        "os_compute_api:os-quota-class-sets:show",
        ctx,
        Target::default(),
    )?;
    let mut conn = app.db.pool().acquire().await?;
    defaults(&mut conn, app).await
}

/// Sets limits of a quota class.
pub async fn update_class(
    app: &App,
    ctx: &Context,
    class: &str,
    body: &serde_json::Map<String, Value>,
    known: &[&str],
) -> Result<BTreeMap<String, i64>> {
    app.policy.enforce(
        "os_compute_api:os-quota-class-sets:update",
        ctx,
        Target::default(),
    )?;
    for (k, v) in body {
        if !known.contains(&k.as_str()) {
            return Err(Error::bad_request(format!(
                "Invalid input for field/attribute quota_class_set. Additional properties are not allowed ('{k}' was unexpected)"
            )));
        }
        let n = int_field(k, v, -1, i64::from(i32::MAX))?;
        if RESOURCES.contains(&k.as_str()) {
            store::set_class_limit(app.db.pool(), class, k, n).await?;
        }
    }
    let mut conn = app.db.pool().acquire().await?;
    defaults(&mut conn, app).await
}

/// The limits of the caller's project (or, for admins, `tenant_id`'s) with
/// usage, for `GET /limits`.
pub async fn absolute_limits(
    app: &App,
    ctx: &Context,
    tenant_id: Option<&str>,
) -> Result<QuotaSet> {
    app.policy
        .enforce("os_compute_api:limits", ctx, Target::default())?;
    let own = project_of(ctx)?.to_owned();
    let project = match tenant_id {
        Some(t) if t != own => {
            app.policy.enforce(
                "os_compute_api:limits:other_project",
                ctx,
                Target::project(t),
            )?;
            t.to_owned()
        }
        _ => own,
    };
    let mut conn = app.db.pool().acquire().await?;
    let limits = limits(&mut conn, app, &project, None).await?;
    let in_use = usage(&mut conn, &project, None, &ctx.user_id).await?;
    Ok(QuotaSet { limits, in_use })
}
