//! virtio-net on a host tap device: one RX and one TX queue, the MAC address in
//! the configuration space, checksum and TSO offloads passed through, and
//! mergeable receive buffers (a large frame spans several small guest buffers).
//!
//! - [`tap`]: the tap device.
//! - [`Net`]: the device, generic over its frame backend ([`FrameIo`]) so the
//!   queue logic is tested with a socket pair instead of a tap.

pub mod tap;

use std::io::ErrorKind;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use event_manager::EventSet;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use self::tap::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, Tap, VNET_HDR_LEN};
use super::chain::{self, Buffers};
use super::{
    ActivateError, QueueContext, TYPE_NET, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC, VirtioDevice, drain_queue, notify_used, read_config_bytes,
};
use crate::metrics::NetCounters;

const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
const VIRTIO_NET_F_GUEST_TSO6: u64 = 1 << 8;
const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << 12;
const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;

const RX: usize = 0;
const TX: usize = 1;
const QUEUE_SIZE: u16 = 256;
/// The largest frame with its header: a 64 KiB GSO packet plus Ethernet and
/// VLAN headers.
pub const MAX_FRAME: usize = VNET_HDR_LEN + 65550;
/// Offset of `num_buffers` in the virtio-net header.
const NUM_BUFFERS_OFFSET: usize = 10;
/// The device's token for the backend fd.
const TOKEN_TAP: u32 = 0;

/// Where frames go to and come from.
pub trait FrameIo: AsRawFd + Send {
    /// Reads one frame with its virtio-net header (non-blocking).
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Writes one frame with its virtio-net header.
    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<usize>;
    /// Sets which offloaded frames may be delivered to the guest.
    fn set_offload(&self, tun_flags: u32) -> Result<(), String>;
}

impl FrameIo for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        Tap::read_frame(self, buf)
    }
    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        Tap::write_frame(self, frame)
    }
    fn set_offload(&self, tun_flags: u32) -> Result<(), String> {
        Tap::set_offload(self, tun_flags).map_err(|e| e.to_string())
    }
}

enum Delivery {
    Delivered,
    NoBuffers,
    Dropped,
}

/// A virtio-net device.
pub struct Net<T: FrameIo> {
    id: String,
    backend: T,
    config: [u8; 6],
    acked: u64,
    metrics: Arc<NetCounters>,
    rx_buf: Vec<u8>,
    /// Length of a frame read from the backend and not yet delivered.
    rx_pending: Option<usize>,
    tx_buf: Vec<u8>,
}

impl<T: FrameIo> Net<T> {
    pub fn new(id: &str, backend: T, mac: [u8; 6], metrics: Arc<NetCounters>) -> Self {
        Self {
            id: id.to_string(),
            backend,
            config: mac,
            acked: 0,
            metrics,
            rx_buf: vec![0; MAX_FRAME],
            rx_pending: None,
            tx_buf: Vec::with_capacity(MAX_FRAME),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn process_rx(&mut self, ctx: &mut QueueContext) {
        let mem = ctx.mem;
        let Some(queue) = ctx.queues.get_mut(RX) else {
            return;
        };
        let mut used = false;
        loop {
            let len = match self.rx_pending {
                Some(len) => len,
                None => match self.backend.read_frame(&mut self.rx_buf) {
                    Ok(n) if n > VNET_HDR_LEN => {
                        self.rx_pending = Some(n);
                        n
                    }
                    Ok(_) => {
                        self.metrics.errors.inc();
                        continue;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.metrics.errors.inc();
                        tracing::warn!("nic {}: reading the tap: {e}", self.id);
                        break;
                    }
                },
            };
            let avail_before = queue.avail_idx(mem, Ordering::Acquire).ok();
            let (delivery, consumed) = self.deliver(queue, mem, len);
            used |= consumed;
            match delivery {
                Delivery::Delivered => {
                    self.rx_pending = None;
                    self.metrics.rx_packets.inc();
                    self.metrics.rx_bytes.add((len - VNET_HDR_LEN) as u64);
                }
                Delivery::Dropped => {
                    self.rx_pending = None;
                    self.metrics.rx_dropped.inc();
                }
                Delivery::NoBuffers => {
                    // Keep the frame and ask to be told when buffers come;
                    // unless some came since this attempt started.
                    let _ = queue.enable_notification(mem);
                    if queue.avail_idx(mem, Ordering::Acquire).ok() != avail_before {
                        continue;
                    }
                    break;
                }
            }
        }
        if used {
            notify_used(queue, mem, ctx.interrupt);
        }
    }

    /// Puts the pending frame of `len` bytes into the guest's buffers. Returns
    /// what happened and whether any used entry was published.
    fn deliver(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        len: usize,
    ) -> (Delivery, bool) {
        let mergeable = self.acked & VIRTIO_NET_F_MRG_RXBUF != 0;
        let mut chains: Vec<(u16, Buffers)> = Vec::new();
        let mut room = 0u64;
        while room < len as u64 {
            let Some(c) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = c.head_index();
            match chain::collect(c, u64::from(u32::MAX)) {
                Ok(b) if b.readable.is_empty() && b.writable.len() >= VNET_HDR_LEN as u64 => {
                    room += b.writable.len();
                    chains.push((head, b.writable));
                }
                other => {
                    // A malformed buffer: give it back empty, drop this frame,
                    // and give back the buffers already taken for it.
                    self.metrics.errors.inc();
                    if let Err(e) = other {
                        tracing::debug!("nic {}: malformed RX buffer: {e}", self.id);
                    }
                    let _ = queue.add_used(mem, head, 0);
                    for (h, _) in chains {
                        let _ = queue.add_used(mem, h, 0);
                    }
                    return (Delivery::Dropped, true);
                }
            }
            if !mergeable {
                break;
            }
        }
        if room < len as u64 {
            if !mergeable && chains.len() == 1 {
                // The buffer is too small for this frame: keep the buffer.
                queue.go_to_previous_position();
                return (Delivery::Dropped, false);
            }
            for _ in &chains {
                queue.go_to_previous_position();
            }
            return (Delivery::NoBuffers, false);
        }
        let num_buffers = chains.len() as u16;
        self.rx_buf[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2]
            .copy_from_slice(&num_buffers.to_le_bytes());
        let mut off = 0;
        for (head, bufs) in chains {
            let n = match bufs.write_from(mem, &self.rx_buf[off..len]) {
                Ok(n) => n,
                Err(_) => {
                    self.metrics.errors.inc();
                    0
                }
            };
            off += n;
            if let Err(e) = queue.add_used(mem, head, n as u32) {
                tracing::warn!("nic {}: cannot publish an RX buffer: {e}", self.id);
            }
        }
        (Delivery::Delivered, true)
    }

    fn process_tx(&mut self, ctx: &mut QueueContext) {
        let mem = ctx.mem;
        let Some(queue) = ctx.queues.get_mut(TX) else {
            return;
        };
        let (backend, tx_buf, metrics, id) =
            (&mut self.backend, &mut self.tx_buf, &self.metrics, &self.id);
        let used = drain_queue(queue, mem, |c| {
            let frame = match chain::collect(c, MAX_FRAME as u64) {
                Ok(b) if b.writable.is_empty() && b.readable.len() > VNET_HDR_LEN as u64 => {
                    b.readable
                }
                Ok(_) => {
                    metrics.errors.inc();
                    tracing::debug!("nic {id}: malformed TX chain");
                    return 0;
                }
                Err(e) => {
                    metrics.errors.inc();
                    tracing::debug!("nic {id}: malformed TX chain: {e}");
                    return 0;
                }
            };
            tx_buf.resize(frame.len() as usize, 0);
            if frame.read_into(mem, tx_buf).is_err() {
                metrics.errors.inc();
                return 0;
            }
            match backend.write_frame(tx_buf) {
                Ok(_) => {
                    metrics.tx_packets.inc();
                    metrics.tx_bytes.add((tx_buf.len() - VNET_HDR_LEN) as u64);
                }
                Err(e) => {
                    metrics.errors.inc();
                    tracing::debug!("nic {id}: writing to the tap: {e}");
                }
            }
            0
        });
        if used {
            notify_used(queue, mem, ctx.interrupt);
        }
    }
}

impl<T: FrameIo> VirtioDevice for Net<T> {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_RING_F_INDIRECT_DESC
            | VIRTIO_NET_F_MAC
            | VIRTIO_NET_F_MRG_RXBUF
            | VIRTIO_NET_F_CSUM
            | VIRTIO_NET_F_HOST_TSO4
            | VIRTIO_NET_F_HOST_TSO6
            | VIRTIO_NET_F_GUEST_CSUM
            | VIRTIO_NET_F_GUEST_TSO4
            | VIRTIO_NET_F_GUEST_TSO6
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, acked: u64) -> Result<(), ActivateError> {
        self.acked = acked;
        let mut tun = 0;
        if acked & VIRTIO_NET_F_GUEST_CSUM != 0 {
            tun |= TUN_F_CSUM;
            if acked & VIRTIO_NET_F_GUEST_TSO4 != 0 {
                tun |= TUN_F_TSO4;
            }
            if acked & VIRTIO_NET_F_GUEST_TSO6 != 0 {
                tun |= TUN_F_TSO6;
            }
        }
        self.backend.set_offload(tun).map_err(ActivateError::Device)
    }

    fn reset(&mut self) {
        self.acked = 0;
        self.rx_pending = None;
    }

    fn activated(&mut self, ctx: &mut QueueContext) {
        // Frames may have arrived while the device was not active.
        self.process_rx(ctx);
    }

    fn queue_notified(&mut self, index: usize, ctx: &mut QueueContext) {
        match index {
            RX => self.process_rx(ctx),
            TX => self.process_tx(ctx),
            _ => {}
        }
    }

    fn extra_fds(&self) -> Vec<(RawFd, u32, EventSet)> {
        vec![(
            self.backend.as_raw_fd(),
            TOKEN_TAP,
            EventSet::IN | EventSet::EDGE_TRIGGERED,
        )]
    }

    fn extra_event(&mut self, token: u32, _events: EventSet, ctx: &mut QueueContext) {
        if token == TOKEN_TAP {
            self.process_rx(ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::IrqLine;
    use crate::devices::virtio::Interrupt;
    use crate::devices::virtio::test_utils::{TestQueue, desc, mem};
    use std::os::unix::net::UnixDatagram;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    /// One end of a datagram socket pair: frames keep their boundaries.
    struct Pipe(UnixDatagram);

    impl AsRawFd for Pipe {
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_raw_fd()
        }
    }

    impl FrameIo for Pipe {
        fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.recv(buf)
        }
        fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<usize> {
            self.0.send(frame)
        }
        fn set_offload(&self, _: u32) -> Result<(), String> {
            Ok(())
        }
    }

    struct Setup {
        net: Net<Pipe>,
        peer: UnixDatagram,
        irq: EventFd,
        interrupt: Interrupt,
    }

    fn setup(features: u64) -> Setup {
        let (a, b) = UnixDatagram::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut net = Net::new(
            "eth0",
            Pipe(a),
            [0x52, 0x54, 0, 1, 2, 3],
            Arc::new(NetCounters::default()),
        );
        net.activate(features).unwrap();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let interrupt = Interrupt::new(IrqLine::new(irq.try_clone().unwrap(), 6));
        Setup {
            net,
            peer: b,
            irq,
            interrupt,
        }
    }

    fn frame(payload_len: usize, fill: u8) -> Vec<u8> {
        let mut f = vec![0u8; VNET_HDR_LEN];
        f.extend(std::iter::repeat_n(fill, payload_len));
        f
    }

    #[test]
    fn transmits_frames_and_skips_malformed_chains() {
        let mut s = setup(VIRTIO_F_VERSION_1);
        let m = mem();
        let rxq = TestQueue::new(&m, 16);
        let mut txq = TestQueue::new(&m, 16);
        m.write_slice(&frame(60, 0xaa), GuestAddress(0x1000))
            .unwrap();
        // Header and payload in two buffers.
        txq.add_chain(&[desc(0x1000, 12, false), desc(0x100c, 60, false)]);
        // A writable buffer in a TX chain.
        txq.add_chain(&[desc(0x1000, 72, true)]);
        // Too short to hold even the header.
        txq.add_chain(&[desc(0x1000, 8, false)]);
        txq.add_chain(&[desc(0x1000, 72, false)]);
        let mut queues = vec![rxq.queue(), txq.queue()];
        let mut ctx = QueueContext {
            mem: &m,
            queues: &mut queues,
            interrupt: &s.interrupt,
        };
        s.net.queue_notified(TX, &mut ctx);
        assert_eq!(txq.used_idx(), 4);
        let mut buf = [0u8; 200];
        assert_eq!(s.peer.recv(&mut buf).unwrap(), 72);
        assert_eq!(buf[12], 0xaa);
        assert_eq!(s.peer.recv(&mut buf).unwrap(), 72);
        assert_eq!(s.net.metrics.tx_packets.get(), 2);
        assert_eq!(s.net.metrics.errors.get(), 2);
        assert!(s.irq.read().is_ok());
    }

    #[test]
    fn receives_into_one_buffer_or_waits_for_one() {
        let mut s = setup(VIRTIO_F_VERSION_1);
        let m = mem();
        let mut rxq = TestQueue::new(&m, 16);
        let txq = TestQueue::new(&m, 16);
        let mut queues = vec![rxq.queue(), txq.queue()];
        s.peer.send(&frame(100, 0x11)).unwrap();
        {
            let mut ctx = QueueContext {
                mem: &m,
                queues: &mut queues,
                interrupt: &s.interrupt,
            };
            // No buffers yet: the frame waits.
            s.net.process_rx(&mut ctx);
        }
        assert_eq!(rxq.used_idx(), 0);
        assert!(s.net.rx_pending.is_some());
        rxq.add_chain(&[desc(0x2000, 2048, true)]);
        let mut ctx = QueueContext {
            mem: &m,
            queues: &mut queues,
            interrupt: &s.interrupt,
        };
        s.net.queue_notified(RX, &mut ctx);
        assert_eq!(rxq.used_idx(), 1);
        assert_eq!(rxq.used(0).1, 112);
        let nb: u16 = m.read_obj(GuestAddress(0x2000 + 10)).unwrap();
        assert_eq!(nb, 1);
        let b: u8 = m.read_obj(GuestAddress(0x2000 + 111)).unwrap();
        assert_eq!(b, 0x11);
        assert_eq!(s.net.metrics.rx_bytes.get(), 100);
    }

    #[test]
    fn mergeable_buffers_carry_a_big_frame() {
        let mut s = setup(VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF);
        let m = mem();
        let mut rxq = TestQueue::new(&m, 16);
        let txq = TestQueue::new(&m, 16);
        for i in 0..4 {
            rxq.add_chain(&[desc(0x10000 + i * 0x1000, 1500, true)]);
        }
        let mut queues = vec![rxq.queue(), txq.queue()];
        s.peer.send(&frame(4000, 0x22)).unwrap();
        let mut ctx = QueueContext {
            mem: &m,
            queues: &mut queues,
            interrupt: &s.interrupt,
        };
        s.net.process_rx(&mut ctx);
        assert_eq!(rxq.used_idx(), 3);
        assert_eq!(
            [rxq.used(0).1, rxq.used(1).1, rxq.used(2).1],
            [1500, 1500, 1012]
        );
        let nb: u16 = m.read_obj(GuestAddress(0x10000 + 10)).unwrap();
        assert_eq!(nb, 3);
        // A frame bigger than all remaining buffers waits, they are not used up.
        s.peer.send(&frame(4000, 0x33)).unwrap();
        s.net.process_rx(&mut ctx);
        assert_eq!(rxq.used_idx(), 3);
        assert!(s.net.rx_pending.is_some());
    }

    #[test]
    fn a_frame_too_big_for_a_single_buffer_is_dropped() {
        let mut s = setup(VIRTIO_F_VERSION_1);
        let m = mem();
        let mut rxq = TestQueue::new(&m, 16);
        let txq = TestQueue::new(&m, 16);
        rxq.add_chain(&[desc(0x2000, 100, true)]);
        let mut queues = vec![rxq.queue(), txq.queue()];
        s.peer.send(&frame(500, 1)).unwrap();
        s.peer.send(&frame(50, 2)).unwrap();
        let mut ctx = QueueContext {
            mem: &m,
            queues: &mut queues,
            interrupt: &s.interrupt,
        };
        s.net.process_rx(&mut ctx);
        assert_eq!(s.net.metrics.rx_dropped.get(), 1);
        // The small frame used the buffer the big one could not.
        assert_eq!(rxq.used_idx(), 1);
        assert_eq!(rxq.used(0).1, 62);
    }
}
