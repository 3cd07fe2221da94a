//! Group names to ids, from /etc/group (no NSS: the tools run on servers
//! where local groups are what matters, and this needs no unsafe).

use std::fs;

/// (name, gid) of every well-formed line of /etc/group.
fn entries() -> Vec<(String, u32)> {
    let text = fs::read_to_string("/etc/group").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(':');
            let (n, _pw, gid) = (f.next()?, f.next()?, f.next()?);
            Some((n.to_owned(), gid.parse().ok()?))
        })
        .collect()
}

/// The gid of group `name`, or `None` if /etc/group has no such group.
pub fn gid_of(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Some(gid);
    }
    entries()
        .into_iter()
        .find_map(|(n, gid)| (n == name).then_some(gid))
}

/// The name of group `gid` in /etc/group.
pub fn name_of(gid: u32) -> Option<String> {
    entries()
        .into_iter()
        .find_map(|(n, g)| (g == gid).then_some(n))
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_group_and_numbers() {
        assert_eq!(super::gid_of("root"), Some(0));
        assert_eq!(super::gid_of("1234"), Some(1234));
        assert_eq!(super::gid_of("no-such-group-longconn"), None);
        assert_eq!(super::name_of(0).as_deref(), Some("root"));
    }
}
