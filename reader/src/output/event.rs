//! The access event: one connection's record of one cycle, made of numbers
//! and symbols. Its fields are listed once, in `AccessEvent::visit`; every
//! access-log encoder (CSV header and row, JSON Lines, OTLP log attributes)
//! is a `Visit` printer of it, and text exists only inside those printers.
//!
//! Invariant: `visit` hands every field, in the CSV column order, to the
//! visitor (the container's name as one of two fields of the same name,
//! by its OTel key: a pod's or a runtime's own); the access-log printers take those marked `log`, `dump` those
//! with a `dump` key; a field marked `optional` may be left out of the
//! compact forms (JSON Lines, OTLP) when it is empty or zero.

use std::net::{IpAddr, Ipv4Addr};

use crate::collect::Counters;

/// Why the record was written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EventKind {
    /// A long connection's record of this cycle (active, or an idle heartbeat).
    #[default]
    Periodic,
    /// The connection closed: its last record.
    Close,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Periodic => "periodic",
            Self::Close => "close",
        }
    }
}

/// One access event. Names are borrowed from the reader's name table.
#[derive(Clone, Copy, Debug)]
pub struct AccessEvent<'a> {
    /// When the cycle read the kernel, Unix ns.
    pub report_unix_ns: i64,
    pub kind: EventKind,
    /// Kernel socket cookie, unique per boot.
    pub cookie: u64,
    /// Per-connection record sequence number: 1, 2, 3...
    pub seq: u64,
    pub start_unix_ns: i64,
    pub duration_ns: u64,
    /// "outbound" | "inbound" (`view::direction_name`).
    pub direction: &'static str,
    pub local: IpAddr,
    pub local_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
    /// ss-style state name, e.g. ESTAB, CLOSED.
    pub state: &'static str,
    /// The connect never established.
    pub failed: bool,
    /// Cumulative counters, and what they grew by since the last record.
    pub total: Counters,
    pub delta: Counters,
    pub srtt_us: u32,
    pub min_rtt_us: u32,
    pub workload: &'a str,
    pub service: &'a str,
    pub pid: u32,
    pub comm: &'a str,
    pub cgroup_id: u64,
    /// Container id parsed from the cgroup path; empty if none.
    pub container_id: &'a str,
    /// Kubernetes pod uid parsed from the cgroup path; empty if none.
    pub pod_uid: &'a str,
    /// Kubernetes namespace and pod (empty outside Kubernetes), and the
    /// container's name (its pod spec's under Kubernetes, else podman's or
    /// docker's), from the runtime's state (`runtime`).
    pub namespace: &'a str,
    pub pod: &'a str,
    pub container: &'a str,
    /// Network namespace cookie of the socket.
    pub netns_cookie: u64,
    /// Namespace of the service-map rule that named `service`; empty if none.
    pub service_namespace: &'a str,
    /// Bytes retransmitted (tcp_info bytes_retrans; `dump` only).
    pub bytes_retrans: u64,
    /// How long ago the kernel record was last updated (`dump` only).
    pub update_age_ns: u64,
}

impl Default for AccessEvent<'_> {
    fn default() -> Self {
        Self {
            report_unix_ns: 0,
            kind: EventKind::Periodic,
            cookie: 0,
            seq: 0,
            start_unix_ns: 0,
            duration_ns: 0,
            direction: "",
            local: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            local_port: 0,
            remote: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            remote_port: 0,
            state: "",
            failed: false,
            total: Counters::default(),
            delta: Counters::default(),
            srtt_us: 0,
            min_rtt_us: 0,
            workload: "",
            service: "",
            pid: 0,
            comm: "",
            cgroup_id: 0,
            container_id: "",
            pod_uid: "",
            namespace: "",
            pod: "",
            container: "",
            netns_cookie: 0,
            service_namespace: "",
            bytes_retrans: 0,
            update_age_ns: 0,
        }
    }
}

/// A field's value, typed: printers choose the text.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    /// Free text from outside (names): printers escape it.
    Text(&'a str),
    /// One of the program's own words (no escaping needed).
    Symbol(&'static str),
    Uint(u64),
    /// A duration, written in seconds.
    Seconds(u64),
    /// A time, Unix ns, written as RFC 3339 UTC with microseconds.
    Time(i64),
    Addr(IpAddr),
    Bool(bool),
}

impl Value<'_> {
    /// Empty text or zero: what compact printers may leave out of an
    /// `optional` field.
    pub fn is_empty(&self) -> bool {
        match *self {
            Self::Text(s) | Self::Symbol(s) => s.is_empty(),
            Self::Uint(v) | Self::Seconds(v) => v == 0,
            Self::Time(t) => t == 0,
            Self::Bool(b) => !b,
            Self::Addr(_) => false,
        }
    }
}

/// A field of the access event: its name in CSV and JSON Lines, its
/// OpenTelemetry attribute key, and its key in `dump --json`.
#[derive(Debug, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    pub otel: &'static str,
    /// Left out of compact forms when empty or zero (it says nothing then).
    pub optional: bool,
    /// In the access logs (CSV, JSON Lines, OTLP logs).
    pub log: bool,
    /// Its key in `dump --json` (the stable contract of DESIGN.md); empty:
    /// not shown by `dump`.
    pub dump: &'static str,
}

/// A printer of access events.
pub trait Visit {
    fn field(&mut self, field: &'static Field, value: Value<'_>);
}

macro_rules! fields {
    ($($id:ident: $name:literal, $otel:literal, $optional:literal, $log:literal, $dump:literal;)*) => {
        /// Every field, in CSV column order.
        pub mod f {
            use super::Field;
            $(pub static $id: Field = Field {
                name: $name, otel: $otel, optional: $optional, log: $log, dump: $dump,
            };)*
        }
    };
}

fields! {
    // id: CSV/JSONL name, OTel key, optional, in the logs, dump --json key;
    REPORT_TIME: "report_time", "longconn.report_time", false, true, "";
    EVENT: "event", "longconn.event", false, true, "";
    COOKIE: "cookie", "longconn.cookie", false, true, "cookie";
    SEQ: "seq", "longconn.seq", false, true, "";
    START_TIME: "start_time", "longconn.start_time", false, true, "start_time";
    DURATION: "duration_seconds", "longconn.duration_seconds", false, true, "duration_seconds";
    DIRECTION: "direction", "longconn.direction", false, true, "direction";
    LOCAL_ADDRESS: "local_address", "network.local.address", false, true, "local_addr";
    LOCAL_PORT: "local_port", "network.local.port", false, true, "local_port";
    REMOTE_ADDRESS: "remote_address", "network.peer.address", false, true, "remote_addr";
    REMOTE_PORT: "remote_port", "network.peer.port", false, true, "remote_port";
    STATE: "state", "longconn.state", false, true, "state";
    FAILED: "failed", "longconn.failed", true, true, "failed";
    BYTES_SENT: "bytes_sent", "longconn.bytes_sent", false, true, "bytes_sent";
    BYTES_RECEIVED: "bytes_received", "longconn.bytes_received", false, true, "bytes_received";
    PACKETS_SENT: "packets_sent", "longconn.packets_sent", false, true, "packets_sent";
    PACKETS_RECEIVED: "packets_received", "longconn.packets_received", false, true, "packets_received";
    RETRANSMITS: "retransmits", "longconn.retransmits", false, true, "retransmits";
    LOST_PACKETS: "lost_packets", "longconn.lost_packets", false, true, "lost_packets";
    BYTES_SENT_DELTA: "bytes_sent_delta", "longconn.bytes_sent_delta", true, true, "";
    BYTES_RECEIVED_DELTA: "bytes_received_delta", "longconn.bytes_received_delta", true, true, "";
    PACKETS_SENT_DELTA: "packets_sent_delta", "longconn.packets_sent_delta", true, true, "";
    PACKETS_RECEIVED_DELTA: "packets_received_delta", "longconn.packets_received_delta", true, true, "";
    RETRANSMITS_DELTA: "retransmits_delta", "longconn.retransmits_delta", true, true, "";
    LOST_PACKETS_DELTA: "lost_packets_delta", "longconn.lost_packets_delta", true, true, "";
    SRTT: "srtt_us", "longconn.srtt_us", false, true, "srtt_us";
    MIN_RTT: "min_rtt_us", "longconn.min_rtt_us", false, true, "min_rtt_us";
    WORKLOAD: "workload", "longconn.workload", false, true, "workload";
    SERVICE: "service", "longconn.service", false, true, "service";
    PID: "pid", "process.pid", true, true, "pid";
    COMM: "comm", "process.executable.name", true, true, "comm";
    CGROUP_ID: "cgroup_id", "longconn.cgroup_id", true, true, "cgroup_id";
    CONTAINER_ID: "container_id", "container.id", true, true, "container_id";
    POD_UID: "pod_uid", "k8s.pod.uid", true, true, "pod_uid";
    NETNS_COOKIE: "netns_cookie", "longconn.netns_cookie", true, true, "netns_cookie";
    SERVICE_NAMESPACE: "service_namespace", "longconn.service_namespace", true, true, "service_namespace";
    NAMESPACE: "namespace", "k8s.namespace.name", true, true, "namespace";
    POD: "pod", "k8s.pod.name", true, true, "pod";
    // One column, two OTel keys: a pod's container (`k8s.container.name`)
    // or a runtime's own container (`container.name`); `visit` chooses.
    CONTAINER: "container", "container.name", true, true, "container";
    K8S_CONTAINER: "container", "k8s.container.name", true, true, "container";
    // What only `dump` shows of a live connection.
    BYTES_RETRANS: "bytes_retrans", "longconn.bytes_retrans", true, false, "bytes_retrans";
    UPDATE_AGE: "last_update_seconds_ago", "", false, false, "last_update_seconds_ago";
    CLOSED: "closed", "", false, false, "closed";
}

impl AccessEvent<'_> {
    /// Hands every field to `v`, in CSV column order: the one list of them.
    pub fn visit(&self, v: &mut impl Visit) {
        use Value::*;
        v.field(&f::REPORT_TIME, Time(self.report_unix_ns));
        v.field(&f::EVENT, Symbol(self.kind.name()));
        v.field(&f::COOKIE, Uint(self.cookie));
        v.field(&f::SEQ, Uint(self.seq));
        v.field(&f::START_TIME, Time(self.start_unix_ns));
        v.field(&f::DURATION, Seconds(self.duration_ns));
        v.field(&f::DIRECTION, Symbol(self.direction));
        v.field(&f::LOCAL_ADDRESS, Addr(self.local));
        v.field(&f::LOCAL_PORT, Uint(self.local_port.into()));
        v.field(&f::REMOTE_ADDRESS, Addr(self.remote));
        v.field(&f::REMOTE_PORT, Uint(self.remote_port.into()));
        v.field(&f::STATE, Symbol(self.state));
        v.field(&f::FAILED, Bool(self.failed));
        let (t, d) = (&self.total, &self.delta);
        v.field(&f::BYTES_SENT, Uint(t.bytes_sent));
        v.field(&f::BYTES_RECEIVED, Uint(t.bytes_received));
        v.field(&f::PACKETS_SENT, Uint(t.packets_sent));
        v.field(&f::PACKETS_RECEIVED, Uint(t.packets_received));
        v.field(&f::RETRANSMITS, Uint(t.retransmits));
        v.field(&f::LOST_PACKETS, Uint(t.lost_packets));
        v.field(&f::BYTES_SENT_DELTA, Uint(d.bytes_sent));
        v.field(&f::BYTES_RECEIVED_DELTA, Uint(d.bytes_received));
        v.field(&f::PACKETS_SENT_DELTA, Uint(d.packets_sent));
        v.field(&f::PACKETS_RECEIVED_DELTA, Uint(d.packets_received));
        v.field(&f::RETRANSMITS_DELTA, Uint(d.retransmits));
        v.field(&f::LOST_PACKETS_DELTA, Uint(d.lost_packets));
        v.field(&f::SRTT, Uint(self.srtt_us.into()));
        v.field(&f::MIN_RTT, Uint(self.min_rtt_us.into()));
        v.field(&f::WORKLOAD, Text(self.workload));
        v.field(&f::SERVICE, Text(self.service));
        v.field(&f::PID, Uint(self.pid.into()));
        v.field(&f::COMM, Text(self.comm));
        v.field(&f::CGROUP_ID, Uint(self.cgroup_id));
        v.field(&f::CONTAINER_ID, Text(self.container_id));
        v.field(&f::POD_UID, Text(self.pod_uid));
        v.field(&f::NETNS_COOKIE, Uint(self.netns_cookie));
        v.field(&f::SERVICE_NAMESPACE, Text(self.service_namespace));
        v.field(&f::NAMESPACE, Text(self.namespace));
        v.field(&f::POD, Text(self.pod));
        let container = if self.pod.is_empty() {
            &f::CONTAINER
        } else {
            &f::K8S_CONTAINER
        };
        v.field(container, Text(self.container));
        v.field(&f::BYTES_RETRANS, Uint(self.bytes_retrans));
        v.field(&f::UPDATE_AGE, Seconds(self.update_age_ns));
        v.field(&f::CLOSED, Bool(self.kind == EventKind::Close));
    }
}

/// Every field of the access logs, in order (from `visit`, so never out
/// of step with it).
pub fn all_fields() -> Vec<&'static Field> {
    struct Names(Vec<&'static Field>);
    impl Visit for Names {
        fn field(&mut self, field: &'static Field, _: Value<'_>) {
            self.0.push(field);
        }
    }
    let mut n = Names(Vec::new());
    AccessEvent::default().visit(&mut n);
    n.0.retain(|f| f.log);
    n.0
}
