//! Group names to ids, from /etc/group (no NSS: the tools run on servers
//! where local groups are what matters, and this needs no unsafe).

use std::fs;

/// The gid of group `name`, or `None` if /etc/group has no such group.
pub fn gid_of(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Some(gid);
    }
    let text = fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|line| {
        let mut f = line.split(':');
        let (n, _pw, gid) = (f.next()?, f.next()?, f.next()?);
        (n == name).then(|| gid.parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_group_and_numbers() {
        assert_eq!(super::gid_of("root"), Some(0));
        assert_eq!(super::gid_of("1234"), Some(1234));
        assert_eq!(super::gid_of("no-such-group-longconn"), None);
    }
}
