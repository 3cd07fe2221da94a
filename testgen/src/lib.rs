//! Deterministic input generator for the property tests of every parser:
//! mutations of valid examples (flips, inserts, deletes, splices) mixed with
//! random strings. No dependency, reproducible from a seed.

pub struct Gen {
    state: u64,
}

const ALPHABET: &[u8] = b"0123456789abcdefABCDEF:./-,*#kKmMgGiBsh \t\n\"\\\x00\xff%[]{}=_|";

impl Gen {
    pub fn new(seed: u64) -> Self {
        Self { state: seed | 1 }
    }

    pub fn u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.u64() % n.max(1) as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        if self.below(4) == 0 {
            self.u64() as u8
        } else {
            ALPHABET[self.below(ALPHABET.len())]
        }
    }

    /// Bytes derived from one of `seeds` (or from nothing, now and then).
    pub fn bytes(&mut self, seeds: &[&[u8]]) -> Vec<u8> {
        let mut v: Vec<u8> = if seeds.is_empty() || self.below(8) == 0 {
            (0..self.below(24)).map(|_| self.byte()).collect()
        } else {
            seeds[self.below(seeds.len())].to_vec()
        };
        for _ in 0..=self.below(4) {
            match self.below(5) {
                0 if !v.is_empty() => {
                    let i = self.below(v.len());
                    v[i] = self.byte();
                }
                1 => {
                    let i = self.below(v.len() + 1);
                    let b = self.byte();
                    v.insert(i, b);
                }
                2 if !v.is_empty() => {
                    let i = self.below(v.len());
                    v.remove(i);
                }
                3 if !seeds.is_empty() => {
                    let other = seeds[self.below(seeds.len())];
                    let cut = self.below(v.len() + 1);
                    let from = self.below(other.len() + 1);
                    v.truncate(cut);
                    v.extend_from_slice(&other[from..]);
                }
                _ => {}
            }
        }
        v
    }

    /// Like `bytes`, as (lossy) text.
    pub fn text(&mut self, seeds: &[&str]) -> String {
        let seeds: Vec<&[u8]> = seeds.iter().map(|s| s.as_bytes()).collect();
        String::from_utf8_lossy(&self.bytes(&seeds)).into_owned()
    }
}

/// Inputs per parser in the property tests.
pub const CASES: usize = 1_000_000;
