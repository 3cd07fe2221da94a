//! `--hooks`: how records are kept fresh, by name or preset (the hooks and
//! presets themselves are `longconn_common::hooks`, one table).
//!
//! The default costs nothing per segment: readers copy each socket's counters
//! at read time (the `refresh_conns` program looks sockets up by 4-tuple). The
//! per-segment hooks also keep `map_of_tcp_conns` itself fresh between reads,
//! for consumers that read the map directly, at a cost on every segment. No
//! hook may change how a socket behaves (tests/e2e/transparency.rs).

pub use longconn_common::hooks::{describe, links, names, presets_help, PRESETS};

/// Parses `--hooks`: one preset alone, or a comma list of hook names.
pub fn parse(s: &str) -> Result<u32, String> {
    crate::validate::presets_not_combined(s)?;
    longconn_common::hooks::parse(s)
}

/// `--hooks`'s help, from the table.
pub fn help() -> String {
    format!(
        "Per-segment hooks. Readers are exact without any: before each read they look every tracked socket up in the kernel's TCP tables and copy its counters, as `ss -tin` sees them (nothing attached to or stored in any socket). Per-segment presets also keep map_of_tcp_conns itself fresh between reads (for tools reading the map directly) at a cost on every segment. Presets: {}. Or a comma list of {}. No preset changes socket behaviour.",
        presets_help(),
        names().collect::<Vec<_>>().join(", ")
    )
}
