//! Identity API against both databases: tokens, discovery, CRUD, policy and
//! bad input, each error with Keystone's body.

mod common;

use common::{Caller, Env, keystone_error};
use mica_controller::db::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

both_databases!(
    tokens_issue_validate_revoke,
    expired_tokens_are_refused_and_swept,
    version_discovery_needs_no_token,
    projects_users_roles_and_policy,
    bad_input_is_400_with_keystone_body,
    losing_access_invalidates_tokens,
    rescoping_with_a_token,
    password_changes_and_disabling_revoke_tokens,
    revoking_a_token_revokes_its_rescoped_tokens,
);

async fn tokens_issue_validate_revoke(backend: Backend) {
    let env = Env::start(backend).await;
    let url = format!("{}/v3/auth/tokens", env.identity);

    // Issue: body and header as clients expect.
    let resp = env
        .http
        .post(&url)
        .json(&json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": "admin", "domain": {"id": "default"}, "password": mica_controller::testing::ADMIN_PASSWORD}}},
            "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}
        }}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let token = resp.headers()["x-subject-token"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(token.len() >= 40);
    let body: Value = resp.json().await.unwrap();
    let t = &body["token"];
    assert_eq!(t["methods"], json!(["password"]));
    assert_eq!(t["user"]["name"], "admin");
    assert_eq!(t["user"]["domain"]["id"], "default");
    assert_eq!(t["project"]["name"], "admin");
    assert_eq!(t["project"]["domain"]["name"], "Default");
    assert!(t["expires_at"].as_str().unwrap().ends_with('Z'));
    assert!(t["issued_at"].is_string());
    let roles: Vec<&str> = t["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for r in ["admin", "member", "reader"] {
        assert!(
            roles.contains(&r),
            "implied roles are in the token: {roles:?}"
        );
    }
    let types: Vec<&str> = t["catalog"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["type"].as_str().unwrap())
        .collect();
    for ty in ["identity", "image", "placement"] {
        assert!(types.contains(&ty), "{types:?}");
    }
    let identity = t["catalog"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["type"] == "identity")
        .unwrap();
    let public = identity["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["interface"] == "public")
        .unwrap();
    assert_eq!(public["url"], format!("{}/v3", env.identity));
    assert_eq!(public["region"], "RegionOne");
    assert_eq!(public["region_id"], "RegionOne");

    // Validate (GET and HEAD), with the token checking itself.
    let v = env
        .http
        .get(&url)
        .header("x-auth-token", &token)
        .header("x-subject-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(v.status(), StatusCode::OK);
    assert_eq!(v.headers()["x-subject-token"].to_str().unwrap(), token);
    let vb: Value = v.json().await.unwrap();
    assert_eq!(vb["token"]["user"]["name"], "admin");
    let h = env
        .http
        .head(&url)
        .header("x-auth-token", &token)
        .header("x-subject-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(h.status(), StatusCode::OK);

    // A garbage subject is 404; a garbage caller is 401.
    let r = env
        .http
        .get(&url)
        .header("x-auth-token", &token)
        .header("x-subject-token", "not-a-token")
        .send()
        .await
        .unwrap();
    keystone_error(r, 404).await;
    let r = env
        .http
        .get(format!("{}/v3/projects", env.identity))
        .header("x-auth-token", "not-a-token")
        .send()
        .await
        .unwrap();
    keystone_error(r, 401).await;
    let r = env
        .http
        .get(format!("{}/v3/projects", env.identity))
        .send()
        .await
        .unwrap();
    let msg = keystone_error(r, 401).await;
    assert!(msg.contains("requires authentication"), "{msg}");

    // Bad credentials.
    for (user, pw) in [("admin", "wrong"), ("nobody", "wrong")] {
        let r = env
            .http
            .post(&url)
            .json(
                &json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
                "name": user, "domain": {"id": "default"}, "password": pw}}}}}),
            )
            .send()
            .await
            .unwrap();
        keystone_error(r, 401).await;
    }

    // Revoke, then the token is dead everywhere.
    let other = env.admin().await;
    let d = env
        .http
        .delete(&url)
        .header("x-auth-token", &other.token)
        .header("x-subject-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(d.status(), StatusCode::NO_CONTENT);
    let r = env
        .http
        .get(&url)
        .header("x-auth-token", &other.token)
        .header("x-subject-token", &token)
        .send()
        .await
        .unwrap();
    keystone_error(r, 404).await;
    let r = env
        .http
        .get(format!("{}/v2/images", env.image))
        .header("x-auth-token", &token)
        .send()
        .await
        .unwrap();
    common::nova_error(r, 401, "unauthorized").await;
    let r = env
        .http
        .get(format!("{}/resource_providers", env.placement))
        .header("x-auth-token", &token)
        .send()
        .await
        .unwrap();
    common::placement_error(r, 401).await;
    env.stop().await;
}

async fn expired_tokens_are_refused_and_swept(backend: Backend) {
    let env = Env::start_with(backend, |c| {
        c.identity.token_expiration_secs = 1;
        c.identity.expired_token_retention_secs = 0;
    })
    .await;
    let admin = env.admin().await;
    let ok = env
        .call(
            &admin,
            Method::GET,
            &format!("{}/v3/projects", env.identity),
            None,
        )
        .await;
    assert_eq!(ok.status(), StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let r = env
        .call(
            &admin,
            Method::GET,
            &format!("{}/v3/projects", env.identity),
            None,
        )
        .await;
    keystone_error(r, 401).await;
    let swept = mica_controller::app::identity::sweep_expired_tokens(&env.cloud.app)
        .await
        .unwrap();
    assert!(swept >= 1, "swept {swept}");
    env.stop().await;
}

async fn version_discovery_needs_no_token(backend: Backend) {
    let env = Env::start(backend).await;
    let v = env
        .http
        .get(format!("{}/v3", env.identity))
        .send()
        .await
        .unwrap();
    assert_eq!(v.status(), StatusCode::OK);
    let b: Value = v.json().await.unwrap();
    assert_eq!(b["version"]["id"], "v3.14");
    assert_eq!(b["version"]["status"], "stable");
    assert_eq!(b["version"]["links"][0]["rel"], "self");
    assert_eq!(
        b["version"]["links"][0]["href"],
        format!("{}/v3/", env.identity)
    );
    let r = env
        .http
        .get(format!("{}/", env.identity))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::MULTIPLE_CHOICES);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["versions"]["values"][0]["id"], "v3.14");
    env.stop().await;
}

async fn projects_users_roles_and_policy(backend: Backend) {
    let env = Env::start(backend).await;
    let admin = env.admin().await;
    let member = env.user_with_role("p1", "alice", "member").await;
    let reader = env.user_with_role("p1", "rita", "reader").await;
    let other = env.user_with_role("p2", "bob", "member").await;
    let id = &env.identity;

    // Duplicate project: 409.
    let r = env
        .call(
            &admin,
            Method::POST,
            &format!("{id}/v3/projects"),
            Some(json!({"project": {"name": "p1"}})),
        )
        .await;
    keystone_error(r, 409).await;

    // Non-admins: 403 on admin-only operations.
    for who in [&member, &reader] {
        let r = env
            .call(
                who,
                Method::POST,
                &format!("{id}/v3/projects"),
                Some(json!({"project": {"name": "x"}})),
            )
            .await;
        keystone_error(r, 403).await;
        let r = env
            .call(
                who,
                Method::POST,
                &format!("{id}/v3/users"),
                Some(json!({"user": {"name": "x"}})),
            )
            .await;
        keystone_error(r, 403).await;
    }

    // A member sees its own project, and another project is 404.
    let r = env
        .call(
            &member,
            Method::GET,
            &format!("{id}/v3/projects/{}", member.project_id),
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = env
        .call(
            &member,
            Method::GET,
            &format!("{id}/v3/projects/{}", other.project_id),
            None,
        )
        .await;
    keystone_error(r, 404).await;
    // Listing as non-admin shows only the current project.
    let b: Value = env
        .call(&member, Method::GET, &format!("{id}/v3/projects"), None)
        .await
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = b["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["p1"]);
    // Name lookups: 404 on the name, then ?name=.
    let r = env
        .call(&admin, Method::GET, &format!("{id}/v3/projects/p1"), None)
        .await;
    keystone_error(r, 404).await;
    let b: Value = env
        .call(
            &admin,
            Method::GET,
            &format!("{id}/v3/projects?name=p1"),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(b["projects"][0]["id"], member.project_id);
    assert_eq!(b["projects"][0]["domain_id"], "default");
    assert_eq!(b["projects"][0]["enabled"], true);

    // Users see themselves, not others.
    let r = env
        .call(
            &member,
            Method::GET,
            &format!("{id}/v3/users/{}", member.user_id),
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = env
        .call(
            &member,
            Method::GET,
            &format!("{id}/v3/users/{}", other.user_id),
            None,
        )
        .await;
    keystone_error(r, 403).await;

    // Admin updates and deletes.
    let r = env
        .call(
            &admin,
            Method::PATCH,
            &format!("{id}/v3/projects/{}", other.project_id),
            Some(json!({"project": {"description": "changed"}})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap()["project"]["description"],
        "changed"
    );
    let r = env
        .call(
            &admin,
            Method::GET,
            &format!(
                "{id}/v3/role_assignments?scope.project.id={}&include_names=true",
                member.project_id
            ),
            None,
        )
        .await;
    let b: Value = r.json().await.unwrap();
    let users: Vec<&str> = b["role_assignments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["user"]["name"].as_str().unwrap())
        .collect();
    assert!(
        users.contains(&"alice") && users.contains(&"rita"),
        "{users:?}"
    );
    let r = env
        .call(
            &admin,
            Method::DELETE,
            &format!("{id}/v3/users/{}", other.user_id),
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = env
        .call(&other, Method::GET, &format!("{id}/v3/projects"), None)
        .await;
    keystone_error(r, 401).await;
    let r = env
        .call(
            &admin,
            Method::DELETE,
            &format!("{id}/v3/users/{}", other.user_id),
            None,
        )
        .await;
    keystone_error(r, 404).await;
    env.stop().await;
}

async fn bad_input_is_400_with_keystone_body(backend: Backend) {
    let env = Env::start(backend).await;
    let admin = env.admin().await;
    let url = format!("{}/v3/projects", env.identity);
    // Malformed JSON.
    let r = env
        .http
        .post(&url)
        .header("x-auth-token", &admin.token)
        .header("content-type", "application/json")
        .body("{\"project\": {\"name\": ")
        .send()
        .await
        .unwrap();
    let m = keystone_error(r, 400).await;
    assert!(m.contains("Malformed"), "{m}");
    // Wrong types.
    let r = env
        .call(
            &admin,
            Method::POST,
            &url,
            Some(json!({"project": {"name": "x", "enabled": "yes"}})),
        )
        .await;
    keystone_error(r, 400).await;
    let r = env
        .call(
            &admin,
            Method::POST,
            &url,
            Some(json!({"project": {"name": 5}})),
        )
        .await;
    keystone_error(r, 400).await;
    // Missing fields.
    let r = env
        .call(&admin, Method::POST, &url, Some(json!({"nothing": {}})))
        .await;
    keystone_error(r, 400).await;
    let r = env
        .http
        .post(format!("{}/v3/auth/tokens", env.identity))
        .json(&json!({"auth": {"identity": {"methods": ["password"]}}}))
        .send()
        .await
        .unwrap();
    keystone_error(r, 400).await;
    // Too big.
    let huge = "x".repeat(200_000);
    let r = env
        .call(
            &admin,
            Method::POST,
            &url,
            Some(json!({"project": {"name": "x", "description": huge}})),
        )
        .await;
    keystone_error(r, 413).await;
    // Nothing half-written: no project "x".
    let b: Value = env
        .call(&admin, Method::GET, &format!("{url}?name=x"), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(b["projects"], json!([]));
    // Unknown path and method.
    let r = env
        .call(
            &admin,
            Method::GET,
            &format!("{}/v3/nothing", env.identity),
            None,
        )
        .await;
    keystone_error(r, 404).await;
    let r = env.call(&admin, Method::PUT, &url, None).await;
    keystone_error(r, 405).await;
    env.stop().await;
}

async fn losing_access_invalidates_tokens(backend: Backend) {
    let env = Env::start(backend).await;
    let admin = env.admin().await;
    let member = env.user_with_role("p1", "alice", "member").await;
    let id = &env.identity;
    let probe = format!("{id}/v3/projects/{}", member.project_id);
    assert_eq!(
        env.call(&member, Method::GET, &probe, None).await.status(),
        StatusCode::OK
    );
    // Remove the role: the project-scoped token stops validating.
    let roles: Value = env
        .call(
            &admin,
            Method::GET,
            &format!("{id}/v3/roles?name=member"),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    let role = roles["roles"][0]["id"].as_str().unwrap();
    let grant = format!(
        "{id}/v3/projects/{}/users/{}/roles/{role}",
        member.project_id, member.user_id
    );
    assert_eq!(
        env.call(&admin, Method::HEAD, &grant, None).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        env.call(&admin, Method::DELETE, &grant, None)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        env.call(&admin, Method::HEAD, &grant, None).await.status(),
        StatusCode::NOT_FOUND
    );
    keystone_error(env.call(&member, Method::GET, &probe, None).await, 401).await;
    // Give it back, log in again, then disable the user.
    assert_eq!(
        env.call(&admin, Method::PUT, &grant, None).await.status(),
        StatusCode::NO_CONTENT
    );
    let member = env.login("alice", "pw-of-user", "p1").await;
    assert_eq!(
        env.call(&member, Method::GET, &probe, None).await.status(),
        StatusCode::OK
    );
    let r = env
        .call(
            &admin,
            Method::PATCH,
            &format!("{id}/v3/users/{}", member.user_id),
            Some(json!({"user": {"enabled": false}})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    keystone_error(env.call(&member, Method::GET, &probe, None).await, 401).await;
    let r = env
        .http
        .post(format!("{id}/v3/auth/tokens"))
        .json(
            &json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": "alice", "domain": {"id": "default"}, "password": "pw-of-user"}}}}}),
        )
        .send()
        .await
        .unwrap();
    keystone_error(r, 401).await;
    env.stop().await;
}

async fn rescoping_with_a_token(backend: Backend) {
    let env = Env::start(backend).await;
    let member = env.user_with_role("p1", "alice", "member").await;
    let url = format!("{}/v3/auth/tokens", env.identity);
    // Unscoped first.
    let r = env
        .http
        .post(&url)
        .json(
            &json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "id": member.user_id, "password": "pw-of-user"}}}, "scope": "unscoped"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let unscoped = r.headers()["x-subject-token"].to_str().unwrap().to_owned();
    let b: Value = r.json().await.unwrap();
    assert!(b["token"].get("project").is_none());
    assert!(b["token"].get("catalog").is_none());
    // Rescope to the project with the token method.
    let r = env
        .http
        .post(&url)
        .json(
            &json!({"auth": {"identity": {"methods": ["token"], "token": {"id": unscoped}},
            "scope": {"project": {"id": member.project_id}}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["token"]["project"]["id"], member.project_id);
    assert_eq!(b["token"]["methods"], json!(["password", "token"]));
    assert_eq!(b["token"]["audit_ids"].as_array().unwrap().len(), 2);
    // A project the user has no role on: 401.
    let admin = env.admin().await;
    let r = env
        .http
        .post(&url)
        .json(
            &json!({"auth": {"identity": {"methods": ["token"], "token": {"id": unscoped}},
            "scope": {"project": {"id": admin.project_id}}}}),
        )
        .send()
        .await
        .unwrap();
    keystone_error(r, 401).await;
    env.stop().await;
}

/// GET /v3/auth/tokens for `subject` as `who`: the status.
async fn validity(env: &Env, who: &str, subject: &str) -> u16 {
    env.http
        .get(format!("{}/v3/auth/tokens", env.identity))
        .header("x-auth-token", who)
        .header("x-subject-token", subject)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A token for `user_id` with the token method, rescoped from `token`.
async fn rescope(env: &Env, token: &str, project_id: &str) -> String {
    let r = env
        .http
        .post(format!("{}/v3/auth/tokens", env.identity))
        .json(
            &json!({"auth": {"identity": {"methods": ["token"], "token": {"id": token}},
            "scope": {"project": {"id": project_id}}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.headers()["x-subject-token"].to_str().unwrap().to_owned()
}

/// Keystone's semantics: a password change (one's own, or an admin's
/// reset) revokes the user's earlier tokens; disabling a user revokes its
/// tokens for good, so re-enabling does not bring them back.
async fn password_changes_and_disabling_revoke_tokens(backend: Backend) {
    let env = Env::start(backend).await;
    let admin = env.admin().await;
    let alice = env.user_with_role("p1", "alice", "member").await;
    let second = env.login("alice", "pw-of-user", "p1").await;
    assert_eq!(validity(&env, &admin.token, &alice.token).await, 200);
    // Her own change: every earlier token of hers stops working…
    let r = env
        .call(
            &alice,
            Method::POST,
            &format!("{}/v3/users/{}/password", env.identity, alice.user_id),
            Some(json!({"user": {"password": "pw-2", "original_password": "pw-of-user"}})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    for old in [&alice.token, &second.token] {
        assert_eq!(validity(&env, &admin.token, old).await, 404);
        let r = env
            .call(
                &Caller {
                    token: old.clone(),
                    ..alice.clone()
                },
                Method::GET,
                &format!("{}/v3/users/{}", env.identity, alice.user_id),
                None,
            )
            .await;
        keystone_error(r, 401).await;
    }
    // …and a new login works.
    let fresh = env.login("alice", "pw-2", "p1").await;
    assert_eq!(validity(&env, &admin.token, &fresh.token).await, 200);
    // An admin's reset does the same.
    let r = env
        .call(
            &admin,
            Method::PATCH,
            &format!("{}/v3/users/{}", env.identity, alice.user_id),
            Some(json!({"user": {"password": "pw-3"}})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(validity(&env, &admin.token, &fresh.token).await, 404);
    // Other changes (a description) revoke nothing.
    let kept = env.login("alice", "pw-3", "p1").await;
    let r = env
        .call(
            &admin,
            Method::PATCH,
            &format!("{}/v3/users/{}", env.identity, alice.user_id),
            Some(json!({"user": {"description": "still alice"}})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(validity(&env, &admin.token, &kept.token).await, 200);
    // Disabled, then enabled again: the old token stays dead.
    for enabled in [false, true] {
        let r = env
            .call(
                &admin,
                Method::PATCH,
                &format!("{}/v3/users/{}", env.identity, alice.user_id),
                Some(json!({"user": {"enabled": enabled}})),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    assert_eq!(validity(&env, &admin.token, &kept.token).await, 404);
    let again = env.login("alice", "pw-3", "p1").await;
    assert_eq!(validity(&env, &admin.token, &again.token).await, 200);
    // Other users' tokens were never touched.
    assert_eq!(validity(&env, &admin.token, &admin.token).await, 200);
    env.stop().await;
}

/// Revoking a token revokes the tokens rescoped from it, and theirs, but
/// not its parent or its siblings' unrelated tokens.
async fn revoking_a_token_revokes_its_rescoped_tokens(backend: Backend) {
    let env = Env::start(backend).await;
    let admin = env.admin().await;
    let alice = env.user_with_role("p1", "alice", "member").await;
    let child = rescope(&env, &alice.token, &alice.project_id).await;
    let grandchild = rescope(&env, &child, &alice.project_id).await;
    let sibling = rescope(&env, &alice.token, &alice.project_id).await;
    let other_login = env.login("alice", "pw-of-user", "p1").await;
    for t in [&child, &grandchild, &sibling] {
        assert_eq!(validity(&env, &admin.token, t).await, 200);
    }
    // Revoke the child: it and the grandchild go, the rest stays.
    let r = env
        .http
        .delete(format!("{}/v3/auth/tokens", env.identity))
        .header("x-auth-token", &admin.token)
        .header("x-subject-token", &child)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(validity(&env, &admin.token, &child).await, 404);
    assert_eq!(validity(&env, &admin.token, &grandchild).await, 404);
    assert_eq!(validity(&env, &admin.token, &sibling).await, 200);
    assert_eq!(validity(&env, &admin.token, &alice.token).await, 200);
    // Revoke the original (by its own user): every token from it goes.
    let r = env
        .http
        .delete(format!("{}/v3/auth/tokens", env.identity))
        .header("x-auth-token", &alice.token)
        .header("x-subject-token", &alice.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(validity(&env, &admin.token, &sibling).await, 404);
    assert_eq!(validity(&env, &admin.token, &other_login.token).await, 200);
    // A revoked token can't be rescoped.
    let r = env
        .http
        .post(format!("{}/v3/auth/tokens", env.identity))
        .json(
            &json!({"auth": {"identity": {"methods": ["token"], "token": {"id": alice.token}},
            "scope": {"project": {"id": alice.project_id}}}}),
        )
        .send()
        .await
        .unwrap();
    keystone_error(r, 401).await;
    env.stop().await;
}
