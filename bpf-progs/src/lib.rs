//! The compiled eBPF object, embedded so that `longconn-pin` is one file to ship.
//!
//! `build.rs` compiles `src/*.bpf.c`; this crate only exposes the bytes.

/// ELF object holding every longconn program and map (8-byte aligned for aya).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/longconn.bpf.o"));

// The programs' names in the object are in `longconn_common::hooks` (one
// table of hooks); `tests` check each is in the object.
