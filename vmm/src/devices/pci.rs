//! PCI configuration space through configuration mechanism #1 (I/O ports
//! 0xcf8–0xcff), with one device on it: the host bridge at 00:00.0.
//!
//! Mica's devices are virtio-mmio, but an x86 Linux kernel built with PCI (Debian's,
//! and Mica's own, which needs it for ACPI) probes for a way to reach PCI
//! configuration space at boot. With none it prints `PCI: Fatal: No config space
//! access function found`, the first thing a user would read in a healthy guest's
//! console log. The kernel accepts mechanism #1 when the address register reads
//! back what was written and bus 0 holds a host bridge (its "sanity check"), so
//! that is what this device offers: a read-only host bridge, and all-ones for every
//! other function (no device there). Writes to configuration registers are ignored.
//!
//! ```text
//! 0xcf8  CONFIG_ADDRESS (32 bits): enable(31) bus(23:16) device(15:11)
//!        function(10:8) register(7:2)
//! 0xcfc  CONFIG_DATA: 1, 2 or 4 bytes at register + (port - 0xcfc)
//! ```

use crate::devices::BusDevice;

/// First port of the mechanism (CONFIG_ADDRESS); CONFIG_DATA follows at +4.
pub const PCI_CONFIG_PORT: u16 = 0xcf8;
/// Ports taken: CONFIG_ADDRESS and CONFIG_DATA, 4 bytes each.
pub const PCI_CONFIG_PORT_LEN: u64 = 8;

/// The host bridge's identity: Intel's ID for a virtual host bridge (as Cloud
/// Hypervisor's guests see it), class "host bridge".
const HOST_BRIDGE_VENDOR: u16 = 0x8086;
const HOST_BRIDGE_DEVICE: u16 = 0x0d57;
const CLASS_BRIDGE_HOST: u32 = 0x06_00_00;

const ENABLE: u32 = 1 << 31;

/// The configuration-space ports.
pub struct PciConfigIo {
    address: u32,
    host_bridge: [u8; 256],
}

impl Default for PciConfigIo {
    fn default() -> Self {
        Self::new()
    }
}

impl PciConfigIo {
    pub fn new() -> Self {
        let mut space = [0u8; 256];
        space[0x00..0x02].copy_from_slice(&HOST_BRIDGE_VENDOR.to_le_bytes());
        space[0x02..0x04].copy_from_slice(&HOST_BRIDGE_DEVICE.to_le_bytes());
        // Revision 0, then the 24-bit class code (prog-if, subclass, class).
        space[0x09..0x0c].copy_from_slice(&CLASS_BRIDGE_HOST.to_le_bytes()[..3]);
        // Header type 0, single function; no BARs, no capabilities, no interrupt.
        space[0x2c..0x2e].copy_from_slice(&HOST_BRIDGE_VENDOR.to_le_bytes());
        space[0x2e..0x30].copy_from_slice(&HOST_BRIDGE_DEVICE.to_le_bytes());
        Self {
            address: 0,
            host_bridge: space,
        }
    }

    /// The configuration space the address register selects, if a device is
    /// there, and the register's byte offset in it.
    fn selected(&self) -> Option<(&[u8; 256], usize)> {
        if self.address & ENABLE == 0 {
            return None;
        }
        let bus = (self.address >> 16) & 0xff;
        let device = (self.address >> 11) & 0x1f;
        let function = (self.address >> 8) & 0x7;
        let register = (self.address & 0xfc) as usize;
        (bus == 0 && device == 0 && function == 0).then_some((&self.host_bridge, register))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            // CONFIG_ADDRESS, or a part of it.
            0..=3 => {
                let bytes = self.address.to_le_bytes();
                let start = offset as usize;
                for (i, b) in data.iter_mut().enumerate() {
                    *b = bytes.get(start + i).copied().unwrap_or(0xff);
                }
            }
            // CONFIG_DATA.
            4..=7 => {
                data.fill(0xff);
                if let Some((space, register)) = self.selected() {
                    let start = register + (offset as usize - 4);
                    for (i, b) in data.iter_mut().enumerate() {
                        if let Some(v) = space.get(start + i) {
                            *b = *v;
                        }
                    }
                }
            }
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset > 3 {
            // CONFIG_DATA: the host bridge has no writable register.
            return;
        }
        let mut bytes = self.address.to_le_bytes();
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = bytes.get_mut(offset as usize + i) {
                *slot = *b;
            }
        }
        self.address = u32::from_le_bytes(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_read(
        io: &mut PciConfigIo,
        bus: u32,
        dev: u32,
        func: u32,
        reg: u32,
        len: usize,
    ) -> u32 {
        io.write(
            0,
            &(ENABLE | bus << 16 | dev << 11 | func << 8 | (reg & 0xfc)).to_le_bytes(),
        );
        let mut data = vec![0u8; len];
        io.read(4 + u64::from(reg & 3), &mut data);
        data.resize(4, 0);
        u32::from_le_bytes(data.try_into().unwrap())
    }

    #[test]
    fn the_address_register_reads_back_what_linux_writes() {
        let mut io = PciConfigIo::new();
        // Linux's type-1 probe: a byte to 0xcfb, then the address register
        // saved, set to the enable bit alone, and read back.
        io.write(3, &[0x01]);
        let mut saved = [0u8; 4];
        io.read(0, &mut saved);
        io.write(0, &0x8000_0000u32.to_le_bytes());
        let mut back = [0u8; 4];
        io.read(0, &mut back);
        assert_eq!(u32::from_le_bytes(back), 0x8000_0000);
        io.write(0, &saved);
        io.read(0, &mut back);
        assert_eq!(back, saved);
    }

    #[test]
    fn bus_zero_holds_a_host_bridge_and_nothing_else() {
        let mut io = PciConfigIo::new();
        assert_eq!(config_read(&mut io, 0, 0, 0, 0, 2), 0x8086);
        assert_eq!(config_read(&mut io, 0, 0, 0, 2, 2), 0x0d57);
        assert_eq!(config_read(&mut io, 0, 0, 0, 0, 4), 0x0d57_8086);
        // Class code (the 16 bits Linux's sanity check reads at 0x0a).
        assert_eq!(config_read(&mut io, 0, 0, 0, 0x0a, 2), 0x0600);
        assert_eq!(config_read(&mut io, 0, 0, 0, 0x0b, 1), 0x06);
        // Header type 0 (single function), no BARs.
        assert_eq!(config_read(&mut io, 0, 0, 0, 0x0e, 1), 0);
        assert_eq!(config_read(&mut io, 0, 0, 0, 0x10, 4), 0);
        // Other functions, devices and buses: nobody home.
        assert_eq!(config_read(&mut io, 0, 0, 1, 0, 4), 0xffff_ffff);
        assert_eq!(config_read(&mut io, 0, 1, 0, 0, 2), 0xffff);
        assert_eq!(config_read(&mut io, 1, 0, 0, 0, 4), 0xffff_ffff);
    }

    #[test]
    fn without_the_enable_bit_or_on_writes_nothing_changes() {
        let mut io = PciConfigIo::new();
        io.write(0, &0u32.to_le_bytes());
        let mut data = [0u8; 4];
        io.read(4, &mut data);
        assert_eq!(data, [0xff; 4]);
        // Writing the vendor register of the host bridge is ignored.
        io.write(0, &ENABLE.to_le_bytes());
        io.write(4, &[0, 0, 0, 0]);
        assert_eq!(config_read(&mut io, 0, 0, 0, 0, 2), 0x8086);
    }
}
