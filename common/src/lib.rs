//! What longconn-pin and longconn-reader must agree on: record layouts, pin
//! names, how to find the kernel filesystems, and how to open a pin dir safely.
//!
//! Nothing here decides policy; the binaries do.

pub mod caps;
pub mod cli;
pub mod docs;
pub mod groups;
pub mod layout;
pub mod mounts;
pub mod netns;
pub mod pinned;
pub mod pins;
pub mod refresh;
pub mod ring;
pub mod sys;
pub mod testgen;
pub mod text;
pub mod units;

pub use layout::{ConnRecord, Counters, Meta, NetnsEntry};
pub use pinned::{PinnedError, Pins, RefreshStats};
