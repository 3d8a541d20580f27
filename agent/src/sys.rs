//! The few system calls the agent makes directly: file system space, process
//! file descriptors (to watch and signal VMMs that are not our children
//! without pid-reuse races), and starting a process in a session of its own.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

/// Space on the file system holding a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSpace {
    /// Bytes in the file system.
    pub total: u64,
    /// Bytes an unprivileged writer may still use.
    pub available: u64,
    /// Bytes free (including those reserved for root).
    pub free: u64,
}

/// `statvfs(path)`.
pub fn fs_space(path: &Path) -> io::Result<FsSpace> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated string and `st` points to a
    // writable statvfs; the kernel fills it on success.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so the structure is initialized (and it
    // was zeroed before anyway).
    let st = unsafe { st.assume_init() };
    let unit = st.f_frsize;
    Ok(FsSpace {
        total: st.f_blocks * unit,
        available: st.f_bavail * unit,
        free: st.f_bfree * unit,
    })
}

/// A process file descriptor (`pidfd_open`): readable once the process has
/// exited; signals sent through it cannot reach a later process that reuses
/// the pid.
#[derive(Debug)]
pub struct PidFd {
    fd: OwnedFd,
    pid: u32,
}

impl PidFd {
    /// Opens `pid`. Fails with `ESRCH` if no such process exists.
    pub fn open(pid: u32) -> io::Result<PidFd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new file
        // descriptor or -1; no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor to us; nobody
        // else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        Ok(PidFd { fd, pid })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `signal` to the process (`pidfd_send_signal`). A process that
    /// already exited gives `ESRCH`.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        // SAFETY: pidfd_send_signal with a descriptor we own, a signal
        // number, a null siginfo (as kill(2) would send) and no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// True once the process has exited (the descriptor polls readable).
    pub fn exited(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, a zero timeout.
        let rc = unsafe { libc::poll(&mut p, 1, 0) };
        rc > 0 && (p.revents & libc::POLLIN) != 0
    }
}

impl AsRawFd for PidFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for PidFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Makes `cmd` start its process in a new session (`setsid`), with no
/// controlling terminal and its own process group: it outlives the agent and
/// signals aimed at the agent's group do not reach it.
pub fn new_session(cmd: &mut std::process::Command) {
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls setsid(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sends `signal` to `pid` (for processes without a pidfd, such as dnsmasq).
pub fn kill(pid: u32, signal: i32) -> io::Result<()> {
    // SAFETY: kill(2) takes plain integers.
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The `N`th field of `/proc/<pid>/stat` after the command name (field 3 is
/// index 0): used to tell zombies (`Z`) apart.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(") ")?.1;
    after.chars().next()
}

/// A process's command line, arguments joined by spaces.
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_space_of_a_temporary_folder() {
        let dir = tempfile::tempdir().unwrap();
        let s = fs_space(dir.path()).unwrap();
        assert!(s.total > 0 && s.available <= s.free && s.free <= s.total);
    }

    #[test]
    fn pidfd_sees_a_child_exit_and_signals_it() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let fd = PidFd::open(child.id()).unwrap();
        assert!(!fd.exited());
        assert!(matches!(process_state(child.id()), Some(s) if s != 'Z'));
        fd.signal(libc::SIGKILL).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        assert!(fd.exited());
        // Reaped: signalling through the descriptor is an error, never
        // another process.
        assert!(fd.signal(libc::SIGKILL).is_err());
    }
}
