//! The RFB protocol (RFC 6143) as a server speaks it, without I/O: a
//! [`Session`] takes the bytes a client sent and answers the handshake itself;
//! once it is done, it hands out the client's messages.
//!
//! ```text
//! server: "RFB 003.008\n"      client: "RFB 003.00x\n"  (3.3, 3.7, 3.8)
//! 3.3:  server: u32 security type 1 (None)
//! 3.7+: server: [1, 1] (one type: None)  client: u8 type (must be 1)
//! 3.8:  server: u32 0 (security result: OK)
//! client: ClientInit (u8 shared flag; always shared)
//! server: ServerInit (width, height, pixel format, name)
//! then client messages, and framebuffer updates when asked for
//! ```
//!
//! Every malformed input is a [`ProtocolError`]; the server closes that client.

/// Encodings.
pub const ENCODING_RAW: i32 = 0;
pub const ENCODING_ZRLE: i32 = 16;

/// Longest ClientCutText accepted (the text is read and dropped).
pub const MAX_CUT_TEXT: u32 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("not an RFB 3.x client: {0:?}")]
    Version(String),
    #[error("security type {0} is not offered (only 1, None)")]
    SecurityType(u8),
    #[error("unknown client message type {0}")]
    MessageType(u8),
    #[error("unsupported pixel format: {0}")]
    PixelFormat(&'static str),
    #[error("cut text of {0} bytes is too long")]
    CutTextTooLong(u32),
}

/// A pixel format: how a client wants pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelFormat {
    pub bits_per_pixel: u8,
    pub depth: u8,
    pub big_endian: bool,
    pub true_colour: bool,
    pub red_max: u16,
    pub green_max: u16,
    pub blue_max: u16,
    pub red_shift: u8,
    pub green_shift: u8,
    pub blue_shift: u8,
}

impl PixelFormat {
    /// The framebuffer's own format: 32 bpp little-endian x8r8g8b8.
    pub const NATIVE: PixelFormat = PixelFormat {
        bits_per_pixel: 32,
        depth: 24,
        big_endian: false,
        true_colour: true,
        red_max: 255,
        green_max: 255,
        blue_max: 255,
        red_shift: 16,
        green_shift: 8,
        blue_shift: 0,
    };

    pub fn parse(b: &[u8; 16]) -> Self {
        Self {
            bits_per_pixel: b[0],
            depth: b[1],
            big_endian: b[2] != 0,
            true_colour: b[3] != 0,
            red_max: u16::from_be_bytes([b[4], b[5]]),
            green_max: u16::from_be_bytes([b[6], b[7]]),
            blue_max: u16::from_be_bytes([b[8], b[9]]),
            red_shift: b[10],
            green_shift: b[11],
            blue_shift: b[12],
        }
    }

    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0] = self.bits_per_pixel;
        b[1] = self.depth;
        b[2] = u8::from(self.big_endian);
        b[3] = u8::from(self.true_colour);
        b[4..6].copy_from_slice(&self.red_max.to_be_bytes());
        b[6..8].copy_from_slice(&self.green_max.to_be_bytes());
        b[8..10].copy_from_slice(&self.blue_max.to_be_bytes());
        b[10] = self.red_shift;
        b[11] = self.green_shift;
        b[12] = self.blue_shift;
        b
    }

    /// Whether the server can produce this format: true colour at 8, 16 or
    /// 32 bits per pixel, each channel's maximum `2^n - 1` and inside the pixel.
    pub fn check(&self) -> Result<(), ProtocolError> {
        if !self.true_colour {
            return Err(ProtocolError::PixelFormat("colour maps are not supported"));
        }
        if !matches!(self.bits_per_pixel, 8 | 16 | 32) {
            return Err(ProtocolError::PixelFormat(
                "bits per pixel must be 8, 16 or 32",
            ));
        }
        for (max, shift) in [
            (self.red_max, self.red_shift),
            (self.green_max, self.green_shift),
            (self.blue_max, self.blue_shift),
        ] {
            let bits = 16 - max.leading_zeros();
            if max == 0 || !(u32::from(max) + 1).is_power_of_two() {
                return Err(ProtocolError::PixelFormat(
                    "a colour maximum is not 2^n - 1",
                ));
            }
            if u32::from(shift) + bits > u32::from(self.bits_per_pixel) {
                return Err(ProtocolError::PixelFormat(
                    "a colour lies outside the pixel",
                ));
            }
        }
        Ok(())
    }

    pub fn bytes_per_pixel(&self) -> usize {
        usize::from(self.bits_per_pixel / 8)
    }

    /// A native x8r8g8b8 pixel in this format (as a number; see [`Self::put`]).
    pub fn convert(&self, native: u32) -> u32 {
        if *self == Self::NATIVE {
            return native & 0x00ff_ffff;
        }
        let scale = |c: u32, max: u16| (c * u32::from(max) + 127) / 255;
        let r = scale((native >> 16) & 0xff, self.red_max);
        let g = scale((native >> 8) & 0xff, self.green_max);
        let b = scale(native & 0xff, self.blue_max);
        (r << self.red_shift) | (g << self.green_shift) | (b << self.blue_shift)
    }

    /// Appends a converted pixel in the client's byte order.
    pub fn put(&self, value: u32, out: &mut Vec<u8>) {
        match (self.bits_per_pixel, self.big_endian) {
            (32, false) => out.extend_from_slice(&value.to_le_bytes()),
            (32, true) => out.extend_from_slice(&value.to_be_bytes()),
            (16, false) => out.extend_from_slice(&(value as u16).to_le_bytes()),
            (16, true) => out.extend_from_slice(&(value as u16).to_be_bytes()),
            _ => out.push(value as u8),
        }
    }

    /// ZRLE's compact pixel: 3 bytes when a 32 bpp true-colour pixel of depth
    /// 24 or less has all its colour bits in its low or high 3 bytes, and
    /// which 3 bytes of [`Self::put`]'s output those are; else the whole pixel.
    pub fn cpixel(&self) -> (usize, usize) {
        if self.bits_per_pixel != 32 || self.depth > 24 {
            return (self.bytes_per_pixel(), 0);
        }
        let mask = (u32::from(self.red_max) << self.red_shift)
            | (u32::from(self.green_max) << self.green_shift)
            | (u32::from(self.blue_max) << self.blue_shift);
        let low = mask & 0xff00_0000 == 0;
        let high = mask & 0xff == 0;
        match (low, high, self.big_endian) {
            (true, _, false) | (false, true, true) => (3, 0),
            (true, _, true) | (false, true, false) => (3, 1),
            _ => (4, 0),
        }
    }
}

/// RFB versions the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V3_3,
    V3_7,
    V3_8,
}

pub const SERVER_VERSION: &[u8; 12] = b"RFB 003.008\n";

/// Parses a client's ProtocolVersion. Minor versions other than 7 and 8 are
/// taken as 3.3 (as RFC 6143 says), later ones as 3.8.
pub fn parse_version(b: &[u8; 12]) -> Result<Version, ProtocolError> {
    let bad = || ProtocolError::Version(String::from_utf8_lossy(b).into_owned());
    if &b[..4] != b"RFB " || b[7] != b'.' || b[11] != b'\n' {
        return Err(bad());
    }
    let num = |s: &[u8]| -> Option<u32> {
        s.iter()
            .all(u8::is_ascii_digit)
            .then(|| s.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')))
    };
    let (Some(major), Some(minor)) = (num(&b[4..7]), num(&b[8..11])) else {
        return Err(bad());
    };
    match (major, minor) {
        (3, 7) => Ok(Version::V3_7),
        (3, m) if m >= 8 => Ok(Version::V3_8),
        (3, _) => Ok(Version::V3_3),
        _ => Err(bad()),
    }
}

/// A message from a client after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    SetPixelFormat(PixelFormat),
    SetEncodings(Vec<i32>),
    UpdateRequest {
        incremental: bool,
        x: u16,
        y: u16,
        width: u16,
        height: u16,
    },
    Key {
        down: bool,
        keysym: u32,
    },
    Pointer {
        buttons: u8,
        x: u16,
        y: u16,
    },
    CutText,
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Parses one client message from the start of `buf`: the message and the
/// bytes it took, `None` if more bytes are needed.
pub fn parse_message(buf: &[u8]) -> Result<Option<(ClientMessage, usize)>, ProtocolError> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let need = |n: usize| buf.len() >= n;
    let msg = match kind {
        0 => {
            if !need(20) {
                return Ok(None);
            }
            let pf: &[u8; 16] = buf[4..20].try_into().expect("16 bytes");
            (ClientMessage::SetPixelFormat(PixelFormat::parse(pf)), 20)
        }
        2 => {
            if !need(4) {
                return Ok(None);
            }
            let n = usize::from(be16(&buf[2..4]));
            let len = 4 + 4 * n;
            if !need(len) {
                return Ok(None);
            }
            let encodings = buf[4..len]
                .chunks_exact(4)
                .map(|c| be32(c) as i32)
                .collect();
            (ClientMessage::SetEncodings(encodings), len)
        }
        3 => {
            if !need(10) {
                return Ok(None);
            }
            (
                ClientMessage::UpdateRequest {
                    incremental: buf[1] != 0,
                    x: be16(&buf[2..4]),
                    y: be16(&buf[4..6]),
                    width: be16(&buf[6..8]),
                    height: be16(&buf[8..10]),
                },
                10,
            )
        }
        4 => {
            if !need(8) {
                return Ok(None);
            }
            (
                ClientMessage::Key {
                    down: buf[1] != 0,
                    keysym: be32(&buf[4..8]),
                },
                8,
            )
        }
        5 => {
            if !need(6) {
                return Ok(None);
            }
            (
                ClientMessage::Pointer {
                    buttons: buf[1],
                    x: be16(&buf[2..4]),
                    y: be16(&buf[4..6]),
                },
                6,
            )
        }
        6 => {
            if !need(8) {
                return Ok(None);
            }
            let len = be32(&buf[4..8]);
            if len > MAX_CUT_TEXT {
                return Err(ProtocolError::CutTextTooLong(len));
            }
            let total = 8 + len as usize;
            if !need(total) {
                return Ok(None);
            }
            (ClientMessage::CutText, total)
        }
        other => return Err(ProtocolError::MessageType(other)),
    };
    Ok(Some(msg))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Version,
    Security,
    ClientInit,
    Normal,
}

/// One client's protocol state.
#[derive(Debug)]
pub struct Session {
    phase: Phase,
    version: Version,
    width: u16,
    height: u16,
    name: String,
}

impl Session {
    /// A new session and the bytes to greet the client with.
    pub fn new(width: u16, height: u16, name: &str) -> (Self, &'static [u8]) {
        (
            Self {
                phase: Phase::Version,
                version: Version::V3_8,
                width,
                height,
                name: name.to_string(),
            },
            SERVER_VERSION,
        )
    }

    /// Whether the handshake is over.
    pub fn ready(&self) -> bool {
        self.phase == Phase::Normal
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Takes what it can from `input`: answers the handshake into `out` and
    /// appends client messages to `messages`. Returns the bytes taken; the
    /// rest is an incomplete message. After an error, `out` may hold a reason
    /// for the client (RFB 3.8's security failure) that is worth sending.
    pub fn process(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        messages: &mut Vec<ClientMessage>,
    ) -> Result<usize, ProtocolError> {
        let mut taken = 0;
        loop {
            let rest = &input[taken..];
            match self.phase {
                Phase::Version => {
                    let Some(v) = rest.first_chunk::<12>() else {
                        return Ok(taken);
                    };
                    self.version = parse_version(v)?;
                    taken += 12;
                    if self.version == Version::V3_3 {
                        out.extend_from_slice(&1u32.to_be_bytes());
                        self.phase = Phase::ClientInit;
                    } else {
                        out.extend_from_slice(&[1, 1]);
                        self.phase = Phase::Security;
                    }
                }
                Phase::Security => {
                    let Some(&kind) = rest.first() else {
                        return Ok(taken);
                    };
                    taken += 1;
                    if kind != 1 {
                        if self.version == Version::V3_8 {
                            let reason = b"only security type None (1) is offered";
                            out.extend_from_slice(&1u32.to_be_bytes());
                            out.extend_from_slice(&(reason.len() as u32).to_be_bytes());
                            out.extend_from_slice(reason);
                        }
                        return Err(ProtocolError::SecurityType(kind));
                    }
                    if self.version == Version::V3_8 {
                        out.extend_from_slice(&0u32.to_be_bytes());
                    }
                    self.phase = Phase::ClientInit;
                }
                Phase::ClientInit => {
                    if rest.is_empty() {
                        return Ok(taken);
                    }
                    taken += 1;
                    out.extend_from_slice(&self.width.to_be_bytes());
                    out.extend_from_slice(&self.height.to_be_bytes());
                    out.extend_from_slice(&PixelFormat::NATIVE.to_bytes());
                    out.extend_from_slice(&(self.name.len() as u32).to_be_bytes());
                    out.extend_from_slice(self.name.as_bytes());
                    self.phase = Phase::Normal;
                }
                Phase::Normal => match parse_message(rest)? {
                    Some((msg, n)) => {
                        taken += n;
                        messages.push(msg);
                    }
                    None => return Ok(taken),
                },
            }
        }
    }
}

/// Appends a FramebufferUpdate header for `rects` rectangles.
pub fn update_header(rects: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&rects.to_be_bytes());
}

/// Appends a rectangle header.
pub fn rect_header(x: u16, y: u16, w: u16, h: u16, encoding: i32, out: &mut Vec<u8>) {
    for v in [x, y, w, h] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(&encoding.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn handshake(version: &[u8; 12]) -> (Session, Vec<u8>) {
        let (mut s, _) = Session::new(640, 480, "mica");
        let mut out = Vec::new();
        let mut msgs = Vec::new();
        let mut input = version.to_vec();
        if version != b"RFB 003.003\n" {
            input.push(1);
        }
        input.push(1);
        assert_eq!(s.process(&input, &mut out, &mut msgs), Ok(input.len()));
        assert!(s.ready() && msgs.is_empty());
        (s, out)
    }

    #[test]
    fn handshakes_of_each_version() {
        let (_, out) = handshake(b"RFB 003.008\n");
        assert_eq!(&out[..6], &[1, 1, 0, 0, 0, 0]);
        assert_eq!(&out[6..10], &[2, 128, 1, 224]);
        assert_eq!(&out[out.len() - 4..], b"mica");
        let (_, out) = handshake(b"RFB 003.007\n");
        assert_eq!(&out[..2], &[1, 1]);
        assert_eq!(&out[2..4], &[2, 128]);
        let (s, out) = handshake(b"RFB 003.003\n");
        assert_eq!(&out[..4], &[0, 0, 0, 1]);
        assert_eq!(s.version(), Version::V3_3);
        assert_eq!(parse_version(b"RFB 003.889\n"), Ok(Version::V3_8));
        assert!(parse_version(b"RFB 004.000\n").is_err());
        assert!(parse_version(b"GET / HTTP/1").is_err());
    }

    #[test]
    fn a_refused_security_type_is_explained_in_3_8() {
        let (mut s, _) = Session::new(64, 64, "m");
        let mut out = Vec::new();
        let r = s.process(b"RFB 003.008\n\x02", &mut out, &mut Vec::new());
        assert_eq!(r, Err(ProtocolError::SecurityType(2)));
        assert_eq!(&out[2..6], &[0, 0, 0, 1]);
    }

    #[test]
    fn messages_split_anywhere_parse_the_same() {
        let mut stream = vec![0u8, 0, 0, 0];
        stream.extend(PixelFormat::NATIVE.to_bytes());
        stream.extend([2, 0, 0, 2, 0, 0, 0, 16, 0, 0, 0, 0]);
        stream.extend([3, 1, 0, 1, 0, 2, 0, 3, 0, 4]);
        stream.extend([4, 1, 0, 0, 0, 0, 0xff, 0x0d]);
        stream.extend([5, 1, 0, 7, 0, 8]);
        stream.extend([6, 0, 0, 0, 0, 0, 0, 2, b'h', b'i']);
        for split in 0..stream.len() {
            let (mut s, _) = handshake(b"RFB 003.008\n");
            let mut msgs = Vec::new();
            let n = s
                .process(&stream[..split], &mut Vec::new(), &mut msgs)
                .unwrap();
            let mut rest = stream[n..].to_vec();
            let m = s.process(&rest, &mut Vec::new(), &mut msgs).unwrap();
            rest.drain(..m);
            assert!(rest.is_empty());
            assert_eq!(msgs.len(), 6, "split at {split}");
            assert_eq!(msgs[1], ClientMessage::SetEncodings(vec![16, 0]));
            assert_eq!(
                msgs[3],
                ClientMessage::Key {
                    down: true,
                    keysym: 0xff0d
                }
            );
        }
    }

    #[test]
    fn pixel_formats() {
        assert!(PixelFormat::NATIVE.check().is_ok());
        let rgb565 = PixelFormat {
            bits_per_pixel: 16,
            depth: 16,
            big_endian: false,
            true_colour: true,
            red_max: 31,
            green_max: 63,
            blue_max: 31,
            red_shift: 11,
            green_shift: 5,
            blue_shift: 0,
        };
        assert!(rgb565.check().is_ok());
        assert_eq!(rgb565.convert(0x00ff_0000), 0xf800);
        assert_eq!(rgb565.convert(0x0000_ff00), 0x07e0);
        let mut out = Vec::new();
        rgb565.put(0xf800, &mut out);
        assert_eq!(out, [0x00, 0xf8]);
        let novnc = PixelFormat {
            red_shift: 0,
            blue_shift: 16,
            ..PixelFormat::NATIVE
        };
        assert_eq!(novnc.convert(0x0011_2233), 0x0033_2211);
        assert_eq!(novnc.cpixel(), (3, 0));
        let be = PixelFormat {
            big_endian: true,
            ..PixelFormat::NATIVE
        };
        assert_eq!(be.cpixel(), (3, 1));
        let high = PixelFormat {
            red_shift: 24,
            green_shift: 16,
            blue_shift: 8,
            ..PixelFormat::NATIVE
        };
        assert_eq!(high.cpixel(), (3, 1));
        assert!(
            PixelFormat {
                true_colour: false,
                ..PixelFormat::NATIVE
            }
            .check()
            .is_err()
        );
        assert!(
            PixelFormat {
                red_shift: 30,
                ..PixelFormat::NATIVE
            }
            .check()
            .is_err()
        );
        assert!(
            PixelFormat {
                red_max: 100,
                ..PixelFormat::NATIVE
            }
            .check()
            .is_err()
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Arbitrary bytes, in arbitrary pieces, at any phase: no panic; the
        /// session either takes bytes or fails with an error, never loops.
        #[test]
        fn arbitrary_input_never_panics(
            prefix in prop::sample::select(vec![0usize, 1, 2, 3]),
            data in prop::collection::vec(any::<u8>(), 0..600),
            cuts in prop::collection::vec(0usize..600, 0..8),
        ) {
            let preludes: [&[u8]; 4] = [b"", b"RFB 003.008\n\x01\x01", b"RFB 003.003\n\x00", b"RFB 003.007\n"];
            let mut input = preludes[prefix].to_vec();
            input.extend(&data);
            let (mut s, _) = Session::new(1024, 768, "fuzz");
            let mut buf = Vec::new();
            let mut out = Vec::new();
            let mut msgs = Vec::new();
            let mut cuts = cuts;
            cuts.push(input.len());
            cuts.sort_unstable();
            let mut fed = 0;
            for cut in cuts {
                let cut = cut.min(input.len());
                if cut < fed { continue; }
                buf.extend_from_slice(&input[fed..cut]);
                fed = cut;
                match s.process(&buf, &mut out, &mut msgs) {
                    Ok(n) => { prop_assert!(n <= buf.len()); buf.drain(..n); }
                    Err(e) => { prop_assert!(!e.to_string().is_empty()); return Ok(()); }
                }
            }
            // What is left is a prefix of one message, never a whole one.
            if s.ready() {
                prop_assert_eq!(parse_message(&buf), Ok(None));
            }
            for m in msgs {
                if let ClientMessage::SetPixelFormat(pf) = m {
                    // Checking any format is safe, and accepted ones convert.
                    if pf.check().is_ok() {
                        let mut px = Vec::new();
                        pf.put(pf.convert(0x00ff_ffff), &mut px);
                        prop_assert_eq!(px.len(), pf.bytes_per_pixel());
                    }
                }
            }
        }
    }
}
