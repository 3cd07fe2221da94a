//! Issue 12, adversarial inputs to the reader: names any process can choose
//! (comm, cgroup names) never merge series or reach the terminal raw, the
//! same 4-tuple in two network namespaces is two series, bad or overflowing
//! command-line values are exit 2 on one line, and the documented
//! unprivileged reader works with the default output group.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Output},
};

use longconn_tests::{
    env::{bin, privileged_or_skip, unprivileged},
    netns::Netns,
    prom,
    traffic::Traffic,
    TestEnv,
};
use serde_json::Value;

/// A traffic generator in cgroup `cg` whose pair `name` was opened under
/// `comm`: exec'd through a symlink of that name (exec sets comm to the
/// name's last component; /proc/PID/comm is writable only by the process).
fn pair_as(env: &mut TestEnv, cg: &Path, comm: &[u8], name: &str) -> Traffic {
    use std::os::unix::ffi::OsStrExt;
    let link = env.path(&format!("bin-{}", env.path("").read_dir().unwrap().count()));
    fs::create_dir(&link).unwrap();
    let exe = link.join(std::ffi::OsStr::from_bytes(comm));
    std::os::unix::fs::symlink(bin("longconn-traffic"), &exe).unwrap();
    env.spawn_in(cg, Command::new(&exe));
    let mut gen = Traffic::from_child(env.take_child());
    let got = fs::read(format!("/proc/{}/comm", gen.pid())).unwrap();
    assert_eq!(&got[..got.len() - 1], comm, "comm of the generator");
    gen.cmd(&format!("pair {name} 4"));
    gen.cmd(&format!("send {name} c2s 1000"));
    gen
}

/// `attributes` of an OTLP data point as key -> string value.
fn otlp_attrs(point: &Value) -> Vec<(String, String)> {
    point["attributes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|kv| {
                    let v = &kv["value"];
                    let s = v["stringValue"]
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string());
                    (kv["key"].as_str().unwrap_or_default().to_owned(), s)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// (workload, comm) of every data point of OTLP sum `name` in the last line.
fn otlp_workloads(file: &Path, name: &str) -> BTreeSet<(String, String)> {
    let text = fs::read_to_string(file).unwrap();
    let line = text.lines().last().expect("an OTLP metrics line");
    let v: Value = serde_json::from_str(line).expect("OTLP line is JSON");
    let mut out = BTreeSet::new();
    for m in v["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
        .as_array()
        .unwrap()
    {
        if m["name"] != name {
            continue;
        }
        for p in m["sum"]["dataPoints"].as_array().unwrap() {
            let a = otlp_attrs(p);
            let get = |k: &str| {
                a.iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            out.insert((get("longconn.workload"), get("longconn.comm")));
        }
    }
    out
}

/// Items 3 and 15: a cgroup name and a comm containing the old group-key
/// separator 0x1f, which joined to the same key, give two series with their
/// own values in .prom and OTLP; quotes, backslashes, newline and ESC are
/// encoded (promtool accepts the file); `dump` shows them escaped.
#[test]
fn names_with_separator_and_control_bytes_stay_distinct_and_escaped() {
    if !privileged_or_skip("names_with_separator_and_control_bytes_stay_distinct_and_escaped") {
        return;
    }
    let mut env = TestEnv::new("hard_names");
    env.all_outputs();
    env.pin(&[]);
    let cg_a = env.child_cgroup("a\u{1f}b");
    let cg_b = env.child_cgroup("a");
    // comm "x" in ".../a\x1fb" and comm "b\x1fx" in ".../a": both were the
    // key ".../a\x1fb\x1fx" under --workload-labels workload,comm.
    let _a = pair_as(&mut env, &cg_a, b"x", "p");
    let _b = pair_as(&mut env, &cg_b, b"b\x1fx", "p");
    // A comm with every byte a label value must escape, and terminal controls.
    // (0xff: invalid UTF-8, shown as `\xff`, and then `\` as `\\`, so it
    // stays apart from a comm that differs only in invalid bytes.)
    let evil: &[u8] = b"q\"\\\n\x1b[2J\xffz";
    let _c = pair_as(&mut env, &cg_b, evil, "p");
    let (st, err) = env.collect(&["--workload-labels", "workload,comm"]);
    assert!(st.success(), "collect: {err}");

    let out = env.out_dir();
    prom::promtool_check(&out.join("longconn.prom"));
    let s = prom::parse(&fs::read_to_string(out.join("longconn.prom")).unwrap());
    let wa = format!("{}/a\u{1f}b", env.workload());
    let wb = format!("{}/a", env.workload());
    let evil_s: &str = "q\"\\\\\n\u{1b}[2J\\xffz";
    let opened = "longconn_workload_connections_opened_total";
    for (w, c) in [(&wa, "x"), (&wb, "b\u{1f}x"), (&wb, evil_s)] {
        assert_eq!(
            prom::value(
                &s,
                opened,
                &[("workload", w), ("comm", c), ("direction", "outbound")]
            ),
            Some(1.0),
            "{opened} for workload {w:?} comm {c:?}"
        );
    }
    let outbound: Vec<_> = s
        .keys()
        .filter(|(n, l)| {
            n == opened
                && l.get("direction").map(String::as_str) == Some("outbound")
                && l.get("workload").is_some_and(|w| w.starts_with(&wb))
        })
        .collect();
    assert_eq!(outbound.len(), 3, "three outbound groups: {outbound:?}");

    let got = otlp_workloads(
        &out.join("otlp-metrics.jsonl"),
        "longconn_workload_connections_opened",
    );
    for (w, c) in [(&wa, "x"), (&wb, "b\u{1f}x"), (&wb, evil_s)] {
        assert!(
            got.contains(&(w.clone(), c.to_owned())),
            "OTLP lacks workload {w:?} comm {c:?}: {got:?}"
        );
    }

    // dump: the table shows the comm escaped, one line per connection.
    let out = env.reader_cmd().arg("dump").output().unwrap();
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        !table.chars().any(|c| c != '\n' && c.is_control()),
        "raw control characters in the dump table: {table:?}"
    );
    assert!(
        table.contains("q\"\\\\\\\\\\x0a\\x1b[2J\\\\xffz/"),
        "{table}"
    );
    assert!(table.contains("b\\x1fx/"), "{table}");
    assert!(table.contains("/a\\x1fb"), "{table}");
    let rows = table.lines().count();
    assert_eq!(rows, 1 + 6 + 1, "header, 3 pairs x 2 ends, total: {table}");
    // dump --json: escaped by JSON, the same bytes read back.
    let views = env.dump_json(&[]);
    assert!(
        views.iter().any(|v| v["comm"] == evil_s),
        "dump --json lacks comm {evil_s:?}"
    );
    let raw = env.reader_cmd().args(["dump", "--json"]).output().unwrap();
    assert!(
        !raw.stdout.iter().any(|&b| b == 0x1b || b == 0x1f),
        "raw ESC or 0x1f in dump --json"
    );
}

/// A namespace whose ephemeral port range is 40000-40001: one port for
/// bind(), one for connect(), so the same 4-tuple in every such namespace.
fn same_ports_netns(tag: &str) -> Netns {
    let ns = Netns::new(tag);
    ns.run(&[
        "sh",
        "-c",
        "echo '40000 40001' > /proc/sys/net/ipv4/ip_local_port_range",
    ]);
    ns
}

/// Item 8: the same 4-tuple in two network namespaces is two connection
/// series (label `netns`, the netns cookie dump and the access log show).
#[test]
fn same_four_tuple_in_two_netns_gives_two_series() {
    if !privileged_or_skip("same_four_tuple_in_two_netns_gives_two_series") {
        return;
    }
    let mut env = TestEnv::new("hard_netns");
    env.pin(&[]);
    let (ns1, ns2) = (same_ports_netns("r2a"), same_ports_netns("r2b"));
    let mut g1 = ns1.traffic(&mut env);
    let mut g2 = ns2.traffic(&mut env);
    let p1 = g1.cmd("pair p 4");
    let p2 = g2.cmd("pair p 4");
    assert_eq!(
        (&p1["client_port"], &p1["server_port"]),
        (&p2["client_port"], &p2["server_port"]),
        "the test needs the same 4-tuple in both namespaces"
    );
    g1.cmd("send p c2s 1000");
    g2.cmd("send p c2s 3000");
    let (st, err) = env.collect(&["--long-threshold", "0s"]);
    assert!(st.success(), "collect: {err}");

    let (cport, sport) = (p1["client_port"].to_string(), p1["server_port"].to_string());
    let views = env.dump_json(&[]);
    let cookies: BTreeSet<String> = views
        .iter()
        .filter(|v| v["direction"] == "outbound" && v["local_port"] == p1["client_port"])
        .map(|v| v["netns_cookie"].to_string())
        .collect();
    assert_eq!(cookies.len(), 2, "two netns cookies in dump: {views:?}");

    let prom_file = env.out_dir().join("longconn.prom");
    prom::promtool_check(&prom_file);
    let s = prom::parse(&fs::read_to_string(&prom_file).unwrap());
    let series: Vec<(String, f64)> = s
        .iter()
        .filter(|((n, l), _)| {
            n == "longconn_connection_received_bytes_total"
                && l.get("direction").map(String::as_str) == Some("inbound")
                && l.get("local_port") == Some(&sport)
                && l.get("remote_port") == Some(&cport)
        })
        .map(|((_, l), v)| (l.get("netns").cloned().unwrap_or_default(), *v))
        .collect();
    assert_eq!(series.len(), 2, "one series per netns: {series:?}");
    let by_ns: BTreeSet<String> = series.iter().map(|(ns, _)| ns.clone()).collect();
    assert_eq!(by_ns, cookies, "netns label = netns_cookie");
    let mut values: Vec<f64> = series.iter().map(|(_, v)| *v).collect();
    values.sort_by(f64::total_cmp);
    assert_eq!(values, vec![1000.0, 3000.0]);

    // The access log tells them apart by netns_cookie too.
    let mut rdr = csv::Reader::from_path(env.out_dir().join("access.csv")).unwrap();
    let headers = rdr.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let (lp, ns) = (col("local_port"), col("netns_cookie"));
    let in_log: BTreeSet<String> = rdr
        .records()
        .map(|r| r.unwrap())
        .filter(|r| r[lp] == cport)
        .map(|r| r[ns].to_owned())
        .collect();
    assert_eq!(in_log, cookies, "access.csv netns_cookie");
}

fn run(mut cmd: Command) -> Output {
    cmd.output().expect("run")
}

/// Exit status 2 and one stderr line containing every needle.
fn assert_usage_error(out: &Output, what: &str, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{what}: {err}");
    assert_eq!(err.lines().count(), 1, "{what}: one line: {err}");
    for n in needles {
        assert!(err.contains(n), "{what}: {n:?} missing from {err}");
    }
}

/// Items 4, 10, 11: bad, duplicated or overflowing values are command-line
/// errors (exit 2, one line naming what is valid), refused before any pin or
/// output is touched.
#[test]
fn bad_and_overflowing_values_are_exit_2_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let reader = |args: &[&str]| {
        let mut c = Command::new(bin("longconn-reader"));
        c.args(["--pin-dir", "/sys/fs/bpf/longconn-no-such-pins", "collect"])
            .arg("--out-dir")
            .arg(&out_dir)
            .args(args);
        run(c)
    };
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--access-log", "CSV"],
            &["--access-log", "csv, jsonl, none"],
        ),
        (&["--access-log", "csv,xml"], &["'xml'", "csv, jsonl, none"]),
        (&["--otlp", "x"], &["--otlp", "metrics, logs, none"]),
        (
            &["--group", "nosuch-longconn"],
            &["--group", "no such group"],
        ),
        (
            &["--workload-labels", "workload,workload"],
            &["--workload-labels", "\"workload\" is listed twice"],
        ),
        (
            &["--service-labels", "service,service"],
            &["\"service\" is listed twice"],
        ),
        (
            &["--long-threshold", "288230376151711744ms"],
            &["--long-threshold", "too long"],
        ),
        (&["--lock-wait", "18446744073709551615s"], &["--lock-wait"]),
        (
            &["--log-keep", "18446744073709551615"],
            &["--log-keep", "at most 1000"],
        ),
        (&["--log-keep", "1001"], &["at most 1000"]),
    ];
    for (args, needles) in cases {
        let out = reader(args);
        assert_usage_error(&out, &format!("{args:?}"), needles);
    }
    assert!(!out_dir.exists(), "a refused command line created outputs");
    // dump's duration too.
    let mut c = Command::new(bin("longconn-reader"));
    c.args(["dump", "--min-age", "288230376151711744ms"]);
    assert_usage_error(&run(c), "dump --min-age", &["--min-age", "too long"]);
    // Valid edges still parse (they fail later, on the missing pins: exit 6).
    for args in [
        &["--log-keep", "1000", "--access-log", "csv,csv,jsonl"][..],
        &["--long-threshold", "5124095h", "--otlp", "none"][..],
        &["--group", "0", "--access-log", "none"][..],
    ] {
        let out = reader(args);
        assert_eq!(
            out.status.code(),
            Some(6),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The pin tool's --group: exit 2 as well.
    let mut c = Command::new(bin("longconn-pin"));
    c.args([
        "--pin-dir",
        "/sys/fs/bpf/longconn-no-such-pins",
        "--group",
        "nosuch-longconn",
    ]);
    let out = run(c);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Item 6: the reader of README "Running the reader without root" (a user in
/// the pins' group, no capability) collects with the default output group:
/// the files keep its group and one line says why and what to do; an
/// explicit --group it may not use fails before writing, saying what to do.
#[test]
fn unprivileged_reader_collects_with_the_default_group() {
    if !privileged_or_skip("unprivileged_reader_collects_with_the_default_group") {
        return;
    }
    let mut env = TestEnv::new("hard_unpriv");
    env.pin(&["--group", "65534"]);
    let mut gen = Traffic::start_in(&mut env);
    gen.cmd("churn 3");
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let out_dir = |name: &str| -> PathBuf {
        let d = env.path(name);
        fs::create_dir(&d).unwrap();
        std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
        d
    };
    let as_nobody = |dir: &Path, extra: &[&str]| {
        let mut c = unprivileged(65534, &[], &bin("longconn-reader"));
        c.arg("--pin-dir")
            .arg(&env.pin_dir)
            .arg("collect")
            .arg("--out-dir")
            .arg(dir)
            .args(extra);
        run(c)
    };
    let prometheus = fs::read_to_string("/etc/group")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("prometheus:"));

    // Default group.
    let d = out_dir("default");
    let o = as_nobody(&d, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "default collect as uid 65534: {err}");
    if prometheus {
        assert_eq!(err.lines().count(), 1, "one warning: {err}");
        assert!(
            err.contains("group prometheus") && err.contains("--group"),
            "{err}"
        );
    } else {
        assert!(err.is_empty(), "{err}");
    }
    for f in ["longconn.prom", "access.csv", "state.bin"] {
        let m = fs::metadata(d.join(f)).unwrap();
        assert_eq!(m.gid(), 65534, "{f} keeps the reader's group");
    }
    let s = prom::parse(&fs::read_to_string(d.join("longconn.prom")).unwrap());
    assert_eq!(
        prom::value(
            &s,
            "longconn_workload_connections_closed_total",
            &[("workload", &env.workload()), ("direction", "outbound")]
        ),
        Some(3.0)
    );

    // An explicit group it is not in: refused before anything is written.
    let d = out_dir("explicit");
    let o = as_nobody(&d, &["--group", "root"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("--group root") && err.contains("member"),
        "says what to do: {err}"
    );
    assert_eq!(fs::read_dir(&d).unwrap().count(), 0, "nothing written");

    // Its own group, explicitly: silent. (Another state dir on the same pins:
    // it takes over as the pins' one consumer of close records.)
    let d = out_dir("own");
    let o = as_nobody(&d, &["--group", "65534", "--take-over"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{o:?}");
    assert!(
        err.lines().count() == 1 && err.contains("is now the consumer") && !err.contains("group"),
        "only the take-over line, no group warning: {err}"
    );
}
