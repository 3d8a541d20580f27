//! virtio devices over the MMIO transport (virtio 1.x, split virtqueues from the
//! virtio-queue crate).
//!
//! - [`mmio`]: the transport: registers on the MMIO bus, feature negotiation,
//!   queue set-up, activation; and the device's handler on the event loop.
//! - [`VirtioDevice`]: what a device provides; [`block`], [`net`] and [`rng`].
//! - [`chain`]: a descriptor chain checked against guest memory and split into
//!   its device-readable and device-writable buffers.
//!
//! A malformed chain (buffers outside guest memory, writable before readable,
//! missing header or status) fails that request alone: the device completes it
//! with an error or drops it, and the VMM carries on.

pub mod block;
pub mod chain;
pub mod mmio;
pub mod net;
pub mod rng;

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};

use event_manager::EventSet;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use crate::devices::IrqLine;

/// Feature bits common to all devices.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// Device types.
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;

/// Interrupt status bits.
pub const INT_USED_RING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// A device's interrupt: the status register the driver reads and acknowledges,
/// and the line.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    line: IrqLine,
}

impl Interrupt {
    pub fn new(line: IrqLine) -> Self {
        Self {
            status: AtomicU32::new(0),
            line,
        }
    }

    /// Tells the driver that a used ring has new entries.
    pub fn signal_used_queue(&self) {
        self.signal(INT_USED_RING);
    }

    /// Tells the driver that the device status or configuration changed.
    pub fn signal_config(&self) {
        self.signal(INT_CONFIG);
    }

    fn signal(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.line.trigger() {
            tracing::error!("virtio interrupt on GSI {}: {e}", self.line.gsi());
        }
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }
}

/// What a device's queue handlers work with.
pub struct QueueContext<'a> {
    pub mem: &'a GuestMemoryMmap,
    pub queues: &'a mut [Queue],
    pub interrupt: &'a Interrupt,
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("queue {0} is ready but not valid")]
    BadQueue(usize),
    #[error("the driver did not accept VIRTIO_F_VERSION_1")]
    NoVersion1,
    #[error("{0}")]
    Device(String),
}

/// A virtio device behind the MMIO transport.
pub trait VirtioDevice: Send {
    /// The virtio device type ([`TYPE_NET`], ...).
    fn device_type(&self) -> u32;
    /// The maximum size of each queue; their number is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered to the driver.
    fn features(&self) -> u64;
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the configuration space (ignored by default).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver set DRIVER_OK with these features.
    fn activate(&mut self, acked_features: u64) -> Result<(), ActivateError>;
    /// The driver reset the device.
    fn reset(&mut self) {}
    /// Called on the event loop once activation is complete there (a device can
    /// look at input that arrived while it was inactive).
    fn activated(&mut self, _ctx: &mut QueueContext) {}
    /// Queue `index` was notified.
    fn queue_notified(&mut self, index: usize, ctx: &mut QueueContext);
    /// Other file descriptors to watch once active, with a device-chosen token.
    fn extra_fds(&self) -> Vec<(RawFd, u32, EventSet)> {
        Vec::new()
    }
    /// One of the [`VirtioDevice::extra_fds`] is ready.
    fn extra_event(&mut self, _token: u32, _events: EventSet, _ctx: &mut QueueContext) {}
}

/// Reads `data.len()` bytes of a little-endian configuration structure `config`
/// at `offset`; bytes past its end read as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, d) in data.iter_mut().enumerate() {
        *d = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}

/// Processes a queue: pops every available chain, hands it to `handle` (which
/// returns the used length) and publishes it, re-checking after re-enabling
/// notifications so no chain is missed. Returns whether any chain was used.
pub fn drain_queue<F>(queue: &mut Queue, mem: &GuestMemoryMmap, mut handle: F) -> bool
where
    F: FnMut(virtio_queue::DescriptorChain<&GuestMemoryMmap>) -> u32,
{
    use virtio_queue::QueueT;
    let mut used = false;
    loop {
        if queue.disable_notification(mem).is_err() {
            break;
        }
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let len = handle(chain);
            if let Err(e) = queue.add_used(mem, head, len) {
                tracing::warn!("virtio: cannot publish used descriptor {head}: {e}");
            }
            used = true;
        }
        match queue.enable_notification(mem) {
            Ok(true) => continue,
            _ => break,
        }
    }
    used
}

/// Interrupts the driver if it wants to hear about the new used entries.
pub fn notify_used(queue: &mut Queue, mem: &GuestMemoryMmap, interrupt: &Interrupt) {
    use virtio_queue::QueueT;
    if queue.needs_notification(mem).unwrap_or(true) {
        interrupt.signal_used_queue();
    }
}

#[cfg(test)]
pub mod test_utils;
