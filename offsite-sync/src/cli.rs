//! The command line (settings from flags, the environment, then the
//! configuration file: backup_core::config).

use std::path::PathBuf;
use std::time::Duration;

use backup_core::cli::{Common, parse_duration};
use backup_core::exit::EXIT_CODE_HELP;
use backup_core::rsync_items::MaxDelete;
use clap::{Parser, Subcommand};
use offsite_sync::{Config, FullMode};

/// Send the backup disk (step 1) and the `direct` NFS trees (step 2) to the
/// offsite NAS over ssh, consuming the ledgers without ever losing an entry.
///
/// First run, a new backup disk, or migration from the old scripts (whose
/// NAS trees carry no identity marker): run `offsite-sync init` once. It
/// writes the identity markers of the backup root and of each NAS
/// destination; every later run refuses (exit 5) a backup root or a NAS
/// destination without the expected marker (a disk or NAS volume not
/// mounted, another repository).
#[derive(Debug, Parser)]
#[command(name = "offsite-sync", version, after_help = EXIT_CODE_HELP, args_override_self = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) common: Common,
    #[command(subcommand)]
    pub(crate) cmd: Sub,
    #[command(flatten)]
    pub(crate) opts: Opts,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Sub {
    /// Backup disk -> NAS pve-backup/ (ledger .changed-files). Refuses
    /// (exit 5) without the backup root's and the NAS destination's
    /// identity markers (`offsite-sync init` once). A full pass is held to
    /// --max-delete by rsync itself and reports the deletions it made.
    #[command(after_help = EXIT_CODE_HELP)]
    Step1,
    /// direct NFS trees -> NAS nfs/, nfs-ssd/ (ledger .nfs-changes.log).
    /// Refuses (exit 5) without the identity markers (`offsite-sync init`
    /// once); full passes are held to --max-delete like step 1.
    #[command(after_help = EXIT_CODE_HELP)]
    Step2,
    /// Step 1, step 2, then the coverage check (see `coverage`): exit 3
    /// when a top-level NFS directory is carried by no leg that runs.
    #[command(after_help = EXIT_CODE_HELP)]
    All,
    /// Write the identity markers, once: the backup root's
    /// (`.backup-pipeline-id`) and, over ssh, one in each NAS destination
    /// (--pve-dest, --nfs-dest, --nfs-ssd-dest; roles nas-pve-backup,
    /// nas-nfs, nas-nfs-ssd), whose ids are recorded in the backup root's
    /// .offsite-sync/nas-ids. Idempotent; never overwrites a marker. A NAS
    /// destination that already has a marker of its role and none recorded
    /// (a new backup disk) is adopted. Every tool that writes to the backup
    /// root refuses a root without its marker, and every sync refuses a NAS
    /// destination whose marker is missing or different (exit 5).
    /// Migration from the old scripts: run it once after the NAS trees and
    /// the backup disk are mounted where the configuration says.
    #[command(after_help = EXIT_CODE_HELP)]
    Init {
        /// Only the backup root (no NAS contact).
        #[arg(long)]
        local: bool,
    },
    /// Every top-level NFS directory with its one route and whether that
    /// route's leg really carries it: backup-disk from nfs-mirror's record
    /// of its last runs (BACKUP_ROOT/.nfs-mirror/coverage), direct from
    /// nfs-track's state (--nfs-track-state-dir), never by decision. A
    /// directory new since nfs-mirror's last run of its root is pending.
    /// Exit 3 naming each uncovered directory on stderr (`all` checks the
    /// same after sending, and reports backup_coverage_uncovered_dirs per
    /// root); exit 2 when the skip list gives a name two routes.
    #[command(after_help = EXIT_CODE_HELP)]
    Coverage,
    /// Ledger sizes, markers, last full passes, NAS free space.
    #[command(after_help = EXIT_CODE_HELP)]
    Status {
        /// Do not contact the NAS.
        #[arg(long)]
        no_nas: bool,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct Opts {
    /// The NAS login (placeholder default; set it in /etc/default/backup-pipeline).
    #[arg(
        long,
        global = true,
        env = "OFFSITE_REMOTE",
        default_value = "backup@nas.invalid"
    )]
    pub(crate) remote: String,
    /// The NAS's ssh port.
    #[arg(long, global = true, env = "OFFSITE_SSH_PORT", default_value_t = 22)]
    pub(crate) ssh_port: u16,
    /// The ssh key for the NAS login.
    #[arg(
        long,
        global = true,
        env = "OFFSITE_SSH_KEY",
        default_value = "/etc/backup-pipeline/offsite_ed25519"
    )]
    pub(crate) ssh_key: PathBuf,
    /// Pinned host key(s) of the NAS (StrictHostKeyChecking=yes).
    #[arg(
        long,
        global = true,
        env = "OFFSITE_KNOWN_HOSTS",
        default_value = "/etc/backup-pipeline/offsite_known_hosts"
    )]
    pub(crate) known_hosts: PathBuf,
    /// ssh ConnectTimeout.
    #[arg(long, global = true, default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) connect_timeout: Duration,
    /// ssh ServerAliveInterval (3 missed replies end the connection).
    #[arg(long, global = true, default_value = "15s", value_parser = parse_duration)]
    pub(crate) keepalive: Duration,
    /// rsync --timeout: no data for this long ends the transfer.
    #[arg(long, global = true, default_value = "300s", value_parser = parse_duration)]
    pub(crate) io_timeout: Duration,
    /// Bound for each rsync (one transfer, not the whole run).
    #[arg(
        long = "rsync-timeout",
        alias = "run-timeout",
        global = true,
        default_value = "4h",
        value_name = "DURATION",
        value_parser = parse_duration
    )]
    pub(crate) run_timeout: Duration,
    /// rsync --bwlimit (e.g. 20m).
    #[arg(long, global = true, env = "OFFSITE_BWLIMIT", value_name = "RATE")]
    pub(crate) bwlimit: Option<String>,
    /// The backup disk root (step 1's source; its ledger .changed-files).
    #[arg(
        long,
        global = true,
        env = "BACKUP_ROOT",
        default_value = "/mnt/backup",
        value_name = "DIR"
    )]
    pub(crate) backup_root: PathBuf,
    /// The NFS export root (step 2's direct trees, coverage).
    #[arg(
        long,
        global = true,
        env = "NFS_ROOT",
        default_value = "/srv/nfs",
        value_name = "DIR"
    )]
    pub(crate) nfs_root: PathBuf,
    /// The SSD NFS root (step 2's direct trees, coverage).
    #[arg(
        long,
        global = true,
        env = "NFS_SSD_ROOT",
        default_value = "/srv/nfs-ssd",
        value_name = "DIR"
    )]
    pub(crate) nfs_ssd_root: PathBuf,
    /// Step 1's destination on the NAS.
    #[arg(
        long,
        global = true,
        env = "OFFSITE_PVE_DEST",
        default_value = "/volume1/Backup/Viki/pve-backup",
        value_name = "NAS_PATH"
    )]
    pub(crate) pve_dest: String,
    /// Where the NAS capacity is read (df -kP); default: the parent of --pve-dest.
    #[arg(
        long,
        global = true,
        env = "OFFSITE_CAPACITY_PATH",
        value_name = "NAS_PATH"
    )]
    pub(crate) capacity_path: Option<String>,
    /// Step 2's destination on the NAS for --nfs-root's direct trees.
    #[arg(
        long,
        global = true,
        env = "OFFSITE_NFS_DEST",
        default_value = "/volume1/Backup/Viki/nfs",
        value_name = "NAS_PATH"
    )]
    pub(crate) nfs_dest: String,
    /// Step 2's destination on the NAS for --nfs-ssd-root's direct trees.
    #[arg(
        long,
        global = true,
        env = "OFFSITE_NFS_SSD_DEST",
        default_value = "/volume1/Backup/Viki/nfs-ssd",
        value_name = "NAS_PATH"
    )]
    pub(crate) nfs_ssd_dest: String,
    /// The skip list (routes of the NFS trees) both legs read.
    #[arg(
        long,
        global = true,
        env = "BACKUP_SKIP_LIST",
        default_value = "/etc/backup-skip-list.conf",
        value_name = "FILE"
    )]
    pub(crate) skip_list: PathBuf,
    /// nfs-track's state directory: its `last-watching` file says which
    /// roots it watches (coverage of the direct route).
    #[arg(
        long,
        global = true,
        env = "NFS_TRACK_STATE_DIR",
        default_value = "/var/lib/nfs-track"
    )]
    pub(crate) nfs_track_state_dir: PathBuf,
    /// A leg whose last record (nfs-mirror's run, nfs-track's watch) is
    /// older than this no longer counts as carrying its directories.
    #[arg(long, global = true, default_value = "2d", value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) coverage_max_age: Duration,
    /// auto: when the last full pass is older than --full-every or a
    /// full-sync-needed marker exists.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    pub(crate) full: FullMode,
    /// A full pass is due when the last one is older than this.
    #[arg(long, global = true, default_value = "30d", value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) full_every: Duration,
    /// More pending ledger lines than this: a full pass replaces them.
    #[arg(long, global = true, default_value_t = 500_000, value_name = "N")]
    pub(crate) ledger_cap: u64,
    /// A full pass that would delete more than N items or P% is refused;
    /// the deleting transfer itself is held to it (rsync --max-delete: a
    /// source emptied or unmounted after the dry run stops there, exit 1).
    #[arg(long, global = true, default_value = "10%", value_name = "N|P%|off")]
    pub(crate) max_delete: MaxDelete,
    /// The default; kept so older command lines still parse.
    #[arg(long, global = true, hide = true)]
    pub(crate) require_mountpoint: bool,
    /// Accept a backup root and NFS roots that are not mountpoints: a
    /// sandbox or test. The identity markers are still required.
    #[arg(long, global = true, env = "ALLOW_UNMOUNTED_ROOT", value_parser = clap::builder::FalseyValueParser::new())]
    pub(crate) allow_unmounted_root: bool,
    /// Print what would be sent and deleted; change nothing.
    #[arg(long, global = true)]
    pub(crate) dry_run: bool,
    /// Step reports as JSON on stdout.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

impl Opts {
    /// The library's configuration: NAS paths without a trailing `/`, the
    /// capacity read where `--pve-dest` lives unless set, rsync and ssh
    /// from `RSYNC` and `SSH`.
    pub(crate) fn config(self) -> Config {
        Config {
            remote: self.remote,
            ssh_port: self.ssh_port,
            ssh_key: self.ssh_key,
            known_hosts: self.known_hosts,
            connect_timeout: self.connect_timeout,
            keepalive: self.keepalive,
            io_timeout: self.io_timeout,
            run_timeout: self.run_timeout,
            bwlimit: self.bwlimit,
            backup_root: self.backup_root,
            nfs_root: self.nfs_root,
            nfs_ssd_root: self.nfs_ssd_root,
            capacity_path: self.capacity_path.unwrap_or_else(|| {
                std::path::Path::new(self.pve_dest.trim_end_matches('/'))
                    .parent()
                    .map(|p| p.display().to_string())
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| "/".into())
            }),
            pve_dest: self.pve_dest.trim_end_matches('/').to_string(),
            nfs_dest: self.nfs_dest.trim_end_matches('/').to_string(),
            nfs_ssd_dest: self.nfs_ssd_dest.trim_end_matches('/').to_string(),
            skip_list: self.skip_list,
            nfs_track_state_dir: self.nfs_track_state_dir,
            coverage_max_age: self.coverage_max_age,
            full: self.full,
            full_every: self.full_every,
            ledger_cap: self.ledger_cap,
            max_delete: self.max_delete,
            require_mountpoint: self.require_mountpoint || !self.allow_unmounted_root,
            dry_run: self.dry_run,
            rsync: std::env::var_os("RSYNC").unwrap_or_else(|| "rsync".into()),
            ssh: std::env::var_os("SSH").unwrap_or_else(|| "ssh".into()),
        }
    }
}
