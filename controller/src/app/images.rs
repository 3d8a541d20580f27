//! Images: metadata rules (visibility, properties, JSON patch) and the data
//! store (streamed uploads, downloads).
//!
//! # Upload
//!
//! `PUT /v2/images/{id}/file` moves the image `queued → saving` with a
//! compare-and-set, so one upload at a time. The body is streamed, never held
//! whole: chunks go through bounded channels to two blocking threads, one
//! writing a temporary file (`.upload-<id>-<random>` in the store folder) and
//! computing MD5, the other SHA-512. The size limit (`[image]
//! max_image_size_bytes`) is checked against `Content-Length` before reading
//! and against the running count while reading. When the body is complete the
//! file is synced, a qcow2 image's header is validated, the file is renamed to
//! its final name (`<id>`), and the image becomes `active` with `size`,
//! `checksum`, `os_hash_value` and `virtual_size`. Any failure — the client
//! going away, too much data, a bad header — deletes the temporary file and
//! puts the image back to `queued`, so nothing half-written is ever visible.
//! A controller killed mid-upload leaves a temporary file; the next start of
//! an API process removes it and requeues its image. The file is locked
//! (`flock`) while its upload runs, so a start never takes the file of an
//! upload another API process on the same store is receiving.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use md5::Digest;
use serde_json::{Map, Value};

use super::App;
use crate::context::Context;
use crate::db::Timestamp;
use crate::db::images::{
    self as store, Image, ImageQuery, ImageRow, Member, SortKey, Viewer, VisibilityFilter,
};
use crate::error::{Error, Kind, Result};
use crate::policy::Target;

/// Disk formats Mica can boot.
pub const DISK_FORMATS: [&str; 2] = ["raw", "qcow2"];
/// Container formats Mica accepts.
pub const CONTAINER_FORMATS: [&str; 1] = ["bare"];
/// Visibility values.
pub const VISIBILITIES: [&str; 4] = ["public", "private", "shared", "community"];

/// Attributes the server owns; clients can't set or change them.
pub const READ_ONLY: [&str; 14] = [
    "status",
    "checksum",
    "size",
    "virtual_size",
    "created_at",
    "updated_at",
    "self",
    "file",
    "schema",
    "direct_url",
    "locations",
    "os_hash_algo",
    "os_hash_value",
    "stores",
];

/// Core attributes clients may set (everything else is an extra property).
pub const CORE: [&str; 10] = [
    "id",
    "name",
    "visibility",
    "protected",
    "os_hidden",
    "disk_format",
    "container_format",
    "min_disk",
    "min_ram",
    "owner",
];

// ---- the data store -------------------------------------------------------------

/// The folder holding image data.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

const TEMP_PREFIX: &str = ".upload-";

impl Store {
    /// Opens (creating when missing) the store folder.
    pub fn open(dir: &str) -> Result<Store> {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::internal(format!("creating image store {}", dir.display()), e))?;
        Ok(Store { dir })
    }

    /// The store folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where an image's data lives.
    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    fn temp_path(&self, id: &str) -> PathBuf {
        let mut r = [0u8; 8];
        getrandom::fill(&mut r).expect("the OS random source works");
        self.dir
            .join(format!("{TEMP_PREFIX}{id}-{}", hex::encode(r)))
    }

    /// Creates an upload's temporary file, locked (`flock`) for as long as
    /// either returned handle (the same open file) is open: the mark of an
    /// upload in progress, which [`Store::sweep_temp_files`] leaves alone.
    fn create_temp(&self, id: &str) -> Result<(PathBuf, std::fs::File, std::fs::File)> {
        let temp = self.temp_path(id);
        let failed = |what: &str, e: std::io::Error| {
            let _ = std::fs::remove_file(&temp);
            Error::internal(format!("{what} {}", temp.display()), e)
        };
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|e| Error::internal(format!("creating {}", temp.display()), e))?;
        file.try_lock()
            .map_err(|e| failed("locking", std::io::Error::from(e)))?;
        let lock = file.try_clone().map_err(|e| failed("cloning", e))?;
        Ok((temp, file, lock))
    }

    /// Removes temporary files left by a killed controller; returns the ids of
    /// the images they belonged to. A file some process still holds locked
    /// is an upload in progress (another API process on this store) and is
    /// kept.
    pub fn sweep_temp_files(&self) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(TEMP_PREFIX) else {
                continue;
            };
            let file = match std::fs::File::open(entry.path()) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => continue,
                Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
            }
            // `<uuid>-<16 hex>`
            if let Some((id, _)) = rest.rsplit_once('-') {
                ids.push(id.to_owned());
            }
            std::fs::remove_file(entry.path())?;
        }
        Ok(ids)
    }
}

/// Called at start: forgets uploads a previous process was killed in.
pub async fn recover_interrupted_uploads(app: &App) -> Result<u64> {
    let ids = app.images.sweep_temp_files()?;
    if ids.is_empty() {
        return Ok(0);
    }
    store::requeue(app.db.pool(), ids).await
}

// ---- visibility ---------------------------------------------------------------------

fn not_found(id: &str) -> Error {
    Error::not_found(format!("No image found with ID {id}"))
}

async fn is_member(app: &App, image_id: &str, project: &str) -> Result<bool> {
    Ok(store::get_member(app.db.pool(), image_id, project)
        .await?
        .is_some())
}

/// Whether `ctx` can see the image: admins all; everyone public and community
/// images; owners theirs; members shared ones.
async fn visible(app: &App, ctx: &Context, row: &ImageRow) -> Result<bool> {
    if ctx.is_admin() || matches!(row.visibility.as_str(), "public" | "community") {
        return Ok(true);
    }
    let Some(p) = ctx.project_id() else {
        return Ok(false);
    };
    if row.owner.as_deref() == Some(p) {
        return Ok(true);
    }
    if row.visibility == "shared" {
        return is_member(app, &row.id, p).await;
    }
    Ok(false)
}

/// An image `ctx` can see, or 404.
pub async fn get_image(app: &App, ctx: &Context, id: &str) -> Result<Image> {
    app.policy
        .enforce("image:get_image", ctx, Target::default())?;
    let mut conn = app.db.pool().acquire().await?;
    let img = store::get_image(&mut conn, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    // (The visibility check may take a connection of its own.)
    drop(conn);
    if !visible(app, ctx, &img.row).await? {
        return Err(not_found(id));
    }
    Ok(img)
}

fn owner_target(img: &ImageRow) -> Target<'_> {
    Target {
        project_id: img.owner.as_deref(),
        ..Target::default()
    }
}

// ---- validation of attributes -----------------------------------------------------------

fn forbidden_attr(name: &str) -> Error {
    Error::forbidden(format!("Attribute '{name}' is read-only."))
}

fn reserved(name: &str) -> bool {
    READ_ONLY.contains(&name) || name.starts_with("os_glance")
}

fn want_str(v: &Value, field: &str) -> Result<Option<String>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        _ => Err(Error::bad_request(format!(
            "Invalid value for '{field}': expected a string."
        ))),
    }
}

fn want_bool(v: &Value, field: &str) -> Result<bool> {
    match v {
        Value::Bool(b) => Ok(*b),
        _ => Err(Error::bad_request(format!(
            "Invalid value for '{field}': expected a boolean."
        ))),
    }
}

fn want_count(v: &Value, field: &str) -> Result<i64> {
    match v.as_i64() {
        Some(n) if n >= 0 => Ok(n),
        _ => Err(Error::bad_request(format!(
            "Invalid value for '{field}': expected a non-negative integer."
        ))),
    }
}

fn want_enum(v: &Value, field: &str, allowed: &[&str]) -> Result<Option<String>> {
    match want_str(v, field)? {
        None => Ok(None),
        Some(s) if allowed.contains(&s.as_str()) => Ok(Some(s)),
        Some(s) => Err(Error::bad_request(format!(
            "Invalid value '{s}' for '{field}': must be one of {}.",
            allowed.join(", ")
        ))),
    }
}

fn check_tag(t: &str) -> Result<()> {
    if t.is_empty() || t.len() > 255 || t.contains('/') || t.contains(',') {
        return Err(Error::bad_request(format!(
            "Invalid tag '{t}': 1 to 255 characters, no '/' or ','."
        )));
    }
    Ok(())
}

/// Sets one attribute of `img` from a JSON value (create and patch share it).
/// `None` removes an extra property.
fn set_attr(img: &mut Image, name: &str, value: &Value) -> Result<()> {
    let r = &mut img.row;
    match name {
        "name" => {
            let n = want_str(value, name)?;
            if n.as_ref().is_some_and(|n| n.len() > 255) {
                return Err(Error::bad_request(
                    "Invalid value for 'name': longer than 255 characters.",
                ));
            }
            r.name = n;
        }
        "visibility" => {
            r.visibility = want_enum(value, name, &VISIBILITIES)?
                .ok_or_else(|| Error::bad_request("Invalid value for 'visibility'."))?
        }
        "protected" => r.protected = want_bool(value, name)?,
        "os_hidden" => r.os_hidden = want_bool(value, name)?,
        "disk_format" => r.disk_format = want_enum(value, name, &DISK_FORMATS)?,
        "container_format" => r.container_format = want_enum(value, name, &CONTAINER_FORMATS)?,
        "min_disk" => r.min_disk = want_count(value, name)?,
        "min_ram" => r.min_ram = want_count(value, name)?,
        "owner" => r.owner = want_str(value, name)?,
        "tags" => {
            let Value::Array(items) = value else {
                return Err(Error::bad_request(
                    "Invalid value for 'tags': expected a list.",
                ));
            };
            let mut tags = Vec::new();
            for t in items {
                let t = want_str(t, "tags")?
                    .ok_or_else(|| Error::bad_request("Invalid value for 'tags'."))?;
                check_tag(&t)?;
                tags.push(t);
            }
            tags.sort();
            tags.dedup();
            img.tags = tags;
        }
        "id" => return Err(forbidden_attr(name)),
        _ if reserved(name) => return Err(forbidden_attr(name)),
        _ => {
            if name.is_empty() || name.len() > 255 {
                return Err(Error::bad_request(format!(
                    "Invalid property name '{name}': 1 to 255 characters."
                )));
            }
            match value {
                Value::Null => {
                    img.properties.remove(name);
                }
                Value::String(s) if s.len() <= 65535 => {
                    img.properties.insert(name.to_owned(), s.clone());
                }
                _ => {
                    return Err(Error::bad_request(format!(
                        "Invalid value for property '{name}': expected a string of at most 65535 characters."
                    )));
                }
            }
        }
    }
    Ok(())
}

fn check_quotas(app: &App, img: &Image) -> Result<()> {
    if img.properties.len() > app.config.image.max_properties as usize {
        return Err(Error::too_large(format!(
            "Maximum number of properties exceeded ({}).",
            app.config.image.max_properties
        )));
    }
    if img.tags.len() > app.config.image.max_tags as usize {
        return Err(Error::too_large(format!(
            "Maximum number of tags exceeded ({}).",
            app.config.image.max_tags
        )));
    }
    Ok(())
}

/// Policy for changes of visibility and owner, comparing `before` and `after`.
fn check_sensitive_changes(
    app: &App,
    ctx: &Context,
    before: &ImageRow,
    after: &ImageRow,
) -> Result<()> {
    if after.visibility != before.visibility {
        match after.visibility.as_str() {
            "public" => app
                .policy
                .enforce("image:publicize_image", ctx, owner_target(after))?,
            "community" => {
                app.policy
                    .enforce("image:communitize_image", ctx, owner_target(after))?
            }
            _ => {}
        }
    }
    if after.owner != before.owner {
        app.policy
            .enforce("image:set_image_owner", ctx, owner_target(after))?;
    }
    Ok(())
}

// ---- create, update, delete -------------------------------------------------------------------

/// Creates an image (`POST /v2/images`) from the request's JSON object.
pub async fn create_image(app: &App, ctx: &Context, body: Map<String, Value>) -> Result<Image> {
    app.policy
        .enforce("image:add_image", ctx, Target::default())?;
    let project = ctx
        .project_id()
        .ok_or_else(|| Error::forbidden("Creating an image needs a project-scoped token."))?;
    let now = Timestamp::now();
    let id = match body.get("id") {
        None | Some(Value::Null) => uuid::Uuid::new_v4().to_string(),
        Some(Value::String(s)) => uuid::Uuid::parse_str(s)
            .map_err(|_| Error::bad_request(format!("Invalid value '{s}' for 'id': not a UUID.")))?
            .hyphenated()
            .to_string(),
        Some(_) => {
            return Err(Error::bad_request(
                "Invalid value for 'id': expected a string.",
            ));
        }
    };
    let template = ImageRow {
        id: id.clone(),
        name: None,
        owner: Some(project.to_owned()),
        status: "queued".into(),
        visibility: "shared".into(),
        protected: false,
        os_hidden: false,
        disk_format: None,
        container_format: None,
        size: None,
        virtual_size: None,
        checksum: None,
        os_hash_algo: None,
        os_hash_value: None,
        min_disk: 0,
        min_ram: 0,
        created_at: now,
        updated_at: now,
        generation: 1,
    };
    let mut img = Image {
        row: template.clone(),
        properties: BTreeMap::new(),
        tags: vec![],
    };
    for (k, v) in &body {
        if k == "id" {
            continue;
        }
        if v.is_null() && !CORE.contains(&k.as_str()) && !reserved(k) && k != "tags" {
            continue;
        }
        set_attr(&mut img, k, v)?;
    }
    check_quotas(app, &img)?;
    check_sensitive_changes(app, ctx, &template, &img.row)?;
    let mut tx = app.db.begin().await?;
    store::insert_image(&mut tx, &img).await.map_err(|e| {
        if e.is(Kind::Conflict) {
            Error::conflict(format!("Image with identifier {id} already exists!"))
        } else {
            e
        }
    })?;
    tx.commit().await?;
    Ok(img)
}

/// One operation of a JSON patch (`application/openstack-images-v2.1-json-patch`).
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
pub struct PatchOp {
    /// `add`, `replace` or `remove`.
    pub op: String,
    /// `/name`, `/tags`, `/<property>`.
    pub path: String,
    /// The new value (not for `remove`).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub value: Option<Value>,
}

fn patch_path(path: &str) -> Result<String> {
    let p = path
        .strip_prefix('/')
        .ok_or_else(|| Error::bad_request(format!("Invalid JSON pointer '{path}'.")))?;
    if p.is_empty() || p.contains('/') {
        return Err(Error::bad_request(format!(
            "Invalid JSON pointer '{path}': nested paths are not supported."
        )));
    }
    // RFC 6901 escapes.
    Ok(p.replace("~1", "/").replace("~0", "~"))
}

fn apply_patch(img: &mut Image, ops: &[PatchOp]) -> Result<()> {
    for op in ops {
        let name = patch_path(&op.path)?;
        if name == "locations" {
            return Err(Error::forbidden("Image locations are not supported."));
        }
        if name == "id" || reserved(&name) {
            return Err(forbidden_attr(&name));
        }
        let core = CORE.contains(&name.as_str()) || name == "tags";
        match op.op.as_str() {
            "add" | "replace" => {
                let value = op.value.clone().ok_or_else(|| {
                    Error::bad_request(format!("Operation '{}' needs a value.", op.op))
                })?;
                if op.op == "replace" && !core && !img.properties.contains_key(&name) {
                    return Err(Error::conflict(format!("Property {name} does not exist.")));
                }
                if !core && value.is_null() {
                    return Err(Error::bad_request(format!(
                        "Invalid value for property '{name}': expected a string."
                    )));
                }
                set_attr(img, &name, &value)?;
            }
            "remove" => {
                if core {
                    return Err(Error::forbidden(format!(
                        "Properties {name} cannot be removed."
                    )));
                }
                if img.properties.remove(&name).is_none() {
                    return Err(Error::conflict(format!("Property {name} does not exist.")));
                }
            }
            other => {
                return Err(Error::bad_request(format!(
                    "Operation '{other}' is not supported: use add, replace or remove."
                )));
            }
        }
    }
    Ok(())
}

/// Applies a JSON patch (`PATCH /v2/images/{id}`). Concurrent patches are
/// applied one after the other: each reads, patches, and writes only if the
/// image's generation did not move, else starts over.
pub async fn update_image(app: &App, ctx: &Context, id: &str, ops: Vec<PatchOp>) -> Result<Image> {
    for _ in 0..=app.config.database.max_retries {
        let before = get_image(app, ctx, id).await?;
        app.policy
            .enforce("image:modify_image", ctx, owner_target(&before.row))?;
        let mut after = before.clone();
        apply_patch(&mut after, &ops)?;
        check_quotas(app, &after)?;
        check_sensitive_changes(app, ctx, &before.row, &after.row)?;
        // Glance keeps members across visibility changes; so does Mica.
        let mut tx = app.db.begin().await?;
        if store::update_image(&mut tx, &after).await? {
            tx.commit().await?;
            let mut conn = app.db.pool().acquire().await?;
            return store::get_image(&mut conn, id)
                .await?
                .ok_or_else(|| not_found(id));
        }
        tx.rollback().await?;
    }
    Err(Error::conflict(format!(
        "Image {id} was changed by another request; try again."
    )))
}

/// Deletes an image and its data.
pub async fn delete_image(app: &App, ctx: &Context, id: &str) -> Result<()> {
    let img = get_image(app, ctx, id).await?;
    app.policy
        .enforce("image:delete_image", ctx, owner_target(&img.row))?;
    if img.row.protected {
        return Err(Error::forbidden(format!(
            "Image {id} is protected and cannot be deleted."
        )));
    }
    if !store::delete_image(app.db.pool(), id).await? {
        return Err(not_found(id));
    }
    match tokio::fs::remove_file(app.images.path(id)).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(image = id, error = %e, "could not remove image data"),
    }
    Ok(())
}

/// Adds a tag.
pub async fn add_tag(app: &App, ctx: &Context, id: &str, tag: &str) -> Result<()> {
    check_tag(tag)?;
    let img = get_image(app, ctx, id).await?;
    app.policy
        .enforce("image:modify_image", ctx, owner_target(&img.row))?;
    if !img.tags.iter().any(|t| t == tag) && img.tags.len() >= app.config.image.max_tags as usize {
        return Err(Error::too_large(format!(
            "Maximum number of tags exceeded ({}).",
            app.config.image.max_tags
        )));
    }
    let mut tx = app.db.begin().await?;
    if !store::add_tag(&mut tx, id, tag).await? {
        return Err(not_found(id));
    }
    tx.commit().await?;
    Ok(())
}

/// Removes a tag.
pub async fn remove_tag(app: &App, ctx: &Context, id: &str, tag: &str) -> Result<()> {
    let img = get_image(app, ctx, id).await?;
    app.policy
        .enforce("image:modify_image", ctx, owner_target(&img.row))?;
    let mut tx = app.db.begin().await?;
    if !store::remove_tag(&mut tx, id, tag).await? {
        return Err(Error::not_found(format!(
            "Tag {tag} not found on image {id}."
        )));
    }
    tx.commit().await?;
    Ok(())
}

// ---- listing -------------------------------------------------------------------------------------

/// A page of images and the marker of the next page, if there may be one.
#[derive(Debug, Clone)]
pub struct Page {
    /// The images.
    pub images: Vec<Image>,
    /// Id to pass as `marker` for the next page.
    pub next_marker: Option<String>,
}

fn parse_bool(v: &str, field: &str) -> Result<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(Error::bad_request(format!(
            "Invalid value '{v}' for '{field}': expected a boolean."
        ))),
    }
}

fn parse_int(v: &str, field: &str) -> Result<i64> {
    v.parse::<i64>().map_err(|_| {
        Error::bad_request(format!(
            "Invalid value '{v}' for '{field}': expected an integer."
        ))
    })
}

/// Lists images (`GET /v2/images`) from the raw query parameters.
pub async fn list_images(app: &App, ctx: &Context, params: &[(String, String)]) -> Result<Page> {
    app.policy
        .enforce("image:get_images", ctx, Target::default())?;
    let cfg = &app.config.image;
    let viewer = if ctx.is_admin() {
        Viewer::Admin
    } else {
        Viewer::Project(
            ctx.project_id()
                .ok_or_else(|| Error::forbidden("Listing images needs a project-scoped token."))?
                .to_owned(),
        )
    };
    let mut q = ImageQuery {
        viewer,
        visibility: VisibilityFilter::Default,
        member_status: Some("accepted".into()),
        name: None,
        ids: None,
        status: None,
        owner: None,
        tags: vec![],
        disk_format: None,
        container_format: None,
        size_min: None,
        size_max: None,
        protected: None,
        os_hidden: None,
        properties: vec![],
        sort: vec![],
        marker: None,
        limit: i64::from(cfg.default_page_size),
    };
    let mut sort_keys: Vec<SortKey> = vec![];
    let mut sort_dirs: Vec<bool> = vec![];
    let mut marker = None;
    for (k, v) in params {
        match k.as_str() {
            "limit" => {
                let n = parse_int(v, "limit")?;
                if n < 0 {
                    return Err(Error::bad_request("limit param must be positive"));
                }
                q.limit = n.min(i64::from(cfg.max_page_size));
            }
            "marker" => marker = Some(v.clone()),
            "name" => q.name = Some(v.clone()),
            "id" => {
                let ids = v.strip_prefix("in:").unwrap_or(v);
                q.ids = Some(ids.split(',').map(|s| s.trim().to_owned()).collect());
            }
            "status" => q.status = Some(v.clone()),
            "owner" => q.owner = Some(v.clone()),
            "tag" => q.tags.push(v.clone()),
            "disk_format" => q.disk_format = Some(v.clone()),
            "container_format" => q.container_format = Some(v.clone()),
            "size_min" => q.size_min = Some(parse_int(v, "size_min")?),
            "size_max" => q.size_max = Some(parse_int(v, "size_max")?),
            "protected" => q.protected = Some(parse_bool(v, "protected")?),
            "os_hidden" => q.os_hidden = Some(parse_bool(v, "os_hidden")?),
            "visibility" => {
                q.visibility = match v.as_str() {
                    "public" => VisibilityFilter::Public,
                    "private" => VisibilityFilter::Private,
                    "shared" => VisibilityFilter::Shared,
                    "community" => VisibilityFilter::Community,
                    "all" => VisibilityFilter::All,
                    _ => {
                        return Err(Error::bad_request(format!("Invalid visibility value: {v}")));
                    }
                }
            }
            "member_status" => {
                q.member_status = match v.as_str() {
                    "all" => None,
                    "pending" | "accepted" | "rejected" => Some(v.clone()),
                    _ => {
                        return Err(Error::bad_request(format!(
                            "Invalid member_status value: {v}"
                        )));
                    }
                }
            }
            "sort_key" => sort_keys.push(
                SortKey::parse(v)
                    .ok_or_else(|| Error::bad_request(format!("Invalid sort key: {v}")))?,
            ),
            "sort_dir" => sort_dirs.push(match v.as_str() {
                "asc" => true,
                "desc" => false,
                _ => return Err(Error::bad_request(format!("Invalid sort direction: {v}"))),
            }),
            "sort" => {
                for part in v.split(',') {
                    let (key, dir) = part.split_once(':').unwrap_or((part, "desc"));
                    let key = SortKey::parse(key.trim()).ok_or_else(|| {
                        Error::bad_request(format!("Invalid sort key: {}", key.trim()))
                    })?;
                    let asc = match dir.trim() {
                        "asc" => true,
                        "desc" => false,
                        d => {
                            return Err(Error::bad_request(format!("Invalid sort direction: {d}")));
                        }
                    };
                    q.sort.push((key, asc));
                }
            }
            "checksum" | "os_hash_value" | "created_at" | "updated_at" => {
                return Err(Error::bad_request(format!(
                    "Filtering on '{k}' is not supported."
                )));
            }
            _ => q.properties.push((k.clone(), v.clone())),
        }
    }
    if !sort_keys.is_empty() || !sort_dirs.is_empty() {
        if !q.sort.is_empty() {
            return Err(Error::bad_request(
                "The 'sort' parameter can't be combined with 'sort_key' or 'sort_dir'.",
            ));
        }
        if sort_dirs.len() > 1 && sort_dirs.len() != sort_keys.len() {
            return Err(Error::bad_request(
                "Number of sort dirs does not match the number of sort keys.",
            ));
        }
        if sort_keys.is_empty() {
            sort_keys.push(SortKey::CreatedAt);
        }
        for (i, k) in sort_keys.iter().enumerate() {
            let asc = sort_dirs
                .get(i)
                .or(sort_dirs.first())
                .copied()
                .unwrap_or(false);
            q.sort.push((*k, asc));
        }
    }
    if q.sort.is_empty() {
        q.sort.push((SortKey::CreatedAt, false));
    }
    if let Some(m) = marker {
        let row = store::get_image_row(app.db.pool(), &m).await?;
        let row = match row {
            Some(r) if visible(app, ctx, &r).await? => r,
            _ => {
                return Err(Error::bad_request(format!(
                    "Invalid marker. Image {m} could not be found."
                )));
            }
        };
        q.marker = Some(row);
    }
    let limit = q.limit;
    let mut conn = app.db.pool().acquire().await?;
    let images = store::list_images(&mut conn, app.db.backend(), &q).await?;
    let next_marker = if limit > 0 && images.len() as i64 == limit {
        images.last().map(|i| i.row.id.clone())
    } else {
        None
    };
    Ok(Page {
        images,
        next_marker,
    })
}

// ---- members ----------------------------------------------------------------------------------------

/// Shares an image with a project.
pub async fn add_member(app: &App, ctx: &Context, id: &str, member: &str) -> Result<Member> {
    let img = get_image(app, ctx, id).await?;
    app.policy
        .enforce("image:add_member", ctx, owner_target(&img.row))?;
    if img.row.visibility != "shared" {
        return Err(Error::forbidden(format!(
            "Only shared images have members. Image {id} is {}.",
            img.row.visibility
        )));
    }
    if member.is_empty() || member.len() > 255 {
        return Err(Error::bad_request("Invalid value for 'member'."));
    }
    let now = Timestamp::now();
    let m = Member {
        image_id: id.to_owned(),
        member: member.to_owned(),
        status: "pending".into(),
        created_at: now,
        updated_at: now,
    };
    store::add_member(app.db.pool(), &m).await.map_err(|e| {
        if e.is(Kind::Conflict) {
            Error::conflict(format!("Member {member} already exists for image {id}."))
        } else {
            e
        }
    })?;
    Ok(m)
}

/// The members of an image: all of them for its owner, only oneself for a
/// member.
pub async fn list_members(app: &App, ctx: &Context, id: &str) -> Result<Vec<Member>> {
    let img = get_image(app, ctx, id).await?;
    app.policy
        .enforce("image:get_members", ctx, owner_target(&img.row))?;
    if img.row.visibility != "shared" {
        return Err(Error::forbidden(format!(
            "Only shared images have members. Image {id} is {}.",
            img.row.visibility
        )));
    }
    let mut all = store::list_members(app.db.pool(), id).await?;
    let owner = ctx.is_admin() || img.row.owner.as_deref() == ctx.project_id();
    if !owner {
        all.retain(|m| Some(m.member.as_str()) == ctx.project_id());
    }
    Ok(all)
}

/// One member of an image.
pub async fn get_member(app: &App, ctx: &Context, id: &str, member: &str) -> Result<Member> {
    list_members(app, ctx, id)
        .await?
        .into_iter()
        .find(|m| m.member == member)
        .ok_or_else(|| Error::not_found(format!("Member {member} not found for image {id}.")))
}

/// A member accepts or rejects a shared image.
pub async fn set_member_status(
    app: &App,
    ctx: &Context,
    id: &str,
    member: &str,
    status: &str,
) -> Result<Member> {
    if !matches!(status, "pending" | "accepted" | "rejected") {
        return Err(Error::bad_request(format!(
            "Invalid member status '{status}'."
        )));
    }
    let _img = get_image(app, ctx, id).await?;
    app.policy
        .enforce("image:modify_member", ctx, Target::project(member))?;
    if !ctx.is_admin() && ctx.project_id() != Some(member) {
        return Err(Error::forbidden(
            "Only the member itself can accept or reject a shared image.",
        ));
    }
    if !store::set_member_status(app.db.pool(), id, member, status).await? {
        return Err(Error::not_found(format!(
            "Member {member} not found for image {id}."
        )));
    }
    get_member(app, ctx, id, member).await
}

/// Stops sharing an image with a project.
pub async fn delete_member(app: &App, ctx: &Context, id: &str, member: &str) -> Result<()> {
    let img = get_image(app, ctx, id).await?;
    app.policy
        .enforce("image:delete_member", ctx, owner_target(&img.row))?;
    if !store::delete_member(app.db.pool(), id, member).await? {
        return Err(Error::not_found(format!(
            "Member {member} not found for image {id}."
        )));
    }
    Ok(())
}

// ---- data ------------------------------------------------------------------------------------------------

/// Uploads image data (`PUT /v2/images/{id}/file`); see the module doc.
pub async fn upload<S, E>(
    app: &App,
    ctx: &Context,
    id: &str,
    content_length: Option<u64>,
    body: S,
) -> Result<Image>
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
    E: std::fmt::Display,
{
    let img = get_image(app, ctx, id).await?;
    app.policy
        .enforce("image:upload_image", ctx, owner_target(&img.row))?;
    if img.row.disk_format.is_none() || img.row.container_format.is_none() {
        return Err(Error::bad_request(
            "Properties disk_format, container_format must be set prior to saving data.",
        ));
    }
    let limit = app.config.image.max_image_size_bytes;
    if let Some(n) = content_length
        && n > limit
    {
        return Err(too_big(limit));
    }
    if !store::set_status(app.db.pool(), id, "queued", "saving").await? {
        return Err(Error::conflict(format!(
            "Image status transition from {} to saving is not allowed",
            img.row.status
        )));
    }
    // The temporary file stays locked as long as a clone of it is open:
    // the guard keeps one until the upload is over, past the rename.
    let (temp, file, lock) = match app.images.create_temp(id) {
        Ok(t) => t,
        Err(e) => {
            let _ = store::set_status(app.db.pool(), id, "saving", "queued").await;
            return Err(e);
        }
    };
    // From here until the image is `active`, dropping this future (the
    // client went away, shutdown ran out of grace) must still leave the
    // image `queued` with no data: the guard does it when not disarmed.
    let mut guard = UploadGuard {
        db: app.db.clone(),
        id: id.to_owned(),
        temp: temp.clone(),
        final_path: None,
        armed: true,
        _lock: Some(lock),
    };
    let outcome = receive(file, body, limit, img.row.disk_format.as_deref()).await;
    let result = match outcome {
        Ok(data) => {
            let final_path = app.images.path(id);
            match tokio::fs::rename(&temp, &final_path).await {
                Ok(()) => {
                    guard.final_path = Some(final_path.clone());
                    match store::finish_upload(app.db.pool(), id, &data).await {
                        Ok(true) => Ok(()),
                        // Deleted (or reset) while we were receiving.
                        Ok(false) => Err(Error::conflict(format!(
                            "Image {id} was deleted or changed during the upload."
                        ))),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(Error::internal("moving the upload into place", e)),
            }
        }
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        guard.armed = false;
        guard.clean_up().await;
        if !e.is(Kind::Internal) {
            tracing::info!(image = id, error = %e, "upload refused");
        }
        return Err(e);
    }
    guard.armed = false;
    let mut conn = app.db.pool().acquire().await?;
    store::get_image(&mut conn, id)
        .await?
        .ok_or_else(|| not_found(id))
}

/// Undoes an upload that did not finish: removes its data and puts the
/// image back to `queued`.
struct UploadGuard {
    db: crate::db::Db,
    id: String,
    temp: PathBuf,
    final_path: Option<PathBuf>,
    armed: bool,
    /// Holds the temporary file's lock until the guard goes.
    _lock: Option<std::fs::File>,
}

impl UploadGuard {
    async fn clean_up(&self) {
        let _ = tokio::fs::remove_file(&self.temp).await;
        if let Some(f) = &self.final_path {
            let _ = tokio::fs::remove_file(f).await;
        }
        if let Err(e) = store::set_status(self.db.pool(), &self.id, "saving", "queued").await {
            tracing::error!(image = %self.id, error = ?e, "could not requeue image after a failed upload");
        }
    }
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        tracing::warn!(image = %self.id, "upload abandoned; requeueing the image");
        let this = UploadGuard {
            db: self.db.clone(),
            id: std::mem::take(&mut self.id),
            temp: std::mem::take(&mut self.temp),
            final_path: self.final_path.take(),
            armed: false,
            _lock: self._lock.take(),
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move { this.clean_up().await });
            }
            Err(_) => {
                // No runtime left (the process is exiting): leave the
                // temporary file as the marker that the next start's
                // `recover_interrupted_uploads` turns into a requeue.
                if let Some(f) = &this.final_path {
                    let _ = std::fs::rename(f, &this.temp);
                }
            }
        }
    }
}

fn too_big(limit: u64) -> Error {
    Error::too_large(format!(
        "Image exceeds the maximum image size of {limit} bytes."
    ))
}

/// Receives the body into `file` (the upload's temporary file), hashing as
/// it goes; validates qcow2.
async fn receive<S, E>(
    file: std::fs::File,
    mut body: S,
    limit: u64,
    disk_format: Option<&str>,
) -> Result<store::UploadedData>
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
    E: std::fmt::Display,
{
    let (to_writer, mut writer_rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let (to_hasher, mut hasher_rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<(String, Vec<u8>)> {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let mut md5 = md5::Md5::new();
        let mut head = Vec::with_capacity(QCOW2_HEADER_LEN);
        while let Some(chunk) = writer_rx.blocking_recv() {
            if head.len() < QCOW2_HEADER_LEN {
                let take = (QCOW2_HEADER_LEN - head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..take]);
            }
            md5.update(&chunk);
            out.write_all(&chunk)?;
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok((hex::encode(md5.finalize()), head))
    });
    let hasher = tokio::task::spawn_blocking(move || {
        let mut sha = sha2::Sha512::new();
        while let Some(chunk) = hasher_rx.blocking_recv() {
            sha.update(&chunk);
        }
        hex::encode(sha.finalize())
    });
    let mut size: u64 = 0;
    let received: Result<()> = loop {
        match body.next().await {
            None => break Ok(()),
            Some(Err(e)) => {
                let e = e.to_string();
                if e.starts_with(crate::error::BODY_TIMED_OUT) {
                    break Err(Error::new(
                        crate::error::Kind::RequestTimeout,
                        "The upload stopped: no data came in time.",
                    ));
                }
                break Err(Error::bad_request(format!(
                    "The upload was interrupted: {e}"
                )));
            }
            Some(Ok(chunk)) => {
                size += chunk.len() as u64;
                if size > limit {
                    break Err(too_big(limit));
                }
                if to_writer.send(chunk.clone()).await.is_err()
                    || to_hasher.send(chunk).await.is_err()
                {
                    break Err(Error::internal(
                        "writing image data",
                        "the writer stopped early",
                    ));
                }
            }
        }
    };
    drop(to_writer);
    drop(to_hasher);
    let written = writer
        .await
        .map_err(|e| Error::internal("image writer task", e))?;
    let sha512 = hasher
        .await
        .map_err(|e| Error::internal("image hasher task", e))?;
    received?;
    let (md5, head) = written.map_err(|e| Error::internal("writing image data", e))?;
    let virtual_size = match disk_format {
        Some("qcow2") => Some(qcow2_virtual_size(&head, size).map_err(|why| {
            Error::bad_request(format!("Image data is not a valid qcow2 file: {why}."))
        })?),
        _ => Some(size as i64),
    };
    Ok(store::UploadedData {
        size: size as i64,
        virtual_size,
        checksum: md5,
        os_hash_value: sha512,
    })
}

/// Bytes of a qcow2 header Mica reads (the version 3 header).
pub const QCOW2_HEADER_LEN: usize = 104;

/// Checks a qcow2 header and returns the virtual disk size. Refuses what a
/// safe consumer must not open: backing files (they name host files),
/// encryption, external data files and unknown incompatible features.
pub fn qcow2_virtual_size(head: &[u8], file_size: u64) -> Result<i64, String> {
    let be32 = |o: usize| u32::from_be_bytes(head[o..o + 4].try_into().expect("4 bytes"));
    let be64 = |o: usize| u64::from_be_bytes(head[o..o + 8].try_into().expect("8 bytes"));
    if head.len() < 72 {
        return Err("shorter than a qcow2 header".into());
    }
    if head[0..4] != *b"QFI\xfb" {
        return Err("no qcow2 magic".into());
    }
    let version = be32(4);
    if version != 2 && version != 3 {
        return Err(format!("unsupported qcow2 version {version}"));
    }
    if be64(8) != 0 || be32(16) != 0 {
        return Err("backing files are not allowed".into());
    }
    let cluster_bits = be32(20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(format!("invalid cluster_bits {cluster_bits}"));
    }
    let virtual_size = be64(24);
    if virtual_size == 0 || virtual_size > i64::MAX as u64 {
        return Err(format!("invalid virtual size {virtual_size}"));
    }
    if be32(32) != 0 {
        return Err("encrypted images are not allowed".into());
    }
    let l1_table_offset = be64(40);
    let refcount_table_offset = be64(48);
    let cluster_size = 1u64 << cluster_bits;
    if l1_table_offset % cluster_size != 0 || refcount_table_offset % cluster_size != 0 {
        return Err("tables not aligned to clusters".into());
    }
    if l1_table_offset >= file_size || refcount_table_offset >= file_size {
        return Err("tables beyond the end of the file".into());
    }
    if version == 3 {
        if head.len() < QCOW2_HEADER_LEN {
            return Err("shorter than a qcow2 v3 header".into());
        }
        let incompatible = be64(72);
        // bit 0 dirty, bit 1 corrupt, bit 2 external data file, bit 3
        // compression type, bit 4 extended L2: accept only dirty-free, plain.
        if incompatible & !0b1_0000 != 0 {
            return Err(format!(
                "unsupported incompatible features {incompatible:#x}"
            ));
        }
        let header_length = be32(100);
        if header_length < 104 {
            return Err(format!("invalid header length {header_length}"));
        }
    }
    Ok(virtual_size as i64)
}

/// What a download needs: the open file and its facts.
pub struct Download {
    /// The data.
    pub file: tokio::fs::File,
    /// Bytes.
    pub size: u64,
    /// MD5, hex.
    pub checksum: Option<String>,
}

/// Opens an image's data for download; `None` when the image has no data
/// (Glance answers 204 then).
pub async fn download(app: &App, ctx: &Context, id: &str) -> Result<Option<Download>> {
    let img = get_image(app, ctx, id).await?;
    app.policy
        .enforce("image:download_image", ctx, owner_target(&img.row))?;
    match img.row.status.as_str() {
        "active" => {}
        "deactivated" if !ctx.is_admin() => {
            return Err(Error::forbidden(
                "The requested image has been deactivated. Image data download is forbidden.",
            ));
        }
        _ => return Ok(None),
    }
    let file = match tokio::fs::File::open(app.images.path(id)).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::new(
                Kind::ServiceUnavailable,
                format!("The data of image {id} is missing from the store."),
            ));
        }
        Err(e) => return Err(Error::internal("opening image data", e)),
    };
    let size = file.metadata().await?.len();
    Ok(Some(Download {
        file,
        size,
        checksum: img.row.checksum,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_removes_left_uploads_but_not_ones_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        // An upload in progress (here or in another API process on the same
        // store): its file is locked.
        let (busy, _file, _lock) = store.create_temp("img-busy").unwrap();
        // One a killed process left: created, then every handle closed.
        let (left, file, lock) = store.create_temp("img-left").unwrap();
        drop((file, lock));
        std::fs::write(dir.path().join("img-done"), b"data").unwrap();
        assert_eq!(
            store.sweep_temp_files().unwrap(),
            vec!["img-left".to_owned()]
        );
        assert!(busy.exists(), "an upload in progress lost its file");
        assert!(!left.exists());
        assert!(dir.path().join("img-done").exists());
        // Once the upload is over (its handles closed), the next sweep takes it.
        drop((_file, _lock));
        assert_eq!(
            store.sweep_temp_files().unwrap(),
            vec!["img-busy".to_owned()]
        );
    }

    fn qcow2_header(version: u32) -> Vec<u8> {
        let mut h = vec![0u8; 104];
        h[0..4].copy_from_slice(b"QFI\xfb");
        h[4..8].copy_from_slice(&version.to_be_bytes());
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        h[40..48].copy_from_slice(&(3u64 << 16).to_be_bytes());
        h[48..56].copy_from_slice(&(1u64 << 16).to_be_bytes());
        h[100..104].copy_from_slice(&104u32.to_be_bytes());
        h
    }

    #[test]
    fn qcow2_headers() {
        let size = 1 << 20;
        assert_eq!(qcow2_virtual_size(&qcow2_header(3), size), Ok(1 << 30));
        assert_eq!(qcow2_virtual_size(&qcow2_header(2), size), Ok(1 << 30));
        assert!(
            qcow2_virtual_size(
                b"not a qcow2 file at all, just some text and more text and more text......",
                size
            )
            .is_err()
        );
        let mut h = qcow2_header(3);
        h[8..16].copy_from_slice(&512u64.to_be_bytes());
        assert!(
            qcow2_virtual_size(&h, size)
                .unwrap_err()
                .contains("backing")
        );
        let mut h = qcow2_header(3);
        h[32..36].copy_from_slice(&1u32.to_be_bytes());
        assert!(
            qcow2_virtual_size(&h, size)
                .unwrap_err()
                .contains("encrypted")
        );
        let mut h = qcow2_header(3);
        h[72..80].copy_from_slice(&4u64.to_be_bytes());
        assert!(qcow2_virtual_size(&h, size).is_err());
        let mut h = qcow2_header(4);
        h[4..8].copy_from_slice(&4u32.to_be_bytes());
        assert!(qcow2_virtual_size(&h, size).is_err());
        assert!(qcow2_virtual_size(&qcow2_header(3)[..50], size).is_err());
        // Tables past the end of the data: a truncated file.
        assert!(qcow2_virtual_size(&qcow2_header(3), 1000).is_err());
    }

    #[test]
    fn patch_rules() {
        let now = Timestamp::now();
        let mut img = Image {
            row: ImageRow {
                id: "i".into(),
                name: Some("a".into()),
                owner: Some("p".into()),
                status: "queued".into(),
                visibility: "private".into(),
                protected: false,
                os_hidden: false,
                disk_format: None,
                container_format: None,
                size: None,
                virtual_size: None,
                checksum: None,
                os_hash_algo: None,
                os_hash_value: None,
                min_disk: 0,
                min_ram: 0,
                created_at: now,
                updated_at: now,
                generation: 1,
            },
            properties: BTreeMap::new(),
            tags: vec![],
        };
        let op = |op: &str, path: &str, value: Option<Value>| PatchOp {
            op: op.into(),
            path: path.into(),
            value,
        };
        apply_patch(
            &mut img,
            &[
                op("replace", "/name", Some("b".into())),
                op("add", "/hw_disk_bus", Some("virtio".into())),
                op("add", "/tags", Some(serde_json::json!(["x", "y"]))),
            ],
        )
        .unwrap();
        assert_eq!(img.row.name.as_deref(), Some("b"));
        assert_eq!(img.properties["hw_disk_bus"], "virtio");
        assert_eq!(img.tags, vec!["x", "y"]);
        let e = apply_patch(&mut img, &[op("replace", "/status", Some("active".into()))]);
        assert_eq!(e.unwrap_err().kind, Kind::Forbidden);
        let e = apply_patch(&mut img, &[op("replace", "/nope", Some("x".into()))]);
        assert_eq!(e.unwrap_err().kind, Kind::Conflict);
        let e = apply_patch(&mut img, &[op("remove", "/name", None)]);
        assert_eq!(e.unwrap_err().kind, Kind::Forbidden);
        let e = apply_patch(&mut img, &[op("move", "/name", None)]);
        assert_eq!(e.unwrap_err().kind, Kind::BadRequest);
        let e = apply_patch(&mut img, &[op("replace", "/min_ram", Some("lots".into()))]);
        assert_eq!(e.unwrap_err().kind, Kind::BadRequest);
        apply_patch(&mut img, &[op("remove", "/hw_disk_bus", None)]).unwrap();
        assert!(img.properties.is_empty());
    }
}
