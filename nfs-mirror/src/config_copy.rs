//! Host configuration copy (`nfs-mirror config`): each configuration
//! directory into `DEST/pve-config/<its path>/`, spooled and ledgered like
//! the mirror's trees.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use backup_core::cli::Common;
use backup_core::cmd::RsyncResult;
use backup_core::exit::{Exit, ExitCode};
use backup_core::ledger::{Ledger, PathKind};
use backup_core::log::p;
use backup_core::metrics::Metrics;
use backup_core::{error, info};

use crate::dest::Dest;
use crate::rsync::{self, Spooled};
use crate::{STATE_DIR, fs_used_bytes, is_empty_dir, is_mountpoint, spool};

/// Host configuration copy (`nfs-mirror config`).
#[derive(Debug, Clone)]
pub struct ConfigOpts {
    pub dest: PathBuf,
    pub require_mountpoint: bool,
    pub items: Vec<PathBuf>,
    pub ledger: Option<PathBuf>,
    pub dry_run: bool,
    pub timeout: Duration,
    pub rsync: OsString,
}

/// The copy as the command runs it: its metrics written on every path
/// (unless a dry run). Its report is the log: nothing goes to stdout.
pub fn run_config(o: &ConfigOpts, common: &Common) -> Result<ExitCode> {
    let mut m = Metrics::new();
    let res = config(o);
    if let Ok((_, n)) = &res {
        m.gauge(
            "nfs_mirror_config_files_transferred",
            "Configuration files copied by the last run.",
            *n as f64,
        )?;
    }
    m.gauge(
        "nfs_mirror_config_bytes",
        "Used bytes of the backup filesystem.",
        fs_used_bytes(&o.dest) as f64,
    )?;
    if !o.dry_run {
        common.write_metrics(&m);
    }
    res.map(|(c, _)| c)
}

/// Copy each configuration directory to `DEST/pve-config/<its path>/`;
/// returns the exit code and the files copied (recovered ones included).
pub fn config(o: &ConfigOpts) -> Result<(ExitCode, u64)> {
    let dest_at = check_dest(o)?;
    let mut run = ConfigRun::start(o, &dest_at)?;
    for item in &o.items {
        run.copy_item(item)?;
    }
    Ok((ExitCode::from_items(run.ok, run.failed.len()), run.total))
}

/// The destination is the backup root, pinned (and a mountpoint when asked).
fn check_dest(o: &ConfigOpts) -> Result<Dest> {
    if !o.dest.is_dir() {
        return Err(Exit::refused(format!(
            "destination {} is not a directory",
            p(&o.dest)
        )));
    }
    // Contract 13: only into the backup root itself (an unmounted disk's
    // bare mountpoint, a mistyped --dest: refused, nothing written), and
    // only while it is still that root (contract 12, as the mirror: rsync
    // writes through its descriptor, checked before each copy and before
    // its items are ledgered).
    let dest_at = Dest::require(&o.dest)?;
    if o.require_mountpoint && !is_mountpoint(&o.dest)? {
        return Err(Exit::refused(format!(
            "destination {} is not a mountpoint (--allow-unmounted-root for a sandbox): nothing copied",
            p(&o.dest)
        )));
    }
    Ok(dest_at)
}

/// One `config` run: what each item's copy reads and adds to.
struct ConfigRun<'a> {
    o: &'a ConfigOpts,
    dest_at: &'a Dest,
    ledger: Ledger,
    /// `DEST/pve-config`.
    root: PathBuf,
    spool_dir: PathBuf,
    ok: usize,
    failed: Vec<String>,
    /// Files copied (ledgered).
    total: u64,
}

impl<'a> ConfigRun<'a> {
    /// Nothing copied yet; a killed run's copied files are in the ledger
    /// first (not on a dry run).
    fn start(o: &'a ConfigOpts, dest_at: &'a Dest) -> Result<ConfigRun<'a>> {
        let ledger = Ledger::new(
            o.ledger
                .clone()
                .unwrap_or_else(|| o.dest.join(".changed-files")),
            PathKind::Relative,
        );
        // Its own spool directory: `nfs-mirror config` runs under another
        // lock than the mirror, whose recovery must never take a spool
        // being written.
        let mut run = ConfigRun {
            o,
            dest_at,
            ledger,
            root: o.dest.join("pve-config"),
            spool_dir: o.dest.join(STATE_DIR).join("config-spool"),
            ok: 0,
            failed: Vec::new(),
            total: 0,
        };
        if !o.dry_run {
            std::fs::create_dir_all(&run.spool_dir).with_context(|| p(&run.spool_dir))?;
            run.total += spool::recover(&run.spool_dir, &run.ledger)?;
        }
        Ok(run)
    }

    /// One item copied (or, on a dry run, named); a missing or empty item
    /// fails and leaves its copy as it is; `Err` for a relative item or a
    /// backup root that changed.
    fn copy_item(&mut self, item: &Path) -> Result<()> {
        let o = self.o;
        let rel: PathBuf = item
            .components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .collect();
        if !item.is_absolute() || rel.as_os_str().is_empty() {
            return Err(Exit::usage(format!(
                "--item {}: expected an absolute directory path",
                p(item)
            )));
        }
        if is_empty_dir(item) {
            // A missing or empty /etc/pve (pmxcfs down) must not wipe the copy.
            error!("{}: missing or empty, its copy is left as it is", p(item));
            self.failed.push(p(item));
            return Ok(());
        }
        let dst = self.root.join(&rel);
        if o.dry_run {
            info!("would copy {} to {}", p(item), p(&dst));
            self.ok += 1;
            return Ok(());
        }
        self.dest_at.check()?;
        std::fs::create_dir_all(self.dest_at.pinned(&o.dest, &dst)).with_context(|| p(&dst))?;
        let mut prefix = b"pve-config/".to_vec();
        prefix.extend_from_slice(rel.as_os_str().as_bytes());
        // Spooled like the mirror's trees: with rsync's item list only in
        // memory, a run stopped (systemd stop, TimeoutStartSec=, kill) or
        // timed out after some files arrived ledgered none of them, and the
        // next run, finding them up to date, never did either.
        let spool = spool::path(&self.spool_dir, &prefix);
        let args = rsync::args(item, &self.dest_at.pinned(&o.dest, &dst), &[], false, false);
        let res = rsync::run_spooled(&o.rsync, &args, &spool, o.timeout)?;
        if let Err(e) = self.dest_at.check() {
            return Err(Exit::err(
                ExitCode::Failed,
                format!(
                    "{}: {}; its copy's items stay in {} for the next run",
                    p(item),
                    backup_core::exit::one_line(&e),
                    p(&spool)
                ),
            ));
        }
        let data = std::fs::read(&spool).unwrap_or_default();
        let n = spool::append_items(&self.ledger, &prefix, &data)?;
        let _ = std::fs::remove_file(&spool);
        self.total += n;
        self.settle(item, n, res);
        Ok(())
    }

    /// The item counted copied or failed from how its rsync ended.
    fn settle(&mut self, item: &Path, n: u64, res: Spooled) {
        match res {
            Spooled::Exited { code, stderr } => {
                if RsyncResult::classify(code, &stderr).is_success() {
                    info!("{}: {n} file(s) copied", p(item));
                    self.ok += 1;
                } else {
                    error!(
                        "{}: rsync exited {} ({}): {}",
                        p(item),
                        code,
                        RsyncResult::describe(code),
                        stderr.trim()
                    );
                    self.failed.push(p(item));
                }
            }
            Spooled::Failed(m) => {
                error!("{}: {m}", p(item));
                self.failed.push(p(item));
            }
        }
    }
}
