//! The metadata service (issue 14) on PostgreSQL and SQLite, with the roles
//! in this process and a simulated agent: a server booted with a key pair,
//! user data and metadata reads its own OpenStack and EC2 trees through
//! requests signed as a compute host's proxy signs them; a missing, forged
//! or borrowed signature, or another project's id, gets nothing; the guest
//! posts its password once and os-server-password reads and clears it.

mod common;
mod fleet;

use common::{Api, Caller};
use fleet::{Bus, Fleet, Hosts};
use mica_controller::app::ServiceKind;
use mica_controller::db::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const SECRET: &str = "metadata-test-secret";
const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHlNKXWgl1Y8pVsZ0pXj3lMWfs0jDZqPBa6V9n7bW0Qf k1";
const USER_DATA: &[u8] = b"#!/bin/sh\necho hello from user data\n";

both_databases!(a_guest_reads_only_its_own_metadata);

/// A request to the metadata service as a proxy makes it.
struct Guest<'a> {
    http: &'a reqwest::Client,
    base: String,
    instance: String,
    tenant: String,
    signature: Option<String>,
}

impl Guest<'_> {
    async fn send(&self, method: Method, path: &str, body: &[u8]) -> (StatusCode, String) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("x-instance-id", &self.instance)
            .header("x-tenant-id", &self.tenant)
            .header("x-forwarded-for", "10.0.0.5")
            .body(body.to_vec());
        if let Some(s) = &self.signature {
            req = req.header("x-instance-id-signature", s);
        }
        let r = req.send().await.unwrap();
        (r.status(), r.text().await.unwrap())
    }

    async fn get(&self, path: &str) -> (StatusCode, String) {
        self.send(Method::GET, path, b"").await
    }

    async fn ok(&self, path: &str) -> String {
        let (s, body) = self.get(path).await;
        assert_eq!(s, StatusCode::OK, "GET {path}: {body}");
        body
    }

    async fn json(&self, path: &str) -> Value {
        serde_json::from_str(&self.ok(path).await).unwrap()
    }
}

async fn server(api: &Api, who: &Caller, f: &Fleet, flavor: &str, net: &str, name: &str) -> Value {
    use base64::Engine as _;
    let (s, created) = api
        .nova(
            who,
            Method::POST,
            "/servers",
            Some(json!({"server": {
                "name": name, "imageRef": f.image_id, "flavorRef": flavor,
                "networks": [{"uuid": net}], "key_name": "k1",
                "user_data": base64::engine::general_purpose::STANDARD.encode(USER_DATA),
                "metadata": {"role": "web"},
            }})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{created}");
    let id = created["server"]["id"].as_str().unwrap().to_owned();
    let view = api.settle(who, &id).await;
    assert_eq!(view["status"], "ACTIVE", "{view}");
    view
}

async fn a_guest_reads_only_its_own_metadata(backend: Backend) {
    let f = Fleet::start(
        backend,
        Bus::Memory,
        &[Hosts::new("host", 1, 8, 8192, 100)],
        |c| {
            c.metadata.shared_secret = SECRET.into();
            c.api.metadata_listen = "127.0.0.1:0".into();
        },
    )
    .await;
    let api = Api::of(&f.cloud);
    let admin = api.admin().await;
    let flavor = api.flavor(&admin, "t1").await;
    let alice = api.user_in(&admin, "proj-a", "alice", "member").await;
    let bob = api.user_in(&admin, "proj-b", "bob", "member").await;
    let reader = api.user_in(&admin, "proj-r", "rita", "reader").await;
    let net_a = api
        .network_with_subnet(&alice, "net-a", "10.10.0.0/24")
        .await;
    let net_b = api.network_with_subnet(&bob, "net-b", "10.20.0.0/24").await;
    for who in [&alice, &bob] {
        let (s, k) = api
            .nova(
                who,
                Method::POST,
                "/os-keypairs",
                Some(json!({"keypair": {"name": "k1", "public_key": KEY}})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{k}");
    }
    let vm_a = server(&api, &alice, &f, &flavor, &net_a, "web-1").await;
    let vm_b = server(&api, &bob, &f, &flavor, &net_b, "other").await;
    let id_a = vm_a["id"].as_str().unwrap().to_owned();
    let id_b = vm_b["id"].as_str().unwrap().to_owned();
    let ip_a = vm_a["addresses"]["net-a"][0]["addr"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, ports) = api
        .neutron(
            &alice,
            Method::GET,
            &format!("/ports?device_id={id_a}"),
            None,
        )
        .await;
    let mac_a = ports["ports"][0]["mac_address"]
        .as_str()
        .unwrap()
        .to_owned();

    let http = reqwest::Client::new();
    let base = f.cloud.base(ServiceKind::Metadata);
    let signed = |instance: &str, tenant: &str| Guest {
        http: &http,
        base: base.clone(),
        instance: instance.to_owned(),
        tenant: tenant.to_owned(),
        signature: Some(mica_rpc::metadata::sign(SECRET, instance)),
    };
    let a = signed(&id_a, &alice.project_id);

    // The OpenStack tree.
    let versions = a.ok("/openstack").await;
    assert!(versions.lines().any(|l| l == "2018-08-27"), "{versions}");
    assert_eq!(versions.lines().last(), Some("latest"));
    let files = a.ok("/openstack/latest/").await;
    for file in [
        "meta_data.json",
        "user_data",
        "network_data.json",
        "password",
    ] {
        assert!(files.lines().any(|l| l == file), "{file} in {files}");
    }
    let md = a.json("/openstack/latest/meta_data.json").await;
    assert_eq!(md["uuid"], id_a.as_str(), "{md}");
    assert_eq!(md["name"], "web-1");
    assert_eq!(md["hostname"], "web-1");
    assert_eq!(md["project_id"], alice.project_id.as_str());
    assert_eq!(md["meta"], json!({"role": "web"}));
    assert_eq!(md["public_keys"], json!({"k1": KEY}));
    assert_eq!(md["launch_index"], 0);
    // Served from memory for [metadata] cache_expiration_secs (15 s), as
    // Nova's cache: a change shows after that.
    let (s, _) = api
        .nova(
            &alice,
            Method::PUT,
            &format!("/servers/{id_a}/metadata"),
            Some(json!({"metadata": {"role": "db"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let cached = a.json("/openstack/latest/meta_data.json").await;
    assert_eq!(cached["meta"], json!({"role": "web"}), "{cached}");
    let old = a.json("/openstack/2012-08-10/meta_data.json").await;
    assert!(old.get("project_id").is_none(), "{old}");
    let (s, _) = a.get("/openstack/2012-08-10/network_data.json").await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "no network_data.json before 2015-10-15"
    );
    assert_eq!(
        a.ok("/openstack/latest/user_data").await.as_bytes(),
        USER_DATA
    );
    let nd = a.json("/openstack/latest/network_data.json").await;
    assert_eq!(
        nd["links"][0]["ethernet_mac_address"],
        mac_a.as_str(),
        "{nd}"
    );
    assert_eq!(nd["networks"][0]["type"], "ipv4_dhcp", "{nd}");
    assert_eq!(
        a.json("/openstack/latest/vendor_data.json").await,
        json!({})
    );

    // The EC2 tree.
    let root = a.ok("/").await;
    assert!(root.lines().any(|l| l == "2009-04-04"), "{root}");
    assert_eq!(a.ok("/latest/").await, "meta-data/\nuser-data");
    let items = a.ok("/latest/meta-data/").await;
    for item in ["instance-id", "local-ipv4", "public-keys/", "placement/"] {
        assert!(items.lines().any(|l| l == item), "{item} in {items}");
    }
    assert_eq!(a.ok("/latest/meta-data/local-ipv4").await, ip_a);
    assert_eq!(a.ok("/2009-04-04/meta-data/hostname").await, "web-1");
    assert_eq!(a.ok("/latest/meta-data/public-keys/").await, "0=k1");
    assert_eq!(
        a.ok("/latest/meta-data/public-keys/0/openssh-key").await,
        KEY
    );
    assert_eq!(a.ok("/latest/user-data").await.as_bytes(), USER_DATA);
    for missing in [
        "/latest/meta-data/nothing",
        "/2010-01-01/meta-data/",
        "/openstack/2099-01-01/meta_data.json",
        "/openstack/latest/nothing.json",
    ] {
        let (s, body) = a.get(missing).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{missing}: {body}");
    }
    let (s, _) = a
        .send(Method::PUT, "/openstack/latest/meta_data.json", b"x")
        .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);

    // Only a proxy holding the secret can name an instance.
    let forged = Guest {
        signature: Some(mica_rpc::metadata::sign("guessed", &id_b)),
        ..signed(&id_b, &bob.project_id)
    };
    let (s, body) = forged.get("/openstack/latest/meta_data.json").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    assert!(!body.contains(&id_b), "{body}");
    let borrowed = Guest {
        signature: Some(mica_rpc::metadata::sign(SECRET, &id_a)),
        ..signed(&id_b, &bob.project_id)
    };
    assert_eq!(
        borrowed.get("/latest/meta-data/").await.0,
        StatusCode::FORBIDDEN
    );
    let unsigned = Guest {
        signature: None,
        ..signed(&id_b, &bob.project_id)
    };
    let (s, body) = unsigned.get("/latest/meta-data/").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("X-Instance-ID-Signature"), "{body}");
    // Signed, but the project is not the instance's; or no such instance.
    let wrong_project = signed(&id_a, &bob.project_id);
    assert_eq!(wrong_project.get("/").await.0, StatusCode::NOT_FOUND);
    let nobody = signed(&uuid::Uuid::new_v4().to_string(), &alice.project_id);
    assert_eq!(nobody.get("/").await.0, StatusCode::NOT_FOUND);
    // B's own view is B's.
    let b = signed(&id_b, &bob.project_id);
    let md_b = b.json("/openstack/latest/meta_data.json").await;
    assert_eq!(md_b["uuid"], id_b.as_str());
    assert_eq!(md_b["name"], "other");

    // The password: posted once, read and cleared through the compute API.
    let pw_path = format!("/servers/{id_a}/os-server-password");
    assert_eq!(a.ok("/openstack/latest/password").await, "");
    let (s, body) = a
        .send(Method::POST, "/openstack/latest/password", &[b'x'; 300])
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    let (s, _) = a
        .send(Method::POST, "/openstack/latest/password", b"c2VjcmV0")
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = a
        .send(Method::POST, "/openstack/latest/password", b"again")
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert_eq!(a.ok("/openstack/latest/password").await, "c2VjcmV0");
    let (s, v) = api.nova(&alice, Method::GET, &pw_path, None).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"password": "c2VjcmV0"})));
    for outsider in [&bob, &reader] {
        let (s, v) = api.nova(outsider, Method::GET, &pw_path, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
        let (s, v) = api.nova(outsider, Method::DELETE, &pw_path, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    }
    let (s, _) = api.nova(&alice, Method::DELETE, &pw_path, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, v) = api.nova(&alice, Method::GET, &pw_path, None).await;
    assert_eq!(v, json!({"password": ""}));
    let (s, _) = a
        .send(Method::POST, "/openstack/latest/password", b"bmV3")
        .await;
    assert_eq!(s, StatusCode::OK, "a cleared password may be posted again");
    f.stop().await;
}
