//! `--hooks`: how records are kept fresh, by name or preset.
//!
//! The default costs nothing per segment: readers copy each socket's counters
//! at read time (the `refresh_conns` program looks sockets up by 4-tuple). The
//! per-segment hooks also keep `map_of_tcp_conns` itself fresh between reads,
//! for consumers that read the map directly, at a cost on every segment. No
//! hook may change how a socket behaves (tests/e2e/transparency.rs).

use longconn_common::layout::{
    HOOK_ACK, HOOK_EGRESS, HOOK_INGRESS, HOOK_RCV_SPACE, HOOK_TCP_PROBE,
};

pub const NAMES: &[(&str, u32)] = &[
    ("tcp-probe", HOOK_TCP_PROBE),
    ("rcv-space", HOOK_RCV_SPACE),
    ("egress", HOOK_EGRESS),
    ("ingress", HOOK_INGRESS),
    ("ack", HOOK_ACK),
];

pub const PRESETS: &[(&str, u32)] = &[
    ("default", 0),
    ("none", 0),
    ("live", HOOK_TCP_PROBE | HOOK_EGRESS | HOOK_ACK),
    ("tracepoints", HOOK_TCP_PROBE | HOOK_RCV_SPACE | HOOK_ACK),
    ("cgroup-skb", HOOK_INGRESS | HOOK_EGRESS | HOOK_ACK),
    ("sockops", HOOK_ACK),
];

/// Parses "default", a preset, or a comma list of hook names.
pub fn parse(s: &str) -> Result<u32, String> {
    crate::validate::presets_not_combined(s)?;
    if let Some((_, mask)) = PRESETS.iter().find(|(n, _)| *n == s) {
        return Ok(*mask);
    }
    let mut mask = 0;
    for part in s.split(',').map(str::trim) {
        match NAMES.iter().find(|(n, _)| *n == part) {
            Some((_, bit)) => mask |= bit,
            None if part == "sockhash" => {
                return Err("the sockhash hook was removed (layout 4): sockhash membership changed how applications' sockets behave; readers now refresh every preset by socket lookup, so `default` is exact without it".into());
            }
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
        assert_eq!(parse("default"), Ok(0));
        assert!(parse("sockhash").unwrap_err().contains("removed"));
        assert_eq!(parse("none"), Ok(0));
        assert_eq!(parse("live"), Ok(HOOK_TCP_PROBE | HOOK_EGRESS | HOOK_ACK));
        assert_eq!(parse("ack"), Ok(HOOK_ACK));
        assert_eq!(parse("egress,tcp-probe"), Ok(HOOK_TCP_PROBE | HOOK_EGRESS));
        assert!(parse("egress,bogus").unwrap_err().contains("\"bogus\""));
        assert_eq!(describe(HOOK_EGRESS | HOOK_RCV_SPACE), "rcv-space,egress");
    }
}
