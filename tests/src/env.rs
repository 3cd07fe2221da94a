//! `TestEnv`: one test's pin dir, cgroup and child processes, and their cleanup.
//!
//! Never touches pins, programs or cgroups it did not create: names carry the
//! test name and pid, and Drop removes exactly those.

use std::{
    fs,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Where cargo put the workspace binaries (target/<profile>/), or $LONGCONN_BIN_DIR.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LONGCONN_BIN_DIR") {
        return d.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("deps dir");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("profile dir")
    } else {
        dir
    };
    dir.to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo build --release --workspace` (scripts/test does)",
        p.display()
    );
    p
}

/// `setpriv` running `program` as uid 65534 with primary group `gid`, the
/// supplementary `groups` (none: cleared) and no capabilities.
pub fn unprivileged(gid: u32, groups: &[u32], program: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", &format!("--regid={gid}")]);
    if groups.is_empty() {
        c.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        c.arg(format!("--groups={}", list.join(",")));
    }
    c.args(["--inh-caps=-all", "--"]).arg(program);
    c
}

/// The cgroup v2 mount, from /proc/mounts.
pub fn cgroup2_root() -> PathBuf {
    let mounts = fs::read_to_string("/proc/mounts").expect("/proc/mounts");
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .expect("cgroup2 mounted")
}

/// Whether privileged tests can run here; under CI=true a missing privilege is a failure.
pub fn privileged_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    if root && btf {
        return true;
    }
    let why = if !root {
        "not root"
    } else {
        "no /sys/kernel/btf/vmlinux"
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: cannot run privileged test ({why}) and CI=true forbids skipping");
    }
    eprintln!("SKIP {test}: {why}");
    false
}

/// `collect` options that turn on every output.
pub const ALL_OUTPUTS: &[&str] = &["--access-log", "csv,jsonl", "--otlp", "metrics,logs"];

pub struct TestEnv {
    pub name: String,
    pub pin_dir: PathBuf,
    pub cgroup: PathBuf,
    pub dir: tempfile::TempDir,
    children: Vec<Child>,
    /// Arguments every `collect_cmd` gets (see `all_outputs`).
    collect_extra: Vec<&'static str>,
}

impl TestEnv {
    /// A fresh pin dir path (not created) and a new child cgroup.
    pub fn new(test: &str) -> Self {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}_{}_{}", test, std::process::id(), n);
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/lctest_{tag}"));
        let cgroup = cgroup2_root().join(format!("longconn-test-{tag}"));
        fs::create_dir(&cgroup).unwrap_or_else(|e| panic!("mkdir {}: {e}", cgroup.display()));
        Self {
            name: test.into(),
            pin_dir,
            cgroup,
            dir: tempfile::tempdir().expect("tempdir"),
            children: Vec::new(),
            collect_extra: Vec::new(),
        }
    }

    /// Every collect of this test writes every output (both access-log
    /// formats and both OTLP files), not only the defaults.
    pub fn all_outputs(&mut self) {
        self.collect_extra = ALL_OUTPUTS.to_vec();
    }

    pub fn pin_cmd(&self) -> Command {
        let mut c = Command::new(bin("longconn-pin"));
        c.arg("--pin-dir").arg(&self.pin_dir);
        c
    }

    pub fn reader_cmd(&self) -> Command {
        let mut c = Command::new(bin("longconn-reader"));
        c.arg("--pin-dir").arg(&self.pin_dir);
        c
    }

    /// `longconn-pin --cgroup <ours> EXTRA...`, asserting success.
    pub fn pin(&self, extra: &[&str]) -> Output {
        let out = self
            .pin_cmd()
            .arg("--cgroup")
            .arg(&self.cgroup)
            .args(extra)
            .output()
            .expect("run longconn-pin");
        assert!(
            out.status.success(),
            "longconn-pin failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs the reader with args, asserting success; returns stdout.
    pub fn reader(&self, args: &[&str]) -> String {
        let out = self
            .reader_cmd()
            .args(args)
            .output()
            .expect("run longconn-reader");
        assert!(
            out.status.success(),
            "longconn-reader {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8")
    }

    pub fn dump_json(&self, extra: &[&str]) -> Vec<serde_json::Value> {
        let mut args = vec!["dump", "--json"];
        args.extend_from_slice(extra);
        let text = self.reader(&args);
        match serde_json::from_str(&text) {
            Ok(serde_json::Value::Array(v)) => v,
            other => panic!("dump --json did not print an array: {other:?}\n{text}"),
        }
    }

    /// Spawns `cmd` inside this test's cgroup (it joins before exec).
    pub fn spawn_in_cgroup(&mut self, cmd: Command) -> &mut Child {
        let cg = self.cgroup.clone();
        self.spawn_in(&cg, cmd)
    }

    /// A child cgroup of this test's cgroup (removed with it).
    pub fn child_cgroup(&self, name: &str) -> PathBuf {
        let p = self.cgroup.join(name);
        fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        p
    }

    /// Spawns `cmd` inside cgroup `cg` (it joins before exec).
    pub fn spawn_in(&mut self, cg: &Path, mut cmd: Command) -> &mut Child {
        let procs = std::ffi::CString::new(
            cg.join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .expect("path");
        // SAFETY: the closure runs between fork and exec and only calls
        // async-signal-safe functions (open, write, close) on memory prepared
        // before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let rc = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if rc != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn in cgroup");
        self.children.push(child);
        self.children.last_mut().expect("just pushed")
    }

    pub fn take_child(&mut self) -> Child {
        self.children.pop().expect("a child")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.pin_dir.exists() {
            let _ = self.pin_cmd().arg("detach").output();
        }
        // A test that damaged its own pins (a foreign meta): this pin dir
        // is the test's own, so --force may remove what detach left.
        if self.pin_dir.exists() {
            let _ = self.pin_cmd().args(["detach", "--force"]).output();
        }
        let _ = fs::remove_file(self.consumer_registration());
        // Child cgroups first, at any depth (a test may make a kubelet-shaped
        // tree); processes may take a moment to leave after exiting.
        let dirs = dirs_below(&self.cgroup);
        for dir in dirs.iter().rev() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while dir.exists() && fs::remove_dir(dir).is_err() && Instant::now() < deadline {
                if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                    for pid in procs
                        .split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok())
                    {
                        // SAFETY: kill on a pid that is in our own test cgroup.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// `root` and every directory below it, each after its parent.
pub fn dirs_below(root: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![root.to_owned()];
    let mut i = 0;
    while i < dirs.len() {
        if let Ok(entries) = fs::read_dir(&dirs[i]) {
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        i += 1;
    }
    dirs
}

impl TestEnv {
    /// `collect --out-dir <tmp>/out EXTRA...`; returns the exit status and stderr.
    /// `longconn-reader collect --out-dir <this test's out dir>`, not yet run.
    pub fn collect_cmd(&self) -> Command {
        let mut cmd = self.reader_cmd();
        cmd.arg("collect").arg("--out-dir").arg(self.out_dir());
        cmd.args(&self.collect_extra);
        cmd
    }

    pub fn collect(&self, extra: &[&str]) -> (std::process::ExitStatus, String) {
        let out = self
            .collect_cmd()
            .args(extra)
            .output()
            .expect("run collect");
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Where `collect` registers the one consumer of this pin dir (the
    /// reader's `collect::consumer`: FNV-1a 64 of the pin dir path).
    pub fn consumer_registration(&self) -> PathBuf {
        let fnv = self
            .pin_dir
            .as_os_str()
            .as_encoded_bytes()
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, &c| {
                (h ^ u64::from(c)).wrapping_mul(0x0100_0000_01b3)
            });
        PathBuf::from(format!("/run/lock/longconn-consumer-{fnv:016x}"))
    }

    pub fn out_dir(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    /// This test's workload label: its cgroup path relative to the cgroup v2 mount.
    pub fn workload(&self) -> String {
        format!(
            "/{}",
            self.cgroup
                .file_name()
                .expect("cgroup name")
                .to_string_lossy()
        )
    }
}

/// Pins at `path` a map someone else made: an array of one 40-byte value
/// named `longconn_meta`, the type, size and name of longconn's `meta`, with
/// no magic in it (bpftool; `path` must not exist).
pub fn pin_foreign_meta(path: &Path) {
    let o = Command::new("bpftool")
        .args(["map", "create"])
        .arg(path)
        .args([
            "type",
            "array",
            "key",
            "4",
            "value",
            "40",
            "entries",
            "1",
            "name",
            "longconn_meta",
        ])
        .output()
        .expect("run bpftool");
    assert!(
        o.status.success(),
        "bpftool map create {}: {}",
        path.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}
