//! `--hooks`: which freshness hooks to attach, by name or preset.

use longconn_common::layout::{HOOK_EGRESS, HOOK_INGRESS, HOOK_RCV_SPACE, HOOK_TCP_PROBE};

pub const NAMES: &[(&str, u32)] = &[
    ("tcp-probe", HOOK_TCP_PROBE),
    ("rcv-space", HOOK_RCV_SPACE),
    ("egress", HOOK_EGRESS),
    ("ingress", HOOK_INGRESS),
];

pub const PRESETS: &[(&str, u32)] = &[
    ("default", HOOK_TCP_PROBE | HOOK_EGRESS),
    ("tracepoints", HOOK_TCP_PROBE | HOOK_RCV_SPACE),
    ("cgroup-skb", HOOK_INGRESS | HOOK_EGRESS),
    ("none", 0),
];

/// Parses "default", a preset, or a comma list of hook names.
pub fn parse(s: &str) -> Result<u32, String> {
    if let Some((_, mask)) = PRESETS.iter().find(|(n, _)| *n == s) {
        return Ok(*mask);
    }
    let mut mask = 0;
    for part in s.split(',').map(str::trim) {
        match NAMES.iter().find(|(n, _)| *n == part) {
            Some((_, bit)) => mask |= bit,
            None => {
                let names: Vec<_> = NAMES.iter().chain(PRESETS).map(|(n, _)| *n).collect();
                return Err(format!(
                    "unknown hook {part:?}; expected a comma list of {}",
                    names.join(", ")
                ));
            }
        }
    }
    Ok(mask)
}

pub fn describe(mask: u32) -> String {
    let names: Vec<_> = NAMES
        .iter()
        .filter(|(_, b)| mask & b != 0)
        .map(|(n, _)| *n)
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_lists() {
        assert_eq!(parse("default"), Ok(HOOK_TCP_PROBE | HOOK_EGRESS));
        assert_eq!(parse("egress,tcp-probe"), Ok(HOOK_TCP_PROBE | HOOK_EGRESS));
        assert!(parse("egress,bogus").unwrap_err().contains("\"bogus\""));
        assert_eq!(describe(HOOK_EGRESS | HOOK_RCV_SPACE), "rcv-space,egress");
    }
}
