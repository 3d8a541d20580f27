//! The Linux 64-bit boot protocol: kernel (vmlinux ELF or bzImage), initrd,
//! command line and the zero page (`struct boot_params`) with the e820 map.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::Path;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, screen_info, setup_header};
use linux_loader::loader::{BzImage, Cmdline, Elf, KernelLoader, load_cmdline};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::{
    CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, INITRD_MAX_END, MMIO_GAP_START, ZERO_PAGE_START,
    e820_map,
};

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot read {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot load the kernel {path} (not a 64-bit vmlinux or bzImage, or too big for the guest memory)"
    )]
    Kernel {
        path: String,
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error(
        "the bzImage {0} has no 64-bit entry point (boot protocol 2.12+ with XLF_KERNEL_64 needed)"
    )]
    No64BitEntry(String),
    #[error("the initrd {path} ({size} bytes) does not fit in guest memory above the kernel")]
    InitrdTooBig { path: String, size: u64 },
    #[error("cannot load the initrd {path} into guest memory")]
    InitrdLoad {
        path: String,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("writing the command line to guest memory")]
    CmdlineLoad(#[source] linux_loader::loader::Error),
    #[error("writing the zero page to guest memory")]
    ZeroPage(#[source] vm_memory::GuestMemoryError),
}

/// Magic of the setup header ("HdrS").
const HDR_MAGIC: u32 = 0x5372_6448;
const BOOT_FLAG: u16 = 0xaa55;
/// `type_of_loader` for a loader without an assigned id.
const LOADER_UNDEFINED: u8 = 0xff;
/// `xloadflags` bit: the kernel has a 64-bit entry point at load address + 0x200.
const XLF_KERNEL_64: u16 = 1;
/// Offset of a bzImage's 64-bit entry point from its load address.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// A kernel in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Where the boot vCPU starts, in long mode.
    pub entry: GuestAddress,
    /// End of the kernel image (the initrd must stay above it).
    pub end: u64,
    /// A bzImage's setup header (none for a vmlinux).
    pub setup_header: Option<setup_header>,
}

fn open(path: &Path) -> Result<File, BootError> {
    File::open(path).map_err(|source| BootError::Open {
        path: path.display().to_string(),
        source,
    })
}

/// Loads a vmlinux (ELF) or bzImage into guest memory.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let mut file = open(path)?;
    let mut magic = [0u8; 4];
    let is_elf = file.read_exact(&mut magic).is_ok() && magic == *b"\x7fELF";
    let _ = file.seek(SeekFrom::Start(0));
    let err = |source| BootError::Kernel {
        path: path.display().to_string(),
        source,
    };
    if is_elf {
        let r = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(err)?;
        Ok(LoadedKernel {
            entry: r.kernel_load,
            end: r.kernel_end,
            setup_header: None,
        })
    } else {
        let r =
            BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(err)?;
        let hdr = r
            .setup_header
            .expect("the bzImage loader returns its setup header");
        let (version, xloadflags) = (hdr.version, hdr.xloadflags);
        if version < 0x020c || xloadflags & XLF_KERNEL_64 == 0 {
            return Err(BootError::No64BitEntry(path.display().to_string()));
        }
        Ok(LoadedKernel {
            entry: GuestAddress(r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET),
            end: r.kernel_end,
            setup_header: Some(hdr),
        })
    }
}

/// Where an initrd of `size` bytes goes: page-aligned at the top of the RAM below
/// `max_end`, above the kernel. `None` if it does not fit.
pub fn initrd_address(mem_size: u64, kernel_end: u64, max_end: u64, size: u64) -> Option<u64> {
    let top = mem_size.min(MMIO_GAP_START).min(max_end);
    let addr = top.checked_sub(size)? & !0xfff;
    let kernel_end_page = kernel_end.checked_add(0xfff)? & !0xfff;
    (addr >= kernel_end_page).then_some(addr)
}

/// Loads the initrd; returns its address and size.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel: &LoadedKernel,
) -> Result<(u64, u64), BootError> {
    let mut file = open(path)?;
    let size = file
        .metadata()
        .map_err(|source| BootError::Open {
            path: path.display().to_string(),
            source,
        })?
        .len();
    let max_end = match kernel.setup_header {
        Some(hdr) if hdr.initrd_addr_max != 0 => u64::from(hdr.initrd_addr_max) + 1,
        _ => INITRD_MAX_END,
    };
    let mem_size = mem.last_addr().0 + 1;
    let addr = initrd_address(mem_size, kernel.end, max_end, size).ok_or_else(|| {
        BootError::InitrdTooBig {
            path: path.display().to_string(),
            size,
        }
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|source| BootError::InitrdLoad {
            path: path.display().to_string(),
            source,
        })?;
    Ok((addr, size))
}

/// Writes the command line; returns its length (without the NUL).
pub fn load_command_line(mem: &GuestMemoryMmap, cmdline: &str) -> Result<usize, BootError> {
    let c = Cmdline::try_from(cmdline, CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &c).map_err(BootError::CmdlineLoad)?;
    Ok(cmdline.len())
}

/// Builds the zero page; `screen` describes the framebuffer, if any.
pub fn zero_page(
    kernel: &LoadedKernel,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
    mem_size: u64,
    rsdp: u64,
    screen: Option<screen_info>,
) -> boot_params {
    let mut params = boot_params::default();
    if let Some(screen) = screen {
        params.screen_info = screen;
    }
    match kernel.setup_header {
        Some(hdr) => params.hdr = hdr,
        None => {
            params.hdr.boot_flag = BOOT_FLAG;
            params.hdr.header = HDR_MAGIC;
            params.hdr.kernel_alignment = 0x0100_0000;
        }
    }
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    params.acpi_rsdp_addr = rsdp;
    let map = e820_map(mem_size);
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = map.len() as u8;
    params
}

/// Writes the zero page to guest memory.
pub fn write_zero_page(mem: &GuestMemoryMmap, params: boot_params) -> Result<(), BootError> {
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(BootError::ZeroPage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initrd_goes_to_the_top_and_never_over_the_kernel() {
        let mib = 1u64 << 20;
        assert_eq!(
            initrd_address(256 * mib, 20 * mib, INITRD_MAX_END, 10 * mib + 1),
            Some((246 * mib - 1) & !0xfff)
        );
        // Memory above 2 GiB: capped below the initrd limit.
        assert_eq!(
            initrd_address(4096 * mib, 20 * mib, INITRD_MAX_END, mib),
            Some(INITRD_MAX_END - mib)
        );
        assert_eq!(
            initrd_address(64 * mib, 20 * mib, INITRD_MAX_END, 50 * mib),
            None
        );
        assert_eq!(initrd_address(64 * mib, 0, INITRD_MAX_END, 65 * mib), None);
    }

    #[test]
    fn zero_page_of_a_vmlinux() {
        let k = LoadedKernel {
            entry: GuestAddress(0x100_0000),
            end: 0x200_0000,
            setup_header: None,
        };
        let p = zero_page(&k, 42, Some((0x800_0000, 0x1000)), 256 << 20, 0xe0000, None);
        let (magic, flag, loader) = (p.hdr.header, p.hdr.boot_flag, p.hdr.type_of_loader);
        assert_eq!((magic, flag, loader), (HDR_MAGIC, BOOT_FLAG, 0xff));
        let (ptr, size, rd) = (p.hdr.cmd_line_ptr, p.hdr.cmdline_size, p.hdr.ramdisk_image);
        assert_eq!((ptr, size, rd), (CMDLINE_START as u32, 42, 0x800_0000));
        let rsdp = p.acpi_rsdp_addr;
        assert_eq!(rsdp, 0xe0000);
        assert_eq!(p.e820_entries, 3);
    }
}
