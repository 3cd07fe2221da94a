//! Issue 22, "Reliability, round 2": one owner per log dir (A), a restored
//! state never cuts committed bytes (B), files and directories of other
//! users are refused (E), concurrent take-overs leave one consumer (D).
//! The authority for every close is the traffic generator's own count of
//! the connections it opened and closed (both ends each).

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
};

use longconn_tests::{env::privileged_or_skip, logs, seccomp, traffic::Traffic, TestEnv};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run longconn-reader")
}

/// `collect` of `env`'s pins with `--state-dir state --log-dir log
/// --textfile-dir state`.
fn collect_into(env: &TestEnv, state: &Path, log: &Path, extra: &[&str]) -> Output {
    run(env
        .reader_cmd()
        .arg("collect")
        .arg("--state-dir")
        .arg(state)
        .arg("--log-dir")
        .arg(log)
        .arg("--textfile-dir")
        .arg(state)
        .args(extra))
}

/// Close records of `workload` in `dir/access.csv` (and rotated files),
/// by cookie; fails on a torn line or a file without its header.
fn closes(dir: &Path, workload: &str) -> BTreeMap<u64, u32> {
    let mut out = BTreeMap::new();
    if !dir.join("access.csv").exists() {
        return out;
    }
    for r in logs::csv(&logs::files(dir, "access.csv")) {
        if r.get("workload").map(String::as_str) == Some(workload) && r["event"] == "close" {
            *out.entry(r["cookie"].parse::<u64>().expect("cookie"))
                .or_default() += 1;
        }
    }
    out
}

fn assert_once(all: &BTreeMap<u64, u32>, want: usize, what: &str) {
    let twice: Vec<_> = all.iter().filter(|(_, &n)| n != 1).collect();
    assert!(
        twice.is_empty(),
        "{what}: closes not exactly once: {twice:?}"
    );
    assert_eq!(all.len(), want, "{what}: every close once");
}

/// Item A: two readers (two pin dirs, two state dirs) sharing one log dir.
/// The second is refused naming the owner and writes nothing there; no
/// committed record of the owner is cut; `--take-over` moves the log dir.
#[test]
fn a_log_dir_has_one_owner() {
    if !privileged_or_skip("a_log_dir_has_one_owner") {
        return;
    }
    let mut a = TestEnv::new("logown_a");
    let mut b = TestEnv::new("logown_b");
    a.pin(&[]);
    b.pin(&[]);
    let mut ga = Traffic::start_in(&mut a);
    let mut gb = Traffic::start_in(&mut b);
    let log = a.path("shared-log");
    let (sa, sb) = (a.path("state-a"), b.path("state-b"));
    for round in 0..3 {
        ga.cmd("churn 4");
        gb.cmd("churn 4");
        let o = collect_into(&a, &sa, &log, &[]);
        assert!(o.status.success(), "A round {round}: {}", stderr(&o));
        let before = fs::read(log.join("access.csv")).unwrap();
        let o = collect_into(&b, &sb, &log, &[]);
        let err = stderr(&o);
        assert_eq!(
            o.status.code(),
            Some(1),
            "B round {round} was not refused: {err}"
        );
        let sa_canon = fs::canonicalize(&sa).unwrap();
        assert!(
            err.contains(&format!("state dir {}", sa_canon.display()))
                && err.contains("--take-over")
                && err.lines().count() == 1,
            "{err}"
        );
        assert_eq!(
            fs::read(log.join("access.csv")).unwrap(),
            before,
            "the refused reader changed the owner's log"
        );
    }
    assert_once(
        &closes(&log, &a.workload()),
        3 * 4 * 2,
        "A's closes in the shared log",
    );
    assert!(
        closes(&log, &b.workload()).is_empty(),
        "B wrote into A's log dir"
    );
    // B with a log dir of its own gets all of its closes (none consumed while refused).
    let own = b.path("log-b");
    let o = collect_into(&b, &sb, &own, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_once(
        &closes(&own, &b.workload()),
        3 * 4 * 2,
        "B's closes in its own log",
    );
    // --take-over moves the log dir; A is refused from then on and B never
    // cuts what A committed.
    ga.cmd("churn 2");
    gb.cmd("churn 2");
    let o = collect_into(&b, &sb, &log, &["--take-over"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is now the owner of log dir"),
        "{}",
        stderr(&o)
    );
    let o = collect_into(&a, &sa, &log, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_once(
        &closes(&log, &a.workload()),
        3 * 4 * 2,
        "A's closes after the take-over",
    );
    let o = collect_into(&a, &sa, &a.path("log-a2"), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut all_b = closes(&own, &b.workload());
    all_b.extend(closes(&log, &b.workload()));
    assert_once(&all_b, 3 * 4 * 2 + 2 * 2, "B's closes");
    assert_once(
        &closes(&a.path("log-a2"), &a.workload()),
        2 * 2,
        "A's later closes",
    );
}

/// Item B: restoring an older state.bin of the same dir never cuts
/// committed lines, and the message names the real cause.
#[test]
fn a_restored_state_never_cuts_committed_records() {
    if !privileged_or_skip("a_restored_state_never_cuts_committed_records") {
        return;
    }
    let mut env = TestEnv::new("restore");
    env.pin(&[]);
    let mut gen = Traffic::start_in(&mut env);
    let out = env.out_dir();
    gen.cmd("churn 3");
    let (st, err) = env.collect(&[]);
    assert!(st.success(), "{err}");
    // A snapshot of the state (base and journal, as a backup tool takes it).
    let snapshot = env.path("snapshot");
    fs::create_dir(&snapshot).unwrap();
    for f in ["state.bin", "state.journal"] {
        if out.join(f).exists() {
            fs::copy(out.join(f), snapshot.join(f)).unwrap();
        }
    }
    gen.cmd("churn 5");
    let (st, err) = env.collect(&[]);
    assert!(st.success(), "{err}");
    let committed = fs::read(out.join("access.csv")).unwrap();
    assert_once(&closes(&out, &env.workload()), 16, "before the restore");
    for f in ["state.bin", "state.journal"] {
        let _ = fs::remove_file(out.join(f));
        if snapshot.join(f).exists() {
            fs::copy(snapshot.join(f), out.join(f)).unwrap();
        }
    }
    gen.cmd("churn 2");
    let (_, first) = env.collect(&[]);
    let (st, err) = env.collect(&[]);
    assert!(st.success(), "{err}");
    let now = fs::read(out.join("access.csv")).unwrap();
    assert!(
        now.starts_with(&committed),
        "committed bytes were cut or changed by the restored state"
    );
    assert_once(&closes(&out, &env.workload()), 20, "after the restore");
    assert!(
        !first.contains("another collect released"),
        "false cause: {first}"
    );
    assert!(
        first.lines().count() == 1 && first.contains("is older than"),
        "{first}"
    );
}

/// `setpriv` as nobody (65534) running `argv`.
fn as_nobody(argv: &[&str]) {
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(argv)
        .output()
        .unwrap();
    assert!(o.status.success(), "{argv:?}: {}", stderr(&o));
}

fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Item E: files another user created in a sticky world-writable out dir,
/// an out dir owned by another user and a world-writable one are refused,
/// one line each saying what to fix, and nothing is written there.
#[test]
fn files_and_dirs_of_other_users_are_refused() {
    if !privileged_or_skip("files_and_dirs_of_other_users_are_refused") {
        return;
    }
    let env = TestEnv::new("strict");
    env.pin(&[]);
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o711)).unwrap();
    let collect = |dir: &PathBuf| run(env.reader_cmd().arg("collect").arg("--out-dir").arg(dir));
    let refused = |dir: &PathBuf, want: &[&str]| {
        let before = listing(dir);
        let o = collect(dir);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "not refused: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        for w in want {
            assert!(err.contains(w), "{w:?} not in {err}");
        }
        assert_eq!(
            listing(dir),
            before,
            "something was written in {}",
            dir.display()
        );
    };
    // A sticky, world-writable dir is fine; files nobody put there are not.
    let shared = env.path("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    let planted = shared.join("access.csv");
    as_nobody(&["sh", "-c", &format!("echo planted > {}", planted.display())]);
    refused(&shared, &["access.csv", "nobody", "remove it"]);
    fs::remove_file(&planted).unwrap();
    as_nobody(&["touch", &shared.join("state.bin").display().to_string()]);
    refused(&shared, &["state.bin", "nobody"]);
    fs::remove_file(shared.join("state.bin")).unwrap();
    let o = collect(&shared);
    assert!(o.status.success(), "{}", stderr(&o));
    // An out dir owned by another (non-root) user.
    let theirs = env.path("theirs");
    fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    refused(&theirs, &["owned by nobody", "chown"]);
    // World-writable without the sticky bit.
    let open = env.path("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    refused(&open, &["writable by others", "chmod"]);
}

/// Item D: 100 rounds of two collects with `--take-over` on two state dirs
/// at once, under churn: every close lands in exactly one dir, and a
/// loser exits 1 having consumed nothing.
#[test]
fn concurrent_take_overs_leave_one_consumer() {
    if !privileged_or_skip("concurrent_take_overs_leave_one_consumer") {
        return;
    }
    let mut env = TestEnv::new("takeover");
    env.pin(&[]);
    let mut gen = Traffic::start_in(&mut env);
    let background = Traffic::start_in(&mut env);
    let stop = Arc::new(AtomicBool::new(false));
    let churned = Arc::new(AtomicU64::new(0));
    let churner = {
        let (stop, churned) = (stop.clone(), churned.clone());
        let mut g = background;
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                g.cmd("churn 1");
                churned.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let dirs = [env.path("a"), env.path("b")];
    let mut losers = 0;
    let mut direct = 0u64;
    for round in 0..100 {
        gen.cmd("churn 2");
        direct += 2;
        let children: Vec<_> = dirs
            .iter()
            .map(|d| {
                env.reader_cmd()
                    .arg("collect")
                    .arg("--out-dir")
                    .arg(d)
                    .args(["--take-over", "--lock-wait", "0s"])
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in children {
            let o = c.wait_with_output().unwrap();
            let err = stderr(&o);
            match o.status.code() {
                Some(0) => {}
                Some(1) => {
                    assert!(err.contains("consumed nothing"), "round {round}: {err}");
                    losers += 1;
                }
                other => panic!("round {round}: exit {other:?}: {err}"),
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    churner.join().unwrap();
    let o = run(env
        .reader_cmd()
        .arg("collect")
        .arg("--out-dir")
        .arg(&dirs[0])
        .arg("--take-over"));
    assert!(o.status.success(), "{}", stderr(&o));
    let total = direct + churned.load(Ordering::Relaxed);
    let mut all = closes(&dirs[0], &env.workload());
    for (k, n) in closes(&dirs[1], &env.workload()) {
        *all.entry(k).or_default() += n;
    }
    assert_once(&all, (total * 2) as usize, "closes across both dirs");
    eprintln!("{losers} losers in 100 concurrent pairs");
}

/// Item G: a member of the pins' `--group` cannot write `meta` (0640, and
/// frozen: not even root can); a damaged `meta` (a foreign map at its name)
/// makes `status` exit 6 naming `detach --force`, plain `detach` names the
/// flag too, `detach --force` removes everything and pinning works again.
#[test]
fn group_members_cannot_break_the_pins_and_detach_force_recovers() {
    if !privileged_or_skip("group_members_cannot_break_the_pins_and_detach_force_recovers") {
        return;
    }
    let env = TestEnv::new("pinguard");
    env.pin(&["--group", "65534"]);
    let meta = env.pin_dir.join("meta");
    let zeros: Vec<String> = (0..40).map(|_| "0".to_owned()).collect();
    let update = |as_member: bool| {
        let mut c = if as_member {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=65534",
                "--regid=4242",
                "--groups=65534",
                "--inh-caps=-all",
                "--",
                "bpftool",
            ]);
            c
        } else {
            Command::new("bpftool")
        };
        c.args(["map", "update", "pinned"])
            .arg(&meta)
            .args(["key", "0", "0", "0", "0", "value"])
            .args(&zeros);
        run(&mut c)
    };
    let o = update(true);
    assert!(
        !o.status.success(),
        "a group member overwrote meta: {}",
        stderr(&o)
    );
    let o = update(false);
    assert!(!o.status.success(), "meta is not frozen: {}", stderr(&o));
    assert_eq!(
        fs::metadata(&meta).unwrap().permissions().mode() & 0o777,
        0o640
    );
    let o = run(env.pin_cmd().arg("status"));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    // Damage: a foreign map of meta's size at meta's name.
    fs::remove_file(&meta).unwrap();
    longconn_tests::env::pin_foreign_meta(&meta);
    let o = run(env.pin_cmd().arg("status"));
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--force"),
        "status does not name --force: {}",
        stderr(&o)
    );
    let o = run(env.pin_cmd().arg("detach"));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--force") && meta.exists(),
        "{}",
        stderr(&o)
    );
    let o = run(env.pin_cmd().args(["detach", "--force"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        !env.pin_dir.exists(),
        "detach --force left {}",
        env.pin_dir.display()
    );
    env.pin(&["--group", "65534"]);
    let o = run(env.pin_cmd().arg("status"));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// A small tmpfs, unmounted on drop (even on panic).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn new(at: PathBuf, size: &str) -> Self {
        fs::create_dir_all(&at).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(&at)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        Self(at)
    }

    /// Fills it (a file `filler`).
    fn fill(&self) -> PathBuf {
        let filler = self.0.join("filler");
        let _ = Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", filler.display()))
            .args(["bs=4k", "count=100000"])
            .stderr(std::process::Stdio::null())
            .status();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Makes `cmd` die (SIGSYS, like a SIGKILL: no handler runs) at its first
/// `sync_file_range`: the reader starts writeback right after it appends
/// the first block of a log, before its commit (a seccomp filter installed
/// between fork and exec).
fn killed_after_first_log_write(cmd: &mut Command) {
    use seccomp::{insn as f, AUDIT_ARCH_X86_64, JEQ as jeq, LD as ld, RET as ret};
    let filter = vec![
        f(ld, 0, 0, 4), // seccomp_data.arch
        f(jeq, 0, 3, AUDIT_ARCH_X86_64),
        f(ld, 0, 0, 0), // seccomp_data.nr
        f(jeq, 0, 1, libc::SYS_sync_file_range as u32),
        f(ret, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        f(ret, 0, 0, libc::SECCOMP_RET_ALLOW),
    ];
    seccomp::install(cmd, filter);
}

/// Item C: a run killed after it appended its records, before its commit,
/// then a state reset (the state files removed, as after a corrupt state):
/// the next run cuts the killed run's tail and writes the closes again
/// (the kernel still holds them), so each is in the log exactly once.
#[test]
fn a_kill_then_a_state_reset_duplicates_no_close() {
    if !privileged_or_skip("a_kill_then_a_state_reset_duplicates_no_close") {
        return;
    }
    let mut env = TestEnv::new("killreset");
    env.pin(&[]);
    let mut gen = Traffic::start_in(&mut env);
    let out = env.out_dir();
    gen.cmd("churn 3");
    let (st, err) = env.collect(&[]);
    assert!(st.success(), "{err}");
    gen.cmd("churn 5");
    let mut cmd = env.collect_cmd();
    killed_after_first_log_write(&mut cmd);
    let st = cmd.stderr(std::process::Stdio::null()).status().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGSYS),
        "the collect was not killed after its first log write"
    );
    let tail = closes(&out, &env.workload());
    assert!(
        tail.len() > 6,
        "the killed run wrote no records, nothing to test: {tail:?}"
    );
    for f in ["state.bin", "state.journal"] {
        let _ = fs::remove_file(out.join(f));
    }
    gen.cmd("churn 2");
    let (st, err) = env.collect(&[]);
    assert!(st.success(), "{err}");
    assert_once(
        &closes(&out, &env.workload()),
        20,
        "closes after a kill and a reset",
    );
}

/// Bytes of every file in `dir` (hidden ones included).
fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Item F: after a full disk, failed cycles never grow what they leave
/// beyond the records themselves, the error names every file that could
/// not be written, and freeing about as much space as the backlog needs
/// recovers at the next cycle, every close once.
#[test]
fn a_full_disk_recovers_once_the_backlog_fits() {
    if !privileged_or_skip("a_full_disk_recovers_once_the_backlog_fits") {
        return;
    }
    let mut env = TestEnv::new("fullback");
    env.pin(&[]);
    let mut gen = Traffic::start_in(&mut env);
    let small = Tmpfs::new(env.path("small"), "2m");
    let out = small.0.join("out");
    let args = ["--access-log", "csv,jsonl", "--otlp", "logs"];
    let collect = || {
        run(env
            .reader_cmd()
            .arg("collect")
            .arg("--out-dir")
            .arg(&out)
            .args(args))
    };
    gen.cmd("churn 10");
    // Two cycles of CSV only: JSON Lines and OTLP logs are new files (each
    // written hidden, as `.NAME.new`, until a commit) on the full disk.
    for _ in 0..2 {
        let o = run(env.reader_cmd().arg("collect").arg("--out-dir").arg(&out));
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let before = dir_bytes(&out);
    let filler = small.fill();
    gen.cmd("churn 120");
    let mut left = Vec::new();
    let mut errors = Vec::new();
    for i in 0..3 {
        let o = collect();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "cycle {i} on a full disk: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        errors.push(err);
        left.push(dir_bytes(&out));
    }
    assert!(
        left[2] <= left[0],
        "failed cycles grew what they leave: {left:?} bytes"
    );
    // Free space in 64 KiB steps; the first cycle that succeeds must not
    // have needed much more than what it wrote.
    let full = fs::metadata(&filler).unwrap().len();
    let mut freed = 0u64;
    let mut last = String::new();
    loop {
        freed += 64 << 10;
        assert!(freed <= full, "never recovered: {last}");
        let f = fs::OpenOptions::new().write(true).open(&filler).unwrap();
        f.set_len(full - freed).unwrap();
        drop(f);
        let o = collect();
        if o.status.success() {
            break;
        }
        last = stderr(&o);
    }
    let written = dir_bytes(&out).saturating_sub(before);
    eprintln!(
        "freed {freed} bytes; the backlog took {written} bytes; left by failed cycles {left:?}"
    );
    assert!(
        freed <= written + (128 << 10),
        "recovery needed {freed} bytes freed for a backlog of {written}"
    );
    let mut all = BTreeMap::new();
    for r in logs::csv(&logs::files(&out, "access.csv")) {
        if r.get("workload").map(String::as_str) == Some(&env.workload()) && r["event"] == "close" {
            *all.entry(r["cookie"].clone()).or_insert(0u32) += 1;
        }
    }
    assert!(all.values().all(|&n| n == 1), "a close twice");
    assert_eq!(all.len(), 130 * 2, "every close once");
    for err in &errors {
        for f in ["access.csv", "access.jsonl", "otlp-logs.jsonl"] {
            assert!(err.contains(f), "the error does not name {f}: {err}");
        }
    }
}

/// What `scripts/install` set up for cron in a test, removed on drop (even
/// on panic): the job file, the processes of its job (their command lines
/// carry the job's own lock name) and the cron daemon the install started.
struct CronInstall {
    job: PathBuf,
    tag: String,
    cron_pid: Option<i32>,
}

impl Drop for CronInstall {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.job);
        for pid in pids_with(&self.tag) {
            // SAFETY: kill on a pid whose command line carries this test's tag.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Some(pid) = self.cron_pid {
            // SAFETY: kill on the cron daemon this test's install started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let _ = fs::remove_file("/run/crond.pid");
        }
    }
}

/// Pids whose command line contains `tag`.
fn pids_with(tag: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|&pid| pid != me)
                .filter(|pid| {
                    fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(tag))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Item 9: `scripts/install` on a host where systemd is not PID 1 installs
/// and starts cron if needed, writes the job, and proves that the reader
/// ran: a longconn.prom newer than the install within 70 s.
#[test]
fn install_without_systemd_runs_the_reader_from_cron() {
    if !privileged_or_skip("install_without_systemd_runs_the_reader_from_cron") {
        return;
    }
    if Path::new("/run/systemd/system").exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "systemd runs here: the cron fallback cannot be tested, and CI=true forbids skipping"
        );
        eprintln!("SKIP install_without_systemd_runs_the_reader_from_cron: systemd runs here");
        return;
    }
    let mut env = TestEnv::new("install");
    let name = format!("longconn-test-{}", std::process::id());
    let mut guard = CronInstall {
        job: PathBuf::from(format!("/etc/cron.d/{name}")),
        tag: format!("/run/{name}-cron.lock"),
        cron_pid: None,
    };
    let out = env.path("out");
    let started = std::time::SystemTime::now();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg(repo.join("scripts/install"))
        .arg("--prefix")
        .arg(env.path("prefix"))
        .arg("--bin-dir")
        .arg(longconn_tests::env::bin_dir())
        .arg("--pin-dir")
        .arg(&env.pin_dir)
        .arg("--cgroup")
        .arg(&env.cgroup)
        .arg("--out-dir")
        .arg(&out)
        .arg("--cron-name")
        .arg(&name)
        .current_dir(repo)
        .stderr(std::process::Stdio::piped());
    // In the test's cgroup: a cron daemon it starts, and its jobs, go with it.
    env.spawn_in_cgroup(cmd);
    let child = env.take_child();
    let o = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    guard.cron_pid = stdout.lines().find_map(|l| {
        l.strip_prefix("started cron (pid ")?
            .strip_suffix(')')?
            .parse()
            .ok()
    });
    assert!(
        o.status.success(),
        "scripts/install failed: {stdout}{}",
        stderr(&o)
    );
    assert!(stdout.contains("it ran:"), "{stdout}");
    let job = fs::read_to_string(&guard.job).unwrap();
    assert!(job.contains(&env.pin_dir.display().to_string()), "{job}");
    let prom = fs::metadata(out.join("longconn.prom")).expect("longconn.prom");
    assert!(
        prom.modified().unwrap() > started,
        "longconn.prom is older than the install"
    );
    assert!(
        pids_with("cron")
            .iter()
            .any(|&p| fs::read(format!("/proc/{p}/comm")).is_ok_and(|c| c.starts_with(b"cron"))),
        "no cron daemon runs"
    );
    drop(guard);
}

/// Item 8: a collect meeting a pin dir that a `detach` is removing (here:
/// half removed, meta still there) exits 6, not pinned, not 1 with ENOENT;
/// a symlinked collect.lock is named as a symlink.
#[test]
fn collect_during_detach_says_not_pinned() {
    if !privileged_or_skip("collect_during_detach_says_not_pinned") {
        return;
    }
    let env = TestEnv::new("halfdetach");
    env.pin(&[]);
    let (st, err) = env.collect(&[]);
    assert!(st.success(), "{err}");
    fs::remove_file(env.pin_dir.join("counters")).unwrap();
    let (st, err) = env.collect(&[]);
    assert_eq!(st.code(), Some(6), "{err}");
    assert!(
        err.contains("no longconn pins") && err.lines().count() == 1,
        "{err}"
    );
    let lock = env.out_dir().join("collect.lock");
    fs::remove_file(&lock).unwrap();
    std::os::unix::fs::symlink("/nonexistent", &lock).unwrap();
    let (st, err) = env.collect(&[]);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("is a symlink"), "{err}");
}
