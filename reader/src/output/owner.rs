//! Which group the output files get (`collect --group`), decided once at
//! start so that a reader that may not use a group finds out before it
//! writes anything: an explicit `--group` it may not use is an error that
//! says what to do; the default group (prometheus) is applied only when this
//! process may give files to it (root, CAP_CHOWN, or a member), otherwise the
//! files keep their group and one warning says so.

use std::{fs::File, io, os::unix::fs::MetadataExt, sync::OnceLock};

use longconn_common::caps;

use crate::argvalues::GroupArg;

/// The group every output file gets; unset keeps the file's own group.
static OUTPUT_GROUP: OnceLock<GroupArg> = OnceLock::new();

/// The default group, when it exists: node_exporter's on Debian.
pub const DEFAULT_GROUP: &str = "prometheus";

/// Sets the output group from `--group` (or the default); see the module doc.
pub fn choose(explicit: Option<&GroupArg>) -> anyhow::Result<()> {
    let group = match explicit {
        Some(g) => {
            if !may_use(g.gid) {
                anyhow::bail!(
                    "--group {}: this user (uid {}) may not give files to that group; run the reader as a member of it (or as root, or with CAP_CHOWN), or pass a --group it is in",
                    g.name,
                    euid()
                );
            }
            g.clone()
        }
        None => match crate::argvalues::group(DEFAULT_GROUP) {
            Err(_) => return Ok(()),
            Ok(g) if may_use(g.gid) => g,
            Ok(g) => {
                eprintln!(
                    "longconn-reader: output files keep their group: this user (uid {}) is not in group {} (gid {}), the default --group; add it to that group so node_exporter can read longconn.prom, or pass --group GROUP to choose (this warning then stops)",
                    euid(),
                    g.name,
                    g.gid
                );
                return Ok(());
            }
        },
    };
    let _ = OUTPUT_GROUP.set(group);
    Ok(())
}

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Whether this process may chown a file it owns to `gid`: root, CAP_CHOWN,
/// or `gid` is its effective or a supplementary group.
fn may_use(gid: u32) -> bool {
    let egid = rustix::process::getegid().as_raw();
    euid() == 0
        || egid == gid
        || supplementary_groups().contains(&gid)
        || caps::has(caps::effective(), caps::CAP_CHOWN)
}

fn supplementary_groups() -> Vec<u32> {
    rustix::process::getgroups()
        .map(|groups| groups.iter().map(|g| g.as_raw()).collect())
        .unwrap_or_default()
}

/// Gives a freshly created output file to the output group, if one is set
/// and the file does not already have it.
pub(crate) fn apply_group(file: &File) -> io::Result<()> {
    let Some(group) = OUTPUT_GROUP.get() else {
        return Ok(());
    };
    if file.metadata()?.gid() == group.gid {
        return Ok(());
    }
    // The owner stays; only the group changes.
    if let Err(e) = std::os::unix::fs::fchown(file, None, Some(group.gid)) {
        return Err(io::Error::new(
            e.kind(),
            format!(
                "cannot give it to group {} ({e}); run the reader as a member of that group or choose another --group",
                group.name
            ),
        ));
    }
    Ok(())
}
