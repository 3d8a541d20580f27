//! Network quotas (Neutron's `/v2.0/quotas`): limits per project, defaults
//! from `[network] quota_*`, usage counted from the tables. Creates check
//! them inside their transaction after the project's quota lock, like the
//! compute quotas.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use sqlx::AnyConnection;

use crate::app::App;
use crate::context::Context;
use crate::db::network as net_store;
use crate::db::quotas as store;
use crate::error::{Error, Result};
use crate::policy::Target;

/// Neutron's quota resources, with the ones Mica has no objects for
/// (routers, floating IPs, RBAC policies, subnet pools) shown as Neutron's
/// defaults and never used.
pub const RESOURCES: [&str; 9] = [
    "network",
    "subnet",
    "port",
    "security_group",
    "security_group_rule",
    "router",
    "floatingip",
    "rbac_policy",
    "subnetpool",
];

fn key(resource: &str) -> String {
    format!("{}{resource}", store::NETWORK_PREFIX)
}

fn default_of(app: &App, resource: &str) -> i64 {
    let n = &app.config.network;
    match resource {
        "network" => n.quota_network,
        "subnet" => n.quota_subnet,
        "port" => n.quota_port,
        "security_group" => n.quota_security_group,
        "security_group_rule" => n.quota_security_group_rule,
        "router" => 10,
        "floatingip" => 50,
        "rbac_policy" => 10,
        _ => -1,
    }
}

/// The defaults.
pub fn defaults(app: &App) -> BTreeMap<String, i64> {
    RESOURCES
        .iter()
        .map(|r| ((*r).to_owned(), default_of(app, r)))
        .collect()
}

/// A project's limits.
pub async fn limits(
    conn: &mut AnyConnection,
    app: &App,
    project_id: &str,
) -> Result<BTreeMap<String, i64>> {
    let set = store::limits(&mut *conn, project_id, None).await?;
    Ok(RESOURCES
        .iter()
        .map(|r| {
            (
                (*r).to_owned(),
                set.get(&key(r))
                    .copied()
                    .unwrap_or_else(|| default_of(app, r)),
            )
        })
        .collect())
}

/// A project's usage.
pub async fn usage(conn: &mut AnyConnection, project_id: &str) -> Result<BTreeMap<String, i64>> {
    let (n, s, p, g, r) = net_store::count_of_project(&mut *conn, project_id).await?;
    Ok([
        ("network", n),
        ("subnet", s),
        ("port", p),
        ("security_group", g),
        ("security_group_rule", r),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect())
}

/// Checks that `adding` more of `resource` fit the project's limit; the
/// caller holds the project's quota lock in `conn`'s transaction.
pub async fn check(
    conn: &mut AnyConnection,
    app: &App,
    project_id: &str,
    resource: &str,
    adding: i64,
) -> Result<()> {
    let lim = limits(conn, app, project_id).await?;
    let limit = lim.get(resource).copied().unwrap_or(-1);
    if limit < 0 {
        return Ok(());
    }
    let used = usage(conn, project_id)
        .await?
        .get(resource)
        .copied()
        .unwrap_or(0);
    if used + adding > limit {
        return Err(
            Error::conflict(format!("Quota exceeded for resources: ['{resource}']."))
                .with_code("OverQuota"),
        );
    }
    Ok(())
}

fn enforce_read(app: &App, ctx: &Context, project_id: &str) -> Result<()> {
    if ctx.is_admin() || ctx.project_id() == Some(project_id) {
        Ok(())
    } else {
        let _ = app;
        Err(Error::forbidden("(rule:get_quota) is disallowed by policy"))
    }
}

/// A project's limits and usage.
pub async fn show(
    app: &App,
    ctx: &Context,
    project_id: &str,
) -> Result<(BTreeMap<String, i64>, BTreeMap<String, i64>)> {
    enforce_read(app, ctx, project_id)?;
    let mut conn = app.db.pool().acquire().await?;
    Ok((
        limits(&mut conn, app, project_id).await?,
        usage(&mut conn, project_id).await?,
    ))
}

/// Sets limits (admins).
pub async fn update(
    app: &App,
    ctx: &Context,
    project_id: &str,
    body: &Map<String, Value>,
) -> Result<BTreeMap<String, i64>> {
    app.policy.enforce(
        "os_compute_api:os-quota-sets:update",
        ctx,
        Target::project(project_id),
    )?;
    let mut changes = Vec::new();
    for (k, v) in body {
        if !RESOURCES.contains(&k.as_str()) {
            return Err(Error::bad_request(format!(
                "Unrecognized attribute(s) '{k}'"
            )));
        }
        let n = v
            .as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .filter(|n| *n >= -1)
            .ok_or_else(|| {
                Error::bad_request(format!(
                    "Invalid input for {k}. Reason: '{v}' is not an integer of at least -1."
                ))
            })?;
        changes.push((k.clone(), n));
    }
    for (k, n) in changes {
        store::set_limit(app.db.pool(), project_id, None, &key(&k), n).await?;
    }
    let mut conn = app.db.pool().acquire().await?;
    limits(&mut conn, app, project_id).await
}

/// Resets a project's limits to the defaults (admins).
pub async fn delete(app: &App, ctx: &Context, project_id: &str) -> Result<()> {
    app.policy.enforce(
        "os_compute_api:os-quota-sets:delete",
        ctx,
        Target::project(project_id),
    )?;
    store::delete_limits(
        app.db.pool(),
        store::QuotaService::Network,
        project_id,
        None,
    )
    .await?;
    Ok(())
}
