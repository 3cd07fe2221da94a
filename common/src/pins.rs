//! Names inside a pin dir. Stable: changing one strands existing pins.

use std::path::{Path, PathBuf};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/longconn";

/// Live connections (hash, key = socket cookie).
pub const CONNS: &str = "map_of_tcp_conns";
/// One record per closed connection (ring buffer).
pub const CLOSED: &str = "closed_conns";
/// Close records the ring could not take, of connections a reader has seen
/// or that are long (hash, key = socket cookie); the reader deletes them.
pub const OVERFLOW: &str = "closed_overflow";
/// The same for other (short, unseen) connections, so they never take the
/// room of long ones.
pub const OVERFLOW_SHORT: &str = "closed_overflow_short";
/// Final counters of every close, per (cgroup, netns, comm, direction, peer
/// endpoint) (per-CPU hash; only grows).
pub const CLOSE_TOTALS: &str = "close_totals";
/// Kernel-side drop and error counters (per-CPU array).
pub const COUNTERS: &str = "counters";
/// Layout version and pin generation (array of one `Meta`).
pub const META: &str = "meta";
/// Network namespaces the refresh meets, with their netnsids (hash, key = netns cookie).
pub const NETNS: &str = "netns";
/// Program run by readers (BPF_PROG_TEST_RUN): refreshes every live record from its socket.
pub const REFRESH: &str = "refresh_conns";
/// Work array of the refresh (mmapable array): cookies in, refreshed counters out, one run's chunk.
pub const REFRESH_WORK: &str = "refresh_work";
/// cgroup v2 id -> path of every cgroup made since the pin (LRU hash,
/// filled at cgroup_mkdir): names cgroups gone before a reader saw them.
pub const CGROUP_NAMES: &str = "cgroup_names";
/// Directory of pinned bpf_links, one per attached program.
pub const LINKS: &str = "links";

/// Object map names (as in the C source) and the pin name each gets.
pub const MAPS: &[(&str, &str)] = &[
    ("map_of_tcp_conns", CONNS),
    ("longconn_closed", CLOSED),
    ("longconn_counters", COUNTERS),
    ("longconn_meta", META),
    ("longconn_netns", NETNS),
    ("longconn_refresh_work", REFRESH_WORK),
    ("longconn_overflow", OVERFLOW),
    ("longconn_shortovf", OVERFLOW_SHORT),
    ("longconn_close_totals", CLOSE_TOTALS),
    ("longconn_cgroup_names", CGROUP_NAMES),
];

pub fn link_path(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join(LINKS).join(name)
}

/// Where collect registers the one state dir that consumes a pin dir's close
/// records (world-writable and sticky on Debian, cleared at boot like the pins).
pub const CONSUMER_REGISTRY_DIR: &str = "/run/lock";

/// The consumer registration file of `pin_dir` (its canonical path) under
/// `registry`: `longconn-consumer-<FNV-1a 64 of the path>`.
pub fn consumer_registration(registry: &Path, pin_dir: &str) -> PathBuf {
    let fnv = pin_dir.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, c| {
        (h ^ u64::from(c)).wrapping_mul(0x0100_0000_01b3)
    });
    registry.join(format!("longconn-consumer-{fnv:016x}"))
}
