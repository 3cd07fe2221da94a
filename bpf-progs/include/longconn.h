/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Every record that crosses the kernel/user boundary, in one place.
 *
 * Rules: __u64/__u32 only, largest fields first, explicit padding, no bool.
 * `common/src/layout.rs` mirrors this file; a test compares the two through the
 * BTF of the compiled object. Any change here bumps LONGCONN_LAYOUT_VERSION.
 */
#ifndef LONGCONN_H
#define LONGCONN_H

#define LONGCONN_LAYOUT_VERSION 9
#define LONGCONN_META_MAGIC 0x6c636f6e6e6d6574ULL /* "lconnmet" */

/* longconn_conn.direction */
#define LONGCONN_DIR_OUTBOUND 1
#define LONGCONN_DIR_INBOUND 2

/* longconn_conn.flags */
#define LONGCONN_F_ESTABLISHED 0x1 /* reached TCP_ESTABLISHED at least once */
#define LONGCONN_F_CLOSED 0x2      /* final record: the socket reached TCP_CLOSE */
#define LONGCONN_F_FAILED 0x4      /* closed without ever establishing */
#define LONGCONN_F_RINGBUF_MISS 0x8 /* close record kept in the overflow map: ring buffer was full */
#define LONGCONN_F_TOTALS_MISS 0x20 /* the close is not in longconn_close_totals (that map was full):
				     * the reader counts its record instead */

/* Which refresh hooks do work (const volatile `hooks`, set at load time). */
#define LONGCONN_HOOK_TCP_PROBE 0x1 /* tracepoint tcp:tcp_probe (every received segment) */
#define LONGCONN_HOOK_RCV_SPACE 0x2 /* tracepoint tcp:tcp_rcv_space_adjust (application reads) */
#define LONGCONN_HOOK_EGRESS 0x4    /* cgroup_skb/egress (every transmitted segment) */
#define LONGCONN_HOOK_INGRESS 0x8   /* cgroup_skb/ingress (every received segment, pre-TCP) */
#define LONGCONN_HOOK_ACK 0x10      /* sockops RTT and RETRANS callbacks (every ACK, retransmit) */
/* 0x20 was the sockhash read-time refresh (layout 3): it changed socket behaviour; retired. */

/* Index of each kernel-side counter in the per-CPU `longconn_counters` array. */
#define LONGCONN_CTR_RINGBUF_FULL 0   /* close records that did not fit the ring buffer */
#define LONGCONN_CTR_MAP_FULL 1       /* connections not tracked: map full */
#define LONGCONN_CTR_MAP_ERROR 2      /* connections not tracked: other insert error */
#define LONGCONN_CTR_CLOSE_UNTRACKED 3 /* TCP_CLOSE seen for a socket with no entry */
#define LONGCONN_CTR_TRACKED 4        /* connections inserted into the map */
/* 5 was sockhash insert failures (layout 3); from layout 7: */
#define LONGCONN_CTR_CLOSE_UNLOGGED 5 /* closes whose record fit neither the ring nor the overflow map
				       * (counted in the close totals, missing from the access log) */
#define LONGCONN_CTR_TOTALS_FULL 6    /* closes not added to longconn_close_totals (map full) */
#define LONGCONN_CTR_CLOSE_LOST 7     /* closes neither in the totals nor recorded (both full) */
#define LONGCONN_CTR_MAX 8

/* A close is kept in the overflow map (ring full) when a reader has seen the
 * connection or it is at least this old (boot-time ns): long connections'
 * close records are never the ones dropped. */
#define LONGCONN_KEEP_AGE_NS 5000000000ULL

/* Value of map_of_tcp_conns (key: __u64 socket cookie) and of each ring-buffer record. */
struct longconn_conn {
	__u64 cookie;
	__u64 start_ns;  /* CLOCK_BOOTTIME when first seen (connect or passive establish) */
	__u64 update_ns; /* CLOCK_BOOTTIME of the last sockops event or read-time refresh (per-segment hooks skip the clock) */
	__u64 bytes_sent;     /* tcp_sock.bytes_acked */
	__u64 bytes_received; /* tcp_sock.bytes_received */
	__u64 packets_sent;     /* tcp_sock.segs_out, widened to 64 bits */
	__u64 packets_received; /* tcp_sock.segs_in, widened */
	__u64 retransmits;      /* tcp_sock.total_retrans, widened */
	__u64 lost_packets;     /* tcp_sock.lost (running total), widened */
	__u64 bytes_retrans;    /* tcp_sock.bytes_retrans */
	__u64 cgroup_id;        /* cgroup v2 id of the socket */
	__u64 netns_cookie;     /* network namespace cookie */
	__u64 close_seq; /* closed: ordinal of this close in its longconn_close_totals value on
			  * CPU close_cpu (that value's seq_end once it is added); 0: not in the totals */
	__u32 local_addr[4];  /* network order; IPv4 in [0] */
	__u32 remote_addr[4]; /* network order; IPv4 in [0] */
	__u32 srtt_us;    /* smoothed RTT, microseconds (already shifted) */
	__u32 min_rtt_us; /* windowed minimum RTT, microseconds */
	__u32 pid;        /* tgid that called connect() (outbound) or listen() (inbound); 0 if unknown */
	__u32 family;     /* AF_INET or AF_INET6 */
	__u32 local_port;  /* host order */
	__u32 remote_port; /* host order */
	__u32 state;     /* TCP state (linux/tcp.h numbering) */
	__u32 direction; /* LONGCONN_DIR_* */
	__u32 flags;     /* LONGCONN_F_* */
	__u32 netns_ino; /* inode of the socket's network namespace (/proc/PID/ns/net), for the read-time refresh */
	__u32 close_cpu; /* closed: the CPU whose totals value holds this close */
	__u32 seen;      /* 1 once a reader has read the record (the refresh sets it): its close
			  * record is then kept in the overflow map when the ring is full */
	__u32 bound_dev_if; /* layout 8: the socket's sk_bound_dev_if at connect/establish
			     * (SO_BINDTODEVICE, VRF, IPv6 link-local scope), 0 if unbound: readers
			     * refresh it in a run on that device (see longconn_refresh) */
	__u32 _pad;
	char comm[16]; /* comm of that task; empty when unknown */
};

/*
 * Close totals (layout 7): every close of a tracked connection adds its final
 * counters to a per-CPU value keyed by who and which peer, whatever happens to
 * its close record, so group metrics are exact at any close rate. Key of
 * `longconn_close_totals` (PERCPU_HASH, never deleted from: values only grow).
 * The endpoint is the remote one for outbound connections and the local
 * (listening) one for inbound: never an ephemeral port.
 */
struct longconn_totals_key {
	__u64 cgroup_id;
	__u64 netns_cookie;
	__u32 addr[4]; /* network order, as in longconn_conn */
	__u32 port;    /* host order */
	__u32 family;
	__u32 direction;
	__u32 _pad;
	char comm[16];
};

/*
 * Value of `longconn_close_totals` on one CPU. A close increments seq_begin,
 * adds, then increments seq_end (each an atomic add), a seqlock: readers
 * copy the value in address order, seq_end first and seq_begin last, and a
 * copy with both equal is consistent (no close was being added between the
 * two reads, even one nested in another on this CPU). A close with
 * close_seq <= seq_end of a consistent copy is in it.
 */
struct longconn_totals {
	__u64 seq_end;
	__u64 closed; /* unused (0): established closes are seq_end - failed */
	__u64 failed; /* connects that never established */
	__u64 bytes_sent;
	__u64 bytes_received;
	__u64 packets_sent;
	__u64 packets_received;
	__u64 retransmits;
	__u64 lost_packets;
	__u64 seq_begin;
};

/* Key and value of `listen_owners`: who called listen() on a port, per netns. */
struct longconn_listen_key {
	__u64 netns_cookie;
	__u32 port; /* host order */
	__u32 _pad;
};

struct longconn_owner {
	__u32 pid;
	__u32 _pad;
	char comm[16];
};

/* Value of `longconn_netns` (key: __u64 netns cookie): how the read-time
 * refresh reaches sockets of a network namespace other than the reader's.
 * The refresh program inserts {ino} for every foreign namespace it meets; the
 * reader finds a process or bind mount of that inode, obtains its netnsid
 * (RTM_GETNSID, or RTM_NEWNSID when none is assigned) and writes it here with
 * its own netns cookie, since a netnsid is relative to the namespace that
 * asks. */
struct longconn_netns {
	__u64 reader_netns_cookie; /* namespace nsid is relative to; 0: not resolved */
	__u32 ino;                 /* inode of the namespace */
	__u32 nsid;                /* netnsid seen from reader_netns_cookie */
};

/*
 * Read-time refresh in bounded runs (layouts 5, 7). A reader reads the map
 * first, then copies up to LONGCONN_REFRESH_CHUNK of the records it read
 * (what finds the socket: cookie, tuple, netns; the 64-bit packet totals)
 * into the pinned, mmapable array `longconn_refresh_work` (one slot each)
 * and runs the refresh program (BPF_PROG_TEST_RUN), which looks each socket
 * up and writes its counters into the slot: one run holds its CPU for one
 * chunk, whatever the map size; no map lookup or write per record (layout 7;
 * layout 5 looked each record up by cookie and wrote it); and the reader gets
 * the values without reading the map again. Readers serialise their use of
 * the array (flock on the pin dir).
 */
#define LONGCONN_REFRESH_CHUNK 2048

/* Benchmarks only: go through the slots, look no socket up (what the chunking costs). */
#define LONGCONN_REFRESH_LOOKUP_ONLY 0x1

/* longconn_refresh_slot.status, written by the program */
#define LONGCONN_REFRESH_OK 1            /* refreshed: the counters below are the socket's */
#define LONGCONN_REFRESH_GONE 2          /* no record with this cookie any more (closed since) */
#define LONGCONN_REFRESH_CLOSED 3        /* the record is final (closed): left as is */
#define LONGCONN_REFRESH_NOT_FOUND 4     /* no socket with the record's 4-tuple and cookie */
#define LONGCONN_REFRESH_NETNS_UNKNOWN 5 /* the record's netns has no netnsid for this reader yet */

/* longconn_refresh_slot.flags, set by the reader */
#define LONGCONN_SLOT_MARK_SEEN 0x1 /* the record's `seen` is 0: set it (once per connection) */

/* Value of `longconn_refresh_work`: the record to refresh in (as the reader
 * read it: what finds its socket), the refreshed counters out. The program
 * needs no map lookup per record and writes nothing but the slot (and, once
 * per connection, the record's `seen`). */
struct longconn_refresh_slot {
	__u64 cookie;       /* in: the record's cookie (checked against the socket's) */
	__u64 netns_cookie; /* in: the record's network namespace */
	__u32 local_addr[4]; /* in: as in struct longconn_conn */
	__u32 remote_addr[4];
	__u32 family;
	__u32 netns_ino;
	__u16 local_port;
	__u16 remote_port;
	__u32 status; /* out: LONGCONN_REFRESH_*; the reader zeroes it */
	__u64 update_ns; /* out (all below): valid when status is LONGCONN_REFRESH_OK */
	__u64 bytes_sent;
	__u64 bytes_received;
	__u64 packets_sent;     /* in too: the record's total, the base the socket's */
	__u64 packets_received; /* 32-bit counters are widened against */
	__u64 retransmits;
	__u64 lost_packets;
	__u64 bytes_retrans;
	__u32 srtt_us;
	__u32 min_rtt_us;
	__u32 state;
	__u32 flags; /* in: LONGCONN_SLOT_* */
};

/* The refresh program's arguments and results in skb->cb (BPF_PROG_TEST_RUN
 * ctx in and out); it returns how many records it refreshed. A run's
 * device is the ctx's ifindex (loopback when 0): the kernel's TCP lookup
 * finds a socket bound to a device (sk_bound_dev_if) only when the run's
 * device is that one (or is enslaved to it, VRF), so readers refresh the
 * records of each bound_dev_if in runs of their own with ctx ifindex set
 * to it; the program is the same. */
#define LONGCONN_REFRESH_CB_COUNT 0      /* in: slots of longconn_refresh_work to refresh (from 0) */
#define LONGCONN_REFRESH_CB_FLAGS 1      /* in: LONGCONN_REFRESH_LOOKUP_ONLY or 0 */
#define LONGCONN_REFRESH_CB_NETNS_LO 2   /* in: reader's netns cookie, low 32 bits */
#define LONGCONN_REFRESH_CB_NETNS_HI 3   /* in: reader's netns cookie, high 32 bits */
#define LONGCONN_REFRESH_CB_OUT_NOT_FOUND 2      /* out: live records whose socket was not found */
#define LONGCONN_REFRESH_CB_OUT_NETNS_UNKNOWN 3  /* out: live records in a netns without a netnsid */

/*
 * Cgroup names (layout 9): the path of every cgroup v2 made since the pin,
 * captured by the tracepoint cgroup:cgroup_mkdir into the pinned LRU hash
 * `longconn_cgroup_names` (key: __u64 cgroup v2 id), so a cgroup that lives
 * and goes within one reader cycle (a Job's pod) is still named by its path.
 * Nothing on the connect path: only cgroup creation pays (one map update).
 * The path is relative to the cgroup v2 root ("/a/b"), as the reader names
 * cgroups it finds alive; one longer than the buffer is cut (`truncated`).
 */
#define LONGCONN_CGROUP_PATH_MAX 256

struct longconn_cgroup_name {
	__u32 len;       /* bytes of path before its NUL */
	__u32 truncated; /* 1: the path was longer than LONGCONN_CGROUP_PATH_MAX - 1 bytes */
	char path[LONGCONN_CGROUP_PATH_MAX];
};

/* Single value of the `longconn_meta` array, written by longconn-pin after load. */
struct longconn_meta {
	__u64 magic;          /* LONGCONN_META_MAGIC */
	__u64 pinned_at_ns;   /* CLOCK_REALTIME of the pin, identifies this pin generation */
	__u64 cgroup_id;      /* cgroup v2 the programs are attached to */
	__u32 layout_version; /* LONGCONN_LAYOUT_VERSION */
	__u32 record_size;    /* sizeof(struct longconn_conn) */
	__u32 hooks;          /* LONGCONN_HOOK_* in force */
	__u32 _pad;
};

#endif /* LONGCONN_H */
