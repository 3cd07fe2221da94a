//! The binary state file: versioned header, connection records, the rest,
//! checksummed trailer.
//!
//! ```text
//! header  16 B magic "longconn state\n\0", u32 format version, u32 0
//! body    N fixed-size connection records, sorted by cookie (v5: when the
//!         last access record was made where v4 kept the kernel's last
//!         update); then the rest ("the head"):
//!         boot id, home dir (v4), generation (v6), scalars, label lists,
//!         service map text, interned strings (v6: u64 total, u64 first
//!         one stored, then those from it on; a base stores all), cgroup
//!         names, log positions (v4: path, dev,
//!         inode, length; v3: name, length), group totals, settling
//!         closes (v5: cookie, ring position or u64::MAX to reap; v3/v4:
//!         cookie, time applied), final series, close totals last seen
//!         (v6 since issue 21, optional: kernel key, eight sums), runtime
//!         names of cgroups (v6 since issue 17, optional: cgroup id,
//!         namespace, pod, pod uid, container; a cgroup not listed is
//!         looked up again), series times (v6 since issue 18, optional:
//!         per workload then service group, in order, its start and when
//!         it was last seen; see `collect::retire`)
//! trailer u64 N, u64 body length, u64 checksum of the body, 8 B "LCSTEND\n"
//! ```
//!
//! All integers little-endian; strings are a u32 length and UTF-8 bytes.
//! Connections come first so that a cycle can stream them: `Writer` writes
//! each as the cycle makes it and the rest at the commit; `open` checks the
//! frame, the checksum and every record, decodes the rest, and leaves the
//! connections on disk for `PrevFile::scan` (read twice a cycle, in order,
//! never all in memory). A truncated, corrupt or foreign file is a
//! described problem, never a panic or a misread.
//!
//! Since v6 this file is the base of the state and `journal` holds the
//! cycles since it; the generation (random, new with each base) ties a
//! journal to its base. The head is also what each journal entry stores.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{self, BufReader, Read, Write},
    os::unix::fs::FileExt,
    sync::Arc,
};

use super::{ConnState, Counters, GroupKey, GroupTotals, IdSyms, Settling, State, Strings};
use crate::{identity::Cgroup, output::applog::Committed, runtime};

pub const FORMAT_VERSION: u32 = 6;
/// Older formats, still read. v4: closed cookies remembered for 15 minutes
/// (each kept for one cycle, as its reader did). v3 also: created in
/// seconds, file lengths by name (dropped: not enough to cut a file), no
/// home directory.
/// v5: no generation (no journal), the whole name table in one list.
const V5: u32 = 5;
const V4: u32 = 4;
const V3: u32 = 3;
const MAGIC: &[u8; 16] = b"longconn state\n\0";
const END: &[u8; 8] = b"LCSTEND\n";
pub(super) const HEADER: usize = 24;
const TRAILER: usize = 32;
/// Encoded size of one connection record (cookie included).
pub const CONN: usize = 8 + 8 + 48 + 48 + 8 * 5 + 32 + 4 + 4 * 5 + 4 + 4 * 6 + 8;
/// Encoded size of one close-totals entry: key and eight sums.
const TOTALS: usize = 64 + 8 * 8;
/// A name table this large is compacted at load when most of it is unused
/// (a smaller one when the state shrank: see `journal::PrevFile::check`).
pub(super) const COMPACT_AT: usize = 1024;

/// A fast 64-bit checksum over 32-byte blocks in four lanes (detects
/// truncation and corruption; not a defence against forgery, which needs
/// write access to a 0700 directory anyway).
struct Hasher {
    lanes: [u64; 4],
}

const K: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher {
    fn new() -> Self {
        Self {
            lanes: [K, K ^ 1, K ^ 2, K ^ 3],
        }
    }
    /// `data.len()` must be a multiple of 32.
    fn blocks(&mut self, data: &[u8]) {
        for block in data.chunks_exact(32) {
            for (i, lane) in self.lanes.iter_mut().enumerate() {
                let mut w = [0u8; 8];
                w.copy_from_slice(&block[i * 8..i * 8 + 8]);
                *lane = (*lane ^ u64::from_le_bytes(w))
                    .wrapping_mul(K)
                    .rotate_left(29);
            }
        }
    }
    fn finish(mut self, tail: &[u8], total: u64) -> u64 {
        let mut block = [0u8; 32];
        block[..tail.len()].copy_from_slice(tail);
        self.blocks(&block);
        let mut h = total.wrapping_mul(K);
        for lane in self.lanes {
            h = (h ^ lane).wrapping_mul(K).rotate_left(31);
        }
        h
    }
}

/// `Hasher` over bytes in any chunks.
pub(super) struct StreamHash {
    h: Hasher,
    pending: Vec<u8>,
    total: u64,
}

impl StreamHash {
    pub(super) fn new() -> Self {
        Self {
            h: Hasher::new(),
            pending: Vec::with_capacity(32),
            total: 0,
        }
    }
    pub(super) fn update(&mut self, mut b: &[u8]) {
        self.total += b.len() as u64;
        if !self.pending.is_empty() {
            let take = (32 - self.pending.len()).min(b.len());
            self.pending.extend_from_slice(&b[..take]);
            b = &b[take..];
            if self.pending.len() < 32 {
                return;
            }
            self.h.blocks(&self.pending);
            self.pending.clear();
        }
        let whole = b.len() / 32 * 32;
        self.h.blocks(&b[..whole]);
        self.pending.extend_from_slice(&b[whole..]);
    }
    pub(super) fn finish(self) -> u64 {
        self.h.finish(&self.pending, self.total)
    }
}

/// Buffered, checksummed body writer.
pub(super) struct Enc<W: Write> {
    pub(super) w: W,
    buf: Vec<u8>,
    hash: StreamHash,
}

const BUF: usize = 1 << 16;

impl<W: Write> Enc<W> {
    pub(super) fn new(w: W) -> Self {
        Self {
            w,
            buf: Vec::with_capacity(BUF + CONN + 64),
            hash: StreamHash::new(),
        }
    }
    /// Body bytes so far.
    pub(super) fn written(&self) -> u64 {
        self.hash.total + self.buf.len() as u64
    }
    /// Flushes and returns (body length, checksum); the hash starts over.
    pub(super) fn finish_body(&mut self) -> io::Result<(u64, u64)> {
        self.flush_buf()?;
        let total = self.hash.total;
        let sum = std::mem::replace(&mut self.hash, StreamHash::new()).finish();
        Ok((total, sum))
    }
    pub(super) fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= BUF {
            self.flush_buf()?;
        }
        Ok(())
    }
    pub(super) fn flush_buf(&mut self) -> io::Result<()> {
        self.hash.update(&self.buf);
        self.w.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }
    pub(super) fn u32(&mut self, v: u32) -> io::Result<()> {
        self.put(&v.to_le_bytes())
    }
    pub(super) fn u64(&mut self, v: u64) -> io::Result<()> {
        self.put(&v.to_le_bytes())
    }
    fn str(&mut self, s: &str) -> io::Result<()> {
        let len = u32::try_from(s.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "string over 4 GiB"))?;
        self.u32(len)?;
        self.put(s.as_bytes())
    }
    fn count(&mut self, n: usize) -> io::Result<()> {
        self.u64(n as u64)
    }
}

pub(super) fn conn_bytes(cookie: u64, c: &ConnState) -> [u8; CONN] {
    let mut b = [0u8; CONN];
    let mut at = 0;
    let mut put = |x: &[u8]| {
        b[at..at + x.len()].copy_from_slice(x);
        at += x.len();
    };
    put(&cookie.to_le_bytes());
    put(&c.seq.to_le_bytes());
    for k in [c.last, c.reported] {
        for v in counters_arr(k) {
            put(&v.to_le_bytes());
        }
    }
    for v in [
        c.start_ns,
        c.start_unix_ns as u64,
        c.recorded_ns,
        c.cgroup_id,
        c.id.netns_cookie,
    ] {
        put(&v.to_le_bytes());
    }
    put(&c.local);
    put(&c.remote);
    put(&c.local_port.to_le_bytes());
    put(&c.remote_port.to_le_bytes());
    for v in [
        c.direction,
        c.state,
        c.flags,
        c.srtt_us,
        c.min_rtt_us,
        c.id.pid,
    ] {
        put(&v.to_le_bytes());
    }
    let i = &c.id;
    for v in [
        i.workload,
        i.container_id,
        i.pod_uid,
        i.comm,
        i.service,
        i.service_namespace,
        c.wkey,
        c.skey,
    ] {
        put(&v.to_le_bytes());
    }
    debug_assert_eq!(at, CONN);
    b
}

pub(super) fn counters_arr(c: Counters) -> [u64; 6] {
    [
        c.bytes_sent,
        c.bytes_received,
        c.packets_sent,
        c.packets_received,
        c.retransmits,
        c.lost_packets,
    ]
}

pub(super) fn counters_of(a: [u64; 6]) -> Counters {
    Counters {
        bytes_sent: a[0],
        bytes_received: a[1],
        packets_sent: a[2],
        packets_received: a[3],
        retransmits: a[4],
        lost_packets: a[5],
    }
}

/// Writes a state file in one pass: the connections as a cycle makes them
/// (in cookie order), then the rest at `finish`.
pub struct Writer<W: Write> {
    e: Enc<W>,
    n: u64,
    last: Option<u64>,
    generation: u64,
}

impl<W: Write> Writer<W> {
    /// A base of generation `generation` (see `journal`).
    pub fn new(mut w: W, generation: u64) -> io::Result<Self> {
        let mut header = [0u8; HEADER];
        header[..16].copy_from_slice(MAGIC);
        header[16..20].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        w.write_all(&header)?;
        Ok(Self {
            e: Enc::new(w),
            n: 0,
            last: None,
            generation,
        })
    }

    /// Appends one connection; cookies must increase.
    pub fn push(&mut self, cookie: u64, c: &ConnState) -> io::Result<()> {
        self.push_raw(&conn_bytes(cookie, c))
    }

    fn push_raw(&mut self, rec: &[u8; CONN]) -> io::Result<()> {
        let mut k = [0u8; 8];
        k.copy_from_slice(&rec[..8]);
        let cookie = u64::from_le_bytes(k);
        if self.last.is_some_and(|l| l >= cookie) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "state connections out of cookie order",
            ));
        }
        self.last = Some(cookie);
        self.n += 1;
        self.e.put(rec)
    }

    /// Writes the rest of `s` and the trailer; returns the writer, flushed.
    pub fn finish(mut self, s: &State) -> io::Result<W> {
        write_head(&mut self.e, s, self.generation, 0)?;
        let (total, sum) = self.e.finish_body()?;
        let mut t = [0u8; TRAILER];
        t[..8].copy_from_slice(&self.n.to_le_bytes());
        t[8..16].copy_from_slice(&total.to_le_bytes());
        t[16..24].copy_from_slice(&sum.to_le_bytes());
        t[24..].copy_from_slice(END);
        self.e.w.write_all(&t)?;
        self.e.w.flush()?;
        Ok(self.e.w)
    }
}

/// Everything but the connections ("the head"), names from number
/// `names_from` on (those before it are already stored).
pub(super) fn write_head<W: Write>(
    e: &mut Enc<W>,
    s: &State,
    generation: u64,
    names_from: usize,
) -> io::Result<()> {
    write_head_as(e, s, generation, names_from, FORMAT_VERSION)
}

/// `write_head` in the layout of `version` (v5 or later).
fn write_head_as<W: Write>(
    e: &mut Enc<W>,
    s: &State,
    generation: u64,
    names_from: usize,
    version: u32,
) -> io::Result<()> {
    e.str(&s.boot_id)?;
    e.str(&s.home)?;
    if version >= FORMAT_VERSION {
        e.u64(generation)?;
    }
    for v in [
        s.pin_generation,
        s.ring_applied,
        s.created_unix_ns as u64,
        s.closes_without_record,
        s.malformed_records,
    ] {
        e.u64(v)?;
    }
    for labels in [&s.workload_labels, &s.service_labels] {
        e.count(labels.len())?;
        for l in labels {
            e.str(l)?;
        }
    }
    match &s.services_text {
        Some(t) => {
            e.put(&[1])?;
            e.str(t)?;
        }
        None => e.put(&[0])?,
    }
    e.count(s.strings.len())?;
    if version >= FORMAT_VERSION {
        e.count(names_from)?;
    }
    for t in s.strings.iter().skip(names_from) {
        e.str(t)?;
    }
    e.count(s.cgroups.len())?;
    for (id, c) in &s.cgroups {
        e.u64(*id)?;
        e.str(&c.path)?;
    }
    e.count(s.logs.len())?;
    for (path, c) in &s.logs {
        e.str(path)?;
        for v in [c.dev, c.ino, c.len] {
            e.u64(v)?;
        }
    }
    for groups in [&s.workloads, &s.services] {
        e.count(groups.len())?;
        for ((dir, key), t) in groups {
            e.u32(*dir)?;
            e.u32(*key)?;
            for v in [t.opened, t.closed, t.failed] {
                e.u64(v)?;
            }
            for v in counters_arr(t.closed_counters) {
                e.u64(v)?;
            }
        }
    }
    e.count(s.settling.len())?;
    for (cookie, until) in &s.settling {
        e.u64(*cookie)?;
        e.u64(until.to_u64())?;
    }
    e.count(s.final_series.len())?;
    for c in &s.final_series {
        e.put(&conn_bytes(0, c))?;
    }
    // Close totals last (v6 files written before them end above).
    if version >= FORMAT_VERSION {
        e.count(s.close_totals.len())?;
        for (key, v) in &s.close_totals {
            e.put(&key.to_bytes())?;
            for x in v {
                e.u64(*x)?;
            }
        }
        // Runtime names of the cgroups above, after the close totals (v6
        // files written before them end above): those not listed are
        // still to be looked up.
        let named: Vec<_> = s
            .cgroups
            .iter()
            .filter_map(|(id, c)| Some((id, c.names.as_ref()?)))
            .collect();
        e.count(named.len())?;
        for (id, n) in named {
            e.u64(*id)?;
            for t in [&n.namespace, &n.pod, &n.pod_uid, &n.container] {
                e.str(t)?;
            }
        }
        // Series times of the groups above, in their order (v6 since issue
        // 18, optional: a state without them keeps its series' start).
        for groups in [&s.workloads, &s.services] {
            e.count(groups.len())?;
            for t in groups.values() {
                e.u64(t.start_unix_ns as u64)?;
                e.u64(t.seen_unix_ns as u64)?;
            }
        }
    }
    Ok(())
}

/// Bytes of `s`'s head as a base stores it (all names).
pub(super) fn head_len(s: &State) -> u64 {
    let mut e = Enc::new(io::sink());
    match write_head(&mut e, s, 0, 0) {
        Ok(()) => e.written(),
        Err(_) => u64::MAX,
    }
}

/// The whole file in memory, connections from `s.conns` (tests, fuzzing).
#[cfg(test)]
pub fn encode(s: &State) -> Vec<u8> {
    encode_gen(s, 1)
}

/// `encode` with a given generation.
#[cfg(test)]
pub fn encode_gen(s: &State, generation: u64) -> Vec<u8> {
    let write = || -> io::Result<Vec<u8>> {
        let mut w = Writer::new(Vec::new(), generation)?;
        for (cookie, c) in s.conns.iter() {
            w.push(cookie, c)?;
        }
        w.finish(s)
    };
    match write() {
        Ok(v) => v,
        Err(e) => unreachable!("encoding into a Vec failed: {e}"),
    }
}

/// Decodes a whole file held in memory, connections into `conns`.
#[cfg(test)]
pub fn decode(bytes: &[u8]) -> Result<State, String> {
    let (n, body_len) = check_frame(
        bytes.len() as u64,
        &bytes[..bytes.len().min(HEADER)],
        &bytes[bytes.len().saturating_sub(TRAILER)..],
    )?;
    let body = &bytes[HEADER..HEADER + body_len as usize];
    let mut h = StreamHash::new();
    h.update(body);
    check_sum(h.finish(), &bytes[bytes.len() - TRAILER..])?;
    let conns_len = n as usize * CONN;
    let version = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    let (mut s, _) = decode_head(
        &mut &body[conns_len..],
        (body.len() - conns_len) as u64,
        version,
        None,
    )?;
    let mut conns = Vec::with_capacity(n as usize);
    for rec in body[..conns_len].chunks_exact(CONN) {
        let mut b = [0u8; CONN];
        b.copy_from_slice(rec);
        let (cookie, c) = conn_of(&b, s.strings.len())?;
        if conns.last().is_some_and(|(p, _)| *p >= cookie) {
            return Err("connections out of order".to_owned());
        }
        conns.push((cookie, c));
    }
    s.conns = super::Conns::from_sorted(conns);
    Ok(s)
}

/// A `Read` at a file offset, without moving the file's own position (so
/// several scans of one file can exist).
pub(super) struct At {
    pub(super) file: Arc<File>,
    pub(super) at: u64,
}

impl Read for At {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// A verified base file: its connections are left on disk.
pub struct Base {
    pub(super) file: Arc<File>,
    /// Connections in it.
    pub(super) n: u64,
    /// 0 for formats before v6 (no journal belongs to it).
    pub(super) generation: u64,
    /// Its size in bytes.
    pub(super) len: u64,
    /// Names its connections may refer to.
    pub(super) names: usize,
}

/// Opens a base file: frame, checksum and the head are checked and the
/// head decoded; the connections are left on disk (checked as they are
/// read, first by `journal::Prev::check` at load). Ok(Err(problem)) for a
/// file that is not a usable state; Err for I/O.
pub fn open(file: File) -> io::Result<Result<(State, Base), String>> {
    let len = file.metadata()?.len();
    let mut head = [0u8; HEADER];
    let mut tail = [0u8; TRAILER];
    let got = read_at_most(&file, 0, &mut head)?;
    let got_tail = read_at_most(&file, len.saturating_sub(TRAILER as u64), &mut tail)?;
    let (n, body_len) = match check_frame(len, &head[..got], &tail[..got_tail]) {
        Ok(v) => v,
        Err(p) => return Ok(Err(p)),
    };
    let file = Arc::new(file);
    // 1. The checksum, in large blocks.
    let mut h = StreamHash::new();
    if !hash_range(&file, HEADER as u64, body_len, &mut h)? {
        return Ok(Err("truncated while reading".to_owned()));
    }
    if let Err(p) = check_sum(h.finish(), &tail) {
        return Ok(Err(p));
    }
    // 2. The rest.
    let conns_len = n * CONN as u64;
    let mut r = BufReader::with_capacity(
        1 << 16,
        At {
            file: file.clone(),
            at: HEADER as u64 + conns_len,
        }
        .take(body_len - conns_len),
    );
    let version = u32::from_le_bytes([head[16], head[17], head[18], head[19]]);
    let (s, generation) = match decode_head(&mut r, body_len - conns_len, version, None) {
        Ok(s) => s,
        Err(p) => return Ok(Err(p)),
    };
    let names = s.strings.len();
    Ok(Ok((
        s,
        Base {
            file,
            n,
            generation,
            len,
            names,
        },
    )))
}

/// Feeds `len` bytes of `file` from `at` to `h`; false if the file ends first.
pub(super) fn hash_range(file: &File, at: u64, len: u64, h: &mut StreamHash) -> io::Result<bool> {
    let mut buf = vec![0u8; (len as usize).clamp(1, 1 << 20)];
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(buf.len() as u64) as usize;
        let k = read_at_most(file, at + done, &mut buf[..want])?;
        h.update(&buf[..k]);
        done += k as u64;
        if k < want {
            return Ok(false);
        }
    }
    Ok(true)
}

pub(super) fn read_at_most(f: &File, at: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], at + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Checks magic, version and trailer; returns (connections, body length).
fn check_frame(len: u64, head: &[u8], tail: &[u8]) -> Result<(u64, u64), String> {
    if head.len() < 16 || &head[..16] != MAGIC {
        return Err("not a longconn state file".to_owned());
    }
    if head.len() < HEADER {
        return Err("truncated (no complete header)".to_owned());
    }
    let version = u32::from_le_bytes([head[16], head[17], head[18], head[19]]);
    if ![FORMAT_VERSION, V5, V4, V3].contains(&version) || head[20..24] != [0; 4] {
        return Err(format!(
            "state version {version} (expected {FORMAT_VERSION})"
        ));
    }
    if len < (HEADER + TRAILER) as u64 || tail.len() < TRAILER || &tail[24..] != END {
        return Err("truncated (no end marker)".to_owned());
    }
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&tail[i * 8..i * 8 + 8]);
        u64::from_le_bytes(b)
    };
    let (n, body) = (word(0), word(1));
    if body != len - (HEADER + TRAILER) as u64 {
        return Err(format!(
            "truncated or extended: body of {} bytes, trailer says {body}",
            len - (HEADER + TRAILER) as u64
        ));
    }
    if n.checked_mul(CONN as u64).is_none_or(|c| c > body) {
        return Err(format!("{n} connections do not fit the file"));
    }
    Ok((n, body))
}

pub(super) fn check_sum(got: u64, tail: &[u8]) -> Result<(), String> {
    let mut b = [0u8; 8];
    b.copy_from_slice(&tail[16..24]);
    if u64::from_le_bytes(b) == got {
        Ok(())
    } else {
        Err("corrupt (checksum mismatch)".to_owned())
    }
}

/// Body decoder over any reader; every problem is a message.
pub(super) struct Dec<'a> {
    pub(super) r: &'a mut dyn Read,
    pub(super) left: u64,
}

pub(super) type R<T> = Result<T, String>;

impl Dec<'_> {
    pub(super) fn bytes<const N: usize>(&mut self) -> R<[u8; N]> {
        let mut b = [0u8; N];
        if (N as u64) > self.left {
            return Err("truncated body".to_owned());
        }
        self.r
            .read_exact(&mut b)
            .map_err(|e| format!("unreadable body ({e})"))?;
        self.left -= N as u64;
        Ok(b)
    }
    pub(super) fn u32(&mut self) -> R<u32> {
        self.bytes::<4>().map(u32::from_le_bytes)
    }
    pub(super) fn u64(&mut self) -> R<u64> {
        self.bytes::<8>().map(u64::from_le_bytes)
    }
    fn str(&mut self) -> R<String> {
        let n = u64::from(self.u32()?);
        if n > self.left {
            return Err("truncated string".to_owned());
        }
        let mut v = vec![0u8; n as usize];
        self.r
            .read_exact(&mut v)
            .map_err(|e| format!("unreadable body ({e})"))?;
        self.left -= n;
        String::from_utf8(v).map_err(|_| "a string is not UTF-8".to_owned())
    }
    /// A count of items at least `min` bytes each: never more than fit.
    fn count(&mut self, min: u64) -> R<usize> {
        let n = self.u64()?;
        if n.saturating_mul(min) > self.left {
            return Err(format!("a count of {n} does not fit the file"));
        }
        Ok(n as usize)
    }
    fn conn(&mut self, strings: usize) -> R<(u64, ConnState)> {
        let b = self.bytes::<CONN>()?;
        conn_of(&b, strings)
    }
}

/// Where a connection record's eight names end it (see `conn_of`).
const SYMS_AT: usize = CONN - 8 * 4;

/// Checks one connection record's names against a table of `strings`
/// entries without decoding the rest: what `conn_of` would refuse of a
/// record whose checksum holds.
pub(super) fn check_conn(b: &[u8; CONN], strings: usize) -> R<()> {
    for s in b[SYMS_AT..].chunks_exact(4) {
        let v = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
        if v as usize >= strings {
            return Err(format!("a connection refers to name #{v} of {strings}"));
        }
    }
    Ok(())
}

/// Decodes one connection record, checking its names against a table of
/// `strings` entries.
pub(super) fn conn_of(b: &[u8; CONN], strings: usize) -> R<(u64, ConnState)> {
    {
        let mut at = 0;
        let mut take = |n: usize| {
            let s = &b[at..at + n];
            at += n;
            s
        };
        let u64_ = |s: &[u8]| {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            u64::from_le_bytes(a)
        };
        let u32_ = |s: &[u8]| {
            let mut a = [0u8; 4];
            a.copy_from_slice(s);
            u32::from_le_bytes(a)
        };
        let u16_ = |s: &[u8]| u16::from_le_bytes([s[0], s[1]]);
        let cookie = u64_(take(8));
        let seq = u64_(take(8));
        let mut k = [[0u64; 6]; 2];
        for c in &mut k {
            for v in c.iter_mut() {
                *v = u64_(take(8));
            }
        }
        let mut w = [0u64; 5];
        for v in &mut w {
            *v = u64_(take(8));
        }
        let mut local = [0u8; 16];
        local.copy_from_slice(take(16));
        let mut remote = [0u8; 16];
        remote.copy_from_slice(take(16));
        let local_port = u16_(take(2));
        let remote_port = u16_(take(2));
        let mut n = [0u32; 6];
        for v in &mut n {
            *v = u32_(take(4));
        }
        let mut syms = [0u32; 8];
        for v in &mut syms {
            *v = u32_(take(4));
            if *v as usize >= strings {
                return Err(format!("a connection refers to name #{v} of {strings}"));
            }
        }
        Ok((
            cookie,
            ConnState {
                seq,
                last: counters_of(k[0]),
                reported: counters_of(k[1]),
                start_ns: w[0],
                start_unix_ns: w[1] as i64,
                // v4 kept the kernel's last update here: about the last
                // cycle, a fair start for the idle-record interval.
                recorded_ns: w[2],
                update_ns: 0,
                cgroup_id: w[3],
                local,
                remote,
                local_port,
                remote_port,
                direction: n[0],
                state: n[1],
                flags: n[2],
                srtt_us: n[3],
                min_rtt_us: n[4],
                id: IdSyms {
                    workload: syms[0],
                    container_id: syms[1],
                    pod_uid: syms[2],
                    comm: syms[3],
                    service: syms[4],
                    service_namespace: syms[5],
                    pid: n[5],
                    netns_cookie: w[4],
                },
                wkey: syms[6],
                skey: syms[7],
            },
        ))
    }
}

/// Decodes a head of format `version`: (state without connections,
/// generation). A journal entry's head adds names to `prior` (the table
/// so far); a base's stores them all.
pub(super) fn decode_head(
    r: &mut dyn Read,
    len: u64,
    version: u32,
    prior: Option<Strings>,
) -> Result<(State, u64), String> {
    let mut d = Dec { r, left: len };
    let boot_id = d.str()?;
    let home = if version == V3 {
        String::new()
    } else {
        d.str()?
    };
    let generation = if version >= FORMAT_VERSION {
        d.u64()?
    } else {
        0
    };
    let mut s = State {
        version: FORMAT_VERSION,
        boot_id,
        home,
        pin_generation: d.u64()?,
        ring_applied: d.u64()?,
        created_unix_ns: match d.u64()? as i64 {
            secs if version == V3 => secs.saturating_mul(1_000_000_000),
            ns => ns,
        },
        closes_without_record: d.u64()?,
        malformed_records: d.u64()?,
        ..Default::default()
    };
    for labels in [&mut s.workload_labels, &mut s.service_labels] {
        for _ in 0..d.count(4)? {
            labels.push(d.str()?);
        }
    }
    s.services_text = match d.bytes::<1>()? {
        [0] => None,
        [1] => Some(d.str()?),
        _ => return Err("bad service-map flag".to_owned()),
    };
    let total = d.u64()?;
    let from = if version >= FORMAT_VERSION {
        d.u64()?
    } else {
        0
    };
    let have = prior.as_ref().map_or(0, |p| p.len() as u64);
    if from != have || total < from || (total - from).saturating_mul(4) > d.left {
        return Err(format!(
            "names {from}..{total} do not follow the {have} known or do not fit"
        ));
    }
    s.strings = match prior {
        Some(mut table) => {
            for _ in from..total {
                table.intern_new(d.str()?);
            }
            table
        }
        None => {
            let mut list = Vec::with_capacity(total as usize);
            for _ in 0..total {
                list.push(d.str()?);
            }
            Strings::from_list(list).ok_or("the name table does not start with \"\"")?
        }
    };
    let names = s.strings.len();
    for _ in 0..d.count(12)? {
        let id = d.u64()?;
        s.cgroups.insert(id, Cgroup::unnamed(d.str()?));
    }
    if version == V3 {
        for _ in 0..d.count(12)? {
            d.str()?;
            d.u64()?;
        }
    } else {
        for _ in 0..d.count(28)? {
            let path = d.str()?;
            let (dev, ino, len) = (d.u64()?, d.u64()?, d.u64()?);
            s.logs.insert(path, Committed { dev, ino, len });
        }
    }
    for i in 0..2 {
        let mut groups: BTreeMap<GroupKey, GroupTotals> = BTreeMap::new();
        for _ in 0..d.count(80)? {
            let dir = d.u32()?;
            let key = d.u32()?;
            if key as usize >= names {
                return Err(format!("a group refers to name #{key} of {names}"));
            }
            let (opened, closed, failed) = (d.u64()?, d.u64()?, d.u64()?);
            let mut c = [0u64; 6];
            for v in &mut c {
                *v = d.u64()?;
            }
            groups.insert(
                (dir, key),
                GroupTotals {
                    opened,
                    closed,
                    failed,
                    closed_counters: counters_of(c),
                    ..GroupTotals::default()
                },
            );
        }
        if i == 0 {
            s.workloads = groups;
        } else {
            s.services = groups;
        }
    }
    for _ in 0..d.count(16)? {
        let cookie = d.u64()?;
        let until = match d.u64()? {
            _ if version < V5 => Settling::RingBefore(0),
            v => Settling::from_u64(v),
        };
        s.settling.insert(cookie, until);
    }
    let n = d.count(CONN as u64)?;
    s.final_series.reserve_exact(n);
    for _ in 0..n {
        s.final_series.push(d.conn(names)?.1);
    }
    if version >= FORMAT_VERSION && d.left > 0 {
        for _ in 0..d.count(TOTALS as u64)? {
            let k = d.bytes::<64>()?;
            let key = longconn_common::layout::TotalsKey::decode(&k)
                .ok_or("a close-totals key of the wrong size")?;
            let mut v = [0u64; 8];
            for x in &mut v {
                *x = d.u64()?;
            }
            s.close_totals.insert(key, v);
        }
    }
    if version >= FORMAT_VERSION && d.left > 0 {
        for _ in 0..d.count(24)? {
            let id = d.u64()?;
            let n = runtime::Names {
                namespace: d.str()?,
                pod: d.str()?,
                pod_uid: d.str()?,
                container: d.str()?,
            };
            let c = s
                .cgroups
                .get_mut(&id)
                .ok_or_else(|| format!("runtime names of unknown cgroup {id}"))?;
            c.names = Some(n);
        }
    }
    if version >= FORMAT_VERSION && d.left > 0 {
        for groups in [&mut s.workloads, &mut s.services] {
            let n = d.count(16)?;
            if n != groups.len() {
                return Err(format!("series times of {n} groups for {}", groups.len()));
            }
            for t in groups.values_mut() {
                t.start_unix_ns = d.u64()? as i64;
                t.seen_unix_ns = d.u64()? as i64;
            }
        }
    }
    if d.left != 0 {
        return Err(format!("{} unexpected bytes after the body", d.left));
    }
    Ok((s, generation))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::state::addr_bytes;

    pub fn sample() -> State {
        let mut s = State {
            version: FORMAT_VERSION,
            boot_id: "b00t".into(),
            pin_generation: 42,
            ring_applied: 1920,
            created_unix_ns: 1_700_000_000_123_456_789,
            home: "/var/lib/longconn".into(),
            closes_without_record: 3,
            malformed_records: 1,
            workload_labels: vec!["workload".into()],
            service_labels: vec!["service".into(), "service_namespace".into()],
            services_text: Some("10.0.0.0/8,5432,pg,db\n".into()),
            ..Default::default()
        };
        let w = s.strings.intern("/app");
        let svc = s.strings.intern("10.0.0.1:5432");
        s.cgroups.insert(
            7,
            Cgroup {
                path: "/app".into(),
                names: Some(runtime::Names {
                    namespace: "shop".into(),
                    pod: "web-0".into(),
                    pod_uid: String::new(),
                    container: "app".into(),
                }),
            },
        );
        s.cgroups.insert(8, Cgroup::unnamed("/old".into()));
        s.logs.insert(
            "/var/log/longconn/access.csv".into(),
            Committed {
                dev: 2049,
                ino: 77,
                len: 123,
            },
        );
        s.workloads.insert(
            (1, w),
            GroupTotals {
                opened: 5,
                closed: 4,
                failed: 1,
                closed_counters: Counters {
                    bytes_sent: u64::MAX,
                    ..Default::default()
                },
                start_unix_ns: 1_700_000_001_000_000_000,
                seen_unix_ns: 1_700_000_002_000_000_000,
            },
        );
        s.services.insert((2, svc), GroupTotals::default());
        s.settling.insert(9, Settling::RingBefore(99));
        s.settling.insert(10, Settling::Reap);
        for cookie in [3u64, 1 << 40, u64::MAX] {
            let c = ConnState {
                seq: cookie % 7,
                last: Counters {
                    bytes_sent: cookie,
                    lost_packets: 2,
                    ..Default::default()
                },
                start_unix_ns: -5,
                local: addr_bytes("127.0.0.1".parse().unwrap()),
                remote: addr_bytes("2001:db8::1".parse().unwrap()),
                local_port: 80,
                remote_port: 65535,
                direction: 2,
                id: IdSyms {
                    workload: w,
                    service: svc,
                    pid: 77,
                    netns_cookie: 4096,
                    ..Default::default()
                },
                wkey: w,
                skey: svc,
                ..Default::default()
            };
            s.conns.insert(cookie, c);
            s.final_series.push(c);
        }
        s
    }

    /// A base alone, opened and checked as `load` does.
    fn open_file(p: &std::path::Path) -> (State, super::super::journal::PrevFile) {
        let (mut head, base) = open(std::fs::File::open(p).unwrap()).unwrap().unwrap();
        let names = head.strings.len();
        let mut prev = super::super::journal::PrevFile::new(base, None, names);
        prev.check(&mut head, true).unwrap().unwrap();
        (head, prev)
    }

    #[test]
    fn check_conn_refuses_exactly_what_conn_of_refuses() {
        let s = sample();
        let strings = s.strings.len();
        for (cookie, c) in s.conns.iter() {
            let good = conn_bytes(cookie, c);
            assert!(check_conn(&good, strings).is_ok() && conn_of(&good, strings).is_ok());
            for i in 0..8 {
                let mut c = *c;
                *c.syms_mut()[i] = strings as u32;
                let bad = conn_bytes(cookie, &c);
                assert!(conn_of(&bad, strings).is_err(), "name {i}");
                assert!(check_conn(&bad, strings).is_err(), "name {i}");
            }
        }
    }

    #[test]
    fn round_trips_in_memory_and_through_a_file() {
        let s = sample();
        let bytes = encode(&s);
        assert_eq!(decode(&bytes).unwrap(), s);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.bin");
        std::fs::write(&p, &bytes).unwrap();
        let (mut head, prev) = open_file(&p);
        head.conns = super::super::Conns::from_sorted(prev.scan().map(Result::unwrap).collect());
        assert_eq!(head, s);
        assert_eq!(decode(&encode(&State::default())).unwrap().strings.len(), 1);
    }

    /// A large name table mostly unused is compacted at load, consistently
    /// in the connections, groups and final series.
    #[test]
    fn unused_names_are_dropped_at_load() {
        let mut s = sample();
        for i in 0..3000 {
            s.strings.intern(&format!("gone-{i}"));
        }
        let want: Vec<_> = s
            .conns
            .iter()
            .map(|(k, c)| (k, s.strings.get(c.id.service).to_owned()))
            .collect();
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.bin");
        std::fs::write(&p, encode(&s)).unwrap();
        let (head, prev) = open_file(&p);
        assert!(head.strings.len() < 10, "{}", head.strings.len());
        let got: Vec<_> = prev
            .scan()
            .map(|r| {
                let (k, c) = r.unwrap();
                (k, head.strings.get(c.id.service).to_owned())
            })
            .collect();
        assert_eq!(got, want);
        let w = head.workloads.keys().next().unwrap().1;
        assert_eq!(head.strings.get(w), "/app");
        assert_eq!(head.strings.get(head.final_series[0].skey), "10.0.0.1:5432");
    }

    /// `s` as the previous format (v3) wrote it.
    fn encode_v3(s: &State) -> Vec<u8> {
        let mut e = Enc {
            w: Vec::new(),
            buf: Vec::new(),
            hash: StreamHash::new(),
        };
        let mut header = [0u8; HEADER];
        header[..16].copy_from_slice(MAGIC);
        header[16..20].copy_from_slice(&V3.to_le_bytes());
        for (cookie, c) in s.conns.iter() {
            e.put(&conn_bytes(cookie, c)).unwrap();
        }
        e.str(&s.boot_id).unwrap();
        for v in [
            s.pin_generation,
            s.ring_applied,
            (s.created_unix_ns / 1_000_000_000) as u64,
            s.closes_without_record,
            s.malformed_records,
        ] {
            e.u64(v).unwrap();
        }
        for labels in [&s.workload_labels, &s.service_labels] {
            e.count(labels.len()).unwrap();
            for l in labels {
                e.str(l).unwrap();
            }
        }
        e.put(&[1]).unwrap();
        e.str(s.services_text.as_deref().unwrap()).unwrap();
        e.count(s.strings.len()).unwrap();
        for t in s.strings.iter() {
            e.str(t).unwrap();
        }
        e.count(s.cgroups.len()).unwrap();
        for (id, c) in &s.cgroups {
            e.u64(*id).unwrap();
            e.str(&c.path).unwrap();
        }
        e.count(1).unwrap();
        e.str("access.csv").unwrap();
        e.u64(123).unwrap();
        for groups in [&s.workloads, &s.services] {
            e.count(groups.len()).unwrap();
            for ((dir, key), t) in groups {
                e.u32(*dir).unwrap();
                e.u32(*key).unwrap();
                for v in [t.opened, t.closed, t.failed] {
                    e.u64(v).unwrap();
                }
                for v in counters_arr(t.closed_counters) {
                    e.u64(v).unwrap();
                }
            }
        }
        e.count(s.settling.len()).unwrap();
        for cookie in s.settling.keys() {
            e.u64(*cookie).unwrap();
            e.u64(1_234_567_890).unwrap(); // v3/v4: CLOCK_BOOTTIME ns applied
        }
        e.count(s.final_series.len()).unwrap();
        for c in &s.final_series {
            e.put(&conn_bytes(0, c)).unwrap();
        }
        e.flush_buf().unwrap();
        let total = e.hash.total;
        let sum = std::mem::replace(&mut e.hash, StreamHash::new()).finish();
        let mut out = header.to_vec();
        out.extend_from_slice(&e.w);
        out.extend_from_slice(&(s.conns.iter().count() as u64).to_le_bytes());
        out.extend_from_slice(&total.to_le_bytes());
        out.extend_from_slice(&sum.to_le_bytes());
        out.extend_from_slice(END);
        out
    }

    /// An upgrade from v3 keeps every total and position (not a counter
    /// reset); its file lengths by name are dropped (not enough to cut).
    #[test]
    fn a_v3_state_is_read_with_its_totals() {
        let mut want = sample();
        want.created_unix_ns = 1_700_000_000_000_000_000;
        let got = decode(&encode_v3(&want)).unwrap();
        want.home.clear();
        want.logs.clear();
        unnamed(&mut want);
        for until in want.settling.values_mut() {
            *until = Settling::RingBefore(0);
        }
        assert_eq!(got, want);
    }

    /// v4 differs from v5 only in what a settling close's number means (the
    /// time it was applied): each is kept for the first cycle only.
    /// `s` in the v5 layout (no generation, one name list), as `version`.
    fn encode_v5(s: &State, version: u32) -> Vec<u8> {
        let mut e = Enc::new(Vec::new());
        for (cookie, c) in s.conns.iter() {
            e.put(&conn_bytes(cookie, c)).unwrap();
        }
        write_head_as(&mut e, s, 0, 0, V5).unwrap();
        let (total, sum) = e.finish_body().unwrap();
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&e.w);
        out.extend_from_slice(&(s.conns.iter().count() as u64).to_le_bytes());
        out.extend_from_slice(&total.to_le_bytes());
        out.extend_from_slice(&sum.to_le_bytes());
        out.extend_from_slice(END);
        out
    }

    /// An upgrade from v5 keeps everything.
    #[test]
    fn a_v5_state_is_read_whole() {
        let mut want = sample();
        let got = decode(&encode_v5(&want, V5)).unwrap();
        unnamed(&mut want);
        assert_eq!(got, want);
    }

    /// Before runtime names, a state kept cgroup paths only: their names
    /// are looked up again.
    fn unnamed(s: &mut State) {
        for c in s.cgroups.values_mut() {
            c.names = None;
        }
        // Nor series times (issue 18).
        for t in s.workloads.values_mut().chain(s.services.values_mut()) {
            (t.start_unix_ns, t.seen_unix_ns) = (0, 0);
        }
    }

    #[test]
    fn a_v4_state_keeps_its_closed_cookies_for_one_cycle() {
        let mut want = sample();
        let bytes = encode_v5(&want, V4);
        let got = decode(&bytes).unwrap();
        unnamed(&mut want);
        for until in want.settling.values_mut() {
            *until = Settling::RingBefore(0);
        }
        assert_eq!(got, want);
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_a_problem() {
        let bytes = encode(&sample());
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "truncated to {n}");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x41;
            assert!(decode(&b).is_err(), "byte {i} flipped");
        }
        assert_eq!(
            decode(br#"{"hello":"world"}"#).unwrap_err(),
            "not a longconn state file"
        );
        let mut v = bytes.clone();
        v[16] = 9;
        assert!(decode(&v).unwrap_err().contains("state version 9"));
    }
}
