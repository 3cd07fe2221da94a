//! Driving `longconn-traffic` (see its module doc for the commands).

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, ChildStdout, Command},
};

use crate::env::TestEnv;

pub struct Traffic {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    child: Child,
}

impl Traffic {
    /// Starts the generator inside `env`'s cgroup.
    pub fn start_in(env: &mut TestEnv) -> Self {
        let cg = env.cgroup.clone();
        Self::start_in_cgroup(env, &cg)
    }

    /// Starts the generator inside cgroup `cg` (`env`'s or a child of it).
    pub fn start_in_cgroup(env: &mut TestEnv, cg: &std::path::Path) -> Self {
        env.spawn_in(cg, Command::new(crate::env::bin("longconn-traffic")));
        Self::from_child(env.take_child())
    }

    /// Starts the generator outside any test cgroup (where the test runs).
    pub fn start_outside() -> Self {
        let child = Command::new(crate::env::bin("longconn-traffic"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn traffic");
        Self::from_child(child)
    }

    /// Drives an already spawned generator (stdin and stdout piped).
    pub fn from_child(mut child: Child) -> Self {
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Self {
            stdin,
            stdout,
            child,
        }
    }

    /// Sends one command and returns its JSON answer; panics on {"error"}.
    pub fn cmd(&mut self, line: &str) -> serde_json::Value {
        writeln!(self.stdin, "{line}").expect("write to traffic");
        self.stdin.flush().expect("flush");
        let mut answer = String::new();
        self.stdout
            .read_line(&mut answer)
            .expect("read from traffic");
        let v: serde_json::Value = serde_json::from_str(&answer)
            .unwrap_or_else(|e| panic!("traffic answered {answer:?} to {line:?}: {e}"));
        assert!(v.get("error").is_none(), "traffic {line:?}: {v}");
        v
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "exit");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
