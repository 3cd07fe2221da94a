//! `--services FILE`: names for remote endpoints ("postgres-primary" instead
//! of 10.0.3.7:5432), so metrics speak the operator's language.
//!
//! Format: CSV lines `cidr,ports,name,namespace`; `#` starts a comment.
//! `cidr` is an address with an optional /prefix, or `*` for any; `ports` is
//! one port, a range `8000-8999`, or `*`; `namespace` may be empty. The first
//! matching line wins. A file with any bad line is rejected whole, with
//! `file:line: what is wrong`, so a half-written file is never applied.
//!
//! A map made by `services-from-kubectl` holds a line per pod and per
//! service endpoint (tens of thousands): single-address rules are indexed
//! by address, so a lookup reads that address's rules and the wider ones
//! (CIDRs, `*`) before them, never every line; first match still wins.
//! Same-node peers named from CNI state (`cni`) are added after the file's
//! rules, so the file wins where both name an address.

use std::{collections::HashMap, net::IpAddr, path::Path};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    net: Option<(IpAddr, u8)>,
    ports: (u16, u16),
    pub name: String,
    pub namespace: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceMap {
    rules: Vec<Rule>,
    /// Indexes of single-address rules, by address, in file order.
    hosts: HashMap<IpAddr, Vec<usize>>,
    /// Indexes of the other rules (CIDRs, `*`), in file order.
    wide: Vec<usize>,
}

impl Rule {
    /// `ip`, any port, named `name` in `namespace`.
    pub fn host(ip: IpAddr, name: String, namespace: String) -> Self {
        let ip = canonical(ip);
        let len = if ip.is_ipv4() { 32 } else { 128 };
        Self {
            net: Some((ip, len)),
            ports: (0, u16::MAX),
            name,
            namespace,
        }
    }

    /// The address a single-address rule names.
    fn single_host(&self) -> Option<IpAddr> {
        match self.net {
            Some((ip, len)) if u32::from(len) == if ip.is_ipv4() { 32 } else { 128 } => Some(ip),
            _ => None,
        }
    }

    fn matches(&self, ip: IpAddr, port: u16) -> bool {
        port >= self.ports.0
            && port <= self.ports.1
            && self.net.is_none_or(|(net, len)| in_net(ip, net, len))
    }
}

fn parse_cidr(s: &str) -> Result<Option<(IpAddr, u8)>, String> {
    if s == "*" {
        return Ok(None);
    }
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| {
        format!("address {addr:?}: expected an IPv4 or IPv6 address, a CIDR like 10.0.0.0/8, or *")
    })?;
    let ip = canonical(ip);
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|&l| l <= max)
            .ok_or_else(|| format!("prefix length {l:?}: expected 0 to {max}"))?,
    };
    Ok(Some((ip, len)))
}

fn parse_ports(s: &str) -> Result<(u16, u16), String> {
    if s == "*" {
        return Ok((0, u16::MAX));
    }
    let bad = || format!("ports {s:?}: expected a port (5432), a range (8000-8999) or *");
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let (a, b): (u16, u16) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a > b {
        return Err(bad());
    }
    Ok((a, b))
}

/// IPv4-mapped IPv6 becomes IPv4, so rules and sockets compare in one form.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn in_net(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// At most this many characters of a bad line are quoted in an error.
const QUOTE_CHARS: usize = 80;

/// `line` for an error message: escaped (control and bidi characters
/// cannot reach the terminal or journal raw) and cut to `QUOTE_CHARS`.
fn quoted(line: &str) -> String {
    let mut cut: String = line.chars().take(QUOTE_CHARS).collect();
    let more = line.chars().count() > QUOTE_CHARS;
    cut = crate::termsafe::escape(&cut).replace('"', "\\\"");
    if more {
        cut.push('…');
    }
    cut
}

impl ServiceMap {
    /// Parses the whole text; the error names `origin:line`.
    pub fn parse(text: &str, origin: &str) -> Result<Self, String> {
        let mut rules = Vec::new();
        // A UTF-8 byte order mark (editors on Windows write one) is not data.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let at = |what: String| format!("{origin}:{}: {what}", i + 1);
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            if f.len() != 4 {
                return Err(at(format!(
                    "{} fields in \"{}\": expected cidr,ports,name,namespace",
                    f.len(),
                    quoted(line)
                )));
            }
            if f[2].is_empty() {
                return Err(at("empty service name".into()));
            }
            rules.push(Rule {
                net: parse_cidr(f[0]).map_err(at)?,
                ports: parse_ports(f[1]).map_err(at)?,
                name: f[2].to_owned(),
                namespace: f[3].to_owned(),
            });
        }
        let mut map = Self::default();
        map.extend(rules);
        Ok(map)
    }

    /// Adds `rules` after those already in the map (they match only where
    /// no earlier rule does).
    pub fn extend(&mut self, rules: impl IntoIterator<Item = Rule>) {
        for rule in rules {
            let i = self.rules.len();
            match rule.single_host() {
                Some(ip) => self.hosts.entry(ip).or_default().push(i),
                None => self.wide.push(i),
            }
            self.rules.push(rule);
        }
    }

    /// How many rules the map holds.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Reads and parses the map at `path`: a regular file only (a FIFO or
    /// device there would block the cycle, lock held, for ever).
    pub fn load(path: &Path) -> Result<(Self, String), String> {
        let text = read_regular(path)
            .map_err(|e| format!("{}: cannot read service map: {e}", path.display()))?;
        let map = Self::parse(&text, &path.display().to_string())?;
        Ok((map, text))
    }

    /// The first rule matching `ip:port`.
    pub fn lookup(&self, ip: IpAddr, port: u16) -> Option<&Rule> {
        let ip = canonical(ip);
        let host = self.hosts.get(&ip).and_then(|ix| {
            ix.iter()
                .copied()
                .find(|&i| self.rules[i].matches(ip, port))
        });
        let before = host.unwrap_or(usize::MAX);
        let wide = self
            .wide
            .iter()
            .copied()
            .take_while(|&i| i < before)
            .find(|&i| self.rules[i].matches(ip, port));
        wide.or(host).map(|i| &self.rules[i])
    }
}

/// The text of `path`, opened without blocking (O_NONBLOCK: a FIFO does not
/// hang the open) and refused unless it is a regular file.
pub fn read_regular(path: &Path) -> std::io::Result<String> {
    use std::{io::Read, os::unix::fs::OpenOptionsExt};
    let mut f = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    if !f.metadata()?.file_type().is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, device or directory); give a CSV file",
        ));
    }
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = "\
# cidr,ports,name,namespace
10.0.0.0/8, 5432, postgres-primary, db
127.0.0.1, 8000-8999, local-web,
::1/128, 80, v6-web, dev   # trailing comment
*, 53, dns, infra
";

    #[test]
    fn first_match_wins_with_cidr_ranges_and_wildcards() {
        let m = ServiceMap::parse(MAP, "svc.csv").unwrap();
        let name = |ip: &str, port| m.lookup(ip.parse().unwrap(), port).map(|r| r.name.as_str());
        for (ip, port, want) in [
            ("10.1.2.3", 5432, Some("postgres-primary")),
            ("10.1.2.3", 5433, None),
            ("11.0.0.1", 5432, None),
            ("127.0.0.1", 8000, Some("local-web")),
            ("127.0.0.1", 8999, Some("local-web")),
            ("127.0.0.1", 9000, None),
            ("::ffff:127.0.0.1", 8080, Some("local-web")),
            ("::1", 80, Some("v6-web")),
            ("::2", 80, None),
            ("192.168.1.1", 53, Some("dns")),
        ] {
            assert_eq!(name(ip, port), want, "{ip}:{port}");
        }
        assert_eq!(
            m.lookup("10.0.0.1".parse().unwrap(), 5432)
                .unwrap()
                .namespace,
            "db"
        );
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        for (text, want) in [
            ("10.0.0.0/8,5432,pg\n", "svc.csv:1: 3 fields"),
            (
                "# ok\n10.0.0.0/33,1,a,\n",
                "svc.csv:2: prefix length \"33\"",
            ),
            ("10.0.0.x,1,a,\n", "svc.csv:1: address \"10.0.0.x\""),
            ("*,9-1,a,\n", "svc.csv:1: ports \"9-1\""),
            ("*,http,a,\n", "svc.csv:1: ports \"http\""),
            ("*,1,,\n", "svc.csv:1: empty service name"),
        ] {
            let e = ServiceMap::parse(text, "svc.csv").unwrap_err();
            assert!(e.starts_with(want), "{e} should start with {want}");
        }
    }

    /// Issue 22 item 8: a UTF-8 BOM is accepted; a bad line is quoted
    /// escaped (no raw control character) and cut to a bounded length.
    #[test]
    fn a_bom_is_accepted_and_bad_lines_are_quoted_safely() {
        let m = ServiceMap::parse("\u{feff}10.0.0.0/8,5432,pg,db\n", "svc.csv").unwrap();
        assert_eq!(m.len(), 1);
        let long = format!("\x1b[2J{}", "x".repeat(500));
        let e = ServiceMap::parse(&long, "svc.csv").unwrap_err();
        assert!(!e.contains('\x1b') && e.contains("\\x1b[2J"), "{e}");
        assert!(e.len() < 200 && e.contains('…'), "{e}");
    }

    /// The address index keeps first-match order: a wide rule before a
    /// single-address one wins, one after it does not; rules added by
    /// `extend` (CNI peers) come after the file's.
    #[test]
    fn the_address_index_keeps_first_match_order() {
        let mut m = ServiceMap::parse(
            "10.0.0.5,80,web,a\n10.0.0.0/24,80-90,net,b\n10.0.0.5,*,pod,c\n10.0.0.6/32,*,six,d\n*,443,tls,\n",
            "svc.csv",
        )
        .unwrap();
        m.extend([
            Rule::host("10.0.0.5".parse().unwrap(), "cni5".into(), "x".into()),
            Rule::host(
                "::ffff:10.0.0.7".parse().unwrap(),
                "cni7".into(),
                "x".into(),
            ),
        ]);
        let name = |ip: &str, port| m.lookup(ip.parse().unwrap(), port).map(|r| r.name.as_str());
        for (ip, port, want) in [
            ("10.0.0.5", 80, Some("web")),
            ("10.0.0.5", 85, Some("net")),
            ("10.0.0.5", 22, Some("pod")),
            ("10.0.0.5", 443, Some("pod")),
            ("10.0.0.6", 85, Some("net")),
            ("10.0.0.6", 443, Some("six")),
            ("10.0.0.7", 80, Some("net")),
            ("10.0.0.7", 22, Some("cni7")),
            ("10.0.0.8", 443, Some("tls")),
            ("10.1.0.8", 22, None),
        ] {
            assert_eq!(name(ip, port), want, "{ip}:{port}");
        }
        // The oracle: the first matching rule in file order.
        for ip in ["10.0.0.5", "10.0.0.6", "10.0.0.7", "10.0.0.9"] {
            for port in [22, 80, 85, 90, 443] {
                let ip: IpAddr = ip.parse().unwrap();
                let first = m.rules.iter().find(|r| r.matches(ip, port));
                assert_eq!(m.lookup(ip, port), first, "{ip}:{port}");
            }
        }
    }

    /// Issue 12 item 9: a FIFO (or any non-regular file) is refused at once.
    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("svc.csv");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = ServiceMap::load(&fifo).unwrap_err();
        assert!(
            e.contains("not a regular file") && e.contains("svc.csv"),
            "{e}"
        );
        let e = ServiceMap::load(d.path()).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
    }
}
