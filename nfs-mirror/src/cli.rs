//! The command line (settings from flags, the environment, then the
//! configuration file: backup_core::config).

use std::path::PathBuf;

use backup_core::cli::{Common, parse_duration};
use backup_core::exit::EXIT_CODE_HELP;
use backup_core::rsync_items::MaxDelete;
use clap::{Parser, Subcommand};

/// Mirror the NFS trees routed to the backup disk (leg 1) onto the backup
/// disk, guarded against mass deletion; or copy the host configuration
/// (`config`).
///
/// Each --source root is mirrored on its own: /srv/nfs/<svc> into
/// DEST/<svc>/ (the layout the NAS already holds), /srv/nfs-ssd/<svc> into
/// DEST/nfs-ssd/<svc>/ (`--source /srv/nfs-ssd:nfs-ssd`: its own subtree,
/// since the same service name exists on both roots). Skip-list patterns
/// are relative to each root. DEST must carry the backup root's identity
/// marker (`offsite-sync init --local`), or nothing is written (exit 5).
/// Every run records which top-level directories of each root it saw and
/// mirrored in DEST/.nfs-mirror/coverage, which `offsite-sync coverage`
/// reads: a root left out here is reported uncovered there.
#[derive(Debug, Parser)]
#[command(name = "nfs-mirror", version, after_help = EXIT_CODE_HELP, args_conflicts_with_subcommands = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) common: Common,
    #[command(subcommand)]
    pub(crate) cmd: Option<Sub>,
    #[command(flatten)]
    pub(crate) mirror: MirrorArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct MirrorArgs {
    /// An NFS root whose top-level entries are mirrored, as ROOT (into
    /// DEST/<name>/) or ROOT:SUBDIR (into DEST/SUBDIR/<name>/); repeatable
    /// (env: comma-separated) [default: --nfs-root, --nfs-ssd-root:nfs-ssd].
    #[arg(
        long = "source",
        env = "NFS_MIRROR_SOURCE",
        value_name = "ROOT[:SUBDIR]",
        value_delimiter = ',',
        value_parser = nfs_mirror::SourceRoot::parse
    )]
    pub(crate) sources: Vec<nfs_mirror::SourceRoot>,
    /// The NFS export root, mirrored into DEST/<name>/ unless --source is given.
    #[arg(long, env = "NFS_ROOT", default_value = "/srv/nfs", value_name = "DIR")]
    pub(crate) nfs_root: PathBuf,
    /// The SSD NFS root, mirrored into DEST/nfs-ssd/<name>/ unless --source is given.
    #[arg(
        long,
        env = "NFS_SSD_ROOT",
        default_value = "/srv/nfs-ssd",
        value_name = "DIR"
    )]
    pub(crate) nfs_ssd_root: PathBuf,
    /// The backup disk root (DEST), with its identity marker (entries go to
    /// DEST/<name>/ or DEST/SUBDIR/<name>/).
    #[arg(
        long = "backup-root",
        visible_alias = "dest",
        env = "BACKUP_ROOT",
        default_value = "/mnt/backup",
        value_name = "DIR"
    )]
    pub(crate) dest: PathBuf,
    /// The skip list both legs read.
    #[arg(
        long,
        env = "BACKUP_SKIP_LIST",
        default_value = "/etc/backup-skip-list.conf",
        value_name = "FILE"
    )]
    pub(crate) skip_list: PathBuf,
    /// The leg-1 ledger [default: DEST/.changed-files].
    #[arg(long, value_name = "FILE")]
    pub(crate) ledger: Option<PathBuf>,
    /// The default; kept so older command lines still parse.
    #[arg(long, hide = true)]
    pub(crate) require_mountpoint: bool,
    /// Accept a backup root (and NFS roots) that are not mountpoints: a
    /// sandbox or test. The identity marker is still required.
    #[arg(long, env = "ALLOW_UNMOUNTED_ROOT", value_parser = clap::builder::FalseyValueParser::new())]
    pub(crate) allow_unmounted_root: bool,
    /// Refuse the whole run when it would delete more than N items or P% of
    /// the mirrored items ('off' disables this guard).
    #[arg(long, default_value = "10%", value_name = "N|P%|off")]
    pub(crate) max_delete: MaxDelete,
    /// Remove mirrors of entries the skip list now routes elsewhere.
    #[arg(long)]
    pub(crate) prune_skipped: bool,
    /// Print what would be done; change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Print the per-entry report as JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
    /// Bound for each rsync (one NFS entry).
    #[arg(long, default_value = "4h", value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) rsync_timeout: std::time::Duration,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Sub {
    /// Copy host configuration directories to DEST/pve-config/<path>/.
    #[command(after_help = EXIT_CODE_HELP)]
    Config(ConfigArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct ConfigArgs {
    /// The backup disk root (DEST), with its identity marker.
    #[arg(
        long = "backup-root",
        visible_alias = "dest",
        env = "BACKUP_ROOT",
        default_value = "/mnt/backup",
        value_name = "DIR"
    )]
    pub(crate) dest: PathBuf,
    /// A directory to copy (repeatable).
    #[arg(long = "item", default_values = ["/etc/pve", "/usr/local/bin", "/etc/systemd/system"])]
    pub(crate) items: Vec<PathBuf>,
    /// The ledger [default: DEST/.changed-files].
    #[arg(long, value_name = "FILE")]
    pub(crate) ledger: Option<PathBuf>,
    /// The default; kept so older command lines still parse.
    #[arg(long, hide = true)]
    pub(crate) require_mountpoint: bool,
    /// Accept a backup root (and NFS roots) that are not mountpoints: a
    /// sandbox or test. The identity marker is still required.
    #[arg(long, env = "ALLOW_UNMOUNTED_ROOT", value_parser = clap::builder::FalseyValueParser::new())]
    pub(crate) allow_unmounted_root: bool,
    /// Print what would be done; change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Bound for each item's rsync.
    #[arg(long, default_value = "300s", value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) rsync_timeout: std::time::Duration,
}

/// The rsync to run: `RSYNC`, else rsync from PATH.
fn rsync_prog() -> std::ffi::OsString {
    std::env::var_os("RSYNC").unwrap_or_else(|| "rsync".into())
}

impl MirrorArgs {
    /// The mirror's options; the default roots when no --source is given.
    pub(crate) fn into_opts(self) -> anyhow::Result<nfs_mirror::MirrorOpts> {
        let usage = backup_core::exit::Exit::usage;
        let sources = if self.sources.is_empty() {
            vec![
                nfs_mirror::SourceRoot::parse(&self.nfs_root.to_string_lossy()).map_err(usage)?,
                nfs_mirror::SourceRoot::parse(&format!(
                    "{}:nfs-ssd",
                    self.nfs_ssd_root.to_string_lossy()
                ))
                .map_err(usage)?,
            ]
        } else {
            self.sources
        };
        Ok(nfs_mirror::MirrorOpts {
            sources,
            dest: self.dest,
            skip_list: self.skip_list,
            ledger: self.ledger,
            require_mountpoint: self.require_mountpoint || !self.allow_unmounted_root,
            max_delete: self.max_delete,
            prune_skipped: self.prune_skipped,
            dry_run: self.dry_run,
            json: self.json,
            timeout: self.rsync_timeout,
            rsync: rsync_prog(),
        })
    }
}

impl ConfigArgs {
    /// The configuration copy's options.
    pub(crate) fn into_opts(self) -> nfs_mirror::ConfigOpts {
        nfs_mirror::ConfigOpts {
            dest: self.dest,
            require_mountpoint: self.require_mountpoint || !self.allow_unmounted_root,
            items: self.items,
            ledger: self.ledger,
            dry_run: self.dry_run,
            timeout: self.rsync_timeout,
            rsync: rsync_prog(),
        }
    }
}
