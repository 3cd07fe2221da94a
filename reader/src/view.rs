//! A live connection as `dump` shows it: the kernel record as an access
//! event (`output::event`), named. Its `dump --json` keys are the stable
//! contract of DESIGN.md, kept in the event's field table.

use longconn_common::{layout, ConnRecord};

use crate::{
    clock::Clock,
    collect::Counters,
    identity::Identity,
    output::event::{AccessEvent, EventKind},
};

pub fn direction_name(d: u32) -> &'static str {
    match d {
        layout::DIR_OUTBOUND => "outbound",
        layout::DIR_INBOUND => "inbound",
        _ => "unknown",
    }
}

/// The event of record `r` now, with the names in `id`.
pub fn event<'a>(r: &ConnRecord, clock: &Clock, id: &'a Identity) -> AccessEvent<'a> {
    let end = if r.is_closed() {
        r.update_ns
    } else {
        clock.boot_ns
    };
    AccessEvent {
        report_unix_ns: clock.wall(clock.boot_ns).timestamp_nanos_opt().unwrap_or(0),
        kind: if r.is_closed() {
            EventKind::Close
        } else {
            EventKind::Periodic
        },
        cookie: r.cookie,
        seq: 0,
        start_unix_ns: clock.wall(r.start_ns).timestamp_nanos_opt().unwrap_or(0),
        duration_ns: end.saturating_sub(r.start_ns),
        direction: direction_name(r.direction),
        local: r.local_ip(),
        local_port: r.local_port as u16,
        remote: r.remote_ip(),
        remote_port: r.remote_port as u16,
        state: layout::tcp_state_name(r.state),
        failed: r.flags & layout::F_FAILED != 0,
        total: Counters::of(r),
        delta: Counters::default(),
        srtt_us: r.srtt_us,
        min_rtt_us: r.min_rtt_us,
        workload: &id.workload,
        service: &id.service,
        pid: r.pid,
        comm: &id.comm,
        cgroup_id: r.cgroup_id,
        container_id: &id.container_id,
        pod_uid: &id.pod_uid,
        namespace: &id.namespace,
        pod: &id.pod,
        container: &id.container,
        netns_cookie: r.netns_cookie,
        service_namespace: &id.service_namespace,
        bytes_retrans: r.bytes_retrans,
        update_age_ns: clock.boot_ns.saturating_sub(r.update_ns),
    }
}
