//! One integration-test binary: every test drives the real `longconn-pin` and
//! `longconn-reader` on this kernel, with its own pin dir and cgroup.

mod bound;
mod busy;
mod churn;
mod collect;
mod dashboards;
mod errors;
mod faults;
mod foundation;
mod hardening_cli;
mod hardening_pin;
mod hardening_state;
mod identity;
mod kubernetes;
mod otlp;
mod package;
mod peers;
mod promises;
mod reliability;
mod runtime_names;
mod soak;
mod top;
mod transparency;
