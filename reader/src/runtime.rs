//! The names of a container from what the node itself holds, so a
//! connection is labelled `namespace/pod/container` with no API server, no
//! runtime daemon and no CLI call: the container runtimes' on-disk state,
//! read as files (an unprivileged reader that may read them gets the same
//! names as root).
//!
//! Looked up by container id, first match wins:
//! 1. containerd's task bundle `run/containerd/io.containerd.runtime.v2.task/k8s.io/<id>/config.json`
//!    (k3s/rke2: `run/k3s/containerd/…`): the CRI plugin's annotations
//!    `io.kubernetes.cri.sandbox-{name,namespace,uid}`, `…container-name`,
//!    `…container-type`;
//! 2. containers storage (CRI-O, podman), `{run,var/lib}/containers/storage/overlay-containers/<id>/userdata/config.json`:
//!    CRI-O's `io.kubernetes.pod.{name,namespace,uid}` and
//!    `io.kubernetes.container.name`; without them (podman) the
//!    container's name in that storage's `containers.json`;
//! 3. docker, `var/lib/docker/containers/<id>/config.v2.json`: the kubelet's
//!    labels (cri-dockerd) or the container's name;
//! 4. kubelet's `var/log/containers/<pod>_<namespace>_<container>-<id>.log`
//!    symlinks, whatever the runtime.
//!
//! Where none of them names the container (its runtime state is gone: a
//! Job's pod that ended), or the cgroup is a pod's own (no container id),
//! the pod uid in the cgroup path is looked up in the kubelet's pod log
//! directories `var/log/pods/<namespace>_<pod>_<uid>/`, kept while the pod
//! object exists (`Resolver::pod`).
//!
//! Invariant: cost is per new cgroup, never per connection or per cycle.
//! The caller resolves a cgroup once and remembers the names in its state;
//! a `Resolver` reads each shared index (`containers.json`, the kubelet log
//! directory) at most once, however many containers it resolves.

use std::{
    collections::HashMap,
    fs,
    io::Read,
    path::{Path, PathBuf},
};

/// The workload names a runtime keeps for one container (empty: unknown).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names {
    /// Kubernetes namespace and pod; empty outside Kubernetes.
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    /// The container's name: in its pod's spec under Kubernetes, else the
    /// runtime's (podman, docker); empty for a pod's sandbox.
    pub container: String,
}

impl Names {
    /// A Kubernetes pod's container (else a runtime's own container).
    pub fn is_kubernetes(&self) -> bool {
        !self.pod.is_empty()
    }
}

/// Runtime files larger than this are not read (an OCI config is a few KiB;
/// `containers.json` about 1 KiB per container).
const MAX_FILE: u64 = 64 << 20;

/// `--runtime-root`, shared by `collect` and `dump`.
#[derive(Debug, clap::Args)]
pub struct RootArg {
    /// Where the node's container runtime state is read from
    /// (run/containerd, run/containers, var/lib/containers, var/lib/docker,
    /// var/log/containers under it): / on the node, or e.g. /host in a
    /// container that mounts the node's / there.
    #[arg(long, default_value = "/", value_name = "DIR")]
    pub runtime_root: PathBuf,
}

impl RootArg {
    pub fn roots(&self) -> Roots {
        Roots::new(&self.runtime_root)
    }
}

/// Where the runtimes keep their state: `/` on a node; tests give a tree of
/// the same layout (`--runtime-root`).
#[derive(Clone, Debug)]
pub struct Roots {
    base: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Self {
            base: PathBuf::from("/"),
        }
    }
}

impl Roots {
    pub fn new(base: &Path) -> Self {
        Self {
            base: base.to_owned(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.base.join(rel)
    }
}

const CONTAINERD_TASKS: &[&str] = &[
    "run/containerd/io.containerd.runtime.v2.task/k8s.io",
    "run/k3s/containerd/io.containerd.runtime.v2.task/k8s.io",
];
const CONTAINERS_STORAGE: &[&str] = &[
    "run/containers/storage/overlay-containers",
    "var/lib/containers/storage/overlay-containers",
];
const DOCKER_CONTAINERS: &str = "var/lib/docker/containers";
const KUBELET_LOGS: &str = "var/log/containers";
const KUBELET_POD_LOGS: &str = "var/log/pods";

/// Resolves container ids to names; keeps the shared indexes it read.
pub struct Resolver<'r> {
    roots: &'r Roots,
    /// Container id -> name, from every containers storage's `containers.json`.
    storage_names: Option<HashMap<String, String>>,
    /// Container id -> (namespace, pod, container), from the kubelet's log links.
    kubelet_logs: Option<HashMap<String, [String; 3]>>,
    /// Pod uid -> (namespace, pod), from the kubelet's pod log directories.
    pod_logs: Option<HashMap<String, [String; 2]>>,
}

impl<'r> Resolver<'r> {
    pub fn new(roots: &'r Roots) -> Self {
        Self {
            roots,
            storage_names: None,
            kubelet_logs: None,
            pod_logs: None,
        }
    }

    /// The names of the pod with uid `uid` (from a cgroup path) from the
    /// kubelet's pod log directory, when nothing better is known.
    pub fn pod(&mut self, uid: &str) -> Option<Names> {
        let roots = self.roots;
        let [namespace, pod] = self
            .pod_logs
            .get_or_insert_with(|| pod_logs(&roots.path(KUBELET_POD_LOGS)))
            .get(uid)?
            .clone();
        Some(Names {
            namespace,
            pod,
            pod_uid: uid.to_owned(),
            container: String::new(),
        })
    }

    /// The names of container `id` (a runtime's 64-hex id), empty if no
    /// runtime state names it.
    pub fn names(&mut self, id: &str) -> Names {
        self.containerd(id)
            .or_else(|| self.containers_storage(id))
            .or_else(|| self.docker(id))
            .or_else(|| self.kubelet_log(id))
            .unwrap_or_default()
    }

    fn containerd(&self, id: &str) -> Option<Names> {
        CONTAINERD_TASKS.iter().find_map(|dir| {
            let a = annotations(&self.roots.path(dir).join(id).join("config.json"))?;
            CONTAINERD_KEYS.names(&a)
        })
    }

    fn containers_storage(&mut self, id: &str) -> Option<Names> {
        for dir in CONTAINERS_STORAGE {
            let config = self.roots.path(dir).join(id).join("userdata/config.json");
            let Some(a) = annotations(&config) else {
                continue;
            };
            if let Some(names) = CRIO_KEYS.names(&a) {
                return Some(names);
            }
        }
        let roots = self.roots;
        let name = self
            .storage_names
            .get_or_insert_with(|| storage_names(roots))
            .get(id)?;
        Some(Names {
            container: name.clone(),
            ..Names::default()
        })
    }

    fn docker(&self, id: &str) -> Option<Names> {
        #[derive(serde::Deserialize)]
        struct Config {
            #[serde(rename = "Name", default)]
            name: String,
            #[serde(rename = "Config", default)]
            config: Option<Inner>,
        }
        #[derive(serde::Deserialize)]
        struct Inner {
            #[serde(rename = "Labels", default)]
            labels: Option<HashMap<String, String>>,
        }
        let path = self
            .roots
            .path(DOCKER_CONTAINERS)
            .join(id)
            .join("config.v2.json");
        let c: Config = serde_json::from_slice(&read_small(&path)?).ok()?;
        let labels = c.config.and_then(|i| i.labels).unwrap_or_default();
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        let names = Names {
            namespace: get("io.kubernetes.pod.namespace"),
            pod: get("io.kubernetes.pod.name"),
            pod_uid: get("io.kubernetes.pod.uid"),
            container: get("io.kubernetes.container.name"),
        };
        if names.is_kubernetes() {
            return Some(names);
        }
        let name = c.name.trim_start_matches('/');
        (!name.is_empty()).then(|| Names {
            container: name.to_owned(),
            ..Names::default()
        })
    }

    fn kubelet_log(&mut self, id: &str) -> Option<Names> {
        let roots = self.roots;
        let [namespace, pod, container] = self
            .kubelet_logs
            .get_or_insert_with(|| kubelet_logs(&roots.path(KUBELET_LOGS)))
            .get(id)?
            .clone();
        Some(Names {
            namespace,
            pod,
            container,
            ..Names::default()
        })
    }
}

/// A regular file's bytes, if it is one and not larger than `MAX_FILE`
/// (never blocks on a FIFO or device someone put there).
fn read_small(path: &Path) -> Option<Vec<u8>> {
    read_regular_upto(path, MAX_FILE)
}

/// A regular file's bytes (a symlink is not followed), if it is not larger
/// than `max` bytes.
pub(crate) fn read_regular_upto(path: &Path, max: u64) -> Option<Vec<u8>> {
    let meta = fs::symlink_metadata(path).ok()?;
    if !meta.file_type().is_file() || meta.len() > max {
        return None;
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    fs::File::open(path)
        .ok()?
        .take(max)
        .read_to_end(&mut buf)
        .ok()?;
    Some(buf)
}

/// The annotations of an OCI runtime spec (`config.json`).
/// The OCI annotations a CRI runtime sets on a pod's container.
struct CriKeys {
    namespace: &'static str,
    pod: &'static str,
    pod_uid: &'static str,
    container: &'static str,
    /// "sandbox" for the pod's pause container, which has no container name.
    container_type: &'static str,
}

/// containerd's CRI plugin.
const CONTAINERD_KEYS: CriKeys = CriKeys {
    namespace: "io.kubernetes.cri.sandbox-namespace",
    pod: "io.kubernetes.cri.sandbox-name",
    pod_uid: "io.kubernetes.cri.sandbox-uid",
    container: "io.kubernetes.cri.container-name",
    container_type: "io.kubernetes.cri.container-type",
};

/// CRI-O. Not io.kubernetes.cri-o.ContainerName: it holds
/// k8s_<ctr>_<pod>_<ns>_<uid>_<n>.
const CRIO_KEYS: CriKeys = CriKeys {
    namespace: "io.kubernetes.pod.namespace",
    pod: "io.kubernetes.pod.name",
    pod_uid: "io.kubernetes.pod.uid",
    container: "io.kubernetes.container.name",
    container_type: "io.kubernetes.cri-o.ContainerType",
};

impl CriKeys {
    /// The names in `a`, if they name a Kubernetes pod.
    fn names(&self, a: &HashMap<String, String>) -> Option<Names> {
        let get = |k: &str| a.get(k).cloned().unwrap_or_default();
        let names = Names {
            namespace: get(self.namespace),
            pod: get(self.pod),
            pod_uid: get(self.pod_uid),
            container: match a.get(self.container_type) {
                Some(t) if t == "sandbox" => String::new(),
                _ => get(self.container),
            },
        };
        names.is_kubernetes().then_some(names)
    }
}

fn annotations(path: &Path) -> Option<HashMap<String, String>> {
    #[derive(serde::Deserialize)]
    struct Spec {
        #[serde(default)]
        annotations: Option<HashMap<String, String>>,
    }
    let spec: Spec = serde_json::from_slice(&read_small(path)?).ok()?;
    Some(spec.annotations.unwrap_or_default())
}

/// Container id -> first name, from each containers storage's
/// `containers.json` (podman keeps its container names there).
fn storage_names(roots: &Roots) -> HashMap<String, String> {
    #[derive(serde::Deserialize)]
    struct Entry {
        id: String,
        #[serde(default)]
        names: Vec<String>,
    }
    let mut out = HashMap::new();
    for dir in CONTAINERS_STORAGE {
        let path = roots.path(dir).join("containers.json");
        let Some(bytes) = read_small(&path) else {
            continue;
        };
        let Ok(entries) = serde_json::from_slice::<Vec<Entry>>(&bytes) else {
            continue;
        };
        for e in entries {
            if let Some(name) = e.names.into_iter().next() {
                out.entry(e.id).or_insert(name);
            }
        }
    }
    out
}

/// Container id -> (namespace, pod, container) from the kubelet's
/// `<pod>_<namespace>_<container>-<id>.log` links (none of the three names
/// may hold `_`: Kubernetes names are DNS labels or subdomains).
fn kubelet_logs(dir: &Path) -> HashMap<String, [String; 3]> {
    names_in(dir, parse_kubelet_log)
}

/// Each entry name of `dir` that `parse` takes, keyed by the id it gives
/// (an unreadable directory is an empty map).
fn names_in<const N: usize>(
    dir: &Path,
    parse: impl Fn(&str) -> Option<(&str, [String; N])>,
) -> HashMap<String, [String; N]> {
    let mut out = HashMap::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some((id, names)) = parse(name) {
            out.insert(id.to_owned(), names);
        }
    }
    out
}

/// Pod uid -> (namespace, pod) from the kubelet's `<namespace>_<pod>_<uid>`
/// pod log directories.
fn pod_logs(dir: &Path) -> HashMap<String, [String; 2]> {
    names_in(dir, parse_pod_log_dir)
}

/// (pod uid, [namespace, pod]) of a kubelet pod log directory name.
pub fn parse_pod_log_dir(name: &str) -> Option<(&str, [String; 2])> {
    let mut parts = name.splitn(3, '_');
    let (ns, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    let uid_ok = uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if ns.is_empty() || pod.is_empty() || !uid_ok {
        return None;
    }
    Some((uid, [ns.to_owned(), pod.to_owned()]))
}

/// (container id, [namespace, pod, container]) of a kubelet log link name.
pub fn parse_kubelet_log(name: &str) -> Option<(&str, [String; 3])> {
    let stem = name.strip_suffix(".log")?;
    let (rest, id) = stem.rsplit_once('-')?;
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut parts = rest.splitn(3, '_');
    let (pod, ns, container) = (parts.next()?, parts.next()?, parts.next()?);
    if [pod, ns, container].iter().any(|p| p.is_empty()) || container.contains('_') {
        return None;
    }
    Some((id, [ns.to_owned(), pod.to_owned(), container.to_owned()]))
}

/// The systemd unit a cgroup path belongs to: its last `*.service`
/// segment (a user service's own unit, not `user@UID.service`), if any.
pub fn unit_of(path: &str) -> Option<&str> {
    path.rsplit('/')
        .find(|seg| seg.len() > ".service".len() && seg.ends_with(".service"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod whose runtime state is gone is named from its kubelet pod log
    /// directory by the uid in its cgroup path.
    #[test]
    fn pods_are_named_from_their_log_directory() {
        let d = tempfile::tempdir().unwrap();
        let uid = "0f9a7c1e-1b2c-4d5e-8f90-123456789abc";
        let pods = d.path().join(KUBELET_POD_LOGS);
        fs::create_dir_all(pods.join(format!("batch_nightly-29001_{uid}"))).unwrap();
        fs::create_dir_all(pods.join("bad_name")).unwrap();
        let roots = Roots::new(d.path());
        let mut r = Resolver::new(&roots);
        let n = r.pod(uid).unwrap();
        assert_eq!(
            (n.namespace.as_str(), n.pod.as_str(), n.pod_uid.as_str()),
            ("batch", "nightly-29001", uid)
        );
        assert!(r.pod("00000000-0000-0000-0000-000000000000").is_none());
        assert!(parse_pod_log_dir("ns_pod_not-a-uid").is_none());
    }

    const ID: &str = "3f4e1c2d9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d";

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    #[test]
    fn kubelet_log_names() {
        let name = format!("web-7d4b9c-x2x_shop_nginx-{ID}.log");
        let (id, n) = parse_kubelet_log(&name).unwrap();
        assert_eq!(id, ID);
        assert_eq!(n, ["shop", "web-7d4b9c-x2x", "nginx"].map(String::from));
        for bad in [
            format!("web_shop_nginx-{}.log", &ID[1..]),
            format!("web_shop-{ID}.log"),
            format!("web_shop_nginx-{ID}.txt"),
            format!("_shop_nginx-{ID}.log"),
        ] {
            assert_eq!(parse_kubelet_log(&bad), None, "{bad}");
        }
    }

    #[test]
    fn units_from_cgroup_paths() {
        assert_eq!(
            unit_of("/system.slice/nginx.service"),
            Some("nginx.service")
        );
        assert_eq!(
            unit_of("/user.slice/user-1000.slice/user@1000.service/app.slice/sync.service"),
            Some("sync.service")
        );
        assert_eq!(
            unit_of("/system.slice/docker-ab.scope"),
            None,
            "a scope is not a service"
        );
        assert_eq!(unit_of("/.service"), None);
        assert_eq!(unit_of("/"), None);
    }

    #[test]
    fn each_runtime_layout_names_its_container() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let roots = Roots::new(root);
        let ids: Vec<String> = (0..6)
            .map(|i| format!("{:x}{}", 10 + i, &ID[1..]))
            .collect();
        write(
            root,
            &format!(
                "run/containerd/io.containerd.runtime.v2.task/k8s.io/{}/config.json",
                ids[0]
            ),
            r#"{"ociVersion":"1.0.2","annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.container-name":"app","io.kubernetes.cri.sandbox-name":"web-0","io.kubernetes.cri.sandbox-namespace":"shop","io.kubernetes.cri.sandbox-uid":"u-1"}}"#,
        );
        write(
            root,
            &format!(
                "run/k3s/containerd/io.containerd.runtime.v2.task/k8s.io/{}/config.json",
                ids[1]
            ),
            r#"{"annotations":{"io.kubernetes.cri.container-type":"sandbox","io.kubernetes.cri.sandbox-name":"web-1","io.kubernetes.cri.sandbox-namespace":"shop"}}"#,
        );
        write(
            root,
            &format!(
                "var/lib/containers/storage/overlay-containers/{}/userdata/config.json",
                ids[2]
            ),
            r#"{"annotations":{"io.kubernetes.pod.name":"db-0","io.kubernetes.pod.namespace":"data","io.kubernetes.pod.uid":"u-2","io.kubernetes.container.name":"postgres","io.kubernetes.cri-o.ContainerName":"k8s_postgres_db-0_data_u-2_0"}}"#,
        );
        write(
            root,
            &format!(
                "var/lib/containers/storage/overlay-containers/{}/userdata/config.json",
                ids[3]
            ),
            r#"{"annotations":{"io.container.manager":"libpod"}}"#,
        );
        write(
            root,
            "var/lib/containers/storage/overlay-containers/containers.json",
            &format!(
                r#"[{{"id":"{}","names":["cache"],"metadata":"{{}}"}}]"#,
                ids[3]
            ),
        );
        write(
            root,
            &format!("var/lib/docker/containers/{}/config.v2.json", ids[4]),
            r#"{"Name":"/proxy","Config":{"Labels":{"a":"b"}}}"#,
        );
        let logs = root.join("var/log/containers");
        fs::create_dir_all(&logs).unwrap();
        std::os::unix::fs::symlink(
            "/nowhere",
            logs.join(format!("api-1_prod_server-{}.log", ids[5])),
        )
        .unwrap();

        let mut r = Resolver::new(&roots);
        let n = |ns: &str, pod: &str, uid: &str, c: &str| Names {
            namespace: ns.into(),
            pod: pod.into(),
            pod_uid: uid.into(),
            container: c.into(),
        };
        assert_eq!(r.names(&ids[0]), n("shop", "web-0", "u-1", "app"));
        assert_eq!(r.names(&ids[1]), n("shop", "web-1", "", ""));
        assert_eq!(r.names(&ids[2]), n("data", "db-0", "u-2", "postgres"));
        assert_eq!(r.names(&ids[3]), n("", "", "", "cache"));
        assert_eq!(r.names(&ids[4]), n("", "", "", "proxy"));
        assert_eq!(r.names(&ids[5]), n("prod", "api-1", "", "server"));
        assert_eq!(r.names(ID), Names::default());
        // A FIFO where a config should be is not read (no blocking).
        let fifo_dir = root.join(format!(
            "run/containerd/io.containerd.runtime.v2.task/k8s.io/{ID}"
        ));
        fs::create_dir_all(&fifo_dir).unwrap();
        let fifo = std::ffi::CString::new(fifo_dir.join("config.json").to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert_eq!(r.names(ID), Names::default());
    }
}
