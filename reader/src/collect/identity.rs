//! Who a connection belongs to (workload) and whom it talks to (service).
//!
//! Workload: the socket's cgroup v2 path, relative to the cgroup v2 mount
//! ("/" for the root). Ids are resolved once and remembered in the state, so a
//! connection whose cgroup is gone still reports the name it had.
//! Service: outbound -> remote address:port; inbound -> local (listening)
//! address:port. Addresses are in one canonical text form (IPv4-mapped IPv6
//! shown as IPv4; IPv6 in brackets).

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use longconn_common::{layout, mounts, ConnRecord};

pub fn endpoint(ip: IpAddr, port: u32) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

pub fn service_of(r: &ConnRecord) -> String {
    if r.direction == layout::DIR_INBOUND {
        endpoint(r.local_ip(), r.local_port)
    } else {
        endpoint(r.remote_ip(), r.remote_port)
    }
}

/// Resolves every cgroup id in `records` not yet in `names` with one walk of
/// the cgroup v2 tree; ids not found are named "cgroup:<id>".
pub fn resolve_cgroups(names: &mut BTreeMap<u64, String>, records: &[ConnRecord]) {
    let missing: std::collections::BTreeSet<u64> = records
        .iter()
        .map(|r| r.cgroup_id)
        .filter(|id| !names.contains_key(id))
        .collect();
    if missing.is_empty() {
        return;
    }
    let Ok(root) = mounts::cgroup2_root() else {
        for id in missing {
            names.insert(id, format!("cgroup:{id}"));
        }
        return;
    };
    let mut left = missing.clone();
    let mut queue = std::collections::VecDeque::from([root.clone()]);
    while let Some(dir) = queue.pop_front() {
        if left.is_empty() {
            break;
        }
        if let Ok(id) = mounts::cgroup_id(&dir) {
            if left.remove(&id) {
                names.insert(id, relative(&root, &dir));
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
    for id in left {
        names.insert(id, format!("cgroup:{id}"));
    }
}

fn relative(root: &Path, dir: &Path) -> String {
    match dir.strip_prefix(root) {
        Ok(rel) if rel.as_os_str().is_empty() => "/".into(),
        Ok(rel) => format!("/{}", rel.display()),
        Err(_) => dir.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
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
}
