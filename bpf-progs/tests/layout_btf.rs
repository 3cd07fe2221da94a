//! The C header and the Rust mirror in `longconn-common` describe the same bytes.
//!
//! Reads the BTF that clang emitted into the embedded object (through aya-obj),
//! walks each shared struct and compares every member's offset and the struct
//! size with `offset_of!`/`size_of` on the Rust side. No root needed.

use std::{collections::HashMap, mem::offset_of};

use longconn_common::{
    layout::{ListenKey, Owner, RefreshSlot, Totals, TotalsKey},
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

macro_rules! check_struct {
    ($structs:expr, $c_name:literal, $ty:ty, [$($field:ident),+ $(,)?]) => {{
        let (size, members) = $structs.get($c_name).unwrap_or_else(|| panic!("{} not in BTF", $c_name));
        assert_eq!(*size as usize, std::mem::size_of::<$ty>(), "size of {}", $c_name);
        let mut seen = 0;
        $(
            let c_off = members.get(stringify!($field)).unwrap_or_else(|| panic!("{}.{} not in BTF", $c_name, stringify!($field)));
            assert_eq!(*c_off % 8, 0, "{}.{} is a bitfield", $c_name, stringify!($field));
            assert_eq!(*c_off as usize / 8, offset_of!($ty, $field), "offset of {}.{}", $c_name, stringify!($field));
            seen += 1;
        )+
        assert_eq!(seen, members.len(), "{}: the Rust mirror lists {} fields, BTF has {}", $c_name, seen, members.len());
    }};
}

#[test]
fn rust_mirror_matches_compiled_btf() {
    let obj = aya_obj::Object::parse(longconn_bpf::OBJECT).expect("parse embedded object");
    let btf = obj
        .btf
        .expect("object carries BTF (built with -g)")
        .to_bytes();
    let structs = btf_structs(&btf);
    check_struct!(
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
        structs,
        "longconn_listen_key",
        ListenKey,
        [netns_cookie, port, _pad]
    );
    check_struct!(structs, "longconn_owner", Owner, [pid, _pad, comm]);
    check_struct!(
        structs,
        "longconn_netns",
        NetnsEntry,
        [reader_netns_cookie, ino, nsid]
    );
    check_struct!(
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
}

#[test]
fn layout_version_matches_header() {
    let header = include_str!("../include/longconn.h");
    let line = header
        .lines()
        .find(|l| l.starts_with("#define LONGCONN_LAYOUT_VERSION"))
        .unwrap();
    let version: u32 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert_eq!(version, longconn_common::layout::LAYOUT_VERSION);
}
