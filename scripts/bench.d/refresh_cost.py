#!/usr/bin/env python3
"""Kernel time of the read-time refresh per tracked socket, and how long each
of its runs holds a CPU.

    python3 scripts/bench.d/refresh_cost.py PAIRS [--synthetic N] [--dumps K]   (as root)
    e.g. python3 scripts/bench.d/refresh_cost.py 50000
         python3 scripts/bench.d/refresh_cost.py 1000 --synthetic 1000000

Pins `--hooks default` onto a child cgroup of this run, opens PAIRS idle
loopback connections inside it (bench.d/conngen.py, both ends tracked, in
worker processes of at most 9000 pairs: the fd limit), optionally adds N
synthetic records (bench.d/fillmap.py: no socket behind them, so the refresh
looks each one up and finds nothing), then K times (default 7) runs
`longconn-reader dump --json` under `strace -f -T -e trace=bpf` with
kernel.bpf_stats_enabled=1 and prints, per dump, the refresh program's kernel
time (run_time_ns delta: total and per tracked record), the number of
BPF_PROG_TEST_RUN calls, the longest one and their sum (wall, as strace
times them: an upper bound of how long one run held its CPU) and the wall of
the map read (BPF_MAP_LOOKUP_BATCH calls), then the
medians; then K rounds of the same refresh driven from here (direct_runs),
each run timed by the kernel (the test run's `duration`). Works with any build (LCBENCH_BIN=DIR picks the binaries), so the
same script compares two builds. Cleans up on exit.
"""
import argparse
import json
import mmap
import os
import re
import socket
import statistics
import struct
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("LCBENCH_WORK", f"/tmp/lcbench-refresh-{os.getpid()}")
os.makedirs(os.environ["LCBENCH_WORK"], exist_ok=True)
from benchlib import HERE, WORK, Cgroup, Pin, cleanup_all, prog_stats  # noqa: E402
import bpfsys  # noqa: E402


STATS = "/proc/sys/kernel/bpf_stats_enabled"


def own_netns_cookie():
    s = socket.socket()
    try:
        return struct.unpack("<Q", s.getsockopt(socket.SOL_SOCKET, 71, 8))[0]  # SO_NETNS_COOKIE
    finally:
        s.close()


def direct_runs(pin_dir, records, rounds):
    """The reader's refresh done here, timed by the kernel: the `duration` of
    each BPF_PROG_TEST_RUN is how long that run of the program held its CPU
    (no syscall or strace overhead). With a `refresh_work` pin: the map's
    records, CHUNK at a time, written into the mmapped work array (layout 5:
    the cookie; layout 7: cookie, tuple, netns and packet totals, as the
    reader does), one run per chunk. Without (layout 4): one run over the
    whole map."""
    prog = bpfsys.obj_get(os.path.join(pin_dir, "refresh_conns"))
    own = own_netns_cookie()
    lo, hi = own & 0xFFFFFFFF, own >> 32
    work_path = os.path.join(pin_dir, "refresh_work")
    chunked = os.path.exists(work_path)
    conns = bpfsys.obj_get(os.path.join(pin_dir, "map_of_tcp_conns"))
    for _ in range(rounds):
        if not chunked:
            r = bpfsys.prog_test_run_cb(prog, [0, 1, lo, hi, 0])
            durs = [r[1]]
        else:
            wfd = bpfsys.obj_get(work_path)
            info = bpfsys.map_info(wfd)
            slots, vs = info["max_entries"], info["value_size"]
            size = -(-slots * vs // mmap.PAGESIZE) * mmap.PAGESIZE
            m = mmap.mmap(wfd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            recs = []
            keys = bpfsys.map_keys_u64(conns, bpfsys.map_info(conns)["value_size"],
                                       values_out=recs)
            durs = []
            for at in range(0, len(keys), slots):
                chunk = keys[at:at + slots]
                for i, k in enumerate(chunk):
                    if vs == 144:  # layout 7: struct longconn_refresh_slot from the record
                        m[i * vs:(i + 1) * vs] = slot_of(recs[at + i])
                    else:
                        struct.pack_into("<Q", m, i * vs, k)
                        struct.pack_into("<I", m, i * vs + vs - 4, 0)
                durs.append(bpfsys.prog_test_run_cb(prog, [len(chunk), 0, lo, hi, 0])[1])
            m.close()
            os.close(wfd)
        print(f"direct: {len(durs)} runs, kernel-timed: longest {max(durs) / 1e6:.2f} ms, "
              f"median {statistics.median(durs) / 1e6:.2f} ms, total {sum(durs) / 1e6:.1f} ms "
              f"({sum(durs) / records:.0f} ns per record)", flush=True)
    os.close(conns)
    os.close(prog)


def slot_of(rec):
    """A layout-7 refresh slot (144 bytes) for a longconn_conn record: 184 bytes
    (the layout-6 development record), 200 (layout 7: close_seq after
    netns_cookie; close_cpu and seen at the end, the slot then asks for `seen`)
    or 208 (layout 8: bound_dev_if and a pad after seen; the slot is the same)."""
    wide = len(rec) in (200, 208)
    (cookie, _start, _update, _bs, _br, ps, pr, rt, lost, _bret, _cg, netns_cookie) = \
        struct.unpack_from("<12Q", rec, 0)
    at = 104 if wide else 96
    local, remote = rec[at:at + 16], rec[at + 16:at + 32]
    (_srtt, _minrtt, _pid, family, lport, rport, _state, _dir, _flags, ino) = \
        struct.unpack_from("<10I", rec, at + 32)
    seen = struct.unpack_from("<I", rec, at + 32 + 44)[0] if wide else 1
    head = struct.pack("<QQ", cookie, netns_cookie) + local + remote + \
        struct.pack("<IIHHI", family, ino, lport, rport, 0)
    counters = struct.pack("<8Q4I", 0, 0, 0, ps, pr, rt, lost, 0, 0, 0, 0, 0 if seen else 1)
    return head + counters


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("pairs", type=int)
    ap.add_argument("--synthetic", type=int, default=0)
    ap.add_argument("--dumps", type=int, default=7)
    a = ap.parse_args()
    pairs = a.pairs
    records = 2 * pairs + a.synthetic
    with open(STATS) as f:
        orig = f.read().strip()
    cg = Cgroup("refresh")
    procs = []
    try:
        pin = Pin("refresh", cg, "default", max_connections=records + 1000).attach()
        per = 9000
        for i in range(0, pairs, per):
            p = cg.popen([sys.executable, os.path.join(HERE, "conngen.py"),
                          f"127.0.8.{i // per + 1}", str(min(per, pairs - i))],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            p.stdout.readline()
            procs.append(p)
        if a.synthetic:
            subprocess.run([sys.executable, os.path.join(HERE, "fillmap.py"), pin.dir,
                            str(a.synthetic)], stdout=subprocess.DEVNULL, check=True)
        info = subprocess.run(["bpftool", "-j", "prog", "show", "pinned",
                               os.path.join(pin.dir, "refresh_conns")],
                              capture_output=True, text=True, check=True).stdout
        pid = json.loads(info)["id"]
        with open(STATS, "w") as f:
            f.write("1")
        trace = os.path.join(WORK, "strace.txt")
        per_rec, read_rec, longest, nruns = [], [], [], []
        what = f"{pairs} pairs + {a.synthetic} synthetic ({records} records)"
        for _ in range(a.dumps):
            s0 = prog_stats({"r": pid})["r"]
            subprocess.run(["strace", "-f", "-T", "-e", "trace=bpf", "-o", trace,
                            *pin.reader("dump", "--json")], stdout=subprocess.DEVNULL, check=True)
            s1 = prog_stats({"r": pid})["r"]
            with open(trace) as f:
                text = f.read()
            # Test runs block in the kernel; strace may show them as unfinished + resumed.
            tids = {m.group(1) for m in re.finditer(r"^(\d+)\s+bpf\(BPF_PROG_TEST_RUN", text, re.M)}
            walls = [float(m.group(2)) for m in re.finditer(
                r"^(\d+)\s+(?:<\.\.\. bpf resumed>|bpf\(BPF_PROG_TEST_RUN).*<([0-9.]+)>$", text, re.M)
                if m.group(1) in tids]
            # The map read (batched) the refresh comes with: before it (layout 5) or after (4).
            batch = sum(float(m.group(1)) for m in re.finditer(
                r"bpf\(BPF_MAP_LOOKUP_BATCH.*<([0-9.]+)>$", text, re.M))
            ns = s1[0] - s0[0]
            per_rec.append(ns / records)
            read_rec.append((ns + batch * 1e9) / records)
            longest.append(max(walls) * 1000)
            nruns.append(s1[1] - s0[1])
            print(f"{what}: refresh {ns / 1e6:.1f} ms kernel time ({ns / records:.0f} ns per "
                  f"record) in {s1[1] - s0[1]} runs; longest run {max(walls) * 1000:.2f} ms, "
                  f"all runs {sum(walls) * 1000:.1f} ms wall; map read {batch * 1000:.1f} ms wall",
                  flush=True)
        print(f"{what}: median {statistics.median(per_rec):.0f} ns per record "
              f"(with the map read: {statistics.median(read_rec):.0f}), "
              f"{statistics.median(nruns):.0f} runs, longest run median "
              f"{statistics.median(longest):.2f} ms, max {max(longest):.2f} ms", flush=True)
        direct_runs(pin.dir, records, a.dumps)
    finally:
        with open(STATS, "w") as f:
            f.write(orig)
        for p in procs:
            try:
                p.stdin.close()
            except OSError:
                pass
        for p in procs:
            p.wait()
        cleanup_all()


if __name__ == "__main__":
    main()
