//! The conductor's periodic tasks:
//!
//! - **stale task states**: an instance whose task state has not changed for
//!   `[conductor] stale_task_state_secs` and that no active saga acts on is
//!   put back in a clear state: the task state is cleared; an instance
//!   still building goes to ERROR (with a fault, its claim freed);
//! - **housekeeping**: finished sagas and signals older than
//!   `saga_retention_secs` are deleted.

use std::time::Duration;

use tokio::task::JoinHandle;

use super::Conductor;
use super::build::free_allocations;
use crate::app::compute::states::vm;
use crate::db::Timestamp;
use crate::db::instances::{self, Change, Expect};
use crate::db::sagas::{self as store, state};
use crate::error::Result;
use crate::saga::Engine;

/// Starts the periodic tasks of `engine`'s conductor.
pub fn start(engine: Engine<Conductor>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let every = Duration::from_secs(engine.ctx().cfg().periodic_interval_secs.max(1));
        loop {
            tokio::time::sleep(every).await;
            match reset_stale_tasks(&engine).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(instances = n, "reset stale task states"),
                Err(e) => tracing::warn!(error = ?e, "resetting stale task states failed"),
            }
            if let Err(e) = housekeeping(&engine).await {
                tracing::warn!(error = ?e, "saga housekeeping failed");
            }
        }
    })
}

/// Resets the task states no saga is behind (see the module docs);
/// returns how many instances it changed.
pub async fn reset_stale_tasks(engine: &Engine<Conductor>) -> Result<usize> {
    let c = engine.ctx();
    let db = &c.app.db;
    let age = i64::try_from(c.cfg().stale_task_state_secs).unwrap_or(i64::MAX);
    let before = Timestamp::now().plus_secs(-age);
    let mut changed = 0;
    for inst in instances::list_stale_tasks(db.pool(), before).await? {
        let busy = store::sagas_of_target(db.pool(), &inst.uuid)
            .await?
            .iter()
            .any(|s| state::ACTIVE.contains(&s.state.as_str()));
        if busy {
            continue;
        }
        let building = inst.vm_state == vm::BUILDING;
        let change = Change {
            task_state: Some(None),
            vm_state: building.then(|| vm::ERROR.to_owned()),
            ..Change::default()
        };
        let done = db
            .retry(|| async {
                let mut tx = db.begin().await?;
                let g = instances::update_instance(
                    &mut *tx,
                    &inst.uuid,
                    &Expect {
                        generation: Some(inst.generation),
                        ..Expect::default()
                    },
                    &change,
                )
                .await?;
                if g.is_some() && building {
                    instances::record_fault(
                        &mut *tx,
                        &inst.uuid,
                        500,
                        "Build of instance did not complete.",
                        &format!(
                            "no saga was building it; task state {:?} unchanged since {}",
                            inst.task_state,
                            inst.updated_at.to_db()
                        ),
                        inst.host.as_deref(),
                    )
                    .await?;
                }
                tx.commit().await?;
                Ok(g.is_some())
            })
            .await?;
        if done {
            if building {
                free_allocations(&c.app, &inst.uuid).await?;
            }
            tracing::warn!(instance = %inst.uuid, task_state = ?inst.task_state, vm_state = %inst.vm_state, "task state reset: no saga behind it");
            changed += 1;
        }
    }
    Ok(changed)
}

/// Deletes finished sagas and old signals.
pub async fn housekeeping(engine: &Engine<Conductor>) -> Result<()> {
    let c = engine.ctx();
    let keep = i64::try_from(c.cfg().saga_retention_secs).unwrap_or(i64::MAX);
    let before = Timestamp::now().plus_secs(-keep);
    store::delete_finished_before(c.app.db.pool(), before).await?;
    store::delete_signals_before(c.app.db.pool(), before).await?;
    Ok(())
}
