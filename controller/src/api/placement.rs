//! Placement API: thin handlers over [`crate::app::placement`], with
//! placement's microversions (1.0 to [`MAX_MICROVERSION`]).
//!
//! `OpenStack-API-Version: placement 1.N` (or `latest`) picks the version;
//! without it a request gets 1.0. Malformed values are 400, versions out of
//! range 406. Responses echo the version and `Vary`. Routes and fields newer
//! than the negotiated version answer 404 / are left out, as in placement.

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
            get(list_providers).post(create_provider),
        )
        .route(
            "/resource_providers/{uuid}",
            get(get_provider)
                .put(update_provider)
                .delete(delete_provider),
        )
        .route(
            "/resource_providers/{uuid}/inventories",
            get(get_inventories)
                .post(create_inventory)
                .put(put_inventories)
                .delete(delete_inventories),
        )
        .route(
            "/resource_providers/{uuid}/inventories/{rc}",
            get(get_inventory)
                .put(put_inventory)
                .delete(delete_inventory),
        )
        .route("/resource_providers/{uuid}/usages", get(provider_usages))
        .route(
            "/resource_providers/{uuid}/allocations",
            get(provider_allocations),
        )
        .route(
            "/resource_providers/{uuid}/aggregates",
            get(get_aggregates).put(put_aggregates),
        )
        .route(
            "/resource_providers/{uuid}/traits",
            get(get_provider_traits)
                .put(put_provider_traits)
                .delete(delete_provider_traits),
        )
        .route(
            "/resource_classes",
            get(list_resource_classes).post(create_resource_class),
        )
        .route(
            "/resource_classes/{name}",
            get(get_resource_class)
                .put(put_resource_class)
                .delete(delete_resource_class),
        )
        .route("/traits", get(list_traits))
        .route(
            "/traits/{name}",
            get(get_trait).put(put_trait).delete(delete_trait),
        )
        .route("/allocations", axum::routing::post(post_allocations))
        .route(
            "/allocations/{consumer}",
            get(get_allocations)
                .put(put_allocations)
                .delete(delete_allocations),
        )
        .route("/usages", get(usages))
        .route("/allocation_candidates", get(allocation_candidates))
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

// ---- providers ----------------------------------------------------------------------

fn provider_json(p: &Provider, mv: Mv) -> Value {
    let url = format!("/resource_providers/{}", p.uuid);
    let mut links = vec![json!({"rel": "self", "href": url})];
    let mut rels = vec!["inventories", "usages"];
    if mv.at_least(1) {
        rels.push("aggregates");
    }
    if mv.at_least(6) {
        rels.push("traits");
    }
    if mv.at_least(11) {
        rels.push("allocations");
    }
    for rel in rels {
        links.push(json!({"rel": rel, "href": format!("{url}/{rel}")}));
    }
    let mut v = json!({
        "uuid": p.uuid,
        "name": p.name,
        "generation": p.generation,
        "links": links,
    });
    if mv.at_least(14) {
        v["parent_provider_uuid"] = json!(p.parent_provider_uuid);
        v["root_provider_uuid"] = json!(p.root_provider_uuid);
    }
    v
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

/// Lists resource providers.
#[utoipa::path(get, path = "/resource_providers", tag = "placement",
    params(("name" = Option<String>, Query), ("uuid" = Option<String>, Query),
        ("member_of" = Option<String>, Query, description = "1.3; `in:a,b`; repeatable from 1.24"),
        ("resources" = Option<String>, Query, description = "1.4; `VCPU:2,MEMORY_MB:512`"),
        ("in_tree" = Option<String>, Query, description = "1.14"),
        ("required" = Option<String>, Query, description = "1.18; `!TRAIT` from 1.22")),
    responses((status = 200, body = Object), (status = 400, body = Object)))]
async fn list_providers(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    OriginalUri(uri): OriginalUri,
) -> Result<Response> {
    let q = query_pairs(&uri);
    let mut allowed = vec!["name", "uuid"];
    if mv.at_least(3) {
        allowed.push("member_of");
    }
    if mv.at_least(4) {
        allowed.push("resources");
    }
    if mv.at_least(14) {
        allowed.push("in_tree");
    }
    if mv.at_least(18) {
        allowed.push("required");
    }
    check_params(&q, &allowed)?;
    let (required, forbidden) = parse_required(&all(&q, "required"), mv)?;
    let f = ProviderFilter {
        name: last(&q, "name").map(str::to_owned),
        uuid: last(&q, "uuid")
            .map(|u| normalize_uuid(u, "uuid"))
            .transpose()?,
        member_of: parse_member_of(&all(&q, "member_of"), mv)?,
        resources: last(&q, "resources")
            .map(parse_resources)
            .transpose()?
            .unwrap_or_default(),
        in_tree_root: last(&q, "in_tree")
            .map(|u| normalize_uuid(u, "in_tree"))
            .transpose()?,
        required,
        forbidden,
        limit: None,
    };
    let ps = app::list_providers(&app, &ctx, f).await?;
    Ok(axum::Json(json!({
        "resource_providers": ps.iter().map(|p| provider_json(p, mv)).collect::<Vec<_>>()
    }))
    .into_response())
}

/// Creates a resource provider (201 empty before 1.20, 200 with body from 1.20).
#[utoipa::path(post, path = "/resource_providers", tag = "placement",
    request_body(content = Object, description = "`name`, optional `uuid`, `parent_provider_uuid` (1.14)"),
    responses((status = 200, body = Object), (status = 201), (status = 409, body = Object)))]
async fn create_provider(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response> {
    let v = body_json(&app, &headers, body).await?;
    let o = obj(&v, "body")?;
    let mut allowed = vec!["name", "uuid"];
    if mv.at_least(14) {
        allowed.push("parent_provider_uuid");
    }
    only_keys(o, &allowed)?;
    let name = str_field(o, "name")?.ok_or_else(|| invalid("'name' is a required property"))?;
    let uuid = str_field(o, "uuid")?;
    let parent = match o.get("parent_provider_uuid") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(v) => return Err(invalid(format!("{v} is not of type 'string'"))),
    };
    let p = app::create_provider(&app, &ctx, name, uuid, parent).await?;
    let location = format!("/resource_providers/{}", p.uuid);
    let mut resp = if mv.at_least(20) {
        with_last_modified(
            axum::Json(provider_json(&p, mv)).into_response(),
            mv,
            &p.updated_at,
        )
    } else {
        StatusCode::CREATED.into_response()
    };
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// Shows a resource provider.
#[utoipa::path(get, path = "/resource_providers/{uuid}", tag = "placement",
    params(("uuid" = String, Path)), responses((status = 200, body = Object), (status = 404, body = Object)))]
async fn get_provider(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(uuid): Path<String>,
) -> Result<Response> {
    let p = app::get_provider(&app, &ctx, &uuid).await?;
    Ok(with_last_modified(
        axum::Json(provider_json(&p, mv)).into_response(),
        mv,
        &p.updated_at,
    ))
}

/// Renames a provider or gives it a parent (1.14).
#[utoipa::path(put, path = "/resource_providers/{uuid}", tag = "placement",
    params(("uuid" = String, Path)),
    request_body(content = Object, description = "`name`, `parent_provider_uuid` (1.14)"),
    responses((status = 200, body = Object), (status = 400, body = Object), (status = 404, body = Object),
        (status = 409, body = Object)))]
async fn update_provider(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(uuid): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response> {
    let v = body_json(&app, &headers, body).await?;
    let o = obj(&v, "body")?;
    let mut allowed = vec!["name"];
    if mv.at_least(14) {
        allowed.push("parent_provider_uuid");
    }
    only_keys(o, &allowed)?;
    let name = str_field(o, "name")?.ok_or_else(|| invalid("'name' is a required property"))?;
    let parent = match o.get("parent_provider_uuid") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(s)) => Some(Some(s.clone())),
        Some(v) => return Err(invalid(format!("{v} is not of type 'string'"))),
    };
    let p = app::update_provider(&app, &ctx, &uuid, name, None, parent).await?;
    Ok(with_last_modified(
        axum::Json(provider_json(&p, mv)).into_response(),
        mv,
        &p.updated_at,
    ))
}

/// Deletes a provider (409 with children or allocations).
#[utoipa::path(delete, path = "/resource_providers/{uuid}", tag = "placement",
    params(("uuid" = String, Path)), responses((status = 204), (status = 404, body = Object), (status = 409, body = Object)))]
async fn delete_provider(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path(uuid): Path<String>,
) -> Result<StatusCode> {
    app::delete_provider(&app, &ctx, &uuid).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- inventories --------------------------------------------------------------------------

fn inventory_json(i: &Inventory) -> Value {
    json!({
        "total": i.total,
        "reserved": i.reserved,
        "min_unit": i.min_unit,
        "max_unit": i.max_unit,
        "step_size": i.step_size,
        "allocation_ratio": i.allocation_ratio,
    })
}

fn parse_inventory(rc: &str, o: &Map<String, Value>, allowed: &[&str]) -> Result<Inventory> {
    only_keys(o, allowed)?;
    let ratio = match o.get("allocation_ratio") {
        None => 1.0,
        Some(v) => v
            .as_f64()
            .ok_or_else(|| invalid(format!("{v} is not of type 'number' ('allocation_ratio')")))?,
    };
    Ok(Inventory {
        resource_class: rc.to_owned(),
        total: int_field(o, "total")?.ok_or_else(|| invalid("'total' is a required property"))?,
        reserved: int_field(o, "reserved")?.unwrap_or(0),
        min_unit: int_field(o, "min_unit")?.unwrap_or(1),
        max_unit: int_field(o, "max_unit")?.unwrap_or(MAX_INT),
        step_size: int_field(o, "step_size")?.unwrap_or(1),
        allocation_ratio: ratio,
    })
}

const INVENTORY_FIELDS: [&str; 7] = [
    "resource_provider_generation",
    "total",
    "reserved",
    "min_unit",
    "max_unit",
    "step_size",
    "allocation_ratio",
];

fn inventories_body(generation: i64, invs: &[Inventory]) -> Value {
    let map: Map<String, Value> = invs
        .iter()
        .map(|i| (i.resource_class.clone(), inventory_json(i)))
        .collect();
    json!({"inventories": map, "resource_provider_generation": generation})
}

/// Shows a provider's inventories.
#[utoipa::path(get, path = "/resource_providers/{uuid}/inventories", tag = "placement",
    params(("uuid" = String, Path)), responses((status = 200, body = Object), (status = 404, body = Object)))]
async fn get_inventories(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path(uuid): Path<String>,
) -> Result<Response> {
    let (p, invs) = app::inventories(&app, &ctx, &uuid).await?;
    Ok(axum::Json(inventories_body(p.generation, &invs)).into_response())
}

/// Replaces a provider's inventories (generation-checked; 409 when a class
/// in use would go away or shrink below its usage).
#[utoipa::path(put, path = "/resource_providers/{uuid}/inventories", tag = "placement",
    params(("uuid" = String, Path)),
    request_body(content = Object, description = "`resource_provider_generation`, `inventories`: {class: {total, …}}"),
    responses((status = 200, body = Object), (status = 400, body = Object), (status = 409, body = Object)))]
async fn put_inventories(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(uuid): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response> {
    let v = body_json(&app, &headers, body).await?;
    let o = obj(&v, "body")?;
    only_keys(o, &["resource_provider_generation", "inventories"])?;
    let generation = generation_field(o)?;
    let invs = o
        .get("inventories")
        .ok_or_else(|| invalid("'inventories' is a required property"))?;
    let mut list = Vec::new();
    for (rc, inv) in obj(invs, "inventories")? {
        list.push(parse_inventory(rc, obj(inv, rc)?, &INVENTORY_FIELDS[1..])?);
    }
    let g = app::set_inventories(&app, &ctx, &uuid, generation, list, mv.at_least(26)).await?;
    let invs = crate::db::placement::inventories(app.db.pool(), &uuid).await?;
    Ok(axum::Json(inventories_body(g, &invs)).into_response())
}

/// Adds one inventory.
#[utoipa::path(post, path = "/resource_providers/{uuid}/inventories", tag = "placement",
    params(("uuid" = String, Path)),
    request_body(content = Object, description = "`resource_class`, `total`, …"),
    responses((status = 201, body = Object), (status = 409, body = Object)))]
async fn create_inventory(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(uuid): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response> {
    let v = body_json(&app, &headers, body).await?;
    let o = obj(&v, "body")?;
    let rc = str_field(o, "resource_class")?
        .ok_or_else(|| invalid("'resource_class' is a required property"))?
        .to_owned();
    let mut fields = INVENTORY_FIELDS.to_vec();
    fields.push("resource_class");
    let inv = parse_inventory(&rc, o, &fields)?;
    let generation = match int_field(o, "resource_provider_generation")? {
        Some(g) => g,
        None => app::get_provider(&app, &ctx, &uuid).await?.generation,
    };
    let g = app::set_inventory(
        &app,
        &ctx,
        &uuid,
        generation,
        inv.clone(),
        true,
        mv.at_least(26),
    )
    .await?;
    let mut body = inventory_json(&inv);
    body["resource_provider_generation"] = g.into();
    let mut resp = (StatusCode::CREATED, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/resource_providers/{uuid}/inventories/{rc}")) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// Deletes every inventory of a provider (1.5; 409 when in use).
#[utoipa::path(delete, path = "/resource_providers/{uuid}/inventories", tag = "placement",
    params(("uuid" = String, Path)), responses((status = 204), (status = 409, body = Object)))]
async fn delete_inventories(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(uuid): Path<String>,
) -> Result<StatusCode> {
    need(mv, 5)?;
    let p = app::get_provider(&app, &ctx, &uuid).await?;
    app::set_inventories(&app, &ctx, &uuid, p.generation, vec![], true).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Shows one inventory.
#[utoipa::path(get, path = "/resource_providers/{uuid}/inventories/{rc}", tag = "placement",
    params(("uuid" = String, Path), ("rc" = String, Path)), responses((status = 200, body = Object), (status = 404, body = Object)))]
async fn get_inventory(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path((uuid, rc)): Path<(String, String)>,
) -> Result<Response> {
    let (p, invs) = app::inventories(&app, &ctx, &uuid).await?;
    let inv = invs
        .iter()
        .find(|i| i.resource_class == rc)
        .ok_or_else(|| Error::not_found(format!("No inventory of class {rc} for {uuid}")))?;
    let mut body = inventory_json(inv);
    body["resource_provider_generation"] = p.generation.into();
    Ok(axum::Json(body).into_response())
}

/// Changes one inventory (generation-checked).
#[utoipa::path(put, path = "/resource_providers/{uuid}/inventories/{rc}", tag = "placement",
    params(("uuid" = String, Path), ("rc" = String, Path)),
    request_body(content = Object, description = "`resource_provider_generation`, `total`, …"),
    responses((status = 200, body = Object), (status = 409, body = Object)))]
async fn put_inventory(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path((uuid, rc)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response> {
    let v = body_json(&app, &headers, body).await?;
    let o = obj(&v, "body")?;
    let generation = generation_field(o)?;
    let inv = parse_inventory(&rc, o, &INVENTORY_FIELDS)?;
    let g = app::set_inventory(
        &app,
        &ctx,
        &uuid,
        generation,
        inv.clone(),
        false,
        mv.at_least(26),
    )
    .await?;
    let mut body = inventory_json(&inv);
    body["resource_provider_generation"] = g.into();
    Ok(axum::Json(body).into_response())
}

/// Deletes one inventory (409 when in use).
#[utoipa::path(delete, path = "/resource_providers/{uuid}/inventories/{rc}", tag = "placement",
    params(("uuid" = String, Path), ("rc" = String, Path)), responses((status = 204), (status = 409, body = Object)))]
async fn delete_inventory(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path((uuid, rc)): Path<(String, String)>,
) -> Result<StatusCode> {
    app::delete_inventory(&app, &ctx, &uuid, &rc).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A provider's usages.
#[utoipa::path(get, path = "/resource_providers/{uuid}/usages", tag = "placement",
    params(("uuid" = String, Path)), responses((status = 200, body = Object)))]
async fn provider_usages(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path(uuid): Path<String>,
) -> Result<Response> {
    let (p, u) = app::usages(&app, &ctx, &uuid).await?;
    Ok(
        axum::Json(json!({"resource_provider_generation": p.generation, "usages": u}))
            .into_response(),
    )
}

/// The allocations held on a provider.
#[utoipa::path(get, path = "/resource_providers/{uuid}/allocations", tag = "placement",
    params(("uuid" = String, Path)), responses((status = 200, body = Object)))]
async fn provider_allocations(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path(uuid): Path<String>,
) -> Result<Response> {
    let (p, allocs) = app::provider_allocations(&app, &ctx, &uuid).await?;
    let mut by_consumer: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for a in allocs {
        by_consumer
            .entry(a.consumer_uuid)
            .or_default()
            .insert(a.resource_class, a.used.into());
    }
    let allocations: Map<String, Value> = by_consumer
        .into_iter()
        .map(|(c, r)| (c, json!({"resources": r})))
        .collect();
    Ok(axum::Json(
        json!({"allocations": allocations, "resource_provider_generation": p.generation}),
    )
    .into_response())
}

// ---- aggregates and provider traits -----------------------------------------------------------

/// A provider's aggregates (1.1; with generation from 1.19).
#[utoipa::path(get, path = "/resource_providers/{uuid}/aggregates", tag = "placement",
    params(("uuid" = String, Path)), responses((status = 200, body = Object)))]
async fn get_aggregates(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(uuid): Path<String>,
) -> Result<Response> {
    need(mv, 1)?;
    let p = app::get_provider(&app, &ctx, &uuid).await?;
    let aggs = crate::db::placement::provider_aggregates(app.db.pool(), &uuid).await?;
    let mut body = json!({"aggregates": aggs});
    if mv.at_least(19) {
        body["resource_provider_generation"] = p.generation.into();
    }
    Ok(axum::Json(body).into_response())
}

/// Replaces a provider's aggregates (a list before 1.19; an object with
/// the generation from 1.19).
#[utoipa::path(put, path = "/resource_providers/{uuid}/aggregates", tag = "placement",
    params(("uuid" = String, Path)), request_body(content = Object),
    responses((status = 200, body = Object), (status = 409, body = Object)))]
async fn put_aggregates(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(uuid): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response> {
    need(mv, 1)?;
    let v = body_json(&app, &headers, body).await?;
    let (list, generation) = if mv.at_least(19) {
        let o = obj(&v, "body")?;
        only_keys(o, &["aggregates", "resource_provider_generation"])?;
        let g = generation_field(o)?;
        (
            o.get("aggregates")
                .cloned()
                .ok_or_else(|| invalid("'aggregates' is a required property"))?,
            Some(g),
        )
    } else {
        (v, None)
    };
    let Value::Array(items) = list else {
        return Err(invalid("aggregates is not of type 'array'"));
    };
    let mut aggs = BTreeSet::new();
    for i in items {
        let s = i
            .as_str()
            .ok_or_else(|| invalid(format!("{i} is not of type 'string'")))?;
        if !aggs.insert(s.to_owned()) {
            return Err(invalid(format!(
                "{s} is not unique: has non-unique elements"
            )));
        }
    }
    let g = app::set_provider_aggregates(&app, &ctx, &uuid, generation, aggs).await?;
    let aggs = crate::db::placement::provider_aggregates(app.db.pool(), &uuid).await?;
    let mut body = json!({"aggregates": aggs});
    if mv.at_least(19) {
        body["resource_provider_generation"] = g.into();
    }
    Ok(axum::Json(body).into_response())
}

/// A provider's traits (1.6).
#[utoipa::path(get, path = "/resource_providers/{uuid}/traits", tag = "placement",
    params(("uuid" = String, Path)), responses((status = 200, body = Object)))]
async fn get_provider_traits(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(uuid): Path<String>,
) -> Result<Response> {
    need(mv, 6)?;
    let p = app::get_provider(&app, &ctx, &uuid).await?;
    let traits = crate::db::placement::provider_traits(app.db.pool(), &uuid).await?;
    Ok(
        axum::Json(json!({"traits": traits, "resource_provider_generation": p.generation}))
            .into_response(),
    )
}

/// Replaces a provider's traits (1.6; generation-checked).
#[utoipa::path(put, path = "/resource_providers/{uuid}/traits", tag = "placement",
    params(("uuid" = String, Path)),
    request_body(content = Object, description = "`traits`, `resource_provider_generation`"),
    responses((status = 200, body = Object), (status = 400, body = Object), (status = 409, body = Object)))]
async fn put_provider_traits(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(uuid): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response> {
    need(mv, 6)?;
    let v = body_json(&app, &headers, body).await?;
    let o = obj(&v, "body")?;
    only_keys(o, &["traits", "resource_provider_generation"])?;
    let generation = generation_field(o)?;
    let Some(Value::Array(items)) = o.get("traits") else {
        return Err(invalid("'traits' is a required property of type 'array'"));
    };
    let mut traits = BTreeSet::new();
    for i in items {
        let s = i
            .as_str()
            .ok_or_else(|| invalid(format!("{i} is not of type 'string'")))?;
        if !traits.insert(s.to_owned()) {
            return Err(invalid(format!(
                "{s} is not unique: has non-unique elements"
            )));
        }
    }
    let g = app::set_provider_traits(&app, &ctx, &uuid, generation, traits.clone()).await?;
    Ok(axum::Json(json!({"traits": traits, "resource_provider_generation": g})).into_response())
}

/// Removes every trait of a provider (1.6).
#[utoipa::path(delete, path = "/resource_providers/{uuid}/traits", tag = "placement",
    params(("uuid" = String, Path)), responses((status = 204)))]
async fn delete_provider_traits(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(uuid): Path<String>,
) -> Result<StatusCode> {
    need(mv, 6)?;
    app::clear_provider_traits(&app, &ctx, &uuid).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- resource classes and traits ------------------------------------------------------------------

fn class_json(name: &str) -> Value {
    json!({"name": name, "links": [{"rel": "self", "href": format!("/resource_classes/{name}")}]})
}

/// Lists resource classes (1.2).
#[utoipa::path(get, path = "/resource_classes", tag = "placement", responses((status = 200, body = Object)))]
async fn list_resource_classes(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
) -> Result<Response> {
    need(mv, 2)?;
    let all = app::list_resource_classes(&app, &ctx).await?;
    Ok(axum::Json(
        json!({"resource_classes": all.iter().map(|c| class_json(c)).collect::<Vec<_>>()}),
    )
    .into_response())
}

/// Creates a custom resource class (1.2).
#[utoipa::path(post, path = "/resource_classes", tag = "placement",
    request_body(content = Object, description = "`name`: CUSTOM_*"),
    responses((status = 201), (status = 409, body = Object)))]
async fn create_resource_class(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response> {
    need(mv, 2)?;
    let v = body_json(&app, &headers, body).await?;
    let o = obj(&v, "body")?;
    only_keys(o, &["name"])?;
    let name = str_field(o, "name")?.ok_or_else(|| invalid("'name' is a required property"))?;
    app::check_custom_class_name(name)?;
    if !app::create_resource_class(&app, &ctx, name).await? {
        return Err(Error::conflict(format!(
            "Conflicting resource class already exists: {name}"
        )));
    }
    let mut resp = StatusCode::CREATED.into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/resource_classes/{name}")) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// Shows a resource class (1.2).
#[utoipa::path(get, path = "/resource_classes/{name}", tag = "placement",
    params(("name" = String, Path)), responses((status = 200, body = Object), (status = 404, body = Object)))]
async fn get_resource_class(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(name): Path<String>,
) -> Result<Response> {
    need(mv, 2)?;
    app::get_resource_class(&app, &ctx, &name).await?;
    Ok(axum::Json(class_json(&name)).into_response())
}

/// Renames a custom class (1.2–1.6); creates or confirms one (1.7: 201/204).
#[utoipa::path(put, path = "/resource_classes/{name}", tag = "placement",
    params(("name" = String, Path)), responses((status = 201), (status = 204), (status = 200, body = Object)))]
async fn put_resource_class(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response> {
    need(mv, 2)?;
    if mv.at_least(7) {
        app::check_custom_class_name(&name)?;
        let created = app::create_resource_class(&app, &ctx, &name).await?;
        let mut resp = if created {
            StatusCode::CREATED
        } else {
            StatusCode::NO_CONTENT
        }
        .into_response();
        if let Ok(v) = HeaderValue::from_str(&format!("/resource_classes/{name}")) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        return Ok(resp);
    }
    let v = body_json(&app, &headers, body).await?;
    let o = obj(&v, "body")?;
    only_keys(o, &["name"])?;
    let to = str_field(o, "name")?.ok_or_else(|| invalid("'name' is a required property"))?;
    app::rename_resource_class(&app, &ctx, &name, to).await?;
    Ok(axum::Json(class_json(to)).into_response())
}

/// Deletes a custom resource class (1.2).
#[utoipa::path(delete, path = "/resource_classes/{name}", tag = "placement",
    params(("name" = String, Path)), responses((status = 204), (status = 400, body = Object), (status = 409, body = Object)))]
async fn delete_resource_class(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    need(mv, 2)?;
    app::delete_resource_class(&app, &ctx, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lists traits (1.6): `name=startswith:X` or `name=in:A,B`, `associated`.
#[utoipa::path(get, path = "/traits", tag = "placement",
    params(("name" = Option<String>, Query), ("associated" = Option<bool>, Query)),
    responses((status = 200, body = Object)))]
async fn list_traits(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    OriginalUri(uri): OriginalUri,
) -> Result<Response> {
    need(mv, 6)?;
    let q = query_pairs(&uri);
    check_params(&q, &["name", "associated"])?;
    let (mut prefix, mut names) = (None, None);
    if let Some(n) = last(&q, "name") {
        if let Some(p) = n.strip_prefix("startswith:") {
            prefix = Some(p);
        } else if let Some(l) = n.strip_prefix("in:") {
            names = Some(l.split(',').map(str::to_owned).collect::<BTreeSet<_>>());
        } else {
            return Err(Error::bad_request(format!(
                "Badly formatted name parameter. Expected name query string parameter in form: \
                 ?name=[in|startswith]:[name1,name2|prefix]. Got: \"{n}\""
            )));
        }
    }
    let associated = match last(&q, "associated") {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(v) => {
            return Err(Error::bad_request(format!(
                "Invalid value for 'associated': {v}"
            )));
        }
    };
    let traits = app::list_traits(&app, &ctx, prefix, names.as_ref(), associated).await?;
    Ok(axum::Json(json!({"traits": traits})).into_response())
}

/// Checks that a trait exists (1.6; 204).
#[utoipa::path(get, path = "/traits/{name}", tag = "placement",
    params(("name" = String, Path)), responses((status = 204), (status = 404, body = Object)))]
async fn get_trait(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    need(mv, 6)?;
    if app::trait_exists(&app, &ctx, &name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Error::not_found(format!("No such trait(s): {name}")))
    }
}

/// Creates a custom trait (1.6; 201 created, 204 existed).
#[utoipa::path(put, path = "/traits/{name}", tag = "placement",
    params(("name" = String, Path)), responses((status = 201), (status = 204), (status = 400, body = Object)))]
async fn put_trait(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(name): Path<String>,
) -> Result<Response> {
    need(mv, 6)?;
    let created = app::create_trait(&app, &ctx, &name).await?;
    let mut resp = if created {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    }
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/traits/{name}")) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// Deletes a custom trait (1.6; 409 when a provider has it).
#[utoipa::path(delete, path = "/traits/{name}", tag = "placement",
    params(("name" = String, Path)), responses((status = 204), (status = 400, body = Object), (status = 409, body = Object)))]
async fn delete_trait(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    need(mv, 6)?;
    app::delete_trait(&app, &ctx, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- allocations ----------------------------------------------------------------------------------

fn parse_resources_object(v: &Value, what: &str) -> Result<BTreeMap<String, i64>> {
    let o = obj(v, what)?;
    let mut out = BTreeMap::new();
    for (rc, n) in o {
        let n = n
            .as_i64()
            .filter(|_| n.is_i64() || n.is_u64())
            .ok_or_else(|| invalid(format!("{n} is not of type 'integer' ({rc})")))?;
        out.insert(rc.clone(), n);
    }
    Ok(out)
}

/// Parses one consumer's body (`PUT /allocations/{c}` or one entry of
/// `POST /allocations`) according to the microversion.
fn parse_claim(consumer: &str, v: &Value, mv: Mv, ctx: &crate::context::Context) -> Result<Claim> {
    let o = obj(v, "body")?;
    let mut allowed = vec!["allocations"];
    if mv.at_least(8) {
        allowed.extend(["project_id", "user_id"]);
    }
    only_keys(o, &allowed)?;
    let allocs = o
        .get("allocations")
        .ok_or_else(|| invalid("'allocations' is a required property"))?;
    let mut allocations: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    if mv.at_least(12) {
        for (rp, entry) in obj(allocs, "allocations")? {
            let e = obj(entry, rp)?;
            only_keys(e, &["resources", "generation"])?;
            let r = e
                .get("resources")
                .ok_or_else(|| invalid("'resources' is a required property"))?;
            allocations.insert(
                normalize_uuid(rp, "resource provider uuid")?,
                parse_resources_object(r, "resources")?,
            );
        }
    } else {
        let Value::Array(items) = allocs else {
            return Err(invalid("allocations is not of type 'array'"));
        };
        if items.is_empty() {
            return Err(invalid("[] is too short"));
        }
        for item in items {
            let e = obj(item, "allocation")?;
            only_keys(e, &["resource_provider", "resources"])?;
            let rp = e
                .get("resource_provider")
                .and_then(|r| r.get("uuid"))
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("'resource_provider' with 'uuid' is a required property"))?;
            let r = e
                .get("resources")
                .ok_or_else(|| invalid("'resources' is a required property"))?;
            allocations.insert(
                normalize_uuid(rp, "resource provider uuid")?,
                parse_resources_object(r, "resources")?,
            );
        }
    }
    if allocations.is_empty() && mv.0 < 28 {
        return Err(invalid("{} does not have enough properties"));
    }
    let (project_id, user_id) = if mv.at_least(8) {
        (
            str_field(o, "project_id")?
                .ok_or_else(|| invalid("'project_id' is a required property"))?
                .to_owned(),
            str_field(o, "user_id")?
                .ok_or_else(|| invalid("'user_id' is a required property"))?
                .to_owned(),
        )
    } else {
        // Before 1.8 the body has no owner; the caller's is recorded.
        (
            ctx.project_id().unwrap_or_default().to_owned(),
            ctx.user_id.clone(),
        )
    };
    Ok(Claim {
        consumer_uuid: normalize_uuid(consumer, "consumer_uuid")?,
        project_id,
        user_id,
        consumer_generation: ConsumerGeneration::Unchecked,
        allocations,
    })
}

/// A consumer's allocations (`project_id`/`user_id` from 1.12).
#[utoipa::path(get, path = "/allocations/{consumer}", tag = "placement",
    params(("consumer" = String, Path)), responses((status = 200, body = Object)))]
async fn get_allocations(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(consumer): Path<String>,
) -> Result<Response> {
    let consumer = normalize_uuid(&consumer, "consumer_uuid")?;
    let found = app::consumer_allocations(&app, &ctx, &consumer).await?;
    let Some((c, allocs)) = found else {
        return Ok(axum::Json(json!({"allocations": {}})).into_response());
    };
    let mut by_rp: BTreeMap<String, (i64, Map<String, Value>)> = BTreeMap::new();
    for (a, g) in allocs {
        by_rp
            .entry(a.provider_uuid)
            .or_insert_with(|| (g, Map::new()))
            .1
            .insert(a.resource_class, a.used.into());
    }
    let allocations: Map<String, Value> = by_rp
        .into_iter()
        .map(|(rp, (g, r))| (rp, json!({"generation": g, "resources": r})))
        .collect();
    let mut body = json!({"allocations": allocations});
    if mv.at_least(12) {
        body["project_id"] = c.project_id.into();
        body["user_id"] = c.user_id.into();
    }
    Ok(with_last_modified(
        axum::Json(body).into_response(),
        mv,
        &c.updated_at,
    ))
}

/// Replaces a consumer's allocations (a list before 1.12, an object from
/// 1.12; `project_id`/`user_id` required from 1.8). 409 when capacity is
/// short or a generation changed.
#[utoipa::path(put, path = "/allocations/{consumer}", tag = "placement",
    params(("consumer" = String, Path)), request_body(content = Object),
    responses((status = 204), (status = 400, body = Object), (status = 409, body = Object)))]
async fn put_allocations(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(consumer): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<StatusCode> {
    let v = body_json(&app, &headers, body).await?;
    let claim = parse_claim(&consumer, &v, mv, &ctx)?;
    app::put_allocations(&app, &ctx, vec![claim]).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sets the allocations of several consumers at once (1.13).
#[utoipa::path(post, path = "/allocations", tag = "placement", request_body(content = Object),
    responses((status = 204), (status = 400, body = Object), (status = 409, body = Object)))]
async fn post_allocations(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<StatusCode> {
    need(mv, 13)?;
    let v = body_json(&app, &headers, body).await?;
    let o = obj(&v, "body")?;
    if o.is_empty() {
        return Err(invalid("{} does not have enough properties"));
    }
    let mut claims = Vec::new();
    for (consumer, entry) in o {
        // In a POST, an empty allocations object frees the consumer.
        let e = obj(entry, consumer)?;
        if e.get("allocations")
            .and_then(Value::as_object)
            .is_some_and(|m| m.is_empty())
        {
            only_keys(e, &["allocations", "project_id", "user_id"])?;
            claims.push(Claim {
                consumer_uuid: normalize_uuid(consumer, "consumer_uuid")?,
                project_id: str_field(e, "project_id")?.unwrap_or_default().to_owned(),
                user_id: str_field(e, "user_id")?.unwrap_or_default().to_owned(),
                consumer_generation: ConsumerGeneration::Unchecked,
                allocations: BTreeMap::new(),
            });
            continue;
        }
        claims.push(parse_claim(consumer, entry, mv, &ctx)?);
    }
    app::put_allocations(&app, &ctx, claims).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Frees a consumer's allocations (404 when it has none).
#[utoipa::path(delete, path = "/allocations/{consumer}", tag = "placement",
    params(("consumer" = String, Path)), responses((status = 204), (status = 404, body = Object)))]
async fn delete_allocations(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path(consumer): Path<String>,
) -> Result<StatusCode> {
    let consumer = normalize_uuid(&consumer, "consumer_uuid")?;
    app::delete_allocations(&app, &ctx, &consumer).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Usage of a project (and user) (1.9).
#[utoipa::path(get, path = "/usages", tag = "placement",
    params(("project_id" = String, Query), ("user_id" = Option<String>, Query)), responses((status = 200, body = Object)))]
async fn usages(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    OriginalUri(uri): OriginalUri,
) -> Result<Response> {
    need(mv, 9)?;
    let q = query_pairs(&uri);
    check_params(&q, &["project_id", "user_id"])?;
    let project = last(&q, "project_id").ok_or_else(|| {
        Error::bad_request("Invalid query string parameters: 'project_id' is a required property")
    })?;
    let u = app::project_usages(&app, &ctx, project, last(&q, "user_id")).await?;
    Ok(axum::Json(json!({"usages": u})).into_response())
}

// ---- allocation candidates -------------------------------------------------------------------------

fn candidates_json(cands: &[Candidate], requested: &[(String, i64)], mv: Mv) -> Value {
    let mut requests = Vec::new();
    let mut summaries = Map::new();
    for c in cands {
        let uuid = &c.provider.uuid;
        let resources: Map<String, Value> = requested
            .iter()
            .map(|(rc, n)| (rc.clone(), (*n).into()))
            .collect();
        if mv.at_least(12) {
            requests.push(json!({"allocations": {uuid.clone(): {"resources": resources}}}));
        } else {
            requests.push(json!({"allocations": [{"resource_provider": {"uuid": uuid}, "resources": resources}]}));
        }
        let mut res = Map::new();
        for inv in &c.inventories {
            if mv.at_least(27) || requested.iter().any(|(rc, _)| *rc == inv.resource_class) {
                res.insert(
                    inv.resource_class.clone(),
                    json!({
                        "capacity": inv.capacity(),
                        "used": c.usages.get(&inv.resource_class).copied().unwrap_or(0),
                    }),
                );
            }
        }
        let mut summary = json!({"resources": res});
        if mv.at_least(17) {
            summary["traits"] = json!(c.traits);
        }
        summaries.insert(uuid.clone(), summary);
    }
    json!({"allocation_requests": requests, "provider_summaries": summaries})
}

/// Providers that can hold a request (1.10): `resources`, `required`
/// (1.17, `!` from 1.22), `member_of` (1.21, repeatable from 1.24),
/// `limit` (1.16). Each candidate is a single provider.
#[utoipa::path(get, path = "/allocation_candidates", tag = "placement",
    params(("resources" = String, Query), ("required" = Option<String>, Query),
        ("member_of" = Option<String>, Query), ("limit" = Option<i64>, Query)),
    responses((status = 200, body = Object), (status = 400, body = Object)))]
async fn allocation_candidates(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    OriginalUri(uri): OriginalUri,
) -> Result<Response> {
    need(mv, 10)?;
    let q = query_pairs(&uri);
    let mut allowed = vec!["resources"];
    if mv.at_least(16) {
        allowed.push("limit");
    }
    if mv.at_least(17) {
        allowed.push("required");
    }
    if mv.at_least(21) {
        allowed.push("member_of");
    }
    check_params(&q, &allowed)?;
    let resources = parse_resources(last(&q, "resources").ok_or_else(|| {
        Error::bad_request("Invalid query string parameters: 'resources' is a required property")
    })?)?;
    let (required, forbidden) = parse_required(&all(&q, "required"), mv)?;
    let limit = match last(&q, "limit") {
        None => None,
        Some(l) => match l.parse::<i64>() {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                return Err(Error::bad_request(format!(
                    "Invalid query string parameters: '{l}' does not match '^[1-9][0-9]*$'"
                )));
            }
        },
    };
    let f = ProviderFilter {
        resources: resources.clone(),
        required,
        forbidden,
        member_of: parse_member_of(&all(&q, "member_of"), mv)?,
        limit,
        ..Default::default()
    };
    let cands = app::allocation_candidates(&app, &ctx, f).await?;
    Ok(axum::Json(candidates_json(&cands, &resources, mv)).into_response())
}

/// The OpenAPI document of this API.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Mica placement API", version = "1.24"),
    paths(
        root,
        list_providers,
        create_provider,
        get_provider,
        update_provider,
        delete_provider,
        get_inventories,
        put_inventories,
        create_inventory,
        delete_inventories,
        get_inventory,
        put_inventory,
        delete_inventory,
        provider_usages,
        provider_allocations,
        get_aggregates,
        put_aggregates,
        get_provider_traits,
        put_provider_traits,
        delete_provider_traits,
        list_resource_classes,
        create_resource_class,
        get_resource_class,
        put_resource_class,
        delete_resource_class,
        list_traits,
        get_trait,
        put_trait,
        delete_trait,
        get_allocations,
        put_allocations,
        post_allocations,
        delete_allocations,
        usages,
        allocation_candidates
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
