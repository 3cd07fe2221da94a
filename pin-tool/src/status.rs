//! `longconn-pin status`: what is attached where, how full the maps are, and
//! what the kernel side had to drop.

use std::{fs, io, path::Path, process::ExitCode};

use longconn_common::{mounts, pinned::Access, pins, Pins};

use longconn_common::exit::Exit;

use crate::{attach, hooks};

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

    // Every map of the object is pinned (pins::MAPS): one missing means a
    // pin dir someone half-removed; readers would refuse it.
    let missing: Vec<&str> = pins::MAPS
        .iter()
        .map(|(_, pin)| *pin)
        .filter(|pin| !pin_dir.join(pin).exists())
        .collect();
    if missing.is_empty() {
        println!("maps:         {} pinned", pins::MAPS.len());
    } else {
        println!(
            "maps:         {} of {} pinned; MISSING: {}",
            pins::MAPS.len() - missing.len(),
            pins::MAPS.len(),
            missing.join(", ")
        );
    }
    let refresh = pin_dir.join(pins::REFRESH).exists();
    let mut healthy = refresh && missing.is_empty();
    println!(
        "link:         {:<24} {}",
        pins::REFRESH,
        if refresh {
            "pinned (program run by readers)"
        } else {
            "MISSING"
        }
    );
    // links/ is root-only (0700): a member of the --group cannot look inside,
    // which says nothing about whether the links are there.
    let links_dir = pin_dir.join(pins::LINKS);
    let inspectable = !matches!(
        fs::read_dir(&links_dir),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied
    );
    if inspectable {
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
    } else {
        println!(
            "links:        cannot inspect links: needs root/CAP_SYS_ADMIN ({} is root-only)",
            links_dir.display()
        );
    }

    let (conns, bad, refresh) = p.connections_refreshed()?;
    let cap = p.capacity();
    let closed_in_map = conns.iter().filter(|c| c.is_closed()).count();
    let live = conns.len() - closed_in_map;
    let fill = if cap > 0 {
        100.0 * live as f64 / f64::from(cap)
    } else {
        0.0
    };
    println!(
        "connections:  {live} tracked of {cap} ({fill:.1}% full){}",
        if closed_in_map > 0 {
            format!("; {closed_in_map} closed awaiting the reader (close records over the ring, in {} and {})", pins::OVERFLOW, pins::OVERFLOW_SHORT)
        } else {
            String::new()
        }
    );
    let totals = p.close_totals()?;
    println!(
        "close totals: {} keys of {} (cgroup, netns, comm, direction, peer endpoint)",
        totals.keys.len(),
        p.totals_capacity()
    );
    println!(
        "cgroup names: {} (LRU of {} paths captured at cgroup creation, for cgroups gone before a reader saw them)",
        pins::CGROUP_NAMES,
        p.cgroup_names_capacity()
    );
    println!(
        "refresh:      {} read from their socket | socket not found {} | in a network namespace this reader cannot reach {}",
        refresh.refreshed, refresh.not_found, refresh.netns_unknown
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
    println!("counters:     tracked {} | not tracked, map full {} | map errors {} | close records over the ring (ring full) {} | of those unlogged {} | closes of untracked sockets {} | closes not in the totals (map full) {} | closes lost {}",
        c.tracked, c.map_full, c.map_error, c.ringbuf_full, c.close_unlogged, c.close_untracked, c.totals_full, c.close_lost);
    if c.map_full > 0 {
        let fits = suggested_capacity(conns.len() as u64, c.map_full, cap);
        println!("warning:      {} connections were not tracked because map_of_tcp_conns was full; pin again with a larger --max-connections, one that fits the {} tracked and untracked seen (`longconn-pin detach --pin-dir {} && longconn-pin --pin-dir {} --max-connections {fits}` plus your other options)", c.map_full, conns.len() as u64 + c.map_full, pin_dir.display(), pin_dir.display());
    }
    let d = pin_dir.display();
    if !healthy {
        eprintln!(
            "longconn-pin: some links are missing from {d}; run `longconn-pin detach --pin-dir {d}` and pin again"
        );
        return Ok(ExitCode::from(Exit::Failed));
    }
    if !inspectable {
        eprintln!(
            "longconn-pin: cannot inspect links in {d}: needs root/CAP_SYS_ADMIN; run `sudo longconn-pin status --pin-dir {d}` to check them"
        );
        return Ok(ExitCode::from(Exit::NoPermission));
    }
    Ok(ExitCode::SUCCESS)
}

/// A capacity that fits what was seen (the tracked connections plus those
/// the full map turned away) with a quarter to spare, at least twice the
/// current one, rounded up to a power of two, at most the largest allowed.
fn suggested_capacity(tracked: u64, untracked: u64, cap: u32) -> u64 {
    let seen = tracked.saturating_add(untracked);
    let want = seen
        .saturating_add(seen / 4)
        .max(u64::from(cap).saturating_mul(2))
        .max(1);
    want.checked_next_power_of_two()
        .unwrap_or(u64::MAX)
        .min(u64::from(crate::validate::MAX_CONNECTIONS))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_suggested_capacity_fits_what_was_seen() {
        assert_eq!(super::suggested_capacity(1000, 100, 1000), 2048);
        assert_eq!(super::suggested_capacity(1000, 50_000, 1000), 65536);
        assert_eq!(
            super::suggested_capacity(u64::MAX, 1, 1000),
            u64::from(crate::validate::MAX_CONNECTIONS)
        );
    }
}
