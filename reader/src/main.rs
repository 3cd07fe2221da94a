//! `longconn-reader`: turn longconn's pinned kernel state into something a
//! person or a monitoring system reads. Each invocation does one thing and
//! exits; nothing stays resident.

mod clock;
mod collect;
mod dump;
mod exit;
mod human;
mod identity;
mod servicemap;
mod output;
mod view;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use longconn_common::pins::DEFAULT_PIN_DIR;

const AFTER_HELP: &str = "\
Exit status (for systemd and scripts):
  0  done
  1  failed; the message says what and where
  2  bad command line
  4  insufficient privileges to open the pins
  6  nothing pinned at --pin-dir, or pinned by another layout version

The reader needs read access to the pins (root, or CAP_BPF plus group read
permission on --pin-dir). Run `longconn-pin` first.";

/// Report live TCP connections tracked by longconn's pinned eBPF maps.
#[derive(Debug, Parser)]
#[command(name = "longconn-reader", version, after_help = AFTER_HELP)]
struct Cli {
    /// bpffs directory where `longconn-pin` pinned the maps.
    #[arg(long, global = true, default_value = DEFAULT_PIN_DIR, value_name = "DIR")]
    pin_dir: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one cycle: drain close records, read live connections, write the
    /// access logs, longconn.prom (node_exporter textfile) and state; then exit.
    /// Meant to run every 5 s from longconn-reader.timer.
    Collect(collect::CollectArgs),
    /// List live connections, busiest first (like `ss -ti`, from the pinned map).
    Dump(dump::DumpArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Collect(args) => collect::run(&cli.pin_dir, args),
        Command::Dump(args) => dump::run(&cli.pin_dir, args),
    };
    match result {
        Ok(code) => code,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("longconn-reader: {err:#}");
            exit::code_of(&err)
        }
    }
}

/// `longconn-reader dump | head` is not an error.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .is_some_and(|e| e.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe))
    })
}
