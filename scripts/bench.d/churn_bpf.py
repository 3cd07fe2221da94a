#!/usr/bin/env python3
"""BPF time per connection in a churn loop, per --hooks preset (kernel-measured).

    python3 scripts/bench.d/churn_bpf.py PRESETS ROUNDS N      (as root)
    e.g. python3 scripts/bench.d/churn_bpf.py off,none,default,live 6 3000

A preset may name the longconn binaries to pin it with, PRESET@BINDIR, to
compare two builds in one run (their rounds alternate):
    python3 scripts/bench.d/churn_bpf.py off,default@/tmp/before,default@target/release 10 3000

For ROUNDS rounds, in a rotating order of PRESETS ("off" = nothing attached):
pin the preset onto a child cgroup of this run, run bench.d/churn.py N inside
it with kernel.bpf_stats_enabled=1, and read run_time_ns of the pin's programs.
Prints, per preset, the median connections per second, the median ratio to
"off" of the same round, and the median BPF nanoseconds per connection (both
ends). Cleans up its pins and cgroup on exit (benchlib).
"""
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("LCBENCH_WORK", f"/tmp/lcbench-churnbpf-{os.getpid()}")
os.makedirs(os.environ["LCBENCH_WORK"], exist_ok=True)
import benchlib  # noqa: E402
from benchlib import Cgroup, Pin, churn_rate, cleanup_all, log, prog_stats  # noqa: E402

presets = sys.argv[1].split(",")
DEFAULT_BIN = benchlib.BIN
rounds = int(sys.argv[2]); n = int(sys.argv[3])
STATS = "/proc/sys/kernel/bpf_stats_enabled"
with open(STATS) as f:
    orig = f.read().strip()
with open(STATS, "w") as f:
    f.write("1")
cg = Cgroup("churnbpf")
res = {p: [] for p in presets}; cost = {p: [] for p in presets}
try:
    for r in range(rounds):
        order = presets[r % len(presets):] + presets[:r % len(presets)]
        for p in order:
            pin = None
            hooks, _, bin_dir = p.partition("@")
            benchlib.BIN = bin_dir or DEFAULT_BIN
            if p != "off":
                pin = Pin("churnbpf", cg, hooks).attach(); ids = pin.prog_ids(); s0 = prog_stats(ids)
            rate, _ = churn_rate(cg, n, f"127.0.4.{r % 200 + 1}")
            res[p].append(rate)
            if pin:
                s1 = prog_stats(ids)
                ns = sum(s1[k][0] - s0[k][0] for k in ids)
                runs = sum(s1[k][1] - s0[k][1] for k in ids)
                cost[p].append(ns / n)
                if r == 0: log(f"{p}: {runs/n:.1f} runs per connection, {ns/max(runs,1):.0f} ns per run")
                pin.detach()
        log(f"round {r}: " + ", ".join(f"{p} {res[p][-1]:.0f}" for p in presets)
            + " conn/s; BPF ns per connection " + ", ".join(f"{c[-1]:.0f}" for c in cost.values() if c))
    base = res.get("off")
    for p in presets:
        ratios = [a / b for a, b in zip(res[p], base)] if base else []
        print(p, "conn/s median", round(statistics.median(res[p])), "ratio vs off median",
              round(statistics.median(ratios), 3) if ratios else "-",
              "BPF ns per connection", round(statistics.median(cost[p])) if cost[p] else "-")
finally:
    with open(STATS, "w") as f:
        f.write(orig)
    cleanup_all()
