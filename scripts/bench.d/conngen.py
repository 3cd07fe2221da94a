#!/usr/bin/env python3
"""Hold PAIRS real, idle, established TCP connections on loopback.

    conngen.py ADDR PAIRS

Listens on ADDR (a 127.0.0.x address) at a free port, opens PAIRS client
connections to it and accepts them, sends 100 bytes each way on every pair,
prints {"ready": PAIRS, "addr": ..., "port": ...} and holds everything open
until stdin reaches EOF (or SIGTERM). A line "poke" on stdin makes every pair
send 10 bytes each way (read by the peer), then prints {"poked": PAIRS}: the
connections are active in the next reader cycle. It then closes with SO_LINGER 0 (RST),
so tearing down 100 000 sockets leaves no TIME_WAIT behind. Each process
raises its open-file limit to the hard limit; keep PAIRS <= (limit - 16) / 2.
"""

import json
import resource
import signal
import socket
import struct
import sys


def closer(socks):
    """A SIGTERM handler (and final step) that closes `socks` with SO_LINGER 0
    (RST: no TIME_WAIT left behind) and exits."""
    linger = struct.pack("ii", 1, 0)

    def close_all(*_):
        for s in socks:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                s.close()
            except OSError:
                pass
        socks.clear()
        sys.exit(0)

    return close_all


def hold(socks, close_all, ready):
    """Prints `ready`, then holds the pairs (client, server, client, ...) in
    `socks` until stdin reaches EOF; each "poke" line makes every pair send 10
    bytes each way (read by the peer) and prints {"poked": n}."""
    print(json.dumps(ready), flush=True)
    pairs_list = [(socks[i], socks[i + 1]) for i in range(0, len(socks), 2)]
    try:
        for line in sys.stdin:
            if line.strip() != "poke":
                continue
            for c, s in pairs_list:
                c.sendall(b"p" * 10)
                s.sendall(b"q" * 10)
            for c, s in pairs_list:
                s.recv(10, socket.MSG_WAITALL)
                c.recv(10, socket.MSG_WAITALL)
            print(json.dumps({"poked": len(pairs_list)}), flush=True)
    except KeyboardInterrupt:
        pass
    close_all()


def main():
    addr, pairs = sys.argv[1], int(sys.argv[2])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if 2 * pairs + 16 > hard:
        sys.exit(f"conngen: {pairs} pairs need {2 * pairs + 16} files, limit is {hard}")
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.bind((addr, 0))
    lst.listen(4096)
    port = lst.getsockname()[1]
    socks = []
    close_all = closer(socks)
    signal.signal(signal.SIGTERM, close_all)
    payload_c, payload_s = b"c" * 100, b"s" * 100
    backlog = []
    for _ in range(pairs):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        socks.append(c)
        c.connect((addr, port))
        s, _ = lst.accept()
        socks.append(s)
        c.sendall(payload_c)
        s.sendall(payload_s)
        backlog.append((c, s))
    # Read what the peer sent, so receive queues are empty like on an idle service.
    for c, s in backlog:
        s.recv(100, socket.MSG_WAITALL)
        c.recv(100, socket.MSG_WAITALL)
    backlog.clear()
    hold(socks, close_all, {"ready": pairs, "addr": addr, "port": port})


if __name__ == "__main__":
    main()
