//! Issue 23: the Debian package. `scripts/package` builds it from this
//! build's binaries (lintian clean), `apt-get install` installs it, its man
//! page renders, bash completes its subcommands, the packaged units'
//! commands pin and collect a valid `.prom`, `apt-get remove` detaches, and
//! after a reinstall `apt-get purge` leaves no pin, program, map, link, unit
//! or file of it behind (only the `longconn` group, on purpose: see
//! README.Debian).
//!
//! It installs into the real system paths and the packaged reader reads the
//! product's default pin dir, so scripts/test runs it alone (like the
//! soak); it pins there only when nothing is pinned there (and fails
//! saying so otherwise), narrowed to its own cgroup, and its guard purges
//! the package and detaches even when it fails half-way.

use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use longconn_common::pins;
use longconn_tests::{
    env::{bin_dir, privileged_or_skip, unprivileged},
    prom, TestEnv,
};

const TEXTFILE_DIR: &str = "/var/lib/prometheus/node-exporter";
const STATE_DIR: &str = "/var/lib/longconn";
const LOG_DIR: &str = "/var/log/longconn";
const CRON_FILE: &str = "/etc/cron.d/longconn";

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// dpkg's status of the package longconn ("" when dpkg does not know it).
fn dpkg_status() -> String {
    let o = run(Command::new("dpkg-query").args(["-W", "-f=${Status}", "longconn"]));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn group_gid(name: &str) -> Option<u32> {
    let o = run(Command::new("getent").args(["group", name]));
    let line = String::from_utf8_lossy(&o.stdout).into_owned();
    line.split(':').nth(2)?.trim().parse().ok()
}

fn apt_get(args: &[&str]) -> Output {
    run(Command::new("apt-get")
        .args(["-y", "-q", "-o", "DPkg::Lock::Timeout=300"])
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Ids of the bpf objects the package's pins hold: programs attached to
/// `cgroup` and the refresh program, and every pinned map.
fn bpf_ids(cgroup: &Path, pin_dir: &Path) -> (Vec<u64>, Vec<u64>) {
    let json = |args: &[&str], path: &Path| -> serde_json::Value {
        let o = run(Command::new("bpftool").arg("-j").args(args).arg(path));
        assert!(o.status.success(), "bpftool {args:?}: {}", text(&o));
        serde_json::from_slice(&o.stdout).expect("bpftool json")
    };
    let mut progs: Vec<u64> = json(&["cgroup", "show"], cgroup)
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|p| p["id"].as_u64())
        .collect();
    let refresh = json(&["prog", "show", "pinned"], &pin_dir.join(pins::REFRESH));
    progs.extend(refresh["id"].as_u64());
    let maps = pins::MAPS
        .iter()
        .filter_map(|(_, pin)| {
            let map = json(&["map", "show", "pinned"], &pin_dir.join(pin));
            map["id"].as_u64()
        })
        .collect();
    (progs, maps)
}

/// Whether bpftool still finds `kind` (prog or map) `id`, waiting up to 5 s
/// for the kernel to release it.
fn bpf_id_alive(kind: &str, id: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let alive = run(Command::new("bpftool").args([kind, "show", "id", &id.to_string()]))
            .status
            .success();
        if !alive || Instant::now() > deadline {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Files under `dir` (recursively) whose name starts with "longconn".
fn longconn_entries(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if e.file_name().to_string_lossy().starts_with("longconn") {
            out.push(p.clone());
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(longconn_entries(&p));
        }
    }
    out
}

/// The command of a unit's `ExecStart=` line, split on blanks.
fn exec_start(unit: &str) -> Vec<String> {
    let path = format!("/lib/systemd/system/{unit}");
    let body = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    body.lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap_or_else(|| panic!("{path}: no ExecStart=\n{body}"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Undoes what the test did to the system, even on panic: purges the
/// package, and removes the group if the test's install made it. (The
/// TestEnv, dropped after, detaches the default pin dir if something the
/// test pinned is still there, and removes the cgroup.)
struct Installed {
    group_existed: bool,
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !dpkg_status().is_empty() && !dpkg_status().contains("not-installed") {
            let _ = Command::new("dpkg")
                .args(["--purge", "longconn"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .output();
        }
        if !self.group_existed && group_gid("longconn").is_some() {
            let _ = Command::new("groupdel").arg("longconn").output();
        }
    }
}

#[test]
fn package_installs_runs_and_purges_cleanly() {
    if !privileged_or_skip("package_installs_runs_and_purges_cleanly") {
        return;
    }
    let tools = [
        "apt-get", "dpkg-deb", "lintian", "man", "promtool", "bpftool",
    ];
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !run(Command::new("sh").args(["-c", &format!("command -v {t}")]))
                .status
                .success()
        })
        .collect();
    if !missing.is_empty() || !Path::new("/usr/share/bash-completion/bash_completion").exists() {
        let why = format!("missing {missing:?} or bash-completion (scripts/test installs them)");
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{why}, and CI=true forbids skipping"
        );
        eprintln!("SKIP package_installs_runs_and_purges_cleanly: {why}");
        return;
    }
    // Nothing of another longconn may be here: the package's paths, its
    // default pin dir and its outputs are the system's.
    let status = dpkg_status();
    assert!(
        status.is_empty() || status.contains("not-installed"),
        "the package longconn is already on this machine ({status}): purge it first (apt-get purge longconn)"
    );
    let default_pins = Path::new(pins::DEFAULT_PIN_DIR);
    let prom_file = Path::new(TEXTFILE_DIR).join("longconn.prom");
    for p in [
        default_pins,
        Path::new("/usr/sbin/longconn-pin"),
        Path::new("/usr/bin/longconn-reader"),
        Path::new(STATE_DIR),
        Path::new(LOG_DIR),
        Path::new(CRON_FILE),
        &prom_file,
    ] {
        assert!(
            !p.exists(),
            "{} exists: another longconn is installed or pinned here; this test installs the package at the system's paths and pins at the default pin dir, so it runs only where neither is in use (remove it, or run the test elsewhere)",
            p.display()
        );
    }
    let textfile_existed = Path::new(TEXTFILE_DIR).exists();
    let mut env = TestEnv::new("package");
    let _installed = Installed {
        group_existed: group_gid("longconn").is_some(),
    };

    // Build: the one release build's binaries, packaged and lintian-checked.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo")
        .to_path_buf();
    let started = Instant::now();
    let o = run(Command::new("bash")
        .arg(repo.join("scripts/package"))
        .arg("--bin-dir")
        .arg(bin_dir())
        .arg("--out-dir")
        .arg(env.path("deb"))
        .current_dir(&repo));
    assert!(o.status.success(), "scripts/package failed: {}", text(&o));
    let deb = String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .expect("the .deb path")
        .to_owned();
    let size = fs::metadata(&deb).expect("the .deb").len();
    eprintln!(
        "built {deb} ({size} bytes) in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Install, dependencies resolved by apt.
    let o = apt_get(&["install", &deb]);
    assert!(o.status.success(), "apt-get install {deb}: {}", text(&o));
    assert!(dpkg_status().contains("install ok installed"));
    let said = text(&o);
    let systemd = Path::new("/run/systemd/system").exists();
    if !systemd {
        assert!(
            said.contains("systemd is not running here, so nothing was attached"),
            "postinst without systemd says what it did not do: {said}"
        );
        assert!(!default_pins.exists(), "postinst pinned without systemd");
    }
    let gid = group_gid("longconn").expect("postinst made the group longconn");
    for (dir, mode) in [(STATE_DIR, 0o700), (LOG_DIR, 0o750)] {
        let m = fs::metadata(dir).unwrap_or_else(|e| panic!("postinst made no {dir}: {e}"));
        assert_eq!(m.permissions().mode() & 0o7777, mode, "{dir}");
        assert_eq!(m.uid(), 0, "{dir}");
    }

    // The man page renders; bash completes `longconn-reader co<TAB>`.
    for page in [
        &["longconn-reader"][..],
        &["8", "longconn-pin"],
        &["longconn-reader-collect"],
    ] {
        let o = run(Command::new("man")
            .args(page)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "80")
            .env("LC_ALL", "C.UTF-8"));
        let out = text(&o);
        assert!(
            o.status.success() && out.contains("SYNOPSIS") && out.contains("--pin-dir"),
            "man {page:?} (a path-exclude of /usr/share/man in /etc/dpkg/dpkg.cfg.d drops man pages): {out}"
        );
    }
    let o = run(Command::new("bash").args([
        "--norc",
        "-c",
        r#"set -u
. /usr/share/bash-completion/bash_completion
_completion_loader longconn-reader
f=$(complete -p longconn-reader | sed -n 's/.* -F \([^ ]*\) .*/\1/p')
[ -n "$f" ] || { echo "no completion for longconn-reader: $(complete -p longconn-reader 2>&1)"; exit 1; }
COMP_WORDS=(longconn-reader co); COMP_CWORD=1
COMP_LINE='longconn-reader co'; COMP_POINT=${#COMP_LINE}
"$f" longconn-reader co longconn-reader
printf '%s\n' "${COMPREPLY[@]}""#,
    ]));
    assert_eq!(
        text(&o).trim(),
        "collect",
        "bash completion of `longconn-reader co<TAB>`"
    );

    // The installed units, their Documentation= man pages included.
    let units = [
        "longconn-pin.service",
        "longconn-reader.service",
        "longconn-reader.timer",
    ]
    .map(|u| format!("/lib/systemd/system/{u}"));
    let o = run(Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .env("SYSTEMD_LOG_LEVEL", "notice"));
    let said = text(&o);
    assert!(
        o.status.success() && !said.lines().any(|l| l.contains("longconn")),
        "systemd-analyze verify {units:?}: {said}"
    );

    // As packaged: the pin unit's command (narrowed to this test's cgroup),
    // then the reader unit's; the cron job runs the same binary.
    let cron = fs::read_to_string(CRON_FILE).expect("the cron fallback");
    let reader = exec_start("longconn-reader.service");
    assert!(
        cron.contains(&reader.join(" ")),
        "the cron job runs what the timer does ({reader:?}): {cron}"
    );
    env.pin_dir = default_pins.to_path_buf();
    let pin = exec_start("longconn-pin.service");
    let o = run(Command::new(&pin[0])
        .args(&pin[1..])
        .arg("--cgroup")
        .arg(&env.cgroup));
    assert!(o.status.success(), "{pin:?}: {}", text(&o));
    // One connection from the cgroup, closed before the cycle: its close
    // record goes to the access log.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("port").port();
    let mut client = Command::new("bash");
    client.args([
        "-c",
        &format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo hello >&3"),
    ]);
    env.spawn_in_cgroup(client);
    let (mut conn, _) = listener.accept().expect("accept");
    let mut got = String::new();
    std::io::Read::read_to_string(&mut conn, &mut got).expect("read");
    assert_eq!(got, "hello\n");
    assert!(env.take_child().wait().expect("client").success());
    drop(conn);
    // The close reaches the kernel's TCP_CLOSE a moment after both ends
    // closed: cycles run (as the timer would) until its record is there.
    let access = Path::new(LOG_DIR).join("access.csv");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = run(Command::new(&reader[0]).args(&reader[1..]));
        assert!(o.status.success(), "{reader:?}: {}", text(&o));
        let log = fs::read_to_string(&access).unwrap_or_default();
        if log.lines().any(|l| l.contains(&format!(",{port},"))) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no access record of the connection to port {port} after 10 s of cycles: {log:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    prom::promtool_check(&prom_file);
    let body = fs::read_to_string(&prom_file).expect("longconn.prom");
    assert!(
        body.contains("longconn_reader_last_success_timestamp_seconds"),
        "{body}"
    );
    // Reading without root: a member of longconn dumps the live connections.
    let o = run(unprivileged(gid, &[gid], Path::new("/usr/bin/longconn-reader")).arg("dump"));
    assert!(
        o.status.success(),
        "dump as a member of longconn (README.Debian): {}",
        text(&o)
    );

    // Nothing of the package stays after purge, only the group (on purpose).
    let files: Vec<PathBuf> =
        String::from_utf8_lossy(&run(Command::new("dpkg-query").args(["-L", "longconn"])).stdout)
            .lines()
            .map(PathBuf::from)
            .filter(|p| p.is_file())
            .collect();
    assert!(files.len() > 20, "dpkg -L longconn: {files:?}");
    let (progs, maps) = bpf_ids(&env.cgroup, default_pins);
    assert!(!progs.is_empty() && maps.len() == pins::MAPS.len());

    // Remove (not purge) detaches and drops the metrics file (node_exporter
    // would serve it frozen); the state, the logs and the cron conffile
    // stay. Installed again, no unit stays masked.
    let o = apt_get(&["remove", "longconn"]);
    assert!(o.status.success(), "apt-get remove longconn: {}", text(&o));
    assert!(dpkg_status().contains("config-files"), "{}", dpkg_status());
    for p in [default_pins, &prom_file, &env.consumer_registration()] {
        assert!(!p.exists(), "remove left {}", p.display());
    }
    for p in [STATE_DIR, LOG_DIR, CRON_FILE] {
        assert!(Path::new(p).exists(), "remove took {p} (purge does)");
    }
    let o = apt_get(&["install", &deb]);
    assert!(
        o.status.success(),
        "apt-get install {deb} again: {}",
        text(&o)
    );
    let masked: Vec<PathBuf> = longconn_entries(Path::new("/etc/systemd/system"))
        .into_iter()
        .chain(longconn_entries(Path::new(
            "/var/lib/systemd/deb-systemd-helper-masked",
        )))
        .filter(|p| {
            fs::read_link(p).is_ok_and(|t| t == Path::new("/dev/null")) || p.starts_with("/var")
        })
        .collect();
    assert!(
        masked.is_empty(),
        "units masked after reinstalling: {masked:?}"
    );

    let o = apt_get(&["purge", "longconn"]);
    assert!(o.status.success(), "apt-get purge longconn: {}", text(&o));
    let status = dpkg_status();
    assert!(
        status.is_empty() || status.contains("not-installed"),
        "dpkg still knows longconn: {status}"
    );
    let left: Vec<&PathBuf> = files.iter().filter(|p| p.exists()).collect();
    assert!(left.is_empty(), "purge left files of the package: {left:?}");
    for p in [
        default_pins,
        Path::new(STATE_DIR),
        Path::new(LOG_DIR),
        &prom_file,
        Path::new("/run/longconn-cron.lock"),
        &env.consumer_registration(),
    ] {
        assert!(!p.exists(), "purge left {}", p.display());
    }
    let progs_left: Vec<u64> = progs
        .into_iter()
        .filter(|&id| bpf_id_alive("prog", id))
        .collect();
    let maps_left: Vec<u64> = maps
        .into_iter()
        .filter(|&id| bpf_id_alive("map", id))
        .collect();
    assert!(
        progs_left.is_empty() && maps_left.is_empty(),
        "purge left programs {progs_left:?} and maps {maps_left:?}"
    );
    // bpftool prints nothing (not `[]`) for a cgroup with no program.
    let o = run(Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(&env.cgroup));
    let attached = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    assert!(
        o.status.success() && (attached.is_empty() || attached == "[]"),
        "programs still attached to {}: {attached}",
        env.cgroup.display()
    );
    let units: Vec<PathBuf> = [
        "/lib/systemd/system",
        "/etc/systemd/system",
        "/var/lib/systemd/deb-systemd-helper-enabled",
        "/var/lib/systemd/deb-systemd-helper-masked",
    ]
    .iter()
    .flat_map(|d| longconn_entries(Path::new(d)))
    .collect();
    assert!(
        units.is_empty(),
        "purge left units or their state: {units:?}"
    );
    assert_eq!(
        Path::new(TEXTFILE_DIR).exists(),
        textfile_existed,
        "{TEXTFILE_DIR} is there after purge only if it was before"
    );
    // Left on purpose (README.Debian, "Purge leaves on purpose").
    assert!(
        group_gid("longconn").is_some(),
        "purge keeps the group longconn"
    );
    eprintln!(
        "package test done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
