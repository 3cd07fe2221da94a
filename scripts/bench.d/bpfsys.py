"""The few raw bpf(2) commands the benchmark needs, through ctypes (stdlib only).

Attribute layouts follow include/uapi/linux/bpf.h (union bpf_attr); every
command gets a zeroed 128-byte buffer, which the kernel accepts for any size up
to its own union.
"""

import ctypes
import os
import struct

_NR_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}

BPF_MAP_LOOKUP_ELEM = 1
BPF_OBJ_GET = 7
BPF_PROG_TEST_RUN = 10
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_UPDATE_BATCH = 26

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_ATTR_SIZE = 128


def _nr():
    m = os.uname().machine
    if m not in _NR_BPF:
        raise OSError(f"bpf syscall number unknown for {m}")
    return _NR_BPF[m]


def _addr(buf):
    return ctypes.addressof(buf)


def bpf(cmd, attr):
    """attr: a ctypes char buffer of _ATTR_SIZE bytes. Returns the syscall result."""
    r = _libc.syscall(ctypes.c_long(_nr()), ctypes.c_int(cmd), attr, ctypes.c_uint(_ATTR_SIZE))
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"bpf(cmd={cmd}): {os.strerror(e)}")
    return r


def obj_get(path):
    """BPF_OBJ_GET: fd of a pinned map or program."""
    p = ctypes.create_string_buffer(os.fsencode(path))
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    # __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; __s32 path_fd;
    struct.pack_into("<QII", attr, 0, _addr(p), 0, 0)
    return bpf(BPF_OBJ_GET, attr)


def map_info(fd):
    """BPF_OBJ_GET_INFO_BY_FD on a map: (type, id, key_size, value_size, max_entries, flags, name)."""
    info = ctypes.create_string_buffer(88)
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    # __u32 bpf_fd; __u32 info_len; __aligned_u64 info;
    struct.pack_into("<IIQ", attr, 0, fd, len(info), _addr(info))
    bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    t, mid, ks, vs, me, fl = struct.unpack_from("<6I", info, 0)
    name = bytes(info[24:40]).split(b"\0")[0].decode()
    return {"type": t, "id": mid, "key_size": ks, "value_size": vs, "max_entries": me,
            "map_flags": fl, "name": name}


def lookup(fd, key: bytes, value_size: int) -> bytes:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value_size)
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    # __u32 map_fd; (pad) __aligned_u64 key; __aligned_u64 value; __u64 flags;
    struct.pack_into("<I4xQQQ", attr, 0, fd, _addr(k), _addr(v), 0)
    bpf(BPF_MAP_LOOKUP_ELEM, attr)
    return bytes(v.raw)


def update_batch(fd, keys, values, count):
    """BPF_MAP_UPDATE_BATCH of `count` elements; keys/values are ctypes buffers.
    Returns how many the kernel applied (all of them, or raises)."""
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    # in_batch, out_batch, keys, values (__aligned_u64), count, map_fd (__u32),
    # elem_flags, flags (__u64)
    struct.pack_into("<QQQQIIQQ", attr, 0, 0, 0, _addr(keys), _addr(values), count, fd, 0, 0)
    try:
        bpf(BPF_MAP_UPDATE_BATCH, attr)
    except OSError as e:
        done = struct.unpack_from("<I", attr, 32)[0]
        raise OSError(e.errno, f"BPF_MAP_UPDATE_BATCH stopped after {done}/{count}: {e.strerror}")
    return struct.unpack_from("<I", attr, 32)[0]


def prog_test_run_cb(fd, cb):
    """BPF_PROG_TEST_RUN of a tc program once, with skb->cb = cb (5 u32, the
    rest of the context zero, a zeroed 64-byte packet). Returns (return
    value, run time in ns as the kernel measured it, skb->cb afterwards)."""
    pkt = ctypes.create_string_buffer(64)
    ctx = ctypes.create_string_buffer(12 * 4 + 5 * 4)  # struct __sk_buff up to cb[5]
    struct.pack_into("<5I", ctx, 48, *cb)
    out = ctypes.create_string_buffer(1024)  # the whole struct __sk_buff comes back
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    # prog_fd, retval, data_size_in, data_size_out, data_in, data_out, repeat,
    # duration, ctx_size_in, ctx_size_out, ctx_in, ctx_out
    struct.pack_into("<IIIIQQIIIIQQ", attr, 0, fd, 0, 64, 0, _addr(pkt), 0, 1, 0,
                     len(ctx), len(out), _addr(ctx), _addr(out))
    bpf(BPF_PROG_TEST_RUN, attr)
    retval, = struct.unpack_from("<I", attr, 4)
    duration, = struct.unpack_from("<I", attr, 36)
    return retval, duration, struct.unpack_from("<5I", out, 48)


BPF_MAP_LOOKUP_BATCH = 24


def map_keys_u64(fd, value_size, chunk=4096, values_out=None):
    """Every key of a hash map with 8-byte keys, by BPF_MAP_LOOKUP_BATCH
    (and, into the list `values_out`, every value as bytes)."""
    keys = (ctypes.c_uint64 * chunk)()
    values = ctypes.create_string_buffer(chunk * value_size)
    tok_in = ctypes.create_string_buffer(8)
    tok_out = ctypes.create_string_buffer(8)
    out, first = [], True
    while True:
        attr = ctypes.create_string_buffer(_ATTR_SIZE)
        # in_batch, out_batch, keys, values (__aligned_u64), count, map_fd (__u32), elem_flags, flags
        struct.pack_into("<QQQQIIQQ", attr, 0, 0 if first else _addr(tok_in), _addr(tok_out),
                         _addr(keys), _addr(values), chunk, fd, 0, 0)
        done = False
        try:
            bpf(BPF_MAP_LOOKUP_BATCH, attr)
        except OSError as e:
            if e.errno != 2:  # ENOENT: the last batch
                raise
            done = True
        n = struct.unpack_from("<I", attr, 32)[0]
        out.extend(keys[:n])
        if values_out is not None:
            values_out.extend(values.raw[i * value_size:(i + 1) * value_size] for i in range(n))
        if done:
            return out
        ctypes.memmove(tok_in, tok_out, 8)
        first = False
