//! A small RFB (VNC) client for tests, written apart from the server's code:
//! handshake (3.3, 3.7, 3.8), SetPixelFormat, SetEncodings, update requests,
//! key events, and a Raw and ZRLE decoder that keeps a copy of the screen.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use flate2::{Decompress, FlushDecompress};

pub const RAW: i32 = 0;
pub const ZRLE: i32 = 16;

/// A client's pixel format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    pub bpp: u8,
    pub depth: u8,
    pub big_endian: bool,
    pub max: [u16; 3],
    pub shift: [u8; 3],
}

impl Format {
    /// What the server offers: 32 bpp, little-endian, red at 16.
    pub const SERVER: Format = Format {
        bpp: 32,
        depth: 24,
        big_endian: false,
        max: [255, 255, 255],
        shift: [16, 8, 0],
    };

    fn parse(b: &[u8]) -> Self {
        Format {
            bpp: b[0],
            depth: b[1],
            big_endian: b[2] != 0,
            max: [
                u16::from_be_bytes([b[4], b[5]]),
                u16::from_be_bytes([b[6], b[7]]),
                u16::from_be_bytes([b[8], b[9]]),
            ],
            shift: [b[10], b[11], b[12]],
        }
    }

    fn bytes(&self) -> usize {
        usize::from(self.bpp) / 8
    }

    /// Bytes of a ZRLE CPIXEL and the offset of the first kept byte.
    fn cpixel(&self) -> (usize, usize) {
        if self.bpp != 32 || self.depth > 24 {
            return (self.bytes(), 0);
        }
        let mut used = 0u32;
        for c in 0..3 {
            used |= u32::from(self.max[c]) << self.shift[c];
        }
        let fits_low = used >> 24 == 0;
        let fits_high = used & 0xff == 0;
        if fits_low {
            (3, if self.big_endian { 1 } else { 0 })
        } else if fits_high {
            (3, if self.big_endian { 0 } else { 1 })
        } else {
            (4, 0)
        }
    }

    /// A pixel value read from `b` (`bytes()` long).
    fn value(&self, b: &[u8]) -> u32 {
        let mut v = 0u32;
        if self.big_endian {
            for &x in b {
                v = (v << 8) | u32::from(x);
            }
        } else {
            for &x in b.iter().rev() {
                v = (v << 8) | u32::from(x);
            }
        }
        v
    }

    /// A pixel value as 8-bit red, green, blue (0xRRGGBB).
    pub fn rgb(&self, v: u32) -> u32 {
        let mut out = 0;
        for c in 0..3 {
            let max = u32::from(self.max[c]);
            let x = (v >> self.shift[c]) & max;
            out = (out << 8) | ((x * 255 + max / 2) / max);
        }
        out
    }
}

trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: u16,
    pub y: u16,
    pub w: u16,
    pub h: u16,
    pub encoding: i32,
}

type SetTimeout = dyn Fn(Option<Duration>) -> std::io::Result<()> + Send;

pub struct Client {
    conn: Box<dyn Conn>,
    timeout: Box<SetTimeout>,
    pub width: usize,
    pub height: usize,
    pub name: String,
    pub format: Format,
    /// The screen as 0xRRGGBB.
    pub screen: Vec<u32>,
    zlib: Decompress,
    pub bytes_received: u64,
}

impl Client {
    pub fn unix(path: &Path, version: &str) -> std::io::Result<Self> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let t = s.try_clone()?;
        Self::handshake(
            Box::new(s),
            Box::new(move |d| t.set_read_timeout(d)),
            version,
        )
    }

    pub fn tcp(addr: std::net::SocketAddr, version: &str) -> std::io::Result<Self> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let t = s.try_clone()?;
        Self::handshake(
            Box::new(s),
            Box::new(move |d| t.set_read_timeout(d)),
            version,
        )
    }

    fn handshake(
        mut conn: Box<dyn Conn>,
        timeout: Box<SetTimeout>,
        version: &str,
    ) -> std::io::Result<Self> {
        let mut v = [0u8; 12];
        conn.read_exact(&mut v)?;
        assert_eq!(&v, b"RFB 003.008\n");
        conn.write_all(version.as_bytes())?;
        if version == "RFB 003.003\n" {
            let mut t = [0u8; 4];
            conn.read_exact(&mut t)?;
            assert_eq!(u32::from_be_bytes(t), 1, "3.3: security None");
        } else {
            let mut n = [0u8; 1];
            conn.read_exact(&mut n)?;
            let mut types = vec![0u8; usize::from(n[0])];
            conn.read_exact(&mut types)?;
            assert!(types.contains(&1), "None offered: {types:?}");
            conn.write_all(&[1])?;
            if version == "RFB 003.008\n" {
                let mut r = [0u8; 4];
                conn.read_exact(&mut r)?;
                assert_eq!(r, [0; 4], "security result OK");
            }
        }
        conn.write_all(&[1])?;
        let mut init = [0u8; 24];
        conn.read_exact(&mut init)?;
        let width = usize::from(u16::from_be_bytes([init[0], init[1]]));
        let height = usize::from(u16::from_be_bytes([init[2], init[3]]));
        let format = Format::parse(&init[4..20]);
        let mut name = vec![0u8; u32::from_be_bytes(init[20..24].try_into().unwrap()) as usize];
        conn.read_exact(&mut name)?;
        Ok(Self {
            conn,
            timeout,
            width,
            height,
            name: String::from_utf8_lossy(&name).into_owned(),
            format,
            screen: vec![0; width * height],
            zlib: Decompress::new(true),
            bytes_received: 0,
        })
    }

    pub fn set_format(&mut self, f: Format) {
        let mut m = vec![0u8, 0, 0, 0, f.bpp, f.depth, u8::from(f.big_endian), 1];
        for c in 0..3 {
            m.extend(f.max[c].to_be_bytes());
        }
        m.extend([f.shift[0], f.shift[1], f.shift[2], 0, 0, 0]);
        self.conn.write_all(&m).unwrap();
        self.format = f;
    }

    pub fn set_encodings(&mut self, encodings: &[i32]) {
        let mut m = vec![2u8, 0];
        m.extend((encodings.len() as u16).to_be_bytes());
        for e in encodings {
            m.extend(e.to_be_bytes());
        }
        self.conn.write_all(&m).unwrap();
    }

    pub fn request(&mut self, incremental: bool) {
        let mut m = vec![3u8, u8::from(incremental), 0, 0, 0, 0];
        m.extend((self.width as u16).to_be_bytes());
        m.extend((self.height as u16).to_be_bytes());
        self.conn.write_all(&m).unwrap();
    }

    pub fn key(&mut self, keysym: u32, down: bool) {
        let mut m = vec![4u8, u8::from(down), 0, 0];
        m.extend(keysym.to_be_bytes());
        self.conn.write_all(&m).unwrap();
    }

    /// Presses and releases each key.
    pub fn type_keys(&mut self, keysyms: &[u32]) {
        for &k in keysyms {
            self.key(k, true);
            self.key(k, false);
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.conn.write_all(bytes)
    }

    fn read(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        let mut b = vec![0u8; n];
        self.conn.read_exact(&mut b)?;
        self.bytes_received += n as u64;
        Ok(b)
    }

    /// Reads one FramebufferUpdate and applies it to `screen`.
    pub fn read_update(&mut self) -> std::io::Result<Vec<Rect>> {
        let h = self.read(4)?;
        assert_eq!(h[0], 0, "FramebufferUpdate");
        let n = u16::from_be_bytes([h[2], h[3]]);
        let mut rects = Vec::new();
        for _ in 0..n {
            let r = self.read(12)?;
            let be16 = |i: usize| u16::from_be_bytes([r[i], r[i + 1]]);
            let rect = Rect {
                x: be16(0),
                y: be16(2),
                w: be16(4),
                h: be16(6),
                encoding: i32::from_be_bytes(r[8..12].try_into().unwrap()),
            };
            assert!(
                usize::from(rect.x + rect.w) <= self.width
                    && usize::from(rect.y + rect.h) <= self.height,
                "{rect:?} off the screen"
            );
            let pixels = match rect.encoding {
                RAW => {
                    let b =
                        self.read(usize::from(rect.w) * usize::from(rect.h) * self.format.bytes())?;
                    b.chunks(self.format.bytes())
                        .map(|p| self.format.value(p))
                        .collect()
                }
                ZRLE => {
                    let len = u32::from_be_bytes(self.read(4)?.try_into().unwrap()) as usize;
                    let data = self.read(len)?;
                    let tiles = self.inflate(&data);
                    decode_zrle(
                        &tiles,
                        usize::from(rect.w),
                        usize::from(rect.h),
                        &self.format,
                    )
                    .unwrap_or_else(|e| panic!("ZRLE {rect:?}: {e}"))
                }
                other => panic!("unexpected encoding {other}"),
            };
            for row in 0..usize::from(rect.h) {
                for col in 0..usize::from(rect.w) {
                    let v = pixels[row * usize::from(rect.w) + col];
                    self.screen
                        [(usize::from(rect.y) + row) * self.width + usize::from(rect.x) + col] =
                        self.format.rgb(v);
                }
            }
            rects.push(rect);
        }
        Ok(rects)
    }

    fn inflate(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() * 4 + 1024);
        let start = self.zlib.total_in();
        loop {
            let used = (self.zlib.total_in() - start) as usize;
            if used == data.len() && out.len() < out.capacity() {
                return out;
            }
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(4096));
            }
            self.zlib
                .decompress_vec(&data[used..], &mut out, FlushDecompress::Sync)
                .expect("valid zlib data");
        }
    }

    /// Whether nothing arrives within `wait`.
    pub fn quiet_for(&mut self, wait: Duration) -> bool {
        (self.timeout)(Some(wait)).unwrap();
        let mut b = [0u8; 1];
        let r = self.conn.read(&mut b);
        (self.timeout)(Some(Duration::from_secs(30))).unwrap();
        matches!(r, Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut)
    }

    /// Reads until the server closes; `true` on a clean EOF or reset.
    pub fn closed_by_server(&mut self) -> bool {
        let mut b = [0u8; 4096];
        loop {
            match self.conn.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// Decodes ZRLE tile data of a `w` × `h` rectangle into pixel values.
pub fn decode_zrle(data: &[u8], w: usize, h: usize, f: &Format) -> Result<Vec<u32>, String> {
    let (cp, off) = f.cpixel();
    let mut r = Reader { data, pos: 0 };
    let cpixel = |b: &[u8]| -> u32 {
        let mut full = vec![0u8; f.bytes()];
        full[off..off + cp].copy_from_slice(b);
        f.value(&full)
    };
    let mut out = vec![0u32; w * h];
    for ty in (0..h).step_by(64) {
        for tx in (0..w).step_by(64) {
            let (tw, th) = (64.min(w - tx), 64.min(h - ty));
            let n = tw * th;
            let mut tile: Vec<u32> = Vec::with_capacity(n);
            let sub = r.take(1)?[0];
            let mut palette = Vec::new();
            match sub {
                0 => {
                    for _ in 0..n {
                        tile.push(cpixel(r.take(cp)?));
                    }
                }
                1 => {
                    let v = cpixel(r.take(cp)?);
                    tile.resize(n, v);
                }
                2..=16 => {
                    for _ in 0..sub {
                        palette.push(cpixel(r.take(cp)?));
                    }
                    let bits = match sub {
                        2 => 1,
                        3 | 4 => 2,
                        _ => 4,
                    };
                    let row_bytes = (tw * bits).div_ceil(8);
                    for _ in 0..th {
                        let row = r.take(row_bytes)?;
                        for x in 0..tw {
                            let bit = x * bits;
                            let idx = (row[bit / 8] >> (8 - bits - bit % 8)) & ((1 << bits) - 1);
                            tile.push(*palette.get(usize::from(idx)).ok_or("index past palette")?);
                        }
                    }
                }
                128 => {
                    while tile.len() < n {
                        let v = cpixel(r.take(cp)?);
                        let len = r.run_length()?;
                        tile.extend(std::iter::repeat_n(v, len));
                    }
                }
                130..=255 => {
                    for _ in 0..sub - 128 {
                        palette.push(cpixel(r.take(cp)?));
                    }
                    while tile.len() < n {
                        let i = r.take(1)?[0];
                        let v = *palette
                            .get(usize::from(i & 0x7f))
                            .ok_or("index past palette")?;
                        let len = if i & 0x80 != 0 { r.run_length()? } else { 1 };
                        tile.extend(std::iter::repeat_n(v, len));
                    }
                }
                other => return Err(format!("subencoding {other}")),
            }
            if tile.len() != n {
                return Err(format!("tile of {} pixels, {n} expected", tile.len()));
            }
            for row in 0..th {
                out[(ty + row) * w + tx..(ty + row) * w + tx + tw]
                    .copy_from_slice(&tile[row * tw..(row + 1) * tw]);
            }
        }
    }
    if r.pos != data.len() {
        return Err(format!("{} bytes left over", data.len() - r.pos));
    }
    Ok(out)
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let s = self.data.get(self.pos..self.pos + n).ok_or("truncated")?;
        self.pos += n;
        Ok(s)
    }

    fn run_length(&mut self) -> Result<usize, String> {
        let mut len = 1;
        loop {
            let b = self.take(1)?[0];
            len += usize::from(b);
            if b != 255 {
                return Ok(len);
            }
        }
    }
}
