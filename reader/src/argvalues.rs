//! Typed values of the reader's command line, parsed by clap: a bad value is
//! a command-line error (exit 2) that names what is accepted, before any
//! file or pin is touched, and no value can overflow later arithmetic.

use std::time::Duration;

use longconn_common::units;

/// `--access-log` formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AccessFormat {
    Csv,
    Jsonl,
    None,
}

/// `--otlp` files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OtlpKind {
    Metrics,
    Logs,
    None,
}

/// A group that exists in /etc/group (by name or number).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupArg {
    pub name: String,
    pub gid: u32,
}

pub fn group(s: &str) -> Result<GroupArg, String> {
    longconn_common::groups::gid_of(s)
        .map(|gid| GroupArg {
            name: s.to_owned(),
            gid,
        })
        .ok_or_else(|| {
            "no such group in /etc/group; give an existing group name or a numeric gid".to_owned()
        })
}

/// A duration whose nanoseconds fit a u64 (the reader compares them with
/// CLOCK_BOOTTIME nanoseconds).
pub fn duration(s: &str) -> Result<Duration, String> {
    let d = units::parse_duration(s).map_err(|e| e.to_string())?;
    match u64::try_from(d.as_nanos()) {
        Ok(_) => Ok(d),
        Err(_) => Err(format!(
            "{s:?} is too long: at most {}h (2^64 ns)",
            u64::MAX / 3_600_000_000_000
        )),
    }
}

/// `--series-ttl`: a duration of at least one second (sub-minute values
/// are for tests and very short-lived hosts).
pub fn series_ttl(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("{s:?} is shorter than 1s"));
    }
    Ok(d)
}

/// A duration (checked by `duration`) in nanoseconds.
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

pub fn size(s: &str) -> Result<u64, String> {
    units::parse_size(s).map_err(|e| e.to_string())
}

/// Most rotated files `--log-keep` may ask for.
pub const MAX_LOG_KEEP: usize = 1000;

pub fn log_keep(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a count of files (0 to {MAX_LOG_KEEP})"))?;
    if n > MAX_LOG_KEEP {
        return Err(format!(
            "{n} is too many: at most {MAX_LOG_KEEP} rotated files"
        ));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_ttls_take_sub_minute_values_down_to_a_second() {
        assert_eq!(series_ttl("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(series_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert!(series_ttl("500ms").unwrap_err().contains("shorter than 1s"));
        assert!(series_ttl("0s").is_err());
    }

    #[test]
    fn durations_that_overflow_nanoseconds_are_refused() {
        assert_eq!(duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(nanos(duration("5s").unwrap()), 5_000_000_000);
        // 2^58 ms: `as u64` on its nanoseconds wrapped to 0 (issue 12 item 10).
        let e = duration("288230376151711744ms").unwrap_err();
        assert!(e.contains("too long"), "{e}");
        assert!(duration("5124095h").is_ok());
        assert!(duration("5124096h").is_err());
        let mut g = longconn_testgen::Gen::new(21);
        for _ in 0..100_000 {
            let ms = g.u64() >> g.below(64);
            if let Ok(d) = duration(&format!("{ms}ms")) {
                assert_eq!(u128::from(nanos(d)), d.as_nanos(), "{ms}ms");
            }
        }
        assert_eq!(nanos(Duration::MAX), u64::MAX);
    }

    #[test]
    fn log_keep_is_bounded() {
        assert_eq!(log_keep("0"), Ok(0));
        assert_eq!(log_keep("1000"), Ok(1000));
        assert!(log_keep("1001").unwrap_err().contains("at most 1000"));
        assert!(log_keep(&u64::MAX.to_string()).is_err());
        assert!(log_keep("-1").is_err());
    }

    #[test]
    fn groups_must_exist() {
        assert_eq!(group("root").map(|g| g.gid), Ok(0));
        assert_eq!(group("4321").map(|g| g.gid), Ok(4321));
        assert!(group("no-such-group-longconn")
            .unwrap_err()
            .contains("no such group"));
    }
}
