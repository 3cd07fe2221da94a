"""names: what naming workloads from the runtime's state adds to a collect
cycle (issue 17: 100k connections across 500 containers add <= 5 %).

500 containers in kubelet-shaped cgroups (containerd, systemd driver:
kubepods.slice/…/kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope),
100 connection pairs in each (100 000 tracked connections), and a synthetic
containerd state tree of the same containers: a task bundle config.json each,
an OCI spec of a real one's size with the CRI plugin's annotations. Two state
and out dirs on the same pins, alternated (--take-over, as the reader
section does): `named` reads the tree (--runtime-root), `unnamed` an empty
root, so its workload is the cgroup path, as before issue 17. First cycle
(each cgroup resolved), then idle cycles and active cycles (every pair
moved since the last), pairs in alternating order; ratio per pair.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
import time

from benchlib import (
    HERE, RUN, WORK, Cgroup, Pin, binary, log, med, paired_ratios, spread, table, timed,
    track_proc, verdict,
)

SYSCALLS = [f"syscall_{i}" for i in range(330)]  # a real default seccomp profile lists ~330


def spec(i, cid, uid, cgroups_path):
    """An OCI runtime spec shaped like one containerd's CRI plugin writes."""
    return {
        "ociVersion": "1.0.2-dev",
        "process": {
            "user": {"uid": 0, "gid": 0, "additionalGids": [0, 1, 2, 3, 4, 6, 10, 11, 20, 26, 27]},
            "args": ["/app", "--port", "8080"],
            "env": [f"KUBE_SERVICE_{k}_PORT=tcp://10.96.{k}.1:443" for k in range(24)]
            + ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", f"HOSTNAME=pod-{i}"],
            "cwd": "/",
            "capabilities": {k: ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER",
                                 "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID",
                                 "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
                                 "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
                             for k in ("bounding", "effective", "permitted")},
            "noNewPrivileges": False,
            "oomScoreAdj": 999,
        },
        "root": {"path": "rootfs"},
        "mounts": [{"destination": d, "type": "bind", "source": f"/var/lib/kubelet/pods/{uid}/volumes/{d}",
                    "options": ["rbind", "rprivate", "rw"]} for d in
                   ("/proc", "/dev", "/dev/pts", "/dev/mqueue", "/sys", "/sys/fs/cgroup",
                    "/etc/hosts", "/dev/termination-log", "/etc/hostname", "/etc/resolv.conf",
                    "/dev/shm", "/var/run/secrets/kubernetes.io/serviceaccount")],
        "annotations": {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-id": hashlib.sha256(f"sandbox-{RUN}-{i}".encode()).hexdigest(),
            "io.kubernetes.cri.sandbox-namespace": "bench",
            "io.kubernetes.cri.sandbox-name": f"pod-{i}",
            "io.kubernetes.cri.container-name": "app",
            "io.kubernetes.cri.image-name": "registry.example/app:1.0",
        },
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}], "cpu": {"shares": 2, "period": 100000}},
            "cgroupsPath": cgroups_path,
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
            + [{"type": "network", "path": f"/proc/{1000 + i}/ns/net"}],
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
                            "/proc/scsi", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
            "seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
                        "syscalls": [{"names": SYSCALLS, "action": "SCMP_ACT_ALLOW"}]},
        },
    }


def collect(pin, out, extra):
    return pin.reader("collect", "--out-dir", out, "--take-over", "--log-max-bytes", "64GiB", *extra)


def names(a, emit):
    n_ctr, per = (50, 100) if a.quick else (500, 100)
    per_proc = 9000 // per  # containers per generator process (open-file limit)
    cg = Cgroup("names")
    root, empty = os.path.join(WORK, "names-node"), os.path.join(WORK, "names-empty")
    os.makedirs(empty, exist_ok=True)
    tasks = os.path.join(root, "run/containerd/io.containerd.runtime.v2.task/k8s.io")
    leaves, spec_bytes = [], 0
    for i in range(n_ctr):
        uid = f"6c3b0e6e-2c47-4a5e-9a4f-{i:012x}"
        cid = hashlib.sha256(f"{RUN}-{i}".encode()).hexdigest()
        rel = (f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
               f"{uid.replace('-', '_')}.slice/cri-containerd-{cid}.scope")
        leaf = os.path.join(cg.path, rel)
        os.makedirs(leaf)
        leaves.append(leaf)
        os.makedirs(os.path.join(tasks, cid))
        text = json.dumps(spec(i, cid, uid, f"/{cg.name}/{rel}"))
        spec_bytes += len(text)
        with open(os.path.join(tasks, cid, "config.json"), "w") as f:
            f.write(text)
    pin = Pin("names", cg, "default", max_connections=2 * n_ctr * per + 20000).attach()
    procs = []
    res = {"containers": n_ctr, "pairs": n_ctr * per, "spec_bytes": spec_bytes // n_ctr}
    try:
        for k in range(0, n_ctr, per_proc):
            procs.append(track_proc(subprocess.Popen(
                [sys.executable, os.path.join(HERE, "namedgen.py"), f"127.0.1.{10 + k // per_proc}",
                 str(per), *leaves[k:k + per_proc]],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)))
        for p in procs:
            line = p.stdout.readline()
            if '"ready"' not in line:
                raise RuntimeError(f"namedgen did not get ready (exit {p.poll()}): {line!r}")
        t_ready = time.time()
        res["tracked"] = pin.tracked()
        log(f"names: {res['tracked']} connections in {n_ctr} containers")
        time.sleep(max(0.0, t_ready + 6 - time.time()))  # all long connections
        sides = {"unnamed": ["--runtime-root", empty], "named": ["--runtime-root", root]}
        outs = {s: os.path.join(WORK, f"names-out-{s}") for s in sides}

        def cycle(side, poke=False):
            if poke:
                for p in procs:
                    p.stdin.write("poke\n")
                    p.stdin.flush()
                for p in procs:
                    if '"poked"' not in p.stdout.readline():
                        raise RuntimeError(f"namedgen did not poke (exit {p.poll()})")
            dt, _, rc, err = timed(collect(pin, outs[side], sides[side]))
            if rc != 0:
                raise RuntimeError(f"collect ({side}) failed ({rc}): {err}")
            return dt

        res["first"] = {s: cycle(s) for s in sides}
        log(f"names: first cycles {res['first']}")
        for kind, poke in (("idle", False), ("active", True)):
            res[kind] = {s: [] for s in sides}
            for rep in range(a.reps):
                order = ["unnamed", "named"] if rep % 2 == 0 else ["named", "unnamed"]
                for s in order:
                    res[kind][s].append(cycle(s, poke))
                log(f"names {kind} rep {rep + 1}/{a.reps}: "
                    + ", ".join(f"{s} {res[kind][s][-1] * 1000:.0f} ms" for s in sides))
        # The named side's outputs carry the names (a benchmark of the wrong thing otherwise).
        prom = open(os.path.join(outs["named"], "longconn.prom")).read()
        res["named_series"] = len(set(re.findall(r'workload="bench/(pod-[0-9]+)"', prom)))
        if res["named_series"] < n_ctr:
            raise RuntimeError(f"named side: {res['named_series']} of {n_ctr} pods named in longconn.prom")
    finally:
        for p in procs:
            try:
                p.stdin.close()
            except OSError:
                pass
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        pin.detach()
        cg.remove()
    emit_names(a, res, emit)
    return res


def emit_names(a, r, emit):
    ms = lambda xs: spread([x * 1000 for x in xs], "{:.0f}")  # noqa: E731
    rows = [["first (resolves every container)", f"{r['first']['unnamed'] * 1000:.0f}",
             f"{r['first']['named'] * 1000:.0f}", f"{r['first']['named'] / r['first']['unnamed']:.3f}"]]
    ratios = {}
    for kind in ("idle", "active"):
        ratios[kind] = paired_ratios(r[kind]["named"], r[kind]["unnamed"])
        rows.append([f"{kind} cycle", ms(r[kind]["unnamed"]), ms(r[kind]["named"]),
                     spread(ratios[kind], "{:.3f}")])
    worst = max(med(ratios["idle"]), med(ratios["active"]))
    emit(f"""### names: workload names from runtime state (issue 17)

{r['tracked']} tracked connections ({r['pairs']} pairs) in {r['containers']} containers
(kubelet cgroups of the systemd driver's shape, 100 pairs each) and a containerd
state tree of the same containers (one task bundle `config.json` each, {r['spec_bytes']} B,
with the CRI plugin's annotations). `named` reads that tree (`--runtime-root`);
`unnamed` an empty root (its workload is the cgroup path, as before issue 17).
Each side has its own state and out dir on the same pins (`--take-over`), in
alternating order; collect wall time in ms, median (min–max) of {a.reps}; ratio
per pair. The named side's `longconn.prom` names all {r['named_series']} pods.

{table(["cycle", "unnamed ms", "named ms", "named / unnamed"], rows)}

Target: steady cycles ≤ 1.05 × unnamed: {verdict(worst <= 1.05)} (worst median {worst:.3f}).
""")
