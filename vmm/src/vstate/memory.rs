//! Guest memory: one memfd holding all of the guest's RAM, mapped shared into
//! the VMM, one region per RAM range. A file (rather than anonymous memory) lets
//! a later snapshot or live migration hand the memory over by fd.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestMemoryMmap};

use crate::arch::ram_ranges;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("memfd_create")]
    Memfd(#[source] std::io::Error),
    #[error("sizing the guest memory file to {0} bytes")]
    Size(u64, #[source] std::io::Error),
    #[error("mapping guest memory")]
    Map(#[source] vm_memory::mmap::FromRangesError),
    #[error("guest memory of {0} bytes does not fit this host's address space")]
    TooBig(u64),
}

/// Creates `size` bytes of guest RAM.
pub fn create_guest_memory(size: u64) -> Result<(GuestMemoryMmap, File), MemoryError> {
    let name = CString::new("mica-guest-mem").expect("no NUL");
    // SAFETY: `name` is a valid NUL-terminated string; the flags are valid.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: memfd_create just returned this fd; nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(|e| MemoryError::Size(size, e))?;
    let mut offset = 0u64;
    let mut ranges = Vec::new();
    for (addr, len) in ram_ranges(size) {
        let len_usize = usize::try_from(len).map_err(|_| MemoryError::TooBig(size))?;
        let handle = file.try_clone().map_err(MemoryError::Memfd)?;
        ranges.push((addr, len_usize, Some(FileOffset::new(handle, offset))));
        offset += len;
    }
    let mem = GuestMemoryMmap::from_ranges_with_files(ranges).map_err(MemoryError::Map)?;
    Ok((mem, file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

    #[test]
    fn memory_is_file_backed_and_split_around_the_gap() {
        let (mem, file) = create_guest_memory(64 << 20).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(file.metadata().unwrap().len(), 64 << 20);
        mem.write_obj(0x1234_5678u32, GuestAddress(0x1000)).unwrap();
        // The write is visible through the file.
        use std::os::unix::fs::FileExt;
        let mut b = [0u8; 4];
        file.read_exact_at(&mut b, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(b), 0x1234_5678);
    }
}
