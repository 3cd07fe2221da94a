//! Issue 12, reader side: committed records survive every state reset
//! (item 1), one consumer per pin dir (item 2), a label change moves the
//! start time (item 5), hard links and loose modes in the log dir (item 7),
//! a FIFO service map and a stuck lock holder (item 9), and created
//! directories and files independent of the umask (item 16).

use std::{
    collections::BTreeMap,
    fs,
    os::unix::{
        fs::{MetadataExt, PermissionsExt},
        process::CommandExt,
    },
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant, SystemTime},
};

use longconn_tests::{env::privileged_or_skip, prom, traffic::Traffic, TestEnv};

const FILES: [&str; 4] = [
    "access.csv",
    "access.jsonl",
    "otlp-metrics.jsonl",
    "otlp-logs.jsonl",
];

/// Close records by cookie in `dir/access.csv` (no rotation in these tests).
fn closes(dir: &Path) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    let mut r = csv::Reader::from_path(dir.join("access.csv")).unwrap();
    let h = r.headers().unwrap().clone();
    let ev = h.iter().position(|x| x == "event").unwrap();
    let ck = h.iter().position(|x| x == "cookie").unwrap();
    for row in r.records() {
        let row = row.unwrap();
        if &row[ev] == "close" {
            *out.entry(row[ck].to_owned()).or_default() += 1;
        }
    }
    out
}

fn snapshot(dir: &Path) -> BTreeMap<&'static str, Vec<u8>> {
    FILES
        .iter()
        .map(|f| (*f, fs::read(dir.join(f)).unwrap_or_default()))
        .collect()
}

/// Every byte committed before is still there, at the start of each file,
/// and every file ends with a complete line.
fn assert_kept(dir: &Path, before: &BTreeMap<&'static str, Vec<u8>>, what: &str) {
    for (f, old) in before {
        let now = fs::read(dir.join(f)).unwrap_or_default();
        assert!(
            now.len() >= old.len() && now[..old.len()] == old[..],
            "{what}: {f} lost committed bytes ({} -> {} bytes)",
            old.len(),
            now.len()
        );
        assert!(
            now.is_empty() || now.ends_with(b"\n"),
            "{what}: {f} ends mid-line"
        );
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run longconn-reader")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn start_time(dir: &Path) -> f64 {
    let s = prom::parse(&fs::read_to_string(dir.join("longconn.prom")).unwrap());
    prom::value(&s, "longconn_reader_state_start_time_seconds", &[]).unwrap()
}

/// Item 1: after each kind of state reset, no committed byte of any log is
/// removed, and every close is still in access.csv exactly once.
#[test]
fn state_resets_never_remove_committed_log_records() {
    if !privileged_or_skip("state_resets_never_remove_committed_log_records") {
        return;
    }
    let mut env = TestEnv::new("resetlogs");
    env.all_outputs();
    env.pin(&[]);
    let mut gen = Traffic::start_in(&mut env);
    let out = env.out_dir();
    let state = out.join("state.bin");
    cycle_once(&env, &mut gen, &[]);
    cycle_once(&env, &mut gen, &[]);
    let other_log_dir = env.path("other-logs");
    let other_log_dir = other_log_dir.to_str().unwrap().to_owned();
    type Reset<'a> = (&'a str, Box<dyn Fn(&TestEnv, &mut Traffic) -> String + 'a>);
    let resets: Vec<Reset> = vec![
        (
            "garbage state",
            Box::new(|env, gen| {
                fs::write(&state, b"garbage").unwrap();
                let err = cycle_once(env, gen, &[]);
                assert!(err.contains("unusable"), "{err}");
                err
            }),
        ),
        (
            "truncated state",
            Box::new(|env, gen| {
                let b = fs::read(&state).unwrap();
                fs::write(&state, &b[..b.len() / 2]).unwrap();
                cycle_once(env, gen, &[])
            }),
        ),
        (
            "symlinked state",
            Box::new(|env, gen| {
                let target = env.path("elsewhere.bin");
                fs::rename(&state, &target).unwrap();
                std::os::unix::fs::symlink(&target, &state).unwrap();
                cycle_once(env, gen, &[])
            }),
        ),
        (
            "formats off for a cycle",
            Box::new(|env, gen| {
                cycle_once(env, gen, &["--access-log", "jsonl", "--otlp", "none"]);
                cycle_once(env, gen, &[])
            }),
        ),
        (
            "another log dir for a cycle",
            Box::new(|env, gen| {
                let o = out.to_str().unwrap();
                cycle_once(
                    env,
                    gen,
                    &[
                        "--log-dir",
                        &other_log_dir,
                        "--state-dir",
                        o,
                        "--textfile-dir",
                        o,
                    ],
                );
                cycle_once(env, gen, &[])
            }),
        ),
    ];
    for (what, reset) in &resets {
        let before = snapshot(&out);
        let err = reset(&env, &mut gen);
        assert_kept(&out, &before, what);
        assert!(err.lines().count() <= 1, "{what}: one line at most: {err}");
    }
    // A partial last line (left by anything) is ended, not cut, not glued.
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(out.join("access.jsonl"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"{\"partial\":").unwrap();
    drop(f);
    fs::write(&state, b"garbage").unwrap();
    let before = snapshot(&out);
    cycle_once(&env, &mut gen, &[]);
    assert_kept(&out, &before, "partial line");
    let jsonl = fs::read_to_string(out.join("access.jsonl")).unwrap();
    assert!(
        jsonl.contains("{\"partial\":\n{"),
        "the partial line is ended"
    );

    // A state copied from another out dir is foreign: set aside, one line.
    let out2 = env.path("out2");
    fs::create_dir(&out2).unwrap();
    for f in FILES {
        fs::copy(out.join(f), out2.join(f)).unwrap();
    }
    fs::copy(&state, out2.join("state.bin")).unwrap();
    let before2 = snapshot(&out2);
    gen.cmd("churn 3");
    let o = run(env
        .reader_cmd()
        .args(["collect", "--take-over", "--out-dir"])
        .arg(&out2));
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.lines()
            .any(|l| l.contains("unusable") && l.contains("written for state dir")),
        "{err}"
    );
    assert!(fs::read_dir(&out2)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("state.bad-")));
    assert_kept(&out2, &before2, "foreign state");

    // Exactly once: each of the 10 cycles' 3 connections closed at both
    // ends, in access.jsonl of out (or of the other log dir for one cycle).
    let mut all = closes_jsonl(&out);
    for (k, n) in closes_jsonl(Path::new(&other_log_dir)) {
        *all.entry(k).or_default() += n;
    }
    assert!(all.values().all(|&n| n == 1), "a close twice: {all:?}");
    assert_eq!(all.len(), 10 * 3 * 2, "every close once");
}

/// Close records by cookie in `dir/access.jsonl` (lines that do not parse skipped).
fn closes_jsonl(dir: &Path) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for line in fs::read_to_string(dir.join("access.jsonl"))
        .unwrap()
        .lines()
    {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["event"] == "close" {
            *out.entry(v["cookie"].to_string()).or_default() += 1;
        }
    }
    out
}

/// One churn-and-collect cycle for the resets above.
fn cycle_once(env: &TestEnv, gen: &mut Traffic, extra: &[&str]) -> String {
    gen.cmd("churn 3");
    let (st, err) = env.collect(extra);
    assert!(st.success(), "{extra:?}: {err}");
    err
}

/// Item 2: a second collect with another state dir on the same pin dir is
/// refused (naming the registered one) and consumes nothing; --take-over
/// moves the registration; a consumer the registry missed is reported.
#[test]
fn a_second_consumer_of_a_pin_dir_is_refused() {
    if !privileged_or_skip("a_second_consumer_of_a_pin_dir_is_refused") {
        return;
    }
    let mut env = TestEnv::new("consumer");
    env.pin(&[]);
    let mut gen = Traffic::start_in(&mut env);
    let a = env.out_dir();
    let b = env.path("out-b");
    let collect = |dir: &Path, extra: &[&str]| {
        run(env
            .reader_cmd()
            .arg("collect")
            .arg("--out-dir")
            .arg(dir)
            .args(extra))
    };
    gen.cmd("churn 5");
    let o = collect(&a, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    gen.cmd("churn 4");
    let o = collect(&b, &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let a_canon = fs::canonicalize(&a).unwrap();
    assert!(
        err.contains(&format!("state dir {}", a_canon.display()))
            && err.contains("--take-over")
            && err.lines().count() == 1,
        "{err}"
    );
    assert!(
        !b.join("access.csv").exists(),
        "the refused collect wrote records"
    );
    let pending = env.dump_json(&["--closed"]);
    assert!(
        pending.len() >= 8,
        "the refused collect consumed closes: {}",
        pending.len()
    );
    let o = collect(&a, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        closes(&a).len(),
        18,
        "every close (9 connections, both ends) in A"
    );

    // --take-over: B is the consumer from now on, A is refused.
    gen.cmd("churn 2");
    let o = collect(&b, &["--take-over"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("is now the consumer"), "{}", stderr(&o));
    assert_eq!(closes(&b).len(), 4);
    let o = collect(&a, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let reg = fs::read_to_string(env.consumer_registration()).unwrap();
    assert!(
        reg.contains(&format!(
            "state_dir={}",
            fs::canonicalize(&b).unwrap().display()
        )),
        "{reg}"
    );

    // Registration removed by hand: A registers again, but sees that B
    // released closes past its own position, once.
    fs::remove_file(env.consumer_registration()).unwrap();
    let o = collect(&a, &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("another collect released"), "{err}");
    let o = collect(&a, &[]);
    assert!(
        o.status.success() && stderr(&o).is_empty(),
        "{}",
        stderr(&o)
    );
    // The registration goes with the pins.
    assert!(env.consumer_registration().exists());
    let o = env.pin_cmd().arg("detach").output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !env.consumer_registration().exists(),
        "detach removes the consumer registration"
    );
}

/// Item 5: a new label selection restarts the group totals and so moves
/// the state start time (Prometheus and OTLP).
#[test]
fn a_label_change_moves_the_start_time() {
    if !privileged_or_skip("a_label_change_moves_the_start_time") {
        return;
    }
    let mut env = TestEnv::new("relabel");
    env.all_outputs();
    env.pin(&[]);
    let mut gen = Traffic::start_in(&mut env);
    gen.cmd("churn 2");
    let out = env.out_dir();
    let (st, err) = env.collect(&[]);
    assert!(st.success(), "{err}");
    let otlp_start = |out: &Path| {
        let text = fs::read_to_string(out.join("otlp-metrics.jsonl")).unwrap();
        let last = text.lines().last().unwrap().to_owned();
        let v: serde_json::Value = serde_json::from_str(&last).unwrap();
        let metrics = &v["resourceMetrics"][0]["scopeMetrics"][0]["metrics"];
        let m = metrics
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "longconn_workload_connections_opened")
            .unwrap_or_else(|| panic!("no opened sum in {last}"));
        m["sum"]["dataPoints"][0]["startTimeUnixNano"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (p0, o0) = (start_time(&out), otlp_start(&out));
    let (st, err) = env.collect(&[]);
    assert!(st.success(), "{err}");
    assert_eq!(
        (start_time(&out), otlp_start(&out)),
        (p0, o0.clone()),
        "no change, no reset"
    );
    // The totals restart: new closes make the groups appear again.
    gen.cmd("churn 1");
    let (st, err) = env.collect(&["--workload-labels", "workload,comm"]);
    assert!(st.success(), "{err}");
    assert!(err.contains("counter reset"), "{err}");
    let (p1, o1) = (start_time(&out), otlp_start(&out));
    assert!(p1 > p0, "prometheus start time {p0} -> {p1}");
    assert!(
        o1.parse::<u64>().unwrap() > o0.parse::<u64>().unwrap(),
        "otlp {o0} -> {o1}"
    );
    gen.cmd("churn 1");
    let (st, err) = env.collect(&["--workload-labels", "workload"]);
    assert!(st.success(), "{err}");
    assert!(start_time(&out) > p1, "and back: another reset");
}

/// Item 7: a log file with another hard link is moved aside, never written
/// through or cut; a 0666 log is set back to 0640.
#[test]
fn hard_linked_logs_are_set_aside_and_modes_reset() {
    if !privileged_or_skip("hard_linked_logs_are_set_aside_and_modes_reset") {
        return;
    }
    let mut env = TestEnv::new("hardlink");
    env.all_outputs();
    env.pin(&[]);
    let mut gen = Traffic::start_in(&mut env);
    let out = env.out_dir();
    gen.cmd("churn 2");
    let (st, err) = env.collect(&[]);
    assert!(st.success(), "{err}");
    // Another name for access.csv, and a state that (after a reset) knows
    // nothing: the old reader cut the linked file to zero.
    let victim = env.path("victim.csv");
    fs::hard_link(out.join("access.csv"), &victim).unwrap();
    let kept = fs::read(&victim).unwrap();
    fs::set_permissions(out.join("access.jsonl"), fs::Permissions::from_mode(0o666)).unwrap();
    gen.cmd("churn 2");
    let (st, err) = env.collect(&[]);
    assert!(st.success(), "{err}");
    let now = fs::read(&victim).unwrap();
    assert!(
        now == kept,
        "written through a hard link: {} -> {} bytes",
        kept.len(),
        now.len()
    );
    assert!(
        err.lines().count() == 1 && err.contains("hard links") && err.contains("moved it aside"),
        "{err}"
    );
    let m = fs::metadata(out.join("access.csv")).unwrap();
    assert_eq!((m.nlink(), m.mode() & 0o7777), (1, 0o640));
    assert_eq!(
        fs::metadata(out.join("access.jsonl")).unwrap().mode() & 0o7777,
        0o640,
        "a 0666 log stays 0666"
    );
    let aside = fs::read_dir(&out)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("access.csv.linked-")
        })
        .count();
    assert_eq!(aside, 1);
}

/// Item 9: a FIFO as --services fails the cycle at once (the lock is not
/// held for ever), and a run that finds the lock held by a stuck collect
/// says so and fails instead of skipping silently.
#[test]
fn a_fifo_service_map_and_a_stuck_lock_holder_fail_fast() {
    if !privileged_or_skip("a_fifo_service_map_and_a_stuck_lock_holder_fail_fast") {
        return;
    }
    let mut env = TestEnv::new("fifo");
    env.pin(&[]);
    let mut gen = Traffic::start_in(&mut env);
    gen.cmd("churn 1");
    let fifo = env.path("services.csv");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let t = Instant::now();
    let mut child = env
        .collect_cmd()
        .arg("--services")
        .arg(&fifo)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait().unwrap().is_none() {
        let _ = child.kill();
        panic!("collect --services FIFO still blocked after 20 s");
    }
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not a regular file") && err.contains("services.csv"),
        "{err}"
    );

    // A holder of the lock: fresh, the run skips (exit 0); for minutes, it fails.
    let lock = fs::File::open(env.out_dir().join("collect.lock")).unwrap();
    // SAFETY: flock on an fd we own.
    let locked = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    assert_eq!(locked, 0);
    let (st, err) = env.collect(&["--lock-wait", "200ms"]);
    assert!(st.success() && err.contains("skipping this cycle"), "{err}");
    lock.set_modified(SystemTime::now() - Duration::from_secs(300))
        .unwrap();
    let (st, err) = env.collect(&["--lock-wait", "200ms"]);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(
        err.contains("looks stuck") && err.lines().count() == 1,
        "{err}"
    );
    drop(lock);
    let (st, err) = env.collect(&[]);
    assert!(st.success(), "{err}");
}

/// Item 16: directories and files the reader creates get their documented
/// modes whatever the umask.
#[test]
fn created_directories_and_files_ignore_the_umask() {
    if !privileged_or_skip("created_directories_and_files_ignore_the_umask") {
        return;
    }
    let mut env = TestEnv::new("umask");
    env.all_outputs();
    env.pin(&[]);
    let mut gen = Traffic::start_in(&mut env);
    let mode = |p: &Path| fs::symlink_metadata(p).unwrap().mode() & 0o7777;
    for umask in [0o077u32, 0o777] {
        gen.cmd("churn 1");
        let root = env.path(&format!("u{umask:o}"));
        let (text, logs, state) = (
            root.join("a/text"),
            root.join("b/logs"),
            root.join("c/state"),
        );
        let mut cmd = env.reader_cmd();
        cmd.arg("collect")
            .args(longconn_tests::env::ALL_OUTPUTS)
            .arg("--textfile-dir")
            .arg(&text)
            .arg("--log-dir")
            .arg(&logs)
            .arg("--state-dir")
            .arg(&state);
        // Each round is a new state dir: the next consumer of this pin dir.
        let _ = fs::remove_file(env.consumer_registration());
        // SAFETY: umask is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                libc::umask(umask as libc::mode_t);
                Ok(())
            });
        }
        let o = run(&mut cmd);
        assert!(o.status.success(), "umask {umask:o}: {}", stderr(&o));
        for (p, want) in [
            (root.join("a"), 0o755),
            (text.clone(), 0o755),
            (root.join("b"), 0o750),
            (logs.clone(), 0o750),
            (state.clone(), 0o700),
            (text.join("longconn.prom"), 0o640),
            (logs.join("access.csv"), 0o640),
            (logs.join("otlp-metrics.jsonl"), 0o640),
            (state.join("state.bin"), 0o600),
            (state.join("collect.lock"), 0o600),
        ] {
            assert_eq!(mode(&p), want, "umask {umask:o}: {}", p.display());
        }
    }
}
