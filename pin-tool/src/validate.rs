//! Command-line values checked when they are parsed (exit 2), before anything
//! is loaded or attached, so a value the kernel would refuse later is named
//! with its real reason instead of a misleading load or pin error.

use std::path::{Path, PathBuf};

use crate::hooks;

/// Largest `--max-connections`: 2^24 (16 777 216) live connections. The
/// kernel allocates a hash map's bucket array up front, so far larger values
/// fail at map creation (ENOMEM; the hash map limit itself is 2^31).
pub const MAX_CONNECTIONS: u32 = 1 << 24;

/// `--max-connections N`: 1 ..= MAX_CONNECTIONS.
pub fn max_connections(s: &str) -> Result<u32, String> {
    let bounds = format!("expected a whole number from 1 to {MAX_CONNECTIONS} (2^24)");
    let n: u64 = s.trim().parse().map_err(|_| format!("{s:?}: {bounds}"))?;
    if n == 0 || n > u64::from(MAX_CONNECTIONS) {
        return Err(format!("{n} is out of range: {bounds}"));
    }
    u32::try_from(n).map_err(|_| format!("{n} is out of range: {bounds}"))
}

/// `--hooks`: one preset alone, or a comma list of hook names. A list of
/// known words that includes a preset (`live,none`) is refused as such
/// (unknown words are left to `hooks::parse`, which names them).
pub fn presets_not_combined(s: &str) -> Result<(), String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let presets: Vec<&str> = hooks::PRESETS.iter().map(|p| p.0).collect();
    let names: Vec<&str> = hooks::names().collect();
    if parts.len() < 2
        || !parts
            .iter()
            .all(|p| presets.contains(p) || names.contains(p))
    {
        return Ok(());
    }
    match parts.iter().find(|p| presets.contains(p) && !names.contains(p)) {
        Some(p) => Err(format!(
            "{p:?} is a preset, and presets cannot be combined with other presets or hook names; give one preset alone ({}) or a comma list of hook names ({})",
            presets.join(", "),
            names.join(", ")
        )),
        None => Ok(()),
    }
}

/// `--pin-dir DIR`: bpffs refuses every name containing a dot (EPERM), so a
/// pin dir like `longconn.v2` could only fail after attaching.
pub fn pin_dir(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    match path.file_name().and_then(|n| n.to_str()) {
        Some(name) if name.contains('.') => Err(format!(
            "{s}: bpffs refuses names containing a dot ({name:?}); choose a name without one, e.g. {}",
            Path::new(s)
                .with_file_name(name.replace('.', "_"))
                .display()
        )),
        None if !s.is_empty() && s != "/" => Err(format!(
            "{s}: give a directory below a bpf filesystem, e.g. /sys/fs/bpf/longconn"
        )),
        _ => Ok(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_connections_states_the_bounds() {
        assert_eq!(max_connections("131072"), Ok(131_072));
        assert_eq!(max_connections("16777216"), Ok(1 << 24));
        for bad in [
            "0",
            "4294967295",
            "16777217",
            "99999999999999999999",
            "-1",
            "x",
        ] {
            let e = max_connections(bad).unwrap_err();
            assert!(e.contains("from 1 to 16777216"), "{bad}: {e}");
            assert!(!e.contains("BTF"), "{e}");
        }
    }

    #[test]
    fn presets_cannot_be_combined() {
        let e = hooks::parse("live,none").unwrap_err();
        assert!(e.contains("presets cannot be combined"), "{e}");
        assert!(e.contains("default, none, live"), "{e}");
        assert!(e.contains("tcp-probe, rcv-space"), "{e}");
        assert!(!e.contains("unknown hook"), "{e}");
        assert!(hooks::parse("egress,live")
            .unwrap_err()
            .contains("\"live\" is a preset"));
        assert!(hooks::parse("live").is_ok());
        assert!(hooks::parse("egress,ack").is_ok());
        assert!(hooks::parse("egress,bogus")
            .unwrap_err()
            .contains("\"bogus\""));
        assert!(hooks::parse("bogus,live")
            .unwrap_err()
            .contains("\"bogus\""));
    }

    #[test]
    fn pin_dir_names_with_a_dot_are_refused() {
        let e = pin_dir("/sys/fs/bpf/longconn.v2").unwrap_err();
        assert!(e.contains("bpffs refuses names containing a dot"), "{e}");
        assert!(e.contains("/sys/fs/bpf/longconn_v2"), "{e}");
        assert_eq!(
            pin_dir("/sys/fs/bpf/longconn"),
            Ok(PathBuf::from("/sys/fs/bpf/longconn"))
        );
        assert!(pin_dir("/sys/fs/bpf/..").is_err());
    }
}
