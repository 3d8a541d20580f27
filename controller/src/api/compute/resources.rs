//! Flavors, key pairs, server groups, quotas and limits.

use std::collections::BTreeMap;

use axum::extract::{OriginalUri, Path, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::{Base, Mv, next_link};
use crate::api::{Auth, JsonBody, State, query_pairs};
use crate::app::compute::common::naive_time;
use crate::app::compute::{flavors, keypairs, quotas, server_groups};
use crate::db::flavors::{Flavor, KeyPair};
use crate::db::server_groups::Group;
use crate::error::{Error, Result};

fn object<'a>(body: &'a Value, key: &str) -> Result<&'a Map<String, Value>> {
    body.get(key).and_then(Value::as_object).ok_or_else(|| {
        Error::bad_request(format!(
            "Invalid input for field/attribute {key}. '{key}' is a required property"
        ))
    })
}

// ---- flavors --------------------------------------------------------------------------------

fn flavor_links(base: &str, id: &str) -> Value {
    json!([
        {"rel": "self", "href": format!("{base}/v2.1/flavors/{id}")},
        {"rel": "bookmark", "href": format!("{base}/flavors/{id}")}
    ])
}

/// The detailed view of a flavor at `mv`.
pub fn flavor_view(base: &str, mv: Mv, f: &Flavor, extra_specs: bool) -> Value {
    let r = &f.row;
    let swap: Value = if r.swap_mb == 0 && !mv.at_least(75) {
        "".into()
    } else {
        r.swap_mb.into()
    };
    let mut v = json!({
        "id": r.id,
        "name": r.name,
        "ram": r.memory_mb,
        "disk": r.root_gb,
        "vcpus": r.vcpus,
        "links": flavor_links(base, &r.id),
        "OS-FLV-EXT-DATA:ephemeral": r.ephemeral_gb,
        "OS-FLV-DISABLED:disabled": r.disabled,
        "swap": swap,
        "rxtx_factor": r.rxtx_factor,
        "os-flavor-access:is_public": r.is_public,
    });
    if mv.at_least(55) {
        v["description"] = r.description.clone().into();
    }
    if mv.at_least(61) && extra_specs {
        v["extra_specs"] = json!(f.extra_specs);
    }
    v
}

fn flavor_brief(base: &str, mv: Mv, f: &Flavor) -> Value {
    let mut v = json!({"id": f.row.id, "name": f.row.name, "links": flavor_links(base, &f.row.id)});
    if mv.at_least(55) {
        v["description"] = f.row.description.clone().into();
    }
    v
}

async fn flavor_list(
    st: &State,
    ctx: &crate::context::Context,
    mv: Mv,
    base: &str,
    params: Vec<(String, String)>,
    detail: bool,
) -> Result<Response> {
    let list = flavors::list(st, ctx, &params).await?;
    let specs = flavors::show_extra_specs(st, ctx);
    let items: Vec<Value> = list
        .iter()
        .map(|f| {
            if detail {
                flavor_view(base, mv, f, specs)
            } else {
                flavor_brief(base, mv, f)
            }
        })
        .collect();
    let mut body = json!({"flavors": items});
    let limit = params
        .iter()
        .find(|(k, _)| k == "limit")
        .and_then(|(_, v)| v.parse::<i64>().ok())
        .unwrap_or(st.config.compute.max_limit)
        .min(st.config.compute.max_limit);
    let path = if detail {
        "/flavors/detail"
    } else {
        "/flavors"
    };
    if let Some(l) = next_link(
        base,
        path,
        &params,
        list.len(),
        limit,
        list.last().map(|f| f.row.id.as_str()),
    ) {
        body["flavors_links"] = l;
    }
    Ok(axum::Json(body).into_response())
}

/// Lists flavors.
#[utoipa::path(get, path = "/v2.1/flavors", tag = "compute", responses((status = 200, body = Object)))]
pub async fn list_flavors(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Base(base): Base,
    OriginalUri(uri): OriginalUri,
) -> Result<Response> {
    flavor_list(&st, &ctx, mv, &base, query_pairs(&uri), false).await
}

/// Lists flavors with details.
#[utoipa::path(get, path = "/v2.1/flavors/detail", tag = "compute", responses((status = 200, body = Object)))]
pub async fn list_flavors_detail(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Base(base): Base,
    OriginalUri(uri): OriginalUri,
) -> Result<Response> {
    flavor_list(&st, &ctx, mv, &base, query_pairs(&uri), true).await
}

/// Creates a flavor (admins).
#[utoipa::path(post, path = "/v2.1/flavors", tag = "compute", request_body(content = Object),
    responses((status = 200, body = Object), (status = 400, body = Object), (status = 403, body = Object), (status = 409, body = Object)))]
pub async fn create_flavor(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Base(base): Base,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    let f = flavors::create(&st, &ctx, object(&body, "flavor")?, mv.at_least(55)).await?;
    Ok(axum::Json(json!({"flavor": flavor_view(&base, mv, &f, true)})).into_response())
}

/// Shows a flavor.
#[utoipa::path(get, path = "/v2.1/flavors/{id}", tag = "compute", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = Object)))]
pub async fn show_flavor(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Base(base): Base,
    Path(id): Path<String>,
) -> Result<Response> {
    let f = flavors::get(&st, &ctx, &id).await?;
    let specs = flavors::show_extra_specs(&st, &ctx);
    Ok(axum::Json(json!({"flavor": flavor_view(&base, mv, &f, specs)})).into_response())
}

/// Updates a flavor's description (2.55).
#[utoipa::path(put, path = "/v2.1/flavors/{id}", tag = "compute", params(("id" = String, Path)),
    request_body(content = Object), responses((status = 200, body = Object), (status = 400, body = Object), (status = 404, body = Object)))]
pub async fn update_flavor(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Base(base): Base,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    if !mv.at_least(55) {
        return Err(Error::new(
            crate::error::Kind::MethodNotAllowed,
            "The method is not allowed for the requested URL.",
        ));
    }
    let f = object(&body, "flavor")?;
    let d = match f.get("description") {
        Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() <= 65535 => Some(s.clone()),
        _ => {
            return Err(Error::bad_request(
                "Invalid input for field/attribute flavor. 'description' is a required property",
            ));
        }
    };
    let f = flavors::update(&st, &ctx, &id, d).await?;
    Ok(axum::Json(json!({"flavor": flavor_view(&base, mv, &f, true)})).into_response())
}

/// Deletes a flavor (202).
#[utoipa::path(delete, path = "/v2.1/flavors/{id}", tag = "compute", params(("id" = String, Path)),
    responses((status = 202), (status = 403, body = Object), (status = 404, body = Object)))]
pub async fn delete_flavor(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    flavors::delete(&st, &ctx, &id).await?;
    Ok(StatusCode::ACCEPTED)
}

fn access_view(id: &str, projects: &[String]) -> Value {
    json!({"flavor_access": projects.iter().map(|p| json!({"flavor_id": id, "tenant_id": p})).collect::<Vec<_>>()})
}

/// `addTenantAccess` / `removeTenantAccess`.
#[utoipa::path(post, path = "/v2.1/flavors/{id}/action", tag = "compute", params(("id" = String, Path)),
    request_body(content = Object), responses((status = 200, body = Object), (status = 400, body = Object), (status = 404, body = Object), (status = 409, body = Object)))]
pub async fn flavor_action(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    let tenant = |key: &str| -> Result<String> {
        body.get(key)
            .and_then(|v| v.get("tenant"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| {
                Error::bad_request(format!(
                    "Invalid input for field/attribute {key}. 'tenant' is a required property"
                ))
            })
    };
    let list = if body.get("addTenantAccess").is_some() {
        flavors::add_access(&st, &ctx, &id, &tenant("addTenantAccess")?).await?
    } else if body.get("removeTenantAccess").is_some() {
        flavors::remove_access(&st, &ctx, &id, &tenant("removeTenantAccess")?).await?
    } else {
        return Err(Error::bad_request("There is no such action."));
    };
    Ok(axum::Json(access_view(&id, &list)).into_response())
}

/// The projects of a private flavor.
#[utoipa::path(get, path = "/v2.1/flavors/{id}/os-flavor-access", tag = "compute", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = Object)))]
pub async fn flavor_access(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<Response> {
    let list = flavors::access_list(&st, &ctx, &id).await?;
    Ok(axum::Json(access_view(&id, &list)).into_response())
}

/// A flavor's extra specs.
#[utoipa::path(get, path = "/v2.1/flavors/{id}/os-extra_specs", tag = "compute", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = Object)))]
pub async fn extra_specs(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<Response> {
    let s = flavors::extra_specs(&st, &ctx, &id).await?;
    Ok(axum::Json(json!({"extra_specs": s})).into_response())
}

/// Adds or replaces extra specs (validated from 2.86).
#[utoipa::path(post, path = "/v2.1/flavors/{id}/os-extra_specs", tag = "compute", params(("id" = String, Path)),
    request_body(content = Object), responses((status = 200, body = Object), (status = 400, body = Object), (status = 404, body = Object)))]
pub async fn set_extra_specs(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    let specs = object(&body, "extra_specs")?;
    let set = flavors::set_extra_specs(&st, &ctx, &id, specs, mv.at_least(86)).await?;
    Ok(axum::Json(json!({"extra_specs": set})).into_response())
}

/// One extra spec.
#[utoipa::path(get, path = "/v2.1/flavors/{id}/os-extra_specs/{key}", tag = "compute",
    params(("id" = String, Path), ("key" = String, Path)), responses((status = 200, body = Object), (status = 404, body = Object)))]
pub async fn extra_spec(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path((id, key)): Path<(String, String)>,
) -> Result<Response> {
    let s = flavors::extra_specs(&st, &ctx, &id).await?;
    let v = s.get(&key).ok_or_else(|| {
        Error::not_found(format!("Flavor {id} has no extra specs with key {key}."))
    })?;
    Ok(axum::Json(json!({key: v})).into_response())
}

/// Sets one extra spec (`{key: value}`; the key must match the URL).
#[utoipa::path(put, path = "/v2.1/flavors/{id}/os-extra_specs/{key}", tag = "compute",
    params(("id" = String, Path), ("key" = String, Path)), request_body(content = Object),
    responses((status = 200, body = Object), (status = 400, body = Object), (status = 404, body = Object)))]
pub async fn put_extra_spec(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path((id, key)): Path<(String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    let o = body
        .as_object()
        .ok_or_else(|| Error::bad_request("The request body must be a JSON object."))?;
    if o.len() != 1 {
        return Err(Error::bad_request("Request body contains too many items"));
    }
    if !o.contains_key(&key) {
        return Err(Error::bad_request("Request body and URI mismatch"));
    }
    let set = flavors::set_extra_specs(&st, &ctx, &id, o, mv.at_least(86)).await?;
    Ok(axum::Json(json!(set)).into_response())
}

/// Removes one extra spec.
#[utoipa::path(delete, path = "/v2.1/flavors/{id}/os-extra_specs/{key}", tag = "compute",
    params(("id" = String, Path), ("key" = String, Path)), responses((status = 200), (status = 404, body = Object)))]
pub async fn delete_extra_spec(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path((id, key)): Path<(String, String)>,
) -> Result<StatusCode> {
    flavors::delete_extra_spec(&st, &ctx, &id, &key).await?;
    Ok(StatusCode::OK)
}

// ---- key pairs --------------------------------------------------------------------------------

fn user_param(mv: Mv, params: &[(String, String)]) -> Option<String> {
    if !mv.at_least(10) {
        return None;
    }
    params
        .iter()
        .find(|(k, _)| k == "user_id")
        .map(|(_, v)| v.clone())
}

fn keypair_brief(mv: Mv, k: &KeyPair) -> Value {
    let mut v = json!({"name": k.name, "public_key": k.public_key, "fingerprint": k.fingerprint});
    if mv.at_least(2) {
        v["type"] = k.kind.clone().into();
    }
    v
}

/// Lists the caller's (or, admins, a user's) key pairs.
#[utoipa::path(get, path = "/v2.1/os-keypairs", tag = "compute", responses((status = 200, body = Object)))]
pub async fn list_keypairs(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Base(base): Base,
    OriginalUri(uri): OriginalUri,
) -> Result<Response> {
    let params = query_pairs(&uri);
    let user = user_param(mv, &params);
    let (marker, limit) = if mv.at_least(35) {
        let marker = params
            .iter()
            .find(|(k, _)| k == "marker")
            .map(|(_, v)| v.clone());
        let limit = params
            .iter()
            .find(|(k, _)| k == "limit")
            .map(|(_, v)| {
                v.parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| Error::bad_request("limit param must be positive"))
            })
            .transpose()?;
        (marker, limit)
    } else {
        (None, None)
    };
    let list = keypairs::list(&st, &ctx, user.as_deref(), marker.as_deref(), limit).await?;
    let mut body = json!({"keypairs": list.iter().map(|k| json!({"keypair": keypair_brief(mv, k)})).collect::<Vec<_>>()});
    if let Some(l) = limit
        && let Some(links) = next_link(
            &base,
            "/os-keypairs",
            &params,
            list.len(),
            l,
            list.last().map(|k| k.name.as_str()),
        )
    {
        body["keypairs_links"] = links;
    }
    Ok(axum::Json(body).into_response())
}

/// Imports or generates a key pair.
#[utoipa::path(post, path = "/v2.1/os-keypairs", tag = "compute", request_body(content = Object),
    responses((status = 201, body = Object), (status = 200, body = Object), (status = 400, body = Object), (status = 403, body = Object), (status = 409, body = Object)))]
pub async fn create_keypair(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    let k = object(&body, "keypair")?;
    let mut allowed = vec!["name", "public_key"];
    if mv.at_least(2) {
        allowed.push("type");
    }
    if mv.at_least(10) {
        allowed.push("user_id");
    }
    for key in k.keys() {
        if !allowed.contains(&key.as_str()) {
            return Err(Error::bad_request(format!(
                "Invalid input for field/attribute keypair. Additional properties are not allowed ('{key}' was unexpected)"
            )));
        }
    }
    let name = k.get("name").and_then(Value::as_str).ok_or_else(|| {
        Error::bad_request(
            "Invalid input for field/attribute keypair. 'name' is a required property",
        )
    })?;
    let kind = k.get("type").and_then(Value::as_str).unwrap_or("ssh");
    let public_key = k.get("public_key").and_then(Value::as_str);
    if public_key.is_none() && mv.at_least(92) {
        return Err(Error::bad_request(
            "Invalid input for field/attribute keypair. 'public_key' is a required property",
        ));
    }
    let user = k.get("user_id").and_then(Value::as_str);
    let created =
        keypairs::create(&st, &ctx, user, name, kind, public_key, mv.at_least(92)).await?;
    let kp = &created.keypair;
    let mut v = keypair_brief(mv, kp);
    v["user_id"] = kp.user_id.clone().into();
    if let Some(p) = &created.private_key {
        v["private_key"] = p.clone().into();
    }
    let status = if mv.at_least(2) {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(json!({"keypair": v}))).into_response())
}

/// Shows a key pair.
#[utoipa::path(get, path = "/v2.1/os-keypairs/{name}", tag = "compute", params(("name" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = Object)))]
pub async fn show_keypair(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(name): Path<String>,
    OriginalUri(uri): OriginalUri,
) -> Result<Response> {
    let user = user_param(mv, &query_pairs(&uri));
    let k = keypairs::get(&st, &ctx, user.as_deref(), &name).await?;
    let mut v = keypair_brief(mv, &k);
    v["user_id"] = k.user_id.clone().into();
    v["created_at"] = naive_time(&k.created_at).into();
    v["deleted"] = false.into();
    v["deleted_at"] = Value::Null;
    v["updated_at"] = Value::Null;
    v["id"] = k.id.into();
    Ok(axum::Json(json!({"keypair": v})).into_response())
}

/// Deletes a key pair.
#[utoipa::path(delete, path = "/v2.1/os-keypairs/{name}", tag = "compute", params(("name" = String, Path)),
    responses((status = 204), (status = 202), (status = 404, body = Object)))]
pub async fn delete_keypair(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(name): Path<String>,
    OriginalUri(uri): OriginalUri,
) -> Result<StatusCode> {
    let user = user_param(mv, &query_pairs(&uri));
    keypairs::delete(&st, &ctx, user.as_deref(), &name).await?;
    Ok(if mv.at_least(2) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::ACCEPTED
    })
}

// ---- server groups ------------------------------------------------------------------------

fn group_view(mv: Mv, g: &Group) -> Value {
    let r = &g.row;
    let mut v = json!({"id": r.uuid, "name": r.name, "members": g.members});
    if mv.at_least(13) {
        v["project_id"] = r.project_id.clone().into();
        v["user_id"] = r.user_id.clone().into();
    }
    if mv.at_least(64) {
        v["policy"] = r.policy.clone().into();
        v["rules"] = serde_json::from_str::<Value>(&r.rules).unwrap_or_else(|_| json!({}));
    } else {
        v["policies"] = json!([r.policy]);
        v["metadata"] = json!({});
    }
    v
}

/// Lists server groups.
#[utoipa::path(get, path = "/v2.1/os-server-groups", tag = "compute", responses((status = 200, body = Object)))]
pub async fn list_server_groups(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    OriginalUri(uri): OriginalUri,
) -> Result<Response> {
    let list = server_groups::list(&st, &ctx, &query_pairs(&uri)).await?;
    Ok(axum::Json(
        json!({"server_groups": list.iter().map(|g| group_view(mv, g)).collect::<Vec<_>>()}),
    )
    .into_response())
}

/// Creates a server group.
#[utoipa::path(post, path = "/v2.1/os-server-groups", tag = "compute", request_body(content = Object),
    responses((status = 200, body = Object), (status = 400, body = Object), (status = 403, body = Object)))]
pub async fn create_server_group(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    let g = server_groups::create(&st, &ctx, mv.0, object(&body, "server_group")?).await?;
    Ok(axum::Json(json!({"server_group": group_view(mv, &g)})).into_response())
}

/// Shows a server group.
#[utoipa::path(get, path = "/v2.1/os-server-groups/{id}", tag = "compute", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = Object)))]
pub async fn show_server_group(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(id): Path<String>,
) -> Result<Response> {
    let g = server_groups::get(&st, &ctx, &id).await?;
    Ok(axum::Json(json!({"server_group": group_view(mv, &g)})).into_response())
}

/// Deletes a server group.
#[utoipa::path(delete, path = "/v2.1/os-server-groups/{id}", tag = "compute", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = Object)))]
pub async fn delete_server_group(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    server_groups::delete(&st, &ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- quotas and limits ------------------------------------------------------------------------

/// The quota resources shown at `mv`.
pub fn quota_keys(mv: Mv) -> Vec<&'static str> {
    let mut keys: Vec<&str> = quotas::RESOURCES.to_vec();
    if mv.at_least(57) {
        keys.retain(|r| !quotas::INJECTED.contains(r));
    }
    if !mv.at_least(36) {
        keys.extend(quotas::NETWORK_LEGACY.iter().map(|(r, _)| *r));
    }
    keys
}

/// The quota class resources shown at `mv`: before 2.50 the network ones
/// and no server group ones (Nova's 2.50 change), otherwise as quota sets.
pub fn class_keys(mv: Mv) -> Vec<&'static str> {
    if mv.at_least(50) {
        let mut keys: Vec<&str> = quotas::RESOURCES.to_vec();
        if mv.at_least(57) {
            keys.retain(|r| !quotas::INJECTED.contains(r));
        }
        return keys;
    }
    let mut keys: Vec<&str> = quotas::RESOURCES
        .iter()
        .copied()
        .filter(|r| !r.starts_with("server_group"))
        .collect();
    keys.extend(quotas::NETWORK_LEGACY.iter().map(|(r, _)| *r));
    keys
}

fn class_view(mv: Mv, id: Option<&str>, limits: &BTreeMap<String, i64>) -> Value {
    let mut v = Map::new();
    if let Some(id) = id {
        v.insert("id".into(), id.into());
    }
    for k in class_keys(mv) {
        let n = limits.get(k).copied().or_else(|| legacy(k)).unwrap_or(-1);
        v.insert(k.into(), n.into());
    }
    Value::Object(v)
}

fn legacy(r: &str) -> Option<i64> {
    quotas::NETWORK_LEGACY
        .iter()
        .find(|(k, _)| *k == r)
        .map(|(_, v)| *v)
}

fn quota_view(mv: Mv, id: Option<&str>, limits: &BTreeMap<String, i64>) -> Value {
    let mut v = Map::new();
    if let Some(id) = id {
        v.insert("id".into(), id.into());
    }
    for k in quota_keys(mv) {
        let n = limits.get(k).copied().or_else(|| legacy(k)).unwrap_or(-1);
        v.insert(k.into(), n.into());
    }
    Value::Object(v)
}

fn user_of(params: &[(String, String)]) -> Option<String> {
    params
        .iter()
        .find(|(k, _)| k == "user_id")
        .map(|(_, v)| v.clone())
}

/// A project's quotas (`?user_id=` for a user's).
#[utoipa::path(get, path = "/v2.1/os-quota-sets/{project}", tag = "compute", params(("project" = String, Path)),
    responses((status = 200, body = Object), (status = 403, body = Object)))]
pub async fn show_quotas(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(project): Path<String>,
    OriginalUri(uri): OriginalUri,
) -> Result<Response> {
    let user = user_of(&query_pairs(&uri));
    let q = quotas::show(&st, &ctx, &project, user.as_deref()).await?;
    Ok(axum::Json(json!({"quota_set": quota_view(mv, Some(&project), &q.limits)})).into_response())
}

/// A project's quotas with usage.
#[utoipa::path(get, path = "/v2.1/os-quota-sets/{project}/detail", tag = "compute", params(("project" = String, Path)),
    responses((status = 200, body = Object), (status = 403, body = Object)))]
pub async fn quota_details(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(project): Path<String>,
    OriginalUri(uri): OriginalUri,
) -> Result<Response> {
    let user = user_of(&query_pairs(&uri));
    let q = quotas::show(&st, &ctx, &project, user.as_deref()).await?;
    let mut v = Map::new();
    v.insert("id".into(), project.clone().into());
    for k in quota_keys(mv) {
        let limit = q.limits.get(k).copied().or_else(|| legacy(k)).unwrap_or(-1);
        let used = q.in_use.get(k).copied().unwrap_or(0);
        v.insert(
            k.into(),
            json!({"in_use": used, "limit": limit, "reserved": 0}),
        );
    }
    Ok(axum::Json(json!({"quota_set": v})).into_response())
}

/// The default quotas.
#[utoipa::path(get, path = "/v2.1/os-quota-sets/{project}/defaults", tag = "compute", params(("project" = String, Path)),
    responses((status = 200, body = Object)))]
pub async fn default_quotas(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(project): Path<String>,
) -> Result<Response> {
    let d = quotas::show_defaults(&st, &ctx).await?;
    Ok(axum::Json(json!({"quota_set": quota_view(mv, Some(&project), &d)})).into_response())
}

/// Sets quotas (admins).
#[utoipa::path(put, path = "/v2.1/os-quota-sets/{project}", tag = "compute", params(("project" = String, Path)),
    request_body(content = Object), responses((status = 200, body = Object), (status = 400, body = Object), (status = 403, body = Object)))]
pub async fn update_quotas(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(project): Path<String>,
    OriginalUri(uri): OriginalUri,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    let user = user_of(&query_pairs(&uri));
    let set = object(&body, "quota_set")?;
    let known = quota_keys(mv);
    let q = quotas::update(&st, &ctx, &project, user.as_deref(), set, &known).await?;
    Ok(axum::Json(json!({"quota_set": quota_view(mv, None, &q.limits)})).into_response())
}

/// Resets quotas to the defaults (admins).
#[utoipa::path(delete, path = "/v2.1/os-quota-sets/{project}", tag = "compute", params(("project" = String, Path)),
    responses((status = 202), (status = 403, body = Object)))]
pub async fn delete_quotas(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path(project): Path<String>,
    OriginalUri(uri): OriginalUri,
) -> Result<StatusCode> {
    let user = user_of(&query_pairs(&uri));
    quotas::delete(&st, &ctx, &project, user.as_deref()).await?;
    Ok(StatusCode::ACCEPTED)
}

/// A quota class (`default`).
#[utoipa::path(get, path = "/v2.1/os-quota-class-sets/{class}", tag = "compute", params(("class" = String, Path)),
    responses((status = 200, body = Object), (status = 403, body = Object)))]
pub async fn show_quota_class(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(class): Path<String>,
) -> Result<Response> {
    let d = quotas::show_class(&st, &ctx, &class).await?;
    Ok(axum::Json(json!({"quota_class_set": class_view(mv, Some(&class), &d)})).into_response())
}

/// Changes a quota class.
#[utoipa::path(put, path = "/v2.1/os-quota-class-sets/{class}", tag = "compute", params(("class" = String, Path)),
    request_body(content = Object), responses((status = 200, body = Object), (status = 400, body = Object), (status = 403, body = Object)))]
pub async fn update_quota_class(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(class): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    let set = object(&body, "quota_class_set")?;
    let known = class_keys(mv);
    let d = quotas::update_class(&st, &ctx, &class, set, &known).await?;
    Ok(axum::Json(json!({"quota_class_set": class_view(mv, None, &d)})).into_response())
}

/// Absolute limits and usage.
#[utoipa::path(get, path = "/v2.1/limits", tag = "compute", responses((status = 200, body = Object)))]
pub async fn limits(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    OriginalUri(uri): OriginalUri,
) -> Result<Response> {
    let params = query_pairs(&uri);
    let tenant = params
        .iter()
        .find(|(k, _)| k == "tenant_id")
        .map(|(_, v)| v.clone());
    let q = quotas::absolute_limits(&st, &ctx, tenant.as_deref()).await?;
    let l = |k: &str| q.limits.get(k).copied().unwrap_or(-1);
    let u = |k: &str| q.in_use.get(k).copied().unwrap_or(0);
    let mut a = json!({
        "maxServerMeta": l("metadata_items"),
        "maxTotalKeypairs": l("key_pairs"),
        "maxServerGroups": l("server_groups"),
        "maxServerGroupMembers": l("server_group_members"),
        "maxTotalInstances": l("instances"),
        "maxTotalCores": l("cores"),
        "maxTotalRAMSize": l("ram"),
        "totalInstancesUsed": u("instances"),
        "totalCoresUsed": u("cores"),
        "totalRAMUsed": u("ram"),
        "totalServerGroupsUsed": u("server_groups"),
    });
    if !mv.at_least(57) {
        a["maxPersonality"] = l("injected_files").into();
        a["maxPersonalitySize"] = l("injected_file_content_bytes").into();
    }
    if !mv.at_least(39) {
        a["maxImageMeta"] = l("metadata_items").into();
    }
    if !mv.at_least(36) {
        a["maxSecurityGroups"] = 10.into();
        a["maxSecurityGroupRules"] = 20.into();
        a["maxTotalFloatingIps"] = 10.into();
        a["totalSecurityGroupsUsed"] = 0.into();
        a["totalFloatingIpsUsed"] = 0.into();
    }
    Ok(axum::Json(json!({"limits": {"rate": [], "absolute": a}})).into_response())
}
