//! Security groups and their rules, the per-project `default` group, and
//! pushing changes to the compute hosts whose ports they affect.
//!
//! # The `default` group
//!
//! Every project gets one the first time it needs it (listing groups,
//! creating a port or a server), with Nova's documented default: ingress
//! only from members of the same group, all egress, for IPv4 and IPv6. A
//! unique index makes two first uses at once create it only once.
//!
//! # Pushing changes
//!
//! A rule added or removed, a group added to or removed from a port, or a
//! port joining or leaving a group (its addresses are other ports' "members
//! of the group") changes what hosts must enforce. After such a change the
//! affected bound ports ([`crate::db::network::ports_affected_by`]) are sent
//! `apply_port_security` on `compute.<host>` with their full, current group
//! specs. Rules whose remote is another group are expanded into one rule per
//! member address, so the agent only needs a group's own members. A push
//! that cannot be sent is logged; the database stays the truth and the
//! agent gets the full state again with the next change or build.

use std::collections::BTreeMap;

use sqlx::AnyConnection;

use super::addr::{self, Cidr};
use super::{Filters, project_of};
use crate::app::App;
use crate::context::Context;
use crate::db::Timestamp;
use crate::db::network::{self as store, Group, GroupRow, RuleRow};
use crate::error::{Error, Kind, Result};
use crate::policy::Target;

/// The name of every project's default group.
pub const DEFAULT_NAME: &str = "default";

/// Neutron's 404 for a group.
pub fn group_not_found(id: &str) -> Error {
    Error::not_found(format!("Security group {id} does not exist"))
        .with_code("SecurityGroupNotFound")
}

fn rule(
    group: &GroupRow,
    direction: &str,
    ethertype: &str,
    remote_group: Option<&str>,
    now: Timestamp,
) -> RuleRow {
    RuleRow {
        id: uuid::Uuid::new_v4().to_string(),
        security_group_id: group.id.clone(),
        project_id: group.project_id.clone(),
        direction: direction.into(),
        ethertype: ethertype.into(),
        protocol: None,
        port_range_min: None,
        port_range_max: None,
        remote_ip_prefix: None,
        remote_group_id: remote_group.map(str::to_owned),
        description: String::new(),
        created_at: now,
        updated_at: now,
        revision_number: 0,
    }
}

/// The project's `default` group, created (with its rules) if missing.
pub async fn ensure_default(app: &App, project_id: &str) -> Result<Group> {
    let mut conn = app.db.pool().acquire().await?;
    if let Some(g) = store::find_group(&mut *conn, project_id, DEFAULT_NAME)
        .await?
        .into_iter()
        .next()
    {
        return store::get_group(&mut conn, &g.id)
            .await?
            .ok_or_else(|| group_not_found(&g.id));
    }
    drop(conn);
    let now = Timestamp::now();
    let row = GroupRow {
        id: uuid::Uuid::new_v4().to_string(),
        project_id: project_id.to_owned(),
        name: DEFAULT_NAME.into(),
        description: "Default security group".into(),
        stateful: true,
        created_at: now,
        updated_at: now,
        revision_number: 1,
    };
    let rules = vec![
        rule(&row, "egress", "IPv4", None, now),
        rule(&row, "egress", "IPv6", None, now),
        rule(&row, "ingress", "IPv4", Some(&row.id), now),
        rule(&row, "ingress", "IPv6", Some(&row.id), now),
    ];
    let created = app
        .db
        .retry(|| async {
            let mut tx = app.db.begin().await?;
            if !store::find_group(&mut *tx, project_id, DEFAULT_NAME)
                .await?
                .is_empty()
            {
                return Ok(false);
            }
            store::insert_group(&mut *tx, &row).await?;
            for r in &rules {
                store::insert_rule(&mut *tx, r).await?;
            }
            tx.commit().await?;
            Ok(true)
        })
        .await;
    match created {
        Ok(_) => {}
        // Another request created it first.
        Err(e) if e.is(Kind::Conflict) => {}
        Err(e) => return Err(e),
    }
    let mut conn = app.db.pool().acquire().await?;
    let g = store::find_group(&mut *conn, project_id, DEFAULT_NAME)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| group_not_found(DEFAULT_NAME))?;
    store::get_group(&mut conn, &g.id)
        .await?
        .ok_or_else(|| group_not_found(&g.id))
}

/// Resolves group ids for a port of `project_id`: each must exist and be
/// the project's (admins: any).
pub async fn resolve_ids(
    app: &App,
    ctx: &Context,
    project_id: &str,
    ids: &[String],
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut conn = app.db.pool().acquire().await?;
    for id in ids {
        match store::get_group(&mut conn, id).await? {
            Some(g) if g.row.project_id == project_id || ctx.is_admin() => {
                if !out.contains(&g.row.id) {
                    out.push(g.row.id)
                }
            }
            _ => return Err(group_not_found(id)),
        }
    }
    Ok(out)
}

/// Resolves a group by id or name within a project (Nova's lookups take
/// either); `default` is created on first use. 404 when there is none,
/// 409 when a name is ambiguous.
pub async fn resolve_name_or_id(app: &App, project_id: &str, key: &str) -> Result<GroupRow> {
    if key == DEFAULT_NAME {
        return Ok(ensure_default(app, project_id).await?.row);
    }
    let mut conn = app.db.pool().acquire().await?;
    if let Some(g) = store::get_group(&mut conn, key).await?
        && g.row.project_id == project_id
    {
        return Ok(g.row);
    }
    let mut found = store::find_group(&mut *conn, project_id, key).await?;
    match found.len() {
        0 => Err(Error::not_found(format!("Security group {key} not found."))),
        1 => Ok(found.remove(0)),
        _ => Err(Error::conflict(format!(
            "Multiple security groups found matching '{key}'. Use an ID to be more specific."
        ))),
    }
}

/// A group the caller sees (its project's; admins: any).
pub async fn get_group(app: &App, ctx: &Context, id: &str) -> Result<Group> {
    let mut conn = app.db.pool().acquire().await?;
    let g = store::get_group(&mut conn, id)
        .await?
        .ok_or_else(|| group_not_found(id))?;
    if !app.policy.check(
        "network:get_security_group",
        ctx,
        Target::project(&g.row.project_id),
    ) {
        return Err(group_not_found(id));
    }
    Ok(g)
}

/// Groups the caller sees (after making sure its `default` exists),
/// filtered (`id`, `name`, `project_id`/`tenant_id`, `description`).
pub async fn list_groups(
    app: &App,
    ctx: &Context,
    params: &[(String, String)],
) -> Result<Vec<Group>> {
    let project = project_of(ctx)?.to_owned();
    ensure_default(app, &project).await?;
    let mut conn = app.db.pool().acquire().await?;
    let scope = if ctx.is_admin() {
        None
    } else {
        Some(project.as_str())
    };
    let all = store::list_groups(&mut conn, scope, None, None).await?;
    let f = Filters::new(params);
    Ok(all
        .into_iter()
        .filter(|g| {
            f.text("id", &g.row.id)
                && f.text("name", &g.row.name)
                && f.text("project_id", &g.row.project_id)
                && f.text("tenant_id", &g.row.project_id)
                && f.text("description", &g.row.description)
        })
        .collect())
}

/// Creates a group with Neutron's default egress rules.
pub async fn create_group(
    app: &App,
    ctx: &Context,
    name: &str,
    description: &str,
    project_id: Option<&str>,
    stateful: bool,
) -> Result<Group> {
    let own = project_of(ctx)?.to_owned();
    let project = project_id.unwrap_or(&own).to_owned();
    app.policy
        .enforce("network:create_security_group", ctx, Target::project(&own))?;
    if project != own && !ctx.is_admin() {
        return Err(Error::forbidden(
            "(rule:create_security_group and rule:create_security_group:tenant_id) is disallowed by policy",
        ));
    }
    if name == DEFAULT_NAME {
        // Neutron: the default group is made by the system.
        ensure_default(app, &project).await?;
        return Err(Error::conflict("Default security group already exists.")
            .with_code("SecurityGroupDefaultAlreadyExists"));
    }
    if name.chars().count() > 255 || description.chars().count() > 255 {
        return Err(Error::bad_request(
            "Invalid input for operation: name and description are limited to 255 characters.",
        ));
    }
    ensure_default(app, &project).await?;
    let now = Timestamp::now();
    let row = GroupRow {
        id: uuid::Uuid::new_v4().to_string(),
        project_id: project,
        name: name.to_owned(),
        description: description.to_owned(),
        stateful,
        created_at: now,
        updated_at: now,
        revision_number: 1,
    };
    let rules = vec![
        rule(&row, "egress", "IPv4", None, now),
        rule(&row, "egress", "IPv6", None, now),
    ];
    app.db
        .retry(|| async {
            let mut tx = app.db.begin().await?;
            crate::db::quotas::lock_project(&mut tx, &row.project_id).await?;
            super::quotas::check(&mut tx, app, &row.project_id, "security_group", 1).await?;
            super::quotas::check(
                &mut tx,
                app,
                &row.project_id,
                "security_group_rule",
                rules.len() as i64,
            )
            .await?;
            store::insert_group(&mut *tx, &row).await?;
            for r in &rules {
                store::insert_rule(&mut *tx, r).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await?;
    Ok(Group { row, rules })
}

/// Renames or re-describes a group (`default` keeps its name).
pub async fn update_group(
    app: &App,
    ctx: &Context,
    id: &str,
    name: Option<&str>,
    description: Option<&str>,
) -> Result<Group> {
    let g = get_group(app, ctx, id).await?;
    app.policy.enforce(
        "network:update_security_group",
        ctx,
        Target::project(&g.row.project_id),
    )?;
    if g.row.name == DEFAULT_NAME && name.is_some_and(|n| n != DEFAULT_NAME) {
        return Err(
            Error::conflict("Insufficient rights for removing default security group.")
                .with_code("SecurityGroupCannotUpdateDefault"),
        );
    }
    if name == Some(DEFAULT_NAME) && g.row.name != DEFAULT_NAME {
        return Err(Error::conflict("Default security group already exists.")
            .with_code("SecurityGroupDefaultAlreadyExists"));
    }
    store::update_group(app.db.pool(), id, name, description).await?;
    get_group(app, ctx, id).await
}

/// Deletes a group; 409 for `default` or while a port or server uses it.
pub async fn delete_group(app: &App, ctx: &Context, id: &str) -> Result<()> {
    let g = get_group(app, ctx, id).await?;
    app.policy.enforce(
        "network:delete_security_group",
        ctx,
        Target::project(&g.row.project_id),
    )?;
    if g.row.name == DEFAULT_NAME && !ctx.is_admin() {
        return Err(
            Error::conflict("Insufficient rights for removing default security group.")
                .with_code("SecurityGroupCannotRemoveDefault"),
        );
    }
    let referencing = app
        .db
        .retry(|| async {
            let mut tx = app.db.begin().await?;
            if store::group_in_use(&mut *tx, id).await? {
                return Err(Error::conflict(format!("Security Group {id} in use."))
                    .with_code("SecurityGroupInUse"));
            }
            // Groups whose rules name this one as remote lose those rules.
            let referencing: Vec<String> = store::list_rules(&mut *tx, None, None)
                .await?
                .into_iter()
                .filter(|r| r.remote_group_id.as_deref() == Some(id) && r.security_group_id != id)
                .map(|r| r.security_group_id)
                .collect();
            // The delete's row count decides: of concurrent deletes, one
            // removes the group and the others find it gone.
            if !store::delete_group(&mut *tx, id).await? {
                return Err(group_not_found(id));
            }
            tx.commit().await?;
            Ok(referencing)
        })
        .await?;
    push_for_groups(app, &referencing, &[]).await;
    Ok(())
}

// ---- rules --------------------------------------------------------------------------------

/// A rule to add.
#[derive(Debug, Clone, Default)]
pub struct NewRule {
    /// The group.
    pub security_group_id: String,
    /// `ingress` or `egress`.
    pub direction: String,
    /// `IPv4` (default) or `IPv6`.
    pub ethertype: Option<String>,
    /// Protocol name or number; `None` or `any` for all.
    pub protocol: Option<String>,
    /// First port / ICMP type.
    pub port_range_min: Option<i64>,
    /// Last port / ICMP code.
    pub port_range_max: Option<i64>,
    /// Remote CIDR.
    pub remote_ip_prefix: Option<String>,
    /// Remote group.
    pub remote_group_id: Option<String>,
    /// Description.
    pub description: String,
}

/// Protocol names Neutron accepts.
pub const PROTOCOLS: [&str; 21] = [
    "ah",
    "dccp",
    "egp",
    "esp",
    "gre",
    "hopopt",
    "icmp",
    "icmpv6",
    "igmp",
    "ipip",
    "ipv6-encap",
    "ipv6-frag",
    "ipv6-icmp",
    "ipv6-nonxt",
    "ipv6-opts",
    "ipv6-route",
    "ospf",
    "pgm",
    "rsvp",
    "sctp",
    "tcp",
];
const MORE_PROTOCOLS: [&str; 4] = ["udp", "udplite", "vrrp", "ipencap"];

fn ranged(protocol: &str) -> bool {
    matches!(
        protocol,
        "tcp" | "udp" | "sctp" | "udplite" | "dccp" | "6" | "17" | "132" | "136" | "33"
    )
}

fn icmp(protocol: &str) -> bool {
    matches!(protocol, "icmp" | "icmpv6" | "ipv6-icmp" | "1" | "58")
}

/// Validates and normalizes a rule (Neutron's checks).
fn check_rule(r: &mut NewRule) -> Result<()> {
    let bad = |m: String| Error::bad_request(m);
    if r.direction != "ingress" && r.direction != "egress" {
        return Err(bad(format!(
            "Invalid input for direction. Reason: '{}' is not in ['ingress', 'egress'].",
            r.direction
        )));
    }
    let ethertype = r.ethertype.clone().unwrap_or_else(|| "IPv4".into());
    let ethertype = match ethertype.to_ascii_lowercase().as_str() {
        "ipv4" => "IPv4".to_owned(),
        "ipv6" => "IPv6".to_owned(),
        _ => {
            return Err(bad(format!(
                "Invalid input for ethertype. Reason: '{ethertype}' is not in ['IPv4', 'IPv6']."
            )));
        }
    };
    r.ethertype = Some(ethertype.clone());
    let protocol = r
        .protocol
        .as_ref()
        .map(|p| p.to_ascii_lowercase())
        .filter(|p| p != "any" && !p.is_empty());
    if let Some(p) = &protocol {
        let known = PROTOCOLS.contains(&p.as_str()) || MORE_PROTOCOLS.contains(&p.as_str());
        let number = p.parse::<u16>().is_ok_and(|n| n <= 255);
        if !known && !number {
            return Err(bad(format!(
                "Security group rule protocol {p} not supported. Only protocol values [None, 'tcp', 'udp', 'icmp', …] and integer representations [0 to 255] are supported."
            ))
            .with_code("SecurityGroupRuleInvalidProtocol"));
        }
    }
    r.protocol = protocol.clone();
    match protocol.as_deref() {
        Some(p) if ranged(p) => {
            for v in [r.port_range_min, r.port_range_max].into_iter().flatten() {
                if !(1..=65535).contains(&v) {
                    return Err(bad(format!("Invalid value for port {v}.")));
                }
            }
            match (r.port_range_min, r.port_range_max) {
                (Some(a), Some(b)) if a > b => {
                    return Err(bad(
                        "For TCP/UDP protocols, port_range_min must be <= port_range_max".into(),
                    ));
                }
                (Some(a), None) => r.port_range_max = Some(a),
                (None, Some(b)) => r.port_range_min = Some(b),
                _ => {}
            }
        }
        Some(p) if icmp(p) => {
            if let Some(t) = r.port_range_min
                && !(0..=255).contains(&t)
            {
                return Err(bad(format!("Invalid value for ICMP field (type) {t}.")));
            }
            if let Some(c) = r.port_range_max {
                if !(0..=255).contains(&c) {
                    return Err(bad(format!("Invalid value for ICMP field (code) {c}.")));
                }
                if r.port_range_min.is_none() {
                    return Err(bad(format!(
                        "ICMP code (port-range-max) {c} is provided but ICMP type (port-range-min) is missing."
                    )));
                }
            }
        }
        _ => {
            if r.port_range_min.is_some() || r.port_range_max.is_some() {
                return Err(bad(
                    "Invalid protocol for port range: port ranges need a protocol such as tcp or udp."
                        .into(),
                ));
            }
        }
    }
    if r.remote_ip_prefix.is_some() && r.remote_group_id.is_some() {
        return Err(bad(
            "Only remote_ip_prefix or remote_group_id may be provided.".into(),
        ));
    }
    if let Some(prefix) = &r.remote_ip_prefix {
        // A host address with a prefix is normalized to its network.
        let text = if prefix.contains('/') {
            prefix.clone()
        } else if prefix.contains(':') {
            format!("{prefix}/128")
        } else {
            format!("{prefix}/32")
        };
        let (ip, len) = text.split_once('/').unwrap_or((text.as_str(), ""));
        let (v, ver) = addr::parse_ip(ip).ok_or_else(|| {
            bad(format!(
                "Invalid input for remote_ip_prefix. Reason: '{prefix}' is not a valid IP subnet."
            ))
        })?;
        let len: u8 = len.parse().map_err(|_| {
            bad(format!(
                "Invalid input for remote_ip_prefix. Reason: '{prefix}' is not a valid IP subnet."
            ))
        })?;
        let bits = if ver == 4 { 32 } else { 128 };
        if len > bits {
            return Err(bad(format!(
                "Invalid input for remote_ip_prefix. Reason: '{prefix}' is not a valid IP subnet."
            )));
        }
        let host = u32::from(bits - len);
        let network = if host >= 128 {
            0
        } else {
            v & !((1u128 << host) - 1)
        };
        let c = Cidr::parse(&format!("{}/{len}", addr::to_ip(network, ver)))?;
        let want = if c.version == 4 { "IPv4" } else { "IPv6" };
        if want != ethertype {
            return Err(bad(format!(
                "Conflicting value ethertype {ethertype} for CIDR {prefix}"
            ))
            .with_code("SecurityGroupRuleParameterConflict"));
        }
        r.remote_ip_prefix = Some(c.to_text());
    }
    Ok(())
}

fn same_rule(a: &RuleRow, b: &NewRule) -> bool {
    a.direction == b.direction
        && Some(&a.ethertype) == b.ethertype.as_ref()
        && a.protocol == b.protocol
        && a.port_range_min == b.port_range_min
        && a.port_range_max == b.port_range_max
        && a.remote_ip_prefix == b.remote_ip_prefix
        && a.remote_group_id == b.remote_group_id
}

/// Adds a rule to a group the caller may change; pushes the change.
pub async fn create_rule(app: &App, ctx: &Context, mut r: NewRule) -> Result<RuleRow> {
    let g = get_group(app, ctx, &r.security_group_id).await?;
    app.policy.enforce(
        "network:create_security_group_rule",
        ctx,
        Target::project(&g.row.project_id),
    )?;
    check_rule(&mut r)?;
    if let Some(remote) = &r.remote_group_id {
        let mut conn = app.db.pool().acquire().await?;
        match store::get_group(&mut conn, remote).await? {
            Some(rg) if rg.row.project_id == g.row.project_id || ctx.is_admin() => {}
            _ => return Err(group_not_found(remote)),
        }
    }
    if let Some(existing) = g.rules.iter().find(|x| same_rule(x, &r)) {
        return Err(Error::conflict(format!(
            "Security group rule already exists. Rule id is {}.",
            existing.id
        ))
        .with_code("SecurityGroupRuleExists"));
    }
    let now = Timestamp::now();
    let row = RuleRow {
        id: uuid::Uuid::new_v4().to_string(),
        security_group_id: g.row.id.clone(),
        project_id: g.row.project_id.clone(),
        direction: r.direction.clone(),
        ethertype: r.ethertype.clone().unwrap_or_else(|| "IPv4".into()),
        protocol: r.protocol.clone(),
        port_range_min: r.port_range_min,
        port_range_max: r.port_range_max,
        remote_ip_prefix: r.remote_ip_prefix.clone(),
        remote_group_id: r.remote_group_id.clone(),
        description: r.description.clone(),
        created_at: now,
        updated_at: now,
        revision_number: 0,
    };
    app.db
        .retry(|| async {
            let mut tx = app.db.begin().await?;
            crate::db::quotas::lock_project(&mut tx, &g.row.project_id).await?;
            super::quotas::check(&mut tx, app, &g.row.project_id, "security_group_rule", 1).await?;
            if !store::touch_group(&mut *tx, &g.row.id).await? {
                return Err(group_not_found(&g.row.id));
            }
            // Re-check duplicates under the group's lock.
            let current = store::list_rules(&mut *tx, None, Some(&g.row.id)).await?;
            if let Some(existing) = current.iter().find(|x| same_rule(x, &r)) {
                return Err(Error::conflict(format!(
                    "Security group rule already exists. Rule id is {}.",
                    existing.id
                ))
                .with_code("SecurityGroupRuleExists"));
            }
            store::insert_rule(&mut *tx, &row).await?;
            tx.commit().await?;
            Ok(())
        })
        .await?;
    push_for_groups(app, std::slice::from_ref(&g.row.id), &[]).await;
    Ok(row)
}

fn rule_not_found(id: &str) -> Error {
    Error::not_found(format!("Security group rule {id} does not exist"))
        .with_code("SecurityGroupRuleNotFound")
}

/// A rule the caller sees.
pub async fn get_rule(app: &App, ctx: &Context, id: &str) -> Result<RuleRow> {
    let r = store::get_rule(app.db.pool(), id)
        .await?
        .ok_or_else(|| rule_not_found(id))?;
    if !app.policy.check(
        "network:get_security_group",
        ctx,
        Target::project(&r.project_id),
    ) {
        return Err(rule_not_found(id));
    }
    Ok(r)
}

/// Rules the caller sees, filtered (`security_group_id`, `direction`,
/// `ethertype`, `protocol`, `remote_group_id`, `remote_ip_prefix`, `id`,
/// `project_id`/`tenant_id`).
pub async fn list_rules(
    app: &App,
    ctx: &Context,
    params: &[(String, String)],
) -> Result<Vec<RuleRow>> {
    let project = project_of(ctx)?.to_owned();
    ensure_default(app, &project).await?;
    let scope = if ctx.is_admin() {
        None
    } else {
        Some(project.as_str())
    };
    let all = store::list_rules(app.db.pool(), scope, None).await?;
    let f = Filters::new(params);
    Ok(all
        .into_iter()
        .filter(|r| {
            f.text("id", &r.id)
                && f.text("security_group_id", &r.security_group_id)
                && f.text("direction", &r.direction)
                && f.text("ethertype", &r.ethertype)
                && f.opt("protocol", r.protocol.as_deref())
                && f.opt("remote_group_id", r.remote_group_id.as_deref())
                && f.opt("remote_ip_prefix", r.remote_ip_prefix.as_deref())
                && f.text("project_id", &r.project_id)
                && f.text("tenant_id", &r.project_id)
        })
        .collect())
}

/// Removes a rule; pushes the change.
pub async fn delete_rule(app: &App, ctx: &Context, id: &str) -> Result<()> {
    let r = get_rule(app, ctx, id).await?;
    app.policy.enforce(
        "network:delete_security_group_rule",
        ctx,
        Target::project(&r.project_id),
    )?;
    app.db
        .retry(|| async {
            let mut tx = app.db.begin().await?;
            store::touch_group(&mut *tx, &r.security_group_id).await?;
            if !store::delete_rule(&mut *tx, id).await? {
                return Err(rule_not_found(id));
            }
            tx.commit().await?;
            Ok(())
        })
        .await?;
    push_for_groups(app, std::slice::from_ref(&r.security_group_id), &[]).await;
    Ok(())
}

// ---- what hosts enforce -------------------------------------------------------------------

/// The specs of `group_ids` as a host enforces them (see the module doc).
pub async fn specs(
    _app: &App,
    conn: &mut AnyConnection,
    group_ids: &[String],
) -> Result<Vec<mica_rpc::compute::SecurityGroupSpec>> {
    use mica_rpc::compute::{Direction, SecurityGroupRule, SecurityGroupSpec};
    if group_ids.is_empty() {
        return Ok(vec![]);
    }
    let groups = store::list_groups(&mut *conn, None, None, Some(group_ids)).await?;
    let mut members: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut out = Vec::new();
    for g in groups {
        let own = store::member_ips(&mut *conn, &g.row.id).await?;
        let mut rules = Vec::new();
        for r in &g.rules {
            let direction = if r.direction == "egress" {
                Direction::Egress
            } else {
                Direction::Ingress
            };
            let port = |v: Option<i64>| v.and_then(|p| u16::try_from(p).ok());
            let base = SecurityGroupRule {
                id: r.id.clone(),
                direction,
                ethertype: r.ethertype.clone(),
                protocol: r.protocol.clone(),
                port_range_min: port(r.port_range_min),
                port_range_max: port(r.port_range_max),
                remote_ip_prefix: r.remote_ip_prefix.clone(),
                remote_group_id: None,
            };
            match &r.remote_group_id {
                Some(remote) if *remote == g.row.id => rules.push(SecurityGroupRule {
                    remote_group_id: Some(remote.clone()),
                    ..base
                }),
                Some(remote) => {
                    if !members.contains_key(remote) {
                        let m = store::member_ips(&mut *conn, remote).await?;
                        members.insert(remote.clone(), m);
                    }
                    for ip in &members[remote] {
                        let Some((_, ver)) = addr::parse_ip(ip) else {
                            continue;
                        };
                        let fits = (ver == 4) == (r.ethertype == "IPv4");
                        if fits {
                            rules.push(SecurityGroupRule {
                                remote_ip_prefix: Some(format!(
                                    "{ip}/{}",
                                    if ver == 4 { 32 } else { 128 }
                                )),
                                ..base.clone()
                            });
                        }
                    }
                }
                None => rules.push(base),
            }
        }
        out.push(SecurityGroupSpec {
            id: g.row.id.clone(),
            name: g.row.name.clone(),
            rules,
            member_ips: own,
        });
    }
    Ok(out)
}

/// Pushes the current security of every bound port affected by a change to
/// `group_ids` (see the module doc), and of the ports `also`, each once.
/// Never fails the caller.
pub async fn push_for_groups(app: &App, group_ids: &[String], also: &[String]) {
    let mut ids: std::collections::BTreeSet<String> = also.iter().cloned().collect();
    if !group_ids.is_empty() {
        match store::ports_affected_by(app.db.pool(), group_ids).await {
            Ok(a) => ids.extend(a.into_iter().map(|(p, _, _)| p)),
            Err(e) => {
                tracing::warn!(error = ?e, "finding the ports affected by a security group change failed");
            }
        }
    }
    push_ports(app, &ids.into_iter().collect::<Vec<_>>()).await;
}

/// Sends `apply_port_security` for each of `port_ids` that is bound to a
/// host. Never fails the caller.
async fn push_ports(app: &App, port_ids: &[String]) {
    use mica_rpc::Topic;
    use mica_rpc::compute::{ApplyPortSecurity, PortSecurityRequest};
    let Ok(rpc) = app.rpc() else {
        tracing::warn!("no message bus: security group changes not pushed");
        return;
    };
    for id in port_ids {
        let result: Result<()> = async {
            let mut conn = app.db.pool().acquire().await?;
            let Some(p) = store::get_port(&mut conn, id).await? else {
                return Ok(());
            };
            if p.row.binding_host_id.is_empty() {
                return Ok(());
            }
            let groups = if p.row.port_security_enabled {
                specs(app, &mut conn, &p.security_groups).await?
            } else {
                vec![]
            };
            drop(conn);
            let req = PortSecurityRequest {
                instance_uuid: p.row.device_id.clone(),
                port_id: p.row.id.clone(),
                security_groups: groups,
            };
            rpc.cast_method::<ApplyPortSecurity>(
                Topic::compute(p.row.binding_host_id.clone()),
                &req,
            )
            .await
            .map_err(|e| Error::internal("casting apply_port_security", e))?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(port = %id, error = ?e, "pushing port security failed");
        }
    }
}
