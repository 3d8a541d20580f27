//! Identity: authentication, tokens, projects, users, roles, assignments, the
//! catalog, and bootstrap.
//!
//! # Tokens
//!
//! Tokens are opaque: `m` and 32 bytes from the OS random source,
//! base64url-encoded (44 characters; the letter keeps a token from starting
//! with `-`, which command lines take for an option). The database keeps only their SHA-256, with the user, the
//! project scope, the expiry and a revoked flag. Validating a token is one
//! indexed lookup of its hash joined with its user and project, plus the
//! user's effective roles on the project, so:
//!
//! - revocation (`DELETE /v3/auth/tokens`), disabling a user or project,
//!   and removing a role take effect at once on every controller replica —
//!   no revocation list to distribute, no signing keys to rotate;
//! - a leaked database does not leak usable tokens (only their hashes);
//! - the cost is a database read per request, which the API needs anyway.
//!
//! Expired tokens are swept periodically (`[identity]
//! token_cleanup_interval_secs`).
//!
//! # Passwords
//!
//! Argon2id with a per-password random salt, stored as a PHC string; the cost
//! parameters come from `[identity]`. Hashing and verifying run on the
//! blocking thread pool. Authenticating an unknown user still verifies
//! against a dummy hash, so response time does not reveal which users exist.

use std::sync::LazyLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use serde::Deserialize;
use sha2::Digest;

use super::{App, ServiceKind, hex_id};
use crate::context::{Context, ProjectScope, RoleRef};
use crate::db::identity as store;
use crate::db::{Timestamp, Tx};
use crate::error::{Error, Kind, Result};
use crate::policy::Target;

/// The id of the default domain.
pub const DEFAULT_DOMAIN_ID: &str = "default";
/// The name of the default domain.
pub const DEFAULT_DOMAIN_NAME: &str = "Default";
/// The roles bootstrap creates, each implying the next.
pub const STANDARD_ROLES: [&str; 3] = ["admin", "member", "reader"];

const UNAUTHORIZED: &str = "The request you have made requires authentication.";

// ---- authentication input --------------------------------------------------

/// A reference to a domain by id or name.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct DomainRef {
    /// Domain id.
    pub id: Option<String>,
    /// Domain name.
    pub name: Option<String>,
}

/// A reference to a user by id, or by name and domain.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct UserRef {
    /// User id.
    pub id: Option<String>,
    /// User name (needs `domain`).
    pub name: Option<String>,
    /// The user's domain.
    pub domain: Option<DomainRef>,
    /// The password.
    pub password: Option<String>,
}

/// A reference to a project by id, or by name and domain.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct ProjectRef {
    /// Project id.
    pub id: Option<String>,
    /// Project name (needs `domain`).
    pub name: Option<String>,
    /// The project's domain.
    pub domain: Option<DomainRef>,
}

/// How the caller proves who they are.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// A user's password.
    Password(UserRef),
    /// An existing token (rescoping).
    Token(String),
}

/// What the new token is scoped to.
#[derive(Debug, Clone)]
pub enum Scope {
    /// No scope given: the user's default project if any, else unscoped.
    Default,
    /// Explicitly unscoped.
    Unscoped,
    /// A project.
    Project(ProjectRef),
}

/// A newly issued token.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The token value, shown to the client once.
    pub token: String,
    /// What it stands for.
    pub context: Context,
    /// Audit ids: the token's own, then the one it was rescoped from.
    pub audit_ids: Vec<String>,
}

/// One catalog entry.
#[derive(Debug, Clone)]
pub struct CatalogEntry {
    /// The service.
    pub service: store::Service,
    /// Its endpoints.
    pub endpoints: Vec<store::Endpoint>,
}

// ---- passwords ---------------------------------------------------------------

fn argon2(app: &App) -> Result<Argon2<'static>> {
    let c = &app.config.identity;
    let params = Params::new(
        c.argon2_memory_kib,
        c.argon2_iterations,
        c.argon2_parallelism,
        None,
    )
    .map_err(|e| Error::internal("argon2 parameters from [identity]", e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

fn check_password_length(app: &App, password: &str) -> Result<()> {
    if password.len() > app.config.identity.max_password_length {
        return Err(Error::bad_request(format!(
            "Invalid input for field 'password': longer than {} bytes.",
            app.config.identity.max_password_length
        )));
    }
    Ok(())
}

/// A turn for one Argon2 run: at most `[identity]
/// max_concurrent_password_checks` at once (each takes `argon2_memory_kib`
/// of memory), a wait of at most `password_check_wait_ms`, then 503 with
/// Retry-After: a flood of logins can't exhaust memory or queue forever.
async fn password_turn(app: &App) -> Result<tokio::sync::OwnedSemaphorePermit> {
    let wait = std::time::Duration::from_millis(app.config.identity.password_check_wait_ms);
    match tokio::time::timeout(wait, app.password_checks.clone().acquire_owned()).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => {
            tracing::warn!("too many password checks at once; refusing one");
            Err(Error::new(
                Kind::ServiceUnavailable,
                "Too many password checks are in progress; retry shortly.",
            )
            .with_retry_after(1))
        }
    }
}

/// Hashes a password with argon2id (on the blocking pool).
pub async fn hash_password(app: &App, password: &str) -> Result<String> {
    check_password_length(app, password)?;
    let a = argon2(app)?;
    let password = password.to_owned();
    let turn = password_turn(app).await?;
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| Error::internal("random salt", e.to_string()))?;
        let salt = SaltString::encode_b64(&salt)
            .map_err(|e| Error::internal("encoding salt", e.to_string()))?;
        a.hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| Error::internal("hashing password", e.to_string()))
    })
    .await
    .map_err(|e| Error::internal("password hashing task", e))?
}

/// A hash that no password matches, verified when the user does not exist.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    let salt = SaltString::encode_b64(b"mica-dummy-salt!").expect("valid salt");
    Argon2::default()
        .hash_password(b"\0not a password\0", &salt)
        .expect("hashing works")
        .to_string()
});

async fn verify_password(app: &App, hash: Option<String>, password: &str) -> Result<bool> {
    let password = password.to_owned();
    let turn = password_turn(app).await?;
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        let (hash, real) = match hash {
            Some(h) => (h, true),
            None => (DUMMY_HASH.clone(), false),
        };
        let Ok(parsed) = PasswordHash::new(&hash) else {
            return false;
        };
        // The parameters come from the stored hash, not the config.
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        ok && real
    })
    .await
    .map_err(|e| Error::internal("password verification task", e))
}

/// A new token: a fixed letter, then 256 random bits in URL-safe base64.
/// The letter keeps a token from starting with `-`, which command lines
/// (`openstack token revoke <token>`) would take for an option.
fn new_token_value() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::internal("random token", e.to_string()))?;
    Ok(format!(
        "m{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// The stored form of a token value.
pub fn token_hash(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

fn new_audit_id() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| Error::internal("random audit id", e.to_string()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

// ---- lookups -------------------------------------------------------------------

async fn resolve_domain(app: &App, d: Option<&DomainRef>, what: &str) -> Result<store::Domain> {
    let d = d.ok_or_else(|| {
        Error::bad_request(format!(
            "Expecting to find domain in {what}: a name needs a domain."
        ))
    })?;
    let found = match (&d.id, &d.name) {
        (Some(id), _) => store::get_domain(app.db.pool(), id).await?,
        (None, Some(name)) => store::find_domain(app.db.pool(), name).await?,
        (None, None) => {
            return Err(Error::bad_request(format!(
                "Expecting to find domain id or name in {what}."
            )));
        }
    };
    found.ok_or_else(|| Error::unauthorized(UNAUTHORIZED))
}

async fn resolve_user(app: &App, u: &UserRef) -> Result<Option<store::User>> {
    match (&u.id, &u.name) {
        (Some(id), _) => store::get_user(app.db.pool(), id).await,
        (None, Some(name)) => {
            let domain = resolve_domain(app, u.domain.as_ref(), "user").await?;
            if !domain.enabled {
                return Ok(None);
            }
            store::find_user(app.db.pool(), &domain.id, name).await
        }
        (None, None) => Err(Error::bad_request(
            "Expecting to find user id or name in identity.password.user.",
        )),
    }
}

async fn resolve_scope_project(app: &App, p: &ProjectRef) -> Result<store::Project> {
    let found = match (&p.id, &p.name) {
        (Some(id), _) => store::get_project(app.db.pool(), id).await?,
        (None, Some(name)) => {
            let domain = resolve_domain(app, p.domain.as_ref(), "scope.project").await?;
            store::find_project(app.db.pool(), &domain.id, name).await?
        }
        (None, None) => {
            return Err(Error::bad_request(
                "Expecting to find project id or name in scope.project.",
            ));
        }
    };
    found.ok_or_else(|| Error::unauthorized(UNAUTHORIZED))
}

fn roles_of(roles: Vec<store::Role>) -> Vec<RoleRef> {
    roles
        .into_iter()
        .map(|r| RoleRef {
            id: r.id,
            name: r.name,
        })
        .collect()
}

// ---- tokens ----------------------------------------------------------------------

/// Authenticates and issues a token (`POST /v3/auth/tokens`).
pub async fn issue_token(app: &App, creds: Credentials, scope: Scope) -> Result<Issued> {
    let now = Timestamp::now();
    let (user, methods, expires_at, mut audit_ids) = match creds {
        Credentials::Password(u) => {
            let password = u.password.clone().ok_or_else(|| {
                Error::bad_request("Expecting to find password in identity.password.user.")
            })?;
            check_password_length(app, &password)?;
            let user = resolve_user(app, &u).await?;
            let hash = user.as_ref().and_then(|u| u.password_hash.clone());
            let ok = verify_password(app, hash, &password).await?;
            let user = match user {
                Some(user) if ok && user.enabled => user,
                _ => return Err(Error::unauthorized(UNAUTHORIZED)),
            };
            let domain = store::get_domain(app.db.pool(), &user.domain_id).await?;
            if !domain.is_some_and(|d| d.enabled) {
                return Err(Error::unauthorized(UNAUTHORIZED));
            }
            let expires = now.plus_secs(app.config.identity.token_expiration_secs);
            (user, vec!["password".to_owned()], expires, vec![])
        }
        Credentials::Token(t) => {
            let parent = validate_token(app, &t).await?;
            let user = store::get_user(app.db.pool(), &parent.user_id)
                .await?
                .ok_or_else(|| Error::unauthorized(UNAUTHORIZED))?;
            let mut methods = parent.methods.clone();
            if !methods.iter().any(|m| m == "token") {
                methods.push("token".to_owned());
            }
            // A rescoped token lives no longer than the one it came from.
            (user, methods, parent.expires_at, vec![parent.audit_id])
        }
    };

    let project = match scope {
        Scope::Unscoped => None,
        Scope::Project(p) => Some(resolve_scope_project(app, &p).await?),
        Scope::Default => match &user.default_project_id {
            Some(id) => store::get_project(app.db.pool(), id)
                .await?
                .filter(|p| p.enabled),
            None => None,
        },
    };
    let (scope, roles) = match project {
        None => (None, vec![]),
        Some(p) => {
            if !p.enabled {
                return Err(Error::unauthorized(UNAUTHORIZED));
            }
            let domain = store::get_domain(app.db.pool(), &p.domain_id)
                .await?
                .ok_or_else(|| Error::unauthorized(UNAUTHORIZED))?;
            if !domain.enabled {
                return Err(Error::unauthorized(UNAUTHORIZED));
            }
            let roles = store::effective_roles(app.db.pool(), &user.id, &p.id).await?;
            if roles.is_empty() {
                return Err(Error::unauthorized(format!(
                    "User {} has no access to project {}.",
                    user.id, p.id
                )));
            }
            (
                Some(ProjectScope {
                    id: p.id,
                    name: p.name,
                    domain_id: domain.id,
                    domain_name: domain.name,
                }),
                roles_of(roles),
            )
        }
    };
    let user_domain = store::get_domain(app.db.pool(), &user.domain_id)
        .await?
        .ok_or_else(|| Error::unauthorized(UNAUTHORIZED))?;

    let token = new_token_value()?;
    let audit_id = new_audit_id()?;
    audit_ids.insert(0, audit_id.clone());
    let record = store::Token {
        id_hash: token_hash(&token),
        user_id: user.id.clone(),
        project_id: scope.as_ref().map(|p| p.id.clone()),
        methods: methods.join(","),
        audit_id: audit_id.clone(),
        issued_at: now,
        expires_at,
        revoked: false,
        parent_audit_id: audit_ids.get(1).cloned(),
    };
    store::insert_token(app.db.pool(), &record).await?;
    // A parent revoked while this token was made takes it along.
    if let Some(parent) = &record.parent_audit_id
        && store::audit_revoked(app.db.pool(), parent).await?
    {
        store::revoke_token(app.db.pool(), &record.id_hash).await?;
        return Err(Error::unauthorized(UNAUTHORIZED));
    }
    Ok(Issued {
        token,
        audit_ids,
        context: Context {
            user_id: user.id,
            user_name: user.name,
            user_domain_id: user_domain.id,
            user_domain_name: user_domain.name,
            project: scope,
            roles,
            methods,
            audit_id,
            issued_at: now,
            expires_at,
        },
    })
}

/// Issues a token for `user_id` scoped to `project_id` that lives
/// `ttl_secs`, without credentials: for the system acting on a user's
/// behalf (the conductor gives one to an agent so that it can download the
/// image of a build, as Nova's compute uses the user's token with Glance).
/// It validates like any token, so it only works while the user still has
/// a role on the project.
pub async fn issue_delegated_token(
    app: &App,
    user_id: &str,
    project_id: &str,
    ttl_secs: i64,
) -> Result<String> {
    let now = Timestamp::now();
    let token = new_token_value()?;
    let record = store::Token {
        id_hash: token_hash(&token),
        user_id: user_id.to_owned(),
        project_id: Some(project_id.to_owned()),
        methods: "token".to_owned(),
        audit_id: new_audit_id()?,
        issued_at: now,
        expires_at: now.plus_secs(ttl_secs.max(1)),
        revoked: false,
        parent_audit_id: None,
    };
    store::insert_token(app.db.pool(), &record).await?;
    Ok(token)
}

/// Validates a token: 401 unless it exists, is neither expired nor revoked,
/// and its user (and project) are enabled; a project-scoped token whose user
/// lost every role on the project is invalid too.
pub async fn validate_token(app: &App, token: &str) -> Result<Context> {
    if token.is_empty() || token.len() > 1024 {
        return Err(Error::unauthorized(UNAUTHORIZED));
    }
    let info = store::token_info(app.db.pool(), &token_hash(token))
        .await?
        .ok_or_else(|| Error::unauthorized(UNAUTHORIZED))?;
    if info.revoked || info.expires_at <= Timestamp::now() || !info.user_enabled {
        return Err(Error::unauthorized(UNAUTHORIZED));
    }
    let (project, roles) = match (&info.project_id, &info.project_name) {
        (Some(pid), Some(pname)) => {
            if info.project_enabled != Some(true) {
                return Err(Error::unauthorized(UNAUTHORIZED));
            }
            let roles = store::effective_roles(app.db.pool(), &info.user_id, pid).await?;
            if roles.is_empty() {
                return Err(Error::unauthorized(UNAUTHORIZED));
            }
            (
                Some(ProjectScope {
                    id: pid.clone(),
                    name: pname.clone(),
                    domain_id: info.project_domain_id.clone().unwrap_or_default(),
                    domain_name: info.project_domain_name.clone().unwrap_or_default(),
                }),
                roles_of(roles),
            )
        }
        _ => (None, vec![]),
    };
    Ok(Context {
        user_id: info.user_id,
        user_name: info.user_name,
        user_domain_id: info.user_domain_id,
        user_domain_name: info.user_domain_name,
        project,
        roles,
        methods: info.methods.split(',').map(str::to_owned).collect(),
        audit_id: info.audit_id,
        issued_at: info.issued_at,
        expires_at: info.expires_at,
    })
}

/// Validates `subject` on behalf of `caller` (`GET /v3/auth/tokens`): 404 when
/// the subject is not a valid token.
pub async fn check_subject_token(app: &App, caller: &Context, subject: &str) -> Result<Context> {
    let subject_ctx = validate_token(app, subject).await.map_err(|e| {
        if e.is(Kind::Unauthorized) {
            Error::not_found(format!("Could not find token: {}", short(subject)))
        } else {
            e
        }
    })?;
    app.policy.enforce(
        "identity:validate_token",
        caller,
        Target::user(&subject_ctx.user_id),
    )?;
    Ok(subject_ctx)
}

/// Revokes `subject` (`DELETE /v3/auth/tokens`).
pub async fn revoke_token(app: &App, caller: &Context, subject: &str) -> Result<()> {
    let subject_ctx = check_subject_token(app, caller, subject).await?;
    app.policy.enforce(
        "identity:revoke_token",
        caller,
        Target::user(&subject_ctx.user_id),
    )?;
    if !store::revoke_token(app.db.pool(), &token_hash(subject)).await? {
        return Err(Error::not_found(format!(
            "Could not find token: {}",
            short(subject)
        )));
    }
    // And every token rescoped from it, down the chain.
    let mut conn = app.db.pool().acquire().await?;
    let n = store::revoke_descendants(&mut conn, &subject_ctx.audit_id).await?;
    if n > 0 {
        tracing::info!(user = %subject_ctx.user_id, tokens = n, "rescoped tokens revoked with their parent");
    }
    Ok(())
}

fn short(token: &str) -> String {
    token.chars().take(8).collect::<String>() + "…"
}

/// Deletes tokens that expired more than `[identity]
/// expired_token_retention_secs` ago.
pub async fn sweep_expired_tokens(app: &App) -> Result<u64> {
    let before = Timestamp::now().plus_secs(-app.config.identity.expired_token_retention_secs);
    store::delete_expired_tokens(app.db.pool(), before).await
}

/// The enabled service catalog.
pub async fn catalog(app: &App) -> Result<Vec<CatalogEntry>> {
    let mut conn = app.db.pool().acquire().await?;
    Ok(store::catalog(&mut conn)
        .await?
        .into_iter()
        .map(|(service, endpoints)| CatalogEntry { service, endpoints })
        .collect())
}

// ---- domains -----------------------------------------------------------------------

/// Shows a domain.
pub async fn get_domain(app: &App, ctx: &Context, id: &str) -> Result<store::Domain> {
    let d = store::get_domain(app.db.pool(), id)
        .await?
        .ok_or_else(|| Error::not_found(format!("Could not find domain: {id}.")))?;
    app.policy.enforce(
        "identity:get_domain",
        ctx,
        Target {
            domain_id: Some(&d.id),
            ..Target::default()
        },
    )?;
    Ok(d)
}

/// Lists domains.
pub async fn list_domains(
    app: &App,
    ctx: &Context,
    name: Option<&str>,
    enabled: Option<bool>,
) -> Result<Vec<store::Domain>> {
    app.policy
        .enforce("identity:list_domains", ctx, Target::default())?;
    store::list_domains(app.db.pool(), name, enabled).await
}

/// Creates a domain.
pub async fn create_domain(
    app: &App,
    ctx: &Context,
    name: &str,
    description: Option<String>,
    enabled: bool,
) -> Result<store::Domain> {
    app.policy
        .enforce("identity:create_domain", ctx, Target::default())?;
    check_name(name, "domain")?;
    let d = store::Domain {
        id: hex_id(),
        name: name.to_owned(),
        description: description.unwrap_or_default(),
        enabled,
        created_at: Timestamp::now(),
    };
    store::create_domain(app.db.pool(), &d)
        .await
        .map_err(|e| duplicate(e, "domain", name))?;
    Ok(d)
}

fn check_name(name: &str, what: &str) -> Result<()> {
    if name.trim().is_empty() || name.len() > 255 {
        return Err(Error::bad_request(format!(
            "Invalid input for field 'name': a {what} name must be 1 to 255 characters."
        )));
    }
    Ok(())
}

fn duplicate(e: Error, what: &str, name: &str) -> Error {
    if e.is(Kind::Conflict) {
        Error::conflict(format!(
            "Conflict occurred attempting to store {what} - Duplicate entry found with name {name}."
        ))
    } else {
        e
    }
}

// ---- projects --------------------------------------------------------------------------

/// Input of [`create_project`].
#[derive(Debug, Clone, Default)]
pub struct NewProject {
    /// Name.
    pub name: String,
    /// Domain (default `default`).
    pub domain_id: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Enabled (default true).
    pub enabled: Option<bool>,
}

/// Creates a project.
pub async fn create_project(app: &App, ctx: &Context, p: NewProject) -> Result<store::Project> {
    app.policy
        .enforce("identity:create_project", ctx, Target::default())?;
    check_name(&p.name, "project")?;
    let domain_id = p.domain_id.unwrap_or_else(|| DEFAULT_DOMAIN_ID.to_owned());
    if store::get_domain(app.db.pool(), &domain_id)
        .await?
        .is_none()
    {
        return Err(Error::bad_request(format!(
            "Could not find domain: {domain_id}."
        )));
    }
    let project = store::Project {
        id: hex_id(),
        domain_id,
        name: p.name.clone(),
        description: p.description.unwrap_or_default(),
        enabled: p.enabled.unwrap_or(true),
        created_at: Timestamp::now(),
    };
    store::create_project(app.db.pool(), &project)
        .await
        .map_err(|e| duplicate(e, "project", &p.name))?;
    Ok(project)
}

/// Shows a project: admins any, others only their own (404 otherwise).
pub async fn get_project(app: &App, ctx: &Context, id: &str) -> Result<store::Project> {
    let not_found = || Error::not_found(format!("Could not find project: {id}."));
    let p = store::get_project(app.db.pool(), id)
        .await?
        .ok_or_else(not_found)?;
    if !app
        .policy
        .check("identity:get_project", ctx, Target::project(&p.id))
    {
        return Err(if ctx.is_admin() || ctx.project_id() == Some(&p.id) {
            Error::forbidden("Policy doesn't allow identity:get_project to be performed.")
        } else {
            not_found()
        });
    }
    Ok(p)
}

/// Lists projects: every project for admins; otherwise only the caller's
/// current project (so `?name=` lookups of one's own project work).
pub async fn list_projects(
    app: &App,
    ctx: &Context,
    mut filter: store::ProjectFilter,
) -> Result<Vec<store::Project>> {
    if !app
        .policy
        .check("identity:list_projects", ctx, Target::default())
    {
        match ctx.project_id() {
            Some(p) => filter.id = Some(p.to_owned()),
            None => {
                return Err(Error::forbidden(
                    "Policy doesn't allow identity:list_projects to be performed.",
                ));
            }
        }
    }
    store::list_projects(app.db.pool(), &filter).await
}

/// Lists the projects a user has roles on.
pub async fn list_user_projects(
    app: &App,
    ctx: &Context,
    user_id: &str,
) -> Result<Vec<store::Project>> {
    app.policy
        .enforce("identity:list_user_projects", ctx, Target::user(user_id))?;
    if store::get_user(app.db.pool(), user_id).await?.is_none() {
        return Err(Error::not_found(format!("Could not find user: {user_id}.")));
    }
    store::list_projects(
        app.db.pool(),
        &store::ProjectFilter {
            user_id: Some(user_id.to_owned()),
            ..Default::default()
        },
    )
    .await
}

/// Updates a project.
pub async fn update_project(
    app: &App,
    ctx: &Context,
    id: &str,
    u: store::ProjectUpdate,
) -> Result<store::Project> {
    app.policy
        .enforce("identity:update_project", ctx, Target::project(id))?;
    if let Some(n) = &u.name {
        check_name(n, "project")?;
    }
    let name = u.name.clone().unwrap_or_default();
    if !store::update_project(app.db.pool(), id, &u)
        .await
        .map_err(|e| duplicate(e, "project", &name))?
    {
        return Err(Error::not_found(format!("Could not find project: {id}.")));
    }
    get_project(app, ctx, id).await
}

/// Deletes a project.
pub async fn delete_project(app: &App, ctx: &Context, id: &str) -> Result<()> {
    app.policy
        .enforce("identity:delete_project", ctx, Target::project(id))?;
    if !store::delete_project(app.db.pool(), id).await? {
        return Err(Error::not_found(format!("Could not find project: {id}.")));
    }
    Ok(())
}

// ---- users -------------------------------------------------------------------------------

/// Input of [`create_user`].
#[derive(Debug, Clone, Default)]
pub struct NewUser {
    /// Name.
    pub name: String,
    /// Domain (default `default`).
    pub domain_id: Option<String>,
    /// Password (none: the user can't log in with a password).
    pub password: Option<String>,
    /// Enabled (default true).
    pub enabled: Option<bool>,
    /// Default project.
    pub default_project_id: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// E-mail.
    pub email: Option<String>,
}

/// Creates a user.
pub async fn create_user(app: &App, ctx: &Context, u: NewUser) -> Result<store::User> {
    app.policy
        .enforce("identity:create_user", ctx, Target::default())?;
    check_name(&u.name, "user")?;
    let domain_id = u.domain_id.unwrap_or_else(|| DEFAULT_DOMAIN_ID.to_owned());
    if store::get_domain(app.db.pool(), &domain_id)
        .await?
        .is_none()
    {
        return Err(Error::bad_request(format!(
            "Could not find domain: {domain_id}."
        )));
    }
    if let Some(p) = &u.default_project_id
        && store::get_project(app.db.pool(), p).await?.is_none()
    {
        return Err(Error::bad_request(format!("Could not find project: {p}.")));
    }
    let password_hash = match &u.password {
        Some(p) => Some(hash_password(app, p).await?),
        None => None,
    };
    let user = store::User {
        id: hex_id(),
        domain_id,
        name: u.name.clone(),
        password_hash,
        enabled: u.enabled.unwrap_or(true),
        default_project_id: u.default_project_id,
        description: u.description,
        email: u.email,
        created_at: Timestamp::now(),
    };
    store::create_user(app.db.pool(), &user)
        .await
        .map_err(|e| duplicate(e, "user", &u.name))?;
    Ok(user)
}

/// Shows a user: admins any, others themselves.
pub async fn get_user(app: &App, ctx: &Context, id: &str) -> Result<store::User> {
    app.policy
        .enforce("identity:get_user", ctx, Target::user(id))?;
    store::get_user(app.db.pool(), id)
        .await?
        .ok_or_else(|| Error::not_found(format!("Could not find user: {id}.")))
}

/// Lists users.
pub async fn list_users(
    app: &App,
    ctx: &Context,
    name: Option<&str>,
    domain_id: Option<&str>,
    enabled: Option<bool>,
) -> Result<Vec<store::User>> {
    if !app
        .policy
        .check("identity:list_users", ctx, Target::default())
    {
        // Non-admins may look themselves up by name (what clients do to
        // resolve `--user <name>`).
        let me = store::get_user(app.db.pool(), &ctx.user_id).await?;
        return match (me, name) {
            (Some(me), Some(n)) if me.name == n => Ok(vec![me]),
            (_, Some(_)) => Ok(vec![]),
            _ => Err(Error::forbidden(
                "Policy doesn't allow identity:list_users to be performed.",
            )),
        };
    }
    store::list_users(app.db.pool(), name, domain_id, enabled).await
}

/// Changes to a user.
#[derive(Debug, Clone, Default)]
pub struct UserChanges {
    /// New name.
    pub name: Option<String>,
    /// New password.
    pub password: Option<String>,
    /// New enabled flag.
    pub enabled: Option<bool>,
    /// New default project (`Some(None)` clears it).
    pub default_project_id: Option<Option<String>>,
    /// New description.
    pub description: Option<Option<String>>,
    /// New e-mail.
    pub email: Option<Option<String>>,
}

/// Updates a user.
pub async fn update_user(
    app: &App,
    ctx: &Context,
    id: &str,
    c: UserChanges,
) -> Result<store::User> {
    app.policy
        .enforce("identity:update_user", ctx, Target::user(id))?;
    if let Some(n) = &c.name {
        check_name(n, "user")?;
    }
    if let Some(Some(p)) = &c.default_project_id
        && store::get_project(app.db.pool(), p).await?.is_none()
    {
        return Err(Error::bad_request(format!("Could not find project: {p}.")));
    }
    let password_hash = match &c.password {
        Some(p) => Some(hash_password(app, p).await?),
        None => None,
    };
    let update = store::UserUpdate {
        name: c.name.clone(),
        password_hash,
        enabled: c.enabled,
        default_project_id: c.default_project_id,
        description: c.description,
        email: c.email,
    };
    let name = c.name.unwrap_or_default();
    if !store::update_user(app.db.pool(), id, &update)
        .await
        .map_err(|e| duplicate(e, "user", &name))?
    {
        return Err(Error::not_found(format!("Could not find user: {id}.")));
    }
    // Keystone: a new password or a disabled user ends every token the
    // user had, for good (enabling the user again revives none).
    if update.password_hash.is_some() || update.enabled == Some(false) {
        let n = store::revoke_user_tokens(app.db.pool(), id).await?;
        tracing::info!(user = %id, tokens = n, "tokens revoked (password changed or user disabled)");
    }
    get_user(app, ctx, id).await
}

/// Changes one's own password, checking the old one.
pub async fn change_password(
    app: &App,
    ctx: &Context,
    id: &str,
    original: &str,
    new: &str,
) -> Result<()> {
    app.policy
        .enforce("identity:change_password", ctx, Target::user(id))?;
    let user = store::get_user(app.db.pool(), id)
        .await?
        .ok_or_else(|| Error::not_found(format!("Could not find user: {id}.")))?;
    if !verify_password(app, user.password_hash.clone(), original).await? {
        return Err(Error::unauthorized(UNAUTHORIZED));
    }
    let hash = hash_password(app, new).await?;
    store::update_user(
        app.db.pool(),
        id,
        &store::UserUpdate {
            password_hash: Some(hash),
            ..Default::default()
        },
    )
    .await?;
    // Every earlier token of the user ends, the caller's own included.
    let n = store::revoke_user_tokens(app.db.pool(), id).await?;
    tracing::info!(user = %id, tokens = n, "tokens revoked (password changed)");
    Ok(())
}

/// Deletes a user.
pub async fn delete_user(app: &App, ctx: &Context, id: &str) -> Result<()> {
    app.policy
        .enforce("identity:delete_user", ctx, Target::user(id))?;
    if !store::delete_user(app.db.pool(), id).await? {
        return Err(Error::not_found(format!("Could not find user: {id}.")));
    }
    Ok(())
}

// ---- roles and assignments ------------------------------------------------------------------

/// Creates a role.
pub async fn create_role(
    app: &App,
    ctx: &Context,
    name: &str,
    description: Option<String>,
) -> Result<store::Role> {
    app.policy
        .enforce("identity:create_role", ctx, Target::default())?;
    check_name(name, "role")?;
    let role = store::Role {
        id: hex_id(),
        name: name.to_owned(),
        description,
    };
    store::create_role(app.db.pool(), &role)
        .await
        .map_err(|e| duplicate(e, "role", name))?;
    Ok(role)
}

/// Shows a role.
pub async fn get_role(app: &App, ctx: &Context, id: &str) -> Result<store::Role> {
    app.policy
        .enforce("identity:get_role", ctx, Target::default())?;
    store::get_role(app.db.pool(), id)
        .await?
        .ok_or_else(|| Error::not_found(format!("Could not find role: {id}.")))
}

/// Lists roles.
pub async fn list_roles(app: &App, ctx: &Context, name: Option<&str>) -> Result<Vec<store::Role>> {
    app.policy
        .enforce("identity:list_roles", ctx, Target::default())?;
    store::list_roles(app.db.pool(), name).await
}

/// Deletes a role.
pub async fn delete_role(app: &App, ctx: &Context, id: &str) -> Result<()> {
    app.policy
        .enforce("identity:delete_role", ctx, Target::default())?;
    if !store::delete_role(app.db.pool(), id).await? {
        return Err(Error::not_found(format!("Could not find role: {id}.")));
    }
    Ok(())
}

async fn grant_parts(
    app: &App,
    project_id: &str,
    user_id: &str,
    role_id: Option<&str>,
) -> Result<()> {
    if store::get_project(app.db.pool(), project_id)
        .await?
        .is_none()
    {
        return Err(Error::not_found(format!(
            "Could not find project: {project_id}."
        )));
    }
    if store::get_user(app.db.pool(), user_id).await?.is_none() {
        return Err(Error::not_found(format!("Could not find user: {user_id}.")));
    }
    if let Some(r) = role_id
        && store::get_role(app.db.pool(), r).await?.is_none()
    {
        return Err(Error::not_found(format!("Could not find role: {r}.")));
    }
    Ok(())
}

/// Assigns a role to a user on a project (idempotent).
pub async fn grant(
    app: &App,
    ctx: &Context,
    project_id: &str,
    user_id: &str,
    role_id: &str,
) -> Result<()> {
    app.policy
        .enforce("identity:create_grant", ctx, Target::project(project_id))?;
    grant_parts(app, project_id, user_id, Some(role_id)).await?;
    store::grant(app.db.pool(), user_id, project_id, role_id).await
}

/// Checks a direct role assignment (404 when absent).
pub async fn check_grant(
    app: &App,
    ctx: &Context,
    project_id: &str,
    user_id: &str,
    role_id: &str,
) -> Result<()> {
    app.policy
        .enforce("identity:check_grant", ctx, Target::project(project_id))?;
    grant_parts(app, project_id, user_id, Some(role_id)).await?;
    let found = store::list_assignments(
        app.db.pool(),
        Some(user_id),
        Some(project_id),
        Some(role_id),
    )
    .await?;
    if found.is_empty() {
        return Err(Error::not_found(format!(
            "Could not find role assignment with role: {role_id}, user or group: {user_id}, \
             project, domain, or system: {project_id}."
        )));
    }
    Ok(())
}

/// The roles directly assigned to a user on a project.
pub async fn list_grants(
    app: &App,
    ctx: &Context,
    project_id: &str,
    user_id: &str,
) -> Result<Vec<store::Role>> {
    app.policy
        .enforce("identity:list_grants", ctx, Target::project(project_id))?;
    grant_parts(app, project_id, user_id, None).await?;
    let mut roles = Vec::new();
    for a in store::list_assignments(app.db.pool(), Some(user_id), Some(project_id), None).await? {
        if let Some(r) = store::get_role(app.db.pool(), &a.role_id).await? {
            roles.push(r);
        }
    }
    Ok(roles)
}

/// Removes a role assignment.
pub async fn revoke_grant(
    app: &App,
    ctx: &Context,
    project_id: &str,
    user_id: &str,
    role_id: &str,
) -> Result<()> {
    app.policy
        .enforce("identity:revoke_grant", ctx, Target::project(project_id))?;
    grant_parts(app, project_id, user_id, Some(role_id)).await?;
    if !store::revoke(app.db.pool(), user_id, project_id, role_id).await? {
        return Err(Error::not_found(format!(
            "Could not find role assignment with role: {role_id}, user or group: {user_id}, \
             project, domain, or system: {project_id}."
        )));
    }
    Ok(())
}

/// Lists role assignments; `effective` expands implied roles.
pub async fn list_role_assignments(
    app: &App,
    ctx: &Context,
    user_id: Option<&str>,
    project_id: Option<&str>,
    role_id: Option<&str>,
    effective: bool,
) -> Result<Vec<store::Assignment>> {
    app.policy
        .enforce("identity:list_role_assignments", ctx, Target::default())?;
    let direct = store::list_assignments(app.db.pool(), user_id, project_id, None).await?;
    let mut out: Vec<store::Assignment> = if effective {
        let implications = store::list_implications(app.db.pool()).await?;
        let mut all = Vec::new();
        for a in direct {
            let mut stack = vec![a.role_id.clone()];
            let mut seen = std::collections::BTreeSet::new();
            while let Some(r) = stack.pop() {
                if !seen.insert(r.clone()) {
                    continue;
                }
                for (prior, implied) in &implications {
                    if *prior == r {
                        stack.push(implied.clone());
                    }
                }
            }
            for r in seen {
                all.push(store::Assignment {
                    user_id: a.user_id.clone(),
                    project_id: a.project_id.clone(),
                    role_id: r,
                });
            }
        }
        all
    } else {
        direct
    };
    if let Some(r) = role_id {
        out.retain(|a| a.role_id == r);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

// ---- catalog administration -------------------------------------------------------------------

/// Lists catalog services.
pub async fn list_services(
    app: &App,
    ctx: &Context,
    kind: Option<&str>,
    name: Option<&str>,
) -> Result<Vec<store::Service>> {
    app.policy
        .enforce("identity:list_services", ctx, Target::default())?;
    store::list_services(app.db.pool(), kind, name).await
}

/// Shows a catalog service.
pub async fn get_service(app: &App, ctx: &Context, id: &str) -> Result<store::Service> {
    app.policy
        .enforce("identity:get_service", ctx, Target::default())?;
    store::get_service(app.db.pool(), id)
        .await?
        .ok_or_else(|| Error::not_found(format!("Could not find service: {id}.")))
}

/// Creates a catalog service.
pub async fn create_service(
    app: &App,
    ctx: &Context,
    kind: &str,
    name: &str,
    description: Option<String>,
    enabled: bool,
) -> Result<store::Service> {
    app.policy
        .enforce("identity:create_service", ctx, Target::default())?;
    if kind.is_empty() {
        return Err(Error::bad_request("Invalid input for field 'type'."));
    }
    let s = store::Service {
        id: hex_id(),
        kind: kind.to_owned(),
        name: name.to_owned(),
        description: description.unwrap_or_default(),
        enabled,
    };
    store::create_service(app.db.pool(), &s).await?;
    Ok(s)
}

/// Deletes a catalog service and its endpoints.
pub async fn delete_service(app: &App, ctx: &Context, id: &str) -> Result<()> {
    app.policy
        .enforce("identity:delete_service", ctx, Target::default())?;
    if !store::delete_service(app.db.pool(), id).await? {
        return Err(Error::not_found(format!("Could not find service: {id}.")));
    }
    Ok(())
}

/// Lists endpoints.
pub async fn list_endpoints(
    app: &App,
    ctx: &Context,
    service_id: Option<&str>,
    interface: Option<&str>,
    region_id: Option<&str>,
) -> Result<Vec<store::Endpoint>> {
    app.policy
        .enforce("identity:list_endpoints", ctx, Target::default())?;
    store::list_endpoints(app.db.pool(), service_id, interface, region_id).await
}

/// Shows an endpoint.
pub async fn get_endpoint(app: &App, ctx: &Context, id: &str) -> Result<store::Endpoint> {
    app.policy
        .enforce("identity:get_endpoint", ctx, Target::default())?;
    store::get_endpoint(app.db.pool(), id)
        .await?
        .ok_or_else(|| Error::not_found(format!("Could not find endpoint: {id}.")))
}

/// Creates an endpoint.
pub async fn create_endpoint(
    app: &App,
    ctx: &Context,
    service_id: &str,
    interface: &str,
    url: &str,
    region_id: Option<String>,
    enabled: bool,
) -> Result<store::Endpoint> {
    app.policy
        .enforce("identity:create_endpoint", ctx, Target::default())?;
    if !matches!(interface, "public" | "internal" | "admin") {
        return Err(Error::bad_request(
            "Invalid input for field 'interface': must be public, internal or admin.",
        ));
    }
    if url.is_empty() {
        return Err(Error::bad_request("Invalid input for field 'url'."));
    }
    if store::get_service(app.db.pool(), service_id)
        .await?
        .is_none()
    {
        return Err(Error::bad_request(format!(
            "Could not find service: {service_id}."
        )));
    }
    if let Some(r) = &region_id {
        store::ensure_region(app.db.pool(), r).await?;
    }
    let e = store::Endpoint {
        id: hex_id(),
        service_id: service_id.to_owned(),
        interface: interface.to_owned(),
        region_id,
        url: url.to_owned(),
        enabled,
    };
    store::create_endpoint(app.db.pool(), &e).await?;
    Ok(e)
}

/// Deletes an endpoint.
pub async fn delete_endpoint(app: &App, ctx: &Context, id: &str) -> Result<()> {
    app.policy
        .enforce("identity:delete_endpoint", ctx, Target::default())?;
    if !store::delete_endpoint(app.db.pool(), id).await? {
        return Err(Error::not_found(format!("Could not find endpoint: {id}.")));
    }
    Ok(())
}

/// Lists regions.
pub async fn list_regions(app: &App, ctx: &Context) -> Result<Vec<String>> {
    app.policy
        .enforce("identity:list_regions", ctx, Target::default())?;
    store::list_regions(app.db.pool()).await
}

// ---- bootstrap ---------------------------------------------------------------------------------

/// What [`bootstrap`] did.
#[derive(Debug, Clone, Default)]
pub struct BootstrapReport {
    /// The admin user's id.
    pub admin_user_id: String,
    /// The admin project's id.
    pub admin_project_id: String,
    /// Catalog services, `(type, url)`, as registered.
    pub endpoints: Vec<(String, String)>,
}

/// Creates (or brings up to date) the default domain, the standard roles and
/// their implications, the admin project and user with the admin role, the
/// region, and a catalog entry (public, internal and admin endpoints) for
/// every Mica API at `urls`. Safe to run again: existing objects are kept,
/// the admin password is reset to the configured one and endpoint URLs are
/// updated.
pub async fn bootstrap(
    app: &App,
    admin_password: &str,
    urls: &[(ServiceKind, String)],
) -> Result<BootstrapReport> {
    let b = &app.config.bootstrap;
    if admin_password.is_empty() {
        return Err(Error::bad_request(
            "bootstrap needs an admin password: set [bootstrap] admin_password \
             (or MICA_BOOTSTRAP_ADMIN_PASSWORD, or --admin-password)",
        ));
    }
    let hash = hash_password(app, admin_password).await?;
    let region = app.config.api.region.clone();
    let urls = urls.to_vec();
    let admin_user = b.admin_user.clone();
    let admin_project = b.admin_project.clone();
    app.db
        .retry(|| {
            let (hash, region, urls, admin_user, admin_project) = (
                hash.clone(),
                region.clone(),
                urls.clone(),
                admin_user.clone(),
                admin_project.clone(),
            );
            async move {
                let mut tx = app.db.begin().await?;
                let report =
                    bootstrap_tx(&mut tx, &hash, &region, &urls, &admin_user, &admin_project)
                        .await?;
                tx.commit().await?;
                Ok(report)
            }
        })
        .await
}

async fn bootstrap_tx(
    tx: &mut Tx,
    hash: &str,
    region: &str,
    urls: &[(ServiceKind, String)],
    admin_user: &str,
    admin_project: &str,
) -> Result<BootstrapReport> {
    let now = Timestamp::now();
    if store::get_domain(&mut **tx, DEFAULT_DOMAIN_ID)
        .await?
        .is_none()
    {
        store::create_domain(
            &mut **tx,
            &store::Domain {
                id: DEFAULT_DOMAIN_ID.into(),
                name: DEFAULT_DOMAIN_NAME.into(),
                description: "The default domain".into(),
                enabled: true,
                created_at: now,
            },
        )
        .await?;
    }
    let mut role_ids = Vec::new();
    for name in STANDARD_ROLES {
        let role = match store::find_role(&mut **tx, name).await? {
            Some(r) => r,
            None => {
                let r = store::Role {
                    id: hex_id(),
                    name: name.into(),
                    description: None,
                };
                store::create_role(&mut **tx, &r).await?;
                r
            }
        };
        role_ids.push(role.id);
    }
    for pair in role_ids.windows(2) {
        store::add_implication(&mut **tx, &pair[0], &pair[1]).await?;
    }
    let project = match store::find_project(&mut **tx, DEFAULT_DOMAIN_ID, admin_project).await? {
        Some(p) => p,
        None => {
            let p = store::Project {
                id: hex_id(),
                domain_id: DEFAULT_DOMAIN_ID.into(),
                name: admin_project.into(),
                description: "Bootstrap project for initializing the cloud.".into(),
                enabled: true,
                created_at: now,
            };
            store::create_project(&mut **tx, &p).await?;
            p
        }
    };
    let user = match store::find_user(&mut **tx, DEFAULT_DOMAIN_ID, admin_user).await? {
        Some(u) => {
            store::update_user(
                &mut **tx,
                &u.id,
                &store::UserUpdate {
                    password_hash: Some(hash.to_owned()),
                    enabled: Some(true),
                    ..Default::default()
                },
            )
            .await?;
            u
        }
        None => {
            let u = store::User {
                id: hex_id(),
                domain_id: DEFAULT_DOMAIN_ID.into(),
                name: admin_user.into(),
                password_hash: Some(hash.to_owned()),
                enabled: true,
                default_project_id: None,
                description: None,
                email: None,
                created_at: now,
            };
            store::create_user(&mut **tx, &u).await?;
            u
        }
    };
    store::grant(&mut **tx, &user.id, &project.id, &role_ids[0]).await?;
    store::ensure_region(&mut **tx, region).await?;

    let mut registered = Vec::new();
    for (kind, url) in urls {
        let service = match store::list_services(&mut **tx, Some(kind.catalog_type()), None)
            .await?
            .into_iter()
            .next()
        {
            Some(s) => s,
            None => {
                let s = store::Service {
                    id: hex_id(),
                    kind: kind.catalog_type().into(),
                    name: kind.catalog_name().into(),
                    description: format!("Mica {} API", kind.catalog_type()),
                    enabled: true,
                };
                store::create_service(&mut **tx, &s).await?;
                s
            }
        };
        for interface in ["public", "internal", "admin"] {
            let existing =
                store::list_endpoints(&mut **tx, Some(&service.id), Some(interface), Some(region))
                    .await?;
            match existing.first() {
                Some(e) if e.url == *url => {}
                Some(e) => {
                    store::set_endpoint_url(&mut **tx, &e.id, url).await?;
                }
                None => {
                    store::create_endpoint(
                        &mut **tx,
                        &store::Endpoint {
                            id: hex_id(),
                            service_id: service.id.clone(),
                            interface: interface.into(),
                            region_id: Some(region.into()),
                            url: url.clone(),
                            enabled: true,
                        },
                    )
                    .await?;
                }
            }
        }
        registered.push((kind.catalog_type().to_owned(), url.clone()));
    }
    Ok(BootstrapReport {
        admin_user_id: user.id,
        admin_project_id: project.id,
        endpoints: registered,
    })
}

#[cfg(test)]
mod token_value_tests {
    #[test]
    fn token_values_never_look_like_options() {
        for _ in 0..2000 {
            let t = super::new_token_value().unwrap();
            assert!(t.starts_with('m') && t.len() == 44, "{t}");
        }
    }
}
