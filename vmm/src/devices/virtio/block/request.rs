//! virtio-blk requests: parsing a checked chain and carrying it out on a disk.
//!
//! A request is a 16-byte header (type, reserved, sector) in the readable
//! buffers, data (readable for writes, writable for reads), and a status byte,
//! the last writable byte. Whatever goes wrong, the request gets a status when it
//! has a place for one, and the used length says how much was written.

use std::fs::File;
use std::io::{Seek, SeekFrom};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::devices::virtio::chain::{Buffers, ChainBuffers};

pub const SECTOR_SIZE: u64 = 512;
/// Length of the disk serial (VIRTIO_BLK_ID_BYTES).
pub const ID_BYTES: usize = 20;

pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;

pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

const HEADER_LEN: u64 = 16;

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("no writable byte for the status")]
    NoStatus,
    #[error("header shorter than 16 bytes")]
    ShortHeader,
    #[error("data length {0} is not a multiple of 512")]
    Unaligned(u64),
    #[error("sectors {sector}+{count} are beyond the disk's {capacity} sectors")]
    OutOfRange {
        sector: u64,
        count: u64,
        capacity: u64,
    },
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("request type {0} is not supported")]
    Unsupported(u32),
    #[error("I/O error: {0}")]
    Io(String),
    #[error("guest memory access failed")]
    Memory,
}

impl RequestError {
    /// The status byte the guest gets.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) => VIRTIO_BLK_S_UNSUPP,
            _ => VIRTIO_BLK_S_IOERR,
        }
    }
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    Read,
    Write,
    Flush,
    GetId,
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestKind,
    pub sector: u64,
    pub data: Buffers,
    pub status: GuestAddress,
}

/// A request that could not be parsed; `status` is where to report the error,
/// when the chain has room for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseFailure {
    pub status: Option<GuestAddress>,
    pub error: RequestError,
}

/// Parses a request from a chain's buffers.
pub fn parse(mem: &GuestMemoryMmap, bufs: ChainBuffers) -> Result<Request, ParseFailure> {
    let ChainBuffers {
        mut readable,
        mut writable,
    } = bufs;
    let status = writable
        .take_back(1)
        .ok()
        .and_then(|b| b.segments().next().map(|(a, _)| a))
        .ok_or(ParseFailure {
            status: None,
            error: RequestError::NoStatus,
        })?;
    let fail = |error| ParseFailure {
        status: Some(status),
        error,
    };
    let header = readable
        .take_front(HEADER_LEN)
        .map_err(|_| fail(RequestError::ShortHeader))?;
    let mut raw = [0u8; HEADER_LEN as usize];
    header
        .read_into(mem, &mut raw)
        .map_err(|_| fail(RequestError::Memory))?;
    let kind = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let sector = u64::from_le_bytes(raw[8..16].try_into().expect("8 bytes"));
    let (kind, data) = match kind {
        VIRTIO_BLK_T_IN => (RequestKind::Read, writable),
        VIRTIO_BLK_T_OUT => (RequestKind::Write, readable),
        VIRTIO_BLK_T_FLUSH => (RequestKind::Flush, Buffers::default()),
        VIRTIO_BLK_T_GET_ID => (RequestKind::GetId, writable),
        other => return Err(fail(RequestError::Unsupported(other))),
    };
    if matches!(kind, RequestKind::Read | RequestKind::Write) && data.len() % SECTOR_SIZE != 0 {
        return Err(fail(RequestError::Unaligned(data.len())));
    }
    Ok(Request {
        kind,
        sector,
        data,
        status,
    })
}

/// A disk image.
pub struct Disk {
    file: File,
    /// Size in bytes (a whole number of sectors).
    size: u64,
    read_only: bool,
    id: [u8; ID_BYTES],
}

impl Disk {
    pub fn new(mut file: File, read_only: bool, id: &str) -> std::io::Result<Self> {
        let size = file.seek(SeekFrom::End(0))? / SECTOR_SIZE * SECTOR_SIZE;
        let mut id_bytes = [0u8; ID_BYTES];
        let n = id.len().min(ID_BYTES);
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Self {
            file,
            size,
            read_only,
            id: id_bytes,
        })
    }

    /// Capacity in sectors.
    pub fn sectors(&self) -> u64 {
        self.size / SECTOR_SIZE
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    fn seek_to(&mut self, sector: u64, len: u64) -> Result<(), RequestError> {
        let count = len / SECTOR_SIZE;
        let out_of_range = RequestError::OutOfRange {
            sector,
            count,
            capacity: self.sectors(),
        };
        let end = sector.checked_add(count).ok_or(out_of_range.clone())?;
        if end > self.sectors() {
            return Err(out_of_range);
        }
        self.file
            .seek(SeekFrom::Start(sector * SECTOR_SIZE))
            .map_err(|e| RequestError::Io(e.to_string()))?;
        Ok(())
    }
}

/// What a request did: the status and the bytes it wrote into the guest's
/// buffers (the used length, status byte included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub status: u8,
    pub used_len: u32,
    /// Bytes moved between the disk and the guest.
    pub bytes: u64,
}

/// Carries out a request (and writes its status byte).
pub fn execute(
    mem: &GuestMemoryMmap,
    disk: &mut Disk,
    req: &Request,
) -> Result<Outcome, RequestError> {
    let result = run(mem, disk, req);
    let status = match &result {
        Ok(_) => VIRTIO_BLK_S_OK,
        Err(e) => e.status(),
    };
    mem.write_obj(status, req.status)
        .map_err(|_| RequestError::Memory)?;
    result.map(|(written, bytes)| Outcome {
        status,
        used_len: written + 1,
        bytes,
    })
}

/// Returns (bytes written to the guest before the status, bytes moved).
fn run(mem: &GuestMemoryMmap, disk: &mut Disk, req: &Request) -> Result<(u32, u64), RequestError> {
    let len = req.data.len();
    match req.kind {
        RequestKind::Read => {
            disk.seek_to(req.sector, len)?;
            req.data
                .fill_from(mem, &mut disk.file)
                .map_err(|_| RequestError::Io("read failed".into()))?;
            Ok((len as u32, len))
        }
        RequestKind::Write => {
            if disk.read_only {
                return Err(RequestError::ReadOnly);
            }
            disk.seek_to(req.sector, len)?;
            req.data
                .drain_to(mem, &mut disk.file)
                .map_err(|_| RequestError::Io("write failed".into()))?;
            Ok((0, len))
        }
        RequestKind::Flush => {
            if !disk.read_only {
                disk.file
                    .sync_data()
                    .map_err(|e| RequestError::Io(e.to_string()))?;
            }
            Ok((0, 0))
        }
        RequestKind::GetId => {
            let n = req
                .data
                .write_from(mem, &disk.id)
                .map_err(|_| RequestError::Memory)?;
            Ok((n as u32, 0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::chain::collect;
    use crate::devices::virtio::test_utils::{TestQueue, desc, mem};
    use std::io::Write;
    use virtio_queue::QueueT;

    const HDR: u64 = 0x10000;
    const DATA: u64 = 0x20000;
    const STATUS: u64 = 0x30000;

    fn header(m: &GuestMemoryMmap, kind: u32, sector: u64) {
        m.write_obj(kind, GuestAddress(HDR)).unwrap();
        m.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        m.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
    }

    fn disk(sectors: u64, read_only: bool) -> (Disk, tempfile::NamedTempFile) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..sectors * SECTOR_SIZE)
            .map(|i| (i / 512) as u8)
            .collect();
        f.write_all(&data).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(f.path())
            .unwrap();
        (
            Disk::new(file, read_only, "disk-serial-0123456789abc").unwrap(),
            f,
        )
    }

    /// Runs one chain through collect + parse + execute like the device does.
    fn request(
        m: &GuestMemoryMmap,
        d: &mut Disk,
        descs: &[crate::devices::virtio::test_utils::Desc],
    ) -> Result<Outcome, RequestError> {
        let mut tq = TestQueue::new(m, 16);
        tq.add_chain(descs);
        let mut q = tq.queue();
        let chain = q.pop_descriptor_chain(m).unwrap();
        let bufs = collect(chain, 1 << 30).map_err(|_| RequestError::Memory)?;
        let req = match parse(m, bufs) {
            Ok(r) => r,
            Err(f) => {
                if let Some(s) = f.status {
                    m.write_obj(f.error.status(), s).unwrap();
                }
                return Err(f.error);
            }
        };
        execute(m, d, &req)
    }

    fn status(m: &GuestMemoryMmap) -> u8 {
        m.read_obj(GuestAddress(STATUS)).unwrap()
    }

    #[test]
    fn reads_sectors_into_split_buffers() {
        let m = mem();
        let (mut d, _f) = disk(8, false);
        header(&m, VIRTIO_BLK_T_IN, 2);
        let out = request(
            &m,
            &mut d,
            &[
                desc(HDR, 16, false),
                desc(DATA, 700, true),
                desc(DATA + 0x1000, 324, true),
                desc(STATUS, 1, true),
            ],
        )
        .unwrap();
        assert_eq!(out.used_len, 1025);
        assert_eq!(status(&m), VIRTIO_BLK_S_OK);
        let a: u8 = m.read_obj(GuestAddress(DATA)).unwrap();
        let b: u8 = m.read_obj(GuestAddress(DATA + 0x1000 + 323)).unwrap();
        assert_eq!((a, b), (2, 3));
    }

    #[test]
    fn header_data_and_status_may_share_buffers() {
        let m = mem();
        let (mut d, _f) = disk(8, false);
        header(&m, VIRTIO_BLK_T_OUT, 1);
        m.write_slice(&[0xab; 512], GuestAddress(HDR + 16)).unwrap();
        // Header and data in one readable buffer.
        let out = request(
            &m,
            &mut d,
            &[desc(HDR, 16 + 512, false), desc(STATUS, 1, true)],
        )
        .unwrap();
        assert_eq!((out.status, out.bytes), (VIRTIO_BLK_S_OK, 512));
        header(&m, VIRTIO_BLK_T_IN, 1);
        // Data and status in one writable buffer.
        request(&m, &mut d, &[desc(HDR, 16, false), desc(DATA, 513, true)]).unwrap();
        let last: u8 = m.read_obj(GuestAddress(DATA + 511)).unwrap();
        let st: u8 = m.read_obj(GuestAddress(DATA + 512)).unwrap();
        assert_eq!((last, st), (0xab, VIRTIO_BLK_S_OK));
    }

    #[test]
    fn out_of_range_and_unaligned_requests_fail_with_ioerr() {
        let m = mem();
        let (mut d, _f) = disk(8, false);
        header(&m, VIRTIO_BLK_T_IN, 7);
        let e = request(
            &m,
            &mut d,
            &[
                desc(HDR, 16, false),
                desc(DATA, 1024, true),
                desc(STATUS, 1, true),
            ],
        );
        assert!(matches!(
            e,
            Err(RequestError::OutOfRange {
                sector: 7,
                count: 2,
                capacity: 8
            })
        ));
        assert_eq!(status(&m), VIRTIO_BLK_S_IOERR);
        header(&m, VIRTIO_BLK_T_IN, u64::MAX);
        let e = request(
            &m,
            &mut d,
            &[
                desc(HDR, 16, false),
                desc(DATA, 512, true),
                desc(STATUS, 1, true),
            ],
        );
        assert!(matches!(e, Err(RequestError::OutOfRange { .. })));
        header(&m, VIRTIO_BLK_T_OUT, 0);
        let e = request(
            &m,
            &mut d,
            &[
                desc(HDR, 16, false),
                desc(DATA, 100, false),
                desc(STATUS, 1, true),
            ],
        );
        assert_eq!(e, Err(RequestError::Unaligned(100)));
        assert_eq!(status(&m), VIRTIO_BLK_S_IOERR);
    }

    #[test]
    fn read_only_disks_refuse_writes_but_flush() {
        let m = mem();
        let (mut d, f) = disk(8, true);
        header(&m, VIRTIO_BLK_T_OUT, 0);
        m.write_slice(&[0xff; 512], GuestAddress(DATA)).unwrap();
        let e = request(
            &m,
            &mut d,
            &[
                desc(HDR, 16, false),
                desc(DATA, 512, false),
                desc(STATUS, 1, true),
            ],
        );
        assert_eq!(e, Err(RequestError::ReadOnly));
        assert_eq!(status(&m), VIRTIO_BLK_S_IOERR);
        assert_eq!(std::fs::read(f.path()).unwrap()[0], 0, "disk unchanged");
        header(&m, VIRTIO_BLK_T_FLUSH, 0);
        assert!(request(&m, &mut d, &[desc(HDR, 16, false), desc(STATUS, 1, true)]).is_ok());
    }

    #[test]
    fn get_id_and_unsupported_types() {
        let m = mem();
        let (mut d, _f) = disk(8, false);
        header(&m, VIRTIO_BLK_T_GET_ID, 0);
        let out = request(
            &m,
            &mut d,
            &[
                desc(HDR, 16, false),
                desc(DATA, 20, true),
                desc(STATUS, 1, true),
            ],
        )
        .unwrap();
        assert_eq!(out.used_len, 21);
        let mut id = [0u8; 20];
        m.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"disk-serial-01234567");
        header(&m, 99, 0);
        let e = request(&m, &mut d, &[desc(HDR, 16, false), desc(STATUS, 1, true)]);
        assert_eq!(e, Err(RequestError::Unsupported(99)));
        assert_eq!(status(&m), VIRTIO_BLK_S_UNSUPP);
    }

    #[test]
    fn malformed_chains_fail_alone() {
        let m = mem();
        let (mut d, _f) = disk(8, false);
        header(&m, VIRTIO_BLK_T_IN, 0);
        // No writable status byte at all.
        assert_eq!(
            request(&m, &mut d, &[desc(HDR, 16, false), desc(DATA, 512, false)]),
            Err(RequestError::NoStatus)
        );
        // A short header.
        m.write_obj(0x55u8, GuestAddress(STATUS)).unwrap();
        assert_eq!(
            request(&m, &mut d, &[desc(HDR, 8, false), desc(STATUS, 1, true)]),
            Err(RequestError::ShortHeader)
        );
        assert_eq!(status(&m), VIRTIO_BLK_S_IOERR);
        // A data buffer beyond guest memory.
        let end = 16u64 << 20;
        assert_eq!(
            request(
                &m,
                &mut d,
                &[
                    desc(HDR, 16, false),
                    desc(end - 256, 512, true),
                    desc(STATUS, 1, true)
                ]
            ),
            Err(RequestError::Memory)
        );
        // Afterwards the disk still works.
        let ok = request(
            &m,
            &mut d,
            &[
                desc(HDR, 16, false),
                desc(DATA, 512, true),
                desc(STATUS, 1, true),
            ],
        );
        assert!(ok.is_ok());
    }
}
