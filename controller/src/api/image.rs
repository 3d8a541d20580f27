//! Image API (Glance v2 subset): thin handlers over [`crate::app::images`].

use axum::Router;
use axum::body::Body;
use axum::extract::{OriginalUri, Path, Request, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::{Auth, ErrorStyle, JsonBody, RequestId, State, base_url, query_pairs, render_error};
use crate::app::ServiceKind;
use crate::app::images::{self as app, PatchOp};
use crate::db::images::{Image, Member};
use crate::error::{Error, Kind, Result};

/// Content type of image JSON patches.
pub const PATCH_MEDIA_TYPE: &str = "application/openstack-images-v2.1-json-patch";

/// The image router.
pub fn router(app: State) -> Router {
    Router::new()
        .route("/", get(versions))
        .route("/versions", get(versions_ok))
        .route("/v2", get(versions_ok))
        .route("/v2/", get(versions_ok))
        .route("/v2/schemas/image", get(schema_image))
        .route("/v2/schemas/images", get(schema_images))
        .route("/v2/schemas/member", get(schema_member))
        .route("/v2/schemas/members", get(schema_members))
        .route("/v2/schemas/metadefs/{name}", get(schema_metadefs))
        .route("/v2/images", get(list_images).post(create_image))
        .route(
            "/v2/images/{id}",
            get(show_image).patch(update_image).delete(delete_image),
        )
        .route("/v2/images/{id}/file", put(upload).get(download))
        .route(
            "/v2/images/{id}/tags/{tag}",
            put(add_tag).delete(remove_tag),
        )
        .route(
            "/v2/images/{id}/members",
            get(list_members).post(add_member),
        )
        .route(
            "/v2/images/{id}/members/{member}",
            get(get_member).put(update_member).delete(delete_member),
        )
        .layer(middleware::from_fn(glance_errors))
        .with_state(app)
}

async fn glance_errors(req: Request, next: Next) -> Response {
    let rid = req.extensions().get::<RequestId>().map(|r| r.0.clone());
    let resp = next.run(req).await;
    render_error(ErrorStyle::Nova, resp, rid, false).await
}

// ---- versions and schemas ----------------------------------------------------------

/// The versions this API advertises: v2.7 (hidden images and multihash)
/// and the earlier minor versions.
fn versions_doc(base: &str) -> Value {
    let mut out = Vec::new();
    for minor in (0..=7).rev() {
        out.push(json!({
            "id": format!("v2.{minor}"),
            "status": if minor == 7 { "CURRENT" } else { "SUPPORTED" },
            "links": [{"rel": "self", "href": format!("{base}/v2/")}],
        }));
    }
    json!({ "versions": out })
}

/// Lists image API versions (300).
#[utoipa::path(get, path = "/", tag = "image", responses((status = 300, body = Object)))]
async fn versions(AxState(app): AxState<State>, headers: HeaderMap) -> Response {
    let base = base_url(&app, ServiceKind::Image, &headers);
    (
        StatusCode::MULTIPLE_CHOICES,
        axum::Json(versions_doc(&base)),
    )
        .into_response()
}

/// Lists image API versions (200).
#[utoipa::path(get, path = "/versions", tag = "image", responses((status = 200, body = Object)))]
async fn versions_ok(AxState(app): AxState<State>, headers: HeaderMap) -> Response {
    let base = base_url(&app, ServiceKind::Image, &headers);
    axum::Json(versions_doc(&base)).into_response()
}

fn image_schema() -> Value {
    let s = |t: Value, d: &str| json!({"type": t, "description": d});
    let ro = |t: Value, d: &str| json!({"type": t, "description": d, "readOnly": true});
    json!({
        "name": "image",
        "additionalProperties": {"type": "string"},
        "links": [
            {"href": "{self}", "rel": "self"},
            {"href": "{file}", "rel": "enclosure"},
            {"href": "{schema}", "rel": "describedby"}
        ],
        "properties": {
            "id": {"type": "string", "description": "An identifier for the image",
                   "pattern": "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$"},
            "name": {"type": ["null", "string"], "maxLength": 255, "description": "Descriptive name for the image"},
            "status": {"type": "string", "readOnly": true, "description": "Status of the image",
                       "enum": ["queued", "saving", "active", "killed", "deleted", "uploading", "importing", "pending_delete", "deactivated"]},
            "visibility": {"type": "string", "enum": ["community", "public", "private", "shared"], "description": "Scope of image accessibility"},
            "protected": s(json!("boolean"), "If true, image will not be deletable."),
            "os_hidden": s(json!("boolean"), "If true, image will not appear in default image list response."),
            "checksum": ro(json!(["null", "string"]), "md5 hash of image contents."),
            "os_hash_algo": ro(json!(["null", "string"]), "Algorithm to calculate the os_hash_value"),
            "os_hash_value": ro(json!(["null", "string"]), "Hexdigest of the image contents using the algorithm specified by the os_hash_algo"),
            "owner": {"type": ["null", "string"], "maxLength": 255, "description": "Owner of the image"},
            "size": ro(json!(["null", "integer"]), "Size of image file in bytes"),
            "virtual_size": ro(json!(["null", "integer"]), "Virtual size of image in bytes"),
            "container_format": {"type": ["null", "string"], "enum": [null, "bare"], "description": "Format of the container"},
            "disk_format": {"type": ["null", "string"], "enum": [null, "raw", "qcow2"], "description": "Format of the disk"},
            "created_at": ro(json!("string"), "Date and time of image registration"),
            "updated_at": ro(json!("string"), "Date and time of the last image modification"),
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 255}, "description": "List of strings related to the image"},
            "self": ro(json!("string"), "An image self url"),
            "file": ro(json!("string"), "An image file url"),
            "schema": ro(json!("string"), "An image schema url"),
            "min_ram": s(json!("integer"), "Amount of ram (in MB) required to boot image."),
            "min_disk": s(json!("integer"), "Amount of disk space (in GB) required to boot image."),
            "kernel_id": {"type": ["null", "string"], "description": "ID of image stored in Glance that should be used as the kernel when booting an AMI-style image."},
            "ramdisk_id": {"type": ["null", "string"], "description": "ID of image stored in Glance that should be used as the ramdisk when booting an AMI-style image."},
            "architecture": s(json!("string"), "Operating system architecture"),
            "os_distro": s(json!("string"), "Common name of operating system distribution"),
            "os_version": s(json!("string"), "Operating system version as specified by the distributor"),
        }
    })
}

/// The image schema.
#[utoipa::path(get, path = "/v2/schemas/image", tag = "image", responses((status = 200, body = Object)))]
async fn schema_image() -> Response {
    axum::Json(image_schema()).into_response()
}

/// The image list schema.
#[utoipa::path(get, path = "/v2/schemas/images", tag = "image", responses((status = 200, body = Object)))]
async fn schema_images() -> Response {
    axum::Json(json!({
        "name": "images",
        "properties": {
            "images": {"type": "array", "items": image_schema()},
            "schema": {"type": "string"},
            "first": {"type": "string"},
            "next": {"type": "string"},
        },
        "links": [
            {"href": "{first}", "rel": "first"},
            {"href": "{next}", "rel": "next"},
            {"href": "{schema}", "rel": "describedby"}
        ]
    }))
    .into_response()
}

fn member_schema() -> Value {
    json!({
        "name": "member",
        "properties": {
            "image_id": {"type": "string"},
            "member_id": {"type": "string"},
            "status": {"type": "string", "enum": ["pending", "accepted", "rejected"]},
            "created_at": {"type": "string"},
            "updated_at": {"type": "string"},
            "schema": {"type": "string", "readOnly": true},
        }
    })
}

/// The member schema.
#[utoipa::path(get, path = "/v2/schemas/member", tag = "image", responses((status = 200, body = Object)))]
async fn schema_member() -> Response {
    axum::Json(member_schema()).into_response()
}

/// The member list schema.
#[utoipa::path(get, path = "/v2/schemas/members", tag = "image", responses((status = 200, body = Object)))]
async fn schema_members() -> Response {
    axum::Json(json!({
        "name": "members",
        "properties": {"members": {"type": "array", "items": member_schema()}, "schema": {"type": "string"}},
        "links": [{"href": "{schema}", "rel": "describedby"}]
    }))
    .into_response()
}

/// Metadata definition schemas: Mica has no metadefs; glanceclient only
/// needs the documents to exist.
#[utoipa::path(get, path = "/v2/schemas/metadefs/{name}", tag = "image",
    params(("name" = String, Path)), responses((status = 200, body = Object)))]
async fn schema_metadefs(Path(name): Path<String>) -> Response {
    axum::Json(json!({"name": name, "properties": {}, "additionalProperties": false}))
        .into_response()
}

// ---- images -------------------------------------------------------------------------

/// An image as Glance shows it (core attributes plus extra properties as
/// top-level string keys).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ImageDoc)]
pub struct ImageDoc {
    /// Id.
    pub id: String,
    /// Name.
    pub name: Option<String>,
    /// `queued`, `saving`, `active`, …
    pub status: String,
    /// `public`, `private`, `shared`, `community`.
    pub visibility: String,
    /// Not deletable when true.
    pub protected: bool,
    /// Left out of default listings when true.
    pub os_hidden: bool,
    /// MD5 of the data.
    pub checksum: Option<String>,
    /// `sha512`.
    pub os_hash_algo: Option<String>,
    /// SHA-512 of the data.
    pub os_hash_value: Option<String>,
    /// Owning project.
    pub owner: Option<String>,
    /// Bytes.
    pub size: Option<i64>,
    /// Disk size.
    pub virtual_size: Option<i64>,
    /// `bare`.
    pub container_format: Option<String>,
    /// `raw`, `qcow2`.
    pub disk_format: Option<String>,
    /// Created.
    pub created_at: String,
    /// Updated.
    pub updated_at: String,
    /// Tags.
    pub tags: Vec<String>,
    /// `/v2/images/{id}`.
    #[serde(rename = "self")]
    pub self_: String,
    /// `/v2/images/{id}/file`.
    pub file: String,
    /// `/v2/schemas/image`.
    pub schema: String,
    /// Minimum RAM (MiB).
    pub min_ram: i64,
    /// Minimum disk (GiB).
    pub min_disk: i64,
}

/// The JSON of an image.
pub fn image_json(img: &Image) -> Value {
    let r = &img.row;
    let doc = ImageDoc {
        id: r.id.clone(),
        name: r.name.clone(),
        status: r.status.clone(),
        visibility: r.visibility.clone(),
        protected: r.protected,
        os_hidden: r.os_hidden,
        checksum: r.checksum.clone(),
        os_hash_algo: r.os_hash_algo.clone(),
        os_hash_value: r.os_hash_value.clone(),
        owner: r.owner.clone(),
        size: r.size,
        virtual_size: r.virtual_size,
        container_format: r.container_format.clone(),
        disk_format: r.disk_format.clone(),
        created_at: r.created_at.seconds(),
        updated_at: r.updated_at.seconds(),
        tags: img.tags.clone(),
        self_: format!("/v2/images/{}", r.id),
        file: format!("/v2/images/{}/file", r.id),
        schema: "/v2/schemas/image".into(),
        min_ram: r.min_ram,
        min_disk: r.min_disk,
    };
    let mut v = serde_json::to_value(doc).expect("image docs serialize");
    if let Value::Object(o) = &mut v {
        for (k, val) in &img.properties {
            o.entry(k.clone())
                .or_insert_with(|| Value::String(val.clone()));
        }
    }
    v
}

fn image_response(status: StatusCode, img: &Image) -> Response {
    (status, axum::Json(image_json(img))).into_response()
}

/// Lists images visible to the caller, newest first, paged.
#[utoipa::path(get, path = "/v2/images", tag = "image",
    params(("limit" = Option<i64>, Query), ("marker" = Option<String>, Query), ("name" = Option<String>, Query),
        ("id" = Option<String>, Query, description = "`in:a,b`"), ("visibility" = Option<String>, Query),
        ("status" = Option<String>, Query), ("owner" = Option<String>, Query), ("tag" = Option<String>, Query),
        ("member_status" = Option<String>, Query), ("sort_key" = Option<String>, Query),
        ("sort_dir" = Option<String>, Query), ("sort" = Option<String>, Query)),
    responses((status = 200, description = "`images`, `first`, `schema`, and `next` when there may be more", body = Object),
        (status = 400, body = Object)))]
async fn list_images(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    OriginalUri(uri): OriginalUri,
) -> Result<Response> {
    let params = query_pairs(&uri);
    let page = app::list_images(&app, &ctx, &params).await?;
    let mut body = json!({
        "images": page.images.iter().map(image_json).collect::<Vec<_>>(),
        "first": "/v2/images",
        "schema": "/v2/schemas/images",
    });
    if let Some(m) = page.next_marker {
        // The same query with the marker replaced.
        let mut q: Vec<String> = params
            .iter()
            .filter(|(k, _)| k != "marker")
            .map(|(k, v)| format!("{}={}", crate::api::encode(k), crate::api::encode(v)))
            .collect();
        q.push(format!("marker={m}"));
        body["next"] = format!("/v2/images?{}", q.join("&")).into();
    }
    Ok(axum::Json(body).into_response())
}

/// Creates an image record (`queued`); data comes with `PUT …/file`.
#[utoipa::path(post, path = "/v2/images", tag = "image",
    request_body(content = Object, description = "Core attributes and extra properties (strings)"),
    responses((status = 201, body = ImageDoc), (status = 400, body = Object), (status = 403, body = Object),
        (status = 409, body = Object)))]
async fn create_image(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    let Value::Object(map) = body else {
        return Err(Error::bad_request(
            "The request body must be a JSON object.",
        ));
    };
    let img = app::create_image(&app, &ctx, map).await?;
    let mut resp = image_response(StatusCode::CREATED, &img);
    if let Ok(v) = HeaderValue::from_str(&format!("/v2/images/{}", img.row.id)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// Shows an image.
#[utoipa::path(get, path = "/v2/images/{id}", tag = "image",
    params(("id" = String, Path)), responses((status = 200, body = ImageDoc), (status = 404, body = Object)))]
async fn show_image(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<Response> {
    let img = app::get_image(&app, &ctx, &id).await?;
    Ok(image_response(StatusCode::OK, &img))
}

/// Updates an image with a JSON patch.
#[utoipa::path(patch, path = "/v2/images/{id}", tag = "image",
    params(("id" = String, Path)),
    request_body(content = Vec<PatchOp>, content_type = "application/openstack-images-v2.1-json-patch"),
    responses((status = 200, body = ImageDoc), (status = 400, body = Object), (status = 403, body = Object),
        (status = 409, body = Object), (status = 415, body = Object)))]
async fn update_image(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with(PATCH_MEDIA_TYPE) {
        return Err(Error::new(
            Kind::UnsupportedMediaType,
            format!("Unsupported Content-Type: use {PATCH_MEDIA_TYPE}"),
        ));
    }
    let bytes = super::read_limited(body, app.config.api.max_json_body_bytes).await?;
    let ops: Vec<PatchOp> = super::parse_json(&bytes)?;
    let img = app::update_image(&app, &ctx, &id, ops).await?;
    Ok(image_response(StatusCode::OK, &img))
}

/// Deletes an image and its data.
#[utoipa::path(delete, path = "/v2/images/{id}", tag = "image",
    params(("id" = String, Path)), responses((status = 204), (status = 403, body = Object), (status = 404, body = Object)))]
async fn delete_image(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    app::delete_image(&app, &ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Uploads image data (streamed; `queued` → `active`).
#[utoipa::path(put, path = "/v2/images/{id}/file", tag = "image",
    params(("id" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 204), (status = 400, body = Object), (status = 409, body = Object),
        (status = 413, body = Object)))]
async fn upload(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let stream = body.into_data_stream();
    match app::upload(&app, &ctx, &id, length, stream).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        // (`request_context` adds `Connection: close`: the rest of the body
        // may be unread.)
        Err(e) => e.into_response(),
    }
}

/// Downloads image data (204 when the image has none).
#[utoipa::path(get, path = "/v2/images/{id}/file", tag = "image",
    params(("id" = String, Path)),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>,
        headers(("Content-MD5" = String, description = "The image checksum"))),
        (status = 204, description = "No data"), (status = 404, body = Object)))]
async fn download(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<Response> {
    let Some(d) = app::download(&app, &ctx, &id).await? else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let stream = tokio_util::io::ReaderStream::with_capacity(d.file, 256 * 1024);
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(d.size));
    if let Some(c) = d.checksum
        && let Ok(v) = HeaderValue::from_str(&c)
    {
        h.insert("content-md5", v);
    }
    Ok(resp)
}

/// Adds a tag.
#[utoipa::path(put, path = "/v2/images/{id}/tags/{tag}", tag = "image",
    params(("id" = String, Path), ("tag" = String, Path)), responses((status = 204), (status = 404, body = Object)))]
async fn add_tag(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path((id, tag)): Path<(String, String)>,
) -> Result<StatusCode> {
    app::add_tag(&app, &ctx, &id, &tag).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a tag.
#[utoipa::path(delete, path = "/v2/images/{id}/tags/{tag}", tag = "image",
    params(("id" = String, Path), ("tag" = String, Path)), responses((status = 204), (status = 404, body = Object)))]
async fn remove_tag(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path((id, tag)): Path<(String, String)>,
) -> Result<StatusCode> {
    app::remove_tag(&app, &ctx, &id, &tag).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- members -----------------------------------------------------------------------------

/// `POST /v2/images/{id}/members` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct MemberCreate {
    /// The project to share with.
    pub member: String,
}

/// `PUT /v2/images/{id}/members/{member}` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct MemberUpdate {
    /// `pending`, `accepted`, `rejected`.
    pub status: String,
}

fn member_json(m: &Member) -> Value {
    json!({
        "image_id": m.image_id, "member_id": m.member, "status": m.status,
        "created_at": m.created_at.seconds(), "updated_at": m.updated_at.seconds(),
        "schema": "/v2/schemas/member",
    })
}

/// Lists an image's members.
#[utoipa::path(get, path = "/v2/images/{id}/members", tag = "image",
    params(("id" = String, Path)), responses((status = 200, body = Object)))]
async fn list_members(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<Response> {
    let ms = app::list_members(&app, &ctx, &id).await?;
    Ok(axum::Json(json!({
        "members": ms.iter().map(member_json).collect::<Vec<_>>(),
        "schema": "/v2/schemas/members",
    }))
    .into_response())
}

/// Shares an image with a project.
#[utoipa::path(post, path = "/v2/images/{id}/members", tag = "image", request_body = MemberCreate,
    params(("id" = String, Path)), responses((status = 200, body = Object), (status = 409, body = Object)))]
async fn add_member(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<MemberCreate>,
) -> Result<Response> {
    let m = app::add_member(&app, &ctx, &id, &b.member).await?;
    Ok(axum::Json(member_json(&m)).into_response())
}

/// Shows one member.
#[utoipa::path(get, path = "/v2/images/{id}/members/{member}", tag = "image",
    params(("id" = String, Path), ("member" = String, Path)), responses((status = 200, body = Object)))]
async fn get_member(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path((id, member)): Path<(String, String)>,
) -> Result<Response> {
    let m = app::get_member(&app, &ctx, &id, &member).await?;
    Ok(axum::Json(member_json(&m)).into_response())
}

/// Accepts or rejects a shared image (by the member).
#[utoipa::path(put, path = "/v2/images/{id}/members/{member}", tag = "image", request_body = MemberUpdate,
    params(("id" = String, Path), ("member" = String, Path)), responses((status = 200, body = Object)))]
async fn update_member(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path((id, member)): Path<(String, String)>,
    JsonBody(b): JsonBody<MemberUpdate>,
) -> Result<Response> {
    let m = app::set_member_status(&app, &ctx, &id, &member, &b.status).await?;
    Ok(axum::Json(member_json(&m)).into_response())
}

/// Stops sharing an image with a project.
#[utoipa::path(delete, path = "/v2/images/{id}/members/{member}", tag = "image",
    params(("id" = String, Path), ("member" = String, Path)), responses((status = 204)))]
async fn delete_member(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path((id, member)): Path<(String, String)>,
) -> Result<StatusCode> {
    app::delete_member(&app, &ctx, &id, &member).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The OpenAPI document of this API.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Mica image API (Glance v2 subset)", version = "2.7"),
    paths(
        versions,
        versions_ok,
        schema_image,
        schema_images,
        schema_member,
        schema_members,
        schema_metadefs,
        list_images,
        create_image,
        show_image,
        update_image,
        delete_image,
        upload,
        download,
        add_tag,
        remove_tag,
        list_members,
        add_member,
        get_member,
        update_member,
        delete_member
    ),
    components(schemas(ImageDoc, PatchOp, MemberCreate, MemberUpdate))
)]
pub struct ImageApi;
