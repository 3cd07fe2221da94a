//! `collect`: one reader cycle, then exit. Run every 5 s by a systemd timer.
//!
//! Exactly-once, even if killed at any instant: the cycle's records and the
//! positions it consumed are first committed to the state file; only then is
//! the kernel side released (ring-buffer consumer position, reaped map
//! entries) and are the outputs written; a run that finds uncommitted outputs
//! in the state replays them idempotently before doing anything else.

mod consumer;
mod cycle;
mod lock;
mod metrics;
mod sink;
mod state;

pub use self::state::Counters;

/// A populated state, encoded, for the property tests.
#[cfg(test)]
pub fn test_state_bytes() -> Vec<u8> {
    let mut s = new_state("", BTreeMap::new());
    let w = s.strings.intern("/a");
    s.conns.insert(
        7,
        state::ConnState {
            seq: 3,
            local: state::addr_bytes(
                "127.0.0.1"
                    .parse()
                    .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
            ),
            wkey: w,
            ..Default::default()
        },
    );
    s.workloads.insert(
        (longconn_common::layout::DIR_OUTBOUND, w),
        state::GroupTotals::default(),
    );
    state::encode(&s)
}

/// Decodes state bytes (property tests: must never panic).
#[cfg(test)]
pub fn decode_state_for_tests(b: &[u8]) -> bool {
    state::decode(b).is_ok()
}

#[cfg(test)]
pub fn load_state_for_tests(p: &Path) -> std::io::Result<()> {
    state::load(p, "").map(|_| ())
}

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use longconn_common::{pinned::Access, ConnRecord, Pins};

use self::state::{LoadOutcome, Prev, State};
use crate::{
    argvalues::{self, AccessFormat, GroupArg, OtlpKind},
    clock::Clock,
    identity,
    output::{
        applog::{self, AppendLog, Committed},
        atomic, otlp, promtext, AppendFile,
    },
    servicemap::ServiceMap,
};

pub const DEFAULT_TEXTFILE_DIR: &str = "/var/lib/prometheus/node-exporter";
pub const DEFAULT_LOG_DIR: &str = "/var/log/longconn";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/longconn";
pub const PROM_FILE: &str = "longconn.prom";
pub const STATE_FILE: &str = "state.bin";

#[derive(Debug, clap::Args)]
pub struct CollectArgs {
    /// Put every output and the state under DIR (access.csv, access.jsonl,
    /// longconn.prom, state.bin); the --*-dir options below override parts.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,

    /// Where longconn.prom goes: node_exporter's --collector.textfile.directory.
    #[arg(long, value_name = "DIR", help = format!("Where longconn.prom goes (node_exporter's --collector.textfile.directory) [default: {DEFAULT_TEXTFILE_DIR}]"))]
    textfile_dir: Option<PathBuf>,

    #[arg(long, value_name = "DIR", help = format!("Where the access logs go [default: {DEFAULT_LOG_DIR}]"))]
    log_dir: Option<PathBuf>,

    #[arg(long, value_name = "DIR", help = format!("Where the reader keeps its totals and lock [default: {DEFAULT_STATE_DIR}]"))]
    state_dir: Option<PathBuf>,

    /// A connection open at least this long is a long connection: it gets
    /// access records while it lives and its own metric series.
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = argvalues::duration)]
    long_threshold: Duration,

    /// A long connection gets an access record in every cycle it changed
    /// (bytes, packets, state); an idle one gets one (a heartbeat) this
    /// often. `5s` records every long connection every cycle. Its metric
    /// series are written every cycle whatever this says.
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = argvalues::duration)]
    idle_record_interval: Duration,

    /// Access-log formats to write: csv, jsonl, both (csv,jsonl) or none.
    /// One format by default: CSV, the most compact (about 230 B a record),
    /// self-describing by its header and read by every tool.
    #[arg(
        long,
        default_value = "csv",
        value_name = "LIST",
        value_enum,
        value_delimiter = ','
    )]
    access_log: Vec<AccessFormat>,

    /// OpenTelemetry files to write (OTLP/JSON, one line per cycle, for the
    /// Collector's otlpjsonfile receiver): metrics, logs, both (metrics,logs)
    /// or none (the default: turn them on where a Collector reads them).
    #[arg(
        long,
        default_value = "none",
        value_name = "LIST",
        value_enum,
        value_delimiter = ','
    )]
    otlp: Vec<OtlpKind>,

    /// Skip the close record of connections shorter than --long-threshold.
    #[arg(long)]
    no_short_close_records: bool,

    /// Rotate an access log once it reaches this size.
    #[arg(long, default_value = "100MiB", value_name = "SIZE", value_parser = argvalues::size)]
    log_max_bytes: u64,

    /// Rotated access logs to keep (access.csv.1 is the newest), at most 1000.
    #[arg(long, default_value_t = 5, value_name = "N", value_parser = argvalues::log_keep)]
    log_keep: usize,

    /// Export at most this many per-connection series (busiest first); the rest
    /// are counted in longconn_reader_connection_series_omitted.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    max_connection_series: usize,

    /// Service map (CSV: cidr,ports,name,namespace; first match wins), reread
    /// every cycle. A bad file is reported (file:line) and the last good map
    /// stays in force. Names apply to connections first seen after a change.
    #[arg(long, value_name = "FILE")]
    services: Option<PathBuf>,

    /// Labels of the workload families: workload (cgroup path), container_id,
    /// pod_uid, comm, netns. Each adds series: see README, "Labels and cardinality".
    #[arg(long, default_value = "workload", value_name = "LIST", value_parser = identity::parse_workload_labels)]
    workload_labels: identity::LabelList,

    /// Labels of the service families: service, service_namespace.
    #[arg(long, default_value = "service", value_name = "LIST", value_parser = identity::parse_service_labels)]
    service_labels: identity::LabelList,

    /// Group that owns the output files (mode 0640), so e.g. node_exporter can
    /// read longconn.prom [default: prometheus if that group exists and this
    /// process may give files to it; otherwise the files keep their group].
    #[arg(long, value_name = "GROUP", value_parser = argvalues::group)]
    group: Option<GroupArg>,

    /// Make this state dir the one consumer of the pin dir's close records,
    /// replacing the one registered (which is refused from then on).
    #[arg(long)]
    take_over: bool,

    /// How long to wait for an overlapping collect before skipping this
    /// cycle (exit 0); a collect holding the lock for over 60 s is reported
    /// as stuck (exit 1).
    #[arg(long, default_value = "2s", value_name = "DURATION", value_parser = argvalues::duration)]
    lock_wait: Duration,
}

struct Dirs {
    textfile: PathBuf,
    log: PathBuf,
    state: PathBuf,
}

impl Dirs {
    fn from(a: &CollectArgs) -> Self {
        let pick = |o: &Option<PathBuf>, d: &str| {
            o.clone()
                .or_else(|| a.out_dir.clone())
                .unwrap_or_else(|| PathBuf::from(d))
        };
        Self {
            textfile: pick(&a.textfile_dir, DEFAULT_TEXTFILE_DIR),
            log: pick(&a.log_dir, DEFAULT_LOG_DIR),
            state: pick(&a.state_dir, DEFAULT_STATE_DIR),
        }
    }
}

/// Creates `dir` and any missing parent with exactly `mode` (not masked by
/// the umask: a textfile dir node_exporter cannot read is no use); existing
/// directories are left as they are. Returns its canonical path.
fn make_dir(dir: &Path, mode: u32) -> anyhow::Result<PathBuf> {
    mkdir_exact(dir, mode).with_context(|| format!("cannot create {}", dir.display()))?;
    fs::canonicalize(dir).with_context(|| format!("cannot resolve {}", dir.display()))
}

fn mkdir_exact(dir: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        mkdir_exact(parent, mode)?;
    }
    match fs::DirBuilder::new().mode(mode).create(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
        Ok(()) => {}
    }
    // Through an fd opened without following a symlink: the mode lands on
    // the directory just made, not on whatever replaced it. A non-root user
    // under umask 0777 cannot open the 0000 directory it just made: by path.
    let opened = fs::File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir);
    match opened {
        Ok(d) => d.set_permissions(fs::Permissions::from_mode(mode)),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        }
        Err(e) => Err(e),
    }
}

/// The append-only files this run writes (access logs, OTLP lines).
fn files(dirs: &Dirs, a: &CollectArgs) -> Vec<(AppendFile, AppendLog)> {
    let mut out: Vec<(AppendFile, AppendLog)> = Vec::new();
    let wanted = a
        .access_log
        .iter()
        .filter_map(|f| match f {
            AccessFormat::Csv => Some(AppendFile::AccessCsv),
            AccessFormat::Jsonl => Some(AppendFile::AccessJsonl),
            AccessFormat::None => None,
        })
        .chain(a.otlp.iter().filter_map(|k| match k {
            OtlpKind::Metrics => Some(AppendFile::OtlpMetrics),
            OtlpKind::Logs => Some(AppendFile::OtlpLogs),
            OtlpKind::None => None,
        }));
    for file in wanted {
        if out.iter().any(|(f, _)| *f == file) {
            continue; // listed twice
        }
        let log = AppendLog {
            path: dirs.log.join(file.name()),
            max_bytes: a.log_max_bytes,
            keep: a.log_keep,
            header: file.header(),
            mode: 0o640,
        };
        out.push((file, log));
    }
    out
}

fn now_unix_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

/// New totals (a counter reset) for the state dir `home`, keeping what
/// `logs` knows of the files: a reset never loses that knowledge, nor
/// cuts a file it does not have.
fn new_state(home: &str, logs: BTreeMap<String, Committed>) -> State {
    State {
        version: state::STATE_VERSION,
        boot_id: state::boot_id(),
        created_unix_ns: now_unix_ns(),
        home: home.to_owned(),
        logs,
        ..Default::default()
    }
}

/// The state's key for a file: its full path.
fn log_key(log: &AppendLog) -> String {
    log.path.to_string_lossy().into_owned()
}

pub fn run(pin_dir: &Path, a: &CollectArgs) -> anyhow::Result<ExitCode> {
    let t0 = Instant::now();
    crate::output::owner::choose(a.group.as_ref())?;
    let mut dirs = Dirs::from(a);
    dirs.state = make_dir(&dirs.state, 0o700)?;
    dirs.log = make_dir(&dirs.log, 0o750)?;
    dirs.textfile = make_dir(&dirs.textfile, 0o755)?;
    let files = files(&dirs, a);
    let home = dirs.state.to_string_lossy().into_owned();
    let lock_path = dirs.state.join("collect.lock");
    let Some(_lock) = lock::acquire(&lock_path, a.lock_wait)? else {
        eprintln!(
            "longconn-reader: another collect still holds {} after {:?}; skipping this cycle",
            lock_path.display(),
            a.lock_wait
        );
        return Ok(ExitCode::SUCCESS);
    };

    // A run killed mid-write leaves its temp files (the state's can be tens of MB).
    atomic::remove_stale_temps(&dirs.state, STATE_FILE);
    atomic::remove_stale_temps(&dirs.textfile, PROM_FILE);
    let state_path = dirs.state.join(STATE_FILE);
    let no_conns = || Prev::Mem(state::Conns::default());
    let (mut state, prev) = match state::load(&state_path, &home)? {
        LoadOutcome::Loaded(mut s, prev) if s.boot_id == state::boot_id() => {
            s.home.clone_from(&home);
            (*s, prev)
        }
        // Another boot: new totals; the files are still the ones it knew.
        LoadOutcome::Loaded(s, _) => (new_state(&home, s.logs), no_conns()),
        LoadOutcome::Fresh => (new_state(&home, BTreeMap::new()), no_conns()),
        LoadOutcome::SetAside(aside, why) => {
            eprintln!("longconn-reader: {} was unusable ({why}); kept it as {} and started new totals (a counter reset)", state_path.display(), aside.display());
            (new_state(&home, BTreeMap::new()), no_conns())
        }
    };
    // A run killed between its commit and publishing a new file.
    for (path, known) in &state.logs {
        applog::recover(Path::new(path), known)
            .with_context(|| format!("cannot publish {path}"))?;
    }
    let mut partial_failure = false;
    let mut relabel = false;
    if state.workload_labels != a.workload_labels.0 || state.service_labels != a.service_labels.0 {
        if !state.workload_labels.is_empty() {
            eprintln!("longconn-reader: group labels changed to workload [{}], service [{}]: group totals restart (a counter reset)", a.workload_labels.0.join(","), a.service_labels.0.join(","));
        }
        state.workloads.clear();
        state.services.clear();
        // The group totals restart: so does the exported start time.
        state.created_unix_ns = now_unix_ns().max(state.created_unix_ns + 1);
        state.workload_labels = a.workload_labels.0.clone();
        state.service_labels = a.service_labels.0.clone();
        // Every previous connection's group keys are recomputed as it is read.
        relabel = true;
    }
    let services = match &a.services {
        None => ServiceMap::default(),
        Some(path) => match ServiceMap::load(path) {
            Ok((map, text)) => {
                state.services_text = Some(text);
                map
            }
            Err(e) => {
                partial_failure = true;
                let kept = state
                    .services_text
                    .as_deref()
                    .and_then(|t| ServiceMap::parse(t, "last good map").ok());
                eprintln!(
                    "longconn-reader: {e}; {}",
                    if kept.is_some() {
                        "keeping the last good service map"
                    } else {
                        "no earlier good map: services stay address:port"
                    }
                );
                kept.unwrap_or_default()
            }
        },
    };
    let pins = Pins::open(pin_dir, Access::ReadWrite)?;
    register_consumer(pin_dir, pins.meta.pinned_at_ns, &home, a.take_over)?;
    let generation_changed = state.pin_generation != pins.meta.pinned_at_ns;

    if generation_changed {
        state.pin_generation = pins.meta.pinned_at_ns;
        state.ring_applied = 0;
        state.settling.clear();
    }
    // Closes applied from the map by the last commit leave it before it is
    // read again (that run deletes them too, unless it was killed first).
    for cookie in state::take_reaps(&mut state) {
        pins.remove(cookie)?;
    }

    // Map first, then ring: a connection closing in between is seen in both,
    // and the close wins; the other order could miss it in both. (The
    // kernel writes a close to the ring before deleting its map entry.)
    let clock = Clock::now();
    let (map, bad_map, refresh) = pins.connections_refreshed()?;
    let ring = pins.ring()?;
    let mut bad_ring = 0u64;
    let peeked = ring.peek(state.ring_applied);
    let (ring_read_to, ring_producer) = (peeked.read_to, peeked.producer);
    let ring_records: Vec<(ConnRecord, u64)> = peeked
        .records
        .into_iter()
        .filter_map(|r| match ConnRecord::decode(r.data) {
            Some(c) => Some((c, r.end_pos)),
            None => {
                bad_ring += 1;
                state.ring_applied = state.ring_applied.max(r.end_pos);
                None
            }
        })
        .collect();
    // Backstop for a second consumer the registry could not see: nobody
    // but this state releases records past its committed position.
    // A state new to these pins starts where the kernel's consumer is.
    let (released, _) = ring.positions();
    if generation_changed {
        state.ring_applied = state.ring_applied.max(released);
    } else if released > state.ring_applied {
        partial_failure = true;
        eprintln!(
            "longconn-reader: another collect released {} bytes of close records of {} since this state's last cycle (about {} closes, in its outputs, not here); run one collect per pin dir",
            released - state.ring_applied,
            pin_dir.display(),
            (released - state.ring_applied) / RING_RECORD_BYTES
        );
        state.ring_applied = released;
    }
    // The records are copied out: unmap the ring (both halves of its double
    // mapping are resident, 2x --ringbuf-bytes) for the memory-heavy part of
    // the cycle; it is mapped again to release what was applied.
    drop(ring);
    state.malformed_records += bad_map + bad_ring;

    let mut cgroup_names = std::mem::take(&mut state.cgroup_names);
    identity::resolve_cgroups(
        &mut cgroup_names,
        map.iter().chain(ring_records.iter().map(|(r, _)| r)),
    );
    let names = |r: &ConnRecord| {
        let id = identity::identify(r, &cgroup_names, &services);
        let (w, s) = (id.key(&a.workload_labels.0), id.key(&a.service_labels.0));
        (id, w, s)
    };
    let tracked = map.iter().filter(|r| !r.is_closed()).count() as u64;
    let resource = otlp::Resource {
        host_name: host_name(),
    };
    let now_ns = u64::try_from(clock.wall_ns).unwrap_or(0);

    // 1. Append this cycle's records to each file (a killed run's
    //    uncommitted tail is cut first where the state knows the file; see
    //    `applog`), streamed as the cycle makes them.
    let known: BTreeMap<AppendFile, Committed> = files
        .iter()
        .filter_map(|(f, log)| Some((*f, *state.logs.get(&log_key(log))?)))
        .collect();
    // The new state is written as the cycle goes: its live connections first.
    let mut saver = state::Saver::begin(&state_path, 0o600, &prev)?;
    let mut live = metrics::Live::new(
        a.max_connection_series,
        argvalues::nanos(a.long_threshold),
        clock.boot_ns,
    );
    let (outcome, mut written) = sink::with_sink(
        &files,
        &known,
        &resource,
        now_ns,
        OTLP_LOGS_PER_LINE,
        |emit| {
            cycle::apply(
                &mut state,
                cycle::Inputs {
                    now: clock,
                    map,
                    ring: ring_records,
                    ring_read_to,
                    ring_producer,
                    long_threshold_ns: argvalues::nanos(a.long_threshold),
                    short_close_records: !a.no_short_close_records,
                    names: &names,
                    relabel: relabel.then_some((&a.workload_labels.0, &a.service_labels.0)),
                    records: files.iter().any(|(f, _)| f.takes_events()),
                    idle_record_ns: argvalues::nanos(a.idle_record_interval),
                },
                &prev,
                &mut |cookie, c| {
                    live.add(c);
                    saver.push(cookie, c)
                },
                emit,
            )
        },
    )?;
    let outcome =
        outcome.with_context(|| format!("cannot read or write {}", state_path.display()))?;
    drop(prev);
    state.cgroup_names = cgroup_names;

    let counters = pins.counters()?;
    let stats = metrics::SelfStats {
        now_unix: chrono::Utc::now().timestamp_micros() as f64 / 1e6,
        cycle_seconds: t0.elapsed().as_secs_f64(),
        tracked,
        capacity: u64::from(pins.capacity()),
        ringbuf_drops: counters.ringbuf_full,
        map_full_drops: counters.map_full + counters.map_error,
        refresh_unreachable: (refresh.not_found, refresh.netns_unknown),
    };
    let families = metrics::families(&state, live, &stats);
    let saturated = metrics::lookup(&families, metrics::SATURATED_GROUPS, &Default::default());
    if let Some(n) = saturated.filter(|n| *n > 0.0) {
        eprintln!("longconn-reader: {n} workload/service groups have a summed counter at 2^64-1, held there instead of wrapping (see {})", metrics::SATURATED_GROUPS);
    }
    if let Some((file, log)) = files.iter().find(|(f, _)| *f == AppendFile::OtlpMetrics) {
        let group_start_ns = state.created_unix_ns.max(0) as u64;
        let line = otlp::metrics_request(&families, &resource, group_start_ns, now_ns);
        let mut tail = log.tail(known.get(file).copied());
        tail.buf().extend_from_slice(line.as_bytes());
        tail.buf().push(b'\n');
        if let Some(w) = tail
            .finish()
            .with_context(|| format!("cannot append to {}", log.path.display()))?
        {
            written.insert(*file, w);
        }
    }
    // 2. Commit point: totals, applied ring position and file positions at
    //    once. Files not written this cycle (a format switched off, another
    //    log dir) stay known while they are still there.
    state.logs.retain(|path, k| still_there(path, k));
    for (file, log) in &files {
        if let Some(w) = written.get(file) {
            state.logs.insert(log_key(log), w.pos);
        }
    }
    saver.commit(&state)?;
    for (file, log) in &files {
        if written.get(file).is_some_and(|w| w.created) {
            log.publish()
                .with_context(|| format!("cannot publish {}", log.path.display()))?;
        }
    }
    remove_legacy_state(&state_path)?;
    // 3. Only now release the kernel side: a run killed before this re-reads
    //    the same records and skips them by the committed ring position.
    pins.ring()?
        .commit(outcome.ring_commit)
        .with_context(|| format!("cannot release ring buffer {}", pins.dir.display()))?;
    for cookie in &outcome.map_deletes {
        pins.remove(*cookie)?;
    }
    let prom = dirs.textfile.join(PROM_FILE);
    atomic::write_atomic(&prom, promtext::encode(&families).as_bytes(), 0o640)
        .with_context(|| format!("cannot write {}", prom.display()))?;
    // 4. Rotate full files (only committed bytes move) and record it.
    let mut rotated = false;
    for (_, log) in &files {
        let key = log_key(log);
        let Some(&pos) = state.logs.get(&key) else {
            continue;
        };
        let after = log
            .rotate_if_full(pos)
            .with_context(|| format!("cannot rotate {}", log.path.display()))?;
        if after != Some(pos) {
            rotated = true;
            state.logs.remove(&key);
        }
    }
    if rotated {
        state::resave(&state_path, &state, 0o600)?;
    }
    Ok(if partial_failure {
        ExitCode::from(crate::exit::FAILURE)
    } else {
        ExitCode::SUCCESS
    })
}

/// Bytes one close record takes in the ring (header included), for messages.
const RING_RECORD_BYTES: u64 = 192;

/// Registers `home` as the one consumer of `pin_dir`'s close records, or
/// fails naming the registered one (see `consumer`).
fn register_consumer(
    pin_dir: &Path,
    generation: u64,
    home: &str,
    take_over: bool,
) -> anyhow::Result<()> {
    let canonical = fs::canonicalize(pin_dir).unwrap_or_else(|_| pin_dir.to_owned());
    let me = consumer::Record {
        pin_dir: canonical.to_string_lossy().into_owned(),
        pinned_at_ns: generation,
        state_dir: home.to_owned(),
    };
    match consumer::register(Path::new(consumer::REGISTRY_DIR), &me, take_over)? {
        consumer::Registered::Yes => {}
        consumer::Registered::TookOver(prev) => eprintln!(
            "longconn-reader: {home} is now the consumer of {}'s close records (was {prev}, which is refused from now on)",
            me.pin_dir
        ),
        consumer::Registered::Unavailable(why) => eprintln!(
            "longconn-reader: cannot register as the one consumer of {} ({why}); a second collect on this pin dir would not be refused",
            me.pin_dir
        ),
    }
    Ok(())
}

/// Whether the file a state entry knows is still at its path (else the
/// entry is dropped at the next commit).
fn still_there(path: &str, k: &Committed) -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(path).is_ok_and(|m| m.dev() == k.dev && m.ino() == k.ino)
}

/// Removes a migrated v2 `state.json` once the binary state is saved.
fn remove_legacy_state(state_path: &Path) -> anyhow::Result<()> {
    let legacy = state::legacy_path(state_path);
    match fs::remove_file(&legacy) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove migrated {}", legacy.display()))
        }
        _ => Ok(()),
    }
}

fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// OTLP log requests hold at most this many records, so a burst of closes
/// gives several bounded lines rather than one huge one.
const OTLP_LOGS_PER_LINE: usize = 1000;
