//! The binary state file: versioned header, body, checksummed trailer.
//!
//! ```text
//! header  16 B magic "longconn state\n\0", u32 format version, u32 0
//! body    scalars, label lists, service map text, interned strings,
//!         cgroup names, log lengths, group totals, recently closed cookies,
//!         final series, then one fixed-size record per live connection
//!         (sorted by cookie)
//! trailer u64 body length, u64 checksum of the body, 8 B "LCSTEND\n"
//! ```
//!
//! All integers little-endian; strings are a u32 length and UTF-8 bytes.
//! Reading checks the magic, the version, the body length against the file
//! size and the checksum before decoding a byte of the body, then every
//! count, string and interned reference while decoding: a truncated,
//! corrupt or foreign file is a described problem, never a panic or a
//! misread. Writing streams the body through a fixed buffer (no copy of the
//! whole state in memory).

use std::{
    collections::BTreeMap,
    io::{self, Read, Seek, SeekFrom, Write},
};

use super::{ConnState, Counters, GroupKey, GroupTotals, IdSyms, State, Strings};

pub const FORMAT_VERSION: u32 = 3;
const MAGIC: &[u8; 16] = b"longconn state\n\0";
const END: &[u8; 8] = b"LCSTEND\n";
const HEADER: usize = 24;
const TRAILER: usize = 24;
/// Encoded size of one connection record (cookie included).
const CONN: usize = 8 + 8 + 48 + 48 + 8 * 5 + 32 + 4 + 4 * 5 + 4 + 4 * 6 + 8;

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

/// Buffered, checksummed body writer.
struct Enc<'a> {
    w: &'a mut dyn Write,
    buf: Vec<u8>,
    hash: Hasher,
    total: u64,
}

const BUF: usize = 1 << 16;

impl Enc<'_> {
    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= BUF {
            let whole = self.buf.len() / 32 * 32;
            self.hash.blocks(&self.buf[..whole]);
            self.w.write_all(&self.buf[..whole])?;
            self.total += whole as u64;
            self.buf.drain(..whole);
        }
        Ok(())
    }
    fn u32(&mut self, v: u32) -> io::Result<()> {
        self.put(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> io::Result<()> {
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
    fn finish(mut self) -> io::Result<()> {
        let total = self.total + self.buf.len() as u64;
        let whole = self.buf.len() / 32 * 32;
        self.hash.blocks(&self.buf[..whole]);
        let sum = self.hash.finish(&self.buf[whole..], total);
        self.w.write_all(&self.buf)?;
        let mut t = [0u8; TRAILER];
        t[..8].copy_from_slice(&total.to_le_bytes());
        t[8..16].copy_from_slice(&sum.to_le_bytes());
        t[16..].copy_from_slice(END);
        self.w.write_all(&t)
    }
}

fn conn_bytes(cookie: u64, c: &ConnState) -> [u8; CONN] {
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
        c.update_ns,
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

fn counters_arr(c: Counters) -> [u64; 6] {
    [
        c.bytes_sent,
        c.bytes_received,
        c.packets_sent,
        c.packets_received,
        c.retransmits,
        c.lost_packets,
    ]
}

fn counters_of(a: [u64; 6]) -> Counters {
    Counters {
        bytes_sent: a[0],
        bytes_received: a[1],
        packets_sent: a[2],
        packets_received: a[3],
        retransmits: a[4],
        lost_packets: a[5],
    }
}

/// Streams `state` as a complete state file (header, body, trailer).
pub fn write(w: &mut dyn Write, s: &State) -> io::Result<()> {
    let mut header = [0u8; HEADER];
    header[..16].copy_from_slice(MAGIC);
    header[16..20].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    w.write_all(&header)?;
    let mut e = Enc {
        w,
        buf: Vec::with_capacity(BUF + CONN + 64),
        hash: Hasher::new(),
        total: 0,
    };
    e.str(&s.boot_id)?;
    for v in [
        s.pin_generation,
        s.ring_applied,
        s.created_unix as u64,
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
    for t in s.strings.iter() {
        e.str(t)?;
    }
    e.count(s.cgroup_names.len())?;
    for (id, name) in &s.cgroup_names {
        e.u64(*id)?;
        e.str(name)?;
    }
    e.count(s.log_len.len())?;
    for (file, len) in &s.log_len {
        e.str(file)?;
        e.u64(*len)?;
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
    e.count(s.recently_closed.len())?;
    for (cookie, at) in &s.recently_closed {
        e.u64(*cookie)?;
        e.u64(*at)?;
    }
    e.count(s.final_series.len())?;
    for c in &s.final_series {
        e.put(&conn_bytes(0, c))?;
    }
    e.count(s.conns.len())?;
    for (cookie, c) in s.conns.iter() {
        e.put(&conn_bytes(cookie, c))?;
    }
    e.finish()
}

/// The whole file in memory (tests, fuzzing).
#[cfg(test)]
pub fn encode(s: &State) -> Vec<u8> {
    let mut out = Vec::new();
    match write(&mut out, s) {
        Ok(()) => out,
        Err(e) => unreachable!("encoding into a Vec failed: {e}"),
    }
}

/// Decodes a whole file held in memory.
#[cfg(test)]
pub fn decode(bytes: &[u8]) -> Result<State, String> {
    let body_len = check_frame(bytes.len() as u64, &bytes[..bytes.len().min(HEADER)], {
        let at = bytes.len().saturating_sub(TRAILER);
        &bytes[at..]
    })?;
    let body = &bytes[HEADER..HEADER + body_len as usize];
    let mut h = Hasher::new();
    let whole = body.len() / 32 * 32;
    h.blocks(&body[..whole]);
    check_sum(
        h.finish(&body[whole..], body_len),
        &bytes[bytes.len() - TRAILER..],
    )?;
    decode_body(&mut io::Cursor::new(body), body_len)
}

/// Reads and checks a state file: frame and checksum first, then decoding.
/// Ok(Err(problem)) for a file that is not a usable state; Err for I/O.
pub fn read(f: &mut std::fs::File) -> io::Result<Result<State, String>> {
    let len = f.metadata()?.len();
    let mut head = [0u8; HEADER];
    let mut tail = [0u8; TRAILER];
    let got = read_at_most(f, 0, &mut head)?;
    let tail_at = len.saturating_sub(TRAILER as u64);
    let got_tail = read_at_most(f, tail_at, &mut tail)?;
    let body_len = match check_frame(len, &head[..got], &tail[..got_tail]) {
        Ok(n) => n,
        Err(p) => return Ok(Err(p)),
    };
    // Pass 1: the checksum, in large blocks.
    f.seek(SeekFrom::Start(HEADER as u64))?;
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = body_len;
    let mut last = Vec::new();
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.read_exact(&mut buf[..n])?;
        let whole = n / 32 * 32;
        h.blocks(&buf[..whole]);
        left -= n as u64;
        if whole != n {
            // Only the final read is not a multiple of 32 (buf.len() is).
            last = buf[whole..n].to_vec();
        }
    }
    drop(buf);
    if let Err(p) = check_sum(h.finish(&last, body_len), &tail) {
        return Ok(Err(p));
    }
    // Pass 2: decode, streamed.
    f.seek(SeekFrom::Start(HEADER as u64))?;
    let mut r = io::BufReader::with_capacity(1 << 16, f.take(body_len));
    Ok(decode_body(&mut r, body_len))
}

fn read_at_most(f: &mut std::fs::File, at: u64, buf: &mut [u8]) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
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

/// Checks magic, version and trailer; returns the body length.
fn check_frame(len: u64, head: &[u8], tail: &[u8]) -> Result<u64, String> {
    if head.len() < 16 || &head[..16] != MAGIC {
        return Err("not a longconn state file".to_owned());
    }
    if head.len() < HEADER {
        return Err("truncated (no complete header)".to_owned());
    }
    let version = u32::from_le_bytes([head[16], head[17], head[18], head[19]]);
    if version != FORMAT_VERSION || head[20..24] != [0; 4] {
        return Err(format!(
            "state version {version} (expected {FORMAT_VERSION})"
        ));
    }
    if len < (HEADER + TRAILER) as u64 || tail.len() < TRAILER || &tail[16..] != END {
        return Err("truncated (no end marker)".to_owned());
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&tail[..8]);
    let body = u64::from_le_bytes(b);
    if body != len - (HEADER + TRAILER) as u64 {
        return Err(format!(
            "truncated or extended: body of {} bytes, trailer says {body}",
            len - (HEADER + TRAILER) as u64
        ));
    }
    Ok(body)
}

fn check_sum(got: u64, tail: &[u8]) -> Result<(), String> {
    let mut b = [0u8; 8];
    b.copy_from_slice(&tail[8..16]);
    if u64::from_le_bytes(b) == got {
        Ok(())
    } else {
        Err("corrupt (checksum mismatch)".to_owned())
    }
}

/// Body decoder over any reader; every problem is a message.
struct Dec<'a> {
    r: &'a mut dyn Read,
    left: u64,
}

type R<T> = Result<T, String>;

impl Dec<'_> {
    fn bytes<const N: usize>(&mut self) -> R<[u8; N]> {
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
    fn u32(&mut self) -> R<u32> {
        self.bytes::<4>().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> R<u64> {
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
                update_ns: w[2],
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

fn decode_body(r: &mut dyn Read, len: u64) -> Result<State, String> {
    let mut d = Dec { r, left: len };
    let mut s = State {
        version: FORMAT_VERSION,
        boot_id: d.str()?,
        pin_generation: d.u64()?,
        ring_applied: d.u64()?,
        created_unix: d.u64()? as i64,
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
    let n = d.count(4)?;
    let mut list = Vec::with_capacity(n);
    for _ in 0..n {
        list.push(d.str()?);
    }
    s.strings = Strings::from_list(list).ok_or("the name table does not start with \"\"")?;
    let names = s.strings.len();
    for _ in 0..d.count(12)? {
        let id = d.u64()?;
        s.cgroup_names.insert(id, d.str()?);
    }
    for _ in 0..d.count(12)? {
        let file = d.str()?;
        s.log_len.insert(file, d.u64()?);
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
        s.recently_closed.insert(cookie, d.u64()?);
    }
    let n = d.count(CONN as u64)?;
    s.final_series.reserve_exact(n);
    for _ in 0..n {
        s.final_series.push(d.conn(names)?.1);
    }
    let n = d.count(CONN as u64)?;
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let (cookie, c) = d.conn(names)?;
        if conns.last().is_some_and(|(p, _)| *p >= cookie) {
            return Err("connections out of order".to_owned());
        }
        conns.push((cookie, c));
    }
    s.conns = super::Conns::from_sorted(conns);
    if d.left != 0 {
        return Err(format!("{} unexpected bytes after the body", d.left));
    }
    Ok(s)
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
            created_unix: 1_700_000_000,
            closes_without_record: 3,
            malformed_records: 1,
            workload_labels: vec!["workload".into()],
            service_labels: vec!["service".into(), "service_namespace".into()],
            services_text: Some("10.0.0.0/8,5432,pg,db\n".into()),
            ..Default::default()
        };
        let w = s.strings.intern("/app");
        let svc = s.strings.intern("10.0.0.1:5432");
        s.cgroup_names.insert(7, "/app".into());
        s.log_len.insert("access.csv".into(), 123);
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
            },
        );
        s.services.insert((2, svc), GroupTotals::default());
        s.recently_closed.insert(9, 99);
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

    #[test]
    fn round_trips_in_memory_and_through_a_file() {
        let s = sample();
        let bytes = encode(&s);
        assert_eq!(decode(&bytes).unwrap(), s);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.bin");
        std::fs::write(&p, &bytes).unwrap();
        let mut f = std::fs::File::open(&p).unwrap();
        assert_eq!(read(&mut f).unwrap().unwrap(), s);
        assert_eq!(decode(&encode(&State::default())).unwrap().strings.len(), 1);
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
