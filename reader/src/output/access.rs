//! The access-log record and its two encodings, CSV and JSON Lines.
//!
//! Invariant: CSV columns are the struct's fields in declaration order, equal
//! to `CSV_COLUMNS` (a test keeps them in step). CSV follows RFC 4180 quoting
//! (the csv crate's defaults) but ends rows with "\n", not "\r\n"; a field
//! holding a newline is quoted, so one record may span several lines. Each
//! encoding ends every record with '\n', as `AppendLog` expects.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AccessRecord {
    /// RFC 3339 UTC with microseconds, e.g. 2026-11-25T17:41:25.572859Z.
    pub report_time: String,
    /// "periodic" | "close".
    pub event: String,
    /// Kernel socket cookie, unique per boot.
    pub cookie: u64,
    /// Per-connection record sequence number: 1, 2, 3...
    pub seq: u64,
    /// RFC 3339.
    pub start_time: String,
    pub duration_seconds: f64,
    /// "outbound" | "inbound".
    pub direction: String,
    pub local_address: String,
    pub local_port: u16,
    pub remote_address: String,
    pub remote_port: u16,
    /// ss-style state name, e.g. ESTAB, CLOSED.
    pub state: String,
    /// The connect never established.
    pub failed: bool,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub retransmits: u64,
    pub lost_packets: u64,
    pub bytes_sent_delta: u64,
    pub bytes_received_delta: u64,
    pub packets_sent_delta: u64,
    pub packets_received_delta: u64,
    pub retransmits_delta: u64,
    pub lost_packets_delta: u64,
    pub srtt_us: u32,
    pub min_rtt_us: u32,
    pub workload: String,
    pub service: String,
    pub pid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    /// Container id parsed from the cgroup path (docker, containerd, cri-o, podman); empty if none.
    pub container_id: String,
    /// Kubernetes pod uid parsed from the cgroup path; empty if none.
    pub pod_uid: String,
    /// Network namespace cookie of the socket.
    pub netns_cookie: u64,
    /// Namespace of the service-map rule that named `service`; empty if none.
    pub service_namespace: String,
}

impl AccessRecord {
    /// Makes `self` equal to `src`, reusing `self`'s string buffers (the
    /// derived `clone_from` would allocate every string anew).
    pub fn copy_from(&mut self, src: &AccessRecord) {
        // Every field by name, so a field added to the struct does not
        // compile until it is copied here too.
        let AccessRecord {
            report_time,
            event,
            cookie,
            seq,
            start_time,
            duration_seconds,
            direction,
            local_address,
            local_port,
            remote_address,
            remote_port,
            state,
            failed,
            bytes_sent,
            bytes_received,
            packets_sent,
            packets_received,
            retransmits,
            lost_packets,
            bytes_sent_delta,
            bytes_received_delta,
            packets_sent_delta,
            packets_received_delta,
            retransmits_delta,
            lost_packets_delta,
            srtt_us,
            min_rtt_us,
            workload,
            service,
            pid,
            comm,
            cgroup_id,
            container_id,
            pod_uid,
            netns_cookie,
            service_namespace,
        } = self;
        report_time.clone_from(&src.report_time);
        event.clone_from(&src.event);
        *cookie = src.cookie;
        *seq = src.seq;
        start_time.clone_from(&src.start_time);
        *duration_seconds = src.duration_seconds;
        direction.clone_from(&src.direction);
        local_address.clone_from(&src.local_address);
        *local_port = src.local_port;
        remote_address.clone_from(&src.remote_address);
        *remote_port = src.remote_port;
        state.clone_from(&src.state);
        *failed = src.failed;
        *bytes_sent = src.bytes_sent;
        *bytes_received = src.bytes_received;
        *packets_sent = src.packets_sent;
        *packets_received = src.packets_received;
        *retransmits = src.retransmits;
        *lost_packets = src.lost_packets;
        *bytes_sent_delta = src.bytes_sent_delta;
        *bytes_received_delta = src.bytes_received_delta;
        *packets_sent_delta = src.packets_sent_delta;
        *packets_received_delta = src.packets_received_delta;
        *retransmits_delta = src.retransmits_delta;
        *lost_packets_delta = src.lost_packets_delta;
        *srtt_us = src.srtt_us;
        *min_rtt_us = src.min_rtt_us;
        workload.clone_from(&src.workload);
        service.clone_from(&src.service);
        *pid = src.pid;
        comm.clone_from(&src.comm);
        *cgroup_id = src.cgroup_id;
        container_id.clone_from(&src.container_id);
        pod_uid.clone_from(&src.pod_uid);
        *netns_cookie = src.netns_cookie;
        service_namespace.clone_from(&src.service_namespace);
    }
}

/// CSV column names, in order.
pub const CSV_COLUMNS: [&str; 36] = [
    "report_time",
    "event",
    "cookie",
    "seq",
    "start_time",
    "duration_seconds",
    "direction",
    "local_address",
    "local_port",
    "remote_address",
    "remote_port",
    "state",
    "failed",
    "bytes_sent",
    "bytes_received",
    "packets_sent",
    "packets_received",
    "retransmits",
    "lost_packets",
    "bytes_sent_delta",
    "bytes_received_delta",
    "packets_sent_delta",
    "packets_received_delta",
    "retransmits_delta",
    "lost_packets_delta",
    "srtt_us",
    "min_rtt_us",
    "workload",
    "service",
    "pid",
    "comm",
    "cgroup_id",
    "container_id",
    "pod_uid",
    "netns_cookie",
    "service_namespace",
];

/// The CSV header row, ending in "\n".
pub fn csv_header() -> Vec<u8> {
    let mut row = CSV_COLUMNS.join(",").into_bytes();
    row.push(b'\n');
    row
}

/// CSV rows, no header, each ending in "\n".
///
/// Written by hand, byte for byte as the csv crate's default writer (which
/// `encode_csv_reference` uses) writes the serde form of each record.
#[cfg(test)]
pub fn encode_csv(records: &[AccessRecord]) -> Vec<u8> {
    let mut out = Vec::with_capacity(estimate(records, CSV_FIXED));
    for record in records {
        csv_row(&mut out, record);
    }
    out
}

/// One compact JSON object per record, each followed by '\n'.
///
/// Written by hand, byte for byte as serde_json (which
/// `encode_jsonl_reference` uses) writes each record.
#[cfg(test)]
pub fn encode_jsonl(records: &[AccessRecord]) -> Vec<u8> {
    let mut out = Vec::with_capacity(estimate(records, JSONL_FIXED));
    for record in records {
        jsonl_line(&mut out, record);
    }
    out
}

/// Bytes of a record outside its strings, numbers at typical lengths.
#[cfg(test)]
const CSV_FIXED: usize = 170;
#[cfg(test)]
const JSONL_FIXED: usize = 720;

/// Roughly the encoded size of `records`: a fixed part per record plus its
/// strings (escaping may add more; the buffer then grows).
#[cfg(test)]
pub(crate) fn estimate(records: &[AccessRecord], fixed: usize) -> usize {
    records.iter().map(|r| fixed + text_len(r)).sum()
}

/// The length of a record's string fields.
#[cfg(test)]
pub(crate) fn text_len(r: &AccessRecord) -> usize {
    r.report_time.len()
        + r.event.len()
        + r.start_time.len()
        + r.direction.len()
        + r.local_address.len()
        + r.remote_address.len()
        + r.state.len()
        + r.workload.len()
        + r.service.len()
        + r.comm.len()
        + r.container_id.len()
        + r.pod_uid.len()
        + r.service_namespace.len()
}

pub(crate) fn csv_row(out: &mut Vec<u8>, r: &AccessRecord) {
    use super::jsonw::{csv_f64, csv_field, u64 as int};
    // Every field by name, so a field added to the struct does not compile
    // until it is written here too (in CSV_COLUMNS order).
    let AccessRecord {
        report_time,
        event,
        cookie,
        seq,
        start_time,
        duration_seconds,
        direction,
        local_address,
        local_port,
        remote_address,
        remote_port,
        state,
        failed,
        bytes_sent,
        bytes_received,
        packets_sent,
        packets_received,
        retransmits,
        lost_packets,
        bytes_sent_delta,
        bytes_received_delta,
        packets_sent_delta,
        packets_received_delta,
        retransmits_delta,
        lost_packets_delta,
        srtt_us,
        min_rtt_us,
        workload,
        service,
        pid,
        comm,
        cgroup_id,
        container_id,
        pod_uid,
        netns_cookie,
        service_namespace,
    } = r;
    let sep = |out: &mut Vec<u8>| out.push(b',');
    csv_field(out, report_time);
    sep(out);
    csv_field(out, event);
    sep(out);
    int(out, *cookie);
    sep(out);
    int(out, *seq);
    sep(out);
    csv_field(out, start_time);
    sep(out);
    csv_f64(out, *duration_seconds);
    sep(out);
    csv_field(out, direction);
    sep(out);
    csv_field(out, local_address);
    sep(out);
    int(out, (*local_port).into());
    sep(out);
    csv_field(out, remote_address);
    sep(out);
    int(out, (*remote_port).into());
    sep(out);
    csv_field(out, state);
    sep(out);
    out.extend_from_slice(if *failed { b"true," } else { b"false," });
    for v in [
        bytes_sent,
        bytes_received,
        packets_sent,
        packets_received,
        retransmits,
        lost_packets,
        bytes_sent_delta,
        bytes_received_delta,
        packets_sent_delta,
        packets_received_delta,
        retransmits_delta,
        lost_packets_delta,
    ] {
        int(out, *v);
        sep(out);
    }
    int(out, (*srtt_us).into());
    sep(out);
    int(out, (*min_rtt_us).into());
    sep(out);
    csv_field(out, workload);
    sep(out);
    csv_field(out, service);
    sep(out);
    int(out, (*pid).into());
    sep(out);
    csv_field(out, comm);
    sep(out);
    int(out, *cgroup_id);
    sep(out);
    csv_field(out, container_id);
    sep(out);
    csv_field(out, pod_uid);
    sep(out);
    int(out, *netns_cookie);
    sep(out);
    csv_field(out, service_namespace);
    out.push(b'\n');
}

pub(crate) fn jsonl_line(out: &mut Vec<u8>, r: &AccessRecord) {
    use super::jsonw::{f64 as float, str_contents as text, u64 as int};
    // Every field by name, so a field added to the struct does not compile
    // until it is written here too (in declaration order, serde's).
    let AccessRecord {
        report_time,
        event,
        cookie,
        seq,
        start_time,
        duration_seconds,
        direction,
        local_address,
        local_port,
        remote_address,
        remote_port,
        state,
        failed,
        bytes_sent,
        bytes_received,
        packets_sent,
        packets_received,
        retransmits,
        lost_packets,
        bytes_sent_delta,
        bytes_received_delta,
        packets_sent_delta,
        packets_received_delta,
        retransmits_delta,
        lost_packets_delta,
        srtt_us,
        min_rtt_us,
        workload,
        service,
        pid,
        comm,
        cgroup_id,
        container_id,
        pod_uid,
        netns_cookie,
        service_namespace,
    } = r;
    // Each key literal holds the punctuation up to the value: `"` opens a
    // string value, the previous string's closing `"` leads the next key.
    let raw = |out: &mut Vec<u8>, s: &str| out.extend_from_slice(s.as_bytes());
    raw(out, r#"{"report_time":""#);
    text(out, report_time);
    raw(out, r#"","event":""#);
    text(out, event);
    raw(out, r#"","cookie":"#);
    int(out, *cookie);
    raw(out, r#","seq":"#);
    int(out, *seq);
    raw(out, r#","start_time":""#);
    text(out, start_time);
    raw(out, r#"","duration_seconds":"#);
    float(out, *duration_seconds);
    raw(out, r#","direction":""#);
    text(out, direction);
    raw(out, r#"","local_address":""#);
    text(out, local_address);
    raw(out, r#"","local_port":"#);
    int(out, (*local_port).into());
    raw(out, r#","remote_address":""#);
    text(out, remote_address);
    raw(out, r#"","remote_port":"#);
    int(out, (*remote_port).into());
    raw(out, r#","state":""#);
    text(out, state);
    raw(
        out,
        if *failed {
            r#"","failed":true,"bytes_sent":"#
        } else {
            r#"","failed":false,"bytes_sent":"#
        },
    );
    int(out, *bytes_sent);
    raw(out, r#","bytes_received":"#);
    int(out, *bytes_received);
    raw(out, r#","packets_sent":"#);
    int(out, *packets_sent);
    raw(out, r#","packets_received":"#);
    int(out, *packets_received);
    raw(out, r#","retransmits":"#);
    int(out, *retransmits);
    raw(out, r#","lost_packets":"#);
    int(out, *lost_packets);
    raw(out, r#","bytes_sent_delta":"#);
    int(out, *bytes_sent_delta);
    raw(out, r#","bytes_received_delta":"#);
    int(out, *bytes_received_delta);
    raw(out, r#","packets_sent_delta":"#);
    int(out, *packets_sent_delta);
    raw(out, r#","packets_received_delta":"#);
    int(out, *packets_received_delta);
    raw(out, r#","retransmits_delta":"#);
    int(out, *retransmits_delta);
    raw(out, r#","lost_packets_delta":"#);
    int(out, *lost_packets_delta);
    raw(out, r#","srtt_us":"#);
    int(out, (*srtt_us).into());
    raw(out, r#","min_rtt_us":"#);
    int(out, (*min_rtt_us).into());
    raw(out, r#","workload":""#);
    text(out, workload);
    raw(out, r#"","service":""#);
    text(out, service);
    raw(out, r#"","pid":"#);
    int(out, (*pid).into());
    raw(out, r#","comm":""#);
    text(out, comm);
    raw(out, r#"","cgroup_id":"#);
    int(out, *cgroup_id);
    raw(out, r#","container_id":""#);
    text(out, container_id);
    raw(out, r#"","pod_uid":""#);
    text(out, pod_uid);
    raw(out, r#"","netns_cookie":"#);
    int(out, *netns_cookie);
    raw(out, r#","service_namespace":""#);
    text(out, service_namespace);
    raw(out, "\"}\n");
}

/// The serde-driven CSV encoder the hand-written one must equal (tests only).
#[cfg(test)]
pub(crate) fn encode_csv_reference(records: &[AccessRecord]) -> Vec<u8> {
    infallible(try_encode_csv(records))
}

/// The serde-driven JSON Lines encoder the hand-written one must equal.
#[cfg(test)]
pub(crate) fn encode_jsonl_reference(records: &[AccessRecord]) -> Vec<u8> {
    infallible(try_encode_jsonl(records))
}

#[cfg(test)]
fn try_encode_csv(records: &[AccessRecord]) -> std::io::Result<Vec<u8>> {
    let mut writer = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new());
    for record in records {
        writer.serialize(record)?;
    }
    writer.into_inner().map_err(|e| e.into_error())
}

#[cfg(test)]
fn try_encode_jsonl(records: &[AccessRecord]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    for record in records {
        serde_json::to_writer(&mut out, record)?;
        out.push(b'\n');
    }
    Ok(out)
}

/// Both encoders write a flat struct of strings, integers, bools and one
/// f64 into a Vec: serde_json and csv have no error for any of these values
/// (serde_json writes a non-finite f64 as null), and writing to a Vec cannot
/// fail. An error here is a bug in this module, not a runtime condition.
#[cfg(test)]
fn infallible(encoded: std::io::Result<Vec<u8>>) -> Vec<u8> {
    match encoded {
        Ok(bytes) => bytes,
        Err(e) => unreachable!("encoding a flat AccessRecord failed: {e}"),
    }
}

/// Records for the property tests and benchmarks of the encoders.
#[cfg(test)]
pub(crate) mod testdata {
    use super::AccessRecord;
    use longconn_common::testgen::Gen;

    /// Text with quotes, commas, newlines, controls, non-ASCII, or empty.
    fn text(g: &mut Gen) -> String {
        const SEEDS: &[&str] = &[
            "2026-11-25T17:41:25.572859Z",
            "2026-11-25T18:41:25.5+01:00",
            "periodic",
            "close",
            "10.0.0.1",
            "2001:db8::1",
            "::ffff:10.0.0.1",
            "ESTAB",
            "a,b \"q\"\nline2",
            "x\r\ny\t\u{8}\u{c}\u{1}\u{1f}\u{7f}\\",
            "é€😀",
            "",
            "system.slice/db.service",
        ];
        match g.below(10) {
            0 => String::new(),
            1 => SEEDS[g.below(SEEDS.len())].to_owned(),
            _ => g.text(SEEDS),
        }
    }

    fn uint(g: &mut Gen) -> u64 {
        match g.below(8) {
            0 => 0,
            1 => u64::MAX,
            2 => i64::MAX as u64,
            3 => i64::MAX as u64 + 1,
            4 | 5 => g.next() >> g.below(64),
            _ => g.next(),
        }
    }

    fn float(g: &mut Gen) -> f64 {
        const EDGES: &[f64] = &[
            0.0,
            -0.0,
            1.5,
            2.0,
            8.0,
            1e-7,
            1e21,
            1e16,
            1e17,
            0.05,
            0.25,
            0.15,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MAX,
            5e-324,
            6085.572858,
        ];
        match g.below(4) {
            0 => EDGES[g.below(EDGES.len())],
            1 => f64::from_bits(g.next()),
            2 => (g.next() >> g.below(64)) as f64 / 1e9,
            _ => (g.next() % 100_000) as f64 / 1000.0,
        }
    }

    /// A record with every kind of awkward value.
    pub fn generated(g: &mut Gen) -> AccessRecord {
        AccessRecord {
            report_time: text(g),
            event: text(g),
            cookie: uint(g),
            seq: uint(g),
            start_time: text(g),
            duration_seconds: float(g),
            direction: text(g),
            local_address: text(g),
            local_port: uint(g) as u16,
            remote_address: text(g),
            remote_port: uint(g) as u16,
            state: text(g),
            failed: g.below(2) == 0,
            bytes_sent: uint(g),
            bytes_received: uint(g),
            packets_sent: uint(g),
            packets_received: uint(g),
            retransmits: uint(g),
            lost_packets: uint(g),
            bytes_sent_delta: uint(g),
            bytes_received_delta: uint(g),
            packets_sent_delta: uint(g),
            packets_received_delta: uint(g),
            retransmits_delta: uint(g),
            lost_packets_delta: uint(g),
            srtt_us: uint(g) as u32,
            min_rtt_us: uint(g) as u32,
            workload: text(g),
            service: text(g),
            pid: uint(g) as u32,
            comm: text(g),
            cgroup_id: uint(g),
            container_id: text(g),
            pod_uid: text(g),
            netns_cookie: uint(g),
            service_namespace: text(g),
        }
    }

    /// A record like one of a real cycle: the cycle's report time, plain
    /// names, IPv4 and IPv6 peers, counters of every size.
    pub fn realistic(i: u64) -> AccessRecord {
        let v6 = i.is_multiple_of(4);
        let address = |n: u64| {
            if v6 {
                format!("2001:db8:{:x}::{:x}", n % 7, n % 65_536)
            } else {
                format!("10.{}.{}.{}", n % 7, (n / 256) % 256, n % 256)
            }
        };
        let bytes = i.wrapping_mul(2_654_435_761) % 50_000_000_000;
        AccessRecord {
            report_time: "2026-11-25T17:41:25.572859Z".into(),
            event: if i.is_multiple_of(10) {
                "close"
            } else {
                "periodic"
            }
            .into(),
            cookie: 0x1_0000_0000 + i * 7919,
            seq: i % 700 + 1,
            start_time: format!(
                "2026-11-25T{:02}:{:02}:{:02}.{:06}Z",
                (i / 3600) % 17,
                (i / 60) % 60,
                i % 60,
                (i * 7919) % 1_000_000
            ),
            duration_seconds: (i.wrapping_mul(1_234_567_891) % 86_400_000_000_000) as f64 / 1e9,
            direction: if i.is_multiple_of(3) {
                "inbound"
            } else {
                "outbound"
            }
            .into(),
            local_address: address(i),
            local_port: (32_768 + i % 28_000) as u16,
            remote_address: address(i / 3 + 11),
            remote_port: [443, 5432, 6379, 8080][(i % 4) as usize],
            state: "ESTAB".into(),
            failed: false,
            bytes_sent: bytes,
            bytes_received: bytes / 3,
            packets_sent: bytes / 1400,
            packets_received: bytes / 4200,
            retransmits: i % 17,
            lost_packets: i % 5,
            bytes_sent_delta: bytes % 1_000_000,
            bytes_received_delta: bytes % 300_000,
            packets_sent_delta: bytes % 1000,
            packets_received_delta: bytes % 300,
            retransmits_delta: i % 2,
            lost_packets_delta: 0,
            srtt_us: (85 + i % 20_000) as u32,
            min_rtt_us: (12 + i % 100) as u32,
            workload: format!("system.slice/app{}.service", i % 40),
            service: if i.is_multiple_of(2) { "postgres" } else { "" }.into(),
            pid: (1000 + i % 30_000) as u32,
            comm: ["nginx", "postgres", "java", "curl"][(i % 4) as usize].into(),
            cgroup_id: 10_000 + i % 40,
            container_id: if i.is_multiple_of(2) {
                format!("{:064x}", i % 40 * 0x9e37_79b9_7f4a_7c15)
            } else {
                String::new()
            },
            pod_uid: if i.is_multiple_of(2) {
                format!("5f3c0d2e-1b2a-4c3d-9e8f-{:012x}", i % 40)
            } else {
                String::new()
            },
            netns_cookie: 4096 + i % 3,
            service_namespace: if i.is_multiple_of(2) { "db" } else { "" }.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(comm: &str, seq: u64) -> AccessRecord {
        AccessRecord {
            report_time: "2026-11-25T17:41:25.572859Z".into(),
            event: "periodic".into(),
            cookie: 0x1_0000_0001,
            seq,
            start_time: "2026-11-25T16:00:00.000001Z".into(),
            duration_seconds: 6085.572858,
            direction: "outbound".into(),
            local_address: "2001:db8::1".into(),
            local_port: 43210,
            remote_address: "10.0.0.2".into(),
            remote_port: 443,
            state: "ESTAB".into(),
            failed: false,
            bytes_sent: u64::MAX,
            bytes_received: 2,
            packets_sent: 3,
            packets_received: 4,
            retransmits: 5,
            lost_packets: 6,
            bytes_sent_delta: 7,
            bytes_received_delta: 8,
            packets_sent_delta: 9,
            packets_received_delta: 10,
            retransmits_delta: 11,
            lost_packets_delta: 12,
            srtt_us: 250,
            min_rtt_us: u32::MAX,
            workload: "default/web".into(),
            service: "".into(),
            pid: 4242,
            comm: comm.into(),
            cgroup_id: 77,
            container_id: "c0ffee".into(),
            pod_uid: "".into(),
            netns_cookie: 3,
            service_namespace: "db".into(),
        }
    }

    const NASTY: &str = "a,b \"q\"\nline2";

    #[test]
    fn header_is_field_names() {
        let want = "report_time,event,cookie,seq,start_time,duration_seconds,direction,\
local_address,local_port,remote_address,remote_port,state,failed,bytes_sent,bytes_received,\
packets_sent,packets_received,retransmits,lost_packets,bytes_sent_delta,bytes_received_delta,\
packets_sent_delta,packets_received_delta,retransmits_delta,lost_packets_delta,srtt_us,\
min_rtt_us,workload,service,pid,comm,cgroup_id,container_id,pod_uid,netns_cookie,service_namespace\n";
        assert_eq!(String::from_utf8(csv_header()).unwrap(), want);

        // The header serde would write for the struct is the same.
        let mut w = csv::Writer::from_writer(Vec::new());
        w.serialize(AccessRecord::default()).unwrap();
        let text = String::from_utf8(w.into_inner().unwrap()).unwrap();
        assert_eq!(
            text.lines().next().map(|l| format!("{l}\n")).as_deref(),
            Some(want)
        );
    }

    #[test]
    fn csv_row_exact() {
        let rows = encode_csv(&[record(NASTY, 1)]);
        let want = "2026-11-25T17:41:25.572859Z,periodic,4294967297,1,2026-11-25T16:00:00.000001Z,\
6085.572858,outbound,2001:db8::1,43210,10.0.0.2,443,ESTAB,false,18446744073709551615,2,3,4,5,6,\
7,8,9,10,11,12,250,4294967295,default/web,,4242,\"a,b \"\"q\"\"\nline2\",77,c0ffee,,3,db\n";
        assert_eq!(String::from_utf8(rows).unwrap(), want);
    }

    #[test]
    fn csv_round_trips_with_header() {
        let records = vec![record(NASTY, 1), record("plain", 2), record("", 3)];
        let mut bytes = csv_header();
        bytes.extend(encode_csv(&records));
        let back: Vec<AccessRecord> = csv::Reader::from_reader(bytes.as_slice())
            .deserialize()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back, records);
        assert_eq!(encode_csv(&[]), b"");
    }

    #[test]
    fn jsonl_lines_parse_back() {
        let records = vec![record(NASTY, 1), record("plain", 2)];
        let bytes = encode_jsonl(&records);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.ends_with('\n'));
        let back: Vec<AccessRecord> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(back, records);
        let first = text.lines().next().unwrap();
        assert!(first.starts_with(r#"{"report_time":"2026-11-25T17:41:25.572859Z","event":"periodic","cookie":4294967297,"#), "{first}");
        assert!(
            first.ends_with(r#""cgroup_id":77,"container_id":"c0ffee","pod_uid":"","netns_cookie":3,"service_namespace":"db"}"#),
            "{first}"
        );
        assert_eq!(encode_jsonl(&[]), b"");
    }

    /// The hand-written encoders equal the serde ones byte for byte, for
    /// records with every awkward value, one at a time and in batches.
    #[test]
    fn encoders_equal_the_serde_reference() {
        let mut g = longconn_common::testgen::Gen::new(23);
        let mut records = vec![record(NASTY, 1), record("", 2), AccessRecord::default()];
        records.extend((0..100_000).map(|_| testdata::generated(&mut g)));
        records.extend((0..1000).map(testdata::realistic));
        for r in &records {
            let one = std::slice::from_ref(r);
            assert_eq!(
                String::from_utf8_lossy(&encode_csv(one)),
                String::from_utf8_lossy(&encode_csv_reference(one)),
                "{r:?}"
            );
            assert_eq!(
                String::from_utf8_lossy(&encode_jsonl(one)),
                String::from_utf8_lossy(&encode_jsonl_reference(one)),
                "{r:?}"
            );
        }
        for batch in records.chunks(997) {
            assert_eq!(encode_csv(batch), encode_csv_reference(batch));
            assert_eq!(encode_jsonl(batch), encode_jsonl_reference(batch));
        }
    }

    #[test]
    fn copy_from_equals_clone() {
        let mut g = longconn_common::testgen::Gen::new(31);
        let mut dst = AccessRecord::default();
        for _ in 0..10_000 {
            let src = testdata::generated(&mut g);
            dst.copy_from(&src);
            // Compared encoded: a NaN duration is not equal to itself.
            assert_eq!(
                encode_jsonl(std::slice::from_ref(&dst)),
                encode_jsonl(std::slice::from_ref(&src))
            );
        }
    }

    /// The size estimate of realistic records is near the encoded size, so
    /// the buffer is allocated once and not much too large.
    #[test]
    fn size_estimate_is_close() {
        let records: Vec<AccessRecord> = (0..1000).map(testdata::realistic).collect();
        for (fixed, len) in [
            (CSV_FIXED, encode_csv(&records).len()),
            (JSONL_FIXED, encode_jsonl(&records).len()),
        ] {
            let estimate = estimate(&records, fixed);
            assert!(
                estimate >= len && estimate < len + len / 5,
                "{estimate} for {len}"
            );
        }
    }
}
