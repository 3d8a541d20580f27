//! What the conductor assembles from the database: the scheduler's
//! [`RequestSpec`] of an instance, and the agent's [`InstanceSpec`] (flavor,
//! image with a download URL and token, ports with their networks and
//! security groups).

use std::collections::BTreeMap;

use mica_rpc::compute::{
    Direction, FixedIp, FlavorSpec, ImageSpec, InstanceSpec, NetworkSpec, PortSpec,
    SecurityGroupRule, SecurityGroupSpec, SubnetSpec,
};
use serde_json::Value;

use super::Conductor;
use crate::app::identity;
use crate::db::instances::InstanceRow;
use crate::db::{images, network, scheduler as sched_store, server_groups};
use crate::error::{Error, Result};
use crate::scheduler::host_state::{FlavorResources, GroupSpec, RequestSpec};

/// The flavor extra specs of an instance (a JSON object in its row).
pub fn extra_specs(inst: &InstanceRow) -> BTreeMap<String, String> {
    serde_json::from_str::<BTreeMap<String, Value>>(&inst.flavor_extra_specs)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            (k, v)
        })
        .collect()
}

/// The scheduler hints of an instance (`os:scheduler_hints`).
pub fn hints(inst: &InstanceRow) -> serde_json::Map<String, Value> {
    serde_json::from_str(&inst.scheduler_hints).unwrap_or_default()
}

fn hint_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Array(a) => a.first().and_then(hint_string),
        _ => None,
    }
}

/// What the scheduler needs to place `inst`, never on `tried`.
pub async fn request_spec(
    c: &Conductor,
    inst: &InstanceRow,
    tried: &[String],
) -> Result<RequestSpec> {
    let mut conn = c.app.db.pool().acquire().await?;
    let extra = extra_specs(inst);
    let mut spec = RequestSpec {
        project_id: inst.project_id.clone(),
        user_id: inst.user_id.clone(),
        availability_zone: inst
            .requested_availability_zone
            .clone()
            .filter(|z| !z.is_empty()),
        force_host: inst.forced_host.clone().filter(|h| !h.is_empty()),
        ignore_hosts: tried.iter().cloned().collect(),
        ..RequestSpec::default()
    };
    if spec.force_host.is_none() {
        spec.force_host = hints(inst).get("force_host").and_then(hint_string);
    }
    if !inst.image_ref.is_empty()
        && let Some(img) = images::get_image(&mut conn, &inst.image_ref).await?
    {
        spec.image_properties = img.properties;
    }
    spec.resources_from_flavor(
        &FlavorResources {
            vcpus: inst.vcpus,
            memory_mb: inst.memory_mb,
            root_gb: inst.root_gb,
            ephemeral_gb: inst.ephemeral_gb,
            swap_mb: inst.swap_mb,
        },
        &extra,
    );
    if let Some(g) = server_groups::group_of_instance(&mut conn, &inst.uuid).await? {
        // Where the other members are: their allocations say, including
        // members still being built (claimed, not yet on a host).
        let others: Vec<String> = g
            .members
            .iter()
            .filter(|m| **m != inst.uuid)
            .cloned()
            .collect();
        let mut hosts: BTreeMap<String, u32> = BTreeMap::new();
        for (_, host) in sched_store::member_placements(&mut *conn, &others).await? {
            *hosts.entry(host).or_default() += 1;
        }
        spec.group = Some(GroupSpec {
            uuid: g.row.uuid.clone(),
            policy: g.row.policy.clone(),
            max_server_per_host: g
                .row
                .max_server_per_host()
                .and_then(|n| u32::try_from(n).ok()),
            members: g.members.clone(),
            hosts,
        });
    }
    Ok(spec)
}

/// The URL of the image API agents download from: the catalog's internal
/// endpoint of the `image` service (or its public one).
pub async fn image_api_url(c: &Conductor) -> Result<String> {
    let catalog = identity::catalog(&c.app).await?;
    let service = catalog
        .iter()
        .find(|e| e.service.kind == "image" && e.service.enabled)
        .ok_or_else(|| {
            Error::new(
                crate::error::Kind::ServiceUnavailable,
                "the catalog has no image service (run `mica-controller bootstrap`)",
            )
        })?;
    let pick = |iface: &str| {
        service
            .endpoints
            .iter()
            .find(|e| e.interface == iface && e.enabled)
            .map(|e| e.url.trim_end_matches('/').to_owned())
    };
    pick("internal").or_else(|| pick("public")).ok_or_else(|| {
        Error::new(
            crate::error::Kind::ServiceUnavailable,
            "the image service has no endpoint in the catalog",
        )
    })
}

fn json_list(text: &str) -> Vec<String> {
    serde_json::from_str::<Vec<Value>>(text)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// Everything the agent needs to build `inst`; the image token is issued
/// here (for the instance's user, for `[conductor] image_token_secs`).
pub async fn instance_spec(c: &Conductor, inst: &InstanceRow) -> Result<InstanceSpec> {
    let mut conn = c.app.db.pool().acquire().await?;
    let image = if inst.image_ref.is_empty() {
        return Err(Error::bad_request(
            "Booting from a volume is not supported: the instance has no image.",
        ));
    } else {
        images::get_image(&mut conn, &inst.image_ref)
            .await?
            .ok_or_else(|| {
                Error::bad_request(format!("Image {} could not be found.", inst.image_ref))
            })?
    };
    let base = c.image_url().await?;
    let token = identity::issue_delegated_token(
        &c.app,
        &inst.user_id,
        &inst.project_id,
        c.app.config.conductor.image_token_secs,
    )
    .await?;
    let r = &image.row;
    let image_spec = ImageSpec {
        id: r.id.clone(),
        name: r.name.clone().unwrap_or_default(),
        disk_format: r.disk_format.clone().unwrap_or_else(|| "raw".into()),
        size: r.size.map_or(0, |s| u64::try_from(s).unwrap_or(0)),
        checksum: r.checksum.clone(),
        os_hash_algo: r.os_hash_algo.clone(),
        os_hash_value: r.os_hash_value.clone(),
        download_url: format!("{base}/v2/images/{}/file", r.id),
        download_token: token,
        properties: image
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    };

    // Ports, with their networks, subnets and security groups.
    let ports = network::ports_of_instance(&mut conn, &inst.uuid).await?;
    let mut networks: BTreeMap<String, NetworkSpec> = BTreeMap::new();
    let mut groups: BTreeMap<String, SecurityGroupSpec> = BTreeMap::new();
    let mut port_specs = Vec::new();
    for p in &ports {
        if !networks.contains_key(&p.row.network_id) {
            let n = network::get_network(&mut *conn, &p.row.network_id)
                .await?
                .ok_or_else(|| {
                    Error::bad_request(format!("Network {} could not be found.", p.row.network_id))
                })?;
            let subnets = network::list_subnets(&mut *conn, None, Some(&n.id))
                .await?
                .into_iter()
                .map(|s| SubnetSpec {
                    id: s.id.clone(),
                    cidr: s.cidr.clone(),
                    ip_version: u8::try_from(s.ip_version).unwrap_or(4),
                    gateway_ip: s.gateway_ip.clone(),
                    dns_nameservers: json_list(&s.dns_nameservers),
                    enable_dhcp: s.enable_dhcp,
                })
                .collect();
            networks.insert(
                n.id.clone(),
                NetworkSpec {
                    id: n.id.clone(),
                    name: n.name.clone(),
                    network_type: n.network_type.clone(),
                    mtu: u32::try_from(n.mtu).unwrap_or(1500),
                    subnets,
                    nat: n.is_default || n.external,
                    isolated: !(n.shared || n.external || n.is_default),
                },
            );
        }
        let mut sgs = Vec::new();
        for g in &p.security_groups {
            if !groups.contains_key(g)
                && let Some(spec) = security_group_spec(&mut conn, g).await?
            {
                groups.insert(g.clone(), spec);
            }
            if let Some(spec) = groups.get(g) {
                sgs.push(spec.clone());
            }
        }
        port_specs.push(PortSpec {
            id: p.row.id.clone(),
            mac_address: p.row.mac_address.clone(),
            network: networks[&p.row.network_id].clone(),
            fixed_ips: p
                .fixed_ips
                .iter()
                .map(|ip| FixedIp {
                    subnet_id: ip.subnet_id.clone(),
                    ip_address: ip.ip_address.clone(),
                })
                .collect(),
            security_groups: sgs,
            port_security_enabled: p.row.port_security_enabled,
        });
    }
    let extra = extra_specs(inst);
    Ok(InstanceSpec {
        uuid: inst.uuid.clone(),
        name: inst.display_name.clone(),
        hostname: inst.hostname.clone(),
        project_id: inst.project_id.clone(),
        user_id: inst.user_id.clone(),
        flavor: FlavorSpec {
            id: inst.flavor_id.clone(),
            name: inst.flavor_name.clone(),
            vcpus: u32::try_from(inst.vcpus).unwrap_or(1),
            memory_mb: u64::try_from(inst.memory_mb).unwrap_or(0),
            root_gb: u64::try_from(inst.root_gb).unwrap_or(0),
            ephemeral_gb: u64::try_from(inst.ephemeral_gb).unwrap_or(0),
            swap_mb: u64::try_from(inst.swap_mb).unwrap_or(0),
            extra_specs: extra,
        },
        image: image_spec,
        ports: port_specs,
        key_data: inst.key_data.clone(),
        user_data: inst.user_data.clone(),
        metadata: crate::db::instances::metadata_of(&mut *conn, std::slice::from_ref(&inst.uuid))
            .await?
            .remove(&inst.uuid)
            .unwrap_or_default(),
        availability_zone: inst.availability_zone.clone(),
        launch_index: u32::try_from(inst.launch_index).unwrap_or(0),
    })
}

/// A security group as agents apply it (rules and member addresses).
pub async fn security_group_spec(
    conn: &mut sqlx::AnyConnection,
    id: &str,
) -> Result<Option<SecurityGroupSpec>> {
    let Some(g) = network::get_group(conn, id).await? else {
        return Ok(None);
    };
    let rules = g
        .rules
        .iter()
        .map(|r| SecurityGroupRule {
            id: r.id.clone(),
            direction: if r.direction == "egress" {
                Direction::Egress
            } else {
                Direction::Ingress
            },
            ethertype: r.ethertype.clone(),
            protocol: r.protocol.clone(),
            port_range_min: r.port_range_min.and_then(|p| u16::try_from(p).ok()),
            port_range_max: r.port_range_max.and_then(|p| u16::try_from(p).ok()),
            remote_ip_prefix: r.remote_ip_prefix.clone(),
            remote_group_id: r.remote_group_id.clone(),
        })
        .collect();
    Ok(Some(SecurityGroupSpec {
        id: g.row.id.clone(),
        name: g.row.name.clone(),
        rules,
        member_ips: network::member_ips(&mut *conn, id).await?,
    }))
}
