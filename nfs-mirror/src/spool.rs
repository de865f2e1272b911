//! rsync's item lists into the ledger. A copy's list is spooled to
//! `<spool dir>/<hex of its ledger prefix>.<pid>.items` while rsync runs,
//! so the files of a run killed midway still reach the ledger: the next
//! run recovers them before it copies anything.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use backup_core::ledger::Ledger;
use backup_core::log::p;
use backup_core::rsync_items;
use backup_core::warn;

/// The spool file of this process's copy of the tree at ledger `prefix`.
pub(crate) fn path(dir: &Path, prefix: &[u8]) -> PathBuf {
    dir.join(format!("{}.{}.items", hex(prefix), std::process::id()))
}

/// Spool files of runs that died before their items reached the ledger.
/// A spool still locked belongs to an rsync that is still running (its
/// parent was killed): left for a later run.
pub(crate) fn recover(dir: &Path, ledger: &Ledger) -> Result<u64> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(0);
    };
    let mut n = 0;
    for e in rd.flatten() {
        let path = e.path();
        let fname = e.file_name();
        // Spool files are named `<hex of the entry name>.<pid>.items`.
        let Some(hexname) = fname
            .to_str()
            .and_then(|s| s.strip_suffix(".items"))
            .and_then(|s| s.split('.').next())
        else {
            continue;
        };
        let Some(entry) = unhex(hexname) else {
            continue;
        };
        let f = std::fs::File::open(&path).with_context(|| p(&path))?;
        match f.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                warn!(
                    "{}: an rsync of a killed run still writes it; left for the next run",
                    p(&path)
                );
                continue;
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| p(&path));
            }
        }
        let data = std::fs::read(&path).with_context(|| p(&path))?;
        n += append_items(ledger, &entry, &data)?;
        std::fs::remove_file(&path).with_context(|| p(&path))?;
    }
    if n > 0 {
        warn!("recovered {n} transferred file(s) of an interrupted run into the ledger");
    }
    Ok(n)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// The transferred items of one tree as ledger paths (`<prefix>/<name>`).
fn transferred_paths(prefix: &[u8], out: &[u8]) -> Vec<Vec<u8>> {
    rsync_items::parse(out)
        .into_iter()
        .filter(|i| i.is_transfer())
        .map(|i| {
            let mut v = prefix.to_vec();
            v.push(b'/');
            v.extend_from_slice(i.path().as_os_str().as_bytes());
            v
        })
        .collect()
}

/// Add the files rsync reported as transferred (`out`, its item list) to
/// the ledger under `prefix`; returns how many.
pub(crate) fn append_items(ledger: &Ledger, prefix: &[u8], out: &[u8]) -> Result<u64> {
    let paths = transferred_paths(prefix, out);
    if paths.is_empty() {
        return Ok(0);
    }
    let n = ledger
        .append(&paths)
        .with_context(|| format!("cannot append to ledger {}", p(ledger.path())))?;
    Ok(n as u64)
}
