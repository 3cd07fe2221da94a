//! `longconn-pin status`: what is attached where, how full the maps are, and
//! what the kernel side had to drop.

use std::{path::Path, process::ExitCode};

use longconn_common::{mounts, pinned::Access, pins, Pins};

use crate::{attach, exit::FAILURE, hooks};

pub fn run(pin_dir: &Path) -> anyhow::Result<ExitCode> {
    let p = Pins::open(pin_dir, Access::ReadOnly)?;
    let m = p.meta;
    let cgroup = mounts::cgroup2_root()
        .ok()
        .and_then(|root| mounts::cgroup_path_of(&root, m.cgroup_id))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| format!("cgroup id {} (directory not found)", m.cgroup_id));
    let pinned_at = chrono::DateTime::from_timestamp_nanos(m.pinned_at_ns as i64)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    println!("pin dir:      {}", pin_dir.display());
    println!(
        "layout:       version {} (record {} bytes)",
        m.layout_version, m.record_size
    );
    println!("pinned at:    {pinned_at}");
    println!("cgroup:       {cgroup}");
    println!(
        "hooks:        sockops{}",
        if m.hooks == 0 {
            String::new()
        } else {
            format!(" + {}", hooks::describe(m.hooks))
        }
    );

    let refresh = pin_dir.join(pins::REFRESH).exists();
    let mut healthy = refresh;
    println!(
        "link:         {:<24} {}",
        pins::REFRESH,
        if refresh {
            "pinned (program run by readers)"
        } else {
            "MISSING"
        }
    );
    for link in attach::expected_links(m.hooks) {
        let present = pins::link_path(pin_dir, link).exists();
        healthy &= present;
        println!(
            "link:         {link:<24} {}",
            if present {
                "attached (pinned)"
            } else {
                "MISSING"
            }
        );
    }

    let (conns, bad) = p.connections()?;
    let cap = p.capacity();
    let closed_in_map = conns.iter().filter(|c| c.is_closed()).count();
    let fill = if cap > 0 {
        100.0 * conns.len() as f64 / f64::from(cap)
    } else {
        0.0
    };
    println!(
        "connections:  {} tracked of {cap} ({fill:.1}% full){}",
        conns.len(),
        if closed_in_map > 0 {
            format!(", {closed_in_map} closed awaiting the reader")
        } else {
            String::new()
        }
    );
    if bad > 0 {
        println!("malformed:    {bad} map records of the wrong size skipped");
    }
    let ring = p.ring()?;
    let (cons, prod) = ring.positions();
    let used = prod.saturating_sub(cons);
    println!(
        "ring buffer:  {} of {} KiB pending ({:.1}%)",
        used / 1024,
        ring.size() / 1024,
        100.0 * used as f64 / ring.size() as f64
    );
    let c = p.counters()?;
    println!("counters:     tracked {} | not tracked, map full {} | map errors {} | close records kept in map (ring full) {} | closes of untracked sockets {}",
        c.tracked, c.map_full, c.map_error, c.ringbuf_full, c.close_untracked);
    if c.map_full > 0 {
        println!("warning:      {} connections were not tracked because map_of_tcp_conns was full; pin again with a larger --max-connections", c.map_full);
    }
    if !healthy {
        eprintln!(
            "longconn-pin: some links are missing from {}; run `longconn-pin detach` and pin again",
            pin_dir.display()
        );
        return Ok(ExitCode::from(FAILURE));
    }
    Ok(ExitCode::SUCCESS)
}
