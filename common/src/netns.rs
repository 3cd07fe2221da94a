//! Network namespaces for the read-time refresh: which one the reader is in,
//! where another one can be opened, and its netnsid as seen from here.
//!
//! The refresh program looks sockets up by 4-tuple; a socket of another
//! namespace is reachable only through a netnsid (an id the kernel assigns to
//! a peer namespace, relative to the asking one: `ip netns list-id`). A
//! namespace is found by the inode the kernel side recorded, among the
//! bind mounts of `ip netns` and every process's `/proc/PID/ns/net`; its id is
//! read with RTM_GETNSID and, when none is assigned yet, allocated with
//! RTM_NEWNSID (what `ip netns set NAME auto` does). Assigning an id changes
//! nothing for sockets or applications; it is kept for the namespace's
//! lifetime, like the ids the kernel assigns itself for veth peers.

use std::{
    collections::{HashMap, HashSet},
    fs, io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_packet_route::{
    nsid::{NsidAttribute, NsidMessage},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Directories where `ip netns add` bind-mounts named namespaces.
const NAMED_NETNS_DIRS: &[&str] = &["/run/netns", "/var/run/netns"];
/// `SO_NETNS_COOKIE` (linux/asm-generic/socket.h); libc may not define it.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The calling thread's network namespace cookie (as bpf_get_netns_cookie
/// and the kernel side's records give it).
pub fn own_cookie() -> io::Result<u64> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new socket we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` is a valid u64 buffer of `len` bytes for the kernel to fill.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// A path that opens each wanted namespace (by inode), for those found.
/// Named namespaces first (they outlive their processes), then processes.
pub fn find_by_inode(wanted: &HashSet<u32>) -> HashMap<u32, PathBuf> {
    let mut found = HashMap::new();
    let consider = |found: &mut HashMap<u32, PathBuf>, path: PathBuf| {
        if let Ok(md) = fs::metadata(&path) {
            let ino = md.ino() as u32;
            if md.ino() <= u64::from(u32::MAX) && wanted.contains(&ino) {
                found.entry(ino).or_insert(path);
            }
        }
    };
    for dir in NAMED_NETNS_DIRS {
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                consider(&mut found, e.path());
            }
        }
    }
    if let Ok(processes) = procfs::process::all_processes() {
        for p in processes.flatten() {
            if found.len() == wanted.len() {
                break;
            }
            consider(
                &mut found,
                PathBuf::from(format!("/proc/{}/ns/net", p.pid())),
            );
        }
    }
    found
}

/// The netnsid of the namespace at `path` as seen from the caller's
/// namespace, allocating one when none is assigned (needs CAP_NET_ADMIN).
pub fn nsid_of(path: &Path) -> io::Result<u32> {
    let ns = fs::File::open(path)?;
    let fd = ns.as_raw_fd() as u32;
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    // The kernel answers at once; never wait on it for long.
    let timeout = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: `timeout` is a valid timeval for SO_RCVTIMEO on our own socket.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    if let Some(id) = get_nsid(&sock, fd)? {
        return Ok(id);
    }
    request(
        &sock,
        RouteNetlinkMessage::NewNsId(nsid_message(vec![
            NsidAttribute::Fd(fd),
            NsidAttribute::Id(-1),
        ])),
        NLM_F_REQUEST | NLM_F_ACK,
    )?;
    get_nsid(&sock, fd)?
        .ok_or_else(|| io::Error::other("RTM_NEWNSID succeeded but no netnsid is assigned"))
}

fn nsid_message(attributes: Vec<NsidAttribute>) -> NsidMessage {
    let mut msg = NsidMessage::default();
    msg.attributes = attributes;
    msg
}

fn get_nsid(sock: &Socket, fd: u32) -> io::Result<Option<u32>> {
    let reply = request(
        sock,
        RouteNetlinkMessage::GetNsId(nsid_message(vec![NsidAttribute::Fd(fd)])),
        NLM_F_REQUEST,
    )?;
    let id = reply.and_then(|m| {
        m.attributes.iter().find_map(|a| match a {
            NsidAttribute::Id(id) => Some(*id),
            _ => None,
        })
    });
    Ok(id.and_then(|id| u32::try_from(id).ok()))
}

/// Sends one request and reads until its answer: an RTM_NEWNSID message
/// (returned), an ACK (None) or an error (Err with the kernel's errno).
fn request(sock: &Socket, msg: RouteNetlinkMessage, flags: u16) -> io::Result<Option<NsidMessage>> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    sock.send(&buf, 0)?;
    let mut rx = vec![0u8; 8192];
    loop {
        let n = sock.recv(&mut &mut rx[..], 0)?;
        let mut at = 0;
        while at < n {
            let reply =
                NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[at..n]).map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("netlink reply: {e}"))
                })?;
            let len = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) => {
                    return Ok(Some(m))
                }
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        None => Ok(None),
                        Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                    }
                }
                NetlinkPayload::Done(_) => return Ok(None),
                _ => {}
            }
            if len == 0 {
                break;
            }
            at += len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cookie_is_stable() {
        let a = own_cookie().unwrap();
        assert_ne!(a, 0);
        assert_eq!(a, own_cookie().unwrap());
    }

    #[test]
    fn own_namespace_is_found_by_inode() {
        let ino = fs::metadata("/proc/self/ns/net").unwrap().ino() as u32;
        let found = find_by_inode(&HashSet::from([ino]));
        assert!(found.contains_key(&ino), "{found:?}");
    }
}
