// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * longconn kernel side: keep one record per tracked TCP connection in
 * map_of_tcp_conns, fresh enough that once traffic stops it equals tcp_info,
 * and hand the final record of every closed connection to user space.
 *
 * Tracking starts in sockops (connect or passive establish, on the attached
 * cgroup v2 subtree). Freshness comes from reading, not from the data path: a
 * reader reads the map, then runs the program `longconn_refresh` (pinned as
 * `refresh_conns`, BPF_PROG_TEST_RUN) once per chunk of the records it read
 * (copied into the pinned work array `longconn_refresh_work`); it looks each
 * record's socket up by its 4-tuple in the kernel's TCP socket tables
 * (bpf_skc_lookup_tcp, in the record's network namespace through a netnsid),
 * checks that the socket found carries the record's cookie, and copies its
 * tcp_sock counters — the fields `ss -tin` reads, at the moment of the read —
 * back to the reader through the work array (the map itself only when a
 * record's 64-bit totals fall far behind: see LONGCONN_WIDEN_RESYNC).
 * Nothing is attached to or stored in any socket, so applications cannot
 * behave differently (an earlier design kept sockets in a sockhash,
 * which swaps their proto ops for tcp_bpf's and changed blocking reads). The
 * default attaches nothing per segment: only sockops callbacks at connect,
 * establish and close (the close record is taken at TCP_CLOSE, from final
 * counters); other state changes leave at once.
 *
 * Optional per-segment hooks (`--hooks`) keep the map itself fresh between
 * reads, for consumers that read map_of_tcp_conns directly:
 *   - sockops RTT/RETRANS callbacks (ACK processed, retransmit sent);
 *   - cgroup_skb egress (a segment was built: segs_out, and every receive-side
 *     counter the ACK reports, are current);
 *   - tcp:tcp_probe (a segment arrived: segs_in already counts it).
 * They do one map lookup and leave when the socket is not tracked.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "longconn.h"

#define AF_INET 2
#define AF_INET6 10
#define E2BIG 7
#define EEXIST 17

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set by longconn-pin at load time (EbpfLoader::set_global). */
const volatile __u32 hooks = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64);
	__type(value, struct longconn_conn);
	__uint(max_entries, 131072);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} map_of_tcp_conns SEC(".maps");

/* Network namespaces other than the reader's, for `longconn_refresh`
 * (struct longconn_netns): filled by the refresh program, resolved by readers. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64);
	__type(value, struct longconn_netns);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} longconn_netns SEC(".maps");

/* The refresh's work: cookies in, refreshed counters out (struct
 * longconn_refresh_slot), one run's chunk; mmapped by readers. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct longconn_refresh_slot);
	__uint(max_entries, LONGCONN_REFRESH_CHUNK);
	__uint(map_flags, BPF_F_MMAPABLE);
} longconn_refresh_work SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} longconn_closed SEC(".maps");

/* Close records the ring could not take: the reader applies and deletes
 * them. Apart from map_of_tcp_conns, so closes never take a live
 * connection's slot (each sized like it by longconn-pin). Records of
 * connections a reader has seen or that are long (LONGCONN_KEEP_AGE_NS) go
 * to longconn_overflow, the others to longconn_shortovf: short connections'
 * records never take the room of long ones. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64);
	__type(value, struct longconn_conn);
	__uint(max_entries, 131072);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} longconn_overflow SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64);
	__type(value, struct longconn_conn);
	__uint(max_entries, 131072);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} longconn_shortovf SEC(".maps");

/* Final counters of every close, per (cgroup, netns, comm, direction, peer
 * endpoint), per CPU (struct longconn_totals): group metrics stay exact
 * whatever happens to close records. Only grows; readers take deltas. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct longconn_totals_key);
	__type(value, struct longconn_totals);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} longconn_close_totals SEC(".maps");

/* Owner of each listening port, recorded in listen() (process context) and
 * copied into the records of connections accepted on it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct longconn_listen_key);
	__type(value, struct longconn_owner);
	__uint(max_entries, 16384);
} longconn_listen_owners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, LONGCONN_CTR_MAX);
} longconn_counters SEC(".maps");

/* cgroup v2 id -> path, for every cgroup made since the pin (struct
 * longconn_cgroup_name): readers name a cgroup gone before they saw it
 * alive from here. LRU: the least recently made or read go first; a reader
 * needs an entry for one cycle after the cgroup's last connection. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u64);
	__type(value, struct longconn_cgroup_name);
	__uint(max_entries, 8192);
} longconn_cgroup_names SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct longconn_meta);
	__uint(max_entries, 1);
} longconn_meta SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&longconn_counters, &idx);

	if (v)
		__sync_fetch_and_add(v, 1);
}

/* Widen a wrapping 32-bit kernel counter into our 64-bit total; never step back. */
static __always_inline __u64 widen32(__u64 total, __u32 now)
{
	__s32 delta = (__s32)(now - (__u32)total);

	return delta > 0 ? total + (__u32)delta : total;
}

/* Copy every counter, and the TCP state, from a BTF-typed tcp_sock (direct
 * loads, no helper calls) into `dst`, a record or a refresh slot: the 32-bit
 * kernel counters are widened against the 64-bit totals `dst` holds. */
#define COPY_COUNTERS(dst, tp)                                                        \
	do {                                                                          \
		(dst)->bytes_sent = (tp)->bytes_acked;                                 \
		(dst)->bytes_received = (tp)->bytes_received;                          \
		(dst)->packets_sent = widen32((dst)->packets_sent, (tp)->segs_out);    \
		(dst)->packets_received = widen32((dst)->packets_received, (tp)->segs_in); \
		(dst)->retransmits = widen32((dst)->retransmits, (tp)->total_retrans); \
		(dst)->lost_packets = widen32((dst)->lost_packets, (tp)->lost);        \
		(dst)->bytes_retrans = (tp)->bytes_retrans;                            \
		(dst)->srtt_us = (tp)->srtt_us >> 3;                                   \
		(dst)->min_rtt_us = (tp)->rtt_min.s[0].v;                              \
		(dst)->state = (tp)->inet_conn.icsk_inet.sk.__sk_common.skc_state;     \
	} while (0)

static __always_inline void copy_counters(struct longconn_conn *c, struct tcp_sock *tp)
{
	COPY_COUNTERS(c, tp);
}

static __always_inline void refresh(struct longconn_conn *c, struct tcp_sock *tp)
{
	copy_counters(c, tp);
	c->update_ns = bpf_ktime_get_boot_ns();
}

static __always_inline void fill_identity(struct longconn_conn *c, struct tcp_sock *tp)
{
	struct sock *sk = &tp->inet_conn.icsk_inet.sk;
	struct sock_common *skc = &sk->__sk_common;
	struct cgroup *cgrp;
	struct net *net;

	c->family = skc->skc_family;
	if (c->family == AF_INET) {
		c->local_addr[0] = skc->skc_rcv_saddr;
		c->remote_addr[0] = skc->skc_daddr;
	} else {
		c->local_addr[0] = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[0];
		c->local_addr[1] = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[1];
		c->local_addr[2] = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[2];
		c->local_addr[3] = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[3];
		c->remote_addr[0] = skc->skc_v6_daddr.in6_u.u6_addr32[0];
		c->remote_addr[1] = skc->skc_v6_daddr.in6_u.u6_addr32[1];
		c->remote_addr[2] = skc->skc_v6_daddr.in6_u.u6_addr32[2];
		c->remote_addr[3] = skc->skc_v6_daddr.in6_u.u6_addr32[3];
	}
	c->local_port = skc->skc_num;
	c->remote_port = bpf_ntohs(skc->skc_dport);
	c->bound_dev_if = skc->skc_bound_dev_if;

	cgrp = sk->sk_cgrp_data.cgroup;
	if (cgrp)
		c->cgroup_id = cgrp->kn->id;
	net = skc->skc_net.net;
	if (net) {
		c->netns_cookie = net->net_cookie;
		c->netns_ino = net->ns.inum;
	}
}

/* First sight of a connection (connect() or passive establish): insert its
 * record. Returns the insert's error: 0, or -EEXIST when it was tracked
 * before (a simultaneous open's passive establish), or a failure (counted). */
static __always_inline long track(struct bpf_sock_ops *skops, struct tcp_sock *tp, __u64 cookie,
				  __u32 direction)
{
	struct longconn_conn c = {};
	long err;

	c.cookie = cookie;
	c.start_ns = bpf_ktime_get_boot_ns();
	c.direction = direction;
	fill_identity(&c, tp);
	copy_counters(&c, tp); /* and the state */
	c.update_ns = c.start_ns;
	if (direction == LONGCONN_DIR_OUTBOUND) {
		/* TCP_CONNECT_CB runs in the connect() caller's context. */
		c.pid = bpf_get_current_pid_tgid() >> 32;
		bpf_get_current_comm(c.comm, sizeof(c.comm));
	} else {
		struct longconn_listen_key lk = { .netns_cookie = c.netns_cookie, .port = c.local_port };
		struct longconn_owner *o = bpf_map_lookup_elem(&longconn_listen_owners, &lk);

		c.flags = LONGCONN_F_ESTABLISHED;
		if (o) {
			c.pid = o->pid;
			__builtin_memcpy(c.comm, o->comm, sizeof(c.comm));
		}
	}

	err = bpf_map_update_elem(&map_of_tcp_conns, &cookie, &c, BPF_NOEXIST);
	if (err == -E2BIG)
		count(LONGCONN_CTR_MAP_FULL);
	else if (err && err != -EEXIST)
		count(LONGCONN_CTR_MAP_ERROR);
	if (err)
		return err;
	count(LONGCONN_CTR_TRACKED);
	/* Only the callbacks the hooks need: the default needs the close
	 * (STATE_CB, which also runs at every other state change and leaves at
	 * once); RTT and RETRANS run per ACK and per retransmit. */
	bpf_sock_ops_cb_flags_set(skops, (hooks & LONGCONN_HOOK_ACK)
						 ? BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RTT_CB_FLAG |
							   BPF_SOCK_OPS_RETRANS_CB_FLAG
						 : BPF_SOCK_OPS_STATE_CB_FLAG);
	return 0;
}

/* listen(): remember who owns the port (runs in the caller's context). */
static __always_inline void record_listener(struct tcp_sock *tp)
{
	struct sock_common *skc = &tp->inet_conn.icsk_inet.sk.__sk_common;
	struct longconn_listen_key lk = {};
	struct longconn_owner o = {};
	struct net *net = skc->skc_net.net;

	lk.port = skc->skc_num;
	if (net)
		lk.netns_cookie = net->net_cookie;
	o.pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(o.comm, sizeof(o.comm));
	bpf_map_update_elem(&longconn_listen_owners, &lk, &o, BPF_ANY);
}

/* Adds a closing connection's final counters to its close totals (this CPU's
 * value) and stamps the record with the close's ordinal there; flags it
 * LONGCONN_F_TOTALS_MISS when the totals map is full. */
static __always_inline void add_totals(struct longconn_conn *c)
{
	static const struct longconn_totals zero = {};
	struct longconn_totals_key k = {};
	struct longconn_totals *t;
	__u64 seq;

	k.cgroup_id = c->cgroup_id;
	k.netns_cookie = c->netns_cookie;
	k.family = c->family;
	k.direction = c->direction;
	__builtin_memcpy(k.comm, c->comm, sizeof(k.comm));
	if (c->direction == LONGCONN_DIR_INBOUND) {
		__builtin_memcpy(k.addr, c->local_addr, sizeof(k.addr));
		k.port = c->local_port;
	} else {
		__builtin_memcpy(k.addr, c->remote_addr, sizeof(k.addr));
		k.port = c->remote_port;
	}
	t = bpf_map_lookup_elem(&longconn_close_totals, &k);
	if (!t) {
		bpf_map_update_elem(&longconn_close_totals, &k, &zero, BPF_NOEXIST);
		t = bpf_map_lookup_elem(&longconn_close_totals, &k);
	}
	if (!t) {
		c->flags |= LONGCONN_F_TOTALS_MISS;
		count(LONGCONN_CTR_TOTALS_FULL);
		return;
	}
	/* Atomic adds: a softirq on this CPU may close another connection of the
	 * same key in the middle; seq_begin first, seq_end last (see the header). */
	/* Closed is seq_end - failed (readers derive it); a zero is not added. */
	seq = __sync_fetch_and_add(&t->seq_begin, 1) + 1;
	if (c->flags & LONGCONN_F_FAILED)
		__sync_fetch_and_add(&t->failed, 1);
	if (c->bytes_sent)
		__sync_fetch_and_add(&t->bytes_sent, c->bytes_sent);
	if (c->bytes_received)
		__sync_fetch_and_add(&t->bytes_received, c->bytes_received);
	__sync_fetch_and_add(&t->packets_sent, c->packets_sent);
	__sync_fetch_and_add(&t->packets_received, c->packets_received);
	if (c->retransmits)
		__sync_fetch_and_add(&t->retransmits, c->retransmits);
	if (c->lost_packets)
		__sync_fetch_and_add(&t->lost_packets, c->lost_packets);
	__sync_fetch_and_add(&t->seq_end, 1);
	c->close_seq = seq;
	c->close_cpu = bpf_get_smp_processor_id();
}

/*
 * TCP_CLOSE: add the final counters to the close totals, hand the final
 * record to user space and forget the socket. A record the ring cannot take
 * goes to an overflow map (see longconn_overflow); when that is full too,
 * only the access log misses it (counted), never the metrics. Either way
 * the live map's slot is freed now.
 * Order: totals, then the record, then the delete (readers read the totals,
 * then the live map, then overflow and ring).
 */
static __always_inline void close_conn(struct longconn_conn *c, __u64 cookie)
{
	c->state = BPF_TCP_CLOSE;
	c->flags |= LONGCONN_F_CLOSED;
	if (!(c->flags & LONGCONN_F_ESTABLISHED))
		c->flags |= LONGCONN_F_FAILED;
	add_totals(c);
	/* No wakeup: readers poll the ring every cycle, nobody sleeps on it. */
	if (bpf_ringbuf_output(&longconn_closed, c, sizeof(*c), BPF_RB_NO_WAKEUP)) {
		void *overflow = &longconn_shortovf;

		count(LONGCONN_CTR_RINGBUF_FULL);
		c->flags |= LONGCONN_F_RINGBUF_MISS;
		if (c->seen || (c->flags & LONGCONN_F_TOTALS_MISS) ||
		    c->update_ns - c->start_ns >= LONGCONN_KEEP_AGE_NS)
			overflow = &longconn_overflow;
		if (bpf_map_update_elem(overflow, &cookie, c, BPF_ANY))
			count(c->flags & LONGCONN_F_TOTALS_MISS ? LONGCONN_CTR_CLOSE_LOST
								 : LONGCONN_CTR_CLOSE_UNLOGGED);
	}
	bpf_map_delete_elem(&map_of_tcp_conns, &cookie);
}

SEC("sockops")
int longconn_sockops(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk; /* local copy before the NULL check (verifier) */
	struct longconn_conn *c;
	struct tcp_sock *tp;
	__u32 op = skops->op;
	__u64 cookie;

	/* Most callbacks are not ours (timeouts, window, ECN): leave before any
	 * work. Without per-segment hooks, of the state changes only the close
	 * (final record) needs the kernel: the establish flag is set by the
	 * ESTABLISHED callbacks, which run whatever the flags, and readers copy
	 * the state with the counters. A connection pair (both ends tracked)
	 * runs 17 callbacks under the default: 12 leave here, 5 do work (connect,
	 * passive and active establish, two closes). */
	switch (op) {
	case BPF_SOCK_OPS_STATE_CB:
		if (!hooks && skops->args[1] != BPF_TCP_CLOSE)
			return 1;
		break;
	case BPF_SOCK_OPS_TCP_LISTEN_CB:
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_RTT_CB:
	case BPF_SOCK_OPS_RETRANS_CB:
		break;
	default:
		return 1;
	}
	if (skops->family != AF_INET && skops->family != AF_INET6)
		return 1;
	if (!sk)
		return 1;
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return 1;
	cookie = bpf_get_socket_cookie(skops);

	switch (op) {
	case BPF_SOCK_OPS_TCP_LISTEN_CB:
		record_listener(tp);
		return 1;
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		track(skops, tp, cookie, LONGCONN_DIR_OUTBOUND);
		return 1;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		/* Tracked before: a simultaneous open (connect() met the peer's
		 * SYN), established now; flagged below. */
		if (track(skops, tp, cookie, LONGCONN_DIR_INBOUND) != -EEXIST)
			return 1;
	}

	c = bpf_map_lookup_elem(&map_of_tcp_conns, &cookie);
	if (!c) {
		if (op == BPF_SOCK_OPS_STATE_CB && skops->args[1] == BPF_TCP_CLOSE)
			count(LONGCONN_CTR_CLOSE_UNTRACKED);
		return 1;
	}
	if (op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB || op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB) {
		/* A flag and the state: no counters (readers copy them), unless a
		 * hook keeps the map itself fresh. */
		c->flags |= LONGCONN_F_ESTABLISHED;
		c->state = BPF_TCP_ESTABLISHED;
		if (hooks)
			refresh(c, tp);
		return 1;
	}
	refresh(c, tp);
	if (op == BPF_SOCK_OPS_STATE_CB) {
		/* args[1] is the new state; sk_state still holds the old one. */
		c->state = skops->args[1];
		if (skops->args[1] == BPF_TCP_ESTABLISHED)
			c->flags |= LONGCONN_F_ESTABLISHED;
		if (skops->args[1] == BPF_TCP_CLOSE)
			close_conn(c, cookie);
	}
	return 1;
}

/*
 * The cgroup_skb body, both directions: when `hook` is enabled, copy the
 * socket's counters into its record. Always lets the packet through (1).
 */
static __always_inline int cgroup_skb_copy(struct __sk_buff *skb, __u32 hook)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct longconn_conn *c = bpf_map_lookup_elem(&map_of_tcp_conns, &cookie);
	struct bpf_sock *sk;
	struct tcp_sock *tp;

	if (!c || !(hooks & hook))
		return 1;
	sk = skb->sk;
	if (!sk)
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return 1;
	tp = bpf_skc_to_tcp_sock(sk);
	if (tp)
		copy_counters(c, tp);
	return 1;
}

/* Every transmitted segment of the subtree: segs_out and what the ACK reports are current. */
SEC("cgroup_skb/egress")
int longconn_egress(struct __sk_buff *skb)
{
	return cgroup_skb_copy(skb, LONGCONN_HOOK_EGRESS);
}

/*
 * Every received segment of the subtree, before TCP processes it: the counters
 * lag by this segment. Kept as an option (--hooks ingress) for comparison.
 */
SEC("cgroup_skb/ingress")
int longconn_ingress(struct __sk_buff *skb)
{
	return cgroup_skb_copy(skb, LONGCONN_HOOK_INGRESS);
}

/*
 * Every segment received in ESTABLISHED, host-wide. segs_in already counts
 * this segment (tcp_v4_rcv increments it first); a pure window update or a
 * duplicate ACK changes nothing else, and no later hook would see it.
 */
SEC("tracepoint/tcp/tcp_probe")
int longconn_tcp_probe(struct trace_event_raw_tcp_probe *ctx)
{
	__u64 cookie = ctx->sock_cookie;
	struct longconn_conn *c = bpf_map_lookup_elem(&map_of_tcp_conns, &cookie);
	struct tcp_sock *tp;

	if (!c)
		return 0;
	tp = (struct tcp_sock *)ctx->skaddr;
	c->packets_received = widen32(c->packets_received, BPF_CORE_READ(tp, segs_in));
	return 0;
}

/*
 * The application read from the socket, host-wide: bytes_received is current
 * even when no ACK follows. Optional (--hooks rcv-space).
 */
SEC("tracepoint/tcp/tcp_rcv_space_adjust")
int longconn_rcv_space(struct trace_event_raw_tcp_event_sk *ctx)
{
	__u64 cookie = ctx->sock_cookie;
	struct longconn_conn *c = bpf_map_lookup_elem(&map_of_tcp_conns, &cookie);
	struct tcp_sock *tp;

	if (!c)
		return 0;
	tp = (struct tcp_sock *)ctx->skaddr;
	c->bytes_received = BPF_CORE_READ(tp, bytes_received);
	c->packets_received = widen32(c->packets_received, BPF_CORE_READ(tp, segs_in));
	return 0;
}

/*
 * A cgroup was made (any hierarchy, host-wide): remember the path of each
 * cgroup v2 one by its id. Runs once per mkdir, never per connection or
 * segment. Hierarchy 0 is the cgroup v2 (default) one; v1 hierarchies have
 * ids of their own, which could collide with v2 ids.
 */
SEC("tracepoint/cgroup/cgroup_mkdir")
int longconn_cgroup_mkdir(struct trace_event_raw_cgroup *ctx)
{
	struct longconn_cgroup_name n = {};
	__u32 loc = ctx->__data_loc_path;
	__u64 id = ctx->id;
	long len;

	if (ctx->root != 0)
		return 0;
	len = bpf_probe_read_kernel_str(n.path, sizeof(n.path), (void *)ctx + (loc & 0xffff));
	if (len <= 0)
		return 0;
	n.len = len - 1;
	n.truncated = (loc >> 16) > sizeof(n.path);
	bpf_map_update_elem(&longconn_cgroup_names, &id, &n, BPF_ANY);
	return 0;
}

/* What one run of `longconn_refresh` does (arguments) and did (results). */
struct refresh_run {
	struct __sk_buff *skb; /* the run's context: socket lookups need it */
	__u64 reader_netns;    /* cookie of the reader's network namespace */
	__u64 now;
	__u32 lookup_only; /* benchmarks: find the records, touch no socket */
	__u32 refreshed;
	__u32 not_found;     /* no socket with the record's 4-tuple and cookie */
	__u32 netns_unknown; /* the record's namespace has no netnsid for this reader yet */
};

static __always_inline bool v4_mapped(const __u32 *a)
{
	return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0xffff);
}

/*
 * The socket of the record in slot `s`, from the kernel's TCP tables: the
 * tuple is given as a packet from the peer would carry it (source = remote).
 * IPv4-mapped addresses of an IPv6 socket are hashed as IPv4. Returns a
 * reference to release, or NULL.
 */
static __always_inline struct bpf_sock *lookup_sock(struct __sk_buff *skb,
						    struct longconn_refresh_slot *s, __u64 netns)
{
	struct bpf_sock_tuple t = {};

	if (s->family == AF_INET) {
		t.ipv4.saddr = s->remote_addr[0];
		t.ipv4.daddr = s->local_addr[0];
	} else if (v4_mapped(s->local_addr)) {
		t.ipv4.saddr = s->remote_addr[3];
		t.ipv4.daddr = s->local_addr[3];
	} else {
		__builtin_memcpy(t.ipv6.saddr, s->remote_addr, sizeof(t.ipv6.saddr));
		__builtin_memcpy(t.ipv6.daddr, s->local_addr, sizeof(t.ipv6.daddr));
		t.ipv6.sport = bpf_htons(s->remote_port);
		t.ipv6.dport = bpf_htons(s->local_port);
		return bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv6), netns, 0);
	}
	t.ipv4.sport = bpf_htons(s->remote_port);
	t.ipv4.dport = bpf_htons(s->local_port);
	return bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), netns, 0);
}

/* The lookup's netns argument for a record's namespace, or false when it has
 * no netnsid for this reader yet (then it is registered for the reader). */
static __always_inline bool netns_arg(__u64 netns_cookie, __u32 ino, struct refresh_run *run,
				      __u64 *netns)
{
	struct longconn_netns *ns, fresh = {};

	if (netns_cookie == run->reader_netns) {
		*netns = BPF_F_CURRENT_NETNS;
		return true;
	}
	ns = bpf_map_lookup_elem(&longconn_netns, &netns_cookie);
	if (ns && ns->reader_netns_cookie == run->reader_netns) {
		*netns = ns->nsid;
		return true;
	}
	if (!ns) {
		fresh.ino = ino;
		bpf_map_update_elem(&longconn_netns, &netns_cookie, &fresh, BPF_NOEXIST);
	}
	return false;
}

/*
 * A record's own 64-bit totals are what the close path (and per-segment
 * hooks) widen the kernel's wrapping 32-bit counters against. A refresh
 * writes only its slot, so those totals age; once one falls this far behind
 * the socket (2^30 segments: hours of a saturated 10 Gbit/s link, never
 * between two reads), the refresh brings the record forward, well before
 * the 2^31 a widening can bridge.
 */
#define LONGCONN_WIDEN_RESYNC (1ULL << 30)

static __always_inline bool widen_base_aged(struct longconn_refresh_slot *s, __u64 sent,
					    __u64 received, __u64 retrans, __u64 lost)
{
	return s->packets_sent - sent > LONGCONN_WIDEN_RESYNC ||
	       s->packets_received - received > LONGCONN_WIDEN_RESYNC ||
	       s->retransmits - retrans > LONGCONN_WIDEN_RESYNC ||
	       s->lost_packets - lost > LONGCONN_WIDEN_RESYNC;
}

/* Why a record's socket was not found: its record went, or closed, since the
 * reader read it (not a failure), or LONGCONN_REFRESH_NOT_FOUND. */
static __always_inline __u32 not_found(struct longconn_refresh_slot *s, struct refresh_run *run)
{
	struct longconn_conn *c = bpf_map_lookup_elem(&map_of_tcp_conns, &s->cookie);

	if (!c)
		return LONGCONN_REFRESH_GONE;
	if (c->flags & LONGCONN_F_CLOSED)
		return LONGCONN_REFRESH_CLOSED;
	run->not_found++;
	return LONGCONN_REFRESH_NOT_FOUND;
}

/* Refresh the record in slot `s` from its socket, if it is still there, into
 * the slot; returns LONGCONN_REFRESH_*. The map is not touched on this path
 * (no lookup, no write) unless the record's widening base has aged. */
static __always_inline __u32 refresh_one(struct longconn_refresh_slot *s, struct refresh_run *run)
{
	__u64 sent = s->packets_sent, received = s->packets_received;
	__u64 retrans = s->retransmits, lost = s->lost_packets;
	struct longconn_conn *c;
	struct bpf_sock *sk;
	struct tcp_sock *tp;
	__u32 status;
	__u64 netns;

	if (!netns_arg(s->netns_cookie, s->netns_ino, run, &netns)) {
		run->netns_unknown++;
		return LONGCONN_REFRESH_NETNS_UNKNOWN;
	}
	sk = lookup_sock(run->skb, s, netns);
	if (!sk)
		return not_found(s, run);
	tp = bpf_skc_to_tcp_sock(sk);
	/* Identity: a reused 4-tuple (or the listener the lookup falls back to) is another socket. */
	if (tp && tp->inet_conn.icsk_inet.sk.__sk_common.skc_cookie.counter == s->cookie) {
		COPY_COUNTERS(s, tp);
		s->update_ns = run->now;
		run->refreshed++;
		status = LONGCONN_REFRESH_OK;
		if (widen_base_aged(s, sent, received, retrans, lost)) {
			c = bpf_map_lookup_elem(&map_of_tcp_conns, &s->cookie);
			if (c && !(c->flags & LONGCONN_F_CLOSED)) {
				copy_counters(c, tp);
				c->update_ns = run->now;
			}
		}
	} else {
		status = not_found(s, run);
	}
	bpf_sk_release(sk);
	return status;
}

/* bpf_loop callback: slot `i` of the work array. */
static long refresh_slot(__u64 i, struct refresh_run *run)
{
	__u32 idx = (__u32)i;
	struct longconn_refresh_slot *s = bpf_map_lookup_elem(&longconn_refresh_work, &idx);

	if (!s)
		return 1;
	/* First sight by a reader (it asks, from the record it read): should the
	 * ring be full at its close, its record is kept (overflow map), so the
	 * reader is never left guessing. Once per connection; the steady path
	 * does no map lookup. */
	if (s->flags & LONGCONN_SLOT_MARK_SEEN) {
		struct longconn_conn *c = bpf_map_lookup_elem(&map_of_tcp_conns, &s->cookie);

		if (c)
			c->seen = 1; /* its own word: no read-modify-write race with sockops' flags */
	}
	if (run->lookup_only) {
		s->status = LONGCONN_REFRESH_NOT_FOUND;
		return 0;
	}
	s->status = refresh_one(s, run);
	return 0;
}

/*
 * Run by a reader (BPF_PROG_TEST_RUN on the pinned program) right after it
 * has read map_of_tcp_conns, once per chunk of what it read: copy the
 * socket's counters of each record the reader copied into slots 0..count-1
 * of longconn_refresh_work into its slot, now. This is
 * what makes the default exact without any per-segment hook; the chunk
 * bounds how long one run holds its CPU (not preemptible, softirqs off) at
 * any map size. In skb->cb (LONGCONN_REFRESH_CB_*): the count and the
 * reader's netns cookie; out: how many sockets were not found and how many
 * records wait for a netnsid. Returns how many records were refreshed.
 */
SEC("classifier")
int longconn_refresh(struct __sk_buff *skb)
{
	struct refresh_run run = {
		.skb = skb,
		.now = bpf_ktime_get_boot_ns(),
		.reader_netns = (__u64)skb->cb[LONGCONN_REFRESH_CB_NETNS_HI] << 32 |
				skb->cb[LONGCONN_REFRESH_CB_NETNS_LO],
	};
	__u32 count = skb->cb[LONGCONN_REFRESH_CB_COUNT];

	run.lookup_only = skb->cb[LONGCONN_REFRESH_CB_FLAGS] & LONGCONN_REFRESH_LOOKUP_ONLY;

	if (count > LONGCONN_REFRESH_CHUNK)
		count = LONGCONN_REFRESH_CHUNK;
	bpf_loop(count, refresh_slot, &run, 0);
	skb->cb[LONGCONN_REFRESH_CB_OUT_NOT_FOUND] = run.not_found;
	skb->cb[LONGCONN_REFRESH_CB_OUT_NETNS_UNKNOWN] = run.netns_unknown;
	return (int)(run.refreshed & 0x7fffffff);
}
