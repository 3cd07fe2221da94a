//! Times and addresses as text, written straight into an output buffer:
//! every access record carries two of each, so these skip std's and
//! chrono's formatting machinery (chrono stays the test oracle).

use std::io::Write as _;

/// `t` (Unix ns) as RFC 3339 UTC with microseconds, as chrono's
/// `to_rfc3339_opts(Micros, true)` writes it, into `out` (cleared first).
pub fn rfc3339_micros(out: &mut Vec<u8>, t: i64) {
    let secs = t.div_euclid(1_000_000_000);
    let micros = t.rem_euclid(1_000_000_000) / 1000;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    if !(0..=9999).contains(&y) {
        let _ = write!(
            out,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
            sod / 3600,
            (sod / 60) % 60,
            sod % 60
        );
        return;
    }
    // Digits by hand: this runs for every record.
    let mut b = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, mut v: i64| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, y);
    put(5, 2, m);
    put(8, 2, d);
    put(11, 2, sod / 3600);
    put(14, 2, (sod / 60) % 60);
    put(17, 2, sod % 60);
    put(20, 6, micros);
    out.extend_from_slice(&b);
}

/// `ip` as its `Display` text; IPv4 without the formatting machinery (two
/// addresses per record, every record).
pub fn ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if o >= 100 {
                    out.push(b'0' + o / 100);
                }
                if o >= 10 {
                    out.push(b'0' + o / 10 % 10);
                }
                out.push(b'0' + o % 10);
            }
        }
        v6 => {
            let _ = write!(out, "{v6}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_micros_equals_chrono() {
        let mut g = longconn_testgen::Gen::new(9);
        let mut got = Vec::new();
        let edges = [
            0i64,
            1,
            -1,
            999,
            -1000,
            951_782_400_000_000_000,
            i64::MAX,
            i64::MIN,
        ];
        let random = (0..200_000).map(|_| g.u64() as i64);
        for t in edges.into_iter().chain(random) {
            got.clear();
            rfc3339_micros(&mut got, t);
            let want = chrono::DateTime::from_timestamp_nanos(t)
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            assert_eq!(String::from_utf8_lossy(&got), want, "{t}");
        }
    }

    #[test]
    fn addresses_equal_display() {
        let mut g = longconn_testgen::Gen::new(3);
        let mut got = Vec::new();
        for _ in 0..100_000 {
            let n = g.u64();
            let ip = if n.is_multiple_of(5) {
                std::net::IpAddr::from([
                    n as u16,
                    0,
                    (n >> 16) as u16,
                    0,
                    0,
                    0,
                    (n >> 32) as u16,
                    1,
                ])
            } else {
                std::net::IpAddr::from((n as u32).to_be_bytes())
            };
            got.clear();
            super::ip(&mut got, ip);
            assert_eq!(String::from_utf8_lossy(&got), ip.to_string());
        }
    }
}
