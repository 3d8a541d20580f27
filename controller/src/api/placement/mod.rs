//! Placement API: thin handlers over [`crate::app::placement`], with
//! placement's microversions (1.0 to [`MAX_MICROVERSION`]).
//!
//! `OpenStack-API-Version: placement 1.N` (or `latest`) picks the version;
//! without it a request gets 1.0. Malformed values are 400, versions out of
//! range 406. Responses echo the version and `Vary`. Routes and fields newer
//! than the negotiated version answer 404 / are left out, as in placement.

mod allocations;
mod classes;
mod providers;

use std::collections::{BTreeMap, BTreeSet};

use axum::Router;
use axum::extract::{FromRequestParts, OriginalUri, Path, Request, State as AxState};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};

use super::{Auth, ErrorStyle, RequestId, State, query_pairs, render_error};
use crate::app::placement::{self as app, normalize_uuid};
use crate::db::placement::{
    Candidate, Claim, ConsumerGeneration, Inventory, MAX_INT, Provider, ProviderFilter,
};
use crate::error::{Error, Kind, Result};

/// The newest placement microversion Mica implements, every behaviour up to
/// it included.
pub const MAX_MICROVERSION: u32 = 24;

/// A negotiated placement microversion (`1.minor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mv(pub u32);

impl Mv {
    /// Whether the request asked for at least `1.minor`.
    pub fn at_least(self, minor: u32) -> bool {
        self.0 >= minor
    }
}

/// Parses an `OpenStack-API-Version` header value for placement.
pub fn parse_microversion(headers: &HeaderMap) -> Result<Mv> {
    let mut found = None;
    for v in headers.get_all("openstack-api-version") {
        let v = v
            .to_str()
            .map_err(|_| Error::bad_request("invalid version string"))?;
        for part in v.split(',') {
            let mut words = part.split_whitespace();
            if let (Some(service), Some(ver)) = (words.next(), words.next())
                && service.eq_ignore_ascii_case("placement")
            {
                found = Some(ver.to_owned());
            }
        }
    }
    let Some(ver) = found else {
        return Ok(Mv(0));
    };
    if ver == "latest" {
        return Ok(Mv(MAX_MICROVERSION));
    }
    let bad = || Error::bad_request(format!("invalid version string: {ver}"));
    let (major, minor) = ver.split_once('.').ok_or_else(bad)?;
    let major: u32 = major.parse().map_err(|_| bad())?;
    let minor: u32 = minor.parse().map_err(|_| bad())?;
    if minor.to_string().len() != ver.len() - major.to_string().len() - 1 {
        return Err(bad());
    }
    if major != 1 || minor > MAX_MICROVERSION {
        return Err(Error::new(
            Kind::NotAcceptable,
            format!(
                "Unacceptable version header: {ver}: the supported versions are 1.0 to 1.{MAX_MICROVERSION}"
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
            .ok_or_else(|| Error::internal("placement microversion", "not negotiated"))
    }
}

/// The placement router.
pub fn router(app: State) -> Router {
    Router::new()
        .route("/", get(root))
        .route(
            "/resource_providers",
            get(providers::list_providers).post(providers::create_provider),
        )
        .route(
            "/resource_providers/{uuid}",
            get(providers::get_provider)
                .put(providers::update_provider)
                .delete(providers::delete_provider),
        )
        .route(
            "/resource_providers/{uuid}/inventories",
            get(providers::get_inventories)
                .post(providers::create_inventory)
                .put(providers::put_inventories)
                .delete(providers::delete_inventories),
        )
        .route(
            "/resource_providers/{uuid}/inventories/{rc}",
            get(providers::get_inventory)
                .put(providers::put_inventory)
                .delete(providers::delete_inventory),
        )
        .route(
            "/resource_providers/{uuid}/usages",
            get(providers::provider_usages),
        )
        .route(
            "/resource_providers/{uuid}/allocations",
            get(providers::provider_allocations),
        )
        .route(
            "/resource_providers/{uuid}/aggregates",
            get(providers::get_aggregates).put(providers::put_aggregates),
        )
        .route(
            "/resource_providers/{uuid}/traits",
            get(providers::get_provider_traits)
                .put(providers::put_provider_traits)
                .delete(providers::delete_provider_traits),
        )
        .route(
            "/resource_classes",
            get(classes::list_resource_classes).post(classes::create_resource_class),
        )
        .route(
            "/resource_classes/{name}",
            get(classes::get_resource_class)
                .put(classes::put_resource_class)
                .delete(classes::delete_resource_class),
        )
        .route("/traits", get(classes::list_traits))
        .route(
            "/traits/{name}",
            get(classes::get_trait)
                .put(classes::put_trait)
                .delete(classes::delete_trait),
        )
        .route(
            "/allocations",
            axum::routing::post(allocations::post_allocations),
        )
        .route(
            "/allocations/{consumer}",
            get(allocations::get_allocations)
                .put(allocations::put_allocations)
                .delete(allocations::delete_allocations),
        )
        .route("/usages", get(allocations::usages))
        .route(
            "/allocation_candidates",
            get(allocations::allocation_candidates),
        )
        .layer(middleware::from_fn(microversions))
        .with_state(app)
}

/// Negotiates the microversion, echoes it, adds the 1.15 caching headers,
/// and renders errors placement's way.
async fn microversions(mut req: Request, next: Next) -> Response {
    let rid = req.extensions().get::<RequestId>().map(|r| r.0.clone());
    let mv = match parse_microversion(req.headers()) {
        Ok(mv) => mv,
        Err(e) => {
            // No version was agreed, so no 1.23 error code (as placement).
            let resp = e.into_response();
            return render_error(ErrorStyle::Placement, resp, rid, false).await;
        }
    };
    req.extensions_mut().insert(mv);
    let method = req.method().clone();
    let resp = next.run(req).await;
    let mut resp = render_error(ErrorStyle::Placement, resp, rid, mv.at_least(23)).await;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("placement 1.{}", mv.0)) {
        h.insert("openstack-api-version", v);
    }
    h.insert(
        header::VARY,
        HeaderValue::from_static("openstack-api-version"),
    );
    if mv.at_least(15)
        && resp.status().is_success()
        && (method == Method::GET || resp.status() == StatusCode::OK)
        && !resp.headers().contains_key(header::LAST_MODIFIED)
        && resp.status() != StatusCode::NO_CONTENT
    {
        let now = httpdate::fmt_http_date(std::time::SystemTime::now());
        if let Ok(v) = HeaderValue::from_str(&now) {
            resp.headers_mut().insert(header::LAST_MODIFIED, v);
        }
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    resp
}

fn need(mv: Mv, minor: u32) -> Result<()> {
    if mv.at_least(minor) {
        Ok(())
    } else {
        Err(Error::not_found("The resource could not be found."))
    }
}

fn require_json(headers: &HeaderMap) -> Result<()> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.starts_with("application/json") {
        Ok(())
    } else {
        Err(Error::new(
            Kind::UnsupportedMediaType,
            format!("The media type {ct} is not supported, use application/json"),
        ))
    }
}

async fn body_json(app: &State, headers: &HeaderMap, body: axum::body::Body) -> Result<Value> {
    require_json(headers)?;
    let bytes = super::read_limited(body, app.config.api.max_json_body_bytes).await?;
    super::parse_json(&bytes)
}

fn invalid(msg: impl std::fmt::Display) -> Error {
    Error::bad_request(format!("JSON does not validate: {msg}"))
}

fn obj<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| invalid(format!("{what} is not of type 'object'")))
}

fn int_field(o: &Map<String, Value>, key: &str) -> Result<Option<i64>> {
    match o.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .filter(|_| v.is_i64() || v.is_u64())
            .map(Some)
            .ok_or_else(|| invalid(format!("{v} is not of type 'integer' ('{key}')"))),
    }
}

fn str_field<'a>(o: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>> {
    match o.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(invalid(format!("{v} is not of type 'string' ('{key}')"))),
    }
}

fn only_keys(o: &Map<String, Value>, allowed: &[&str]) -> Result<()> {
    for k in o.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(invalid(format!(
                "Additional properties are not allowed ('{k}' was unexpected)"
            )));
        }
    }
    Ok(())
}

fn generation_field(o: &Map<String, Value>) -> Result<i64> {
    int_field(o, "resource_provider_generation")?
        .ok_or_else(|| invalid("'resource_provider_generation' is a required property"))
}

fn with_last_modified(mut resp: Response, mv: Mv, when: &crate::db::Timestamp) -> Response {
    if mv.at_least(15) {
        let t: std::time::SystemTime = when.0.into();
        if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(t)) {
            resp.headers_mut().insert(header::LAST_MODIFIED, v);
        }
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    resp
}

fn check_params(pairs: &[(String, String)], allowed: &[&str]) -> Result<()> {
    let bad: Vec<&str> = pairs
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !allowed.contains(k))
        .collect();
    if !bad.is_empty() {
        return Err(Error::bad_request(format!(
            "Invalid query string parameters: '{}' not allowed",
            bad.join("', '")
        ))
        .with_code("placement.query.bad_value"));
    }
    Ok(())
}

/// Parses `VCPU:2,MEMORY_MB:512`.
fn parse_resources(v: &str) -> Result<Vec<(String, i64)>> {
    let bad = || {
        Error::bad_request(format!(
            "Badly formed resources parameter. Expected resources query string parameter in form: \
             ?resources=VCPU:2,MEMORY_MB:1024. Got: {v}."
        ))
        .with_code("placement.query.bad_value")
    };
    let mut out: Vec<(String, i64)> = Vec::new();
    for part in v.split(',') {
        let (rc, n) = part.split_once(':').ok_or_else(bad)?;
        let n: i64 = n.trim().parse().map_err(|_| bad())?;
        let rc = rc.trim().to_owned();
        if out.iter().any(|(r, _)| *r == rc) {
            return Err(Error::bad_request(format!(
                "Badly formed resources parameter. Resource class {rc} appears more than once."
            ))
            .with_code("placement.query.duplicate_key"));
        }
        out.push((rc, n));
    }
    Ok(out)
}

/// Parses `required=A,!B`; `!` needs 1.22.
fn parse_required(values: &[&str], mv: Mv) -> Result<(Vec<String>, Vec<String>)> {
    let mut required = Vec::new();
    let mut forbidden = Vec::new();
    for v in values {
        for t in v.split(',') {
            let t = t.trim();
            if t.is_empty() {
                return Err(Error::bad_request(
                    "Invalid query string parameters: Expected 'required' parameter value of the form: HW_CPU_X86_VMX,CUSTOM_MAGIC.",
                ));
            }
            match t.strip_prefix('!') {
                Some(f) if mv.at_least(22) => forbidden.push(f.to_owned()),
                _ => required.push(t.to_owned()),
            }
        }
    }
    Ok((required, forbidden))
}

/// Parses `member_of` values (`in:a,b` or `a`); several need 1.24.
fn parse_member_of(values: &[&str], mv: Mv) -> Result<Vec<Vec<String>>> {
    if values.len() > 1 && !mv.at_least(24) {
        return Err(Error::bad_request(
            "Multiple member_of parameters are not supported before microversion 1.24.",
        ));
    }
    let mut out = Vec::new();
    for v in values {
        let list = match v.strip_prefix("in:") {
            Some(rest) => rest,
            None if v.contains(',') => {
                return Err(Error::bad_request(
                    "Invalid query string parameters: Expected 'member_of' parameter to contain valid UUID(s). Got: multiple values without 'in:'.",
                ));
            }
            None => v,
        };
        let mut group = Vec::new();
        for u in list.split(',') {
            group.push(normalize_uuid(u.trim(), "member_of").map_err(|_| {
                Error::bad_request(format!(
                    "Invalid query string parameters: Expected 'member_of' parameter to contain valid UUID(s). Got: {v}"
                ))
            })?);
        }
        out.push(group);
    }
    Ok(out)
}

fn all<'a>(pairs: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    pairs
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

fn last<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    all(pairs, key).pop()
}

// ---- root ------------------------------------------------------------------------

/// Placement's version document (no token needed).
#[utoipa::path(get, path = "/", tag = "placement", responses((status = 200, body = Object)))]
async fn root() -> Response {
    axum::Json(json!({
        "versions": [{
            "id": "v1.0",
            "max_version": format!("1.{MAX_MICROVERSION}"),
            "min_version": "1.0",
            "status": "CURRENT",
            "links": [{"rel": "self", "href": ""}],
        }]
    }))
    .into_response()
}

/// The OpenAPI document of this API.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Mica placement API", version = "1.24"),
    paths(
        root,
        providers::list_providers,
        providers::create_provider,
        providers::get_provider,
        providers::update_provider,
        providers::delete_provider,
        providers::get_inventories,
        providers::put_inventories,
        providers::create_inventory,
        providers::delete_inventories,
        providers::get_inventory,
        providers::put_inventory,
        providers::delete_inventory,
        providers::provider_usages,
        providers::provider_allocations,
        providers::get_aggregates,
        providers::put_aggregates,
        providers::get_provider_traits,
        providers::put_provider_traits,
        providers::delete_provider_traits,
        classes::list_resource_classes,
        classes::create_resource_class,
        classes::get_resource_class,
        classes::put_resource_class,
        classes::delete_resource_class,
        classes::list_traits,
        classes::get_trait,
        classes::put_trait,
        classes::delete_trait,
        allocations::get_allocations,
        allocations::put_allocations,
        allocations::post_allocations,
        allocations::delete_allocations,
        allocations::usages,
        allocations::allocation_candidates
    )
)]
pub struct PlacementApi;

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("openstack-api-version", HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn microversion_negotiation() {
        assert_eq!(parse_microversion(&HeaderMap::new()).unwrap(), Mv(0));
        assert_eq!(parse_microversion(&hv("placement 1.17")).unwrap(), Mv(17));
        assert_eq!(
            parse_microversion(&hv("placement latest")).unwrap(),
            Mv(MAX_MICROVERSION)
        );
        assert_eq!(
            parse_microversion(&hv("compute 2.1, placement 1.2")).unwrap(),
            Mv(2)
        );
        assert_eq!(parse_microversion(&hv("compute 2.60")).unwrap(), Mv(0));
        assert_eq!(
            parse_microversion(&hv("placement 1.99")).unwrap_err().kind,
            Kind::NotAcceptable
        );
        assert_eq!(
            parse_microversion(&hv("placement 2.0")).unwrap_err().kind,
            Kind::NotAcceptable
        );
        assert_eq!(
            parse_microversion(&hv("placement 1.x")).unwrap_err().kind,
            Kind::BadRequest
        );
        assert_eq!(
            parse_microversion(&hv("placement 1.05")).unwrap_err().kind,
            Kind::BadRequest
        );
    }

    #[test]
    fn query_parsing() {
        assert_eq!(
            parse_resources("VCPU:2,MEMORY_MB:512").unwrap(),
            vec![("VCPU".to_owned(), 2), ("MEMORY_MB".to_owned(), 512)]
        );
        assert!(parse_resources("VCPU").is_err());
        assert!(parse_resources("VCPU:x").is_err());
        assert!(parse_resources("VCPU:1,VCPU:2").is_err());
        let (r, f) = parse_required(&["A,!B"], Mv(22)).unwrap();
        assert_eq!((r, f), (vec!["A".to_owned()], vec!["B".to_owned()]));
        // Before 1.22 a `!` is part of the (then invalid) trait name.
        let (r, _) = parse_required(&["!B"], Mv(21)).unwrap();
        assert_eq!(r, vec!["!B".to_owned()]);
        let a = "3f0a8a5e-1b8e-4c1e-9e7f-5a2b8c9d0e1f";
        assert_eq!(
            parse_member_of(&[a], Mv(21)).unwrap(),
            vec![vec![a.to_owned()]]
        );
        assert!(parse_member_of(&[a, a], Mv(21)).is_err());
        assert_eq!(parse_member_of(&[a, a], Mv(24)).unwrap().len(), 2);
        assert!(parse_member_of(&["nope"], Mv(24)).is_err());
    }
}
