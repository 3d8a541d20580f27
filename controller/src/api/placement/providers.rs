//! Resource providers, their inventories, usages, allocations, aggregates
//! and traits.

use super::*;

pub(super) fn provider_json(p: &Provider, mv: Mv) -> Value {
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

/// Lists resource providers.
#[utoipa::path(get, path = "/resource_providers", tag = "placement",
    params(("name" = Option<String>, Query), ("uuid" = Option<String>, Query),
        ("member_of" = Option<String>, Query, description = "1.3; `in:a,b`; repeatable from 1.24"),
        ("resources" = Option<String>, Query, description = "1.4; `VCPU:2,MEMORY_MB:512`"),
        ("in_tree" = Option<String>, Query, description = "1.14"),
        ("required" = Option<String>, Query, description = "1.18; `!TRAIT` from 1.22")),
    responses((status = 200, body = Object), (status = 400, body = Object)))]
pub(super) async fn list_providers(
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
pub(super) async fn create_provider(
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
pub(super) async fn get_provider(
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
pub(super) async fn update_provider(
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
pub(super) async fn delete_provider(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path(uuid): Path<String>,
) -> Result<StatusCode> {
    app::delete_provider(&app, &ctx, &uuid).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- inventories --------------------------------------------------------------------------

pub(super) fn inventory_json(i: &Inventory) -> Value {
    json!({
        "total": i.total,
        "reserved": i.reserved,
        "min_unit": i.min_unit,
        "max_unit": i.max_unit,
        "step_size": i.step_size,
        "allocation_ratio": i.allocation_ratio,
    })
}

pub(super) fn parse_inventory(
    rc: &str,
    o: &Map<String, Value>,
    allowed: &[&str],
) -> Result<Inventory> {
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

pub(super) const INVENTORY_FIELDS: [&str; 7] = [
    "resource_provider_generation",
    "total",
    "reserved",
    "min_unit",
    "max_unit",
    "step_size",
    "allocation_ratio",
];

pub(super) fn inventories_body(generation: i64, invs: &[Inventory]) -> Value {
    let map: Map<String, Value> = invs
        .iter()
        .map(|i| (i.resource_class.clone(), inventory_json(i)))
        .collect();
    json!({"inventories": map, "resource_provider_generation": generation})
}

/// Shows a provider's inventories.
#[utoipa::path(get, path = "/resource_providers/{uuid}/inventories", tag = "placement",
    params(("uuid" = String, Path)), responses((status = 200, body = Object), (status = 404, body = Object)))]
pub(super) async fn get_inventories(
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
pub(super) async fn put_inventories(
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
pub(super) async fn create_inventory(
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
pub(super) async fn delete_inventories(
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
pub(super) async fn get_inventory(
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
pub(super) async fn put_inventory(
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
pub(super) async fn delete_inventory(
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
pub(super) async fn provider_usages(
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
pub(super) async fn provider_allocations(
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
pub(super) async fn get_aggregates(
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
pub(super) async fn put_aggregates(
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
pub(super) async fn get_provider_traits(
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
pub(super) async fn put_provider_traits(
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
pub(super) async fn delete_provider_traits(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(uuid): Path<String>,
) -> Result<StatusCode> {
    need(mv, 6)?;
    app::clear_provider_traits(&app, &ctx, &uuid).await?;
    Ok(StatusCode::NO_CONTENT)
}
