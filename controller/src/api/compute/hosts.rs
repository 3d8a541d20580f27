//! Availability zones, aggregates, services, hypervisors, and Nova's
//! `os-security-groups` proxy (answered from the network data, until 2.36).

use std::collections::BTreeMap;

use axum::extract::{OriginalUri, Path, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::servers::{security_group_rule_view, security_group_view};
use super::{Base, Mv, next_link};
use crate::api::{Auth, JsonBody, State, query_pairs};
use crate::app::compute::common::naive_time;
use crate::app::compute::hosts::{self as app, Hypervisor, Service};
use crate::app::network::security_groups as sg_app;
use crate::db::hosts::Aggregate;
use crate::error::{Error, Result};

// ---- availability zones ------------------------------------------------------------------------

async fn zone_list(st: &State, ctx: &crate::context::Context, detail: bool) -> Result<Response> {
    let zones = app::zones(st, ctx, detail).await?;
    let items: Vec<Value> = zones
        .iter()
        .map(|z| {
            let hosts = if detail {
                let mut h = Map::new();
                for (host, services) in &z.hosts {
                    let mut s = Map::new();
                    for svc in services {
                        s.insert(
                            svc.row.binary_name.clone(),
                            json!({
                                "available": svc.up && !svc.row.disabled,
                                "active": !svc.row.disabled,
                                "updated_at": svc.row.updated_at.as_ref().map(naive_time),
                            }),
                        );
                    }
                    h.insert(host.clone(), Value::Object(s));
                }
                Value::Object(h)
            } else {
                Value::Null
            };
            json!({"zoneName": z.name, "zoneState": {"available": z.available}, "hosts": hosts})
        })
        .collect();
    Ok(axum::Json(json!({"availabilityZoneInfo": items})).into_response())
}

/// Lists availability zones.
#[utoipa::path(get, path = "/v2.1/os-availability-zone", tag = "compute", responses((status = 200, body = Object)))]
pub async fn zones(AxState(st): AxState<State>, Auth(ctx): Auth) -> Result<Response> {
    zone_list(&st, &ctx, false).await
}

/// Lists availability zones with hosts and services (admins).
#[utoipa::path(get, path = "/v2.1/os-availability-zone/detail", tag = "compute",
    responses((status = 200, body = Object), (status = 403, body = Object)))]
pub async fn zones_detail(AxState(st): AxState<State>, Auth(ctx): Auth) -> Result<Response> {
    zone_list(&st, &ctx, true).await
}

// ---- aggregates ----------------------------------------------------------------------------------

fn aggregate_view(mv: Mv, a: &Aggregate) -> Value {
    let mut v = json!({
        "id": a.row.id,
        "name": a.row.name,
        "availability_zone": a.availability_zone(),
        "hosts": a.hosts,
        "metadata": a.metadata,
        "created_at": naive_time(&a.row.created_at),
        "updated_at": a.row.updated_at.as_ref().map(naive_time),
        "deleted": false,
        "deleted_at": Value::Null,
    });
    if mv.at_least(41) {
        v["uuid"] = a.row.uuid.clone().into();
    }
    v
}

fn aggregate_body<'a>(body: &'a Value, key: &str) -> Result<&'a Map<String, Value>> {
    body.get(key).and_then(Value::as_object).ok_or_else(|| {
        Error::bad_request(format!(
            "Invalid input for field/attribute {key}. '{key}' is a required property"
        ))
    })
}

fn az_value(v: Option<&Value>) -> Result<Option<Option<String>>> {
    match v {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= 255 => {
            Ok(Some(Some(s.clone())))
        }
        Some(other) => Err(Error::bad_request(format!(
            "Invalid input for field/attribute availability_zone. Value: {other}."
        ))),
    }
}

/// Lists aggregates (admins).
#[utoipa::path(get, path = "/v2.1/os-aggregates", tag = "compute", responses((status = 200, body = Object), (status = 403, body = Object)))]
pub async fn list_aggregates(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
) -> Result<Response> {
    let list = app::list_aggregates(&st, &ctx).await?;
    Ok(axum::Json(
        json!({"aggregates": list.iter().map(|a| aggregate_view(mv, a)).collect::<Vec<_>>()}),
    )
    .into_response())
}

/// Creates an aggregate (admins).
#[utoipa::path(post, path = "/v2.1/os-aggregates", tag = "compute", request_body(content = Object),
    responses((status = 200, body = Object), (status = 400, body = Object), (status = 403, body = Object), (status = 409, body = Object)))]
pub async fn create_aggregate(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    let b = aggregate_body(&body, "aggregate")?;
    let name = b
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.trim().is_empty() && n.chars().count() <= 255)
        .ok_or_else(|| {
            Error::bad_request(
                "Invalid input for field/attribute aggregate. 'name' is a required property",
            )
        })?;
    let az = az_value(b.get("availability_zone"))?.flatten();
    let a = app::create_aggregate(&st, &ctx, name, az.as_deref()).await?;
    Ok(axum::Json(json!({"aggregate": aggregate_view(mv, &a)})).into_response())
}

/// Shows an aggregate.
#[utoipa::path(get, path = "/v2.1/os-aggregates/{id}", tag = "compute", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = Object)))]
pub async fn show_aggregate(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(id): Path<String>,
) -> Result<Response> {
    let a = app::get_aggregate(&st, &ctx, &id).await?;
    Ok(axum::Json(json!({"aggregate": aggregate_view(mv, &a)})).into_response())
}

/// Renames an aggregate or changes its zone.
#[utoipa::path(put, path = "/v2.1/os-aggregates/{id}", tag = "compute", params(("id" = String, Path)),
    request_body(content = Object), responses((status = 200, body = Object), (status = 400, body = Object), (status = 404, body = Object), (status = 409, body = Object)))]
pub async fn update_aggregate(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    let b = aggregate_body(&body, "aggregate")?;
    let name = b.get("name").and_then(Value::as_str);
    let az = az_value(b.get("availability_zone"))?;
    if name.is_none() && az.is_none() {
        return Err(Error::bad_request(
            "Invalid input for field/attribute aggregate. {} does not have enough properties",
        ));
    }
    let az_ref = az.as_ref().map(|o| o.as_deref());
    let a = app::update_aggregate(&st, &ctx, &id, name, az_ref).await?;
    Ok(axum::Json(json!({"aggregate": aggregate_view(mv, &a)})).into_response())
}

/// Deletes an empty aggregate.
#[utoipa::path(delete, path = "/v2.1/os-aggregates/{id}", tag = "compute", params(("id" = String, Path)),
    responses((status = 200), (status = 400, body = Object), (status = 404, body = Object)))]
pub async fn delete_aggregate(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    app::delete_aggregate(&st, &ctx, &id).await?;
    Ok(StatusCode::OK)
}

/// `add_host`, `remove_host`, `set_metadata`.
#[utoipa::path(post, path = "/v2.1/os-aggregates/{id}/action", tag = "compute", params(("id" = String, Path)),
    request_body(content = Object), responses((status = 200, body = Object), (status = 400, body = Object), (status = 404, body = Object), (status = 409, body = Object)))]
pub async fn aggregate_action(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    let host = |key: &str| -> Result<String> {
        body.get(key)
            .and_then(|v| v.get("host"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| {
                Error::bad_request(format!(
                    "Invalid input for field/attribute {key}. 'host' is a required property"
                ))
            })
    };
    let a = if body.get("add_host").is_some() {
        app::add_host(&st, &ctx, &id, &host("add_host")?).await?
    } else if body.get("remove_host").is_some() {
        app::remove_host(&st, &ctx, &id, &host("remove_host")?).await?
    } else if let Some(m) = body.get("set_metadata") {
        let meta = m
            .get("metadata")
            .and_then(Value::as_object)
            .ok_or_else(|| Error::bad_request("Invalid input for field/attribute set_metadata. 'metadata' is a required property"))?;
        let mut parsed = BTreeMap::new();
        for (k, v) in meta {
            let v = match v {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                other => {
                    return Err(Error::bad_request(format!(
                        "Invalid input for field/attribute metadata. Value: {other}."
                    )));
                }
            };
            parsed.insert(k.clone(), v);
        }
        app::set_metadata(&st, &ctx, &id, &parsed).await?
    } else {
        return Err(Error::bad_request(
            "Invalid request body: add_host, remove_host or set_metadata expected.",
        ));
    };
    Ok(axum::Json(json!({"aggregate": aggregate_view(mv, &a)})).into_response())
}

// ---- services -----------------------------------------------------------------------------------

fn service_view(mv: Mv, s: &Service) -> Value {
    let mut v = json!({
        "id": if mv.at_least(53) { Value::from(s.row.uuid.clone()) } else { Value::from(s.row.id) },
        "binary": s.row.binary_name,
        "host": s.row.host,
        "zone": s.zone,
        "status": if s.row.disabled { "disabled" } else { "enabled" },
        "state": if s.up { "up" } else { "down" },
        "updated_at": s.row.updated_at.as_ref().map(naive_time),
        "disabled_reason": s.row.disabled_reason,
    });
    if mv.at_least(11) {
        v["forced_down"] = s.row.forced_down.into();
    }
    v
}

/// Lists compute services (admins).
#[utoipa::path(get, path = "/v2.1/os-services", tag = "compute", responses((status = 200, body = Object), (status = 403, body = Object)))]
pub async fn list_services(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    OriginalUri(uri): OriginalUri,
) -> Result<Response> {
    let params = query_pairs(&uri);
    let get = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let list =
        app::list_services(&st, &ctx, get("host").as_deref(), get("binary").as_deref()).await?;
    Ok(axum::Json(
        json!({"services": list.iter().map(|s| service_view(mv, s)).collect::<Vec<_>>()}),
    )
    .into_response())
}

/// Enables, disables or forces down a service (2.53: by uuid; before: the
/// `enable`, `disable`, `disable-log-reason` and `force-down` actions).
#[utoipa::path(put, path = "/v2.1/os-services/{id}", tag = "compute", params(("id" = String, Path)),
    request_body(content = Object), responses((status = 200, body = Object), (status = 400, body = Object), (status = 404, body = Object)))]
pub async fn update_service(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    let o = body
        .as_object()
        .ok_or_else(|| Error::bad_request("The request body must be a JSON object."))?;
    if mv.at_least(53) {
        let s = app::update_service(&st, &ctx, &id, o).await?;
        return Ok(axum::Json(json!({"service": service_view(mv, &s)})).into_response());
    }
    let field = |k: &str| -> Result<String> {
        o.get(k)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| {
                Error::bad_request(format!(
                    "Invalid input for field/attribute {k}. '{k}' is a required property"
                ))
            })
    };
    let host = field("host")?;
    let binary = field("binary")?;
    let row = app::service_by_host(&st, &ctx, &host, &binary).await?;
    let mut change = Map::new();
    let resp = match id.as_str() {
        "enable" => {
            change.insert("status".into(), "enabled".into());
            json!({"host": host, "binary": binary, "status": "enabled"})
        }
        "disable" => {
            change.insert("status".into(), "disabled".into());
            json!({"host": host, "binary": binary, "status": "disabled"})
        }
        "disable-log-reason" => {
            let reason = field("disabled_reason")?;
            change.insert("status".into(), "disabled".into());
            change.insert("disabled_reason".into(), reason.clone().into());
            json!({"host": host, "binary": binary, "status": "disabled", "disabled_reason": reason})
        }
        "force-down" if mv.at_least(11) => {
            let f = o
                .get("forced_down")
                .ok_or_else(|| Error::bad_request("Invalid input for field/attribute forced_down. 'forced_down' is a required property"))?;
            change.insert("forced_down".into(), f.clone());
            json!({"host": host, "binary": binary, "forced_down": f})
        }
        other => return Err(Error::not_found(format!("Unknown action {other}"))),
    };
    app::update_service(&st, &ctx, &row.uuid, &change).await?;
    Ok(axum::Json(json!({"service": resp})).into_response())
}

/// Deletes a service (204).
#[utoipa::path(delete, path = "/v2.1/os-services/{id}", tag = "compute", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = Object), (status = 409, body = Object)))]
pub async fn delete_service(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    app::delete_service(&st, &ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- hypervisors --------------------------------------------------------------------------------

fn hyp_id(mv: Mv, h: &Hypervisor) -> Value {
    if mv.at_least(53) {
        h.node.uuid.clone().into()
    } else {
        h.node.id.into()
    }
}

fn hyp_state(h: &Hypervisor) -> (&'static str, &'static str) {
    match &h.service {
        Some(s) => (
            if s.up { "up" } else { "down" },
            if s.row.disabled {
                "disabled"
            } else {
                "enabled"
            },
        ),
        None => ("down", "disabled"),
    }
}

fn hyp_brief(mv: Mv, h: &Hypervisor, with_servers: bool) -> Value {
    let (state, status) = hyp_state(h);
    let mut v = json!({"id": hyp_id(mv, h), "hypervisor_hostname": h.node.hypervisor_hostname, "state": state, "status": status});
    if with_servers {
        v["servers"] = h
            .servers
            .iter()
            .map(|(u, n)| json!({"uuid": u, "name": n}))
            .collect::<Vec<_>>()
            .into();
    }
    v
}

fn hyp_detail(mv: Mv, h: &Hypervisor, with_servers: bool, show_uptime: bool) -> Value {
    let mut v = hyp_brief(mv, h, with_servers);
    let service = match &h.service {
        Some(s) => json!({
            "host": s.row.host,
            "id": if mv.at_least(53) { Value::from(s.row.uuid.clone()) } else { Value::from(s.row.id) },
            "disabled_reason": s.row.disabled_reason,
        }),
        None => json!({"host": h.node.host, "id": Value::Null, "disabled_reason": Value::Null}),
    };
    v["host_ip"] = h.node.host_ip.clone().into();
    v["hypervisor_type"] = h.node.hypervisor_type.clone().into();
    v["hypervisor_version"] = h.node.hypervisor_version.into();
    v["service"] = service;
    if mv.at_least(88) {
        if show_uptime {
            v["uptime"] = Value::Null;
        }
        return v;
    }
    let cpu: Value = serde_json::from_str(&h.node.cpu_info).unwrap_or_else(|_| json!({}));
    v["cpu_info"] = if mv.at_least(28) {
        cpu
    } else {
        Value::String(h.node.cpu_info.clone())
    };
    v["current_workload"] = 0.into();
    v["disk_available_least"] = (h.local_gb - h.local_gb_used).into();
    v["free_disk_gb"] = (h.local_gb - h.local_gb_used).into();
    v["free_ram_mb"] = (h.memory_mb - h.memory_mb_used).into();
    v["local_gb"] = h.local_gb.into();
    v["local_gb_used"] = h.local_gb_used.into();
    v["memory_mb"] = h.memory_mb.into();
    v["memory_mb_used"] = h.memory_mb_used.into();
    v["running_vms"] = h.running_vms.into();
    v["vcpus"] = h.vcpus.into();
    v["vcpus_used"] = h.vcpus_used.into();
    v
}

struct HypQuery {
    pattern: Option<String>,
    marker: Option<String>,
    limit: Option<i64>,
    with_servers: bool,
}

fn hyp_query(mv: Mv, params: &[(String, String)]) -> Result<HypQuery> {
    let get = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let mut q = HypQuery {
        pattern: None,
        marker: None,
        limit: None,
        with_servers: false,
    };
    if mv.at_least(33) {
        q.marker = get("marker");
        q.limit = get("limit")
            .map(|v| {
                v.parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| Error::bad_request("limit param must be positive"))
            })
            .transpose()?;
    }
    if mv.at_least(53) {
        q.pattern = get("hypervisor_hostname_pattern");
        q.with_servers = match get("with_servers") {
            Some(v) => crate::app::compute::common::parse_bool(&v).ok_or_else(|| {
                Error::bad_request(format!(
                    "Invalid input for query parameters with_servers. Value: {v}."
                ))
            })?,
            None => false,
        };
        if q.pattern.is_some() && (q.marker.is_some() || q.limit.is_some()) {
            return Err(Error::bad_request(
                "Paging over hypervisors with the hypervisor_hostname_pattern query parameter is not supported.",
            ));
        }
    }
    Ok(q)
}

async fn hyp_list(
    st: &State,
    ctx: &crate::context::Context,
    mv: Mv,
    base: &str,
    params: Vec<(String, String)>,
    detail: bool,
) -> Result<Response> {
    let q = hyp_query(mv, &params)?;
    let list = app::list_hypervisors(
        st,
        ctx,
        q.pattern.as_deref(),
        q.marker.as_deref(),
        q.limit,
        q.with_servers,
    )
    .await?;
    if q.pattern.is_some() && list.is_empty() {
        return Err(Error::not_found(format!(
            "No hypervisor matching '{}' could be found.",
            q.pattern.unwrap_or_default()
        )));
    }
    let items: Vec<Value> = list
        .iter()
        .map(|h| {
            if detail {
                hyp_detail(mv, h, q.with_servers, false)
            } else {
                hyp_brief(mv, h, q.with_servers)
            }
        })
        .collect();
    let mut body = json!({"hypervisors": items});
    if let Some(l) = q.limit {
        let last = list.last().map(|h| {
            if mv.at_least(53) {
                h.node.uuid.clone()
            } else {
                h.node.id.to_string()
            }
        });
        let path = if detail {
            "/os-hypervisors/detail"
        } else {
            "/os-hypervisors"
        };
        if let Some(links) = next_link(base, path, &params, list.len(), l, last.as_deref()) {
            body["hypervisors_links"] = links;
        }
    }
    Ok(axum::Json(body).into_response())
}

/// Lists hypervisors (admins).
#[utoipa::path(get, path = "/v2.1/os-hypervisors", tag = "compute", responses((status = 200, body = Object), (status = 403, body = Object)))]
pub async fn list_hypervisors(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Base(base): Base,
    OriginalUri(uri): OriginalUri,
) -> Result<Response> {
    hyp_list(&st, &ctx, mv, &base, query_pairs(&uri), false).await
}

/// Lists hypervisors with details (admins).
#[utoipa::path(get, path = "/v2.1/os-hypervisors/detail", tag = "compute", responses((status = 200, body = Object), (status = 403, body = Object)))]
pub async fn list_hypervisors_detail(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Base(base): Base,
    OriginalUri(uri): OriginalUri,
) -> Result<Response> {
    hyp_list(&st, &ctx, mv, &base, query_pairs(&uri), true).await
}

/// Totals over every hypervisor (before 2.88).
#[utoipa::path(get, path = "/v2.1/os-hypervisors/statistics", tag = "compute",
    responses((status = 200, body = Object), (status = 404, body = Object)))]
pub async fn hypervisor_statistics(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
) -> Result<Response> {
    if mv.at_least(88) {
        return Err(Error::not_found("The resource could not be found."));
    }
    let list = app::list_hypervisors(&st, &ctx, None, None, None, false).await?;
    let sum = |f: &dyn Fn(&Hypervisor) -> i64| list.iter().map(f).sum::<i64>();
    Ok(axum::Json(json!({"hypervisor_statistics": {
        "count": list.len(),
        "vcpus": sum(&|h| h.vcpus),
        "vcpus_used": sum(&|h| h.vcpus_used),
        "memory_mb": sum(&|h| h.memory_mb),
        "memory_mb_used": sum(&|h| h.memory_mb_used),
        "free_ram_mb": sum(&|h| h.memory_mb - h.memory_mb_used),
        "local_gb": sum(&|h| h.local_gb),
        "local_gb_used": sum(&|h| h.local_gb_used),
        "free_disk_gb": sum(&|h| h.local_gb - h.local_gb_used),
        "disk_available_least": sum(&|h| h.local_gb - h.local_gb_used),
        "current_workload": 0,
        "running_vms": sum(&|h| h.running_vms),
    }}))
    .into_response())
}

/// Shows a hypervisor (by id, uuid, or host name).
#[utoipa::path(get, path = "/v2.1/os-hypervisors/{id}", tag = "compute", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = Object)))]
pub async fn show_hypervisor(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(id): Path<String>,
    OriginalUri(uri): OriginalUri,
) -> Result<Response> {
    let q = hyp_query(mv, &query_pairs(&uri))?;
    let h = app::get_hypervisor(&st, &ctx, &id, q.with_servers).await?;
    Ok(axum::Json(json!({"hypervisor": hyp_detail(mv, &h, q.with_servers, true)})).into_response())
}

/// A hypervisor's uptime (before 2.88; Mica's agents do not report one).
#[utoipa::path(get, path = "/v2.1/os-hypervisors/{id}/uptime", tag = "compute", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = Object)))]
pub async fn hypervisor_uptime(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(id): Path<String>,
) -> Result<Response> {
    if mv.at_least(88) {
        return Err(Error::not_found("The resource could not be found."));
    }
    let h = app::get_hypervisor(&st, &ctx, &id, false).await?;
    let mut v = hyp_brief(mv, &h, false);
    v["uptime"] = Value::Null;
    Ok(axum::Json(json!({"hypervisor": v})).into_response())
}

/// Hypervisors whose name contains a pattern (before 2.53).
#[utoipa::path(get, path = "/v2.1/os-hypervisors/{id}/search", tag = "compute", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = Object)))]
pub async fn search_hypervisors(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(pattern): Path<String>,
) -> Result<Response> {
    if mv.at_least(53) {
        return Err(Error::not_found("The resource could not be found."));
    }
    let list = app::list_hypervisors(&st, &ctx, Some(&pattern), None, None, false).await?;
    if list.is_empty() {
        return Err(Error::not_found(format!(
            "No hypervisor matching '{pattern}' could be found."
        )));
    }
    Ok(axum::Json(
        json!({"hypervisors": list.iter().map(|h| hyp_brief(mv, h, false)).collect::<Vec<_>>()}),
    )
    .into_response())
}

/// Hypervisors matching a pattern, with their servers (before 2.53).
#[utoipa::path(get, path = "/v2.1/os-hypervisors/{id}/servers", tag = "compute", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = Object)))]
pub async fn hypervisor_servers(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(pattern): Path<String>,
) -> Result<Response> {
    if mv.at_least(53) {
        return Err(Error::not_found("The resource could not be found."));
    }
    let list = app::list_hypervisors(&st, &ctx, Some(&pattern), None, None, true).await?;
    if list.is_empty() {
        return Err(Error::not_found(format!(
            "No hypervisor matching '{pattern}' could be found."
        )));
    }
    Ok(axum::Json(
        json!({"hypervisors": list.iter().map(|h| hyp_brief(mv, h, true)).collect::<Vec<_>>()}),
    )
    .into_response())
}

// ---- os-security-groups (before 2.36) ------------------------------------------------------------

fn proxy_gone(mv: Mv) -> Result<()> {
    if mv.at_least(36) {
        Err(Error::not_found("The resource could not be found."))
    } else {
        Ok(())
    }
}

/// Lists security groups.
#[utoipa::path(get, path = "/v2.1/os-security-groups", tag = "compute", responses((status = 200, body = Object), (status = 404, body = Object)))]
pub async fn list_security_groups(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    OriginalUri(uri): OriginalUri,
) -> Result<Response> {
    proxy_gone(mv)?;
    let params = query_pairs(&uri);
    let all = params.iter().any(|(k, v)| {
        k == "all_tenants" && crate::app::compute::common::parse_bool(v).unwrap_or(v.is_empty())
    });
    let mut list = sg_app::list_groups(&st, &ctx, &[]).await?;
    if !(all && ctx.is_admin()) {
        let own = ctx.project_id().unwrap_or_default().to_owned();
        list.retain(|g| g.row.project_id == own);
    }
    Ok(axum::Json(
        json!({"security_groups": list.iter().map(security_group_view).collect::<Vec<_>>()}),
    )
    .into_response())
}

fn sg_not_found(id: &str) -> Error {
    Error::not_found(format!("Security group {id} not found."))
}

/// Shows a security group.
#[utoipa::path(get, path = "/v2.1/os-security-groups/{id}", tag = "compute", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = Object)))]
pub async fn show_security_group(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(id): Path<String>,
) -> Result<Response> {
    proxy_gone(mv)?;
    let g = sg_app::get_group(&st, &ctx, &id)
        .await
        .map_err(|_| sg_not_found(&id))?;
    Ok(axum::Json(json!({"security_group": security_group_view(&g)})).into_response())
}

fn sg_fields(body: &Value) -> Result<(String, String)> {
    let g = body
        .get("security_group")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::bad_request("Invalid input for field/attribute security_group. 'security_group' is a required property"))?;
    let name = g
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let description = g
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if name.is_empty() {
        return Err(Error::bad_request("Security group name is required"));
    }
    Ok((name, description))
}

/// Creates a security group.
#[utoipa::path(post, path = "/v2.1/os-security-groups", tag = "compute", request_body(content = Object),
    responses((status = 200, body = Object), (status = 400, body = Object), (status = 404, body = Object)))]
pub async fn create_security_group(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    proxy_gone(mv)?;
    let (name, description) = sg_fields(&body)?;
    let g = sg_app::create_group(&st, &ctx, &name, &description, None, true).await?;
    Ok(axum::Json(json!({"security_group": security_group_view(&g)})).into_response())
}

/// Renames or re-describes a security group.
#[utoipa::path(put, path = "/v2.1/os-security-groups/{id}", tag = "compute", params(("id" = String, Path)),
    request_body(content = Object), responses((status = 200, body = Object), (status = 400, body = Object), (status = 404, body = Object)))]
pub async fn update_security_group(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    proxy_gone(mv)?;
    let (name, description) = sg_fields(&body)?;
    let g = sg_app::update_group(&st, &ctx, &id, Some(&name), Some(&description)).await?;
    Ok(axum::Json(json!({"security_group": security_group_view(&g)})).into_response())
}

/// Deletes a security group (202).
#[utoipa::path(delete, path = "/v2.1/os-security-groups/{id}", tag = "compute", params(("id" = String, Path)),
    responses((status = 202), (status = 400, body = Object), (status = 404, body = Object)))]
pub async fn delete_security_group(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    proxy_gone(mv)?;
    sg_app::delete_group(&st, &ctx, &id).await.map_err(|e| {
        if e.is(crate::error::Kind::Conflict) {
            Error::bad_request(e.message)
        } else {
            e
        }
    })?;
    Ok(StatusCode::ACCEPTED)
}

/// Adds an ingress rule (Nova's model: `ip_protocol`, `from_port`,
/// `to_port`, `cidr` or `group_id`).
#[utoipa::path(post, path = "/v2.1/os-security-group-rules", tag = "compute", request_body(content = Object),
    responses((status = 200, body = Object), (status = 400, body = Object), (status = 404, body = Object)))]
pub async fn create_security_group_rule(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    proxy_gone(mv)?;
    let r = body
        .get("security_group_rule")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            Error::bad_request("Invalid input for field/attribute security_group_rule.")
        })?;
    let parent = r
        .get("parent_group_id")
        .and_then(|v| {
            v.as_str()
                .map(str::to_owned)
                .or_else(|| v.as_i64().map(|n| n.to_string()))
        })
        .ok_or_else(|| Error::bad_request("Invalid input for field/attribute parent_group_id."))?;
    let port = |k: &str| -> Result<Option<i64>> {
        match r.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                let n = v
                    .as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                    .ok_or_else(|| {
                        Error::bad_request(format!("Invalid input for field/attribute {k}."))
                    })?;
                Ok(if n == -1 { None } else { Some(n) })
            }
        }
    };
    let new = sg_app::NewRule {
        security_group_id: parent.clone(),
        direction: "ingress".into(),
        ethertype: r
            .get("cidr")
            .and_then(Value::as_str)
            .map(|c| if c.contains(':') { "IPv6" } else { "IPv4" }.to_owned()),
        protocol: r
            .get("ip_protocol")
            .and_then(Value::as_str)
            .map(str::to_owned),
        port_range_min: port("from_port")?,
        port_range_max: port("to_port")?,
        remote_ip_prefix: r
            .get("cidr")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| r.get("group_id").is_none().then(|| "0.0.0.0/0".to_owned())),
        remote_group_id: r.get("group_id").and_then(Value::as_str).map(str::to_owned),
        description: String::new(),
    };
    let rule = sg_app::create_rule(&st, &ctx, new).await.map_err(|e| {
        if e.is(crate::error::Kind::Conflict) {
            Error::bad_request(format!("This rule already exists in group {parent}"))
        } else {
            e
        }
    })?;
    let g = sg_app::get_group(&st, &ctx, &parent).await?;
    Ok(
        axum::Json(json!({"security_group_rule": security_group_rule_view(&rule, &g.row.name)}))
            .into_response(),
    )
}

/// Removes a rule (202).
#[utoipa::path(delete, path = "/v2.1/os-security-group-rules/{id}", tag = "compute", params(("id" = String, Path)),
    responses((status = 202), (status = 404, body = Object)))]
pub async fn delete_security_group_rule(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    proxy_gone(mv)?;
    sg_app::delete_rule(&st, &ctx, &id).await?;
    Ok(StatusCode::ACCEPTED)
}
