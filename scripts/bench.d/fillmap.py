#!/usr/bin/env python3
"""Fill a pinned longconn map with synthetic established connections.

    fillmap.py PIN_DIR COUNT [--cgroup-id ID] [--age-s SECONDS] [--batch N]

Writes COUNT records (struct longconn_conn, bpf-progs/include/longconn.h) into
PIN_DIR/map_of_tcp_conns with BPF_MAP_UPDATE_BATCH: family AF_INET, state
ESTABLISHED, flags ESTABLISHED, half outbound and half inbound, start_ns
--age-s in the past (so every record is a long connection), cookies from 2^62
up (no real socket cookie gets that high). Outbound records go to 200
remote services, inbound ones arrive on 8 local ports, so per-service series
stay at a realistic count. Checks the pinned meta first: layout version 1 to 5 with a 184-byte record,
7 with a 200-byte one (close_seq after netns_cookie; close_cpu and seen
after netns_ino) or 8 with a 208-byte one (bound_dev_if and a pad after
seen), the layouts this file encodes.
Prints one JSON line: {"filled": N, "seconds": S}.
"""

import argparse
import ctypes
import json
import os
import socket
import struct
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bpfsys  # noqa: E402

META_MAGIC = 0x6C636F6E6E6D6574
# struct longconn_meta: magic, pinned_at_ns, cgroup_id (u64); layout_version,
# record_size, hooks, _pad (u32)
META = struct.Struct("<QQQIIII")
# struct longconn_conn: 12 x u64 (13 from layout 7: close_seq), local_addr[4],
# remote_addr[4] (network order, raw bytes here), 10 x u32 (12 from layout 7:
# close_cpu, seen; 14 from layout 8: bound_dev_if, _pad), comm[16]
ADDRS = struct.Struct("<16s16s")
FORMATS = {  # layout -> (head, tail)
    **{v: (struct.Struct("<12Q"), struct.Struct("<10I16s")) for v in (1, 2, 3, 4, 5)},
    7: (struct.Struct("<13Q"), struct.Struct("<12I16s")),
    8: (struct.Struct("<13Q"), struct.Struct("<14I16s")),
    9: (struct.Struct("<13Q"), struct.Struct("<14I16s")),  # layout 9: cgroup names map; record as 8
}
KNOWN_LAYOUTS = tuple(FORMATS)

AF_INET, TCP_ESTABLISHED, F_ESTABLISHED = 2, 1, 0x1
DIR_OUTBOUND, DIR_INBOUND = 1, 2


def netns_cookie():
    s = socket.socket()
    try:
        return struct.unpack("<Q", s.getsockopt(socket.SOL_SOCKET, 71, 8))[0]  # SO_NETNS_COOKIE
    except OSError:
        return 0
    finally:
        s.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("pin_dir")
    ap.add_argument("count", type=int)
    ap.add_argument("--cgroup-id", type=int, default=0)
    ap.add_argument("--age-s", type=int, default=3600, help="clamped to 90%% of the uptime")
    ap.add_argument("--batch", type=int, default=20000)
    a = ap.parse_args()

    meta_fd = bpfsys.obj_get(os.path.join(a.pin_dir, "meta"))
    mi = bpfsys.map_info(meta_fd)
    raw = bpfsys.lookup(meta_fd, struct.pack("<I", 0), mi["value_size"])
    magic, _, _, layout, rec_size, _, _ = META.unpack_from(raw)
    HEAD, TAIL = FORMATS.get(layout, FORMATS[5])
    RECORD_SIZE = HEAD.size + ADDRS.size + TAIL.size
    if magic != META_MAGIC or layout not in KNOWN_LAYOUTS or rec_size != RECORD_SIZE:
        sys.exit(f"fillmap: {a.pin_dir}: layout {layout}, record size {rec_size} "
                 f"(magic {magic:#x}); this helper encodes layouts {KNOWN_LAYOUTS} of "
                 f"{RECORD_SIZE} bytes: update scripts/bench.d/fillmap.py")
    fd = bpfsys.obj_get(os.path.join(a.pin_dir, "map_of_tcp_conns"))
    info = bpfsys.map_info(fd)
    if info["key_size"] != 8 or info["value_size"] != RECORD_SIZE:
        sys.exit(f"fillmap: map_of_tcp_conns has key {info['key_size']} / value "
                 f"{info['value_size']} bytes, expected 8 / {RECORD_SIZE}")
    if info["max_entries"] < a.count:
        sys.exit(f"fillmap: map_of_tcp_conns holds {info['max_entries']} < {a.count}; "
                 "pin with a larger --max-connections")

    now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    # well in the past, but after boot (CLOCK_BOOTTIME starts at 0)
    start = max(now // 10, now - a.age_s * 1_000_000_000)
    ns_cookie = netns_cookie()
    pid = os.getpid()
    comm = b"synthetic"
    B = max(1, min(a.batch, a.count))
    keys = (ctypes.c_uint64 * B)()
    values = ctypes.create_string_buffer(B * RECORD_SIZE)
    t0 = time.perf_counter()
    done = 0
    while done < a.count:
        n = min(B, a.count - done)
        for j in range(n):
            i = done + j
            cookie = (1 << 62) + i
            keys[j] = cookie
            outbound = i % 2 == 0
            # one host address; outbound to 200 services, inbound on 8 listening
            # ports from many clients (a realistic label cardinality)
            local = bytes((10, 0, 0, 1))
            if outbound:
                svc = i % 200
                remote = bytes((10, 1, svc // 250, 1 + svc % 250))
                lport, rport = 32768 + (i // 2) % 28000, 443 + svc % 4
            else:
                remote = bytes((10, 2 + (i >> 17) % 50, (i >> 9) & 255, 1 + (i >> 1) % 250))
                lport, rport = 443 + i % 8, 32768 + (i * 31) % 28000
            sent = 1000 + (i * 7919) % 10_000_000
            recv = 1000 + (i * 104729) % 50_000_000
            off = j * RECORD_SIZE
            head = (cookie, start, now, sent, recv, sent // 1448 + 2, recv // 1448 + 2,
                    i % 3, 0, (i % 3) * 1448, a.cgroup_id, ns_cookie)
            HEAD.pack_into(values, off, *head, *([0] * (HEAD.size // 8 - len(head))))
            ADDRS.pack_into(values, off + HEAD.size, local + bytes(12), remote + bytes(12))
            tail = (100 + i % 5000, 50 + i % 500, pid if outbound else 0, AF_INET,
                    lport, rport, TCP_ESTABLISHED,
                    DIR_OUTBOUND if outbound else DIR_INBOUND, F_ESTABLISHED, 0)
            TAIL.pack_into(values, off + HEAD.size + ADDRS.size, *tail,
                           *([0] * ((TAIL.size - 16) // 4 - len(tail))),
                           comm if outbound else b"")
        bpfsys.update_batch(fd, keys, values, n)
        done += n
    print(json.dumps({"filled": done, "seconds": round(time.perf_counter() - t0, 3)}))


if __name__ == "__main__":
    main()
