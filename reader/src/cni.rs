//! Same-node peers named from the node's CNI state: a connection to a pod
//! on this node is named `namespace/pod` even with no `--services` map (no
//! CronJob yet) or before the map lists a new pod.
//!
//! libcni (used by containerd's CRI plugin, CRI-O and podman) caches each
//! attachment's result in `/var/lib/cni/results/<network>-<containerID>-<ifname>`
//! (JSON, `kind: cniCacheV1`): `containerId` (the pod sandbox's id under
//! Kubernetes) and `result.ips[].address`. Each address becomes a rule
//! "this address, any port" named after the container's runtime names
//! (`runtime`: the sandbox's pod and namespace; outside Kubernetes the
//! container's name). These rules come after the `--services` file's: a
//! flow to a backend on its service's port stays named by the service, as
//! on every other node.
//!
//! Cost: `collect` keeps what it found in `cni-peers.json` in its state
//! directory with the results directory's mtime, and rereads the directory
//! only when that changes (libcni creates a file per attachment and removes
//! it at teardown; both change the directory's mtime). One `stat` per cycle
//! while no pod comes or goes. A scan that could not name every address
//! (a sandbox whose runtime state is not written yet), or that saw a
//! directory changed in the last 2 s (a change within the same mtime tick
//! would go unseen), is not kept: the next cycle scans again.
//! `dump` scans every time (it keeps no state).

use std::{
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use crate::{
    runtime::{Resolver, Roots},
    servicemap::{Rule, ServiceMap},
};

/// The results directory under `--runtime-root` when `--cni-results` is not given.
const DEFAULT_RESULTS: &str = "var/lib/cni/results";

/// A cache file larger than this is not a CNI result (they are ~1.5 KiB).
const MAX_FILE: u64 = 1 << 20;

/// A directory changed this recently may change again within its mtime tick.
const SETTLE: Duration = Duration::from_secs(2);

/// The file in `collect`'s state directory that remembers the last scan.
pub const CACHE_FILE: &str = "cni-peers.json";

/// `--cni-results`, shared by `collect` and `dump`.
#[derive(Debug, clap::Args)]
pub struct ResultsArg {
    /// libcni's result cache, where same-node pods' addresses are read
    /// (peers named namespace/pod after the --services map's rules);
    /// `none` turns this off [default: var/lib/cni/results under --runtime-root].
    #[arg(long, value_name = "DIR")]
    pub cni_results: Option<PathBuf>,
}

impl ResultsArg {
    /// Whether the directory was given (not the default).
    pub fn explicit(&self) -> bool {
        self.cni_results.is_some()
    }

    /// The directory to read, or `None` when turned off.
    pub fn dir(&self, runtime_root: &Path) -> Option<PathBuf> {
        match &self.cni_results {
            Some(d) if d.as_os_str() == "none" => None,
            Some(d) => Some(d.clone()),
            None => Some(runtime_root.join(DEFAULT_RESULTS)),
        }
    }
}

/// One libcni cache file: just what is used.
#[derive(Deserialize)]
struct CacheFile {
    #[serde(default)]
    kind: String,
    #[serde(rename = "containerId", default)]
    container_id: String,
    #[serde(default)]
    result: Option<CniResult>,
}

/// A CNI result: `ips` (spec 0.3.0 and later), `ip4`/`ip6` (0.1/0.2).
#[derive(Default, Deserialize)]
#[serde(default)]
struct CniResult {
    ips: Vec<Address>,
    ip4: Option<OldAddress>,
    ip6: Option<OldAddress>,
}

#[derive(Deserialize)]
struct Address {
    address: String,
}

#[derive(Deserialize)]
struct OldAddress {
    ip: String,
}

/// What one scan found: (address, container id) of every attachment.
fn scan(dir: &Path) -> std::io::Result<Vec<(IpAddr, String)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let Some(bytes) = read_small(&entry.path()) else {
            continue;
        };
        let Ok(file) = serde_json::from_slice::<CacheFile>(&bytes) else {
            continue;
        };
        if file.kind != "cniCacheV1" || file.container_id.is_empty() {
            continue;
        }
        let r = file.result.unwrap_or_default();
        let addresses = r
            .ips
            .into_iter()
            .map(|a| a.address)
            .chain(r.ip4.into_iter().chain(r.ip6).map(|a| a.ip));
        for a in addresses {
            let ip = a.split('/').next().unwrap_or("");
            if let Ok(ip) = ip.parse::<IpAddr>() {
                found.push((ip, file.container_id.clone()));
            }
        }
    }
    found.sort();
    found.dedup();
    Ok(found)
}

/// A regular file's bytes if it is one and small (a FIFO planted there
/// never blocks the cycle).
fn read_small(path: &Path) -> Option<Vec<u8>> {
    crate::runtime::read_regular_upto(path, MAX_FILE)
}

/// One named peer: address, name, namespace.
type Peer = (IpAddr, String, String);

/// Names each attachment from its container's runtime state; `false` if
/// some could not be named.
fn name(found: Vec<(IpAddr, String)>, roots: &Roots) -> (Vec<Peer>, bool) {
    let mut resolver = Resolver::new(roots);
    let mut all = true;
    let mut peers = Vec::new();
    for (ip, id) in found {
        let n = resolver.names(&id);
        if n.is_kubernetes() {
            peers.push((ip, n.pod, n.namespace));
        } else if !n.container.is_empty() {
            peers.push((ip, n.container, String::new()));
        } else {
            all = false;
        }
    }
    (peers, all)
}

/// What `collect` remembers between cycles.
#[derive(Default, Deserialize, Serialize, PartialEq)]
struct Cache {
    dir: PathBuf,
    mtime_ns: u128,
    peers: Vec<Peer>,
    /// The last scan's failure, said once rather than every cycle.
    error: Option<String>,
}

fn mtime_ns(dir: &Path) -> std::io::Result<(u128, SystemTime)> {
    let m = fs::metadata(dir)?.modified()?;
    let ns = m
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    Ok((ns, m))
}

/// Adds the same-node peers found in `dir` to `map`, after its rules.
/// `state` is `collect`'s state directory (`None`: `dump`, no memory).
/// Returns a warning to print, if any; never fails the caller. The default
/// directory (`explicit` false) that this reader may not read is no
/// warning: libcni keeps it root-only, and a reader run as a member of the
/// pins' group is not expected to see it.
pub fn add_peers(
    map: &mut ServiceMap,
    dir: &Path,
    explicit: bool,
    roots: &Roots,
    state: Option<&Path>,
) -> Option<String> {
    let cache_path = state.map(|s| s.join(CACHE_FILE));
    let old: Option<Cache> = cache_path
        .as_deref()
        .and_then(read_small)
        .and_then(|b| serde_json::from_slice(&b).ok());
    let denied = |e: &std::io::Error| !explicit && e.kind() == std::io::ErrorKind::PermissionDenied;
    let (peers, warning) = match mtime_ns(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound || denied(&e) => (Vec::new(), None),
        Err(e) => failed(dir, &e, old.as_ref(), cache_path.as_deref()),
        Ok((ns, _))
            if old
                .as_ref()
                .is_some_and(|c| c.dir == dir && c.mtime_ns == ns && c.error.is_none()) =>
        {
            (old.map(|c| c.peers).unwrap_or_default(), None)
        }
        Ok((ns, at)) => match scan(dir) {
            Err(e) if denied(&e) => (Vec::new(), None),
            Err(e) => failed(dir, &e, old.as_ref(), cache_path.as_deref()),
            Ok(found) => {
                let (peers, all) = name(found, roots);
                let settled = at.elapsed().is_ok_and(|d| d >= SETTLE);
                if let (Some(path), true, true) = (&cache_path, all, settled) {
                    let c = Cache {
                        dir: dir.to_owned(),
                        mtime_ns: ns,
                        peers,
                        error: None,
                    };
                    save(path, &c);
                    (c.peers, None)
                } else {
                    (peers, None)
                }
            }
        },
    };
    map.extend(
        peers
            .into_iter()
            .map(|(ip, name, ns)| Rule::host(ip, name, ns)),
    );
    warning
}

/// A directory that cannot be read: said once (until the error changes),
/// remembered, no peers.
fn failed(
    dir: &Path,
    e: &std::io::Error,
    old: Option<&Cache>,
    cache_path: Option<&Path>,
) -> (Vec<Peer>, Option<String>) {
    let msg = format!(
        "cannot read CNI results {}: {e}; same-node peers are not named from CNI state (give this reader read access, or --cni-results none)",
        dir.display()
    );
    let said = old.is_some_and(|c| c.dir == dir && c.error.as_deref() == Some(msg.as_str()));
    if let Some(path) = cache_path {
        let c = Cache {
            dir: dir.to_owned(),
            error: Some(msg.clone()),
            ..Cache::default()
        };
        if old != Some(&c) {
            save(path, &c);
        }
    }
    (Vec::new(), (!said).then_some(msg))
}

/// Best effort: a cache that cannot be written is rebuilt next cycle.
fn save(path: &Path, c: &Cache) {
    if let Ok(bytes) = serde_json::to_vec(c) {
        let _ = crate::output::atomic::write_atomic(path, &bytes, 0o600);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORDED: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/data/cni/podman-98b8b5f8cf502ba102679325faeee30d378636147e72477c8b30e86f649b480b-eth0"
    );
    const ID: &str = "98b8b5f8cf502ba102679325faeee30d378636147e72477c8b30e86f649b480b";

    /// A containerd task bundle naming sandbox `id` as `ns/pod`.
    fn sandbox(root: &Path, id: &str, ns: &str, pod: &str) {
        let d = root
            .join("run/containerd/io.containerd.runtime.v2.task/k8s.io")
            .join(id);
        fs::create_dir_all(&d).unwrap();
        fs::write(
            d.join("config.json"),
            format!(r#"{{"annotations":{{"io.kubernetes.cri.container-type":"sandbox","io.kubernetes.cri.sandbox-id":"{id}","io.kubernetes.cri.sandbox-name":"{pod}","io.kubernetes.cri.sandbox-namespace":"{ns}"}}}}"#),
        )
        .unwrap();
    }

    fn names(m: &ServiceMap, ip: &str) -> Option<String> {
        m.lookup(ip.parse().unwrap(), 80)
            .map(|r| format!("{}/{}", r.namespace, r.name))
    }

    /// The recorded libcni file names its address after the sandbox's pod;
    /// the `--services` file's rules still come first.
    #[test]
    fn a_recorded_cache_file_names_its_pod_after_the_file_rules() {
        let t = tempfile::tempdir().unwrap();
        let results = t.path().join("var/lib/cni/results");
        fs::create_dir_all(&results).unwrap();
        fs::copy(
            RECORDED,
            results.join(Path::new(RECORDED).file_name().unwrap()),
        )
        .unwrap();
        // Not results: a foreign kind, bad JSON, a directory.
        fs::write(
            results.join("x-1-eth0"),
            r#"{"kind":"other","containerId":"1","result":{"ips":[{"address":"10.88.0.99/16"}]}}"#,
        )
        .unwrap();
        fs::write(results.join("y-2-eth0"), "{").unwrap();
        fs::create_dir(results.join("z")).unwrap();
        sandbox(t.path(), ID, "shop", "web-0");
        let roots = Roots::new(t.path());
        let mut m = ServiceMap::parse("10.88.0.13,443,tls-front,edge\n", "svc.csv").unwrap();
        let arg = ResultsArg { cni_results: None };
        let w = add_peers(&mut m, &arg.dir(t.path()).unwrap(), false, &roots, None);
        assert_eq!(w, None);
        assert_eq!(names(&m, "10.88.0.13").as_deref(), Some("shop/web-0"));
        assert_eq!(
            m.lookup("10.88.0.13".parse().unwrap(), 443)
                .map(|r| r.name.as_str()),
            Some("tls-front")
        );
        assert_eq!(names(&m, "10.88.0.99"), None);
        assert_eq!(
            ResultsArg {
                cni_results: Some("none".into())
            }
            .dir(t.path()),
            None
        );
    }

    /// The scan is kept in the state dir and reused while the directory's
    /// mtime stands; a new attachment changes it and is seen; a missing
    /// directory is no peers and no warning; an unreadable one is said once.
    #[test]
    fn the_scan_is_reused_until_the_directory_changes() {
        let t = tempfile::tempdir().unwrap();
        let (results, state) = (t.path().join("results"), t.path().join("state"));
        fs::create_dir_all(&results).unwrap();
        fs::create_dir_all(&state).unwrap();
        let roots = Roots::new(t.path());
        let file = |net: &str, id: &str, ip: &str| {
            let text = fs::read_to_string(RECORDED)
                .unwrap()
                .replace(ID, id)
                .replace("10.88.0.13/16", ip);
            fs::write(results.join(format!("{net}-{id}-eth0")), text).unwrap();
        };
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        sandbox(t.path(), &a, "ns", "pod-a");
        sandbox(t.path(), &b, "ns", "pod-b");
        file("k8s-pod-network", &a, "10.1.0.5/24");
        // Settled: older than SETTLE.
        let old = SystemTime::now() - Duration::from_secs(10);
        fs::File::open(&results).unwrap().set_modified(old).unwrap();
        let run = || {
            let mut m = ServiceMap::default();
            let w = add_peers(&mut m, &results, true, &roots, Some(&state));
            (m, w)
        };
        let (m, w) = run();
        assert_eq!(
            (names(&m, "10.1.0.5").as_deref(), w),
            (Some("ns/pod-a"), None)
        );
        assert!(
            state.join(CACHE_FILE).is_file(),
            "a settled full scan is kept"
        );
        // The cache is what is used while the mtime stands: rename pod-a's
        // sandbox and it keeps its cached name.
        sandbox(t.path(), &a, "ns", "renamed");
        assert_eq!(names(&run().0, "10.1.0.5").as_deref(), Some("ns/pod-a"));
        // A new attachment changes the directory: both are seen.
        file("k8s-pod-network", &b, "10.1.0.6/24");
        let m = run().0;
        assert_eq!(names(&m, "10.1.0.5").as_deref(), Some("ns/renamed"));
        assert_eq!(names(&m, "10.1.0.6").as_deref(), Some("ns/pod-b"));
        // Missing: nothing, silently.
        let mut m = ServiceMap::default();
        assert_eq!(
            add_peers(
                &mut m,
                &t.path().join("absent"),
                false,
                &roots,
                Some(&state)
            ),
            None
        );
        assert_eq!(m.len(), 0);
        // Unreadable (a file where the directory should be): said once.
        let not_dir = t.path().join("not-a-dir");
        fs::write(&not_dir, "").unwrap();
        let w = add_peers(&mut m, &not_dir, true, &roots, Some(&state)).unwrap();
        assert!(
            w.starts_with(&format!("cannot read CNI results {}: ", not_dir.display())),
            "{w}"
        );
        assert!(w.contains("--cni-results none") && !w.contains('\n'), "{w}");
        assert_eq!(
            add_peers(&mut m, &not_dir, true, &roots, Some(&state)),
            None,
            "said once"
        );
        assert_eq!(m.len(), 0);
    }
}
