//! Parsing the sizes and durations operators type on command lines.
//!
//! Accepts what `systemd` and `ss` users expect (`4MiB`, `4M`, `512k`, `5s`,
//! `250ms`, `2m`); every rejection names the bad value and the accepted form.

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {what} {value:?}: expected {expected}")]
pub struct ParseError {
    pub what: &'static str,
    pub value: String,
    pub expected: &'static str,
}

fn split_number(s: &str) -> Option<(u64, &str)> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits == 0 {
        return None;
    }
    let n = s[..digits].parse().ok()?;
    Some((n, s[digits..].trim()))
}

/// Bytes: a number with an optional binary suffix (k/K/KiB, M/MiB, G/GiB; B).
pub fn parse_size(s: &str) -> Result<u64, ParseError> {
    let err = || ParseError {
        what: "size",
        value: s.into(),
        expected: "a number of bytes with an optional suffix: 4194304, 512KiB, 4MiB, 1G",
    };
    let (n, unit) = split_number(s).ok_or_else(err)?;
    let mult: u64 = match unit {
        "" | "B" | "b" => 1,
        "k" | "K" | "KiB" | "KB" | "kB" => 1 << 10,
        "m" | "M" | "MiB" | "MB" => 1 << 20,
        "g" | "G" | "GiB" | "GB" => 1 << 30,
        _ => return Err(err()),
    };
    n.checked_mul(mult).ok_or_else(err)
}

/// A duration: a number with a unit (ms, s, m, h); a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, ParseError> {
    let err = || ParseError {
        what: "duration",
        value: s.into(),
        expected: "a number with a unit: 250ms, 5s, 2m, 1h (bare numbers are seconds)",
    };
    let (n, unit) = split_number(s).ok_or_else(err)?;
    let ms: u64 = match unit {
        "ms" => 1,
        "" | "s" | "sec" => 1000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        _ => return Err(err()),
    };
    n.checked_mul(ms).map(Duration::from_millis).ok_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (input, want) in [
            ("4194304", 4 << 20),
            ("4MiB", 4 << 20),
            ("4M", 4 << 20),
            ("512k", 512 << 10),
            ("1G", 1 << 30),
            (" 8 KiB ", 8 << 10),
        ] {
            assert_eq!(parse_size(input), Ok(want), "{input}");
        }
        for bad in [
            "",
            "M",
            "-1",
            "4X",
            "1.5M",
            "99999999999999999999",
            "18446744073709551615G",
        ] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn durations() {
        for (input, want) in [
            ("5s", 5000),
            ("5", 5000),
            ("250ms", 250),
            ("2m", 120_000),
            ("1h", 3_600_000),
        ] {
            assert_eq!(
                parse_duration(input),
                Ok(Duration::from_millis(want)),
                "{input}"
            );
        }
        for bad in ["", "s", "5d", "-5s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_million_generated_inputs_never_panic_and_errors_name_the_value() {
        let mut g = longconn_testgen::Gen::new(1);
        for _ in 0..longconn_testgen::CASES {
            let s = g.text(&[
                "4MiB",
                "512k",
                "5s",
                "250ms",
                "1h",
                "18446744073709551615",
                "2m",
            ]);
            for e in [parse_size(&s).err(), parse_duration(&s).map(|_| 0).err()]
                .into_iter()
                .flatten()
            {
                let msg = e.to_string();
                assert!(msg.contains(&format!("{s:?}")), "{msg}");
                assert_eq!(msg.lines().count().max(1), 1, "one line: {msg}");
            }
        }
    }
}
