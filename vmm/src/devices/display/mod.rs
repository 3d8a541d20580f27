//! The guest's screen: a linear framebuffer in a guest memory slot of its own
//! (at [`FRAMEBUFFER_START`], in the MMIO gap, never in the e820 RAM map),
//! announced through `boot_params.screen_info` as an EFI framebuffer, which
//! both Linux's `simple-framebuffer` (through `CONFIG_SYSFB_SIMPLEFB`) and
//! `efifb` drivers take.
//!
//! The memory lives as long as the process, so VNC viewers keep their screen
//! across a reboot; each boot registers it with its VM with KVM's dirty-page
//! log on, which the RFB server ([`crate::vnc`]) reads to find what changed.
//!
//! Pixel format: 32 bits per pixel, little-endian `x8r8g8b8` (blue in the low
//! byte), `width * 4` bytes per line.

pub mod keymap;

use linux_loader::loader::bootparam::screen_info;
use vm_memory::VolatileSlice;

use crate::arch::{FRAMEBUFFER_MAX_SIZE, FRAMEBUFFER_START};

/// `screen_info.orig_video_isVGA` of an EFI GOP framebuffer (`lfb_size` in
/// bytes, unlike VESA's 64 KiB units).
pub const VIDEO_TYPE_EFI: u8 = 0x70;
/// `screen_info.capabilities`: `ext_lfb_base` holds the base's upper 32 bits.
pub const VIDEO_CAPABILITY_64BIT_BASE: u32 = 1 << 1;
/// The KVM memory slot of the framebuffer (RAM takes slots 0 and 1).
pub const FRAMEBUFFER_SLOT: u32 = 8;
pub const BYTES_PER_PIXEL: u32 = 4;
/// Smallest and largest sides accepted by the configuration.
pub const MIN_SIDE: u32 = 64;
pub const MAX_SIDE: u32 = 8192;
const PAGE_SIZE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum FramebufferError {
    #[error("cannot map {0} bytes of framebuffer memory")]
    Map(usize, #[source] std::io::Error),
}

/// The framebuffer's memory, mapped shared and anonymous in the VMM.
pub struct Framebuffer {
    ptr: *mut u8,
    /// The mapping's length: the frame rounded up to whole pages.
    len: usize,
    pub width: u32,
    pub height: u32,
}

// SAFETY: the mapping is plain memory owned by this value; every access goes
// through volatile copies, which are fine from any thread.
unsafe impl Send for Framebuffer {}
// SAFETY: as above; concurrent volatile reads and writes of plain bytes.
unsafe impl Sync for Framebuffer {}

impl Framebuffer {
    /// Maps a zeroed `width` × `height` framebuffer (the configuration checked
    /// that it fits [`FRAMEBUFFER_MAX_SIZE`]).
    pub fn new(width: u32, height: u32) -> Result<Self, FramebufferError> {
        let frame = width as usize * height as usize * BYTES_PER_PIXEL as usize;
        let len = frame.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        debug_assert!(len as u64 <= FRAMEBUFFER_MAX_SIZE);
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(FramebufferError::Map(len, std::io::Error::last_os_error()));
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
            width,
            height,
        })
    }

    /// Bytes per line.
    pub fn stride(&self) -> u32 {
        self.width * BYTES_PER_PIXEL
    }

    /// The mapping's length (a whole number of pages), as KVM's slot.
    pub fn mapped_len(&self) -> usize {
        self.len
    }

    /// The mapping's host address, for KVM's slot.
    pub fn host_address(&self) -> u64 {
        self.ptr as u64
    }

    pub fn guest_address(&self) -> u64 {
        FRAMEBUFFER_START
    }

    fn slice(&self) -> VolatileSlice<'_> {
        // SAFETY: `ptr` is a live mapping of `len` bytes for as long as `self`.
        unsafe { VolatileSlice::new(self.ptr, self.len) }
    }

    /// Copies pixels `x0..x0 + out.len()` of line `y` into `out`.
    pub fn read_pixels(&self, x0: u32, y: u32, out: &mut [u32]) {
        debug_assert!(y < self.height && x0 as usize + out.len() <= self.width as usize);
        let offset = y as usize * self.stride() as usize + x0 as usize * 4;
        if let Ok(s) = self.slice().subslice(offset, out.len() * 4) {
            s.copy_to(out);
        }
    }

    /// Writes pixels at line `y` from `x0` (tests, and clearing).
    pub fn write_pixels(&self, x0: u32, y: u32, pixels: &[u32]) {
        let offset = y as usize * self.stride() as usize + x0 as usize * 4;
        if let Ok(s) = self.slice().subslice(offset, pixels.len() * 4) {
            s.copy_from(pixels);
        }
    }

    /// Blacks the screen out (a new boot starts on a blank screen).
    pub fn clear(&self) {
        let zeros = vec![0u32; self.width as usize];
        for y in 0..self.height {
            self.write_pixels(0, y, &zeros);
        }
    }

    /// The lines (`first..=last`) that guest page `page` of the slot covers,
    /// or `None` past the frame.
    pub fn lines_of_page(&self, page: usize) -> Option<(u32, u32)> {
        let start = page * PAGE_SIZE;
        let stride = self.stride() as usize;
        let frame = stride * self.height as usize;
        if start >= frame {
            return None;
        }
        let end = (start + PAGE_SIZE).min(frame) - 1;
        Some(((start / stride) as u32, (end / stride) as u32))
    }

    /// What the guest's boot parameters say about this screen.
    pub fn screen_info(&self) -> screen_info {
        let base = self.guest_address();
        let mut si = screen_info {
            orig_video_isVGA: VIDEO_TYPE_EFI,
            lfb_width: self.width as u16,
            lfb_height: self.height as u16,
            lfb_depth: 32,
            lfb_base: base as u32,
            lfb_size: (self.width * self.height * BYTES_PER_PIXEL),
            lfb_linelength: self.stride() as u16,
            red_size: 8,
            red_pos: 16,
            green_size: 8,
            green_pos: 8,
            blue_size: 8,
            blue_pos: 0,
            rsvd_size: 0,
            rsvd_pos: 0,
            pages: 1,
            ..Default::default()
        };
        if base >> 32 != 0 {
            si.capabilities |= VIDEO_CAPABILITY_64BIT_BASE;
            si.ext_lfb_base = (base >> 32) as u32;
        }
        si
    }
}

impl Drop for Framebuffer {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; KVM slots that
        // pointed at it belonged to VMs closed before the process drops this.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn screen_info_describes_an_x8r8g8b8_efi_framebuffer() {
        let fb = Framebuffer::new(1024, 768).unwrap();
        let si = fb.screen_info();
        let (kind, w, h, depth) = (
            si.orig_video_isVGA,
            si.lfb_width,
            si.lfb_height,
            si.lfb_depth,
        );
        assert_eq!((kind, w, h, depth), (VIDEO_TYPE_EFI, 1024, 768, 32));
        let (base, size, line, caps) =
            (si.lfb_base, si.lfb_size, si.lfb_linelength, si.capabilities);
        assert_eq!((base, size, line, caps), (0xd000_0000, 3 << 20, 4096, 0));
        assert_eq!((si.red_pos, si.green_pos, si.blue_pos), (16, 8, 0));
        assert_eq!(fb.mapped_len(), 3 << 20);
    }

    #[test]
    fn pages_map_to_lines_and_pixels_round_trip() {
        let fb = Framebuffer::new(100, 50).unwrap();
        // 400 bytes per line: page 0 is lines 0..=10, page 4 the last lines.
        assert_eq!(fb.lines_of_page(0), Some((0, 10)));
        assert_eq!(fb.lines_of_page(1), Some((10, 20)));
        assert_eq!(fb.lines_of_page(4), Some((40, 49)));
        assert_eq!(fb.lines_of_page(5), None);
        fb.write_pixels(98, 49, &[1, 2]);
        let mut px = [0u32; 3];
        fb.read_pixels(97, 49, &mut px);
        assert_eq!(px, [0, 1, 2]);
        fb.clear();
        fb.read_pixels(97, 49, &mut px);
        assert_eq!(px, [0, 0, 0]);
    }
}
