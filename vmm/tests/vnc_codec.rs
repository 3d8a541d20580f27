//! Property tests of the ZRLE encoder against the test client's own decoder
//! (common/rfb.rs): random screens, rectangles and pixel formats round-trip
//! through one zlib stream, as a viewer sees them. (The client-message parser
//! is fuzzed in `mica_vmm::vnc::proto`'s unit tests.)

mod common;

use common::rfb::{Format, decode_zrle};
use flate2::{Decompress, FlushDecompress};
use mica_vmm::vnc::encode::{Zrle, raw};
use mica_vmm::vnc::proto::PixelFormat;
use proptest::prelude::*;

fn formats() -> Vec<(PixelFormat, Format)> {
    let mk = |bpp: u8, depth: u8, be: bool, max: [u16; 3], shift: [u8; 3]| {
        (
            PixelFormat {
                bits_per_pixel: bpp,
                depth,
                big_endian: be,
                true_colour: true,
                red_max: max[0],
                green_max: max[1],
                blue_max: max[2],
                red_shift: shift[0],
                green_shift: shift[1],
                blue_shift: shift[2],
            },
            Format {
                bpp,
                depth,
                big_endian: be,
                max,
                shift,
            },
        )
    };
    vec![
        mk(32, 24, false, [255; 3], [16, 8, 0]),
        mk(32, 24, false, [255; 3], [0, 8, 16]),
        mk(32, 24, true, [255; 3], [16, 8, 0]),
        mk(32, 24, false, [255; 3], [24, 16, 8]),
        mk(32, 24, true, [255; 3], [24, 16, 8]),
        mk(32, 32, false, [255; 3], [16, 8, 0]),
        mk(16, 16, false, [31, 63, 31], [11, 5, 0]),
        mk(16, 15, true, [31, 31, 31], [10, 5, 0]),
        mk(8, 8, false, [7, 7, 3], [0, 3, 6]),
    ]
}

/// A screen: random colours from a palette of `colours`, in runs.
fn screen(w: usize, h: usize, colours: usize, seed: u64) -> Vec<u32> {
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let palette: Vec<u32> = (0..colours).map(|_| next() as u32 & 0x00ff_ffff).collect();
    let mut px = Vec::with_capacity(w * h);
    while px.len() < w * h {
        let c = palette[next() as usize % colours];
        let run = 1 + next() as usize % 300;
        px.extend(std::iter::repeat_n(c, run.min(w * h - px.len())));
    }
    px
}

fn inflate(z: &mut Decompress, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 8 + 4096);
    let start = z.total_in();
    loop {
        let used = (z.total_in() - start) as usize;
        if used == data.len() && out.len() < out.capacity() {
            return out;
        }
        if out.len() == out.capacity() {
            out.reserve(out.capacity());
        }
        z.decompress_vec(&data[used..], &mut out, FlushDecompress::Sync)
            .unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn zrle_round_trips(
        rects in prop::collection::vec((1usize..200, 1usize..150, 1usize..300, any::<u64>()), 1..4),
        format in 0usize..9,
    ) {
        let (pf, f) = formats()[format];
        let mut enc = Zrle::new();
        let mut dec = Decompress::new(true);
        // Several rectangles through the same zlib stream.
        for (w, h, colours, seed) in rects {
            let px = screen(w, h, colours, seed);
            let mut out = Vec::new();
            enc.encode(&px, w, h, &pf, &mut out);
            let len = u32::from_be_bytes(out[..4].try_into().unwrap()) as usize;
            prop_assert_eq!(len, out.len() - 4);
            let tiles = inflate(&mut dec, &out[4..]);
            let got = decode_zrle(&tiles, w, h, &f).map_err(TestCaseError::fail)?;
            // Raw is the reference: the same pixel values, byte for byte.
            let mut want = Vec::new();
            raw(&px, &pf, &mut want);
            let bpp = usize::from(pf.bits_per_pixel / 8);
            for (i, v) in got.iter().enumerate() {
                let b = &want[i * bpp..(i + 1) * bpp];
                let mut expect = 0u32;
                if pf.big_endian {
                    for &x in b { expect = (expect << 8) | u32::from(x); }
                } else {
                    for &x in b.iter().rev() { expect = (expect << 8) | u32::from(x); }
                }
                prop_assert_eq!(*v, expect, "pixel {} of {}x{}", i, w, h);
            }
        }
    }
}

#[test]
fn zrle_compresses_a_console_screen() {
    // Two colours in text-like runs: packed palette tiles, well under Raw.
    let (w, h) = (1024, 768);
    let px = screen(w, h, 2, 7);
    let mut out = Vec::new();
    Zrle::new().encode(&px, w, h, &PixelFormat::NATIVE, &mut out);
    assert!(out.len() < w * h / 8, "{} bytes", out.len());
}
