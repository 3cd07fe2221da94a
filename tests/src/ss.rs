//! `ss -tin` as the authority: the kernel's tcp_info for each socket.

use std::{collections::HashMap, process::Command};

/// Every tcp_info field `ss -tin` prints that `dump` also reports, for
/// one socket. RTTs in microseconds: ss prints `rtt:SRTT/RTTVAR` and
/// `minrtt:` in milliseconds with `%g` (µs precision below 1 s), from
/// tcpi_rtt (the kernel's srtt_us >> 3) and tcpi_min_rtt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TcpInfo {
    pub state: String,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub segs_out: u64,
    pub segs_in: u64,
    pub total_retrans: u64,
    pub bytes_retrans: u64,
    pub srtt_us: u64,
    pub min_rtt_us: u64,
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
    raw_in(netns, ports)
        .into_iter()
        .map(|(k, raw)| (k, info(&raw)))
        .collect()
}

/// Milliseconds as ss prints them (`%g`) to whole microseconds.
fn ms_to_us(v: &str) -> u64 {
    let ms: f64 = v
        .parse()
        .unwrap_or_else(|_| panic!("ss printed {v:?} for an RTT"));
    (ms * 1000.0).round() as u64
}

fn info(raw: &HashMap<String, String>) -> TcpInfo {
    let num = |k: &str| {
        raw.get(k)
            .map(|v| {
                v.parse::<u64>()
                    .unwrap_or_else(|_| panic!("ss printed {k}:{v}"))
            })
            .unwrap_or(0) // ss omits zero counters
    };
    let rtt = raw.get("rtt").map(|v| v.split('/').next().unwrap_or(""));
    TcpInfo {
        state: raw["state"].clone(),
        bytes_acked: num("bytes_acked"),
        bytes_received: num("bytes_received"),
        segs_out: num("segs_out"),
        segs_in: num("segs_in"),
        // retrans:NOW/TOTAL
        total_retrans: raw
            .get("retrans")
            .and_then(|v| v.split('/').nth(1))
            .map(|v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("ss printed retrans {v}"))
            })
            .unwrap_or(0),
        bytes_retrans: num("bytes_retrans"),
        srtt_us: rtt.map(ms_to_us).unwrap_or(0),
        min_rtt_us: raw.get("minrtt").map(|v| ms_to_us(v)).unwrap_or(0),
    }
}

/// Everything `ss -tinHa` prints for each socket with one of `ports` as
/// local or remote port: `key:value` tokens as they are (`rtt` is
/// `SRTT/RTTVAR`, `retrans` `NOW/TOTAL`), plus `state`.
pub fn raw_in(netns: Option<&str>, ports: &[u16]) -> HashMap<SockKey, HashMap<String, String>> {
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
    let mut current: Option<(SockKey, String)> = None;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            let f: Vec<&str> = line.split_whitespace().collect();
            current = None;
            if f.len() >= 5 {
                if let (Some((la, lp)), Some((ra, rp))) =
                    (split_endpoint(f[3]), split_endpoint(f[4]))
                {
                    if ports.contains(&lp) || ports.contains(&rp) {
                        current = Some(((la, lp, ra, rp), f[0].to_owned()));
                    }
                }
            }
            continue;
        }
        let Some((key, state)) = current.clone() else {
            continue;
        };
        let mut raw = HashMap::from([("state".to_owned(), state)]);
        for tok in line.split_whitespace() {
            if let Some((k, v)) = tok.split_once(':') {
                raw.insert(k.to_owned(), v.to_owned());
            }
        }
        result.insert(key, raw);
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
        state: s("state"),
        bytes_retrans: n("bytes_retrans"),
        srtt_us: n("srtt_us"),
        min_rtt_us: n("min_rtt_us"),
        bytes_acked: n("bytes_sent"),
        bytes_received: n("bytes_received"),
        segs_out: n("packets_sent"),
        segs_in: n("packets_received"),
        total_retrans: n("retransmits"),
    };
    (key, info)
}
