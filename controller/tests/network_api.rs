//! The network API (Neutron v2.0 subset) over HTTP, on PostgreSQL and
//! SQLite: networks, subnets, ports and their addresses, security groups
//! and rules (the `default` group), Nova's `os-security-groups` proxy and
//! server security groups, and the pushes of security changes to the hosts
//! of affected ports.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use common::{Caller, Env, nova_error};
use mica_controller::db::Backend;
use reqwest::{Method, Response};
use serde_json::{Value, json};

/// Checks Neutron's error body and returns (type, message).
async fn neutron_error(resp: Response, status: u16) -> (String, String) {
    assert_eq!(resp.status().as_u16(), status, "status");
    let body: Value = resp.json().await.unwrap();
    let e = &body["NeutronError"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(e["detail"], "", "{body}");
    (
        e["type"].as_str().unwrap().to_owned(),
        e["message"].as_str().unwrap().to_owned(),
    )
}

async fn ok(
    env: &Env,
    who: &Caller,
    m: Method,
    path: &str,
    body: Option<Value>,
    status: u16,
) -> Value {
    let r = env.neutron(who, m.clone(), path, body).await;
    let got = r.status().as_u16();
    let text = r.text().await.unwrap();
    assert_eq!(got, status, "{m} {path}: {text}");
    if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    }
}

async fn networks_subnets_and_ports(backend: Backend) {
    let env = Env::start(backend).await;
    let admin = env.admin().await;
    let alice = env.user_with_role("p1", "alice", "member").await;
    let bob = env.user_with_role("p2", "bob", "member").await;
    // Discovery.
    let v: Value = env
        .http
        .get(format!("{}/", env.network))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["versions"][0]["id"], "v2.0");
    let ext = ok(&env, &alice, Method::GET, "/extensions", None, 200).await;
    assert!(
        ext["extensions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["alias"] == "security-group")
    );
    let r = env
        .neutron(
            &alice,
            Method::GET,
            "/extensions/tag-ports-during-bulk-creation",
            None,
        )
        .await;
    neutron_error(r, 404).await;
    // The bootstrap network is shared and visible to all.
    let nets = ok(&env, &alice, Method::GET, "/networks", None, 200).await;
    assert_eq!(nets["networks"].as_array().unwrap().len(), 1);
    assert_eq!(nets["networks"][0]["shared"], true);
    assert!(
        nets["networks"][0].get("provider:network_type").is_none(),
        "provider attributes are for admins"
    );
    let nets = ok(&env, &admin, Method::GET, "/networks", None, 200).await;
    assert_eq!(nets["networks"][0]["provider:network_type"], "flat");
    // Members create private networks; sharing and provider attributes are for admins.
    let n = ok(
        &env,
        &alice,
        Method::POST,
        "/networks",
        Some(json!({"network": {"name": "net1"}})),
        201,
    )
    .await;
    let net = n["network"]["id"].as_str().unwrap().to_owned();
    assert_eq!(n["network"]["shared"], false);
    assert_eq!(n["network"]["admin_state_up"], true);
    assert_eq!(n["network"]["mtu"], 1500);
    assert_eq!(n["network"]["project_id"], alice.project_id.as_str());
    let r = env
        .neutron(
            &alice,
            Method::POST,
            "/networks",
            Some(json!({"network": {"name": "s", "shared": true}})),
        )
        .await;
    neutron_error(r, 403).await;
    let r = env
        .neutron(
            &alice,
            Method::POST,
            "/networks",
            Some(json!({"network": {"name": "p", "provider:network_type": "vlan"}})),
        )
        .await;
    neutron_error(r, 403).await;
    let p = ok(&env, &admin, Method::POST, "/networks",
        Some(json!({"network": {"name": "prov", "provider:network_type": "vlan", "provider:physical_network": "physnet1",
            "provider:segmentation_id": 100, "router:external": true}})), 201).await;
    assert_eq!(p["network"]["provider:segmentation_id"], 100);
    assert_eq!(p["network"]["router:external"], true);
    let r = env
        .neutron(&admin, Method::POST, "/networks", Some(json!({"network": {"name": "bad", "provider:network_type": "vlan", "provider:physical_network": "x", "provider:segmentation_id": 5000}})))
        .await;
    neutron_error(r, 400).await;
    // Other projects don't see it.
    let r = env
        .neutron(&bob, Method::GET, &format!("/networks/{net}"), None)
        .await;
    let (t, _) = neutron_error(r, 404).await;
    assert_eq!(t, "NetworkNotFound");
    let byname = ok(&env, &alice, Method::GET, "/networks?name=net1", None, 200).await;
    assert_eq!(byname["networks"].as_array().unwrap().len(), 1);
    let fields = ok(
        &env,
        &alice,
        Method::GET,
        "/networks?name=net1&fields=id&fields=name",
        None,
        200,
    )
    .await;
    assert_eq!(fields["networks"][0].as_object().unwrap().len(), 2);
    // Subnets: pools, gateway, DNS, overlap.
    let s = ok(&env, &alice, Method::POST, "/subnets",
        Some(json!({"subnet": {"network_id": net, "cidr": "192.168.10.0/24", "ip_version": 4, "name": "sub1",
            "dns_nameservers": ["8.8.8.8"], "allocation_pools": [{"start": "192.168.10.100", "end": "192.168.10.200"}]}})), 201).await;
    let sub = s["subnet"]["id"].as_str().unwrap().to_owned();
    assert_eq!(s["subnet"]["gateway_ip"], "192.168.10.1");
    assert_eq!(s["subnet"]["dns_nameservers"], json!(["8.8.8.8"]));
    assert_eq!(
        s["subnet"]["allocation_pools"],
        json!([{"start": "192.168.10.100", "end": "192.168.10.200"}])
    );
    assert_eq!(s["subnet"]["enable_dhcp"], true);
    let r = env
        .neutron(&alice, Method::POST, "/subnets", Some(json!({"subnet": {"network_id": net, "cidr": "192.168.10.128/25", "ip_version": 4}})))
        .await;
    neutron_error(r, 400).await;
    let r = env
        .neutron(&alice, Method::POST, "/subnets", Some(json!({"subnet": {"network_id": net, "cidr": "192.168.11.0/24", "ip_version": 4,
            "gateway_ip": "192.168.11.5", "allocation_pools": [{"start": "192.168.11.2", "end": "192.168.11.9"}]}})))
        .await;
    neutron_error(r, 409).await;
    let r = env
        .neutron(
            &alice,
            Method::POST,
            "/subnets",
            Some(
                json!({"subnet": {"network_id": net, "cidr": "192.168.12.0/24", "ip_version": 6}}),
            ),
        )
        .await;
    neutron_error(r, 400).await;
    let r = env
        .neutron(
            &bob,
            Method::POST,
            "/subnets",
            Some(
                json!({"subnet": {"network_id": net, "cidr": "192.168.13.0/24", "ip_version": 4}}),
            ),
        )
        .await;
    neutron_error(r, 404).await;
    let tiny = ok(
        &env,
        &alice,
        Method::POST,
        "/subnets",
        Some(json!({"subnet": {"network_id": net, "cidr": "172.16.0.0/29", "ip_version": 4}})),
        201,
    )
    .await;
    assert_eq!(
        tiny["subnet"]["allocation_pools"],
        json!([{"start": "172.16.0.2", "end": "172.16.0.6"}])
    );
    // Ports: the first free address of the pool, a chosen one, collisions.
    let p = ok(
        &env,
        &alice,
        Method::POST,
        "/ports",
        Some(json!({"port": {"network_id": net, "fixed_ips": [{"subnet_id": sub}]}})),
        201,
    )
    .await;
    assert_eq!(
        p["port"]["fixed_ips"],
        json!([{"subnet_id": sub, "ip_address": "192.168.10.100"}])
    );
    assert!(
        p["port"]["mac_address"]
            .as_str()
            .unwrap()
            .starts_with("fa:16:3e:")
    );
    assert_eq!(p["port"]["status"], "DOWN");
    assert_eq!(
        p["port"]["security_groups"].as_array().unwrap().len(),
        1,
        "the default group"
    );
    let port1 = p["port"]["id"].as_str().unwrap().to_owned();
    let p = ok(&env, &alice, Method::POST, "/ports",
        Some(json!({"port": {"network_id": net, "fixed_ips": [{"ip_address": "192.168.10.150"}], "name": "chosen"}})), 201).await;
    assert_eq!(p["port"]["fixed_ips"][0]["ip_address"], "192.168.10.150");
    let r = env
        .neutron(&alice, Method::POST, "/ports", Some(json!({"port": {"network_id": net, "fixed_ips": [{"ip_address": "192.168.10.150"}]}})))
        .await;
    let (t, _) = neutron_error(r, 409).await;
    assert_eq!(t, "IpAddressAlreadyAllocated");
    let r = env
        .neutron(
            &alice,
            Method::POST,
            "/ports",
            Some(json!({"port": {"network_id": net, "fixed_ips": [{"ip_address": "10.9.9.9"}]}})),
        )
        .await;
    neutron_error(r, 400).await;
    let r = env
        .neutron(
            &alice,
            Method::POST,
            "/ports",
            Some(json!({"port": {"network_id": net, "mac_address": "fa:16:3e:00:00:01"}})),
        )
        .await;
    neutron_error(r, 403).await;
    let mac = ok(&env, &admin, Method::POST, "/ports",
        Some(json!({"port": {"network_id": net, "mac_address": "FA:16:3E:00:00:01", "fixed_ips": []}})), 201).await;
    assert_eq!(mac["port"]["mac_address"], "fa:16:3e:00:00:01");
    assert_eq!(mac["port"]["fixed_ips"], json!([]));
    let r = env
        .neutron(
            &admin,
            Method::POST,
            "/ports",
            Some(json!({"port": {"network_id": net, "mac_address": "fa:16:3e:00:00:01"}})),
        )
        .await;
    let (t, _) = neutron_error(r, 409).await;
    assert_eq!(t, "MacAddressInUse");
    // A /29 runs out after five.
    let tiny_id = tiny["subnet"]["id"].as_str().unwrap().to_owned();
    for _ in 0..5 {
        ok(
            &env,
            &alice,
            Method::POST,
            "/ports",
            Some(json!({"port": {"network_id": net, "fixed_ips": [{"subnet_id": tiny_id}]}})),
            201,
        )
        .await;
    }
    let r = env
        .neutron(
            &alice,
            Method::POST,
            "/ports",
            Some(json!({"port": {"network_id": net, "fixed_ips": [{"subnet_id": tiny_id}]}})),
        )
        .await;
    let (t, _) = neutron_error(r, 409).await;
    assert_eq!(t, "IpAddressGenerationFailure");
    let listed = ok(
        &env,
        &alice,
        Method::GET,
        &format!("/ports?network_id={net}&fixed_ips=subnet_id%3D{tiny_id}"),
        None,
        200,
    )
    .await;
    assert_eq!(listed["ports"].as_array().unwrap().len(), 5);
    let r = env
        .neutron(&bob, Method::GET, &format!("/ports/{port1}"), None)
        .await;
    neutron_error(r, 404).await;
    // In use: subnet and network can't go; ports can.
    let r = env
        .neutron(&alice, Method::DELETE, &format!("/subnets/{sub}"), None)
        .await;
    neutron_error(r, 409).await;
    let r = env
        .neutron(&alice, Method::DELETE, &format!("/networks/{net}"), None)
        .await;
    let (t, _) = neutron_error(r, 409).await;
    assert_eq!(t, "NetworkInUse");
    let all = ok(
        &env,
        &admin,
        Method::GET,
        &format!("/ports?network_id={net}"),
        None,
        200,
    )
    .await;
    for p in all["ports"].as_array().unwrap() {
        ok(
            &env,
            &admin,
            Method::DELETE,
            &format!("/ports/{}", p["id"].as_str().unwrap()),
            None,
            204,
        )
        .await;
    }
    ok(
        &env,
        &alice,
        Method::DELETE,
        &format!("/networks/{net}"),
        None,
        204,
    )
    .await;
    let r = env
        .neutron(&alice, Method::GET, &format!("/subnets/{sub}"), None)
        .await;
    neutron_error(r, 404).await;
    // Network quotas show usage.
    let q = ok(
        &env,
        &alice,
        Method::GET,
        &format!("/quotas/{}/details", alice.project_id),
        None,
        200,
    )
    .await;
    assert_eq!(q["quota"]["network"]["used"], 0);
    assert_eq!(q["quota"]["port"]["limit"], 500);
    env.stop().await;
}

async fn security_groups_and_the_nova_proxy(backend: Backend) {
    let env = Env::start(backend).await;
    let alice = env.user_with_role("p1", "alice", "member").await;
    // The default group: created on first use, Nova's documented rules.
    let l = ok(&env, &alice, Method::GET, "/security-groups", None, 200).await;
    let groups = l["security_groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1);
    let def = &groups[0];
    assert_eq!(def["name"], "default");
    let def_id = def["id"].as_str().unwrap().to_owned();
    let mut rules: Vec<(String, String, Option<String>)> = def["security_group_rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["remote_ip_prefix"], Value::Null);
            assert_eq!(r["protocol"], Value::Null);
            (
                r["direction"].as_str().unwrap().to_owned(),
                r["ethertype"].as_str().unwrap().to_owned(),
                r["remote_group_id"].as_str().map(str::to_owned),
            )
        })
        .collect();
    rules.sort();
    assert_eq!(
        rules,
        vec![
            ("egress".to_owned(), "IPv4".to_owned(), None),
            ("egress".to_owned(), "IPv6".to_owned(), None),
            (
                "ingress".to_owned(),
                "IPv4".to_owned(),
                Some(def_id.clone())
            ),
            (
                "ingress".to_owned(),
                "IPv6".to_owned(),
                Some(def_id.clone())
            ),
        ]
    );
    let again = ok(&env, &alice, Method::GET, "/security-groups", None, 200).await;
    assert_eq!(
        again["security_groups"].as_array().unwrap().len(),
        1,
        "once per project"
    );
    let r = env
        .neutron(
            &alice,
            Method::POST,
            "/security-groups",
            Some(json!({"security_group": {"name": "default"}})),
        )
        .await;
    neutron_error(r, 409).await;
    // A new group: egress only; rules validated.
    let g = ok(
        &env,
        &alice,
        Method::POST,
        "/security-groups",
        Some(json!({"security_group": {"name": "web", "description": "web"}})),
        201,
    )
    .await;
    let web = g["security_group"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        g["security_group"]["security_group_rules"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let rule = |body: Value| json!({"security_group_rule": body});
    let r = ok(&env, &alice, Method::POST, "/security-group-rules",
        Some(rule(json!({"security_group_id": web, "direction": "ingress", "protocol": "tcp", "port_range_min": 22, "port_range_max": 22, "remote_ip_prefix": "10.1.2.3/8"}))), 201).await;
    assert_eq!(
        r["security_group_rule"]["remote_ip_prefix"], "10.0.0.0/8",
        "host bits cleared"
    );
    assert_eq!(r["security_group_rule"]["ethertype"], "IPv4");
    let rule22 = r["security_group_rule"]["id"].as_str().unwrap().to_owned();
    let dup = env.neutron(&alice, Method::POST, "/security-group-rules",
        Some(rule(json!({"security_group_id": web, "direction": "ingress", "protocol": "tcp", "port_range_min": 22, "port_range_max": 22, "remote_ip_prefix": "10.0.0.0/8"})))).await;
    let (t, m) = neutron_error(dup, 409).await;
    assert_eq!(t, "SecurityGroupRuleExists");
    assert!(m.contains(&rule22), "{m}");
    for bad in [
        json!({"security_group_id": web, "direction": "sideways"}),
        json!({"security_group_id": web, "direction": "ingress", "port_range_min": 80}),
        json!({"security_group_id": web, "direction": "ingress", "protocol": "tcp", "port_range_min": 90, "port_range_max": 80}),
        json!({"security_group_id": web, "direction": "ingress", "protocol": "tcp", "port_range_min": 0, "port_range_max": 80}),
        json!({"security_group_id": web, "direction": "ingress", "ethertype": "IPv6", "remote_ip_prefix": "10.0.0.0/8"}),
        json!({"security_group_id": web, "direction": "ingress", "remote_ip_prefix": "10.0.0.0/8", "remote_group_id": def_id}),
        json!({"security_group_id": web, "direction": "ingress", "protocol": "bogus"}),
    ] {
        let r = env
            .neutron(
                &alice,
                Method::POST,
                "/security-group-rules",
                Some(rule(bad.clone())),
            )
            .await;
        assert_eq!(r.status().as_u16(), 400, "{bad}");
    }
    ok(&env, &alice, Method::POST, "/security-group-rules",
        Some(rule(json!({"security_group_id": web, "direction": "ingress", "protocol": "icmp", "port_range_min": 8, "port_range_max": 0}))), 201).await;
    let listed = ok(
        &env,
        &alice,
        Method::GET,
        &format!("/security-group-rules?security_group_id={web}"),
        None,
        200,
    )
    .await;
    assert_eq!(listed["security_group_rules"].as_array().unwrap().len(), 4);
    // The default group can't be deleted by a member.
    let r = env
        .neutron(
            &alice,
            Method::DELETE,
            &format!("/security-groups/{def_id}"),
            None,
        )
        .await;
    neutron_error(r, 409).await;

    // Nova's proxy (until 2.36) answers from the same data.
    let p = env
        .nova_ok(&alice, Method::GET, "/os-security-groups", 1, None, 200)
        .await;
    let names: BTreeSet<&str> = p["security_groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "web"].into_iter().collect());
    let w = p["security_groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "web")
        .unwrap()
        .clone();
    let ssh = w["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["ip_protocol"] == "tcp")
        .unwrap()
        .clone();
    assert_eq!(
        (ssh["from_port"].clone(), ssh["to_port"].clone()),
        (json!(22), json!(22))
    );
    assert_eq!(ssh["ip_range"]["cidr"], "10.0.0.0/8");
    assert_eq!(ssh["parent_group_id"], web.as_str());
    let r = env
        .nova(
            &alice,
            Method::GET,
            "/os-security-groups/web",
            Some(1),
            None,
        )
        .await;
    nova_error(r, 404, "itemNotFound").await;
    let r = env
        .nova(&alice, Method::GET, "/os-security-groups", Some(36), None)
        .await;
    nova_error(r, 404, "itemNotFound").await;
    let c = env
        .nova_ok(
            &alice,
            Method::POST,
            "/os-security-groups",
            1,
            Some(json!({"security_group": {"name": "db", "description": "d"}})),
            200,
        )
        .await;
    let db = c["security_group"]["id"].as_str().unwrap().to_owned();
    let r = env
        .nova_ok(&alice, Method::POST, "/os-security-group-rules", 1,
            Some(json!({"security_group_rule": {"parent_group_id": db, "ip_protocol": "tcp", "from_port": 5432, "to_port": 5432, "cidr": "10.0.0.0/24"}})), 200)
        .await;
    assert_eq!(r["security_group_rule"]["from_port"], 5432);
    let n = ok(
        &env,
        &alice,
        Method::GET,
        &format!("/security-groups/{db}"),
        None,
        200,
    )
    .await;
    assert_eq!(
        n["security_group"]["security_group_rules"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    env.nova_ok(
        &alice,
        Method::DELETE,
        &format!("/os-security-groups/{db}"),
        1,
        None,
        202,
    )
    .await;

    // Server security groups: the instance's and its ports'.
    let admin = env.admin().await;
    let f = env
        .nova_ok(
            &admin,
            Method::POST,
            "/flavors",
            61,
            Some(json!({"flavor": {"name": "t", "ram": 64, "vcpus": 1, "disk": 0}})),
            200,
        )
        .await;
    let image = {
        let r = env.call(&admin, Method::POST, &format!("{}/v2/images", env.image), Some(json!({"name": "i", "disk_format": "raw", "container_format": "bare", "visibility": "public"}))).await;
        let id = r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        env.http
            .put(format!("{}/v2/images/{id}/file", env.image))
            .header("x-auth-token", &admin.token)
            .header("content-type", "application/octet-stream")
            .body(vec![1u8; 512])
            .send()
            .await
            .unwrap();
        id
    };
    let s = env
        .nova_ok(&alice, Method::POST, "/servers", 96,
            Some(json!({"server": {"name": "vm", "imageRef": image, "flavorRef": f["flavor"]["id"], "networks": "auto", "security_groups": [{"name": "web"}]}})), 202)
        .await;
    assert_eq!(s["server"]["security_groups"], json!([{"name": "web"}]));
    let sid = s["server"]["id"].as_str().unwrap().to_owned();
    let ports = ok(
        &env,
        &alice,
        Method::GET,
        &format!("/ports?device_id={sid}"),
        None,
        200,
    )
    .await;
    assert_eq!(ports["ports"][0]["security_groups"], json!([web]));
    assert!(
        ports["ports"][0]["device_owner"]
            .as_str()
            .unwrap()
            .starts_with("compute:")
    );
    env.nova_ok(
        &alice,
        Method::POST,
        &format!("/servers/{sid}/action"),
        96,
        Some(json!({"addSecurityGroup": {"name": "default"}})),
        202,
    )
    .await;
    let ports = ok(
        &env,
        &alice,
        Method::GET,
        &format!("/ports?device_id={sid}"),
        None,
        200,
    )
    .await;
    let sgs: BTreeSet<&str> = ports["ports"][0]["security_groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(sgs, [web.as_str(), def_id.as_str()].into_iter().collect());
    let proxied = env
        .nova_ok(
            &alice,
            Method::GET,
            &format!("/servers/{sid}/os-security-groups"),
            1,
            None,
            200,
        )
        .await;
    assert_eq!(proxied["security_groups"].as_array().unwrap().len(), 2);
    // In use: can't delete.
    let r = env
        .neutron(
            &alice,
            Method::DELETE,
            &format!("/security-groups/{web}"),
            None,
        )
        .await;
    let (t, _) = neutron_error(r, 409).await;
    assert_eq!(t, "SecurityGroupInUse");
    env.nova_ok(
        &alice,
        Method::POST,
        &format!("/servers/{sid}/action"),
        96,
        Some(json!({"removeSecurityGroup": {"name": "web"}})),
        202,
    )
    .await;
    let r = env
        .nova(
            &alice,
            Method::POST,
            &format!("/servers/{sid}/action"),
            Some(96),
            Some(json!({"removeSecurityGroup": {"name": "web"}})),
        )
        .await;
    nova_error(r, 400, "badRequest").await;
    let r = env
        .nova(
            &alice,
            Method::POST,
            &format!("/servers/{sid}/action"),
            Some(96),
            Some(json!({"addSecurityGroup": {"name": "nope"}})),
        )
        .await;
    nova_error(r, 404, "itemNotFound").await;
    let ports = ok(
        &env,
        &alice,
        Method::GET,
        &format!("/ports?device_id={sid}"),
        None,
        200,
    )
    .await;
    assert_eq!(ports["ports"][0]["security_groups"], json!([def_id]));
    // A port under a live server can't be deleted; the server's delete frees it.
    let port = ports["ports"][0]["id"].as_str().unwrap().to_owned();
    let r = env
        .neutron(&alice, Method::DELETE, &format!("/ports/{port}"), None)
        .await;
    neutron_error(r, 409).await;
    env.nova_ok(
        &alice,
        Method::DELETE,
        &format!("/servers/{sid}"),
        96,
        None,
        204,
    )
    .await;
    let r = env
        .neutron(&alice, Method::GET, &format!("/ports/{port}"), None)
        .await;
    neutron_error(r, 404).await;
    ok(
        &env,
        &alice,
        Method::DELETE,
        &format!("/security-groups/{web}"),
        None,
        204,
    )
    .await;
    env.stop().await;
}

async fn security_changes_reach_hosts(backend: Backend) {
    use mica_rpc::compute::{ApplyPortSecurity, PortSecurityRequest};
    let env = Env::start(backend).await;
    let admin = env.admin().await;
    let shared = ok(&env, &admin, Method::GET, "/networks", None, 200).await["networks"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Two bound ports in the default group, one on host-a.
    let p1 = ok(&env, &admin, Method::POST, "/ports", Some(json!({"port": {"network_id": shared, "binding:host_id": "host-a", "device_id": "vm-a"}})), 201).await;
    let p2 = ok(
        &env,
        &admin,
        Method::POST,
        "/ports",
        Some(json!({"port": {"network_id": shared, "binding:host_id": "host-b"}})),
        201,
    )
    .await;
    let ip2 = p2["port"]["fixed_ips"][0]["ip_address"]
        .as_str()
        .unwrap()
        .to_owned();
    let groups = ok(&env, &admin, Method::GET, "/security-groups", None, 200).await;
    let def = groups["security_groups"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Listen as the agent of host-a.
    let got: Arc<Mutex<Vec<PortSecurityRequest>>> = Arc::default();
    let sink = got.clone();
    let rpc = mica_rpc::Rpc::connect(&env.cloud.config.messaging.transport_url)
        .await
        .unwrap();
    let d = mica_rpc::Dispatcher::new(mica_rpc::compute::VERSION)
        .handle_method::<ApplyPortSecurity>(move |_ctx, req| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(req);
                Ok::<_, mica_rpc::RemoteError>(())
            }
        });
    let _server = rpc
        .serve(mica_rpc::Subscription::compute_host("host-a"), d)
        .await
        .unwrap();
    // A new group whose rule names the default group as remote.
    let g = ok(
        &env,
        &admin,
        Method::POST,
        "/security-groups",
        Some(json!({"security_group": {"name": "app"}})),
        201,
    )
    .await;
    let app_group = g["security_group"]["id"].as_str().unwrap().to_owned();
    ok(
        &env,
        &admin,
        Method::PUT,
        &format!("/ports/{}", p1["port"]["id"].as_str().unwrap()),
        Some(json!({"port": {"security_groups": [def, app_group]}})),
        200,
    )
    .await;
    let seen = |n: usize| {
        let got = got.clone();
        async move {
            for _ in 0..100 {
                if got.lock().unwrap().len() >= n {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            got.lock().unwrap().clone()
        }
    };
    let first = seen(1).await;
    assert!(!first.is_empty(), "the port change reached host-a");
    got.lock().unwrap().clear();
    ok(&env, &admin, Method::POST, "/security-group-rules",
        Some(json!({"security_group_rule": {"security_group_id": app_group, "direction": "ingress", "protocol": "tcp",
            "port_range_min": 8080, "port_range_max": 8080, "remote_group_id": def}})), 201).await;
    let pushed = seen(1).await;
    let req = pushed.last().expect("a push for host-a's port");
    assert_eq!(req.port_id, p1["port"]["id"].as_str().unwrap());
    assert_eq!(req.instance_uuid, "vm-a");
    let app_spec = req
        .security_groups
        .iter()
        .find(|g| g.id == app_group)
        .unwrap();
    // The remote group's members are spelled out as addresses.
    let expanded: Vec<&str> = app_spec
        .rules
        .iter()
        .filter_map(|r| r.remote_ip_prefix.as_deref())
        .collect();
    assert!(
        expanded.contains(&format!("{ip2}/32").as_str()),
        "{expanded:?}"
    );
    let def_spec = req.security_groups.iter().find(|g| g.id == def).unwrap();
    assert!(def_spec.member_ips.contains(&ip2));
    assert!(
        def_spec
            .rules
            .iter()
            .any(|r| r.remote_group_id.as_deref() == Some(def.as_str()))
    );
    env.stop().await;
}

/// Compute and network quotas live side by side: resetting one service's
/// quotas of a project leaves the other's alone.
async fn compute_and_network_quota_resets_are_separate(backend: Backend) {
    let env = Env::start(backend).await;
    let admin = env.admin().await;
    let alice = env.user_with_role("p1", "alice", "member").await;
    let nova_path = format!("/os-quota-sets/{}", alice.project_id);
    let neutron_path = format!("/quotas/{}", alice.project_id);
    let set_both = || async {
        env.nova_ok(
            &admin,
            Method::PUT,
            &nova_path,
            56,
            Some(json!({"quota_set": {"instances": 3}})),
            200,
        )
        .await;
        ok(
            &env,
            &admin,
            Method::PUT,
            &neutron_path,
            Some(json!({"quota": {"port": 7}})),
            200,
        )
        .await;
    };
    let limits = || async {
        let c = env
            .nova_ok(&admin, Method::GET, &nova_path, 56, None, 200)
            .await;
        let n = ok(&env, &admin, Method::GET, &neutron_path, None, 200).await;
        (
            c["quota_set"]["instances"].as_i64().unwrap(),
            n["quota"]["port"].as_i64().unwrap(),
        )
    };
    set_both().await;
    assert_eq!(limits().await, (3, 7));
    // Nova's reset: compute limits back to the defaults, network ones kept.
    env.nova_ok(&admin, Method::DELETE, &nova_path, 56, None, 202)
        .await;
    let (instances, port) = limits().await;
    assert_ne!(instances, 3, "the compute quota was reset");
    assert_eq!(port, 7, "a compute quota reset kept the network quotas");
    // Neutron's reset: network limits back to the defaults, compute kept.
    set_both().await;
    ok(&env, &admin, Method::DELETE, &neutron_path, None, 204).await;
    let (instances, port) = limits().await;
    assert_eq!(
        instances, 3,
        "a network quota reset kept the compute quotas"
    );
    assert_eq!(port, 500, "the network quota was reset");
    env.stop().await;
}

both_databases!(
    networks_subnets_and_ports,
    security_groups_and_the_nova_proxy,
    security_changes_reach_hosts,
    compute_and_network_quota_resets_are_separate,
    reserved_ranges_are_refused_for_subnets,
);

/// Loopback, link-local, multicast and 0.0.0.0/n (and their IPv6 kin)
/// subnets, and gateways there, are 400 for members and admins alike;
/// the same private CIDR in two projects is fine.
async fn reserved_ranges_are_refused_for_subnets(backend: Backend) {
    let env = Env::start(backend).await;
    let admin = env.admin().await;
    let alice = env.user_with_role("p1", "alice", "member").await;
    let bob = env.user_with_role("p2", "bob", "member").await;
    let net = |who: &Caller| {
        let who = who.clone();
        let env = &env;
        async move {
            ok(
                env,
                &who,
                Method::POST,
                "/networks",
                Some(json!({"network": {"name": "n"}})),
                201,
            )
            .await["network"]["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let net_a = net(&alice).await;
    let net_admin = net(&admin).await;
    for (cidr, version) in [
        ("127.0.0.0/8", 4),
        ("127.0.0.0/24", 4),
        ("169.254.0.0/16", 4),
        ("169.254.169.0/24", 4),
        ("169.0.0.0/8", 4),
        ("224.0.0.0/4", 4),
        ("239.1.2.0/24", 4),
        ("0.0.0.0/1", 4),
        ("0.0.0.0/0", 4),
        ("0.0.0.0/24", 4),
        ("::1/128", 6),
        ("fe80::/64", 6),
        ("ff02::/16", 6),
        ("::/0", 6),
    ] {
        for (who, n) in [(&alice, &net_a), (&admin, &net_admin)] {
            let r = env
                .neutron(
                    who,
                    Method::POST,
                    "/subnets",
                    Some(json!({"subnet": {"network_id": n, "cidr": cidr, "ip_version": version}})),
                )
                .await;
            let (kind, msg) = neutron_error(r, 400).await;
            assert_eq!(kind, "InvalidInput", "{cidr}: {msg}");
        }
    }
    // A gateway in those ranges, though the subnet itself is fine.
    for gw in ["169.254.169.254", "127.0.0.1", "224.0.0.1", "0.0.0.0"] {
        let r = env
            .neutron(
                &alice,
                Method::POST,
                "/subnets",
                Some(
                    json!({"subnet": {"network_id": net_a, "cidr": "10.0.2.0/24", "ip_version": 4,
                    "gateway_ip": gw}}),
                ),
            )
            .await;
        let (kind, msg) = neutron_error(r, 400).await;
        assert_eq!(kind, "InvalidInput", "{gw}: {msg}");
    }
    // Private ranges work, the same one in two projects too.
    let sub = ok(
        &env,
        &alice,
        Method::POST,
        "/subnets",
        Some(json!({"subnet": {"network_id": net_a, "cidr": "192.168.1.0/24", "ip_version": 4}})),
        201,
    )
    .await;
    let net_b = net(&bob).await;
    ok(
        &env,
        &bob,
        Method::POST,
        "/subnets",
        Some(json!({"subnet": {"network_id": net_b, "cidr": "192.168.1.0/24", "ip_version": 4}})),
        201,
    )
    .await;
    // Nor can an update move the gateway there.
    let id = sub["subnet"]["id"].as_str().unwrap();
    let r = env
        .neutron(
            &alice,
            Method::PUT,
            &format!("/subnets/{id}"),
            Some(json!({"subnet": {"gateway_ip": "169.254.169.254"}})),
        )
        .await;
    let (kind, _) = neutron_error(r, 400).await;
    assert_eq!(kind, "InvalidInput");
    env.stop().await;
}
