/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Calibration for scripts/bench's progcost section: a cgroup_skb/egress program
 * that does nothing. Its run_time_ns / run_cnt under kernel.bpf_stats_enabled is
 * the floor of that measurement on this machine (the two clock reads around every
 * run plus dispatch), to read the longconn programs' figures against.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("cgroup_skb/egress")
int lcbench_noop(struct __sk_buff *skb)
{
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
