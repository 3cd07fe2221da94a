#!/usr/bin/env python3
"""The benchmarks behind scripts/bench (run that, not this: it installs, builds,
mounts and cleans up). Prints one markdown section per benchmark on stdout,
progress on stderr, and keeps raw numbers in $LCBENCH_WORK/results.json.
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (  # noqa: E402
    HERE, RUN, WORK, Cgroup, Iperf, Pin, binary, churn_rate, cleanup_all, cgroup2_root,
    human_bytes, log, med, paired_ratios, prog_stats, spread, table, timed, verdict,
)
import names as names_bench  # noqa: E402

SECTIONS = ["datapath", "churn", "progcost", "reader", "output", "hooks", "names"]
PRESETS = ["default", "live", "tracepoints", "cgroup-skb"]
PER_SEGMENT = {"longconn_egress", "longconn_tcp_probe", "longconn_ingress"}
RESULTS = {}
CMD = os.environ.get("LCBENCH_CMD", "scripts/bench")


def emit(md):
    print(md + "\n", flush=True)


def cmdline(section):
    return f"`{CMD}`" + ("" if "--only" in CMD else f" (this section alone: `scripts/bench --only {section}`)")


# ======================================================================= 1. datapath
def datapath(a):
    secs = 2 if a.quick else 5
    cg = Cgroup("datapath")
    pin = Pin("datapath", cg, "default")
    srv = Iperf(cg)
    res = {}
    for streams in (1, 8):
        on, off, on_eff, off_eff = [], [], [], []
        for rep in range(a.reps):
            pin.attach()
            g, e, _ = srv.run(streams, secs)
            on.append(g)
            on_eff.append(e)
            pin.detach()
            g, e, _ = srv.run(streams, secs)
            off.append(g)
            off_eff.append(e)
            log(f"datapath -P {streams} rep {rep + 1}/{a.reps}: attached {on[-1]:.2f}, "
                f"not attached {off[-1]:.2f} Gbit/s; per CPU-s {on_eff[-1]:.2f} / {off_eff[-1]:.2f}")
        res[streams] = {"attached": on, "not_attached": off, "ratio": paired_ratios(on, off),
                        "attached_per_cpu": on_eff, "not_attached_per_cpu": off_eff,
                        "ratio_per_cpu": paired_ratios(on_eff, off_eff)}
    srv.stop()
    cg.remove()
    RESULTS["datapath"] = res
    rows, erows = [], []
    for streams, r in res.items():
        ratio = med(r["ratio"])
        rows.append([f"-P {streams}", spread(r["attached"]), spread(r["not_attached"]),
                     spread(r["ratio"], "{:.3f}"), "≥ 0.99", verdict(ratio >= 0.99)])
        erows.append([f"-P {streams}", spread(r["attached_per_cpu"]),
                      spread(r["not_attached_per_cpu"]), spread(r["ratio_per_cpu"], "{:.3f}")])
    emit(f"""### 1. datapath: iperf3 over loopback, attached vs not attached

Command: {cmdline('datapath')}

Each repetition pins `--hooks default` onto the benchmark's own cgroup, runs
`iperf3 -c 127.0.0.1 -t {secs} -P N -J` (client and `iperf3 -s` server both inside
that cgroup, so both ends are tracked), detaches, and runs the same client again
with nothing attached: attached, not attached, attached, … ({a.reps} pairs per
row). Gbit/s is iperf3's `sum_received`; the ratio is attached / not attached of
each pair, median (min–max) over the pairs.

{table(["streams", "attached Gbit/s", "not attached Gbit/s", "ratio", "target", "result"], rows)}

The same runs normalised by CPU: Gbit per CPU-second of the iperf3 client and
server processes (iperf3's own `cpu_utilization_percent`, host + remote). It is
less sensitive to other load than raw throughput, but not immune: this kernel
charges softirq time to whichever task is running, so other traffic on the
machine leaks into it.

{table(["streams", "attached Gbit/CPU-s", "not attached Gbit/CPU-s", "ratio"], erows)}
""")


# ======================================================================= 2. churn
def churn(a):
    n = 2000 if a.quick else 5000
    cg = Cgroup("churn")
    pin = Pin("churn", cg, "default")
    on, off, on_cpu, off_cpu = [], [], [], []
    pairs = 3 * a.reps  # half a second per run: more pairs for the same noise
    for rep in range(pairs):
        addr = f"127.0.2.{rep % 250 + 1}"
        pin.attach()
        r, c = churn_rate(cg, n, addr)
        on.append(r)
        on_cpu.append(c)
        pin.detach()
        r, c = churn_rate(cg, n, addr)
        off.append(r)
        off_cpu.append(c)
        log(f"churn pair {rep + 1}/{pairs}: attached {on[-1]:.0f}, not attached {off[-1]:.0f} conn/s;"
            f" per CPU-s {on_cpu[-1]:.0f} / {off_cpu[-1]:.0f}")
    # BPF time per connection pair (both ends), kernel-measured: attached
    # runs apart from the pairs above, with kernel.bpf_stats_enabled=1.
    bpf_ns = []
    stats_path = "/proc/sys/kernel/bpf_stats_enabled"
    with open(stats_path) as f:
        stats_orig = f.read().strip()
    try:
        with open(stats_path, "w") as f:
            f.write("1")
        for rep in range(a.reps):
            pin.attach()
            ids = pin.prog_ids()
            s0 = prog_stats(ids)
            churn_rate(cg, n, f"127.0.2.{rep % 250 + 1}")
            s1 = prog_stats(ids)
            bpf_ns.append(sum(s1[k][0] - s0[k][0] for k in ids) / n)
            pin.detach()
            log(f"churn BPF time {rep + 1}/{a.reps}: {bpf_ns[-1]:.0f} ns per connection pair")
    finally:
        with open(stats_path, "w") as f:
            f.write(stats_orig)
    cg.remove()
    bpf_label = f"BPF ns per connection pair (bpf_stats on, {a.reps} more attached runs)"
    r = paired_ratios(on, off)
    rc = paired_ratios(on_cpu, off_cpu)
    RESULTS["churn"] = {"attached": on, "not_attached": off, "ratio": r, "n": n,
                        "attached_per_cpu": on_cpu, "not_attached_per_cpu": off_cpu,
                        "ratio_per_cpu": rc, "bpf_ns_per_pair": bpf_ns}
    emit(f"""### 2. churn: connect / send / close rate, attached vs not attached

Command: {cmdline('churn')}

`scripts/bench.d/churn.py 127.0.2.X {n}` inside the benchmark's cgroup: a
single-threaded loop that {n} times connects on loopback, accepts, sends 1000
bytes each way and closes both ends (both ends are in the cgroup, so every
connection makes two tracked sockets and two close records). Rate = {n} / wall
time of the loop; per CPU-second = {n} / the loop's user + system CPU time
(on loopback that includes the softirq work: this kernel does not account IRQ
time apart). Each pair pins `--hooks default` (fresh maps), runs, detaches,
runs again with nothing attached: {pairs} pairs (3 × --reps, as one run lasts
about half a second).

{table(["measure", "attached", "not attached", "ratio", "target", "result"],
       [["conn/s (wall)", spread(on, "{:.0f}"), spread(off, "{:.0f}"), spread(r, "{:.3f}"),
         "≥ 0.97", verdict(med(r) >= 0.97)],
        ["conn per CPU-second", spread(on_cpu, "{:.0f}"), spread(off_cpu, "{:.0f}"),
         spread(rc, "{:.3f}"), "—", "—"],
        [bpf_label,
         spread(bpf_ns, "{:.0f}"), "—", "—", "—", "—"]])}
""")


# ======================================================================= 3. progcost
def set_bpf_stats(v):
    subprocess.run(["sysctl", "-q", "-w", f"kernel.bpf_stats_enabled={v}"], check=True)


class Noop:
    """bench.d/noop.bpf.c, loaded and pinned by bpftool, attached to a cgroup's egress."""

    def __init__(self):
        self.path = f"/sys/fs/bpf/lcbench_{RUN}_noop"
        obj = os.path.join(WORK, "noop.o")
        inc = f"/usr/include/{platform.machine()}-linux-gnu"
        subprocess.run([os.environ.get("LONGCONN_CLANG", "clang-19"), "-O2", "-target", "bpf",
                        f"-I{inc}", "-c", os.path.join(HERE, "noop.bpf.c"), "-o", obj],
                       check=True, capture_output=True)
        subprocess.run(["bpftool", "prog", "load", obj, self.path, "type", "cgroup/skb"],
                       check=True, capture_output=True)
        p = json.loads(subprocess.run(["bpftool", "-j", "prog", "show", "pinned", self.path],
                                      check=True, capture_output=True, text=True).stdout)
        self.id = (p[0] if isinstance(p, list) else p)["id"]

    def attach(self, cg):
        subprocess.run(["bpftool", "cgroup", "attach", cg.path, "egress", "pinned", self.path,
                        "multi"], check=True, capture_output=True)

    def detach(self, cg):
        subprocess.run(["bpftool", "cgroup", "detach", cg.path, "egress", "pinned", self.path],
                       capture_output=True)

    def remove(self):
        if os.path.exists(self.path):
            os.unlink(self.path)


def progcost(a):
    secs = 2 if a.quick else 3
    with open("/proc/sys/kernel/bpf_stats_enabled") as f:
        orig = f.read().strip()
    with open(os.path.join(WORK, "bpf_stats_enabled.orig"), "w") as f:
        f.write(orig)
    cg = Cgroup("progcost")
    srv = Iperf(cg)
    try:
        noop = Noop()
    except (subprocess.CalledProcessError, OSError) as e:
        noop = None
        log(f"progcost: no calibration program ({e})")
    sides = PRESETS + (["noop"] if noop else [])
    per = {p: {} for p in sides}  # side -> prog -> [ns/run]
    cnt = {p: {} for p in sides}
    totals = {p: [] for p in sides}  # side -> [(BPF ns, BPF runs, iperf3 CPU s)]
    try:
        set_bpf_stats(1)
        for rep in range(a.reps):
            for side in sides:
                if side == "noop":
                    noop.attach(cg)
                    ids = {"lcbench_noop (calibration)": noop.id}
                else:
                    pin = Pin(f"progcost_{side}", cg, side).attach()
                    ids = pin.prog_ids()
                try:
                    gbps, _, cpu_s = srv.run(1, secs)
                    st = prog_stats(ids)
                finally:
                    noop.detach(cg) if side == "noop" else pin.detach()
                for name, (ns, runs) in st.items():
                    if runs:
                        per[side].setdefault(name, []).append(ns / runs)
                        cnt[side].setdefault(name, []).append(runs)
                totals[side].append((sum(v[0] for v in st.values()),
                                     sum(v[1] for v in st.values()), cpu_s))
                log(f"progcost rep {rep + 1}/{a.reps} {side} ({gbps:.1f} Gbit/s): " + ", ".join(
                    f"{k} {v[0] / v[1]:.0f} ns" for k, v in st.items() if v[1]))
    finally:
        set_bpf_stats(orig)
        if noop:
            noop.detach(cg)
            noop.remove()
    srv.stop()
    cg.remove()
    floor = med(per["noop"].get("lcbench_noop (calibration)", [])) if noop else None
    share = {p: [ns / (c * 1e9) for ns, _, c in totals[p]] for p in sides}
    share_net = {p: [(ns - (floor or 0) * runs) / (c * 1e9) for ns, runs, c in totals[p]]
                 for p in sides}
    RESULTS["progcost"] = {"ns": per, "runs": cnt, "cpu_share": share, "cpu_share_net": share_net,
                           "totals": totals}
    noop_desc = "" if not noop else f"""
`noop` is the calibration: `scripts/bench.d/noop.bpf.c`, a cgroup_skb/egress
program that only returns 1, attached the same way (`bpftool cgroup attach …
egress … multi`). What it costs ({floor:.0f} ns median) is the floor of this
measurement here (the clock reads bpf_stats wraps around every run, plus
dispatch) and is included in every figure above it; "above floor" subtracts it."""
    rows = []
    for side in sides:
        for name in sorted(per[side]):
            xs = per[side][name]
            above = f"{med(xs) - floor:.0f}" if floor is not None and side != "noop" else "—"
            if name in PER_SEGMENT:
                target, res = "≤ 50", verdict(med(xs) <= 50)
            else:
                target, res = "—", "—"
            rows.append([side, name, spread(xs, "{:.0f}"), above,
                         f"{med(cnt[side][name]):,.0f}", target, res])
    emit(f"""### 3. progcost: kernel-measured ns per program invocation

Command: {cmdline('progcost')}

`sysctl -w kernel.bpf_stats_enabled=1` (restored to {orig} afterwards); for each
preset in turn ({', '.join(sides)}, {sides[0]}, …; {a.reps} rounds) pin it fresh onto
the benchmark's cgroup, run `iperf3 -c 127.0.0.1 -t {secs} -P 1` inside the
cgroup, read `run_time_ns / run_cnt` of the programs behind the pin's own links
(`bpftool -j prog show id …`), detach. The tracepoint programs run for every TCP
segment on the host (tracepoints are not cgroup-scoped), so their counts include
other traffic, which they skip after one map lookup.
{noop_desc}

{table(["preset", "program", "ns per run", "above floor", "runs per round (median)", "target", "result"], rows)}

What that costs the workload: the longconn programs' total `run_time_ns` in a round
as a share of the CPU time iperf3's client and server used in it (iperf3's
`cpu_utilization_percent` × duration). Unlike the A/B throughput ratios of
sections 1 and 6 this barely moves with other load on the machine, so it is the
better estimate of the datapath overhead when the machine is shared; "less
floor" removes the calibration cost per run, which exists only while
`bpf_stats_enabled` is on.

{table(["preset", "BPF time / iperf3 CPU time", "less floor"],
       [[p, spread([x * 100 for x in share[p]], "{:.2f}%"),
         spread([x * 100 for x in share_net[p]], "{:.2f}%")] for p in PRESETS])}
""")


# ======================================================================= 4+5. reader and output
OUTPUTS = ["access.csv", "access.jsonl", "longconn.prom", "state.bin", "state.journal",
           "otlp-metrics.jsonl", "otlp-logs.jsonl"]
# A 1M-entry collect takes minutes here: the synthetic case times one steady-state
# collect after the first cycle, not --reps of them.
SYNTH_REPS = 1
APPEND_ONLY = {"access.csv", "access.jsonl"}


def out_sizes(d):
    """{output name: bytes}; rotated access logs (name.N) count toward their log.
    The state's files also give their inode (key "<name>@ino"): the base
    (state.bin) is rewritten only now and then, the journal appended to."""
    sizes = {}
    for f in ("state.bin", "state.journal"):
        try:
            sizes[f + "@ino"] = os.stat(os.path.join(d, f)).st_ino
        except FileNotFoundError:
            pass
    for f in os.listdir(d):
        base = f
        parts = f.split(".")
        if parts[-1].isdigit():
            base = ".".join(parts[:-1])
        if base in OUTPUTS or base.startswith("otlp"):
            sizes[base] = sizes.get(base, 0) + os.path.getsize(os.path.join(d, f))
    return sizes


def written(before, after):
    """Bytes one cycle wrote per output: growth of append-only logs, full size of
    files rewritten atomically each cycle."""
    w = {}
    for k, v in after.items():
        if k.endswith("@ino"):
            continue
        if k in ("state.bin", "state.journal"):
            same = before.get(k + "@ino") == after.get(k + "@ino")
            w[k] = (v - before.get(k, 0) if same and v >= before.get(k, 0) else v) \
                if k == "state.journal" else (0 if same else v)
        else:
            w[k] = v - before.get(k, 0) if (k in APPEND_ONLY or k.endswith(".jsonl")) else v
    return w


def collect_argv(pin, out, extra=()):
    # --take-over: each size gets a fresh out dir on the same pins.
    return pin.reader("collect", "--out-dir", out, "--take-over", "--log-max-bytes", "64GiB", *extra)


def ss_sockets():
    out = subprocess.run(["ss", "-tinH"], capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if line and not line[0].isspace())


def measure_size(a, pin, label, conns, out, with_ss, extra=(), reps=None, with_top=True):
    """Warm-up collect, then reps of (collect, dump --json[, top --once][, ss -tinH]),
    alternating."""
    reps = reps or a.reps
    os.makedirs(out, exist_ok=True)
    r = {"conns": conns, "collect_s": [], "collect_kib": [], "dump_s": [], "dump_kib": [],
         "top_s": [], "top_text_s": [], "top_wall_s": [], "top_kib": [], "ss_s": [], "ss_kib": [], "written": []}
    dt, kib, rc, err = timed(collect_argv(pin, out, extra))
    if rc != 0:
        raise RuntimeError(f"collect failed ({rc}): {err}")
    r["first_collect_s"], r["first_collect_kib"] = dt, kib
    log(f"{label}: first collect {dt * 1000:.0f} ms, {kib / 1024:.0f} MiB")
    devnull = subprocess.DEVNULL
    for rep in range(reps):
        before = out_sizes(out)
        dt, kib, rc, err = timed(collect_argv(pin, out, extra))
        if rc != 0:
            raise RuntimeError(f"collect failed ({rc}): {err}")
        r["collect_s"].append(dt)
        r["collect_kib"].append(kib)
        r["written"].append(written(before, out_sizes(out)))
        dt, kib, rc, err = timed(pin.reader("dump", "--json"), stdout=devnull)
        if rc != 0:
            raise RuntimeError(f"dump failed ({rc}): {err}")
        r["dump_s"].append(dt)
        r["dump_kib"].append(kib)
        if with_top:
            top_refresh(pin, r)
        if with_ss:
            dt, kib, rc, err = timed(["ss", "-tinH"], stdout=devnull)
            r["ss_s"].append(dt)
            r["ss_kib"].append(kib)
        log(f"{label} rep {rep + 1}/{reps}: collect {r['collect_s'][-1] * 1000:.0f} ms "
            f"{r['collect_kib'][-1] / 1024:.0f} MiB, dump {r['dump_s'][-1] * 1000:.0f} ms"
            + (f", top refresh {r['top_s'][-1] * 1000:.0f} ms" if with_top else "")
            + (f", ss {r['ss_s'][-1] * 1000:.0f} ms" if with_ss else ""))
    return r



def top_refresh(pin, r):
    """One refresh of `top`, as `top --once --interval 100ms` reports it on
    its first line: the second refresh (read, read-time refresh, rates) plus
    the table of a 50-line screen (filter and sort every line, text of the
    visible ones): what the screen does every --interval. Also the text
    table of every line (`--once`'s own output)."""
    path = os.path.join(WORK, "top-once.out")
    with open(path, "w+") as out:
        dt, kib, rc, err = timed(pin.reader("top", "--once", "--interval", "100ms"), stdout=out)
        if rc != 0:
            raise RuntimeError(f"top --once failed ({rc}): {err}")
        out.seek(0)
        first = out.readline()
    m = re.search(r"refreshes took (\d+) ms and (\d+) ms, a 50-line screen (\d+) ms, "
                  r"this table (\d+) ms", first)
    if not m:
        raise RuntimeError(f"top --once printed no refresh times: {first!r}")
    refresh, screen, text = (int(m.group(i)) / 1000 for i in (2, 3, 4))
    r["top_s"].append(refresh + screen)
    r["top_text_s"].append(text)
    r["top_wall_s"].append(dt)
    r["top_kib"].append(kib)


def measure_active(a, pin, gens, out):
    """Bytes per cycle when every connection moved since the last cycle."""
    res = []
    for rep in range(a.reps):
        gens.poke()
        before = out_sizes(out)
        dt, _, rc, err = timed(collect_argv(pin, out))
        if rc != 0:
            raise RuntimeError(f"collect failed ({rc}): {err}")
        res.append(written(before, out_sizes(out)))
        log(f"active rep {rep + 1}/{a.reps}: collect {dt * 1000:.0f} ms, "
            f"{sum(res[-1].values()) / 1024 / 1024:.1f} MiB written")
    return res


class Generators:
    """conngen.py processes inside a cgroup, each on its own 127.0.0.x."""

    MAX_PER_PROC = 9000

    def __init__(self, cg):
        self.cg, self.procs, self.pairs, self.next_addr = cg, [], 0, 10

    def grow(self, total):
        new = []
        while self.pairs < total:
            chunks = -(-(total - self.pairs) // self.MAX_PER_PROC)
            n = -(-(total - self.pairs) // chunks)
            addr = f"127.0.0.{self.next_addr}"
            self.next_addr += 1
            p = self.cg.popen([sys.executable, os.path.join(HERE, "conngen.py"), addr, n],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            new.append(p)
            self.pairs += n
        for p in new:
            line = p.stdout.readline()
            if '"ready"' not in line:
                raise RuntimeError(f"conngen did not get ready (exit {p.poll()}): {line!r}")
            self.procs.append(p)

    def poke(self):
        """Every pair sends 10 bytes each way: active in the next cycle."""
        for p in self.procs:
            p.stdin.write("poke\n")
            p.stdin.flush()
        for p in self.procs:
            line = p.stdout.readline()
            if '"poked"' not in line:
                raise RuntimeError(f"conngen did not poke (exit {p.poll()}): {line!r}")

    def stop(self):
        for p in self.procs:
            try:
                p.stdin.close()
            except OSError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs = []


def scale(a, want_reader, want_output):
    sizes = [1000, 10000] if a.quick else [1000, 10000, 50000, 100000]
    synth = 100_000 if a.quick else 1_000_000
    results = {"real": [], "synthetic": None, "notes": []}
    cg = Cgroup("reader")
    pin = Pin("reader", cg, "default", max_connections=2 * max(sizes) + 20000).attach()
    gens = Generators(cg)
    try:
        for size in sizes:
            log(f"reader: growing to {size} connection pairs")
            try:
                gens.grow(size)
            except Exception as e:  # noqa: BLE001 - a measurement: report what was reached
                results["notes"].append(f"stopped growing at {gens.pairs} pairs: {e}")
                log(results["notes"][-1])
                break
            t_ready = time.time()
            tracked = pin.tracked()
            listed = ss_sockets()
            # every connection must be older than the 5 s long-connection threshold
            time.sleep(max(0.0, t_ready + 6 - time.time()))
            r = measure_size(a, pin, f"{size} pairs", tracked, os.path.join(WORK, f"out-{size}"),
                             True)
            r.update({"pairs": size, "ss_listed": listed})
            if size == 50000 or (a.quick and size == max(sizes)):
                r["active_written"] = measure_active(a, pin, gens, os.path.join(WORK, f"out-{size}"))
            results["real"].append(r)
            shutil.rmtree(os.path.join(WORK, f"out-{size}"), ignore_errors=True)
    finally:
        gens.stop()
        pin.detach()
        cg.remove()

    log(f"reader: synthetic {synth} entries")
    cg = Cgroup("synthetic")
    pin = Pin("synthetic", cg, "none", max_connections=synth + synth // 10).attach()
    try:
        fill = json.loads(subprocess.run(
            [sys.executable, os.path.join(HERE, "fillmap.py"), pin.dir, str(synth),
             "--cgroup-id", str(cg.id)], capture_output=True, text=True, check=True).stdout)
        log(f"synthetic: filled {fill['filled']} in {fill['seconds']} s")
        out = os.path.join(WORK, "out-synthetic")
        r = measure_size(a, pin, f"synthetic {synth}", pin.tracked(), out, False,
                         ("--max-connection-series", "1000"), reps=SYNTH_REPS,
                         with_top=False)
        r.update({"entries": synth, "fill_s": fill["seconds"]})
        results["synthetic"] = r
        shutil.rmtree(out, ignore_errors=True)
    finally:
        pin.detach()
        cg.remove()
    RESULTS["scale"] = results
    if want_reader:
        emit_reader(a, results, synth)
    if want_output:
        emit_output(a, results)


def ms(xs):
    return spread([x * 1000 for x in xs], "{:.0f}")


def mib(xs):
    return spread([x / 1024 for x in xs], "{:.1f}")


def emit_reader(a, res, synth):
    rows, trows, trows_top = [], [], []
    for r in res["real"]:
        ratio = [c / s for c, s in zip(r["collect_s"], r["ss_s"])]
        dratio = [d / s for d, s in zip(r["dump_s"], r["ss_s"])]
        tratio = [t / d for t, d in zip(r["top_s"], r["dump_s"])]
        rows.append([f"{r['pairs']:,}", f"{r['conns']:,}", f"{r['ss_listed']:,}",
                     ms(r["collect_s"]), mib(r["collect_kib"]), ms(r["dump_s"]),
                     mib(r["dump_kib"]), ms(r["ss_s"]), spread(ratio, "{:.2f}"),
                     verdict(med(ratio) <= 0.5), spread(dratio, "{:.2f}")])
        trows_top.append([f"{r['pairs']:,}", f"{r['conns']:,}", ms(r["dump_s"]), ms(r["top_s"]),
                          spread(tratio, "{:.2f}"), verdict(med(tratio) <= 1.0),
                          ms(r["top_text_s"]), ms(r["top_wall_s"]), mib(r["top_kib"])])
    if res["real"]:
        big = res["real"][-1]
        c, m = med(big["collect_s"]) * 1000, med(big["collect_kib"]) / 1024
        reached = "" if big["pairs"] >= 100_000 else " (largest reached; target is for 100,000)"
        trows.append([f"{big['pairs']:,} real connections ({big['conns']:,} tracked sockets){reached}",
                      f"{c:.0f} ms, {m:.1f} MiB", "≤ 300 ms and ≤ 64 MiB at 100k connections",
                      verdict(c <= 300 and m <= 64)])
    s = res["synthetic"]
    if s:
        c, m = med(s["collect_s"]) * 1000, med(s["collect_kib"]) / 1024
        per = c / (s["conns"] / 100_000) if s["conns"] else 0
        trows.append([f"{synth:,} synthetic map entries", f"{c:.0f} ms, {m:.1f} MiB",
                      f"no target (= {per:.0f} ms per 100k entries)", "—"])
    srows = []
    if s:
        srows.append([f"{s['entries']:,}", f"{s['first_collect_s'] * 1000:.0f} ms, "
                      f"{s['first_collect_kib'] / 1024:.0f} MiB", ms(s["collect_s"]),
                      mib(s["collect_kib"]), ms(s["dump_s"]), mib(s["dump_kib"])])
    notes = "".join(f"\nNote: {n}\n" for n in res["notes"])
    emit(f"""### 4. reader: one `collect` and one `dump --json` vs `ss -tin`

Command: {cmdline('reader')}

Real connections: `scripts/bench.d/conngen.py` processes (≤ 9000 pairs each, one
127.0.0.x listener each, open-file limit raised to the hard limit) inside the
benchmark's cgroup, pinned with `--hooks default --max-connections
{2 * (res['real'][-1]['pairs'] if res['real'] else 0) + 20000}`; each pair sent 100 bytes each way, then stays idle.
Both ends are tracked, so N pairs = 2N map entries. Once every connection is
older than the 5 s long-connection threshold: one warm-up `collect` (the first
cycle, which creates the state), then {a.reps} rounds of `longconn-reader collect
--out-dir D --log-max-bytes 64GiB` (the default outputs: access.csv,
longconn.prom, state.bin; idle connections get an access record only every
`--idle-record-interval`, 60 s),
`longconn-reader dump --json >/dev/null`, `ss -tinH
>/dev/null` (every TCP socket on the host, the same sockets plus a few others).
Wall time and the process's own peak RSS (GNU `time -f %M`), median (min–max).
Ratio = collect / ss of the same round; target ≤ 0.5.
{notes}
{table(["connections (pairs)", "map entries", "ss sockets", "collect ms", "collect MiB", "dump ms", "dump MiB", "ss -tin ms", "collect / ss (target ≤ 0.5)", "result", "dump / ss"], rows)}

Synthetic: `longconn-pin --hooks none --max-connections {synth + synth // 10}`
onto an empty cgroup, then `scripts/bench.d/fillmap.py` writes {synth:,} records
with BPF_MAP_UPDATE_BATCH (family AF_INET, state ESTABLISHED, flag established,
start well in the past; outbound to 200 services, inbound on 8 local ports) in
{s['fill_s'] if s else 0} s; then the first `collect --max-connection-series 1000`
(which creates the state), one more `collect` (a steady-state cycle) and one
`dump --json`: timed once each, not {a.reps} times, because one cycle at this
size takes from tens of seconds to minutes here.

{table(["map entries", "first collect", "steady-state collect ms", "collect MiB", "dump ms", "dump MiB"], srows)}

{table(["scale", "measured (median collect)", "target", "result"], trows)}

#### `top`: one refresh vs `dump --json`

Same connections and rounds: after each `dump --json`, `longconn-reader top
--once --interval 100ms >FILE`, which reports on its first line what its
second refresh took (read with the read-time refresh, rates) and what the
table of a 50-line screen took (filter and sort every line, text of the
visible ones): their sum is what the screen does every `--interval`. Target
(issue 19): a refresh costs no more than `dump --json` (its wall time).
Also shown: `--once`'s own table (text of every line) and its wall time
(two refreshes 100 ms apart, that table, process start and exit).

{table(["connections (pairs)", "map entries", "dump ms", "top refresh ms (read + 50-line screen)", "top / dump (target ≤ 1)", "result", "--once text of every line ms", "top --once wall ms", "top --once MiB"], trows_top)}
""")


def emit_output(a, res):
    rows = []
    sets = [(f"{r['pairs']:,} pairs", r) for r in res["real"]]
    if res["synthetic"]:
        sets.append((f"{res['synthetic']['entries']:,} synthetic", res["synthetic"]))
    names = sorted({k for _, r in sets for w in r["written"] for k in w},
                   key=lambda k: (OUTPUTS.index(k) if k in OUTPUTS else 99, k))
    sets += [(f"{r['pairs']:,} pairs, all active", dict(r, written=r["active_written"]))
             for r in res["real"] if r.get("active_written")]
    for label, r in sets:
        for k in names:
            xs = [w.get(k, 0) for w in r["written"]]
            per = [x / r["conns"] for x in xs] if r["conns"] > 0 else []
            rows.append([label, f"{r['conns']:,}", k, human_bytes(med(xs)),
                         f"{human_bytes(min(xs))}–{human_bytes(max(xs))}",
                         spread(per, "{:.0f}")])
        tot = [sum(w.values()) for w in r["written"]]
        rows.append([label, f"{r['conns']:,}", "**all**", human_bytes(med(tot)),
                     f"{human_bytes(min(tot))}–{human_bytes(max(tot))}",
                     spread([t / r["conns"] for t in tot], "{:.0f}") if r["conns"] else "n/a"])
    emit(f"""### 5. output: bytes written per cycle and per connection

Command: {cmdline('output')} (measured on the `collect` runs of section 4)

Per steady-state cycle ({a.reps} cycles after the first for real connections,
{SYNTH_REPS} for the synthetic set; every connection long and idle, and in the
"all active" rows every pair sent 10 bytes each way just before the cycle): growth of
the append-only files (access.csv, access.jsonl, otlp-metrics.jsonl,
otlp-logs.jsonl; rotation is pushed out of the way with `--log-max-bytes
64GiB`); for `longconn.prom`, which each cycle rewrites whole (temp file +
rename), the new file's size; for the state, the growth of `state.journal`
(its size when new) and the size of `state.bin` in cycles that wrote a new
base (a new inode), 0 in the others. Per connection = per tracked socket
(map entry).

{table(["set", "map entries", "output", "bytes per cycle (median)", "min–max", "bytes per connection"], rows)}
""")


# ======================================================================= 6. hooks
FIELDS = [("bytes_acked", "bytes_sent"), ("bytes_received", "bytes_received"),
          ("segs_out", "packets_sent"), ("segs_in", "packets_received"),
          ("total_retrans", "retransmits")]


def ss_info(ports):
    """{(local_port, remote_port): {field: n}} from `ss -tinHa` for loopback sockets."""
    out = subprocess.run(["ss", "-tinHa"], capture_output=True, text=True, check=True).stdout
    res, cur = {}, None
    for line in out.splitlines():
        if line and not line[0].isspace():
            f = line.split()
            cur = None
            if len(f) >= 5:
                lp, rp = f[3].rsplit(":", 1)[1], f[4].rsplit(":", 1)[1]
                if lp.isdigit() and rp.isdigit() and (int(lp) in ports or int(rp) in ports):
                    cur = (int(lp), int(rp))
            continue
        if cur is None:
            continue
        info = {k: 0 for k, _ in FIELDS}
        for tok in line.split():
            k, _, v = tok.partition(":")
            if k in ("bytes_acked", "bytes_received", "segs_out", "segs_in") and v.isdigit():
                info[k] = int(v)
            elif k == "retrans" and "/" in v:
                info["total_retrans"] = int(v.split("/")[1])
        res[cur] = info
    return res


def exactness_once(pin, cg):
    p = cg.popen([binary("longconn-traffic")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                 text=True)

    def cmd(line):
        p.stdin.write(line + "\n")
        p.stdin.flush()
        ans = json.loads(p.stdout.readline())
        if "error" in ans:
            raise RuntimeError(f"longconn-traffic {line}: {ans['error']}")
        return ans

    try:
        pr = cmd("pair x 4")
        cport, sport = pr["client_port"], pr["server_port"]
        cmd("send x c2s 1048576")
        cmd("send x s2c 307200")
        time.sleep(0.3)
        # The map as the preset's hooks left it first (the refresh writes into it), then as read.
        raw = json.loads(subprocess.run(pin.reader("dump", "--json", "--no-refresh", "--port", sport),
                                        capture_output=True, text=True, check=True).stdout)
        ss = ss_info({sport})
        dump = json.loads(subprocess.run(pin.reader("dump", "--json", "--port", sport),
                                         capture_output=True, text=True, check=True).stdout)
        cmd("close x")
        p.stdin.write("exit\n")
        p.stdin.close()
        p.wait(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
    def compare(dump):
        match, total, diffs = 0, 0, {}
        for end, key in (("client", (cport, sport)), ("server", (sport, cport))):
            d = next((x for x in dump if (x["local_port"], x["remote_port"]) == key), None)
            s = ss.get(key)
            for ssf, df in FIELDS:
                total += 1
                got = d.get(df) if d else None
                want = s.get(ssf) if s else None
                if got is not None and got == want:
                    match += 1
                else:
                    diffs.setdefault(f"{end} {ssf}", []).append(
                        "missing" if got is None or want is None else got - want)
        return match, total, diffs

    return compare(dump), compare(raw)


def hooks(a):
    presets = PRESETS + ["sockops", "none"]
    cg = Cgroup("hooks")
    ex = {p: {"match": 0, "total": 0, "diffs": {}, "raw_match": 0} for p in presets}
    for rep in range(a.reps):
        for preset in presets:
            pin = Pin(f"hooks_{preset}", cg, preset).attach()
            (m, t, d), (rm, _, _) = exactness_once(pin, cg)
            pin.detach()
            e = ex[preset]
            e["match"] += m
            e["raw_match"] += rm
            e["total"] += t
            for k, v in d.items():
                e["diffs"].setdefault(k, []).extend(v)
            log(f"hooks exactness rep {rep + 1}/{a.reps} {preset}: {m}/{t} (map alone {rm}/{t})"
                + (f" {d}" if d else ""))
    over = None
    if not a.quick:
        over = hooks_overhead(a, cg)
    cg.remove()
    RESULTS["hooks"] = {"exactness": ex, "overhead": over}
    pc = RESULTS.get("progcost", {}).get("ns", {})
    rows, orows = [], []
    for preset in presets:
        e = ex[preset]
        diffs = "; ".join(f"{k} {'/'.join(sorted({f'{x:+d}' if isinstance(x, int) else x for x in v}))}"
                          f" ({len(v)}/{a.reps})" for k, v in sorted(e["diffs"].items())) or "—"
        seg = "; ".join(f"{n.replace('longconn_', '')} {med(v):.0f}"
                        for n, v in sorted(pc.get(preset, {}).items()) if n != "longconn_sockops")
        sh = RESULTS.get("progcost", {}).get("cpu_share_net", {}).get(preset)
        rows.append([preset, f"{e['match']}/{e['total']}", f"{e['raw_match']}/{e['total']}", diffs,
                     seg or ("—" if preset in ("default", "none", "sockops") else "(run section 3)"),
                     f"{med(sh) * 100:.2f}%" if sh else "—"])
        if over and preset in over:
            o = over[preset]
            orows.append([preset] + [spread(o[k], "{:.3f}") for k in
                                     ("p1", "p8", "churn", "p1_cpu", "p8_cpu", "churn_cpu")])
    if over:
        odesc = f"""
Overhead: in each of {a.reps} rounds the sides {', '.join(['not attached'] + [x for x in over if x != 'raw'])}
run in a rotating order; each pins its preset (fresh),
runs `iperf3 -P 1` and `-P 8` ({a.secs_hooks} s each) and `churn.py … {a.churn_hooks}`
inside the cgroup, and detaches. Ratio = preset / not attached of the same round
(≥ 1 would be faster than nothing attached, which only noise can do): wall
throughput first, then the same per CPU-second (as in sections 1 and 2).

{table(["preset", "iperf3 -P 1", "iperf3 -P 8", "churn", "iperf3 -P 1 per CPU-s",
        "iperf3 -P 8 per CPU-s", "churn per CPU-s"], orows)}
"""
    else:
        odesc = "\nOverhead per preset was skipped (`--quick`).\n"
    emit(f"""### 6. hooks: exactness and cost of each `--hooks` preset

Command: {cmdline('hooks')}

Exactness: for each preset in turn ({', '.join(presets)}; {a.reps} rounds) pin it
fresh, then inside the cgroup `longconn-traffic`: `pair x 4`, `send x c2s
1048576`, `send x s2c 307200`, 300 ms of quiet, then `dump --json --port S`
against `ss -tinHa` for bytes_acked, bytes_received, segs_out, segs_in,
total_retrans on both ends: 10 fields per round. "As read" is `dump` (every
reader refreshes from the sockets first, whatever the preset); "map alone" is
`dump --no-refresh` taken just before, i.e. what the preset's own hooks keep in
map_of_tcp_conns for tools that read the map directly. `default` and `none`
are the same preset (no per-segment hook).

{table(["preset", "fields equal to ss -tin, as read", "map alone (--no-refresh)", "differences as read (dump − ss), rounds", "ns/run per hook (section 3)", "BPF time / iperf3 CPU, less floor (section 3)"], rows)}
{odesc}""")


def hooks_overhead(a, cg):
    sides = ["off", "none"] + PRESETS
    srv = Iperf(cg)
    raw = {s: {"p1": [], "p8": [], "churn": [], "p1_cpu": [], "p8_cpu": [], "churn_cpu": []}
           for s in sides}
    for rep in range(a.reps):
        order = sides[rep % len(sides):] + sides[:rep % len(sides)]
        for side in order:
            pin = Pin(f"hooks_over_{side}", cg, side).attach() if side != "off" else None
            for key, val in (("p1", srv.run(1, a.secs_hooks)), ("p8", srv.run(8, a.secs_hooks)),
                             ("churn", churn_rate(cg, a.churn_hooks, f"127.0.3.{rep % 250 + 1}"))):
                raw[side][key].append(val[0])
                raw[side][key + "_cpu"].append(val[1])
            if pin:
                pin.detach()
        log(f"hooks overhead round {rep + 1}/{a.reps}: " + ", ".join(
            f"{s} {raw[s]['p1'][-1]:.1f}/{raw[s]['p8'][-1]:.1f} Gbit/s {raw[s]['churn'][-1]:.0f} c/s"
            for s in sides))
    srv.stop()
    over = {}
    for s in sides[1:]:
        over[s] = {k: paired_ratios(raw[s][k], raw["off"][k]) for k in raw[s]}
    over["raw"] = raw
    return over


# ======================================================================= main
def header(a):
    def sh(cmd):
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()

    cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    mem = sh("awk '/MemTotal/ {printf \"%.0f GiB\", $2/1048576}' /proc/meminfo")
    root = cgroup2_root()
    try:
        att = json.loads(sh(f"bpftool -j cgroup show {root}") or "[]")
        others = ", ".join(f"{x.get('name', '?')} ({x.get('attach_type', '?')})" for x in att)
    except ValueError:
        others = "unknown"
    emit(f"""## Run {time.strftime('%Y-%m-%d %H:%M:%S %Z')}

- Command: `{CMD}`
- Machine: Linux {platform.release()}, {os.cpu_count()} cores ({cpu}), {mem} RAM; load
  average at start {os.getloadavg()[0]:.2f}
- Binaries: `{os.environ.get('LCBENCH_BIN_DESC', binary(''))}`
- Programs already attached to the cgroup v2 root ({root}) by someone else, running on
  both sides of every comparison: {others or 'none'}
- {a.reps} repetitions per figure; median (min–max).
""")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--only", choices=SECTIONS, action="append")
    a = ap.parse_args()
    a.secs_hooks = 5
    a.churn_hooks = 5000
    only = a.only or SECTIONS
    os.makedirs(WORK, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # Ctrl-C raises KeyboardInterrupt even when started with SIGINT ignored (nohup, &).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    t0 = time.time()
    try:
        header(a)
        if "datapath" in only:
            datapath(a)
        if "churn" in only:
            churn(a)
        if "progcost" in only:
            progcost(a)
        if "reader" in only or "output" in only:
            scale(a, "reader" in only, "output" in only)
        if "hooks" in only:
            hooks(a)
        if "names" in only:
            RESULTS["names"] = names_bench.names(a, emit)
        emit(f"_Total run time: {(time.time() - t0) / 60:.1f} min; load average at end "
             f"{os.getloadavg()[0]:.2f}._")
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
    finally:
        cleanup_all()
        with open(os.path.join(WORK, "results.json"), "w") as f:
            json.dump(RESULTS, f, indent=1, default=str)


if __name__ == "__main__":
    main()
