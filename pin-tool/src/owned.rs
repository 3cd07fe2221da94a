//! Whether an object pinned under one of longconn's names is longconn's.
//!
//! A name proves nothing: anyone who can write to the pin dir can pin a map
//! called `meta`. `detach` unlinks only objects whose kernel info matches what
//! `longconn-pin` pins there: object kind, map type and name (and meta's
//! magic), program name, and for a link the name of the program it runs.

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, Map, MapData, MapType},
    programs::{
        links::{FdLink, PinnedLink},
        loaded_programs, ProgramInfo,
    },
};
use longconn_common::{
    bpfcall as sys, hooks,
    layout::{self, Meta},
    pins,
};

/// What longconn pins at a path.
#[derive(Clone, Copy, Debug)]
pub enum Expect {
    /// A map with this object name (and this type, where known).
    Map(Option<MapType>, &'static str),
    /// A program with this name.
    Program(&'static str),
    /// A link running the program with this name.
    Link(&'static str),
}

/// One name longconn owns in a pin dir.
#[derive(Debug)]
pub struct Owned {
    pub path: PathBuf,
    pub expect: Expect,
}

impl Owned {
    pub fn is_map(&self) -> bool {
        matches!(self.expect, Expect::Map(..))
    }
}

/// Every path longconn-pin may have pinned in `dir`: links first (they detach
/// the programs), then the refresh program, then the maps.
pub fn names(dir: &Path) -> Vec<Owned> {
    let mut v: Vec<Owned> = hooks::all_links()
        .map(|(program, link)| Owned {
            path: pins::link_path(dir, link),
            expect: Expect::Link(program),
        })
        .collect();
    v.push(Owned {
        path: dir.join(pins::REFRESH),
        expect: Expect::Program(hooks::REFRESH_PROGRAM),
    });
    for (object, pin) in pins::MAPS {
        let ty = match *pin {
            pins::CONNS | pins::OVERFLOW | pins::OVERFLOW_SHORT => Some(MapType::Hash),
            pins::CLOSE_TOTALS => Some(MapType::PerCpuHash),
            pins::CLOSED => Some(MapType::RingBuf),
            pins::COUNTERS => Some(MapType::PerCpuArray),
            pins::META | pins::REFRESH_WORK => Some(MapType::Array),
            pins::CGROUP_NAMES => Some(MapType::LruHash),
            _ => None,
        };
        v.push(Owned {
            path: dir.join(pin),
            expect: Expect::Map(ty, object),
        });
    }
    v
}

/// The verdict on one path.
#[derive(Debug)]
pub enum Verdict {
    Absent,
    Ours,
    /// Something else is pinned there: what it is.
    Foreign(String),
    /// The caller may not open it.
    Denied(io::Error),
    /// Could not be inspected (the message says why).
    Unreadable(String),
}

/// Kernel object names are cut to 15 bytes.
fn kernel_name(name: &str) -> &str {
    &name[..name.len().min(15)]
}

pub fn inspect(o: &Owned) -> Verdict {
    match std::fs::symlink_metadata(&o.path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Verdict::Absent,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Verdict::Denied(e),
        Err(e) => return Verdict::Unreadable(e.to_string()),
        Ok(m) if m.is_dir() => return Verdict::Foreign("a directory".into()),
        Ok(_) => {}
    }
    let fd = match sys::obj_get(&o.path, 0) {
        Ok(fd) => fd,
        Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) => {
            return Verdict::Denied(e)
        }
        Err(e) => return Verdict::Unreadable(format!("not a bpf object ({e})")),
    };
    let kind = object_kind(&fd);
    let result = match (o.expect, kind.as_str()) {
        (Expect::Map(ty, name), "bpf-map") => check_map(fd, ty, name),
        (Expect::Program(name), "bpf-prog") => check_program(&o.path, name),
        (Expect::Link(name), "bpf-link") => check_link(&o.path, name),
        (_, other) => Err(format!(
            "a {} where longconn pins a {}",
            describe_kind(other),
            match o.expect {
                Expect::Map(..) => "map",
                Expect::Program(_) => "program",
                Expect::Link(_) => "link",
            }
        )),
    };
    match result {
        Ok(()) => Verdict::Ours,
        Err(why) => Verdict::Foreign(why),
    }
}

/// The anon-inode name of a bpf fd: bpf-map, bpf-prog or bpf-link.
fn object_kind(fd: &OwnedFd) -> String {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|p| {
            p.to_string_lossy()
                .trim_start_matches("anon_inode:")
                .to_owned()
        })
        .unwrap_or_default()
}

fn describe_kind(kind: &str) -> &str {
    match kind {
        "bpf-map" => "map",
        "bpf-prog" => "program",
        "bpf-link" => "link",
        _ => "bpf object",
    }
}

fn check_map(fd: OwnedFd, ty: Option<MapType>, name: &str) -> Result<(), String> {
    let data = MapData::from_fd(fd).map_err(|e| format!("map info unreadable: {e}"))?;
    let info = data
        .info()
        .map_err(|e| format!("map info unreadable: {e}"))?;
    let found_name = info.name_as_str().unwrap_or("").to_owned();
    let found_ty = info.map_type().ok();
    let type_ok = ty.is_none() || found_ty == ty;
    if !type_ok || found_name != kernel_name(name) {
        let t = |t: Option<MapType>| t.map(|t| format!("{t:?} ")).unwrap_or_default();
        return Err(format!(
            "a {}map named {found_name:?}; longconn pins a {}map named {:?}",
            t(found_ty),
            t(ty),
            kernel_name(name)
        ));
    }
    // meta of this layout: check the magic too (other layouts' meta have
    // other sizes and are still longconn's to remove).
    if name == "longconn_meta" && info.value_size() as usize == std::mem::size_of::<Meta>() {
        let map = Map::Array(data);
        let magic = Array::<&MapData, Meta>::try_from(&map)
            .ok()
            .and_then(|a| a.get(&0, 0).ok())
            .map(|m| m.magic);
        if magic != Some(layout::META_MAGIC) {
            return Err(format!(
                "an array map named {found_name:?} without longconn's magic (found {:#x})",
                magic.unwrap_or(0)
            ));
        }
    }
    Ok(())
}

fn check_program(path: &Path, name: &str) -> Result<(), String> {
    let info = ProgramInfo::from_pin(path).map_err(|e| format!("program info unreadable: {e}"))?;
    let found = info.name_as_str().unwrap_or("");
    if found != kernel_name(name) {
        return Err(format!(
            "a program named {found:?}; longconn pins {:?}",
            kernel_name(name)
        ));
    }
    Ok(())
}

fn check_link(path: &Path, program: &str) -> Result<(), String> {
    let link: FdLink = PinnedLink::from_pin(path)
        .map_err(|e| format!("link unreadable: {e}"))?
        .into();
    let info = link
        .info()
        .map_err(|e| format!("link info unreadable: {e}"))?;
    let id = info.program_id();
    let found = loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .map(|p| p.name_as_str().unwrap_or("").to_owned());
    match found {
        Some(n) if n == kernel_name(program) => Ok(()),
        Some(n) => Err(format!(
            "a link to program {n:?} (id {id}); longconn's link there runs {:?}",
            kernel_name(program)
        )),
        None => Err(format!("a link to program id {id}, which is not visible")),
    }
}
