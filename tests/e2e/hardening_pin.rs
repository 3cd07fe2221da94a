//! Issue 12, pin tool: unprivileged detach/status, re-pin with other options,
//! messages that name the real cause, foreign objects under longconn's pin
//! names, and modes independent of the umask.

use std::{
    fs,
    os::unix::{
        fs::{MetadataExt, PermissionsExt},
        process::CommandExt,
    },
    path::{Path, PathBuf},
    process::Command,
};

use longconn_tests::{env::privileged_or_skip, TestEnv};

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(cmd: &mut Command) -> Run {
    let o = cmd.output().expect("run");
    Run {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// `longconn-pin --pin-dir D ARGS` as uid 65534, primary gid 4242 and
/// supplementary group 65534 (the group the pins were given), no capabilities.
fn as_group_member(env: &TestEnv, args: &[&str]) -> Run {
    let mut c = longconn_tests::env::unprivileged(
        4242,
        &[65534],
        &longconn_tests::env::bin("longconn-pin"),
    );
    c.arg("--pin-dir").arg(&env.pin_dir).args(args);
    run(&mut c)
}

/// Every `longconn-pin …` command a message advises carries `--pin-dir D`.
fn advice_names_pin_dir(text: &str, pin_dir: &Path) {
    let want = format!("--pin-dir {}", pin_dir.display());
    for (i, _) in text.match_indices("`longconn-pin ") {
        let cmd = &text[i + 1..];
        let cmd = &cmd[..cmd.find('`').unwrap_or(cmd.len())];
        assert!(cmd.contains(&want), "advice {cmd:?} lacks {want}: {text}");
    }
}

#[test]
fn group_member_cannot_detach_and_status_says_links_need_root() {
    if !privileged_or_skip("group_member_cannot_detach_and_status_says_links_need_root") {
        return;
    }
    let env = TestEnv::new("hpin_unpriv");
    env.pin(&["--group", "65534"]);

    let r = as_group_member(&env, &["detach"]);
    assert_eq!(
        r.code,
        Some(4),
        "detach as a group member: {}{}",
        r.stdout,
        r.stderr
    );
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("needs root"), "{}", r.stderr);
    assert!(!r.stdout.contains("removed"), "{}", r.stdout);
    advice_names_pin_dir(&r.stderr, &env.pin_dir);
    assert!(env.pin_dir.join("meta").exists() && env.pin_dir.join("links/sockops").exists());

    let r = as_group_member(&env, &["status"]);
    assert_eq!(
        r.code,
        Some(4),
        "status as a group member: {}{}",
        r.stdout,
        r.stderr
    );
    assert!(
        r.stdout
            .contains("cannot inspect links: needs root/CAP_SYS_ADMIN"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("MISSING"), "{}", r.stdout);
    assert!(r.stdout.contains("tracked of 131072"), "{}", r.stdout);
    advice_names_pin_dir(&format!("{}{}", r.stdout, r.stderr), &env.pin_dir);

    // As root the links are inspected; a link really missing gets advice with --pin-dir.
    let r = run(env.pin_cmd().arg("status"));
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("attached (pinned)"), "{}", r.stdout);
    fs::remove_file(env.pin_dir.join("links/sockops")).unwrap();
    let r = run(env.pin_cmd().arg("status"));
    assert_eq!(r.code, Some(1), "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("MISSING"), "{}", r.stdout);
    assert!(
        r.stderr.contains("`longconn-pin detach --pin-dir "),
        "{}",
        r.stderr
    );
    advice_names_pin_dir(&r.stderr, &env.pin_dir);
    let maps = longconn_common::pins::MAPS.len();
    assert!(
        r.stdout.contains(&format!("maps:         {maps} pinned\n")),
        "{}",
        r.stdout
    );
    // A map pin removed by hand is named, and the pin dir is unhealthy.
    fs::remove_file(env.pin_dir.join("netns")).unwrap();
    let r = run(env.pin_cmd().arg("status"));
    assert_eq!(r.code, Some(1), "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(&format!(
            "maps:         {} of {maps} pinned; MISSING: netns\n",
            maps - 1
        )),
        "{}",
        r.stdout
    );

    let r = run(env.pin_cmd().arg("detach"));
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    assert!(!env.pin_dir.exists());
}

#[test]
fn repin_with_other_options_says_what_differs_and_how_to_apply_it() {
    if !privileged_or_skip("repin_with_other_options_says_what_differs_and_how_to_apply_it") {
        return;
    }
    let env = TestEnv::new("hpin_repin");
    env.pin(&[]);
    let repin = |extra: &[&str]| run(env.pin_cmd().arg("--cgroup").arg(&env.cgroup).args(extra));
    let r = repin(&[]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout.contains("nothing to do"), "{}", r.stdout);

    for (extra, diff) in [
        (
            &["--max-connections", "1000"][..],
            "--max-connections: pinned 131072, requested 1000",
        ),
        (
            &["--ringbuf-bytes", "4MiB"][..],
            "--ringbuf-bytes: pinned 8MiB, requested 4MiB",
        ),
        (
            &["--group", "65534"][..],
            "--group: pinned none (root only), requested ",
        ),
        (&["--hooks", "live"][..], "--hooks: pinned "),
    ] {
        let r = repin(extra);
        assert_eq!(r.code, Some(5), "{extra:?}: {}{}", r.stdout, r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
        assert!(r.stderr.contains(diff), "{extra:?}: {}", r.stderr);
        assert!(!r.stdout.contains("nothing to do"), "{}", r.stdout);
        advice_names_pin_dir(&r.stderr, &env.pin_dir);
    }
    // Another cgroup.
    let child = env.child_cgroup("other");
    let r = run(env.pin_cmd().arg("--cgroup").arg(&child));
    assert_eq!(r.code, Some(5), "{}", r.stderr);
    assert!(r.stderr.contains("--cgroup: pinned "), "{}", r.stderr);

    // The advice works as given: run it and the new sizes are pinned.
    let r = repin(&["--max-connections", "1000", "--ringbuf-bytes", "4MiB"]);
    assert_eq!(r.code, Some(5));
    let advice = r.stderr.rsplit("`longconn-pin detach").next().unwrap();
    let advice = format!(
        "longconn-pin detach{}",
        advice.trim_end().trim_end_matches('`')
    );
    let bin = longconn_tests::env::bin("longconn-pin");
    let shell = advice.replace("longconn-pin ", &format!("{} ", bin.display()));
    let o = Command::new("sh").arg("-c").arg(&shell).output().unwrap();
    assert!(
        o.status.success(),
        "{shell}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r = run(env.pin_cmd().arg("status"));
    assert!(r.stdout.contains("tracked of 1000 "), "{}", r.stdout);
    assert!(r.stdout.contains("of 4096 KiB"), "{}", r.stdout);
    // Pinned with --group; the same command is idempotent, without it is not.
    let r = run(env.pin_cmd().arg("detach"));
    assert_eq!(r.code, Some(0));
    env.pin(&["--group", "65534"]);
    let r = repin(&["--group", "65534"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let r = repin(&[]);
    assert_eq!(r.code, Some(5), "{}", r.stderr);
    assert!(
        r.stderr.contains("(gid 65534), requested none (root only)"),
        "{}",
        r.stderr
    );
}

#[test]
fn messages_name_the_real_cause() {
    if !privileged_or_skip("messages_name_the_real_cause") {
        return;
    }
    let env = TestEnv::new("hpin_msgs");
    let pin = |pin_dir: &Path, extra: &[&str]| {
        run(Command::new(longconn_tests::env::bin("longconn-pin"))
            .arg("--pin-dir")
            .arg(pin_dir)
            .arg("--cgroup")
            .arg(&env.cgroup)
            .args(extra))
    };
    let r = pin(&env.pin_dir, &["--max-connections", "4294967295"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("from 1 to 16777216"), "{}", r.stderr);
    assert!(!r.stderr.contains("BTF"), "{}", r.stderr);

    let dotted = PathBuf::from(format!("{}.v2", env.pin_dir.display()));
    let r = pin(&dotted, &[]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(
        r.stderr.contains("bpffs refuses names containing a dot"),
        "{}",
        r.stderr
    );

    let missing = PathBuf::from(format!("{}_missing/sub", env.pin_dir.display()));
    let r = pin(&missing, &[]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("does not exist"), "{}", r.stderr);
    assert!(!r.stderr.contains("not a bpf filesystem"), "{}", r.stderr);
    assert!(!missing.parent().unwrap().exists());

    let r = pin(&env.pin_dir, &["--hooks", "live,none"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(
        r.stderr.contains("presets cannot be combined"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("default, none, live"), "{}", r.stderr);
    assert!(!r.stderr.contains("unknown hook"), "{}", r.stderr);
    assert!(!env.pin_dir.exists() && !dotted.exists());

    // A map vanishing under a reader (detach mid-collect): the OS error once.
    env.pin(&[]);
    fs::remove_file(env.pin_dir.join("closed_conns")).unwrap();
    let r = run(env.reader_cmd().arg("dump"));
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("closed_conns"), "{}", r.stderr);
    assert_eq!(r.stderr.matches("os error 2").count(), 1, "{}", r.stderr);
}

/// Removes whatever a test pinned by hand when it ends (even on panic).
struct RemoveAll(PathBuf);

impl Drop for RemoveAll {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn detach_leaves_foreign_objects_under_longconns_names() {
    if !privileged_or_skip("detach_leaves_foreign_objects_under_longconns_names") {
        return;
    }
    let env = TestEnv::new("hpin_foreign");
    env.pin(&[]);
    let _cleanup = RemoveAll(env.pin_dir.clone());
    let bpftool = |args: &[&str]| {
        let o = Command::new("bpftool").args(args).output().unwrap();
        assert!(
            o.status.success(),
            "bpftool {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    // Someone else's maps pinned as `meta` (right type and name, no magic)
    // and as `counters` (another type and name).
    let meta = env.pin_dir.join("meta");
    let counters = env.pin_dir.join("counters");
    fs::remove_file(&meta).unwrap();
    fs::remove_file(&counters).unwrap();
    let (m, c) = (meta.to_str().unwrap(), counters.to_str().unwrap());
    longconn_tests::env::pin_foreign_meta(&meta);
    bpftool(&[
        "map", "create", c, "type", "hash", "key", "4", "value", "8", "entries", "4", "name",
        "intruder",
    ]);

    let r = run(env.pin_cmd().arg("detach"));
    assert_eq!(r.code, Some(1), "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("not longconn's"), "{}", r.stderr);
    assert!(
        r.stderr.contains(m) && r.stderr.contains("magic"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(c) && r.stderr.contains("\"intruder\""),
        "{}",
        r.stderr
    );
    assert!(meta.exists() && counters.exists(), "foreign pins removed");
    assert!(!env.pin_dir.join("map_of_tcp_conns").exists());
    assert!(!env.pin_dir.join("links").exists());
    assert!(
        // sockops, tp_cgroup_mkdir and the refresh program.
        r.stdout.contains("removed 3 links and programs and "),
        "{}",
        r.stdout
    );
    let mut left: Vec<String> = fs::read_dir(&env.pin_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["counters", "meta"], "only the foreign pins are left");

    // Only foreign objects left: detach touches none of them.
    let r = run(env.pin_cmd().arg("detach"));
    assert_eq!(r.code, Some(6), "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("holds no longconn pins") && r.stderr.contains(m),
        "{}",
        r.stderr
    );
    assert!(meta.exists() && counters.exists());
}

#[test]
fn pins_get_explicit_modes_whatever_the_umask() {
    if !privileged_or_skip("pins_get_explicit_modes_whatever_the_umask") {
        return;
    }
    for (mask, group) in [(0o000, true), (0o777, true), (0o000, false), (0o077, false)] {
        let env = TestEnv::new("hpin_umask");
        let mut c = env.pin_cmd();
        c.arg("--cgroup").arg(&env.cgroup);
        if group {
            c.args(["--group", "65534"]);
        }
        // SAFETY: umask is async-signal-safe.
        unsafe {
            c.pre_exec(move || {
                libc::umask(mask);
                Ok(())
            });
        }
        let r = run(&mut c);
        assert_eq!(r.code, Some(0), "umask {mask:o}: {}", r.stderr);
        let (dir_mode, pin_mode, gid) = if group {
            (0o750, 0o660, 65534)
        } else {
            (0o700, 0o600, 0)
        };
        let check = |p: &Path, mode: u32, gid: u32| {
            let m = fs::metadata(p).unwrap();
            assert_eq!(
                (m.permissions().mode() & 0o7777, m.gid()),
                (mode, gid),
                "{} under umask {mask:o}",
                p.display()
            );
        };
        check(&env.pin_dir, dir_mode, gid);
        // meta: read-only for the group (issue 22 item G).
        check(&env.pin_dir.join("meta"), pin_mode & 0o640, gid);
        for name in [
            "map_of_tcp_conns",
            "closed_conns",
            "netns",
            "counters",
            "refresh_conns",
            "refresh_work",
            "closed_overflow",
            "closed_overflow_short",
            "close_totals",
        ] {
            check(&env.pin_dir.join(name), pin_mode, gid);
        }
        check(&env.pin_dir.join("links"), 0o700, 0);
        check(&env.pin_dir.join("links/sockops"), 0o600, 0);
    }
}
