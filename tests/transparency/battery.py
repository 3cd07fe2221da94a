#!/usr/bin/env python3
"""Transparency battery: application-visible TCP behaviours, one deterministic
observation per case.

longconn is an observability tool: a tracked application must not be able to
tell it is tracked. tests/e2e/transparency.rs runs this battery detached and
under every `longconn-pin --hooks` preset and fails on any difference.

Each case exercises one behaviour and records what the application sees
(return values, errno names, byte counts, poll/epoll masks) -- never ports,
addresses or timings. Timing-dependent cases (a blocking recv woken by
something that is not data) repeat their trial and record the count of each
outcome, so an intermittent difference shows up. Every socket has
SO_RCVTIMEO/SO_SNDTIMEO set and a watchdog ends the run at a global deadline,
so nothing hangs. All traffic is on loopback, or inside the private network
namespace given with --netns (TCP Fast Open cases).

Usage: battery.py [--netns /run/netns/NAME] [--only REGEX] [--list] [--timing]
Output: one JSON object {case_name: observation} on stdout. Exit 0, or 3 when
the global deadline passed. A case that raises records "exception:TYPE:ERRNO"
(a broken case, never an observation); one this kernel cannot run records
"needs-feature:FEATURE: why" (raise NeedsFeature).
"""

import array
import collections
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

S = socket
SAFETY = 2.0  # seconds: the receive/send timeout of every battery socket
DEADLINE = 150.0  # seconds: the whole run (one preset takes ~20 s)
FAMS = {
    "v4": (S.AF_INET, "127.0.0.1"),
    "v6": (S.AF_INET6, "::1"),
    "v4m": (S.AF_INET6, "::ffff:127.0.0.1"),
}
# Repetitions of the timing-dependent (wakeup) trials.
ITERS = {"v4": 10, "v6": 5, "v4m": 5}

FIONREAD = 0x541B  # = SIOCINQ
SIOCOUTQ = 0x5411
SIOCOUTQNSD = 0x894B
SIOCATMARK = 0x8905
SO_ZEROCOPY = 60
MSG_ZEROCOPY = 0x4000000
SO_EE_ORIGIN_ZEROCOPY = 5
SO_PEEK_OFF = 42
TCP_INQ = 36
TCP_CM_INQ = TCP_INQ
TCP_FASTOPEN_CONNECT = 30
TCP_NOTSENT_LOWAT = 25
TCPI_OPT_SYN_DATA = 32
IP_RECVERR = 11
IPV6_RECVERR = 25
CLONE_NEWNET = 0x40000000

LIBC = ctypes.CDLL(None, use_errno=True)
# Syscalls a thread blocked in socket I/O sits in (x86-64, aarch64).
BLOCKING_NRS = {
    "x86_64": {45, 47, 0, 7, 232, 275},
    "aarch64": {207, 212, 63, 73, 22, 76},
}.get(os.uname().machine)

CASES = []  # (name, function)


class NeedsFeature(Exception):
    """Raised by a case this kernel cannot run; names the kernel feature it
    needs. The only way a case may not be required (tests/e2e/transparency.rs
    treats any other exception as a broken case, and this one as a failure
    under CI=true)."""

    def __init__(self, feature, why):
        super().__init__("%s: %s" % (feature, why))
OPEN = []  # sockets and fds of the running case, closed after it


def case(name):
    def reg(fn):
        CASES.append((name, fn))
        return fn

    return reg


def per_family(prefix, fams=("v4", "v6", "v4m")):
    """Registers fn(fam) as PREFIX.v4, PREFIX.v6, PREFIX.v4m."""

    def reg(fn):
        for fam in fams:
            CASES.append(("%s.%s" % (prefix, fam), (lambda f: lambda: fn(f))(fam)))
        return fn

    return reg


# ---------------------------------------------------------------- helpers


def ename(e):
    if isinstance(e, OSError) and e.errno:
        return errno.errorcode.get(e.errno, "errno%d" % e.errno)
    return type(e).__name__


def attempt(fn, *a, **kw):
    """fn's result, or its error name."""
    try:
        r = fn(*a, **kw)
    except Exception as e:  # noqa: BLE001 - the error is the observation
        return "error:" + ename(e)
    return "bytes:" + show(r) if isinstance(r, bytes) else r


def show(data):
    """A bytes value as an observation: the text when short, else length and hash."""
    if isinstance(data, str):
        return data
    if len(data) <= 40:
        return data.decode("latin-1")
    return "len=%d sha1=%s" % (len(data), hashlib.sha1(data).hexdigest()[:12])


def tv(seconds):
    return struct.pack("ll", int(seconds), int(round((seconds % 1) * 1e6)))


def timeouts(s, rcv=SAFETY, snd=SAFETY):
    s.setsockopt(S.SOL_SOCKET, S.SO_RCVTIMEO, tv(rcv))
    s.setsockopt(S.SOL_SOCKET, S.SO_SNDTIMEO, tv(snd))


def keep(obj):
    OPEN.append(obj)
    return obj


def sock(fam):
    s = keep(S.socket(FAMS[fam][0], S.SOCK_STREAM))
    timeouts(s)
    return s


def listener(fam, backlog=128):
    af, addr = FAMS[fam]
    ls = keep(S.socket(af, S.SOCK_STREAM))
    if fam == "v4m":
        ls.setsockopt(S.IPPROTO_IPV6, S.IPV6_V6ONLY, 0)
    ls.bind((addr, 0))
    ls.listen(backlog)
    timeouts(ls)
    return ls


def pair(fam, before_connect=None):
    """A connected (client, server) pair, both blocking with safety timeouts."""
    ls = listener(fam)
    c = sock(fam)
    if before_connect:
        before_connect(c)
    c.connect(ls.getsockname()[:2])
    s, _ = ls.accept()
    keep(s)
    timeouts(s)
    ls.close()
    return c, s


def ioctl_int(s, req):
    buf = array.array("i", [0])
    fcntl.ioctl(s.fileno(), req, buf, True)
    return buf[0]


def settle(sender, limit=1.0):
    """Waits until everything `sender` sent is acked (on loopback: queued at the peer)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            if ioctl_int(sender, SIOCOUTQ) == 0:
                return
        except OSError:
            return
        time.sleep(0.001)


def recv_all(s, limit=1 << 30):
    """Reads until EOF; returns (bytes, error name or None)."""
    chunks, n = [], 0
    while n < limit:
        try:
            d = s.recv(min(65536, limit - n))
        except Exception as e:  # noqa: BLE001
            return b"".join(chunks), ename(e)
        if not d:
            break
        chunks.append(d)
        n += len(d)
    return b"".join(chunks), None


def recv_exact(s, n):
    data, err = recv_all(s, n)
    return data if err is None else data + b"<" + err.encode() + b">"


def pmask(m):
    names = [
        (select.POLLIN, "IN"), (select.POLLPRI, "PRI"), (select.POLLOUT, "OUT"),
        (select.POLLERR, "ERR"), (select.POLLHUP, "HUP"), (select.POLLNVAL, "NVAL"),
        (getattr(select, "POLLRDHUP", 0x2000), "RDHUP"),
        (getattr(select, "POLLRDNORM", 0x40), "RDNORM"),
        (getattr(select, "POLLRDBAND", 0x80), "RDBAND"),
        (getattr(select, "POLLWRNORM", 0x100), "WRNORM"),
        (getattr(select, "POLLWRBAND", 0x200), "WRBAND"),
    ]
    return "|".join(n for b, n in names if m & b) or "0"


def poll_mask(s, timeout_ms=0):
    p = select.poll()
    p.register(s, 0xFFFF)
    ev = p.poll(timeout_ms)
    return pmask(ev[0][1]) if ev else "0"


def wait_blocked(tid, limit=1.0):
    """Waits until thread `tid` sleeps inside a blocking socket syscall."""
    end = time.monotonic() + limit
    if BLOCKING_NRS is None:
        time.sleep(0.05)
        return
    while time.monotonic() < end:
        try:
            with open("/proc/self/task/%d/syscall" % tid) as f:
                nr = f.read().split()[0]
            with open("/proc/self/task/%d/stat" % tid) as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            if nr.lstrip("-").isdigit() and int(nr) in BLOCKING_NRS and state == "S":
                time.sleep(0.003)
                return
        except (OSError, IndexError):
            pass
        time.sleep(0.001)


def outcome_of(fn):
    try:
        d = fn()
    except Exception as e:  # noqa: BLE001
        return ename(e)
    if isinstance(d, int):
        return "ret:%d" % d
    return "data:%d" % len(d) if d else "eof"


def counts(outcomes):
    return dict(sorted(collections.Counter(outcomes).items()))


def in_thread(fn):
    """Starts fn in a thread; returns (thread, result dict {'r': ...})."""
    box = {}

    def run():
        box["r"] = fn()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def libc_recv(fd, n, flags=0):
    """recv(2) through libc: EINTR reaches us instead of being retried by Python."""
    buf = ctypes.create_string_buffer(max(n, 1))
    r = LIBC.recv(fd, buf, n, flags)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return buf.raw[:r]


# ------------------------------------------- blocking recv on an empty queue
#
# A reader thread blocks in recv on an empty queue; something that is not data
# wakes the socket; then the peer sends one byte. Detached, recv returns that
# byte (or EOF/an error where the event itself ends the stream). A socket whose
# recvmsg was replaced returns EAGAIN at the wakeup.


def wake_trial(fam, trigger, reader_of=None, data=b"x"):
    c, s = pair(fam)
    ctx = {"c": c, "s": s}
    rd = reader_of or (lambda c: c.recv(64))
    t, box = in_thread(lambda: outcome_of(lambda: rd(c)))
    wait_blocked(t.native_id)
    ctx["tid"] = t.ident
    trigger(ctx)
    t.join(0.02)
    if t.is_alive() and data:
        attempt(s.send, data)
    t.join(SAFETY + 1)
    if t.is_alive():  # a reader without a timeout: end it
        attempt(c.shutdown, S.SHUT_RDWR)
        t.join(SAFETY)
    c.close()
    s.close()
    return box.get("r", "hung")


def wake_case(name, trigger, reader_of=None, data=b"x"):
    @per_family("wake." + name)
    def run(fam):
        return counts(wake_trial(fam, trigger, reader_of, data) for _ in range(ITERS[fam]))

    return run


def trig_sndbuf(ctx):
    ctx["c"].setsockopt(S.SOL_SOCKET, S.SO_SNDBUF, 1 << 17)


def trig_rcvbuf(ctx):
    ctx["c"].setsockopt(S.SOL_SOCKET, S.SO_RCVBUF, 1 << 17)


def trig_keepalive(ctx):
    ctx["c"].setsockopt(S.SOL_SOCKET, S.SO_KEEPALIVE, 1)


def trig_other_send(ctx):
    ctx["c"].send(b"ping")
    settle(ctx["c"])


def trig_write_space(ctx):
    """Another thread fills the send buffer and blocks; the peer drains it."""
    c, s = ctx["c"], ctx["s"]
    c.setsockopt(S.SOL_SOCKET, S.SO_SNDBUF, 4096)
    total = 1 << 19
    t, _ = in_thread(lambda: attempt(c.sendall, b"w" * total))
    time.sleep(0.02)
    recv_all_n(s, total)
    t.join(SAFETY)


def recv_all_n(s, n):
    got = 0
    while got < n:
        try:
            d = s.recv(min(65536, n - got))
        except Exception as e:  # noqa: BLE001
            return got, ename(e)
        if not d:
            break
        got += len(d)
    return got, None


def trig_shutdown(how):
    def trig(ctx):
        ctx["c"].shutdown(how)
        time.sleep(0.01)

    return trig


def trig_peer_rst(ctx):
    s = ctx["s"]
    s.setsockopt(S.SOL_SOCKET, S.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def trig_peer_fin(ctx):
    ctx["s"].shutdown(S.SHUT_WR)


def trig_peer_oob(ctx):
    ctx["s"].send(b"!", S.MSG_OOB)
    settle(ctx["s"])


def trig_signal(ctx):
    signal.pthread_kill(ctx["tid"], signal.SIGUSR1)
    time.sleep(0.01)


def trig_nothing(ctx):
    pass


wake_case("sndbuf_setsockopt", trig_sndbuf)
wake_case("rcvbuf_setsockopt", trig_rcvbuf)
wake_case("keepalive_setsockopt", trig_keepalive)
wake_case("other_thread_send", trig_other_send)
wake_case("write_space", trig_write_space)
wake_case("shutdown_wr_other_thread", trig_shutdown(S.SHUT_WR))
wake_case("shutdown_rd_other_thread", trig_shutdown(S.SHUT_RD))
wake_case("shutdown_rdwr_other_thread", trig_shutdown(S.SHUT_RDWR))
wake_case("peer_rst", trig_peer_rst, data=b"")
wake_case("peer_fin", trig_peer_fin, data=b"")
wake_case("peer_oob", trig_peer_oob)
wake_case("signal_sa_restart", trig_signal, reader_of=lambda c: no_timeout_recv(c))
wake_case("signal_sa_restart_rcvtimeo", trig_signal, reader_of=lambda c: libc_recv(c.fileno(), 64))
wake_case("recvmsg_sndbuf", trig_sndbuf, reader_of=lambda c: c.recvmsg(64)[0])
wake_case("recv_into_sndbuf", trig_sndbuf, reader_of=lambda c: c.recv_into(bytearray(64)))
wake_case("waitall_sndbuf", trig_sndbuf, reader_of=lambda c: c.recv(1, S.MSG_WAITALL))
wake_case("peek_sndbuf", trig_sndbuf, reader_of=lambda c: c.recv(64, S.MSG_PEEK))
wake_case("rcvtimeo_expiry", trig_nothing, reader_of=lambda c: short_timeout_recv(c), data=b"")


def no_timeout_recv(c):
    """libc recv without SO_RCVTIMEO: a timeout would turn a restart into EINTR."""
    c.setsockopt(S.SOL_SOCKET, S.SO_RCVTIMEO, tv(0))
    return libc_recv(c.fileno(), 64)


def short_timeout_recv(c):
    c.setsockopt(S.SOL_SOCKET, S.SO_RCVTIMEO, tv(0.03))
    return c.recv(64)


@per_family("wake.signal_no_restart")
def wake_signal_no_restart(fam):
    """Without SA_RESTART a signal interrupts recv with EINTR (libc recv, no Python retry)."""
    signal.siginterrupt(signal.SIGUSR1, True)
    try:
        out = [wake_trial(fam, trig_signal, no_timeout_recv, b"x") for _ in range(ITERS[fam])]
    finally:
        signal.siginterrupt(signal.SIGUSR1, False)
    return counts(out)


@per_family("wake.two_readers")
def wake_two_readers(fam):
    """Two threads block in recv(1); the peer sends one byte, then another: each gets one."""
    out = []
    for _ in range(ITERS[fam]):
        c, s = pair(fam)
        t1, b1 = in_thread(lambda: outcome_of(lambda: c.recv(1)))
        t2, b2 = in_thread(lambda: outcome_of(lambda: c.recv(1)))
        wait_blocked(t1.native_id)
        wait_blocked(t2.native_id)
        s.send(b"a")
        time.sleep(0.03)
        s.send(b"b")
        t1.join(SAFETY + 1)
        t2.join(SAFETY + 1)
        out.append("+".join(sorted([b1.get("r", "hung"), b2.get("r", "hung")])))
        c.close()
        s.close()
    return counts(out)


@per_family("wake.reproducer_sendall_shutdown_recv")
def reproducer(fam):
    """Issue 11: sendall(); shutdown(SHUT_WR); recv(1) must block until the peer closes."""
    out = []
    for _ in range(ITERS[fam]):
        c, s = pair(fam)
        state = {"closed": False}

        def client():
            data, err = recv_all(c)
            time.sleep(0.03)
            state["closed"] = True
            c.close()
            return (len(data), err)

        t, box = in_thread(client)
        s.sendall(b"r" * 100000)
        s.shutdown(S.SHUT_WR)
        r = outcome_of(lambda: s.recv(1))
        out.append("%s after_peer_close=%s" % (r, state["closed"]))
        t.join(SAFETY + 1)
        out.append("client_read=%s" % (box.get("r"),))
        s.close()
    return counts(out)


@per_family("wake.recv0_blocking_empty")
def recv0_blocking(fam):
    """recv(fd, buf, 0) on an empty blocking socket: returns at once or waits for data."""
    out = []
    for _ in range(max(3, ITERS[fam] // 2)):
        c, s = pair(fam)
        t, box = in_thread(lambda: outcome_of(lambda: c.recv(0)))
        t.join(1.0)
        early = not t.is_alive()
        s.send(b"x")
        t.join(SAFETY + 1)
        out.append("%s returned_before_data=%s" % (box.get("r", "hung"), early))
        c.close()
        s.close()
    return counts(out)


@per_family("wake.peek_blocking_waits")
def peek_blocking_waits(fam):
    out = []
    for _ in range(max(3, ITERS[fam] // 2)):
        c, s = pair(fam)
        t, box = in_thread(lambda: outcome_of(lambda: c.recv(64, S.MSG_PEEK)))
        wait_blocked(t.native_id)
        time.sleep(0.02)
        s.send(b"xyz")
        t.join(SAFETY + 1)
        out.append(box.get("r", "hung") + " then " + show(c.recv(64)))
        c.close()
        s.close()
    return counts(out)


# ------------------------------------------------------------ recv variants


@per_family("recv.nonblock_empty")
def recv_nonblock_empty(fam):
    c, s = pair(fam)
    c.setblocking(False)
    return [attempt(c.recv, 10), attempt(c.recv, 0), attempt(c.recv, 10, S.MSG_PEEK)]


@per_family("recv.nonblock_data")
def recv_nonblock_data(fam):
    c, s = pair(fam)
    s.send(b"hello")
    settle(s)
    c.setblocking(False)
    return [show(c.recv(3)), show(c.recv(10)), attempt(c.recv, 10)]


@per_family("recv.dontwait_empty")
def recv_dontwait_empty(fam):
    c, s = pair(fam)
    return [attempt(c.recv, 10, S.MSG_DONTWAIT), attempt(c.recv, 0, S.MSG_DONTWAIT)]


@per_family("recv.zero_with_data")
def recv_zero_with_data(fam):
    c, s = pair(fam)
    s.send(b"abc")
    settle(s)
    return [show(c.recv(0)), ioctl_int(c, FIONREAD), show(c.recv(10))]


@per_family("recv.zero_after_fin")
def recv_zero_after_fin(fam):
    c, s = pair(fam)
    s.shutdown(S.SHUT_WR)
    settle(s)
    time.sleep(0.005)
    return [show(c.recv(0)), show(c.recv(10))]


@per_family("recv.peek_then_read")
def recv_peek(fam):
    c, s = pair(fam)
    s.send(b"peekaboo")
    settle(s)
    return [show(c.recv(4, S.MSG_PEEK)), show(c.recv(100, S.MSG_PEEK)), show(c.recv(100)),
            attempt(c.recv, 10, S.MSG_PEEK | S.MSG_DONTWAIT)]


@per_family("recv.waitall_chunks")
def recv_waitall(fam):
    c, s = pair(fam)

    def feed():
        for i in range(3):
            time.sleep(0.01)
            s.send(bytes([65 + i]) * 10)

    t, _ = in_thread(feed)
    r = outcome_of(lambda: c.recv(30, S.MSG_WAITALL))
    t.join()
    return r


@per_family("recv.waitall_peer_fin")
def recv_waitall_fin(fam):
    c, s = pair(fam)
    s.send(b"12345")
    s.shutdown(S.SHUT_WR)
    return [outcome_of(lambda: c.recv(100, S.MSG_WAITALL)), show(c.recv(10))]


@per_family("recv.waitall_rcvtimeo_partial")
def recv_waitall_timeout(fam):
    c, s = pair(fam)
    c.setsockopt(S.SOL_SOCKET, S.SO_RCVTIMEO, tv(0.1))
    s.send(b"1234567890")
    return [outcome_of(lambda: c.recv(100, S.MSG_WAITALL)), attempt(c.recv, 10)]


@per_family("recv.trunc")
def recv_trunc(fam):
    c, s = pair(fam)
    s.send(b"0123456789")
    settle(s)
    return [len(c.recv(4, S.MSG_TRUNC)), show(c.recv(100)), attempt(c.recv, 4, S.MSG_TRUNC | S.MSG_DONTWAIT)]


@per_family("recv.oob_empty")
def recv_oob_empty(fam):
    c, s = pair(fam)
    r = [attempt(c.recv, 1, S.MSG_OOB), attempt(c.recv, 1, S.MSG_OOB | S.MSG_DONTWAIT)]
    c.setblocking(False)
    r.append(attempt(c.recv, 1, S.MSG_OOB))
    return r


@per_family("recv.oob_urgent")
def recv_oob_urgent(fam):
    c, s = pair(fam)
    s.send(b"ab", S.MSG_OOB)
    settle(s)
    time.sleep(0.005)
    r = [ioctl_int(c, SIOCATMARK), poll_mask(c), show(c.recv(1, S.MSG_OOB)),
         attempt(c.recv, 1, S.MSG_OOB), ioctl_int(c, SIOCATMARK), show(c.recv(10))]
    s.send(b"cd")
    settle(s)
    r.append(show(c.recv(10)))
    return r


@per_family("recv.oob_inline")
def recv_oob_inline(fam):
    c, s = pair(fam)
    c.setsockopt(S.SOL_SOCKET, S.SO_OOBINLINE, 1)
    s.send(b"ab", S.MSG_OOB)
    settle(s)
    time.sleep(0.005)
    return [attempt(c.recv, 1, S.MSG_OOB), show(c.recv(1)), ioctl_int(c, SIOCATMARK), show(c.recv(10))]


@per_family("recv.errqueue_empty")
def recv_errqueue_empty(fam):
    c, s = pair(fam)
    return attempt(lambda: c.recvmsg(10, 100, S.MSG_ERRQUEUE))


@per_family("recv.rcvtimeo")
def recv_rcvtimeo(fam):
    c, s = pair(fam)
    c.setsockopt(S.SOL_SOCKET, S.SO_RCVTIMEO, tv(0.1))
    got = struct.unpack("ll", c.getsockopt(S.SOL_SOCKET, S.SO_RCVTIMEO, 16))
    return [list(got), attempt(c.recv, 10), attempt(c.recv, 0)]


@per_family("recv.rcvlowat_blocking")
def recv_rcvlowat(fam):
    c, s = pair(fam)
    c.setsockopt(S.SOL_SOCKET, S.SO_RCVLOWAT, 10)

    def feed():
        s.send(b"1234")
        time.sleep(0.03)
        s.send(b"567890abcd")

    t, _ = in_thread(feed)
    r = outcome_of(lambda: c.recv(100))
    t.join()
    return [c.getsockopt(S.SOL_SOCKET, S.SO_RCVLOWAT), r]


@per_family("recv.rcvlowat_poll")
def recv_rcvlowat_poll(fam):
    c, s = pair(fam)
    c.setsockopt(S.SOL_SOCKET, S.SO_RCVLOWAT, 10)
    s.send(b"1234")
    settle(s)
    a = poll_mask(c)
    s.send(b"567890")
    settle(s)
    return [a, poll_mask(c), show(c.recv(100))]


@per_family("recv.msg_flags")
def recv_msg_flags(fam):
    c, s = pair(fam)
    s.send(b"abcdef")
    settle(s)
    d, anc, flags, _ = c.recvmsg(3)
    d2, anc2, flags2, _ = c.recvmsg(10)
    return [show(d), anc, flags, show(d2), flags2]


@per_family("recv.recvmsg_into_iovec")
def recv_into_iovec(fam):
    c, s = pair(fam)
    c.sendmsg([b"ab", b"cde", b"fghij"])
    settle(c)
    a, b = bytearray(4), bytearray(10)
    n, anc, flags, _ = s.recvmsg_into([a, b])
    return [n, show(bytes(a)), show(bytes(b[: n - 4]))]


@per_family("recv.peek_off")
def recv_peek_off(fam):
    c, s = pair(fam)
    r = [attempt(c.setsockopt, S.SOL_SOCKET, SO_PEEK_OFF, 0)]
    s.send(b"abcdefgh")
    settle(s)
    r += [attempt(lambda: show(c.recv(3, S.MSG_PEEK))), attempt(lambda: show(c.recv(3, S.MSG_PEEK))),
          attempt(c.getsockopt, S.SOL_SOCKET, SO_PEEK_OFF), show(c.recv(100))]
    return r


@per_family("recv.after_own_shutdown_rd")
def recv_after_shut_rd(fam):
    c, s = pair(fam)
    c.shutdown(S.SHUT_RD)
    return [attempt(lambda: show(c.recv(10))), poll_mask(c)]


@case("recv.unconnected")
def recv_unconnected():
    c = sock("v4")
    return [attempt(c.recv, 10), attempt(c.shutdown, S.SHUT_RDWR), attempt(c.send, b"x"),
            attempt(ioctl_int, c, FIONREAD), poll_mask(c)]


# ------------------------------------------------------------------- ioctls


@per_family("ioctl.fionread_queued")
def ioctl_fionread(fam):
    c, s = pair(fam)
    s.send(b"q" * 1234)
    settle(s)
    r = [ioctl_int(c, FIONREAD)]
    c.recv(200)
    r.append(ioctl_int(c, FIONREAD))
    recv_exact(c, 1034)
    r.append(ioctl_int(c, FIONREAD))
    return r


@per_family("ioctl.fionread_after_fin")
def ioctl_fionread_fin(fam):
    c, s = pair(fam)
    s.send(b"fin" * 10)
    s.shutdown(S.SHUT_WR)
    settle(s)
    time.sleep(0.005)
    return [ioctl_int(c, FIONREAD), show(c.recv(100)), ioctl_int(c, FIONREAD), show(c.recv(100))]


@per_family("ioctl.fionread_large")
def ioctl_fionread_large(fam):
    c, s = pair(fam)
    s.sendall(b"L" * 100000)
    settle(s)
    return [ioctl_int(c, FIONREAD), len(recv_exact(c, 100000))]


@per_family("ioctl.siocoutq")
def ioctl_outq(fam):
    c, s = pair(fam)
    c.send(b"o" * 5000)
    settle(c)
    return [ioctl_int(c, SIOCOUTQ), ioctl_int(c, SIOCOUTQNSD), ioctl_int(s, FIONREAD)]


@per_family("ioctl.siocoutq_window_full")
def ioctl_outq_full(fam):
    c, s = pair(fam, lambda c: c.setsockopt(S.SOL_SOCKET, S.SO_SNDBUF, 65536))
    c.setblocking(False)
    sent = 0
    try:
        while sent < 1 << 24:
            sent += c.send(b"f" * 65536)
    except BlockingIOError:
        pass
    time.sleep(0.02)
    outq = ioctl_int(c, SIOCOUTQ)
    inq = ioctl_int(s, FIONREAD)
    got, _ = recv_all_n(s, sent)
    return [outq > 0, inq > 0, got == sent]


@case("ioctl.siocinq_listener")
def ioctl_listener():
    ls = listener("v4")
    return [attempt(ioctl_int, ls, FIONREAD), attempt(ioctl_int, ls, SIOCOUTQ)]


@per_family("ioctl.tcp_inq_cmsg")
def tcp_inq(fam):
    c, s = pair(fam)
    c.setsockopt(S.IPPROTO_TCP, TCP_INQ, 1)
    s.send(b"0123456789")
    settle(s)
    out = [c.getsockopt(S.IPPROTO_TCP, TCP_INQ)]
    for n in (4, 4, 4):
        d, anc, flags, _ = c.recvmsg(n, 64)
        inq = [(lvl, typ, struct.unpack("i", data[:4])[0]) for lvl, typ, data in anc]
        out.append([show(d), inq])
    return out


# ------------------------------------------------------------- poll / epoll


@per_family("poll.masks")
def poll_masks(fam):
    c, s = pair(fam)
    r = {"fresh": poll_mask(c)}
    s.send(b"x")
    settle(s)
    r["data"] = poll_mask(c)
    c.recv(10)
    r["drained"] = poll_mask(c)
    s.shutdown(S.SHUT_WR)
    settle(s)
    time.sleep(0.005)
    r["peer_shut_wr"] = poll_mask(c)
    c.shutdown(S.SHUT_WR)
    settle(c)
    time.sleep(0.005)
    r["both_shut_wr"] = poll_mask(c)
    r["peer_side"] = poll_mask(s)
    return r


@per_family("poll.own_shutdowns")
def poll_own_shutdowns(fam):
    c, s = pair(fam)
    c.shutdown(S.SHUT_RD)
    a = poll_mask(c)
    c2, s2 = pair(fam)
    c2.shutdown(S.SHUT_WR)
    settle(c2)
    time.sleep(0.005)
    b = poll_mask(c2)
    c3, s3 = pair(fam)
    c3.shutdown(S.SHUT_RDWR)
    settle(c3)
    time.sleep(0.005)
    return [a, b, poll_mask(c3), poll_mask(s2), poll_mask(s3)]


@per_family("poll.after_rst")
def poll_after_rst(fam):
    c, s = pair(fam)
    s.setsockopt(S.SOL_SOCKET, S.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    time.sleep(0.01)
    return [poll_mask(c), c.getsockopt(S.SOL_SOCKET, S.SO_ERROR), attempt(c.recv, 10), poll_mask(c)]


@per_family("poll.select")
def poll_select(fam):
    c, s = pair(fam)
    r1 = select.select([c], [c], [c], 0)
    s.send(b"x")
    settle(s)
    r2 = select.select([c], [c], [c], 0)
    return [[len(x) for x in r1], [len(x) for x in r2]]


@per_family("poll.listener_pending")
def poll_listener(fam):
    ls = listener(fam)
    a = poll_mask(ls)
    c = sock(fam)
    c.connect(ls.getsockname()[:2])
    return [a, poll_mask(ls, 1000), poll_mask(c)]


def ep_mask(m):
    names = [(select.EPOLLIN, "IN"), (select.EPOLLPRI, "PRI"), (select.EPOLLOUT, "OUT"),
             (select.EPOLLERR, "ERR"), (select.EPOLLHUP, "HUP"), (select.EPOLLRDHUP, "RDHUP"),
             (select.EPOLLRDNORM, "RDNORM"), (select.EPOLLWRNORM, "WRNORM")]
    return "|".join(n for b, n in names if m & b) or "0"


def ep_poll(ep, timeout=0):
    return [ep_mask(m) for _, m in ep.poll(timeout)]


@per_family("epoll.rdhup")
def epoll_rdhup(fam):
    c, s = pair(fam)
    ep = keep(select.epoll())
    ep.register(c.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
    r = [ep_poll(ep)]
    s.send(b"d")
    settle(s)
    r.append(ep_poll(ep))
    c.recv(10)
    s.shutdown(S.SHUT_WR)
    settle(s)
    time.sleep(0.005)
    r.append(ep_poll(ep))
    return r


@per_family("epoll.et_edges")
def epoll_et(fam):
    c, s = pair(fam)
    ep = keep(select.epoll())
    ep.register(c.fileno(), select.EPOLLIN | select.EPOLLET | select.EPOLLRDHUP)
    r = []
    for i in range(4):
        s.send(b"e" * (i + 1))
        settle(s)
        r.append(len(ep.poll(0)))
        r.append(len(ep.poll(0)))
    r.append(ioctl_int(c, FIONREAD))
    c.recv(100)
    r.append(len(ep.poll(0)))
    s.shutdown(S.SHUT_WR)
    settle(s)
    time.sleep(0.005)
    r.append(ep_poll(ep))
    r.append(len(ep.poll(0)))
    return r


@per_family("epoll.lt_and_oneshot")
def epoll_lt(fam):
    c, s = pair(fam)
    ep = keep(select.epoll())
    ep.register(c.fileno(), select.EPOLLIN)
    ep2 = keep(select.epoll())
    ep2.register(c.fileno(), select.EPOLLIN | select.EPOLLONESHOT)
    s.send(b"lt")
    settle(s)
    r = [ep_poll(ep), ep_poll(ep), ep_poll(ep2), ep_poll(ep2)]
    ep2.modify(c.fileno(), select.EPOLLIN | select.EPOLLONESHOT)
    r.append(ep_poll(ep2))
    c.recv(10)
    r.append(ep_poll(ep))
    return r


@per_family("epoll.out_et_after_drain")
def epoll_out_et(fam):
    c, s = pair(fam, lambda c: c.setsockopt(S.SOL_SOCKET, S.SO_SNDBUF, 16384))
    ep = keep(select.epoll())
    ep.register(c.fileno(), select.EPOLLOUT | select.EPOLLET)
    r = [ep_poll(ep), ep_poll(ep)]
    c.setblocking(False)
    sent = 0
    try:
        while True:
            sent += c.send(b"z" * 16384)
    except BlockingIOError:
        pass
    time.sleep(0.02)
    r.append(ep_poll(ep))
    got, _ = recv_all_n(s, sent)
    settle(c)
    r.append(ep_poll(ep, 500)[:1])
    r.append(got == sent)
    return r


@per_family("epoll.wait_woken_by_data")
def epoll_wait_blocking(fam):
    out = []
    for _ in range(3):
        c, s = pair(fam)
        ep = keep(select.epoll())
        ep.register(c.fileno(), select.EPOLLIN)
        t, box = in_thread(lambda: ep_poll(ep, 2000))
        wait_blocked(t.native_id)
        c.setsockopt(S.SOL_SOCKET, S.SO_SNDBUF, 1 << 17)
        t.join(0.03)
        alive = t.is_alive()
        s.send(b"x")
        t.join(SAFETY)
        out.append([alive, box.get("r")])
    return out


# --------------------------------------------------------- sendfile / splice


def datafile(n):
    f = keep(tempfile.TemporaryFile())
    f.write(bytes((i * 7 + i // 251) & 0xFF for i in range(n)))
    f.flush()
    return f


@per_family("io.sendfile")
def io_sendfile(fam):
    c, s = pair(fam)
    f = datafile(300000)
    sent = 0
    while sent < 300000:
        sent += os.sendfile(c.fileno(), f.fileno(), sent, 300000 - sent)
    tail = os.sendfile(c.fileno(), f.fileno(), 299990, 100)
    end = os.sendfile(c.fileno(), f.fileno(), 300000, 100)
    c.shutdown(S.SHUT_WR)
    data, err = recv_all(s)
    f.seek(0)
    want = f.read()
    return [sent, tail, end, show(data), data == want + want[-10:], err]


@per_family("io.sendfile_bad")
def io_sendfile_bad(fam):
    c, s = pair(fam)
    f = datafile(100)
    return [attempt(os.sendfile, f.fileno(), c.fileno(), None, 10)]


@per_family("io.splice")
def io_splice(fam):
    c, s = pair(fam)
    pr, pw = os.pipe()
    keep(pr)
    keep(pw)
    s.send(b"s" * 1000)
    settle(s)
    r = [os.splice(c.fileno(), pw, 4096)]
    r.append(show(os.read(pr, 4096)))
    os.write(pw, b"back" * 100)
    r.append(os.splice(pr, c.fileno(), 400))
    settle(c)
    r.append(show(recv_exact(s, 400)))
    c.setblocking(False)
    r.append(attempt(os.splice, c.fileno(), pw, 4096, flags=getattr(os, "SPLICE_F_NONBLOCK", 2)))
    s.shutdown(S.SHUT_WR)
    settle(s)
    time.sleep(0.005)
    r.append(attempt(os.splice, c.fileno(), pw, 4096))
    return r


@per_family("io.splice_blocking_waits")
def io_splice_blocking(fam):
    c, s = pair(fam)
    pr, pw = os.pipe()
    keep(pr)
    keep(pw)
    t, box = in_thread(lambda: attempt(os.splice, c.fileno(), pw, 4096))
    wait_blocked(t.native_id)
    time.sleep(0.02)
    s.send(b"late")
    t.join(SAFETY + 1)
    return [box.get("r"), show(os.read(pr, 100))]


def errqueue_ranges(c, level_types):
    """Zerocopy completion ranges read from the error queue."""
    ranges, codes, kinds = [], set(), set()
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        try:
            _, anc, _, _ = c.recvmsg(0, 512, S.MSG_ERRQUEUE | S.MSG_DONTWAIT)
        except BlockingIOError:
            time.sleep(0.002)
            if ranges and sum(b - a + 1 for a, b in ranges) >= level_types:
                break
            continue
        for lvl, typ, data in anc:
            ee_errno, origin, etype, code, _pad, info, edata = struct.unpack("=IBBBBII", data[:16])
            kinds.add((lvl, typ, ee_errno, origin))
            codes.add(code)
            ranges.append((info, edata))
    return ranges, codes, kinds


@per_family("io.zerocopy")
def io_zerocopy(fam):
    c, s = pair(fam)
    try:
        c.setsockopt(S.SOL_SOCKET, SO_ZEROCOPY, 1)
    except OSError as e:
        if e.errno in (errno.ENOPROTOOPT, errno.EOPNOTSUPP):
            raise NeedsFeature("MSG_ZEROCOPY", "setsockopt(SO_ZEROCOPY): %s" % ename(e))
        raise
    r = [c.getsockopt(S.SOL_SOCKET, SO_ZEROCOPY)]
    payload = b"Z" * 65536
    n = 4
    sent = sum(c.send(payload, MSG_ZEROCOPY) for _ in range(n))
    t, box = in_thread(lambda: len(recv_exact(s, sent)))
    t.join(SAFETY + 1)
    settle(c)
    ranges, codes, kinds = errqueue_ranges(c, n)
    covered = sorted({i for a, b in ranges for i in range(a, b + 1)})
    r += [sent, box.get("r"), covered, sorted(codes), sorted(list(k) for k in kinds),
          attempt(c.recvmsg, 0, 512, S.MSG_ERRQUEUE | S.MSG_DONTWAIT)]
    return r


@per_family("io.zerocopy_without_sockopt")
def io_zerocopy_off(fam):
    c, s = pair(fam)
    r = [attempt(c.send, b"z" * 1000, MSG_ZEROCOPY)]
    settle(c)
    r.append(len(recv_exact(s, 1000)))
    r.append(attempt(c.recvmsg, 0, 512, S.MSG_ERRQUEUE | S.MSG_DONTWAIT))
    return r


@per_family("io.cork")
def io_cork(fam):
    c, s = pair(fam)
    c.setsockopt(S.IPPROTO_TCP, S.TCP_CORK, 1)
    for part in (b"a", b"bb", b"ccc"):
        c.send(part)
    r = [c.getsockopt(S.IPPROTO_TCP, S.TCP_CORK), poll_mask(s), ioctl_int(c, SIOCOUTQNSD)]
    c.setsockopt(S.IPPROTO_TCP, S.TCP_CORK, 0)
    settle(c)
    r += [poll_mask(s, 200), show(s.recv(100))]
    return r


@per_family("io.msg_more")
def io_msg_more(fam):
    c, s = pair(fam)
    c.send(b"mo", S.MSG_MORE)
    c.send(b"re")
    settle(c)
    return [show(recv_exact(s, 4))]


@per_family("io.large_transfer")
def io_large(fam):
    c, s = pair(fam)
    blob = bytes(range(256)) * (8 * 4096)  # 8 MiB
    t, box = in_thread(lambda: recv_all(s))
    c.sendall(blob)
    c.shutdown(S.SHUT_WR)
    t.join(SAFETY * 3)
    data, err = box.get("r", (b"", "hung"))
    return [len(data), data == blob, err]


@per_family("io.small_rcvbuf_transfer")
def io_small_rcvbuf(fam):
    c, s = pair(fam)
    s.setsockopt(S.SOL_SOCKET, S.SO_RCVBUF, 16384)
    blob = bytes((i * 31) & 0xFF for i in range(1 << 20))
    t, box = in_thread(lambda: recv_all(s))
    c.sendall(blob)
    c.shutdown(S.SHUT_WR)
    t.join(SAFETY * 3)
    data, err = box.get("r", (b"", "hung"))
    return [len(data), data == blob, err]


@per_family("io.sndtimeo_full")
def io_sndtimeo(fam):
    c, s = pair(fam, lambda c: c.setsockopt(S.SOL_SOCKET, S.SO_SNDBUF, 8192))
    s.setsockopt(S.SOL_SOCKET, S.SO_RCVBUF, 4096)
    c.setsockopt(S.SOL_SOCKET, S.SO_SNDTIMEO, tv(0.1))
    first = attempt(c.send, b"t" * (1 << 22))
    second = attempt(c.send, b"t" * (1 << 22))
    return [isinstance(first, int) and first > 0, second]


@per_family("io.send_after_shutdown_wr")
def io_send_after_shut(fam):
    c, s = pair(fam)
    c.shutdown(S.SHUT_WR)
    return [attempt(c.send, b"x"), attempt(c.shutdown, S.SHUT_WR), show(s.recv(10))]


# ------------------------------------------------ connection life cycle


@per_family("life.halfclose_client_first")
def halfclose_client(fam):
    c, s = pair(fam)

    def server():
        req, err = recv_all(s)
        s.sendall(b"response:" + req.upper())
        s.close()
        return err

    t, box = in_thread(server)
    c.sendall(b"request body")
    c.shutdown(S.SHUT_WR)
    data, err = recv_all(c)
    t.join(SAFETY)
    return [show(data), err, box.get("r")]


@per_family("life.halfclose_server_first")
def halfclose_server(fam):
    c, s = pair(fam)
    s.sendall(b"banner" * 1000)
    s.shutdown(S.SHUT_WR)
    data, err = recv_all(c)
    c.sendall(b"thanks")
    c.close()
    data2, err2 = recv_all(s)
    return [show(data), err, show(data2), err2]


@per_family("life.rst_linger0")
def rst_linger0(fam):
    c, s = pair(fam)
    s.setsockopt(S.SOL_SOCKET, S.SO_LINGER, struct.pack("ii", 1, 0))
    s.send(b"before")
    settle(s)
    s.close()
    time.sleep(0.01)
    return [attempt(lambda: show(c.recv(100))), attempt(c.recv, 100), attempt(c.send, b"x"),
            c.getsockopt(S.SOL_SOCKET, S.SO_ERROR)]


@per_family("life.close_with_unread_data")
def close_unread(fam):
    c, s = pair(fam)
    c.send(b"unread")
    settle(c)
    s.close()
    time.sleep(0.01)
    return [attempt(c.recv, 10), attempt(c.send, b"x"), poll_mask(c)]


@per_family("life.linger_timeout")
def linger_timeout(fam):
    c, s = pair(fam)
    s.setsockopt(S.SOL_SOCKET, S.SO_LINGER, struct.pack("ii", 1, 1))
    s.sendall(b"lingered" * 100)
    s.close()
    data, err = recv_all(c)
    return [show(data), err]


@per_family("life.connect_refused")
def connect_refused(fam):
    ls = listener(fam)
    addr = ls.getsockname()[:2]
    ls.close()
    c = sock(fam)
    r = [attempt(c.connect, addr), c.getsockopt(S.SOL_SOCKET, S.SO_ERROR)]
    c2 = sock(fam)
    r.append(attempt(c2.connect_ex, addr))
    return r


@per_family("life.connect_nonblocking")
def connect_nonblock(fam):
    ls = listener(fam)
    c = sock(fam)
    c.setblocking(False)
    r = [errno.errorcode.get(c.connect_ex(ls.getsockname()[:2]), "0")]
    select.select([], [c], [], 1)
    r += [c.getsockopt(S.SOL_SOCKET, S.SO_ERROR), poll_mask(c)]
    s, _ = ls.accept()
    keep(s)
    return r


@per_family("life.accept_nonblocking")
def accept_nonblock(fam):
    ls = listener(fam)
    ls.setblocking(False)
    r = [attempt(ls.accept)]
    c = sock(fam)
    c.connect(ls.getsockname()[:2])
    select.select([ls], [], [], 1.0)
    s, _ = ls.accept()
    keep(s)
    r += [s.getblocking(), s.family == ls.family, attempt(ls.accept)]
    return r


@per_family("life.sockopts")
def sockopts(fam):
    c, s = pair(fam)
    c.setsockopt(S.SOL_SOCKET, S.SO_RCVBUF, 65536)
    c.setsockopt(S.SOL_SOCKET, S.SO_SNDBUF, 65536)
    c.setsockopt(S.SOL_SOCKET, S.SO_KEEPALIVE, 1)
    c.setsockopt(S.IPPROTO_TCP, S.TCP_KEEPIDLE, 77)
    c.setsockopt(S.IPPROTO_TCP, S.TCP_USER_TIMEOUT, 5000)
    c.setsockopt(S.IPPROTO_TCP, S.TCP_NODELAY, 1)
    c.setsockopt(S.IPPROTO_TCP, TCP_NOTSENT_LOWAT, 12345)
    g = c.getsockopt
    return {
        "rcvbuf": g(S.SOL_SOCKET, S.SO_RCVBUF), "sndbuf": g(S.SOL_SOCKET, S.SO_SNDBUF),
        "keepalive": g(S.SOL_SOCKET, S.SO_KEEPALIVE), "keepidle": g(S.IPPROTO_TCP, S.TCP_KEEPIDLE),
        "user_timeout": g(S.IPPROTO_TCP, S.TCP_USER_TIMEOUT), "nodelay": g(S.IPPROTO_TCP, S.TCP_NODELAY),
        "notsent_lowat": g(S.IPPROTO_TCP, TCP_NOTSENT_LOWAT),
        "congestion": g(S.IPPROTO_TCP, S.TCP_CONGESTION, 16).rstrip(b"\0").decode(),
        "maxseg": g(S.IPPROTO_TCP, S.TCP_MAXSEG),
        "type": g(S.SOL_SOCKET, S.SO_TYPE), "protocol": g(S.SOL_SOCKET, S.SO_PROTOCOL),
        "domain": g(S.SOL_SOCKET, S.SO_DOMAIN), "acceptconn": g(S.SOL_SOCKET, S.SO_ACCEPTCONN),
        "error": g(S.SOL_SOCKET, S.SO_ERROR), "peer_family": int(c.family),
        "server_peer_family": int(s.family),
    }


def tcp_info_head(s):
    b = s.getsockopt(S.IPPROTO_TCP, S.TCP_INFO, 8)
    return {"state": b[0], "ca_state": b[1], "retransmits": b[2], "options": b[5]}


@per_family("life.tcp_info")
def tcp_info(fam):
    c, s = pair(fam)
    r = [tcp_info_head(c), tcp_info_head(s)]
    c.shutdown(S.SHUT_WR)
    settle(c)
    time.sleep(0.005)
    r += [tcp_info_head(c)["state"], tcp_info_head(s)["state"]]
    return r


@per_family("life.fork_handoff")
def fork_handoff(fam):
    c, s = pair(fam)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            req = recv_exact(s, 5)
            s.sendall(req.upper() + b" from child")
            code = 0
        finally:
            os._exit(code)
    s.close()
    c.sendall(b"hello")
    data = recv_exact(c, 16)
    _, status = os.waitpid(pid, 0)
    return [show(data), os.waitstatus_to_exitcode(status), attempt(lambda: show(c.recv(10)))]


@per_family("life.scm_rights_handoff")
def scm_rights(fam):
    c, s = pair(fam)
    ua, ub = S.socketpair(S.AF_UNIX, S.SOCK_STREAM)
    keep(ua)
    keep(ub)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ua.close()
            msg, fds, _, _ = S.recv_fds(ub, 10, 1)
            ns = S.socket(fileno=fds[0])
            req = recv_exact(ns, 3)
            ns.sendall(b"child got " + req + (b" inq=%d" % ioctl_int(ns, FIONREAD)))
            ns.close()
            code = 0
        finally:
            os._exit(code)
    S.send_fds(ua, [b"fd"], [s.fileno()])
    s.close()
    c.sendall(b"abc")
    data, err = recv_all(c)
    _, status = os.waitpid(pid, 0)
    return [show(data), err, os.waitstatus_to_exitcode(status)]


@per_family("life.scm_rights_same_process")
def scm_rights_local(fam):
    c, s = pair(fam)
    ua, ub = S.socketpair(S.AF_UNIX, S.SOCK_STREAM)
    keep(ua)
    keep(ub)
    S.send_fds(ua, [b"fd"], [s.fileno()])
    _, fds, _, _ = S.recv_fds(ub, 10, 1)
    ns = keep(S.socket(fileno=fds[0]))
    c.send(b"via dup")
    settle(c)
    return [ioctl_int(ns, FIONREAD), show(ns.recv(3)), show(s.recv(10))]


@per_family("life.dup_blocking_recv")
def dup_recv(fam):
    c, s = pair(fam)
    d = keep(S.socket(fileno=os.dup(c.fileno())))
    t, box = in_thread(lambda: outcome_of(lambda: d.recv(10)))
    wait_blocked(t.native_id)
    c.setsockopt(S.SOL_SOCKET, S.SO_SNDBUF, 1 << 17)
    t.join(0.03)
    s.send(b"dup")
    t.join(SAFETY + 1)
    return box.get("r")


@per_family("life.short_connections")
def short_connections(fam):
    """Many short request/echo connections, every byte checked."""
    n = 2000 if fam == "v4" else 300
    ls = listener(fam, 512)
    results = collections.Counter()

    def server():
        for _ in range(n):
            try:
                s, _ = ls.accept()
            except Exception as e:  # noqa: BLE001
                results["accept:" + ename(e)] += 1
                return
            timeouts(s)
            data, err = recv_all(s)
            if err:
                results["server_recv:" + err] += 1
            try:
                s.sendall(data[::-1])
            except Exception as e:  # noqa: BLE001
                results["server_send:" + ename(e)] += 1
            s.close()

    t, _ = in_thread(server)
    addr = ls.getsockname()[:2]
    total = 0
    for i in range(n):
        payload = hashlib.sha256(b"%d" % i).digest() * (1 + (i * 37) % 60)
        c = S.socket(ls.family, S.SOCK_STREAM)
        timeouts(c)
        try:
            c.connect(addr)
            c.sendall(payload)
            c.shutdown(S.SHUT_WR)
            data, err = recv_all(c)
            if err:
                results["client_recv:" + err] += 1
            elif data == payload[::-1]:
                results["exact"] += 1
                total += len(data)
            else:
                results["mismatch"] += 1
        except Exception as e:  # noqa: BLE001
            results["client:" + ename(e)] += 1
        finally:
            c.close()
    t.join(SAFETY * 2)
    return {"results": dict(sorted(results.items())), "bytes": total}


@case("life.v6only_refuses_mapped")
def v6only():
    ls = keep(S.socket(S.AF_INET6, S.SOCK_STREAM))
    ls.setsockopt(S.IPPROTO_IPV6, S.IPV6_V6ONLY, 1)
    r = [attempt(ls.bind, ("::ffff:127.0.0.1", 0))]
    c = sock("v4m")
    l4 = listener("v4")
    c.connect(("::ffff:127.0.0.1", l4.getsockname()[1]))
    s, _ = l4.accept()
    keep(s)
    c.send(b"mapped")
    settle(c)
    r += [show(s.recv(10)), int(s.family), int(c.family)]
    return r


# ------------------------------------------------- TCP Fast Open (netns)


def netstat(keys):
    """TcpExt counters of this process's network namespace."""
    with open("/proc/self/net/netstat") as f:
        lines = f.read().splitlines()
    vals = {}
    for head, body in zip(lines[::2], lines[1::2]):
        for k, v in zip(head.split()[1:], body.split()[1:]):
            vals[k] = int(v)
    return {k: vals.get(k) for k in keys}


TFO_KEYS = ["TCPFastOpenActive", "TCPFastOpenPassive", "TCPFastOpenCookieReqd"]


def tfo_connect(fam, ls, payload, use_connect_opt):
    c = sock(fam)
    addr = ls.getsockname()[:2]
    if use_connect_opt:
        c.setsockopt(S.IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 1)
        c.connect(addr)
        c.send(payload)
    else:
        c.sendto(payload, S.MSG_FASTOPEN, addr)
    s, _ = ls.accept()
    keep(s)
    timeouts(s)
    got = recv_exact(s, len(payload))
    s.sendall(b"ok:" + got)
    reply = recv_exact(c, 3 + len(payload))
    syn_data = bool(tcp_info_head(c)["options"] & TCPI_OPT_SYN_DATA)
    c.close()
    s.close()
    return [show(got), show(reply), syn_data]


def tfo_case(fam, use_connect_opt):
    ls = listener(fam)
    try:
        ls.setsockopt(S.IPPROTO_TCP, S.TCP_FASTOPEN, 16)
    except OSError as e:
        if e.errno in (errno.ENOPROTOOPT, errno.EOPNOTSUPP):
            raise NeedsFeature("TFO", "setsockopt(TCP_FASTOPEN): %s" % ename(e))
        raise
    before = netstat(TFO_KEYS)
    r = [tfo_connect(fam, ls, b"first-%d" % i, use_connect_opt) for i in range(3)]
    after = netstat(TFO_KEYS)
    r.append({k: after[k] - before[k] for k in TFO_KEYS if after[k] is not None})
    return r


NETNS_CASES = []


def netns_case(name):
    def reg(fn):
        NETNS_CASES.append((name, fn))
        return fn

    return reg


for _fam in ("v4", "v6", "v4m"):
    netns_case("tfo.sendto_msg_fastopen.%s" % _fam)((lambda f: lambda: tfo_case(f, False))(_fam))
    netns_case("tfo.fastopen_connect.%s" % _fam)((lambda f: lambda: tfo_case(f, True))(_fam))


@netns_case("tfo.sysctl")
def tfo_sysctl():
    with open("/proc/sys/net/ipv4/tcp_fastopen") as f:
        return f.read().strip()


netns_case("netns.wake_sndbuf.v4")(lambda: counts(wake_trial(
    "v4", trig_sndbuf) for _ in range(ITERS["v4"])))
netns_case("netns.wake_reproducer.v4")(lambda: reproducer("v4"))
netns_case("netns.fionread.v4")(lambda: ioctl_fionread("v4"))
netns_case("netns.recv_oob_empty.v4")(lambda: recv_oob_empty("v4"))
netns_case("netns.short_connections.v6")(lambda: short_connections("v6"))


def enter_netns(path):
    fd = os.open(path, os.O_RDONLY)
    if LIBC.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, "setns(%s): %s" % (path, os.strerror(e)))
    os.close(fd)


def run_netns(path, only, timing):
    """The netns cases run in a child process that enters the namespace first."""
    cmd = [sys.executable, os.path.abspath(__file__), "--netns-child", path]
    if only:
        cmd += ["--only", only]
    if timing:
        cmd.append("--timing")
    p = subprocess.run(cmd, stdout=subprocess.PIPE, timeout=DEADLINE)
    if p.returncode != 0:
        return {"netns": "child exited %d" % p.returncode}
    return json.loads(p.stdout)


# ------------------------------------------------------------------- driver


def run_cases(cases, only, timing):
    results = {}
    for name, fn in cases:
        if only and not re.search(only, name):
            continue
        t0 = time.monotonic()
        CURRENT[0] = name
        try:
            results[name] = fn()
        except NeedsFeature as e:
            results[name] = "needs-feature:%s" % e
        except Exception as e:  # noqa: BLE001 - reported as a broken case, never compared
            results[name] = "exception:%s:%s" % (type(e).__name__, ename(e))
        finally:
            for o in reversed(OPEN):
                try:
                    o.close() if hasattr(o, "close") else os.close(o)
                except OSError:
                    pass
            OPEN.clear()
        if timing:
            print("%7.3fs %s" % (time.monotonic() - t0, name), file=sys.stderr)
    return results


CURRENT = ["(start)"]


def watchdog(limit):
    def run():
        time.sleep(limit)
        print("battery: global deadline of %.0fs passed in case %s" % (limit, CURRENT[0]), file=sys.stderr)
        sys.stderr.flush()
        os._exit(3)

    threading.Thread(target=run, daemon=True).start()


def main(argv):
    args = {"--netns": None, "--netns-child": None, "--only": None}
    flags = set()
    it = iter(argv)
    for a in it:
        if a in args:
            args[a] = next(it, None)
        elif a in ("--list", "--timing"):
            flags.add(a)
        else:
            print("battery: unknown argument %r\n%s" % (a, __doc__), file=sys.stderr)
            return 2
    if "--list" in flags:
        for name, _ in CASES + NETNS_CASES:
            print(name)
        return 0
    watchdog(DEADLINE)
    signal.signal(signal.SIGUSR1, lambda *_: None)
    signal.siginterrupt(signal.SIGUSR1, False)
    timing = "--timing" in flags
    if args["--netns-child"]:
        enter_netns(args["--netns-child"])
        out = run_cases(NETNS_CASES, args["--only"], timing)
    else:
        out = run_cases(CASES, args["--only"], timing)
        if args["--netns"]:
            out.update(run_netns(args["--netns"], args["--only"], timing))
        else:
            out.update({name: "skipped: no --netns" for name, _ in NETNS_CASES
                        if not args["--only"] or re.search(args["--only"], name)})
    json.dump(out, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
