//! `collect`: one reader cycle, then exit. Run every 5 s by a systemd timer.
//!
//! A cycle runs these phases, in this order (`run`):
//! 1. prepare: directories, the lock, the state, the pins (this state their
//!    one consumer), closes applied from the map last cycle deleted;
//! 2. read kernel: the refreshed connection map, then the ring's closes;
//! 3. account: the totals (`cycle`), each access record appended to the
//!    logs as it is made, each live connection to the new state; series
//!    unseen for `--series-ttl` retired, close totals of gone cgroups
//!    deleted from the kernel and the state (`retire`);
//! 4. write uncommitted: the metric snapshot, as the OTLP metrics line and
//!    as longconn.prom's text;
//! 5. commit: the state file, with the ring position and file positions;
//! 6. release: ring space and the map's applied closes, back to the kernel;
//! 7. publish: longconn.prom;
//! 8. rotate: full logs move aside.
//!
//! Exactly-once, even if killed at any instant: nothing is released before
//! the commit; appended bytes past a file's committed length are cut by the
//! next run (`applog`), and what the kernel still holds is applied once by
//! position and by `State::settling`.

mod closetotals;
mod consumer;
mod cycle;
mod lock;
mod metrics;
mod retire;
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
use longconn_common::{exit::Exit, pinned::Access, ConnRecord, Pins};

use self::state::{LoadOutcome, Prev, State};
use crate::{
    argvalues::{self, AccessFormat, GroupArg, OtlpKind},
    clock::Clock,
    identity,
    output::{
        applog::{self, AppendLog, Committed},
        atomic,
        logowner::{self, LogOwner},
        otlp, promtext,
        snapshot::table::SATURATED_GROUPS,
        AppendFile,
    },
    runtime,
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

    /// A workload or service series with no live connection and no change
    /// for this long leaves longconn.prom, the OTLP metrics and the state;
    /// if it comes back, its counters start again from 0 with a new start
    /// time. 1h: longer than Prometheus's usual rate() windows and alert
    /// `for:` durations, so a series never vanishes while a query still
    /// looks at its last change, and an hourly job keeps one series.
    #[arg(long, default_value = "1h", value_name = "DURATION", value_parser = argvalues::series_ttl)]
    series_ttl: Duration,

    /// Export at most this many per-connection series (busiest first); the rest
    /// are counted in longconn_reader_connection_series_omitted.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    max_connection_series: usize,

    /// Service map (CSV: cidr,ports,name,namespace; first match wins), reread
    /// every cycle. A bad file is reported (file:line) and the last good map
    /// stays in force. Names apply to connections first seen after a change.
    #[arg(long, value_name = "FILE")]
    services: Option<PathBuf>,

    /// Labels of the workload families: workload (namespace/pod, container or
    /// unit name, else cgroup path), container_id, pod_uid, namespace, pod,
    /// container, comm, netns. Each adds series: see README, "Labels and cardinality".
    #[arg(long, default_value = "workload", value_name = "LIST", value_parser = identity::parse_workload_labels)]
    workload_labels: identity::LabelList,

    #[command(flatten)]
    runtime: runtime::RootArg,

    #[command(flatten)]
    cni: crate::cni::ResultsArg,

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
            owner: None,
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

/// What one cycle carries from phase to phase.
struct Cycle<'a> {
    a: &'a CollectArgs,
    pin_dir: &'a Path,
    started: Instant,
    dirs: Dirs,
    files: Vec<(AppendFile, AppendLog)>,
    state_path: PathBuf,
    state: State,
    /// Last cycle's connections, read back as this one goes.
    prev: Prev,
    services: ServiceMap,
    /// The label selections changed: every group key is recomputed.
    relabel: bool,
    /// Something went wrong that did not stop the cycle (exit 1 at the end).
    partial_failure: bool,
    /// The pins are new to this state (another pin generation).
    new_generation: bool,
    /// The state is new (first run or a counter reset): it knows no pins.
    fresh_state: bool,
    /// This state dir was the registered consumer of the pins before this
    /// cycle: nobody else released their ring space.
    was_consumer: bool,
    /// This state dir took the pins over (`--take-over`): the previous
    /// consumer released what it applied; this state starts where it left.
    took_over: bool,
}

/// What the kernel holds now.
struct KernelRead {
    clock: Clock,
    /// Live records (and closes the ring could not take), refreshed.
    map: Vec<ConnRecord>,
    /// Close records past the applied position, with the position after each.
    ring: Vec<(ConnRecord, u64)>,
    ring_read_to: u64,
    ring_producer: u64,
    refresh: longconn_common::pinned::RefreshStats,
    /// The kernel's close totals, read first.
    totals: closetotals::Read,
}

/// What the cycle made and wrote, not yet committed.
struct Accounted {
    outcome: cycle::Outcome,
    written: BTreeMap<AppendFile, applog::Written>,
    saver: Option<state::Saver>,
    /// The live sums and the reader's own figures, until the snapshot.
    metrics: Option<(metrics::Live, metrics::SelfStats)>,
    /// longconn.prom's text, published after the release.
    prom_text: String,
    /// When the kernel was read (Unix ns): the time of every data point.
    now_ns: u64,
}

/// One cycle, phase by phase (see the module doc).
pub fn run(pin_dir: &Path, a: &CollectArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let Some((mut cy, _lock)) = prepare(pin_dir, a, started)? else {
        return Ok(ExitCode::SUCCESS);
    };
    let mut kernel_side = || -> anyhow::Result<()> {
        // Held until the ring space is released (see `consumer`).
        let (pins, _consumer) = open_pins(&mut cy)?;
        let read = read_kernel(&mut cy, &pins)?;
        let mut done = account(&mut cy, &pins, read)?;
        write_metrics_uncommitted(&cy, &mut done)?;
        commit(&mut cy, &mut done)?;
        release(&pins, &done.outcome)?;
        publish(&cy, &done.prom_text)?;
        rotate(&mut cy)
    };
    kernel_side().map_err(|e| detached_during(pin_dir, e))?;
    Ok(if cy.partial_failure {
        Exit::Failed.into()
    } else {
        ExitCode::SUCCESS
    })
}

/// An error once the pins were found: if some pin is gone now (a `detach`
/// ran during this cycle and removed pins under it), the cause is "not
/// pinned" (exit 6), not the ENOENT it surfaced as (exit 1).
fn detached_during(pin_dir: &Path, e: anyhow::Error) -> anyhow::Error {
    use longconn_common::{pins, PinnedError};
    let named = e.chain().any(|c| {
        c.downcast_ref::<PinnedError>()
            .is_some_and(|p| p.exit() != Exit::Failed)
    });
    let complete = pins::MAPS
        .iter()
        .all(|(_, name)| pin_dir.join(name).exists())
        && pin_dir.join(pins::REFRESH).exists();
    if named || complete {
        return e;
    }
    anyhow::Error::new(PinnedError::NotPinned {
        dir: pin_dir.to_owned(),
    })
    .context("the pins were removed while this cycle ran (longconn-pin detach?)")
}

/// Prepare: directories, the lock (None: another collect holds it, skip
/// this cycle), the state (or new totals), files a killed run left to
/// publish, label and service-map changes.
fn prepare<'a>(
    pin_dir: &'a Path,
    a: &'a CollectArgs,
    started: Instant,
) -> anyhow::Result<Option<(Cycle<'a>, fs::File)>> {
    crate::output::owner::choose(a.group.as_ref())?;
    let mut dirs = Dirs::from(a);
    // The most open first: one --out-dir holding all three stays readable
    // by node_exporter (the output --group) for longconn.prom.
    dirs.textfile = make_dir(&dirs.textfile, 0o755)?;
    dirs.log = make_dir(&dirs.log, 0o750)?;
    dirs.state = make_dir(&dirs.state, 0o700)?;
    let mut files = files(&dirs, a);
    refuse_unsafe_places(&dirs, a, &files)?;
    let home = dirs.state.to_string_lossy().into_owned();
    let lock_path = dirs.state.join("collect.lock");
    let Some(held) = lock::acquire(&lock_path, a.lock_wait)? else {
        eprintln!(
            "longconn-reader: another collect still holds {} after {:?}; skipping this cycle",
            lock_path.display(),
            a.lock_wait
        );
        return Ok(None);
    };
    // A run killed mid-write leaves its temp files (the state's can be tens of MB).
    // Only a holder of this lock writes state temps: any left is stale,
    // whatever its pid (a pid can be reused). The textfile dir may be
    // another state dir's too: there, only temps of dead pids.
    atomic::remove_stale_temps(&dirs.state, STATE_FILE, true);
    atomic::remove_stale_temps(&dirs.textfile, PROM_FILE, false);
    if !files.is_empty() {
        let owner = claim_log_dir(&dirs.log, &home, a)?;
        for (_, log) in &mut files {
            log.owner = Some(owner.clone());
        }
    }
    let state_path = dirs.state.join(STATE_FILE);
    let no_conns = || Prev::Mem(state::Conns::default());
    let (state, prev) = match state::load(&state_path, &home)? {
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
    let mut cy = Cycle {
        a,
        pin_dir,
        started,
        files,
        dirs,
        state_path,
        state,
        prev,
        services: ServiceMap::default(),
        relabel: false,
        partial_failure: false,
        new_generation: false,
        fresh_state: false,
        was_consumer: false,
        took_over: false,
    };
    relabel_if_changed(&mut cy);
    cy.services = load_services(&mut cy);
    add_cni_peers(&mut cy);
    Ok(Some((cy, held)))
}

/// Refuses, before anything is written there, a directory another user
/// could rearrange and an existing output file this user did not create
/// (see `fsperm`).
fn refuse_unsafe_places(
    dirs: &Dirs,
    a: &CollectArgs,
    files: &[(AppendFile, AppendLog)],
) -> anyhow::Result<()> {
    let what = |o: &Option<PathBuf>, name: &'static str| {
        if o.is_none() && a.out_dir.is_some() {
            "--out-dir"
        } else {
            name
        }
    };
    crate::fsperm::check_dir(&dirs.state, what(&a.state_dir, "--state-dir"))?;
    crate::fsperm::check_dir(&dirs.log, what(&a.log_dir, "--log-dir"))?;
    crate::fsperm::check_dir(&dirs.textfile, what(&a.textfile_dir, "--textfile-dir"))?;
    for name in ["collect.lock", STATE_FILE, "state.journal"] {
        crate::fsperm::check_file(&dirs.state.join(name))?;
    }
    if !files.is_empty() {
        crate::fsperm::check_file(&dirs.log.join(logowner::OWNER_FILE))?;
    }
    for (_, log) in files {
        crate::fsperm::check_file(&log.path)?;
        crate::fsperm::check_file(&applog::hidden_path(&log.path))?;
    }
    Ok(())
}

/// Makes this state dir the one owner of the log dir for this cycle (see
/// `logowner`), or fails naming the owner.
fn claim_log_dir(
    log_dir: &Path,
    home: &str,
    a: &CollectArgs,
) -> anyhow::Result<std::sync::Arc<LogOwner>> {
    let (owner, claimed) = LogOwner::claim(log_dir, home, a.take_over, a.lock_wait)?;
    if let logowner::Claimed::TookOver(prev) = claimed {
        eprintln!(
            "longconn-reader: {home} is now the owner of log dir {} (was {prev}, which is refused from now on)",
            log_dir.display()
        );
    }
    Ok(std::sync::Arc::new(owner))
}

/// New label selections restart the group totals (a counter reset).
fn relabel_if_changed(cy: &mut Cycle<'_>) {
    let (a, state) = (cy.a, &mut cy.state);
    if state.workload_labels == a.workload_labels.0 && state.service_labels == a.service_labels.0 {
        return;
    }
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
    cy.relabel = true;
}

/// Same-node pods named from CNI state, after the service map's rules
/// (`cni`); a warning never fails the cycle.
fn add_cni_peers(cy: &mut Cycle<'_>) {
    let Some(dir) = cy.a.cni.dir(&cy.a.runtime.runtime_root) else {
        return;
    };
    let roots = cy.a.runtime.roots();
    if let Some(w) = crate::cni::add_peers(
        &mut cy.services,
        &dir,
        cy.a.cni.explicit(),
        &roots,
        Some(&cy.dirs.state),
    ) {
        eprintln!("longconn-reader: {w}");
    }
}

/// Where `collect` keeps the last good service map, in its state directory.
/// Apart from `state.bin`, whose head every cycle's journal entry rewrites:
/// a peer map of a large cluster (about 1 MiB) would be written again every
/// 5 s. This file is written only when the map's text changes.
pub const LAST_GOOD_SERVICES: &str = "services.last-good";

/// The service map; a bad file keeps the last good one (and exit 1).
fn load_services(cy: &mut Cycle<'_>) -> ServiceMap {
    let Some(path) = &cy.a.services else {
        return ServiceMap::default();
    };
    let kept_path = cy.dirs.state.join(LAST_GOOD_SERVICES);
    match ServiceMap::load(path) {
        Ok((map, text)) => {
            // A state written before this file existed carried the text.
            cy.state.services_text = None;
            let same = crate::servicemap::read_regular(&kept_path).is_ok_and(|t| t == text);
            if !same {
                if let Err(e) =
                    crate::output::atomic::write_atomic(&kept_path, text.as_bytes(), 0o600)
                {
                    eprintln!(
                        "longconn-reader: {}: cannot keep the last good service map ({e}); a bad map later would leave services as address:port",
                        kept_path.display()
                    );
                }
            }
            map
        }
        Err(e) => {
            cy.partial_failure = true;
            let text = crate::servicemap::read_regular(&kept_path)
                .ok()
                .or_else(|| cy.state.services_text.clone());
            let kept = text
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
    }
}

/// Prepare, kernel side: the pins, this state registered as their one
/// consumer, a new pin generation noticed, and closes applied from the map
/// by the last commit deleted before the map is read again (that run
/// deletes them too, unless it was killed first).
fn open_pins(cy: &mut Cycle<'_>) -> anyhow::Result<(Pins, Option<fs::File>)> {
    let pins = Pins::open(cy.pin_dir, Access::ReadWrite)?;
    let home = cy.state.home.clone();
    let (registered, held) = register_consumer(
        cy.pin_dir,
        pins.meta.pinned_at_ns,
        &home,
        cy.a.take_over,
        cy.a.lock_wait,
    )?;
    cy.was_consumer = registered == consumer::Registered::Already;
    if let Some((_, log)) = cy.files.first() {
        if let Some(o) = &log.owner {
            o.set_pins(pins.meta.pinned_at_ns);
        }
    }
    cy.took_over = matches!(registered, consumer::Registered::TookOver(_));
    if cy.took_over {
        // The previous consumer applied every close since this state's last
        // cycle (and closed what vanished): this state's connections and
        // totals are stale. New totals (a counter reset), the files kept.
        let services_text = cy.state.services_text.take();
        cy.state = new_state(&home, std::mem::take(&mut cy.state.logs));
        cy.state.services_text = services_text;
        cy.prev = Prev::Mem(state::Conns::default());
        relabel_if_changed(cy);
    }
    let state = &mut cy.state;
    cy.new_generation = state.pin_generation != pins.meta.pinned_at_ns;
    cy.fresh_state = state.pin_generation == 0;
    if cy.new_generation {
        state.pin_generation = pins.meta.pinned_at_ns;
        state.ring_applied = 0;
        state.settling.clear();
        // The new pins' close totals start from zero.
        state.close_totals.clear();
    }
    pins.remove_all(&state::take_reaps(state))?;
    Ok((pins, held))
}

/// Read kernel: the refreshed map, then the ring. Map first: a connection
/// closing in between is seen in both, and the close wins; the other order
/// could miss it in both. (The kernel writes a close to the ring before
/// deleting its map entry.)
fn read_kernel(cy: &mut Cycle<'_>, pins: &Pins) -> anyhow::Result<KernelRead> {
    let state = &mut cy.state;
    let clock = Clock::now();
    // The close totals first: every close they do not hold has its record
    // in what is read after them, or is still live (see closetotals).
    let totals = closetotals::Read::new(pins.close_totals()?);
    let (map, bad_map, refresh) = pins.connections_refreshed()?;
    let ring = pins.ring()?;
    let mut bad_ring = 0u64;
    let peeked = ring.peek(state.ring_applied);
    let (ring_read_to, ring_producer) = (peeked.read_to, peeked.producer);
    let records: Vec<(ConnRecord, u64)> = peeked
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
    if cy.new_generation || cy.took_over {
        state.ring_applied = state.ring_applied.max(released);
        // A new state on pins another reader has consumed from (a counter
        // reset, or a take-over: the previous consumer counted the closes
        // so far): its totals start now, so the kernel's close totals so
        // far are its starting point, as the ring's consumer position is.
        if cy.took_over || (cy.fresh_state && released > 0) {
            closetotals::adopt(state, &totals);
        }
    } else if released > state.ring_applied && cy.was_consumer {
        // This state dir alone consumed the pins: this state is older than
        // what it committed (a restored or copied-back state.bin).
        cy.partial_failure = true;
        eprintln!(
            "longconn-reader: {} is older than what this state dir already consumed from {}: {} bytes of close records (about {} closes) were applied by a later commit, and their records are in the logs and kept (state.bin restored from a backup or copied back?); totals restart from this state (a counter reset)",
            cy.state_path.display(),
            cy.pin_dir.display(),
            released - state.ring_applied,
            (released - state.ring_applied) / RING_RECORD_BYTES
        );
        state.ring_applied = released;
        state.created_unix_ns = now_unix_ns().max(state.created_unix_ns + 1);
    } else if released > state.ring_applied {
        cy.partial_failure = true;
        eprintln!(
            "longconn-reader: another collect released {} bytes of close records of {} since this state's last cycle (about {} closes, in its outputs, not here); run one collect per pin dir",
            released - state.ring_applied,
            cy.pin_dir.display(),
            (released - state.ring_applied) / RING_RECORD_BYTES
        );
        state.ring_applied = released;
    }
    // The records are copied out: unmap the ring (both halves of its double
    // mapping are resident, 2x --ringbuf-bytes) for the memory-heavy part of
    // the cycle; it is mapped again to release what was applied.
    drop(ring);
    state.malformed_records += bad_map + bad_ring;
    let keys = totals.key_records();
    identity::resolve_cgroups(
        &mut state.cgroups,
        map.iter()
            .chain(records.iter().map(|(r, _)| r))
            .chain(keys.iter()),
        &cy.a.runtime.roots(),
        &|ids| captured_paths(pins, ids),
    );
    Ok(KernelRead {
        clock,
        map,
        ring: records,
        ring_read_to,
        ring_producer,
        refresh,
        totals,
    })
}

/// The paths the kernel captured for cgroups `ids` (a failed read names
/// them `cgroup:<id>`, with one line saying why).
pub(crate) fn captured_paths(
    pins: &Pins,
    ids: &std::collections::BTreeSet<u64>,
) -> std::collections::HashMap<u64, Vec<u8>> {
    pins.cgroup_paths(ids.iter().copied()).unwrap_or_else(|e| {
        eprintln!("longconn-reader: cannot read the captured cgroup names ({e}); {} cgroups gone before this cycle are named cgroup:<id>", ids.len());
        Default::default()
    })
}

/// Account: apply the read to the totals (`cycle::apply`); each access
/// record is appended to the logs as it is made (uncommitted: a killed
/// run's tail is cut by the next one, see `applog`), each live connection
/// to the new state; then this cycle's metric families.
fn account(cy: &mut Cycle<'_>, pins: &Pins, read: KernelRead) -> anyhow::Result<Accounted> {
    let a = cy.a;
    let tracked = read.map.iter().filter(|r| !r.is_closed()).count() as u64;
    let resource = otlp::Resource {
        host_name: host_name(),
    };
    let now_ns = u64::try_from(read.clock.wall_ns).unwrap_or(0);
    let known = known_files(cy);
    premark(cy, &known)?;
    let mut saver = state::Saver::begin(&cy.state_path, 0o600, &cy.prev)?;
    let mut live = metrics::Live::new(
        a.max_connection_series,
        argvalues::nanos(a.long_threshold),
        read.clock.boot_ns,
    );
    let before = retire::Before::of(&cy.state);
    let mut live_cgroups = retire::LiveCgroups::default();
    let cgroups = std::mem::take(&mut cy.state.cgroups);
    let services = &cy.services;
    let identifier = identity::Identifier::new(&cgroups, services);
    let names = |r: &ConnRecord| {
        let id = identifier.identify(r);
        let (w, s) = (id.key(&a.workload_labels.0), id.key(&a.service_labels.0));
        (id, w, s)
    };
    let (outcome, written) = sink::with_sink(
        &cy.files,
        &known,
        &resource,
        now_ns,
        OTLP_LOGS_PER_LINE,
        |emit| {
            cycle::apply(
                &mut cy.state,
                cycle::Inputs {
                    now: read.clock,
                    map: read.map,
                    ring: read.ring,
                    ring_read_to: read.ring_read_to,
                    ring_producer: read.ring_producer,
                    long_threshold_ns: argvalues::nanos(a.long_threshold),
                    short_close_records: !a.no_short_close_records,
                    names: &names,
                    cgroups: &cgroups,
                    relabel: cy
                        .relabel
                        .then_some((&a.workload_labels.0, &a.service_labels.0)),
                    records: cy.files.iter().any(|(f, _)| f.takes_events()),
                    idle_record_ns: argvalues::nanos(a.idle_record_interval),
                    totals: Some(&read.totals),
                },
                &cy.prev,
                &mut |kept| match kept {
                    cycle::Kept::Live(cookie, prev, c) => {
                        live.add(c);
                        live_cgroups.add(c.cgroup_id);
                        saver.put(cookie, prev, c)
                    }
                    cycle::Kept::Gone(cookie) => saver.gone(cookie),
                },
                emit,
            )
        },
    )?;
    let outcome =
        outcome.with_context(|| format!("cannot read or write {}", cy.state_path.display()))?;
    cy.prev = Prev::Mem(state::Conns::default());
    cy.state.cgroups = cgroups;
    retire_gone(
        cy,
        pins,
        &before,
        &live.sums,
        &live_cgroups,
        read.clock.wall_ns,
    )?;

    let counters = pins.counters()?;
    let stats = metrics::SelfStats {
        now_unix: chrono::Utc::now().timestamp_micros() as f64 / 1e6,
        cycle_seconds: cy.started.elapsed().as_secs_f64(),
        tracked,
        capacity: u64::from(pins.capacity()),
        ringbuf_drops: counters.ringbuf_full,
        map_full_drops: counters.map_full + counters.map_error,
        // Lost closes (missing from the close totals too: that map full)
        // are unlogged as well; `longconn-pin status` tells them apart.
        close_records_unlogged: counters.close_unlogged + counters.close_lost,
        refresh_unreachable: (read.refresh.not_found, read.refresh.netns_unknown),
    };
    Ok(Accounted {
        outcome,
        written,
        saver: Some(saver),
        metrics: Some((live, stats)),
        prom_text: String::new(),
        now_ns,
    })
}

/// Retire (part of account): series unseen for `--series-ttl` leave the
/// state, close totals of gone cgroups leave the kernel and the state
/// (deleted now, before the commit: the committed state holds all of
/// them, see `retire`), then names nothing refers to.
fn retire_gone(
    cy: &mut Cycle<'_>,
    pins: &Pins,
    before: &retire::Before,
    live: &cycle::LiveSums,
    live_cgroups: &retire::LiveCgroups,
    now_unix_ns: i128,
) -> anyhow::Result<()> {
    let now = i64::try_from(now_unix_ns).unwrap_or(i64::MAX);
    let ttl = argvalues::nanos(cy.a.series_ttl);
    retire::series(&mut cy.state, before, live, now, ttl);
    let dead = retire::dead_keys(&mut cy.state, before, live_cgroups, identity::gone_cgroups);
    pins.remove_close_totals(&dead)
        .context("cannot delete the close totals of gone cgroups; nothing was committed")?;
    retire::cgroups(&mut cy.state, live_cgroups);
    Ok(())
}

/// Marks every file pending from where this cycle's appends start, with
/// one sync of the log dir's owner record for all of them (see `logowner`).
fn premark(cy: &Cycle<'_>, known: &BTreeMap<AppendFile, Committed>) -> anyhow::Result<()> {
    let mut owner = None;
    for (file, log) in &cy.files {
        log.premark(known.get(file).copied())
            .with_context(|| format!("cannot mark {} in its log dir", log.path.display()))?;
        owner = owner.or(log.owner.as_ref());
    }
    if let Some(o) = owner {
        o.sync().context("cannot sync the log dir's owner record")?;
    }
    Ok(())
}

/// What the state knows of each file this run writes.
fn known_files(cy: &Cycle<'_>) -> BTreeMap<AppendFile, Committed> {
    cy.files
        .iter()
        .filter_map(|(f, log)| Some((*f, *cy.state.logs.get(&log_key(log))?)))
        .collect()
}

/// Write uncommitted: this cycle's metric snapshot as longconn.prom's text
/// (published after the release) and as the OTLP metrics line (straight
/// into its file's buffer). Both are made now: the snapshot borrows the
/// state, which the commit changes.
fn write_metrics_uncommitted(cy: &Cycle<'_>, done: &mut Accounted) -> anyhow::Result<()> {
    let Some((live, stats)) = done.metrics.take() else {
        return Ok(());
    };
    let (snapshot, saturated) = metrics::snapshot(&cy.state, live, &stats);
    if saturated > 0 {
        eprintln!("longconn-reader: {saturated} workload/service groups have a summed counter at 2^64-1, held there instead of wrapping (see {})", SATURATED_GROUPS.desc().name);
    }
    done.prom_text = promtext::encode(&snapshot);
    let Some((file, log)) = cy.files.iter().find(|(f, _)| *f == AppendFile::OtlpMetrics) else {
        return Ok(());
    };
    let resource = otlp::Resource {
        host_name: host_name(),
    };
    let mut tail = log.tail(known_files(cy).get(file).copied());
    otlp::write_metrics_request(tail.buf(), &snapshot, &resource, done.now_ns);
    tail.buf().push(b'\n');
    if let Some(w) = tail
        .finish()
        .with_context(|| format!("cannot append to {}", log.path.display()))?
    {
        done.written.insert(*file, w);
    }
    Ok(())
}

/// Commit: totals, the applied ring position and file positions at once
/// (the state file's rename); then files new this cycle are published.
/// Files not written this cycle (a format switched off, another log dir)
/// stay known while they are still there.
fn commit(cy: &mut Cycle<'_>, done: &mut Accounted) -> anyhow::Result<()> {
    let state = &mut cy.state;
    state.logs.retain(|path, k| still_there(path, k));
    for (file, log) in &cy.files {
        if let Some(w) = done.written.get(file) {
            state.logs.insert(log_key(log), w.pos);
        }
    }
    if let Some(saver) = done.saver.take() {
        saver.commit(state)?;
    }
    // What the commit made is marked committed in the log dir: an older
    // state (restored, copied) never cuts it. On a failure nothing is
    // released: the mark stays pending from the previous length, which
    // this state (it knows the new one) never cuts, and whatever cuts it
    // (a reset state) finds the records still in the kernel.
    for (file, log) in &cy.files {
        if let Some(w) = done.written.get(file) {
            log.mark_committed(&w.pos).with_context(|| {
                format!(
                    "cannot mark {} committed in its log dir's {}; nothing was released",
                    log.path.display(),
                    logowner::OWNER_FILE
                )
            })?;
        }
    }
    for (file, log) in &cy.files {
        if done.written.get(file).is_some_and(|w| w.created) {
            log.publish()
                .with_context(|| format!("cannot publish {}", log.path.display()))?;
        }
    }
    remove_legacy_state(&cy.state_path)
}

/// Release: only now the kernel side: ring space and the closes applied
/// from the map. A run killed before this reads the same records again and
/// skips them (the committed ring position; `State::settling`).
fn release(pins: &Pins, outcome: &cycle::Outcome) -> anyhow::Result<()> {
    pins.ring()?
        .commit(outcome.ring_commit)
        .with_context(|| format!("cannot release ring buffer {}", pins.dir.display()))?;
    pins.remove_all(&outcome.map_deletes)?;
    Ok(())
}

/// Publish: longconn.prom for node_exporter, atomically.
fn publish(cy: &Cycle<'_>, prom_text: &str) -> anyhow::Result<()> {
    let prom = cy.dirs.textfile.join(PROM_FILE);
    atomic::write_atomic(&prom, prom_text.as_bytes(), 0o640)
        .with_context(|| format!("cannot write {}", prom.display()))
}

/// Rotate: full files move aside (only committed bytes), recorded in the
/// state.
fn rotate(cy: &mut Cycle<'_>) -> anyhow::Result<()> {
    let mut rotated = false;
    for (_, log) in &cy.files {
        let key = log_key(log);
        let Some(&pos) = cy.state.logs.get(&key) else {
            continue;
        };
        let after = log
            .rotate_if_full(pos)
            .with_context(|| format!("cannot rotate {}", log.path.display()))?;
        if after != Some(pos) {
            rotated = true;
            cy.state.logs.remove(&key);
        }
    }
    if rotated {
        state::resave(&cy.state_path, &cy.state, 0o600)?;
    }
    Ok(())
}

/// Bytes one close record takes in the ring (header included), for messages.
const RING_RECORD_BYTES: u64 = 8 + ConnRecord::SIZE as u64;

/// Registers `home` as the one consumer of `pin_dir`'s close records, or
/// fails naming the registered one (see `consumer`).
fn register_consumer(
    pin_dir: &Path,
    generation: u64,
    home: &str,
    take_over: bool,
    wait: Duration,
) -> anyhow::Result<(consumer::Registered, Option<fs::File>)> {
    let canonical = fs::canonicalize(pin_dir).unwrap_or_else(|_| pin_dir.to_owned());
    let me = consumer::Record {
        pin_dir: canonical.to_string_lossy().into_owned(),
        pinned_at_ns: generation,
        state_dir: home.to_owned(),
    };
    let (registered, held) =
        consumer::register(Path::new(consumer::REGISTRY_DIR), &me, take_over, wait)?;
    match &registered {
        consumer::Registered::Yes | consumer::Registered::Already => {}
        consumer::Registered::TookOver(prev) => eprintln!(
            "longconn-reader: {home} is now the consumer of {}'s close records (was {prev}, which is refused from now on); its totals restart (a counter reset)",
            me.pin_dir
        ),
        consumer::Registered::Unavailable(why) => eprintln!(
            "longconn-reader: cannot register as the one consumer of {} ({why}); a second collect on this pin dir would not be refused",
            me.pin_dir
        ),
    }
    Ok((registered, held))
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
