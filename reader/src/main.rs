//! `longconn-reader`: turn longconn's pinned kernel state into something a
//! person or a monitoring system reads. Each invocation does one thing and
//! exits; nothing stays resident.

mod argvalues;
mod clock;
mod cni;
mod collect;
mod dump;
mod fsperm;
mod human;
mod identity;
mod output;
mod peermap;
mod runtime;
mod servicemap;
mod termsafe;
#[cfg(test)]
mod testskip;
mod top;
mod view;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use longconn_common::{
    exit::{self, Exit, Program},
    pins::DEFAULT_PIN_DIR,
};

/// After the exit codes in `--help`.
const ACCESS_NOTE: &str = "\
The reader needs read access to the pins (root, or CAP_BPF plus group read
permission on --pin-dir). Run `longconn-pin` first.";

/// Man pages: section 1; see `longconn_common::docs`.
const DOCS: longconn_common::docs::Pages = longconn_common::docs::Pages {
    section: "1",
    see_also: &["longconn-pin(8)", "ss(8)", "prometheus-node-exporter(1)"],
};

/// Report live TCP connections tracked by longconn's pinned eBPF maps.
#[derive(Debug, Parser)]
#[command(name = "longconn-reader", version, after_help = format!("{}\n\n{ACCESS_NOTE}", Exit::help(Program::Reader)))]
struct Cli {
    /// bpffs directory where `longconn-pin` pinned the maps.
    #[arg(long, global = true, default_value = DEFAULT_PIN_DIR, value_name = "DIR")]
    pin_dir: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per run
enum Command {
    /// Run one cycle: drain close records, read live connections, write the
    /// access logs, longconn.prom (node_exporter textfile) and state; then exit.
    /// Meant to run every 5 s from longconn-reader.timer.
    Collect(collect::CollectArgs),
    /// List live connections, busiest first (like `ss -ti`, from the pinned map).
    Dump(dump::DumpArgs),
    /// Watch live connections with rates (bytes/s, segments/s, retransmits/s),
    /// full screen like htop; sort, filter, group by workload or service.
    /// Without a terminal (or with --once) print one frame of rates as text.
    Top(top::TopArgs),
    /// Turn `kubectl get pods,services,endpointslices -A -o json` (stdin)
    /// into a --services map (stdout) naming pod IPs namespace/pod and
    /// service ClusterIP:port and endpoints namespace/service.
    ServicesFromKubectl(peermap::Args),
}

fn main() -> ExitCode {
    let cli: Cli = match longconn_common::cli::parse("longconn-reader", &DOCS) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let result = match &cli.command {
        Command::Collect(args) => collect::run(&cli.pin_dir, args),
        Command::Dump(args) => dump::run(&cli.pin_dir, args),
        Command::Top(args) => top::run(&cli.pin_dir, args),
        Command::ServicesFromKubectl(args) => peermap::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("longconn-reader: {err:#}");
            exit::of(&err).into()
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

#[cfg(test)]
mod robustness {
    //! Every parser of the reader, fed a million generated inputs: no panic,
    //! and each rejection is one line that names the bad value.

    use clap::Parser;
    use longconn_testgen::{Gen, CASES};

    use super::Cli;
    use crate::{identity, servicemap::ServiceMap};

    #[test]
    fn command_lines() {
        let mut g = Gen::new(3);
        let words = [
            "collect",
            "dump",
            "top",
            "--once",
            "--interval",
            "--sort",
            "--view",
            "--json",
            "--min-age",
            "--port",
            "--out-dir",
            "--long-threshold",
            "--log-max-bytes",
            "--log-keep",
            "--access-log",
            "--otlp",
            "--services",
            "--workload-labels",
            "--service-labels",
            "--group",
            "--pin-dir",
            "--closed",
            "--max-connection-series",
            "--lock-wait",
            "--series-ttl",
            "5s",
            "4MiB",
            "csv,jsonl",
            "none",
            "workload,comm",
            "service",
            "-1",
            "x",
        ];
        for i in 0..CASES {
            let n = g.below(6);
            let mut argv = vec!["longconn-reader".to_owned()];
            for _ in 0..n {
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
        }
    }

    #[test]
    fn command_line_errors_are_one_line_naming_valid_values() {
        for (argv, want) in [
            (
                &["collect", "--access-log", "CSV"][..],
                "[possible values: csv, jsonl, none]",
            ),
            (
                &["collect", "--otlp", "metrics,x"],
                "[possible values: metrics, logs, none]",
            ),
            (
                &["collect", "--workload-labels", "comm,comm"],
                "listed twice",
            ),
            (
                &["collect", "--log-keep", "18446744073709551615"],
                "at most 1000",
            ),
            (&["dump", "--min-age", "288230376151711744ms"], "too long"),
        ] {
            let e =
                Cli::try_parse_from(std::iter::once("longconn-reader").chain(argv.iter().copied()))
                    .unwrap_err();
            assert_eq!(e.exit_code(), 2);
            let line = longconn_common::cli::one_line(&e);
            assert!(
                !line.contains('\n') && line.contains(want),
                "{argv:?}: {line}"
            );
        }
    }

    #[test]
    fn service_maps() {
        let mut g = Gen::new(4);
        let seeds = [
            "10.0.0.0/8,5432,pg,db\n",
            "::1/128,80-90,web,\n",
            "*,*,any,ns\n# c\n",
            "127.0.0.1,1,a,b\n10.0.0.0/33,1,x,\n",
        ];
        for _ in 0..CASES {
            let text = g.text(&seeds);
            match ServiceMap::parse(&text, "svc.csv") {
                Ok(m) => {
                    let _ = m.lookup("10.1.2.3".parse().unwrap(), 5432);
                    let _ = m.lookup("::1".parse().unwrap(), 80);
                }
                Err(e) => {
                    assert!(e.starts_with("svc.csv:"), "names file:line: {e}");
                    assert_eq!(e.lines().count(), 1, "one line: {e:?}");
                }
            }
        }
    }

    /// `services-from-kubectl`: kubectl documents, mutated. Every output is
    /// a map the reader accepts; every rejection is one line.
    #[test]
    fn kubectl_documents() {
        let mut g = Gen::new(7);
        let seeds = [
            r#"{"kind":"List","items":[{"kind":"Pod","metadata":{"name":"a","namespace":"n"},"status":{"podIPs":[{"ip":"10.0.0.1"}]}}]}"#,
            r#"{"kind":"Service","metadata":{"name":"s","namespace":"n"},"spec":{"clusterIPs":["10.96.0.1","fd00::1"],"ports":[{"port":80},{"port":53,"protocol":"UDP"}]}}"#,
            r#"{"kind":"EndpointSliceList","items":[{"metadata":{"namespace":"n","labels":{"kubernetes.io/service-name":"s"}},"addressType":"IPv4","endpoints":[{"addresses":["10.0.0.2"]}],"ports":[{"port":8080}]}]}"#,
            r#"{"kind":"PodList","items":[{"metadata":{"name":"h","namespace":"n"},"spec":{"hostNetwork":true},"status":{"podIP":"10.0.0.3"}}]}"#,
        ];
        for _ in 0..CASES / 10 {
            let text = g.text(&seeds);
            match crate::peermap::convert_for_tests(&text) {
                Ok(csv) => {
                    ServiceMap::parse(&csv, "out.csv").unwrap_or_else(|e| panic!("{text}: {e}"));
                }
                Err(e) => assert_eq!(e.lines().count(), 1, "one line: {e:?}"),
            }
        }
    }

    #[test]
    fn labels_and_cgroup_paths() {
        let mut g = Gen::new(5);
        let id = "3f4e1c2d9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d";
        let path = format!("/kubepods.slice/kubepods-burstable-pod6c3b0e6e_2c47_4a5e_9a4f_0d2b6f3c1a77.slice/cri-containerd-{id}.scope");
        for _ in 0..CASES {
            let s = g.text(&["workload,comm", "service", "pod_uid,netns"]);
            if let Err(e) = identity::parse_labels(&s, identity::WORKLOAD_LABELS) {
                assert_eq!(e.lines().count().max(1), 1, "{e:?}");
            }
            let p = g.text(&[&path, "/docker/abc", "/"]);
            let (c, pod) = identity::parse_container(&p);
            assert!(c.is_empty() || c.len() == 64);
            assert!(pod.is_empty() || pod.len() == 36);
        }
    }

    #[test]
    fn state_files() {
        let mut g = Gen::new(6);
        let good = crate::collect::test_state_bytes();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.bin");
        // Decoding is what matters; the file round trip is exercised on a sample.
        for i in 0..CASES / 10 {
            let b = g.bytes(&[&good]);
            let _ = crate::collect::decode_state_for_tests(&b);
            if i % 10_000 == 0 {
                std::fs::write(&path, &b).unwrap();
                let _ = crate::collect::load_state_for_tests(&path);
            }
        }
    }
}
