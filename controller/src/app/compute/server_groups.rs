//! Server groups: affinity, anti-affinity and their soft variants (2.15),
//! `max_server_per_host` for anti-affinity (2.64). The scheduler enforces
//! them; the API validates and keeps membership (with the
//! `server_group_members` quota at create time).

use serde_json::{Map, Value};

use super::common::{int_field, invalid, project_of};
use crate::app::App;
use crate::context::Context;
use crate::db::Timestamp;
use crate::db::server_groups::{self as store, Group, GroupRow};
use crate::error::{Error, Result};
use crate::policy::Target;

fn not_found(id: &str) -> Error {
    Error::not_found(format!("Instance group {id} could not be found."))
}

/// Creates a group from the request body's `server_group` object.
pub async fn create(app: &App, ctx: &Context, mv: u32, body: &Map<String, Value>) -> Result<Group> {
    let project = project_of(ctx)?.to_owned();
    app.policy.enforce(
        "os_compute_api:os-server-groups:create",
        ctx,
        Target::project(&project),
    )?;
    let allowed: &[&str] = if mv >= 64 {
        &["name", "policy", "rules"]
    } else {
        &["name", "policies"]
    };
    for k in body.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(Error::bad_request(format!(
                "Invalid input for field/attribute server_group. Additional properties are not allowed ('{k}' was unexpected)"
            )));
        }
    }
    let name = body.get("name").ok_or_else(|| {
        Error::bad_request(
            "Invalid input for field/attribute server_group. 'name' is a required property",
        )
    })?;
    let name = super::common::check_name("name", name)?;
    let mut policies: Vec<&str> = vec!["affinity", "anti-affinity"];
    if mv >= 15 {
        policies.extend(["soft-affinity", "soft-anti-affinity"]);
    }
    let policy = if mv >= 64 {
        let p = body.get("policy").ok_or_else(|| {
            Error::bad_request(
                "Invalid input for field/attribute server_group. 'policy' is a required property",
            )
        })?;
        p.as_str()
            .filter(|s| policies.contains(s))
            .ok_or_else(|| invalid("policy", p, &format!("is not one of {policies:?}")))?
            .to_owned()
    } else {
        let p = body.get("policies").ok_or_else(|| {
            Error::bad_request(
                "Invalid input for field/attribute server_group. 'policies' is a required property",
            )
        })?;
        let list = p
            .as_array()
            .filter(|a| a.len() == 1)
            .ok_or_else(|| invalid("policies", p, "must hold exactly one policy"))?;
        list[0]
            .as_str()
            .filter(|s| policies.contains(s))
            .ok_or_else(|| invalid("policies", p, &format!("is not one of {policies:?}")))?
            .to_owned()
    };
    let mut rules = Map::new();
    if let Some(r) = body.get("rules") {
        let o = r
            .as_object()
            .ok_or_else(|| invalid("rules", r, "is not of type 'object'"))?;
        for (k, v) in o {
            if k != "max_server_per_host" {
                return Err(Error::bad_request(format!(
                    "Invalid input for field/attribute rules. Additional properties are not allowed ('{k}' was unexpected)"
                )));
            }
            let n = int_field("max_server_per_host", v, 1, i64::from(i32::MAX))?;
            if policy != "anti-affinity" {
                return Err(Error::bad_request(
                    "Only anti-affinity policy supports max_server_per_host rule.",
                ));
            }
            rules.insert(k.clone(), Value::from(n));
        }
    }
    let row = GroupRow {
        id: 0,
        uuid: uuid::Uuid::new_v4().to_string(),
        project_id: project.clone(),
        user_id: ctx.user_id.clone(),
        name,
        policy,
        rules: Value::Object(rules).to_string(),
        created_at: Timestamp::now(),
    };
    let id = app
        .db
        .retry(|| async {
            let mut tx = app.db.begin().await?;
            crate::db::quotas::lock_project(&mut tx, &project).await?;
            super::quotas::check_one_more(&mut tx, app, &project, &ctx.user_id, "server_groups")
                .await?;
            let id = store::insert_group(&mut *tx, &row).await?;
            tx.commit().await?;
            Ok(id)
        })
        .await?;
    Ok(Group {
        row: GroupRow { id, ..row },
        members: vec![],
    })
}

/// A group the caller sees.
pub async fn get(app: &App, ctx: &Context, id: &str) -> Result<Group> {
    let mut conn = app.db.pool().acquire().await?;
    let g = store::get_group(&mut conn, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    if !(ctx.is_admin() || ctx.project_id() == Some(g.row.project_id.as_str())) {
        return Err(not_found(id));
    }
    app.policy.enforce(
        "os_compute_api:os-server-groups:show",
        ctx,
        Target::project(&g.row.project_id),
    )?;
    Ok(g)
}

/// Groups of the caller's project, or of all (`all_projects`, admins),
/// paged by `offset` and `limit`.
pub async fn list(app: &App, ctx: &Context, params: &[(String, String)]) -> Result<Vec<Group>> {
    app.policy.enforce(
        "os_compute_api:os-server-groups:index",
        ctx,
        Target::default(),
    )?;
    let mut all = false;
    let mut offset = 0;
    let mut limit = app.config.compute.max_limit;
    for (k, v) in params {
        match k.as_str() {
            "all_projects" => {
                all = v.is_empty() || super::common::parse_bool(v).unwrap_or(false);
            }
            "offset" => {
                offset = v
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| Error::bad_request("offset param must be positive"))?
            }
            "limit" => {
                limit = v
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| Error::bad_request("limit param must be positive"))?
                    .min(limit)
            }
            _ => {}
        }
    }
    let project = if all
        && app.policy.check(
            "os_compute_api:os-server-groups:index:all_projects",
            ctx,
            Target::default(),
        ) {
        None
    } else {
        Some(project_of(ctx)?.to_owned())
    };
    let mut conn = app.db.pool().acquire().await?;
    store::list_groups(&mut conn, project.as_deref(), offset, Some(limit)).await
}

/// Deletes a group (its members stay, ungrouped).
pub async fn delete(app: &App, ctx: &Context, id: &str) -> Result<()> {
    let g = get(app, ctx, id).await?;
    app.policy.enforce(
        "os_compute_api:os-server-groups:delete",
        ctx,
        Target::project(&g.row.project_id),
    )?;
    if !store::delete_group(app.db.pool(), id).await? {
        return Err(not_found(id));
    }
    Ok(())
}
