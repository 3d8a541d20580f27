//! The KVM VM: capability checks, the in-kernel irqchip (PIC, IOAPIC, LAPICs)
//! and PIT, guest memory slots, irqfds and ioeventfds.

use std::sync::Arc;

use kvm_bindings::{
    KVM_MEM_LOG_DIRTY_PAGES, KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::KVM_TSS_ADDRESS;
use crate::devices::display::{FRAMEBUFFER_SLOT, Framebuffer};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM API version {0}, 12 needed")]
    ApiVersion(i32),
    #[error("KVM lacks {0:?}")]
    MissingCap(Cap),
    #[error("KVM_CREATE_VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_TSS_ADDR")]
    Tss(#[source] kvm_ioctls::Error),
    #[error("KVM_CREATE_IRQCHIP")]
    Irqchip(#[source] kvm_ioctls::Error),
    #[error("KVM_CREATE_PIT2")]
    Pit(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_USER_MEMORY_REGION")]
    MemoryRegion(#[source] kvm_ioctls::Error),
    #[error("KVM allows {max} vCPUs, {wanted} configured")]
    TooManyVcpus { wanted: u32, max: usize },
    #[error("KVM_IRQFD for GSI {0}")]
    Irqfd(u32, #[source] kvm_ioctls::Error),
    #[error("KVM_IOEVENTFD at {0:#x}")]
    Ioeventfd(u64, #[source] kvm_ioctls::Error),
}

/// Capabilities Mica's platform needs.
const REQUIRED_CAPS: [Cap; 6] = [
    Cap::Irqchip,
    Cap::UserMemory,
    Cap::Ioeventfd,
    Cap::Irqfd,
    Cap::Pit2,
    Cap::ImmediateExit,
];

/// An open `/dev/kvm` that passed Mica's checks.
pub fn open_kvm() -> Result<Kvm, VmError> {
    let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
    let version = kvm.get_api_version();
    if version != kvm_bindings::KVM_API_VERSION as i32 {
        return Err(VmError::ApiVersion(version));
    }
    for cap in REQUIRED_CAPS {
        if !kvm.check_extension(cap) {
            return Err(VmError::MissingCap(cap));
        }
    }
    Ok(kvm)
}

/// A VM with its interrupt controllers. The fd is shared with the VNC server
/// (which reads the framebuffer's dirty log) while this boot runs.
pub struct Vm {
    fd: Arc<VmFd>,
}

impl Vm {
    pub fn new(kvm: &Kvm, vcpus: u32, mem: &GuestMemoryMmap) -> Result<Self, VmError> {
        let max = kvm.get_max_vcpus();
        if vcpus as usize > max {
            return Err(VmError::TooManyVcpus { wanted: vcpus, max });
        }
        let fd = Arc::new(kvm.create_vm().map_err(VmError::CreateVm)?);
        let vm = Self { fd };
        vm.register_memory(mem)?;
        let fd = vm.fd;
        fd.set_tss_address(KVM_TSS_ADDRESS).map_err(VmError::Tss)?;
        fd.create_irq_chip().map_err(VmError::Irqchip)?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(VmError::Pit)?;
        Ok(Self { fd })
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    pub fn shared_fd(&self) -> Arc<VmFd> {
        self.fd.clone()
    }

    /// Maps the framebuffer into the guest at its address, in a slot of its
    /// own with KVM's dirty-page log on.
    pub fn register_framebuffer(&self, fb: &Framebuffer) -> Result<(), VmError> {
        let r = kvm_userspace_memory_region {
            slot: FRAMEBUFFER_SLOT,
            flags: KVM_MEM_LOG_DIRTY_PAGES,
            guest_phys_addr: fb.guest_address(),
            memory_size: fb.mapped_len() as u64,
            userspace_addr: fb.host_address(),
        };
        // SAFETY: the framebuffer is a live mapping of `memory_size` bytes that
        // lives as long as the process's display (longer than any VM: the
        // boot that holds this VM holds the framebuffer too); its guest range
        // is in the MMIO gap, apart from RAM and every other slot.
        unsafe { self.fd.set_user_memory_region(r) }.map_err(VmError::MemoryRegion)
    }

    /// Gives the guest its memory, one KVM slot per region.
    pub fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .expect("a region's first byte has a host address");
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mapping of `memory_size` bytes at
            // `userspace_addr`; it stays mapped as long as `mem` (which the VM's
            // owner keeps until after the VM fd is closed), and slots do not
            // overlap (the regions don't).
            unsafe { self.fd.set_user_memory_region(r) }.map_err(VmError::MemoryRegion)?;
        }
        Ok(())
    }

    /// Makes writes to `evt` pulse interrupt line `gsi`.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|e| VmError::Irqfd(gsi, e))
    }

    /// Makes a 4-byte guest write of `value` at `addr` signal `evt` (in KVM,
    /// without a VM exit to the VMM).
    pub fn register_mmio_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        value: u32,
    ) -> Result<(), VmError> {
        self.fd
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), value)
            .map_err(|e| VmError::Ioeventfd(addr, e))
    }
}
