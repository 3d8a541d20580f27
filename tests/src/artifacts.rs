//! Locations of the artifacts `make setup` builds. Each build script answers
//! `--print-dir` with the cache folder keyed by its inputs, so a test always uses
//! the artifacts that match the checkout it runs from.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

fn print_dir(script: &str) -> Result<PathBuf> {
    let path = crate::repo_root().join(script);
    let out = Command::new(&path)
        .arg("--print-dir")
        .output()
        .with_context(|| format!("running {}", path.display()))?;
    if !out.status.success() {
        bail!(
            "{} --print-dir failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

fn existing(dir: PathBuf, files: &[&str]) -> Result<PathBuf> {
    for f in files {
        if !dir.join(f).exists() {
            bail!("{} is missing (run `make setup`)", dir.join(f).display());
        }
    }
    Ok(dir)
}

/// The guest kernel built from `kernels/microvm.config`.
#[derive(Debug, Clone)]
pub struct GuestKernel {
    pub dir: PathBuf,
}

impl GuestKernel {
    pub fn locate() -> Result<Self> {
        let dir = existing(
            print_dir("kernels/build.sh")?,
            &["vmlinux", "bzImage", "config"],
        )?;
        Ok(Self { dir })
    }
    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }
    pub fn bzimage(&self) -> PathBuf {
        self.dir.join("bzImage")
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("config")
    }
}

/// The guest images built by `guest-tools/images/build.sh`.
#[derive(Debug, Clone)]
pub struct GuestImages {
    pub dir: PathBuf,
}

impl GuestImages {
    pub fn locate() -> Result<Self> {
        let dir = existing(
            print_dir("guest-tools/images/build.sh")?,
            &[
                "tiny.ext4",
                "tiny.initramfs",
                "stock/vmlinuz",
                "stock/initramfs",
            ],
        )?;
        Ok(Self { dir })
    }
    pub fn tiny_ext4(&self) -> PathBuf {
        self.dir.join("tiny.ext4")
    }
    pub fn tiny_initramfs(&self) -> PathBuf {
        self.dir.join("tiny.initramfs")
    }
    pub fn stock_kernel(&self) -> PathBuf {
        self.dir.join("stock/vmlinuz")
    }
    pub fn stock_initramfs(&self) -> PathBuf {
        self.dir.join("stock/initramfs")
    }
}

/// The nested test host's kernel, initramfs and module tree.
#[derive(Debug, Clone)]
pub struct NestedArtifacts {
    pub dir: PathBuf,
}

impl NestedArtifacts {
    pub fn locate() -> Result<Self> {
        let dir = existing(
            print_dir("tests/nested/build.sh")?,
            &["vmlinux", "initramfs", "modules"],
        )?;
        Ok(Self { dir })
    }
    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }
    pub fn initramfs(&self) -> PathBuf {
        self.dir.join("initramfs")
    }
    pub fn modules(&self) -> PathBuf {
        self.dir.join("modules")
    }
}

/// The stub guest (tests/stub/stub.S), assembled by this crate's build script.
pub fn stub_guest() -> &'static Path {
    Path::new(env!("MICA_STUB_GUEST"))
}

/// The idle stub guest (tests/stub/idle.S): prints `MICA-IDLE-READY` and halts.
pub fn idle_guest() -> &'static Path {
    Path::new(env!("MICA_IDLE_GUEST"))
}

/// The counter stub guest (tests/stub/counter.S): prints `tick N` lines forever.
pub fn counter_guest() -> &'static Path {
    Path::new(env!("MICA_COUNTER_GUEST"))
}

/// The reset stub guest (tests/stub/reset.S): resets through the i8042.
pub fn reset_guest() -> &'static Path {
    Path::new(env!("MICA_RESET_GUEST"))
}

/// The framebuffer stub guest (tests/stub/fb.S): draws a test pattern, then
/// echoes keys, ticks, scrolls or idles as its command line's first byte says.
pub fn fb_guest() -> &'static Path {
    Path::new(env!("MICA_FB_GUEST"))
}

/// A binary of this workspace, built by cargo in the same profile as the test
/// (`target/<profile>/<name>`).
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    // Test binaries live in target/<profile>/deps/.
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary has no target/<profile> folder")?;
    let bin = profile_dir.join(name);
    if !bin.exists() {
        bail!(
            "{} is not built (cargo build -p {name} --bins)",
            bin.display()
        );
    }
    Ok(bin)
}
