//! Policy: which caller may do what, as data.
//!
//! Every operation that needs a decision names a rule (`image:add_image`). A
//! rule is an expression over the caller's token and the target object:
//!
//! ```text
//! expr  := and ( " or " and )*
//! and   := atom ( " and " atom )*
//! atom  := "role:" NAME      the caller has that role (implied roles count:
//!                            admin implies member implies reader)
//!        | "owner"           the caller's project owns the target
//!        | "user"            the target is the caller's own user
//!        | "domain"          the target is in the caller's project's domain
//!        | "@"               always
//!        | "!"               never
//! ```
//!
//! The defaults below follow OpenStack's: reader roles read, member roles
//! write within their project, admin does everything including admin-only
//! operations. `[policy]` in the configuration replaces any rule.
//! Visibility is not policy: an object of another project that the caller
//! can't see answers 404, decided by the app layer before any rule runs.

use std::collections::BTreeMap;

use crate::context::Context;
use crate::error::{Error, Result};

/// The built-in rules: (name, expression, what it guards).
pub const DEFAULT_RULES: &[(&str, &str, &str)] = &[
    // identity
    (
        "identity:get_domain",
        "role:admin or domain",
        "Show a domain.",
    ),
    ("identity:list_domains", "role:admin", "List domains."),
    ("identity:create_domain", "role:admin", "Create a domain."),
    ("identity:update_domain", "role:admin", "Update a domain."),
    ("identity:delete_domain", "role:admin", "Delete a domain."),
    (
        "identity:get_project",
        "role:admin or role:reader and owner",
        "Show a project.",
    ),
    ("identity:list_projects", "role:admin", "List all projects."),
    (
        "identity:list_user_projects",
        "role:admin or user",
        "List a user's projects.",
    ),
    ("identity:create_project", "role:admin", "Create a project."),
    ("identity:update_project", "role:admin", "Update a project."),
    ("identity:delete_project", "role:admin", "Delete a project."),
    ("identity:get_user", "role:admin or user", "Show a user."),
    ("identity:list_users", "role:admin", "List users."),
    ("identity:create_user", "role:admin", "Create a user."),
    ("identity:update_user", "role:admin", "Update a user."),
    ("identity:delete_user", "role:admin", "Delete a user."),
    (
        "identity:change_password",
        "user",
        "Change one's own password.",
    ),
    ("identity:get_role", "role:admin", "Show a role."),
    ("identity:list_roles", "role:admin", "List roles."),
    ("identity:create_role", "role:admin", "Create a role."),
    ("identity:delete_role", "role:admin", "Delete a role."),
    (
        "identity:check_grant",
        "role:admin",
        "Check a role assignment.",
    ),
    (
        "identity:list_grants",
        "role:admin",
        "List a user's roles on a project.",
    ),
    ("identity:create_grant", "role:admin", "Assign a role."),
    ("identity:revoke_grant", "role:admin", "Unassign a role."),
    (
        "identity:list_role_assignments",
        "role:admin",
        "List role assignments.",
    ),
    (
        "identity:validate_token",
        "role:admin or user",
        "Validate a token.",
    ),
    (
        "identity:revoke_token",
        "role:admin or user",
        "Revoke a token.",
    ),
    (
        "identity:get_service",
        "role:admin",
        "Show a catalog service.",
    ),
    (
        "identity:list_services",
        "role:admin",
        "List catalog services.",
    ),
    (
        "identity:create_service",
        "role:admin",
        "Create a catalog service.",
    ),
    (
        "identity:delete_service",
        "role:admin",
        "Delete a catalog service.",
    ),
    ("identity:get_endpoint", "role:admin", "Show an endpoint."),
    ("identity:list_endpoints", "role:admin", "List endpoints."),
    (
        "identity:create_endpoint",
        "role:admin",
        "Create an endpoint.",
    ),
    (
        "identity:delete_endpoint",
        "role:admin",
        "Delete an endpoint.",
    ),
    ("identity:list_regions", "@", "List regions."),
    // image
    ("image:get_images", "role:reader", "List images."),
    ("image:get_image", "role:reader", "Show an image."),
    ("image:add_image", "role:member", "Create an image."),
    (
        "image:modify_image",
        "role:admin or role:member and owner",
        "Update an image.",
    ),
    (
        "image:delete_image",
        "role:admin or role:member and owner",
        "Delete an image.",
    ),
    (
        "image:upload_image",
        "role:admin or role:member and owner",
        "Upload image data.",
    ),
    (
        "image:download_image",
        "role:reader",
        "Download image data.",
    ),
    (
        "image:publicize_image",
        "role:admin",
        "Make an image public.",
    ),
    (
        "image:communitize_image",
        "role:admin or role:member and owner",
        "Make an image community.",
    ),
    (
        "image:set_image_owner",
        "role:admin",
        "Create an image owned by another project.",
    ),
    (
        "image:get_members",
        "role:reader",
        "List an image's members.",
    ),
    (
        "image:add_member",
        "role:admin or role:member and owner",
        "Share an image with a project.",
    ),
    (
        "image:delete_member",
        "role:admin or role:member and owner",
        "Stop sharing an image.",
    ),
    (
        "image:modify_member",
        "role:admin or role:member",
        "Accept or reject a shared image.",
    ),
    // placement
    (
        "placement:admin",
        "role:admin",
        "Every placement operation.",
    ),
];

#[derive(Debug, Clone, PartialEq)]
enum Atom {
    Role(String),
    Owner,
    User,
    Domain,
    Always,
    Never,
}

/// A parsed rule: any of the alternatives, each all of its atoms.
#[derive(Debug, Clone, PartialEq)]
struct Expr(Vec<Vec<Atom>>);

fn parse(text: &str) -> Result<Expr, String> {
    let mut alternatives = Vec::new();
    for alt in text.split(" or ") {
        let mut atoms = Vec::new();
        for atom in alt.split(" and ") {
            let atom = atom.trim();
            atoms.push(match atom {
                "owner" => Atom::Owner,
                "user" => Atom::User,
                "domain" => Atom::Domain,
                "@" => Atom::Always,
                "!" => Atom::Never,
                _ => match atom.strip_prefix("role:") {
                    Some(r) if !r.is_empty() && !r.contains(' ') => Atom::Role(r.to_owned()),
                    _ => return Err(format!("`{atom}` is not a policy atom")),
                },
            });
        }
        alternatives.push(atoms);
    }
    Ok(Expr(alternatives))
}

/// What a rule is checked against.
#[derive(Debug, Default, Clone, Copy)]
pub struct Target<'a> {
    /// The project that owns the object.
    pub project_id: Option<&'a str>,
    /// The user the object is (or belongs to).
    pub user_id: Option<&'a str>,
    /// The domain the object is in.
    pub domain_id: Option<&'a str>,
}

impl<'a> Target<'a> {
    /// A target owned by `project_id`.
    pub fn project(project_id: &'a str) -> Target<'a> {
        Target {
            project_id: Some(project_id),
            ..Target::default()
        }
    }
    /// A target that is (or belongs to) `user_id`.
    pub fn user(user_id: &'a str) -> Target<'a> {
        Target {
            user_id: Some(user_id),
            ..Target::default()
        }
    }
}

/// The rules in force.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: BTreeMap<String, Expr>,
}

impl Policy {
    /// The defaults, with `overrides` (from `[policy]`) replacing rules.
    /// Unknown rule names and unparsable expressions are errors.
    pub fn new(overrides: &BTreeMap<String, String>) -> Result<Policy, String> {
        let mut rules = BTreeMap::new();
        for (name, expr, _) in DEFAULT_RULES {
            rules.insert((*name).to_owned(), parse(expr).expect("defaults parse"));
        }
        for (name, expr) in overrides {
            if !rules.contains_key(name) {
                return Err(format!("[policy] {name}: no such rule"));
            }
            let parsed = parse(expr).map_err(|e| format!("[policy] {name}: {e}"))?;
            rules.insert(name.clone(), parsed);
        }
        Ok(Policy { rules })
    }

    /// Whether `ctx` passes rule `name` for `target`.
    pub fn check(&self, name: &str, ctx: &Context, target: Target<'_>) -> bool {
        let Some(expr) = self.rules.get(name) else {
            // A rule the code uses but never declared: deny, loudly.
            tracing::error!(rule = name, "policy rule is not declared; denying");
            return false;
        };
        expr.0.iter().any(|atoms| {
            atoms.iter().all(|a| match a {
                Atom::Role(r) => ctx.has_role(r),
                Atom::Owner => {
                    matches!((ctx.project_id(), target.project_id), (Some(a), Some(b)) if a == b)
                }
                Atom::User => target.user_id == Some(ctx.user_id.as_str()),
                Atom::Domain => matches!(
                    (ctx.project.as_ref(), target.domain_id),
                    (Some(p), Some(d)) if p.domain_id == d
                ),
                Atom::Always => true,
                Atom::Never => false,
            })
        })
    }

    /// `Ok` when `ctx` passes rule `name`, 403 otherwise.
    pub fn enforce(&self, name: &str, ctx: &Context, target: Target<'_>) -> Result<()> {
        if self.check(name, ctx, target) {
            Ok(())
        } else {
            Err(Error::forbidden(format!(
                "Policy doesn't allow {name} to be performed."
            )))
        }
    }

    /// The defaults as a TOML `[policy]` section, with descriptions.
    pub fn defaults_toml() -> String {
        let mut out = String::from("[policy]\n");
        for (name, expr, what) in DEFAULT_RULES {
            out.push_str(&format!("# {what}\n\"{name}\" = \"{expr}\"\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::{Context, ProjectScope};

    fn ctx(project: &str, roles: &[&str]) -> Context {
        Context {
            user_id: "u1".into(),
            user_name: "alice".into(),
            user_domain_id: "default".into(),
            user_domain_name: "Default".into(),
            project: Some(ProjectScope {
                id: project.into(),
                name: project.into(),
                domain_id: "default".into(),
                domain_name: "Default".into(),
            }),
            roles: roles
                .iter()
                .map(|r| crate::context::RoleRef {
                    id: format!("id-{r}"),
                    name: (*r).into(),
                })
                .collect(),
            methods: vec!["password".into()],
            audit_id: "a".into(),
            issued_at: crate::db::Timestamp::now(),
            expires_at: crate::db::Timestamp::now(),
        }
    }

    #[test]
    fn defaults_parse_and_are_unique() {
        let p = Policy::new(&BTreeMap::new()).unwrap();
        assert_eq!(p.rules.len(), DEFAULT_RULES.len());
    }

    #[test]
    fn members_write_their_own_readers_only_read() {
        let p = Policy::new(&BTreeMap::new()).unwrap();
        let member = ctx("p1", &["member", "reader"]);
        let reader = ctx("p1", &["reader"]);
        let admin = ctx("p2", &["admin", "member", "reader"]);
        let own = Target::project("p1");
        let other = Target::project("p9");
        assert!(p.check("image:modify_image", &member, own));
        assert!(!p.check("image:modify_image", &member, other));
        assert!(!p.check("image:modify_image", &reader, own));
        assert!(p.check("image:get_image", &reader, own));
        assert!(p.check("image:modify_image", &admin, other));
        assert!(!p.check("image:publicize_image", &member, own));
        assert!(!p.check("placement:admin", &member, own));
        assert!(p.check("placement:admin", &admin, own));
        let e = p
            .enforce("identity:list_projects", &member, own)
            .unwrap_err();
        assert_eq!(e.kind.status(), 403);
    }

    #[test]
    fn overrides_replace_rules_and_are_validated() {
        let mut o = BTreeMap::new();
        o.insert("image:add_image".to_owned(), "role:admin".to_owned());
        let p = Policy::new(&o).unwrap();
        assert!(!p.check(
            "image:add_image",
            &ctx("p1", &["member"]),
            Target::default()
        ));
        o.insert("image:nope".to_owned(), "@".to_owned());
        assert!(Policy::new(&o).is_err());
        let mut o = BTreeMap::new();
        o.insert("image:add_image".to_owned(), "role: admin".to_owned());
        assert!(Policy::new(&o).is_err());
    }

    #[test]
    fn undeclared_rules_deny() {
        let p = Policy::new(&BTreeMap::new()).unwrap();
        assert!(!p.check("nope:nope", &ctx("p", &["admin"]), Target::default()));
    }
}
