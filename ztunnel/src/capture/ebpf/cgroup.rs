//! The cgroup v2 root where the capture programs attach once for the whole machine.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

/// Where ztunnel mounts cgroup v2 when the process sees no mount of it (a v1-only node, or a
/// mount namespace such as `ip netns exec` makes, which remounts /sys). Like Cilium's
/// `/run/cilium/cgroupv2`: every mount of cgroup2 shows the same hierarchy.
pub const OWN_MOUNT: &str = "/run/ztunnel/cgroupv2";

/// A cgroup2 mount point listed in `mounts` (the text of `/proc/self/mounts`).
pub fn find(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape(target)))
    })
}

/// `/proc/self/mounts` escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The cgroup v2 root: an existing mount, or [`OWN_MOUNT`] mounted now.
pub fn root() -> io::Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    if let Some(found) = find(&mounts) {
        return Ok(found);
    }
    mount(Path::new(OWN_MOUNT))?;
    Ok(PathBuf::from(OWN_MOUNT))
}

fn mount(target: &Path) -> io::Result<()> {
    std::fs::create_dir_all(target)?;
    let target_c = CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let fstype = c"cgroup2";
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call; no data.
    let rc = unsafe {
        libc::mount(
            c"none".as_ptr(),
            target_c.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("mounting cgroup2 at {}: {e}", target.display()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_among_v1_ones() {
        let hybrid = "cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";
        assert_eq!(find(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let v1_only = "cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n";
        assert_eq!(find(v1_only), None);
        let spaced = "none /run/my\\040cg cgroup2 rw 0 0\n";
        assert_eq!(find(spaced), Some(PathBuf::from("/run/my cg")));
    }
}
