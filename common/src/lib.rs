//! What longconn-pin and longconn-reader must agree on: record layouts, pin
//! names, how to find the kernel filesystems, and how to open a pin dir safely.
//!
//! Nothing here decides policy; the binaries do.

pub mod caps;
pub mod cli;
pub mod docs;
pub mod exit;
pub mod flock;
pub mod groups;
pub mod hooks;
pub mod layout;
pub mod mounts;
pub mod netns;
pub mod pinned;
pub mod pins;
pub mod refresh;
pub mod ring;
mod sys;
pub mod text;
pub mod units;

/// The bpf(2) commands that stay safe whatever the caller passes: open a pin,
/// freeze a map, test-run a program. Element access is `Pins`'s, through
/// checked maps (`sys` is private).
pub mod bpfcall {
    pub use crate::sys::{map_freeze, obj_get, prog_run, BPF_F_RDONLY};
}

/// procfs, as this crate uses it (the reader reads /proc through it too).
pub use procfs;

pub use layout::{ConnRecord, Counters, Meta, NetnsEntry};
pub use pinned::{PinnedError, Pins, RefreshStats};
