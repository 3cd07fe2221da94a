//! A connection as people and programs see it: decoded, timestamped, named.
//! The JSON field names here are the stable `dump --json` contract (DESIGN.md).

use serde::Serialize;

use longconn_common::{layout, ConnRecord};

use crate::{clock::Clock, identity::Identity};

#[derive(Debug, Clone, Serialize)]
pub struct ConnView {
    pub cookie: u64,
    pub direction: &'static str,
    pub local_addr: String,
    pub local_port: u16,
    pub remote_addr: String,
    pub remote_port: u16,
    pub state: &'static str,
    pub start_time: String,
    pub duration_seconds: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub retransmits: u64,
    pub lost_packets: u64,
    pub bytes_retrans: u64,
    pub srtt_us: u32,
    pub min_rtt_us: u32,
    pub last_update_seconds_ago: f64,
    pub failed: bool,
    pub closed: bool,
    pub pid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub netns_cookie: u64,
    pub workload: String,
    pub container_id: String,
    pub pod_uid: String,
    pub service: String,
    pub service_namespace: String,
}

pub fn direction_name(d: u32) -> &'static str {
    match d {
        layout::DIR_OUTBOUND => "outbound",
        layout::DIR_INBOUND => "inbound",
        _ => "unknown",
    }
}

impl ConnView {
    pub fn new(r: &ConnRecord, clock: &Clock, id: Identity) -> Self {
        let end = if r.is_closed() {
            r.update_ns
        } else {
            clock.boot_ns
        };
        Self {
            cookie: r.cookie,
            direction: direction_name(r.direction),
            local_addr: r.local_ip().to_string(),
            local_port: r.local_port as u16,
            remote_addr: r.remote_ip().to_string(),
            remote_port: r.remote_port as u16,
            state: layout::tcp_state_name(r.state),
            start_time: clock
                .wall(r.start_ns)
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            duration_seconds: end.saturating_sub(r.start_ns) as f64 / 1e9,
            bytes_sent: r.bytes_sent,
            bytes_received: r.bytes_received,
            packets_sent: r.packets_sent,
            packets_received: r.packets_received,
            retransmits: r.retransmits,
            lost_packets: r.lost_packets,
            bytes_retrans: r.bytes_retrans,
            srtt_us: r.srtt_us,
            min_rtt_us: r.min_rtt_us,
            last_update_seconds_ago: clock.age_secs(r.update_ns),
            failed: r.flags & layout::F_FAILED != 0,
            closed: r.is_closed(),
            pid: r.pid,
            comm: r.comm(),
            cgroup_id: r.cgroup_id,
            netns_cookie: r.netns_cookie,
            workload: id.workload,
            container_id: id.container_id,
            pod_uid: id.pod_uid,
            service: id.service,
            service_namespace: id.service_namespace,
        }
    }
}
