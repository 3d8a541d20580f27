//! Rectangle encodings: Raw, and ZRLE (RFC 6143 §7.7.6): 64×64 tiles, each
//! solid, packed-palette, RLE, palette-RLE or raw, whichever is smallest, all
//! through one zlib stream per client.

use flate2::{Compress, Compression, FlushCompress};

use super::proto::PixelFormat;

/// ZRLE's tile side.
pub const TILE: usize = 64;
/// Most colours a palette tile may have.
const PALETTE_MAX: usize = 127;

/// Appends `pixels` (native, row-major) in Raw encoding.
pub fn raw(pixels: &[u32], pf: &PixelFormat, out: &mut Vec<u8>) {
    out.reserve(pixels.len() * pf.bytes_per_pixel());
    for &p in pixels {
        pf.put(pf.convert(p), out);
    }
}

/// A client's ZRLE state: its zlib stream.
pub struct Zrle {
    z: Compress,
    tiles: Vec<u8>,
}

impl Default for Zrle {
    fn default() -> Self {
        Self::new()
    }
}

impl Zrle {
    pub fn new() -> Self {
        Self {
            z: Compress::new(Compression::fast(), true),
            tiles: Vec::new(),
        }
    }

    /// Appends a `width` × `height` rectangle of native `pixels`: a u32 length
    /// and the zlib data of its tiles.
    pub fn encode(
        &mut self,
        pixels: &[u32],
        width: usize,
        height: usize,
        pf: &PixelFormat,
        out: &mut Vec<u8>,
    ) {
        self.tiles.clear();
        tiles(pixels, width, height, pf, &mut self.tiles);
        let len_at = out.len();
        out.extend_from_slice(&[0; 4]);
        let start = out.len();
        let in_before = self.z.total_in();
        loop {
            let taken = (self.z.total_in() - in_before) as usize;
            out.reserve(self.tiles.len() / 2 + 1024);
            self.z
                .compress_vec(&self.tiles[taken..], out, FlushCompress::Sync)
                .expect("deflate into a growing buffer cannot fail");
            let taken = (self.z.total_in() - in_before) as usize;
            if taken == self.tiles.len() && out.len() < out.capacity() {
                break;
            }
        }
        let len = (out.len() - start) as u32;
        out[len_at..start].copy_from_slice(&len.to_be_bytes());
    }
}

/// Appends the uncompressed ZRLE tile data of a rectangle.
pub fn tiles(pixels: &[u32], width: usize, height: usize, pf: &PixelFormat, out: &mut Vec<u8>) {
    let (cp_len, cp_off) = pf.cpixel();
    let mut tile = Vec::with_capacity(TILE * TILE);
    let mut runs: Vec<(u32, usize)> = Vec::new();
    let mut palette: Vec<u32> = Vec::with_capacity(PALETTE_MAX);
    let mut scratch = Vec::with_capacity(4);
    let mut put_cpixel = |v: u32, out: &mut Vec<u8>| {
        scratch.clear();
        pf.put(v, &mut scratch);
        out.extend_from_slice(&scratch[cp_off..cp_off + cp_len]);
    };
    for ty in (0..height).step_by(TILE) {
        let th = TILE.min(height - ty);
        for tx in (0..width).step_by(TILE) {
            let tw = TILE.min(width - tx);
            tile.clear();
            for y in ty..ty + th {
                tile.extend(
                    pixels[y * width + tx..y * width + tx + tw]
                        .iter()
                        .map(|&p| pf.convert(p)),
                );
            }
            // Runs (across rows) and the palette (up to PALETTE_MAX + 1).
            runs.clear();
            palette.clear();
            for &v in &tile {
                match runs.last_mut() {
                    Some((last, n)) if *last == v => *n += 1,
                    _ => {
                        runs.push((v, 1));
                        if palette.len() <= PALETTE_MAX && !palette.contains(&v) {
                            palette.push(v);
                        }
                    }
                }
            }
            let n = tile.len();
            if palette.len() == 1 {
                out.push(1);
                put_cpixel(palette[0], out);
                continue;
            }
            let run_bytes = |len: usize| (len - 1) / 255 + 1;
            let raw_size = n * cp_len;
            let rle_size: usize = runs.iter().map(|&(_, l)| cp_len + run_bytes(l)).sum();
            let (packed_size, prle_size) = if palette.len() <= PALETTE_MAX {
                let p = palette.len() * cp_len;
                let bits = match palette.len() {
                    2 => 1,
                    3..=4 => 2,
                    _ => 4,
                };
                let packed = if palette.len() <= 16 {
                    p + th * (tw * bits).div_ceil(8)
                } else {
                    usize::MAX
                };
                let prle = p + runs
                    .iter()
                    .map(|&(_, l)| if l == 1 { 1 } else { 1 + run_bytes(l) })
                    .sum::<usize>();
                (packed, prle)
            } else {
                (usize::MAX, usize::MAX)
            };
            let best = raw_size.min(rle_size).min(packed_size).min(prle_size);
            let index = |v: u32| palette.iter().position(|&c| c == v).unwrap_or(0) as u8;
            if best == packed_size {
                out.push(palette.len() as u8);
                for &c in &palette {
                    put_cpixel(c, out);
                }
                let bits = match palette.len() {
                    2 => 1,
                    3..=4 => 2,
                    _ => 4,
                };
                for row in tile.chunks(tw) {
                    let mut byte = 0u8;
                    let mut used = 0;
                    for &v in row {
                        byte = (byte << bits) | index(v);
                        used += bits;
                        if used == 8 {
                            out.push(byte);
                            byte = 0;
                            used = 0;
                        }
                    }
                    if used > 0 {
                        out.push(byte << (8 - used));
                    }
                }
            } else if best == prle_size {
                out.push(128 + palette.len() as u8);
                for &c in &palette {
                    put_cpixel(c, out);
                }
                for &(v, len) in &runs {
                    if len == 1 {
                        out.push(index(v));
                    } else {
                        out.push(index(v) | 0x80);
                        put_run(len, out);
                    }
                }
            } else if best == rle_size {
                out.push(128);
                for &(v, len) in &runs {
                    put_cpixel(v, out);
                    put_run(len, out);
                }
            } else {
                out.push(0);
                for &v in &tile {
                    put_cpixel(v, out);
                }
            }
        }
    }
}

/// A run length: `len - 1` as bytes of 255 and a last byte below 255.
fn put_run(len: usize, out: &mut Vec<u8>) {
    let mut rest = len - 1;
    while rest >= 255 {
        out.push(255);
        rest -= 255;
    }
    out.push(rest as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_solid_tile_is_one_cpixel() {
        let mut out = Vec::new();
        tiles(
            &[0x0012_3456; 64 * 64],
            64,
            64,
            &PixelFormat::NATIVE,
            &mut out,
        );
        assert_eq!(out, [1, 0x56, 0x34, 0x12]);
    }

    #[test]
    fn two_colours_pack_one_bit_per_pixel() {
        let px: Vec<u32> = (0..16)
            .map(|i| if i % 2 == 0 { 0 } else { 0xffffff })
            .collect();
        let mut out = Vec::new();
        tiles(&px, 8, 2, &PixelFormat::NATIVE, &mut out);
        assert_eq!(
            out,
            [2, 0, 0, 0, 0xff, 0xff, 0xff, 0b0101_0101, 0b0101_0101]
        );
    }

    #[test]
    fn long_runs_take_255_bytes() {
        let mut out = Vec::new();
        put_run(1, &mut out);
        put_run(255, &mut out);
        put_run(256, &mut out);
        put_run(511, &mut out);
        assert_eq!(out, [0, 254, 255, 0, 255, 255, 0]);
    }
}
