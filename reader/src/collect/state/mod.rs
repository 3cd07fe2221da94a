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
//!
//! On disk the state is a base (`state.bin`) and a journal of the cycles
//! since (`journal`): a cycle appends the connections that changed, those
//! that left and the rest of the state, and rewrites the base only once
//! the journal has outgrown it. An idle connection costs nothing between
//! its heartbeats.

mod codec;
mod conns;
mod journal;
mod legacy;

pub use conns::Conns;

use std::{
    collections::{BTreeMap, HashMap},
    fs, io,
    net::{IpAddr, Ipv6Addr},
    path::{Path, PathBuf},
};

use crate::{identity::Identity, output::applog::Committed};

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

    /// Appends `s` as the next name, even if already there (a stored
    /// table's numbering is kept as written).
    fn intern_new(&mut self, s: String) {
        let sym = self.list.len() as Sym;
        self.index.entry(s.clone()).or_insert(sym);
        self.list.push(s);
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
    /// A kernel record's counters.
    pub fn of(r: &longconn_common::ConnRecord) -> Self {
        Self {
            bytes_sent: r.bytes_sent,
            bytes_received: r.bytes_received,
            packets_sent: r.packets_sent,
            packets_received: r.packets_received,
            retransmits: r.retransmits,
            lost_packets: r.lost_packets,
        }
    }

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
    /// Adds `o`, saturating at u64::MAX (a group sum never wraps to a small
    /// value; `saturated` tells the outputs it was held there).
    pub fn add(&mut self, o: Self) {
        self.bytes_sent = self.bytes_sent.saturating_add(o.bytes_sent);
        self.bytes_received = self.bytes_received.saturating_add(o.bytes_received);
        self.packets_sent = self.packets_sent.saturating_add(o.packets_sent);
        self.packets_received = self.packets_received.saturating_add(o.packets_received);
        self.retransmits = self.retransmits.saturating_add(o.retransmits);
        self.lost_packets = self.lost_packets.saturating_add(o.lost_packets);
    }
    /// Whether any counter is held at u64::MAX (a saturated sum).
    pub fn saturated(&self) -> bool {
        [
            self.bytes_sent,
            self.bytes_received,
            self.packets_sent,
            self.packets_received,
            self.retransmits,
            self.lost_packets,
        ]
        .contains(&u64::MAX)
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
    /// When this series' counters started (Unix ns): its first connection,
    /// or its return after retirement (`retire`); 0: not set yet.
    #[serde(default)]
    pub start_unix_ns: i64,
    /// When it last had a live connection or a change (Unix ns): retired
    /// `--series-ttl` after; 0: not set yet.
    #[serde(default)]
    pub seen_unix_ns: i64,
}

impl GroupTotals {
    /// Whether the counted values (not the times) differ.
    pub fn counts_differ(&self, o: &Self) -> bool {
        (self.opened, self.closed, self.failed, self.closed_counters)
            != (o.opened, o.closed, o.failed, o.closed_counters)
    }
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
            // Kept by cgroup, not by connection (`State::cgroups`).
            namespace: String::new(),
            pod: String::new(),
            container: String::new(),
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
    /// The kernel record's last update (closes: when it closed); not kept
    /// between cycles.
    pub update_ns: u64,
    /// When its last access record was made (CLOCK_BOOTTIME ns): idle
    /// connections get the next one an idle-record interval later.
    pub recorded_ns: u64,
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
    pub(super) fn syms_mut(&mut self) -> [&mut Sym; 8] {
        let [a, b, c, d, e, f] = self.id.syms_mut();
        [a, b, c, d, e, f, &mut self.wkey, &mut self.skey]
    }
}

/// Why an applied close may still be read again, and until when.
///
/// The kernel hands a close to the ring and only then deletes the map entry;
/// the reader reads the map and only then the ring. So a close is read again
/// only (a) from the map, where a close the ring could not take stays until
/// the reader deletes it after its commit, or (b) from the ring, when a
/// connection vanished from the map while a record reserved before the read
/// was still being written (the read stops at it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settling {
    /// Kept in the map: delete the entry before the next read of the map.
    Reap,
    /// Applied without a record: a record for it can only lie before this
    /// ring position (the producer's when the map was read).
    RingBefore(u64),
}

impl Settling {
    /// Encoded as one u64: `Reap` as u64::MAX (never a ring position).
    pub fn to_u64(self) -> u64 {
        match self {
            Self::Reap => u64::MAX,
            Self::RingBefore(p) => p.min(u64::MAX - 1),
        }
    }
    pub fn from_u64(v: u64) -> Self {
        if v == u64::MAX {
            Self::Reap
        } else {
            Self::RingBefore(v)
        }
    }
}

/// Takes the closes whose map entries must go before the map is read again
/// (`Settling::Reap`), in cookie order; the caller deletes them.
pub fn take_reaps(state: &mut State) -> Vec<u64> {
    let reaps: Vec<u64> = state
        .settling
        .iter()
        .filter(|(_, until)| **until == Settling::Reap)
        .map(|(cookie, _)| *cookie)
        .collect();
    for cookie in &reaps {
        state.settling.remove(cookie);
    }
    reaps
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
    /// Closes already applied whose copy could still be read, cookie ->
    /// until when (see `Settling`). Holds at most one cycle's closes: what
    /// is remembered about closed connections follows the live set, never
    /// the close rate times a time window.
    pub settling: BTreeMap<u64, Settling>,
    /// (direction, label values) -> totals, for the labels in `workload_labels`.
    pub workloads: BTreeMap<GroupKey, GroupTotals>,
    /// (direction, label values) -> totals, for the labels in `service_labels`.
    pub services: BTreeMap<GroupKey, GroupTotals>,
    pub workload_labels: Vec<String>,
    pub service_labels: Vec<String>,
    /// The last service map that parsed, kept in force when the file goes bad.
    pub services_text: Option<String>,
    /// cgroup id -> path and runtime names, remembered after the cgroup is
    /// gone; each is resolved once (`identity::resolve_cgroups`).
    pub cgroups: BTreeMap<u64, crate::identity::Cgroup>,
    /// Connections that closed in the last cycle: exported once more.
    pub final_series: Vec<ConnState>,
    pub closes_without_record: u64,
    /// The kernel's close totals as last accounted, per key (summed over
    /// CPUs: closed, failed, then the six counters), plus closes accounted
    /// from their record before the kernel's sums showed them; the next
    /// cycle accounts only what the kernel added since (`closetotals`).
    pub close_totals: BTreeMap<longconn_common::layout::TotalsKey, [u64; 8]>,
    pub malformed_records: u64,
    /// Committed position of each append-only file, by its full path: the
    /// file (device, inode) the committed length belongs to.
    pub logs: BTreeMap<String, Committed>,
    /// Unix ns when these totals started (a new start = a counter reset).
    pub created_unix_ns: i64,
    /// The state directory this state belongs to (canonical path); a state
    /// found in another directory is foreign and set aside.
    pub home: String,
}

impl State {
    /// Drops the names `used` (indexed by name number, covering the whole
    /// table) does not mark, nor the groups and final series refer to, once
    /// they are most of the table; renumbers the rest in the groups and
    /// final series here and returns old -> new for the connections.
    pub fn compact_strings(&mut self, mut used: Vec<bool>) -> Option<Vec<Sym>> {
        if used.len() != self.strings.len() {
            return None;
        }
        used[0] = true;
        let mut mark = |s: Sym| {
            if let Some(u) = used.get_mut(s as usize) {
                *u = true;
            }
        };
        for c in &mut self.final_series {
            for s in c.syms_mut() {
                mark(*s);
            }
        }
        for (_, s) in self.workloads.keys().chain(self.services.keys()) {
            mark(*s);
        }
        let live = used.iter().filter(|u| **u).count();
        if live * 2 >= self.strings.len() {
            return None;
        }
        let mut remap = vec![0 as Sym; used.len()];
        let mut list = Vec::with_capacity(live);
        for (i, s) in self.strings.list.iter().enumerate() {
            if used[i] {
                remap[i] = list.len() as Sym;
                list.push(s.clone());
            }
        }
        self.strings = Strings::from_list(list)?;
        let fix = |s: &mut Sym| *s = remap.get(*s as usize).copied().unwrap_or(0);
        for c in &mut self.final_series {
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
        Some(remap)
    }
}

/// Last cycle's connections: in the state files (normally), or in memory
/// (a migrated v2 state; tests).
pub enum Prev {
    Mem(Conns),
    File(journal::PrevFile),
}

impl std::fmt::Debug for Prev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Prev::Mem(_) => "Prev::Mem",
            Prev::File(_) => "Prev::File",
        })
    }
}

impl Prev {
    /// The connections in cookie order.
    pub fn scan(&self) -> PrevScan<'_> {
        match self {
            Prev::Mem(c) => PrevScan::Mem(c.as_slice(), None),
            Prev::File(f) => PrevScan::File(Box::new(f.scan())),
        }
    }
}

/// Last cycle's connections in cookie order, each read in place: `advance`
/// to the next, then `current` (see `journal::Scan`); or as an iterator of
/// copies.
pub enum PrevScan<'a> {
    /// The remaining connections, and the index of the current one.
    Mem(&'a [(u64, ConnState)], Option<usize>),
    File(Box<journal::Scan>),
}

impl PrevScan<'_> {
    /// Moves to the next connection: its cookie, or None past the last.
    pub fn advance(&mut self) -> io::Result<Option<u64>> {
        match self {
            PrevScan::Mem(v, at) => {
                let i = at.map_or(0, |i| i + 1);
                *at = Some(i);
                Ok(v.get(i).map(|(k, _)| *k))
            }
            PrevScan::File(f) => f.advance(),
        }
    }

    /// The connection `advance` last moved to (None before the first
    /// `advance`; past the last, None or the last one).
    pub fn current(&self) -> Option<&ConnState> {
        match self {
            PrevScan::Mem(v, at) => at.and_then(|i| v.get(i)).map(|(_, c)| c),
            PrevScan::File(f) => Some(f.current()),
        }
    }
}

impl Iterator for PrevScan<'_> {
    type Item = io::Result<(u64, ConnState)>;
    fn next(&mut self) -> Option<Self::Item> {
        match self.advance() {
            Ok(Some(k)) => self.current().map(|c| Ok((k, *c))),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

/// Why a state file could not be used as it was.
#[derive(Debug)]
pub enum LoadOutcome {
    /// The state (its `conns` empty) and last cycle's connections.
    Loaded(Box<State>, Prev),
    /// No state yet: first run.
    Fresh,
    /// Unreadable, truncated or foreign: moved aside to this path.
    SetAside(PathBuf, String),
}

/// The JSON state of the previous format, next to `path` (migrated once).
pub fn legacy_path(path: &Path) -> PathBuf {
    path.with_file_name(legacy::FILE_NAME)
}

/// Loads the state at `path` (its base and journal); without one,
/// migrates a v2 `state.json` beside it (the caller removes that once the
/// new state is saved). A state written for another state directory than
/// `home` (copied from another out dir) is foreign: set aside.
pub fn load(path: &Path, home: &str) -> io::Result<LoadOutcome> {
    crate::output::atomic::remove_stale_temps(
        crate::output::atomic::parent_dir(path),
        journal::FILE_NAME,
        true,
    );
    match open_state(path, true)? {
        Opened::Missing => {}
        Opened::Problem(p, jpath) => return set_aside(path, p, jpath),
        Opened::Ok(s, prev) if !s.home.is_empty() && s.home != home => {
            let why = format!("written for state dir {}, not this one", s.home);
            drop(prev);
            return set_aside(path, why, None);
        }
        Opened::Ok(s, prev) => return Ok(LoadOutcome::Loaded(s, Prev::File(prev))),
    }
    let old = legacy_path(path);
    match read_nofollow(&old, |mut f| {
        Ok(legacy::read(&mut f)?.map(|mut s| {
            let conns = std::mem::take(&mut s.conns);
            (Box::new(s), Prev::Mem(conns))
        }))
    })? {
        Read::Missing => Ok(LoadOutcome::Fresh),
        Read::Problem(p) => set_aside(&old, format!("{}: {p}", legacy::FILE_NAME), None),
        Read::Ok((s, prev)) => Ok(LoadOutcome::Loaded(s, prev)),
    }
}

enum Opened {
    Missing,
    /// The problem, and the journal to set aside with the base if the
    /// problem is in it.
    Problem(String, Option<PathBuf>),
    Ok(Box<State>, journal::PrevFile),
}

/// Opens the base at `path` and replays its journal; every connection is
/// checked once. `compact`: drop most of a large, mostly unused name table.
fn open_state(path: &Path, compact: bool) -> io::Result<Opened> {
    let (mut s, base) = match read_nofollow(path, codec::open)? {
        Read::Missing => return Ok(Opened::Missing),
        Read::Problem(p) => return Ok(Opened::Problem(p, None)),
        Read::Ok(v) => v,
    };
    let jpath = journal::path_for(path);
    let loaded = if base.generation == 0 {
        None // an older format: no journal of its own
    } else {
        // Problems in its content come back as Ok(Err(_)); a symlink or
        // another non-file there is replaced at the next append, never read.
        match read_nofollow(&jpath, |f| Ok(Ok(journal::open(f, &base, &mut s)?)))? {
            Read::Missing | Read::Problem(_) => None,
            Read::Ok(Ok(j)) => j,
            Read::Ok(Err(p)) => return Ok(Opened::Problem(p, Some(jpath))),
        }
    };
    let names = s.strings.len();
    let mut prev = journal::PrevFile::new(base, loaded, names);
    if let Err(p) = prev.check(&mut s, compact)? {
        return Ok(Opened::Problem(p, Some(jpath)));
    }
    Ok(Opened::Ok(Box::new(s), prev))
}

enum Read<T> {
    Missing,
    Problem(String),
    Ok(T),
}

/// Opens `path` without following a symlink and decodes it with `f`.
fn read_nofollow<T>(
    path: &Path,
    f: impl FnOnce(fs::File) -> io::Result<Result<T, String>>,
) -> io::Result<Read<T>> {
    use std::os::unix::fs::OpenOptionsExt;
    let opened = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path);
    let file = match opened {
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
    match f(file) {
        Ok(Ok(s)) => Ok(Read::Ok(s)),
        Ok(Err(p)) => Ok(Read::Problem(p)),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot read {}: {e}", path.display()),
        )),
    }
}

/// Moves the bad state at `path` aside (`state.bad-<time>`), and the
/// journal `journal` with it (`state.bad-<time>.journal`) when the problem
/// was in it. (A journal left behind belongs to no base any more: it is
/// ignored and replaced.)
fn set_aside(path: &Path, problem: String, journal: Option<PathBuf>) -> io::Result<LoadOutcome> {
    let aside = path.with_file_name(format!(
        "state.bad-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
    ));
    let moved = |from: &Path, to: &Path| {
        fs::rename(from, to).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot move bad state {} aside: {e}", from.display()),
            )
        })
    };
    if let Some(j) = journal {
        let mut to = aside.clone().into_os_string();
        to.push(".journal");
        moved(&j, Path::new(&to))?;
    }
    moved(path, &aside)?;
    Ok(LoadOutcome::SetAside(aside, problem))
}

/// The next state being written, the connections as the cycle makes them
/// (cookies increasing) and the rest at `commit`, the commit point: either
/// an entry appended to the journal (the connections that changed or left)
/// or, when the journal has outgrown the base (or there is none), a new
/// base renamed into place. Dropped uncommitted, it leaves the state as it
/// was.
pub struct Saver {
    path: PathBuf,
    how: How,
}

enum How {
    Journal(Box<journal::Appender>),
    Base {
        tmp: PathBuf,
        w: Option<codec::Writer<io::BufWriter<fs::File>>>,
    },
}

impl Saver {
    /// Starts the state after `prev` (last cycle's connections, as loaded
    /// from `path`); a new base is a temp file in the same directory
    /// (O_EXCL, O_NOFOLLOW), mode `mode`, like a new journal.
    pub fn begin(path: &Path, mode: u32, prev: &Prev) -> io::Result<Self> {
        if let Prev::File(f) = prev {
            if let Some(append) = f.plan.append {
                let a = journal::Appender::begin(
                    &journal::path_for(path),
                    mode,
                    f.plan.generation,
                    append,
                    f.scan(),
                )?;
                return Ok(Self {
                    path: path.to_owned(),
                    how: How::Journal(Box::new(a)),
                });
            }
        }
        let (tmp, file) = crate::output::atomic::create_temp_for(path, mode)?;
        let w = codec::Writer::new(
            io::BufWriter::with_capacity(1 << 18, file),
            journal::new_generation(),
        )
        .map_err(crate::output::atomic::with_path(&tmp));
        let mut saver = Self {
            path: path.to_owned(),
            how: How::Base { tmp, w: None },
        };
        if let How::Base { w: slot, .. } = &mut saver.how {
            *slot = Some(w?);
        }
        Ok(saver)
    }

    /// Appends one live connection (cookies increasing).
    pub fn push(&mut self, cookie: u64, c: &ConnState) -> io::Result<()> {
        match &mut self.how {
            How::Journal(a) => a
                .push(cookie, c)
                .map_err(|e| crate::output::atomic::with_path(&journal::path_for(&self.path))(e)),
            How::Base { tmp, w: Some(w) } => w
                .push(cookie, c)
                .map_err(crate::output::atomic::with_path(tmp)),
            How::Base { w: None, .. } => Ok(()),
        }
    }

    /// One live connection (cookies increasing, together with `gone`) and
    /// its state last cycle as stored (None: new): the caller's merge with
    /// last cycle's connections, so a journal entry needs no scan of its own.
    pub fn put(&mut self, cookie: u64, prev: Option<&ConnState>, c: &ConnState) -> io::Result<()> {
        match &mut self.how {
            How::Journal(a) => a
                .put(cookie, prev, c)
                .map_err(|e| crate::output::atomic::with_path(&journal::path_for(&self.path))(e)),
            How::Base { tmp, w: Some(w) } => w
                .push(cookie, c)
                .map_err(crate::output::atomic::with_path(tmp)),
            How::Base { w: None, .. } => Ok(()),
        }
    }

    /// One of last cycle's connections that is no longer live (see `put`).
    pub fn gone(&mut self, cookie: u64) -> io::Result<()> {
        match &mut self.how {
            How::Journal(a) => a
                .gone(cookie)
                .map_err(|e| crate::output::atomic::with_path(&journal::path_for(&self.path))(e)),
            How::Base { .. } => Ok(()),
        }
    }

    /// Writes the rest of `s` and makes it durable: from here on, this
    /// cycle happened.
    pub fn commit(mut self, s: &State) -> io::Result<()> {
        let (tmp, w) = match &mut self.how {
            How::Journal(_) => {
                let How::Journal(a) = std::mem::replace(
                    &mut self.how,
                    How::Base {
                        tmp: PathBuf::new(),
                        w: None,
                    },
                ) else {
                    return Ok(());
                };
                let jpath = journal::path_for(&self.path);
                return a
                    .commit(s)
                    .map_err(crate::output::atomic::with_path(&jpath));
            }
            How::Base { tmp, w } => match w.take() {
                Some(w) => (tmp.clone(), w),
                None => return Ok(()),
            },
        };
        let ctx = crate::output::atomic::with_path(&tmp);
        let file = w
            .finish(s)
            .and_then(|b| b.into_inner().map_err(|e| e.into_error()))
            .map_err(ctx)?;
        file.sync_all()
            .map_err(crate::output::atomic::with_path(&tmp))?;
        drop(file);
        fs::rename(&tmp, &self.path).map_err(crate::output::atomic::with_path(&self.path))?;
        crate::output::atomic::fsync_dir(crate::output::atomic::parent_dir(&self.path))?;
        // The old journal belongs to the old base (its generation tells
        // so, should this run stop before it is gone).
        let jpath = journal::path_for(&self.path);
        match fs::remove_file(&jpath) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io::Error::new(
                e.kind(),
                format!("cannot remove the old journal {}: {e}", jpath.display()),
            )),
            _ => Ok(()),
        }
    }
}

impl Drop for Saver {
    fn drop(&mut self) {
        if let How::Base { tmp, w } = &self.how {
            if w.is_some() || fs::symlink_metadata(tmp).is_ok_and(|_| !tmp.as_os_str().is_empty()) {
                let _ = fs::remove_file(tmp);
            }
        }
    }
}

/// Saves `s` again over the state just committed at `path`, its
/// connections unchanged (after a rotation changed only the rest): one
/// more journal entry, without connections, or a new base.
pub fn resave(path: &Path, s: &State, mode: u32) -> io::Result<()> {
    let prev = match open_state(path, false)? {
        Opened::Ok(_, prev) => Prev::File(prev),
        Opened::Missing | Opened::Problem(..) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: the state just written is unreadable", path.display()),
            ))
        }
    };
    let mut saver = Saver::begin(path, mode, &prev)?;
    for item in prev.scan() {
        let (cookie, c) = item?;
        saver.push(cookie, &c)?;
    }
    saver.commit(s)
}

pub fn boot_id() -> String {
    longconn_common::procfs::sys::kernel::random::boot_id()
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(seq: u64) -> ConnState {
        ConnState {
            seq,
            local: addr_bytes("10.0.0.1".parse().unwrap_or(IpAddr::from([0u8; 4]))),
            ..Default::default()
        }
    }

    fn none() -> Prev {
        Prev::Mem(Conns::default())
    }

    fn loaded(path: &Path) -> (State, Vec<(u64, ConnState)>) {
        match load(path, "/h").unwrap() {
            LoadOutcome::Loaded(s, prev) => {
                let conns = prev.scan().map(Result::unwrap).collect();
                (*s, conns)
            }
            other => panic!("{other:?}"),
        }
    }

    /// Saved in one pass, loaded back; rewritten with the same connections;
    /// an uncommitted save leaves the old state and no temp file.
    #[test]
    fn saves_load_and_resave() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.bin");
        assert!(matches!(load(&p, "/h").unwrap(), LoadOutcome::Fresh));
        let mut s = State {
            boot_id: "b".into(),
            ..Default::default()
        };
        let mut saver = Saver::begin(&p, 0o600, &none()).unwrap();
        for k in [3u64, 7, 9] {
            saver.push(k, &conn(k)).unwrap();
        }
        assert!(saver.push(8, &conn(8)).is_err(), "cookies must increase");
        let pos = |len| Committed {
            dev: 1,
            ino: 2,
            len,
        };
        s.logs.insert("/a".into(), pos(5));
        saver.commit(&s).unwrap();
        let (got, conns) = loaded(&p);
        assert_eq!(got.logs["/a"], pos(5));
        assert_eq!(
            conns.iter().map(|(k, c)| (*k, c.seq)).collect::<Vec<_>>(),
            [(3, 3), (7, 7), (9, 9)]
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );

        s.logs.insert("/a".into(), pos(0));
        resave(&p, &s, 0o600).unwrap();
        let (got, again) = loaded(&p);
        assert_eq!((got.logs["/a"], again), (pos(0), conns));

        let mut saver = Saver::begin(&p, 0o600, &none()).unwrap();
        saver.push(1, &conn(1)).unwrap();
        drop(saver);
        assert_eq!(loaded(&p).1.len(), 3);
        let mut names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["state.bin", "state.journal"]);
    }

    /// A committed state, its connections and the journal's length then.
    type Committed3 = (State, Vec<(u64, ConnState)>, u64);

    /// One cycle as `collect` makes it: load, save `conns` (in order), commit.
    fn cycle(p: &Path, s: &State, conns: &[(u64, ConnState)], given: bool) {
        let prev = match load(p, "/h").unwrap() {
            LoadOutcome::Loaded(_, prev) => prev,
            _ => none(),
        };
        let mut saver = Saver::begin(p, 0o600, &prev).unwrap();
        if !given {
            for (k, c) in conns {
                saver.push(*k, c).unwrap();
            }
        } else {
            // As `cycle::apply` feeds it: its own merge with the stored state.
            let stored: Vec<(u64, ConnState)> = prev.scan().map(|i| i.unwrap()).collect();
            let (mut i, mut j) = (0, 0);
            while i < stored.len() || j < conns.len() {
                match (stored.get(i), conns.get(j)) {
                    (Some((a, _)), Some((b, _))) if a < b => {
                        saver.gone(*a).unwrap();
                        i += 1;
                    }
                    (Some((a, pc)), Some((b, c))) if a == b => {
                        saver.put(*b, Some(pc), c).unwrap();
                        (i, j) = (i + 1, j + 1);
                    }
                    (_, Some((b, c))) => {
                        saver.put(*b, None, c).unwrap();
                        j += 1;
                    }
                    (Some((a, _)), None) => {
                        saver.gone(*a).unwrap();
                        i += 1;
                    }
                    (None, None) => break,
                }
            }
        }
        saver.commit(s).unwrap();
    }

    /// Cycles of changing, new, idle and leaving connections: each load
    /// gives exactly what the last commit saved; idle connections cost no
    /// journal bytes; a new base comes once the journal outgrows the base.
    /// Returns the committed (state, connections) and the journal length
    /// after each commit.
    fn cycles(p: &Path) -> Vec<Committed3> {
        cycles_fed(p, false)
    }

    /// Twelve cycles of changes, each saved (a journal entry fed by its own
    /// scan, or by the caller's merge when `given`) and loaded back.
    fn cycles_fed(p: &Path, given: bool) -> Vec<Committed3> {
        let jp = journal::path_for(p);
        let mut s = State {
            boot_id: "b".into(),
            home: "/h".into(),
            ..Default::default()
        };
        let mut conns: Vec<(u64, ConnState)> = (1..=50u64).map(|k| (k * 3, conn(k))).collect();
        let mut out = Vec::new();
        for i in 0..12u64 {
            s.ring_applied = i * 100;
            s.strings.intern(&format!("name-{}", i % 5));
            match i % 4 {
                0 => conns[(i as usize) % 50].1.last.bytes_sent += 1, // a change
                1 => {
                    conns.retain(|(k, _)| k % 7 != i % 7); // some leave
                    conns.push((1000 + i, conn(i))); // one new
                }
                2 => {
                    // Full records for all (as a relabel does).
                    let w = s.strings.intern(&format!("w{i}"));
                    for (_, c) in &mut conns {
                        c.wkey = w;
                    }
                }
                _ => {} // all idle
            }
            conns.sort_by_key(|(k, _)| *k);
            let before = fs::metadata(&jp).map_or(0, |m| m.len());
            cycle(p, &s, &conns, given);
            let (got, got_conns) = loaded(p);
            let mut want = s.clone();
            want.version = STATE_VERSION;
            assert_eq!((&got, &got_conns), (&want, &conns), "cycle {i}");
            let after = fs::metadata(&jp).map_or(0, |m| m.len());
            if i % 4 == 3 && after > before {
                assert!(
                    after - before < 400,
                    "an idle cycle wrote {} B (the head only)",
                    after - before
                );
            }
            out.push((want, conns.clone(), after));
        }
        assert!(out.iter().any(|o| o.2 > 0), "the journal was used");
        out
    }

    #[test]
    fn a_journal_fed_by_the_cycles_merge_is_the_one_its_own_scan_makes() {
        let d = tempfile::tempdir().unwrap();
        for sub in ["a", "b"] {
            fs::create_dir(d.path().join(sub)).unwrap();
        }
        let scanned = cycles_fed(&d.path().join("a").join("state.bin"), false);
        let given = cycles_fed(&d.path().join("b").join("state.bin"), true);
        assert_eq!(scanned, given, "same states, same journal sizes");
    }

    #[test]
    fn a_journal_replays_each_cycle_and_is_compacted() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.bin");
        let runs = cycles(&p);
        // At most about the base's size: a new base came in between.
        let base = fs::metadata(&p).unwrap().len();
        assert!(runs.iter().all(|r| r.2 <= 2 * base + 4096));
        assert!(runs.windows(2).any(|w| w[1].2 < w[0].2), "compacted");
        // A rotation's resave: one more entry, same connections.
        let (mut s, conns) = loaded(&p);
        s.logs.insert("/x".into(), Committed::default());
        resave(&p, &s, 0o600).unwrap();
        assert_eq!(loaded(&p), (s, conns));
    }

    /// A run killed before its commit (entry written, header not), or a
    /// journal cut anywhere: the load gives the last complete commit;
    /// any flipped byte gives a committed state or a set-aside state,
    /// never a panic nor a state never committed.
    #[test]
    fn torn_and_corrupt_journals() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.bin");
        let jp = journal::path_for(&p);
        let runs = cycles(&p);
        let (last_s, last_conns, _) = runs.last().unwrap().clone();
        // Killed before the commit: the Saver never gets to drop.
        let prev = match load(&p, "/h").unwrap() {
            LoadOutcome::Loaded(_, prev) => prev,
            other => panic!("{other:?}"),
        };
        let mut saver = Saver::begin(&p, 0o600, &prev).unwrap();
        for k in 2000..2100u64 {
            saver.push(k, &conn(k)).unwrap();
        }
        std::mem::forget(saver);
        drop(prev);
        assert_eq!(loaded(&p), (last_s.clone(), last_conns.clone()));
        cycle(&p, &last_s, &last_conns, true);
        assert_eq!(loaded(&p), (last_s.clone(), last_conns.clone()));

        let base = fs::read(&p).unwrap();
        let good = fs::read(&jp).unwrap();
        let committed: Vec<_> = runs.iter().map(|r| (r.0.clone(), r.1.clone())).collect();
        let check = |bytes: &[u8], what: &str| {
            fs::write(&p, &base).unwrap();
            fs::write(&jp, bytes).unwrap();
            match load(&p, "/h").unwrap() {
                LoadOutcome::Loaded(s, prev) => {
                    let conns: Vec<_> = prev.scan().map(Result::unwrap).collect();
                    assert!(
                        committed.contains(&(*s, conns)),
                        "{what}: a state never committed"
                    );
                }
                LoadOutcome::SetAside(aside, _) => {
                    let _ = fs::remove_file(&aside);
                    let mut j = aside.into_os_string();
                    j.push(".journal");
                    let _ = fs::remove_file(j);
                }
                LoadOutcome::Fresh => panic!("{what}: fresh"),
            }
        };
        for n in (0..good.len()).step_by(7) {
            check(&good[..n], &format!("cut to {n}"));
        }
        for i in (0..good.len()).step_by(3) {
            let mut b = good.clone();
            b[i] ^= 0x41;
            check(&b, &format!("byte {i} flipped"));
        }
        // A corrupt entry before the last one is not skipped: set aside.
        fs::write(&p, &base).unwrap();
        let mut b = good.clone();
        b[32 + 40 + 1] ^= 1;
        fs::write(&jp, &b).unwrap();
        if b.len() > 32 + 40 + 200 {
            assert!(matches!(load(&p, "/h").unwrap(), LoadOutcome::SetAside(..)));
        }
    }

    /// A state that shrank to under half its base (series retired, issue
    /// 18) is written as a new base at the next cycle, without the names
    /// nothing uses any more: the files follow the state down.
    #[test]
    fn a_shrunk_state_gets_a_new_base_without_its_unused_names() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.bin");
        let mut s = State {
            boot_id: "b".into(),
            home: "/h".into(),
            ..Default::default()
        };
        for i in 0..500 {
            let w = s.strings.intern(&format!("/kubepods/job-{i}"));
            s.workloads.insert((1, w), GroupTotals::default());
        }
        let conns = vec![(1u64, conn(1)), (2, conn(2))];
        cycle(&p, &s, &conns, false);
        let big = fs::metadata(&p).unwrap().len();
        // Every series retired: a journal entry (planned on the big state).
        s.workloads.clear();
        cycle(&p, &s, &conns, true);
        assert_eq!(fs::metadata(&p).unwrap().len(), big);
        // The next load finds it shrunk: a new base, names compacted.
        let (st, prev) = match load(&p, "/h").unwrap() {
            LoadOutcome::Loaded(st, prev) => (*st, prev),
            other => panic!("{other:?}"),
        };
        assert!(st.strings.len() < 10, "{} names", st.strings.len());
        let mut saver = Saver::begin(&p, 0o600, &prev).unwrap();
        let kept: Vec<(u64, ConnState)> = prev.scan().map(Result::unwrap).collect();
        for (k, c) in &kept {
            saver.push(*k, c).unwrap();
        }
        drop(prev);
        saver.commit(&st).unwrap();
        let small = fs::metadata(&p).unwrap().len();
        assert!(small * 10 < big, "{small} B after {big} B");
        assert!(!journal::path_for(&p).exists(), "a new base");
        assert_eq!(loaded(&p).1, conns);
    }

    /// A journal of another base (another generation: left by a run
    /// stopped after writing a new base, or copied) is ignored.
    #[test]
    fn a_journal_of_another_base_is_ignored() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.bin");
        let jp = journal::path_for(&p);
        let runs = cycles(&p);
        let journal_now = fs::read(&jp).unwrap_or_default();
        let s = &runs.last().unwrap().0;
        // A new base (another generation), then the old journal put back.
        let mut saver = Saver::begin(&p, 0o600, &none()).unwrap();
        for (k, c) in &runs.last().unwrap().1 {
            saver.push(*k, c).unwrap();
        }
        saver.commit(s).unwrap();
        assert!(!jp.exists(), "a new base removes the old journal");
        fs::write(&jp, &journal_now).unwrap();
        assert_eq!(loaded(&p), (s.clone(), runs.last().unwrap().1.clone()));
        // The next cycle starts a journal of its own.
        cycle(&p, s, &runs.last().unwrap().1, false);
        assert_eq!(loaded(&p), (s.clone(), runs.last().unwrap().1.clone()));
    }

    /// Without a binary state a v2 state.json is migrated; a bad one, or a
    /// bad binary state, is set aside as state.bad-<time>.
    #[test]
    fn migrates_v2_and_sets_bad_files_aside() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.bin");
        let json = legacy_path(&p);
        fs::write(&json, br#"{"version":2,"boot_id":"b","pin_generation":5,"ring_applied":384,"conns":{},"recently_closed":{},"workloads":{},"services":{},"workload_labels":[],"service_labels":[],"services_text":null,"cgroup_names":{},"final_series":[],"closes_without_record":0,"malformed_records":0,"log_len":{"access.csv":77},"created_unix":1}"#).unwrap();
        let (s, conns) = loaded(&p);
        assert_eq!((s.ring_applied, s.logs.len(), conns.len()), (384, 0, 0));
        fs::write(&json, b"{not json").unwrap();
        match load(&p, "/h").unwrap() {
            LoadOutcome::SetAside(aside, why) => {
                assert!(
                    why.starts_with("state.json: not a longconn state file"),
                    "{why}"
                );
                assert!(aside
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("state.bad-"));
            }
            other => panic!("{other:?}"),
        }
        fs::write(&p, b"garbage").unwrap();
        assert!(matches!(load(&p, "/h").unwrap(), LoadOutcome::SetAside(..)));
        std::os::unix::fs::symlink("/etc/passwd", &p).unwrap();
        match load(&p, "/h").unwrap() {
            LoadOutcome::SetAside(_, why) => assert_eq!(why, "a symlink, not a file"),
            other => panic!("{other:?}"),
        }
    }

    /// A state written for another state dir (copied from another out dir)
    /// is set aside, never adopted; one without a home (older format) is.
    #[test]
    fn a_state_of_another_directory_is_set_aside() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.bin");
        let mut s = State {
            home: "/elsewhere".into(),
            ..Default::default()
        };
        Saver::begin(&p, 0o600, &none())
            .unwrap()
            .commit(&s)
            .unwrap();
        match load(&p, "/h").unwrap() {
            LoadOutcome::SetAside(aside, why) => {
                assert!(why.contains("/elsewhere"), "{why}");
                assert!(aside.exists() && !p.exists());
            }
            other => panic!("{other:?}"),
        }
        s.home = "/h".into();
        Saver::begin(&p, 0o600, &none())
            .unwrap()
            .commit(&s)
            .unwrap();
        assert_eq!(loaded(&p).0.home, "/h");
        s.home.clear();
        Saver::begin(&p, 0o600, &none())
            .unwrap()
            .commit(&s)
            .unwrap();
        assert_eq!(loaded(&p).0.home, "");
    }
}
