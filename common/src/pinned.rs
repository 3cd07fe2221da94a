//! Opening a longconn pin dir: every map, with the layout checked first.
//!
//! Invariant 6: a reader never decodes maps pinned by another layout version;
//! it says so and stops. Every error names the path and the next step.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
    time::Duration,
};

use aya::maps::{Array, HashMap as AyaHashMap, Map, MapData, PerCpuArray};

use crate::{
    exit::Exit,
    layout::{
        self, CgroupName, ConnRecord, Counters, Meta, NetnsEntry, RefreshSlot, Totals, TotalsKey,
    },
    mounts, netns, pins,
    refresh::{DirLock, WorkArray},
    ring::RingReader,
    sys::{self, Checked, Kind},
};

/// How long a reader waits for the refresh work array while another reader
/// uses it (each holds it for one chunk, a few ms).
const REFRESH_LOCK_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum PinnedError {
    #[error("no longconn pins in {dir}: run `longconn-pin --pin-dir {dir}` first")]
    NotPinned { dir: PathBuf },
    #[error("{dir} is not on a mounted bpf filesystem: mount it (`mount -t bpf bpf /sys/fs/bpf`) and run `longconn-pin`")]
    NoBpffs { dir: PathBuf },
    #[error("permission denied opening {path}: run as root, or as a member of the group given to `longconn-pin --group` (some older kernels also require CAP_BPF; see README, \"Running the reader without root\")")]
    Permission { path: PathBuf },
    #[error("{path} was pinned by another longconn layout or is damaged ({found}); this binary reads layout {expected}: run `longconn-pin detach --pin-dir {dir} --force` (--force also removes a damaged or foreign object in the pin dir) then `longconn-pin --pin-dir {dir}` with this version", dir = .path.parent().map(|p| p.display().to_string()).unwrap_or_default())]
    Layout {
        path: PathBuf,
        found: String,
        expected: String,
    },
    // The cause follows through the error chain (`{:#}`), not repeated here.
    #[error("cannot open {path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot use map {path}")]
    Map {
        path: PathBuf,
        source: aya::maps::MapError,
    },
    #[error("another reader has held the refresh lock of {dir} for {}s: run again, or find the stopped reader holding it (`lslocks`)", REFRESH_LOCK_WAIT.as_secs())]
    Busy { dir: PathBuf },
}

impl PinnedError {
    /// The exit code both binaries give this error (their `--help` lists them):
    /// 6 not pinned / other layout, 4 no permission, 3 no bpffs, 1 otherwise.
    pub fn exit(&self) -> Exit {
        match self {
            Self::NotPinned { .. } | Self::Layout { .. } => Exit::NotConfigured,
            Self::Permission { .. } => Exit::NoPermission,
            Self::NoBpffs { .. } => Exit::NoFeature,
            Self::Io { .. } | Self::Map { .. } | Self::Busy { .. } => Exit::Failed,
        }
    }
}

/// One CPU's close totals as the kernel copies them (rounded up to 8 bytes).
const TOTALS_COPY: usize = Totals::SIZE.next_multiple_of(8);

/// What one read-time refresh did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefreshStats {
    /// Records copied from their socket.
    pub refreshed: u64,
    /// Live records whose socket was not found (gone between the close and
    /// the record's removal, or bound to a device of another network
    /// namespace whose ifindex is no interface of this reader's namespace).
    pub not_found: u64,
    /// Live records in a network namespace this reader has no netnsid for
    /// (it could not find or open the namespace, or lacks CAP_NET_ADMIN).
    pub netns_unknown: u64,
}

/// Resolves the netnsid of every namespace in `map` not yet resolved for the
/// namespace `own`, skipping those in `tried`. Returns how many it resolved.
fn resolve_netns(
    map: &mut AyaHashMap<MapData, u64, NetnsEntry>,
    own: u64,
    tried: &mut HashSet<u64>,
) -> usize {
    let pending: Vec<(u64, NetnsEntry)> = map
        .iter()
        .flatten()
        .filter(|(k, v)| *k != own && v.reader_netns_cookie != own && !tried.contains(k))
        .collect();
    if pending.is_empty() {
        return 0;
    }
    let inodes: HashSet<u32> = pending.iter().map(|(_, v)| v.ino).collect();
    let paths = netns::find_by_inode(&inodes);
    let mut resolved = 0;
    for (cookie, entry) in pending {
        tried.insert(cookie);
        let Some(path) = paths.get(&entry.ino) else {
            continue;
        };
        let Ok(nsid) = netns::nsid_of(path) else {
            continue;
        };
        let value = NetnsEntry {
            reader_netns_cookie: own,
            ino: entry.ino,
            nsid,
        };
        if map.insert(cookie, value, 0).is_ok() {
            resolved += 1;
        }
    }
    resolved
}

/// How the maps are opened: `ReadOnly` is enough for `dump` and `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

/// The maps of one pin dir, layout-checked.
pub struct Pins {
    pub dir: PathBuf,
    pub meta: Meta,
    conns: MapData,
    counters: Map,
    closed: MapData,
    overflow: [MapData; 2],
    totals: MapData,
    cgroup_names: MapData,
    access: Access,
}

/// One read of the close totals: every key's value on each possible CPU,
/// each copy consistent (no close half-added).
#[derive(Clone, Debug, Default)]
pub struct TotalsSnapshot {
    pub keys: Vec<(TotalsKey, Vec<Totals>)>,
}

/// How often a key whose copy caught a close half-added is read again.
const TOTALS_RETRIES: usize = 10_000;

fn open_fd(path: &Path, access: Access) -> Result<OwnedFd, PinnedError> {
    let flags = if access == Access::ReadOnly {
        sys::BPF_F_RDONLY
    } else {
        0
    };
    sys::obj_get(path, flags).map_err(|source| match source.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => PinnedError::Permission { path: path.into() },
        _ => PinnedError::Io {
            path: path.into(),
            source,
        },
    })
}

fn open_map(path: &Path, access: Access) -> Result<MapData, PinnedError> {
    let fd = open_fd(path, access)?;
    MapData::from_fd(fd).map_err(|source| PinnedError::Map {
        path: path.into(),
        source,
    })
}

/// Opens a map and checks its key and value sizes (another layout otherwise).
fn open_checked(
    path: &Path,
    access: Access,
    key: usize,
    value: usize,
) -> Result<MapData, PinnedError> {
    let data = open_map(path, access)?;
    let (k, v) = data
        .info()
        .map(|i| (i.key_size() as usize, i.value_size() as usize))
        .unwrap_or((0, 0));
    if (k, v) != (key, value) {
        return Err(PinnedError::Layout {
            path: path.into(),
            found: format!("key size {k}, value size {v}"),
            expected: format!("key size {key}, value size {value}"),
        });
    }
    Ok(data)
}

/// Reads and validates `meta` of a pin dir.
pub fn read_meta(dir: &Path, access: Access) -> Result<Meta, PinnedError> {
    match std::fs::metadata(dir.join(pins::META)) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(PinnedError::Permission {
                path: dir.join(pins::META),
            });
        }
        Err(_) => {
            if !dir.exists()
                && dir
                    .parent()
                    .is_some_and(|p| p.exists() && !mounts::is_bpffs(p))
            {
                return Err(PinnedError::NoBpffs { dir: dir.into() });
            }
            return Err(PinnedError::NotPinned { dir: dir.into() });
        }
    }
    let path = dir.join(pins::META);
    // Read-only whatever the caller's access: meta is never written after
    // pinning (frozen, and 0640 for a --group), so a group member can read it.
    let _ = access;
    let data = open_map(&path, Access::ReadOnly)?;
    let value_size = data.info().map(|i| i.value_size()).unwrap_or(0) as usize;
    if value_size != std::mem::size_of::<Meta>() {
        return Err(PinnedError::Layout {
            path,
            found: format!("meta value of {value_size} bytes"),
            expected: format!("version {}", layout::LAYOUT_VERSION),
        });
    }
    let map = Map::Array(data);
    let array: Array<&MapData, Meta> =
        Array::try_from(&map).map_err(|source| PinnedError::Map {
            path: path.clone(),
            source,
        })?;
    let meta = array.get(&0, 0).map_err(|source| PinnedError::Map {
        path: path.clone(),
        source,
    })?;
    if meta.magic != layout::META_MAGIC
        || meta.layout_version != layout::LAYOUT_VERSION
        || meta.record_size as usize != ConnRecord::SIZE
    {
        return Err(PinnedError::Layout {
            path,
            found: format!(
                "version {}, record size {}",
                meta.layout_version, meta.record_size
            ),
            expected: format!(
                "version {}, record size {}",
                layout::LAYOUT_VERSION,
                ConnRecord::SIZE
            ),
        });
    }
    Ok(meta)
}

/// The close totals map as read: key, and one consistent copy per CPU.
type TotalsMap<'a> = Checked<'a, [u8; TotalsKey::SIZE], [u8; TOTALS_COPY]>;

impl Pins {
    pub fn open(dir: &Path, access: Access) -> Result<Self, PinnedError> {
        let meta = read_meta(dir, access)?;
        let conns = open_map(&dir.join(pins::CONNS), access)?;
        let conns_value = conns.info().map(|i| i.value_size()).unwrap_or(0) as usize;
        if conns_value != ConnRecord::SIZE {
            return Err(PinnedError::Layout {
                path: dir.join(pins::CONNS),
                found: format!("value size {conns_value}"),
                expected: format!("value size {}", ConnRecord::SIZE),
            });
        }
        Ok(Self {
            dir: dir.into(),
            meta,
            conns,
            counters: Map::PerCpuArray(open_map(&dir.join(pins::COUNTERS), access)?),
            closed: open_map(&dir.join(pins::CLOSED), access)?,
            overflow: [
                open_checked(&dir.join(pins::OVERFLOW), access, 8, ConnRecord::SIZE)?,
                open_checked(&dir.join(pins::OVERFLOW_SHORT), access, 8, ConnRecord::SIZE)?,
            ],
            totals: open_checked(
                &dir.join(pins::CLOSE_TOTALS),
                access,
                TotalsKey::SIZE,
                Totals::SIZE,
            )?,
            cgroup_names: open_checked(&dir.join(pins::CGROUP_NAMES), access, 8, CgroupName::SIZE)?,
            access,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// What a refresh needs, opened once: the program, the work array and
    /// the netnsid map. Its `refresh` copies the socket's counters into each
    /// live record of a batch (as just read from the map), now: runs the pinned `refresh_conns` program (BPF_PROG_TEST_RUN) once
    /// per chunk of at most `refresh_work`'s slot count, naming the chunk's
    /// cookies in that mmapped array and reading the refreshed counters back
    /// from it. The program looks each record's socket up by 4-tuple in the
    /// kernel's TCP tables; a run is not preemptible (and holds its CPU's
    /// softirqs) for 0.5–0.9 µs per socket, so a chunk of 2048 holds one CPU
    /// ≈ 1–2 ms whatever the map size. Records that closed since the map was
    /// read keep the values read (the ring, read after, carries their
    /// close). Sockets of other network namespaces are reached through
    /// netnsids resolved first (see `netns`); records of a namespace the
    /// program meets for the first time are refreshed once more after it is
    /// resolved.
    fn refresher(&self) -> Result<Refresher<'_>, PinnedError> {
        let path = self.path(pins::REFRESH);
        let prog = match open_fd(&path, Access::ReadWrite) {
            Err(PinnedError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Err(PinnedError::Layout {
                    path: path.clone(),
                    found: "no refresh program".into(),
                    expected: format!("layout {} with {}", layout::LAYOUT_VERSION, pins::REFRESH),
                })
            }
            other => other?,
        };
        let own = netns::own_cookie().map_err(|source| PinnedError::Io {
            path: "/proc/self/ns/net".into(),
            source,
        })?;
        let work = self.work_array()?;
        let mut netns_map = self.netns_map();
        let mut tried = HashSet::new();
        if let Some(m) = &mut netns_map {
            resolve_netns(m, own, &mut tried);
        }
        Ok(Refresher {
            pins: self,
            prog,
            own,
            work,
            netns_map,
            tried,
        })
    }

    /// The `refresh_work` array, mapped (read-write whatever the access: the
    /// reader names the records to refresh in it).
    fn work_array(&self) -> Result<WorkArray, PinnedError> {
        let path = self.path(pins::REFRESH_WORK);
        let data = open_map(&path, Access::ReadWrite)?;
        let (value_size, slots) = data
            .info()
            .map(|i| (i.value_size() as usize, i.max_entries() as usize))
            .map_err(|source| PinnedError::Map {
                path: path.clone(),
                source,
            })?;
        if value_size != RefreshSlot::SIZE || slots == 0 {
            return Err(PinnedError::Layout {
                path,
                found: format!("value size {value_size}, {slots} slots"),
                expected: format!("value size {}", RefreshSlot::SIZE),
            });
        }
        WorkArray::map(data.fd().as_fd(), slots).map_err(|source| match source.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => PinnedError::Permission { path },
            _ => PinnedError::Io { path, source },
        })
    }

    /// Refreshes `records[i]` for each i of `which`, one run per chunk of the
    /// work array, each under the pin dir's lock. Adds to `stats` what was
    /// refreshed and not found; returns the records whose namespace has no
    /// netnsid for this reader yet. The kernel's lookup finds a socket bound
    /// to a device (SO_BINDTODEVICE, VRF, IPv6 link-local) only in a run on
    /// that device, so records are refreshed in runs of their `bound_dev_if`
    /// (unbound ones on loopback): one group when none is bound.
    fn refresh_chunks(
        &self,
        prog: BorrowedFd<'_>,
        own: u64,
        work: &WorkArray,
        records: &mut [ConnRecord],
        which: &[usize],
        stats: &mut RefreshStats,
    ) -> Result<Vec<usize>, PinnedError> {
        let mut unknown = Vec::new();
        if which.iter().all(|&r| records[r].bound_dev_if == 0) {
            let run = DeviceRun {
                prog,
                own,
                ifindex: 0,
            };
            self.refresh_on(&run, work, records, which, stats, &mut unknown)?;
            return Ok(unknown);
        }
        let mut by_device: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for &r in which {
            by_device
                .entry(records[r].bound_dev_if)
                .or_default()
                .push(r);
        }
        for (ifindex, group) in &by_device {
            let run = DeviceRun {
                prog,
                own,
                ifindex: *ifindex,
            };
            self.refresh_on(&run, work, records, group, stats, &mut unknown)?;
        }
        Ok(unknown)
    }

    /// `refresh_chunks` for records of one device. A device this reader's
    /// network namespace has no interface with the index of (a socket bound
    /// in another namespace) cannot be named to the kernel: its records are
    /// counted as not found.
    fn refresh_on(
        &self,
        run: &DeviceRun<'_>,
        work: &WorkArray,
        records: &mut [ConnRecord],
        which: &[usize],
        stats: &mut RefreshStats,
        unknown: &mut Vec<usize>,
    ) -> Result<(), PinnedError> {
        for chunk in which.chunks(work.slots()) {
            let _lock = DirLock::acquire(&self.dir, REFRESH_LOCK_WAIT)
                .map_err(|source| PinnedError::Io {
                    path: self.dir.clone(),
                    source,
                })?
                .ok_or_else(|| PinnedError::Busy {
                    dir: self.dir.clone(),
                })?;
            for (slot, &r) in chunk.iter().enumerate() {
                work.set(slot, RefreshSlot::of(&records[r]));
            }
            if !self.refresh_run(run, chunk.len() as u32)? {
                stats.not_found += chunk.len() as u64;
                continue;
            }
            for (slot, &r) in chunk.iter().enumerate() {
                let s = work.get(slot);
                if s.cookie != records[r].cookie {
                    continue;
                }
                match s.status {
                    layout::REFRESH_OK => {
                        s.apply(&mut records[r]);
                        stats.refreshed += 1;
                    }
                    layout::REFRESH_NOT_FOUND => stats.not_found += 1,
                    layout::REFRESH_NETNS_UNKNOWN => unknown.push(r),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// One run of the refresh program over the first `count` slots of the
    /// work array, on this thread and on `run`'s device. False when that
    /// device is not an interface of this network namespace (nothing ran).
    fn refresh_run(&self, run: &DeviceRun<'_>, count: u32) -> Result<bool, PinnedError> {
        let mut cb = [0u32; 4];
        cb[layout::REFRESH_CB_COUNT] = count;
        cb[layout::REFRESH_CB_NETNS_LO] = run.own as u32;
        cb[layout::REFRESH_CB_NETNS_HI] = (run.own >> 32) as u32;
        match sys::prog_run_on(run.prog, run.ifindex, &cb) {
            Ok(_) => Ok(true),
            Err(e) if run.ifindex != 0 && e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
            Err(source) => {
                let path = self.path(pins::REFRESH);
                Err(match source.raw_os_error() {
                    Some(libc::EPERM) | Some(libc::EACCES) => PinnedError::Permission { path },
                    _ => PinnedError::Io { path, source },
                })
            }
        }
    }

    /// The `netns` map, read-write (the refresh records netnsids in it), or
    /// None when it cannot be opened that way (then other namespaces stay
    /// unreachable and are counted as such).
    fn netns_map(&self) -> Option<AyaHashMap<MapData, u64, NetnsEntry>> {
        let data = open_map(&self.path(pins::NETNS), Access::ReadWrite).ok()?;
        AyaHashMap::try_from(Map::HashMap(data)).ok()
    }

    /// Forgets the netnsids of namespaces no live record refers to (they are
    /// looked up again if a record of theirs appears).
    fn prune_netns(&self, live: &[ConnRecord]) {
        let Some(mut m) = self.netns_map() else {
            return;
        };
        let referenced: HashSet<u64> = live.iter().map(|r| r.netns_cookie).collect();
        let stale: Vec<u64> = m
            .keys()
            .flatten()
            .filter(|k| !referenced.contains(k))
            .collect();
        for k in stale {
            let _ = m.remove(&k);
        }
    }

    /// Every live record (and, from the overflow map, closed ones whose
    /// ring-buffer write failed), read in batches and refreshed from the
    /// sockets (see `refresher`, `pipeline`), with what the refresh could
    /// not reach. Records of the wrong size are counted in the second value
    /// and skipped. With read-write access, netnsids of namespaces no record
    /// refers to any more are forgotten.
    pub fn connections_refreshed(
        &self,
    ) -> Result<(Vec<ConnRecord>, u64, RefreshStats), PinnedError> {
        let mut records = Vec::new();
        let (bad, stats) = self.pipeline(true, true, |mut b| records.append(&mut b))?;
        if self.access == Access::ReadWrite {
            self.prune_netns(&records);
        }
        Ok((records, bad, stats))
    }

    /// The live records (closed ones skipped: closes in transit), handed to
    /// `each` in batches of `batch`; how many had the wrong size.
    fn read_live(
        &self,
        batch: usize,
        mut each: impl FnMut(Vec<ConnRecord>),
    ) -> Result<u64, PinnedError> {
        let mut bad = 0u64;
        let mut chunk = Vec::with_capacity(batch);
        self.records(&self.conns, pins::CONNS)?
            .lookup_batch(batch as u32, |_, v| match ConnRecord::decode(&v[0]) {
                Some(r) if r.is_closed() => {}
                Some(r) => {
                    chunk.push(r);
                    if chunk.len() >= batch {
                        each(std::mem::replace(&mut chunk, Vec::with_capacity(batch)));
                    }
                }
                None => bad += 1,
            })
            .map_err(|source| PinnedError::Io {
                path: self.path(pins::CONNS),
                source,
            })?;
        if !chunk.is_empty() {
            each(chunk);
        }
        Ok(bad)
    }

    /// The live records, streamed: read in batches of the refresh work
    /// array's slot count, each batch refreshed (unless `refresh` is false)
    /// and handed to `each` in this thread (see `pipeline`), so memory holds
    /// a few batches, not the live set. Closed records (closes in transit to
    /// the ring) are skipped. Returns how many records had the wrong size,
    /// and what the refresh could not reach.
    pub fn stream_live(
        &self,
        refresh: bool,
        each: impl FnMut(Vec<ConnRecord>),
    ) -> Result<(u64, RefreshStats), PinnedError> {
        self.pipeline(refresh, false, each)
    }

    /// A read in three stages, each on its own thread, a batch apart: a
    /// thread reads the live map (then, with `overflow`, the overflow maps:
    /// `read_overflow`), a second refreshes each batch (unless `refresh` is
    /// false; the refresh skips closed records), and this thread hands it
    /// to `each`. The kernel's two parts and the caller's work overlap: on
    /// two CPUs the wall time is about half their sum, or the longest
    /// stage, not the sum; the CPU time is the same. A stage that fails
    /// stops passing batches on; the stages before it run to their end.
    fn pipeline(
        &self,
        refresh: bool,
        overflow: bool,
        mut each: impl FnMut(Vec<ConnRecord>),
    ) -> Result<(u64, RefreshStats), PinnedError> {
        let mut refresher = if refresh {
            Some(self.refresher()?)
        } else {
            None
        };
        let batch = refresher.as_ref().map_or(4096, |r| r.work.slots()).max(1);
        let panicked = |stage: &str| PinnedError::Io {
            path: self.path(pins::CONNS),
            source: io::Error::other(format!("the map {stage} thread panicked")),
        };
        std::thread::scope(|scope| {
            let (read_tx, read_rx) = std::sync::mpsc::sync_channel::<Vec<ConnRecord>>(2);
            let (done_tx, done_rx) = std::sync::mpsc::sync_channel::<Vec<ConnRecord>>(2);
            let reader = scope.spawn(move || {
                // A send fails only once the next stage stopped on an error
                // (the one reported); the read then runs to its end.
                let bad = self.read_live(batch, |b| {
                    let _ = read_tx.send(b);
                })?;
                if !overflow {
                    return Ok(bad);
                }
                let mut closed = Vec::new();
                let bad_closed = self.read_overflow(&mut closed)?;
                let _ = read_tx.send(closed);
                Ok(bad + bad_closed)
            });
            let refreshing = scope.spawn(move || {
                let mut stats = RefreshStats::default();
                for mut b in read_rx {
                    if let Some(r) = refresher.as_mut() {
                        r.refresh(&mut b, &mut stats)?;
                    }
                    let _ = done_tx.send(b);
                }
                Ok(stats)
            });
            for b in done_rx {
                each(b);
            }
            let stats = refreshing
                .join()
                .unwrap_or_else(|_| Err(panicked("refresh")));
            let bad = reader.join().unwrap_or_else(|_| Err(panicked("reader")));
            Ok((bad?, stats?))
        })
    }

    /// The map as the kernel hooks left it, without running the refresh
    /// program (for comparing `--hooks` presets; `dump --no-refresh`).
    pub fn connections_unrefreshed(&self) -> Result<(Vec<ConnRecord>, u64), PinnedError> {
        let mut out = Vec::new();
        let mut bad = 0u64;
        self.records(&self.conns, pins::CONNS)?
            .lookup_batch(4096, |_, v| match ConnRecord::decode(&v[0]) {
                // A closed record in the live map is a close in transit
                // (flagged, not yet handed to the ring or an overflow map,
                // or counted unlogged): it is taken from where it lands, so
                // it is never both logged and counted unlogged.
                Some(r) if r.is_closed() => {}
                Some(r) => out.push(r),
                None => bad += 1,
            })
            .map_err(|source| PinnedError::Io {
                path: self.path(pins::CONNS),
                source,
            })?;
        bad += self.read_overflow(&mut out)?;
        Ok((out, bad))
    }

    /// Appends the close records the ring could not take (the overflow
    /// maps) to `out`; how many had the wrong size. Read after the live
    /// map: a close in between is seen here (the kernel writes the
    /// overflow record before it deletes the live one).
    fn read_overflow(&self, out: &mut Vec<ConnRecord>) -> Result<u64, PinnedError> {
        let mut bad = 0u64;
        for (map, name) in self
            .overflow
            .iter()
            .zip([pins::OVERFLOW, pins::OVERFLOW_SHORT])
        {
            self.records(map, name)?
                .lookup_batch(4096, |_, v| match ConnRecord::decode(&v[0]) {
                    Some(r) => out.push(r),
                    None => bad += 1,
                })
                .map_err(|source| PinnedError::Io {
                    path: self.path(name),
                    source,
                })?;
        }
        Ok(bad)
    }

    /// The close totals map, typed and checked, and its path.
    fn totals_map(&self) -> Result<(PathBuf, TotalsMap<'_>), PinnedError> {
        let path = self.path(pins::CLOSE_TOTALS);
        let map =
            Checked::new(&self.totals, Kind::PerCpuHash).map_err(|source| PinnedError::Io {
                path: path.clone(),
                source,
            })?;
        Ok((path, map))
    }

    /// Every key of the close totals with its value on each possible CPU
    /// (batched), each copy consistent: a copy that caught a close being
    /// added (seq_begin != seq_end) is read again, alone.
    pub fn close_totals(&self) -> Result<TotalsSnapshot, PinnedError> {
        let (path, map) = self.totals_map()?;
        let decode = |v: &[[u8; TOTALS_COPY]]| -> Option<Vec<Totals>> {
            v.iter()
                .map(|c| Totals::decode(&c[..Totals::SIZE]))
                .collect()
        };
        let mut keys = Vec::new();
        let mut again = Vec::new();
        map.lookup_batch(1024, |k, v| {
            let (Some(key), Some(values)) = (TotalsKey::decode(k), decode(v)) else {
                return;
            };
            if values.iter().all(Totals::consistent) {
                keys.push((key, values));
            } else {
                again.push(key);
            }
        })
        .map_err(|source| PinnedError::Io {
            path: path.clone(),
            source,
        })?;
        for key in again {
            let mut tries = 0;
            loop {
                let values = map
                    .lookup(&key.to_bytes())
                    .map_err(|source| PinnedError::Io {
                        path: path.clone(),
                        source,
                    })?;
                match decode(&values) {
                    Some(values) if values.iter().all(Totals::consistent) => {
                        keys.push((key, values));
                        break;
                    }
                    _ if tries < TOTALS_RETRIES => tries += 1,
                    _ => {
                        return Err(PinnedError::Io {
                            path,
                            source: io::Error::other(
                                "a value kept changing while read (10 000 tries); run again",
                            ),
                        })
                    }
                }
            }
        }
        Ok(TotalsSnapshot { keys })
    }

    /// The paths the kernel captured when cgroups `ids` were made (those it
    /// has: made since the pin, not yet evicted, not cut), as raw bytes.
    pub fn cgroup_paths(
        &self,
        ids: impl IntoIterator<Item = u64>,
    ) -> Result<HashMap<u64, Vec<u8>>, PinnedError> {
        let path = self.path(pins::CGROUP_NAMES);
        let io = |source| PinnedError::Io {
            path: path.clone(),
            source,
        };
        let map = Checked::<u64, [u8; CgroupName::SIZE]>::new(&self.cgroup_names, Kind::LruHash)
            .map_err(io)?;
        let mut out = HashMap::new();
        for id in ids {
            match map.lookup(&id) {
                Ok(v) => {
                    let name = v.first().and_then(|b| CgroupName::decode(b));
                    if let Some(p) = name.as_ref().and_then(CgroupName::path_bytes) {
                        out.insert(id, p.to_vec());
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(io(e)),
            }
        }
        Ok(out)
    }

    /// Deletes keys of the close totals whose closes are all accounted and
    /// whose cgroup is gone (see the reader's `retire`); keys already gone
    /// are skipped.
    pub fn remove_close_totals(&self, keys: &[TotalsKey]) -> Result<(), PinnedError> {
        let (path, map) = self.totals_map()?;
        for key in keys {
            match map.delete(&key.to_bytes()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(source) => {
                    return Err(PinnedError::Io {
                        path: path.clone(),
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// Capacity of the connection map.
    pub fn capacity(&self) -> u32 {
        self.conns.info().map(|i| i.max_entries()).unwrap_or(0)
    }

    /// Capacity of the cgroup names map (paths).
    pub fn cgroup_names_capacity(&self) -> u32 {
        self.cgroup_names
            .info()
            .map(|i| i.max_entries())
            .unwrap_or(0)
    }

    /// Capacity of the close totals map (keys).
    pub fn totals_capacity(&self) -> u32 {
        self.totals.info().map(|i| i.max_entries()).unwrap_or(0)
    }

    pub fn counters(&self) -> Result<Counters, PinnedError> {
        let path = self.path(pins::COUNTERS);
        let arr: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(&self.counters).map_err(|source| PinnedError::Map {
                path: path.clone(),
                source,
            })?;
        let mut slots = vec![0u64; layout::CTR_MAX as usize];
        for (i, slot) in slots.iter_mut().enumerate() {
            let values = arr.get(&(i as u32), 0).map_err(|source| PinnedError::Map {
                path: path.clone(),
                source,
            })?;
            *slot = values.iter().sum();
        }
        Ok(Counters::from_slots(&slots))
    }

    /// The closed-connection ring buffer, mapped (commit allowed only with ReadWrite).
    /// The kernel refuses to mmap a read-only map fd, so this opens the pin
    /// read-write even for ReadOnly access, and maps it read-only then.
    pub fn ring(&self) -> Result<RingReader, PinnedError> {
        let path = self.path(pins::CLOSED);
        let size = self
            .closed
            .info()
            .map(|i| i.max_entries())
            .map_err(|source| PinnedError::Map {
                path: path.clone(),
                source,
            })?;
        let fd = open_fd(&path, Access::ReadWrite)?;
        RingReader::open(fd.as_fd(), size, self.access == Access::ReadWrite)
            .map_err(|source| PinnedError::Io { path, source })
    }

    /// Deletes close records the kernel left in the overflow maps (ring
    /// buffer was full), in batches: each cookie is in one map or none.
    pub fn remove_all(&self, cookies: &[u64]) -> Result<(), PinnedError> {
        let mut left: Vec<u64> = cookies.to_vec();
        // Most overflow records are short connections': that map first.
        let order = [
            (&self.overflow[1], pins::OVERFLOW_SHORT),
            (&self.overflow[0], pins::OVERFLOW),
        ];
        for (map, name) in order {
            let checked = self.records(map, name)?;
            let mut missing = Vec::new();
            let mut at = 0;
            while at < left.len() {
                match checked.delete_batch(&left[at..]) {
                    Ok(()) => break,
                    Err((done, e)) if e.raw_os_error() == Some(libc::ENOENT) => {
                        missing.push(left[at + done]);
                        at += done + 1;
                    }
                    Err((_, source)) => {
                        return Err(PinnedError::Io {
                            path: self.path(name),
                            source,
                        })
                    }
                }
            }
            left = missing;
        }
        Ok(())
    }

    /// A record map (live or overflow), checked: a hash of u64 cookies to
    /// `ConnRecord`s.
    fn records<'m>(
        &self,
        map: &'m MapData,
        name: &str,
    ) -> Result<Checked<'m, u64, [u8; ConnRecord::SIZE]>, PinnedError> {
        Checked::new(map, Kind::Hash).map_err(|source| PinnedError::Io {
            path: self.path(name),
            source,
        })
    }

    /// Deletes a close record the kernel left in the overflow map (ring
    /// buffer was full).
    pub fn remove(&self, cookie: u64) -> Result<(), PinnedError> {
        for (map, name) in self
            .overflow
            .iter()
            .zip([pins::OVERFLOW, pins::OVERFLOW_SHORT])
        {
            match self.records(map, name)?.delete(&cookie) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(source) => {
                    return Err(PinnedError::Io {
                        path: self.path(name),
                        source,
                    })
                }
            }
        }
        Ok(())
    }
}

/// What one refresh run needs: the program, the reader's netns cookie, and
/// the device the run is on (0: loopback).
struct DeviceRun<'a> {
    prog: BorrowedFd<'a>,
    own: u64,
    ifindex: u32,
}

/// The refresh program, its work array and the netnsid map, opened once for
/// one read of the map (whole, or streamed chunk by chunk).
struct Refresher<'p> {
    pins: &'p Pins,
    prog: OwnedFd,
    own: u64,
    work: WorkArray,
    netns_map: Option<AyaHashMap<MapData, u64, NetnsEntry>>,
    tried: HashSet<u64>,
}

impl Refresher<'_> {
    /// Refreshes the live records of `records` (see `Pins::refresh`); a
    /// record whose namespace was met for the first time is refreshed once
    /// more after it is resolved.
    fn refresh(
        &mut self,
        records: &mut [ConnRecord],
        stats: &mut RefreshStats,
    ) -> Result<(), PinnedError> {
        // A final record (kept in the map: ring buffer full) stays as closed.
        let live: Vec<usize> = (0..records.len())
            .filter(|&i| records[i].flags & layout::F_CLOSED == 0)
            .collect();
        let prog = self.prog.as_fd();
        let mut unknown = self
            .pins
            .refresh_chunks(prog, self.own, &self.work, records, &live, stats)?;
        if !unknown.is_empty() {
            if let Some(m) = &mut self.netns_map {
                if resolve_netns(m, self.own, &mut self.tried) > 0 {
                    unknown = self
                        .pins
                        .refresh_chunks(prog, self.own, &self.work, records, &unknown, stats)?;
                }
            }
        }
        stats.netns_unknown += unknown.len() as u64;
        Ok(())
    }
}
