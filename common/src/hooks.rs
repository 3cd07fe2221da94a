//! longconn's hooks, in one table: each one's `--hooks` name and bit, the
//! program in the eBPF object, its link pin and how it attaches; and the
//! presets. `longconn-pin` parses, explains, attaches, checks (`status`) and
//! removes (`detach`) by iterating it; the tests take their presets from it.
//! The bits are `layout::HOOK_*` (the `hooks` global of longconn.h).

use crate::layout::{HOOK_ACK, HOOK_EGRESS, HOOK_INGRESS, HOOK_RCV_SPACE, HOOK_TCP_PROBE};

/// How a hook's program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachKind {
    /// sock_ops on the cgroup.
    Sockops,
    /// cgroup_skb on the cgroup, outgoing packets.
    CgroupSkbEgress,
    /// cgroup_skb on the cgroup, incoming packets.
    CgroupSkbIngress,
    /// A tracepoint, (category, name) (host-wide; the tcp: ones filter by
    /// map lookup).
    Tracepoint(&'static str, &'static str),
    /// No program of its own: a callback the sockops program asks for
    /// (bpf_sock_ops_cb_flags_set) when the bit is set.
    SockopsCallback,
}

#[derive(Clone, Copy, Debug)]
pub struct Hook {
    /// The `--hooks` name; None for the sockops program, always attached.
    pub name: Option<&'static str>,
    /// The bit in the `hooks` mask; 0 for the sockops program.
    pub bit: u32,
    /// The `SEC()` function in the eBPF object, if the hook has one.
    pub program: Option<&'static str>,
    /// The link's pin name (under `links/`), if it has a program.
    pub link: Option<&'static str>,
    pub attach: AttachKind,
}

impl Hook {
    /// Whether `mask` attaches this hook's program (sockops: always).
    pub fn attached_with(&self, mask: u32) -> bool {
        self.bit == 0 || mask & self.bit != 0
    }
}

/// Every hook, in attach order (sockops first, then the always-attached
/// cgroup_mkdir tracepoint).
pub const HOOKS: &[Hook] = &[
    Hook {
        name: None,
        bit: 0,
        program: Some("longconn_sockops"),
        link: Some("sockops"),
        attach: AttachKind::Sockops,
    },
    // Always attached: names cgroups that live less than a reader cycle
    // (cgroup creation only, nothing on the connect path).
    Hook {
        name: None,
        bit: 0,
        program: Some("longconn_cgroup_mkdir"),
        link: Some("tp_cgroup_mkdir"),
        attach: AttachKind::Tracepoint("cgroup", "cgroup_mkdir"),
    },
    Hook {
        name: Some("tcp-probe"),
        bit: HOOK_TCP_PROBE,
        program: Some("longconn_tcp_probe"),
        link: Some("tp_tcp_probe"),
        attach: AttachKind::Tracepoint("tcp", "tcp_probe"),
    },
    Hook {
        name: Some("rcv-space"),
        bit: HOOK_RCV_SPACE,
        program: Some("longconn_rcv_space"),
        link: Some("tp_tcp_rcv_space_adjust"),
        attach: AttachKind::Tracepoint("tcp", "tcp_rcv_space_adjust"),
    },
    Hook {
        name: Some("egress"),
        bit: HOOK_EGRESS,
        program: Some("longconn_egress"),
        link: Some("cgroup_skb_egress"),
        attach: AttachKind::CgroupSkbEgress,
    },
    Hook {
        name: Some("ingress"),
        bit: HOOK_INGRESS,
        program: Some("longconn_ingress"),
        link: Some("cgroup_skb_ingress"),
        attach: AttachKind::CgroupSkbIngress,
    },
    Hook {
        name: Some("ack"),
        bit: HOOK_ACK,
        program: None,
        link: None,
        attach: AttachKind::SockopsCallback,
    },
];

/// The read-time refresh program (pinned as a program, not a hook: readers
/// run it with BPF_PROG_TEST_RUN).
pub const REFRESH_PROGRAM: &str = "longconn_refresh";

/// `--hooks` presets: name, mask, and what it is for.
pub const PRESETS: &[(&str, u32, &str)] = &[
    (
        "default",
        0,
        "sockops at connect, establish and close only; nothing per segment",
    ),
    ("none", 0, "the same as default"),
    (
        "live",
        HOOK_TCP_PROBE | HOOK_EGRESS | HOOK_ACK,
        "keeps the map fresh per segment",
    ),
    (
        "tracepoints",
        HOOK_TCP_PROBE | HOOK_RCV_SPACE | HOOK_ACK,
        "the same from tracepoints only",
    ),
    (
        "cgroup-skb",
        HOOK_INGRESS | HOOK_EGRESS | HOOK_ACK,
        "the same from cgroup_skb only",
    ),
    ("sockops", HOOK_ACK, "sockops ACK callbacks only"),
];

/// The hooks' `--hooks` names.
pub fn names() -> impl Iterator<Item = &'static str> {
    HOOKS.iter().filter_map(|h| h.name)
}

/// The link pin names a mask attaches, in attach order.
pub fn links(mask: u32) -> impl Iterator<Item = &'static str> {
    HOOKS
        .iter()
        .filter(move |h| h.attached_with(mask))
        .filter_map(|h| h.link)
}

/// Every (program, link) pair longconn may pin.
pub fn all_links() -> impl Iterator<Item = (&'static str, &'static str)> {
    HOOKS.iter().filter_map(|h| Some((h.program?, h.link?)))
}

/// Parses a preset, or a comma list of hook names, into a mask.
pub fn parse(s: &str) -> Result<u32, String> {
    if let Some((_, mask, _)) = PRESETS.iter().find(|(n, _, _)| *n == s) {
        return Ok(*mask);
    }
    let mut mask = 0;
    for part in s.split(',').map(str::trim) {
        match HOOKS.iter().find(|h| h.name == Some(part)) {
            Some(h) => mask |= h.bit,
            None if part == "sockhash" => {
                return Err("the sockhash hook was removed (layout 4): sockhash membership changed how applications' sockets behave; readers now refresh every preset by socket lookup, so `default` is exact without it".into());
            }
            None => {
                let all: Vec<_> = names().chain(PRESETS.iter().map(|p| p.0)).collect();
                return Err(format!(
                    "unknown hook {part:?}; expected a comma list of {}",
                    all.join(", ")
                ));
            }
        }
    }
    Ok(mask)
}

/// A mask as its comma list of names ("none" for 0).
pub fn describe(mask: u32) -> String {
    let names: Vec<_> = HOOKS
        .iter()
        .filter(|h| h.bit != 0 && mask & h.bit != 0)
        .filter_map(|h| h.name)
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(",")
    }
}

/// The presets as `--help` lists them: `live` (tcp-probe,egress,ack): …
pub fn presets_help() -> String {
    PRESETS
        .iter()
        .map(|(name, mask, what)| match *mask {
            0 => format!("`{name}`: {what}"),
            m => format!("`{name}` ({}): {what}", describe(m)),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_lists() {
        assert_eq!(parse("default"), Ok(0));
        assert!(parse("sockhash").unwrap_err().contains("removed"));
        assert_eq!(parse("none"), Ok(0));
        assert_eq!(parse("live"), Ok(HOOK_TCP_PROBE | HOOK_EGRESS | HOOK_ACK));
        assert_eq!(parse("ack"), Ok(HOOK_ACK));
        assert_eq!(parse("egress,tcp-probe"), Ok(HOOK_TCP_PROBE | HOOK_EGRESS));
        assert!(parse("egress,bogus").unwrap_err().contains("\"bogus\""));
        assert_eq!(describe(HOOK_EGRESS | HOOK_RCV_SPACE), "rcv-space,egress");
    }

    /// Each named hook has its own bit; each program has a link, and sockops
    /// is always attached.
    #[test]
    fn the_table_is_consistent() {
        let mut seen = 0;
        for h in HOOKS.iter().filter(|h| h.name.is_some()) {
            assert_eq!(h.bit.count_ones(), 1, "{h:?}");
            assert_eq!(seen & h.bit, 0, "{h:?}");
            seen |= h.bit;
            assert_eq!(h.program.is_some(), h.link.is_some(), "{h:?}");
        }
        assert_eq!(links(0).collect::<Vec<_>>(), ["sockops", "tp_cgroup_mkdir"]);
        assert_eq!(
            links(parse("live").unwrap()).collect::<Vec<_>>(),
            [
                "sockops",
                "tp_cgroup_mkdir",
                "tp_tcp_probe",
                "cgroup_skb_egress"
            ]
        );
        assert!(presets_help().contains("`live` (tcp-probe,egress,ack)"));
    }
}
