//! `longconn-pin detach`: remove every link and map longconn pinned, nothing else.

use std::{fs, path::Path, process::ExitCode};

use longconn_common::pins;

use crate::{
    attach,
    exit::{coded, NOT_CONFIGURED},
};

pub fn run(pin_dir: &Path) -> anyhow::Result<ExitCode> {
    if let Some(parent) = pin_dir.parent() {
        attach::remove_stale_staging(parent);
    }
    if !pin_dir.exists() {
        println!("nothing pinned at {}", pin_dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    let ours = pin_dir.join(pins::META).exists()
        || pin_dir.join(pins::CONNS).exists()
        || pin_dir.join(pins::LINKS).join("sockops").exists();
    if !ours {
        let empty = fs::read_dir(pin_dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if empty {
            let _ = fs::remove_dir(pin_dir);
            println!(
                "nothing pinned at {} (removed the empty directory)",
                pin_dir.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        return Err(coded(
            NOT_CONFIGURED,
            format!(
                "{} holds no longconn pins; left untouched",
                pin_dir.display()
            ),
        ));
    }
    let (links, maps, leftovers) = attach::remove_pins(pin_dir);
    println!(
        "detached: removed {links} links and programs and {maps} maps from {}",
        pin_dir.display()
    );
    if !leftovers.is_empty() {
        let names: Vec<_> = leftovers.iter().map(|p| p.display().to_string()).collect();
        eprintln!(
            "longconn-pin: left {} in place (not made by longconn)",
            names.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
