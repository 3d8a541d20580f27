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
    // compute (Nova's rule names)
    (
        "os_compute_api:servers:index",
        "role:reader",
        "List servers.",
    ),
    (
        "os_compute_api:servers:detail",
        "role:reader",
        "List servers with details.",
    ),
    (
        "os_compute_api:servers:index:get_all_tenants",
        "role:admin",
        "List the servers of every project.",
    ),
    (
        "os_compute_api:servers:detail:get_all_tenants",
        "role:admin",
        "List the servers of every project, with details.",
    ),
    (
        "os_compute_api:servers:allow_all_filters",
        "role:admin",
        "Filter server lists by every field (host, node, …).",
    ),
    (
        "os_compute_api:servers:show",
        "role:admin or role:reader and owner",
        "Show a server.",
    ),
    (
        "os_compute_api:servers:show:host_status",
        "role:admin",
        "See `host_status` of servers.",
    ),
    (
        "os_compute_api:servers:show:flavor-extra-specs",
        "role:admin or role:reader and owner",
        "See the extra specs of a server's flavor (2.47).",
    ),
    (
        "os_compute_api:os-extended-server-attributes",
        "role:admin",
        "See OS-EXT-SRV-ATTR:* (host, instance name, user data, …).",
    ),
    (
        "os_compute_api:servers:create",
        "role:member and owner",
        "Create servers.",
    ),
    (
        "os_compute_api:servers:create:forced_host",
        "role:admin",
        "Create a server on a given host (`zone:host:node`).",
    ),
    (
        "os_compute_api:servers:create:requested_destination",
        "role:admin",
        "Create a server on a given host (2.74 `host`, `hypervisor_hostname`).",
    ),
    (
        "os_compute_api:servers:update",
        "role:admin or role:member and owner",
        "Rename or describe a server.",
    ),
    (
        "os_compute_api:servers:delete",
        "role:admin or role:member and owner",
        "Delete a server.",
    ),
    (
        "os_compute_api:servers:start",
        "role:admin or role:member and owner",
        "Start a server.",
    ),
    (
        "os_compute_api:servers:stop",
        "role:admin or role:member and owner",
        "Stop a server.",
    ),
    (
        "os_compute_api:servers:reboot",
        "role:admin or role:member and owner",
        "Reboot a server.",
    ),
    (
        "os_compute_api:os-pause-server:pause",
        "role:admin or role:member and owner",
        "Pause a server.",
    ),
    (
        "os_compute_api:os-pause-server:unpause",
        "role:admin or role:member and owner",
        "Unpause a server.",
    ),
    (
        "os_compute_api:os-suspend-server:suspend",
        "role:admin or role:member and owner",
        "Suspend a server.",
    ),
    (
        "os_compute_api:os-suspend-server:resume",
        "role:admin or role:member and owner",
        "Resume a server.",
    ),
    (
        "os_compute_api:servers:resize",
        "role:admin or role:member and owner",
        "Resize a server.",
    ),
    (
        "os_compute_api:servers:confirm_resize",
        "role:admin or role:member and owner",
        "Confirm a resize.",
    ),
    (
        "os_compute_api:servers:revert_resize",
        "role:admin or role:member and owner",
        "Revert a resize.",
    ),
    (
        "os_compute_api:os-rescue",
        "role:admin or role:member and owner",
        "Rescue a server.",
    ),
    (
        "os_compute_api:os-unrescue",
        "role:admin or role:member and owner",
        "Unrescue a server.",
    ),
    (
        "os_compute_api:servers:create_image",
        "role:admin or role:member and owner",
        "Snapshot a server.",
    ),
    (
        "os_compute_api:servers:rebuild",
        "role:admin or role:member and owner",
        "Rebuild a server.",
    ),
    (
        "os_compute_api:os-migrate-server:migrate",
        "role:admin",
        "Cold-migrate a server.",
    ),
    (
        "os_compute_api:os-migrate-server:migrate_live",
        "role:admin",
        "Live-migrate a server.",
    ),
    (
        "os_compute_api:os-evacuate",
        "role:admin",
        "Evacuate a server from a failed host.",
    ),
    (
        "os_compute_api:os-admin-actions:reset_state",
        "role:admin",
        "Reset a server's state to active or error.",
    ),
    (
        "os_compute_api:os-lock-server:lock",
        "role:admin or role:member and owner",
        "Lock a server.",
    ),
    (
        "os_compute_api:os-lock-server:unlock",
        "role:admin or role:member and owner",
        "Unlock a server.",
    ),
    (
        "os_compute_api:os-lock-server:unlock:unlock_override",
        "role:admin",
        "Unlock a server locked by an admin.",
    ),
    (
        "os_compute_api:os-security-groups:add",
        "role:admin or role:member and owner",
        "Add a security group to a server.",
    ),
    (
        "os_compute_api:os-security-groups:remove",
        "role:admin or role:member and owner",
        "Remove a security group from a server.",
    ),
    (
        "os_compute_api:os-security-groups:list",
        "role:admin or role:reader and owner",
        "List a server's security groups.",
    ),
    (
        "os_compute_api:server-metadata:index",
        "role:admin or role:reader and owner",
        "Read a server's metadata.",
    ),
    (
        "os_compute_api:server-metadata:update",
        "role:admin or role:member and owner",
        "Change a server's metadata.",
    ),
    (
        "os_compute_api:os-server-tags:index",
        "role:admin or role:reader and owner",
        "Read a server's tags.",
    ),
    (
        "os_compute_api:os-server-tags:update",
        "role:admin or role:member and owner",
        "Change a server's tags.",
    ),
    (
        "os_compute_api:os-remote-consoles",
        "role:admin or role:member and owner",
        "Open a server's VNC or serial console (remote-consoles, os-getVNCConsole, os-getSerialConsole).",
    ),
    (
        "os_compute_api:os-server-password:show",
        "role:admin or role:reader and owner",
        "Read the password a server's guest posted (os-server-password).",
    ),
    (
        "os_compute_api:os-server-password:clear",
        "role:admin or role:member and owner",
        "Clear the password a server's guest posted.",
    ),
    (
        "os_compute_api:os-console-output",
        "role:admin or role:member and owner",
        "Read a server's console log (os-getConsoleOutput).",
    ),
    (
        "os_compute_api:os-instance-actions:list",
        "role:admin or role:reader and owner",
        "List a server's instance actions.",
    ),
    (
        "os_compute_api:os-instance-actions:events:details",
        "role:admin",
        "See the host and traceback of instance action events.",
    ),
    (
        "os_compute_api:os-flavor-manage:create",
        "role:admin",
        "Create flavors.",
    ),
    (
        "os_compute_api:os-flavor-manage:update",
        "role:admin",
        "Update a flavor's description.",
    ),
    (
        "os_compute_api:os-flavor-manage:delete",
        "role:admin",
        "Delete flavors.",
    ),
    (
        "os_compute_api:os-flavor-extra-specs:index",
        "role:reader",
        "Read flavor extra specs.",
    ),
    (
        "os_compute_api:os-flavor-extra-specs:manage",
        "role:admin",
        "Change flavor extra specs.",
    ),
    (
        "os_compute_api:os-flavor-access",
        "role:admin",
        "List the projects of a private flavor.",
    ),
    (
        "os_compute_api:os-flavor-access:manage",
        "role:admin",
        "Grant or revoke access to a private flavor.",
    ),
    (
        "os_compute_api:os-keypairs",
        "role:admin or user",
        "Use key pairs (one's own; admins: anyone's, 2.10).",
    ),
    (
        "os_compute_api:os-server-groups:index",
        "role:reader",
        "List server groups.",
    ),
    (
        "os_compute_api:os-server-groups:index:all_projects",
        "role:admin",
        "List the server groups of every project.",
    ),
    (
        "os_compute_api:os-server-groups:show",
        "role:admin or role:reader and owner",
        "Show a server group.",
    ),
    (
        "os_compute_api:os-server-groups:create",
        "role:member and owner",
        "Create server groups.",
    ),
    (
        "os_compute_api:os-server-groups:delete",
        "role:admin or role:member and owner",
        "Delete a server group.",
    ),
    (
        "os_compute_api:os-quota-sets:show",
        "role:admin or role:reader and owner",
        "Show a project's quotas.",
    ),
    (
        "os_compute_api:os-quota-sets:update",
        "role:admin",
        "Set quotas.",
    ),
    (
        "os_compute_api:os-quota-sets:delete",
        "role:admin",
        "Reset quotas to the defaults.",
    ),
    (
        "os_compute_api:os-quota-sets:defaults",
        "@",
        "Show the default quotas.",
    ),
    (
        "os_compute_api:os-quota-class-sets:show",
        "role:admin",
        "Show a quota class.",
    ),
    (
        "os_compute_api:os-quota-class-sets:update",
        "role:admin",
        "Change a quota class (`default`).",
    ),
    ("os_compute_api:limits", "@", "Show one's limits."),
    (
        "os_compute_api:limits:other_project",
        "role:admin",
        "Show another project's limits (`tenant_id`).",
    ),
    (
        "os_compute_api:os-availability-zone:list",
        "@",
        "List availability zones.",
    ),
    (
        "os_compute_api:os-availability-zone:detail",
        "role:admin",
        "List availability zones with their hosts and services.",
    ),
    (
        "os_compute_api:os-aggregates",
        "role:admin",
        "Manage host aggregates.",
    ),
    (
        "os_compute_api:os-services:list",
        "role:admin",
        "List compute services.",
    ),
    (
        "os_compute_api:os-services:update",
        "role:admin",
        "Enable, disable or force down a compute service.",
    ),
    (
        "os_compute_api:os-services:delete",
        "role:admin",
        "Delete a compute service.",
    ),
    (
        "os_compute_api:os-hypervisors",
        "role:admin",
        "List and show hypervisors.",
    ),
    // network (Neutron's rule names, prefixed)
    (
        "network:get_network",
        "role:reader",
        "Show networks (own and shared).",
    ),
    (
        "network:create_network",
        "role:member and owner",
        "Create networks.",
    ),
    (
        "network:create_network:shared",
        "role:admin",
        "Create or make shared networks.",
    ),
    (
        "network:create_network:provider",
        "role:admin",
        "Set provider attributes or router:external.",
    ),
    (
        "network:update_network",
        "role:admin or role:member and owner",
        "Update a network.",
    ),
    (
        "network:delete_network",
        "role:admin or role:member and owner",
        "Delete a network.",
    ),
    ("network:get_subnet", "role:reader", "Show subnets."),
    (
        "network:create_subnet",
        "role:admin or role:member and owner",
        "Create a subnet in a network.",
    ),
    (
        "network:update_subnet",
        "role:admin or role:member and owner",
        "Update a subnet.",
    ),
    (
        "network:delete_subnet",
        "role:admin or role:member and owner",
        "Delete a subnet.",
    ),
    (
        "network:get_port",
        "role:admin or role:reader and owner",
        "Show ports.",
    ),
    ("network:create_port", "role:member", "Create ports."),
    (
        "network:create_port:mac_address",
        "role:admin",
        "Choose a port's MAC address.",
    ),
    (
        "network:create_port:fixed_ips:ip_address",
        "role:admin or role:member and owner",
        "Choose a port's IP address (on one's own network).",
    ),
    (
        "network:create_port:binding:host_id",
        "role:admin",
        "Bind a port to a host.",
    ),
    (
        "network:update_port",
        "role:admin or role:member and owner",
        "Update a port.",
    ),
    (
        "network:delete_port",
        "role:admin or role:member and owner",
        "Delete a port.",
    ),
    (
        "network:get_security_group",
        "role:admin or role:reader and owner",
        "Show security groups.",
    ),
    (
        "network:create_security_group",
        "role:member and owner",
        "Create security groups.",
    ),
    (
        "network:update_security_group",
        "role:admin or role:member and owner",
        "Update a security group.",
    ),
    (
        "network:delete_security_group",
        "role:admin or role:member and owner",
        "Delete a security group.",
    ),
    (
        "network:create_security_group_rule",
        "role:admin or role:member and owner",
        "Add a rule to a security group.",
    ),
    (
        "network:delete_security_group_rule",
        "role:admin or role:member and owner",
        "Remove a rule from a security group.",
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
