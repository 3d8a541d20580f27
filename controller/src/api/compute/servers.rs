//! `/servers`: handlers and the server views, by microversion.

use axum::extract::{OriginalUri, Path, State as AxState};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::{Base, Mv, ReqId, next_link};
use crate::api::{Auth, JsonBody, State, query_pairs};
use crate::app::App;
use crate::app::compute::actions::{self, rules};
use crate::app::compute::common::{int_field, isotime, naive_time};
use crate::app::compute::consoles;
use crate::app::compute::servers::{self as app, ServerData};
use crate::context::Context;
use crate::db::instances::{Action, Event, InstanceRow};
use crate::error::{Error, Result};
use crate::policy::Target;

/// Statuses that show `progress`.
const PROGRESS_STATUSES: [&str; 6] = [
    "ACTIVE",
    "BUILD",
    "REBUILD",
    "RESIZE",
    "VERIFY_RESIZE",
    "MIGRATING",
];

fn links(base: &str, collection: &str, id: &str) -> Value {
    json!([
        {"rel": "self", "href": format!("{base}/v2.1/{collection}/{id}")},
        {"rel": "bookmark", "href": format!("{base}/{collection}/{id}")}
    ])
}

/// What a view shows beyond the basics.
#[derive(Debug, Clone, Copy)]
pub struct ViewOpts {
    /// Everything `GET /servers/{id}` shows (update before 2.75 shows less).
    pub full: bool,
    /// `server_groups` (show and update from 2.71, never in lists).
    pub server_groups: bool,
    /// OS-EXT-SRV-ATTR:* (policy).
    pub extended: bool,
    /// `host_status` (policy, 2.16).
    pub host_status: bool,
    /// Flavor extra specs (policy, 2.47).
    pub extra_specs: bool,
    /// Fault details for 500s (admins).
    pub admin: bool,
}

impl ViewOpts {
    /// The options for `ctx` looking at a server of `project`.
    pub fn for_caller(
        app: &App,
        ctx: &Context,
        project: Option<&str>,
        full: bool,
        groups: bool,
    ) -> ViewOpts {
        let target = project.map(Target::project).unwrap_or_default();
        ViewOpts {
            full,
            server_groups: groups,
            extended: app
                .policy
                .check("os_compute_api:os-extended-server-attributes", ctx, target),
            host_status: app
                .policy
                .check("os_compute_api:servers:show:host_status", ctx, target),
            extra_specs: app.policy.check(
                "os_compute_api:servers:show:flavor-extra-specs",
                ctx,
                target,
            ),
            admin: ctx.is_admin(),
        }
    }
}

fn opt_ts(t: &Option<crate::db::Timestamp>) -> Value {
    t.as_ref()
        .map(|t| Value::String(naive_time(t)))
        .unwrap_or(Value::Null)
}

/// A server's `addresses`.
pub fn addresses(s: &ServerData, extended: bool) -> Value {
    if s.row.vm_state == "building" {
        return json!({});
    }
    let mut out = Map::new();
    for (net, list) in &s.addresses {
        let items: Vec<Value> = list
            .iter()
            .map(|a| {
                let mut v = json!({"version": a.version, "addr": a.addr});
                if extended {
                    v["OS-EXT-IPS:type"] = "fixed".into();
                    v["OS-EXT-IPS-MAC:mac_addr"] = a.mac.clone().into();
                }
                v
            })
            .collect();
        out.insert(net.clone(), Value::Array(items));
    }
    Value::Object(out)
}

/// The detailed view of a server at `mv`.
pub fn server_view(base: &str, mv: Mv, s: &ServerData, o: ViewOpts) -> Value {
    let r = &s.row;
    let status = s.status();
    let image = if r.image_ref.is_empty() {
        Value::String(String::new())
    } else {
        json!({"id": r.image_ref, "links": [{"rel": "bookmark", "href": format!("{base}/images/{}", r.image_ref)}]})
    };
    let flavor = if mv.at_least(47) {
        let f = r.flavor();
        let mut v = json!({
            "vcpus": f.vcpus, "ram": f.memory_mb, "disk": f.root_gb,
            "ephemeral": f.ephemeral_gb, "swap": f.swap_mb, "original_name": f.name,
        });
        if o.extra_specs {
            v["extra_specs"] = json!(f.extra_specs);
        }
        v
    } else {
        json!({"id": r.flavor_id, "links": [{"rel": "bookmark", "href": format!("{base}/flavors/{}", r.flavor_id)}]})
    };
    let mut v = json!({
        "id": r.uuid,
        "name": r.display_name,
        "status": status,
        "tenant_id": r.project_id,
        "user_id": r.user_id,
        "metadata": s.metadata,
        "hostId": s.host_id(),
        "image": image,
        "flavor": flavor,
        "created": isotime(&r.created_at),
        "updated": isotime(&r.updated_at),
        "addresses": addresses(s, o.full),
        "accessIPv4": r.access_ip_v4.clone().unwrap_or_default(),
        "accessIPv6": r.access_ip_v6.clone().unwrap_or_default(),
        "links": links(base, "servers", &r.uuid),
        "OS-DCF:diskConfig": r.disk_config,
    });
    if ["ERROR", "DELETED"].contains(&status)
        && let Some(f) = &s.fault
    {
        let mut fv =
            json!({"code": f.code, "created": isotime(&f.created_at), "message": f.message});
        if !f.details.is_empty() && (o.admin || f.code != 500) {
            fv["details"] = f.details.clone().into();
        }
        v["fault"] = fv;
    }
    if PROGRESS_STATUSES.contains(&status) {
        v["progress"] = r.progress.into();
    }
    if o.full {
        v["OS-EXT-AZ:availability_zone"] = r.availability_zone.clone().unwrap_or_default().into();
        v["config_drive"] = r.config_drive.clone().into();
        v["key_name"] = r.key_name.clone().into();
        v["OS-SRV-USG:launched_at"] = opt_ts(&r.launched_at);
        v["OS-SRV-USG:terminated_at"] = opt_ts(&r.terminated_at);
        if !s.security_groups.is_empty() {
            v["security_groups"] = s
                .security_groups
                .iter()
                .map(|n| json!({"name": n}))
                .collect::<Vec<_>>()
                .into();
        }
        if o.extended {
            v["OS-EXT-SRV-ATTR:host"] = r.host.clone().into();
            v["OS-EXT-SRV-ATTR:instance_name"] = instance_name(r).into();
            v["OS-EXT-SRV-ATTR:hypervisor_hostname"] = r.node.clone().into();
            if mv.at_least(3) {
                v["OS-EXT-SRV-ATTR:hostname"] = r.hostname.clone().into();
                v["OS-EXT-SRV-ATTR:kernel_id"] = r.kernel_id.clone().unwrap_or_default().into();
                v["OS-EXT-SRV-ATTR:launch_index"] = r.launch_index.into();
                v["OS-EXT-SRV-ATTR:ramdisk_id"] = r.ramdisk_id.clone().unwrap_or_default().into();
                v["OS-EXT-SRV-ATTR:reservation_id"] = r.reservation_id.clone().into();
                v["OS-EXT-SRV-ATTR:root_device_name"] = r.root_device_name.clone().into();
                v["OS-EXT-SRV-ATTR:user_data"] = r.user_data.clone().into();
            }
        }
        v["OS-EXT-STS:task_state"] = r.task_state.clone().into();
        v["OS-EXT-STS:vm_state"] = r.vm_state.clone().into();
        v["OS-EXT-STS:power_state"] = r.power_state.into();
        v["os-extended-volumes:volumes_attached"] = json!([]);
    }
    if mv.at_least(9) {
        v["locked"] = r.locked.into();
    }
    if mv.at_least(16) && o.full && o.host_status {
        v["host_status"] = s.host_status.clone().into();
    }
    if mv.at_least(19) {
        v["description"] = r.display_description.clone().into();
    }
    if mv.at_least(26) {
        v["tags"] = s.tags.clone().into();
    }
    if mv.at_least(63) {
        v["trusted_image_certificates"] = Value::Null;
    }
    if o.server_groups && mv.at_least(71) {
        v["server_groups"] = s.server_groups.clone().into();
    }
    if mv.at_least(73) {
        v["locked_reason"] = r.locked_reason.clone().into();
    }
    if mv.at_least(90) && !(o.full && o.extended) {
        v["OS-EXT-SRV-ATTR:hostname"] = r.hostname.clone().into();
    }
    if o.full && mv.at_least(96) {
        v["pinned_availability_zone"] = r.requested_availability_zone.clone().into();
    }
    v
}

/// Nova's `instance-xxxxxxxx` name (from the uuid here).
pub fn instance_name(r: &InstanceRow) -> String {
    format!("instance-{}", &r.uuid.replace('-', "")[..8])
}

fn basic_view(base: &str, r: &InstanceRow) -> Value {
    json!({"id": r.uuid, "name": r.display_name, "links": links(base, "servers", &r.uuid)})
}

/// Lists servers (ids and names).
#[utoipa::path(get, path = "/v2.1/servers", tag = "compute",
    responses((status = 200, description = "`servers`, `servers_links`", body = Object), (status = 400, body = Object), (status = 403, body = Object)))]
pub async fn list(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Base(base): Base,
    OriginalUri(uri): OriginalUri,
) -> Result<Response> {
    let params = query_pairs(&uri);
    let page = app::list(&st, &ctx, mv.0, &params, false).await?;
    let mut body =
        json!({"servers": page.brief.iter().map(|r| basic_view(&base, r)).collect::<Vec<_>>()});
    if let Some(l) = next_link(
        &base,
        "/servers",
        &params,
        page.brief.len(),
        page.limit,
        page.brief.last().map(|r| r.uuid.as_str()),
    ) {
        body["servers_links"] = l;
    }
    Ok(axum::Json(body).into_response())
}

/// Lists servers with details.
#[utoipa::path(get, path = "/v2.1/servers/detail", tag = "compute",
    responses((status = 200, description = "`servers`, `servers_links`", body = Object), (status = 400, body = Object), (status = 403, body = Object)))]
pub async fn detail(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Base(base): Base,
    OriginalUri(uri): OriginalUri,
) -> Result<Response> {
    let params = query_pairs(&uri);
    let page = app::list(&st, &ctx, mv.0, &params, true).await?;
    let opts = ViewOpts::for_caller(&st, &ctx, None, true, false);
    let servers: Vec<Value> = page
        .servers
        .iter()
        .map(|s| {
            let o = if s.row.project_id.as_str() == ctx.project_id().unwrap_or_default() {
                opts
            } else {
                ViewOpts::for_caller(&st, &ctx, Some(&s.row.project_id), true, false)
            };
            server_view(&base, mv, s, o)
        })
        .collect();
    let mut body = json!({"servers": servers});
    if let Some(l) = next_link(
        &base,
        "/servers/detail",
        &params,
        page.servers.len(),
        page.limit,
        page.servers.last().map(|s| s.row.uuid.as_str()),
    ) {
        body["servers_links"] = l;
    }
    Ok(axum::Json(body).into_response())
}

/// Creates servers (202).
#[utoipa::path(post, path = "/v2.1/servers", tag = "compute",
    request_body(content = Object, description = "`server`, `os:scheduler_hints`"),
    responses((status = 202, body = Object), (status = 400, body = Object), (status = 403, body = Object), (status = 409, body = Object)))]
pub async fn create(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Base(base): Base,
    ReqId(rid): ReqId,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    let body = body
        .as_object()
        .ok_or_else(|| Error::bad_request("The request body must be a JSON object."))?;
    let created = app::create(&st, &ctx, mv.0, &rid, body).await?;
    if created.return_reservation_id {
        return Ok((
            StatusCode::ACCEPTED,
            axum::Json(json!({"reservation_id": created.reservation_id})),
        )
            .into_response());
    }
    let first = &created.instances[0];
    let mut server = json!({
        "id": first.uuid,
        "links": links(&base, "servers", &first.uuid),
        "OS-DCF:diskConfig": first.disk_config,
        "security_groups": created.security_groups.iter().map(|n| json!({"name": n})).collect::<Vec<_>>(),
    });
    if st.config.compute.enable_instance_password {
        server["adminPass"] = created.admin_pass.clone().into();
    }
    let mut resp = (StatusCode::ACCEPTED, axum::Json(json!({"server": server}))).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("{base}/v2.1/servers/{}", first.uuid)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// Shows a server.
#[utoipa::path(get, path = "/v2.1/servers/{id}", tag = "compute", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = Object)))]
pub async fn show(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Base(base): Base,
    Path(id): Path<String>,
) -> Result<Response> {
    let s = app::show(&st, &ctx, &id).await?;
    let o = ViewOpts::for_caller(&st, &ctx, Some(&s.row.project_id), true, true);
    Ok(axum::Json(json!({"server": server_view(&base, mv, &s, o)})).into_response())
}

/// Renames or describes a server.
#[utoipa::path(put, path = "/v2.1/servers/{id}", tag = "compute", params(("id" = String, Path)),
    request_body(content = Object), responses((status = 200, body = Object), (status = 400, body = Object), (status = 404, body = Object)))]
pub async fn update(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Base(base): Base,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    let body = body
        .as_object()
        .ok_or_else(|| Error::bad_request("The request body must be a JSON object."))?;
    let s = app::update(&st, &ctx, mv.0, &id, body).await?;
    let o = ViewOpts::for_caller(&st, &ctx, Some(&s.row.project_id), mv.at_least(75), true);
    Ok(axum::Json(json!({"server": server_view(&base, mv, &s, o)})).into_response())
}

/// Deletes a server (204).
#[utoipa::path(delete, path = "/v2.1/servers/{id}", tag = "compute", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = Object), (status = 409, body = Object)))]
pub async fn delete(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    ReqId(rid): ReqId,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    app::delete(&st, &ctx, &rid, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn empty(status: StatusCode) -> Response {
    status.into_response()
}

/// Runs a server action (`{"<action>": {…}}`).
#[utoipa::path(post, path = "/v2.1/servers/{id}/action", tag = "compute", params(("id" = String, Path)),
    request_body(content = Object, description = "one action: os-stop, os-start, reboot, pause, unpause, suspend, resume, resize, confirmResize, revertResize, rescue, unrescue, createImage, migrate, os-migrateLive, evacuate, rebuild, lock, unlock, addSecurityGroup, removeSecurityGroup, os-resetState, trigger_crash_dump"),
    responses((status = 202), (status = 200, body = Object), (status = 204), (status = 400, body = Object),
        (status = 404, body = Object), (status = 409, body = Object), (status = 501, body = Object)))]
pub async fn action(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    ReqId(rid): ReqId,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    use mica_rpc::conductor::InstanceAction as A;
    let obj = body.as_object().filter(|o| o.len() == 1).ok_or_else(|| {
        Error::bad_request("Malformed request body: exactly one action expected.")
    })?;
    let (name, arg) = obj.iter().next().expect("one entry");
    let st = &*st;
    match name.as_str() {
        "os-stop" => actions::run(st, &ctx, &rid, &id, &rules::STOP, A::Stop).await?,
        "os-start" => actions::run(st, &ctx, &rid, &id, &rules::START, A::Start).await?,
        "reboot" => {
            let t = arg.get("type").and_then(Value::as_str).ok_or_else(|| {
                Error::bad_request(
                    "Invalid input for field/attribute reboot. 'type' is a required property",
                )
            })?;
            match t.to_ascii_uppercase().as_str() {
                "SOFT" => {
                    actions::run(
                        st,
                        &ctx,
                        &rid,
                        &id,
                        &rules::REBOOT_SOFT,
                        A::Reboot { hard: false },
                    )
                    .await?
                }
                "HARD" => {
                    actions::run(
                        st,
                        &ctx,
                        &rid,
                        &id,
                        &rules::REBOOT_HARD,
                        A::Reboot { hard: true },
                    )
                    .await?
                }
                _ => {
                    return Err(Error::bad_request(format!(
                        "Invalid input for field/attribute type. Value: {t}. '{t}' is not one of ['HARD', 'Hard', 'hard', 'SOFT', 'Soft', 'soft']"
                    )));
                }
            }
        }
        "pause" => actions::run(st, &ctx, &rid, &id, &rules::PAUSE, A::Pause).await?,
        "unpause" => actions::run(st, &ctx, &rid, &id, &rules::UNPAUSE, A::Unpause).await?,
        "suspend" => actions::run(st, &ctx, &rid, &id, &rules::SUSPEND, A::Suspend).await?,
        "resume" => actions::run(st, &ctx, &rid, &id, &rules::RESUME, A::Resume).await?,
        "resize" => {
            let f = arg
                .get("flavorRef")
                .and_then(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .or_else(|| v.as_i64().map(|n| n.to_string()))
                })
                .ok_or_else(|| {
                    Error::bad_request("Resize requests require 'flavorRef' attribute.")
                })?;
            actions::resize(st, &ctx, &id, &f).await?
        }
        "confirmResize" => actions::not_yet(st, &ctx, &id, &rules::CONFIRM_RESIZE).await?,
        "revertResize" => actions::not_yet(st, &ctx, &id, &rules::REVERT_RESIZE).await?,
        "rescue" => actions::not_yet(st, &ctx, &id, &rules::RESCUE).await?,
        "unrescue" => actions::not_yet(st, &ctx, &id, &rules::UNRESCUE).await?,
        "createImage" => {
            let n = arg.get("name").and_then(Value::as_str).unwrap_or_default();
            if n.is_empty() {
                return Err(Error::bad_request(
                    "Invalid input for field/attribute createImage. 'name' is a required property",
                ));
            }
            actions::not_yet(st, &ctx, &id, &rules::CREATE_IMAGE).await?
        }
        "migrate" => actions::not_yet(st, &ctx, &id, &rules::MIGRATE).await?,
        "os-migrateLive" => actions::not_yet(st, &ctx, &id, &rules::LIVE_MIGRATE).await?,
        "evacuate" => actions::evacuate(st, &ctx, &id).await?,
        "rebuild" => actions::not_yet(st, &ctx, &id, &rules::REBUILD).await?,
        "trigger_crash_dump" if mv.at_least(17) => {
            actions::not_yet(st, &ctx, &id, &rules::CRASH_DUMP).await?
        }
        "lock" => {
            let reason = if mv.at_least(73) {
                arg.get("locked_reason").and_then(Value::as_str)
            } else {
                None
            };
            actions::lock(st, &ctx, &rid, &id, reason).await?
        }
        "unlock" => actions::unlock(st, &ctx, &rid, &id).await?,
        "addSecurityGroup" | "removeSecurityGroup" => {
            let n = arg
                .get("name")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| Error::bad_request("Security group not specified"))?;
            if name == "addSecurityGroup" {
                actions::add_security_group(st, &ctx, &id, n).await?
            } else {
                actions::remove_security_group(st, &ctx, &id, n).await?
            }
        }
        "os-resetState" => {
            let s = arg.get("state").and_then(Value::as_str).unwrap_or_default();
            actions::reset_state(st, &ctx, &rid, &id, s).await?
        }
        "os-getConsoleOutput" => {
            // Nova: an integer (or a string of one); -1 or none: all lines.
            let length = match arg.get("length") {
                None | Some(Value::Null) => None,
                Some(v) => {
                    let n = int_field("length", v, -1, i64::from(u32::MAX))?;
                    u32::try_from(n).ok()
                }
            };
            let output = app::console_output(st, &ctx, &id, length).await?;
            return Ok(axum::Json(json!({"output": output})).into_response());
        }
        // Replaced by remote-consoles from 2.6 (Nova serves them up to 2.5).
        "os-getVNCConsole" | "os-getSerialConsole" | "os-getSPICEConsole" | "os-getRDPConsole"
            if !mv.at_least(6) =>
        {
            // Nova asks policy before the driver says the type is unserved.
            consoles::authorize(st, &ctx, &id).await?;
            let kind = consoles::parse_action_type(name, arg.get("type").and_then(Value::as_str))?;
            let c = consoles::create(st, &ctx, &id, kind).await?;
            return Ok(
                axum::Json(json!({"console": {"type": c.type_, "url": c.url}})).into_response(),
            );
        }
        other => {
            return Err(Error::bad_request(format!(
                "There is no such action: {other}"
            )));
        }
    }
    Ok(empty(StatusCode::ACCEPTED))
}

/// A remote console (2.6+): `vnc`/`novnc` or `serial`/`serial`; the URL
/// carries a short-lived token for the console proxy.
#[utoipa::path(post, path = "/v2.1/servers/{id}/remote-consoles", tag = "compute", params(("id" = String, Path)),
    request_body = Object,
    responses((status = 200, body = Object), (status = 400, body = Object), (status = 404, body = Object),
        (status = 409, body = Object), (status = 501, body = Object)))]
pub async fn remote_consoles(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    if !mv.at_least(6) {
        return Err(Error::not_found("The resource could not be found."));
    }
    let rc = body.get("remote_console").ok_or_else(|| {
        Error::bad_request(
            "Invalid input for field/attribute remote_console. 'remote_console' is a required property",
        )
    })?;
    let field = |name: &str| -> Result<String> {
        match rc.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(Error::bad_request(format!(
                "Invalid input for field/attribute {name}. Value: {other}. {other} is not of type 'string'"
            ))),
            None => Err(Error::bad_request(format!(
                "Invalid input for field/attribute remote_console. '{name}' is a required property"
            ))),
        }
    };
    let (protocol, type_) = (field("protocol")?, field("type")?);
    let kind = consoles::parse_remote_console(&protocol, &type_, mv.at_least(8))?;
    let c = consoles::create(&st, &ctx, &id, kind).await?;
    Ok(axum::Json(
        json!({"remote_console": {"protocol": c.protocol, "type": c.type_, "url": c.url}}),
    )
    .into_response())
}

// ---- metadata ------------------------------------------------------------------------------

fn meta_body(body: &Value, key: &str) -> Result<std::collections::BTreeMap<String, String>> {
    let v = body.get(key).ok_or_else(|| {
        Error::bad_request(format!("Malformed request body: '{key}' is required"))
    })?;
    app::parse_metadata(key, v)
}

/// A server's metadata.
#[utoipa::path(get, path = "/v2.1/servers/{id}/metadata", tag = "compute", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = Object)))]
pub async fn metadata(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<Response> {
    let m = app::metadata(&st, &ctx, &id).await?;
    Ok(axum::Json(json!({"metadata": m})).into_response())
}

/// Merges metadata.
#[utoipa::path(post, path = "/v2.1/servers/{id}/metadata", tag = "compute", params(("id" = String, Path)),
    request_body(content = Object), responses((status = 200, body = Object), (status = 400, body = Object), (status = 404, body = Object)))]
pub async fn merge_metadata(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    let m = meta_body(&body, "metadata")?;
    let all = app::set_metadata(&st, &ctx, &id, m, false).await?;
    Ok(axum::Json(json!({"metadata": all})).into_response())
}

/// Replaces metadata.
#[utoipa::path(put, path = "/v2.1/servers/{id}/metadata", tag = "compute", params(("id" = String, Path)),
    request_body(content = Object), responses((status = 200, body = Object), (status = 400, body = Object), (status = 404, body = Object)))]
pub async fn replace_metadata(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    let m = meta_body(&body, "metadata")?;
    let all = app::set_metadata(&st, &ctx, &id, m, true).await?;
    Ok(axum::Json(json!({"metadata": all})).into_response())
}

/// One metadata item.
#[utoipa::path(get, path = "/v2.1/servers/{id}/metadata/{key}", tag = "compute",
    params(("id" = String, Path), ("key" = String, Path)), responses((status = 200, body = Object), (status = 404, body = Object)))]
pub async fn metadata_item(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path((id, key)): Path<(String, String)>,
) -> Result<Response> {
    let m = app::metadata(&st, &ctx, &id).await?;
    let v = m
        .get(&key)
        .ok_or_else(|| Error::not_found("Metadata item was not found"))?;
    Ok(axum::Json(json!({"meta": {key: v}})).into_response())
}

/// Sets one metadata item (`{"meta": {key: value}}`).
#[utoipa::path(put, path = "/v2.1/servers/{id}/metadata/{key}", tag = "compute",
    params(("id" = String, Path), ("key" = String, Path)), request_body(content = Object),
    responses((status = 200, body = Object), (status = 400, body = Object), (status = 404, body = Object)))]
pub async fn put_metadata_item(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path((id, key)): Path<(String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    let m = meta_body(&body, "meta")?;
    if m.len() != 1 {
        return Err(Error::bad_request("Request body contains too many items"));
    }
    if !m.contains_key(&key) {
        return Err(Error::bad_request("Request body and URI mismatch"));
    }
    app::set_metadata(&st, &ctx, &id, m.clone(), false).await?;
    Ok(axum::Json(json!({"meta": m})).into_response())
}

/// Removes one metadata item.
#[utoipa::path(delete, path = "/v2.1/servers/{id}/metadata/{key}", tag = "compute",
    params(("id" = String, Path), ("key" = String, Path)), responses((status = 204), (status = 404, body = Object)))]
pub async fn delete_metadata_item(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path((id, key)): Path<(String, String)>,
) -> Result<StatusCode> {
    app::delete_metadata(&st, &ctx, &id, &key).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- tags (2.26) ---------------------------------------------------------------------------

fn need_tags(mv: Mv) -> Result<()> {
    if mv.at_least(26) {
        Ok(())
    } else {
        Err(Error::not_found("The resource could not be found."))
    }
}

/// A server's tags.
#[utoipa::path(get, path = "/v2.1/servers/{id}/tags", tag = "compute", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = Object)))]
pub async fn tags(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(id): Path<String>,
) -> Result<Response> {
    need_tags(mv)?;
    let t = app::tags(&st, &ctx, &id).await?;
    Ok(axum::Json(json!({"tags": t})).into_response())
}

/// Replaces the tags.
#[utoipa::path(put, path = "/v2.1/servers/{id}/tags", tag = "compute", params(("id" = String, Path)),
    request_body(content = Object), responses((status = 200, body = Object), (status = 400, body = Object), (status = 404, body = Object)))]
pub async fn replace_tags(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    need_tags(mv)?;
    let list: Vec<String> = body
        .get("tags")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            Error::bad_request(
                "Invalid input for field/attribute tags. 'tags' is a required property",
            )
        })?
        .iter()
        .map(|t| {
            t.as_str()
                .map(str::to_owned)
                .ok_or_else(|| Error::bad_request("Tags must be strings"))
        })
        .collect::<Result<_>>()?;
    let t = app::change_tags(&st, &ctx, &id, Some(list), None, None).await?;
    Ok(axum::Json(json!({"tags": t})).into_response())
}

/// Removes every tag.
#[utoipa::path(delete, path = "/v2.1/servers/{id}/tags", tag = "compute", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = Object)))]
pub async fn delete_tags(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    need_tags(mv)?;
    app::change_tags(&st, &ctx, &id, Some(vec![]), None, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// 204 when the server has the tag, 404 otherwise.
#[utoipa::path(get, path = "/v2.1/servers/{id}/tags/{tag}", tag = "compute",
    params(("id" = String, Path), ("tag" = String, Path)), responses((status = 204), (status = 404, body = Object)))]
pub async fn check_tag(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path((id, tag)): Path<(String, String)>,
) -> Result<StatusCode> {
    need_tags(mv)?;
    if app::tags(&st, &ctx, &id).await?.contains(&tag) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Error::not_found(format!("Tag '{tag}' could not be found.")))
    }
}

/// Adds a tag (201, or 204 when it was there).
#[utoipa::path(put, path = "/v2.1/servers/{id}/tags/{tag}", tag = "compute",
    params(("id" = String, Path), ("tag" = String, Path)), responses((status = 201), (status = 204), (status = 400, body = Object), (status = 404, body = Object)))]
pub async fn add_tag(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Base(base): Base,
    Path((id, tag)): Path<(String, String)>,
) -> Result<Response> {
    need_tags(mv)?;
    let had = app::tags(&st, &ctx, &id).await?.contains(&tag);
    app::change_tags(&st, &ctx, &id, None, Some(&tag), None).await?;
    if had {
        return Ok(empty(StatusCode::NO_CONTENT));
    }
    let mut resp = empty(StatusCode::CREATED);
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{base}/v2.1/servers/{id}/tags/{}",
        crate::api::encode(&tag)
    )) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// Removes a tag.
#[utoipa::path(delete, path = "/v2.1/servers/{id}/tags/{tag}", tag = "compute",
    params(("id" = String, Path), ("tag" = String, Path)), responses((status = 204), (status = 404, body = Object)))]
pub async fn delete_tag(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path((id, tag)): Path<(String, String)>,
) -> Result<StatusCode> {
    need_tags(mv)?;
    app::change_tags(&st, &ctx, &id, None, None, Some(&tag)).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- ips, security groups, instance actions --------------------------------------------------

/// A server's addresses by network.
#[utoipa::path(get, path = "/v2.1/servers/{id}/ips", tag = "compute", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = Object)))]
pub async fn ips(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<Response> {
    let s = app::show(&st, &ctx, &id).await?;
    Ok(axum::Json(json!({"addresses": addresses(&s, false)})).into_response())
}

/// A server's addresses on one network.
#[utoipa::path(get, path = "/v2.1/servers/{id}/ips/{network}", tag = "compute",
    params(("id" = String, Path), ("network" = String, Path)), responses((status = 200, body = Object), (status = 404, body = Object)))]
pub async fn ips_of_network(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    Path((id, network)): Path<(String, String)>,
) -> Result<Response> {
    let s = app::show(&st, &ctx, &id).await?;
    let all = addresses(&s, false);
    let list = all
        .get(&network)
        .cloned()
        .ok_or_else(|| Error::not_found("Instance is not a member of specified network"))?;
    Ok(axum::Json(json!({network: list})).into_response())
}

/// Nova's security group view (shared with `os-security-groups`).
pub fn security_group_view(g: &crate::db::network::Group) -> Value {
    json!({
        "id": g.row.id,
        "name": g.row.name,
        "description": g.row.description,
        "tenant_id": g.row.project_id,
        "rules": g.rules.iter().filter(|r| r.direction == "ingress").map(|r| security_group_rule_view(r, &g.row.name)).collect::<Vec<_>>(),
    })
}

/// Nova's view of a rule (ingress rules only exist in Nova's model).
pub fn security_group_rule_view(r: &crate::db::network::RuleRow, group_name: &str) -> Value {
    let group = match &r.remote_group_id {
        Some(_) => json!({"name": group_name, "tenant_id": r.project_id}),
        None => json!({}),
    };
    let ip_range = match (&r.remote_ip_prefix, &r.remote_group_id) {
        (Some(p), _) => json!({"cidr": p}),
        (None, None) => json!({"cidr": if r.ethertype == "IPv6" { "::/0" } else { "0.0.0.0/0" }}),
        (None, Some(_)) => json!({}),
    };
    json!({
        "id": r.id,
        "parent_group_id": r.security_group_id,
        "ip_protocol": r.protocol,
        "from_port": r.port_range_min.unwrap_or(if r.protocol.as_deref() == Some("icmp") { -1 } else { 1 }),
        "to_port": r.port_range_max.unwrap_or(if r.protocol.as_deref() == Some("icmp") { -1 } else { 65535 }),
        "group": group,
        "ip_range": ip_range,
    })
}

/// A server's security groups.
#[utoipa::path(get, path = "/v2.1/servers/{id}/os-security-groups", tag = "compute", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = Object)))]
pub async fn server_security_groups(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(id): Path<String>,
) -> Result<Response> {
    if mv.at_least(36) {
        return Err(Error::not_found("The resource could not be found."));
    }
    let groups = app::security_groups(&st, &ctx, &id).await?;
    Ok(axum::Json(
        json!({"security_groups": groups.iter().map(security_group_view).collect::<Vec<_>>()}),
    )
    .into_response())
}

fn action_view(mv: Mv, a: &Action) -> Value {
    let mut v = json!({
        "action": a.action,
        "instance_uuid": a.instance_uuid,
        "message": a.message,
        "project_id": a.project_id,
        "request_id": a.request_id,
        "start_time": naive_time(&a.start_time),
        "user_id": a.user_id,
    });
    if mv.at_least(58) {
        v["updated_at"] = naive_time(&a.updated_at).into();
    }
    v
}

fn event_view(mv: Mv, details: bool, e: &Event, project: &str) -> Value {
    let mut v = json!({
        "event": e.event,
        "start_time": naive_time(&e.start_time),
        "finish_time": opt_ts(&e.finish_time),
        "result": e.result,
    });
    if details {
        v["traceback"] = e.traceback.clone().into();
    }
    if mv.at_least(62) {
        if details {
            v["host"] = e.host.clone().unwrap_or_default().into();
        }
        let host_id = match &e.host {
            Some(h) if !h.is_empty() => {
                use sha2::Digest;
                let mut d = sha2::Sha224::new();
                d.update(project.as_bytes());
                d.update(h.as_bytes());
                hex::encode(d.finalize())
            }
            _ => String::new(),
        };
        v["hostId"] = host_id.into();
    }
    if mv.at_least(84) {
        v["details"] = e.details.clone().into();
    }
    v
}

/// A server's instance actions.
#[utoipa::path(get, path = "/v2.1/servers/{id}/os-instance-actions", tag = "compute", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = Object)))]
pub async fn instance_actions(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Base(base): Base,
    Path(id): Path<String>,
    OriginalUri(uri): OriginalUri,
) -> Result<Response> {
    let params = query_pairs(&uri);
    let list = app::actions(&st, &ctx, mv.0, &id, &params).await?;
    let mut body =
        json!({"instanceActions": list.iter().map(|a| action_view(mv, a)).collect::<Vec<_>>()});
    if mv.at_least(58) {
        let limit = params
            .iter()
            .find(|(k, _)| k == "limit")
            .and_then(|(_, v)| v.parse::<i64>().ok())
            .map_or(st.config.compute.max_limit, |l| {
                l.min(st.config.compute.max_limit)
            });
        if let Some(l) = next_link(
            &base,
            &format!("/servers/{id}/os-instance-actions"),
            &params,
            list.len(),
            limit,
            list.last().map(|a| a.request_id.as_str()),
        ) {
            body["links"] = l;
        }
    }
    Ok(axum::Json(body).into_response())
}

/// One instance action with its events.
#[utoipa::path(get, path = "/v2.1/servers/{id}/os-instance-actions/{request_id}", tag = "compute",
    params(("id" = String, Path), ("request_id" = String, Path)), responses((status = 200, body = Object), (status = 404, body = Object)))]
pub async fn instance_action(
    AxState(st): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path((id, request_id)): Path<(String, String)>,
) -> Result<Response> {
    let (a, events) = app::action(&st, &ctx, mv.0, &id, &request_id).await?;
    let details = st.policy.check(
        "os_compute_api:os-instance-actions:events:details",
        &ctx,
        Target::project(&a.project_id),
    );
    // Before 2.51 only admins see events.
    let show_events = details || mv.at_least(51);
    let mut v = action_view(mv, &a);
    if show_events {
        v["events"] = events
            .iter()
            .map(|e| event_view(mv, details, e, &a.project_id))
            .collect::<Vec<_>>()
            .into();
    }
    Ok(axum::Json(json!({"instanceAction": v})).into_response())
}
