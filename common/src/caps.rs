//! Which capabilities this process holds, to say what is missing before a
//! syscall fails with a bare EPERM.

pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// The effective capability set from /proc/self/status (0 if unreadable).
pub fn effective() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0)
}

pub fn has(set: u64, cap: u32) -> bool {
    set & (1u64 << cap) != 0
}

/// Names of `wanted` capabilities missing from the effective set.
pub fn missing(wanted: &[(u32, &'static str)]) -> Vec<&'static str> {
    let eff = effective();
    wanted
        .iter()
        .filter(|(c, _)| !has(eff, *c))
        .map(|(_, n)| *n)
        .collect()
}
