//! The virtio-mmio transport (virtio 1.x "modern" register layout, version 2).
//!
//! Register accesses come from vCPU threads through the MMIO bus. Queue
//! notifications do not: each queue's notify register is an ioeventfd, so KVM
//! signals an eventfd and the device loop runs the queue. Activation (the driver
//! writing DRIVER_OK) is handed to the device loop the same way, through an
//! eventfd, where the queue eventfds get registered.
//!
//! ```text
//!  status: 0 ─► ACKNOWLEDGE ─► DRIVER ─► FEATURES_OK ─► DRIVER_OK (active)
//!          ▲                              (refused without VERSION_1)   │
//!          └──────────────── write 0: reset ◄────────────────────────────┘
//! ```

use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::{
    ActivateError, Interrupt, QueueContext, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    VirtioDevice,
};
use crate::devices::{BusDevice, IrqLine};

/// "virt"
const MAGIC: u32 = 0x7472_6976;
const VERSION: u32 = 2;
/// "MICA"
const VENDOR_ID: u32 = u32::from_le_bytes(*b"MICA");

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
/// Offset of the queue notify register (the ioeventfds' address).
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_AVAIL_LOW: u64 = 0x090;
const REG_QUEUE_AVAIL_HIGH: u64 = 0x094;
const REG_QUEUE_USED_LOW: u64 = 0x0a0;
const REG_QUEUE_USED_HIGH: u64 = 0x0a4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG_SPACE: u64 = 0x100;

pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_DEVICE_NEEDS_RESET: u32 = 64;
pub const STATUS_FAILED: u32 = 128;

/// Event-loop token of the activation eventfd; queue `i` uses token `i`, the
/// device's own fds `TOKEN_DEVICE + token`.
const TOKEN_ACTIVATE: u32 = 0x100;
const TOKEN_DEVICE: u32 = 0x200;

#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("creating a queue eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("creating queue {0}")]
    Queue(usize),
}

/// A virtio device on the MMIO transport.
pub struct MmioTransport<D: VirtioDevice> {
    name: String,
    device: D,
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
    activate_evt: EventFd,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    activated: bool,
    registered: bool,
}

impl<D: VirtioDevice> MmioTransport<D> {
    pub fn new(
        name: String,
        device: D,
        mem: GuestMemoryMmap,
        irq: IrqLine,
    ) -> Result<Self, MmioError> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .enumerate()
            .map(|(i, &max)| Queue::new(max).map_err(|_| MmioError::Queue(i)))
            .collect::<Result<Vec<_>, _>>()?;
        let queue_evts = (0..queues.len())
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(MmioError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            name,
            device,
            mem,
            queues,
            queue_evts,
            interrupt: Arc::new(Interrupt::new(irq)),
            activate_evt: EventFd::new(EFD_NONBLOCK).map_err(MmioError::EventFd)?,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            activated: false,
            registered: false,
        })
    }

    /// The eventfd of each queue, to register as ioeventfds on the notify register.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    pub fn is_activated(&self) -> bool {
        self.activated
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn reset(&mut self) {
        if self.activated {
            tracing::debug!("{}: reset by the driver", self.name);
        }
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.acked_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.activated = false;
        self.interrupt.clear();
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let mut value = value;
        let newly = value & !self.status;
        if newly & STATUS_FEATURES_OK != 0 && self.acked_features & VIRTIO_F_VERSION_1 == 0 {
            tracing::warn!("{}: driver did not accept VIRTIO_F_VERSION_1", self.name);
            value &= !STATUS_FEATURES_OK;
        }
        self.status = value;
        if newly & STATUS_DRIVER_OK != 0
            && !self.activated
            && let Err(e) = self.activate()
        {
            tracing::error!("{}: activation failed: {e}", self.name);
            self.status |= STATUS_DEVICE_NEEDS_RESET;
            self.interrupt.signal_config();
        }
    }

    fn activate(&mut self) -> Result<(), ActivateError> {
        if self.acked_features & VIRTIO_F_VERSION_1 == 0 {
            return Err(ActivateError::NoVersion1);
        }
        let event_idx = self.acked_features & VIRTIO_RING_F_EVENT_IDX != 0;
        for (i, q) in self.queues.iter_mut().enumerate() {
            if q.ready() && !q.is_valid(&self.mem) {
                return Err(ActivateError::BadQueue(i));
            }
            q.set_event_idx(event_idx);
        }
        self.device.activate(self.acked_features)?;
        self.activated = true;
        tracing::debug!(
            "{}: activated, features {:#x}",
            self.name,
            self.acked_features
        );
        // The device loop registers the queue eventfds when it sees this.
        let _ = self.activate_evt.write(1);
        Ok(())
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC => MAGIC,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status,
            REG_CONFIG_GENERATION => 0,
            _ => {
                tracing::debug!("{}: read of register {offset:#x}", self.name);
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        let queue_setup_allowed = self.status & STATUS_DRIVER_OK == 0;
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            REG_DRIVER_FEATURES => {
                if self.status & STATUS_FEATURES_OK != 0 {
                    tracing::warn!("{}: features written after FEATURES_OK", self.name);
                    return;
                }
                let offered = self.device.features();
                let (shift, mask) = match self.driver_features_sel {
                    0 => (0, 0xffff_ffffu64),
                    1 => (32, 0xffff_ffff_0000_0000u64),
                    _ => return,
                };
                self.acked_features =
                    (self.acked_features & !mask) | ((u64::from(value) << shift) & offered & mask);
            }
            REG_QUEUE_SEL => self.queue_sel = value,
            REG_QUEUE_NOTIFY => {
                // Normally caught by the ioeventfd; a notification that gets
                // here (different width or value) is forwarded the same way.
                if let Some(evt) = self.queue_evts.get(value as usize) {
                    let _ = evt.write(1);
                }
            }
            REG_INTERRUPT_ACK => self.interrupt.ack(value),
            REG_STATUS => self.set_status(value),
            REG_QUEUE_NUM | REG_QUEUE_READY | REG_QUEUE_DESC_LOW | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_AVAIL_LOW | REG_QUEUE_AVAIL_HIGH | REG_QUEUE_USED_LOW
            | REG_QUEUE_USED_HIGH => {
                if !queue_setup_allowed {
                    tracing::warn!("{}: queue set-up after DRIVER_OK ignored", self.name);
                    return;
                }
                let Some(q) = self.selected_queue() else {
                    return;
                };
                match offset {
                    REG_QUEUE_NUM => q.set_size(value as u16),
                    REG_QUEUE_READY => q.set_ready(value == 1),
                    REG_QUEUE_DESC_LOW => q.set_desc_table_address(Some(value), None),
                    REG_QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(value)),
                    REG_QUEUE_AVAIL_LOW => q.set_avail_ring_address(Some(value), None),
                    REG_QUEUE_AVAIL_HIGH => q.set_avail_ring_address(None, Some(value)),
                    REG_QUEUE_USED_LOW => q.set_used_ring_address(Some(value), None),
                    REG_QUEUE_USED_HIGH => q.set_used_ring_address(None, Some(value)),
                    _ => unreachable!(),
                }
            }
            _ => tracing::debug!("{}: write of register {offset:#x}", self.name),
        }
    }
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
        } else if data.len() == 4 && offset.is_multiple_of(4) {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.device.write_config(offset - CONFIG_SPACE, data);
        } else if data.len() == 4 && offset.is_multiple_of(4) {
            let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            self.write_register(offset, value);
        }
    }
}

impl<D: VirtioDevice> MutEventSubscriber for MmioTransport<D> {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(
            &self.activate_evt,
            TOKEN_ACTIVATE,
            EventSet::IN,
        )) {
            tracing::error!("{}: cannot watch the activation eventfd: {e:?}", self.name);
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let token = events.data();
        let mut ctx = QueueContext {
            mem: &self.mem,
            queues: &mut self.queues,
            interrupt: &self.interrupt,
        };
        if token == TOKEN_ACTIVATE {
            let _ = self.activate_evt.read();
            if !self.registered {
                for (i, evt) in self.queue_evts.iter().enumerate() {
                    if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                        tracing::error!("{}: cannot watch queue {i}: {e:?}", self.name);
                    }
                }
                for (fd, t, set) in self.device.extra_fds() {
                    if let Err(e) = ops.add(Events::with_data_raw(fd, TOKEN_DEVICE + t, set)) {
                        tracing::error!("{}: cannot watch fd {fd}: {e:?}", self.name);
                    }
                }
                self.registered = true;
            }
            if self.activated {
                self.device.activated(&mut ctx);
            }
        } else if let Some(evt) = self.queue_evts.get(token as usize) {
            let _ = evt.read();
            if self.activated {
                self.device.queue_notified(token as usize, &mut ctx);
            }
        } else if token >= TOKEN_DEVICE && self.activated {
            self.device
                .extra_event(token - TOKEN_DEVICE, events.event_set(), &mut ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{TestQueue, mem};

    struct Dummy {
        activated_with: Option<u64>,
        resets: u32,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16]
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 0b101
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[1, 2, 3, 4], offset, data);
        }
        fn activate(&mut self, acked: u64) -> Result<(), ActivateError> {
            self.activated_with = Some(acked);
            Ok(())
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
        fn queue_notified(&mut self, _index: usize, _ctx: &mut QueueContext) {}
    }

    fn transport() -> (MmioTransport<Dummy>, EventFd) {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let t = MmioTransport::new(
            "dummy".into(),
            Dummy {
                activated_with: None,
                resets: 0,
            },
            mem(),
            IrqLine::new(irq.try_clone().unwrap(), 9),
        )
        .unwrap();
        (t, irq)
    }

    fn r(t: &mut MmioTransport<Dummy>, off: u64) -> u32 {
        let mut d = [0u8; 4];
        t.read(off, &mut d);
        u32::from_le_bytes(d)
    }

    fn w(t: &mut MmioTransport<Dummy>, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn set_up_queue(t: &mut MmioTransport<Dummy>, sel: u32, tq: &TestQueue) {
        let q = tq.queue();
        w(t, REG_QUEUE_SEL, sel);
        w(t, REG_QUEUE_NUM, u32::from(q.size()));
        w(t, REG_QUEUE_DESC_LOW, q.desc_table() as u32);
        w(t, REG_QUEUE_AVAIL_LOW, q.avail_ring() as u32);
        w(t, REG_QUEUE_USED_LOW, q.used_ring() as u32);
        w(t, REG_QUEUE_READY, 1);
    }

    #[test]
    fn identifies_itself() {
        let (mut t, _) = transport();
        assert_eq!(r(&mut t, REG_MAGIC), MAGIC);
        assert_eq!(r(&mut t, REG_VERSION), 2);
        assert_eq!(r(&mut t, REG_DEVICE_ID), 42);
        w(&mut t, REG_QUEUE_SEL, 1);
        assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 16);
        w(&mut t, REG_QUEUE_SEL, 2);
        assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 0);
        let mut b = [0u8; 2];
        t.read(CONFIG_SPACE + 2, &mut b);
        assert_eq!(b, [3, 4]);
    }

    #[test]
    fn negotiates_and_activates() {
        let m = mem();
        let tq = TestQueue::new(&m, 16);
        let (mut t, _) = transport();
        w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 1);
        // The driver acks an unoffered bit too: it is dropped.
        w(&mut t, REG_DRIVER_FEATURES_SEL, 0);
        w(&mut t, REG_DRIVER_FEATURES, 0b111);
        w(&mut t, REG_DRIVER_FEATURES_SEL, 1);
        w(&mut t, REG_DRIVER_FEATURES, 1);
        w(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_ne!(r(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
        set_up_queue(&mut t, 0, &tq);
        w(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert!(t.is_activated());
        assert_eq!(t.device.activated_with, Some(VIRTIO_F_VERSION_1 | 0b101));
        assert_eq!(t.activate_evt.read().unwrap(), 1);
        // Queue set-up is refused once running.
        w(&mut t, REG_QUEUE_SEL, 0);
        w(&mut t, REG_QUEUE_NUM, 4);
        assert_eq!(t.queues[0].size(), 16);
        // Reset.
        w(&mut t, REG_STATUS, 0);
        assert!(!t.is_activated());
        assert_eq!(t.device.resets, 1);
        assert!(!t.queues[0].ready());
    }

    #[test]
    fn features_ok_needs_version_1() {
        let (mut t, _) = transport();
        w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut t, REG_DRIVER_FEATURES, 0b1);
        w(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(r(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn an_invalid_queue_fails_activation_not_the_vmm() {
        let (mut t, irq) = transport();
        w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut t, REG_DRIVER_FEATURES_SEL, 1);
        w(&mut t, REG_DRIVER_FEATURES, 1);
        w(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        w(&mut t, REG_QUEUE_SEL, 0);
        w(&mut t, REG_QUEUE_NUM, 16);
        // Rings far outside guest memory.
        w(&mut t, REG_QUEUE_DESC_HIGH, 0x10);
        w(&mut t, REG_QUEUE_READY, 1);
        w(&mut t, REG_STATUS, 0xf);
        assert!(!t.is_activated());
        assert_ne!(r(&mut t, REG_STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), super::super::INT_CONFIG);
    }
}
