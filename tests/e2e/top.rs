//! Issue 19: `longconn-reader top`. The screen is read as a person would
//! see it: `top` runs in a real pseudo-terminal and its output goes
//! through a terminal emulator (`vt100`). Authorities: iperf3 at a fixed
//! bit rate, the traffic generator's own byte counts, and the exactly-once
//! check of the access log for `collect` running beside `top`.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    os::fd::{FromRawFd, OwnedFd},
    os::unix::process::CommandExt,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread::sleep,
    time::{Duration, Instant},
};

use longconn_tests::{env::privileged_or_skip, logs, traffic::Traffic, TestEnv};

/// A program on its own pseudo-terminal, its screen kept by a terminal
/// emulator. The child is killed when this is dropped.
struct Pty {
    master: std::fs::File,
    child: Child,
    parser: Arc<Mutex<vt100::Parser>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Pty {
    fn spawn(mut cmd: Command, rows: u16, cols: u16) -> Self {
        let (mut master, mut slave) = (-1, -1);
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty writes two fds into the locals; the other
        // pointers are NULL (no name, default termios) or a valid winsize.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both fds were just opened by openpty and are owned here.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let io = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup pty"));
        cmd.stdin(io(&slave))
            .stdout(io(&slave))
            .stderr(io(&slave))
            .env("TERM", "xterm-256color");
        // SAFETY: between fork and exec, only async-signal-safe calls
        // (setsid, ioctl) that make the pty the child's controlling terminal.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn on the pty");
        drop(cmd);
        drop(slave);
        let parser = Arc::new(Mutex::new(vt100::Parser::new(rows, cols, 0)));
        let mut from = std::fs::File::from(master.try_clone().expect("dup master"));
        let p = parser.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            // EIO once the child and every copy of the slave are gone.
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                p.lock().unwrap().process(&buf[..n]);
            }
        });
        Self {
            master: std::fs::File::from(master),
            child,
            parser,
            reader: Some(reader),
        }
    }

    /// Sets the terminal's size as a terminal window would.
    fn resize(&mut self, rows: u16, cols: u16) {
        use std::os::fd::AsRawFd;
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let mut p = self.parser.lock().unwrap();
        p.set_size(rows, cols);
        // SAFETY: TIOCSWINSZ on our own open pty master with a valid winsize.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        assert_eq!(rc, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
    }

    fn keys(&mut self, s: &str) {
        self.master
            .write_all(s.as_bytes())
            .expect("write to the pty");
        self.master.flush().unwrap();
    }

    fn text(&self) -> String {
        self.parser.lock().unwrap().screen().contents()
    }

    /// Waits until `pred` holds of the screen's text; panics showing it.
    fn wait_for<T>(&self, what: &str, secs: u64, pred: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let text = self.text();
            if let Some(v) = pred(&text) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not on the screen within {secs} s; the screen:\n{text}"
            );
            sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the child to exit and its output to be read; returns
    /// (exit status, whether the alternate screen is still on, whether the
    /// cursor is hidden).
    fn finish(&mut self, secs: u64) -> (std::process::ExitStatus, bool, bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "top did not exit within {secs} s; the screen:\n{}",
                self.text()
            );
            sleep(Duration::from_millis(50));
        };
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        let p = self.parser.lock().unwrap();
        (
            status,
            p.screen().alternate_screen(),
            p.screen().hide_cursor(),
        )
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The table on a screen (or in `--once` text): one map per line, header
/// to cell (every cell is one word).
fn table(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = text.lines().skip_while(|l| {
        let first = l.split_whitespace().next();
        first != Some("DIR") && first != Some("GROUP")
    });
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let header: Vec<&str> = header.split_whitespace().collect();
    lines
        .take_while(|l| !l.trim().is_empty() && !l.starts_with(" sort:"))
        .map(|l| {
            header
                .iter()
                .map(|h| h.to_string())
                .zip(l.split_whitespace().map(str::to_owned))
                .collect()
        })
        .collect()
}

/// A rate cell ("976.6kB", "1.00MB") in bytes per second.
fn rate(cell: &str) -> f64 {
    let (num, mult) = [("GB", 1e9), ("MB", 1e6), ("kB", 1e3), ("B", 1.0)]
        .iter()
        .find_map(|(u, m)| cell.strip_suffix(u).map(|n| (n, *m)))
        .unwrap_or_else(|| panic!("not a rate: {cell:?}"));
    num.parse::<f64>()
        .unwrap_or_else(|_| panic!("not a rate: {cell:?}"))
        * mult
}

fn iperf3_or_skip(test: &str) -> bool {
    if Command::new("iperf3").arg("--version").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: iperf3 is not installed (scripts/test installs it) and CI=true forbids skipping"
    );
    eprintln!("SKIP {test}: iperf3 not installed");
    false
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `top` on a 250x40 terminal; iperf3 sends 8 000 000 bit/s = 1 000 000
/// bytes/s in the test cgroup (`-b 8000000`: no unit suffix to read as
/// 1000 or 1024). The client's row shows 1 MB/s ± 10 % at three
/// refreshes; sorting by RECV/s then SENT/s puts the
/// server's then the client's end first; typing the client's port filters
/// to the connection's two ends; q leaves the alternate screen and shows
/// the cursor again, exit 0.
#[test]
fn top_on_a_terminal_shows_rates_sorts_filters_and_restores_the_terminal() {
    let name = "top_on_a_terminal_shows_rates_sorts_filters_and_restores_the_terminal";
    if !privileged_or_skip(name) || !iperf3_or_skip(name) {
        return;
    }
    let mut env = TestEnv::new("top_tty");
    env.pin(&[]);
    let port = free_port().to_string();
    let mut server = Command::new("iperf3");
    server.args(["-s", "-1", "-i", "0", "-B", "127.0.0.1", "-p", &port]);
    env.spawn_in_cgroup(server);
    let listening = || {
        let o = Command::new("ss")
            .args(["-Hltn", &format!("sport = :{port}")])
            .output()
            .unwrap();
        !o.stdout.is_empty()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !listening() {
        assert!(Instant::now() < deadline, "iperf3 -s did not listen");
        sleep(Duration::from_millis(50));
    }
    let mut client = Command::new("iperf3");
    client.args([
        "-c",
        "127.0.0.1",
        "-p",
        &port,
        "-b",
        "8000000",
        "-t",
        "120",
        "-i",
        "0",
    ]);
    env.spawn_in_cgroup(client);
    // The data connection: the client's connection to the port that sends.
    let deadline = Instant::now() + Duration::from_secs(10);
    let cport = loop {
        let data = env.dump_json(&["--port", &port]).into_iter().find(|c| {
            c["direction"] == "outbound" && c["bytes_sent"].as_u64().unwrap_or(0) > 100_000
        });
        if let Some(c) = data {
            break c["local_port"].as_u64().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "no iperf3 data connection");
        sleep(Duration::from_millis(100));
    };
    let client_end = format!("127.0.0.1:{cport}");

    let mut top = env.reader_cmd();
    top.args(["top", "--interval", "1s"]);
    let mut pty = Pty::spawn(top, 40, 250);

    // 1 MB/s ± 10 %, at three refreshes (iperf3 paces in bursts: a 1 s
    // window may hold one burst more or less than the mean).
    let mut last = String::new();
    let (mut good, mut seen) = (0, Vec::new());
    let deadline = Instant::now() + Duration::from_secs(30);
    while good < 3 {
        let row = pty.wait_for("the client's row", 10, |t| {
            table(t)
                .into_iter()
                .find(|r| r["LOCAL"] == client_end && r["SENT/s"] != "-")
        });
        let screen = pty.text();
        // A new refresh: the row's age moved (the status line may read the
        // same from one refresh to the next).
        let refreshed = row["AGE"].clone();
        if refreshed != last || seen.is_empty() {
            let sent = rate(&row["SENT/s"]);
            if (900_000.0..=1_100_000.0).contains(&sent) {
                good += 1;
            }
            seen.push(row["SENT/s"].clone());
            last = refreshed;
        }
        assert!(
            Instant::now() < deadline,
            "the client's row did not show 1 MB/s ± 10 % at three refreshes in 30 s: {seen:?}\n{screen}"
        );
        sleep(Duration::from_millis(200));
    }
    eprintln!("the client's SENT/s, refresh by refresh: {seen:?}");

    // Sorting: RECV/s puts the server's end first, SENT/s the client's.
    pty.keys("r");
    pty.wait_for("the server's end first (sort RECV/s)", 5, |t| {
        let rows = table(t);
        (t.contains("sort RECV/s ↓") && rows.first()?["PEER"] == client_end).then_some(())
    });
    pty.keys("s");
    pty.wait_for("the client's end first (sort SENT/s)", 5, |t| {
        let rows = table(t);
        (t.contains("sort SENT/s ↓") && rows.first()?["LOCAL"] == client_end).then_some(())
    });
    eprintln!("sorted by SENT/s:\n{}", pty.text());

    // Filter as you type: the client's port leaves the connection's two ends.
    pty.keys("/");
    pty.keys(&cport);
    pty.keys("\r");
    let rows = pty.wait_for("the filtered lines", 5, |t| {
        let rows = table(t);
        (t.contains(&format!("matching \"{cport}\"")) && rows.len() == 2).then_some(rows)
    });
    for r in &rows {
        assert!(
            r["LOCAL"] == client_end || r["PEER"] == client_end,
            "a line without the port: {r:?}"
        );
    }

    pty.keys("q");
    let (status, alternate, hidden) = pty.finish(10);
    assert!(status.success(), "top exited with {status}");
    assert!(!alternate, "q left the terminal in the alternate screen");
    assert!(!hidden, "q left the cursor hidden");
}

/// `top` survives a resize (redrawn at the new size), and Ctrl-C (a key
/// in raw mode) and SIGTERM (from outside) both end it with the terminal
/// restored.
#[test]
fn top_survives_a_resize_and_restores_the_terminal_on_ctrl_c_and_sigterm() {
    if !privileged_or_skip("top_survives_a_resize_and_restores_the_terminal_on_ctrl_c_and_sigterm")
    {
        return;
    }
    let env = TestEnv::new("top_signals");
    env.pin(&[]);
    for how in ["ctrl-c", "sigterm"] {
        let mut top = env.reader_cmd();
        top.args(["top", "--interval", "200ms"]);
        let mut pty = Pty::spawn(top, 30, 200);
        pty.wait_for("the header", 10, |t| {
            t.contains("longconn top").then_some(())
        });
        {
            let p = pty.parser.lock().unwrap();
            assert!(p.screen().alternate_screen() && p.screen().hide_cursor());
        }
        // A resize (the kernel sends SIGWINCH): redrawn at the new size.
        pty.resize(12, 100);
        pty.wait_for("the footer of a 12-line screen", 10, |t| {
            let lines: Vec<&str> = t.lines().collect();
            (lines.len() == 12 && lines[0].contains("longconn top") && lines[11].contains("q quit"))
                .then_some(())
        });
        match how {
            "ctrl-c" => pty.keys("\x03"),
            _ => {
                // SAFETY: kill on the pid of our own child.
                unsafe { libc::kill(pty.child.id() as i32, libc::SIGTERM) };
            }
        }
        let (status, alternate, hidden) = pty.finish(10);
        assert!(status.success(), "{how}: top exited with {status}");
        assert!(!alternate && !hidden, "{how}: terminal not restored");
    }
}

/// A panic while the screen is up (set off on purpose by the test hook
/// `LONGCONN_TEST_TOP_PANIC`, after the first frame) gives the terminal
/// back before the panic message is printed: main screen, cursor shown,
/// cooked mode (the message's lines start at column 0), and a failing exit.
#[test]
fn top_restores_the_terminal_on_a_panic() {
    if !privileged_or_skip("top_restores_the_terminal_on_a_panic") {
        return;
    }
    let env = TestEnv::new("top_panic");
    env.pin(&[]);
    let mut top = env.reader_cmd();
    top.args(["top", "--interval", "200ms"])
        .env("LONGCONN_TEST_TOP_PANIC", "1")
        .env_remove("RUST_BACKTRACE");
    let mut pty = Pty::spawn(top, 30, 200);
    let (status, alternate, hidden) = pty.finish(10);
    let text = pty.text();
    assert_eq!(
        status.code(),
        Some(101),
        "a panic exits 101; screen:\n{text}"
    );
    assert!(
        !alternate,
        "the panic left the alternate screen on:\n{text}"
    );
    assert!(!hidden, "the panic left the cursor hidden:\n{text}");
    // In cooked mode a newline also returns the carriage, so each line of
    // the message starts at column 0; left in raw mode, each would start
    // where the line above it ended.
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("thread 'main'") && l.contains("panicked at"))
        .unwrap_or_else(|| panic!("no panic message starting a line:\n{text}"));
    assert!(
        lines[at + 1..]
            .iter()
            .any(|l| l.starts_with("LONGCONN_TEST_TOP_PANIC is set")),
        "the message's own line does not start at column 0:\n{text}"
    );
}

/// `collect` runs 25 times while `top` refreshes every 200 ms beside it,
/// with connections that `top` saw live closing in between (so it peeks
/// their close records) and short ones it never sees: the access log has
/// every close exactly once (the generator's count, both ends), and `top`
/// did show closes, greyed (dark grey), beside a live connection's rows,
/// not greyed.
#[test]
fn collect_beside_top_loses_and_duplicates_no_close_record() {
    if !privileged_or_skip("collect_beside_top_loses_and_duplicates_no_close_record") {
        return;
    }
    let mut env = TestEnv::new("top_collect");
    env.pin(&[]);
    let mut gen = Traffic::start_in(&mut env);
    let mut top = env.reader_cmd();
    top.args(["top", "--interval", "200ms", "--sort", "age"]);
    let pty = Pty::spawn(top, 60, 250);
    pty.wait_for("the header", 10, |t| {
        t.contains("longconn top").then_some(())
    });
    let closed_shown = |t: &str| -> Option<u64> {
        let status = t.lines().next()?;
        let (_, after) = status.split_once(" live, ")?;
        after.split_whitespace().next()?.parse().ok()
    };
    // One connection open all along (live rows beside the closed ones; it
    // never closes, so it is not counted).
    gen.cmd("pair keep 4");
    let mut connections = 0u64;
    let mut seen_closed = 0;
    // Closed rows seen greyed, live rows seen not greyed.
    let mut greyed = (0, 0);
    for round in 0..25 {
        for i in 0..3 {
            gen.cmd(&format!("pair r{round}p{i} 4"));
            gen.cmd(&format!("send r{round}p{i} c2s 1000"));
        }
        connections += 3;
        sleep(Duration::from_millis(450));
        for i in 0..3 {
            gen.cmd(&format!("close r{round}p{i}"));
        }
        gen.cmd("churn 5");
        connections += 5;
        // Every 5th round, collect only after top has shown the closes.
        if round % 5 == 0 {
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if closed_shown(&pty.text()).is_some_and(|n| n > 0) {
                    seen_closed += 1;
                    let (c, l) = closed_rows_greyed(&pty);
                    greyed.0 += c;
                    greyed.1 += l;
                    break;
                }
                sleep(Duration::from_millis(10));
            }
        }
        let (status, err) = env.collect(&[]);
        assert!(status.success(), "round {round}: collect failed: {err}");
    }
    sleep(Duration::from_millis(300));
    let (status, err) = env.collect(&[]);
    assert!(status.success(), "final collect failed: {err}");
    assert!(
        seen_closed > 0,
        "top never showed a close; last screen:\n{}",
        pty.text()
    );
    assert!(
        greyed.0 > 0 && greyed.1 > 0,
        "{} closed rows seen greyed and {} live ones not: both should be",
        greyed.0,
        greyed.1
    );
    let recs = logs::csv(&logs::files(&env.out_dir(), "access.csv"));
    let closes = logs::exactly_once("access.csv beside top", &recs, &env.workload());
    assert_eq!(
        closes.len() as u64,
        2 * connections,
        "every close (both ends of {connections} connections) once"
    );
}

/// On the screen now, every CLOSED row (a connection closed since the
/// previous read) is drawn in dark grey and no ESTAB row is; how many of
/// each it checked.
fn closed_rows_greyed(pty: &Pty) -> (usize, usize) {
    // Rows as (text, greyed), read under the lock and checked after it, so
    // a failed check does not poison the emulator for its reader thread.
    let rows: Vec<(String, bool)> = {
        let p = pty.parser.lock().unwrap();
        let screen = p.screen();
        let (_, cols) = screen.size();
        screen
            .rows(0, cols)
            .enumerate()
            .map(|(r, line)| {
                let grey = screen
                    .cell(r as u16, 0)
                    .is_some_and(|c| c.fgcolor() != vt100::Color::Default);
                (line, grey)
            })
            .collect()
    };
    let (mut closed, mut live) = (0, 0);
    for (line, grey) in rows {
        if !(line.starts_with("out ") || line.starts_with("in ")) {
            continue;
        }
        match line.split_whitespace().nth(3) {
            Some("CLOSED") => {
                closed += 1;
                assert!(grey, "a closed row is not greyed: {line:?}");
            }
            Some("ESTAB") => {
                live += 1;
                assert!(!grey, "a live row is greyed: {line:?}");
            }
            _ => {}
        }
    }
    (closed, live)
}

/// `top --once` (and `top` with stdout not a terminal) prints one frame of
/// rates from two reads an interval apart. The generator writes exactly
/// 3 000 000 bytes on one connection between the reads, nothing on
/// another: rate × interval is 3 000 000 ± 2 % on both ends of the first
/// (sent by the client, received by the server) and 0 on the second.
#[test]
fn top_once_prints_rates_of_two_reads_an_interval_apart() {
    if !privileged_or_skip("top_once_prints_rates_of_two_reads_an_interval_apart") {
        return;
    }
    let mut env = TestEnv::new("top_once");
    env.pin(&["--group", "65534"]);
    let mut gen = Traffic::start_in(&mut env);
    let busy = gen.cmd("pair busy 4");
    let idle = gen.cmd("pair idle 4");
    let end = |v: &serde_json::Value, k: &str| format!("127.0.0.1:{}", v[k]);
    let (busy_c, busy_s) = (end(&busy, "client_port"), end(&busy, "server_port"));
    let idle_c = end(&idle, "client_port");
    sleep(Duration::from_millis(300));

    let child = env
        .reader_cmd()
        .args(["top", "--once", "--interval", "3s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    sleep(Duration::from_millis(1200));
    gen.cmd("send busy c2s 3000000");
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "top --once: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    let secs: f64 = text
        .strip_prefix("interval ")
        .and_then(|t| t.split('s').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no interval on the first line:\n{text}"));
    assert!((2.9..3.5).contains(&secs), "interval {secs}\n{text}");
    let rows = table(&text);
    let row = |local: &str| {
        rows.iter()
            .find(|r| r["LOCAL"] == local)
            .unwrap_or_else(|| panic!("no line for {local}:\n{text}"))
    };
    let near = |cell: &str, what: &str| {
        let bytes = rate(cell) * secs;
        assert!(
            (bytes - 3e6).abs() <= 0.02 * 3e6,
            "{what}: {cell}/s over {secs} s is {bytes} bytes, not 3 000 000\n{text}"
        );
    };
    near(&row(&busy_c)["SENT/s"], "client sent");
    near(&row(&busy_s)["RECV/s"], "server received");
    assert_eq!(row(&idle_c)["SENT/s"], "0B", "{text}");
    assert_eq!(row(&idle_c)["RECV/s"], "0B", "{text}");
    assert!(!text.contains("TREND"), "no sparkline in text:\n{text}");

    // Stdout not a terminal: the same frame without --once.
    let out = env
        .reader_cmd()
        .args(["top", "--interval", "100ms", "--view", "workloads"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success() && text.starts_with("interval 0.1"),
        "{text}"
    );
    let groups = table(&text);
    assert_eq!(groups.len(), 1, "{text}");
    assert_eq!(groups[0]["CONNS"], "4", "{text}");

    // The same access as `dump`: a member of the pins' group, without
    // root or capabilities, reads; anyone else gets dump's one line, exit 4.
    let as_user = |gid: u32| {
        longconn_tests::env::unprivileged(gid, &[], &longconn_tests::env::bin("longconn-reader"))
            .arg("--pin-dir")
            .arg(&env.pin_dir)
            .args(["top", "--once", "--interval", "100ms"])
            .output()
            .unwrap()
    };
    let o = as_user(65534);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && table(&text).len() == 4,
        "top as uid 65534 in the pins' group: {}{text}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = as_user(12345);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(
        err.starts_with("longconn-reader: permission denied opening") && err.lines().count() == 1,
        "{err}"
    );
}
