//! Compute API (Nova v2.1 with microversions 2.1–[`MAX_MICROVERSION`]):
//! thin handlers over [`crate::app::compute`] and the network app layer
//! (for the `os-security-groups` proxy).
//!
//! # Microversions
//!
//! A request asks with `OpenStack-API-Version: compute 2.X` or
//! `X-OpenStack-Nova-API-Version: 2.X` (the first wins when both are
//! given); `latest` means [`MAX_MICROVERSION`]; none means 2.1. A malformed
//! version is 400, one outside 2.1–max is 406. Every response echoes both
//! headers with `Vary`. Handlers take [`Mv`] and shape their bodies by it.

pub mod hosts;
pub mod passwords;
pub mod resources;
pub mod servers;

use axum::Router;
use axum::extract::{FromRequestParts, Request, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};

use super::{ErrorStyle, RequestId, State, base_url, render_error};
use crate::app::ServiceKind;
use crate::error::{Error, Kind, Result};

/// The newest compute microversion Mica implements, with every behaviour
/// change up to it.
pub const MAX_MICROVERSION: u32 = 96;

/// A negotiated compute microversion (`2.minor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mv(pub u32);

impl Mv {
    /// Whether the request asked for at least `2.minor`.
    pub fn at_least(self, minor: u32) -> bool {
        self.0 >= minor
    }
}

/// Parses the request's compute microversion (see the module doc).
pub fn parse_microversion(headers: &HeaderMap) -> Result<Mv> {
    let mut found = None;
    for v in headers.get_all("openstack-api-version") {
        let v = v
            .to_str()
            .map_err(|_| Error::bad_request("Invalid OpenStack-API-Version header."))?;
        for part in v.split(',') {
            let mut words = part.split_whitespace();
            if let (Some(service), Some(ver)) = (words.next(), words.next())
                && service.eq_ignore_ascii_case("compute")
            {
                found = Some(ver.to_owned());
            }
        }
    }
    if found.is_none()
        && let Some(v) = headers.get("x-openstack-nova-api-version")
    {
        found = Some(
            v.to_str()
                .map_err(|_| Error::bad_request("Invalid X-OpenStack-Nova-API-Version header."))?
                .trim()
                .to_owned(),
        );
    }
    let Some(ver) = found else {
        return Ok(Mv(1));
    };
    if ver.eq_ignore_ascii_case("latest") {
        return Ok(Mv(MAX_MICROVERSION));
    }
    let bad = || {
        Error::bad_request(format!(
            "API Version String {ver} is of invalid format. Must be of format MajorNum.MinorNum."
        ))
    };
    let (major, minor) = ver.split_once('.').ok_or_else(bad)?;
    if major.is_empty()
        || minor.is_empty()
        || !major.bytes().all(|b| b.is_ascii_digit())
        || !minor.bytes().all(|b| b.is_ascii_digit())
        || (minor.len() > 1 && minor.starts_with('0'))
    {
        return Err(bad());
    }
    let major: u32 = major.parse().map_err(|_| bad())?;
    let minor: u32 = minor.parse().map_err(|_| bad())?;
    if major != 2 || !(1..=MAX_MICROVERSION).contains(&minor) {
        return Err(Error::new(
            Kind::NotAcceptable,
            format!(
                "Version {ver} is not supported by the API. Minimum is 2.1 and maximum is 2.{MAX_MICROVERSION}."
            ),
        ));
    }
    Ok(Mv(minor))
}

impl FromRequestParts<State> for Mv {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &State) -> Result<Self, Error> {
        parts
            .extensions
            .get::<Mv>()
            .copied()
            .ok_or_else(|| Error::internal("compute microversion", "not negotiated"))
    }
}

/// The request id, for instance actions.
pub struct ReqId(pub String);

impl FromRequestParts<State> for ReqId {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &State) -> Result<Self, Error> {
        Ok(ReqId(
            parts
                .extensions
                .get::<RequestId>()
                .map(|r| r.0.clone())
                .unwrap_or_else(|| format!("req-{}", uuid::Uuid::new_v4())),
        ))
    }
}

/// The base URL of links (`http://host:port`).
pub struct Base(pub String);

impl FromRequestParts<State> for Base {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, app: &State) -> Result<Self, Error> {
        Ok(Base(base_url(app, ServiceKind::Compute, &parts.headers)))
    }
}

/// The compute router.
pub fn router(app: State) -> Router {
    let v = |p: &str| format!("/v2.1{p}");
    Router::new()
        .route("/", get(versions))
        .route("/v2.1", get(version))
        .route("/v2.1/", get(version))
        .route(&v("/servers"), get(servers::list).post(servers::create))
        .route(&v("/servers/detail"), get(servers::detail))
        .route(
            &v("/servers/{id}"),
            get(servers::show)
                .put(servers::update)
                .delete(servers::delete),
        )
        .route(&v("/servers/{id}/action"), post(servers::action))
        .route(
            &v("/servers/{id}/metadata"),
            get(servers::metadata)
                .post(servers::merge_metadata)
                .put(servers::replace_metadata),
        )
        .route(
            &v("/servers/{id}/metadata/{key}"),
            get(servers::metadata_item)
                .put(servers::put_metadata_item)
                .delete(servers::delete_metadata_item),
        )
        .route(
            &v("/servers/{id}/tags"),
            get(servers::tags)
                .put(servers::replace_tags)
                .delete(servers::delete_tags),
        )
        .route(
            &v("/servers/{id}/tags/{tag}"),
            get(servers::check_tag)
                .put(servers::add_tag)
                .delete(servers::delete_tag),
        )
        .route(&v("/servers/{id}/ips"), get(servers::ips))
        .route(
            &v("/servers/{id}/ips/{network}"),
            get(servers::ips_of_network),
        )
        .route(
            &v("/servers/{id}/os-instance-actions"),
            get(servers::instance_actions),
        )
        .route(
            &v("/servers/{id}/os-instance-actions/{request_id}"),
            get(servers::instance_action),
        )
        .route(
            &v("/servers/{id}/os-security-groups"),
            get(servers::server_security_groups),
        )
        .route(
            &v("/servers/{id}/remote-consoles"),
            post(servers::remote_consoles),
        )
        .route(
            &v("/servers/{id}/os-server-password"),
            get(passwords::show).delete(passwords::clear),
        )
        .route(
            &v("/flavors"),
            get(resources::list_flavors).post(resources::create_flavor),
        )
        .route(&v("/flavors/detail"), get(resources::list_flavors_detail))
        .route(
            &v("/flavors/{id}"),
            get(resources::show_flavor)
                .put(resources::update_flavor)
                .delete(resources::delete_flavor),
        )
        .route(&v("/flavors/{id}/action"), post(resources::flavor_action))
        .route(
            &v("/flavors/{id}/os-flavor-access"),
            get(resources::flavor_access),
        )
        .route(
            &v("/flavors/{id}/os-extra_specs"),
            get(resources::extra_specs).post(resources::set_extra_specs),
        )
        .route(
            &v("/flavors/{id}/os-extra_specs/{key}"),
            get(resources::extra_spec)
                .put(resources::put_extra_spec)
                .delete(resources::delete_extra_spec),
        )
        .route(
            &v("/os-keypairs"),
            get(resources::list_keypairs).post(resources::create_keypair),
        )
        .route(
            &v("/os-keypairs/{name}"),
            get(resources::show_keypair).delete(resources::delete_keypair),
        )
        .route(
            &v("/os-server-groups"),
            get(resources::list_server_groups).post(resources::create_server_group),
        )
        .route(
            &v("/os-server-groups/{id}"),
            get(resources::show_server_group).delete(resources::delete_server_group),
        )
        .route(
            &v("/os-quota-sets/{project}"),
            get(resources::show_quotas)
                .put(resources::update_quotas)
                .delete(resources::delete_quotas),
        )
        .route(
            &v("/os-quota-sets/{project}/defaults"),
            get(resources::default_quotas),
        )
        .route(
            &v("/os-quota-sets/{project}/detail"),
            get(resources::quota_details),
        )
        .route(
            &v("/os-quota-class-sets/{class}"),
            get(resources::show_quota_class).put(resources::update_quota_class),
        )
        .route(&v("/limits"), get(resources::limits))
        .route(&v("/os-availability-zone"), get(hosts::zones))
        .route(&v("/os-availability-zone/detail"), get(hosts::zones_detail))
        .route(
            &v("/os-aggregates"),
            get(hosts::list_aggregates).post(hosts::create_aggregate),
        )
        .route(
            &v("/os-aggregates/{id}"),
            get(hosts::show_aggregate)
                .put(hosts::update_aggregate)
                .delete(hosts::delete_aggregate),
        )
        .route(
            &v("/os-aggregates/{id}/action"),
            post(hosts::aggregate_action),
        )
        .route(&v("/os-services"), get(hosts::list_services))
        .route(
            &v("/os-services/{id}"),
            put(hosts::update_service).delete(hosts::delete_service),
        )
        .route(&v("/os-hypervisors"), get(hosts::list_hypervisors))
        .route(
            &v("/os-hypervisors/detail"),
            get(hosts::list_hypervisors_detail),
        )
        .route(
            &v("/os-hypervisors/statistics"),
            get(hosts::hypervisor_statistics),
        )
        .route(&v("/os-hypervisors/{id}"), get(hosts::show_hypervisor))
        .route(
            &v("/os-hypervisors/{id}/uptime"),
            get(hosts::hypervisor_uptime),
        )
        .route(
            &v("/os-hypervisors/{id}/search"),
            get(hosts::search_hypervisors),
        )
        .route(
            &v("/os-hypervisors/{id}/servers"),
            get(hosts::hypervisor_servers),
        )
        .route(
            &v("/os-security-groups"),
            get(hosts::list_security_groups).post(hosts::create_security_group),
        )
        .route(
            &v("/os-security-groups/{id}"),
            get(hosts::show_security_group)
                .put(hosts::update_security_group)
                .delete(hosts::delete_security_group),
        )
        .route(
            &v("/os-security-group-rules"),
            post(hosts::create_security_group_rule),
        )
        .route(
            &v("/os-security-group-rules/{id}"),
            axum::routing::delete(hosts::delete_security_group_rule),
        )
        .layer(middleware::from_fn(microversions))
        .with_state(app)
}

/// Negotiates the microversion, echoes it, and renders errors Nova's way.
async fn microversions(mut req: Request, next: Next) -> Response {
    let rid = req.extensions().get::<RequestId>().map(|r| r.0.clone());
    let mv = match parse_microversion(req.headers()) {
        Ok(mv) => mv,
        Err(e) => {
            let resp = e.into_response();
            return render_error(ErrorStyle::Nova, resp, rid, false).await;
        }
    };
    req.extensions_mut().insert(mv);
    let resp = next.run(req).await;
    let mut resp = render_error(ErrorStyle::Nova, resp, rid, false).await;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("compute 2.{}", mv.0)) {
        h.insert("openstack-api-version", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("2.{}", mv.0)) {
        h.insert("x-openstack-nova-api-version", v);
    }
    h.insert(
        header::VARY,
        HeaderValue::from_static("OpenStack-API-Version, X-OpenStack-Nova-API-Version"),
    );
    resp
}

fn version_doc(base: &str) -> Value {
    json!({
        "id": "v2.1",
        "status": "CURRENT",
        "version": format!("2.{MAX_MICROVERSION}"),
        "min_version": "2.1",
        "updated": "2013-07-23T11:33:21Z",
        "links": [
            {"rel": "self", "href": format!("{base}/v2.1/")},
            {"rel": "describedby", "type": "text/html", "href": "https://docs.openstack.org/"}
        ],
        "media-types": [{
            "base": "application/json",
            "type": "application/vnd.openstack.compute+json;version=2.1"
        }]
    })
}

/// Lists compute API versions (no token needed).
#[utoipa::path(get, path = "/", tag = "compute", responses((status = 200, body = Object)))]
async fn versions(AxState(app): AxState<State>, headers: HeaderMap) -> Response {
    let base = base_url(&app, ServiceKind::Compute, &headers);
    (
        StatusCode::OK,
        axum::Json(json!({"versions": [version_doc(&base)]})),
    )
        .into_response()
}

/// The v2.1 version document with the microversion range (no token needed).
#[utoipa::path(get, path = "/v2.1", tag = "compute", responses((status = 200, body = Object)))]
async fn version(AxState(app): AxState<State>, headers: HeaderMap) -> Response {
    let base = base_url(&app, ServiceKind::Compute, &headers);
    axum::Json(json!({"version": version_doc(&base)})).into_response()
}

/// A `{"<key>_links": [{"rel": "next", …}]}` entry when a page is full:
/// the same query with `marker` set to the last item.
pub fn next_link(
    base: &str,
    path: &str,
    params: &[(String, String)],
    count: usize,
    limit: i64,
    last: Option<&str>,
) -> Option<Value> {
    if limit <= 0 || count as i64 != limit {
        return None;
    }
    let last = last?;
    let mut q: Vec<String> = params
        .iter()
        .filter(|(k, _)| k != "marker")
        .map(|(k, v)| format!("{}={}", crate::api::encode(k), crate::api::encode(v)))
        .collect();
    q.push(format!("marker={}", crate::api::encode(last)));
    Some(json!([{"rel": "next", "href": format!("{base}/v2.1{path}?{}", q.join("&"))}]))
}

/// The OpenAPI document of this API.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Mica compute API (Nova v2.1)", version = "2.96"),
    paths(
        versions,
        version,
        servers::list,
        servers::detail,
        servers::create,
        servers::show,
        servers::update,
        servers::delete,
        servers::action,
        servers::metadata,
        servers::merge_metadata,
        servers::replace_metadata,
        servers::metadata_item,
        servers::put_metadata_item,
        servers::delete_metadata_item,
        servers::tags,
        servers::replace_tags,
        servers::delete_tags,
        servers::check_tag,
        servers::add_tag,
        servers::delete_tag,
        servers::ips,
        servers::ips_of_network,
        servers::instance_actions,
        servers::instance_action,
        servers::server_security_groups,
        servers::remote_consoles,
        resources::list_flavors,
        resources::list_flavors_detail,
        resources::create_flavor,
        resources::show_flavor,
        resources::update_flavor,
        resources::delete_flavor,
        resources::flavor_action,
        resources::flavor_access,
        resources::extra_specs,
        resources::set_extra_specs,
        resources::extra_spec,
        resources::put_extra_spec,
        resources::delete_extra_spec,
        resources::list_keypairs,
        resources::create_keypair,
        resources::show_keypair,
        resources::delete_keypair,
        resources::list_server_groups,
        resources::create_server_group,
        resources::show_server_group,
        resources::delete_server_group,
        resources::show_quotas,
        resources::update_quotas,
        resources::delete_quotas,
        resources::default_quotas,
        resources::quota_details,
        resources::show_quota_class,
        resources::update_quota_class,
        resources::limits,
        hosts::zones,
        hosts::zones_detail,
        hosts::list_aggregates,
        hosts::create_aggregate,
        hosts::show_aggregate,
        hosts::update_aggregate,
        hosts::delete_aggregate,
        hosts::aggregate_action,
        hosts::list_services,
        hosts::update_service,
        hosts::delete_service,
        hosts::list_hypervisors,
        hosts::list_hypervisors_detail,
        hosts::hypervisor_statistics,
        hosts::show_hypervisor,
        hosts::hypervisor_uptime,
        hosts::search_hypervisors,
        hosts::hypervisor_servers,
        hosts::list_security_groups,
        hosts::create_security_group,
        hosts::show_security_group,
        hosts::update_security_group,
        hosts::delete_security_group,
        hosts::create_security_group_rule,
        hosts::delete_security_group_rule
    )
)]
pub struct ComputeApi;

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn microversion_negotiation() {
        assert_eq!(parse_microversion(&headers(&[])).unwrap(), Mv(1));
        assert_eq!(
            parse_microversion(&headers(&[("OpenStack-API-Version", "compute 2.47")])).unwrap(),
            Mv(47)
        );
        assert_eq!(
            parse_microversion(&headers(&[("X-OpenStack-Nova-API-Version", "2.10")])).unwrap(),
            Mv(10)
        );
        // The new header wins.
        assert_eq!(
            parse_microversion(&headers(&[
                ("OpenStack-API-Version", "compute 2.60"),
                ("X-OpenStack-Nova-API-Version", "2.10")
            ]))
            .unwrap(),
            Mv(60)
        );
        assert_eq!(
            parse_microversion(&headers(&[(
                "OpenStack-API-Version",
                "placement 1.2, compute latest"
            )]))
            .unwrap(),
            Mv(MAX_MICROVERSION)
        );
        let e = parse_microversion(&headers(&[("OpenStack-API-Version", "compute 2.200")]))
            .unwrap_err();
        assert_eq!(e.kind.status(), 406);
        let e =
            parse_microversion(&headers(&[("OpenStack-API-Version", "compute 3.0")])).unwrap_err();
        assert_eq!(e.kind.status(), 406);
        let e =
            parse_microversion(&headers(&[("OpenStack-API-Version", "compute 2.0")])).unwrap_err();
        assert_eq!(e.kind.status(), 406);
        let e =
            parse_microversion(&headers(&[("OpenStack-API-Version", "compute 2.x")])).unwrap_err();
        assert_eq!(e.kind.status(), 400);
        let e =
            parse_microversion(&headers(&[("X-OpenStack-Nova-API-Version", "2.05")])).unwrap_err();
        assert_eq!(e.kind.status(), 400);
    }

    #[test]
    fn next_links_only_for_full_pages() {
        let p = vec![
            ("limit".to_owned(), "2".to_owned()),
            ("marker".to_owned(), "a".to_owned()),
        ];
        assert!(next_link("http://h", "/servers", &p, 1, 2, Some("b")).is_none());
        let l = next_link("http://h", "/servers", &p, 2, 2, Some("c d")).unwrap();
        assert_eq!(l[0]["href"], "http://h/v2.1/servers?limit=2&marker=c%20d");
        assert_eq!(l[0]["rel"], "next");
    }
}
