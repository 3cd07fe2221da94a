//! The C header and the Rust mirror in `longconn-common` describe the same
//! bytes and the same constants, and a one-sided change is caught.
//!
//! Structs: aya-obj extracts the BTF that clang emitted into the object (its
//! type and member accessors are crate-private in aya-obj 0.3, so the type
//! section is walked here); each shared struct's size, member count and every
//! member's offset are compared with `size_of`/`offset_of!` on the Rust side.
//! Constants: every `#define LONGCONN_*` of `longconn.h` has its Rust
//! constant with the same value, or is listed as C-only. A test compiles a
//! copy of the sources with one field or one constant changed in the header
//! alone (same compiler and flags as build.rs) and checks that it is caught.
//! No root needed.

use std::{collections::HashMap, mem::offset_of};

use longconn_common::{
    layout::{CgroupName, ListenKey, Owner, RefreshSlot, Totals, TotalsKey},
    ConnRecord, Meta, NetnsEntry,
};

/// struct name -> (size, member name -> bit offset), from raw BTF.
fn btf_structs(btf: &[u8]) -> HashMap<String, (u32, HashMap<String, u32>)> {
    let u32_at = |off: usize| u32::from_le_bytes(btf[off..off + 4].try_into().unwrap());
    assert_eq!(u16::from_le_bytes([btf[0], btf[1]]), 0xeb9f, "BTF magic");
    let hdr_len = u32_at(4) as usize;
    let (type_off, type_len) = (u32_at(8) as usize, u32_at(12) as usize);
    let str_off = u32_at(16) as usize;
    let strings = hdr_len + str_off;
    let name = |off: u32| {
        let start = strings + off as usize;
        let end = start + btf[start..].iter().position(|&b| b == 0).unwrap();
        String::from_utf8(btf[start..end].to_vec()).unwrap()
    };
    let mut out = HashMap::new();
    let (mut at, end) = (hdr_len + type_off, hdr_len + type_off + type_len);
    while at < end {
        let (name_off, info, size) = (u32_at(at), u32_at(at + 4), u32_at(at + 8));
        let (kind, vlen, kflag) = (
            (info >> 24) & 0x1f,
            (info & 0xffff) as usize,
            info >> 31 == 1,
        );
        at += 12;
        let extra = match kind {
            1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
            3 => 12,                      // ARRAY
            4 | 5 | 15 | 19 => vlen * 12, // STRUCT, UNION, DATASEC, ENUM64
            6 | 13 => vlen * 8,           // ENUM, FUNC_PROTO
            _ => 0,
        };
        if kind == 4 && name_off != 0 {
            let members = (0..vlen)
                .map(|i| {
                    let m = at + i * 12;
                    let bits = u32_at(m + 8);
                    let bits = if kflag { bits & 0xff_ffff } else { bits };
                    (name(u32_at(m)), bits)
                })
                .collect();
            out.insert(name(name_off), (size, members));
        }
        at += extra;
    }
    out
}

/// Pushes onto `$errors` each way the C struct `$c_name` (in `$structs`)
/// differs from the Rust `$ty` with these fields.
macro_rules! check_struct {
    ($errors:expr, $structs:expr, $c_name:literal, $ty:ty, [$($field:ident),+ $(,)?]) => {{
        let errors: &mut Vec<String> = $errors;
        match $structs.get($c_name) {
            None => errors.push(format!("{} not in BTF", $c_name)),
            Some((size, members)) => {
                if *size as usize != std::mem::size_of::<$ty>() {
                    errors.push(format!("size of {}: C {} bytes, Rust {}", $c_name, size, std::mem::size_of::<$ty>()));
                }
                let mut seen = 0;
                $(
                    seen += 1;
                    match members.get(stringify!($field)) {
                        None => errors.push(format!("{}.{} not in BTF", $c_name, stringify!($field))),
                        Some(c_off) if c_off % 8 != 0 => errors.push(format!("{}.{} is a bitfield", $c_name, stringify!($field))),
                        Some(c_off) if *c_off as usize / 8 != offset_of!($ty, $field) => errors.push(format!(
                            "offset of {}.{}: C {}, Rust {}", $c_name, stringify!($field), c_off / 8, offset_of!($ty, $field)
                        )),
                        Some(_) => {}
                    }
                )+
                if seen != members.len() {
                    errors.push(format!("{}: the Rust mirror lists {} fields, BTF has {}", $c_name, seen, members.len()));
                }
            }
        }
    }};
}

/// Every difference between the shared structs of `object`'s BTF and their
/// Rust mirrors.
fn layout_errors(object: &[u8]) -> Vec<String> {
    let obj = aya_obj::Object::parse(object).expect("parse the object");
    let btf = obj
        .btf
        .expect("object carries BTF (built with -g)")
        .to_bytes();
    let structs = btf_structs(&btf);
    let mut errors = Vec::new();
    check_struct!(
        &mut errors,
        structs,
        "longconn_conn",
        ConnRecord,
        [
            cookie,
            start_ns,
            update_ns,
            bytes_sent,
            bytes_received,
            packets_sent,
            packets_received,
            retransmits,
            lost_packets,
            bytes_retrans,
            cgroup_id,
            netns_cookie,
            close_seq,
            local_addr,
            remote_addr,
            srtt_us,
            min_rtt_us,
            pid,
            family,
            local_port,
            remote_port,
            state,
            direction,
            flags,
            netns_ino,
            close_cpu,
            seen,
            bound_dev_if,
            _pad,
            comm
        ]
    );
    check_struct!(
        &mut errors,
        structs,
        "longconn_totals_key",
        TotalsKey,
        [
            cgroup_id,
            netns_cookie,
            addr,
            port,
            family,
            direction,
            _pad,
            comm
        ]
    );
    check_struct!(
        &mut errors,
        structs,
        "longconn_totals",
        Totals,
        [
            seq_end,
            closed,
            failed,
            bytes_sent,
            bytes_received,
            packets_sent,
            packets_received,
            retransmits,
            lost_packets,
            seq_begin
        ]
    );
    check_struct!(
        &mut errors,
        structs,
        "longconn_listen_key",
        ListenKey,
        [netns_cookie, port, _pad]
    );
    check_struct!(
        &mut errors,
        structs,
        "longconn_owner",
        Owner,
        [pid, _pad, comm]
    );
    check_struct!(
        &mut errors,
        structs,
        "longconn_netns",
        NetnsEntry,
        [reader_netns_cookie, ino, nsid]
    );
    check_struct!(
        &mut errors,
        structs,
        "longconn_refresh_slot",
        RefreshSlot,
        [
            cookie,
            netns_cookie,
            local_addr,
            remote_addr,
            family,
            netns_ino,
            local_port,
            remote_port,
            status,
            update_ns,
            bytes_sent,
            bytes_received,
            packets_sent,
            packets_received,
            retransmits,
            lost_packets,
            bytes_retrans,
            srtt_us,
            min_rtt_us,
            state,
            flags
        ]
    );
    check_struct!(
        &mut errors,
        structs,
        "longconn_cgroup_name",
        CgroupName,
        [len, truncated, path]
    );
    check_struct!(
        &mut errors,
        structs,
        "longconn_meta",
        Meta,
        [
            magic,
            pinned_at_ns,
            cgroup_id,
            layout_version,
            record_size,
            hooks,
            _pad
        ]
    );
    errors
}

/// `#define`s of longconn.h with no Rust mirror: the include guard and
/// values only the C side uses.
const C_ONLY: &[&str] = &[
    "LONGCONN_H",
    "LONGCONN_KEEP_AGE_NS",
    "LONGCONN_REFRESH_LOOKUP_ONLY",
    "LONGCONN_REFRESH_CB_FLAGS",
];

/// Every `#define LONGCONN_*` of `header` whose Rust constant differs or is
/// missing.
fn define_errors(header: &str) -> Vec<String> {
    use longconn_common::layout as l;
    let rust: &[(&str, u64)] = &[
        ("LAYOUT_VERSION", l::LAYOUT_VERSION.into()),
        ("META_MAGIC", l::META_MAGIC),
        ("DIR_OUTBOUND", l::DIR_OUTBOUND.into()),
        ("DIR_INBOUND", l::DIR_INBOUND.into()),
        ("F_ESTABLISHED", l::F_ESTABLISHED.into()),
        ("F_CLOSED", l::F_CLOSED.into()),
        ("F_FAILED", l::F_FAILED.into()),
        ("F_RINGBUF_MISS", l::F_RINGBUF_MISS.into()),
        ("F_TOTALS_MISS", l::F_TOTALS_MISS.into()),
        ("HOOK_TCP_PROBE", l::HOOK_TCP_PROBE.into()),
        ("HOOK_RCV_SPACE", l::HOOK_RCV_SPACE.into()),
        ("HOOK_EGRESS", l::HOOK_EGRESS.into()),
        ("HOOK_INGRESS", l::HOOK_INGRESS.into()),
        ("HOOK_ACK", l::HOOK_ACK.into()),
        ("CTR_RINGBUF_FULL", l::CTR_RINGBUF_FULL.into()),
        ("CTR_MAP_FULL", l::CTR_MAP_FULL.into()),
        ("CTR_MAP_ERROR", l::CTR_MAP_ERROR.into()),
        ("CTR_CLOSE_UNTRACKED", l::CTR_CLOSE_UNTRACKED.into()),
        ("CTR_TRACKED", l::CTR_TRACKED.into()),
        ("CTR_CLOSE_UNLOGGED", l::CTR_CLOSE_UNLOGGED.into()),
        ("CTR_TOTALS_FULL", l::CTR_TOTALS_FULL.into()),
        ("CTR_CLOSE_LOST", l::CTR_CLOSE_LOST.into()),
        ("CTR_MAX", l::CTR_MAX.into()),
        ("REFRESH_CHUNK", l::REFRESH_CHUNK.into()),
        ("CGROUP_PATH_MAX", l::CGROUP_PATH_MAX.into()),
        ("REFRESH_OK", l::REFRESH_OK.into()),
        ("REFRESH_GONE", l::REFRESH_GONE.into()),
        ("REFRESH_CLOSED", l::REFRESH_CLOSED.into()),
        ("REFRESH_NOT_FOUND", l::REFRESH_NOT_FOUND.into()),
        ("REFRESH_NETNS_UNKNOWN", l::REFRESH_NETNS_UNKNOWN.into()),
        ("SLOT_MARK_SEEN", l::SLOT_MARK_SEEN.into()),
        ("REFRESH_CB_COUNT", l::REFRESH_CB_COUNT as u64),
        ("REFRESH_CB_NETNS_LO", l::REFRESH_CB_NETNS_LO as u64),
        ("REFRESH_CB_NETNS_HI", l::REFRESH_CB_NETNS_HI as u64),
        (
            "REFRESH_CB_OUT_NOT_FOUND",
            l::REFRESH_CB_OUT_NOT_FOUND as u64,
        ),
        (
            "REFRESH_CB_OUT_NETNS_UNKNOWN",
            l::REFRESH_CB_OUT_NETNS_UNKNOWN as u64,
        ),
    ];
    let mut errors = Vec::new();
    for line in header.lines() {
        let mut words = line.split_whitespace();
        let (Some("#define"), Some(name)) = (words.next(), words.next()) else {
            continue;
        };
        let Some(short) = name.strip_prefix("LONGCONN_") else {
            continue;
        };
        if C_ONLY.contains(&name) {
            continue;
        }
        let text = words.next().unwrap_or("").trim_end_matches("ULL");
        let value = match text.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => text.parse(),
        };
        match (rust.iter().find(|(n, _)| *n == short), value) {
            (None, _) => errors.push(format!(
                "{name} has no Rust constant in longconn_common::layout (add one, or list it in C_ONLY)"
            )),
            (_, Err(_)) => errors.push(format!("{name}: cannot read the value {text:?}")),
            (Some((_, r)), Ok(c)) if *r != c => {
                errors.push(format!("{name}: C {c:#x}, Rust {r:#x}"))
            }
            _ => {}
        }
    }
    errors
}

#[test]
fn rust_mirror_matches_compiled_btf() {
    let errors = layout_errors(longconn_bpf::OBJECT);
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn constants_match_header() {
    let errors = define_errors(include_str!("../include/longconn.h"));
    assert!(errors.is_empty(), "{errors:#?}");
}

/// The object compiled from a copy of the sources whose header had `from`
/// replaced by `to` (once), with build.rs's compiler and flags.
fn compiled_with(from: &str, to: &str) -> (String, Vec<u8>) {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().expect("temp dir");
    let header = std::fs::read_to_string(format!("{root}/include/longconn.h")).unwrap();
    assert_eq!(
        header.matches(from).count(),
        1,
        "{from:?} once in longconn.h"
    );
    let changed = header.replacen(from, to, 1);
    std::fs::create_dir(dir.path().join("include")).unwrap();
    std::fs::write(dir.path().join("include/longconn.h"), &changed).unwrap();
    std::fs::copy(
        format!("{root}/include/vmlinux.h"),
        dir.path().join("include/vmlinux.h"),
    )
    .unwrap();
    let object = dir.path().join("changed.o");
    let status = std::process::Command::new(env!("LONGCONN_BPF_CLANG"))
        .args(env!("LONGCONN_BPF_CFLAGS").split(' '))
        .arg("-Iinclude")
        .arg("-c")
        .arg(format!("{root}/src/longconn.bpf.c"))
        .arg("-o")
        .arg(&object)
        .current_dir(dir.path())
        .status()
        .expect("run the BPF compiler");
    assert!(status.success(), "compiling the changed copy failed");
    (changed, std::fs::read(&object).unwrap())
}

/// A one-field change in longconn.h alone (srtt_us widened to 64 bits) is
/// caught: the compiled struct no longer matches the Rust mirror.
#[test]
fn a_one_field_change_in_the_header_alone_is_caught() {
    let (_, object) = compiled_with(
        "\t__u32 srtt_us;    /* smoothed RTT",
        "\t__u64 srtt_us;    /* smoothed RTT",
    );
    let errors = layout_errors(&object);
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("offset of longconn_conn.")),
        "{errors:#?}"
    );
}

/// A constant changed in longconn.h alone is caught.
#[test]
fn a_constant_changed_in_the_header_alone_is_caught() {
    let header = include_str!("../include/longconn.h").replacen(
        "#define LONGCONN_HOOK_ACK 0x10",
        "#define LONGCONN_HOOK_ACK 0x20",
        1,
    );
    let errors = define_errors(&header);
    assert_eq!(errors, ["LONGCONN_HOOK_ACK: C 0x20, Rust 0x10"]);
}

/// Every program the hooks table names (and the refresh program) is a
/// function of the object: the table and the C agree on names.
#[test]
fn hook_table_programs_are_in_the_object() {
    let obj = aya_obj::Object::parse(longconn_bpf::OBJECT).expect("parse embedded object");
    let names = longconn_common::hooks::HOOKS
        .iter()
        .filter_map(|h| h.program)
        .chain([longconn_common::hooks::REFRESH_PROGRAM]);
    for name in names {
        assert!(
            obj.programs.contains_key(name),
            "{name} is in longconn_common::hooks but not in the object (programs: {:?})",
            obj.programs.keys().collect::<Vec<_>>()
        );
    }
}
