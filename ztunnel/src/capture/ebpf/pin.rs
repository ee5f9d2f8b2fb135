//! Pinning on bpffs (fail-closed capture): the outbound links, every pod's sk_lookup link and
//! all maps live in one directory per ztunnel, so they outlive the process. If ztunnel dies,
//! enrolled pods keep being redirected to listeners that are gone (their connections are
//! refused instead of going around the mesh); a restarted ztunnel opens the same maps, adopts
//! the links and re-enrolls its pods.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, PinnedLink};

/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Where sk_lookup links of pods are pinned: `sk_lookup-<netns cookie>`.
const POD_LINK_PREFIX: &str = "sk_lookup-";

/// One ztunnel's pin directory on a bpffs.
#[derive(Debug, Clone)]
pub struct Pins {
    dir: PathBuf,
}

impl Pins {
    /// Makes sure `dir`'s parent is a bpffs (mounting one there if not) and creates `dir`.
    pub fn open(dir: &Path) -> io::Result<Pins> {
        let parent = dir.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(parent)?;
        if !is_bpffs(parent)? {
            mount_bpffs(parent)?;
            tracing::info!(path = %parent.display(), "mounted a bpffs for pinned capture state");
        }
        std::fs::create_dir_all(dir)?;
        Ok(Pins {
            dir: dir.to_path_buf(),
        })
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn link_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("link-{name}"))
    }

    /// The pinned link `name` if a previous ztunnel left one.
    pub fn adopt(&self, name: &str) -> Option<PinnedLink> {
        let path = self.link_path(name);
        if !path.exists() {
            return None;
        }
        match PinnedLink::from_pin(&path) {
            Ok(link) => Some(link),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unusable pinned link; replacing it");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Pins `link` as `name`, replacing (and so detaching) what was pinned there before.
    pub fn pin(&self, name: &str, link: FdLink) -> io::Result<PinnedLink> {
        let path = self.link_path(name);
        let _ = std::fs::remove_file(&path);
        link.pin(&path).map_err(io::Error::other)
    }

    pub fn pod_link_name(cookie: u64) -> String {
        format!("{POD_LINK_PREFIX}{cookie}")
    }

    /// Netns cookies of pods whose sk_lookup links are pinned here.
    pub fn pod_cookies(&self) -> Vec<u64> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_prefix("link-")?
                    .strip_prefix(POD_LINK_PREFIX)?
                    .parse()
                    .ok()
            })
            .collect()
    }

    /// Unpins pod link `name`: its link detaches once no process holds it.
    pub fn remove_link(&self, name: &str) {
        let path = self.link_path(name);
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "unpinning failed");
            }
        }
    }
}

/// Removes every pin in `dir` (links detach, maps go when unused): `ztunnel uninstall-capture`.
pub fn remove_all(dir: &Path) -> io::Result<bool> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; both pointers are valid for the call.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

fn mount_bpffs(target: &Path) -> io::Result<()> {
    let target_c = CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call; no data.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target_c.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("mounting a bpffs at {}: {e}", target.display()),
        ));
    }
    Ok(())
}
