//! `ss -tin` as the authority: the kernel's tcp_info for each socket.

use std::{collections::HashMap, process::Command};

/// The tcp_info fields longconn mirrors, for one socket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TcpInfo {
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub segs_out: u64,
    pub segs_in: u64,
    pub total_retrans: u64,
}

/// Socket key: (local addr, local port, remote addr, remote port), addresses as ss prints them.
pub type SockKey = (String, u16, String, u16);

fn split_endpoint(s: &str) -> Option<(String, u16)> {
    let (addr, port) = s.rsplit_once(':')?;
    let addr = addr.trim_start_matches('[').trim_end_matches(']');
    let addr = addr.split('%').next()?.to_owned();
    let addr = addr
        .strip_prefix("::ffff:")
        .map(str::to_owned)
        .unwrap_or(addr);
    Some((addr, port.parse().ok()?))
}

/// tcp_info of every TCP socket (any state) with one of `ports` as local or remote port.
pub fn tcp_info(ports: &[u16]) -> HashMap<SockKey, TcpInfo> {
    tcp_info_in(None, ports)
}

/// The same, inside network namespace `netns` (`ip netns exec`).
pub fn tcp_info_in(netns: Option<&str>, ports: &[u16]) -> HashMap<SockKey, TcpInfo> {
    let out = match netns {
        Some(ns) => Command::new("ip")
            .args(["netns", "exec", ns, "ss", "-tinHa"])
            .output(),
        None => Command::new("ss").args(["-tinHa"]).output(),
    }
    .expect("run ss");
    assert!(out.status.success(), "ss failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut result = HashMap::new();
    let mut current: Option<SockKey> = None;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            let f: Vec<&str> = line.split_whitespace().collect();
            current = None;
            if f.len() >= 5 {
                if let (Some((la, lp)), Some((ra, rp))) =
                    (split_endpoint(f[3]), split_endpoint(f[4]))
                {
                    if ports.contains(&lp) || ports.contains(&rp) {
                        current = Some((la, lp, ra, rp));
                    }
                }
            }
            continue;
        }
        let Some(key) = current.clone() else { continue };
        let mut info = TcpInfo::default();
        for tok in line.split_whitespace() {
            let Some((k, v)) = tok.split_once(':') else {
                continue;
            };
            let num = |v: &str| v.parse::<u64>().unwrap_or(0);
            match k {
                "bytes_acked" => info.bytes_acked = num(v),
                "bytes_received" => info.bytes_received = num(v),
                "segs_out" => info.segs_out = num(v),
                "segs_in" => info.segs_in = num(v),
                "retrans" => info.total_retrans = v.split('/').nth(1).map(num).unwrap_or(0),
                _ => {}
            }
        }
        result.insert(key, info);
    }
    result
}

/// The same fields from one `dump --json` element.
pub fn from_dump(v: &serde_json::Value) -> (SockKey, TcpInfo) {
    let s = |k: &str| {
        v[k].as_str()
            .unwrap_or_else(|| panic!("dump field {k} missing in {v}"))
            .to_owned()
    };
    let n = |k: &str| {
        v[k].as_u64()
            .unwrap_or_else(|| panic!("dump field {k} missing in {v}"))
    };
    let key = (
        s("local_addr"),
        n("local_port") as u16,
        s("remote_addr"),
        n("remote_port") as u16,
    );
    let info = TcpInfo {
        bytes_acked: n("bytes_sent"),
        bytes_received: n("bytes_received"),
        segs_out: n("packets_sent"),
        segs_in: n("packets_received"),
        total_retrans: n("retransmits"),
    };
    (key, info)
}
