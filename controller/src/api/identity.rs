//! Identity API (Keystone v3 subset): thin handlers over [`crate::app::identity`].

use axum::Router;
use axum::extract::{OriginalUri, Path, Request, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::{Auth, ErrorStyle, JsonBody, RequestId, State, base_url, query_pairs, render_error};
use crate::app::identity::{
    self as app, CatalogEntry, Credentials, DomainRef, Issued, ProjectRef, Scope, UserRef,
};
use crate::app::{App, ServiceKind};
use crate::context::Context;
use crate::db::identity as store;
use crate::error::{Error, Result};

/// The version this API reports.
pub const VERSION_ID: &str = "v3.14";
const VERSION_UPDATED: &str = "2020-04-07T00:00:00Z";

/// The identity router.
pub fn router(app: State) -> Router {
    Router::new()
        .route("/", get(versions))
        .route("/v3", get(version))
        .route("/v3/", get(version))
        .route(
            "/v3/auth/tokens",
            post(issue_token)
                .get(validate_token)
                .head(check_token)
                .delete(revoke_token),
        )
        .route("/v3/auth/catalog", get(auth_catalog))
        .route("/v3/auth/projects", get(auth_projects))
        .route("/v3/auth/domains", get(auth_domains))
        .route("/v3/domains", get(list_domains).post(create_domain))
        .route("/v3/domains/{id}", get(get_domain))
        .route("/v3/projects", get(list_projects).post(create_project))
        .route(
            "/v3/projects/{id}",
            get(get_project)
                .patch(update_project)
                .delete(delete_project),
        )
        .route(
            "/v3/projects/{project_id}/users/{user_id}/roles",
            get(list_grants),
        )
        .route(
            "/v3/projects/{project_id}/users/{user_id}/roles/{role_id}",
            put(grant)
                .head(check_grant)
                .get(check_grant)
                .delete(revoke_grant),
        )
        .route("/v3/users", get(list_users).post(create_user))
        .route(
            "/v3/users/{id}",
            get(get_user).patch(update_user).delete(delete_user),
        )
        .route("/v3/users/{id}/projects", get(user_projects))
        .route("/v3/users/{id}/password", post(change_password))
        .route("/v3/roles", get(list_roles).post(create_role))
        .route("/v3/roles/{id}", get(get_role).delete(delete_role))
        .route("/v3/role_assignments", get(list_role_assignments))
        .route("/v3/services", get(list_services).post(create_service))
        .route("/v3/services/{id}", get(get_service).delete(delete_service))
        .route("/v3/endpoints", get(list_endpoints).post(create_endpoint))
        .route(
            "/v3/endpoints/{id}",
            get(get_endpoint).delete(delete_endpoint),
        )
        .route("/v3/regions", get(list_regions))
        .layer(middleware::from_fn_with_state(app.clone(), keystone_errors))
        .with_state(app)
}

/// Renders errors Keystone's way, with `WWW-Authenticate` on 401.
async fn keystone_errors(AxState(app): AxState<State>, req: Request, next: Next) -> Response {
    let base = base_url(&app, ServiceKind::Identity, req.headers());
    let rid = req.extensions().get::<RequestId>().map(|r| r.0.clone());
    let resp = next.run(req).await;
    let mut resp = render_error(ErrorStyle::Keystone, resp, rid, false).await;
    if resp.status() == StatusCode::UNAUTHORIZED
        && let Ok(v) = HeaderValue::from_str(&format!("Keystone uri=\"{base}/v3\""))
    {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

// ---- documents -------------------------------------------------------------------

/// A link.
#[derive(Debug, Serialize, ToSchema)]
pub struct Link {
    /// Relation (`self`).
    pub rel: String,
    /// Target.
    pub href: String,
}

/// A media type of a version.
#[derive(Debug, Serialize, ToSchema)]
pub struct MediaType {
    /// Base type.
    pub base: String,
    /// Versioned type.
    #[serde(rename = "type")]
    pub kind: String,
}

/// The identity v3 version document.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionDoc {
    /// `v3.14`.
    pub id: String,
    /// `stable`.
    pub status: String,
    /// When the version last changed.
    pub updated: String,
    /// Self link.
    pub links: Vec<Link>,
    /// Media types.
    #[serde(rename = "media-types")]
    pub media_types: Vec<MediaType>,
}

/// `GET /v3` response.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionBody {
    /// The version.
    pub version: VersionDoc,
}

/// The version list's values.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionValues {
    /// Versions.
    pub values: Vec<VersionDoc>,
}

/// `GET /` response.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionsBody {
    /// Versions.
    pub versions: VersionValues,
}

/// Keystone's error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeystoneError {
    /// The error.
    pub error: KeystoneErrorDetail,
}

/// Keystone's error detail.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeystoneErrorDetail {
    /// HTTP status.
    pub code: u16,
    /// What went wrong.
    pub message: String,
    /// HTTP reason phrase.
    pub title: String,
}

fn version_doc(base: &str) -> VersionDoc {
    VersionDoc {
        id: VERSION_ID.into(),
        status: "stable".into(),
        updated: VERSION_UPDATED.into(),
        links: vec![Link {
            rel: "self".into(),
            href: format!("{base}/v3/"),
        }],
        media_types: vec![MediaType {
            base: "application/json".into(),
            kind: "application/vnd.openstack.identity-v3+json".into(),
        }],
    }
}

/// Lists identity API versions.
#[utoipa::path(get, path = "/", tag = "identity",
    responses((status = 300, description = "The versions", body = VersionsBody)))]
async fn versions(AxState(app): AxState<State>, headers: HeaderMap) -> Response {
    let base = base_url(&app, ServiceKind::Identity, &headers);
    let body = VersionsBody {
        versions: VersionValues {
            values: vec![version_doc(&base)],
        },
    };
    (StatusCode::MULTIPLE_CHOICES, axum::Json(body)).into_response()
}

/// Shows the v3 version document (no token needed).
#[utoipa::path(get, path = "/v3", tag = "identity",
    responses((status = 200, description = "The version", body = VersionBody)))]
async fn version(AxState(app): AxState<State>, headers: HeaderMap) -> Response {
    let base = base_url(&app, ServiceKind::Identity, &headers);
    axum::Json(VersionBody {
        version: version_doc(&base),
    })
    .into_response()
}

// ---- tokens ------------------------------------------------------------------------

/// `POST /v3/auth/tokens` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct AuthBody {
    /// The authentication request.
    pub auth: AuthRequest,
}

/// Identity and scope.
#[derive(Debug, Deserialize, ToSchema)]
pub struct AuthRequest {
    /// How the caller authenticates.
    pub identity: IdentityRequest,
    /// What the token is for: `{"project": {...}}`, `"unscoped"`, or absent.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub scope: Option<Value>,
}

/// Authentication methods.
#[derive(Debug, Deserialize, ToSchema)]
pub struct IdentityRequest {
    /// `["password"]` or `["token"]`.
    pub methods: Vec<String>,
    /// Password credentials.
    pub password: Option<PasswordRequest>,
    /// Token credentials.
    pub token: Option<TokenRef>,
}

/// Password credentials.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PasswordRequest {
    /// The user and password.
    pub user: UserRef,
}

/// An existing token.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TokenRef {
    /// The token value.
    pub id: String,
}

/// A domain in a token.
#[derive(Debug, Serialize, ToSchema)]
pub struct NamedRef {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
}

/// The user of a token.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenUser {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Domain.
    pub domain: NamedRef,
    /// Always null: passwords don't expire.
    pub password_expires_at: Option<String>,
}

/// The project of a token.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenProject {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Domain.
    pub domain: NamedRef,
}

/// A catalog endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct CatalogEndpoint {
    /// Id.
    pub id: String,
    /// `public`, `internal`, `admin`.
    pub interface: String,
    /// Region id.
    pub region_id: Option<String>,
    /// Region name (same as the id).
    pub region: Option<String>,
    /// URL.
    pub url: String,
}

/// A catalog service.
#[derive(Debug, Serialize, ToSchema)]
pub struct CatalogService {
    /// Endpoints.
    pub endpoints: Vec<CatalogEndpoint>,
    /// Id.
    pub id: String,
    /// Type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Name.
    pub name: String,
}

/// A token.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenDoc {
    /// Methods.
    pub methods: Vec<String>,
    /// User.
    pub user: TokenUser,
    /// Audit ids.
    pub audit_ids: Vec<String>,
    /// Expiry.
    pub expires_at: String,
    /// Issue time.
    pub issued_at: String,
    /// Project scope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<TokenProject>,
    /// Always false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_domain: Option<bool>,
    /// Roles on the project.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<NamedRef>>,
    /// The service catalog.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catalog: Option<Vec<CatalogService>>,
}

/// A token response.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenBody {
    /// The token.
    pub token: TokenDoc,
}

fn catalog_doc(entries: Vec<CatalogEntry>) -> Vec<CatalogService> {
    entries
        .into_iter()
        .map(|e| CatalogService {
            endpoints: e
                .endpoints
                .into_iter()
                .map(|ep| CatalogEndpoint {
                    id: ep.id,
                    interface: ep.interface,
                    region: ep.region_id.clone(),
                    region_id: ep.region_id,
                    url: ep.url,
                })
                .collect(),
            id: e.service.id,
            kind: e.service.kind,
            name: e.service.name,
        })
        .collect()
}

fn token_doc(
    ctx: &Context,
    audit_ids: Vec<String>,
    catalog: Option<Vec<CatalogEntry>>,
) -> TokenDoc {
    let scoped = ctx.project.is_some();
    TokenDoc {
        methods: ctx.methods.clone(),
        user: TokenUser {
            id: ctx.user_id.clone(),
            name: ctx.user_name.clone(),
            domain: NamedRef {
                id: ctx.user_domain_id.clone(),
                name: ctx.user_domain_name.clone(),
            },
            password_expires_at: None,
        },
        audit_ids,
        expires_at: ctx.expires_at.keystone(),
        issued_at: ctx.issued_at.keystone(),
        project: ctx.project.as_ref().map(|p| TokenProject {
            id: p.id.clone(),
            name: p.name.clone(),
            domain: NamedRef {
                id: p.domain_id.clone(),
                name: p.domain_name.clone(),
            },
        }),
        is_domain: scoped.then_some(false),
        roles: scoped.then(|| {
            ctx.roles
                .iter()
                .map(|r| NamedRef {
                    id: r.id.clone(),
                    name: r.name.clone(),
                })
                .collect()
        }),
        catalog: if scoped {
            catalog.map(catalog_doc)
        } else {
            None
        },
    }
}

fn parse_scope(scope: Option<Value>) -> Result<Scope> {
    match scope {
        None | Some(Value::Null) => Ok(Scope::Default),
        Some(Value::String(s)) if s == "unscoped" => Ok(Scope::Unscoped),
        Some(Value::Object(mut o)) => {
            if let Some(p) = o.remove("project") {
                let p: ProjectRef = serde_json::from_value(p).map_err(|e| {
                    Error::bad_request(format!("Invalid input for field 'scope/project': {e}"))
                })?;
                Ok(Scope::Project(p))
            } else if o.contains_key("domain") || o.contains_key("system") {
                Err(Error::not_implemented(
                    "Domain and system scoped tokens are not supported; scope to a project.",
                ))
            } else {
                Err(Error::bad_request("Invalid input for field 'scope'."))
            }
        }
        Some(_) => Err(Error::bad_request("Invalid input for field 'scope'.")),
    }
}

/// Authenticates and issues a token.
#[utoipa::path(post, path = "/v3/auth/tokens", tag = "identity", request_body = AuthBody,
    responses(
        (status = 201, description = "Issued; the token is in X-Subject-Token", body = TokenBody,
            headers(("X-Subject-Token" = String, description = "The token"))),
        (status = 400, description = "Malformed request", body = KeystoneError),
        (status = 401, description = "Bad credentials", body = KeystoneError)))]
async fn issue_token(
    AxState(app): AxState<State>,
    OriginalUri(uri): OriginalUri,
    JsonBody(body): JsonBody<AuthBody>,
) -> Result<Response> {
    let identity = body.auth.identity;
    let creds = if identity.methods.iter().any(|m| m == "password") {
        let p = identity
            .password
            .ok_or_else(|| Error::bad_request("Expecting to find password in identity."))?;
        Credentials::Password(p.user)
    } else if identity.methods.iter().any(|m| m == "token") {
        let t = identity
            .token
            .ok_or_else(|| Error::bad_request("Expecting to find token in identity."))?;
        Credentials::Token(t.id)
    } else {
        return Err(Error::unauthorized(
            "Attempted to authenticate with an unsupported method.",
        ));
    };
    let scope = parse_scope(body.auth.scope)?;
    let Issued {
        token,
        context,
        audit_ids,
    } = app::issue_token(&app, creds, scope).await?;
    let nocatalog = query_pairs(&uri).iter().any(|(k, _)| k == "nocatalog");
    let catalog = if nocatalog {
        None
    } else {
        Some(app::catalog(&app).await?)
    };
    let doc = token_doc(&context, audit_ids, catalog);
    let mut resp = (StatusCode::CREATED, axum::Json(TokenBody { token: doc })).into_response();
    resp.headers_mut().insert(
        "x-subject-token",
        HeaderValue::from_str(&token).map_err(|e| Error::internal("token header", e))?,
    );
    Ok(resp)
}

fn subject(headers: &HeaderMap) -> Result<&str> {
    headers
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Error::not_found("Could not find token: X-Subject-Token header is missing."))
}

/// Validates a token (`X-Subject-Token`) and shows it.
#[utoipa::path(get, path = "/v3/auth/tokens", tag = "identity",
    params(("X-Auth-Token" = String, Header), ("X-Subject-Token" = String, Header)),
    responses((status = 200, body = TokenBody), (status = 401, body = KeystoneError),
        (status = 404, description = "Not a valid token", body = KeystoneError)))]
async fn validate_token(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Result<Response> {
    let token = subject(&headers)?;
    let sub = app::check_subject_token(&app, &ctx, token).await?;
    let nocatalog = query_pairs(&uri).iter().any(|(k, _)| k == "nocatalog");
    let catalog = if nocatalog {
        None
    } else {
        Some(app::catalog(&app).await?)
    };
    let audit = vec![sub.audit_id.clone()];
    let mut resp = axum::Json(TokenBody {
        token: token_doc(&sub, audit, catalog),
    })
    .into_response();
    if let Ok(v) = HeaderValue::from_str(token) {
        resp.headers_mut().insert("x-subject-token", v);
    }
    Ok(resp)
}

/// Checks a token (`X-Subject-Token`) without a body.
#[utoipa::path(head, path = "/v3/auth/tokens", tag = "identity",
    responses((status = 200, description = "Valid"), (status = 404, description = "Not valid")))]
async fn check_token(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    headers: HeaderMap,
) -> Result<Response> {
    let token = subject(&headers)?;
    app::check_subject_token(&app, &ctx, token).await?;
    Ok(StatusCode::OK.into_response())
}

/// Revokes a token (`X-Subject-Token`).
#[utoipa::path(delete, path = "/v3/auth/tokens", tag = "identity",
    responses((status = 204, description = "Revoked"), (status = 404, body = KeystoneError)))]
async fn revoke_token(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    headers: HeaderMap,
) -> Result<StatusCode> {
    let token = subject(&headers)?;
    app::revoke_token(&app, &ctx, token).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The catalog of the caller's token.
#[utoipa::path(get, path = "/v3/auth/catalog", tag = "identity",
    responses((status = 200, body = Object)))]
async fn auth_catalog(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    headers: HeaderMap,
) -> Result<Response> {
    if ctx.project.is_none() {
        return Err(Error::forbidden(
            "The catalog needs a project-scoped token.",
        ));
    }
    let base = base_url(&app, ServiceKind::Identity, &headers);
    let catalog = catalog_doc(app::catalog(&app).await?);
    Ok(axum::Json(json!({
        "catalog": catalog,
        "links": {"self": format!("{base}/v3/auth/catalog"), "previous": null, "next": null},
    }))
    .into_response())
}

/// The projects the caller's user can scope to.
#[utoipa::path(get, path = "/v3/auth/projects", tag = "identity",
    responses((status = 200, body = Object)))]
async fn auth_projects(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    headers: HeaderMap,
) -> Result<Response> {
    let base = base_url(&app, ServiceKind::Identity, &headers);
    let projects = store::list_projects(
        app.db.pool(),
        &store::ProjectFilter {
            user_id: Some(ctx.user_id.clone()),
            enabled: Some(true),
            ..Default::default()
        },
    )
    .await?;
    Ok(list_response(
        &base,
        "projects",
        projects.iter().map(|p| project_json(&base, p)).collect(),
    ))
}

/// The domains the caller can scope to (none: domain scope is not supported).
#[utoipa::path(get, path = "/v3/auth/domains", tag = "identity",
    responses((status = 200, body = Object)))]
async fn auth_domains(
    AxState(app): AxState<State>,
    Auth(_ctx): Auth,
    headers: HeaderMap,
) -> Response {
    let base = base_url(&app, ServiceKind::Identity, &headers);
    list_response(&base, "domains", vec![])
}

// ---- shared rendering ------------------------------------------------------------------------

fn list_response(base: &str, key: &str, items: Vec<Value>) -> Response {
    axum::Json(json!({
        key: items,
        "links": {"self": format!("{base}/v3/{key}"), "previous": null, "next": null},
    }))
    .into_response()
}

fn one(status: StatusCode, key: &str, item: Value) -> Response {
    (status, axum::Json(json!({ key: item }))).into_response()
}

fn domain_json(base: &str, d: &store::Domain) -> Value {
    json!({
        "id": d.id, "name": d.name, "description": d.description, "enabled": d.enabled,
        "tags": [], "options": {},
        "links": {"self": format!("{base}/v3/domains/{}", d.id)},
    })
}

fn project_json(base: &str, p: &store::Project) -> Value {
    json!({
        "id": p.id, "name": p.name, "domain_id": p.domain_id, "description": p.description,
        "enabled": p.enabled, "is_domain": false, "parent_id": p.domain_id,
        "tags": [], "options": {},
        "links": {"self": format!("{base}/v3/projects/{}", p.id)},
    })
}

fn user_json(base: &str, u: &store::User) -> Value {
    let mut v = json!({
        "id": u.id, "name": u.name, "domain_id": u.domain_id, "enabled": u.enabled,
        "password_expires_at": null, "options": {},
        "links": {"self": format!("{base}/v3/users/{}", u.id)},
    });
    if let Some(p) = &u.default_project_id {
        v["default_project_id"] = p.clone().into();
    }
    if let Some(d) = &u.description {
        v["description"] = d.clone().into();
    }
    if let Some(e) = &u.email {
        v["email"] = e.clone().into();
    }
    v
}

fn role_json(base: &str, r: &store::Role) -> Value {
    json!({
        "id": r.id, "name": r.name, "domain_id": null, "description": r.description,
        "options": {},
        "links": {"self": format!("{base}/v3/roles/{}", r.id)},
    })
}

fn service_json(base: &str, s: &store::Service) -> Value {
    json!({
        "id": s.id, "type": s.kind, "name": s.name, "description": s.description,
        "enabled": s.enabled,
        "links": {"self": format!("{base}/v3/services/{}", s.id)},
    })
}

fn endpoint_json(base: &str, e: &store::Endpoint) -> Value {
    json!({
        "id": e.id, "interface": e.interface, "region_id": e.region_id, "region": e.region_id,
        "service_id": e.service_id, "url": e.url, "enabled": e.enabled,
        "links": {"self": format!("{base}/v3/endpoints/{}", e.id)},
    })
}

fn bool_param(pairs: &[(String, String)], key: &str) -> Result<Option<bool>> {
    match pairs.iter().find(|(k, _)| k == key) {
        None => Ok(None),
        Some((_, v)) => match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "" => Ok(Some(true)),
            "false" | "0" => Ok(Some(false)),
            _ => Err(Error::bad_request(format!(
                "Invalid value for '{key}': {v}"
            ))),
        },
    }
}

fn param<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// `Some(None)` for an explicit JSON null, `None` when absent.
fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

// ---- domains ----------------------------------------------------------------------------------------

/// `POST /v3/domains` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct DomainCreateBody {
    /// The domain.
    pub domain: DomainCreate,
}

/// A new domain.
#[derive(Debug, Deserialize, ToSchema)]
pub struct DomainCreate {
    /// Name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Enabled (default true).
    pub enabled: Option<bool>,
}

/// Lists domains (admin).
#[utoipa::path(get, path = "/v3/domains", tag = "identity", responses((status = 200, body = Object)))]
async fn list_domains(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Result<Response> {
    let base = base_url(&app, ServiceKind::Identity, &headers);
    let q = query_pairs(&uri);
    let ds = app::list_domains(&app, &ctx, param(&q, "name"), bool_param(&q, "enabled")?).await?;
    Ok(list_response(
        &base,
        "domains",
        ds.iter().map(|d| domain_json(&base, d)).collect(),
    ))
}

/// Creates a domain (admin).
#[utoipa::path(post, path = "/v3/domains", tag = "identity", request_body = DomainCreateBody,
    responses((status = 201, body = Object), (status = 409, body = KeystoneError)))]
async fn create_domain(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    headers: HeaderMap,
    JsonBody(b): JsonBody<DomainCreateBody>,
) -> Result<Response> {
    let base = base_url(&app, ServiceKind::Identity, &headers);
    let d = app::create_domain(
        &app,
        &ctx,
        &b.domain.name,
        b.domain.description,
        b.domain.enabled.unwrap_or(true),
    )
    .await?;
    Ok(one(StatusCode::CREATED, "domain", domain_json(&base, &d)))
}

/// Shows a domain.
#[utoipa::path(get, path = "/v3/domains/{id}", tag = "identity",
    params(("id" = String, Path)), responses((status = 200, body = Object), (status = 404, body = KeystoneError)))]
async fn get_domain(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let base = base_url(&app, ServiceKind::Identity, &headers);
    let d = app::get_domain(&app, &ctx, &id).await?;
    Ok(one(StatusCode::OK, "domain", domain_json(&base, &d)))
}

// ---- projects ------------------------------------------------------------------------------------------

/// `POST /v3/projects` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ProjectCreateBody {
    /// The project.
    pub project: ProjectCreate,
}

/// A new project.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ProjectCreate {
    /// Name.
    pub name: String,
    /// Domain (default `default`).
    pub domain_id: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Enabled (default true).
    pub enabled: Option<bool>,
    /// Must be false when given: projects acting as domains are not supported.
    pub is_domain: Option<bool>,
    /// Must be the domain when given: project hierarchies are not supported.
    pub parent_id: Option<String>,
}

/// `PATCH /v3/projects/{id}` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ProjectUpdateBody {
    /// The changes.
    pub project: ProjectUpdate,
}

/// Changes to a project.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ProjectUpdate {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New enabled flag.
    pub enabled: Option<bool>,
}

/// Lists projects (admins: all; others: their own).
#[utoipa::path(get, path = "/v3/projects", tag = "identity",
    params(("name" = Option<String>, Query), ("domain_id" = Option<String>, Query), ("enabled" = Option<bool>, Query)),
    responses((status = 200, body = Object)))]
async fn list_projects(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Result<Response> {
    let base = base_url(&app, ServiceKind::Identity, &headers);
    let q = query_pairs(&uri);
    let filter = store::ProjectFilter {
        name: param(&q, "name").map(str::to_owned),
        domain_id: param(&q, "domain_id").map(str::to_owned),
        enabled: bool_param(&q, "enabled")?,
        ..Default::default()
    };
    let ps = app::list_projects(&app, &ctx, filter).await?;
    Ok(list_response(
        &base,
        "projects",
        ps.iter().map(|p| project_json(&base, p)).collect(),
    ))
}

/// Creates a project (admin).
#[utoipa::path(post, path = "/v3/projects", tag = "identity", request_body = ProjectCreateBody,
    responses((status = 201, body = Object), (status = 409, body = KeystoneError)))]
async fn create_project(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    headers: HeaderMap,
    JsonBody(b): JsonBody<ProjectCreateBody>,
) -> Result<Response> {
    let base = base_url(&app, ServiceKind::Identity, &headers);
    let p = b.project;
    if p.is_domain == Some(true) {
        return Err(Error::not_implemented(
            "Projects acting as domains are not supported.",
        ));
    }
    let domain_id = p.domain_id.clone();
    if let Some(parent) = &p.parent_id
        && Some(parent) != domain_id.as_ref()
        && parent != app::DEFAULT_DOMAIN_ID
    {
        return Err(Error::not_implemented(
            "Project hierarchies are not supported.",
        ));
    }
    let created = app::create_project(
        &app,
        &ctx,
        app::NewProject {
            name: p.name,
            domain_id,
            description: p.description,
            enabled: p.enabled,
        },
    )
    .await?;
    Ok(one(
        StatusCode::CREATED,
        "project",
        project_json(&base, &created),
    ))
}

/// Shows a project.
#[utoipa::path(get, path = "/v3/projects/{id}", tag = "identity",
    params(("id" = String, Path)), responses((status = 200, body = Object), (status = 404, body = KeystoneError)))]
async fn get_project(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let base = base_url(&app, ServiceKind::Identity, &headers);
    let p = app::get_project(&app, &ctx, &id).await?;
    Ok(one(StatusCode::OK, "project", project_json(&base, &p)))
}

/// Updates a project (admin).
#[utoipa::path(patch, path = "/v3/projects/{id}", tag = "identity", request_body = ProjectUpdateBody,
    params(("id" = String, Path)), responses((status = 200, body = Object), (status = 404, body = KeystoneError)))]
async fn update_project(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(b): JsonBody<ProjectUpdateBody>,
) -> Result<Response> {
    let base = base_url(&app, ServiceKind::Identity, &headers);
    let u = store::ProjectUpdate {
        name: b.project.name,
        description: b.project.description,
        enabled: b.project.enabled,
    };
    let p = app::update_project(&app, &ctx, &id, u).await?;
    Ok(one(StatusCode::OK, "project", project_json(&base, &p)))
}

/// Deletes a project (admin).
#[utoipa::path(delete, path = "/v3/projects/{id}", tag = "identity",
    params(("id" = String, Path)), responses((status = 204), (status = 404, body = KeystoneError)))]
async fn delete_project(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    app::delete_project(&app, &ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- users ---------------------------------------------------------------------------------------------

/// `POST /v3/users` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UserCreateBody {
    /// The user.
    pub user: UserCreate,
}

/// A new user.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UserCreate {
    /// Name.
    pub name: String,
    /// Domain (default `default`).
    pub domain_id: Option<String>,
    /// Password.
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

/// `PATCH /v3/users/{id}` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UserUpdateBody {
    /// The changes.
    pub user: UserUpdate,
}

/// Changes to a user (`null` clears optional fields).
#[derive(Debug, Deserialize, ToSchema)]
pub struct UserUpdate {
    /// New name.
    pub name: Option<String>,
    /// New password.
    pub password: Option<String>,
    /// New enabled flag.
    pub enabled: Option<bool>,
    /// New default project.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub default_project_id: Option<Option<String>>,
    /// New description.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    /// New e-mail.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub email: Option<Option<String>>,
}

/// `POST /v3/users/{id}/password` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PasswordChangeBody {
    /// Old and new password.
    pub user: PasswordChange,
}

/// Old and new password.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PasswordChange {
    /// The current password.
    pub original_password: String,
    /// The new password.
    pub password: String,
}

/// Lists users (admin; others can look themselves up by name).
#[utoipa::path(get, path = "/v3/users", tag = "identity",
    params(("name" = Option<String>, Query), ("domain_id" = Option<String>, Query)),
    responses((status = 200, body = Object)))]
async fn list_users(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Result<Response> {
    let base = base_url(&app, ServiceKind::Identity, &headers);
    let q = query_pairs(&uri);
    let us = app::list_users(
        &app,
        &ctx,
        param(&q, "name"),
        param(&q, "domain_id"),
        bool_param(&q, "enabled")?,
    )
    .await?;
    Ok(list_response(
        &base,
        "users",
        us.iter().map(|u| user_json(&base, u)).collect(),
    ))
}

/// Creates a user (admin).
#[utoipa::path(post, path = "/v3/users", tag = "identity", request_body = UserCreateBody,
    responses((status = 201, body = Object), (status = 409, body = KeystoneError)))]
async fn create_user(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    headers: HeaderMap,
    JsonBody(b): JsonBody<UserCreateBody>,
) -> Result<Response> {
    let base = base_url(&app, ServiceKind::Identity, &headers);
    let u = b.user;
    let created = app::create_user(
        &app,
        &ctx,
        app::NewUser {
            name: u.name,
            domain_id: u.domain_id,
            password: u.password,
            enabled: u.enabled,
            default_project_id: u.default_project_id,
            description: u.description,
            email: u.email,
        },
    )
    .await?;
    Ok(one(StatusCode::CREATED, "user", user_json(&base, &created)))
}

/// Shows a user.
#[utoipa::path(get, path = "/v3/users/{id}", tag = "identity",
    params(("id" = String, Path)), responses((status = 200, body = Object), (status = 404, body = KeystoneError)))]
async fn get_user(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let base = base_url(&app, ServiceKind::Identity, &headers);
    let u = app::get_user(&app, &ctx, &id).await?;
    Ok(one(StatusCode::OK, "user", user_json(&base, &u)))
}

/// Updates a user (admin).
#[utoipa::path(patch, path = "/v3/users/{id}", tag = "identity", request_body = UserUpdateBody,
    params(("id" = String, Path)), responses((status = 200, body = Object), (status = 404, body = KeystoneError)))]
async fn update_user(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(b): JsonBody<UserUpdateBody>,
) -> Result<Response> {
    let base = base_url(&app, ServiceKind::Identity, &headers);
    let u = b.user;
    let updated = app::update_user(
        &app,
        &ctx,
        &id,
        app::UserChanges {
            name: u.name,
            password: u.password,
            enabled: u.enabled,
            default_project_id: u.default_project_id,
            description: u.description,
            email: u.email,
        },
    )
    .await?;
    Ok(one(StatusCode::OK, "user", user_json(&base, &updated)))
}

/// Deletes a user (admin).
#[utoipa::path(delete, path = "/v3/users/{id}", tag = "identity",
    params(("id" = String, Path)), responses((status = 204), (status = 404, body = KeystoneError)))]
async fn delete_user(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    app::delete_user(&app, &ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lists the projects a user has roles on.
#[utoipa::path(get, path = "/v3/users/{id}/projects", tag = "identity",
    params(("id" = String, Path)), responses((status = 200, body = Object)))]
async fn user_projects(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let base = base_url(&app, ServiceKind::Identity, &headers);
    let ps = app::list_user_projects(&app, &ctx, &id).await?;
    Ok(list_response(
        &base,
        "projects",
        ps.iter().map(|p| project_json(&base, p)).collect(),
    ))
}

/// Changes one's own password.
#[utoipa::path(post, path = "/v3/users/{id}/password", tag = "identity", request_body = PasswordChangeBody,
    params(("id" = String, Path)), responses((status = 204), (status = 401, body = KeystoneError)))]
async fn change_password(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<PasswordChangeBody>,
) -> Result<StatusCode> {
    app::change_password(&app, &ctx, &id, &b.user.original_password, &b.user.password).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- roles and grants --------------------------------------------------------------------------

/// `POST /v3/roles` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RoleCreateBody {
    /// The role.
    pub role: RoleCreate,
}

/// A new role.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RoleCreate {
    /// Name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
}

/// Lists roles (admin).
#[utoipa::path(get, path = "/v3/roles", tag = "identity",
    params(("name" = Option<String>, Query)), responses((status = 200, body = Object)))]
async fn list_roles(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Result<Response> {
    let base = base_url(&app, ServiceKind::Identity, &headers);
    let q = query_pairs(&uri);
    let rs = app::list_roles(&app, &ctx, param(&q, "name")).await?;
    Ok(list_response(
        &base,
        "roles",
        rs.iter().map(|r| role_json(&base, r)).collect(),
    ))
}

/// Creates a role (admin).
#[utoipa::path(post, path = "/v3/roles", tag = "identity", request_body = RoleCreateBody,
    responses((status = 201, body = Object), (status = 409, body = KeystoneError)))]
async fn create_role(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    headers: HeaderMap,
    JsonBody(b): JsonBody<RoleCreateBody>,
) -> Result<Response> {
    let base = base_url(&app, ServiceKind::Identity, &headers);
    let r = app::create_role(&app, &ctx, &b.role.name, b.role.description).await?;
    Ok(one(StatusCode::CREATED, "role", role_json(&base, &r)))
}

/// Shows a role (admin).
#[utoipa::path(get, path = "/v3/roles/{id}", tag = "identity",
    params(("id" = String, Path)), responses((status = 200, body = Object), (status = 404, body = KeystoneError)))]
async fn get_role(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let base = base_url(&app, ServiceKind::Identity, &headers);
    let r = app::get_role(&app, &ctx, &id).await?;
    Ok(one(StatusCode::OK, "role", role_json(&base, &r)))
}

/// Deletes a role (admin).
#[utoipa::path(delete, path = "/v3/roles/{id}", tag = "identity",
    params(("id" = String, Path)), responses((status = 204), (status = 404, body = KeystoneError)))]
async fn delete_role(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    app::delete_role(&app, &ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lists a user's roles on a project (admin).
#[utoipa::path(get, path = "/v3/projects/{project_id}/users/{user_id}/roles", tag = "identity",
    params(("project_id" = String, Path), ("user_id" = String, Path)), responses((status = 200, body = Object)))]
async fn list_grants(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path((p, u)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let base = base_url(&app, ServiceKind::Identity, &headers);
    let rs = app::list_grants(&app, &ctx, &p, &u).await?;
    Ok(list_response(
        &base,
        "roles",
        rs.iter().map(|r| role_json(&base, r)).collect(),
    ))
}

/// Assigns a role to a user on a project (admin).
#[utoipa::path(put, path = "/v3/projects/{project_id}/users/{user_id}/roles/{role_id}", tag = "identity",
    params(("project_id" = String, Path), ("user_id" = String, Path), ("role_id" = String, Path)),
    responses((status = 204), (status = 404, body = KeystoneError)))]
async fn grant(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path((p, u, r)): Path<(String, String, String)>,
) -> Result<StatusCode> {
    app::grant(&app, &ctx, &p, &u, &r).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Checks a role assignment (admin).
#[utoipa::path(head, path = "/v3/projects/{project_id}/users/{user_id}/roles/{role_id}", tag = "identity",
    params(("project_id" = String, Path), ("user_id" = String, Path), ("role_id" = String, Path)),
    responses((status = 204), (status = 404)))]
async fn check_grant(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path((p, u, r)): Path<(String, String, String)>,
) -> Result<StatusCode> {
    app::check_grant(&app, &ctx, &p, &u, &r).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Unassigns a role (admin).
#[utoipa::path(delete, path = "/v3/projects/{project_id}/users/{user_id}/roles/{role_id}", tag = "identity",
    params(("project_id" = String, Path), ("user_id" = String, Path), ("role_id" = String, Path)),
    responses((status = 204), (status = 404, body = KeystoneError)))]
async fn revoke_grant(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path((p, u, r)): Path<(String, String, String)>,
) -> Result<StatusCode> {
    app::revoke_grant(&app, &ctx, &p, &u, &r).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lists role assignments (admin). Filters: `user.id`, `scope.project.id`,
/// `role.id`, `effective`, `include_names`.
#[utoipa::path(get, path = "/v3/role_assignments", tag = "identity",
    params(("user.id" = Option<String>, Query), ("scope.project.id" = Option<String>, Query),
        ("role.id" = Option<String>, Query), ("effective" = Option<bool>, Query), ("include_names" = Option<bool>, Query)),
    responses((status = 200, body = Object)))]
async fn list_role_assignments(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Result<Response> {
    let base = base_url(&app, ServiceKind::Identity, &headers);
    let q = query_pairs(&uri);
    if q.iter().any(|(k, _)| {
        k.starts_with("group.") || k.starts_with("scope.domain") || k.starts_with("scope.system")
    }) {
        return Ok(list_response(&base, "role_assignments", vec![]));
    }
    let effective = bool_param(&q, "effective")?.unwrap_or(false);
    let names = bool_param(&q, "include_names")?.unwrap_or(false);
    let found = app::list_role_assignments(
        &app,
        &ctx,
        param(&q, "user.id"),
        param(&q, "scope.project.id"),
        param(&q, "role.id"),
        effective,
    )
    .await?;
    let mut items = Vec::new();
    for a in found {
        let mut role = json!({"id": a.role_id});
        let mut user = json!({"id": a.user_id});
        let mut project = json!({"id": a.project_id});
        if names {
            if let Some(r) = store::get_role(app.db.pool(), &a.role_id).await? {
                role["name"] = r.name.into();
            }
            if let Some(u) = store::get_user(app.db.pool(), &a.user_id).await? {
                user["name"] = u.name.into();
                user["domain"] = domain_ref(&app, &u.domain_id).await?;
            }
            if let Some(p) = store::get_project(app.db.pool(), &a.project_id).await? {
                project["name"] = p.name.into();
                project["domain"] = domain_ref(&app, &p.domain_id).await?;
            }
        }
        items.push(json!({
            "role": role, "user": user, "scope": {"project": project},
            "links": {"assignment": format!("{base}/v3/projects/{}/users/{}/roles/{}", a.project_id, a.user_id, a.role_id)},
        }));
    }
    Ok(list_response(&base, "role_assignments", items))
}

async fn domain_ref(app: &App, id: &str) -> Result<Value> {
    let name = store::get_domain(app.db.pool(), id)
        .await?
        .map(|d| d.name)
        .unwrap_or_default();
    Ok(json!({"id": id, "name": name}))
}

// ---- catalog administration -----------------------------------------------------------------------

/// `POST /v3/services` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ServiceCreateBody {
    /// The service.
    pub service: ServiceCreate,
}

/// A new service.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ServiceCreate {
    /// Type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Enabled (default true).
    pub enabled: Option<bool>,
}

/// `POST /v3/endpoints` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct EndpointCreateBody {
    /// The endpoint.
    pub endpoint: EndpointCreate,
}

/// A new endpoint.
#[derive(Debug, Deserialize, ToSchema)]
pub struct EndpointCreate {
    /// Service id.
    pub service_id: String,
    /// `public`, `internal`, `admin`.
    pub interface: String,
    /// URL.
    pub url: String,
    /// Region id.
    pub region_id: Option<String>,
    /// Region (older name of region_id).
    pub region: Option<String>,
    /// Enabled (default true).
    pub enabled: Option<bool>,
}

/// Lists catalog services (admin).
#[utoipa::path(get, path = "/v3/services", tag = "identity",
    params(("type" = Option<String>, Query), ("name" = Option<String>, Query)), responses((status = 200, body = Object)))]
async fn list_services(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Result<Response> {
    let base = base_url(&app, ServiceKind::Identity, &headers);
    let q = query_pairs(&uri);
    let ss = app::list_services(&app, &ctx, param(&q, "type"), param(&q, "name")).await?;
    Ok(list_response(
        &base,
        "services",
        ss.iter().map(|s| service_json(&base, s)).collect(),
    ))
}

/// Creates a catalog service (admin).
#[utoipa::path(post, path = "/v3/services", tag = "identity", request_body = ServiceCreateBody,
    responses((status = 201, body = Object)))]
async fn create_service(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    headers: HeaderMap,
    JsonBody(b): JsonBody<ServiceCreateBody>,
) -> Result<Response> {
    let base = base_url(&app, ServiceKind::Identity, &headers);
    let s = b.service;
    let created = app::create_service(
        &app,
        &ctx,
        &s.kind,
        &s.name,
        s.description,
        s.enabled.unwrap_or(true),
    )
    .await?;
    Ok(one(
        StatusCode::CREATED,
        "service",
        service_json(&base, &created),
    ))
}

/// Shows a catalog service (admin).
#[utoipa::path(get, path = "/v3/services/{id}", tag = "identity",
    params(("id" = String, Path)), responses((status = 200, body = Object), (status = 404, body = KeystoneError)))]
async fn get_service(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let base = base_url(&app, ServiceKind::Identity, &headers);
    let s = app::get_service(&app, &ctx, &id).await?;
    Ok(one(StatusCode::OK, "service", service_json(&base, &s)))
}

/// Deletes a catalog service and its endpoints (admin).
#[utoipa::path(delete, path = "/v3/services/{id}", tag = "identity",
    params(("id" = String, Path)), responses((status = 204), (status = 404, body = KeystoneError)))]
async fn delete_service(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    app::delete_service(&app, &ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lists endpoints (admin).
#[utoipa::path(get, path = "/v3/endpoints", tag = "identity",
    params(("service_id" = Option<String>, Query), ("interface" = Option<String>, Query), ("region_id" = Option<String>, Query)),
    responses((status = 200, body = Object)))]
async fn list_endpoints(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Result<Response> {
    let base = base_url(&app, ServiceKind::Identity, &headers);
    let q = query_pairs(&uri);
    let es = app::list_endpoints(
        &app,
        &ctx,
        param(&q, "service_id"),
        param(&q, "interface"),
        param(&q, "region_id"),
    )
    .await?;
    Ok(list_response(
        &base,
        "endpoints",
        es.iter().map(|e| endpoint_json(&base, e)).collect(),
    ))
}

/// Creates an endpoint (admin).
#[utoipa::path(post, path = "/v3/endpoints", tag = "identity", request_body = EndpointCreateBody,
    responses((status = 201, body = Object)))]
async fn create_endpoint(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    headers: HeaderMap,
    JsonBody(b): JsonBody<EndpointCreateBody>,
) -> Result<Response> {
    let base = base_url(&app, ServiceKind::Identity, &headers);
    let e = b.endpoint;
    let region = e.region_id.or(e.region);
    let created = app::create_endpoint(
        &app,
        &ctx,
        &e.service_id,
        &e.interface,
        &e.url,
        region,
        e.enabled.unwrap_or(true),
    )
    .await?;
    Ok(one(
        StatusCode::CREATED,
        "endpoint",
        endpoint_json(&base, &created),
    ))
}

/// Shows an endpoint (admin).
#[utoipa::path(get, path = "/v3/endpoints/{id}", tag = "identity",
    params(("id" = String, Path)), responses((status = 200, body = Object), (status = 404, body = KeystoneError)))]
async fn get_endpoint(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let base = base_url(&app, ServiceKind::Identity, &headers);
    let e = app::get_endpoint(&app, &ctx, &id).await?;
    Ok(one(StatusCode::OK, "endpoint", endpoint_json(&base, &e)))
}

/// Deletes an endpoint (admin).
#[utoipa::path(delete, path = "/v3/endpoints/{id}", tag = "identity",
    params(("id" = String, Path)), responses((status = 204), (status = 404, body = KeystoneError)))]
async fn delete_endpoint(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    app::delete_endpoint(&app, &ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lists regions.
#[utoipa::path(get, path = "/v3/regions", tag = "identity", responses((status = 200, body = Object)))]
async fn list_regions(
    AxState(app): AxState<State>,
    Auth(ctx): Auth,
    headers: HeaderMap,
) -> Result<Response> {
    let base = base_url(&app, ServiceKind::Identity, &headers);
    let rs = app::list_regions(&app, &ctx).await?;
    let items = rs
        .iter()
        .map(|r| {
            json!({"id": r, "description": "", "parent_region_id": null,
            "links": {"self": format!("{base}/v3/regions/{r}")}})
        })
        .collect();
    Ok(list_response(&base, "regions", items))
}

/// The OpenAPI document of this API.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Mica identity API (Keystone v3 subset)", version = "3.14"),
    paths(
        versions,
        version,
        issue_token,
        validate_token,
        check_token,
        revoke_token,
        auth_catalog,
        auth_projects,
        auth_domains,
        list_domains,
        create_domain,
        get_domain,
        list_projects,
        create_project,
        get_project,
        update_project,
        delete_project,
        list_users,
        create_user,
        get_user,
        update_user,
        delete_user,
        user_projects,
        change_password,
        list_roles,
        create_role,
        get_role,
        delete_role,
        list_grants,
        grant,
        check_grant,
        revoke_grant,
        list_role_assignments,
        list_services,
        create_service,
        get_service,
        delete_service,
        list_endpoints,
        create_endpoint,
        get_endpoint,
        delete_endpoint,
        list_regions
    ),
    components(schemas(DomainRef, UserRef, ProjectRef))
)]
pub struct IdentityApi;
