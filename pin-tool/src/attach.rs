//! Load, attach and pin, all or nothing.
//!
//! Everything is pinned into a staging directory beside the pin dir and renamed
//! into place last, so a failure (or a kill) at any step leaves either the old
//! state or the complete new one. Links not yet pinned die with this process;
//! a staging dir left by a killed run is removed by the next run.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use aya::{
    maps::{Array, MapData},
    programs::{
        links::FdLink, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, SchedClassifier, SockOps,
        TracePoint,
    },
    Ebpf, EbpfLoader,
};
use longconn_common::{
    caps,
    hooks::{AttachKind, HOOKS, REFRESH_PROGRAM},
    layout::{self, ConnRecord, Meta},
    mounts, pins, units,
};

use longconn_common::exit::{coded, Exit};

use crate::{hooks, repin, validate};

#[derive(Debug, clap::Args)]
pub struct AttachArgs {
    /// cgroup v2 directory whose subtree is tracked [default: the cgroup v2 mount
    /// root found in /proc/mounts, i.e. the whole host].
    #[arg(long, value_name = "CGROUP_V2_DIR")]
    cgroup: Option<PathBuf>,

    /// Capacity of the live-connection map. Connections beyond it are not
    /// tracked but counted (see `status`); memory is used only for live entries.
    #[arg(long, default_value_t = 131_072, value_name = "N", value_parser = validate::max_connections)]
    max_connections: u32,

    /// Ring buffer for close records (the access log's): a power of two, at
    /// least one page [default: 8MiB, about 40 000 closes, 8 000 closes/s
    /// between two 5 s cycles; or derived from --closes-per-second]. Closes
    /// beyond it are still in every metric (close totals); their records wait
    /// in an overflow map when a reader has seen the connection or it is
    /// long, and are otherwise counted as unlogged.
    #[arg(long, value_name = "SIZE", value_parser = |s: &str| units::parse_size(s).map_err(|e| e.to_string()))]
    ringbuf_bytes: Option<u64>,

    /// Size the close-record ring for this many closes per second (both ends
    /// of a local connection count): room for two 5 s cycles of them, at
    /// least the 8MiB default. Instead of --ringbuf-bytes.
    #[arg(long, value_name = "N", conflicts_with = "ringbuf_bytes")]
    closes_per_second: Option<u64>,

    #[arg(long, default_value = "default", value_name = "LIST", value_parser = hooks::parse, help = hooks::help())]
    hooks: u32,

    /// Let members of GROUP read the maps (for a reader running without root,
    /// with CAP_BPF): pin dir 0750, maps 0660. Default: root only (0700/0600).
    #[arg(long, value_name = "GROUP")]
    group: Option<String>,
}

/// A program attached and turned into a link, waiting to be pinned.
struct Attached {
    name: &'static str,
    link: FdLink,
}

pub fn run(pin_dir: &Path, args: &AttachArgs) -> anyhow::Result<ExitCode> {
    let missing = caps::missing(&[
        (caps::CAP_BPF, "CAP_BPF"),
        (caps::CAP_PERFMON, "CAP_PERFMON"),
        (caps::CAP_NET_ADMIN, "CAP_NET_ADMIN"),
    ]);
    if !missing.is_empty() {
        return Err(coded(
            Exit::NoPermission,
            format!("attaching eBPF programs needs root: this process lacks {}; run it as root (or from longconn-pin.service)", missing.join(", ")),
        ));
    }
    let page = page_size();
    let ring = ring_bytes(args)?;
    if !ring.is_power_of_two() || ring < page || ring > (1 << 30) {
        return Err(coded(Exit::Usage, format!("--ringbuf-bytes {ring}: must be a power of two between the page size ({page}) and 1GiB, e.g. 4MiB")));
    }
    if args.max_connections == 0 {
        return Err(coded(
            Exit::Usage,
            "--max-connections 0: must be at least 1",
        ));
    }
    let gid = match &args.group {
        Some(g) => Some(longconn_common::groups::gid_of(g).ok_or_else(|| {
            coded(
                Exit::Usage,
                format!("--group {g}: no such group in /etc/group"),
            )
        })?),
        None => None,
    };
    let cgroup = resolve_cgroup(args.cgroup.as_deref())?;
    let parent = prepare_bpffs(pin_dir)?;
    let _lock = lock_dir(&parent)?;
    remove_stale_staging(&parent);

    let requested = repin::Settings {
        cgroup_id: mounts::cgroup_id(&cgroup).unwrap_or(0),
        cgroup: cgroup.display().to_string(),
        hooks: args.hooks,
        max_connections: args.max_connections,
        ringbuf_bytes: ring,
        group: gid,
    };
    if let Some(code) = repin::check(pin_dir, &requested, &cgroup)? {
        return Ok(code);
    }
    if pin_dir.exists()
        && fs::read_dir(pin_dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(coded(Exit::Failed, format!("{} exists and holds pins longconn did not make (no meta); choose another --pin-dir or remove them", pin_dir.display())));
    }
    if args.hooks & (layout::HOOK_TCP_PROBE | layout::HOOK_RCV_SPACE) != 0 {
        mounts::ensure_tracefs().map_err(|e| {
            coded(Exit::NoFeature, format!("tracefs is not mounted at {} and mounting it failed ({e}); mount it (`mount -t tracefs tracefs {}`) or use --hooks cgroup-skb", mounts::TRACEFS_DIR, mounts::TRACEFS_DIR))
        })?;
    }

    let mut ebpf = load(args, ring)?;
    let attached = attach_all(&mut ebpf, &cgroup, args.hooks)?;
    load_refresh(&mut ebpf)?;
    write_meta(&mut ebpf, &cgroup, args.hooks)?;
    // Attached: from here only pinning, chown and chmod remain.
    if let Err(e) = caps::retain_only(&[
        caps::CAP_BPF,
        caps::CAP_CHOWN,
        caps::CAP_FOWNER,
        caps::CAP_DAC_OVERRIDE,
    ]) {
        eprintln!("longconn-pin: note: could not drop capabilities after attaching: {e}");
    }

    let staging = parent.join(format!("{STAGING_PREFIX}{}", std::process::id()));
    if let Err(err) = pin_all(&mut ebpf, attached, &staging, gid).and_then(|()| {
        fs::rename(&staging, pin_dir)
            .with_context(|| format!("cannot move {} to {}", staging.display(), pin_dir.display()))
    }) {
        remove_pins(&staging);
        return Err(err);
    }

    println!(
        "longconn pinned at {}: sockops{} on cgroup {}; map_of_tcp_conns capacity {}, ring buffer {} KiB",
        pin_dir.display(),
        if args.hooks == 0 { String::new() } else { format!(" + {}", hooks::describe(args.hooks)) },
        cgroup.display(),
        args.max_connections,
        ring / 1024
    );
    Ok(ExitCode::SUCCESS)
}

/// The default close-record ring.
pub const DEFAULT_RINGBUF_BYTES: u64 = 8 << 20;
/// Bytes one close record takes in the ring (8-byte header + record).
const RING_RECORD_BYTES: u64 = 8 + ConnRecord::SIZE as u64;
/// Seconds of closes `--closes-per-second` makes room for: two 5 s cycles
/// (a late or skipped cycle does not lose records).
const RING_SECONDS: u64 = 10;

/// `--ringbuf-bytes`, or the ring `--closes-per-second` asks for, or the default.
fn ring_bytes(args: &AttachArgs) -> anyhow::Result<u64> {
    if let Some(bytes) = args.ringbuf_bytes {
        return Ok(bytes);
    }
    let Some(cps) = args.closes_per_second else {
        return Ok(DEFAULT_RINGBUF_BYTES);
    };
    let want = cps
        .checked_mul(RING_SECONDS * RING_RECORD_BYTES)
        .and_then(u64::checked_next_power_of_two)
        .filter(|b| *b <= 1 << 30)
        .ok_or_else(|| coded(Exit::Usage, format!("--closes-per-second {cps}: needs a ring over 1GiB; give at most {} (the metrics stay exact beyond the ring: only access-log close records are dropped)", (1u64 << 30) / (RING_SECONDS * RING_RECORD_BYTES))))?;
    Ok(want.max(DEFAULT_RINGBUF_BYTES))
}

/// bpffs refuses names containing a dot, so no hidden-file prefix.
pub const STAGING_PREFIX: &str = "longconn-staging-";

fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

fn resolve_cgroup(arg: Option<&Path>) -> anyhow::Result<PathBuf> {
    let root = mounts::cgroup2_root();
    let Some(dir) = arg else {
        return root.map_err(|e| coded(Exit::NoFeature, format!("cannot find cgroup v2 ({e}); mount it (`mount -t cgroup2 none /sys/fs/cgroup/unified`) or pass --cgroup")));
    };
    let where_v2 = match &root {
        Ok(r) => format!("cgroup v2 is mounted at {}", r.display()),
        Err(_) => "no cgroup v2 filesystem is mounted".into(),
    };
    if !dir.is_dir() {
        return Err(coded(
            Exit::Usage,
            format!("--cgroup {}: no such directory ({where_v2})", dir.display()),
        ));
    }
    if !mounts::is_cgroup2(dir) {
        return Err(coded(
            Exit::Usage,
            format!(
                "--cgroup {}: not a cgroup v2 directory ({where_v2})",
                dir.display()
            ),
        ));
    }
    Ok(fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()))
}

/// Makes sure the pin dir's parent is on bpffs (mounting /sys/fs/bpf if needed).
fn prepare_bpffs(pin_dir: &Path) -> anyhow::Result<PathBuf> {
    let parent = pin_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| coded(Exit::Usage, format!("--pin-dir {}: give a directory below a bpf filesystem, e.g. /sys/fs/bpf/longconn", pin_dir.display())))?
        .to_path_buf();
    if mounts::is_bpffs(&parent) {
        return Ok(parent);
    }
    if parent == Path::new("/sys/fs/bpf") {
        mounts::ensure_bpffs(&parent).map_err(|e| coded(Exit::NoFeature, format!("cannot mount bpffs at /sys/fs/bpf: {e}; mount it yourself (`mount -t bpf bpf /sys/fs/bpf`)")))?;
        eprintln!("longconn-pin: mounted bpffs at /sys/fs/bpf");
        return Ok(parent);
    }
    if !parent.exists() {
        return Err(coded(Exit::Usage, format!("--pin-dir {}: its parent directory {} does not exist (longconn-pin creates only the pin dir itself); create it on bpffs first (`mkdir -p {}`) or use a directory directly under /sys/fs/bpf", pin_dir.display(), parent.display(), parent.display())));
    }
    Err(coded(
        Exit::NoFeature,
        format!(
            "--pin-dir {}: {} is not a bpf filesystem; use a directory under /sys/fs/bpf",
            pin_dir.display(),
            parent.display()
        ),
    ))
}

/// Serialises longconn-pin runs on this bpffs (flock on the parent directory).
fn lock_dir(dir: &Path) -> anyhow::Result<fs::File> {
    let f =
        fs::File::open(dir).with_context(|| format!("cannot open {} to lock it", dir.display()))?;
    // Blocks until the other run finishes.
    longconn_common::flock::exclusive(&f)
        .with_context(|| format!("cannot lock {}", dir.display()))?;
    Ok(f)
}

/// Removes staging dirs of longconn-pin runs that died half-way.
pub fn remove_stale_staging(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(STAGING_PREFIX)) else {
            continue;
        };
        if pid
            .parse::<u32>()
            .is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists())
        {
            eprintln!(
                "longconn-pin: removing {} left by an interrupted run",
                e.path().display()
            );
            remove_pins(&e.path());
        }
    }
}

/// Removes longconn's own pins in `dir` (known names only), then `dir` if empty.
/// Returns (links and programs removed, maps removed, leftovers).
pub fn remove_pins(dir: &Path) -> (usize, usize, Vec<PathBuf>) {
    let (mut links, mut maps) = (0, 0);
    for (_, name) in longconn_common::hooks::all_links() {
        if fs::remove_file(pins::link_path(dir, name)).is_ok() {
            links += 1;
        }
    }
    if fs::remove_file(dir.join(pins::REFRESH)).is_ok() {
        links += 1;
    }
    let _ = fs::remove_dir(dir.join(pins::LINKS));
    for (_, name) in pins::MAPS {
        if fs::remove_file(dir.join(name)).is_ok() {
            maps += 1;
        }
    }
    let leftovers: Vec<PathBuf> = fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    if leftovers.is_empty() {
        let _ = fs::remove_dir(dir);
    }
    (links, maps, leftovers)
}

/// Which link pins a hook mask implies.
pub fn expected_links(hooks_mask: u32) -> Vec<&'static str> {
    hooks::links(hooks_mask).collect()
}

fn load(args: &AttachArgs, ring: u64) -> anyhow::Result<Ebpf> {
    EbpfLoader::new()
        .map_max_entries("map_of_tcp_conns", args.max_connections)
        .map_max_entries("longconn_closed", ring as u32)
        .map_max_entries("longconn_overflow", args.max_connections)
        .map_max_entries("longconn_shortovf", args.max_connections)
        .override_global("hooks", &args.hooks, true)
        .load(longconn_bpf::OBJECT)
        .map_err(|e| load_error(&e, args, ring))
}

/// Says which map the kernel refused and with which sizes; only BTF errors
/// blame BTF.
fn load_error(e: &aya::EbpfError, args: &AttachArgs, ring: u64) -> anyhow::Error {
    if let aya::EbpfError::MapError(aya::maps::MapError::CreateError { name, io_error }) = e {
        return coded(Exit::Failed, format!("cannot create map {name} (--max-connections {}, ring buffer {ring} bytes): {io_error}; try smaller values (ENOMEM: memory for the map's buckets is charged to this cgroup up front)", args.max_connections));
    }
    let code = if matches!(e, aya::EbpfError::BtfError(_)) {
        Exit::NoFeature
    } else {
        Exit::Failed
    };
    coded(code, format!("cannot load longconn's eBPF object: {e}; the kernel needs BTF (/sys/kernel/btf/vmlinux) and BPF ring buffers (5.8+)"))
}

fn prog_error(name: &str, what: &str, err: aya::programs::ProgramError) -> anyhow::Error {
    let detail = match &err {
        aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let last = verifier_log
                .to_string()
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or_default()
                .to_owned();
            format!("{io_error}; verifier: {last}")
        }
        aya::programs::ProgramError::SyscallError(s) => format!("{}: {}", s.call, s.io_error),
        other => other.to_string(),
    };
    coded(Exit::NoFeature, format!("cannot {what} {name}: {detail}"))
}

fn attach_all(ebpf: &mut Ebpf, cgroup: &Path, hooks_mask: u32) -> anyhow::Result<Vec<Attached>> {
    let cg = fs::File::open(cgroup)
        .with_context(|| format!("cannot open cgroup {}", cgroup.display()))?;
    let mut out = Vec::new();
    for hook in HOOKS.iter().filter(|h| h.attached_with(hooks_mask)) {
        let (Some(name), Some(link_name)) = (hook.program, hook.link) else {
            continue; // a sockops callback: the sockops program asks for it
        };
        let link = match hook.attach {
            AttachKind::Sockops => {
                let p: &mut SockOps = program(ebpf, name)?;
                p.load().map_err(|e| prog_error(name, "load", e))?;
                let id = p.attach(&cg, CgroupAttachMode::Single).map_err(|e| {
                    let eperm = matches!(&e, aya::programs::ProgramError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::EPERM));
                    if eperm {
                        coded(Exit::NoFeature, format!("cannot attach sockops to {}: EPERM; another sock_ops program is attached to it or an ancestor without multi-attach (see `bpftool cgroup tree`), and longconn will not replace it", cgroup.display()))
                    } else {
                        prog_error(name, "attach", e)
                    }
                })?;
                FdLink::try_from(
                    p.take_link(id)
                        .map_err(|e| prog_error(name, "take link of", e))?,
                )
            }
            AttachKind::CgroupSkbEgress | AttachKind::CgroupSkbIngress => {
                let kind = if hook.attach == AttachKind::CgroupSkbEgress {
                    CgroupSkbAttachType::Egress
                } else {
                    CgroupSkbAttachType::Ingress
                };
                let p: &mut CgroupSkb = program(ebpf, name)?;
                p.load().map_err(|e| prog_error(name, "load", e))?;
                let id = p.attach(&cg, kind, CgroupAttachMode::Single).map_err(|e| {
                    prog_error(name, &format!("attach to {} as", cgroup.display()), e)
                })?;
                FdLink::try_from(
                    p.take_link(id)
                        .map_err(|e| prog_error(name, "take link of", e))?,
                )
            }
            AttachKind::Tracepoint(category, tp) => {
                let p: &mut TracePoint = program(ebpf, name)?;
                p.load().map_err(|e| prog_error(name, "load", e))?;
                let id = p.attach(category, tp).map_err(|e| {
                    prog_error(name, &format!("attach tracepoint {category}:{tp} to"), e)
                })?;
                FdLink::try_from(
                    p.take_link(id)
                        .map_err(|e| prog_error(name, "take link of", e))?,
                )
            }
            AttachKind::SockopsCallback => continue,
        };
        out.push(Attached {
            name: link_name,
            link: link.map_err(|e| anyhow::anyhow!("{name} link: {e}"))?,
        });
    }
    Ok(out)
}

/// The refresh program: loaded here, pinned as `refresh_conns` beside the
/// maps (readers run it with BPF_PROG_TEST_RUN before reading the map).
fn load_refresh(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let p: &mut SchedClassifier = program(ebpf, REFRESH_PROGRAM)?;
    p.load().map_err(|e| prog_error(REFRESH_PROGRAM, "load", e))
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow::anyhow!("program {name} missing from the object (build problem)"))?;
    p.try_into()
        .map_err(|e| anyhow::anyhow!("program {name} has an unexpected type: {e}"))
}

fn write_meta(ebpf: &mut Ebpf, cgroup: &Path, hooks_mask: u32) -> anyhow::Result<()> {
    let meta = Meta {
        magic: layout::META_MAGIC,
        pinned_at_ns: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
        cgroup_id: mounts::cgroup_id(cgroup)
            .with_context(|| format!("cannot stat cgroup {}", cgroup.display()))?,
        layout_version: layout::LAYOUT_VERSION,
        record_size: ConnRecord::SIZE as u32,
        hooks: hooks_mask,
        _pad: 0,
    };
    let map = ebpf
        .map_mut("longconn_meta")
        .ok_or_else(|| anyhow::anyhow!("map longconn_meta missing from the object"))?;
    let mut array: Array<&mut MapData, Meta> = Array::try_from(map).context("map longconn_meta")?;
    array
        .set(0, meta, 0)
        .context("cannot write longconn_meta")?;
    Ok(())
}

/// Who may read the pins: root only (dir 0700, pins 0600), or with `--group`
/// also that group (dir 0750, maps 0660: the reader needs write access to
/// release ring-buffer records, run the refresh and record netnsids; `meta`
/// 0640 and frozen; links stay 0600).
fn set_owner(path: &Path, mode: u32, gid: Option<u32>) -> anyhow::Result<()> {
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid))
            .with_context(|| format!("cannot chgrp {}", path.display()))?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

/// Freezes the map pinned at `path`: no bpf-syscall write succeeds after.
fn freeze(path: &Path) -> anyhow::Result<()> {
    use std::os::fd::AsFd;
    longconn_common::bpfcall::obj_get(path, 0)
        .and_then(|fd| longconn_common::bpfcall::map_freeze(fd.as_fd()))
        .with_context(|| format!("cannot freeze {}", path.display()))
}

fn pin_all(
    ebpf: &mut Ebpf,
    attached: Vec<Attached>,
    staging: &Path,
    gid: Option<u32>,
) -> anyhow::Result<()> {
    let (dir_mode, map_mode) = if gid.is_some() {
        (0o750, 0o660)
    } else {
        (0o700, 0o600)
    };
    // Root-only from the start whatever the umask (chmod'ed to the final mode last).
    let mut mkdir = fs::DirBuilder::new();
    std::os::unix::fs::DirBuilderExt::mode(&mut mkdir, 0o700);
    mkdir
        .create(staging)
        .with_context(|| format!("cannot create {}", staging.display()))?;
    mkdir
        .create(staging.join(pins::LINKS))
        .with_context(|| format!("cannot create {}/links", staging.display()))?;
    for (obj_name, pin_name) in pins::MAPS {
        let map = ebpf
            .map(obj_name)
            .ok_or_else(|| anyhow::anyhow!("map {obj_name} missing from the object"))?;
        let path = staging.join(pin_name);
        map.pin(&path)
            .with_context(|| format!("cannot pin map {obj_name} at {}", path.display()))?;
        if *pin_name == pins::META {
            // Written once, above: frozen, and read-only for the group.
            freeze(&path)?;
            set_owner(&path, map_mode & 0o640, gid)?;
        } else {
            set_owner(&path, map_mode, gid)?;
        }
    }
    let path = staging.join(pins::REFRESH);
    let refresh: &mut SchedClassifier = program(ebpf, REFRESH_PROGRAM)?;
    refresh.pin(&path).with_context(|| {
        format!(
            "cannot pin program {} at {}",
            REFRESH_PROGRAM,
            path.display()
        )
    })?;
    set_owner(&path, map_mode, gid)?;
    for a in attached {
        let path = pins::link_path(staging, a.name);
        a.link
            .pin(&path)
            .with_context(|| format!("cannot pin link {} at {}", a.name, path.display()))?;
        set_owner(&path, 0o600, None)?;
    }
    set_owner(&staging.join(pins::LINKS), 0o700, None)?;
    set_owner(staging, dir_mode, gid)
}
