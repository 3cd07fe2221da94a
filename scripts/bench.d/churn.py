#!/usr/bin/env python3
"""A tight, single-threaded connection churn loop on loopback.

    churn.py ADDR N

Listens on ADDR, then N times: connect, accept, 1000 bytes client -> server,
1000 bytes server -> client, close the server end, close the client end (so
TIME_WAIT lands on the listener's port and no ephemeral port is held).
Prints {"n": N, "wall_s": ..., "cpu_s": ...} for the loop alone: wall time and
this process's user + system CPU time (which, on loopback, includes the
softirq work done on its behalf unless the kernel accounts IRQ time apart).
"""

import json
import resource
import socket
import sys
import time


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main():
    addr, n = sys.argv[1], int(sys.argv[2])
    lst = socket.socket()
    lst.bind((addr, 0))
    lst.listen(128)
    target = lst.getsockname()
    payload = b"x" * 1000
    w0, c0 = time.perf_counter(), cpu()
    for _ in range(n):
        c = socket.socket()
        c.connect(target)
        s, _ = lst.accept()
        c.sendall(payload)
        s.recv(1000, socket.MSG_WAITALL)
        s.sendall(payload)
        c.recv(1000, socket.MSG_WAITALL)
        s.close()
        c.close()
    wall, used = time.perf_counter() - w0, cpu() - c0
    print(json.dumps({"n": n, "wall_s": wall, "cpu_s": used}))


if __name__ == "__main__":
    main()
