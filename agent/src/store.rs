//! What the agent remembers of its instances across restarts: one record per
//! instance, `<state_dir>/instances/<uuid>/instance.json`, next to the
//! instance's disks, VMM configuration, serial log and VMM log.
//!
//! ```text
//!  <state_dir>/instances/<uuid>/
//!      instance.json     this record (written atomically)
//!      root.raw          the root disk, grown to the flavor's root_gb (sparse)
//!      ephemeral.raw     the ephemeral disk, if the flavor has one
//!      swap.raw          the swap disk, if the flavor has one
//!      vm.json           the VMM configuration of the current VMM
//!      console.log       the serial console (rotated to console.log.1)
//!      vmm.log           the VMMs' stderr
//! ```
//!
//! The record says which VMM incarnation belongs to the instance and what
//! state the user asked for, so a restarted agent knows what the VMMs it finds
//! are, and which instances should be running.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use mica_rpc::compute::InstanceSpec;
use serde::{Deserialize, Serialize};

/// The state the instance should be in, as far as this host knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Intent {
    /// Being built: a record left in this state by a crash is a failed build.
    Building,
    Running,
    Paused,
    /// Paused, reported as suspended (until snapshots exist).
    Suspended,
    /// Stopped by a request, or its VMM died.
    Stopped,
}

/// One instance (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// The instance as the conductor described it (the image download token
    /// is not kept).
    pub spec: InstanceSpec,
    /// The current VMM incarnation (kept after it stops, until a new one).
    pub vmm_id: String,
    pub intent: Intent,
    /// The build attempt that made the instance here.
    #[serde(default)]
    pub attempt: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("instance store: {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("instance store: {path} is not a valid record")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0:?} is not a valid instance uuid")]
    BadUuid(String),
}

/// The records under `<state_dir>/instances`.
#[derive(Debug, Clone)]
pub struct InstanceStore {
    dir: PathBuf,
}

impl InstanceStore {
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let dir = state_dir.join("instances");
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            op: "creating",
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    /// The instance's folder (whether or not it exists).
    pub fn dir(&self, uuid: &str) -> Result<PathBuf, StoreError> {
        check_uuid(uuid)?;
        Ok(self.dir.join(uuid))
    }

    /// Reads a record; `None` if the instance is not on this host.
    pub fn load(&self, uuid: &str) -> Result<Option<InstanceRecord>, StoreError> {
        let path = self.dir(uuid)?.join("instance.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StoreError::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io {
                op: "reading",
                path,
                source,
            }),
        }
    }

    /// Writes a record (creating the instance's folder).
    pub fn save(&self, record: &InstanceRecord) -> Result<(), StoreError> {
        let dir = self.dir(&record.spec.uuid)?;
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            op: "creating",
            path: dir.clone(),
            source,
        })?;
        let mut record = record.clone();
        record.spec.image.download_token.clear();
        let path = dir.join("instance.json");
        let json = serde_json::to_vec_pretty(&record).expect("records serialize");
        write_atomic(&path, &json).map_err(|source| StoreError::Io {
            op: "writing",
            path,
            source,
        })
    }

    /// Removes the instance's folder and everything in it.
    pub fn remove(&self, uuid: &str) -> Result<(), StoreError> {
        let dir = self.dir(uuid)?;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Io {
                op: "removing",
                path: dir,
                source,
            }),
        }
    }

    /// Every record, and the folders without a readable record (left by a
    /// crash before the first write, or damaged).
    pub fn all(&self) -> (Vec<InstanceRecord>, Vec<String>) {
        let mut records = Vec::new();
        let mut orphans = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return (records, orphans);
        };
        for entry in entries.filter_map(|e| e.ok()) {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if check_uuid(&name).is_err() {
                continue;
            }
            match self.load(&name) {
                Ok(Some(r)) => records.push(r),
                Ok(None) => orphans.push(name),
                Err(e) => {
                    tracing::warn!(instance = %name, error = %e, "unreadable instance record");
                    orphans.push(name);
                }
            }
        }
        records.sort_by(|a, b| a.spec.uuid.cmp(&b.spec.uuid));
        orphans.sort();
        (records, orphans)
    }
}

/// Instance uuids become folder names: letters, digits and dashes only.
pub fn check_uuid(uuid: &str) -> Result<(), StoreError> {
    let ok = !uuid.is_empty()
        && uuid.len() <= 64
        && uuid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadUuid(uuid.to_owned()))
    }
}

/// Writes `data` to `path` through a temporary file and a rename, synced,
/// so readers see the old or the new content, never a part.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{:08x}", fastrand::u32(..)));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use mica_rpc::compute::{FlavorSpec, ImageSpec};

    pub(crate) fn spec(uuid: &str) -> InstanceSpec {
        InstanceSpec {
            uuid: uuid.into(),
            name: "vm".into(),
            hostname: "vm".into(),
            project_id: "p".into(),
            user_id: "u".into(),
            flavor: FlavorSpec {
                id: "f".into(),
                name: "m1.nano".into(),
                vcpus: 1,
                memory_mb: 128,
                root_gb: 1,
                ephemeral_gb: 0,
                swap_mb: 0,
                extra_specs: Default::default(),
            },
            image: ImageSpec {
                id: "img".into(),
                name: "tiny".into(),
                disk_format: "raw".into(),
                size: 1,
                checksum: None,
                os_hash_algo: None,
                os_hash_value: None,
                download_url: "http://x/v2/images/img/file".into(),
                download_token: "secret-token".into(),
                properties: Default::default(),
            },
            ports: vec![],
            key_data: None,
            user_data: None,
            metadata: Default::default(),
            availability_zone: None,
            launch_index: 0,
        }
    }

    #[test]
    fn records_round_trip_without_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let store = InstanceStore::open(dir.path()).unwrap();
        let rec = InstanceRecord {
            spec: spec("11111111-2222-3333-4444-555555555555"),
            vmm_id: "v1".into(),
            intent: Intent::Running,
            attempt: 1,
        };
        store.save(&rec).unwrap();
        let back = store.load(&rec.spec.uuid).unwrap().unwrap();
        assert_eq!(back.spec.image.download_token, "");
        assert_eq!(back.vmm_id, "v1");
        assert_eq!(back.intent, Intent::Running);
        assert!(
            store
                .load("00000000-0000-0000-0000-000000000000")
                .unwrap()
                .is_none()
        );

        // A folder without a record is an orphan; other names are ignored.
        std::fs::create_dir(dir.path().join("instances/abc-def")).unwrap();
        std::fs::create_dir(dir.path().join("instances/not a uuid")).unwrap();
        let (records, orphans) = store.all();
        assert_eq!(records.len(), 1);
        assert_eq!(orphans, ["abc-def"]);

        store.remove(&rec.spec.uuid).unwrap();
        store.remove(&rec.spec.uuid).unwrap();
        assert!(store.load(&rec.spec.uuid).unwrap().is_none());
        assert!(store.dir("../x").is_err());
    }
}
