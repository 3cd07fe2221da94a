//! Pinning again over existing pins: identical options are a no-op (exit 0);
//! different ones cannot be applied in place (the maps are sized and the
//! programs attached already), so say exactly what differs and how to re-pin.
//!
//! The pinned values are read from the pins themselves: cgroup and hooks from
//! `meta`, capacities from the kernel's map info (max_entries), the group from
//! the pin dir's owner group and mode.

use std::{fs, os::unix::fs::MetadataExt, path::Path, process::ExitCode};

use aya::maps::MapInfo;
use longconn_common::{
    mounts,
    pinned::{self, Access},
    pins, PinnedError,
};

use longconn_common::exit::{coded, Exit};

use crate::{attach, hooks};

/// What a run asks for (or what the pins hold), in comparable form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub cgroup_id: u64,
    /// For messages: the cgroup directory (or "cgroup id N").
    pub cgroup: String,
    pub hooks: u32,
    pub max_connections: u32,
    pub ringbuf_bytes: u64,
    /// Group allowed to read the pins; None: root only.
    pub group: Option<u32>,
}

/// `Ok(None)`: nothing pinned here yet, go on. `Ok(Some(0))`: pinned with
/// these very options. Otherwise an error saying what to do.
pub fn check(
    pin_dir: &Path,
    requested: &Settings,
    cgroup_dir: &Path,
) -> anyhow::Result<Option<ExitCode>> {
    if !pin_dir.join(pins::META).exists() {
        return Ok(None);
    }
    let meta = match pinned::read_meta(pin_dir, Access::ReadOnly) {
        Ok(m) => m,
        Err(e @ PinnedError::Layout { .. }) => {
            return Err(coded(Exit::NotConfigured, e.to_string()))
        }
        Err(e) => return Err(e.into()),
    };
    let d = pin_dir.display();
    let mut missing: Vec<_> = attach::expected_links(meta.hooks)
        .into_iter()
        .filter(|l| !pins::link_path(pin_dir, l).exists())
        .collect();
    if !pin_dir.join(pins::REFRESH).exists() {
        missing.push(pins::REFRESH);
    }
    if !missing.is_empty() {
        return Err(coded(Exit::Failed, format!("{d} is pinned but links {} are missing; run `longconn-pin detach --pin-dir {d}` and pin again", missing.join(", "))));
    }
    let pinned = Settings {
        cgroup_id: meta.cgroup_id,
        cgroup: mounts::cgroup2_root()
            .ok()
            .and_then(|root| mounts::cgroup_path_of(&root, meta.cgroup_id))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| format!("cgroup id {} (directory gone)", meta.cgroup_id)),
        hooks: meta.hooks,
        max_connections: max_entries(&pin_dir.join(pins::CONNS))?,
        ringbuf_bytes: u64::from(max_entries(&pin_dir.join(pins::CLOSED))?),
        group: pinned_group(pin_dir)?,
    };
    let diffs = differences(&pinned, requested);
    if diffs.is_empty() {
        println!(
            "longconn already pinned at {d} (layout {}) with these options; nothing to do",
            meta.layout_version
        );
        return Ok(Some(ExitCode::SUCCESS));
    }
    Err(coded(
        Exit::DifferentOptions,
        format!(
            "{d} is already pinned with other options ({}); nothing changed. To apply them, re-pin (this drops the live records and close records not yet collected: run `longconn-reader --pin-dir {d} collect` first): `longconn-pin detach --pin-dir {d} && longconn-pin --pin-dir {d} {}`",
            diffs.join("; "),
            command_line(requested, cgroup_dir)
        ),
    ))
}

fn max_entries(path: &Path) -> anyhow::Result<u32> {
    MapInfo::from_pin(path)
        .map(|i| i.max_entries())
        .map_err(|e| {
            coded(
                Exit::Failed,
                format!(
                    "cannot read the size of {}: {e}; run `longconn-pin status --pin-dir {}`",
                    path.display(),
                    path.parent()
                        .map(Path::display)
                        .map(|d| d.to_string())
                        .unwrap_or_default()
                ),
            )
        })
}

/// The group `--group` gave: the pin dir's group when group members may enter it.
fn pinned_group(pin_dir: &Path) -> anyhow::Result<Option<u32>> {
    let m = fs::metadata(pin_dir).map_err(|e| {
        coded(
            Exit::Failed,
            format!("cannot stat {}: {e}", pin_dir.display()),
        )
    })?;
    Ok((m.mode() & 0o050 != 0).then_some(m.gid()))
}

/// One "option: pinned X, requested Y" per difference.
pub fn differences(pinned: &Settings, requested: &Settings) -> Vec<String> {
    let mut out = Vec::new();
    if pinned.cgroup_id != requested.cgroup_id {
        out.push(format!(
            "--cgroup: pinned {}, requested {}",
            pinned.cgroup, requested.cgroup
        ));
    }
    if pinned.hooks != requested.hooks {
        out.push(format!(
            "--hooks: pinned {}, requested {}",
            hooks::describe(pinned.hooks),
            hooks::describe(requested.hooks)
        ));
    }
    if pinned.max_connections != requested.max_connections {
        out.push(format!(
            "--max-connections: pinned {}, requested {}",
            pinned.max_connections, requested.max_connections
        ));
    }
    if pinned.ringbuf_bytes != requested.ringbuf_bytes {
        out.push(format!(
            "--ringbuf-bytes: pinned {}, requested {}",
            size(pinned.ringbuf_bytes),
            size(requested.ringbuf_bytes)
        ));
    }
    if pinned.group != requested.group {
        out.push(format!(
            "--group: pinned {}, requested {}",
            group(pinned.group),
            group(requested.group)
        ));
    }
    out
}

/// The requested options as `longconn-pin` arguments (after --pin-dir).
fn command_line(r: &Settings, cgroup_dir: &Path) -> String {
    let mut s = format!(
        "--cgroup {} --hooks {} --max-connections {} --ringbuf-bytes {}",
        cgroup_dir.display(),
        hooks::describe(r.hooks),
        r.max_connections,
        size(r.ringbuf_bytes)
    );
    if let Some(gid) = r.group {
        s.push_str(&format!(
            " --group {}",
            longconn_common::groups::name_of(gid).unwrap_or_else(|| gid.to_string())
        ));
    }
    s
}

fn size(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{}MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{}KiB", bytes >> 10)
    } else {
        bytes.to_string()
    }
}

fn group(g: Option<u32>) -> String {
    match g {
        None => "none (root only)".into(),
        Some(gid) => match longconn_common::groups::name_of(gid) {
            Some(n) => format!("{n} (gid {gid})"),
            None => format!("gid {gid}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Settings {
        Settings {
            cgroup_id: 7,
            cgroup: "/sys/fs/cgroup/a".into(),
            hooks: longconn_common::layout::HOOK_ACK,
            max_connections: 131_072,
            ringbuf_bytes: 8 << 20,
            group: None,
        }
    }

    #[test]
    fn identical_settings_have_no_differences() {
        assert!(differences(&base(), &base()).is_empty());
    }

    #[test]
    fn each_difference_names_pinned_and_requested() {
        let mut r = base();
        r.max_connections = 1000;
        r.ringbuf_bytes = 4 << 20;
        r.group = Some(0);
        r.hooks = 0;
        r.cgroup_id = 8;
        r.cgroup = "/sys/fs/cgroup/b".into();
        let d = differences(&base(), &r);
        assert_eq!(
            d,
            vec![
                "--cgroup: pinned /sys/fs/cgroup/a, requested /sys/fs/cgroup/b",
                "--hooks: pinned ack, requested none",
                "--max-connections: pinned 131072, requested 1000",
                "--ringbuf-bytes: pinned 8MiB, requested 4MiB",
                "--group: pinned none (root only), requested root (gid 0)",
            ]
        );
        let cmd = command_line(&r, Path::new("/sys/fs/cgroup/b"));
        assert_eq!(
            cmd,
            "--cgroup /sys/fs/cgroup/b --hooks none --max-connections 1000 --ringbuf-bytes 4MiB --group root"
        );
    }

    #[test]
    fn sizes_print_as_they_parse() {
        for b in [4096u64, 8 << 20, 1 << 30, 12_345] {
            assert_eq!(longconn_common::units::parse_size(&size(b)).unwrap(), b);
        }
    }
}
