//! Instance disks. mica-vmm serves raw files, so the root disk is a sparse
//! copy of the cached raw image (only the image's data extents are copied,
//! with `copy_file_range`, which reflinks where the file system can), grown to
//! the flavor's `root_gb`; the ephemeral and swap disks are sparse files,
//! formatted (`mkfs.ext4 -L ephemeral0`, `mkswap`) like Nova's.
//!
//! The file system inside the root disk is not grown: guests do that
//! themselves (cloud-init's growpart), as with Nova.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::config::EphemeralFormat;

pub const GIB: u64 = 1 << 30;
pub const MIB: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(
        "Flavor's disk is too small for requested image: the image is {image_bytes} bytes, the flavor's root disk {root_gb} GB"
    )]
    FlavorTooSmall { image_bytes: u64, root_gb: u64 },
    #[error(
        "not enough disk space on the host for the instance's disks: {needed} bytes needed, {available} available"
    )]
    DiskFull { needed: u64, available: u64 },
    #[error("disk {path}: {op}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("formatting {path} failed: {message}")]
    Format { path: PathBuf, message: String },
}

impl DiskError {
    pub fn is_disk_full(&self) -> bool {
        matches!(self, DiskError::DiskFull { .. })
    }

    fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DiskError {
        let path = path.to_owned();
        move |source| {
            if source.raw_os_error() == Some(libc::ENOSPC) {
                let available = path
                    .parent()
                    .and_then(|p| crate::sys::fs_space(p).ok())
                    .map_or(0, |s| s.available);
                DiskError::DiskFull {
                    needed: 0,
                    available,
                }
            } else {
                DiskError::Io { op, path, source }
            }
        }
    }
}

/// The size of a root disk: the flavor's `root_gb`, or the image's own size
/// when `root_gb` is 0 (Nova's rule for such flavors). An image larger than
/// the flavor's disk is refused, as Nova refuses it.
pub fn root_disk_size(image_bytes: u64, root_gb: u64) -> Result<u64, DiskError> {
    if root_gb == 0 {
        return Ok(image_bytes);
    }
    let size = root_gb * GIB;
    if image_bytes > size {
        return Err(DiskError::FlavorTooSmall {
            image_bytes,
            root_gb,
        });
    }
    Ok(size)
}

/// Bytes of real data in a file (what a sparse copy needs).
pub fn allocated_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(std::fs::metadata(path)?.blocks() * 512)
}

/// Makes `dest` (which must not exist) a sparse copy of `image`, `size`
/// bytes long. Checks first that the file system has room for the image's
/// data.
pub fn create_root_disk(image: &Path, dest: &Path, size: u64) -> Result<(), DiskError> {
    let needed = allocated_bytes(image).map_err(DiskError::io("reading", image))?;
    ensure_space(dest, needed)?;
    let src = File::open(image).map_err(DiskError::io("opening", image))?;
    let dst = File::options()
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(DiskError::io("creating", dest))?;
    sparse_copy(&src, &dst).map_err(DiskError::io("copying the image to", dest))?;
    let len = src
        .metadata()
        .map_err(DiskError::io("reading", image))?
        .len();
    dst.set_len(size.max(len))
        .map_err(DiskError::io("growing", dest))?;
    dst.sync_all().map_err(DiskError::io("syncing", dest))?;
    Ok(())
}

/// Copies the data extents of `src` into `dst` at the same offsets; holes
/// stay holes.
pub fn sparse_copy(src: &File, dst: &File) -> io::Result<()> {
    let len = src.metadata()?.len();
    let mut offset: i64 = 0;
    while (offset as u64) < len {
        // SAFETY: lseek on a descriptor we own; no memory involved.
        let data = unsafe { libc::lseek(src.as_raw_fd(), offset, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole is left
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(src.as_raw_fd(), data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut off_in = data;
        let mut off_out = data;
        let mut left = (hole - data) as usize;
        while left > 0 {
            // SAFETY: copy_file_range between two descriptors we own, with
            // offsets that point to live i64s; it never touches our memory
            // otherwise.
            let n = unsafe {
                libc::copy_file_range(
                    src.as_raw_fd(),
                    &mut off_in,
                    dst.as_raw_fd(),
                    &mut off_out,
                    left,
                    0,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the image shrank while it was copied",
                ));
            }
            left -= n as usize;
        }
        offset = hole;
    }
    Ok(())
}

/// Fails with [`DiskError::DiskFull`] unless `needed` bytes are free where
/// `path` lives.
pub fn ensure_space(path: &Path, needed: u64) -> Result<(), DiskError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let space = crate::sys::fs_space(dir).map_err(DiskError::io("measuring", dir))?;
    if needed > space.available {
        return Err(DiskError::DiskFull {
            needed,
            available: space.available,
        });
    }
    Ok(())
}

/// A sparse file of `size` bytes.
pub fn create_sparse(path: &Path, size: u64) -> Result<(), DiskError> {
    let f = File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(DiskError::io("creating", path))?;
    f.set_len(size).map_err(DiskError::io("sizing", path))?;
    Ok(())
}

/// The flavor's ephemeral disk: `gb` GiB, formatted as configured.
pub async fn create_ephemeral(
    path: &Path,
    gb: u64,
    format: EphemeralFormat,
) -> Result<(), DiskError> {
    create_sparse(path, gb * GIB)?;
    match format {
        EphemeralFormat::None => Ok(()),
        EphemeralFormat::Ext4 => {
            run_format(
                path,
                "mkfs.ext4",
                &["-q", "-F", "-L", "ephemeral0", "-E", "nodiscard"],
            )
            .await
        }
        EphemeralFormat::Vfat => run_format(path, "mkfs.vfat", &["-n", "ephemeral0"]).await,
    }
}

/// The flavor's swap disk: `mb` MiB, with a swap signature.
pub async fn create_swap(path: &Path, mb: u64) -> Result<(), DiskError> {
    create_sparse(path, mb * MIB)?;
    run_format(path, "mkswap", &["-L", "swap0"]).await
}

async fn run_format(path: &Path, tool: &str, args: &[&str]) -> Result<(), DiskError> {
    let out = tokio::process::Command::new(tool)
        .args(args)
        .arg(path)
        .output()
        .await
        .map_err(|e| DiskError::Format {
            path: path.to_owned(),
            message: format!("cannot run {tool}: {e}"),
        })?;
    if !out.status.success() {
        let message = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if message.contains("No space left") {
            return Err(DiskError::DiskFull {
                needed: 0,
                available: path
                    .parent()
                    .and_then(|p| crate::sys::fs_space(p).ok())
                    .map_or(0, |s| s.available),
            });
        }
        return Err(DiskError::Format {
            path: path.to_owned(),
            message: format!("{tool}: {message}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};

    #[test]
    fn root_disk_sizes_follow_novas_rules() {
        assert_eq!(root_disk_size(64 * MIB, 1).unwrap(), GIB);
        assert_eq!(root_disk_size(GIB, 1).unwrap(), GIB);
        assert_eq!(root_disk_size(64 * MIB, 0).unwrap(), 64 * MIB);
        let e = root_disk_size(GIB + 1, 1).unwrap_err();
        assert!(matches!(e, DiskError::FlavorTooSmall { .. }));
        assert!(e.to_string().starts_with("Flavor's disk is too small"));
    }

    #[test]
    fn the_root_disk_is_a_sparse_copy_grown_to_size() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image.raw");
        // 8 MiB with data at 0 and at 6 MiB, a hole between.
        {
            let mut f = File::create(&image).unwrap();
            f.write_all(b"BOOT").unwrap();
            f.seek(SeekFrom::Start(6 * MIB)).unwrap();
            f.write_all(&[0xAB; 4096]).unwrap();
            f.set_len(8 * MIB).unwrap();
        }
        let root = dir.path().join("root.raw");
        create_root_disk(&image, &root, GIB).unwrap();
        let meta = std::fs::metadata(&root).unwrap();
        assert_eq!(meta.len(), GIB);
        // Sparse: far less than a GiB (and than the image's 8 MiB) on disk.
        assert!(
            allocated_bytes(&root).unwrap() < 2 * MIB,
            "{}",
            allocated_bytes(&root).unwrap()
        );
        let mut f = File::open(&root).unwrap();
        let mut head = [0u8; 4];
        f.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"BOOT");
        f.seek(SeekFrom::Start(6 * MIB)).unwrap();
        let mut block = vec![0u8; 4096];
        f.read_exact(&mut block).unwrap();
        assert!(block.iter().all(|b| *b == 0xAB));
        f.seek(SeekFrom::Start(3 * MIB)).unwrap();
        f.read_exact(&mut block).unwrap();
        assert!(block.iter().all(|b| *b == 0));
        // Never over an existing disk.
        assert!(create_root_disk(&image, &root, GIB).is_err());
    }

    #[test]
    fn no_room_is_a_disk_full_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = ensure_space(&dir.path().join("x"), u64::MAX).unwrap_err();
        assert!(e.is_disk_full(), "{e}");
        assert!(e.to_string().contains("not enough disk space"), "{e}");
        ensure_space(&dir.path().join("x"), 1).unwrap();
    }

    #[tokio::test]
    async fn ephemeral_and_swap_disks_are_formatted() {
        let dir = tempfile::tempdir().unwrap();
        let eph = dir.path().join("ephemeral.raw");
        create_ephemeral(&eph, 1, EphemeralFormat::Ext4)
            .await
            .unwrap();
        assert_eq!(std::fs::metadata(&eph).unwrap().len(), GIB);
        // The ext4 superblock magic 0xEF53 at 1024 + 56, and the label.
        let mut sb = vec![0u8; 2048];
        File::open(&eph).unwrap().read_exact(&mut sb).unwrap();
        assert_eq!(&sb[1024 + 56..1024 + 58], &[0x53, 0xEF]);
        assert_eq!(&sb[1024 + 120..1024 + 130], b"ephemeral0");

        let swap = dir.path().join("swap.raw");
        create_swap(&swap, 16).await.unwrap();
        let mut page = vec![0u8; 4096];
        File::open(&swap).unwrap().read_exact(&mut page).unwrap();
        assert_eq!(&page[4086..4096], b"SWAPSPACE2");
    }
}
