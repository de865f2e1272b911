//! The names this tool has mirrored from one root, kept in
//! `DEST/.nfs-mirror/entries` (the root mirrored into DEST itself) or
//! `DEST/.nfs-mirror/entries.SUBDIR`: only these are ever pruned or
//! reported vanished.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use backup_core::log::p;

use crate::{STATE_DIR, SourceRoot};

/// The entries file of `root`, relative to the state directory.
pub(crate) fn file_of(root: &SourceRoot) -> PathBuf {
    match &root.into {
        Some(s) => {
            let mut f = OsString::from("entries.");
            f.push(s.as_os_str());
            PathBuf::from(f)
        }
        None => PathBuf::from("entries"),
    }
}

/// The names recorded in `file` (none when it is missing or unreadable).
pub(crate) fn load(dest: &Path, file: &Path) -> BTreeSet<Vec<u8>> {
    let f = dest.join(STATE_DIR).join(file);
    std::fs::read(&f)
        .map(|t| {
            t.split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .filter_map(backup_core::ledger::decode)
                .collect()
        })
        .unwrap_or_default()
}

/// Replace `file` with `set`, atomically.
pub(crate) fn save(dest: &Path, file: &Path, set: &BTreeSet<Vec<u8>>) -> Result<()> {
    let mut buf = Vec::new();
    for n in set {
        buf.extend_from_slice(&backup_core::ledger::encode(n));
        buf.push(b'\n');
    }
    let f = dest.join(STATE_DIR).join(file);
    backup_core::fsutil::write_atomic(&f, &buf).with_context(|| p(&f))
}
