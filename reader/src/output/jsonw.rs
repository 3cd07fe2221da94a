//! Appending JSON (and CSV) values to a byte buffer by hand, byte for byte
//! as serde_json's compact formatter and the csv crate write them, without
//! serde's per-value overhead: the access-record encoders run once per
//! record, up to 100 000 times per cycle.
//!
//! Invariant: every function appends valid UTF-8 (the bytes of a `&str` or
//! ASCII), so a buffer built only with these and `&str` bytes is UTF-8.

/// "00" "01" ... "99", for two digits per step.
const DIGITS2: [u8; 200] = {
    let mut t = [0u8; 200];
    let mut i = 0;
    while i < 100 {
        t[2 * i] = b'0' + (i / 10) as u8;
        t[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    t
};

/// Appends `v` in decimal, as itoa (serde_json, csv) does.
#[inline(always)]
pub fn u64(out: &mut Vec<u8>, v: u64) {
    if v < 10 {
        out.push(b'0' + v as u8);
        return;
    }
    let len = v.ilog10() as usize + 1;
    // Room for any u64, written in place from the last digit, two at a
    // time. (Digits built in a scratch buffer, then copied, would be read
    // back as wide loads of narrow stores: a stall of many cycles.)
    let start = out.len();
    out.extend_from_slice(&[0; 20]);
    out.truncate(start + len);
    let digits = &mut out[start..];
    let mut i = len;
    let mut v = v;
    while v >= 100 {
        let pair = (v % 100) as usize * 2;
        v /= 100;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&DIGITS2[pair..pair + 2]);
    }
    if v >= 10 {
        digits[..2].copy_from_slice(&DIGITS2[v as usize * 2..v as usize * 2 + 2]);
    } else {
        digits[0] = b'0' + v as u8;
    }
}

/// Byte-parallel tests on 8 bytes at a time (exact as booleans).
const ONES: u64 = u64::from_ne_bytes([1; 8]);
const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

/// Whether any byte of `x` is below `n` (`n` <= 128).
#[inline]
fn any_below(x: u64, n: u8) -> bool {
    x.wrapping_sub(ONES * n as u64) & !x & HIGHS != 0
}

/// Whether any byte of `x` is `b`.
#[inline]
fn any_equal(x: u64, b: u8) -> bool {
    any_below(x ^ (ONES * b as u64), 1)
}

/// Whether `test` holds for any 8-byte word of `bytes`, or `byte_test` for
/// any byte of a string shorter than 8 bytes. The last word overlaps the one
/// before it rather than being copied out, padded (a copy of a few bytes
/// then read as one word stalls the load for many cycles).
#[inline]
fn any_word(bytes: &[u8], test: impl Fn(u64) -> bool, byte_test: impl Fn(u8) -> bool) -> bool {
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[at..at + 8]);
        u64::from_ne_bytes(w)
    };
    if bytes.len() < 8 {
        return bytes.iter().any(|&b| byte_test(b));
    }
    let mut at = 0;
    while at + 8 < bytes.len() {
        if test(word(at)) {
            return true;
        }
        at += 8;
    }
    test(word(bytes.len() - 8))
}

/// The escape of each byte in a JSON string: 0 for none, `u` for `\u00XX`,
/// else the letter after the backslash. serde_json escapes exactly `"`, `\`
/// and the controls below 0x20 (not 0x7f, nor any non-ASCII).
const ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0a] = b'n';
    t[0x0c] = b'f';
    t[0x0d] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `s` escaped for inside a JSON string, without the quotes.
#[inline(always)]
pub fn str_contents(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    if any_word(
        bytes,
        |x| any_below(x, 0x20) || any_equal(x, b'"') || any_equal(x, b'\\'),
        |b| ESCAPE[b as usize] != 0,
    ) {
        escaped(out, bytes);
    } else {
        out.extend_from_slice(bytes);
    }
}

/// `str_contents` for a string that needs escaping.
#[cold]
#[inline(never)]
fn escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape = ESCAPE[b as usize];
        if escape == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        if escape == b'u' {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xf) as usize],
            ]);
        } else {
            out.extend_from_slice(&[b'\\', escape]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Appends `v` as serde_json writes an f64: `null` when not finite. Left to
/// serde_json itself, so its exact float format (which differs from std's
/// and from ryu's) is kept whatever its version.
#[inline]
pub fn f64(out: &mut Vec<u8>, v: f64) {
    if let Err(e) = serde_json::to_writer(&mut *out, &v) {
        unreachable!("serde_json cannot fail to write an f64 to a Vec: {e}");
    }
}

/// Appends `s` as one CSV field, as the csv crate's default writer does:
/// quoted when it holds a `,` `"` `\n` or `\r` (empty fields are not quoted in
/// a record of several fields), with each `"` doubled.
#[inline]
pub fn csv_field(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    if !any_word(
        bytes,
        |x| any_equal(x, b',') || any_equal(x, b'"') || any_equal(x, b'\n') || any_equal(x, b'\r'),
        |b| matches!(b, b',' | b'"' | b'\n' | b'\r'),
    ) {
        out.extend_from_slice(bytes);
        return;
    }
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'"' {
            // Up to and including the quote, then the quote again.
            out.extend_from_slice(&bytes[start..=i]);
            start = i;
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Appends `v` as the csv crate writes an f64 (with ryu): `NaN`, `inf`,
/// `-inf`, else ryu's shortest round-trip form (`0.0`, `-0.0`, `1234.5`,
/// `100.0`, `0.0001234`, `1e21`, `1.5e-7`).
///
/// serde_json (zmij) writes the same digits (shortest, closest, ties to
/// even, as ryu), in plain decimal for the same exponents (10^-5 < |v| <
/// 10^16), and in the same scientific form except for a `+` in positive
/// exponents (`1e+21`), dropped here. std's `{:e}` would not do: it breaks
/// ties upwards (173807324390955.125 is ...955.12 in ryu, ...955.13 in std).
/// A property test checks the result against the csv crate.
#[inline]
pub fn csv_f64(out: &mut Vec<u8>, v: f64) {
    if !v.is_finite() {
        out.extend_from_slice(if v.is_nan() {
            b"NaN".as_slice()
        } else if v > 0.0 {
            b"inf"
        } else {
            b"-inf"
        });
        return;
    }
    let start = out.len();
    f64(out, v);
    let written = &out[start..];
    if let Some(e) = written.iter().position(|&b| b == b'e') {
        if written.get(e + 1) == Some(&b'+') {
            out.remove(start + e + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use longconn_testgen::Gen;

    /// Every byte value (as a char) in strings of 1 to 27 bytes, at every
    /// offset: the word-at-a-time scans see it in a full word, in the
    /// overlapping last word, or in a string too short for a word.
    fn placed() -> Vec<String> {
        let mut cases = Vec::new();
        for c in (0..=255u8).map(char::from).chain(['€', '😀']) {
            for before in 0..18 {
                for after in 0..10 {
                    cases.push(format!("{}{c}{}", "a".repeat(before), "b".repeat(after)));
                }
            }
        }
        cases
    }

    fn json_u64(v: u64) -> String {
        let mut out = Vec::new();
        u64(&mut out, v);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn integers_equal_std() {
        let mut g = Gen::new(7);
        let mut cases: Vec<u64> = vec![0, 9, 10, 99, 100, 999, 1000, 9999, 10_000, u64::MAX];
        cases.extend((0..20).map(|p| 10u64.pow(p)));
        cases.extend((1..20).map(|p| 10u64.pow(p) - 1));
        cases.extend((0..100_000).map(|i| g.u64() >> (i % 64)));
        for v in cases {
            assert_eq!(json_u64(v), v.to_string());
        }
    }

    #[test]
    fn strings_equal_serde_json() {
        let mut g = Gen::new(11);
        let mut cases: Vec<String> = [
            "",
            "plain",
            "a\"b\\c",
            "\u{0}\u{1f}\u{7f}é€😀\r\n\t\u{8}\u{c}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        cases.extend((0..=255u8).map(|b| char::from(b).to_string()));
        cases.extend(placed());
        cases.extend((0..100_000).map(|_| g.text(&["abc", "x\"y", "é\n"])));
        for s in cases {
            let mut out = vec![b'"'];
            str_contents(&mut out, &s);
            out.push(b'"');
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(&s).unwrap()
            );
        }
    }

    /// One f64 as the csv crate writes it, the reference for `csv_f64`.
    fn csv_reference(v: f64) -> String {
        let mut w = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(Vec::new());
        w.serialize([v]).unwrap();
        let mut text = String::from_utf8(w.into_inner().unwrap()).unwrap();
        assert_eq!(text.pop(), Some('\n'));
        text
    }

    fn csv_ours(v: f64) -> String {
        let mut out = Vec::new();
        csv_f64(&mut out, v);
        String::from_utf8(out).unwrap()
    }

    /// Floats that sit on every branch of the layout, plus random bit
    /// patterns and random "realistic" values.
    fn floats(g: &mut Gen, n: usize) -> Vec<f64> {
        let mut cases = vec![
            0.0,
            -0.0,
            1.5,
            -1.5,
            2.0,
            1e-7,
            1.5e-7,
            1e21,
            1e22,
            1e15,
            1e16,
            1e17,
            123456789012345680.0,
            1234567890123456.7,
            0.1,
            0.2 + 0.1,
            1e-4,
            1e-5,
            1.234e-5,
            0.001234,
            f64::NAN,
            -f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            f64::EPSILON,
            5e-324,
            -5e-324,
            f64::from_bits(0x000f_ffff_ffff_ffff),
            9007199254740992.0,
            9007199254740993.0,
            6085.572858,
            8.0,
        ];
        for p in -330..=310 {
            let x = format!("1e{p}").parse::<f64>().unwrap();
            cases.extend([x, -x, x * 1.5, x * 1.2345678901234567]);
        }
        // Ties between two shortest candidates: ryu rounds them to even.
        cases.push(f64::from_bits(0x42e3c2757a8cc564));
        const HALVES: [f64; 9] = [0.125, 0.375, 0.625, 0.875, 0.25, 0.75, 0.5, 0.0625, 0.1875];
        for i in 0..n {
            cases.push(match i % 5 {
                0 => f64::from_bits(g.u64()),
                1 => g.u64() as f64 / 1e9,
                2 => (g.u64() >> (i % 64)) as f64 / 10f64.powi((i % 23) as i32),
                3 => {
                    let int = (g.u64() >> (i % 30 + 6)) as f64;
                    (int + HALVES[i % 9]) * 2f64.powi(g.below(40) as i32 - 20)
                }
                _ => (g.u64() % 100_000) as f64 / 1000.0,
            });
        }
        cases
    }

    #[test]
    fn csv_floats_equal_the_csv_crate() {
        let mut g = Gen::new(13);
        for v in floats(&mut g, 400_000) {
            assert_eq!(
                csv_ours(v),
                csv_reference(v),
                "{v:e} bits {:#x}",
                v.to_bits()
            );
        }
    }

    #[test]
    fn json_floats_equal_serde_json() {
        let mut g = Gen::new(17);
        for v in floats(&mut g, 10_000) {
            let mut out = Vec::new();
            f64(&mut out, v);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(&v).unwrap()
            );
        }
    }

    #[test]
    fn csv_fields_equal_the_csv_crate() {
        let mut g = Gen::new(19);
        let mut cases: Vec<String> = ["", " ", "a,b", "\"", "a\"\"b", "\r", "x\n", "é", "#c", "'"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        cases.extend((0..=255u8).map(|b| char::from(b).to_string()));
        cases.extend(placed());
        cases.extend((0..100_000).map(|_| g.text(&["abc", "x\"y", "a,b\r\n"])));
        for s in cases {
            // Two fields, so an empty one is not the record's only field.
            let mut w = csv::WriterBuilder::new()
                .has_headers(false)
                .from_writer(Vec::new());
            w.write_record([s.as_str(), "z"]).unwrap();
            let want = w.into_inner().unwrap();
            let mut out = Vec::new();
            csv_field(&mut out, &s);
            out.extend_from_slice(b",z\n");
            assert_eq!(out, want, "{s:?}");
        }
    }
}
