//! The reader's memory between runs, in one file written atomically.
//!
//! It holds what makes exported counters monotonic (totals of closed
//! connections, last counters of live ones) and what makes every close
//! counted exactly once (the ring-buffer position already applied, recently
//! closed cookies, and the committed length of every append-only file).

use std::{collections::BTreeMap, fs, io, path::Path};

use serde::{Deserialize, Serialize};

use crate::identity::Identity;

pub const STATE_VERSION: u32 = 2;

/// Cumulative counters of one connection (or a sum of them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub retransmits: u64,
    pub lost_packets: u64,
}

impl Counters {
    pub fn max(self, o: Self) -> Self {
        Self {
            bytes_sent: self.bytes_sent.max(o.bytes_sent),
            bytes_received: self.bytes_received.max(o.bytes_received),
            packets_sent: self.packets_sent.max(o.packets_sent),
            packets_received: self.packets_received.max(o.packets_received),
            retransmits: self.retransmits.max(o.retransmits),
            lost_packets: self.lost_packets.max(o.lost_packets),
        }
    }
    pub fn saturating_sub(self, o: Self) -> Self {
        Self {
            bytes_sent: self.bytes_sent.saturating_sub(o.bytes_sent),
            bytes_received: self.bytes_received.saturating_sub(o.bytes_received),
            packets_sent: self.packets_sent.saturating_sub(o.packets_sent),
            packets_received: self.packets_received.saturating_sub(o.packets_received),
            retransmits: self.retransmits.saturating_sub(o.retransmits),
            lost_packets: self.lost_packets.saturating_sub(o.lost_packets),
        }
    }
    pub fn add(&mut self, o: Self) {
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
        self.packets_sent += o.packets_sent;
        self.packets_received += o.packets_received;
        self.retransmits += o.retransmits;
        self.lost_packets += o.lost_packets;
    }
}

/// Totals of one workload or service in one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupTotals {
    pub opened: u64,
    pub closed: u64,
    pub failed: u64,
    /// Final counters of connections that closed.
    pub closed_counters: Counters,
}

/// What the reader remembers of one live connection.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnState {
    /// Access records emitted so far (the last one's sequence number).
    pub seq: u64,
    /// Highest counters seen (exports never step back below these).
    pub last: Counters,
    /// Counters at the last access record (deltas are measured from here).
    pub reported: Counters,
    pub start_ns: u64,
    /// Wall-clock start (Unix ns), fixed when first seen.
    pub start_unix_ns: i64,
    pub update_ns: u64,
    pub direction: u32,
    pub local: String,
    pub local_port: u16,
    pub remote: String,
    pub remote_port: u16,
    pub state: u32,
    pub flags: u32,
    pub srtt_us: u32,
    pub min_rtt_us: u32,
    pub cgroup_id: u64,
    /// Full identity, fixed at first sight (the access log carries all of it).
    pub id: Identity,
    /// Group keys (selected label values) this connection counts under.
    pub wkey: String,
    pub skey: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub boot_id: String,
    /// `Meta::pinned_at_ns` of the pins this state belongs to.
    pub pin_generation: u64,
    /// Ring-buffer bytes already applied (positions are per pin generation).
    pub ring_applied: u64,
    pub conns: BTreeMap<u64, ConnState>,
    /// Cookie -> CLOCK_BOOTTIME ns when its close was applied (duplicate guard).
    pub recently_closed: BTreeMap<u64, u64>,
    /// "direction|label values" -> totals, for the labels in `workload_labels`.
    pub workloads: BTreeMap<String, GroupTotals>,
    /// "direction|label values" -> totals, for the labels in `service_labels`.
    pub services: BTreeMap<String, GroupTotals>,
    pub workload_labels: Vec<String>,
    pub service_labels: Vec<String>,
    /// The last service map that parsed, kept in force when the file goes bad.
    pub services_text: Option<String>,
    /// cgroup id -> path, remembered after the cgroup is gone.
    pub cgroup_names: BTreeMap<u64, String>,
    /// Connections that closed in the last cycle: exported once more.
    pub final_series: Vec<ConnState>,
    pub closes_without_record: u64,
    pub malformed_records: u64,
    /// Committed length of each append-only file (by file name).
    pub log_len: BTreeMap<String, u64>,
    /// Unix seconds when this state started (a new start = a counter reset).
    pub created_unix: i64,
}

/// Why a state file could not be used as it was.
#[derive(Debug)]
pub enum LoadOutcome {
    Loaded(Box<State>),
    /// No state yet: first run.
    Fresh,
    /// Unreadable, truncated or foreign: moved aside to this path.
    SetAside(std::path::PathBuf, String),
}

pub fn load(path: &Path) -> io::Result<LoadOutcome> {
    use std::{io::Read, os::unix::fs::OpenOptionsExt};
    // Never follow a symlink planted in the state directory.
    let mut bytes = Vec::new();
    let read = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes));
    let problem = match read {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(LoadOutcome::Fresh),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => "a symlink, not a file".to_owned(),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot read {}: {e}", path.display()),
            ))
        }
        Ok(_) => match serde_json::from_slice::<State>(&bytes) {
            Ok(s) if s.version == STATE_VERSION => return Ok(LoadOutcome::Loaded(Box::new(s))),
            Ok(s) => format!("state version {} (expected {STATE_VERSION})", s.version),
            Err(e) => format!("not a longconn state file ({e})"),
        },
    };
    let aside = path.with_extension(format!(
        "bad-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
    ));
    fs::rename(path, &aside).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot move bad state {} aside: {e}", path.display()),
        )
    })?;
    Ok(LoadOutcome::SetAside(aside, problem))
}

pub fn save(path: &Path, state: &State, mode: u32) -> io::Result<()> {
    let bytes = serde_json::to_vec(state).map_err(io::Error::other)?;
    crate::output::atomic::write_atomic(path, &bytes, mode)
}

pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
