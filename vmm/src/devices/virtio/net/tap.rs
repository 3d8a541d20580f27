//! A host tap device opened with a virtio-net header on every frame
//! (IFF_VNET_HDR), so the guest's checksum and segmentation offloads pass
//! through the host kernel unchanged.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use vmm_sys_util::ioctl_iow_nr;

const TUNTAP: u32 = b'T' as u32;
ioctl_iow_nr!(TUNSETIFF, TUNTAP, 202, ::std::os::raw::c_int);
ioctl_iow_nr!(TUNSETOFFLOAD, TUNTAP, 208, ::std::os::raw::c_uint);
ioctl_iow_nr!(TUNSETVNETHDRSZ, TUNTAP, 216, ::std::os::raw::c_int);

const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;

/// Offloads the tap may hand to the guest (TUNSETOFFLOAD).
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;

/// struct virtio_net_hdr_v1 (what VIRTIO_F_VERSION_1 drivers use).
pub const VNET_HDR_LEN: usize = 12;

/// struct ifreq, as far as TUNSETIFF reads it.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("cannot open /dev/net/tun")]
    OpenTun(#[source] std::io::Error),
    #[error("cannot attach to tap {name:?} (TUNSETIFF)")]
    SetIff {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set the virtio-net header size of tap {name:?}")]
    VnetHdr {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set the offloads of tap {name:?}")]
    Offload {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// An open tap device (non-blocking).
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    pub fn open(name: &str) -> Result<Self, TapError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        let n = name.len().min(15);
        req.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        // SAFETY: TUNSETIFF reads and writes a struct ifreq; `req` has its
        // layout and size and outlives the call. The fd is a tun device we own.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF(), &mut req as *mut IfReq) };
        if ret < 0 {
            return Err(TapError::SetIff {
                name: name.to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which points
        // at a live local.
        let ret = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                TUNSETVNETHDRSZ(),
                &hdr_len as *const libc::c_int,
            )
        };
        if ret < 0 {
            return Err(TapError::VnetHdr {
                name: name.to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
        let tap = Self {
            file,
            name: name.to_string(),
        };
        tap.set_offload(0)?;
        Ok(tap)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which offloaded frames (TUN_F_*) the tap may deliver to the guest.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; the fd is ours.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD(),
                libc::c_ulong::from(flags),
            )
        };
        if ret < 0 {
            return Err(TapError::Offload {
                name: self.name.clone(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Reads one frame (with its virtio-net header).
    pub fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }

    /// Writes one frame (with its virtio-net header).
    pub fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        self.file.write(frame)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
