//! virtio-blk on a raw image file: one request queue, read-only disks, flush,
//! and the disk id as the device serial (GET_ID).
//!
//! - [`request`]: parsing and executing requests (pure logic, tested without KVM).
//! - [`Block`]: the device: features, configuration space, the queue handler.

pub mod request;

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Arc;

use self::request::{Disk, execute, parse};
use super::{
    ActivateError, QueueContext, TYPE_BLOCK, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC, VirtioDevice, chain, drain_queue, notify_used, read_config_bytes,
};
use crate::metrics::BlockCounters;

const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

const QUEUE_SIZE: u16 = 256;
/// Data buffers per request (the queue size, less header and status).
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Longest request accepted (the kernel's limits are far lower).
const MAX_REQUEST_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open the disk {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A virtio-blk device.
pub struct Block {
    id: String,
    disk: Disk,
    config: Vec<u8>,
    metrics: Arc<BlockCounters>,
}

impl Block {
    pub fn open(
        id: &str,
        path: &Path,
        read_only: bool,
        metrics: Arc<BlockCounters>,
    ) -> Result<Self, BlockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.display().to_string(),
                source,
            })?;
        let disk = Disk::new(file, read_only, id).map_err(|source| BlockError::Open {
            path: path.display().to_string(),
            source,
        })?;
        // struct virtio_blk_config: capacity (le64), size_max (le32), seg_max (le32).
        let mut config = Vec::with_capacity(16);
        config.extend_from_slice(&disk.sectors().to_le_bytes());
        config.extend_from_slice(&0u32.to_le_bytes());
        config.extend_from_slice(&SEG_MAX.to_le_bytes());
        Ok(Self {
            id: id.to_string(),
            disk,
            config,
            metrics,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn process(&mut self, ctx: &mut QueueContext) {
        let Some(queue) = ctx.queues.get_mut(0) else {
            return;
        };
        let mem = ctx.mem;
        let (disk, metrics, id) = (&mut self.disk, &self.metrics, &self.id);
        let used = drain_queue(queue, mem, |c| {
            let bufs = match chain::collect(c, MAX_REQUEST_BYTES) {
                Ok(b) => b,
                Err(e) => {
                    metrics.errors.inc();
                    tracing::debug!("disk {id}: malformed request: {e}");
                    return 0;
                }
            };
            let req = match parse(mem, bufs) {
                Ok(r) => r,
                Err(f) => {
                    metrics.errors.inc();
                    tracing::debug!("disk {id}: bad request: {}", f.error);
                    return match f.status {
                        Some(s) => {
                            use vm_memory::Bytes;
                            let _ = mem.write_obj(f.error.status(), s);
                            1
                        }
                        None => 0,
                    };
                }
            };
            match execute(mem, disk, &req) {
                Ok(out) => {
                    match req.kind {
                        request::RequestKind::Read => {
                            metrics.read_ops.inc();
                            metrics.read_bytes.add(out.bytes);
                        }
                        request::RequestKind::Write => {
                            metrics.write_ops.inc();
                            metrics.write_bytes.add(out.bytes);
                        }
                        request::RequestKind::Flush => metrics.flush_ops.inc(),
                        request::RequestKind::GetId => {}
                    }
                    out.used_len
                }
                Err(e) => {
                    metrics.errors.inc();
                    tracing::debug!("disk {id}: request failed: {e}");
                    1
                }
            }
        });
        if used {
            notify_used(queue, mem, ctx.interrupt);
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_RING_F_INDIRECT_DESC
            | VIRTIO_BLK_F_SEG_MAX
            | VIRTIO_BLK_F_FLUSH;
        if self.disk.read_only() {
            f |= VIRTIO_BLK_F_RO;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, _acked: u64) -> Result<(), ActivateError> {
        Ok(())
    }

    fn queue_notified(&mut self, _index: usize, ctx: &mut QueueContext) {
        self.process(ctx);
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
    fn a_bad_request_between_good_ones_fails_alone() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), vec![7u8; 4096]).unwrap();
        let metrics = Arc::new(BlockCounters::default());
        let mut blk = Block::open("d0", f.path(), false, metrics.clone()).unwrap();
        assert_eq!(&blk.config[..8], &8u64.to_le_bytes());

        let m = mem();
        let mut tq = TestQueue::new(&m, 16);
        let read_hdr = GuestAddress(0x1000);
        m.write_obj(0u32, read_hdr).unwrap();
        m.write_obj(1u64, GuestAddress(0x1008)).unwrap();
        let good = [
            desc(0x1000, 16, false),
            desc(0x4000, 512, true),
            desc(0x5000, 1, true),
        ];
        tq.add_chain(&good);
        // A loop: the descriptor points at itself.
        let me = tq.reserve(1);
        tq.write_desc(me, 0x1000, 16, 1, me);
        tq.publish(me);
        // Out of guest memory.
        tq.add_chain(&[
            desc(0x1000, 16, false),
            desc(0xffff_0000, 512, true),
            desc(0x5000, 1, true),
        ]);
        tq.add_chain(&good);

        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let interrupt = Interrupt::new(IrqLine::new(irq.try_clone().unwrap(), 5));
        let mut queues = vec![tq.queue()];
        let mut ctx = QueueContext {
            mem: &m,
            queues: &mut queues,
            interrupt: &interrupt,
        };
        blk.queue_notified(0, &mut ctx);
        assert_eq!(tq.used_idx(), 4, "every chain was completed");
        assert_eq!(tq.used(0).1, 513);
        assert_eq!(tq.used(3).1, 513);
        assert_eq!(metrics.read_ops.get(), 2);
        assert_eq!(metrics.errors.get(), 2);
        assert_eq!(irq.read().unwrap(), 1);
    }
}
