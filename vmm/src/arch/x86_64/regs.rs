//! Registers of the boot vCPU for the Linux 64-bit boot protocol: long mode with
//! paging on, flat segments from a small GDT, an identity map of the first 4 GiB
//! (RAM below the gap and the framebuffer, for guests that use these tables),
//! `rsi` pointing at the zero page.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
    ZERO_PAGE_START,
};

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("writing the boot page tables or GDT to guest memory")]
    Memory(#[source] vm_memory::GuestMemoryError),
    #[error("KVM_GET_SREGS/KVM_SET_SREGS")]
    Sregs(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_REGS")]
    Regs(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_FPU")]
    Fpu(#[source] kvm_ioctls::Error),
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Builds a GDT descriptor from its flags (type, S, DPL, P in the low byte; AVL,
/// L, D/B, G in the high nibble), base and 20-bit limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    (((base as u64) & 0xff00_0000) << 32)
        | (((flags as u64) & 0x0000_f0ff) << 40)
        | (((limit as u64) & 0x000f_0000) << 32)
        | (((base as u64) & 0x00ff_ffff) << 16)
        | ((limit as u64) & 0x0000_ffff)
}

/// The boot GDT: null, 64-bit code, data, TSS.
pub const BOOT_GDT: [u64; 4] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// The segment register KVM expects for GDT entry `index`.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = (entry & 0xffff) | ((entry >> 32) & 0x000f_0000);
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        ((limit_raw << 12) | 0xfff) as u32
    } else {
        limit_raw as u32
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// Writes the GDT, an empty IDT and the identity-mapping page tables.
pub fn write_boot_structures(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(RegsError::Memory)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(RegsError::Memory)?;
    // PML4[0] -> PDPT, PDPT[g] -> PD g, each PD: 512 2-MiB pages = GiB g.
    mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START))
        .map_err(RegsError::Memory)?;
    for g in 0..4u64 {
        let pd = PDE_START + g * 0x1000;
        mem.write_obj(pd | 0x03, GuestAddress(PDPTE_START + g * 8))
            .map_err(RegsError::Memory)?;
        for i in 0..512u64 {
            let page = (g << 30) | (i << 21);
            mem.write_obj(page | 0x83, GuestAddress(pd + i * 8))
                .map_err(RegsError::Memory)?;
        }
    }
    Ok(())
}

/// Puts the boot vCPU in long mode with the boot GDT and page tables.
pub fn setup_sregs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(RegsError::Sregs)?;
    let code = segment_from_gdt(BOOT_GDT[1], 1);
    let data = segment_from_gdt(BOOT_GDT[2], 2);
    let tss = segment_from_gdt(BOOT_GDT[3], 3);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).map_err(RegsError::Sregs)
}

/// Entry point, stack and zero-page pointer of the boot vCPU.
pub fn setup_regs(vcpu: &VcpuFd, entry: u64) -> Result<(), RegsError> {
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(RegsError::Regs)
}

/// x87 and SSE control words as after a reset.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(RegsError::Fpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_long_mode_segments() {
        let code = segment_from_gdt(BOOT_GDT[1], 1);
        assert_eq!(
            (code.selector, code.base, code.limit),
            (0x8, 0, 0xffff_ffff)
        );
        assert_eq!(
            (code.l, code.db, code.present, code.s, code.type_),
            (1, 0, 1, 1, 0xb)
        );
        let data = segment_from_gdt(BOOT_GDT[2], 2);
        assert_eq!(
            (data.selector, data.db, data.l, data.type_),
            (0x10, 1, 0, 0x3)
        );
        let tss = segment_from_gdt(BOOT_GDT[3], 3);
        assert_eq!((tss.selector, tss.s, tss.type_), (0x18, 0, 0xb));
        let null = segment_from_gdt(0, 0);
        assert_eq!(null.unusable, 1);
    }

    #[test]
    fn page_tables_identity_map_the_first_4_gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        write_boot_structures(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPTE_START);
        let pd_last: u64 = mem.read_obj(GuestAddress(PDE_START + 511 * 8)).unwrap();
        assert_eq!(pd_last, (511 << 21) | 0x83);
        let pdpt3: u64 = mem.read_obj(GuestAddress(PDPTE_START + 3 * 8)).unwrap();
        assert_eq!(pdpt3 & !0xfff, PDE_START + 0x3000);
        let fb: u64 = mem
            .read_obj(GuestAddress(PDE_START + 0x3000 + 128 * 8))
            .unwrap();
        assert_eq!(fb, 0xd000_0000 | 0x83);
    }
}
