//! ACPI tables of Mica's hardware-reduced platform: RSDP, XSDT, FADT, MADT, DSDT.
//!
//! - MADT: one local APIC per vCPU and the IOAPIC, so SMP comes from ACPI.
//! - FADT: hardware-reduced; the sleep control/status registers and the reset
//!   register are I/O port 0x3c0 ([`super::ACPI_PM_PORT`]): writing
//!   [`super::ACPI_S5_VALUE`] powers off, [`super::ACPI_RESET_VALUE`] resets.
//! - DSDT: COM1 (PNP0501), the i8042 keyboard (PNP0303), every virtio-mmio
//!   device (LNRO0005, so kernels without `virtio_mmio.device=` find them), the
//!   power button (PNP0C0C) and the Generic Event Device (ACPI0013) whose `_EVT`
//!   reads the GED's event register and notifies the power button, and `\_S5`.

use acpi_tables::Aml;
use acpi_tables::aml::{
    self, Device, EISAName, Equal, Field, FieldAccessType, FieldEntry, FieldLockRule,
    FieldUpdateRule, If, Interrupt, Local, Memory32Fixed, Method, Name, Notify, OpRegion,
    OpRegionSpace, Package, Path, ResourceTemplate, Scope, Store,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, MADT, ProcessorLocalApic,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{
    ACPI_END, ACPI_PM_PORT, ACPI_RESET_VALUE, ACPI_START, COM1_GSI, COM1_PORT, I8042_KBD_GSI,
    IOAPIC_START, LAPIC_START,
};

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("the ACPI tables ({0} bytes) do not fit in their area")]
    TooBig(usize),
    #[error("writing the ACPI tables to guest memory")]
    Memory(#[source] vm_memory::GuestMemoryError),
}

pub const OEM_ID: [u8; 6] = *b"MICA  ";
pub const OEM_TABLE_ID: [u8; 8] = *b"MICAVMM ";
const OEM_REVISION: u32 = 1;

/// IAPC_BOOT_ARCH: an i8042 is present.
const IAPC_8042: u16 = 1 << 1;
/// IAPC_BOOT_ARCH: do not probe for VGA.
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
/// IAPC_BOOT_ARCH: no CMOS RTC.
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

/// The GED event bit for the power button.
pub const GED_EVENT_POWER_BUTTON: u32 = 1;

/// A virtio-mmio device as the DSDT describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDeviceInfo {
    pub base: u64,
    pub size: u64,
    pub gsi: u32,
}

/// What the tables describe.
#[derive(Debug, Clone)]
pub struct AcpiConfig {
    pub vcpus: u32,
    pub virtio: Vec<MmioDeviceInfo>,
    /// The GED's event register address and interrupt line.
    pub ged: (u64, u32),
}

/// The tables, each with the guest address it goes to. The first is the RSDP.
pub fn build_tables(cfg: &AcpiConfig) -> Result<Vec<(u64, Vec<u8>)>, AcpiError> {
    let align = |a: u64| (a + 15) & !15;
    let rsdp_addr = ACPI_START;
    let dsdt_addr = align(rsdp_addr + Rsdp::len() as u64);
    let dsdt = dsdt(cfg);
    let fadt_addr = align(dsdt_addr + dsdt.len() as u64);
    let fadt = fadt(dsdt_addr);
    let madt_addr = align(fadt_addr + fadt.len() as u64);
    let madt = madt(cfg.vcpus);
    let xsdt_addr = align(madt_addr + madt.len() as u64);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = bytes_of(&xsdt);
    let end = xsdt_addr + xsdt.len() as u64;
    if end > ACPI_END {
        return Err(AcpiError::TooBig((end - ACPI_START) as usize));
    }
    let rsdp = bytes_of(&Rsdp::new(OEM_ID, xsdt_addr));
    Ok(vec![
        (rsdp_addr, rsdp),
        (dsdt_addr, dsdt),
        (fadt_addr, fadt),
        (madt_addr, madt),
        (xsdt_addr, xsdt),
    ])
}

/// Writes the tables; returns the RSDP's address.
pub fn write_tables(mem: &GuestMemoryMmap, cfg: &AcpiConfig) -> Result<u64, AcpiError> {
    let tables = build_tables(cfg)?;
    for (addr, bytes) in &tables {
        mem.write_slice(bytes, GuestAddress(*addr))
            .map_err(AcpiError::Memory)?;
    }
    Ok(tables[0].0)
}

fn bytes_of(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

fn io_port_gas(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    b.iapc_boot_arch = (IAPC_8042 | IAPC_VGA_NOT_PRESENT | IAPC_CMOS_RTC_NOT_PRESENT).into();
    b.sleep_control_reg = io_port_gas(ACPI_PM_PORT);
    b.sleep_status_reg = io_port_gas(ACPI_PM_PORT);
    b.reset_reg = io_port_gas(ACPI_PM_PORT);
    b.reset_value = ACPI_RESET_VALUE;
    b.hypervisor_vendor_identity = u64::from_le_bytes(*b"MICAVMM\0").into();
    bytes_of(&b.finalize())
}

fn madt(vcpus: u32) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_START),
    );
    for id in 0..vcpus {
        madt.add_structure(ProcessorLocalApic::new(
            id as u8,
            id as u8,
            EnabledStatus::Enabled,
        ));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_START, 0));
    bytes_of(&madt)
}

/// `Interrupt(ResourceConsumer, Edge, ActiveHigh, Exclusive) { gsi }`: Mica's
/// device interrupts are edge-triggered irqfds on IOAPIC pins.
fn edge_irq(gsi: u32) -> Interrupt {
    Interrupt::new(true, true, false, false, gsi)
}

/// `Device(name) { children }` as AML bytes.
fn device(name: &str, children: &[&dyn Aml]) -> Vec<u8> {
    bytes_of(&Device::new(name.into(), children.to_vec()))
}

fn dsdt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut sb = Vec::new();

    // COM1.
    sb.extend(device(
        "COM1",
        &[
            &Name::new("_HID".into(), &EISAName::new("PNP0501")),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![
                    &aml::IO::new(COM1_PORT, COM1_PORT, 1, 8),
                    &edge_irq(COM1_GSI),
                ]),
            ),
        ],
    ));

    // The i8042 keyboard controller.
    sb.extend(device(
        "PS2K",
        &[
            &Name::new("_HID".into(), &EISAName::new("PNP0303")),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![
                    &aml::IO::new(0x60, 0x60, 1, 1),
                    &aml::IO::new(0x64, 0x64, 1, 1),
                    &edge_irq(I8042_KBD_GSI),
                ]),
            ),
        ],
    ));

    // The power button, notified by the GED.
    sb.extend(device(
        "PWRB",
        &[
            &Name::new("_HID".into(), &EISAName::new("PNP0C0C")),
            &Name::new("_UID".into(), &aml::ZERO),
        ],
    ));

    // The Generic Event Device: _EVT reads the event register (which clears
    // it) and notifies the power button when its bit is set.
    let (ged_addr, ged_gsi) = cfg.ged;
    let local0 = Local(0);
    let power_bit = GED_EVENT_POWER_BUTTON;
    sb.extend(device(
        "GED_",
        &[
            &Name::new("_HID".into(), &"ACPI0013"),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![&edge_irq(ged_gsi)]),
            ),
            &OpRegion::new(
                "GDST".into(),
                OpRegionSpace::SystemMemory,
                &(ged_addr as u32),
                &4u8,
            ),
            &Field::new(
                "GDST".into(),
                FieldAccessType::DWord,
                FieldLockRule::NoLock,
                FieldUpdateRule::WriteAsZeroes,
                vec![FieldEntry::Named(*b"GDAT", 32)],
            ),
            &Method::new(
                "_EVT".into(),
                1,
                true,
                vec![
                    &Store::new(&local0, &Path::new("GDAT")),
                    &If::new(
                        &Equal::new(&aml::And::new(&aml::ZERO, &local0, &power_bit), &power_bit),
                        vec![&Notify::new(&Path::new("\\_SB_.PWRB"), &0x80u8)],
                    ),
                ],
            ),
        ],
    ));

    // virtio-mmio devices.
    for (i, d) in cfg.virtio.iter().enumerate() {
        sb.extend(device(
            &format!("V{i:03X}"),
            &[
                &Name::new("_HID".into(), &"LNRO0005"),
                &Name::new("_UID".into(), &(i as u32)),
                &Name::new(
                    "_CRS".into(),
                    &ResourceTemplate::new(vec![
                        &Memory32Fixed::new(true, d.base as u32, d.size as u32),
                        &edge_irq(d.gsi),
                    ]),
                ),
            ],
        ));
    }

    let mut body = Scope::raw("\\_SB_".into(), sb);
    // \_S5: SLP_TYP 5 for soft-off.
    Name::new("_S5_".into(), &Package::new(vec![&5u8])).to_aml_bytes(&mut body);

    let mut table = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    table.append_slice(&body);
    table.as_slice().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(vcpus: u32, devices: usize) -> AcpiConfig {
        AcpiConfig {
            vcpus,
            virtio: (0..devices)
                .map(|i| MmioDeviceInfo {
                    base: 0xc000_2000 + 0x1000 * i as u64,
                    size: 0x1000,
                    gsi: 6 + i as u32,
                })
                .collect(),
            ged: (0xc000_1000, 5),
        }
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn find<'a>(tables: &'a [(u64, Vec<u8>)], sig: &[u8]) -> &'a [u8] {
        &tables.iter().find(|(_, t)| t.starts_with(sig)).unwrap().1
    }

    #[test]
    fn every_table_checksums_to_zero_and_states_its_length() {
        let tables = build_tables(&cfg(4, 3)).unwrap();
        assert_eq!(tables.len(), 5);
        let (rsdp_addr, rsdp) = &tables[0];
        assert_eq!(*rsdp_addr, ACPI_START);
        assert!(rsdp.starts_with(b"RSD PTR "));
        assert_eq!(sum(&rsdp[..20]), 0, "RSDP v1 checksum");
        assert_eq!(sum(rsdp), 0, "RSDP extended checksum");
        for (addr, t) in &tables[1..] {
            assert_eq!(sum(t), 0, "{} checksum", String::from_utf8_lossy(&t[..4]));
            let len = u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize;
            assert_eq!(len, t.len());
            assert_eq!(addr % 16, 0);
        }
        // The tables don't overlap.
        for w in tables.windows(2) {
            assert!(w[0].0 + w[0].1.len() as u64 <= w[1].0);
        }
    }

    #[test]
    fn xsdt_points_at_fadt_and_madt_and_rsdp_at_xsdt() {
        let tables = build_tables(&cfg(1, 0)).unwrap();
        let xsdt_addr = u64::from_le_bytes(tables[0].1[24..32].try_into().unwrap());
        let (_, xsdt) = tables.iter().find(|(a, _)| *a == xsdt_addr).unwrap();
        assert!(xsdt.starts_with(b"XSDT"));
        let entries: Vec<u64> = xsdt[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let sigs: Vec<&[u8]> = entries
            .iter()
            .map(|a| &tables.iter().find(|(t, _)| t == a).unwrap().1[..4])
            .collect();
        assert_eq!(sigs, [b"FACP", b"APIC"]);
    }

    #[test]
    fn fadt_is_hardware_reduced_with_the_sleep_and_reset_port() {
        let tables = build_tables(&cfg(1, 0)).unwrap();
        let fadt = find(&tables, b"FACP");
        let flags = u32::from_le_bytes(fadt[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        // reset_reg at 116 (GAS), reset_value at 128.
        assert_eq!(fadt[116], 1, "reset register in I/O space");
        assert_eq!(
            u64::from_le_bytes(fadt[120..128].try_into().unwrap()),
            0x3c0
        );
        assert_eq!(fadt[128], ACPI_RESET_VALUE);
        // sleep_control_reg at 244, sleep_status_reg at 256.
        for off in [244, 256] {
            assert_eq!(fadt[off], 1, "I/O space");
            assert_eq!(fadt[off + 1], 8, "8 bits wide");
            assert_eq!(
                u64::from_le_bytes(fadt[off + 4..off + 12].try_into().unwrap()),
                0x3c0
            );
        }
        let dsdt_addr = u64::from_le_bytes(fadt[140..148].try_into().unwrap());
        let (_, dsdt) = tables.iter().find(|(a, _)| *a == dsdt_addr).unwrap();
        assert!(dsdt.starts_with(b"DSDT"));
    }

    #[test]
    fn madt_lists_every_vcpu_and_the_ioapic() {
        let tables = build_tables(&cfg(4, 0)).unwrap();
        let madt = find(&tables, b"APIC");
        let mut lapics = Vec::new();
        let mut ioapics = 0;
        let mut off = 44;
        while off < madt.len() {
            let (kind, len) = (madt[off], madt[off + 1] as usize);
            match kind {
                0 => lapics.push(madt[off + 3]),
                1 => {
                    ioapics += 1;
                    let addr = u32::from_le_bytes(madt[off + 4..off + 8].try_into().unwrap());
                    assert_eq!(addr, IOAPIC_START);
                }
                _ => {}
            }
            off += len;
        }
        assert_eq!(lapics, [0, 1, 2, 3]);
        assert_eq!(ioapics, 1);
    }

    #[test]
    fn dsdt_describes_each_virtio_device_and_the_power_button() {
        let tables = build_tables(&cfg(2, 3)).unwrap();
        let dsdt = find(&tables, b"DSDT");
        let count = |needle: &[u8]| dsdt.windows(needle.len()).filter(|w| *w == needle).count();
        assert_eq!(count(b"LNRO0005\0"), 3);
        assert_eq!(count(b"ACPI0013\0"), 1);
        assert_eq!(count(b"_S5_"), 1);
        assert_eq!(count(b"_EVT"), 1);
        for name in [b"V000", b"V001", b"V002"] {
            assert_eq!(count(name), 1);
        }
        // The second device's Memory32Fixed descriptor (0x86) has its base.
        let base = 0xc000_3000u32.to_le_bytes();
        let desc = [&[0x86u8, 9, 0, 1][..], &base[..]].concat();
        assert_eq!(count(&desc), 1);
    }

    #[test]
    fn many_devices_still_fit() {
        assert!(build_tables(&cfg(32, 16)).is_ok());
    }
}
