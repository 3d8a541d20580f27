//! virtio-rng: fills the guest's buffers with bytes from the host's
//! `getrandom(2)`.

use std::sync::Arc;

use super::{
    ActivateError, QueueContext, TYPE_RNG, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC, VirtioDevice, chain, drain_queue, notify_used,
};
use crate::metrics::RngCounters;

const QUEUE_SIZE: u16 = 64;
/// Bytes given per request at most; the driver asks again for more.
const MAX_PER_REQUEST: usize = 64 << 10;

/// Fills `buf` from the kernel's CSPRNG.
pub fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`, a
        // live, writable buffer.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// The entropy device.
pub struct Rng {
    metrics: Arc<RngCounters>,
    buf: Vec<u8>,
}

impl Rng {
    pub fn new(metrics: Arc<RngCounters>) -> Self {
        Self {
            metrics,
            buf: Vec::new(),
        }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, _acked: u64) -> Result<(), ActivateError> {
        Ok(())
    }

    fn queue_notified(&mut self, _index: usize, ctx: &mut QueueContext) {
        let mem = ctx.mem;
        let Some(queue) = ctx.queues.get_mut(0) else {
            return;
        };
        let (metrics, buf) = (&self.metrics, &mut self.buf);
        let used = drain_queue(queue, mem, |c| {
            metrics.requests.inc();
            let bufs = match chain::collect(c, u64::from(u32::MAX)) {
                Ok(b) if b.readable.is_empty() => b.writable,
                _ => {
                    metrics.errors.inc();
                    return 0;
                }
            };
            let n = (bufs.len() as usize).min(MAX_PER_REQUEST);
            buf.resize(n, 0);
            if fill_random(buf).is_err() {
                metrics.errors.inc();
                return 0;
            }
            match bufs.write_from(mem, buf) {
                Ok(written) => {
                    metrics.bytes.add(written as u64);
                    written as u32
                }
                Err(_) => {
                    metrics.errors.inc();
                    0
                }
            }
        });
        if used {
            notify_used(queue, mem, ctx.interrupt);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::IrqLine;
    use crate::devices::virtio::Interrupt;
    use crate::devices::virtio::test_utils::{TestQueue, desc, mem};
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    #[test]
    fn fills_writable_buffers_and_refuses_readable_ones() {
        let m = mem();
        let mut tq = TestQueue::new(&m, 16);
        tq.add_chain(&[desc(0x1000, 64, true), desc(0x2000, 64, true)]);
        tq.add_chain(&[desc(0x3000, 64, false)]);
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let interrupt = Interrupt::new(IrqLine::new(irq.try_clone().unwrap(), 7));
        let mut queues = vec![tq.queue()];
        let mut rng = Rng::new(Arc::new(RngCounters::default()));
        rng.queue_notified(
            0,
            &mut QueueContext {
                mem: &m,
                queues: &mut queues,
                interrupt: &interrupt,
            },
        );
        assert_eq!(tq.used_idx(), 2);
        assert_eq!(tq.used(0).1, 128);
        assert_eq!(tq.used(1).1, 0);
        let mut got = [0u8; 64];
        m.read_slice(&mut got, GuestAddress(0x2000)).unwrap();
        assert_ne!(got, [0u8; 64], "random bytes arrived");
        assert_eq!(rng.metrics.bytes.get(), 128);
        assert_eq!(rng.metrics.errors.get(), 1);
    }
}
