//! Human units for tables: 1.5MiB, 2h03m, 250us.

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

pub fn duration(secs: f64) -> String {
    let s = secs as u64;
    match s {
        0..=59 => format!("{secs:.1}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

pub fn micros(us: u32) -> String {
    if us >= 1000 {
        format!("{:.1}ms", f64::from(us) / 1000.0)
    } else {
        format!("{us}us")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn units() {
        assert_eq!(super::bytes(512), "512B");
        assert_eq!(super::bytes(1536), "1.5KiB");
        assert_eq!(super::bytes(3 << 20), "3.0MiB");
        assert_eq!(super::duration(7384.0), "2h03m");
        assert_eq!(super::duration(2.5), "2.5s");
        assert_eq!(super::micros(250), "250us");
        assert_eq!(super::micros(2500), "2.5ms");
    }
}
