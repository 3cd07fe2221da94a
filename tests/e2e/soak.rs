//! Issue 6 soak: mixed churn (>= 1000 new connections/s) plus a few hundred
//! long connections with steady traffic, the reader every 5 s. Everything
//! reconciles; reader RSS and cycle time stay flat; nothing leaks.
//! Runs LONGCONN_SOAK_SECS seconds (60 in CI; `scripts/soak` runs 600).

use std::{
    process::Stdio,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::sleep,
    time::{Duration, Instant},
};

use longconn_tests::{env::privileged_or_skip, prom, traffic::Traffic, TestEnv};

/// Runs one collect and returns (wall seconds, peak RSS KiB) from wait4's rusage.
fn timed_collect(env: &TestEnv) -> (f64, i64) {
    let t = Instant::now();
    let child = env.collect_cmd().stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id() as i32;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for a child we spawned, with valid out pointers.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(rc, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "collect failed with status {status}"
    );
    (t.elapsed().as_secs_f64(), ru.ru_maxrss)
}

#[test]
fn soak_mixed_churn_and_long_connections() {
    if !privileged_or_skip("soak_mixed_churn_and_long_connections") {
        return;
    }
    let secs: u64 = std::env::var("LONGCONN_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let mut env = TestEnv::new("soak");
    env.pin(&[]);
    let wl = env.workload();
    let mut longs = Traffic::start_in(&mut env);
    longs.cmd("pairs long 200 4");
    let churner = Traffic::start_in(&mut env);
    let stop = Arc::new(AtomicBool::new(false));
    let churned = Arc::new(AtomicU64::new(0));
    let handle = {
        let (stop, churned) = (stop.clone(), churned.clone());
        let mut churner = churner;
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                churner.cmd("churn 200");
                churned.fetch_add(200, Ordering::Relaxed);
            }
            churner
        })
    };
    let pins_before = std::fs::read_dir(&env.pin_dir).unwrap().count();
    let started = Instant::now();
    let mut pumped = 0u64;
    let mut samples = Vec::new();
    let mut next_cycle = Duration::from_secs(5);
    while started.elapsed() < Duration::from_secs(secs) {
        longs.cmd("pump long 2000");
        pumped += 2000;
        if started.elapsed() >= next_cycle {
            samples.push(timed_collect(&env));
            next_cycle += Duration::from_secs(5);
        }
        sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Relaxed);
    let _churner = handle.join().unwrap();
    let total_churn = churned.load(Ordering::Relaxed);
    let rate = total_churn as f64 / started.elapsed().as_secs_f64();
    sleep(Duration::from_millis(300));
    samples.push(timed_collect(&env));

    let s = prom::parse(&std::fs::read_to_string(env.out_dir().join("longconn.prom")).unwrap());
    let v = |n: &str, d: &str| {
        prom::value(&s, n, &[("workload", &wl), ("direction", d)])
            .unwrap_or_else(|| panic!("{n} {d}"))
    };
    // The 200 long pairs are still open; every churned connection closed.
    assert_eq!(
        v("longconn_workload_connections_closed_total", "outbound"),
        total_churn as f64
    );
    assert_eq!(v("longconn_workload_active_connections", "outbound"), 200.0);
    assert_eq!(
        v("longconn_workload_sent_bytes_total", "outbound"),
        (total_churn * 1002 + 200 * (pumped + 1)) as f64,
        "closed + live bytes to the byte"
    );
    assert_eq!(
        v("longconn_workload_received_bytes_total", "inbound"),
        (total_churn * 1001 + 200 * pumped) as f64
    );
    assert_eq!(
        prom::value(&s, "longconn_tracked_connections", &[]),
        Some(400.0),
        "no leaked map entries"
    );
    assert_eq!(
        std::fs::read_dir(&env.pin_dir).unwrap().count(),
        pins_before,
        "no pin leaks"
    );

    let third = (samples.len() / 3).max(1);
    let avg =
        |v: &[(f64, i64)], f: fn(&(f64, i64)) -> f64| v.iter().map(f).sum::<f64>() / v.len() as f64;
    let (t0, t1) = (
        avg(&samples[..third], |x| x.0),
        avg(&samples[samples.len() - third..], |x| x.0),
    );
    let (r0, r1) = (
        avg(&samples[..third], |x| x.1 as f64),
        avg(&samples[samples.len() - third..], |x| x.1 as f64),
    );
    eprintln!(
        "soak: {secs} s, {total_churn} short connections ({rate:.0}/s), 200 long pairs; {} cycles; cycle {:.1} -> {:.1} ms; peak RSS {:.0} -> {:.0} KiB",
        samples.len(),
        t0 * 1e3,
        t1 * 1e3,
        r0,
        r1
    );
    assert!(rate >= 1000.0, "churn rate {rate:.0}/s below 1000/s");
    assert!(
        r1 <= r0 * 1.5 + 4096.0,
        "reader RSS grew: {r0:.0} -> {r1:.0} KiB"
    );
    assert!(
        t1 <= t0 * 2.0 + 0.05,
        "cycle time grew: {t0:.3} -> {t1:.3} s"
    );
}
