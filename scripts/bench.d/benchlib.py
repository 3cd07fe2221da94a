"""Shared pieces of scripts/bench: cgroups, pins, timed runs, statistics, markdown.

Everything this module creates is named after the run id (LCBENCH_RUN) so that
cleanup, here or in scripts/bench's trap, removes exactly what this run made:
pin dirs /sys/fs/bpf/lcbench_<run>_<name>, cgroups <cgroup2>/longconn-bench-<run>-<name>.
"""

import json
import os
import socket
import statistics
import subprocess
import sys
import time

RUN = os.environ.get("LCBENCH_RUN") or str(os.getpid())
BIN = os.environ.get("LCBENCH_BIN") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "target", "release")
WORK = os.environ.get("LCBENCH_WORK") or f"/tmp/lcbench-{RUN}"
HERE = os.path.dirname(os.path.abspath(__file__))
BPFFS = "/sys/fs/bpf"


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def binary(name):
    return os.path.join(BIN, name)


def cgroup2_root():
    with open("/proc/mounts") as f:
        for line in f:
            p = line.split()
            if len(p) > 2 and p[2] == "cgroup2":
                return p[1]
    raise SystemExit("bench: no cgroup v2 filesystem in /proc/mounts")


# ---------------------------------------------------------------- cleanup registry
_CGROUPS, _PINS, _PROCS = [], [], []


def track_proc(p):
    _PROCS.append(p)
    return p


def cleanup_all():
    for p in reversed(_PROCS):
        if p.poll() is None:
            try:
                p.kill()
            except OSError:
                pass
    for p in _PROCS:
        try:
            p.wait(timeout=10)
        except Exception:
            pass
    _PROCS.clear()
    for pin in reversed(_PINS):
        pin.detach(quiet=True)
    for cg in reversed(_CGROUPS):
        cg.remove()


# ---------------------------------------------------------------- cgroups
def procs_of(path):
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


class Cgroup:
    """A child cgroup of the cgroup v2 root owned by this run."""

    def __init__(self, name):
        self.name = f"longconn-bench-{RUN}-{name}"
        self.path = os.path.join(cgroup2_root(), self.name)
        os.mkdir(self.path)
        _CGROUPS.append(self)

    @property
    def id(self):
        return os.stat(self.path).st_ino

    def argv(self, argv):
        """argv run inside this cgroup: the shell moves itself in, then execs."""
        return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', self.path, *map(str, argv)]

    def popen(self, argv, **kw):
        return track_proc(subprocess.Popen(self.argv(argv), **kw))

    def procs(self):
        return procs_of(self.path)

    def kill_all(self):
        """Kills every process in this cgroup and below (cgroup.kill is recursive)."""
        kill = os.path.join(self.path, "cgroup.kill")
        for _ in range(100):
            pids = [p for d, _, _ in os.walk(self.path) for p in procs_of(d)]
            if not pids:
                return
            if os.path.exists(kill):
                try:
                    with open(kill, "w") as f:
                        f.write("1")
                except OSError:
                    pass
            else:
                for pid in pids:
                    try:
                        os.kill(pid, 9)
                    except OSError:
                        pass
            time.sleep(0.05)

    def remove(self):
        if not os.path.isdir(self.path):
            return
        self.kill_all()
        # Child cgroups (the names benchmark's kubelet-shaped tree) first.
        below = [d for d, _, _ in os.walk(self.path, topdown=False)]
        for d in below:
            for _ in range(100):
                try:
                    os.rmdir(d)
                    break
                except OSError:
                    time.sleep(0.05)
        if self in _CGROUPS:
            _CGROUPS.remove(self)


# ---------------------------------------------------------------- pins
class Pin:
    """One longconn pin dir of this run."""

    def __init__(self, name, cgroup, hooks="default", max_connections=None):
        self.dir = os.path.join(BPFFS, f"lcbench_{RUN}_{name}")
        self.cgroup = cgroup
        self.hooks = hooks
        self.max_connections = max_connections
        self.attached = False

    def attach(self):
        argv = [binary("longconn-pin"), "--pin-dir", self.dir, "--cgroup", self.cgroup.path,
                "--hooks", self.hooks]
        if self.max_connections:
            argv += ["--max-connections", str(self.max_connections)]
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"longconn-pin failed ({r.returncode}): {r.stderr.strip()}")
        self.attached = True
        if self not in _PINS:
            _PINS.append(self)
        return self

    def detach(self, quiet=False):
        if os.path.exists(self.dir):
            r = subprocess.run([binary("longconn-pin"), "--pin-dir", self.dir, "detach"],
                               capture_output=True, text=True)
            if r.returncode != 0 and not quiet:
                log(f"detach {self.dir} failed: {r.stderr.strip()}")
        self.attached = False
        if self in _PINS:
            _PINS.remove(self)

    def prog_ids(self):
        """{program name: id} of the programs behind this pin's links."""
        out = {}
        links = os.path.join(self.dir, "links")
        for f in sorted(os.listdir(links)):
            link = json.loads(subprocess.run(["bpftool", "-j", "link", "show", "pinned",
                                              os.path.join(links, f)],
                                             capture_output=True, text=True, check=True).stdout)
            prog = json.loads(subprocess.run(["bpftool", "-j", "prog", "show", "id",
                                              str(link["prog_id"])],
                                             capture_output=True, text=True, check=True).stdout)
            out[prog["name"]] = link["prog_id"]
        return out

    def tracked(self):
        """Entries in map_of_tcp_conns, from `longconn-pin status`."""
        r = subprocess.run([binary("longconn-pin"), "--pin-dir", self.dir, "status"],
                           capture_output=True, text=True)
        for line in r.stdout.splitlines():
            if line.startswith("connections:"):
                return int(line.split()[1])
        return -1

    def reader(self, *args, **kw):
        return [binary("longconn-reader"), "--pin-dir", self.dir, *map(str, args)]


def prog_stats(ids):
    """{name: (run_time_ns, run_cnt)} for program ids (needs kernel.bpf_stats_enabled)."""
    out = {}
    for name, pid in ids.items():
        p = json.loads(subprocess.run(["bpftool", "-j", "prog", "show", "id", str(pid)],
                                      capture_output=True, text=True, check=True).stdout)
        out[name] = (p.get("run_time_ns", 0), p.get("run_cnt", 0))
    return out


# ---------------------------------------------------------------- processes
def timed(argv, stdout=subprocess.DEVNULL, timeout=None):
    """Runs argv; returns (wall seconds, peak RSS KiB of that process, exit code, stderr).

    Peak RSS comes from GNU time (`/usr/bin/time -f %M`): wait4's ru_maxrss of a
    child forked from this Python process also counts the parent's pages the
    child held between fork and exec (hundreds of MiB once this process has
    parsed `ss` output), which is not the measured program's memory."""
    errpath = os.path.join(WORK, f"stderr.{os.getpid()}")
    rsspath = os.path.join(WORK, f"rss.{os.getpid()}")
    gnu_time = os.path.exists("/usr/bin/time")
    if gnu_time:
        argv = ["/usr/bin/time", "-f", "%M", "-o", rsspath, *argv]
    with open(errpath, "w+b") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, stdout=stdout, stderr=err)
        _, status, ru = os.wait4(p.pid, 0)
        dt = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        msg = err.read().decode(errors="replace").strip()
    kib = ru.ru_maxrss
    if gnu_time:
        try:
            with open(rsspath) as f:
                kib = int(f.read().split()[-1])
        except (OSError, ValueError, IndexError):
            pass
    return dt, kib, p.returncode, msg


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_listening(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True,
                             text=True).stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


class Iperf:
    """An iperf3 server inside a cgroup; clients run in a cgroup too."""

    def __init__(self, cgroup):
        self.cgroup = cgroup
        self.start()

    def start(self):
        self.port = free_port()
        self.proc = self.cgroup.popen(["iperf3", "-s", "-p", self.port],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.port)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def client_argv(self, streams, seconds):
        return ["iperf3", "-c", "127.0.0.1", "-p", self.port, "-t", seconds, "-P", streams, "-J"]

    def run(self, streams, seconds, cgroup=None):
        """(Gbit/s received summed over streams, Gbit per CPU-second of client + server
        processes as iperf3 reports their CPU use, those CPU-seconds)."""
        cg = cgroup or self.cgroup
        last = ""
        for _ in range(2):
            r = subprocess.run(cg.argv(self.client_argv(streams, seconds)), capture_output=True,
                               text=True, timeout=seconds + 60)
            try:
                d = json.loads(r.stdout)
                if "error" not in d:
                    end = d["end"]
                    gbps = end["sum_received"]["bits_per_second"] / 1e9
                    cpu = end["cpu_utilization_percent"]
                    cores = (cpu["host_total"] + cpu["remote_total"]) / 100
                    return (gbps, (gbps / cores if cores > 0 else float("nan")),
                            cores * end["sum_received"]["seconds"])
                last = d["error"]
            except (ValueError, KeyError) as e:
                last = f"{e}: {r.stderr.strip()[:200]}"
            log(f"iperf3 failed ({last}); restarting the server")
            self.stop()
            self.start()
        raise RuntimeError(f"iperf3 failed twice: {last}")


def churn_rate(cgroup, n, addr="127.0.0.1"):
    """(connections per second, connections per CPU-second) of bench.d/churn.py doing n
    connect / 1000 B each way / close cycles inside cgroup (its loop alone)."""
    r = subprocess.run(cgroup.argv([sys.executable, os.path.join(HERE, "churn.py"), addr, n]),
                       capture_output=True, text=True, timeout=600)
    try:
        d = json.loads(r.stdout)
    except ValueError:
        raise RuntimeError(f"churn.py failed ({r.returncode}): {r.stderr.strip()[-300:]}")
    return n / d["wall_s"], (n / d["cpu_s"] if d["cpu_s"] > 0 else float("nan"))


# ---------------------------------------------------------------- stats and markdown
def med(xs):
    return statistics.median(xs) if xs else float("nan")


def spread(xs, fmt="{:.2f}"):
    """'median (min–max)'."""
    if not xs:
        return "n/a"
    return f"{fmt.format(med(xs))} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"


def paired_ratios(a, b):
    return [x / y for x, y in zip(a, b) if y]


def verdict(ok):
    return "**met**" if ok else "**missed**"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(lines)


def human_bytes(n):
    for unit, k in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= k:
            return f"{n / k:.1f} {unit}"
    return f"{n:.0f} B"
