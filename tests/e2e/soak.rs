//! Soak: mixed churn (short connections to one fixed service, from one or
//! more generator processes) plus 200 long connections with steady traffic,
//! the reader every 5 s. Everything reconciles to the byte; reader RSS,
//! `state.bin` and cycle time have no trend (issue 20: they follow the live
//! set, never the close history), and the state's journal stays within
//! its bound (it is replaced by a new base once it outgrows the base).
//!
//! The trend is a robust slope (Theil–Sen: the median of the slopes between
//! every two samples) projected over the run, so a 60-s run catches a leak
//! that a first-vs-last comparison would need minutes to show.
//!
//! LONGCONN_SOAK_SECS (60 in CI; `scripts/soak` runs 600) and
//! LONGCONN_SOAK_CHURNERS (generator processes, default 1). It asserts a
//! churn rate, so `scripts/test` runs it alone, after the other tests.

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

/// One collect: (seconds into the run, wall seconds, peak RSS KiB, state bytes).
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: f64,
    cycle: f64,
    rss_kib: f64,
    /// The state's base (`state.bin`) and its journal of changes since.
    state_bytes: f64,
    journal_bytes: f64,
}

/// Runs one collect and samples it (peak RSS from wait4's rusage).
// The child is reaped by wait4 below (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn timed_collect(env: &TestEnv, started: Instant) -> Sample {
    let t = Instant::now();
    let child = env.collect_cmd().stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id() as i32;
    let size = |f: &str| {
        std::fs::metadata(env.out_dir().join(f))
            .map(|m| m.len() as f64)
            .unwrap_or(0.0)
    };
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
    Sample {
        at: started.elapsed().as_secs_f64(),
        cycle: t.elapsed().as_secs_f64(),
        rss_kib: ru.ru_maxrss as f64,
        state_bytes: size("state.bin"),
        journal_bytes: size("state.journal"),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Theil–Sen slope of `y` over `x`: the median of the pairwise slopes
/// (robust to the odd slow cycle that a least-squares fit would follow).
fn theil_sen(points: &[(f64, f64)]) -> f64 {
    let mut slopes = Vec::new();
    for (i, a) in points.iter().enumerate() {
        for b in &points[i + 1..] {
            if b.0 > a.0 {
                slopes.push((b.1 - a.1) / (b.0 - a.0));
            }
        }
    }
    median(slopes)
}

/// A figure's start and end (medians of the first and last thirds) and its
/// growth over the run projected from the robust slope.
struct Trend {
    start: f64,
    end: f64,
    growth: f64,
}

fn trend(samples: &[Sample], f: fn(&Sample) -> f64) -> Trend {
    let third = (samples.len() / 3).max(1);
    let span = samples.last().map_or(0.0, |s| s.at) - samples.first().map_or(0.0, |s| s.at);
    let points: Vec<(f64, f64)> = samples.iter().map(|s| (s.at, f(s))).collect();
    Trend {
        start: median(samples[..third].iter().map(f).collect()),
        end: median(samples[samples.len() - third..].iter().map(f).collect()),
        growth: theil_sen(&points) * span,
    }
}

#[test]
fn soak_mixed_churn_and_long_connections() {
    if !privileged_or_skip("soak_mixed_churn_and_long_connections") {
        return;
    }
    let env_num = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let secs = env_num("LONGCONN_SOAK_SECS", 60);
    let churners = env_num("LONGCONN_SOAK_CHURNERS", 1).max(1);
    let mut env = TestEnv::new("soak");
    // A ring sized for this close rate (both ends of every connection close:
    // 2 x 5000/s x 5 s is more than the default 8 MiB, about 43 000 closes,
    // holds; closes it cannot hold are kept in the map, tested elsewhere).
    env.pin(&["--ringbuf-bytes", "32MiB"]);
    let wl = env.workload();
    let mut longs = Traffic::start_in(&mut env);
    longs.cmd("pairs long 200 4");
    let stop = Arc::new(AtomicBool::new(false));
    let churned = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..churners)
        .map(|_| {
            let mut churner = Traffic::start_in(&mut env);
            let (stop, churned) = (stop.clone(), churned.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    churner.cmd("churnkeep 200");
                    churned.fetch_add(200, Ordering::Relaxed);
                }
                churner
            })
        })
        .collect();
    let pins_before = std::fs::read_dir(&env.pin_dir).unwrap().count();
    let started = Instant::now();
    let mut pumped = 0u64;
    let mut samples = Vec::new();
    let mut next_cycle = Duration::from_secs(5);
    while started.elapsed() < Duration::from_secs(secs) {
        longs.cmd("pump long 2000");
        pumped += 2000;
        if started.elapsed() >= next_cycle {
            samples.push(timed_collect(&env, started));
            next_cycle += Duration::from_secs(5);
        }
        sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Relaxed);
    let _churners: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let total_churn = churned.load(Ordering::Relaxed);
    let rate = total_churn as f64 / started.elapsed().as_secs_f64();
    sleep(Duration::from_millis(300));
    timed_collect(&env, started);

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

    // The first two cycles warm up (long connections cross the threshold,
    // the state file reaches its working size): the trend is read after.
    let steady = &samples[2.min(samples.len())..];
    assert!(steady.len() >= 6, "too few cycles to read a trend");
    let figures = [
        // (name, unit, figure, allowed growth: fraction of start + noise floor)
        (
            "reader peak RSS",
            "KiB",
            trend(steady, |s| s.rss_kib),
            2048.0,
        ),
        ("state.bin", "B", trend(steady, |s| s.state_bytes), 16384.0),
        ("cycle time", "ms", trend(steady, |s| s.cycle * 1e3), 40.0),
    ];
    for s in &samples {
        eprintln!(
            "soak: cycle at {:6.1} s: {:5.0} ms, peak RSS {:6.0} KiB, state.bin {:8.0} B, state.journal {:8.0} B",
            s.at,
            s.cycle * 1e3,
            s.rss_kib,
            s.state_bytes,
            s.journal_bytes
        );
    }
    eprintln!(
        "soak: {secs} s, {total_churn} short connections ({rate:.0}/s, {churners} generator(s)), 200 long pairs; {} cycles",
        samples.len()
    );
    let mut grew = Vec::new();
    for (name, unit, t, floor) in &figures {
        let limit = 0.10 * t.start + floor;
        eprintln!(
            "soak: {name}: start {:.0} {unit}, end {:.0} {unit} ({:+.1} %), trend {:+.0} {unit} over the run (limit {limit:.0})",
            t.start,
            t.end,
            (t.end / t.start.max(1e-9) - 1.0) * 100.0,
            t.growth
        );
        if t.growth > limit {
            grew.push(format!(
                "{name} grew: {:.0} -> {:.0} {unit}, trend {:+.0} {unit} over the run",
                t.start, t.end, t.growth
            ));
        }
    }
    // The journal is a sawtooth (a new base replaces it once it outgrows
    // the base): no trend to fit, but a bound at every cycle.
    for s in steady {
        assert!(
            s.journal_bytes <= 2.0 * s.state_bytes + 1024.0 * 1024.0,
            "state.journal {} B against a base of {} B at {:.1} s: not replaced when it outgrew the base",
            s.journal_bytes,
            s.state_bytes,
            s.at
        );
    }
    assert!(grew.is_empty(), "{}", grew.join("; "));
    assert!(rate >= 1000.0, "churn rate {rate:.0}/s below 1000/s");
}
