//! `longconn-pin detach`: remove every link and map longconn pinned, nothing else.
//!
//! Each object under one of longconn's names is checked to be longconn's
//! (see `owned`) before it is unlinked; anything else is left in place and
//! named, unless `--force`: then damaged or foreign objects at longconn's
//! names go too, once at least one object in the pin dir is verified as
//! longconn's (so `--force` never empties a directory that is not one). Checking links needs CAP_SYS_ADMIN, and removing pins needs write
//! access to the root-only pin dir: without them detach fails (exit 4)
//! instead of reporting a detach that did not happen.

use std::{fs, io, path::Path, process::ExitCode};

use longconn_common::{caps, pins};

use longconn_common::exit::{coded, Exit};

use crate::{
    attach,
    owned::{self, Verdict},
};

pub fn run(pin_dir: &Path, force: bool) -> anyhow::Result<ExitCode> {
    let d = pin_dir.display();
    match fs::symlink_metadata(pin_dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            println!("nothing pinned at {d}");
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(needs_root(pin_dir, "cannot look at it"));
        }
        _ => {}
    }
    let missing = caps::missing(&[(caps::CAP_SYS_ADMIN, "CAP_SYS_ADMIN")]);
    if !missing.is_empty() {
        return Err(needs_root(
            pin_dir,
            &format!("this process lacks {}", missing.join(", ")),
        ));
    }
    if let Some(parent) = pin_dir.parent() {
        attach::remove_stale_staging(parent);
    }

    let mut ours = Vec::new();
    let mut foreign = Vec::new();
    let mut forced = Vec::new();
    for o in owned::names(pin_dir) {
        match owned::inspect(&o) {
            Verdict::Absent => {}
            Verdict::Ours => ours.push(o),
            Verdict::Foreign(why) if force => forced.push((o, why)),
            Verdict::Unreadable(why) if force => forced.push((o, format!("cannot inspect: {why}"))),
            Verdict::Foreign(why) => foreign.push(format!("{} ({why})", o.path.display())),
            Verdict::Unreadable(why) => {
                foreign.push(format!("{} (cannot inspect: {why})", o.path.display()))
            }
            Verdict::Denied(e) => {
                return Err(needs_root(
                    pin_dir,
                    &format!("cannot open {}: {e}", o.path.display()),
                ))
            }
        }
    }
    // --force with nothing verified: still longconn's dir if everything in
    // it is at one of longconn's names (what a plain detach left behind).
    if ours.is_empty() && !forced.is_empty() && only_longconn_names(pin_dir) {
        ours.extend(forced.drain(..).map(|(o, why)| {
            println!("removing {} (--force: {why})", o.path.display());
            o
        }));
    }
    if ours.is_empty() {
        foreign.extend(
            forced
                .drain(..)
                .map(|(o, why)| format!("{} ({why})", o.path.display())),
        );
        let _ = fs::remove_dir(pin_dir.join(pins::LINKS));
        if fs::remove_dir(pin_dir).is_ok() {
            println!("nothing pinned at {d} (removed the empty directory)");
            return Ok(ExitCode::SUCCESS);
        }
        let what = if foreign.is_empty() {
            String::new()
        } else {
            format!(" (not longconn's: {})", foreign.join(", "))
        };
        return Err(coded(
            Exit::NotConfigured,
            format!("{d} holds no longconn pins{what}; left untouched"),
        ));
    }

    let (mut links, mut maps) = (0, 0);
    for (o, why) in &forced {
        println!("removing {} (--force: {why})", o.path.display());
    }
    ours.extend(forced.into_iter().map(|(o, _)| o));
    for o in &ours {
        match fs::remove_file(&o.path) {
            Ok(()) if o.is_map() => maps += 1,
            Ok(()) => links += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Err(needs_root(pin_dir, &format!("cannot remove {}: {e}", o.path.display())))
            }
            Err(e) => {
                return Err(coded(Exit::Failed, format!("cannot remove {}: {e}; removed {links} links and programs and {maps} maps so far; run `longconn-pin detach --pin-dir {d}` again", o.path.display())))
            }
        }
    }
    let _ = fs::remove_dir(pin_dir.join(pins::LINKS));
    // The reader's registration of its one consumer of these pins' close
    // records goes with them (a new pin generation registers anew anyway).
    let canonical = fs::canonicalize(pin_dir).unwrap_or_else(|_| pin_dir.to_owned());
    let _ = fs::remove_file(pins::consumer_registration(
        Path::new(pins::CONSUMER_REGISTRY_DIR),
        &canonical.to_string_lossy(),
    ));
    let leftovers: Vec<String> = fs::read_dir(pin_dir)
        .map(|dir| {
            dir.flatten()
                .map(|e| e.path().display().to_string())
                .collect()
        })
        .unwrap_or_default();
    if leftovers.is_empty() {
        let _ = fs::remove_dir(pin_dir);
    }
    println!("detached: removed {links} links and programs and {maps} maps from {d}");
    if !foreign.is_empty() {
        return Err(coded(
            Exit::Failed,
            format!(
                "left in place, not longconn's: {}; if {d} is longconn's pin dir and these are damaged (e.g. by a member of the pins' group), `longconn-pin detach --pin-dir {d} --force` removes them",
                foreign.join(", ")
            ),
        ));
    }
    if !leftovers.is_empty() {
        eprintln!(
            "longconn-pin: left {} in place (not made by longconn)",
            leftovers.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether every entry of `pin_dir` (and of its links/) is at one of
/// longconn's names.
fn only_longconn_names(pin_dir: &Path) -> bool {
    let names: Vec<_> = owned::names(pin_dir).into_iter().map(|o| o.path).collect();
    let links = pin_dir.join(pins::LINKS);
    let entries = |dir: &Path| -> Vec<std::path::PathBuf> {
        fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    entries(pin_dir)
        .into_iter()
        .chain(entries(&links))
        .all(|p| p == links || names.contains(&p))
}

fn needs_root(pin_dir: &Path, why: &str) -> anyhow::Error {
    let d = pin_dir.display();
    coded(
        Exit::NoPermission,
        format!("detach needs root (CAP_SYS_ADMIN, to check and remove the pins in {d}): {why}; nothing was removed; run `sudo longconn-pin detach --pin-dir {d}`"),
    )
}
