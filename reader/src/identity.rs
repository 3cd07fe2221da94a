//! Who a connection belongs to (workload) and whom it talks to (service).
//!
//! Workload: the socket's cgroup v2 (its path relative to the cgroup v2
//! mount, "/" for the root), the container id and Kubernetes pod uid parsed
//! from that path, the names the container runtime keeps for it
//! (`runtime`: Kubernetes namespace, pod and container, or a podman/docker
//! container's name), the process the kernel recorded (connect() caller, or
//! listen() caller for inbound), and the network namespace. The `workload`
//! name is the most readable of them: `namespace/pod` under Kubernetes, the
//! container's name under podman or docker, the systemd unit of a service,
//! else the cgroup path. Cgroup ids are resolved once (path and runtime
//! names) and kept in the reader's state, so a connection whose cgroup is
//! gone still reports the name it had, and no runtime state is read again;
//! a cgroup gone before the reader first looked (one that lived less than a
//! cycle) is named from the path the kernel captured when it was made (the
//! pinned `cgroup_names` map).
//! Service: a `--services` rule's name when one matches; otherwise
//! outbound -> remote address:port, inbound -> local (listening) address:port.
//! Addresses have one canonical text form (IPv4-mapped IPv6 shown as IPv4,
//! IPv6 in brackets when a port follows).

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::IpAddr,
    path::Path,
};

use longconn_common::{layout, mounts, ConnRecord};

use crate::{runtime, servicemap::ServiceMap};

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    pub workload: String,
    pub container_id: String,
    pub pod_uid: String,
    /// Kubernetes namespace and pod, and the container's name (see
    /// `runtime::Names`); not kept by states written before they existed.
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub pod: String,
    #[serde(default)]
    pub container: String,
    pub comm: String,
    pub pid: u32,
    pub netns_cookie: u64,
    pub service: String,
    pub service_namespace: String,
}

pub fn endpoint(ip: IpAddr, port: u32) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// The far end for outbound, the listening end for inbound.
fn service_endpoint(r: &ConnRecord) -> (IpAddr, u32) {
    if r.direction == layout::DIR_INBOUND {
        (r.local_ip(), r.local_port)
    } else {
        (r.remote_ip(), r.remote_port)
    }
}

/// (container id, pod uid) from the common cgroup layouts:
/// systemd driver `…/docker-<id>.scope`, `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `libpod-<id>.scope`, `kubepods-…-pod<uid_with_underscores>.slice`;
/// cgroupfs driver `/docker/<id>`, `/kubepods/burstable/pod<uid>/<id>`, `/libpod_parent/libpod-<id>`.
pub fn parse_container(path: &str) -> (String, String) {
    let mut container = String::new();
    let mut pod = String::new();
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        let base = seg
            .strip_suffix(".scope")
            .or_else(|| seg.strip_suffix(".slice"))
            .unwrap_or(seg);
        let id = [
            "docker-",
            "cri-containerd-",
            "crio-",
            "libpod-",
            "containerd-",
        ]
        .iter()
        .find_map(|p| base.strip_prefix(p))
        .unwrap_or(base);
        if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            container = id.to_owned();
            continue;
        }
        let pod_part = base
            .rsplit_once("-pod")
            .map(|(_, u)| u)
            .or_else(|| base.strip_prefix("pod"));
        if let Some(uid) = pod_part {
            let uid = uid.replace('_', "-");
            if uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
                pod = uid;
            }
        }
    }
    (container, pod)
}

/// What the reader remembers of a cgroup: its path and what the container
/// runtime calls the workload in it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cgroup {
    /// Relative to the cgroup v2 mount; "cgroup:<id>" if it was not found.
    pub path: String,
    /// None: not looked up yet (a state written before runtime names).
    pub names: Option<runtime::Names>,
}

impl Cgroup {
    /// A cgroup known by its path only, its runtime names still to look up.
    pub fn unnamed(path: String) -> Self {
        Self { path, names: None }
    }
}

/// The paths the kernel captured when cgroups were made (the pinned
/// `cgroup_names` map), for the ids asked: raw bytes, relative to the
/// cgroup v2 root.
pub type Captured<'c> = &'c dyn Fn(&BTreeSet<u64>) -> HashMap<u64, Vec<u8>>;

/// Resolves every cgroup id in `records` not yet in `cgroups` with one walk
/// of the cgroup v2 tree, then from the paths the kernel captured when the
/// cgroups were made (`captured`: a cgroup gone before this walk, even one
/// that lived less than a cycle); ids still unknown are named
/// "cgroup:<id>". Looks up the runtime names of each that has none yet,
/// once: nothing here runs again for a cgroup already resolved.
pub fn resolve_cgroups<'a>(
    cgroups: &mut BTreeMap<u64, Cgroup>,
    records: impl IntoIterator<Item = &'a ConnRecord>,
    roots: &runtime::Roots,
    captured: Captured<'_>,
) {
    let unnamed: BTreeSet<u64> = records
        .into_iter()
        .map(|r| r.cgroup_id)
        .filter(|id| cgroups.get(id).is_none_or(|c| c.names.is_none()))
        .collect();
    if unnamed.is_empty() {
        return;
    }
    let mut left: BTreeSet<u64> = unnamed
        .iter()
        .copied()
        .filter(|id| !cgroups.contains_key(id))
        .collect();
    if !left.is_empty() {
        if let Ok(root) = mounts::cgroup2_root() {
            let mut queue = VecDeque::from([root.clone()]);
            while let Some(dir) = queue.pop_front() {
                if left.is_empty() {
                    break;
                }
                if let Ok(id) = mounts::cgroup_id(&dir) {
                    if left.remove(&id) {
                        cgroups.insert(id, Cgroup::unnamed(relative(&root, &dir)));
                    }
                }
                if let Ok(entries) = std::fs::read_dir(&dir) {
                    for e in entries.flatten() {
                        if e.file_type().is_ok_and(|t| t.is_dir()) {
                            queue.push_back(e.path());
                        }
                    }
                }
            }
        }
        let paths = if left.is_empty() {
            HashMap::new()
        } else {
            captured(&left)
        };
        for id in left {
            let path = match paths.get(&id) {
                Some(p) => longconn_common::text::distinct_text(p),
                None => format!("cgroup:{id}"),
            };
            cgroups.insert(id, Cgroup::unnamed(path));
        }
    }
    let mut resolver = runtime::Resolver::new(roots);
    for id in unnamed {
        if let Some(c) = cgroups.get_mut(&id) {
            let (container_id, pod_uid) = parse_container(&c.path);
            let mut names = if container_id.is_empty() {
                runtime::Names::default()
            } else {
                resolver.names(&container_id)
            };
            // The runtime's state is gone (or this is the pod's own
            // cgroup): the kubelet's pod log directory outlives it.
            if !names.is_kubernetes() && !pod_uid.is_empty() {
                if let Some(pod) = resolver.pod(&pod_uid) {
                    names = runtime::Names {
                        container: names.container,
                        ..pod
                    };
                }
            }
            c.names = Some(names);
        }
    }
}

/// Which of cgroups `ids` are gone: not in the cgroup v2 tree (one walk,
/// stopped once all are found; each id from the directory entry, no stat).
/// None is known gone if the tree cannot be read.
pub fn gone_cgroups(ids: &BTreeSet<u64>) -> BTreeSet<u64> {
    use std::os::unix::fs::DirEntryExt;
    let mut left = ids.clone();
    let Ok(root) = mounts::cgroup2_root() else {
        return BTreeSet::new();
    };
    let Ok(root_id) = mounts::cgroup_id(&root) else {
        return BTreeSet::new();
    };
    left.remove(&root_id);
    let mut queue = VecDeque::from([root]);
    while let Some(dir) = queue.pop_front() {
        if left.is_empty() {
            break;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                left.remove(&e.ino());
                queue.push_back(e.path());
            }
        }
    }
    left
}

fn relative(root: &Path, dir: &Path) -> String {
    match dir.strip_prefix(root) {
        Ok(rel) if rel.as_os_str().is_empty() => "/".into(),
        Ok(rel) => format!("/{}", name_text(rel)),
        Err(_) => name_text(dir),
    }
}

/// A cgroup path as text (`text::distinct_text`: invalid bytes escaped,
/// so two names that differ in them stay two names).
fn name_text(p: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    longconn_common::text::distinct_text(p.as_os_str().as_bytes())
}

/// The full identity of a record, given resolved cgroup names and a service
/// map: `Identifier::identify` without its memory (the test oracle).
#[cfg(test)]
pub fn identify(
    r: &ConnRecord,
    cgroups: &BTreeMap<u64, Cgroup>,
    services: &ServiceMap,
) -> Identity {
    let (ip, port) = service_endpoint(r);
    assemble(
        r,
        workload_names(r.cgroup_id, cgroups),
        service_names(ip, port, services),
    )
}

/// `identify` for many records: the names of a cgroup (workload, container
/// id, pod uid, namespace, pod, container) and of a service endpoint are worked out once per run, not
/// once per connection (at 100k connections in a few cgroups and services,
/// formatting them per record was an eighth of `dump`'s time).
pub struct Identifier<'a> {
    cgroups: &'a BTreeMap<u64, Cgroup>,
    services: &'a ServiceMap,
    workloads: RefCell<HashMap<u64, WorkloadNames>>,
    endpoints: RefCell<HashMap<(IpAddr, u32), [String; 2]>>,
}

impl<'a> Identifier<'a> {
    pub fn new(cgroups: &'a BTreeMap<u64, Cgroup>, services: &'a ServiceMap) -> Self {
        Self {
            cgroups,
            services,
            workloads: RefCell::default(),
            endpoints: RefCell::default(),
        }
    }

    /// What `identify` gives for `r`.
    pub fn identify(&self, r: &ConnRecord) -> Identity {
        let workload = self
            .workloads
            .borrow_mut()
            .entry(r.cgroup_id)
            .or_insert_with(|| workload_names(r.cgroup_id, self.cgroups))
            .clone();
        let (ip, port) = service_endpoint(r);
        let service = self
            .endpoints
            .borrow_mut()
            .entry((ip, port))
            .or_insert_with(|| service_names(ip, port, self.services))
            .clone();
        assemble(r, workload, service)
    }
}

/// A cgroup's workload names: workload, container id, pod uid, namespace,
/// pod, container.
type WorkloadNames = [String; 6];

/// A record's identity from its workload names and its service names
/// (service, namespace).
fn assemble(
    r: &ConnRecord,
    [workload, container_id, pod_uid, namespace, pod, container]: WorkloadNames,
    [service, service_namespace]: [String; 2],
) -> Identity {
    Identity {
        workload,
        container_id,
        pod_uid,
        namespace,
        pod,
        container,
        comm: r.comm(),
        pid: r.pid,
        netns_cookie: r.netns_cookie,
        service,
        service_namespace,
    }
}

/// The workload names of a cgroup: ids parsed from its path, names from its
/// runtime, and the readable `workload` (`readable_workload`).
fn workload_names(cgroup_id: u64, cgroups: &BTreeMap<u64, Cgroup>) -> WorkloadNames {
    let Some(c) = cgroups.get(&cgroup_id) else {
        let none = String::new;
        return [
            format!("cgroup:{cgroup_id}"),
            none(),
            none(),
            none(),
            none(),
            none(),
        ];
    };
    let (container_id, mut pod_uid) = parse_container(&c.path);
    let n = c.names.clone().unwrap_or_default();
    if pod_uid.is_empty() {
        pod_uid = n.pod_uid.clone();
    }
    [
        readable_workload(&c.path, &n),
        container_id,
        pod_uid,
        n.namespace,
        n.pod,
        n.container,
    ]
}

/// The `workload` name: `namespace/pod` under Kubernetes, the container's
/// name under podman or docker, the unit of a systemd service, else the
/// cgroup path.
pub fn readable_workload(path: &str, n: &runtime::Names) -> String {
    if n.is_kubernetes() {
        format!("{}/{}", n.namespace, n.pod)
    } else if !n.container.is_empty() {
        n.container.clone()
    } else if let Some(unit) = runtime::unit_of(path) {
        unit.to_owned()
    } else {
        path.to_owned()
    }
}

/// (service, service namespace) of an endpoint.
fn service_names(ip: IpAddr, port: u32, services: &ServiceMap) -> [String; 2] {
    let (s, n) = service_of(ip, port, services);
    [s, n]
}

/// (service, service namespace) of an endpoint.
fn service_of(ip: IpAddr, port: u32, services: &ServiceMap) -> (String, String) {
    match services.lookup(ip, port as u16) {
        Some(rule) => (rule.name.clone(), rule.namespace.clone()),
        None => (endpoint(ip, port), String::new()),
    }
}

/// Labels that can name a workload group, with the cardinality each adds.
pub const WORKLOAD_LABELS: &[(&str, &str)] = &[
    (
        "workload",
        "one per workload: Kubernetes pod, podman/docker container, systemd service, or other cgroup with TCP traffic",
    ),
    (
        "container_id",
        "one per container (empty outside containers)",
    ),
    ("pod_uid", "one per Kubernetes pod (empty outside pods)"),
    ("namespace", "one per Kubernetes namespace (empty outside pods)"),
    ("pod", "one per Kubernetes pod name (empty outside pods)"),
    (
        "container",
        "one per container name (Kubernetes, podman or docker; empty elsewhere)",
    ),
    ("comm", "one per process name that connected or listened"),
    ("netns", "one per network namespace"),
];

/// Labels that can name a service group.
pub const SERVICE_LABELS: &[(&str, &str)] = &[
    ("service", "one per remote endpoint (outbound) or listening endpoint (inbound), or per --services name"),
    ("service_namespace", "one per --services namespace"),
];

/// A validated comma list of label names (one clap value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelList(pub Vec<String>);

pub fn parse_workload_labels(s: &str) -> Result<LabelList, String> {
    parse_labels(s, WORKLOAD_LABELS).map(LabelList)
}

pub fn parse_service_labels(s: &str) -> Result<LabelList, String> {
    parse_labels(s, SERVICE_LABELS).map(LabelList)
}

/// Parses a comma list of label names against `allowed`.
pub fn parse_labels(s: &str, allowed: &[(&str, &str)]) -> Result<Vec<String>, String> {
    let labels: Vec<String> = s
        .split(',')
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    let names = || {
        let names: Vec<&str> = allowed.iter().map(|(a, _)| *a).collect();
        names.join(", ")
    };
    if labels.is_empty() {
        return Err(format!(
            "empty label list; expected a comma list of {}",
            names()
        ));
    }
    for (i, l) in labels.iter().enumerate() {
        if !allowed.iter().any(|(a, _)| a == l) {
            return Err(format!(
                "unknown label {l:?}; expected a comma list of {}",
                names()
            ));
        }
        // A label twice would give every series a duplicate label name,
        // which Prometheus rejects (the whole scrape fails).
        if labels[..i].contains(l) {
            return Err(format!("label {l:?} is listed twice; list each label once"));
        }
    }
    Ok(labels)
}

/// Separates label values inside a group key. Values are escaped
/// (`escape_key_value`), so it never occurs inside one and the split is
/// unambiguous whatever bytes a cgroup name, comm or service name holds.
pub const KEY_SEP: char = '\u{1f}';

/// Appends `v` to a group key: `\` becomes `\\` and KEY_SEP becomes `\s`.
fn escape_key_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            KEY_SEP => out.push_str("\\s"),
            c => out.push(c),
        }
    }
}

/// The label values of a group key made by `Identity::key` (or `join_key`),
/// in order. A `\` followed by anything but `\` or `s` stands for itself, so
/// keys written before values were escaped read back as they were.
#[cfg(test)]
pub fn split_key(key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = key.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            KEY_SEP => out.push(std::mem::take(&mut cur)),
            '\\' => match chars.peek() {
                Some('\\') => {
                    chars.next();
                    cur.push('\\');
                }
                Some('s') => {
                    chars.next();
                    cur.push(KEY_SEP);
                }
                _ => cur.push('\\'),
            },
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// The `index`-th value of a group key made by `join_key`, as `split_key`
/// reads it: a slice of the key, or unescaped into `buf` (cleared) when it
/// holds an escape; None past the last value. KEY_SEP never occurs inside
/// an escaped value, so every one in the key separates two.
pub fn key_value<'k>(key: &'k str, index: usize, buf: &'k mut String) -> Option<&'k str> {
    let part = key.split(KEY_SEP).nth(index)?;
    if !part.contains('\\') {
        return Some(part);
    }
    buf.clear();
    let mut chars = part.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some('\\')) => {
                chars.next();
                buf.push('\\');
            }
            ('\\', Some('s')) => {
                chars.next();
                buf.push(KEY_SEP);
            }
            (c, _) => buf.push(c),
        }
    }
    Some(buf)
}

/// How many values a group key holds (`split_key(key).len()`).
pub fn key_len(key: &str) -> usize {
    key.split(KEY_SEP).count()
}

/// A group key of label values (the inverse of `split_key`).
pub fn join_key<S: AsRef<str>>(values: impl IntoIterator<Item = S>) -> String {
    let mut key = String::new();
    for (i, v) in values.into_iter().enumerate() {
        if i > 0 {
            key.push(KEY_SEP);
        }
        escape_key_value(&mut key, v.as_ref());
    }
    key
}

impl Identity {
    /// The group key for the selected labels (escaped values joined by KEY_SEP).
    pub fn key(&self, labels: &[String]) -> String {
        // Straight into the key, no list of values: this runs for every
        // connection every cycle.
        join_key(labels.iter().map(|l| self.label(l)))
    }

    pub fn label(&self, name: &str) -> String {
        match name {
            "workload" => self.workload.clone(),
            "container_id" => self.container_id.clone(),
            "pod_uid" => self.pod_uid.clone(),
            "namespace" => self.namespace.clone(),
            "pod" => self.pod.clone(),
            "container" => self.container.clone(),
            "comm" => self.comm.clone(),
            "netns" => self.netns_cookie.to_string(),
            "service" => self.service.clone(),
            "service_namespace" => self.service_namespace.clone(),
            _ => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {

    /// Issue 22 item 8: invalid UTF-8 in cgroup names stays distinct.
    #[test]
    fn invalid_utf8_cgroup_names_stay_distinct() {
        use std::os::unix::ffi::OsStrExt;
        let a = super::name_text(Path::new(std::ffi::OsStr::from_bytes(b"a\xff")));
        let b = super::name_text(Path::new(std::ffi::OsStr::from_bytes(b"a\xfe")));
        assert_ne!(a, b);
        assert_eq!(a, "a\\xff");
        assert_eq!(super::name_text(Path::new("ok\\x2d")), "ok\\x2d");
    }

    use super::*;

    #[test]
    fn endpoints_are_canonical() {
        assert_eq!(endpoint("10.0.0.1".parse().unwrap(), 443), "10.0.0.1:443");
        assert_eq!(endpoint("::1".parse().unwrap(), 80), "[::1]:80");
        assert_eq!(
            relative(Path::new("/sys/fs/cgroup"), Path::new("/sys/fs/cgroup")),
            "/"
        );
        assert_eq!(
            relative(Path::new("/sys/fs/cgroup"), Path::new("/sys/fs/cgroup/a/b")),
            "/a/b"
        );
    }

    #[test]
    fn the_identifier_names_every_record_as_identify_does() {
        let pod = "/kubepods/burstable/pod6c3b0e6e-2c47-4a5e-9a4f-0d2b6f3c1a77/3f4e1c2d9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d";
        let names = BTreeMap::from([
            (1u64, Cgroup::unnamed("/system.slice/db.service".to_owned())),
            (
                2,
                Cgroup {
                    path: pod.to_owned(),
                    names: Some(runtime::Names {
                        namespace: "shop".into(),
                        pod: "web-0".into(),
                        container: "app".into(),
                        ..Default::default()
                    }),
                },
            ),
        ]);
        let services = ServiceMap::parse("10.0.0.0/8,5432,postgres,db\n", "svc.csv").unwrap();
        let identifier = Identifier::new(&names, &services);
        let v4 = |a: [u8; 4]| [u32::from_ne_bytes(a), 0, 0, 0];
        for i in 0..40u32 {
            let r = ConnRecord {
                cookie: u64::from(i),
                cgroup_id: u64::from(i % 3), // 0: unresolved
                direction: if i % 2 == 0 {
                    layout::DIR_INBOUND
                } else {
                    layout::DIR_OUTBOUND
                },
                family: layout::AF_INET,
                local_addr: v4([127, 0, 0, 1]),
                local_port: 8080 + i % 2,
                remote_addr: v4([10, 0, 0, (i % 4) as u8]),
                remote_port: if i % 5 == 0 { 5432 } else { 40000 + i },
                pid: i,
                comm: *b"worker\0\0\0\0\0\0\0\0\0\0",
                netns_cookie: u64::from(i % 2),
                ..Default::default()
            };
            assert_eq!(
                identifier.identify(&r),
                identify(&r, &names, &services),
                "record {i}"
            );
        }
    }

    #[test]
    fn the_workload_is_the_most_readable_name() {
        let k8s = runtime::Names {
            namespace: "shop".into(),
            pod: "web-0".into(),
            pod_uid: "u".into(),
            container: "app".into(),
        };
        let podman = runtime::Names {
            container: "cache".into(),
            ..Default::default()
        };
        let none = runtime::Names::default();
        let unit = "/system.slice/nginx.service";
        assert_eq!(readable_workload("/kubepods/x", &k8s), "shop/web-0");
        assert_eq!(
            readable_workload("/libpod_parent/libpod-x", &podman),
            "cache"
        );
        assert_eq!(readable_workload(unit, &none), "nginx.service");
        assert_eq!(
            readable_workload("/user.slice/session-1.scope", &none),
            "/user.slice/session-1.scope"
        );
        // Known by path only (not looked up): the ids still come from the path.
        let id = "3f4e1c2d9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d";
        let cgroups = BTreeMap::from([(5u64, Cgroup::unnamed(format!("/docker/{id}")))]);
        let w = workload_names(5, &cgroups);
        assert_eq!(w[0], format!("/docker/{id}"));
        assert_eq!(w[1], id);
        assert_eq!(workload_names(6, &cgroups)[0], "cgroup:6");
    }

    #[test]
    fn containers_and_pods_from_common_layouts() {
        let id = "3f4e1c2d9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d";
        let uid = "6c3b0e6e-2c47-4a5e-9a4f-0d2b6f3c1a77";
        let uid_ = uid.replace('-', "_");
        for (path, want_c, want_p) in [
            (format!("/system.slice/docker-{id}.scope"), id, ""),
            (format!("/docker/{id}"), id, ""),
            (format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{id}.scope"), id, uid),
            (format!("/kubepods/burstable/pod{uid}/{id}"), id, uid),
            (format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-{id}.scope"), id, uid),
            (format!("/machine.slice/libpod-{id}.scope/container"), id, ""),
            (format!("/libpod_parent/libpod-{id}"), id, ""),
            ("/system.slice/nginx.service".to_owned(), "", ""),
            ("/".to_owned(), "", ""),
        ] {
            assert_eq!(parse_container(&path), (want_c.to_owned(), want_p.to_owned()), "{path}");
        }
    }

    #[test]
    fn group_keys_are_unambiguous_whatever_the_values_hold() {
        let labels: Vec<String> = ["workload", "comm"].map(String::from).to_vec();
        let id = |w: &str, c: &str| Identity {
            workload: w.into(),
            comm: c.into(),
            ..Default::default()
        };
        // Joined raw with 0x1f these two were the same key (issue 12 item 3).
        let a = id("/a\u{1f}b", "x");
        let b = id("/a", "b\u{1f}x");
        assert_ne!(a.key(&labels), b.key(&labels));
        assert_eq!(split_key(&a.key(&labels)), vec!["/a\u{1f}b", "x"]);
        assert_eq!(split_key(&b.key(&labels)), vec!["/a", "b\u{1f}x"]);
        // A key written before escaping (no \\ or \s in it) reads back as it was.
        assert_eq!(split_key("/sys\\a\u{1f}c\\"), vec!["/sys\\a", "c\\"]);
        let mut buf = String::new();
        assert_eq!(key_value("/sys\\a\u{1f}c\\", 1, &mut buf), Some("c\\"));
        // Any values round-trip, so distinct value lists give distinct keys.
        let mut g = longconn_testgen::Gen::new(8);
        let mut seen = std::collections::HashMap::new();
        for _ in 0..200_000 {
            let n = 1 + g.below(3);
            let values: Vec<String> = (0..n)
                .map(|_| g.text(&["\\s", "\u{1f}", "a\\", "\n\"\u{1b}é", ""]))
                .collect();
            let key = join_key(values.iter().map(String::as_str));
            assert_eq!(split_key(&key), values, "{key:?}");
            let mut buf = String::new();
            assert_eq!(key_len(&key), values.len(), "{key:?}");
            for (i, v) in values.iter().enumerate() {
                assert_eq!(key_value(&key, i, &mut buf), Some(v.as_str()), "{key:?}");
            }
            assert_eq!(key_value(&key, values.len(), &mut buf), None);
            if let Some(other) = seen.insert(key.clone(), values.clone()) {
                assert_eq!(other, values, "{key:?}");
            }
        }
    }

    #[test]
    fn label_lists() {
        assert_eq!(
            parse_labels("workload,comm", WORKLOAD_LABELS).unwrap(),
            vec!["workload", "comm"]
        );
        assert!(parse_labels("workload,port", WORKLOAD_LABELS)
            .unwrap_err()
            .contains("\"port\""));
        // A label twice gives a duplicate label name: invalid exposition.
        let e = parse_labels("workload,comm,workload", WORKLOAD_LABELS).unwrap_err();
        assert!(e.contains("\"workload\" is listed twice"), "{e}");
        assert!(parse_workload_labels(" workload , workload").is_err());
        assert!(parse_service_labels("service,service_namespace,service").is_err());
    }
}
