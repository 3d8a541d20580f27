//! A descriptor chain, checked and split into buffers.
//!
//! The virtio-queue crate walks a chain (following `next` and indirect tables,
//! stopping at loops); here every buffer is checked to lie wholly inside guest
//! memory, and the order rule (device-readable buffers before device-writable
//! ones) is enforced. Devices then take their header and status bytes from the
//! ends of these lists without caring how the driver split its buffers.

use std::collections::VecDeque;
use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryMmap, ReadVolatile,
    WriteVolatile,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("a device-readable buffer follows a device-writable one")]
    ReadableAfterWritable,
    #[error("the chain is longer than {0} bytes")]
    TooLong(u64),
    #[error("the chain is shorter than expected")]
    TooShort,
    #[error("guest memory access failed")]
    Memory,
}

/// Buffers of one side of a chain, consumable from both ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Buffers {
    segs: VecDeque<(GuestAddress, u32)>,
    len: u64,
}

impl Buffers {
    fn push(&mut self, addr: GuestAddress, len: u32) {
        if len > 0 {
            self.segs.push_back((addr, len));
            self.len += u64::from(len);
        }
    }

    /// Total length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn segments(&self) -> impl Iterator<Item = (GuestAddress, u32)> + '_ {
        self.segs.iter().copied()
    }

    /// Splits off the first `n` bytes.
    pub fn take_front(&mut self, mut n: u64) -> Result<Buffers, ChainError> {
        if n > self.len {
            return Err(ChainError::TooShort);
        }
        let mut out = Buffers::default();
        while n > 0 {
            let (addr, len) = self.segs.pop_front().ok_or(ChainError::TooShort)?;
            if u64::from(len) <= n {
                out.push(addr, len);
                n -= u64::from(len);
            } else {
                let k = n as u32;
                out.push(addr, k);
                self.segs
                    .push_front((addr.unchecked_add(u64::from(k)), len - k));
                n = 0;
            }
        }
        self.len -= out.len;
        Ok(out)
    }

    /// Splits off the last `n` bytes.
    pub fn take_back(&mut self, mut n: u64) -> Result<Buffers, ChainError> {
        if n > self.len {
            return Err(ChainError::TooShort);
        }
        let mut rev = Vec::new();
        while n > 0 {
            let (addr, len) = self.segs.pop_back().ok_or(ChainError::TooShort)?;
            if u64::from(len) <= n {
                rev.push((addr, len));
                n -= u64::from(len);
            } else {
                let k = n as u32;
                rev.push((addr.unchecked_add(u64::from(len - k)), k));
                self.segs.push_back((addr, len - k));
                n = 0;
            }
        }
        let mut out = Buffers::default();
        for (a, l) in rev.into_iter().rev() {
            out.push(a, l);
        }
        self.len -= out.len;
        Ok(out)
    }

    /// Copies the buffers' bytes into `buf` (which must not be longer).
    pub fn read_into(&self, mem: &GuestMemoryMmap, buf: &mut [u8]) -> Result<(), ChainError> {
        let mut done = 0;
        for (addr, len) in self.segments() {
            if done == buf.len() {
                break;
            }
            let n = (len as usize).min(buf.len() - done);
            mem.read_slice(&mut buf[done..done + n], addr)
                .map_err(|_| ChainError::Memory)?;
            done += n;
        }
        if done < buf.len() {
            return Err(ChainError::TooShort);
        }
        Ok(())
    }

    /// Copies `data` into the buffers; returns how many bytes fit.
    pub fn write_from(&self, mem: &GuestMemoryMmap, data: &[u8]) -> Result<usize, ChainError> {
        let mut done = 0;
        for (addr, len) in self.segments() {
            if done == data.len() {
                break;
            }
            let n = (len as usize).min(data.len() - done);
            mem.write_slice(&data[done..done + n], addr)
                .map_err(|_| ChainError::Memory)?;
            done += n;
        }
        Ok(done)
    }

    /// Fills the buffers from `src` (a file positioned where the data starts).
    pub fn fill_from<F: ReadVolatile>(
        &self,
        mem: &GuestMemoryMmap,
        src: &mut F,
    ) -> Result<(), ChainError> {
        for (addr, len) in self.segments() {
            mem.read_exact_volatile_from(addr, src, len as usize)
                .map_err(|_| ChainError::Memory)?;
        }
        Ok(())
    }

    /// Drains the buffers into `dst` (a file positioned where the data goes).
    pub fn drain_to<F: WriteVolatile>(
        &self,
        mem: &GuestMemoryMmap,
        dst: &mut F,
    ) -> Result<(), ChainError> {
        for (addr, len) in self.segments() {
            mem.write_all_volatile_to(addr, dst, len as usize)
                .map_err(|_| ChainError::Memory)?;
        }
        Ok(())
    }
}

/// A chain's buffers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainBuffers {
    pub readable: Buffers,
    pub writable: Buffers,
}

/// Walks a chain, checking each buffer. `max_len` bounds the total length.
pub fn collect<M>(chain: DescriptorChain<M>, max_len: u64) -> Result<ChainBuffers, ChainError>
where
    M: Deref + Clone,
    M::Target: GuestMemory + GuestMemoryBackend,
{
    let mem = chain.memory();
    let mut out = ChainBuffers::default();
    for desc in chain.clone() {
        let (addr, len) = (desc.addr(), desc.len());
        if len == 0 {
            continue;
        }
        if !GuestMemoryBackend::check_range(mem, addr, len as usize) {
            return Err(ChainError::OutsideMemory {
                addr: addr.raw_value(),
                len,
            });
        }
        if desc.is_write_only() {
            out.writable.push(addr, len);
        } else if !out.writable.is_empty() {
            return Err(ChainError::ReadableAfterWritable);
        } else {
            out.readable.push(addr, len);
        }
        if out.readable.len() + out.writable.len() > max_len {
            return Err(ChainError::TooLong(max_len));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{TestQueue, desc, mem};
    use virtio_queue::QueueT;

    fn b(segs: &[(u64, u32)]) -> Buffers {
        let mut out = Buffers::default();
        for &(a, l) in segs {
            out.push(GuestAddress(a), l);
        }
        out
    }

    #[test]
    fn splitting_across_segments() {
        let mut all = b(&[(0x1000, 10), (0x2000, 4), (0x3000, 8)]);
        assert_eq!(all.len(), 22);
        let head = all.take_front(12).unwrap();
        assert_eq!(head, b(&[(0x1000, 10), (0x2000, 2)]));
        let tail = all.take_back(9).unwrap();
        assert_eq!(tail, b(&[(0x2003, 1), (0x3000, 8)]));
        assert_eq!(all, b(&[(0x2002, 1)]));
        assert_eq!(all.take_front(2), Err(ChainError::TooShort));
        assert_eq!(all.take_back(1).unwrap(), b(&[(0x2002, 1)]));
        assert!(all.is_empty());
    }

    #[test]
    fn buffers_outside_memory_or_out_of_order_are_refused() {
        let m = mem();
        let mut q = TestQueue::new(&m, 16);
        // Readable, then writable, then readable again.
        q.add_chain(&[
            desc(0x10000, 16, false),
            desc(0x11000, 1, true),
            desc(0x12000, 8, false),
        ]);
        // A buffer that runs past the end of guest memory.
        q.add_chain(&[
            desc(0x10000, 16, false),
            desc(m.last_addr().0 - 4, 16, true),
        ]);
        // Fine.
        q.add_chain(&[desc(0x10000, 16, false), desc(0x11000, 1, true)]);
        let mut queue = q.queue();
        let c = queue.pop_descriptor_chain(&m).unwrap();
        assert_eq!(collect(c, 1 << 20), Err(ChainError::ReadableAfterWritable));
        let c = queue.pop_descriptor_chain(&m).unwrap();
        assert!(matches!(
            collect(c, 1 << 20),
            Err(ChainError::OutsideMemory { .. })
        ));
        let c = queue.pop_descriptor_chain(&m).unwrap();
        let bufs = collect(c, 1 << 20).unwrap();
        assert_eq!((bufs.readable.len(), bufs.writable.len()), (16, 1));
        let c = {
            q.add_chain(&[desc(0x10000, 4096, false), desc(0x11000, 4096, false)]);
            queue.pop_descriptor_chain(&m).unwrap()
        };
        assert_eq!(collect(c, 4096), Err(ChainError::TooLong(4096)));
    }

    #[test]
    fn copies_in_and_out() {
        let m = mem();
        let bufs = b(&[(0x1000, 3), (0x2000, 5)]);
        assert_eq!(bufs.write_from(&m, b"abcdefghij").unwrap(), 8);
        let mut got = [0u8; 8];
        bufs.read_into(&m, &mut got).unwrap();
        assert_eq!(&got, b"abcdefgh");
    }
}
