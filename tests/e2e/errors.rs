//! Bad input and missing prerequisites give one clear line and a meaningful exit code.

use std::{os::unix::process::CommandExt, process::Command};

use longconn_tests::{env::privileged_or_skip, TestEnv};

/// Runs `cmd`, expects exit `code` and a single stderr line containing every `needle`.
fn expect_error(mut cmd: Command, code: i32, needles: &[&str]) {
    let out = cmd.output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit code of {cmd:?}; stderr: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr, got: {stderr}");
    for n in needles {
        assert!(
            lines[0].contains(n),
            "stderr of {cmd:?} lacks {n:?}: {stderr}"
        );
    }
}

/// Runs as uid/gid 65534 (std drops supplementary groups when root changes uid).
fn as_nobody(mut cmd: Command) -> Command {
    cmd.uid(65534).gid(65534);
    cmd
}

#[test]
fn errors_are_one_clear_line_with_meaningful_exit_codes() {
    if !privileged_or_skip("errors_are_one_clear_line_with_meaningful_exit_codes") {
        return;
    }
    let env = TestEnv::new("errors");
    let pin_dir = env.pin_dir.display().to_string();

    // Reader before pin.
    let mut c = env.reader_cmd();
    c.arg("dump");
    expect_error(c, 6, &["no longconn pins in", &pin_dir, "longconn-pin"]);

    // Cgroup that does not exist, and one that is not cgroup v2.
    let mut c = env.pin_cmd();
    c.args(["--cgroup", "/nonexistent/longconn"]);
    expect_error(
        c,
        2,
        &[
            "--cgroup /nonexistent/longconn",
            "no such directory",
            "cgroup v2 is mounted at",
        ],
    );
    let mut c = env.pin_cmd();
    c.args(["--cgroup", "/tmp"]);
    expect_error(c, 2, &["--cgroup /tmp", "not a cgroup v2 directory"]);
    assert!(!env.pin_dir.exists(), "a failed pin left {pin_dir} behind");

    // No privileges: pin as nobody.
    let mut c = env.pin_cmd();
    c.arg("--cgroup").arg(&env.cgroup);
    expect_error(as_nobody(c), 4, &["needs root", "CAP_BPF"]);

    // Pinned: reader as nobody cannot open the pins.
    env.pin(&[]);
    let mut c = env.reader_cmd();
    c.arg("dump");
    expect_error(as_nobody(c), 4, &["permission denied", &pin_dir]);

    // A pin dir of another layout version: rewrite meta's version to 999.
    let meta = env.pin_dir.join("meta");
    let mut value: Vec<String> = Vec::new();
    let out = Command::new("bpftool")
        .args(["-j", "map", "lookup", "pinned"])
        .arg(&meta)
        .args(["key", "0", "0", "0", "0"])
        .output()
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("bpftool map lookup json");
    let bytes: Vec<u8> = v["value"]
        .as_array()
        .expect("value bytes")
        .iter()
        .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
        .collect();
    let mut bytes = bytes;
    bytes[24..28].copy_from_slice(&999u32.to_ne_bytes()); // layout_version
    value.extend(bytes.iter().map(|b| b.to_string()));
    // meta is frozen once pinned: another layout's meta is a map of its own.
    std::fs::remove_file(&meta).unwrap();
    longconn_tests::env::pin_foreign_meta(&meta);
    let st = Command::new("bpftool")
        .args(["map", "update", "pinned"])
        .arg(&meta)
        .args(["key", "0", "0", "0", "0", "value"])
        .args(&value)
        .status()
        .unwrap();
    assert!(st.success());
    let mut c = env.reader_cmd();
    c.arg("dump");
    expect_error(
        c,
        6,
        &[
            "another longconn layout",
            "version 999",
            "longconn-pin detach",
        ],
    );
    let mut c = env.pin_cmd();
    c.arg("--cgroup").arg(&env.cgroup);
    expect_error(c, 6, &["another longconn layout"]);
    // detach is the remedy and works on a foreign layout.
    let out = env.pin_cmd().arg("detach").output().unwrap();
    assert!(out.status.success());
    assert!(!env.pin_dir.exists());
}

#[test]
fn pin_twice_is_harmless_and_detach_is_idempotent() {
    if !privileged_or_skip("pin_twice_is_harmless_and_detach_is_idempotent") {
        return;
    }
    let env = TestEnv::new("twice");
    env.pin(&[]);
    let second = env.pin(&[]);
    assert!(String::from_utf8_lossy(&second.stdout).contains("already pinned"));
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(&env.cgroup)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v.as_array().map(Vec::len),
        Some(1),
        "exactly one sockops attached (the default adds no per-segment hook): {v}"
    );
    let status = env.pin_cmd().arg("status").output().unwrap();
    assert!(status.status.success());
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains(&env.cgroup.display().to_string()),
        "status names the cgroup: {text}"
    );
    assert!(text.contains("0 tracked of 131072"), "{text}");
    for _ in 0..2 {
        let out = env.pin_cmd().arg("detach").output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(!env.pin_dir.exists());
}

/// Output into a pipe nobody reads (`status | head -1` once head is gone)
/// ends each command quietly, by SIGPIPE as `ss` or `cat` do: never a panic.
#[test]
fn a_closed_stdout_ends_quietly() {
    if !privileged_or_skip("a_closed_stdout_ends_quietly") {
        return;
    }
    let env = TestEnv::new("sigpipe");
    env.pin(&[]);
    let mut fds = [0; 2];
    // SAFETY: pipe fills the two-int array it is given.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the read end is ours and closed once; the write end is
    // handed to each child and closed by the OwnedFd below.
    unsafe { libc::close(fds[0]) };
    // SAFETY: fds[1] is an open fd we own from here on.
    let write_end =
        unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fds[1]) };
    for mut cmd in [
        {
            let mut c = env.pin_cmd();
            c.arg("status");
            c
        },
        {
            let mut c = env.reader_cmd();
            c.args(["dump", "--json"]);
            c
        },
    ] {
        let out = cmd
            .stdout(write_end.try_clone().unwrap())
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{cmd:?}: {err}");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&out.status),
            Some(libc::SIGPIPE),
            "{cmd:?}: {err}"
        );
    }
}
