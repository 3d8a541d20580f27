//! Config → a running VM: memory, interrupt controllers, devices, ACPI tables,
//! kernel and initrd, vCPUs; then the device loop and the vCPU threads start.
//!
//! [`Shared`] holds what outlives one boot (KVM's supported CPUID and MSRs, the
//! serial console's destinations, the counters); [`build`] makes one boot's
//! [`MicroVm`], and a reboot builds a fresh one.

use std::fs::File;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;
use mica_vmm_api::VmConfig;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::arch::{
    self, ACPI_PM_PORT, BOOT_TIMER_START, COM1_GSI, COM1_PORT, COM1_PORT_LEN, DEVICE_GSIS,
    GED_START, I8042_DATA_PORT, I8042_KBD_GSI, I8042_PORT_LEN, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START,
    acpi::{AcpiConfig, MmioDeviceInfo},
    boot,
};
use crate::config::parse_mac;
use crate::devices::acpi::{Ged, PmPort};
use crate::devices::boot_timer::{BootTimer, BootTimerDevice};
use crate::devices::legacy::{I8042, SerialBackend, SerialConsole, SerialDevice};
use crate::devices::pci::{PCI_CONFIG_PORT, PCI_CONFIG_PORT_LEN, PciConfigIo};
use crate::devices::virtio::VirtioDevice;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::mmio::{MmioTransport, REG_QUEUE_NOTIFY};
use crate::devices::virtio::net::{Net, tap::Tap};
use crate::devices::virtio::rng::Rng;
use crate::devices::{Bus, BusDevice, IrqLine, lock};
use crate::event_loop::{DeviceLoop, Subscriber};
use crate::metrics::VmmMetrics;
use crate::vmm::GuestEvents;
use crate::vnc::{Attachment, Display};
use crate::vstate::memory::create_guest_memory;
use crate::vstate::vcpu::{self, VcpuContext, Vcpus};
use crate::vstate::vm::{Vm, open_kvm};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("KVM")]
    Vm(#[from] crate::vstate::vm::VmError),
    #[error("KVM_GET_SUPPORTED_CPUID")]
    Cpuid(#[source] kvm_ioctls::Error),
    #[error("KVM_GET_MSR_INDEX_LIST")]
    MsrList(#[source] kvm_ioctls::Error),
    #[error("guest memory")]
    Memory(#[from] crate::vstate::memory::MemoryError),
    #[error("device bus")]
    Bus(#[from] crate::devices::BusError),
    #[error("eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("out of interrupt lines")]
    NoGsi,
    #[error("serial port")]
    Serial(#[from] crate::devices::legacy::serial::SerialError),
    #[error("disks[{index}] ({id})")]
    Disk {
        index: usize,
        id: String,
        #[source]
        source: crate::devices::virtio::block::BlockError,
    },
    #[error("nics[{index}] ({id})")]
    Nic {
        index: usize,
        id: String,
        #[source]
        source: crate::devices::virtio::net::tap::TapError,
    },
    #[error("virtio transport")]
    Mmio(#[from] crate::devices::virtio::mmio::MmioError),
    #[error("ACPI tables")]
    Acpi(#[from] arch::acpi::AcpiError),
    #[error("boot")]
    Boot(#[from] boot::BootError),
    #[error("boot page tables")]
    Regs(#[from] arch::regs::RegsError),
    #[error("vCPU")]
    Vcpu(#[from] vcpu::VcpuError),
    #[error("KVM_CREATE_VCPU {0}")]
    CreateVcpu(u32, #[source] kvm_ioctls::Error),
    #[error("device loop")]
    Loop(#[from] crate::event_loop::LoopError),
}

/// What all boots of the process share.
pub struct Shared {
    pub kvm: Kvm,
    pub supported_cpuid: CpuId,
    pub msr_list: Vec<u32>,
    pub metrics: Arc<VmmMetrics>,
    pub serial: Arc<SerialBackend>,
    /// The framebuffer and its VNC server, with a display.
    pub display: Option<Arc<Display>>,
}

impl Shared {
    pub fn new(
        metrics: Arc<VmmMetrics>,
        serial: Arc<SerialBackend>,
        display: Option<Arc<Display>>,
    ) -> Result<Self, BuildError> {
        let kvm = open_kvm()?;
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(BuildError::Cpuid)?;
        let msr_list = kvm
            .get_msr_index_list()
            .map_err(BuildError::MsrList)?
            .as_slice()
            .to_vec();
        Ok(Self {
            kvm,
            supported_cpuid,
            msr_list,
            metrics,
            serial,
            display,
        })
    }
}

/// One boot of the guest: its VM, memory, devices and threads.
pub struct MicroVm {
    // Field order is drop order: threads first, then devices, then the VM and
    // its memory.
    vcpus: Vcpus,
    device_loop: DeviceLoop,
    ged: Arc<Mutex<Ged>>,
    i8042: Arc<Mutex<I8042>>,
    boot_timer: Arc<BootTimer>,
    display: Option<Arc<Display>>,
    _vm: Vm,
    _memory: GuestMemoryMmap,
    _memfd: File,
}

impl MicroVm {
    /// Stops the vCPUs, then the devices.
    pub fn pause(&self) -> Result<(), String> {
        self.vcpus.pause().map_err(|e| e.to_string())?;
        if let Err(e) = self.device_loop.pause() {
            self.vcpus.resume();
            return Err(e.to_string());
        }
        Ok(())
    }

    /// Starts the devices, then the vCPUs.
    pub fn resume(&self) {
        self.device_loop.resume();
        self.vcpus.resume();
    }

    /// Ends every thread of this boot, and lets the VNC server go of it.
    pub fn stop(mut self) {
        if let Some(d) = &self.display {
            d.detach();
        }
        self.vcpus.stop();
        self.device_loop.stop();
    }

    pub fn press_power_button(&self) -> std::io::Result<()> {
        lock(&self.ged).press_power_button()
    }

    pub fn ctrl_alt_del(&self) {
        lock(&self.i8042).ctrl_alt_del();
    }

    pub fn boot_time(&self) -> Option<std::time::Duration> {
        self.boot_timer.boot_time()
    }
}

/// Hands out interrupt lines: an eventfd registered as an irqfd.
struct Irqs<'a> {
    vm: &'a Vm,
    free: std::slice::Iter<'static, u32>,
}

impl Irqs<'_> {
    fn line(&self, gsi: u32) -> Result<IrqLine, BuildError> {
        let evt = EventFd::new(EFD_NONBLOCK).map_err(BuildError::EventFd)?;
        self.vm.register_irqfd(&evt, gsi)?;
        Ok(IrqLine::new(evt, gsi))
    }

    fn next(&mut self) -> Result<IrqLine, BuildError> {
        let gsi = *self.free.next().ok_or(BuildError::NoGsi)?;
        self.line(gsi)
    }
}

/// Builds and starts one boot. `boot_started` is when this boot began (for the
/// boot timer).
pub fn build(
    config: &VmConfig,
    shared: &Shared,
    events: GuestEvents,
    boot_started: Instant,
) -> Result<MicroVm, BuildError> {
    let t0 = Instant::now();
    let mem_size = config.memory_mib << 20;
    let (memory, memfd) = create_guest_memory(mem_size)?;
    let t_mem = t0.elapsed();
    let vm = Vm::new(&shared.kvm, config.vcpus, &memory)?;
    if let Some(display) = &shared.display {
        // A new boot starts on a blank screen.
        display.framebuffer.clear();
        vm.register_framebuffer(&display.framebuffer)?;
    }
    let t_kvm = t0.elapsed();
    let t_vm = t0.elapsed();

    let mut irqs = Irqs {
        vm: &vm,
        free: DEVICE_GSIS.iter(),
    };
    let mut pio = Bus::new();
    let mut mmio = Bus::new();
    let mut subscribers: Vec<Subscriber> = Vec::new();

    // COM1 and its console.
    let (uart, input_ready) = SerialDevice::new(irqs.line(COM1_GSI)?, shared.serial.clone())?;
    let uart = Arc::new(Mutex::new(uart));
    pio.insert(uart.clone(), u64::from(COM1_PORT), COM1_PORT_LEN)?;
    subscribers.push(Arc::new(Mutex::new(SerialConsole::new(
        shared.serial.clone(),
        uart,
        input_ready,
    ))));

    // i8042 and the ACPI sleep/reset register.
    let i8042 = Arc::new(Mutex::new(I8042::new(
        irqs.line(I8042_KBD_GSI)?,
        events.clone(),
    )));
    pio.insert(i8042.clone(), u64::from(I8042_DATA_PORT), I8042_PORT_LEN)?;
    pio.insert(
        Arc::new(Mutex::new(PmPort::new(events.clone()))),
        u64::from(ACPI_PM_PORT),
        1,
    )?;
    // PCI configuration space with a host bridge only (see devices::pci).
    pio.insert(
        Arc::new(Mutex::new(PciConfigIo::new())),
        u64::from(PCI_CONFIG_PORT),
        PCI_CONFIG_PORT_LEN,
    )?;

    // GED and boot timer.
    let ged_irq = irqs.next()?;
    let ged_gsi = ged_irq.gsi();
    let ged = Arc::new(Mutex::new(Ged::new(ged_irq)));
    mmio.insert(ged.clone(), GED_START, 0x1000)?;
    let boot_timer = BootTimer::new(boot_started);
    if config.boot_timer {
        mmio.insert(
            Arc::new(Mutex::new(BootTimerDevice(boot_timer.clone()))),
            BOOT_TIMER_START,
            0x1000,
        )?;
    }

    // virtio devices: disks, NICs, rng, in this order (vda, vdb, ...; eth0, ...).
    let mut devices: Vec<(String, VirtioAny)> = Vec::new();
    for (index, d) in config.disks.iter().enumerate() {
        let block = Block::open(&d.id, &d.path, d.read_only, shared.metrics.block(&d.id)).map_err(
            |source| BuildError::Disk {
                index,
                id: d.id.clone(),
                source,
            },
        )?;
        devices.push((format!("disk {}", d.id), VirtioAny::Block(block)));
    }
    for (index, n) in config.nics.iter().enumerate() {
        let id = n.id_or_default(index);
        let tap = Tap::open(&n.tap).map_err(|source| BuildError::Nic {
            index,
            id: id.clone(),
            source,
        })?;
        let mac = parse_mac(&n.mac).expect("validated with the configuration");
        let net = Net::new(&id, tap, mac, shared.metrics.net(&id));
        devices.push((format!("nic {id}"), VirtioAny::Net(net)));
    }
    if config.rng {
        devices.push((
            "rng".into(),
            VirtioAny::Rng(Rng::new(shared.metrics.rng.clone())),
        ));
    }
    let mut virtio: Vec<MmioDeviceInfo> = Vec::new();
    for (name, device) in devices {
        let base = VIRTIO_MMIO_START + VIRTIO_MMIO_SIZE * virtio.len() as u64;
        let irq = irqs.next()?;
        let gsi = irq.gsi();
        let (bus_dev, subscriber) = match device {
            VirtioAny::Block(d) => transport(&vm, name, d, &memory, irq, base)?,
            VirtioAny::Net(d) => transport(&vm, name, d, &memory, irq, base)?,
            VirtioAny::Rng(d) => transport(&vm, name, d, &memory, irq, base)?,
        };
        mmio.insert(bus_dev, base, VIRTIO_MMIO_SIZE)?;
        subscribers.push(subscriber);
        virtio.push(MmioDeviceInfo {
            base,
            size: VIRTIO_MMIO_SIZE,
            gsi,
        });
    }
    let t_devices = t0.elapsed();

    // Firmware tables and the kernel.
    let rsdp = arch::acpi::write_tables(
        &memory,
        &AcpiConfig {
            vcpus: config.vcpus,
            virtio,
            ged: (GED_START, ged_gsi),
        },
    )?;
    let kernel = boot::load_kernel(&memory, &config.kernel)?;
    let initrd = match &config.initrd {
        Some(path) => Some(boot::load_initrd(&memory, path, &kernel)?),
        None => None,
    };
    let mut cmdline = config.cmdline.trim().to_string();
    if config.boot_timer {
        if !cmdline.is_empty() {
            cmdline.push(' ');
        }
        cmdline.push_str(&format!("mica.boot_timer={BOOT_TIMER_START:#x}"));
    }
    let cmdline_len = boot::load_command_line(&memory, &cmdline)?;
    arch::regs::write_boot_structures(&memory)?;
    boot::write_zero_page(
        &memory,
        boot::zero_page(
            &kernel,
            cmdline_len,
            initrd,
            mem_size,
            rsdp,
            shared.display.as_ref().map(|d| d.framebuffer.screen_info()),
        ),
    )?;
    let t_kernel = t0.elapsed();

    // vCPUs.
    let mut fds = Vec::new();
    for index in 0..config.vcpus {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(|e| BuildError::CreateVcpu(index, e))?;
        vcpu::configure(
            &fd,
            index,
            config.vcpus,
            &shared.supported_cpuid,
            &shared.msr_list,
            (index == 0).then_some(kernel.entry.0),
        )?;
        fds.push(fd);
    }
    let t_vcpus = t0.elapsed();

    let device_loop = DeviceLoop::start(subscribers)?;
    let vcpus = Vcpus::start(
        fds,
        Arc::new(VcpuContext {
            pio,
            mmio,
            metrics: shared.metrics.clone(),
            events,
        }),
    )?;
    if let Some(display) = &shared.display {
        display.attach(Attachment {
            vm: vm.shared_fd(),
            i8042: i8042.clone(),
        });
    }
    tracing::debug!(
        kvm_us = t_kvm.as_micros() as u64,
        mem_us = t_mem.as_micros() as u64,
        vm_us = t_vm.as_micros() as u64,
        devices_us = t_devices.as_micros() as u64,
        kernel_us = t_kernel.as_micros() as u64,
        vcpus_us = t_vcpus.as_micros() as u64,
        started_us = t0.elapsed().as_micros() as u64,
        "VM built"
    );
    tracing::info!(
        vcpus = config.vcpus,
        memory_mib = config.memory_mib,
        disks = config.disks.len(),
        nics = config.nics.len(),
        "guest started ({} ms after the boot began)",
        boot_started.elapsed().as_secs_f64() * 1000.0
    );
    Ok(MicroVm {
        vcpus,
        device_loop,
        ged,
        i8042,
        boot_timer,
        display: shared.display.clone(),
        _vm: vm,
        _memory: memory,
        _memfd: memfd,
    })
}

enum VirtioAny {
    Block(Block),
    Net(Net<Tap>),
    Rng(Rng),
}

/// Puts a virtio device on the MMIO transport at `base`: its notify register
/// becomes one ioeventfd per queue.
fn transport<D: VirtioDevice + 'static>(
    vm: &Vm,
    name: String,
    device: D,
    memory: &GuestMemoryMmap,
    irq: IrqLine,
    base: u64,
) -> Result<(Arc<Mutex<dyn BusDevice>>, Subscriber), BuildError> {
    let t = MmioTransport::new(name, device, memory.clone(), irq)?;
    for (i, evt) in t.queue_evts().iter().enumerate() {
        vm.register_mmio_ioevent(evt, base + REG_QUEUE_NOTIFY, i as u32)?;
    }
    let t = Arc::new(Mutex::new(t));
    Ok((t.clone(), t))
}
