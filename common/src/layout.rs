//! Rust mirror of `bpf-progs/include/longconn.h`.
//!
//! Invariant: field order, sizes and offsets equal the C header's. The
//! `layout_btf` test in `bpf-progs` compares them through the compiled object's
//! BTF, so a drift fails a test instead of corrupting a report. Records from
//! maps and the ring buffer are decoded with a length check, never transmuted.

/// Bumped on any change to a record below; pinned in `meta` and checked by readers.
pub const LAYOUT_VERSION: u32 = 9;
/// `Meta::magic`: "lconnmet".
pub const META_MAGIC: u64 = 0x6c63_6f6e_6e6d_6574;

pub const DIR_OUTBOUND: u32 = 1;
pub const DIR_INBOUND: u32 = 2;

pub const F_ESTABLISHED: u32 = 0x1;
pub const F_CLOSED: u32 = 0x2;
pub const F_FAILED: u32 = 0x4;
pub const F_RINGBUF_MISS: u32 = 0x8;
/// The close is not in the close totals (that map was full): count its record.
pub const F_TOTALS_MISS: u32 = 0x20;

pub const HOOK_TCP_PROBE: u32 = 0x1;
pub const HOOK_RCV_SPACE: u32 = 0x2;
pub const HOOK_EGRESS: u32 = 0x4;
pub const HOOK_INGRESS: u32 = 0x8;
pub const HOOK_ACK: u32 = 0x10;

pub const CTR_RINGBUF_FULL: u32 = 0;
pub const CTR_MAP_FULL: u32 = 1;
pub const CTR_MAP_ERROR: u32 = 2;
pub const CTR_CLOSE_UNTRACKED: u32 = 3;
pub const CTR_TRACKED: u32 = 4;
pub const CTR_CLOSE_UNLOGGED: u32 = 5;
pub const CTR_TOTALS_FULL: u32 = 6;
pub const CTR_CLOSE_LOST: u32 = 7;
pub const CTR_MAX: u32 = 8;

pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;

/// `struct longconn_conn`: value of `map_of_tcp_conns` and of each ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnRecord {
    pub cookie: u64,
    pub start_ns: u64,
    pub update_ns: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub retransmits: u64,
    pub lost_packets: u64,
    pub bytes_retrans: u64,
    pub cgroup_id: u64,
    pub netns_cookie: u64,
    pub close_seq: u64,
    pub local_addr: [u32; 4],
    pub remote_addr: [u32; 4],
    pub srtt_us: u32,
    pub min_rtt_us: u32,
    pub pid: u32,
    pub family: u32,
    pub local_port: u32,
    pub remote_port: u32,
    pub state: u32,
    pub direction: u32,
    pub flags: u32,
    pub netns_ino: u32,
    pub close_cpu: u32,
    pub seen: u32,
    /// The socket's `sk_bound_dev_if` (layout 8): the refresh looks it up on that device.
    pub bound_dev_if: u32,
    pub _pad: u32,
    pub comm: [u8; 16],
}

/// `struct longconn_totals_key`: key of the `close_totals` per-CPU hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TotalsKey {
    pub cgroup_id: u64,
    pub netns_cookie: u64,
    pub addr: [u32; 4],
    pub port: u32,
    pub family: u32,
    pub direction: u32,
    pub _pad: u32,
    pub comm: [u8; 16],
}

/// `struct longconn_totals`: one CPU's value of `close_totals`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub seq_end: u64,
    pub closed: u64,
    pub failed: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub retransmits: u64,
    pub lost_packets: u64,
    pub seq_begin: u64,
}

impl TotalsKey {
    pub const SIZE: usize = std::mem::size_of::<Self>();

    /// The key the kernel adds a closing record to: the remote endpoint of
    /// an outbound connection, the local (listening) one of an inbound one.
    pub fn of(r: &ConnRecord) -> Self {
        let (addr, port) = if r.direction == DIR_INBOUND {
            (r.local_addr, r.local_port)
        } else {
            (r.remote_addr, r.remote_port)
        };
        Self {
            cgroup_id: r.cgroup_id,
            netns_cookie: r.netns_cookie,
            addr,
            port,
            family: r.family,
            direction: r.direction,
            _pad: 0,
            comm: r.comm,
        }
    }

    /// A record carrying this key's identity (for naming its groups the
    /// way a connection's are named).
    pub fn as_record(&self) -> ConnRecord {
        let mut r = ConnRecord {
            cgroup_id: self.cgroup_id,
            netns_cookie: self.netns_cookie,
            family: self.family,
            direction: self.direction,
            comm: self.comm,
            ..Default::default()
        };
        if self.direction == DIR_INBOUND {
            r.local_addr = self.addr;
            r.local_port = self.port;
        } else {
            r.remote_addr = self.addr;
            r.remote_port = self.port;
        }
        r
    }

    /// Native-endian bytes (as the kernel and the state file hold them).
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        let mut at = 0;
        let mut put = |x: &[u8]| {
            b[at..at + x.len()].copy_from_slice(x);
            at += x.len();
        };
        put(&self.cgroup_id.to_ne_bytes());
        put(&self.netns_cookie.to_ne_bytes());
        for w in self.addr {
            put(&w.to_ne_bytes());
        }
        for w in [self.port, self.family, self.direction, self._pad] {
            put(&w.to_ne_bytes());
        }
        put(&self.comm);
        b
    }

    /// `None` unless `bytes` is exactly one key long.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::SIZE {
            return None;
        }
        let mut c = Cursor(bytes);
        Some(Self {
            cgroup_id: c.u64(),
            netns_cookie: c.u64(),
            addr: c.u32x4(),
            port: c.u32(),
            family: c.u32(),
            direction: c.u32(),
            _pad: c.u32(),
            comm: c.take(),
        })
    }
}

impl Totals {
    pub const SIZE: usize = std::mem::size_of::<Self>();

    /// `None` unless `bytes` is exactly one value long.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::SIZE {
            return None;
        }
        let mut c = Cursor(bytes);
        Some(Self {
            seq_end: c.u64(),
            closed: c.u64(),
            failed: c.u64(),
            bytes_sent: c.u64(),
            bytes_received: c.u64(),
            packets_sent: c.u64(),
            packets_received: c.u64(),
            retransmits: c.u64(),
            lost_packets: c.u64(),
            seq_begin: c.u64(),
        })
    }

    /// A copy taken while no close was being added: the kernel copies in
    /// address order, seq_end first, seq_begin last (see the header).
    pub fn consistent(&self) -> bool {
        self.seq_begin == self.seq_end
    }
}

/// `struct longconn_listen_key`: key of the (unpinned) `longconn_listen_owners` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenKey {
    pub netns_cookie: u64,
    pub port: u32,
    pub _pad: u32,
}

/// `struct longconn_owner`: who called listen() on a port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub _pad: u32,
    pub comm: [u8; 16],
}

/// `struct longconn_netns`: value of the `netns` map (key: netns cookie).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetnsEntry {
    pub reader_netns_cookie: u64,
    pub ino: u32,
    pub nsid: u32,
}

/// `skb->cb` slots of the refresh program (LONGCONN_REFRESH_CB_*): its
/// arguments in, its results out (slots 2 and 3 serve both).
pub const REFRESH_CB_COUNT: usize = 0;
pub const REFRESH_CB_NETNS_LO: usize = 2;
pub const REFRESH_CB_NETNS_HI: usize = 3;
pub const REFRESH_CB_OUT_NOT_FOUND: usize = 2;
pub const REFRESH_CB_OUT_NETNS_UNKNOWN: usize = 3;

/// Slots of the refresh work array (LONGCONN_REFRESH_CHUNK): records per refresh run.
pub const REFRESH_CHUNK: u32 = 2048;
/// `RefreshSlot::status` (LONGCONN_REFRESH_*).
pub const REFRESH_OK: u32 = 1;
pub const REFRESH_GONE: u32 = 2;
pub const REFRESH_CLOSED: u32 = 3;
pub const REFRESH_NOT_FOUND: u32 = 4;
pub const REFRESH_NETNS_UNKNOWN: u32 = 5;

/// `struct longconn_refresh_slot`: value of the `refresh_work` array. The
/// reader copies a record in (what finds its socket, and the 64-bit totals
/// the program widens the kernel's 32-bit counters against); the program
/// writes the refreshed counters (valid when `status` is REFRESH_OK).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefreshSlot {
    pub cookie: u64,
    pub netns_cookie: u64,
    pub local_addr: [u32; 4],
    pub remote_addr: [u32; 4],
    pub family: u32,
    pub netns_ino: u32,
    pub local_port: u16,
    pub remote_port: u16,
    pub status: u32,
    pub update_ns: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub retransmits: u64,
    pub lost_packets: u64,
    pub bytes_retrans: u64,
    pub srtt_us: u32,
    pub min_rtt_us: u32,
    pub state: u32,
    pub flags: u32,
}

/// `RefreshSlot::flags` (LONGCONN_SLOT_*): the record's `seen` is 0, set it.
pub const SLOT_MARK_SEEN: u32 = 0x1;

impl RefreshSlot {
    pub const SIZE: usize = std::mem::size_of::<Self>();

    /// The slot that asks for `r`'s socket, status cleared.
    pub fn of(r: &ConnRecord) -> Self {
        Self {
            cookie: r.cookie,
            netns_cookie: r.netns_cookie,
            local_addr: r.local_addr,
            remote_addr: r.remote_addr,
            family: r.family,
            netns_ino: r.netns_ino,
            local_port: r.local_port as u16,
            remote_port: r.remote_port as u16,
            packets_sent: r.packets_sent,
            packets_received: r.packets_received,
            retransmits: r.retransmits,
            lost_packets: r.lost_packets,
            flags: if r.seen == 0 { SLOT_MARK_SEEN } else { 0 },
            ..Self::default()
        }
    }

    /// Copies what the refresh read from the socket into `r`.
    pub fn apply(&self, r: &mut ConnRecord) {
        r.update_ns = self.update_ns;
        r.bytes_sent = self.bytes_sent;
        r.bytes_received = self.bytes_received;
        r.packets_sent = self.packets_sent;
        r.packets_received = self.packets_received;
        r.retransmits = self.retransmits;
        r.lost_packets = self.lost_packets;
        r.bytes_retrans = self.bytes_retrans;
        r.srtt_us = self.srtt_us;
        r.min_rtt_us = self.min_rtt_us;
        r.state = self.state;
    }
}

/// `struct longconn_meta`: the single value of the `meta` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub magic: u64,
    pub pinned_at_ns: u64,
    pub cgroup_id: u64,
    pub layout_version: u32,
    pub record_size: u32,
    pub hooks: u32,
    pub _pad: u32,
}

/// Bytes of `CgroupName::path` (LONGCONN_CGROUP_PATH_MAX), its NUL included.
pub const CGROUP_PATH_MAX: u32 = 256;

/// `struct longconn_cgroup_name`: value of the `cgroup_names` LRU hash
/// (key: cgroup v2 id), the path of a cgroup captured when it was made.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupName {
    pub len: u32,
    pub truncated: u32,
    pub path: [u8; CGROUP_PATH_MAX as usize],
}

impl Default for CgroupName {
    fn default() -> Self {
        Self {
            len: 0,
            truncated: 0,
            path: [0; CGROUP_PATH_MAX as usize],
        }
    }
}

impl CgroupName {
    pub const SIZE: usize = std::mem::size_of::<Self>();

    /// The captured path's bytes; None when the kernel had to cut it (a
    /// cut path would name another cgroup) or the length is bad.
    pub fn path_bytes(&self) -> Option<&[u8]> {
        if self.truncated != 0 {
            return None;
        }
        self.path.get(..self.len as usize)
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::SIZE {
            return None;
        }
        let mut c = Cursor(bytes);
        let (len, truncated) = (c.u32(), c.u32());
        Some(Self {
            len,
            truncated,
            path: c.take(),
        })
    }
}

// SAFETY: both are repr(C), made only of integers and integer arrays, with
// explicit padding fields, so every bit pattern is a valid value and there are
// no implicit padding bytes.
unsafe impl aya::Pod for ConnRecord {}
// SAFETY: as above.
unsafe impl aya::Pod for Meta {}
// SAFETY: as above.
unsafe impl aya::Pod for NetnsEntry {}
// SAFETY: as above.
unsafe impl aya::Pod for RefreshSlot {}
// SAFETY: as above.
unsafe impl aya::Pod for TotalsKey {}
// SAFETY: as above.
unsafe impl aya::Pod for Totals {}
// SAFETY: as above.
unsafe impl aya::Pod for CgroupName {}

/// Per-CPU kernel counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub ringbuf_full: u64,
    pub map_full: u64,
    pub map_error: u64,
    pub close_untracked: u64,
    pub tracked: u64,
    /// Closes whose record fit neither the ring nor the overflow map.
    pub close_unlogged: u64,
    /// Closes the close totals could not take (map full).
    pub totals_full: u64,
    /// Closes neither in the totals nor recorded.
    pub close_lost: u64,
}

impl Counters {
    pub fn from_slots(slots: &[u64]) -> Self {
        let at = |i: u32| slots.get(i as usize).copied().unwrap_or(0);
        Self {
            ringbuf_full: at(CTR_RINGBUF_FULL),
            map_full: at(CTR_MAP_FULL),
            map_error: at(CTR_MAP_ERROR),
            close_untracked: at(CTR_CLOSE_UNTRACKED),
            tracked: at(CTR_TRACKED),
            close_unlogged: at(CTR_CLOSE_UNLOGGED),
            totals_full: at(CTR_TOTALS_FULL),
            close_lost: at(CTR_CLOSE_LOST),
        }
    }
}

/// Reads native-endian integers from a byte slice, front to back.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        let mut out = [0u8; N];
        out.copy_from_slice(head);
        out
    }
    fn u64(&mut self) -> u64 {
        u64::from_ne_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_ne_bytes(self.take())
    }
    fn u32x4(&mut self) -> [u32; 4] {
        [self.u32(), self.u32(), self.u32(), self.u32()]
    }
}

impl ConnRecord {
    pub const SIZE: usize = std::mem::size_of::<Self>();

    /// Decodes one record; `None` unless `bytes` is exactly one record long.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::SIZE {
            return None;
        }
        let mut c = Cursor(bytes);
        Some(Self {
            cookie: c.u64(),
            start_ns: c.u64(),
            update_ns: c.u64(),
            bytes_sent: c.u64(),
            bytes_received: c.u64(),
            packets_sent: c.u64(),
            packets_received: c.u64(),
            retransmits: c.u64(),
            lost_packets: c.u64(),
            bytes_retrans: c.u64(),
            cgroup_id: c.u64(),
            netns_cookie: c.u64(),
            close_seq: c.u64(),
            local_addr: c.u32x4(),
            remote_addr: c.u32x4(),
            srtt_us: c.u32(),
            min_rtt_us: c.u32(),
            pid: c.u32(),
            family: c.u32(),
            local_port: c.u32(),
            remote_port: c.u32(),
            state: c.u32(),
            direction: c.u32(),
            flags: c.u32(),
            netns_ino: c.u32(),
            close_cpu: c.u32(),
            seen: c.u32(),
            bound_dev_if: c.u32(),
            _pad: c.u32(),
            comm: c.take(),
        })
    }

    /// The command name up to its first NUL, as text that keeps names
    /// differing only in invalid UTF-8 apart (`text::distinct_text`).
    pub fn comm(&self) -> String {
        let end = self
            .comm
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.comm.len());
        crate::text::distinct_text(&self.comm[..end])
    }

    pub fn local_ip(&self) -> std::net::IpAddr {
        ip_of(self.family, &self.local_addr)
    }

    pub fn remote_ip(&self) -> std::net::IpAddr {
        ip_of(self.family, &self.remote_addr)
    }

    pub fn is_closed(&self) -> bool {
        self.flags & F_CLOSED != 0
    }
}

/// Network-order words to an address; an IPv4-mapped IPv6 address becomes IPv4
/// so that one socket has one canonical text form everywhere.
fn ip_of(family: u32, words: &[u32; 4]) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let mut bytes = [0u8; 16];
    for (chunk, word) in bytes.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    if family == AF_INET {
        return IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]));
    }
    let v6 = Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// TCP state names as `ss` prints them (include/net/tcp_states.h numbering).
pub fn tcp_state_name(state: u32) -> &'static str {
    match state {
        1 => "ESTAB",
        2 => "SYN-SENT",
        3 => "SYN-RECV",
        4 => "FIN-WAIT-1",
        5 => "FIN-WAIT-2",
        6 => "TIME-WAIT",
        7 => "CLOSED",
        8 => "CLOSE-WAIT",
        9 => "LAST-ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW-SYN-RECV",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_header() {
        assert_eq!(std::mem::size_of::<ConnRecord>(), 208);
        assert_eq!(std::mem::size_of::<TotalsKey>(), 64);
        assert_eq!(std::mem::size_of::<Totals>(), 80);
        assert_eq!(std::mem::size_of::<Meta>(), 40);
        assert_eq!(std::mem::size_of::<RefreshSlot>(), 144);
        assert_eq!(CgroupName::SIZE, 264);
    }

    #[test]
    fn comms_that_differ_only_in_invalid_bytes_stay_distinct() {
        let rec = |comm: &[u8; 16]| ConnRecord {
            comm: *comm,
            ..Default::default()
        };
        let a = rec(b"srv\xff\0\0\0\0\0\0\0\0\0\0\0\0");
        let b = rec(b"srv\xfe\0\0\0\0\0\0\0\0\0\0\0\0");
        assert_ne!(a.comm(), b.comm());
        assert_eq!(a.comm(), "srv\\xff");
        assert_eq!(rec(b"nginx\0\0\0\0\0\0\0\0\0\0\0").comm(), "nginx");
    }

    #[test]
    fn decode_round_trips_and_rejects_wrong_length() {
        let rec = ConnRecord {
            cookie: 7,
            bytes_sent: 1 << 40,
            family: AF_INET,
            local_addr: [u32::from_ne_bytes([127, 0, 0, 1]), 0, 0, 0],
            local_port: 8080,
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
            ..Default::default()
        };
        // SAFETY: ConnRecord is Pod (see above); the slice covers exactly its bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts((&rec as *const ConnRecord).cast::<u8>(), ConnRecord::SIZE)
        };
        assert_eq!(ConnRecord::decode(bytes), Some(rec));
        assert_eq!(ConnRecord::decode(&bytes[1..]), None);
        assert_eq!(rec.comm(), "curl");
        assert_eq!(rec.local_ip().to_string(), "127.0.0.1");
    }

    #[test]
    fn v4_mapped_v6_is_shown_as_v4() {
        let mut words = [0u32; 4];
        let bytes: [u8; 16] = "::ffff:10.1.2.3"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        for (w, c) in words.iter_mut().zip(bytes.chunks_exact(4)) {
            *w = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
        }
        assert_eq!(ip_of(AF_INET6, &words).to_string(), "10.1.2.3");
        let bytes: [u8; 16] = "::1".parse::<std::net::Ipv6Addr>().unwrap().octets();
        for (w, c) in words.iter_mut().zip(bytes.chunks_exact(4)) {
            *w = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
        }
        assert_eq!(ip_of(AF_INET6, &words).to_string(), "::1");
    }

    #[test]
    fn a_million_generated_records_decode_or_are_rejected_by_length() {
        let mut g = longconn_testgen::Gen::new(2);
        let valid = [0u8; ConnRecord::SIZE];
        for _ in 0..longconn_testgen::CASES {
            let b = g.bytes(&[&valid, &valid[..100]]);
            match ConnRecord::decode(&b) {
                Some(r) => {
                    assert_eq!(b.len(), ConnRecord::SIZE);
                    let _ = (
                        r.comm(),
                        r.local_ip(),
                        r.remote_ip(),
                        tcp_state_name(r.state),
                    );
                }
                None => assert_ne!(b.len(), ConnRecord::SIZE),
            }
        }
    }
}
