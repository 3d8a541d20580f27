//! Allocations, usages and allocation candidates.

use super::*;

// ---- allocations ----------------------------------------------------------------------------------

pub(super) fn parse_resources_object(v: &Value, what: &str) -> Result<BTreeMap<String, i64>> {
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
pub(super) fn parse_claim(
    consumer: &str,
    v: &Value,
    mv: Mv,
    ctx: &crate::context::Context,
) -> Result<Claim> {
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
pub(super) async fn get_allocations(
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
pub(super) async fn put_allocations(
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
pub(super) async fn post_allocations(
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
pub(super) async fn delete_allocations(
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
pub(super) async fn usages(
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

pub(super) fn candidates_json(cands: &[Candidate], requested: &[(String, i64)], mv: Mv) -> Value {
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
pub(super) async fn allocation_candidates(
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
