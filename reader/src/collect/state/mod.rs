//! The reader's memory between runs, in one binary file written atomically.
//!
//! It holds what makes exported counters monotonic (totals of closed
//! connections, last counters of live ones) and what makes every close
//! counted exactly once (the ring-buffer position already applied, recently
//! closed cookies, and the committed length of every append-only file).
//!
//! In memory a connection is a fixed-size, `Copy` record: addresses as 16
//! raw bytes, every name (workload, service, comm, …) a `Sym` into one
//! interned string table, group keys a (direction, `Sym`) pair. No
//! per-connection allocation happens in a steady-state cycle. The file
//! format is in `codec` (versioned header, fixed-size connection records,
//! checksum); a JSON state of the previous format (v2, `state.json`) is
//! migrated once by `legacy`.

mod codec;
mod conns;
mod legacy;

pub use conns::{merge_sorted, Conns};

use std::{
    collections::{BTreeMap, HashMap},
    fs, io,
    net::{IpAddr, Ipv6Addr},
    path::{Path, PathBuf},
};

use crate::identity::Identity;

pub use codec::FORMAT_VERSION as STATE_VERSION;
#[cfg(test)]
pub use codec::{decode, encode};

/// An index into `Strings`; 0 is always "".
pub type Sym = u32;

/// Interned strings: every name a connection carries, stored once.
#[derive(Clone, Debug)]
pub struct Strings {
    list: Vec<String>,
    index: HashMap<String, Sym>,
}

impl Default for Strings {
    fn default() -> Self {
        let mut s = Self {
            list: Vec::new(),
            index: HashMap::new(),
        };
        s.intern("");
        s
    }
}

impl PartialEq for Strings {
    fn eq(&self, o: &Self) -> bool {
        self.list == o.list
    }
}

impl Strings {
    /// The string of `sym` ("" for an unknown one: decoding checks every
    /// stored sym, so that only happens for a sym of another table).
    pub fn get(&self, sym: Sym) -> &str {
        self.list.get(sym as usize).map_or("", String::as_str)
    }

    pub fn intern(&mut self, s: &str) -> Sym {
        if let Some(&sym) = self.index.get(s) {
            return sym;
        }
        let sym = self.list.len() as Sym;
        self.list.push(s.to_owned());
        self.index.insert(s.to_owned(), sym);
        sym
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.list.iter().map(String::as_str)
    }

    /// A table holding `list` in this order (the decoder's; "" must be first).
    fn from_list(list: Vec<String>) -> Option<Self> {
        if list.first().map(String::as_str) != Some("") {
            return None;
        }
        let mut index = HashMap::with_capacity(list.len());
        for (i, s) in list.iter().enumerate() {
            index.entry(s.clone()).or_insert(i as Sym);
        }
        Some(Self { list, index })
    }
}

/// Cumulative counters of one connection (or a sum of them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GroupTotals {
    pub opened: u64,
    pub closed: u64,
    pub failed: u64,
    /// Final counters of connections that closed.
    pub closed_counters: Counters,
}

/// A group: direction and the interned "label values" key.
pub type GroupKey = (u32, Sym);

/// A connection's identity, names interned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdSyms {
    pub workload: Sym,
    pub container_id: Sym,
    pub pod_uid: Sym,
    pub comm: Sym,
    pub service: Sym,
    pub service_namespace: Sym,
    pub pid: u32,
    pub netns_cookie: u64,
}

impl IdSyms {
    pub fn intern(id: &Identity, s: &mut Strings) -> Self {
        Self {
            workload: s.intern(&id.workload),
            container_id: s.intern(&id.container_id),
            pod_uid: s.intern(&id.pod_uid),
            comm: s.intern(&id.comm),
            service: s.intern(&id.service),
            service_namespace: s.intern(&id.service_namespace),
            pid: id.pid,
            netns_cookie: id.netns_cookie,
        }
    }

    pub fn identity(&self, s: &Strings) -> Identity {
        Identity {
            workload: s.get(self.workload).to_owned(),
            container_id: s.get(self.container_id).to_owned(),
            pod_uid: s.get(self.pod_uid).to_owned(),
            comm: s.get(self.comm).to_owned(),
            pid: self.pid,
            netns_cookie: self.netns_cookie,
            service: s.get(self.service).to_owned(),
            service_namespace: s.get(self.service_namespace).to_owned(),
        }
    }

    fn syms_mut(&mut self) -> [&mut Sym; 6] {
        [
            &mut self.workload,
            &mut self.container_id,
            &mut self.pod_uid,
            &mut self.comm,
            &mut self.service,
            &mut self.service_namespace,
        ]
    }
}

/// An address as 16 bytes: IPv6, IPv4 as IPv4-mapped IPv6.
pub fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The canonical address of 16 stored bytes (IPv4-mapped shown as IPv4).
pub fn addr_ip(b: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(b);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// What the reader remembers of one live connection: fixed size, no heap.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
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
    pub cgroup_id: u64,
    pub local: [u8; 16],
    pub remote: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    pub direction: u32,
    pub state: u32,
    pub flags: u32,
    pub srtt_us: u32,
    pub min_rtt_us: u32,
    /// Full identity, fixed at first sight (the access log carries all of it).
    pub id: IdSyms,
    /// Group keys (selected label values) this connection counts under.
    pub wkey: Sym,
    pub skey: Sym,
}

impl ConnState {
    pub fn local_ip(&self) -> IpAddr {
        addr_ip(self.local)
    }
    pub fn remote_ip(&self) -> IpAddr {
        addr_ip(self.remote)
    }
    fn syms_mut(&mut self) -> [&mut Sym; 8] {
        let [a, b, c, d, e, f] = self.id.syms_mut();
        [a, b, c, d, e, f, &mut self.wkey, &mut self.skey]
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    pub version: u32,
    pub boot_id: String,
    /// `Meta::pinned_at_ns` of the pins this state belongs to.
    pub pin_generation: u64,
    /// Ring-buffer bytes already applied (positions are per pin generation).
    pub ring_applied: u64,
    /// Every name the connections and groups below refer to.
    pub strings: Strings,
    pub conns: Conns,
    /// Cookie -> CLOCK_BOOTTIME ns when its close was applied (duplicate guard).
    pub recently_closed: BTreeMap<u64, u64>,
    /// (direction, label values) -> totals, for the labels in `workload_labels`.
    pub workloads: BTreeMap<GroupKey, GroupTotals>,
    /// (direction, label values) -> totals, for the labels in `service_labels`.
    pub services: BTreeMap<GroupKey, GroupTotals>,
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

impl State {
    /// Drops strings nothing refers to any more (names of connections long
    /// gone), renumbering the rest, once they are most of the table.
    pub fn compact_strings(&mut self) {
        let mut used = vec![false; self.strings.len()];
        used[0] = true;
        let mut mark = |s: Sym| {
            if let Some(u) = used.get_mut(s as usize) {
                *u = true;
            }
        };
        for c in self.conns.values_mut().chain(self.final_series.iter_mut()) {
            for s in c.syms_mut() {
                mark(*s);
            }
        }
        for (_, s) in self.workloads.keys().chain(self.services.keys()) {
            mark(*s);
        }
        let live = used.iter().filter(|u| **u).count();
        if live * 2 >= self.strings.len() || self.strings.len() < 1024 {
            return;
        }
        let mut remap = vec![0 as Sym; used.len()];
        let mut list = Vec::with_capacity(live);
        for (i, s) in self.strings.list.drain(..).enumerate() {
            if used[i] {
                remap[i] = list.len() as Sym;
                list.push(s);
            }
        }
        let Some(strings) = Strings::from_list(list) else {
            return;
        };
        self.strings = strings;
        let fix = |s: &mut Sym| *s = remap.get(*s as usize).copied().unwrap_or(0);
        for c in self.conns.values_mut().chain(self.final_series.iter_mut()) {
            for s in c.syms_mut() {
                fix(s);
            }
        }
        for groups in [&mut self.workloads, &mut self.services] {
            *groups = std::mem::take(groups)
                .into_iter()
                .map(|((d, mut k), t)| {
                    fix(&mut k);
                    ((d, k), t)
                })
                .collect();
        }
    }
}

/// Why a state file could not be used as it was.
#[derive(Debug)]
pub enum LoadOutcome {
    Loaded(Box<State>),
    /// No state yet: first run.
    Fresh,
    /// Unreadable, truncated or foreign: moved aside to this path.
    SetAside(PathBuf, String),
}

/// The JSON state of the previous format, next to `path` (migrated once).
pub fn legacy_path(path: &Path) -> PathBuf {
    path.with_file_name(legacy::FILE_NAME)
}

/// Loads the state at `path`; without one, migrates a v2 `state.json`
/// beside it (the caller removes that once the new state is saved).
pub fn load(path: &Path) -> io::Result<LoadOutcome> {
    match read_nofollow(path, codec::read)? {
        Read::Missing => {}
        Read::Problem(p) => return set_aside(path, p),
        Read::Ok(s) => return Ok(LoadOutcome::Loaded(s)),
    }
    let old = legacy_path(path);
    match read_nofollow(&old, legacy::read)? {
        Read::Missing => Ok(LoadOutcome::Fresh),
        Read::Problem(p) => set_aside(&old, format!("{}: {p}", legacy::FILE_NAME)),
        Read::Ok(s) => Ok(LoadOutcome::Loaded(s)),
    }
}

enum Read {
    Missing,
    Problem(String),
    Ok(Box<State>),
}

/// Opens `path` without following a symlink and decodes it with `f`.
fn read_nofollow(
    path: &Path,
    f: impl FnOnce(&mut fs::File) -> io::Result<Result<State, String>>,
) -> io::Result<Read> {
    use std::os::unix::fs::OpenOptionsExt;
    let opened = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path);
    let mut file = match opened {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Read::Missing),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Ok(Read::Problem("a symlink, not a file".to_owned()))
        }
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot read {}: {e}", path.display()),
            ))
        }
        Ok(file) => file,
    };
    match file.metadata() {
        Ok(m) if !m.file_type().is_file() => {
            return Ok(Read::Problem("not a regular file".to_owned()))
        }
        Ok(_) => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot read {}: {e}", path.display()),
            ))
        }
    }
    match f(&mut file) {
        Ok(Ok(s)) => Ok(Read::Ok(Box::new(s))),
        Ok(Err(p)) => Ok(Read::Problem(p)),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot read {}: {e}", path.display()),
        )),
    }
}

fn set_aside(path: &Path, problem: String) -> io::Result<LoadOutcome> {
    let aside = path.with_file_name(format!(
        "state.bad-{}",
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

/// Writes the state atomically (temp file + rename), streamed, with `mode`.
pub fn save(path: &Path, state: &State, mode: u32) -> io::Result<()> {
    crate::output::atomic::write_atomic_with(path, mode, |w| codec::write(w, state))
}

pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
