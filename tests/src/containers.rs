//! Real container runtimes for one test: a busybox rootfs (no image
//! registry is reachable), a podman container and a private containerd
//! daemon, each removed on drop, even when the test panics, with the
//! cgroups the runtime made for it in the cgroup v1 hierarchies (a hybrid
//! layout mirrors the test's cgroup path there). Names carry the test's
//! tag, so nothing another test or user made is touched.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::env::{cgroup2_root, dirs_below};

/// Whether `tool` runs here; under CI=true a missing tool is a failure.
pub fn tool_or_skip(test: &str, tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: {tool} is not installed and CI=true forbids skipping (scripts/lib.sh installs it)");
        }
        eprintln!("SKIP {test}: {tool} is not installed");
    }
    ok
}

/// A busybox rootfs under `dir` (`bin/busybox` and its applets' links).
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    let bin = root.join("bin");
    fs::create_dir_all(&bin).expect("mkdir rootfs/bin");
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static installed (scripts/lib.sh)");
    fs::copy(busybox, bin.join("busybox")).expect("copy busybox");
    for applet in ["sh", "nc", "sleep", "echo", "cat"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("applet link");
    }
    for d in ["proc", "sys", "dev", "etc", "tmp"] {
        fs::create_dir_all(root.join(d)).expect("mkdir in rootfs");
    }
    root
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The directories a runtime made for `rel` (a cgroup path relative to the
/// cgroup v2 mount) in every cgroup v1 hierarchy; removed on drop.
pub struct V1Trees {
    rel: PathBuf,
}

impl Drop for V1Trees {
    fn drop(&mut self) {
        let Ok(mounts) = fs::read_to_string("/proc/mounts") else {
            return;
        };
        for line in mounts.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(2) != Some(&"cgroup") {
                continue;
            }
            let top = Path::new(f[1]).join(&self.rel);
            for dir in dirs_below(&top).iter().rev() {
                let deadline = Instant::now() + Duration::from_secs(5);
                while dir.exists() && fs::remove_dir(dir).is_err() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

/// The test's top cgroup of `rel` (its first component): a hybrid layout
/// makes the whole path in each v1 hierarchy, parents included.
pub fn v1_trees(rel: &str) -> V1Trees {
    let top = rel.trim_start_matches('/').split('/').next().unwrap_or("");
    assert!(
        top.starts_with("longconn-test-"),
        "not a test cgroup: {rel}"
    );
    V1Trees { rel: top.into() }
}

/// `cg` relative to the cgroup v2 mount, with a leading "/".
pub fn relative_cgroup(cg: &Path) -> String {
    let rel = cg.strip_prefix(cgroup2_root()).expect("a cgroup v2 path");
    format!("/{}", rel.display())
}

/// A podman container of an image imported from a busybox rootfs, in a
/// cgroup below `parent` (a test's cgroup), on podman's default bridge.
pub struct Podman {
    pub name: String,
    image: String,
    _v1: V1Trees,
}

impl Podman {
    /// `podman run -d --name NAME --cgroup-parent PARENT IMAGE ARGV...`.
    pub fn run(dir: &Path, parent: &Path, name: &str, argv: &[&str]) -> Self {
        let rel = relative_cgroup(parent);
        let v1 = v1_trees(&rel);
        let image = format!("localhost/{name}:test");
        let tar = dir.join("rootfs.tar");
        let rootfs = busybox_rootfs(dir);
        run(Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg("."));
        run(Command::new("podman").arg("import").arg(&tar).arg(&image));
        // From here on, drop removes the image (and the container).
        let p = Self {
            name: name.to_owned(),
            image,
            _v1: v1,
        };
        run(Command::new("podman")
            .args(["run", "-d", "--name", name, "--cgroup-parent", &rel])
            .args([
                "--ulimit",
                "nofile=4096:4096",
                "--ulimit",
                "nproc=4096:4096",
            ])
            .arg(&p.image)
            .args(argv));
        p
    }

    pub fn id(&self) -> String {
        run(Command::new("podman").args(["inspect", "-f", "{{.Id}}", &self.name]))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "-f", "-t", "0", &self.name])
            .output();
        let _ = Command::new("podman").args(["rmi", &self.image]).output();
    }
}

/// A containerd daemon of this test only: its state under `root`
/// (`root/run/containerd`, where a node keeps it, so the reader finds the
/// task bundles with `--runtime-root root`), the CRI plugin off (no
/// kubelet here), containers run with `ctr` through runc. Drop kills and
/// deletes every container, then stops the daemon.
pub struct Containerd {
    root: PathBuf,
    address: PathBuf,
    daemon: Child,
    containers: Vec<String>,
    _v1: Vec<V1Trees>,
}

impl Containerd {
    pub fn start(root: &Path) -> Self {
        let state = root.join("run/containerd");
        let address = state.join("containerd.sock");
        fs::create_dir_all(&state).expect("mkdir containerd state");
        let config = root.join("containerd.toml");
        fs::write(
            &config,
            format!(
                "version = 2\nroot = {:?}\nstate = {:?}\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = {:?}\n",
                root.join("var/lib/containerd"),
                state,
                address
            ),
        )
        .expect("write containerd config");
        let log = fs::File::create(root.join("containerd.log")).expect("containerd log");
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        let c = Self {
            root: root.to_owned(),
            address,
            daemon,
            containers: Vec::new(),
            _v1: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c
            .ctr()
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(
                Instant::now() < deadline,
                "containerd did not answer within 20 s; see {}",
                root.join("containerd.log").display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    /// `ctr --address … -n k8s.io`.
    fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(&self.address).args(["-n", "k8s.io"]);
        c
    }

    /// Runs container `id` (detached) from a busybox rootfs with these OCI
    /// annotations, in cgroup `cgroup` (a cgroup v2 path) and network
    /// namespace `netns` (a bind-mounted netns file).
    pub fn run(
        &mut self,
        id: &str,
        cgroup: &Path,
        annotations: &[(&str, &str)],
        netns: &Path,
        argv: &[&str],
    ) {
        let rootfs = busybox_rootfs(&self.root.join(format!("bundle-{id}")));
        let rel = relative_cgroup(cgroup);
        self._v1.push(v1_trees(&rel));
        let mut cmd = self.ctr();
        cmd.args([
            "run",
            "-d",
            "--rootfs",
            "--env",
            "PATH=/bin",
            "--cgroup",
            &rel,
        ]);
        cmd.arg("--with-ns")
            .arg(format!("network:{}", netns.display()));
        for (k, v) in annotations {
            cmd.arg("--annotation").arg(format!("{k}={v}"));
        }
        cmd.arg(&rootfs).arg(id).args(argv);
        self.containers.push(id.to_owned());
        run(&mut cmd);
    }

    /// Where containerd keeps the task bundle of `id`.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.root
            .join("run/containerd/io.containerd.runtime.v2.task/k8s.io")
            .join(id)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in &self.containers {
            let _ = self.ctr().args(["task", "kill", "-s", "KILL", id]).output();
        }
        for id in &self.containers {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !self
                .ctr()
                .args(["task", "rm", "-f", id])
                .output()
                .is_ok_and(|o| {
                    o.status.success() || String::from_utf8_lossy(&o.stderr).contains("not found")
                })
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.ctr().args(["container", "rm", id]).output();
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        // V1Trees drop after this (field order), once the tasks are gone.
    }
}
