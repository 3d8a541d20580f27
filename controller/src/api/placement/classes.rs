//! Resource classes and traits.

use super::*;

// ---- resource classes and traits ------------------------------------------------------------------

pub(super) fn class_json(name: &str) -> Value {
    json!({"name": name, "links": [{"rel": "self", "href": format!("/resource_classes/{name}")}]})
}

/// Lists resource classes (1.2).
#[utoipa::path(get, path = "/resource_classes", tag = "placement", responses((status = 200, body = Object)))]
pub(super) async fn list_resource_classes(
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
pub(super) async fn create_resource_class(
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
pub(super) async fn get_resource_class(
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
pub(super) async fn put_resource_class(
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
pub(super) async fn delete_resource_class(
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
pub(super) async fn list_traits(
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
pub(super) async fn get_trait(
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
pub(super) async fn put_trait(
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
pub(super) async fn delete_trait(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    mv: Mv,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    need(mv, 6)?;
    app::delete_trait(&app, &ctx, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
