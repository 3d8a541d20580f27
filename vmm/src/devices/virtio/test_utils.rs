//! A driver's side of a split virtqueue in plain guest memory, for unit tests of
//! the devices without KVM: write descriptors and the available ring, read the
//! used ring.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// 16 MiB of guest memory at 0.
pub fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
}

/// One descriptor of a test chain.
#[derive(Debug, Clone, Copy)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

pub fn desc(addr: u64, len: u32, writable: bool) -> Desc {
    Desc {
        addr,
        len,
        writable,
    }
}

/// The rings live from 8 MiB on; test buffers below that.
const RINGS: u64 = 8 << 20;

pub struct TestQueue<'a> {
    mem: &'a GuestMemoryMmap,
    size: u16,
    next_desc: u16,
    avail_idx: u16,
}

impl<'a> TestQueue<'a> {
    pub fn new(mem: &'a GuestMemoryMmap, size: u16) -> Self {
        Self {
            mem,
            size,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    fn desc_table(&self) -> u64 {
        RINGS
    }
    fn avail(&self) -> u64 {
        RINGS + 16 * u64::from(self.size)
    }
    fn used_ring(&self) -> u64 {
        (self.avail() + 6 + 2 * u64::from(self.size) + 4095) & !4095
    }

    /// Writes a raw descriptor at `index`.
    pub fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(self.desc_table() + 16 * u64::from(index));
        self.mem.write_obj(addr, at).unwrap();
        self.mem.write_obj(len, GuestAddress(at.0 + 8)).unwrap();
        self.mem.write_obj(flags, GuestAddress(at.0 + 12)).unwrap();
        self.mem.write_obj(next, GuestAddress(at.0 + 14)).unwrap();
    }

    /// Makes the chain starting at `head` available.
    pub fn publish(&mut self, head: u16) {
        let slot = self.avail() + 4 + 2 * u64::from(self.avail_idx % self.size);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(self.avail() + 2))
            .unwrap();
    }

    /// Writes a chain of descriptors and makes it available; returns its head.
    pub fn add_chain(&mut self, descs: &[Desc]) -> u16 {
        let head = self.next_desc;
        for (i, d) in descs.iter().enumerate() {
            let index = (head + i as u16) % self.size;
            let last = i + 1 == descs.len();
            let mut flags = if d.writable { F_WRITE } else { 0 };
            if !last {
                flags |= F_NEXT;
            }
            self.write_desc(index, d.addr, d.len, flags, (index + 1) % self.size);
        }
        self.next_desc = (head + descs.len() as u16) % self.size;
        self.publish(head);
        head
    }

    /// Reserves `n` descriptor slots for hand-written descriptors; returns the first.
    pub fn reserve(&mut self, n: u16) -> u16 {
        let first = self.next_desc;
        self.next_desc = (first + n) % self.size;
        first
    }

    /// A device-side queue set up on these rings.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc_table() as u32), Some(0));
        q.set_avail_ring_address(Some(self.avail() as u32), Some(0));
        q.set_used_ring_address(Some(self.used_ring() as u32), Some(0));
        q.set_ready(true);
        assert!(q.is_valid(self.mem));
        q
    }

    /// The used ring's index.
    pub fn used_idx(&self) -> u16 {
        self.mem
            .read_obj(GuestAddress(self.used_ring() + 2))
            .unwrap()
    }

    /// Used ring entry `i`: (descriptor head, length).
    pub fn used(&self, i: u16) -> (u32, u32) {
        let at = self.used_ring() + 4 + 8 * u64::from(i % self.size);
        (
            self.mem.read_obj(GuestAddress(at)).unwrap(),
            self.mem.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }
}
