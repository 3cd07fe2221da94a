//! Migration of the previous state format: `state.json`, JSON, version 2.
//!
//! A v2 state is read once, when no binary state exists yet, and converted
//! with every total and position it holds, so an upgrade is not a counter
//! reset (its file lengths, by name only, are not enough to cut a file:
//! see `output::applog`); the caller removes `state.json` once the
//! binary state is saved. A v2 file that does not parse or convert is set
//! aside like any bad state.

use std::{collections::BTreeMap, io::Read};

use serde::Deserialize;

use super::{addr_bytes, ConnState, Counters, GroupKey, GroupTotals, IdSyms, State, Strings};
use crate::identity::Identity;

pub const FILE_NAME: &str = "state.json";
const VERSION: u32 = 2;

#[derive(Deserialize)]
struct V2Conn {
    seq: u64,
    last: Counters,
    reported: Counters,
    start_ns: u64,
    start_unix_ns: i64,
    update_ns: u64,
    direction: u32,
    local: String,
    local_port: u16,
    remote: String,
    remote_port: u16,
    state: u32,
    flags: u32,
    srtt_us: u32,
    min_rtt_us: u32,
    cgroup_id: u64,
    id: Identity,
    wkey: String,
    skey: String,
}

#[derive(Deserialize)]
struct V2 {
    version: u32,
    boot_id: String,
    pin_generation: u64,
    ring_applied: u64,
    conns: BTreeMap<u64, V2Conn>,
    recently_closed: BTreeMap<u64, u64>,
    workloads: BTreeMap<String, GroupTotals>,
    services: BTreeMap<String, GroupTotals>,
    workload_labels: Vec<String>,
    service_labels: Vec<String>,
    services_text: Option<String>,
    cgroup_names: BTreeMap<u64, String>,
    final_series: Vec<V2Conn>,
    closes_without_record: u64,
    malformed_records: u64,
    created_unix: i64,
}

/// Reads a v2 JSON state: Ok(Err(problem)) when it is not one.
pub fn read(f: &mut std::fs::File) -> std::io::Result<Result<State, String>> {
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    Ok(convert(&bytes))
}

fn convert(bytes: &[u8]) -> Result<State, String> {
    let v: V2 =
        serde_json::from_slice(bytes).map_err(|e| format!("not a longconn state file ({e})"))?;
    if v.version != VERSION {
        return Err(format!("state version {} (expected {VERSION})", v.version));
    }
    let mut strings = Strings::default();
    let mut conn = |c: &V2Conn| -> Result<ConnState, String> {
        let ip = |s: &str| {
            s.parse()
                .map(addr_bytes)
                .map_err(|_| format!("bad address {s:?}"))
        };
        Ok(ConnState {
            seq: c.seq,
            last: c.last,
            reported: c.reported,
            start_ns: c.start_ns,
            start_unix_ns: c.start_unix_ns,
            recorded_ns: c.update_ns,
            update_ns: 0,
            cgroup_id: c.cgroup_id,
            local: ip(&c.local)?,
            remote: ip(&c.remote)?,
            local_port: c.local_port,
            remote_port: c.remote_port,
            direction: c.direction,
            state: c.state,
            flags: c.flags,
            srtt_us: c.srtt_us,
            min_rtt_us: c.min_rtt_us,
            id: IdSyms::intern(&c.id, &mut strings),
            wkey: strings.intern(&c.wkey),
            skey: strings.intern(&c.skey),
        })
    };
    let conns = super::Conns::from_sorted(
        v.conns
            .iter()
            .map(|(k, c)| conn(c).map(|c| (*k, c)))
            .collect::<Result<_, _>>()?,
    );
    let final_series = v
        .final_series
        .iter()
        .map(&mut conn)
        .collect::<Result<_, _>>()?;
    let mut groups =
        |g: BTreeMap<String, GroupTotals>| -> Result<BTreeMap<GroupKey, GroupTotals>, String> {
            g.into_iter()
                .map(|(k, t)| {
                    let (dir, name) = k
                        .split_once('|')
                        .ok_or_else(|| format!("bad group key {k:?}"))?;
                    let dir = match dir {
                        "outbound" => longconn_common::layout::DIR_OUTBOUND,
                        "inbound" => longconn_common::layout::DIR_INBOUND,
                        _ => 0,
                    };
                    Ok(((dir, strings.intern(name)), t))
                })
                .collect()
        };
    let workloads = groups(v.workloads)?;
    let services = groups(v.services)?;
    Ok(State {
        version: super::STATE_VERSION,
        boot_id: v.boot_id,
        pin_generation: v.pin_generation,
        ring_applied: v.ring_applied,
        strings,
        conns,
        // Filtered for one cycle, as the older reader did: its closes still
        // in the map are read in that cycle and marked to be reaped.
        settling: v
            .recently_closed
            .into_keys()
            .map(|c| (c, super::Settling::RingBefore(0)))
            .collect(),
        workloads,
        services,
        workload_labels: v.workload_labels,
        service_labels: v.service_labels,
        services_text: v.services_text,
        cgroups: v
            .cgroup_names
            .into_iter()
            .map(|(id, path)| (id, crate::identity::Cgroup::unnamed(path)))
            .collect(),
        final_series,
        closes_without_record: v.closes_without_record,
        close_totals: BTreeMap::new(),
        malformed_records: v.malformed_records,
        // v2 knew files by name only: not enough to cut one (see applog).
        logs: BTreeMap::new(),
        created_unix_ns: v.created_unix.saturating_mul(1_000_000_000),
        home: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v2_state_converts_with_its_totals() {
        let json = r#"{"version":2,"boot_id":"b","pin_generation":5,"ring_applied":384,
"conns":{"7":{"seq":3,"last":{"bytes_sent":10,"bytes_received":2,"packets_sent":1,"packets_received":1,"retransmits":0,"lost_packets":0},
"reported":{"bytes_sent":8,"bytes_received":2,"packets_sent":1,"packets_received":1,"retransmits":0,"lost_packets":0},
"start_ns":1,"start_unix_ns":2,"update_ns":3,"direction":1,"local":"127.0.0.1","local_port":4000,"remote":"::1","remote_port":80,
"state":1,"flags":1,"srtt_us":5,"min_rtt_us":4,"cgroup_id":9,
"id":{"workload":"/app","container_id":"","pod_uid":"","comm":"curl","pid":12,"netns_cookie":4096,"service":"[::1]:80","service_namespace":""},
"wkey":"/app","skey":"[::1]:80"}},
"recently_closed":{"1":2},"workloads":{"outbound|/app":{"opened":3,"closed":2,"failed":0,"closed_counters":{"bytes_sent":100,"bytes_received":0,"packets_sent":0,"packets_received":0,"retransmits":0,"lost_packets":0}}},
"services":{},"workload_labels":["workload"],"service_labels":["service"],"services_text":null,"cgroup_names":{"9":"/app"},
"final_series":[],"closes_without_record":1,"malformed_records":0,"log_len":{"access.csv":77},"created_unix":1700000000}"#;
        let s = convert(json.as_bytes()).unwrap();
        let c = s.conns[&7];
        assert_eq!(
            (c.seq, c.last.bytes_sent, c.reported.bytes_sent),
            (3, 10, 8)
        );
        assert_eq!(c.local_ip().to_string(), "127.0.0.1");
        assert_eq!(c.remote_ip().to_string(), "::1");
        assert_eq!(s.strings.get(c.id.comm), "curl");
        assert_eq!(s.strings.get(c.skey), "[::1]:80");
        let w = s.strings.iter().position(|x| x == "/app").unwrap() as u32;
        assert_eq!(s.workloads[&(1, w)].closed_counters.bytes_sent, 100);
        assert_eq!(
            (
                s.ring_applied,
                s.logs.len(),
                s.created_unix_ns / 1_000_000_000
            ),
            (384, 0, 1_700_000_000)
        );
        assert!(convert(br#"{"hello":"world"}"#)
            .unwrap_err()
            .starts_with("not a longconn state file"));
    }
}
