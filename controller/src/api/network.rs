//! Network API (a Neutron v2.0 subset): networks, subnets, ports,
//! security groups and rules; thin handlers over [`crate::app::network`].
//! Errors are Neutron's `{"NeutronError": {"type", "message", "detail"}}`.

use axum::Router;
use axum::extract::{OriginalUri, Path, Request, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};

use super::{Auth, ErrorStyle, JsonBody, RequestId, State, base_url, query_pairs, render_error};
use crate::app::ServiceKind;
use crate::app::network::addr::Pool;
use crate::app::network::ports::{self, FixedIpRequest, NewPort, PortChanges};
use crate::app::network::security_groups::{self as sg, NewRule};
use crate::app::network::{self as app, NewNetwork, NewSubnet, parse_bool};
use crate::context::Context;
use crate::db::Timestamp;
use crate::db::network::{
    Group, NetworkRow, NetworkUpdate, Port, RuleRow, SubnetRow, SubnetUpdate,
};
use crate::error::{Error, Result};

/// The network router.
pub fn router(app: State) -> Router {
    Router::new()
        .route("/", get(versions))
        .route("/v2.0", get(resources))
        .route("/v2.0/", get(resources))
        .route("/v2.0/extensions", get(extensions))
        .route("/v2.0/extensions/{alias}", get(extension))
        .route("/v2.0/networks", get(list_networks).post(create_network))
        .route(
            "/v2.0/networks/{id}",
            get(show_network).put(update_network).delete(delete_network),
        )
        .route("/v2.0/subnets", get(list_subnets).post(create_subnet))
        .route(
            "/v2.0/subnets/{id}",
            get(show_subnet).put(update_subnet).delete(delete_subnet),
        )
        .route("/v2.0/ports", get(list_ports).post(create_port))
        .route(
            "/v2.0/ports/{id}",
            get(show_port).put(update_port).delete(delete_port),
        )
        .route("/v2.0/security-groups", get(list_groups).post(create_group))
        .route(
            "/v2.0/security-groups/{id}",
            get(show_group).put(update_group).delete(delete_group),
        )
        .route(
            "/v2.0/security-group-rules",
            get(list_rules).post(create_rule),
        )
        .route(
            "/v2.0/security-group-rules/{id}",
            get(show_rule).delete(delete_rule),
        )
        .route("/v2.0/quotas", get(list_quotas))
        .route(
            "/v2.0/quotas/{project}",
            get(show_quota).put(update_quota).delete(delete_quota),
        )
        .route("/v2.0/quotas/{project}/default", get(default_quota))
        .route("/v2.0/quotas/{project}/details", get(quota_details))
        .layer(middleware::from_fn(neutron_errors))
        .with_state(app)
}

async fn neutron_errors(req: Request, next: Next) -> Response {
    let rid = req.extensions().get::<RequestId>().map(|r| r.0.clone());
    let resp = next.run(req).await;
    render_error(ErrorStyle::Neutron, resp, rid, false).await
}

fn ts(t: &Timestamp) -> String {
    t.seconds()
}

/// Keeps only the `fields` the query asks for (Neutron's field selection).
fn select_fields(mut v: Value, params: &[(String, String)]) -> Value {
    let fields: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k == "fields")
        .flat_map(|(_, v)| v.split(','))
        .collect();
    if fields.is_empty() {
        return v;
    }
    if let Value::Object(o) = &mut v {
        o.retain(|k, _| fields.contains(&k.as_str()));
    }
    v
}

fn body_object<'a>(body: &'a Value, key: &str) -> Result<&'a Map<String, Value>> {
    body.get(key)
        .and_then(Value::as_object)
        .ok_or_else(|| Error::bad_request(format!("Resource body required: '{key}' is missing.")))
}

fn opt_str(o: &Map<String, Value>, k: &str) -> Result<Option<String>> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(Error::bad_request(format!(
            "Invalid input for {k}. Reason: '{v}' is not a valid string."
        ))),
    }
}

fn opt_bool(o: &Map<String, Value>, k: &str) -> Result<Option<bool>> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) => parse_bool(s).map(Some).ok_or_else(|| {
            Error::bad_request(format!(
                "Invalid input for {k}. Reason: '{s}' is not a valid boolean value."
            ))
        }),
        Some(v) => Err(Error::bad_request(format!(
            "Invalid input for {k}. Reason: '{v}' is not a valid boolean value."
        ))),
    }
}

fn opt_int(o: &Map<String, Value>, k: &str) -> Result<Option<i64>> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .map(Some)
            .ok_or_else(|| {
                Error::bad_request(format!(
                    "Invalid input for {k}. Reason: '{v}' is not an integer."
                ))
            }),
    }
}

fn list_of_strings(o: &Map<String, Value>, k: &str) -> Result<Option<Vec<String>>> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str().map(str::to_owned).ok_or_else(|| {
                    Error::bad_request(format!(
                        "Invalid input for {k}. Reason: '{v}' is not a string."
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(v) => Err(Error::bad_request(format!(
            "Invalid input for {k}. Reason: '{v}' is not a list."
        ))),
    }
}

// ---- discovery ------------------------------------------------------------------------------

/// Lists network API versions (no token needed).
#[utoipa::path(get, path = "/", tag = "network", responses((status = 200, body = Object)))]
async fn versions(AxState(st): AxState<State>, headers: HeaderMap) -> Response {
    let base = base_url(&st, ServiceKind::Network, &headers);
    axum::Json(json!({"versions": [{"id": "v2.0", "status": "CURRENT", "links": [{"href": format!("{base}/v2.0/"), "rel": "self"}]}]}))
        .into_response()
}

/// The collections of v2.0.
#[utoipa::path(get, path = "/v2.0", tag = "network", responses((status = 200, body = Object)))]
async fn resources(AxState(st): AxState<State>, headers: HeaderMap) -> Response {
    let base = base_url(&st, ServiceKind::Network, &headers);
    let r = |name: &str, coll: &str| json!({"name": name, "collection": coll, "links": [{"href": format!("{base}/v2.0/{coll}"), "rel": "self"}]});
    axum::Json(json!({"resources": [
        r("network", "networks"), r("subnet", "subnets"), r("port", "ports"),
        r("security_group", "security-groups"), r("security_group_rule", "security-group-rules"),
    ]}))
    .into_response()
}

const EXTENSIONS: [(&str, &str, &str); 10] = [
    (
        "quotas",
        "Quota management support",
        "Expose functions for quotas management per project",
    ),
    (
        "security-group",
        "security-group",
        "The security groups extension.",
    ),
    ("port-security", "Port Security", "Provides port security"),
    (
        "provider",
        "Provider Network",
        "Expose mapping of virtual networks to physical networks",
    ),
    (
        "external-net",
        "Neutron external network",
        "Adds external network attribute to network resource.",
    ),
    (
        "binding",
        "Port Binding",
        "Expose port bindings of a virtual port to external application",
    ),
    (
        "standard-attr-description",
        "standard-attr-description",
        "Extension to add descriptions to standard attributes",
    ),
    (
        "standard-attr-revisions",
        "Resource revision numbers",
        "This extension will display the revision number of neutron resources.",
    ),
    (
        "standard-attr-timestamp",
        "Resource timestamps",
        "Adds created_at and updated_at fields to all Neutron resources that have Neutron standard attributes.",
    ),
    (
        "project-id",
        "project_id field enabled",
        "Extension that indicates that project_id field is enabled.",
    ),
];

fn extension_view(e: &(&str, &str, &str)) -> Value {
    json!({"alias": e.0, "name": e.1, "description": e.2, "updated": "2017-01-01T00:00:00-00:00", "links": []})
}

/// The extensions Mica implements.
#[utoipa::path(get, path = "/v2.0/extensions", tag = "network", responses((status = 200, body = Object)))]
async fn extensions(Auth(_ctx): Auth) -> Response {
    axum::Json(json!({"extensions": EXTENSIONS.iter().map(extension_view).collect::<Vec<_>>()}))
        .into_response()
}

/// One extension by alias.
#[utoipa::path(get, path = "/v2.0/extensions/{alias}", tag = "network", params(("alias" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = Object)))]
async fn extension(Auth(_ctx): Auth, Path(alias): Path<String>) -> Result<Response> {
    let e = EXTENSIONS
        .iter()
        .find(|e| e.0 == alias)
        .ok_or_else(|| Error::not_found(format!("Extension with alias {alias} does not exist")))?;
    Ok(axum::Json(json!({"extension": extension_view(e)})).into_response())
}

// ---- networks -------------------------------------------------------------------------------

fn network_view(ctx: &Context, n: &NetworkRow, subnets: &[String]) -> Value {
    let mut v = json!({
        "id": n.id,
        "name": n.name,
        "tenant_id": n.project_id,
        "project_id": n.project_id,
        "admin_state_up": n.admin_state_up,
        "status": n.status,
        "subnets": subnets,
        "shared": n.shared,
        "router:external": n.external,
        "mtu": n.mtu,
        "port_security_enabled": n.port_security_enabled,
        "description": n.description,
        "created_at": ts(&n.created_at),
        "updated_at": ts(&n.updated_at),
        "revision_number": n.revision_number,
        "tags": [],
        "availability_zone_hints": [],
        "availability_zones": [],
        "ipv4_address_scope": Value::Null,
        "ipv6_address_scope": Value::Null,
        "is_default": n.is_default,
        "l2_adjacency": true,
    });
    if ctx.is_admin() {
        v["provider:network_type"] = n.network_type.clone().into();
        v["provider:physical_network"] = n.physical_network.clone().into();
        v["provider:segmentation_id"] = n.segmentation_id.into();
    }
    v
}

/// Lists networks.
#[utoipa::path(get, path = "/v2.0/networks", tag = "network", responses((status = 200, body = Object)))]
async fn list_networks(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    OriginalUri(uri): OriginalUri,
) -> Result<Response> {
    let params = query_pairs(&uri);
    let list = app::list_networks(&st, &ctx, &params).await?;
    let subnets = app::subnets_of_networks(&st).await?;
    let items: Vec<Value> = list
        .iter()
        .map(|n| {
            select_fields(
                network_view(
                    &ctx,
                    n,
                    subnets.get(&n.id).map(Vec::as_slice).unwrap_or(&[]),
                ),
                &params,
            )
        })
        .collect();
    Ok(axum::Json(json!({"networks": items})).into_response())
}

async fn network_response(
    st: &State,
    ctx: &Context,
    n: &NetworkRow,
    status: StatusCode,
) -> Result<Response> {
    let subnets = app::subnets_of_networks(st).await?;
    let v = network_view(ctx, n, subnets.get(&n.id).map(Vec::as_slice).unwrap_or(&[]));
    Ok((status, axum::Json(json!({"network": v}))).into_response())
}

/// Creates a network.
#[utoipa::path(post, path = "/v2.0/networks", tag = "network", request_body(content = Object),
    responses((status = 201, body = Object), (status = 400, body = Object), (status = 403, body = Object)))]
async fn create_network(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    let o = body_object(&body, "network")?;
    let n = NewNetwork {
        name: opt_str(o, "name")?.unwrap_or_default(),
        description: opt_str(o, "description")?.unwrap_or_default(),
        project_id: opt_str(o, "project_id")?.or(opt_str(o, "tenant_id")?),
        shared: opt_bool(o, "shared")?.unwrap_or(false),
        external: opt_bool(o, "router:external")?.unwrap_or(false),
        admin_state_up: opt_bool(o, "admin_state_up")?.unwrap_or(true),
        mtu: opt_int(o, "mtu")?,
        network_type: opt_str(o, "provider:network_type")?,
        physical_network: opt_str(o, "provider:physical_network")?,
        segmentation_id: opt_int(o, "provider:segmentation_id")?,
        port_security_enabled: opt_bool(o, "port_security_enabled")?.unwrap_or(true),
    };
    let n = app::create_network(&st, &ctx, n).await?;
    network_response(&st, &ctx, &n, StatusCode::CREATED).await
}

/// Shows a network.
#[utoipa::path(get, path = "/v2.0/networks/{id}", tag = "network", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = Object)))]
async fn show_network(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<Response> {
    let n = app::get_network(&st, &ctx, &id).await?;
    network_response(&st, &ctx, &n, StatusCode::OK).await
}

/// Updates a network.
#[utoipa::path(put, path = "/v2.0/networks/{id}", tag = "network", params(("id" = String, Path)), request_body(content = Object),
    responses((status = 200, body = Object), (status = 400, body = Object), (status = 404, body = Object)))]
async fn update_network(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    let o = body_object(&body, "network")?;
    let u = NetworkUpdate {
        name: opt_str(o, "name")?,
        description: opt_str(o, "description")?,
        shared: opt_bool(o, "shared")?,
        admin_state_up: opt_bool(o, "admin_state_up")?,
        mtu: opt_int(o, "mtu")?,
        port_security_enabled: opt_bool(o, "port_security_enabled")?,
        external: opt_bool(o, "router:external")?,
    };
    let n = app::update_network(&st, &ctx, &id, u).await?;
    network_response(&st, &ctx, &n, StatusCode::OK).await
}

/// Deletes a network.
#[utoipa::path(delete, path = "/v2.0/networks/{id}", tag = "network", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = Object), (status = 409, body = Object)))]
async fn delete_network(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    app::delete_network(&st, &ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- subnets -----------------------------------------------------------------------------------

fn subnet_view(s: &SubnetRow) -> Value {
    json!({
        "id": s.id,
        "name": s.name,
        "tenant_id": s.project_id,
        "project_id": s.project_id,
        "network_id": s.network_id,
        "ip_version": s.ip_version,
        "cidr": s.cidr,
        "gateway_ip": s.gateway_ip,
        "enable_dhcp": s.enable_dhcp,
        "allocation_pools": serde_json::from_str::<Value>(&s.allocation_pools).unwrap_or_else(|_| json!([])),
        "dns_nameservers": serde_json::from_str::<Value>(&s.dns_nameservers).unwrap_or_else(|_| json!([])),
        "host_routes": serde_json::from_str::<Value>(&s.host_routes).unwrap_or_else(|_| json!([])),
        "description": s.description,
        "created_at": ts(&s.created_at),
        "updated_at": ts(&s.updated_at),
        "revision_number": s.revision_number,
        "tags": [],
        "ipv6_address_mode": Value::Null,
        "ipv6_ra_mode": Value::Null,
        "subnetpool_id": Value::Null,
        "service_types": [],
        "segment_id": Value::Null,
    })
}

fn pools(o: &Map<String, Value>) -> Result<Option<Vec<Pool>>> {
    match o.get("allocation_pools") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value::<Vec<Pool>>(v.clone())
            .map(Some)
            .map_err(|_| {
                Error::bad_request(format!(
                    "Invalid input for allocation_pools. Reason: '{v}' is not a list of pools."
                ))
            }),
    }
}

/// Lists subnets.
#[utoipa::path(get, path = "/v2.0/subnets", tag = "network", responses((status = 200, body = Object)))]
async fn list_subnets(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    OriginalUri(uri): OriginalUri,
) -> Result<Response> {
    let params = query_pairs(&uri);
    let list = app::list_subnets(&st, &ctx, &params).await?;
    Ok(axum::Json(json!({"subnets": list.iter().map(|s| select_fields(subnet_view(s), &params)).collect::<Vec<_>>()})).into_response())
}

/// Creates a subnet.
#[utoipa::path(post, path = "/v2.0/subnets", tag = "network", request_body(content = Object),
    responses((status = 201, body = Object), (status = 400, body = Object), (status = 404, body = Object), (status = 409, body = Object)))]
async fn create_subnet(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    let o = body_object(&body, "subnet")?;
    let network_id = opt_str(o, "network_id")?.ok_or_else(|| {
        Error::bad_request("Failed to parse request. Required attribute 'network_id' not specified")
    })?;
    let cidr = opt_str(o, "cidr")?.ok_or_else(|| {
        Error::bad_request(
            "Bad subnets request: a cidr must be specified in the absence of a subnet pool",
        )
    })?;
    let ip_version = opt_int(o, "ip_version")?.unwrap_or(if cidr.contains(':') { 6 } else { 4 });
    if ip_version != 4 && ip_version != 6 {
        return Err(Error::bad_request(format!(
            "Invalid input for ip_version. Reason: {ip_version} is not in [4, 6]."
        )));
    }
    let s = NewSubnet {
        network_id,
        name: opt_str(o, "name")?.unwrap_or_default(),
        description: opt_str(o, "description")?.unwrap_or_default(),
        ip_version,
        cidr,
        gateway_ip: match o.get("gateway_ip") {
            None => None,
            Some(Value::Null) => Some(None),
            Some(_) => Some(opt_str(o, "gateway_ip")?),
        },
        enable_dhcp: opt_bool(o, "enable_dhcp")?.unwrap_or(true),
        allocation_pools: pools(o)?,
        dns_nameservers: list_of_strings(o, "dns_nameservers")?.unwrap_or_default(),
        host_routes: o
            .get("host_routes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        project_id: opt_str(o, "project_id")?.or(opt_str(o, "tenant_id")?),
    };
    let s = app::create_subnet(&st, &ctx, s).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"subnet": subnet_view(&s)})),
    )
        .into_response())
}

/// Shows a subnet.
#[utoipa::path(get, path = "/v2.0/subnets/{id}", tag = "network", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = Object)))]
async fn show_subnet(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<Response> {
    let s = app::get_subnet(&st, &ctx, &id).await?;
    Ok(axum::Json(json!({"subnet": subnet_view(&s)})).into_response())
}

/// Updates a subnet.
#[utoipa::path(put, path = "/v2.0/subnets/{id}", tag = "network", params(("id" = String, Path)), request_body(content = Object),
    responses((status = 200, body = Object), (status = 400, body = Object), (status = 404, body = Object)))]
async fn update_subnet(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    let o = body_object(&body, "subnet")?;
    let u = SubnetUpdate {
        name: opt_str(o, "name")?,
        description: opt_str(o, "description")?,
        gateway_ip: match o.get("gateway_ip") {
            None => None,
            Some(Value::Null) => Some(None),
            Some(_) => Some(opt_str(o, "gateway_ip")?),
        },
        enable_dhcp: opt_bool(o, "enable_dhcp")?,
        host_routes: o.get("host_routes").map(Value::to_string),
        ..Default::default()
    };
    let s = app::update_subnet(
        &st,
        &ctx,
        &id,
        u,
        pools(o)?,
        list_of_strings(o, "dns_nameservers")?,
    )
    .await?;
    Ok(axum::Json(json!({"subnet": subnet_view(&s)})).into_response())
}

/// Deletes a subnet.
#[utoipa::path(delete, path = "/v2.0/subnets/{id}", tag = "network", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = Object), (status = 409, body = Object)))]
async fn delete_subnet(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    app::delete_subnet(&st, &ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- ports --------------------------------------------------------------------------------------

fn port_view(ctx: &Context, p: &Port) -> Value {
    let r = &p.row;
    let mut v = json!({
        "id": r.id,
        "name": r.name,
        "tenant_id": r.project_id,
        "project_id": r.project_id,
        "network_id": r.network_id,
        "mac_address": r.mac_address,
        "admin_state_up": r.admin_state_up,
        "status": r.status,
        "device_id": r.device_id,
        "device_owner": r.device_owner,
        "fixed_ips": p.fixed_ips.iter().map(|i| json!({"subnet_id": i.subnet_id, "ip_address": i.ip_address})).collect::<Vec<_>>(),
        "security_groups": p.security_groups,
        "port_security_enabled": r.port_security_enabled,
        "description": r.description,
        "created_at": ts(&r.created_at),
        "updated_at": ts(&r.updated_at),
        "revision_number": r.revision_number,
        "tags": [],
        "allowed_address_pairs": [],
        "extra_dhcp_opts": [],
    });
    if ctx.is_admin() {
        v["binding:host_id"] = r.binding_host_id.clone().into();
        v["binding:vif_type"] = if r.binding_host_id.is_empty() {
            "unbound"
        } else {
            "tap"
        }
        .into();
        v["binding:vnic_type"] = "normal".into();
        v["binding:vif_details"] = json!({});
        v["binding:profile"] = json!({});
    }
    v
}

/// Lists ports.
#[utoipa::path(get, path = "/v2.0/ports", tag = "network", responses((status = 200, body = Object)))]
async fn list_ports(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    OriginalUri(uri): OriginalUri,
) -> Result<Response> {
    let params = query_pairs(&uri);
    let list = ports::list_ports(&st, &ctx, &params).await?;
    Ok(axum::Json(json!({"ports": list.iter().map(|p| select_fields(port_view(&ctx, p), &params)).collect::<Vec<_>>()})).into_response())
}

fn fixed_ips(o: &Map<String, Value>) -> Result<Option<Vec<FixedIpRequest>>> {
    match o.get("fixed_ips") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|i| {
                let io = i.as_object().ok_or_else(|| {
                    Error::bad_request(
                        "Invalid input for fixed_ips. Reason: entries must be objects.",
                    )
                })?;
                Ok(FixedIpRequest {
                    subnet_id: opt_str(io, "subnet_id")?,
                    ip_address: opt_str(io, "ip_address")?,
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(v) => Err(Error::bad_request(format!(
            "Invalid input for fixed_ips. Reason: '{v}' is not a list."
        ))),
    }
}

/// Creates a port.
#[utoipa::path(post, path = "/v2.0/ports", tag = "network", request_body(content = Object),
    responses((status = 201, body = Object), (status = 400, body = Object), (status = 404, body = Object), (status = 409, body = Object)))]
async fn create_port(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    let o = body_object(&body, "port")?;
    let p = NewPort {
        network_id: opt_str(o, "network_id")?.ok_or_else(|| {
            Error::bad_request(
                "Failed to parse request. Required attribute 'network_id' not specified",
            )
        })?,
        project_id: opt_str(o, "project_id")?.or(opt_str(o, "tenant_id")?),
        name: opt_str(o, "name")?.unwrap_or_default(),
        description: opt_str(o, "description")?.unwrap_or_default(),
        fixed_ips: fixed_ips(o)?,
        mac_address: opt_str(o, "mac_address")?,
        device_id: opt_str(o, "device_id")?.unwrap_or_default(),
        device_owner: opt_str(o, "device_owner")?.unwrap_or_default(),
        binding_host_id: opt_str(o, "binding:host_id")?,
        security_groups: list_of_strings(o, "security_groups")?,
        port_security_enabled: opt_bool(o, "port_security_enabled")?,
        admin_state_up: opt_bool(o, "admin_state_up")?.unwrap_or(true),
    };
    let p = ports::create_port(&st, &ctx, p).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"port": port_view(&ctx, &p)})),
    )
        .into_response())
}

/// Shows a port.
#[utoipa::path(get, path = "/v2.0/ports/{id}", tag = "network", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = Object)))]
async fn show_port(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<Response> {
    let p = ports::get_port(&st, &ctx, &id).await?;
    Ok(axum::Json(json!({"port": port_view(&ctx, &p)})).into_response())
}

/// Updates a port.
#[utoipa::path(put, path = "/v2.0/ports/{id}", tag = "network", params(("id" = String, Path)), request_body(content = Object),
    responses((status = 200, body = Object), (status = 400, body = Object), (status = 404, body = Object), (status = 409, body = Object)))]
async fn update_port(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    let o = body_object(&body, "port")?;
    if o.contains_key("fixed_ips") || o.contains_key("mac_address") || o.contains_key("network_id")
    {
        return Err(Error::bad_request(
            "Changing fixed_ips, mac_address or network_id of a port is not supported by Mica.",
        ));
    }
    let c = PortChanges {
        name: opt_str(o, "name")?,
        description: opt_str(o, "description")?,
        admin_state_up: opt_bool(o, "admin_state_up")?,
        security_groups: list_of_strings(o, "security_groups")?,
        port_security_enabled: opt_bool(o, "port_security_enabled")?,
        device_id: opt_str(o, "device_id")?,
        device_owner: opt_str(o, "device_owner")?,
        binding_host_id: opt_str(o, "binding:host_id")?,
    };
    let p = ports::update_port(&st, &ctx, &id, c).await?;
    Ok(axum::Json(json!({"port": port_view(&ctx, &p)})).into_response())
}

/// Deletes a port.
#[utoipa::path(delete, path = "/v2.0/ports/{id}", tag = "network", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = Object), (status = 409, body = Object)))]
async fn delete_port(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    ports::delete_port(&st, &ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- security groups -----------------------------------------------------------------------------

fn rule_view(r: &RuleRow, default_group: bool) -> Value {
    json!({
        "id": r.id,
        "security_group_id": r.security_group_id,
        "tenant_id": r.project_id,
        "project_id": r.project_id,
        "direction": r.direction,
        "ethertype": r.ethertype,
        "protocol": r.protocol,
        "port_range_min": r.port_range_min,
        "port_range_max": r.port_range_max,
        "remote_ip_prefix": r.remote_ip_prefix,
        "normalized_cidr": r.remote_ip_prefix,
        "remote_group_id": r.remote_group_id,
        "remote_address_group_id": Value::Null,
        "description": r.description,
        "created_at": ts(&r.created_at),
        "updated_at": ts(&r.updated_at),
        "revision_number": r.revision_number,
        "belongs_to_default_sg": default_group,
    })
}

fn group_view(g: &Group) -> Value {
    let default = g.row.name == sg::DEFAULT_NAME;
    json!({
        "id": g.row.id,
        "name": g.row.name,
        "tenant_id": g.row.project_id,
        "project_id": g.row.project_id,
        "description": g.row.description,
        "security_group_rules": g.rules.iter().map(|r| rule_view(r, default)).collect::<Vec<_>>(),
        "stateful": g.row.stateful,
        "shared": false,
        "created_at": ts(&g.row.created_at),
        "updated_at": ts(&g.row.updated_at),
        "revision_number": g.row.revision_number,
        "tags": [],
    })
}

/// Lists security groups.
#[utoipa::path(get, path = "/v2.0/security-groups", tag = "network", responses((status = 200, body = Object)))]
async fn list_groups(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    OriginalUri(uri): OriginalUri,
) -> Result<Response> {
    let params = query_pairs(&uri);
    let list = sg::list_groups(&st, &ctx, &params).await?;
    Ok(axum::Json(json!({"security_groups": list.iter().map(|g| select_fields(group_view(g), &params)).collect::<Vec<_>>()})).into_response())
}

/// Creates a security group.
#[utoipa::path(post, path = "/v2.0/security-groups", tag = "network", request_body(content = Object),
    responses((status = 201, body = Object), (status = 400, body = Object), (status = 409, body = Object)))]
async fn create_group(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    let o = body_object(&body, "security_group")?;
    let name = opt_str(o, "name")?.unwrap_or_default();
    let description = opt_str(o, "description")?.unwrap_or_default();
    let project = opt_str(o, "project_id")?.or(opt_str(o, "tenant_id")?);
    let stateful = opt_bool(o, "stateful")?.unwrap_or(true);
    let g = sg::create_group(&st, &ctx, &name, &description, project.as_deref(), stateful).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"security_group": group_view(&g)})),
    )
        .into_response())
}

/// Shows a security group.
#[utoipa::path(get, path = "/v2.0/security-groups/{id}", tag = "network", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = Object)))]
async fn show_group(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<Response> {
    let g = sg::get_group(&st, &ctx, &id).await?;
    Ok(axum::Json(json!({"security_group": group_view(&g)})).into_response())
}

/// Updates a security group.
#[utoipa::path(put, path = "/v2.0/security-groups/{id}", tag = "network", params(("id" = String, Path)), request_body(content = Object),
    responses((status = 200, body = Object), (status = 404, body = Object), (status = 409, body = Object)))]
async fn update_group(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    let o = body_object(&body, "security_group")?;
    let g = sg::update_group(
        &st,
        &ctx,
        &id,
        opt_str(o, "name")?.as_deref(),
        opt_str(o, "description")?.as_deref(),
    )
    .await?;
    Ok(axum::Json(json!({"security_group": group_view(&g)})).into_response())
}

/// Deletes a security group.
#[utoipa::path(delete, path = "/v2.0/security-groups/{id}", tag = "network", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = Object), (status = 409, body = Object)))]
async fn delete_group(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    sg::delete_group(&st, &ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lists security group rules.
#[utoipa::path(get, path = "/v2.0/security-group-rules", tag = "network", responses((status = 200, body = Object)))]
async fn list_rules(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    OriginalUri(uri): OriginalUri,
) -> Result<Response> {
    let params = query_pairs(&uri);
    let list = sg::list_rules(&st, &ctx, &params).await?;
    let project = ctx.project_id().unwrap_or_default().to_owned();
    let default_id = sg::ensure_default(&st, &project).await?.row.id;
    Ok(axum::Json(json!({"security_group_rules": list
        .iter()
        .map(|r| select_fields(rule_view(r, r.security_group_id == default_id), &params))
        .collect::<Vec<_>>()}))
    .into_response())
}

/// Adds a rule to a security group.
#[utoipa::path(post, path = "/v2.0/security-group-rules", tag = "network", request_body(content = Object),
    responses((status = 201, body = Object), (status = 400, body = Object), (status = 404, body = Object), (status = 409, body = Object)))]
async fn create_rule(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    let o = body_object(&body, "security_group_rule")?;
    let protocol = match o.get("protocol") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(v) => {
            return Err(Error::bad_request(format!(
                "Invalid input for protocol. Reason: '{v}'."
            )));
        }
    };
    let r = NewRule {
        security_group_id: opt_str(o, "security_group_id")?.ok_or_else(|| {
            Error::bad_request(
                "Failed to parse request. Required attribute 'security_group_id' not specified",
            )
        })?,
        direction: opt_str(o, "direction")?.ok_or_else(|| {
            Error::bad_request(
                "Failed to parse request. Required attribute 'direction' not specified",
            )
        })?,
        ethertype: opt_str(o, "ethertype")?,
        protocol,
        port_range_min: opt_int(o, "port_range_min")?,
        port_range_max: opt_int(o, "port_range_max")?,
        remote_ip_prefix: opt_str(o, "remote_ip_prefix")?,
        remote_group_id: opt_str(o, "remote_group_id")?,
        description: opt_str(o, "description")?.unwrap_or_default(),
    };
    let rule = sg::create_rule(&st, &ctx, r).await?;
    let g = sg::get_group(&st, &ctx, &rule.security_group_id).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(
            json!({"security_group_rule": rule_view(&rule, g.row.name == sg::DEFAULT_NAME)}),
        ),
    )
        .into_response())
}

/// Shows a rule.
#[utoipa::path(get, path = "/v2.0/security-group-rules/{id}", tag = "network", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = Object)))]
async fn show_rule(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<Response> {
    let r = sg::get_rule(&st, &ctx, &id).await?;
    let g = sg::get_group(&st, &ctx, &r.security_group_id).await?;
    Ok(
        axum::Json(json!({"security_group_rule": rule_view(&r, g.row.name == sg::DEFAULT_NAME)}))
            .into_response(),
    )
}

/// Deletes a rule.
#[utoipa::path(delete, path = "/v2.0/security-group-rules/{id}", tag = "network", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = Object)))]
async fn delete_rule(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    sg::delete_rule(&st, &ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- quotas --------------------------------------------------------------------------------------

use crate::app::network::quotas as net_quotas;

/// Projects with quotas of their own (Mica keeps none listed here).
#[utoipa::path(get, path = "/v2.0/quotas", tag = "network", responses((status = 200, body = Object)))]
async fn list_quotas(Auth(ctx): Auth) -> Result<Response> {
    if !ctx.is_admin() {
        return Err(Error::forbidden("(rule:get_quota) is disallowed by policy"));
    }
    Ok(axum::Json(json!({"quotas": []})).into_response())
}

/// A project's network quotas.
#[utoipa::path(get, path = "/v2.0/quotas/{project}", tag = "network", params(("project" = String, Path)),
    responses((status = 200, body = Object), (status = 403, body = Object)))]
async fn show_quota(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path(project): Path<String>,
) -> Result<Response> {
    let (limits, _) = net_quotas::show(&st, &ctx, &project).await?;
    Ok(axum::Json(json!({"quota": limits})).into_response())
}

/// The default network quotas.
#[utoipa::path(get, path = "/v2.0/quotas/{project}/default", tag = "network", params(("project" = String, Path)),
    responses((status = 200, body = Object)))]
async fn default_quota(
    AxState(st): AxState<State>,
    Auth(_ctx): Auth,
    Path(_project): Path<String>,
) -> Result<Response> {
    Ok(axum::Json(json!({"quota": net_quotas::defaults(&st)})).into_response())
}

/// A project's network quotas with usage.
#[utoipa::path(get, path = "/v2.0/quotas/{project}/details", tag = "network", params(("project" = String, Path)),
    responses((status = 200, body = Object), (status = 403, body = Object)))]
async fn quota_details(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path(project): Path<String>,
) -> Result<Response> {
    let (limits, used) = net_quotas::show(&st, &ctx, &project).await?;
    let mut q = Map::new();
    for (k, l) in limits {
        let u = used.get(&k).copied().unwrap_or(0);
        q.insert(k, json!({"limit": l, "used": u, "reserved": 0}));
    }
    Ok(axum::Json(json!({"quota": q})).into_response())
}

/// Sets network quotas (admins).
#[utoipa::path(put, path = "/v2.0/quotas/{project}", tag = "network", params(("project" = String, Path)),
    request_body(content = Object), responses((status = 200, body = Object), (status = 400, body = Object), (status = 403, body = Object)))]
async fn update_quota(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path(project): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    let o = body_object(&body, "quota")?;
    let limits = net_quotas::update(&st, &ctx, &project, o).await?;
    Ok(axum::Json(json!({"quota": limits})).into_response())
}

/// Resets network quotas (admins).
#[utoipa::path(delete, path = "/v2.0/quotas/{project}", tag = "network", params(("project" = String, Path)),
    responses((status = 204), (status = 403, body = Object)))]
async fn delete_quota(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path(project): Path<String>,
) -> Result<StatusCode> {
    net_quotas::delete(&st, &ctx, &project).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The OpenAPI document of this API.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Mica network API (Neutron v2.0 subset)", version = "2.0"),
    paths(
        versions,
        resources,
        extensions,
        extension,
        list_networks,
        create_network,
        show_network,
        update_network,
        delete_network,
        list_subnets,
        create_subnet,
        show_subnet,
        update_subnet,
        delete_subnet,
        list_ports,
        create_port,
        show_port,
        update_port,
        delete_port,
        list_groups,
        create_group,
        show_group,
        update_group,
        delete_group,
        list_rules,
        create_rule,
        show_rule,
        delete_rule
    )
)]
pub struct NetworkApi;
