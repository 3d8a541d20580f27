//! What the conductor does for agents, which never touch the database:
//! their service rows, their resource providers and compute nodes, their
//! reports (stored as saga signals), and power-state sync.

use std::collections::{BTreeMap, BTreeSet};

use mica_rpc::RemoteError;
use mica_rpc::compute::PowerState;
use mica_rpc::conductor::{
    ActionFinished, BuildFinished, Heartbeat, HostInstancesRequest, KnownInstance,
    PowerStateChange, ProviderUpdate, ProviderUpdated, RegisterRequest, Registered, Terminated,
};

use super::actions::{action_key, synced_vm_state, terminate_key};
use super::build::signal_key;
use super::{Conductor, persist};
use crate::app::placement::{STANDARD_TRAITS, is_custom_name};
use crate::db::Timestamp;
use crate::db::hosts::{self, NodeReport};
use crate::db::instances::{self, Change, Expect};
use crate::db::placement::{self as store, Inventory, Lock, Provider};
use crate::error::{Error, Kind, Result};
use crate::saga::Engine;

/// The binary name agents' services are listed under (what Nova's clients
/// expect of a compute service).
pub const COMPUTE_BINARY: &str = "nova-compute";

/// `service_register`.
pub async fn register(
    engine: &Engine<Conductor>,
    req: RegisterRequest,
) -> std::result::Result<Registered, RemoteError> {
    let c = engine.ctx().clone();
    let row = persist("registering a service", || async {
        let db = &c.app.db;
        db.retry(|| async {
            let mut tx = db.begin().await?;
            let s = hosts::register_service(
                &mut tx,
                &req.host,
                COMPUTE_BINARY,
                "compute",
                &req.version,
            )
            .await?;
            tx.commit().await?;
            Ok(s)
        })
        .await
    })
    .await?;
    tracing::info!(host = %req.host, binary = %req.binary, version = %req.version, "compute service registered");
    Ok(Registered {
        service_id: row.uuid,
        report_interval_s: c.cfg().report_interval_secs,
        disabled: row.disabled,
    })
}

/// `service_heartbeat`.
pub async fn heartbeat(
    engine: &Engine<Conductor>,
    req: Heartbeat,
) -> std::result::Result<(), RemoteError> {
    let c = engine.ctx().clone();
    persist("recording a heartbeat", || async {
        if !hosts::heartbeat(c.app.db.pool(), &req.host, COMPUTE_BINARY).await? {
            // Deleted by an operator while the agent ran: register again.
            let mut tx = c.app.db.begin().await?;
            hosts::register_service(&mut tx, &req.host, COMPUTE_BINARY, "compute", "").await?;
            tx.commit().await?;
        }
        Ok(())
    })
    .await
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n)
        .unwrap_or(store::MAX_INT)
        .min(store::MAX_INT)
}

/// `update_provider`: creates the host's provider on first use, replaces
/// its inventories and the traits the agent manages (only when they
/// changed, so that an unchanged report does not bump the generation under
/// the schedulers' feet), and refreshes its compute node.
pub async fn update_provider(
    engine: &Engine<Conductor>,
    req: ProviderUpdate,
) -> std::result::Result<ProviderUpdated, RemoteError> {
    let c = engine.ctx().clone();
    persist("updating a provider", || apply_provider(&c, &req)).await
}

async fn find_or_create_provider(c: &Conductor, host: &str) -> Result<Provider> {
    if let Some(p) = store::find_provider(c.app.db.pool(), host).await? {
        return Ok(p);
    }
    let now = Timestamp::now();
    let uuid = uuid::Uuid::new_v4().to_string();
    let p = Provider {
        uuid: uuid.clone(),
        name: host.to_owned(),
        generation: 0,
        parent_provider_uuid: None,
        root_provider_uuid: uuid,
        created_at: now,
        updated_at: now,
    };
    match store::create_provider(c.app.db.pool(), &p).await {
        Ok(()) => Ok(p),
        // Two reports at once: the other one made it.
        Err(e) if e.is(Kind::Conflict) => store::find_provider(c.app.db.pool(), host)
            .await?
            .ok_or_else(|| Error::internal("creating a provider", "vanished after a conflict")),
        Err(e) => Err(e),
    }
}

async fn apply_provider(c: &Conductor, req: &ProviderUpdate) -> Result<ProviderUpdated> {
    let p = find_or_create_provider(c, &req.host).await?;
    let wanted: Vec<Inventory> = req
        .inventories
        .iter()
        .map(|(rc, i)| Inventory {
            resource_class: rc.clone(),
            total: to_i64(i.total),
            reserved: to_i64(i.reserved),
            min_unit: to_i64(i.min_unit.max(1)),
            max_unit: to_i64(i.max_unit.max(1)),
            step_size: to_i64(i.step_size.max(1)),
            allocation_ratio: if i.allocation_ratio > 0.0 {
                i.allocation_ratio
            } else {
                1.0
            },
        })
        .collect();
    for rc in wanted.iter().map(|i| &i.resource_class) {
        if is_custom_name(rc) {
            store::create_resource_class(c.app.db.pool(), rc).await?;
        }
    }
    let mut agent_traits: BTreeSet<String> = BTreeSet::new();
    for t in &req.traits {
        if STANDARD_TRAITS.contains(t.as_str()) {
            agent_traits.insert(t.clone());
        } else if is_custom_name(t) {
            store::create_trait(c.app.db.pool(), t).await?;
            agent_traits.insert(t.clone());
        } else {
            tracing::warn!(host = %req.host, r#trait = %t, "an agent reported an unknown trait; ignored");
        }
    }
    let db = &c.app.db;
    let generation = db
        .retry(|| async {
            let current_inv = store::inventories(db.pool(), &p.uuid).await?;
            let current_traits: BTreeSet<String> = store::provider_traits(db.pool(), &p.uuid)
                .await?
                .into_iter()
                .collect();
            // Operators' traits stay; the agent owns the rest.
            let mut traits = agent_traits.clone();
            traits.extend(
                current_traits
                    .iter()
                    .filter(|t| is_custom_name(t) || *t == "COMPUTE_STATUS_DISABLED")
                    .cloned(),
            );
            let by_class = |v: &[Inventory]| -> BTreeMap<String, Inventory> {
                v.iter()
                    .map(|i| (i.resource_class.clone(), i.clone()))
                    .collect()
            };
            let inv_changed = by_class(&current_inv) != by_class(&wanted);
            let traits_changed = traits != current_traits;
            if !inv_changed && !traits_changed {
                let g = store::get_provider(db.pool(), &p.uuid)
                    .await?
                    .map_or(0, |p| p.generation);
                return Ok(g);
            }
            let mut tx = db.begin().await?;
            let g = match store::lock_provider(&mut tx, &p.uuid, None).await? {
                Lock::Locked(g) => g,
                _ => {
                    return Err(Error::not_found(format!(
                        "resource provider {} vanished",
                        p.uuid
                    )));
                }
            };
            if inv_changed {
                store::replace_inventories(&mut tx, &p.uuid, &wanted).await?;
            }
            if traits_changed {
                store::replace_provider_traits(&mut tx, &p.uuid, &traits).await?;
            }
            tx.commit().await?;
            Ok(g)
        })
        .await?;
    let inv = |rc: &str| {
        wanted
            .iter()
            .find(|i| i.resource_class == rc)
            .map_or(0, |i| i.total)
    };
    let h = &req.hypervisor;
    let arch = req
        .traits
        .iter()
        .find_map(|t| t.strip_prefix("COMPUTE_ARCH_"))
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let node = NodeReport {
        uuid: p.uuid.clone(),
        host: req.host.clone(),
        hypervisor_hostname: req.host.clone(),
        hypervisor_type: h.hypervisor_type.clone(),
        hypervisor_version: to_i64(h.hypervisor_version),
        host_ip: h.host_ip.clone(),
        cpu_info: serde_json::json!({"model": h.cpu_model, "arch": arch}).to_string(),
        vcpus: inv("VCPU"),
        memory_mb: inv("MEMORY_MB"),
        local_gb: inv("DISK_GB"),
        running_vms: i64::from(h.running_vms),
    };
    db.retry(|| async {
        let mut tx = db.begin().await?;
        hosts::upsert_compute_node(&mut tx, &node).await?;
        tx.commit().await?;
        Ok(())
    })
    .await?;
    Ok(ProviderUpdated {
        provider_uuid: p.uuid,
        generation: u64::try_from(generation).unwrap_or(0),
    })
}

/// `instance_build_finished`: the signal its build saga waits for.
pub async fn build_finished(
    engine: &Engine<Conductor>,
    req: BuildFinished,
) -> std::result::Result<(), RemoteError> {
    let key = signal_key(&req.instance_uuid, &req.vmm_id);
    let payload = serde_json::to_value(&req).unwrap_or_default();
    persist("storing a build report", || engine.signal(&key, &payload)).await
}

/// `instance_action_finished`: the signal its action saga waits for.
pub async fn action_finished(
    engine: &Engine<Conductor>,
    req: ActionFinished,
) -> std::result::Result<(), RemoteError> {
    let key = action_key(&req.instance_uuid, &req.request_id);
    let payload = serde_json::to_value(&req).unwrap_or_default();
    persist("storing an action report", || engine.signal(&key, &payload)).await
}

/// `instance_terminated`: the signal a delete saga waits for.
pub async fn terminated(
    engine: &Engine<Conductor>,
    req: Terminated,
) -> std::result::Result<(), RemoteError> {
    let key = terminate_key(&req.instance_uuid, &req.host);
    let payload = serde_json::to_value(&req).unwrap_or_default();
    persist("storing a terminate report", || {
        engine.signal(&key, &payload)
    })
    .await
}

/// The power state of a code.
pub fn power_state_of(code: i64) -> PowerState {
    match code {
        1 => PowerState::Running,
        3 => PowerState::Paused,
        4 => PowerState::Shutdown,
        6 => PowerState::Crashed,
        7 => PowerState::Suspended,
        _ => PowerState::NoState,
    }
}

/// `host_instances`: what the database believes runs on a host.
pub async fn host_instances(
    engine: &Engine<Conductor>,
    req: HostInstancesRequest,
) -> std::result::Result<Vec<KnownInstance>, RemoteError> {
    let c = engine.ctx().clone();
    let rows = persist("listing a host's instances", || {
        instances::list_instances_on_host(c.app.db.pool(), &req.host)
    })
    .await?;
    Ok(rows
        .into_iter()
        .map(|i| KnownInstance {
            instance_uuid: i.uuid,
            vmm_id: i.vmm_id,
            vm_state: i.vm_state,
            task_state: i.task_state,
            power_state: power_state_of(i.power_state),
        })
        .collect())
}

/// `power_state_changed`: records what the agent found, as Nova's
/// `_sync_power_states` does. Reports about an instance that is busy (in a
/// task), on another host, or about an older VMM are ignored.
pub async fn power_state_changed(
    engine: &Engine<Conductor>,
    req: PowerStateChange,
) -> std::result::Result<(), RemoteError> {
    let c = engine.ctx().clone();
    persist("recording a power state", || async {
        let Some(inst) = instances::get_instance(c.app.db.pool(), &req.instance_uuid).await? else {
            return Ok(());
        };
        if !super::actions::idle_on(&inst, &req.host) {
            return Ok(());
        }
        if req.vmm_id.is_some() && req.vmm_id != inst.vmm_id {
            return Ok(());
        }
        let code = i64::from(req.power_state.code());
        let vm_state = synced_vm_state(&inst.vm_state, code);
        if code == inst.power_state && vm_state.is_none() {
            return Ok(());
        }
        let changed = instances::update_instance(
            c.app.db.pool(),
            &inst.uuid,
            &Expect {
                generation: Some(inst.generation),
                ..Expect::default()
            },
            &Change {
                power_state: Some(code),
                vm_state: vm_state.map(str::to_owned),
                vmm_id: if req.vmm_id.is_none() { Some(None) } else { None },
                ..Change::default()
            },
        )
        .await?;
        if changed.is_some() {
            tracing::info!(instance = %inst.uuid, host = %req.host, power_state = code, vm_state = ?vm_state, "power state synced");
        }
        Ok(())
    })
    .await
}
