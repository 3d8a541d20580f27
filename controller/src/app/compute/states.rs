//! Nova's state model: `vm_state`, `task_state`, `power_state`, and the
//! `status` the API derives from them (API.md's table).
//!
//! ```text
//!             create                      os-stop                os-start
//!   (none) ─────────► building ──► active ───────► stopped ─────────► active
//!                        │          │  ▲ pause/unpause, suspend/resume
//!                        ▼          ▼  │ resize → resized → confirm/revert
//!                      error     paused, suspended, rescued, resized
//!   any ── delete ──► deleted (soft: the row stays, `deleted` = TRUE)
//! ```

/// vm_state values.
pub mod vm {
    /// Running.
    pub const ACTIVE: &str = "active";
    /// Only in the database yet.
    pub const BUILDING: &str = "building";
    /// Paused.
    pub const PAUSED: &str = "paused";
    /// Suspended.
    pub const SUSPENDED: &str = "suspended";
    /// Powered off.
    pub const STOPPED: &str = "stopped";
    /// Rescued.
    pub const RESCUED: &str = "rescued";
    /// Resized, waiting for confirm or revert.
    pub const RESIZED: &str = "resized";
    /// Soft-deleted (restorable).
    pub const SOFT_DELETED: &str = "soft-delete";
    /// Deleted.
    pub const DELETED: &str = "deleted";
    /// Error.
    pub const ERROR: &str = "error";
    /// Shelved.
    pub const SHELVED: &str = "shelved";
    /// Shelved and offloaded.
    pub const SHELVED_OFFLOADED: &str = "shelved_offloaded";

    /// Every vm_state, for validating filters.
    pub const ALL: [&str; 12] = [
        ACTIVE,
        BUILDING,
        PAUSED,
        SUSPENDED,
        STOPPED,
        RESCUED,
        RESIZED,
        SOFT_DELETED,
        DELETED,
        ERROR,
        SHELVED,
        SHELVED_OFFLOADED,
    ];
}

/// task_state values.
pub mod task {
    /// Waiting for the scheduler.
    pub const SCHEDULING: &str = "scheduling";
    /// Networking.
    pub const NETWORKING: &str = "networking";
    /// Block devices.
    pub const BLOCK_DEVICE_MAPPING: &str = "block_device_mapping";
    /// Starting the VMM.
    pub const SPAWNING: &str = "spawning";
    /// Snapshot.
    pub const IMAGE_SNAPSHOT: &str = "image_snapshot";
    /// Snapshot queued.
    pub const IMAGE_SNAPSHOT_PENDING: &str = "image_snapshot_pending";
    /// Snapshot upload pending.
    pub const IMAGE_PENDING_UPLOAD: &str = "image_pending_upload";
    /// Snapshot uploading.
    pub const IMAGE_UPLOADING: &str = "image_uploading";
    /// Password change.
    pub const UPDATING_PASSWORD: &str = "updating_password";
    /// Resize: preparing.
    pub const RESIZE_PREP: &str = "resize_prep";
    /// Resize: migrating.
    pub const RESIZE_MIGRATING: &str = "resize_migrating";
    /// Resize: migrated.
    pub const RESIZE_MIGRATED: &str = "resize_migrated";
    /// Resize: finishing.
    pub const RESIZE_FINISH: &str = "resize_finish";
    /// Resize: reverting.
    pub const RESIZE_REVERTING: &str = "resize_reverting";
    /// Resize: confirming.
    pub const RESIZE_CONFIRMING: &str = "resize_confirming";
    /// Soft reboot.
    pub const REBOOTING: &str = "rebooting";
    /// Soft reboot pending.
    pub const REBOOT_PENDING: &str = "reboot_pending";
    /// Soft reboot started.
    pub const REBOOT_STARTED: &str = "reboot_started";
    /// Hard reboot.
    pub const REBOOTING_HARD: &str = "rebooting_hard";
    /// Hard reboot pending.
    pub const REBOOT_PENDING_HARD: &str = "reboot_pending_hard";
    /// Hard reboot started.
    pub const REBOOT_STARTED_HARD: &str = "reboot_started_hard";
    /// Pausing.
    pub const PAUSING: &str = "pausing";
    /// Unpausing.
    pub const UNPAUSING: &str = "unpausing";
    /// Suspending.
    pub const SUSPENDING: &str = "suspending";
    /// Resuming.
    pub const RESUMING: &str = "resuming";
    /// Stopping.
    pub const POWERING_OFF: &str = "powering-off";
    /// Starting.
    pub const POWERING_ON: &str = "powering-on";
    /// Rescuing.
    pub const RESCUING: &str = "rescuing";
    /// Unrescuing.
    pub const UNRESCUING: &str = "unrescuing";
    /// Rebuilding.
    pub const REBUILDING: &str = "rebuilding";
    /// Rebuild: block devices.
    pub const REBUILD_BLOCK_DEVICE_MAPPING: &str = "rebuild_block_device_mapping";
    /// Rebuild: spawning.
    pub const REBUILD_SPAWNING: &str = "rebuild_spawning";
    /// Live migration.
    pub const MIGRATING: &str = "migrating";
    /// Deleting.
    pub const DELETING: &str = "deleting";
    /// Soft deleting.
    pub const SOFT_DELETING: &str = "soft-deleting";
    /// Restoring.
    pub const RESTORING: &str = "restoring";
    /// Shelving.
    pub const SHELVING: &str = "shelving";
    /// Shelving: offloading.
    pub const SHELVING_OFFLOADING: &str = "shelving_offloading";
    /// Unshelving.
    pub const UNSHELVING: &str = "unshelving";

    /// Task states a hard reboot may interrupt (Nova's `ALLOW_REBOOT`).
    pub const ALLOW_REBOOT: [Option<&str>; 9] = [
        None,
        Some(REBOOTING),
        Some(REBOOT_PENDING),
        Some(REBOOT_STARTED),
        Some(RESUMING),
        Some(REBOOTING_HARD),
        Some(UNPAUSING),
        Some(PAUSING),
        Some(SUSPENDING),
    ];
}

/// power_state codes.
pub mod power {
    /// Unknown.
    pub const NOSTATE: i64 = 0;
    /// Running.
    pub const RUNNING: i64 = 1;
    /// Paused.
    pub const PAUSED: i64 = 3;
    /// Shut down.
    pub const SHUTDOWN: i64 = 4;
    /// Crashed.
    pub const CRASHED: i64 = 6;
    /// Suspended.
    pub const SUSPENDED: i64 = 7;
}

/// The API `status` of a `vm_state` and `task_state` (Nova's
/// `status_from_state`).
pub fn status(vm_state: &str, task_state: Option<&str>) -> &'static str {
    use task as t;
    match vm_state {
        vm::ACTIVE => match task_state {
            Some(t::REBOOTING) | Some(t::REBOOT_PENDING) | Some(t::REBOOT_STARTED) => "REBOOT",
            Some(t::REBOOTING_HARD)
            | Some(t::REBOOT_PENDING_HARD)
            | Some(t::REBOOT_STARTED_HARD) => "HARD_REBOOT",
            Some(t::UPDATING_PASSWORD) => "PASSWORD",
            Some(t::REBUILDING)
            | Some(t::REBUILD_BLOCK_DEVICE_MAPPING)
            | Some(t::REBUILD_SPAWNING) => "REBUILD",
            Some(t::MIGRATING) => "MIGRATING",
            Some(t::RESIZE_PREP)
            | Some(t::RESIZE_MIGRATING)
            | Some(t::RESIZE_MIGRATED)
            | Some(t::RESIZE_FINISH) => "RESIZE",
            _ => "ACTIVE",
        },
        vm::BUILDING => "BUILD",
        vm::STOPPED => match task_state {
            Some(t::RESIZE_PREP)
            | Some(t::RESIZE_MIGRATING)
            | Some(t::RESIZE_MIGRATED)
            | Some(t::RESIZE_FINISH) => "RESIZE",
            Some(t::REBUILDING)
            | Some(t::REBUILD_BLOCK_DEVICE_MAPPING)
            | Some(t::REBUILD_SPAWNING) => "REBUILD",
            _ => "SHUTOFF",
        },
        vm::RESIZED => match task_state {
            Some(t::RESIZE_REVERTING) => "REVERT_RESIZE",
            _ => "VERIFY_RESIZE",
        },
        vm::PAUSED => "PAUSED",
        vm::SUSPENDED => "SUSPENDED",
        vm::RESCUED => "RESCUE",
        vm::ERROR => "ERROR",
        vm::DELETED => "DELETED",
        vm::SOFT_DELETED => "SOFT_DELETED",
        vm::SHELVED => "SHELVED",
        vm::SHELVED_OFFLOADED => "SHELVED_OFFLOADED",
        _ => "UNKNOWN",
    }
}

/// What a `status` filter selects: vm_states, and task states when the
/// status is only some of a vm_state's tasks.
pub type StatusFilter = (Vec<&'static str>, Option<Vec<Option<&'static str>>>);

/// The vm_states (and, for some, task states) a `status` filter means
/// (Nova's `states_from_status`); `None` for an unknown status.
pub fn states_of_status(status: &str) -> Option<StatusFilter> {
    use task as t;
    Some(match status.to_ascii_uppercase().as_str() {
        "ACTIVE" => (vec![vm::ACTIVE], None),
        "BUILD" => (vec![vm::BUILDING], None),
        "SHUTOFF" => (vec![vm::STOPPED], None),
        "PAUSED" => (vec![vm::PAUSED], None),
        "SUSPENDED" => (vec![vm::SUSPENDED], None),
        "RESCUE" => (vec![vm::RESCUED], None),
        "ERROR" => (vec![vm::ERROR], None),
        "DELETED" => (vec![vm::DELETED], None),
        "SOFT_DELETED" => (vec![vm::SOFT_DELETED], None),
        "SHELVED" => (vec![vm::SHELVED], None),
        "SHELVED_OFFLOADED" => (vec![vm::SHELVED_OFFLOADED], None),
        "VERIFY_RESIZE" => (vec![vm::RESIZED], None),
        "REBOOT" => (
            vec![vm::ACTIVE],
            Some(vec![
                Some(t::REBOOTING),
                Some(t::REBOOT_PENDING),
                Some(t::REBOOT_STARTED),
            ]),
        ),
        "HARD_REBOOT" => (
            vec![vm::ACTIVE],
            Some(vec![
                Some(t::REBOOTING_HARD),
                Some(t::REBOOT_PENDING_HARD),
                Some(t::REBOOT_STARTED_HARD),
            ]),
        ),
        "PASSWORD" => (vec![vm::ACTIVE], Some(vec![Some(t::UPDATING_PASSWORD)])),
        "MIGRATING" => (vec![vm::ACTIVE], Some(vec![Some(t::MIGRATING)])),
        "REBUILD" => (
            vec![vm::ACTIVE, vm::STOPPED],
            Some(vec![
                Some(t::REBUILDING),
                Some(t::REBUILD_BLOCK_DEVICE_MAPPING),
                Some(t::REBUILD_SPAWNING),
            ]),
        ),
        "RESIZE" => (
            vec![vm::ACTIVE, vm::STOPPED],
            Some(vec![
                Some(t::RESIZE_PREP),
                Some(t::RESIZE_MIGRATING),
                Some(t::RESIZE_MIGRATED),
                Some(t::RESIZE_FINISH),
            ]),
        ),
        "REVERT_RESIZE" => (vec![vm::RESIZED], Some(vec![Some(t::RESIZE_REVERTING)])),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_table_and_filters_invert_them() {
        assert_eq!(status(vm::BUILDING, Some(task::SCHEDULING)), "BUILD");
        assert_eq!(status(vm::ACTIVE, None), "ACTIVE");
        assert_eq!(status(vm::ACTIVE, Some(task::POWERING_OFF)), "ACTIVE");
        assert_eq!(status(vm::ACTIVE, Some(task::REBOOTING)), "REBOOT");
        assert_eq!(
            status(vm::ACTIVE, Some(task::REBOOTING_HARD)),
            "HARD_REBOOT"
        );
        assert_eq!(status(vm::STOPPED, None), "SHUTOFF");
        assert_eq!(status(vm::STOPPED, Some(task::RESIZE_PREP)), "RESIZE");
        assert_eq!(status(vm::RESIZED, None), "VERIFY_RESIZE");
        assert_eq!(
            status(vm::RESIZED, Some(task::RESIZE_REVERTING)),
            "REVERT_RESIZE"
        );
        assert_eq!(status(vm::RESCUED, None), "RESCUE");
        assert_eq!(status(vm::ERROR, Some(task::DELETING)), "ERROR");
        // Every status a state maps to is accepted as a filter that
        // selects that state back.
        for v in vm::ALL {
            for t in [
                None,
                Some(task::REBOOTING),
                Some(task::RESIZE_PREP),
                Some(task::MIGRATING),
            ] {
                let s = status(v, t);
                let (vms, tasks) = states_of_status(s).unwrap();
                assert!(vms.contains(&v), "{v} {t:?} → {s}");
                if let Some(tasks) = tasks {
                    assert!(tasks.contains(&t), "{v} {t:?} → {s}");
                }
            }
        }
        assert!(states_of_status("NOPE").is_none());
    }
}
