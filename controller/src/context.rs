//! Who is calling: the validated token of a request.

use crate::db::Timestamp;

/// The project a token is scoped to.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectScope {
    /// Project id.
    pub id: String,
    /// Project name.
    pub name: String,
    /// The project's domain id.
    pub domain_id: String,
    /// The project's domain name.
    pub domain_name: String,
}

/// A role held by the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleRef {
    /// Role id.
    pub id: String,
    /// Role name.
    pub name: String,
}

/// The caller of a request, from its validated token.
#[derive(Debug, Clone, PartialEq)]
pub struct Context {
    /// User id.
    pub user_id: String,
    /// User name.
    pub user_name: String,
    /// The user's domain id.
    pub user_domain_id: String,
    /// The user's domain name.
    pub user_domain_name: String,
    /// The project scope; `None` for an unscoped token.
    pub project: Option<ProjectScope>,
    /// Effective roles on the project (implied roles included).
    pub roles: Vec<RoleRef>,
    /// How the token was obtained (`password`, `token`).
    pub methods: Vec<String>,
    /// The token's audit id.
    pub audit_id: String,
    /// When the token was issued.
    pub issued_at: Timestamp,
    /// When the token expires.
    pub expires_at: Timestamp,
}

impl Context {
    /// Whether the caller holds `role` (directly or implied).
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r.name == role)
    }

    /// Whether the caller is a cloud administrator (the `admin` role).
    pub fn is_admin(&self) -> bool {
        self.has_role("admin")
    }

    /// The scoped project's id.
    pub fn project_id(&self) -> Option<&str> {
        self.project.as_ref().map(|p| p.id.as_str())
    }
}
