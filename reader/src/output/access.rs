//! The access-log record and its two encodings, CSV and JSON Lines.
//!
//! Invariant: CSV columns are the struct's fields in declaration order, equal
//! to `CSV_COLUMNS` (a test keeps them in step). CSV follows RFC 4180 quoting
//! (the csv crate's defaults) but ends rows with "\n", not "\r\n"; a field
//! holding a newline is quoted, so one record may span several lines. Each
//! encoding ends every record with '\n', as `AppendLog` expects.

use std::io;

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
pub fn encode_csv(records: &[AccessRecord]) -> Vec<u8> {
    infallible(try_encode_csv(records))
}

/// One compact JSON object per record, each followed by '\n'.
pub fn encode_jsonl(records: &[AccessRecord]) -> Vec<u8> {
    infallible(try_encode_jsonl(records))
}

fn try_encode_csv(records: &[AccessRecord]) -> io::Result<Vec<u8>> {
    let mut writer = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new());
    for record in records {
        writer.serialize(record)?;
    }
    writer.into_inner().map_err(|e| e.into_error())
}

fn try_encode_jsonl(records: &[AccessRecord]) -> io::Result<Vec<u8>> {
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
fn infallible(encoded: io::Result<Vec<u8>>) -> Vec<u8> {
    match encoded {
        Ok(bytes) => bytes,
        Err(e) => unreachable!("encoding a flat AccessRecord failed: {e}"),
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
}
