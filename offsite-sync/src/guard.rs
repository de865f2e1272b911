//! The source guard: what a source must be before anything may delete
//! on the NAS from it, and the identity of a root taken at the start of a
//! step to check it is still the same one.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::Result;
use backup_core::log::p;

pub use backup_core::root_guard::is_mountpoint;

/// Why a source may not be used for a deleting pass, if it may not.
pub(crate) fn source_guard(
    path: &Path,
    require_mountpoint: bool,
    ignore_state: bool,
) -> Option<String> {
    match std::fs::metadata(path) {
        Err(e) => return Some(format!("{} is missing ({e})", p(path))),
        Ok(m) if !m.is_dir() => return Some(format!("{} is not a directory", p(path))),
        Ok(_) => {}
    }
    if require_mountpoint && !is_mountpoint(path) {
        return Some(format!("{} is not a mountpoint", p(path)));
    }
    let has_content = std::fs::read_dir(path)
        .map(|rd| {
            rd.flatten().any(|e| {
                let n = e.file_name();
                let b = n.as_bytes();
                !(ignore_state && (b.first() == Some(&b'.') || b == b"lost+found"))
            })
        })
        .unwrap_or(false);
    if !has_content {
        return Some(format!("{} is empty", p(path)));
    }
    None
}

/// The device id of a path (`None` when it cannot be read).
pub fn dev_of(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.dev())
}

/// The backup root as it was at the start of a step: its filesystem and
/// its identity marker. Checked again immediately before each deleting
/// transfer and before a batch is committed: a root lazily unmounted (or
/// replaced) meanwhile is another directory, and nothing read from it
/// may delete on the NAS or count as sent.
pub(crate) struct RootId {
    pub(crate) dev: Option<u64>,
    pub(crate) marker: Option<String>,
}

impl RootId {
    pub(crate) fn of(root: &Path, with_marker: bool) -> Result<RootId> {
        Ok(RootId {
            dev: dev_of(root),
            marker: if with_marker {
                Some(backup_core::marker::require_backup_root(root)?.id)
            } else {
                None
            },
        })
    }

    /// Why `root` is no longer what it was, if it is not.
    pub(crate) fn changed(&self, root: &Path) -> Option<String> {
        let now = dev_of(root);
        if now.is_none() || now != self.dev {
            return Some(format!(
                "{} is no longer the filesystem it was at the start (device {} then, {} now): \
                 unmounted or replaced",
                p(root),
                self.dev
                    .map(|d| d.to_string())
                    .unwrap_or_else(|| "?".into()),
                now.map(|d| d.to_string()).unwrap_or_else(|| "none".into())
            ));
        }
        if let Some(id) = &self.marker {
            match backup_core::marker::require_backup_root(root) {
                Ok(m) if &m.id == id => {}
                Ok(m) => {
                    return Some(format!(
                        "{}: identity marker is now id {}, was {id} at the start",
                        p(root),
                        m.id
                    ));
                }
                Err(e) => return Some(backup_core::exit::one_line(&e)),
            }
        }
        None
    }
}
