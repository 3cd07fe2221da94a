//! The access log's two encodings of an `AccessEvent`: CSV and JSON Lines,
//! both `Visit` printers of its one field list.
//!
//! Invariants: CSV has one column per field, in `visit` order, under a
//! header of their names; it follows RFC 4180 quoting (the csv crate's
//! defaults) but ends rows with "\n", not "\r\n", and a field holding a
//! newline is quoted, so one record may span several lines. JSON Lines has
//! one compact object per record with the same names, leaving out the
//! `optional` fields that are empty or zero. Each encoding ends every record
//! with '\n', as `AppendLog` expects.

use super::{
    event::{all_fields, AccessEvent, Field, Value, Visit},
    jsonw, text,
};

/// The CSV header row, ending in "\n".
pub fn csv_header() -> Vec<u8> {
    let names: Vec<&str> = all_fields().iter().map(|f| f.name).collect();
    let mut row = names.join(",").into_bytes();
    row.push(b'\n');
    row
}

/// A value as CSV and JSON share it; `Text` is left to the caller (quoting
/// differs).
pub(crate) fn plain(out: &mut Vec<u8>, v: Value<'_>, float: fn(&mut Vec<u8>, f64)) {
    match v {
        Value::Text(s) | Value::Symbol(s) => out.extend_from_slice(s.as_bytes()),
        Value::Uint(n) => jsonw::u64(out, n),
        Value::Seconds(ns) => float(out, ns as f64 / 1e9),
        Value::Time(t) => text::rfc3339_micros(out, t),
        Value::Addr(ip) => text::ip(out, ip),
        Value::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
    }
}

struct CsvRow<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
}

impl Visit for CsvRow<'_> {
    fn field(&mut self, f: &'static Field, v: Value<'_>) {
        if !f.log {
            return;
        }
        if !std::mem::take(&mut self.first) {
            self.out.push(b',');
        }
        match v {
            Value::Text(s) => jsonw::csv_field(self.out, s),
            // Symbols, numbers, times and addresses hold no `,` `"` or newline.
            v => plain(self.out, v, jsonw::csv_f64),
        }
    }
}

/// One CSV row, ending in "\n".
pub fn csv_row(out: &mut Vec<u8>, ev: &AccessEvent<'_>) {
    ev.visit(&mut CsvRow { out, first: true });
    out.push(b'\n');
}

/// Which key, if any, a JSON printer gives a field.
pub(crate) type KeyOf = fn(&'static Field, &Value<'_>) -> Option<&'static str>;

struct JsonObject<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
    key: KeyOf,
}

impl Visit for JsonObject<'_> {
    fn field(&mut self, f: &'static Field, v: Value<'_>) {
        let Some(key) = (self.key)(f, &v) else {
            return;
        };
        self.out
            .extend_from_slice(if std::mem::take(&mut self.first) {
                b"{\""
            } else {
                b",\""
            });
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
        match v {
            Value::Uint(_) | Value::Seconds(_) | Value::Bool(_) => plain(self.out, v, jsonw::f64),
            Value::Text(s) => {
                self.out.push(b'"');
                jsonw::str_contents(self.out, s);
                self.out.push(b'"');
            }
            v => {
                self.out.push(b'"');
                plain(self.out, v, jsonw::f64);
                self.out.push(b'"');
            }
        }
    }
}

/// One compact JSON object of the fields `key` names, in `visit` order.
pub(crate) fn json_object(out: &mut Vec<u8>, ev: &AccessEvent<'_>, key: KeyOf) {
    ev.visit(&mut JsonObject {
        out: &mut *out,
        first: true,
        key,
    });
    out.push(b'}');
}

/// One compact JSON object, followed by '\n': the access-log fields under
/// their names, optional ones only when they say something.
pub fn jsonl_line(out: &mut Vec<u8>, ev: &AccessEvent<'_>) {
    json_object(out, ev, |f, v| {
        (f.log && !(f.optional && v.is_empty())).then_some(f.name)
    });
    out.push(b'\n');
}

/// The access record as serde sees it: the oracle the encoders above are
/// checked against (the csv crate and serde_json), with every field listed
/// again by hand, apart from `AccessEvent::visit`.
#[cfg(test)]
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AccessRecord {
    pub report_time: String,
    pub event: String,
    pub cookie: u64,
    pub seq: u64,
    pub start_time: String,
    pub duration_seconds: f64,
    pub direction: String,
    pub local_address: String,
    pub local_port: u16,
    pub remote_address: String,
    pub remote_port: u16,
    pub state: String,
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
    pub container_id: String,
    pub pod_uid: String,
    pub netns_cookie: u64,
    pub service_namespace: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

#[cfg(test)]
impl AccessRecord {
    /// The event with times and addresses as chrono and std write them.
    pub fn from_event(e: &AccessEvent<'_>) -> Self {
        let time = |t: i64| {
            chrono::DateTime::from_timestamp_nanos(t)
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        };
        Self {
            report_time: time(e.report_unix_ns),
            event: e.kind.name().into(),
            cookie: e.cookie,
            seq: e.seq,
            start_time: time(e.start_unix_ns),
            duration_seconds: e.duration_ns as f64 / 1e9,
            direction: e.direction.into(),
            local_address: e.local.to_string(),
            local_port: e.local_port,
            remote_address: e.remote.to_string(),
            remote_port: e.remote_port,
            state: e.state.into(),
            failed: e.failed,
            bytes_sent: e.total.bytes_sent,
            bytes_received: e.total.bytes_received,
            packets_sent: e.total.packets_sent,
            packets_received: e.total.packets_received,
            retransmits: e.total.retransmits,
            lost_packets: e.total.lost_packets,
            bytes_sent_delta: e.delta.bytes_sent,
            bytes_received_delta: e.delta.bytes_received,
            packets_sent_delta: e.delta.packets_sent,
            packets_received_delta: e.delta.packets_received,
            retransmits_delta: e.delta.retransmits,
            lost_packets_delta: e.delta.lost_packets,
            srtt_us: e.srtt_us,
            min_rtt_us: e.min_rtt_us,
            workload: e.workload.into(),
            service: e.service.into(),
            pid: e.pid,
            comm: e.comm.into(),
            cgroup_id: e.cgroup_id,
            container_id: e.container_id.into(),
            pod_uid: e.pod_uid.into(),
            netns_cookie: e.netns_cookie,
            service_namespace: e.service_namespace.into(),
            namespace: e.namespace.into(),
            pod: e.pod.into(),
            container: e.container.into(),
        }
    }
}

/// CSV rows, no header (tests and benchmarks).
#[cfg(test)]
pub fn encode_csv(events: &[AccessEvent<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        csv_row(&mut out, e);
    }
    out
}

/// JSON Lines (tests and benchmarks).
#[cfg(test)]
pub fn encode_jsonl(events: &[AccessEvent<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        jsonl_line(&mut out, e);
    }
    out
}

/// The csv crate's rows for the records (the CSV oracle).
#[cfg(test)]
pub(crate) fn encode_csv_reference(records: &[AccessRecord]) -> Vec<u8> {
    let mut writer = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new());
    for record in records {
        if let Err(e) = writer.serialize(record) {
            unreachable!("csv cannot fail on a flat record: {e}");
        }
    }
    match writer.into_inner() {
        Ok(v) => v,
        Err(e) => unreachable!("writing to a Vec cannot fail: {e}"),
    }
}

/// serde_json's object for a record, without the optional fields that are
/// empty or zero (the JSON Lines oracle, compared as values).
#[cfg(test)]
pub(crate) fn jsonl_reference(r: &AccessRecord) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        for f in all_fields().iter().filter(|f| f.optional) {
            let empty = match m.get(f.name) {
                Some(serde_json::Value::String(s)) => s.is_empty(),
                Some(serde_json::Value::Number(n)) => n.as_u64() == Some(0),
                Some(serde_json::Value::Bool(b)) => !b,
                _ => false,
            };
            if empty {
                m.remove(f.name);
            }
        }
    }
    v
}

/// Events for the property tests and benchmarks of the encoders: owned
/// names and typed values, borrowed as an `AccessEvent`.
#[cfg(test)]
pub(crate) mod testdata {
    use std::net::IpAddr;

    use super::AccessEvent;
    use crate::collect::Counters;
    use crate::output::event::EventKind;
    use longconn_testgen::Gen;

    #[derive(Clone, Debug, Default)]
    pub struct OwnedEvent {
        pub report_unix_ns: i64,
        pub kind: EventKind,
        pub cookie: u64,
        pub seq: u64,
        pub start_unix_ns: i64,
        pub duration_ns: u64,
        pub direction: &'static str,
        pub local: Option<IpAddr>,
        pub local_port: u16,
        pub remote: Option<IpAddr>,
        pub remote_port: u16,
        pub state: &'static str,
        pub failed: bool,
        pub total: Counters,
        pub delta: Counters,
        pub srtt_us: u32,
        pub min_rtt_us: u32,
        /// workload, service, comm, container id, pod uid, service
        /// namespace, namespace, pod, container.
        pub names: [String; 9],
        pub pid: u32,
        pub cgroup_id: u64,
        pub netns_cookie: u64,
    }

    impl OwnedEvent {
        pub fn event(&self) -> AccessEvent<'_> {
            let [workload, service, comm, container_id, pod_uid, service_namespace, namespace, pod, container] =
                &self.names;
            let any = IpAddr::from([0u8, 0, 0, 0]);
            AccessEvent {
                report_unix_ns: self.report_unix_ns,
                kind: self.kind,
                cookie: self.cookie,
                seq: self.seq,
                start_unix_ns: self.start_unix_ns,
                duration_ns: self.duration_ns,
                direction: self.direction,
                local: self.local.unwrap_or(any),
                local_port: self.local_port,
                remote: self.remote.unwrap_or(any),
                remote_port: self.remote_port,
                state: self.state,
                failed: self.failed,
                total: self.total,
                delta: self.delta,
                srtt_us: self.srtt_us,
                min_rtt_us: self.min_rtt_us,
                workload,
                service,
                pid: self.pid,
                comm,
                cgroup_id: self.cgroup_id,
                container_id,
                pod_uid,
                netns_cookie: self.netns_cookie,
                service_namespace,
                namespace,
                pod,
                container,
                bytes_retrans: 0,
                update_age_ns: 0,
            }
        }
    }

    /// Text with quotes, commas, newlines, controls, non-ASCII, or empty.
    pub fn text(g: &mut Gen) -> String {
        const SEEDS: &[&str] = &[
            "periodic",
            "10.0.0.1",
            "2001:db8::1",
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
            4 | 5 => g.u64() >> g.below(64),
            _ => g.u64(),
        }
    }

    fn counters(g: &mut Gen) -> Counters {
        Counters {
            bytes_sent: uint(g),
            bytes_received: uint(g),
            packets_sent: uint(g),
            packets_received: uint(g),
            retransmits: uint(g),
            lost_packets: uint(g),
        }
    }

    fn ip(g: &mut Gen) -> IpAddr {
        let n = g.u64();
        match g.below(4) {
            0 => IpAddr::from([0x2001, 0xdb8, 0, n as u16, 0, 0, (n >> 16) as u16, 1]),
            1 => IpAddr::from([0, 0, 0, 0, 0, 0xffff, (n >> 16) as u16, n as u16]),
            _ => IpAddr::from((n as u32).to_be_bytes()),
        }
    }

    /// An event with every kind of awkward value (times from 1970 to 2262).
    pub fn generated(g: &mut Gen) -> OwnedEvent {
        const TIME_SPAN: u64 = i64::MAX as u64; // to 2262, in ns
        let mut e = OwnedEvent {
            // Microseconds, as the text times carry them.
            report_unix_ns: (g.u64() % TIME_SPAN / 1000 * 1000) as i64,
            kind: if g.below(2) == 0 {
                EventKind::Close
            } else {
                EventKind::Periodic
            },
            cookie: uint(g),
            seq: uint(g),
            start_unix_ns: (g.u64() % TIME_SPAN) as i64,
            duration_ns: uint(g),
            direction: ["outbound", "inbound"][g.below(2)],
            local: Some(ip(g)),
            local_port: uint(g) as u16,
            remote: Some(ip(g)),
            remote_port: uint(g) as u16,
            state: ["ESTAB", "CLOSED", "SYN-SENT", "FIN-WAIT-1"][g.below(4)],
            failed: g.below(2) == 0,
            total: counters(g),
            delta: counters(g),
            srtt_us: uint(g) as u32,
            min_rtt_us: uint(g) as u32,
            pid: uint(g) as u32,
            cgroup_id: uint(g),
            netns_cookie: uint(g),
            ..Default::default()
        };
        for n in &mut e.names {
            *n = text(g);
        }
        e
    }

    /// An event like one of a real cycle: the cycle's report time, plain
    /// names, IPv4 and IPv6 peers, counters of every size.
    pub fn realistic(i: u64) -> OwnedEvent {
        let v6 = i.is_multiple_of(4);
        let address = |n: u64| {
            if v6 {
                IpAddr::from([0x2001, 0xdb8, (n % 7) as u16, 0, 0, 0, 0, n as u16])
            } else {
                IpAddr::from([10, (n % 7) as u8, (n / 256) as u8, n as u8])
            }
        };
        let bytes = i.wrapping_mul(2_654_435_761) % 50_000_000_000;
        let even = i.is_multiple_of(2);
        OwnedEvent {
            report_unix_ns: 1_795_628_485_572_859_000,
            kind: if i.is_multiple_of(10) {
                EventKind::Close
            } else {
                EventKind::Periodic
            },
            cookie: 0x1_0000_0000 + i * 7919,
            seq: i % 700 + 1,
            start_unix_ns: 1_795_600_000_000_000_000
                + (i * 7_919_000_123 % 86_400_000_000_000) as i64,
            duration_ns: i.wrapping_mul(1_234_567_891) % 86_400_000_000_000,
            direction: if i.is_multiple_of(3) {
                "inbound"
            } else {
                "outbound"
            },
            local: Some(address(i)),
            local_port: (32_768 + i % 28_000) as u16,
            remote: Some(address(i / 3 + 11)),
            remote_port: [443, 5432, 6379, 8080][(i % 4) as usize],
            state: "ESTAB",
            failed: false,
            total: Counters {
                bytes_sent: bytes,
                bytes_received: bytes / 3,
                packets_sent: bytes / 1400,
                packets_received: bytes / 4200,
                retransmits: i % 17,
                lost_packets: i % 5,
            },
            delta: Counters {
                bytes_sent: bytes % 1_000_000,
                bytes_received: bytes % 300_000,
                packets_sent: bytes % 1000,
                packets_received: bytes % 300,
                retransmits: i % 2,
                lost_packets: 0,
            },
            srtt_us: (85 + i % 20_000) as u32,
            min_rtt_us: (12 + i % 100) as u32,
            names: [
                format!("system.slice/app{}.service", i % 40),
                if even { "postgres" } else { "" }.into(),
                ["nginx", "postgres", "java", "curl"][(i % 4) as usize].into(),
                if even {
                    format!("{:064x}", i % 40 * 0x9e37_79b9_7f4a_7c15)
                } else {
                    String::new()
                },
                if even {
                    format!("5f3c0d2e-1b2a-4c3d-9e8f-{:012x}", i % 40)
                } else {
                    String::new()
                },
                if even { "db" } else { "" }.into(),
                if even { "shop" } else { "" }.into(),
                if even {
                    format!("web-{}", i % 40)
                } else {
                    String::new()
                },
                if even { "app" } else { "" }.into(),
            ],
            pid: (1000 + i % 30_000) as u32,
            cgroup_id: 10_000 + i % 40,
            netns_cookie: 4096 + i % 3,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testdata::{generated, realistic, OwnedEvent};
    use super::*;
    use crate::collect::Counters;
    use crate::output::event::EventKind;

    const NASTY: &str = "a,b \"q\"\nline2";

    /// A fixed event: an IPv6 local end, u64::MAX counters, a comm that
    /// needs quoting.
    fn fixed(comm: &str, seq: u64) -> OwnedEvent {
        OwnedEvent {
            report_unix_ns: 1_795_628_485_572_859_000,
            kind: EventKind::Periodic,
            cookie: 0x1_0000_0001,
            seq,
            start_unix_ns: 1_795_622_400_000_001_000,
            duration_ns: 6_085_572_858_000,
            direction: "outbound",
            local: Some("2001:db8::1".parse().unwrap()),
            local_port: 43210,
            remote: Some("10.0.0.2".parse().unwrap()),
            remote_port: 443,
            state: "ESTAB",
            failed: false,
            total: Counters {
                bytes_sent: u64::MAX,
                bytes_received: 2,
                packets_sent: 3,
                packets_received: 4,
                retransmits: 5,
                lost_packets: 6,
            },
            delta: Counters {
                bytes_sent: 7,
                bytes_received: 8,
                packets_sent: 9,
                packets_received: 10,
                retransmits: 11,
                lost_packets: 0,
            },
            srtt_us: 250,
            min_rtt_us: u32::MAX,
            names: [
                "default/web".into(),
                "".into(),
                comm.into(),
                "c0ffee".into(),
                "".into(),
                "db".into(),
                "default".into(),
                "web".into(),
                "nginx".into(),
            ],
            pid: 4242,
            cgroup_id: 77,
            netns_cookie: 3,
        }
    }

    #[test]
    fn header_is_field_names() {
        let want = "report_time,event,cookie,seq,start_time,duration_seconds,direction,\
local_address,local_port,remote_address,remote_port,state,failed,bytes_sent,bytes_received,\
packets_sent,packets_received,retransmits,lost_packets,bytes_sent_delta,bytes_received_delta,\
packets_sent_delta,packets_received_delta,retransmits_delta,lost_packets_delta,srtt_us,\
min_rtt_us,workload,service,pid,comm,cgroup_id,container_id,pod_uid,netns_cookie,service_namespace,namespace,pod,container\n";
        assert_eq!(String::from_utf8(csv_header()).unwrap(), want);

        // The header serde would write for the oracle struct is the same.
        let mut w = csv::Writer::from_writer(Vec::new());
        w.serialize(AccessRecord::default()).unwrap();
        let text = String::from_utf8(w.into_inner().unwrap()).unwrap();
        assert_eq!(
            text.lines().next().map(|l| format!("{l}\n")).as_deref(),
            Some(want)
        );
    }

    /// Golden bytes: one CSV row and one JSON line of a fixed event.
    #[test]
    fn golden_csv_row_and_json_line() {
        let e = fixed(NASTY, 1);
        let row = encode_csv(&[e.event()]);
        let want = "2026-11-25T17:41:25.572859Z,periodic,4294967297,1,2026-11-25T16:00:00.000001Z,\
6085.572858,outbound,2001:db8::1,43210,10.0.0.2,443,ESTAB,false,18446744073709551615,2,3,4,5,6,\
7,8,9,10,11,0,250,4294967295,default/web,,4242,\"a,b \"\"q\"\"\nline2\",77,c0ffee,,3,db,default,web,nginx\n";
        assert_eq!(String::from_utf8(row).unwrap(), want);
        let line = encode_jsonl(&[e.event()]);
        let want = r#"{"report_time":"2026-11-25T17:41:25.572859Z","event":"periodic","cookie":4294967297,"seq":1,"start_time":"2026-11-25T16:00:00.000001Z","duration_seconds":6085.572858,"direction":"outbound","local_address":"2001:db8::1","local_port":43210,"remote_address":"10.0.0.2","remote_port":443,"state":"ESTAB","bytes_sent":18446744073709551615,"bytes_received":2,"packets_sent":3,"packets_received":4,"retransmits":5,"lost_packets":6,"bytes_sent_delta":7,"bytes_received_delta":8,"packets_sent_delta":9,"packets_received_delta":10,"retransmits_delta":11,"srtt_us":250,"min_rtt_us":4294967295,"workload":"default/web","service":"","pid":4242,"comm":"a,b \"q\"\nline2","cgroup_id":77,"container_id":"c0ffee","netns_cookie":3,"service_namespace":"db","namespace":"default","pod":"web","container":"nginx"}"#;
        assert_eq!(String::from_utf8(line).unwrap(), format!("{want}\n"));
    }

    #[test]
    fn csv_round_trips_with_header() {
        let events = [fixed(NASTY, 1), fixed("plain", 2), fixed("", 3)];
        let mut bytes = csv_header();
        bytes.extend(encode_csv(
            &events.iter().map(|e| e.event()).collect::<Vec<_>>(),
        ));
        let back: Vec<AccessRecord> = csv::Reader::from_reader(bytes.as_slice())
            .deserialize()
            .collect::<Result<_, _>>()
            .unwrap();
        let want: Vec<AccessRecord> = events
            .iter()
            .map(|e| AccessRecord::from_event(&e.event()))
            .collect();
        assert_eq!(back, want);
        assert_eq!(encode_csv(&[]), b"");
    }

    /// The encoders equal the oracles (the csv crate byte for byte,
    /// serde_json value for value) for events with every awkward value.
    #[test]
    fn encoders_equal_the_serde_reference() {
        let mut g = longconn_testgen::Gen::new(23);
        let mut events = vec![fixed(NASTY, 1), fixed("", 2), OwnedEvent::default()];
        events.extend((0..100_000).map(|_| generated(&mut g)));
        events.extend((0..1000).map(realistic));
        for e in &events {
            let ev = e.event();
            let r = AccessRecord::from_event(&ev);
            assert_eq!(
                String::from_utf8_lossy(&encode_csv(&[ev])),
                String::from_utf8_lossy(&encode_csv_reference(std::slice::from_ref(&r))),
                "{e:?}"
            );
            let line = encode_jsonl(&[ev]);
            assert_eq!(line.last(), Some(&b'\n'));
            // Both through serde_json's parser (its float parsing is not
            // exact without `float_roundtrip`: equal texts parse equal).
            let got: serde_json::Value = serde_json::from_slice(&line).unwrap();
            let want: serde_json::Value =
                serde_json::from_str(&jsonl_reference(&r).to_string()).unwrap();
            assert_eq!(got, want, "{e:?}");
        }
    }
}
