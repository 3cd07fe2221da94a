//! Compiles the C eBPF sources into one object that the crate embeds.
//!
//! The object is built with Debian's clang-19 (override with `LONGCONN_CLANG`)
//! and libbpf's headers; CO-RE relocations make it portable across kernels.

use std::{env, path::PathBuf, process::Command};

/// Every C source; each becomes `<stem>.o` in OUT_DIR.
const SOURCES: &[&str] = &["src/longconn.bpf.c"];
/// Files the sources include; a change to any of them rebuilds.
const HEADERS: &[&str] = &["include/longconn.h", "include/vmlinux.h"];

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = env::var("LONGCONN_CLANG").unwrap_or_else(|_| "clang-19".to_owned());
    let arch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86",
        Ok("aarch64") => "arm64",
        Ok("riscv64") => "riscv",
        Ok("powerpc64") => "powerpc",
        Ok("s390x") => "s390",
        Ok(other) => panic!("longconn-bpf: unsupported target architecture {other}"),
        Err(_) => panic!("longconn-bpf: CARGO_CFG_TARGET_ARCH is not set"),
    };
    let flags = [
        "-g".to_owned(),
        "-O2".into(),
        "-target".into(),
        "bpf".into(),
        "-Wall".into(),
        "-Werror".into(),
        format!("-D__TARGET_ARCH_{arch}"),
    ];
    // The same compiler and flags for the layout test, which compiles a
    // changed copy of the sources (bpf-progs/tests/layout_btf.rs).
    println!("cargo:rustc-env=LONGCONN_BPF_CLANG={clang}");
    println!("cargo:rustc-env=LONGCONN_BPF_CFLAGS={}", flags.join(" "));
    println!("cargo:rerun-if-env-changed=LONGCONN_CLANG");
    for header in HEADERS {
        println!("cargo:rerun-if-changed={header}");
    }
    for source in SOURCES {
        println!("cargo:rerun-if-changed={source}");
        let stem = source
            .rsplit('/')
            .next()
            .and_then(|name| name.strip_suffix(".bpf.c"))
            .expect("sources are named *.bpf.c");
        let object = out_dir.join(format!("{stem}.bpf.o"));
        let status = Command::new(&clang)
            .args(&flags)
            .args(["-Iinclude", "-c", source, "-o"])
            .arg(&object)
            .status()
            .unwrap_or_else(|e| {
                panic!("longconn-bpf: cannot run {clang}: {e}; install clang-19 (apt-get install clang-19) or set LONGCONN_CLANG")
            });
        assert!(status.success(), "longconn-bpf: {clang} failed on {source}");
    }
}
