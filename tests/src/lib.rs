//! Test support for longconn's end-to-end tests: a private pin dir and child
//! cgroup per test with cleanup that runs even on panic, the real binaries,
//! a traffic generator placed inside the cgroup, and `ss -tin` as the
//! authority on what the kernel's tcp_info says.

pub mod containers;
pub mod env;
pub mod logs;
pub mod netns;
pub mod prom;
pub mod seccomp;
pub mod ss;
pub mod traffic;

pub use env::TestEnv;
