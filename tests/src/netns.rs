//! Two network namespaces of a test's own joined by a veth pair, as a
//! guest and its network's gateway see each other: for tests and
//! benchmarks of what listens in an isolated network's namespace (the
//! metadata proxy) without a VM. Needs root; nothing outside the two
//! namespaces is touched, and both go when the value is dropped.
//!
//! ```text
//!   <name>-gw:     gw  10.9.0.1/24, 169.254.169.254/32
//!                   │ veth
//!   <name>-guest:  eth0 10.9.0.5/24 (and .6), default via 10.9.0.1
//! ```

use std::process::Command;

use anyhow::{Context, Result, bail};

/// The gateway's address.
pub const GATEWAY: &str = "10.9.0.1";
/// The guest's addresses.
pub const GUESTS: [&str; 2] = ["10.9.0.5", "10.9.0.6"];

/// See the module docs.
pub struct NetnsPair {
    pub gateway: String,
    pub guest: String,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl NetnsPair {
    /// Makes `<name>-gw` and `<name>-guest` (a unique `name` per test).
    pub fn new(name: &str) -> Result<NetnsPair> {
        let pair = NetnsPair {
            gateway: format!("{name}-gw"),
            guest: format!("{name}-guest"),
        };
        // Left over from a killed run: gone first.
        for ns in [&pair.gateway, &pair.guest] {
            let _ = ip(&["netns", "del", ns]);
            ip(&["netns", "add", ns])?;
        }
        ip(&[
            "-n",
            &pair.gateway,
            "link",
            "add",
            "gw",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &pair.guest,
        ])?;
        let (gw, guest) = (pair.gateway.as_str(), pair.guest.as_str());
        for (ns, cmd) in [
            (gw, "link set lo up"),
            (gw, "link set gw up"),
            (gw, "addr add 10.9.0.1/24 dev gw"),
            (gw, "addr add 169.254.169.254/32 dev gw"),
            (guest, "link set lo up"),
            (guest, "link set eth0 up"),
            (guest, "addr add 10.9.0.5/24 dev eth0"),
            (guest, "addr add 10.9.0.6/24 dev eth0"),
            (guest, "route add default via 10.9.0.1"),
        ] {
            let mut args = vec!["-n", ns];
            args.extend(cmd.split(' '));
            ip(&args)?;
        }
        Ok(pair)
    }

    /// Runs `f` on a thread inside namespace `ns` (a socket made there
    /// belongs to it) and returns what it returns.
    pub fn within<T: Send + 'static>(
        ns: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || -> Result<T> {
            use std::os::fd::AsRawFd as _;
            let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            // SAFETY: setns on a descriptor we own, for this thread only.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("setns");
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread in {ns} panicked"))?
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.gateway, &self.guest] {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}
