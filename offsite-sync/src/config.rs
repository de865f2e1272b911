//! The configuration and the rsync/ssh commands built from it.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use backup_core::cmd::{Cmd, shell_quote};
use backup_core::exit::Exit;
use backup_core::ledger::{Ledger, PathKind};
use backup_core::rsync_items::MaxDelete;

use crate::nas;

/// Top-level state files of the backup root: never sent, never deleted
/// on the NAS by a full pass (they are excluded, so `--delete` spares them).
pub const STATE_EXCLUDES: &[&str] = &[
    "/.changed-files*",
    "/.nfs-changes.log*",
    "/.last-offsite-sync",
    "/.lv-pvc-mapping.json",
    "/.force-full-sync",
    "/.nfs-mirror/",
    "/.offsite-sync/",
    // The identity markers (contract 13): the backup root's is never sent
    // as data, and the NAS destination's is never deleted by `--delete`.
    "/.backup-pipeline-id*",
    "/lost+found/",
    "/anca-elements/",
];

/// Modes the NAS user can create (docs/compatibility.md, incident 2026-04-06).
pub const CHMOD: &str = "--chmod=Du=rwx,Dgo=rx,Fu=rw,Fog=r";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FullMode {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub remote: String,
    pub ssh_port: u16,
    pub ssh_key: PathBuf,
    pub known_hosts: PathBuf,
    pub connect_timeout: Duration,
    pub keepalive: Duration,
    pub io_timeout: Duration,
    pub run_timeout: Duration,
    pub bwlimit: Option<String>,
    pub backup_root: PathBuf,
    pub nfs_root: PathBuf,
    pub nfs_ssd_root: PathBuf,
    pub pve_dest: String,
    pub capacity_path: String,
    pub nfs_dest: String,
    pub nfs_ssd_dest: String,
    pub skip_list: PathBuf,
    /// nfs-track's state directory (its `last-watching` file), for coverage.
    pub nfs_track_state_dir: PathBuf,
    /// How old a leg's record may be and still count as running (coverage).
    pub coverage_max_age: Duration,
    pub full: FullMode,
    pub full_every: Duration,
    pub ledger_cap: u64,
    pub max_delete: MaxDelete,
    pub require_mountpoint: bool,
    pub dry_run: bool,
    pub rsync: OsString,
    pub ssh: OsString,
}

impl Config {
    pub fn leg1(&self) -> Ledger {
        Ledger::new(self.backup_root.join(".changed-files"), PathKind::Relative)
    }
    pub fn leg2(&self) -> Ledger {
        Ledger::new(
            self.backup_root.join(".nfs-changes.log"),
            PathKind::Absolute,
        )
    }
    pub fn state_dir(&self) -> PathBuf {
        self.backup_root.join(".offsite-sync")
    }
    pub(crate) fn stamp(&self, step: u8) -> PathBuf {
        self.state_dir().join(format!("last-full-step{step}"))
    }

    /// The ssh options every connection uses (contract 6).
    pub fn ssh_opts(&self) -> Vec<String> {
        vec![
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            format!("ConnectTimeout={}", self.connect_timeout.as_secs().max(1)),
            "-o".into(),
            format!("ServerAliveInterval={}", self.keepalive.as_secs().max(1)),
            "-o".into(),
            "ServerAliveCountMax=3".into(),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o".into(),
            "GlobalKnownHostsFile=/dev/null".into(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-i".into(),
            self.ssh_key.display().to_string(),
            "-p".into(),
            self.ssh_port.to_string(),
        ]
    }

    /// rsync's `-e`: one string, each word quoted for rsync's own splitter.
    fn rsh(&self) -> String {
        std::iter::once(self.ssh.clone())
            .chain(self.ssh_opts().into_iter().map(OsString::from))
            .map(|a| shell_quote(&a))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// `USER@HOST:PATH`, the path's bytes kept (rsync `--protect-args`
    /// sends them as they are: a non-UTF-8 tree name arrives unchanged).
    pub(crate) fn remote_path(&self, path: impl AsRef<OsStr>) -> OsString {
        let mut s = OsString::from(format!("{}:", self.remote));
        s.push(path);
        s
    }

    /// Every transfer compares modification times at full precision
    /// (contract 6): the backup disk's mirrors are rewritten in place and
    /// the NFS trees are live, so a same-size rewrite within the second of
    /// the NAS copy must not pass for unchanged (nor be hard-linked to the
    /// previous week's file by `--link-dest`).
    fn rsync_base(&self) -> Cmd {
        let mut c = Cmd::new(&self.rsync)
            .args(["-rltH", CHMOD, "--protect-args", "--modify-window=-1"])
            .arg(format!("--timeout={}", self.io_timeout.as_secs().max(1)))
            .arg("-e")
            .arg(self.rsh())
            .timeout(self.run_timeout);
        if let Some(bw) = &self.bwlimit {
            c = c.arg(format!("--bwlimit={bw}"));
        }
        c
    }

    /// rsync into a NAS destination: the NAS side checks the
    /// destination's identity marker in the same connection, right before
    /// it starts the receiving rsync (contract 12: the check made before
    /// the run holds while acting; a NAS volume unmounted since the run
    /// began leaves a bare directory without it). The receiver never
    /// starts then, and the transfer fails naming the destination.
    pub(crate) fn rsync_into(&self, dest_root: &str) -> Result<Cmd> {
        let id = nas::expected_id(self, dest_root)?;
        let marker = format!("{dest_root}/{}", backup_core::marker::FILE);
        let check = format!(
            "{{ grep -qxF -- {} {} 2>/dev/null || {{ echo {} >&2; exit 5; }}; }} && rsync",
            shell_quote(OsStr::new(&format!("id={id}"))),
            shell_quote(OsStr::new(&marker)),
            shell_quote(OsStr::new(&format!(
                "{}: {dest_root}: identity marker missing or different",
                nas::REFUSED_TAG
            ))),
        );
        Ok(self.rsync_base().arg(format!("--rsync-path={check}")))
    }

    pub fn validate(&self) -> Result<()> {
        if !self.remote.contains('@') || self.remote.starts_with('-') || self.remote.contains(':') {
            return Err(Exit::usage(format!(
                "--remote {:?}: expected USER@HOST",
                self.remote
            )));
        }
        for (flag, d) in [
            ("--pve-dest", &self.pve_dest),
            ("--nfs-dest", &self.nfs_dest),
            ("--nfs-ssd-dest", &self.nfs_ssd_dest),
        ] {
            if d.chars().any(char::is_control) {
                return Err(Exit::usage(format!(
                    "{flag} {d:?}: expected a path without control characters"
                )));
            }
            if !d.starts_with('/') {
                return Err(Exit::usage(format!(
                    "{flag} {d:?}: expected an absolute path on the NAS"
                )));
            }
        }
        Ok(())
    }
}
