#!/usr/bin/env python3
"""Hold PAIRS real, idle TCP connection pairs on loopback in each of many cgroups.

    namedgen.py ADDR PAIRS CGROUP_DIR...

For each CGROUP_DIR in turn, moves itself into it, listens on ADDR at a free
port, opens PAIRS client connections to it and accepts them (so both ends of
every pair belong to that cgroup), sends 100 bytes each way. Then prints
{"ready": total pairs} and holds everything open until stdin reaches EOF (or
SIGTERM); "poke" on stdin makes every pair send 10 bytes each way and prints
{"poked": n}, as conngen.py does. Closes with SO_LINGER 0 (no TIME_WAIT).
Used by the `names` benchmark: many containers' connections from a few
processes (one process per container would cost 500 Python interpreters).
"""

import os
import resource
import signal
import socket
import sys

from conngen import closer, hold


def main():
    addr, pairs, cgroups = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if 2 * pairs * len(cgroups) + 16 > hard:
        sys.exit(f"namedgen: {pairs * len(cgroups)} pairs need more than {hard} files")
    socks = []
    close_all = closer(socks)
    signal.signal(signal.SIGTERM, close_all)
    for cg in cgroups:
        with open(os.path.join(cg, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lst.bind((addr, 0))
        lst.listen(4096)
        port = lst.getsockname()[1]
        for _ in range(pairs):
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.connect((addr, port))
            s, _ = lst.accept()
            socks += [c, s]
            c.sendall(b"c" * 100)
            s.sendall(b"s" * 100)
            s.recv(100, socket.MSG_WAITALL)
            c.recv(100, socket.MSG_WAITALL)
        lst.close()
    hold(socks, close_all, {"ready": len(socks) // 2})


if __name__ == "__main__":
    main()
