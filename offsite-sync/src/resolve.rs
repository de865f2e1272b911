//! Resolve a ledger path beneath its tree root without following a
//! symlink on the way (docs/contracts.md 9; docs/compatibility.md bug 23):
//! every intermediate component is opened with `O_NOFOLLOW | O_DIRECTORY`
//! relative to the previous one, and the last is examined with `AT_SYMLINK_NOFOLLOW` (a symlink there is
//! sent as a link, never followed).

use rustix::fs::AtFlags;
use rustix::io::Errno;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use backup_core::fsutil::{open_dir, open_dir_at};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    /// Present beneath the root (file, directory or symlink itself).
    Present,
    /// Gone since it was recorded.
    Vanished,
    /// An intermediate component is a symlink or not a directory: the
    /// entry would leave the tree (or is bogus); never sent.
    Unsafe,
}

/// Resolve `rel` (relative, no `..`) beneath the directory `root`.
pub fn resolve_beneath(root: &Path, rel: &Path) -> std::io::Result<Resolved> {
    // The root itself is configuration and may be followed.
    let mut dir = open_dir(root)?;
    let comps: Vec<&[u8]> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.as_bytes()),
            _ => None,
        })
        .collect();
    if rel.components().any(|c| {
        matches!(
            c,
            Component::ParentDir | Component::RootDir | Component::Prefix(_)
        )
    }) {
        return Ok(Resolved::Unsafe);
    }
    let Some((last, parents)) = comps.split_last() else {
        return Ok(Resolved::Unsafe);
    };
    for c in parents {
        match open_dir_at(&dir, c) {
            Ok(fd) => dir = fd,
            Err(Errno::NOENT) => return Ok(Resolved::Vanished),
            Err(Errno::LOOP) | Err(Errno::NOTDIR) => return Ok(Resolved::Unsafe),
            Err(e) => return Err(e.into()),
        }
    }
    match rustix::fs::statat(&dir, *last, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => Ok(Resolved::Present),
        Err(Errno::NOENT) => Ok(Resolved::Vanished),
        Err(Errno::NOTDIR) => Ok(Resolved::Unsafe),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_on_the_way_are_never_followed() {
        let d = tempfile::tempdir().expect("tmp");
        let root = d.path().join("tree");
        std::fs::create_dir_all(root.join("a/b")).expect("mkdir");
        std::fs::write(root.join("a/b/f"), "x").expect("w");
        let outside = d.path().join("outside");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::fs::write(outside.join("secret"), "s").expect("w");
        std::os::unix::fs::symlink(&outside, root.join("a/evil")).expect("symlink");
        std::os::unix::fs::symlink("/etc/passwd", root.join("a/link")).expect("symlink");
        let r = |p: &str| resolve_beneath(&root, Path::new(p)).expect("resolve");
        assert_eq!(r("a/b/f"), Resolved::Present);
        assert_eq!(r("a/b"), Resolved::Present);
        assert_eq!(r("a/evil/secret"), Resolved::Unsafe);
        assert_eq!(
            r("a/evil"),
            Resolved::Present,
            "the link itself is sent as a link"
        );
        assert_eq!(r("a/link"), Resolved::Present);
        assert_eq!(r("a/b/f/x"), Resolved::Unsafe);
        assert_eq!(r("a/gone"), Resolved::Vanished);
        assert_eq!(r("gone/x"), Resolved::Vanished);
        assert_eq!(r("a/../a/b/f"), Resolved::Unsafe);
    }
}
