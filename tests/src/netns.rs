//! `Netns`: a private network namespace for one test (loopback up), deleted
//! on drop even when the test panics. Names carry the test's tag, the pid and
//! a sequence number, so parallel tests never share one.

use std::{
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::{env::bin, traffic::Traffic, TestEnv};

static SEQ: AtomicU32 = AtomicU32::new(0);

pub struct Netns {
    pub name: String,
}

impl Netns {
    /// `ip netns add lc-TAG-PID-N` with loopback up.
    pub fn new(tag: &str) -> Self {
        let name = format!(
            "lc-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("run ip netns add");
        assert!(st.success(), "ip netns add {name}");
        let ns = Self { name };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs `argv` inside the namespace, asserting success.
    pub fn run(&self, argv: &[&str]) {
        let st = self.cmd(argv).status().expect("run ip netns exec");
        assert!(st.success(), "{argv:?} in {}", self.name);
    }

    /// `ip netns exec NAME ARGV...`, to be spawned by the caller.
    pub fn cmd(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(argv);
        c
    }

    /// The bind mount `ip netns` keeps for it.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `longconn-traffic` inside this namespace and inside the test's cgroup.
    pub fn traffic(&self, env: &mut TestEnv) -> Traffic {
        let mut c = self.cmd(&[]);
        c.arg(bin("longconn-traffic"));
        env.spawn_in_cgroup(c);
        Traffic::from_child(env.take_child())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
