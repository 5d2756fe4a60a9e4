//! A small deterministic mutation engine for the fuzz tests: byte flips, truncations, splices,
//! insertions and deletions, and integer fields overwritten with boundary values or bumped.
//! Seeded, so a failure reproduces exactly.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// An integer field in a seed file: byte offset and width (1, 2, 4 or 8).
#[derive(Clone, Copy, Debug)]
pub struct Field {
    pub offset: usize,
    pub width: usize,
}

pub const BOUNDARY: &[u64] = &[
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    12,
    13,
    31,
    32,
    33,
    64,
    255,
    256,
    65535,
    65536,
    0x7fff_ffff,
    0x8000_0000,
    u32::MAX as u64 - 1,
    u32::MAX as u64,
    1 << 32,
    1 << 40,
    i64::MAX as u64,
    1 << 63,
    u64::MAX - 1,
    u64::MAX,
];

pub struct Mutator {
    pub rng: StdRng,
}

impl Mutator {
    pub fn new(seed: u64) -> Mutator {
        Mutator {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    fn pos(&mut self, len: usize) -> usize {
        if len == 0 {
            0
        } else {
            self.rng.random_range(0..len)
        }
    }

    fn boundary(&mut self) -> u64 {
        if self.rng.random_bool(0.8) {
            BOUNDARY[self.rng.random_range(0..BOUNDARY.len())]
        } else {
            self.rng.random()
        }
    }

    /// Writes `v` little-endian into `width` bytes at `at`, if it fits.
    pub fn put(buf: &mut [u8], at: usize, width: usize, v: u64) {
        if let Some(dst) = buf.get_mut(at..at + width) {
            dst.copy_from_slice(&v.to_le_bytes()[..width]);
        }
    }

    fn get(buf: &[u8], at: usize, width: usize) -> u64 {
        let mut b = [0u8; 8];
        if let Some(src) = buf.get(at..at + width) {
            b[..width].copy_from_slice(src);
        }
        u64::from_le_bytes(b)
    }

    /// One mutation of `seed` (`donor` feeds splices). `fields` are the seed's integer fields.
    pub fn mutate_once(
        &mut self,
        buf: &mut Vec<u8>,
        fields: &[Field],
        donor: &[u8],
    ) -> &'static str {
        let len = buf.len();
        match self.rng.random_range(0..10) {
            0 => {
                let p = self.pos(len);
                if let Some(b) = buf.get_mut(p) {
                    *b ^= 1 << self.rng.random_range(0..8);
                }
                "bit flip"
            }
            1 => {
                for _ in 0..self.rng.random_range(1..8) {
                    let p = self.pos(len);
                    let v = self.rng.random();
                    if let Some(b) = buf.get_mut(p) {
                        *b = v;
                    }
                }
                "byte set"
            }
            2 => {
                let cut = self.pos(len);
                buf.truncate(cut);
                "truncate"
            }
            3 => {
                // Splice: overwrite or insert a chunk taken from the donor.
                let a = self.pos(donor.len());
                let n = self
                    .rng
                    .random_range(1..64)
                    .min(donor.len() - a.min(donor.len()));
                let chunk = donor.get(a..a + n).unwrap_or(&[]).to_vec();
                let at = self.pos(len);
                if self.rng.random_bool(0.5) {
                    for (i, c) in chunk.into_iter().enumerate() {
                        if let Some(b) = buf.get_mut(at + i) {
                            *b = c;
                        }
                    }
                } else {
                    buf.splice(at..at, chunk);
                }
                "splice"
            }
            4 => {
                let at = self.pos(len);
                let n = self.rng.random_range(1..32).min(len - at.min(len));
                buf.drain(at..at + n);
                "delete"
            }
            5 => {
                let at = self.pos(len);
                let n = self.rng.random_range(1..32);
                let bytes: Vec<u8> = (0..n).map(|_| self.rng.random()).collect();
                buf.splice(at..at, bytes);
                "insert"
            }
            6 | 7 => {
                if let Some(&f) = fields.get(self.pos(fields.len())) {
                    let v = self.boundary();
                    Self::put(buf, f.offset, f.width, v);
                }
                "field boundary"
            }
            8 => {
                if let Some(&f) = fields.get(self.pos(fields.len())) {
                    let old = Self::get(buf, f.offset, f.width);
                    let delta: i64 = match self.rng.random_range(0..4) {
                        0 => 1,
                        1 => -1,
                        2 => self.rng.random_range(-64..64),
                        _ => self.rng.random_range(-4096..4096),
                    };
                    Self::put(buf, f.offset, f.width, old.wrapping_add(delta as u64));
                }
                "field bump"
            }
            _ => {
                // A boundary value at an arbitrary 4- or 8-byte window.
                let width = if self.rng.random_bool(0.5) { 4 } else { 8 };
                let at = self.pos(len);
                let v = self.boundary();
                Self::put(buf, at, width, v);
                "raw boundary"
            }
        }
    }

    /// 1–3 mutations stacked.
    pub fn mutate(&mut self, seed: &[u8], fields: &[Field], donor: &[u8]) -> Vec<u8> {
        let mut buf = seed.to_vec();
        for _ in 0..self.rng.random_range(1..=3) {
            self.mutate_once(&mut buf, fields, donor);
        }
        buf
    }
}

/// Feeds `mutants` to `parse` (true = accepted) and `fuzz` under `catch_unwind`; returns
/// (fed, rejected, panicked, first panicking input).
pub fn run(
    mutants: impl Iterator<Item = Vec<u8>>,
    parse: impl Fn(&[u8]) -> bool,
    fuzz: impl Fn(&[u8]),
) -> (usize, usize, usize, Option<Vec<u8>>) {
    let (mut fed, mut rejected, mut panicked, mut first) = (0, 0, 0, None);
    for m in mutants {
        fed += 1;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let ok = parse(&m);
            fuzz(&m);
            ok
        }));
        match outcome {
            Ok(true) => {}
            Ok(false) => rejected += 1,
            Err(_) => {
                panicked += 1;
                if first.is_none() {
                    first = Some(m);
                }
            }
        }
    }
    (fed, rejected, panicked, first)
}

/// The variant name of an error (`"BadMagic"`), for tallying rejection reasons.
pub fn variant_name(e: &impl std::fmt::Debug) -> String {
    let s = format!("{e:?}");
    s.split(|c: char| !c.is_alphanumeric() && c != '_')
        .next()
        .unwrap_or("")
        .to_owned()
}
