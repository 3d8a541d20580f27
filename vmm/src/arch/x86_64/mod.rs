//! The x86_64 guest platform: memory map, boot protocol, CPU set-up, ACPI.
//!
//! ```text
//! guest physical memory
//! 0x0000_0000  real-mode IVT / BDA (untouched)
//! 0x0000_0500  GDT, then IDT (0x520)
//! 0x0000_7000  zero page (struct boot_params)
//! 0x0000_8ff0  boot stack (grows down)
//! 0x0000_9000  PML4, PDPT (0xa000), PDs (0xb000-0xefff): identity map of the
//!              first 4 GiB (2 MiB pages; the kernel replaces them at once)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  end of low RAM (EBDA)
//! 0x000e_0000  ACPI tables: RSDP first (where the kernel scans for it)
//! 0x0010_0000  RAM: a bzImage loads here; a vmlinux at its ELF addresses (16 MiB);
//!              the initrd at the top of the RAM below 2 GiB
//! 0xc000_0000  MMIO gap (RAM resumes at 4 GiB):
//!              0xc000_0000 boot timer, 0xc000_1000 GED, 0xc000_2000+ virtio-mmio
//! 0xd000_0000  linear framebuffer (with a display; up to 64 MiB, a memory slot
//!              of its own, not in the e820 map)
//! 0xfec0_0000  IOAPIC (in-kernel)       0xfee0_0000 LAPIC (in-kernel)
//! ```
//!
//! I/O ports: COM1 0x3f8 (IRQ 4), i8042 0x60/0x64 (IRQ 1), ACPI sleep control,
//! sleep status and reset register 0x3c0, PCI configuration mechanism #1
//! 0xcf8-0xcff (a host bridge only).

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod interrupts;
pub mod msr;
pub mod regs;

use vm_memory::GuestAddress;

/// Zero page (boot_params).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page tables of the 64-bit boot protocol.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
/// First of the four page directories (one per GiB, each a page).
pub const PDE_START: u64 = 0xb000;
/// Boot GDT and IDT.
pub const BOOT_GDT_START: u64 = 0x500;
pub const BOOT_IDT_START: u64 = 0x520;
/// Kernel command line and its maximum size (the kernel's COMMAND_LINE_SIZE).
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// End of the first RAM range (start of the EBDA).
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables area (the RSDP is at its start).
pub const ACPI_START: u64 = 0xe0000;
pub const ACPI_END: u64 = 0x10_0000;
/// Start of high memory; a bzImage's protected-mode code is loaded here.
pub const HIMEM_START: u64 = 0x10_0000;
/// Highest address (exclusive) for the initrd.
pub const INITRD_MAX_END: u64 = 0x8000_0000;

/// The 32-bit MMIO gap: no RAM between these addresses.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// The boot-timer pseudo-device (one page).
pub const BOOT_TIMER_START: u64 = MMIO_GAP_START;
/// The ACPI Generic Event Device's event register (one page).
pub const GED_START: u64 = MMIO_GAP_START + 0x1000;
/// First virtio-mmio device; each takes [`VIRTIO_MMIO_SIZE`].
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START + 0x2000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// The linear framebuffer's guest physical address, and the most it may take.
pub const FRAMEBUFFER_START: u64 = 0xd000_0000;
pub const FRAMEBUFFER_MAX_SIZE: u64 = 64 << 20;
pub const IOAPIC_START: u32 = 0xfec0_0000;
pub const LAPIC_START: u32 = 0xfee0_0000;
/// Where KVM puts the TSS it needs on Intel (three pages below the BIOS area).
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// COM1.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_PORT_LEN: u64 = 8;
pub const COM1_GSI: u32 = 4;
/// i8042 data (0x60) and command/status (0x64) ports.
pub const I8042_DATA_PORT: u16 = 0x60;
pub const I8042_PORT_LEN: u64 = 5;
pub const I8042_KBD_GSI: u32 = 1;
/// ACPI sleep control/status and reset register (one byte).
pub const ACPI_PM_PORT: u16 = 0x3c0;
/// Value written to [`ACPI_PM_PORT`] for S5 (soft off): SLP_TYP=5, SLP_EN.
pub const ACPI_S5_VALUE: u8 = (5 << 2) | (1 << 5);
/// Value written to [`ACPI_PM_PORT`] as the FADT's reset value.
pub const ACPI_RESET_VALUE: u8 = 0x01;

/// Interrupt lines (IOAPIC pins) given to the GED and the virtio devices, in
/// order. Skips the legacy ISA lines that devices or the guest expect: timer (0),
/// keyboard (1), cascade (2), COM2/COM1 (3, 4), RTC (8), mouse (12), FPU (13).
pub const DEVICE_GSIS: [u32; 16] = [5, 6, 7, 9, 10, 11, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23];

/// The guest's RAM ranges for `mem_size` bytes: below the MMIO gap, and the rest
/// from 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(GuestAddress, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(GuestAddress(0), mem_size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START),
            (GuestAddress(MMIO_GAP_END), mem_size - MMIO_GAP_START),
        ]
    }
}

/// One entry of the BIOS e820 memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// The e820 map the guest is given for `mem_size` bytes of RAM.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: ACPI_START,
            size: ACPI_END - ACPI_START,
            kind: E820_RESERVED,
        },
    ];
    let low_end = mem_size.min(MMIO_GAP_START);
    if low_end > HIMEM_START {
        map.push(E820Entry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820_RAM,
        });
    }
    if mem_size > MMIO_GAP_START {
        map.push(E820Entry {
            addr: MMIO_GAP_END,
            size: mem_size - MMIO_GAP_START,
            kind: E820_RAM,
        });
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_above_the_gap_moves_to_4g() {
        assert_eq!(ram_ranges(256 << 20), vec![(GuestAddress(0), 256 << 20)]);
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), 3 << 30));
        assert_eq!(r[1], (GuestAddress(4 << 30), 1 << 30));
        let total: u64 = r.iter().map(|(_, s)| s).sum();
        assert_eq!(total, 4 << 30);
    }

    #[test]
    fn e820_covers_the_ram_without_the_holes() {
        let m = e820_map(2 << 30);
        let ram: u64 = m
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, (2 << 30) - (HIMEM_START - EBDA_START));
        let m = e820_map(5 << 30);
        assert_eq!(m.last().unwrap().addr, 4 << 30);
        assert_eq!(m.last().unwrap().size, 2 << 30);
    }

    #[test]
    fn the_framebuffer_is_in_the_gap_and_never_ram() {
        const {
            assert!(FRAMEBUFFER_START >= VIRTIO_MMIO_START + VIRTIO_MMIO_SIZE * 16);
            assert!(FRAMEBUFFER_START + FRAMEBUFFER_MAX_SIZE <= IOAPIC_START as u64);
        }
        for mem in [256u64 << 20, 3 << 30, 8 << 30] {
            for e in e820_map(mem) {
                assert!(
                    e.addr + e.size <= FRAMEBUFFER_START
                        || e.addr >= FRAMEBUFFER_START + FRAMEBUFFER_MAX_SIZE,
                    "{e:?}"
                );
            }
            for (addr, len) in ram_ranges(mem) {
                assert!(addr.0 + len <= FRAMEBUFFER_START || addr.0 >= MMIO_GAP_END);
            }
        }
    }
}
