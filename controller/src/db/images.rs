//! Image tables: images, their properties, tags and members.

use std::collections::BTreeMap;

use sqlx::{Any, AnyConnection, Executor};

use super::{Backend, Sql, Timestamp};
use crate::error::Result;

/// An image row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ImageRow {
    /// Id (UUID).
    pub id: String,
    /// Name.
    pub name: Option<String>,
    /// Owning project.
    pub owner: Option<String>,
    /// `queued`, `saving`, `active`, `deactivated`, `killed`.
    pub status: String,
    /// `public`, `private`, `shared`, `community`.
    pub visibility: String,
    /// Protected images can't be deleted.
    #[sqlx(try_from = "super::Flag")]
    pub protected: bool,
    /// Hidden images are left out of default listings.
    #[sqlx(try_from = "super::Flag")]
    pub os_hidden: bool,
    /// `raw` or `qcow2`.
    pub disk_format: Option<String>,
    /// `bare`.
    pub container_format: Option<String>,
    /// Bytes of data.
    pub size: Option<i64>,
    /// Size of the disk the data describes.
    pub virtual_size: Option<i64>,
    /// MD5 of the data, hex.
    pub checksum: Option<String>,
    /// `sha512`.
    pub os_hash_algo: Option<String>,
    /// SHA-512 of the data, hex.
    pub os_hash_value: Option<String>,
    /// Minimum disk in GiB.
    pub min_disk: i64,
    /// Minimum RAM in MiB.
    pub min_ram: i64,
    /// Created.
    pub created_at: Timestamp,
    /// Last updated.
    pub updated_at: Timestamp,
    /// Bumped by every change; updates carry the generation they read.
    pub generation: i64,
}

/// An image with its properties and tags.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// The row.
    pub row: ImageRow,
    /// Extra properties.
    pub properties: BTreeMap<String, String>,
    /// Tags, sorted.
    pub tags: Vec<String>,
}

/// An image member (a project an image is shared with).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Member {
    /// The image.
    pub image_id: String,
    /// The project.
    pub member: String,
    /// `pending`, `accepted`, `rejected`.
    pub status: String,
    /// Created.
    pub created_at: Timestamp,
    /// Last updated.
    pub updated_at: Timestamp,
}

/// Keys images can be sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// Name.
    Name,
    /// Status.
    Status,
    /// Container format.
    ContainerFormat,
    /// Disk format.
    DiskFormat,
    /// Size.
    Size,
    /// Id.
    Id,
    /// Creation time.
    CreatedAt,
    /// Update time.
    UpdatedAt,
    /// Visibility.
    Visibility,
    /// Owner.
    Owner,
    /// Minimum disk.
    MinDisk,
    /// Minimum RAM.
    MinRam,
}

impl SortKey {
    /// The key of a `sort_key` value.
    pub fn parse(s: &str) -> Option<SortKey> {
        Some(match s {
            "name" => SortKey::Name,
            "status" => SortKey::Status,
            "container_format" => SortKey::ContainerFormat,
            "disk_format" => SortKey::DiskFormat,
            "size" => SortKey::Size,
            "id" => SortKey::Id,
            "created_at" => SortKey::CreatedAt,
            "updated_at" => SortKey::UpdatedAt,
            "visibility" => SortKey::Visibility,
            "owner" => SortKey::Owner,
            "min_disk" => SortKey::MinDisk,
            "min_ram" => SortKey::MinRam,
            _ => return None,
        })
    }

    fn is_text(self) -> bool {
        !matches!(self, SortKey::Size | SortKey::MinDisk | SortKey::MinRam)
    }

    /// A never-NULL SQL expression for the key, with byte-order collation on
    /// both databases.
    fn expr(self, backend: Backend) -> String {
        let base = match self {
            SortKey::Name => "COALESCE(i.name, '')",
            SortKey::Status => "i.status",
            SortKey::ContainerFormat => "COALESCE(i.container_format, '')",
            SortKey::DiskFormat => "COALESCE(i.disk_format, '')",
            SortKey::Size => "COALESCE(i.size, -1)",
            SortKey::Id => "i.id",
            SortKey::CreatedAt => "i.created_at",
            SortKey::UpdatedAt => "i.updated_at",
            SortKey::Visibility => "i.visibility",
            SortKey::Owner => "COALESCE(i.owner, '')",
            SortKey::MinDisk => "i.min_disk",
            SortKey::MinRam => "i.min_ram",
        };
        if self.is_text() && backend == Backend::Postgres {
            format!("({base} COLLATE \"C\")")
        } else {
            base.to_owned()
        }
    }

    /// The marker image's value for this key, as bound in the keyset condition.
    fn marker_value(self, m: &ImageRow) -> MarkerValue {
        match self {
            SortKey::Name => MarkerValue::Text(m.name.clone().unwrap_or_default()),
            SortKey::Status => MarkerValue::Text(m.status.clone()),
            SortKey::ContainerFormat => {
                MarkerValue::Text(m.container_format.clone().unwrap_or_default())
            }
            SortKey::DiskFormat => MarkerValue::Text(m.disk_format.clone().unwrap_or_default()),
            SortKey::Size => MarkerValue::Int(m.size.unwrap_or(-1)),
            SortKey::Id => MarkerValue::Text(m.id.clone()),
            SortKey::CreatedAt => MarkerValue::Text(m.created_at.to_db()),
            SortKey::UpdatedAt => MarkerValue::Text(m.updated_at.to_db()),
            SortKey::Visibility => MarkerValue::Text(m.visibility.clone()),
            SortKey::Owner => MarkerValue::Text(m.owner.clone().unwrap_or_default()),
            SortKey::MinDisk => MarkerValue::Int(m.min_disk),
            SortKey::MinRam => MarkerValue::Int(m.min_ram),
        }
    }
}

enum MarkerValue {
    Text(String),
    Int(i64),
}

/// Whose images a listing may show.
#[derive(Debug, Clone, PartialEq)]
pub enum Viewer {
    /// An administrator: every image.
    Admin,
    /// A project: its own, public ones, and shared ones it is a member of.
    Project(String),
}

/// Which visibility a listing asks for (`?visibility=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisibilityFilter {
    /// No filter: own, public and accepted shared images (admins: all).
    Default,
    /// `all`: also community images.
    All,
    /// Only public images.
    Public,
    /// Only private images (the viewer's own).
    Private,
    /// Only shared images (own, or shared with the viewer).
    Shared,
    /// Only community images.
    Community,
}

/// A listing request.
#[derive(Debug, Clone)]
pub struct ImageQuery {
    /// Who is looking.
    pub viewer: Viewer,
    /// Visibility filter.
    pub visibility: VisibilityFilter,
    /// Member status of shared images to include (default `accepted`);
    /// `None` means any.
    pub member_status: Option<String>,
    /// Exact name.
    pub name: Option<String>,
    /// Any of these ids (`id=in:a,b`).
    pub ids: Option<Vec<String>>,
    /// Status.
    pub status: Option<String>,
    /// Owner.
    pub owner: Option<String>,
    /// Every one of these tags.
    pub tags: Vec<String>,
    /// Disk format.
    pub disk_format: Option<String>,
    /// Container format.
    pub container_format: Option<String>,
    /// Minimum size.
    pub size_min: Option<i64>,
    /// Maximum size.
    pub size_max: Option<i64>,
    /// Protected flag.
    pub protected: Option<bool>,
    /// `Some(true)` lists hidden images too; default leaves them out.
    pub os_hidden: Option<bool>,
    /// Extra properties that must match exactly.
    pub properties: Vec<(String, String)>,
    /// Sort keys with direction (`true` = ascending); `id` is appended as the
    /// final tie-breaker.
    pub sort: Vec<(SortKey, bool)>,
    /// Start after this image (already checked to be visible).
    pub marker: Option<ImageRow>,
    /// Page size.
    pub limit: i64,
}

fn add_visibility(
    q: &mut Sql,
    viewer: &Viewer,
    vis: VisibilityFilter,
    member_status: &Option<String>,
) {
    let member_clause = |q: &mut Sql, p: &str| {
        q.push("EXISTS (SELECT 1 FROM image_members m WHERE m.image_id = i.id AND m.member = ")
            .bind(p.to_owned());
        if let Some(s) = member_status {
            q.push(" AND m.status = ").bind(s.clone());
        }
        q.push(")");
    };
    match viewer {
        Viewer::Admin => match vis {
            VisibilityFilter::Default | VisibilityFilter::All => {}
            VisibilityFilter::Public => {
                q.push(" AND i.visibility = 'public'");
            }
            VisibilityFilter::Private => {
                q.push(" AND i.visibility = 'private'");
            }
            VisibilityFilter::Shared => {
                q.push(" AND i.visibility = 'shared'");
            }
            VisibilityFilter::Community => {
                q.push(" AND i.visibility = 'community'");
            }
        },
        Viewer::Project(p) => match vis {
            VisibilityFilter::Default | VisibilityFilter::All => {
                q.push(" AND (i.owner = ").bind(p.clone());
                q.push(" OR i.visibility = 'public'");
                if vis == VisibilityFilter::All {
                    q.push(" OR i.visibility = 'community'");
                }
                q.push(" OR (i.visibility = 'shared' AND ");
                member_clause(q, p);
                q.push("))");
            }
            VisibilityFilter::Public => {
                q.push(" AND i.visibility = 'public'");
            }
            VisibilityFilter::Community => {
                q.push(" AND i.visibility = 'community'");
            }
            VisibilityFilter::Private => {
                q.push(" AND i.visibility = 'private' AND i.owner = ")
                    .bind(p.clone());
            }
            VisibilityFilter::Shared => {
                q.push(" AND i.visibility = 'shared' AND (i.owner = ")
                    .bind(p.clone());
                q.push(" OR ");
                member_clause(q, p);
                q.push(")");
            }
        },
    }
}

/// One page of images matching `query`, in its order, with properties and
/// tags.
pub async fn list_images(
    conn: &mut AnyConnection,
    backend: Backend,
    query: &ImageQuery,
) -> Result<Vec<Image>> {
    let mut q = Sql::new("SELECT i.* FROM images i WHERE 1 = 1");
    add_visibility(
        &mut q,
        &query.viewer,
        query.visibility,
        &query.member_status,
    );
    if let Some(n) = &query.name {
        q.push(" AND i.name = ").bind(n.clone());
    }
    if let Some(ids) = &query.ids {
        q.push(" AND i.id IN (").bind_list(ids.clone()).push(")");
    }
    if let Some(s) = &query.status {
        q.push(" AND i.status = ").bind(s.clone());
    }
    if let Some(o) = &query.owner {
        q.push(" AND i.owner = ").bind(o.clone());
    }
    for t in &query.tags {
        q.push(" AND EXISTS (SELECT 1 FROM image_tags t WHERE t.image_id = i.id AND t.tag = ")
            .bind(t.clone())
            .push(")");
    }
    if let Some(d) = &query.disk_format {
        q.push(" AND i.disk_format = ").bind(d.clone());
    }
    if let Some(c) = &query.container_format {
        q.push(" AND i.container_format = ").bind(c.clone());
    }
    if let Some(s) = query.size_min {
        q.push(" AND i.size >= ").bind(s);
    }
    if let Some(s) = query.size_max {
        q.push(" AND i.size <= ").bind(s);
    }
    if let Some(p) = query.protected {
        q.push(" AND i.protected = ").bind(p);
    }
    if query.os_hidden != Some(true) {
        q.push(" AND i.os_hidden = FALSE");
    }
    for (k, v) in &query.properties {
        q.push(
            " AND EXISTS (SELECT 1 FROM image_properties p WHERE p.image_id = i.id AND p.name = ",
        )
        .bind(k.clone())
        .push(" AND p.value = ")
        .bind(v.clone())
        .push(")");
    }
    let mut keys = query.sort.clone();
    if !keys.iter().any(|(k, _)| *k == SortKey::Id) {
        let dir = keys.last().map(|(_, asc)| *asc).unwrap_or(false);
        keys.push((SortKey::Id, dir));
    }
    if let Some(m) = &query.marker {
        // Keyset paging: rows strictly after the marker in sort order.
        q.push(" AND (");
        for (i, (key, asc)) in keys.iter().enumerate() {
            if i > 0 {
                q.push(" OR ");
            }
            q.push("(");
            for (prev, _) in &keys[..i] {
                q.push(prev.expr(backend)).push(" = ");
                bind_marker(&mut q, prev.marker_value(m));
                q.push(" AND ");
            }
            q.push(key.expr(backend))
                .push(if *asc { " > " } else { " < " });
            bind_marker(&mut q, key.marker_value(m));
            q.push(")");
        }
        q.push(")");
    }
    q.push(" ORDER BY ");
    for (i, (key, asc)) in keys.iter().enumerate() {
        if i > 0 {
            q.push(", ");
        }
        q.push(key.expr(backend))
            .push(if *asc { " ASC" } else { " DESC" });
    }
    q.push(" LIMIT ").bind(query.limit);
    let rows: Vec<ImageRow> = q.fetch_all(&mut *conn).await?;
    attach(conn, rows).await
}

fn bind_marker(q: &mut Sql, v: MarkerValue) {
    match v {
        MarkerValue::Text(s) => q.bind(s),
        MarkerValue::Int(n) => q.bind(n),
    };
}

async fn attach(conn: &mut AnyConnection, rows: Vec<ImageRow>) -> Result<Vec<Image>> {
    if rows.is_empty() {
        return Ok(vec![]);
    }
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let mut q = Sql::new("SELECT image_id, name, value FROM image_properties WHERE image_id IN (");
    q.bind_list(ids.clone()).push(")");
    let props: Vec<(String, String, String)> = q.fetch_all(&mut *conn).await?;
    let mut q = Sql::new("SELECT image_id, tag FROM image_tags WHERE image_id IN (");
    q.bind_list(ids).push(")");
    let tags: Vec<(String, String)> = q.fetch_all(&mut *conn).await?;
    let mut out: Vec<Image> = rows
        .into_iter()
        .map(|row| Image {
            row,
            properties: BTreeMap::new(),
            tags: vec![],
        })
        .collect();
    let index: std::collections::HashMap<String, usize> = out
        .iter()
        .enumerate()
        .map(|(i, img)| (img.row.id.clone(), i))
        .collect();
    for (id, k, v) in props {
        if let Some(&i) = index.get(&id) {
            out[i].properties.insert(k, v);
        }
    }
    for (id, t) in tags {
        if let Some(&i) = index.get(&id) {
            out[i].tags.push(t);
        }
    }
    for img in &mut out {
        img.tags.sort();
    }
    Ok(out)
}

/// An image by id, with properties and tags.
pub async fn get_image(conn: &mut AnyConnection, id: &str) -> Result<Option<Image>> {
    let row: Option<ImageRow> = sqlx::query_as("SELECT * FROM images WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        None => Ok(None),
        Some(r) => Ok(attach(conn, vec![r]).await?.pop()),
    }
}

/// An image row by id.
pub async fn get_image_row<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
) -> Result<Option<ImageRow>> {
    Ok(sqlx::query_as("SELECT * FROM images WHERE id = $1")
        .bind(id)
        .fetch_optional(ex)
        .await?)
}

async fn write_children(conn: &mut AnyConnection, img: &Image) -> Result<()> {
    sqlx::query("DELETE FROM image_properties WHERE image_id = $1")
        .bind(&img.row.id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM image_tags WHERE image_id = $1")
        .bind(&img.row.id)
        .execute(&mut *conn)
        .await?;
    for (k, v) in &img.properties {
        sqlx::query("INSERT INTO image_properties (image_id, name, value) VALUES ($1, $2, $3)")
            .bind(&img.row.id)
            .bind(k)
            .bind(v)
            .execute(&mut *conn)
            .await?;
    }
    for t in &img.tags {
        sqlx::query("INSERT INTO image_tags (image_id, tag) VALUES ($1, $2)")
            .bind(&img.row.id)
            .bind(t)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Inserts an image with its properties and tags (in a transaction).
pub async fn insert_image(conn: &mut AnyConnection, img: &Image) -> Result<()> {
    let r = &img.row;
    sqlx::query(
        "INSERT INTO images (id, name, owner, status, visibility, protected, os_hidden, disk_format, \
         container_format, size, virtual_size, checksum, os_hash_algo, os_hash_value, min_disk, \
         min_ram, created_at, updated_at, generation) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)",
    )
    .bind(&r.id)
    .bind(&r.name)
    .bind(&r.owner)
    .bind(&r.status)
    .bind(&r.visibility)
    .bind(r.protected)
    .bind(r.os_hidden)
    .bind(&r.disk_format)
    .bind(&r.container_format)
    .bind(r.size)
    .bind(r.virtual_size)
    .bind(&r.checksum)
    .bind(&r.os_hash_algo)
    .bind(&r.os_hash_value)
    .bind(r.min_disk)
    .bind(r.min_ram)
    .bind(r.created_at)
    .bind(r.updated_at)
    .bind(r.generation)
    .execute(&mut *conn)
    .await?;
    write_children(conn, img).await
}

/// Writes the user-editable fields, properties and tags of `img` if the
/// stored generation is still `img.row.generation`; bumps the generation.
/// Returns false when another writer got there first.
pub async fn update_image(conn: &mut AnyConnection, img: &Image) -> Result<bool> {
    let r = &img.row;
    let n = sqlx::query(
        "UPDATE images SET name = $1, visibility = $2, protected = $3, os_hidden = $4, \
         disk_format = $5, container_format = $6, min_disk = $7, min_ram = $8, owner = $9, \
         updated_at = $10, generation = generation + 1 \
         WHERE id = $11 AND generation = $12",
    )
    .bind(&r.name)
    .bind(&r.visibility)
    .bind(r.protected)
    .bind(r.os_hidden)
    .bind(&r.disk_format)
    .bind(&r.container_format)
    .bind(r.min_disk)
    .bind(r.min_ram)
    .bind(&r.owner)
    .bind(Timestamp::now())
    .bind(&r.id)
    .bind(r.generation)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if n != 1 {
        return Ok(false);
    }
    write_children(conn, img).await?;
    Ok(true)
}

/// Moves an image from status `from` to `to`; false if it was not in `from`.
pub async fn set_status<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
    from: &str,
    to: &str,
) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE images SET status = $1, updated_at = $2, generation = generation + 1 \
         WHERE id = $3 AND status = $4",
    )
    .bind(to)
    .bind(Timestamp::now())
    .bind(id)
    .bind(from)
    .execute(ex)
    .await?
    .rows_affected()
        == 1)
}

/// What an upload found out about the data.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadedData {
    /// Bytes.
    pub size: i64,
    /// Size of the disk.
    pub virtual_size: Option<i64>,
    /// MD5, hex.
    pub checksum: String,
    /// SHA-512, hex.
    pub os_hash_value: String,
}

/// Marks a `saving` image `active` with its data's facts; false when the
/// image is gone or no longer `saving`.
pub async fn finish_upload<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
    d: &UploadedData,
) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE images SET status = 'active', size = $1, virtual_size = $2, checksum = $3, \
         os_hash_algo = 'sha512', os_hash_value = $4, updated_at = $5, generation = generation + 1 \
         WHERE id = $6 AND status = 'saving'",
    )
    .bind(d.size)
    .bind(d.virtual_size)
    .bind(&d.checksum)
    .bind(&d.os_hash_value)
    .bind(Timestamp::now())
    .bind(id)
    .execute(ex)
    .await?
    .rows_affected()
        == 1)
}

/// Deletes an image (properties, tags and members go with it).
pub async fn delete_image<'e>(ex: impl Executor<'e, Database = Any>, id: &str) -> Result<bool> {
    Ok(sqlx::query("DELETE FROM images WHERE id = $1")
        .bind(id)
        .execute(ex)
        .await?
        .rows_affected()
        == 1)
}

/// Adds a tag (idempotent); false when the image is gone.
pub async fn add_tag(conn: &mut AnyConnection, id: &str, tag: &str) -> Result<bool> {
    let n =
        sqlx::query("UPDATE images SET updated_at = $1, generation = generation + 1 WHERE id = $2")
            .bind(Timestamp::now())
            .bind(id)
            .execute(&mut *conn)
            .await?
            .rows_affected();
    if n != 1 {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO image_tags (image_id, tag) VALUES ($1, $2) ON CONFLICT (image_id, tag) DO NOTHING",
    )
    .bind(id)
    .bind(tag)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

/// Removes a tag; false when the image had no such tag.
pub async fn remove_tag(conn: &mut AnyConnection, id: &str, tag: &str) -> Result<bool> {
    let n = sqlx::query("DELETE FROM image_tags WHERE image_id = $1 AND tag = $2")
        .bind(id)
        .bind(tag)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if n == 1 {
        sqlx::query("UPDATE images SET updated_at = $1, generation = generation + 1 WHERE id = $2")
            .bind(Timestamp::now())
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(n == 1)
}

/// Every image stuck in `saving` whose id is in `ids` goes back to `queued`.
pub async fn requeue<'e>(ex: impl Executor<'e, Database = Any>, ids: Vec<String>) -> Result<u64> {
    let mut q = Sql::new(
        "UPDATE images SET status = 'queued', generation = generation + 1 WHERE status = 'saving' AND id IN (",
    );
    q.bind_list(ids).push(")");
    q.execute(ex).await
}

// ---- members -----------------------------------------------------------------

/// Adds a member.
pub async fn add_member<'e>(ex: impl Executor<'e, Database = Any>, m: &Member) -> Result<()> {
    sqlx::query(
        "INSERT INTO image_members (image_id, member, status, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&m.image_id)
    .bind(&m.member)
    .bind(&m.status)
    .bind(m.created_at)
    .bind(m.updated_at)
    .execute(ex)
    .await?;
    Ok(())
}

/// A member of an image.
pub async fn get_member<'e>(
    ex: impl Executor<'e, Database = Any>,
    image_id: &str,
    member: &str,
) -> Result<Option<Member>> {
    Ok(
        sqlx::query_as("SELECT * FROM image_members WHERE image_id = $1 AND member = $2")
            .bind(image_id)
            .bind(member)
            .fetch_optional(ex)
            .await?,
    )
}

/// The members of an image.
pub async fn list_members<'e>(
    ex: impl Executor<'e, Database = Any>,
    image_id: &str,
) -> Result<Vec<Member>> {
    Ok(
        sqlx::query_as("SELECT * FROM image_members WHERE image_id = $1 ORDER BY member")
            .bind(image_id)
            .fetch_all(ex)
            .await?,
    )
}

/// Sets a member's status; false when there is no such member.
pub async fn set_member_status<'e>(
    ex: impl Executor<'e, Database = Any>,
    image_id: &str,
    member: &str,
    status: &str,
) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE image_members SET status = $1, updated_at = $2 WHERE image_id = $3 AND member = $4",
    )
    .bind(status)
    .bind(Timestamp::now())
    .bind(image_id)
    .bind(member)
    .execute(ex)
    .await?
    .rows_affected()
        == 1)
}

/// Removes a member; false when there was none.
pub async fn delete_member<'e>(
    ex: impl Executor<'e, Database = Any>,
    image_id: &str,
    member: &str,
) -> Result<bool> {
    Ok(
        sqlx::query("DELETE FROM image_members WHERE image_id = $1 AND member = $2")
            .bind(image_id)
            .bind(member)
            .execute(ex)
            .await?
            .rows_affected()
            == 1,
    )
}

/// Counts every image (for benchmarks and tests).
pub async fn count_images<'e>(ex: impl Executor<'e, Database = Any>) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM images")
        .fetch_one(ex)
        .await?)
}
