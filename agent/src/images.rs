//! The image cache: each image is downloaded from the image API once per
//! host, kept while any instance on the host uses it, and removed after
//! `remove_unused_after_s` unused.
//!
//! ```text
//!  <state_dir>/images/
//!      <image id>.raw      the image, raw (qcow2 is converted at download)
//!      <image id>.json     what it is (format, size, checksums); its mtime is
//!                          the last time an instance was built from it
//!      .partial/           downloads in progress, never used, cleared at start
//! ```
//!
//! A download streams to `.partial/`, hashing as it goes (the image's
//! `os_hash_algo`/`os_hash_value`, and the MD5 `checksum`), checks the size and
//! every digest it has, converts qcow2 to raw with `qemu-img` (refusing images
//! with a backing file), syncs, and only then renames into place: a partial or
//! unverified file is never used. Downloads of one image are serialized; of
//! different images, concurrent.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt as _;
use md5::Md5;
use mica_rpc::compute::ImageSpec;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tokio::io::AsyncWriteExt as _;

use crate::locks::KeyedLocks;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {id} was not found by the image API (HTTP {status})")]
    NotFound { id: String, status: u16 },
    #[error("the image API refused to send image {id} (HTTP {status})")]
    Refused { id: String, status: u16 },
    #[error("the image API answered HTTP {status} for image {id}")]
    Http { id: String, status: u16 },
    #[error("cannot download image {id}")]
    Transfer {
        id: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("download of image {id} timed out after {secs} s")]
    Timeout { id: String, secs: u64 },
    #[error("image {id}: {algo} checksum mismatch (expected {expected}, got {actual})")]
    ChecksumMismatch {
        id: String,
        algo: String,
        expected: String,
        actual: String,
    },
    #[error("image {id}: size mismatch (expected {expected} bytes, got {actual})")]
    SizeMismatch {
        id: String,
        expected: u64,
        actual: u64,
    },
    #[error("image {id} has no checksum to verify its data with")]
    NoChecksum { id: String },
    #[error("image {id}: unsupported hash algorithm {algo:?}")]
    UnsupportedHash { id: String, algo: String },
    #[error("image {id}: disk format {format:?} is not supported (raw or qcow2)")]
    UnsupportedFormat { id: String, format: String },
    #[error("image {id}: a qcow2 image with a backing file is not accepted")]
    BackingFile { id: String },
    #[error(
        "not enough disk space on the host for image {id}: {needed} bytes needed, {available} available"
    )]
    DiskFull {
        id: String,
        needed: u64,
        available: u64,
    },
    #[error("image {id}: qemu-img failed: {message}")]
    Convert { id: String, message: String },
    #[error("image cache: {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ImageError {
    /// Whether another host (or a later try) might succeed.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ImageError::Http { .. }
                | ImageError::Transfer { .. }
                | ImageError::Timeout { .. }
                | ImageError::DiskFull { .. }
                | ImageError::Io { .. }
                | ImageError::Convert { .. }
        )
    }

    /// Whether the host ran out of space.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, ImageError::DiskFull { .. })
    }
}

/// What the cache knows of an image (`<id>.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedImage {
    pub id: String,
    pub name: String,
    /// The format it was downloaded in.
    pub disk_format: String,
    /// Bytes downloaded.
    pub size: u64,
    /// Bytes of the raw file (the disk's virtual size).
    pub virtual_size: u64,
    pub os_hash_algo: Option<String>,
    pub os_hash_value: Option<String>,
    pub checksum: Option<String>,
}

/// See the module docs.
pub struct ImageCache {
    dir: PathBuf,
    client: reqwest::Client,
    locks: KeyedLocks,
    qemu_img: String,
    download_timeout: Duration,
}

impl ImageCache {
    /// A cache in `dir` (created), with partial downloads left by an earlier
    /// run removed.
    pub fn open(
        dir: &Path,
        qemu_img: &str,
        download_timeout: Duration,
    ) -> Result<Self, ImageError> {
        let partial = dir.join(".partial");
        let io = |op, path: &Path| {
            let path = path.to_owned();
            move |source| ImageError::Io { op, path, source }
        };
        std::fs::create_dir_all(&partial).map_err(io("creating", &partial))?;
        for entry in std::fs::read_dir(&partial).map_err(io("listing", &partial))? {
            let entry = entry.map_err(io("listing", &partial))?;
            let _ = std::fs::remove_file(entry.path());
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .expect("an HTTP client without TLS builds");
        Ok(Self {
            dir: dir.to_owned(),
            client,
            locks: KeyedLocks::default(),
            qemu_img: qemu_img.to_owned(),
            download_timeout,
        })
    }

    /// Where an image's raw file is (whether or not it is cached).
    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.raw"))
    }

    fn meta_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// The cached image, if it is complete.
    pub fn cached(&self, id: &str) -> Option<CachedImage> {
        if !self.path(id).is_file() {
            return None;
        }
        let text = std::fs::read(self.meta_path(id)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// The image's raw file, downloading it first if needed. Marks the image
    /// as used now.
    pub async fn fetch(&self, spec: &ImageSpec) -> Result<(PathBuf, CachedImage), ImageError> {
        check_id(&spec.id)?;
        let _guard = self.locks.lock(&spec.id).await;
        if let Some(meta) = self.cached(&spec.id) {
            tracing::debug!(image = %spec.id, "image cache hit");
            self.touch(&spec.id);
            return Ok((self.path(&spec.id), meta));
        }
        let started = std::time::Instant::now();
        let meta = match tokio::time::timeout(self.download_timeout, self.download(spec)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(ImageError::Timeout {
                    id: spec.id.clone(),
                    secs: self.download_timeout.as_secs(),
                });
            }
        };
        tracing::info!(
            image = %spec.id,
            bytes = meta.size,
            virtual_size = meta.virtual_size,
            format = %meta.disk_format,
            took_ms = started.elapsed().as_millis() as u64,
            "image downloaded and verified"
        );
        Ok((self.path(&spec.id), meta))
    }

    fn touch(&self, id: &str) {
        if let Ok(f) = std::fs::File::options()
            .write(true)
            .open(self.meta_path(id))
        {
            let _ = f.set_modified(SystemTime::now());
        }
    }

    async fn download(&self, spec: &ImageSpec) -> Result<CachedImage, ImageError> {
        let id = spec.id.clone();
        let format = spec.disk_format.as_str();
        if format != "raw" && format != "qcow2" {
            return Err(ImageError::UnsupportedFormat {
                id,
                format: format.to_owned(),
            });
        }
        let mut verifier = Verifier::new(spec)?;
        let space = crate::sys::fs_space(&self.dir).map_err(|source| ImageError::Io {
            op: "measuring",
            path: self.dir.clone(),
            source,
        })?;
        if spec.size > space.available {
            return Err(ImageError::DiskFull {
                id,
                needed: spec.size,
                available: space.available,
            });
        }

        let response = self
            .client
            .get(&spec.download_url)
            .header("X-Auth-Token", &spec.download_token)
            .send()
            .await
            .map_err(|source| ImageError::Transfer {
                id: id.clone(),
                source,
            })?;
        let status = response.status().as_u16();
        match status {
            200..=299 => {}
            404 | 410 => return Err(ImageError::NotFound { id, status }),
            401 | 403 => return Err(ImageError::Refused { id, status }),
            // Glance answers 204 for an image that has no data.
            _ => return Err(ImageError::Http { id, status }),
        }
        if status == 204 {
            return Err(ImageError::NotFound { id, status });
        }

        let partial = Partial::new(
            self.dir
                .join(".partial")
                .join(format!("{id}.{:016x}", fastrand::u64(..))),
        );
        let mut file = tokio::fs::File::create(&partial.0)
            .await
            .map_err(|e| self.write_error(&id, &partial.0, "creating", e))?;
        let mut stream = response.bytes_stream();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| ImageError::Transfer {
                id: id.clone(),
                source,
            })?;
            verifier.update(&chunk);
            size += chunk.len() as u64;
            file.write_all(&chunk)
                .await
                .map_err(|e| self.write_error(&id, &partial.0, "writing", e))?;
        }
        file.sync_all()
            .await
            .map_err(|e| self.write_error(&id, &partial.0, "syncing", e))?;
        drop(file);
        if spec.size > 0 && size != spec.size {
            return Err(ImageError::SizeMismatch {
                id,
                expected: spec.size,
                actual: size,
            });
        }
        verifier.finish(&id)?;

        let raw = if format == "qcow2" {
            let raw = Partial::new(partial.0.with_extension("raw"));
            self.convert_qcow2(&id, &partial.0, &raw.0).await?;
            raw
        } else {
            partial
        };
        let virtual_size = std::fs::metadata(&raw.0)
            .map_err(|source| ImageError::Io {
                op: "reading",
                path: raw.0.clone(),
                source,
            })?
            .len();
        let meta = CachedImage {
            id: id.clone(),
            name: spec.name.clone(),
            disk_format: format.to_owned(),
            size,
            virtual_size,
            os_hash_algo: spec.os_hash_algo.clone(),
            os_hash_value: spec.os_hash_value.clone(),
            checksum: spec.checksum.clone(),
        };
        let meta_path = self.meta_path(&id);
        let json = serde_json::to_vec_pretty(&meta).expect("image metadata serializes");
        crate::store::write_atomic(&meta_path, &json)
            .map_err(|e| self.write_error(&id, &meta_path, "writing", e))?;
        let dest = self.path(&id);
        std::fs::rename(&raw.0, &dest).map_err(|source| ImageError::Io {
            op: "renaming into",
            path: dest.clone(),
            source,
        })?;
        raw.keep();
        Ok(meta)
    }

    fn write_error(
        &self,
        id: &str,
        path: &Path,
        op: &'static str,
        e: std::io::Error,
    ) -> ImageError {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            let available = crate::sys::fs_space(&self.dir)
                .map(|s| s.available)
                .unwrap_or(0);
            return ImageError::DiskFull {
                id: id.to_owned(),
                needed: 0,
                available,
            };
        }
        ImageError::Io {
            op,
            path: path.to_owned(),
            source: e,
        }
    }

    async fn convert_qcow2(&self, id: &str, src: &Path, dst: &Path) -> Result<(), ImageError> {
        let convert_err = |message: String| ImageError::Convert {
            id: id.to_owned(),
            message,
        };
        let info = tokio::process::Command::new(&self.qemu_img)
            .args(["info", "--output=json", "-f", "qcow2"])
            .arg(src)
            .output()
            .await
            .map_err(|e| convert_err(format!("cannot run {}: {e}", self.qemu_img)))?;
        if !info.status.success() {
            return Err(convert_err(
                String::from_utf8_lossy(&info.stderr).trim().to_owned(),
            ));
        }
        let info: serde_json::Value = serde_json::from_slice(&info.stdout)
            .map_err(|e| convert_err(format!("unreadable `qemu-img info`: {e}")))?;
        if info.get("backing-filename").is_some() || info.get("full-backing-filename").is_some() {
            return Err(ImageError::BackingFile { id: id.to_owned() });
        }
        let out = tokio::process::Command::new(&self.qemu_img)
            .args(["convert", "-q", "-f", "qcow2", "-O", "raw", "-S", "4k"])
            .arg(src)
            .arg(dst)
            .output()
            .await
            .map_err(|e| convert_err(format!("cannot run {}: {e}", self.qemu_img)))?;
        if !out.status.success() {
            let message = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            if message.contains("No space left on device") {
                return Err(ImageError::DiskFull {
                    id: id.to_owned(),
                    needed: info["virtual-size"].as_u64().unwrap_or(0),
                    available: crate::sys::fs_space(&self.dir)
                        .map(|s| s.available)
                        .unwrap_or(0),
                });
            }
            return Err(convert_err(message));
        }
        Ok(())
    }

    /// The cached image ids.
    pub fn list(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut ids: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".raw"))
                    .map(str::to_owned)
            })
            .collect();
        ids.sort();
        ids
    }

    /// Removes the cached images that are not `in_use` and were last used
    /// more than `max_age` ago; returns their ids.
    pub async fn cleanup(&self, in_use: &HashSet<String>, max_age: Duration) -> Vec<String> {
        let mut removed = Vec::new();
        for id in self.list() {
            if in_use.contains(&id) {
                continue;
            }
            let _guard = self.locks.lock(&id).await;
            let last_used = std::fs::metadata(self.meta_path(&id))
                .and_then(|m| m.modified())
                .or_else(|_| std::fs::metadata(self.path(&id)).and_then(|m| m.modified()));
            let age = last_used
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .unwrap_or(Duration::MAX);
            if age < max_age {
                continue;
            }
            let _ = std::fs::remove_file(self.path(&id));
            let _ = std::fs::remove_file(self.meta_path(&id));
            tracing::info!(image = %id, unused_s = age.as_secs(), "removed unused image from the cache");
            removed.push(id);
        }
        removed
    }
}

/// Image ids become file names: only ids that are safe as such.
fn check_id(id: &str) -> Result<(), ImageError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ImageError::UnsupportedFormat {
            id: id.to_owned(),
            format: "(an image id that is not a valid file name)".into(),
        })
    }
}

/// A file removed on drop unless kept.
struct Partial(PathBuf);

impl Partial {
    fn new(path: PathBuf) -> Self {
        Self(path)
    }
    fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

enum Hasher {
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
    Md5(Md5),
}

impl Hasher {
    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha384(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
            Hasher::Md5(h) => h.update(data),
        }
    }
    fn finish(self) -> String {
        match self {
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha384(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
            Hasher::Md5(h) => hex::encode(h.finalize()),
        }
    }
}

/// Checks the data against every digest the image has.
struct Verifier {
    checks: Vec<(String, String, Hasher)>,
}

impl Verifier {
    fn new(spec: &ImageSpec) -> Result<Self, ImageError> {
        let mut checks = Vec::new();
        if let Some(value) = spec.os_hash_value.as_deref().filter(|v| !v.is_empty()) {
            let algo = spec
                .os_hash_algo
                .as_deref()
                .unwrap_or("sha512")
                .to_ascii_lowercase();
            let hasher = match algo.as_str() {
                "sha256" => Hasher::Sha256(sha2::Sha256::new()),
                "sha384" => Hasher::Sha384(sha2::Sha384::new()),
                "sha512" => Hasher::Sha512(sha2::Sha512::new()),
                "md5" => Hasher::Md5(Md5::new()),
                _ => {
                    return Err(ImageError::UnsupportedHash {
                        id: spec.id.clone(),
                        algo,
                    });
                }
            };
            checks.push((algo, value.to_ascii_lowercase(), hasher));
        }
        if let Some(md5) = spec.checksum.as_deref().filter(|v| !v.is_empty()) {
            checks.push((
                "md5".into(),
                md5.to_ascii_lowercase(),
                Hasher::Md5(Md5::new()),
            ));
        }
        if checks.is_empty() {
            return Err(ImageError::NoChecksum {
                id: spec.id.clone(),
            });
        }
        Ok(Self { checks })
    }

    fn update(&mut self, data: &[u8]) {
        for (_, _, h) in &mut self.checks {
            h.update(data);
        }
    }

    fn finish(self, id: &str) -> Result<(), ImageError> {
        for (algo, expected, hasher) in self.checks {
            let actual = hasher.finish();
            if actual != expected {
                return Err(ImageError::ChecksumMismatch {
                    id: id.to_owned(),
                    algo,
                    expected,
                    actual,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(data: &[u8]) -> ImageSpec {
        ImageSpec {
            id: "img-1".into(),
            name: "x".into(),
            disk_format: "raw".into(),
            size: data.len() as u64,
            checksum: Some(hex::encode(Md5::digest(data))),
            os_hash_algo: Some("sha512".into()),
            os_hash_value: Some(hex::encode(sha2::Sha512::digest(data))),
            download_url: String::new(),
            download_token: String::new(),
            properties: Default::default(),
        }
    }

    #[test]
    fn verifier_checks_every_digest() {
        let data = b"hello image";
        let mut v = Verifier::new(&spec(data)).unwrap();
        v.update(&data[..5]);
        v.update(&data[5..]);
        v.finish("img-1").unwrap();

        let mut s = spec(data);
        s.checksum = Some("00".repeat(16));
        let mut v = Verifier::new(&s).unwrap();
        v.update(data);
        let e = v.finish("img-1").unwrap_err();
        assert!(
            matches!(&e, ImageError::ChecksumMismatch { algo, .. } if algo == "md5"),
            "{e}"
        );

        let mut s = spec(data);
        s.os_hash_algo = Some("sha256".into());
        let mut v = Verifier::new(&s).unwrap();
        v.update(data);
        let e = v.finish("img-1").unwrap_err();
        assert!(
            matches!(&e, ImageError::ChecksumMismatch { algo, .. } if algo == "sha256"),
            "{e}"
        );
        assert!(!e.retryable());

        let mut s = spec(data);
        s.os_hash_algo = Some("crc32".into());
        assert!(matches!(
            Verifier::new(&s),
            Err(ImageError::UnsupportedHash { .. })
        ));

        let mut s = spec(data);
        s.checksum = None;
        s.os_hash_value = None;
        assert!(matches!(
            Verifier::new(&s),
            Err(ImageError::NoChecksum { .. })
        ));
    }

    #[test]
    fn ids_must_be_safe_file_names() {
        assert!(check_id("5c2e0d3a-1b2c-4d5e-8f90-123456789abc").is_ok());
        for bad in ["", "../etc", ".hidden", "a/b", "a b"] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }
}
