//! The compiled eBPF object, embedded so that `longconn-pin` is one file to ship.
//!
//! `build.rs` compiles `src/*.bpf.c`; this crate only exposes the bytes.

/// ELF object holding every longconn program and map (8-byte aligned for aya).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/longconn.bpf.o"));

/// Program names in the object, as `SEC()` functions.
pub mod programs {
    pub const SOCKOPS: &str = "longconn_sockops";
    pub const EGRESS: &str = "longconn_egress";
    pub const INGRESS: &str = "longconn_ingress";
    pub const TCP_PROBE: &str = "longconn_tcp_probe";
    pub const RCV_SPACE: &str = "longconn_rcv_space";
    pub const REFRESH: &str = "longconn_refresh";
}
