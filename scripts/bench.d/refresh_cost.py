#!/usr/bin/env python3
"""Kernel time of the read-time refresh per tracked socket, and its wall time.

    python3 scripts/bench.d/refresh_cost.py PAIRS      (as root)
    e.g. python3 scripts/bench.d/refresh_cost.py 50000

Pins `--hooks default` onto a child cgroup of this run, opens PAIRS idle
loopback connections inside it (bench.d/conngen.py, both ends tracked), then 5
times runs `longconn-reader dump --json` under `strace -f -T -e trace=bpf` with
kernel.bpf_stats_enabled=1 and prints the refresh program's kernel time
(run_time_ns delta: total and per socket) and the wall time of each
BPF_PROG_TEST_RUN call (one per refresh thread). Then, for the same sockets,
one unsharded run of the program (as one thread would do it) against a run
that walks the map but skips every record (shard 0 of 2^31: no cookie here is
a multiple of 2^31), i.e. what the walk costs and what the socket lookup and
copy cost on top. Cleans up on exit.
"""
import json
import os
import re
import socket
import struct
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("LCBENCH_WORK", f"/tmp/lcbench-refresh-{os.getpid()}")
os.makedirs(os.environ["LCBENCH_WORK"], exist_ok=True)
from benchlib import HERE, WORK, Cgroup, Pin, cleanup_all, prog_stats  # noqa: E402
import bpfsys  # noqa: E402


def own_netns_cookie():
    s = socket.socket()
    try:
        return struct.unpack("<Q", s.getsockopt(socket.SOL_SOCKET, 71, 8))[0]  # SO_NETNS_COOKIE
    finally:
        s.close()

STATS = "/proc/sys/kernel/bpf_stats_enabled"


def main():
    pairs = int(sys.argv[1])
    with open(STATS) as f:
        orig = f.read().strip()
    cg = Cgroup("refresh")
    procs = []
    try:
        pin = Pin("refresh", cg, "default", max_connections=2 * pairs + 1000).attach()
        per = 9000
        for i in range(0, pairs, per):
            p = cg.popen([sys.executable, os.path.join(HERE, "conngen.py"),
                          f"127.0.8.{i // per + 1}", str(min(per, pairs - i))],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            p.stdout.readline()
            procs.append(p)
        info = subprocess.run(["bpftool", "-j", "prog", "show", "pinned",
                               os.path.join(pin.dir, "refresh_conns")],
                              capture_output=True, text=True, check=True).stdout
        pid = json.loads(info)["id"]
        with open(STATS, "w") as f:
            f.write("1")
        trace = os.path.join(WORK, "strace.txt")
        for _ in range(5):
            s0 = prog_stats({"r": pid})["r"]
            subprocess.run(["strace", "-f", "-T", "-e", "trace=bpf", "-o", trace,
                            *pin.reader("dump", "--json")], stdout=subprocess.DEVNULL, check=True)
            s1 = prog_stats({"r": pid})["r"]
            with open(trace) as f:
                text = f.read()
            # Test runs block in the kernel; strace shows them as unfinished + resumed.
            tids = {m.group(1) for m in re.finditer(r"^(\d+)\s+bpf\(BPF_PROG_TEST_RUN", text, re.M)}
            walls = [float(m.group(2)) for m in re.finditer(
                r"^(\d+)\s+(?:<\.\.\. bpf resumed>|bpf\(BPF_PROG_TEST_RUN).*<([0-9.]+)>$", text, re.M)
                if m.group(1) in tids]
            ns = s1[0] - s0[0]
            print(f"{pairs} pairs ({2 * pairs} sockets): refresh {ns / 1e6:.1f} ms kernel time "
                  f"({ns / (2 * pairs):.0f} ns per socket); test runs "
                  + ", ".join(f"{w * 1000:.0f} ms" for w in walls) + " wall")
        fd = bpfsys.obj_get(os.path.join(pin.dir, "refresh_conns"))
        own = own_netns_cookie()
        lo, hi = own & 0xFFFFFFFF, own >> 32
        n = 2 * pairs
        for _ in range(5):
            full = bpfsys.prog_test_run_cb(fd, [0, 1, lo, hi, 0])
            walk = bpfsys.prog_test_run_cb(fd, [0, 1 << 31, lo, hi, 0])
            print(f"one unsharded run: {full[1] / 1e6:.1f} ms ({full[1] / n:.0f} ns per socket; "
                  f"{full[0]} refreshed, {full[2][2]} not found); walk alone {walk[1] / 1e6:.1f} ms "
                  f"({walk[1] / n:.0f} ns per record); lookup and copy "
                  f"{(full[1] - walk[1]) / n:.0f} ns per socket")
        os.close(fd)
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
