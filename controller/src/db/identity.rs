//! Identity tables: domains, projects, users, roles (and their implications),
//! role assignments, tokens, and the service catalog (regions, services,
//! endpoints).

use sqlx::{Any, AnyConnection, Executor};

use super::{Sql, Timestamp};
use crate::error::Result;

/// A domain.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Domain {
    /// Id (`default` for the default domain).
    pub id: String,
    /// Unique name (`Default`).
    pub name: String,
    /// Free text.
    pub description: String,
    /// Disabled domains can't be used to authenticate.
    #[sqlx(try_from = "super::Flag")]
    pub enabled: bool,
    /// Creation time.
    pub created_at: Timestamp,
}

/// A project.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Project {
    /// Id (32 hex digits).
    pub id: String,
    /// Owning domain.
    pub domain_id: String,
    /// Name, unique within the domain.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Disabled projects can't be scoped to.
    #[sqlx(try_from = "super::Flag")]
    pub enabled: bool,
    /// Creation time.
    pub created_at: Timestamp,
}

/// A user.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct User {
    /// Id (32 hex digits).
    pub id: String,
    /// Owning domain.
    pub domain_id: String,
    /// Name, unique within the domain.
    pub name: String,
    /// Argon2 PHC string; `None` means the user cannot log in with a password.
    pub password_hash: Option<String>,
    /// Disabled users can't authenticate and their tokens stop validating.
    #[sqlx(try_from = "super::Flag")]
    pub enabled: bool,
    /// Project used when a token request has no scope.
    pub default_project_id: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// E-mail address.
    pub email: Option<String>,
    /// Creation time.
    pub created_at: Timestamp,
}

/// A role.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Role {
    /// Id (32 hex digits).
    pub id: String,
    /// Unique name (`admin`, `member`, `reader`, …).
    pub name: String,
    /// Free text.
    pub description: Option<String>,
}

/// A role of a user on a project.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, sqlx::FromRow)]
pub struct Assignment {
    /// The user.
    pub user_id: String,
    /// The project.
    pub project_id: String,
    /// The role.
    pub role_id: String,
}

/// A stored token: everything but its value (only the hash is kept).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Token {
    /// SHA-256 of the token value, hex.
    pub id_hash: String,
    /// Whose token.
    pub user_id: String,
    /// The project it is scoped to, if any.
    pub project_id: Option<String>,
    /// Authentication methods, comma-separated (`password`, `token`).
    pub methods: String,
    /// An id shared by a token and the tokens rescoped from it.
    pub audit_id: String,
    /// When issued.
    pub issued_at: Timestamp,
    /// When it stops validating.
    pub expires_at: Timestamp,
    /// Revoked by `DELETE /v3/auth/tokens`.
    #[sqlx(try_from = "super::Flag")]
    pub revoked: bool,
    /// The audit id of the token this one was rescoped from.
    pub parent_audit_id: Option<String>,
}

/// A token joined with its user and project, as validation needs it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct TokenInfo {
    /// Whose token.
    pub user_id: String,
    /// The user's name.
    pub user_name: String,
    /// The user's domain.
    pub user_domain_id: String,
    /// The user's domain's name.
    pub user_domain_name: String,
    /// Whether the user is enabled.
    #[sqlx(try_from = "super::Flag")]
    pub user_enabled: bool,
    /// The project it is scoped to.
    pub project_id: Option<String>,
    /// That project's name.
    pub project_name: Option<String>,
    /// That project's domain.
    pub project_domain_id: Option<String>,
    /// That project's domain's name.
    pub project_domain_name: Option<String>,
    /// Whether that project is enabled.
    #[sqlx(try_from = "super::OptFlag")]
    pub project_enabled: Option<bool>,
    /// Authentication methods, comma-separated.
    pub methods: String,
    /// Audit id.
    pub audit_id: String,
    /// When issued.
    pub issued_at: Timestamp,
    /// When it expires.
    pub expires_at: Timestamp,
    /// Whether revoked.
    #[sqlx(try_from = "super::Flag")]
    pub revoked: bool,
}

/// A catalog service.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Service {
    /// Id.
    pub id: String,
    /// Type (`identity`, `compute`, …).
    #[sqlx(rename = "type")]
    pub kind: String,
    /// Name (`keystone`, `nova`, …).
    pub name: String,
    /// Free text.
    pub description: String,
    /// Disabled services are left out of the catalog.
    #[sqlx(try_from = "super::Flag")]
    pub enabled: bool,
}

/// A catalog endpoint.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Endpoint {
    /// Id.
    pub id: String,
    /// Its service.
    pub service_id: String,
    /// `public`, `internal` or `admin`.
    pub interface: String,
    /// Region.
    pub region_id: Option<String>,
    /// URL.
    pub url: String,
    /// Disabled endpoints are left out of the catalog.
    #[sqlx(try_from = "super::Flag")]
    pub enabled: bool,
}

// ---- domains ---------------------------------------------------------------

/// Inserts a domain.
pub async fn create_domain<'e>(ex: impl Executor<'e, Database = Any>, d: &Domain) -> Result<()> {
    sqlx::query(
        "INSERT INTO domains (id, name, description, enabled, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&d.id)
    .bind(&d.name)
    .bind(&d.description)
    .bind(d.enabled)
    .bind(d.created_at)
    .execute(ex)
    .await?;
    Ok(())
}

/// A domain by id.
pub async fn get_domain<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
) -> Result<Option<Domain>> {
    Ok(sqlx::query_as("SELECT * FROM domains WHERE id = $1")
        .bind(id)
        .fetch_optional(ex)
        .await?)
}

/// A domain by name.
pub async fn find_domain<'e>(
    ex: impl Executor<'e, Database = Any>,
    name: &str,
) -> Result<Option<Domain>> {
    Ok(sqlx::query_as("SELECT * FROM domains WHERE name = $1")
        .bind(name)
        .fetch_optional(ex)
        .await?)
}

/// Domains, optionally by name and enabled flag.
pub async fn list_domains<'e>(
    ex: impl Executor<'e, Database = Any>,
    name: Option<&str>,
    enabled: Option<bool>,
) -> Result<Vec<Domain>> {
    let mut q = Sql::new("SELECT * FROM domains WHERE 1 = 1");
    if let Some(n) = name {
        q.push(" AND name = ").bind(n.to_owned());
    }
    if let Some(e) = enabled {
        q.push(" AND enabled = ").bind(e);
    }
    q.push(" ORDER BY name");
    q.fetch_all(ex).await
}

// ---- projects --------------------------------------------------------------

/// Inserts a project.
pub async fn create_project<'e>(ex: impl Executor<'e, Database = Any>, p: &Project) -> Result<()> {
    sqlx::query(
        "INSERT INTO projects (id, domain_id, name, description, enabled, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&p.id)
    .bind(&p.domain_id)
    .bind(&p.name)
    .bind(&p.description)
    .bind(p.enabled)
    .bind(p.created_at)
    .execute(ex)
    .await?;
    Ok(())
}

/// A project by id.
pub async fn get_project<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
) -> Result<Option<Project>> {
    Ok(sqlx::query_as("SELECT * FROM projects WHERE id = $1")
        .bind(id)
        .fetch_optional(ex)
        .await?)
}

/// A project by domain and name.
pub async fn find_project<'e>(
    ex: impl Executor<'e, Database = Any>,
    domain_id: &str,
    name: &str,
) -> Result<Option<Project>> {
    Ok(
        sqlx::query_as("SELECT * FROM projects WHERE domain_id = $1 AND name = $2")
            .bind(domain_id)
            .bind(name)
            .fetch_optional(ex)
            .await?,
    )
}

/// Filters for [`list_projects`].
#[derive(Debug, Default, Clone)]
pub struct ProjectFilter {
    /// Exact name.
    pub name: Option<String>,
    /// Domain.
    pub domain_id: Option<String>,
    /// Enabled flag.
    pub enabled: Option<bool>,
    /// Only projects where this user has a role.
    pub user_id: Option<String>,
    /// Only this project (for non-admin listings).
    pub id: Option<String>,
}

/// Projects matching `f`, by name.
pub async fn list_projects<'e>(
    ex: impl Executor<'e, Database = Any>,
    f: &ProjectFilter,
) -> Result<Vec<Project>> {
    let mut q = Sql::new("SELECT * FROM projects p WHERE 1 = 1");
    if let Some(n) = &f.name {
        q.push(" AND p.name = ").bind(n.clone());
    }
    if let Some(d) = &f.domain_id {
        q.push(" AND p.domain_id = ").bind(d.clone());
    }
    if let Some(e) = f.enabled {
        q.push(" AND p.enabled = ").bind(e);
    }
    if let Some(id) = &f.id {
        q.push(" AND p.id = ").bind(id.clone());
    }
    if let Some(u) = &f.user_id {
        q.push(" AND EXISTS (SELECT 1 FROM role_assignments ra WHERE ra.project_id = p.id AND ra.user_id = ")
            .bind(u.clone())
            .push(")");
    }
    q.push(" ORDER BY p.name, p.id");
    q.fetch_all(ex).await
}

/// Changes to a project; `None` leaves a field alone.
#[derive(Debug, Default, Clone)]
pub struct ProjectUpdate {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New enabled flag.
    pub enabled: Option<bool>,
}

/// Updates a project; returns whether it exists.
pub async fn update_project<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
    u: &ProjectUpdate,
) -> Result<bool> {
    let mut q = Sql::new("UPDATE projects SET id = id");
    if let Some(n) = &u.name {
        q.push(", name = ").bind(n.clone());
    }
    if let Some(d) = &u.description {
        q.push(", description = ").bind(d.clone());
    }
    if let Some(e) = u.enabled {
        q.push(", enabled = ").bind(e);
    }
    q.push(" WHERE id = ").bind(id.to_owned());
    Ok(q.execute(ex).await? == 1)
}

/// Deletes a project (its role assignments and tokens go with it); returns
/// whether it existed.
pub async fn delete_project<'e>(ex: impl Executor<'e, Database = Any>, id: &str) -> Result<bool> {
    Ok(sqlx::query("DELETE FROM projects WHERE id = $1")
        .bind(id)
        .execute(ex)
        .await?
        .rows_affected()
        == 1)
}

// ---- users -----------------------------------------------------------------

/// Inserts a user.
pub async fn create_user<'e>(ex: impl Executor<'e, Database = Any>, u: &User) -> Result<()> {
    sqlx::query(
        "INSERT INTO users (id, domain_id, name, password_hash, enabled, default_project_id, \
         description, email, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&u.id)
    .bind(&u.domain_id)
    .bind(&u.name)
    .bind(&u.password_hash)
    .bind(u.enabled)
    .bind(&u.default_project_id)
    .bind(&u.description)
    .bind(&u.email)
    .bind(u.created_at)
    .execute(ex)
    .await?;
    Ok(())
}

/// A user by id.
pub async fn get_user<'e>(ex: impl Executor<'e, Database = Any>, id: &str) -> Result<Option<User>> {
    Ok(sqlx::query_as("SELECT * FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(ex)
        .await?)
}

/// A user by domain and name.
pub async fn find_user<'e>(
    ex: impl Executor<'e, Database = Any>,
    domain_id: &str,
    name: &str,
) -> Result<Option<User>> {
    Ok(
        sqlx::query_as("SELECT * FROM users WHERE domain_id = $1 AND name = $2")
            .bind(domain_id)
            .bind(name)
            .fetch_optional(ex)
            .await?,
    )
}

/// Users, optionally by name, domain and enabled flag.
pub async fn list_users<'e>(
    ex: impl Executor<'e, Database = Any>,
    name: Option<&str>,
    domain_id: Option<&str>,
    enabled: Option<bool>,
) -> Result<Vec<User>> {
    let mut q = Sql::new("SELECT * FROM users WHERE 1 = 1");
    if let Some(n) = name {
        q.push(" AND name = ").bind(n.to_owned());
    }
    if let Some(d) = domain_id {
        q.push(" AND domain_id = ").bind(d.to_owned());
    }
    if let Some(e) = enabled {
        q.push(" AND enabled = ").bind(e);
    }
    q.push(" ORDER BY name, id");
    q.fetch_all(ex).await
}

/// Changes to a user; `None` leaves a field alone, `Some(None)` clears it.
#[derive(Debug, Default, Clone)]
pub struct UserUpdate {
    /// New name.
    pub name: Option<String>,
    /// New password hash.
    pub password_hash: Option<String>,
    /// New enabled flag.
    pub enabled: Option<bool>,
    /// New default project.
    pub default_project_id: Option<Option<String>>,
    /// New description.
    pub description: Option<Option<String>>,
    /// New e-mail.
    pub email: Option<Option<String>>,
}

/// Updates a user; returns whether it exists.
pub async fn update_user<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
    u: &UserUpdate,
) -> Result<bool> {
    let mut q = Sql::new("UPDATE users SET id = id");
    if let Some(n) = &u.name {
        q.push(", name = ").bind(n.clone());
    }
    if let Some(h) = &u.password_hash {
        q.push(", password_hash = ").bind(h.clone());
    }
    if let Some(e) = u.enabled {
        q.push(", enabled = ").bind(e);
    }
    if let Some(p) = &u.default_project_id {
        q.push(", default_project_id = ").bind(p.clone());
    }
    if let Some(d) = &u.description {
        q.push(", description = ").bind(d.clone());
    }
    if let Some(m) = &u.email {
        q.push(", email = ").bind(m.clone());
    }
    q.push(" WHERE id = ").bind(id.to_owned());
    Ok(q.execute(ex).await? == 1)
}

/// Deletes a user (their assignments and tokens go with them).
pub async fn delete_user<'e>(ex: impl Executor<'e, Database = Any>, id: &str) -> Result<bool> {
    Ok(sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(id)
        .execute(ex)
        .await?
        .rows_affected()
        == 1)
}

// ---- roles -----------------------------------------------------------------

/// Inserts a role.
pub async fn create_role<'e>(ex: impl Executor<'e, Database = Any>, r: &Role) -> Result<()> {
    sqlx::query("INSERT INTO roles (id, name, description, created_at) VALUES ($1, $2, $3, $4)")
        .bind(&r.id)
        .bind(&r.name)
        .bind(&r.description)
        .bind(Timestamp::now())
        .execute(ex)
        .await?;
    Ok(())
}

/// A role by id.
pub async fn get_role<'e>(ex: impl Executor<'e, Database = Any>, id: &str) -> Result<Option<Role>> {
    Ok(
        sqlx::query_as("SELECT id, name, description FROM roles WHERE id = $1")
            .bind(id)
            .fetch_optional(ex)
            .await?,
    )
}

/// A role by name.
pub async fn find_role<'e>(
    ex: impl Executor<'e, Database = Any>,
    name: &str,
) -> Result<Option<Role>> {
    Ok(
        sqlx::query_as("SELECT id, name, description FROM roles WHERE name = $1")
            .bind(name)
            .fetch_optional(ex)
            .await?,
    )
}

/// Roles, optionally by name.
pub async fn list_roles<'e>(
    ex: impl Executor<'e, Database = Any>,
    name: Option<&str>,
) -> Result<Vec<Role>> {
    let mut q = Sql::new("SELECT id, name, description FROM roles WHERE 1 = 1");
    if let Some(n) = name {
        q.push(" AND name = ").bind(n.to_owned());
    }
    q.push(" ORDER BY name");
    q.fetch_all(ex).await
}

/// Deletes a role (its assignments go with it).
pub async fn delete_role<'e>(ex: impl Executor<'e, Database = Any>, id: &str) -> Result<bool> {
    Ok(sqlx::query("DELETE FROM roles WHERE id = $1")
        .bind(id)
        .execute(ex)
        .await?
        .rows_affected()
        == 1)
}

/// Records that `prior` implies `implied` (idempotent).
pub async fn add_implication<'e>(
    ex: impl Executor<'e, Database = Any>,
    prior: &str,
    implied: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO role_implications (prior_role_id, implied_role_id) VALUES ($1, $2) \
         ON CONFLICT (prior_role_id, implied_role_id) DO NOTHING",
    )
    .bind(prior)
    .bind(implied)
    .execute(ex)
    .await?;
    Ok(())
}

// ---- role assignments ------------------------------------------------------

/// Grants `role` to `user` on `project` (idempotent).
pub async fn grant<'e>(
    ex: impl Executor<'e, Database = Any>,
    user_id: &str,
    project_id: &str,
    role_id: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO role_assignments (user_id, project_id, role_id) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id, project_id, role_id) DO NOTHING",
    )
    .bind(user_id)
    .bind(project_id)
    .bind(role_id)
    .execute(ex)
    .await?;
    Ok(())
}

/// Revokes a grant; returns whether it existed.
pub async fn revoke<'e>(
    ex: impl Executor<'e, Database = Any>,
    user_id: &str,
    project_id: &str,
    role_id: &str,
) -> Result<bool> {
    Ok(sqlx::query(
        "DELETE FROM role_assignments WHERE user_id = $1 AND project_id = $2 AND role_id = $3",
    )
    .bind(user_id)
    .bind(project_id)
    .bind(role_id)
    .execute(ex)
    .await?
    .rows_affected()
        == 1)
}

/// Direct assignments matching the filters.
pub async fn list_assignments<'e>(
    ex: impl Executor<'e, Database = Any>,
    user_id: Option<&str>,
    project_id: Option<&str>,
    role_id: Option<&str>,
) -> Result<Vec<Assignment>> {
    let mut q = Sql::new("SELECT user_id, project_id, role_id FROM role_assignments WHERE 1 = 1");
    if let Some(u) = user_id {
        q.push(" AND user_id = ").bind(u.to_owned());
    }
    if let Some(p) = project_id {
        q.push(" AND project_id = ").bind(p.to_owned());
    }
    if let Some(r) = role_id {
        q.push(" AND role_id = ").bind(r.to_owned());
    }
    q.push(" ORDER BY user_id, project_id, role_id");
    q.fetch_all(ex).await
}

/// The roles `user` has on `project`: direct ones and every role they imply.
pub async fn effective_roles<'e>(
    ex: impl Executor<'e, Database = Any>,
    user_id: &str,
    project_id: &str,
) -> Result<Vec<Role>> {
    Ok(sqlx::query_as(
        "WITH RECURSIVE eff (role_id) AS ( \
             SELECT role_id FROM role_assignments WHERE user_id = $1 AND project_id = $2 \
             UNION \
             SELECT ri.implied_role_id FROM role_implications ri JOIN eff ON ri.prior_role_id = eff.role_id \
         ) \
         SELECT r.id, r.name, r.description FROM roles r JOIN eff ON eff.role_id = r.id ORDER BY r.name",
    )
    .bind(user_id)
    .bind(project_id)
    .fetch_all(ex)
    .await?)
}

/// Every implication `(prior, implied)`.
pub async fn list_implications<'e>(
    ex: impl Executor<'e, Database = Any>,
) -> Result<Vec<(String, String)>> {
    Ok(
        sqlx::query_as("SELECT prior_role_id, implied_role_id FROM role_implications")
            .fetch_all(ex)
            .await?,
    )
}

// ---- tokens ----------------------------------------------------------------

/// Stores a token.
pub async fn insert_token<'e>(ex: impl Executor<'e, Database = Any>, t: &Token) -> Result<()> {
    sqlx::query(
        "INSERT INTO tokens (id_hash, user_id, project_id, methods, audit_id, issued_at, expires_at, revoked, \
         parent_audit_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&t.id_hash)
    .bind(&t.user_id)
    .bind(&t.project_id)
    .bind(&t.methods)
    .bind(&t.audit_id)
    .bind(t.issued_at)
    .bind(t.expires_at)
    .bind(t.revoked)
    .bind(&t.parent_audit_id)
    .execute(ex)
    .await?;
    Ok(())
}

/// A token with its user and project, by hash.
pub async fn token_info<'e>(
    ex: impl Executor<'e, Database = Any>,
    id_hash: &str,
) -> Result<Option<TokenInfo>> {
    Ok(sqlx::query_as(
        "SELECT t.user_id, u.name AS user_name, u.domain_id AS user_domain_id, \
                ud.name AS user_domain_name, u.enabled AS user_enabled, \
                t.project_id, p.name AS project_name, p.domain_id AS project_domain_id, \
                pd.name AS project_domain_name, p.enabled AS project_enabled, \
                t.methods, t.audit_id, t.issued_at, t.expires_at, t.revoked \
         FROM tokens t \
         JOIN users u ON u.id = t.user_id \
         JOIN domains ud ON ud.id = u.domain_id \
         LEFT JOIN projects p ON p.id = t.project_id \
         LEFT JOIN domains pd ON pd.id = p.domain_id \
         WHERE t.id_hash = $1",
    )
    .bind(id_hash)
    .fetch_optional(ex)
    .await?)
}

/// Marks a token revoked; returns whether it was valid until now.
pub async fn revoke_token<'e>(
    ex: impl Executor<'e, Database = Any>,
    id_hash: &str,
) -> Result<bool> {
    Ok(
        sqlx::query("UPDATE tokens SET revoked = TRUE WHERE id_hash = $1 AND revoked = FALSE")
            .bind(id_hash)
            .execute(ex)
            .await?
            .rows_affected()
            == 1,
    )
}

/// Revokes every token of a user (a password change, a disabled user);
/// returns how many were live.
pub async fn revoke_user_tokens<'e>(
    ex: impl Executor<'e, Database = Any>,
    user_id: &str,
) -> Result<u64> {
    Ok(
        sqlx::query("UPDATE tokens SET revoked = TRUE WHERE user_id = $1 AND revoked = FALSE")
            .bind(user_id)
            .execute(ex)
            .await?
            .rows_affected(),
    )
}

/// Revokes the tokens rescoped from the token with `audit_id`, and the
/// tokens rescoped from those, down the chain; returns how many.
pub async fn revoke_descendants(conn: &mut AnyConnection, audit_id: &str) -> Result<u64> {
    let mut frontier = vec![audit_id.to_owned()];
    let mut seen = std::collections::BTreeSet::new();
    let mut revoked = 0;
    while !frontier.is_empty() {
        let mut q = Sql::new("SELECT audit_id FROM tokens WHERE parent_audit_id IN (");
        q.bind_list(frontier.clone()).push(")");
        let children: Vec<(String,)> = q.fetch_all(&mut *conn).await?;
        let mut u = Sql::new(
            "UPDATE tokens SET revoked = TRUE WHERE revoked = FALSE AND parent_audit_id IN (",
        );
        u.bind_list(frontier.clone()).push(")");
        revoked += u.execute(&mut *conn).await?;
        frontier = children
            .into_iter()
            .map(|(c,)| c)
            .filter(|c| seen.insert(c.clone()))
            .collect();
    }
    Ok(revoked)
}

/// Whether the token with `audit_id` is revoked (or gone).
pub async fn audit_revoked<'e>(
    ex: impl Executor<'e, Database = Any>,
    audit_id: &str,
) -> Result<bool> {
    let live: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM tokens WHERE audit_id = $1 AND revoked = FALSE LIMIT 1")
            .bind(audit_id)
            .fetch_optional(ex)
            .await?;
    Ok(live.is_none())
}

/// Deletes tokens that expired before `before`; returns how many.
pub async fn delete_expired_tokens<'e>(
    ex: impl Executor<'e, Database = Any>,
    before: Timestamp,
) -> Result<u64> {
    Ok(sqlx::query("DELETE FROM tokens WHERE expires_at < $1")
        .bind(before)
        .execute(ex)
        .await?
        .rows_affected())
}

// ---- catalog ---------------------------------------------------------------

/// Creates a region unless it exists.
pub async fn ensure_region<'e>(ex: impl Executor<'e, Database = Any>, id: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO regions (id, description) VALUES ($1, '') ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .execute(ex)
    .await?;
    Ok(())
}

/// Every region id.
pub async fn list_regions<'e>(ex: impl Executor<'e, Database = Any>) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar("SELECT id FROM regions ORDER BY id")
        .fetch_all(ex)
        .await?)
}

/// Inserts a service.
pub async fn create_service<'e>(ex: impl Executor<'e, Database = Any>, s: &Service) -> Result<()> {
    sqlx::query(
        "INSERT INTO services (id, type, name, description, enabled) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&s.id)
    .bind(&s.kind)
    .bind(&s.name)
    .bind(&s.description)
    .bind(s.enabled)
    .execute(ex)
    .await?;
    Ok(())
}

/// Services, optionally of one type or name.
pub async fn list_services<'e>(
    ex: impl Executor<'e, Database = Any>,
    kind: Option<&str>,
    name: Option<&str>,
) -> Result<Vec<Service>> {
    let mut q = Sql::new("SELECT * FROM services WHERE 1 = 1");
    if let Some(k) = kind {
        q.push(" AND type = ").bind(k.to_owned());
    }
    if let Some(n) = name {
        q.push(" AND name = ").bind(n.to_owned());
    }
    q.push(" ORDER BY type, name, id");
    q.fetch_all(ex).await
}

/// A service by id.
pub async fn get_service<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
) -> Result<Option<Service>> {
    Ok(sqlx::query_as("SELECT * FROM services WHERE id = $1")
        .bind(id)
        .fetch_optional(ex)
        .await?)
}

/// Deletes a service (its endpoints go with it).
pub async fn delete_service<'e>(ex: impl Executor<'e, Database = Any>, id: &str) -> Result<bool> {
    Ok(sqlx::query("DELETE FROM services WHERE id = $1")
        .bind(id)
        .execute(ex)
        .await?
        .rows_affected()
        == 1)
}

/// Inserts an endpoint.
pub async fn create_endpoint<'e>(
    ex: impl Executor<'e, Database = Any>,
    e: &Endpoint,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO endpoints (id, service_id, interface, region_id, url, enabled) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&e.id)
    .bind(&e.service_id)
    .bind(&e.interface)
    .bind(&e.region_id)
    .bind(&e.url)
    .bind(e.enabled)
    .execute(ex)
    .await?;
    Ok(())
}

/// Points an endpoint at a new URL.
pub async fn set_endpoint_url<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
    url: &str,
) -> Result<bool> {
    Ok(sqlx::query("UPDATE endpoints SET url = $1 WHERE id = $2")
        .bind(url)
        .bind(id)
        .execute(ex)
        .await?
        .rows_affected()
        == 1)
}

/// Endpoints, optionally of one service, interface or region.
pub async fn list_endpoints<'e>(
    ex: impl Executor<'e, Database = Any>,
    service_id: Option<&str>,
    interface: Option<&str>,
    region_id: Option<&str>,
) -> Result<Vec<Endpoint>> {
    let mut q = Sql::new("SELECT * FROM endpoints WHERE 1 = 1");
    if let Some(s) = service_id {
        q.push(" AND service_id = ").bind(s.to_owned());
    }
    if let Some(i) = interface {
        q.push(" AND interface = ").bind(i.to_owned());
    }
    if let Some(r) = region_id {
        q.push(" AND region_id = ").bind(r.to_owned());
    }
    q.push(" ORDER BY service_id, interface, id");
    q.fetch_all(ex).await
}

/// An endpoint by id.
pub async fn get_endpoint<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
) -> Result<Option<Endpoint>> {
    Ok(sqlx::query_as("SELECT * FROM endpoints WHERE id = $1")
        .bind(id)
        .fetch_optional(ex)
        .await?)
}

/// Deletes an endpoint.
pub async fn delete_endpoint<'e>(ex: impl Executor<'e, Database = Any>, id: &str) -> Result<bool> {
    Ok(sqlx::query("DELETE FROM endpoints WHERE id = $1")
        .bind(id)
        .execute(ex)
        .await?
        .rows_affected()
        == 1)
}

/// The enabled catalog: each enabled service with its enabled endpoints.
pub async fn catalog(conn: &mut AnyConnection) -> Result<Vec<(Service, Vec<Endpoint>)>> {
    let services: Vec<Service> =
        sqlx::query_as("SELECT * FROM services WHERE enabled = TRUE ORDER BY type, name, id")
            .fetch_all(&mut *conn)
            .await?;
    let endpoints: Vec<Endpoint> =
        sqlx::query_as("SELECT * FROM endpoints WHERE enabled = TRUE ORDER BY interface, id")
            .fetch_all(&mut *conn)
            .await?;
    Ok(services
        .into_iter()
        .map(|s| {
            let eps = endpoints
                .iter()
                .filter(|e| e.service_id == s.id)
                .cloned()
                .collect();
            (s, eps)
        })
        .collect())
}
