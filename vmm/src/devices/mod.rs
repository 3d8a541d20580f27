//! Emulated devices and the buses the vCPUs dispatch port I/O and MMIO exits to.
//!
//! A device's register accesses run on the vCPU thread that trapped; its I/O work
//! (virtio queues, sockets, taps) runs on the device event loop. Devices raise
//! interrupts by writing an eventfd that KVM turns into an IOAPIC pin pulse
//! (irqfd), so no thread ever calls into KVM to inject one.

pub mod acpi;
pub mod boot_timer;
pub mod display;
pub mod legacy;
pub mod pci;
pub mod virtio;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

/// A device behind a range of I/O ports or guest physical addresses.
pub trait BusDevice: Send {
    /// A read of `data.len()` bytes at `offset` from the device's base.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A write of `data` at `offset` from the device's base.
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("device range {base:#x}+{len:#x} overlaps another device")]
    Overlap { base: u64, len: u64 },
    #[error("device range {base:#x}+{len:#x} is empty or wraps around")]
    BadRange { base: u64, len: u64 },
}

struct BusEntry {
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// Maps address ranges to devices. Built before the vCPUs start, then shared
/// read-only by them.
#[derive(Default)]
pub struct Bus {
    entries: BTreeMap<u64, BusEntry>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `device` at `[base, base + len)`.
    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        if let Some((b, e)) = self.entries.range(..end).next_back()
            && b + e.len > base
        {
            return Err(BusError::Overlap { base, len });
        }
        self.entries.insert(base, BusEntry { len, device });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &BusEntry)> {
        let (base, entry) = self.entries.range(..=addr).next_back()?;
        (addr - base < entry.len).then_some((*base, entry))
    }

    /// Dispatches a read; `false` if no device claims `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((base, entry)) => {
                lock(&entry.device).read(addr - base, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; `false` if no device claims `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((base, entry)) => {
                lock(&entry.device).write(addr - base, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device mutex. A device that panicked while holding its lock has
/// already taken the VMM down (panic = abort is not set, but the thread that
/// panicked reports it); the state is still usable for the rest of the teardown.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An interrupt line: an eventfd registered with KVM as an irqfd.
#[derive(Debug)]
pub struct IrqLine {
    evt: EventFd,
    gsi: u32,
}

impl IrqLine {
    pub fn new(evt: EventFd, gsi: u32) -> Self {
        Self { evt, gsi }
    }

    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    /// Pulses the line (edge-triggered).
    pub fn trigger(&self) -> std::io::Result<()> {
        self.evt.write(1)
    }

    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Self {
            evt: self.evt.try_clone()?,
            gsi: self.gsi,
        })
    }
}

impl vm_superio::Trigger for IrqLine {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        IrqLine::trigger(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Reg {
        last: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_and_refuses_overlaps() {
        let mut bus = Bus::new();
        let a = Arc::new(Mutex::new(Reg::default()));
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        bus.insert(Arc::new(Mutex::new(Reg::default())), 0x400, 4)
            .unwrap();
        assert_eq!(
            bus.insert(Arc::new(Mutex::new(Reg::default())), 0x3fc, 8),
            Err(BusError::Overlap {
                base: 0x3fc,
                len: 8
            })
        );
        assert_eq!(
            bus.insert(Arc::new(Mutex::new(Reg::default())), 0x3f0, 9),
            Err(BusError::Overlap {
                base: 0x3f0,
                len: 9
            })
        );
        assert!(
            bus.insert(Arc::new(Mutex::new(Reg::default())), 0x3f0, 8)
                .is_ok()
        );
        let mut data = [0u8; 1];
        assert!(bus.read(0x3fd, &mut data));
        assert_eq!(data, [5]);
        assert!(bus.write(0x3ff, &[7]));
        assert_eq!(a.lock().unwrap().last, Some((7, vec![7])));
        assert!(!bus.read(0x400 + 4, &mut data));
        assert!(!bus.write(0x3e0, &[1]));
    }
}
