//! Contract 15 (coverage), the leg-1 side: what nfs-mirror really mirrored.
//! nfs-mirror writes `BACKUP_ROOT/.nfs-mirror/coverage` after every run
//! (not on `--dry-run`); `offsite-sync coverage` and the nightly
//! `offsite-sync all` read it, so a directory routed to the backup disk
//! counts as covered only when the leg that should carry it has done so
//! recently, never because the skip list says so.
//!
//! Plain text, one section per NFS root, names ledger-escaped (contract 1),
//! times in Unix seconds:
//!
//! ```text
//! # nfs-mirror coverage record: written by every nfs-mirror run; read by offsite-sync coverage
//! root 1764990000 /srv/nfs
//! dir 1764990000 nextcloud
//! dir 0 .hidden
//! root 1764990000 /srv/nfs-ssd
//! dir 1764903600 vaultwarden
//! ```
//!
//! `root T PATH`: the last run that mirrored the root PATH (canonical) was
//! at T. Each `dir L NAME` after it: a top-level entry that run saw, and
//! the last time a run mirrored it successfully (0: never). A root whose
//! run was refused or failed (unmounted, empty, too many deletions) gets
//! that run's time with its directories' last successes kept: a directory
//! whose last success is older than its root's last run was not mirrored
//! by that run, and coverage says so that night (not once the record is
//! two days old).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::ledger::{decode, encode};

/// The record's path below the backup root.
pub const FILE: &str = ".nfs-mirror/coverage";

const HEADER: &str = "# nfs-mirror coverage record: written by every nfs-mirror run; read by offsite-sync coverage\n";

/// One root's section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RootRecord {
    /// Unix time of the last run that mirrored this root.
    pub run: u64,
    /// Top-level names that run saw, with the last successful mirror (0: never).
    pub dirs: BTreeMap<Vec<u8>, u64>,
}

/// Every root's section, by canonical root path (bytes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub roots: BTreeMap<Vec<u8>, RootRecord>,
}

fn split_num(line: &[u8]) -> Option<(u64, &[u8])> {
    let sp = line.iter().position(|&b| b == b' ')?;
    let n = std::str::from_utf8(&line[..sp]).ok()?.parse().ok()?;
    Some((n, &line[sp + 1..]))
}

impl Record {
    pub fn path(backup_root: &Path) -> PathBuf {
        backup_root.join(FILE)
    }

    /// Parse the record; `Err` names the first line that is not one.
    pub fn parse(text: &[u8]) -> Result<Record, String> {
        let mut rec = Record::default();
        let mut cur: Option<Vec<u8>> = None;
        for (i, line) in text.split(|&b| b == b'\n').enumerate() {
            if line.is_empty() || line.first() == Some(&b'#') {
                continue;
            }
            let bad = || format!("line {}: expected 'root T PATH' or 'dir T NAME'", i + 1);
            if let Some(rest) = line.strip_prefix(b"root ") {
                let (t, path) = split_num(rest).ok_or_else(bad)?;
                let path = decode(path).ok_or_else(bad)?;
                rec.roots.insert(
                    path.clone(),
                    RootRecord {
                        run: t,
                        dirs: BTreeMap::new(),
                    },
                );
                cur = Some(path);
            } else if let Some(rest) = line.strip_prefix(b"dir ") {
                let (t, name) = split_num(rest).ok_or_else(bad)?;
                let name = decode(name).ok_or_else(bad)?;
                let root = cur.as_ref().ok_or_else(bad)?;
                if let Some(r) = rec.roots.get_mut(root) {
                    r.dirs.insert(name, t);
                }
            } else {
                return Err(bad());
            }
        }
        Ok(rec)
    }

    /// The record under `backup_root`; an absent file is an empty record.
    pub fn load(backup_root: &Path) -> anyhow::Result<Record> {
        let path = Self::path(backup_root);
        match std::fs::read(&path) {
            Ok(t) => Record::parse(&t).map_err(|e| {
                anyhow::anyhow!(
                    "{}: {e} (an nfs-mirror coverage record)",
                    crate::log::p(&path)
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
            Err(e) => Err(anyhow::anyhow!("{}: {e}", crate::log::p(&path))),
        }
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = HEADER.as_bytes().to_vec();
        for (root, r) in &self.roots {
            out.extend_from_slice(format!("root {} ", r.run).as_bytes());
            out.extend_from_slice(&encode(root));
            out.push(b'\n');
            for (name, t) in &r.dirs {
                out.extend_from_slice(format!("dir {t} ").as_bytes());
                out.extend_from_slice(&encode(name));
                out.push(b'\n');
            }
        }
        out
    }

    /// Write atomically (temp, fsync, rename) under `backup_root`.
    pub fn save(&self, backup_root: &Path) -> anyhow::Result<()> {
        let path = Self::path(backup_root);
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| anyhow::anyhow!("{}: {e}", crate::log::p(d)))?;
        }
        crate::fsutil::write_atomic(&path, &self.render())
            .map_err(|e| anyhow::anyhow!("{}: {e}", crate::log::p(&path)))
    }

    /// Record a run of `root` at `now` that was refused or failed before
    /// mirroring anything: its directories keep their last success, which
    /// is now older than the root's run. A root never recorded stays so.
    pub fn refused(&mut self, root: &[u8], now: u64) {
        if let Some(r) = self.roots.get_mut(root) {
            r.run = now;
        }
    }

    /// Record a run of `root` at `now`: it saw `seen`, and mirrored the
    /// names in `mirrored` successfully. Names it saw but did not mirror
    /// keep their earlier success time; names it did not see are dropped.
    pub fn update(&mut self, root: &[u8], now: u64, seen: &[Vec<u8>], mirrored: &[Vec<u8>]) {
        let old = self.roots.remove(root).unwrap_or_default();
        let dirs = seen
            .iter()
            .map(|n| {
                let t = if mirrored.contains(n) {
                    now
                } else {
                    old.dirs.get(n).copied().unwrap_or(0)
                };
                (n.clone(), t)
            })
            .collect();
        self.roots
            .insert(root.to_vec(), RootRecord { run: now, dirs });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_keeps_earlier_successes() {
        let mut r = Record::default();
        let names = |v: &[&[u8]]| v.iter().map(|n| n.to_vec()).collect::<Vec<_>>();
        r.update(
            b"/srv/nfs",
            100,
            &names(&[b"a", b"new\nline"]),
            &names(&[b"a"]),
        );
        r.update(b"/srv/we ird", 100, &names(&[b"x"]), &names(&[b"x"]));
        let back = Record::parse(&r.render()).expect("parse");
        assert_eq!(back, r);
        // The next run fails `a` and no longer sees `new\nline`.
        r.update(b"/srv/nfs", 200, &names(&[b"a", b"b"]), &names(&[b"b"]));
        let root = &r.roots[&b"/srv/nfs".to_vec()];
        assert_eq!(root.run, 200);
        assert_eq!(root.dirs[&b"a".to_vec()], 100, "earlier success kept");
        assert_eq!(root.dirs[&b"b".to_vec()], 200);
        assert!(!root.dirs.contains_key(b"new\nline".as_slice()));
        // A refused run of the root: every directory's success is older.
        r.refused(b"/srv/nfs", 300);
        let root = &r.roots[&b"/srv/nfs".to_vec()];
        assert_eq!(root.run, 300);
        assert_eq!(root.dirs[&b"b".to_vec()], 200);
        r.refused(b"/srv/never-mirrored", 300);
        assert!(!r.roots.contains_key(b"/srv/never-mirrored".as_slice()));
        assert!(
            Record::parse(b"dir 1 x\n").is_err(),
            "a dir before any root"
        );
        assert!(Record::parse(b"root x /srv\n").is_err());
    }
}
