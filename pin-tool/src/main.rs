//! `longconn-pin`: load, attach and pin longconn's eBPF programs, then exit.
//!
//! One-shot by design (no resident daemon): pinned bpf_links keep the programs
//! attached and pinned maps keep the counters after this process exits.

mod attach;
mod detach;
mod hooks;
mod owned;
mod repin;
mod status;
mod validate;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use longconn_common::{
    exit::{self, Exit, Program},
    pins::DEFAULT_PIN_DIR,
};

/// After the exit codes in `--help`.
const EXAMPLES: &str = "\
Examples:
  longconn-pin                                   # whole host (cgroup v2 root)
  longconn-pin --cgroup /sys/fs/cgroup/system.slice/nginx.service
  longconn-pin status
  longconn-pin detach";

/// Man pages: section 8 (needs root); see `longconn_common::docs`.
const DOCS: longconn_common::docs::Pages = longconn_common::docs::Pages {
    section: "8",
    see_also: &["longconn-reader(1)", "bpftool(8)"],
};

/// Attach longconn's eBPF programs and pin them, so `longconn-reader` can
/// report live TCP connections without a resident daemon.
///
/// Tracks TCP connections opened (or accepted) after attaching, by processes in
/// the chosen cgroup v2 subtree. Everything is pinned under --pin-dir; programs
/// stay attached after this command exits, until `longconn-pin detach`.
#[derive(Debug, Parser)]
#[command(name = "longconn-pin", version, after_help = format!("{}\n\n{EXAMPLES}", Exit::help(Program::Pin)))]
struct Cli {
    /// bpffs directory holding longconn's maps and links (mounted if bpffs is not).
    #[arg(long, global = true, default_value = DEFAULT_PIN_DIR, value_name = "DIR", value_parser = validate::pin_dir)]
    pin_dir: PathBuf,

    #[command(flatten)]
    attach: attach::AttachArgs,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Detach every program and remove every pin longconn made under --pin-dir.
    Detach {
        /// Also remove damaged or foreign objects at longconn's names in
        /// the pin dir (e.g. a `meta` overwritten by a member of --group),
        /// once at least one object there is verified as longconn's.
        #[arg(long)]
        force: bool,
    },
    /// Show what is attached where, map fill against capacity and drop counters.
    Status,
}

fn main() -> ExitCode {
    let cli: Cli = match longconn_common::cli::parse("longconn-pin", &DOCS) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let result = match &cli.command {
        None => attach::run(&cli.pin_dir, &cli.attach),
        Some(Command::Detach { force }) => detach::run(&cli.pin_dir, *force),
        Some(Command::Status) => status::run(&cli.pin_dir),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("longconn-pin: {err:#}");
            exit::of(&err).into()
        }
    }
}

#[cfg(test)]
mod robustness {
    //! The pin tool's command line and --hooks parser, fed a million inputs.

    use clap::Parser;
    use longconn_testgen::{Gen, CASES};

    use super::{hooks, Cli};

    #[test]
    fn command_lines_and_hook_lists() {
        let mut g = Gen::new(7);
        let words = [
            "detach",
            "--force",
            "status",
            "--pin-dir",
            "--cgroup",
            "--max-connections",
            "--ringbuf-bytes",
            "--hooks",
            "--group",
            "default",
            "tcp-probe,egress",
            "4MiB",
            "131072",
            "/sys/fs/bpf/x",
            "-1",
            "x",
        ];
        for i in 0..CASES {
            let mut argv = vec!["longconn-pin".to_owned()];
            for _ in 0..g.below(5) {
                argv.push(if g.below(3) == 0 {
                    g.text(&words)
                } else {
                    words[g.below(words.len())].to_owned()
                });
            }
            if let Err(e) = Cli::try_parse_from(&argv) {
                if i % 64 == 0 {
                    let _ = e.render().to_string();
                }
            }
            let h = g.text(&["default", "egress,tcp-probe", "cgroup-skb", "none"]);
            if let Err(e) = hooks::parse(&h) {
                assert!(
                    e.contains(&format!(
                        "{:?}",
                        h.split(',')
                            .map(str::trim)
                            .find(|p| !hooks::names().any(|n| n == *p))
                            .unwrap_or("")
                    )),
                    "{e}"
                );
                assert_eq!(e.lines().count(), 1);
            }
        }
    }
}
