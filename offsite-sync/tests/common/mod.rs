#![allow(dead_code)]
//! Shared setup: a backup root, NFS roots, a skip list and a real sshd NAS
//! (tests/src/nas.rs) whose storage is a directory of the sandbox.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use backup_core::ledger::{Ledger, PathKind};
use backup_tests::harness::{Run, Sandbox};
use backup_tests::nas::Nas;

pub const SKIP: &str = "direct immich\nnever frigate\nnever immich/thumbs-cache\n";

pub struct World {
    pub sb: Sandbox,
    /// nfs-track's state dir: [`World::new`] records a tracker watching
    /// both roots, so the direct route counts as carried (coverage).
    pub tracker_state: PathBuf,
    pub root: PathBuf,
    pub nfs: PathBuf,
    pub nfs_ssd: PathBuf,
    pub skip: PathBuf,
    /// NAS storage as the NAS sees it.
    pub nas_dir: PathBuf,
    pub nas: Option<Nas>,
    /// ssh keepalive and rsync I/O timeout: generous by default so a
    /// starved machine never drops a healthy connection; the link-cut test
    /// shortens them to detect the cut quickly.
    pub keepalive: &'static str,
    pub io_timeout: &'static str,
}

impl World {
    pub fn new() -> World {
        let sb = Sandbox::new();
        let root = sb.mkdir("mnt/backup");
        backup_tests::harness::init_backup_root(&root);
        let nfs = sb.mkdir("srv/nfs");
        let nfs_ssd = sb.mkdir("srv/nfs-ssd");
        let skip = sb.write("skip.conf", SKIP);
        let nas_dir = sb.mkdir("nas");
        let tracker_state = sb.mkdir("var/lib/nfs-track");
        tracker_watching(&tracker_state, &root, &[&nfs, &nfs_ssd]);
        World {
            sb,
            tracker_state,
            root,
            nfs,
            nfs_ssd,
            skip,
            nas_dir,
            nas: None,
            keepalive: "5s",
            io_timeout: "30s",
        }
    }

    pub fn with_nas() -> World {
        let mut w = World::new();
        w.nas = Some(Nas::start(&w.sb.path().join("sshd")));
        w.init();
        w
    }

    /// `offsite-sync init`: the NAS destinations get their identity
    /// markers, the backup root records them (as an operator does once).
    pub fn init(&self) {
        self.run("init", &[]).succeeds();
    }

    pub fn nas(&self) -> &Nas {
        self.nas.as_ref().expect("nas started")
    }

    pub fn pve(&self) -> PathBuf {
        self.nas_dir.join("pve-backup")
    }

    /// The offsite-sync argv (without the program) for a subcommand.
    pub fn args(&self, sub: &str) -> Vec<String> {
        let mut v = vec![sub.to_string()];
        if let Some(n) = &self.nas {
            v.extend(n.flags());
        }
        v.extend([
            "--backup-root".into(),
            self.root.display().to_string(),
            "--nfs-root".into(),
            self.nfs.display().to_string(),
            "--nfs-ssd-root".into(),
            self.nfs_ssd.display().to_string(),
            "--pve-dest".into(),
            self.pve().display().to_string(),
            "--nfs-dest".into(),
            self.nas_dir.join("nfs").display().to_string(),
            "--nfs-ssd-dest".into(),
            self.nas_dir.join("nfs-ssd").display().to_string(),
            "--skip-list".into(),
            self.skip.display().to_string(),
            "--nfs-track-state-dir".into(),
            self.tracker_state.display().to_string(),
            "--keepalive".into(),
            self.keepalive.into(),
            "--io-timeout".into(),
            self.io_timeout.into(),
        ]);
        v
    }

    pub fn cmd(&self, sub: &str, extra: &[&str]) -> Command {
        let mut c = self.sb.cmd("offsite-sync");
        c.args(self.args(sub)).args(extra);
        c
    }

    pub fn run(&self, sub: &str, extra: &[&str]) -> Run {
        Run::of(&mut self.cmd(sub, extra))
    }

    pub fn leg1(&self) -> Ledger {
        Ledger::new(self.root.join(".changed-files"), PathKind::Relative)
    }
    pub fn leg2(&self) -> Ledger {
        Ledger::new(self.root.join(".nfs-changes.log"), PathKind::Absolute)
    }

    /// Write a file under a base dir (bytes path), parents created.
    pub fn put(base: &Path, rel: &[u8], data: &[u8]) -> PathBuf {
        let p = base.join(OsStr::from_bytes(rel));
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, data).expect("write");
        p
    }

    /// Files (not dirs) below a dir, relative, as bytes.
    pub fn files(dir: &Path) -> BTreeSet<Vec<u8>> {
        let mut out = BTreeSet::new();
        fn walk(base: &Path, d: &Path, out: &mut BTreeSet<Vec<u8>>) {
            let Ok(rd) = std::fs::read_dir(d) else { return };
            for e in rd.flatten() {
                // Identity markers are not data.
                if e.file_name() == backup_core::marker::FILE {
                    continue;
                }
                let p = e.path();
                let ft = e.file_type().expect("ft");
                if ft.is_dir() {
                    walk(base, &p, out);
                } else {
                    out.insert(
                        p.strip_prefix(base)
                            .expect("prefix")
                            .as_os_str()
                            .as_bytes()
                            .to_vec(),
                    );
                }
            }
        }
        walk(dir, dir, &mut out);
        out
    }
}

pub fn set(items: &[&[u8]]) -> BTreeSet<Vec<u8>> {
    items.iter().map(|i| i.to_vec()).collect()
}

/// Record, with nfs-track's own state writer, that a tracker is watching
/// `roots` into the backup root's change log now (what a running
/// nfs-track keeps stamped).
pub fn tracker_watching(state_dir: &Path, backup_root: &Path, roots: &[&Path]) {
    let roots: Vec<PathBuf> = roots
        .iter()
        .map(|r| std::fs::canonicalize(r).expect("root"))
        .collect();
    nfs_track::state::State::new(state_dir, &backup_root.join(".nfs-changes.log"), &roots)
        .stamp(std::time::SystemTime::now())
        .expect("tracker state");
}
