//! `dump`: live connections for ad-hoc inspection, as a table or JSON.
//!
//! Read-only: never consumes close records (that is `collect`'s job), so it is
//! safe to run at any time beside the timer. Each connection is shown as its
//! access event (`view::event`): `--json` streams one object a line with
//! the event's `dump` keys (live connections in map order, read and rendered
//! a batch at a time), the table picks columns from the same event, busiest
//! first.

use std::{io::Write, path::Path, process::ExitCode, time::Duration};

use longconn_common::{
    pinned::{Access, RefreshStats},
    ConnRecord, Pins,
};

use crate::{
    argvalues,
    clock::Clock,
    human,
    identity::{self, Identity},
    output::{
        access,
        event::{AccessEvent, Field, Value},
    },
    runtime,
    servicemap::ServiceMap,
    termsafe, view,
};

#[derive(Debug, clap::Args)]
pub struct DumpArgs {
    /// Print one JSON array (fields: see README, "dump --json") instead of a table.
    #[arg(long)]
    json: bool,

    /// Only connections open at least this long (e.g. 5s, 2m).
    #[arg(long, value_name = "DURATION", value_parser = argvalues::duration)]
    min_age: Option<Duration>,

    /// Only connections with this local or remote port.
    #[arg(long, value_name = "PORT")]
    port: Option<u16>,

    /// Only connections whose workload (its name, container id, pod uid,
    /// namespace, pod or container) contains this text.
    #[arg(long, value_name = "TEXT")]
    workload: Option<String>,

    #[command(flatten)]
    runtime: runtime::RootArg,

    #[command(flatten)]
    cni: crate::cni::ResultsArg,

    /// Only connections whose service contains this text.
    #[arg(long, value_name = "TEXT")]
    service: Option<String>,

    /// Service map to name remote endpoints (same format as `collect --services`).
    #[arg(long, value_name = "FILE")]
    services: Option<std::path::PathBuf>,

    /// Show close records waiting for the next `collect` instead of live
    /// connections (read without consuming them).
    #[arg(long)]
    closed: bool,

    /// Show map_of_tcp_conns as the kernel hooks left it, without first
    /// copying each socket's counters (diagnostic: with the default `--hooks`
    /// the map is refreshed only at read time, so this shows older values).
    #[arg(long)]
    no_refresh: bool,
}

pub fn run(pin_dir: &Path, args: &DumpArgs) -> anyhow::Result<ExitCode> {
    let pins = Pins::open(pin_dir, Access::ReadOnly)?;
    let clock = Clock::now();
    let mut services = match &args.services {
        Some(path) => ServiceMap::load(path).map_err(anyhow::Error::msg)?.0,
        None => ServiceMap::default(),
    };
    if let Some(dir) = args.cni.dir(&args.runtime.runtime_root) {
        if let Some(w) = crate::cni::add_peers(
            &mut services,
            &dir,
            args.cni.explicit(),
            &args.runtime.roots(),
            None,
        ) {
            eprintln!("longconn-reader: {w}");
        }
    }
    // Stdout is line-buffered: without this, one write(2) per line.
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    if args.json && !args.closed {
        stream_json(&mut out, &pins, &clock, &services, args)?;
    } else {
        let (records, bad, refresh) = read_all(&pins, &clock, args)?;
        report(bad, &refresh);
        // Busiest first (ties in map order). The (key, index) pairs are
        // sorted, not the 200-byte records: at 100k connections, sorting
        // the records themselves was a fifth of `dump`'s time (perf record).
        let mut order: Vec<(std::cmp::Reverse<u64>, usize)> = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                (
                    std::cmp::Reverse(r.bytes_sent.saturating_add(r.bytes_received)),
                    i,
                )
            })
            .collect();
        order.sort_unstable();
        let records: Vec<&ConnRecord> = order.iter().map(|&(_, i)| &records[i]).collect();
        let mut cgroup_names = std::collections::BTreeMap::new();
        identity::resolve_cgroups(
            &mut cgroup_names,
            records.iter().copied(),
            &args.runtime.roots(),
            &|ids| crate::collect::captured_paths(&pins, ids),
        );
        let identifier = identity::Identifier::new(&cgroup_names, &services);
        let rows: Vec<(&ConnRecord, Identity)> = records
            .iter()
            .filter_map(|&r| Some((r, selected(args, &identifier, r)?)))
            .collect();
        if args.json {
            let mut array = JsonArray::default();
            for (r, id) in &rows {
                array.push(&mut out, &view::event(r, &clock, id))?;
            }
            array.finish(&mut out)?;
        } else {
            write_table(&mut out, &clock, &rows)?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// `--json` of live connections, streamed in map order: threads read and
/// refresh the map a batch at a time while this one names and renders the
/// batch before (`Pins::stream_live`), so the kernel's part (over half the
/// time at 100k connections) and the rendering overlap, and memory holds a
/// few batches, not the live set.
fn stream_json(
    out: &mut impl Write,
    pins: &Pins,
    clock: &Clock,
    services: &ServiceMap,
    args: &DumpArgs,
) -> anyhow::Result<()> {
    let mut array = JsonArray::default();
    let mut cgroup_names = std::collections::BTreeMap::new();
    let mut looked_up = std::collections::HashSet::new();
    let roots = args.runtime.roots();
    // A write error stops the rendering; the read then runs to its end.
    let mut rendered = Ok(());
    let (bad, refresh) = pins.stream_live(!args.no_refresh, |mut batch| {
        if rendered.is_err() {
            return;
        }
        batch.retain(|r| kept(args, clock, r));
        let fresh: Vec<&ConnRecord> = batch
            .iter()
            .filter(|r| looked_up.insert(r.cgroup_id))
            .collect();
        identity::resolve_cgroups(&mut cgroup_names, fresh, &roots, &|ids| {
            crate::collect::captured_paths(pins, ids)
        });
        let identifier = identity::Identifier::new(&cgroup_names, services);
        rendered = batch
            .iter()
            .try_for_each(|r| match selected(args, &identifier, r) {
                Some(id) => array.push(out, &view::event(r, clock, &id)),
                None => Ok(()),
            });
    })?;
    rendered?;
    array.finish(out)?;
    report(bad, &refresh);
    Ok(())
}

/// The records `dump` shows, read whole: live (refreshed unless
/// `--no-refresh`) or, with `--closed`, the close records waiting for
/// `collect`; filtered by age and port.
fn read_all(
    pins: &Pins,
    clock: &Clock,
    args: &DumpArgs,
) -> anyhow::Result<(Vec<ConnRecord>, u64, RefreshStats)> {
    let (records, bad, refresh) = if args.no_refresh {
        let (records, bad) = pins.connections_unrefreshed()?;
        (records, bad, RefreshStats::default())
    } else {
        pins.connections_refreshed()?
    };
    let mut records: Vec<ConnRecord> = if args.closed {
        let ring = pins.ring()?;
        let mut v: Vec<ConnRecord> = ring
            .peek(0)
            .records
            .iter()
            .filter_map(|r| ConnRecord::decode(r.data))
            .collect();
        v.extend(records.into_iter().filter(ConnRecord::is_closed));
        v
    } else {
        records.into_iter().filter(|r| !r.is_closed()).collect()
    };
    records.retain(|r| kept(args, clock, r));
    Ok((records, bad, refresh))
}

/// `--min-age` and `--port`.
fn kept(args: &DumpArgs, clock: &Clock, r: &ConnRecord) -> bool {
    let age_ok = args
        .min_age
        .is_none_or(|min| clock.boot_ns.saturating_sub(r.start_ns) >= argvalues::nanos(min));
    let port_ok = args
        .port
        .is_none_or(|p| r.local_port == u32::from(p) || r.remote_port == u32::from(p));
    age_ok && port_ok
}

/// `r`'s identity if `--workload` and `--service` keep it.
fn selected(
    args: &DumpArgs,
    identifier: &identity::Identifier<'_>,
    r: &ConnRecord,
) -> Option<Identity> {
    let id = identifier.identify(r);
    let keep = args.workload.as_ref().is_none_or(|w| {
        [
            &id.workload,
            &id.container_id,
            &id.pod_uid,
            &id.namespace,
            &id.pod,
            &id.container,
        ]
        .iter()
        .any(|n| n.contains(w.as_str()))
    }) && args
        .service
        .as_ref()
        .is_none_or(|s| id.service.contains(s.as_str()));
    keep.then_some(id)
}

/// What the read could not do, on stderr.
fn report(bad: u64, refresh: &RefreshStats) {
    if refresh.not_found + refresh.netns_unknown > 0 {
        eprintln!(
            "longconn-reader: {} connections show values from their last kernel-side update (connect or establish, or an optional hook): {} sockets not found by 4-tuple and cookie, {} in network namespaces this reader cannot reach (run as root to assign netnsids)",
            refresh.not_found + refresh.netns_unknown,
            refresh.not_found,
            refresh.netns_unknown
        );
    }
    if bad > 0 {
        eprintln!("longconn-reader: skipped {bad} map records of the wrong size");
    }
}

/// One JSON array written an element at a time: `[`, elements one a line
/// separated by `,`, `]`. JSON escapes control characters below U+0020; DEL
/// and C1 are escaped too, in the rare element that holds a byte from 0x7f
/// up.
#[derive(Default)]
struct JsonArray {
    buf: Vec<u8>,
    n: usize,
}

impl JsonArray {
    fn push(&mut self, out: &mut impl Write, ev: &AccessEvent<'_>) -> std::io::Result<()> {
        self.buf.clear();
        self.buf
            .extend_from_slice(if self.n == 0 { b"[\n" } else { b",\n" });
        access::json_object(&mut self.buf, ev, dump_key);
        self.n += 1;
        if !self.buf.is_ascii() || self.buf.contains(&0x7f) {
            termsafe::JsonC1::new(out).write_all(&self.buf)
        } else {
            out.write_all(&self.buf)
        }
    }

    fn finish(self, out: &mut impl Write) -> std::io::Result<()> {
        out.write_all(if self.n == 0 { b"[]\n" } else { b"\n]\n" })
    }
}

/// `dump --json` keys: the event's fields that have one.
fn dump_key(f: &'static Field, _: &Value<'_>) -> Option<&'static str> {
    (!f.dump.is_empty()).then_some(f.dump)
}

fn write_table(
    out: &mut impl Write,
    clock: &Clock,
    rows: &[(&ConnRecord, Identity)],
) -> std::io::Result<()> {
    let endpoint = |ip: std::net::IpAddr, port: u16| {
        if ip.is_ipv6() {
            format!("[{ip}]:{port}")
        } else {
            format!("{ip}:{port}")
        }
    };
    let rows: Vec<[String; 14]> = rows
        .iter()
        .map(|(r, id)| {
            let v = view::event(r, clock, id);
            let t = &v.total;
            [
                if v.direction == "outbound" {
                    "out".into()
                } else {
                    "in".into()
                },
                endpoint(v.local, v.local_port),
                endpoint(v.remote, v.remote_port),
                if v.failed {
                    "FAILED".into()
                } else {
                    v.state.into()
                },
                human::duration(v.duration_ns as f64 / 1e9),
                human::bytes(t.bytes_sent),
                human::bytes(t.bytes_received),
                format!("{}/{}", t.packets_sent, t.packets_received),
                format!("{}/{}", t.retransmits, t.lost_packets),
                format!(
                    "{}/{}",
                    human::micros(v.srtt_us),
                    human::micros(v.min_rtt_us)
                ),
                if v.pid == 0 {
                    "-".into()
                } else {
                    format!("{}/{}", termsafe::escape(v.comm), v.pid)
                },
                termsafe::escape(v.workload).into_owned(),
                if v.container.is_empty() {
                    "-".into()
                } else {
                    termsafe::escape(v.container).into_owned()
                },
                termsafe::escape(v.service).into_owned(),
            ]
        })
        .collect();
    let header = [
        "DIR",
        "LOCAL",
        "REMOTE",
        "STATE",
        "AGE",
        "SENT",
        "RECV",
        "SEGS OUT/IN",
        "RETR/LOST",
        "SRTT/MIN",
        "PROCESS",
        "WORKLOAD",
        "CONTAINER",
        "SERVICE",
    ];
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in &rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    writeln!(out, "{} connections", rows.len())
}
