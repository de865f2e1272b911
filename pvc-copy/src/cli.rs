//! The command line: the copy run's flags, and the subcommands.

use std::path::PathBuf;
use std::time::Duration;

use backup_core::cli::{Common, parse_duration};
use backup_core::exit::EXIT_CODE_HELP;
use clap::{Args, Parser, Subcommand};

use crate::plan::Selector;

const LONG_ABOUT: &str = "\
Copy the newest snapshot of every PVC, read-only, into weekly hardlinked versions on the backup disk.

For every PVC origin LV (vm-<id>-pvc-<uuid>) in the volume group: its newest
snapshot named <lv>_snap_YYYYMMDD_HHMM whose LVM origin is that LV; the PV
whose CSI volume handle names the LV gives <ns>/<pvc> (kubectl get pv, else
the mapping cache). The snapshot is mounted read-only (ext4 ro,noload; xfs
ro,nouuid,norecovery; always nosuid,nodev,noexec) in a private mount
namespace, LUKS snapshots opened read-only as pvc-copy-<hash>, and copied with
rsync -aHAX --numeric-ids --delete --modify-window=-1 into
BACKUP_ROOT/pvc-data/<ISO week>/<ns>/<pvc>/, hardlinking unchanged files
against the newest earlier copy of that PVC. The copy is built in
.<pvc>.partial beside it and exchanged atomically with the old one when
complete; .<pvc>.source records the snapshot it came from.

The backup root must carry the identity marker `offsite-sync init --local`
writes once on a new disk (exit 5 without it, dry runs too); before each PVC
is started, swapped in and ledgered it must still be that disk, else the PVC
fails and nothing is committed on what is left at the path.

Failures are counted and listed, never skipped silently, and the run goes on
with the other PVCs (exit 3): no snapshot, a newest snapshot older than
--max-snapshot-age, an LV no PV names, a mount, LUKS or rsync failure. A PVC
claimed by two LVs (a Released PV next to its replacement) never shares a
destination: the Bound PV's copy is <pvc>, the other's <pvc>@<pv-name>.

The namespaces lvm-snap never snapshots (EXCLUDED_NAMESPACES, default
dbaas,monitoring) are read here too: their PVCs are skipped, never counted
as failed for lack of a snapshot.

The mapping cache is the same file, in the same format (kubectl's JSON as
printed), that lvm-snap keeps: MAPPING_CACHE, one key and one default
(/var/lib/backup-pipeline/lv-pvc-mapping.json) for both.

Settings come from flags, the environment, then the configuration file
/etc/default/backup-pipeline (BACKUP_PIPELINE_CONFIG); --show-config prints
each with its source.

After a run where every PVC was copied or deliberately skipped, the week is
marked complete and rotation keeps the newest --keep-weeks complete weeks
(old YYYY-WW names count as complete), with their sqlite-backup/<week>.
The ledger (BACKUP_ROOT/.changed-files) gets the paths this run added or
changed; on a new week that is every path of the new week.";

#[derive(Debug, Parser)]
#[command(
    name = "pvc-copy",
    version,
    about = "Copy the newest snapshot of every PVC, read-only, into weekly hardlinked versions on the backup disk",
    long_about = LONG_ABOUT,
    after_help = EXIT_CODE_HELP,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Option<Sub>,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Subcommand)]
pub enum Sub {
    /// Check the NFS exports (the fsid=0 outage check); exit 3 when one fails.
    #[command(after_help = EXIT_CODE_HELP)]
    Preflight(PreflightArgs),
    /// Print the week directory name a run now writes (e.g. 2026-W48).
    #[command(after_help = EXIT_CODE_HELP)]
    CurrentWeek {
        #[arg(long, hide = true, value_name = "RFC3339")]
        now: Option<String>,
    },
    /// List one claim's weekly versions on the backup disk: week, date,
    /// files, bytes, source snapshot, and what offsite-sync recorded about
    /// sending it. Read-only.
    #[command(after_help = EXIT_CODE_HELP, long_about = crate::weeks::LONG_ABOUT)]
    Weeks(WeeksArgs),
    /// Copy one weekly version of a claim into a directory (rsync -aHAX
    /// --numeric-ids), then compare every restored entry with the copy.
    /// Read-only on the backup disk.
    #[command(after_help = EXIT_CODE_HELP, long_about = crate::restore::LONG_ABOUT)]
    Restore(RestoreArgs),
}

#[derive(Debug, Args)]
pub struct WeeksArgs {
    /// The claim, as its copies are named on the backup disk (NS/PVC).
    #[arg(value_name = "NS/PVC", value_parser = crate::weeks::Claim::parse)]
    pub claim: crate::weeks::Claim,
    /// The backup disk (must carry its identity marker; only read).
    #[arg(
        long,
        env = "BACKUP_ROOT",
        default_value = "/mnt/backup",
        value_name = "DIR"
    )]
    pub backup_root: PathBuf,
    /// Print the versions as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The claim, as its copies are named on the backup disk (NS/PVC).
    #[arg(value_name = "NS/PVC", value_parser = crate::weeks::Claim::parse)]
    pub claim: crate::weeks::Claim,
    /// The backup disk (must carry its identity marker; never written).
    #[arg(
        long,
        env = "BACKUP_ROOT",
        default_value = "/mnt/backup",
        value_name = "DIR"
    )]
    pub backup_root: PathBuf,
    /// Where to restore: absent or an empty directory (else exit 5 unless
    /// --into-existing); never on the backup disk.
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// The version to restore: a week (2026-W48, or an old 2026-47 name) or
    /// `latest` (the newest week holding the claim).
    #[arg(long, default_value = "latest", value_name = "WEEK|latest", value_parser = crate::restore::WeekSel::parse)]
    pub week: crate::restore::WeekSel,
    /// Run rsync's dry run (list what would be written) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Accept a non-empty --to: files of the version overwrite theirs,
    /// files it lacks are kept (unless --delete).
    #[arg(long)]
    pub into_existing: bool,
    /// With --into-existing: delete what is in --to but not in the version.
    #[arg(long, requires = "into_existing")]
    pub delete: bool,
    /// Timeout of the rsync run.
    #[arg(long, default_value = "6h", value_name = "DURATION", value_parser = parse_duration)]
    pub rsync_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct PreflightArgs {
    /// The exports file to check.
    #[arg(
        long,
        env = "PVC_COPY_EXPORTS",
        default_value = "/etc/exports",
        value_name = "FILE"
    )]
    pub exports: PathBuf,
    /// The NFS export root that must be exported (never with fsid=0).
    #[arg(long, env = "NFS_ROOT", default_value = "/srv/nfs", value_name = "DIR")]
    pub nfs_root: String,
    /// The systemd unit of the NFS server.
    #[arg(long, default_value = "nfs-server", value_name = "UNIT")]
    pub service: String,
    /// The systemctl program.
    #[arg(
        long,
        env = "PVC_COPY_SYSTEMCTL",
        default_value = "systemctl",
        value_name = "PROG"
    )]
    pub systemctl: String,
    /// The exportfs program.
    #[arg(
        long,
        env = "PVC_COPY_EXPORTFS",
        default_value = "exportfs",
        value_name = "PROG"
    )]
    pub exportfs: String,
    /// Print the checks as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The backup disk (must be a mount point unless --allow-unmounted-root, and
    /// carry its identity marker, written once by `offsite-sync init --local`).
    #[arg(
        long,
        env = "BACKUP_ROOT",
        default_value = "/mnt/backup",
        value_name = "DIR"
    )]
    pub backup_root: PathBuf,
    /// The volume group holding the PVC LVs and their snapshots.
    #[arg(long, env = "LVM_VG", default_value = "pve", value_name = "VG")]
    pub vg: String,
    /// Complete weeks to keep in pvc-data (rotation runs only after a fully successful run).
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=520))]
    pub keep_weeks: u32,
    /// Key file for LUKS-encrypted snapshots.
    #[arg(
        long,
        env = "PVC_COPY_LUKS_KEY",
        default_value = "/root/.luks-backup-key",
        value_name = "FILE"
    )]
    pub luks_key: PathBuf,
    /// Last good `kubectl get pv -o json`, used when kubectl fails; the
    /// file lvm-snap keeps too (same key, same default, same format).
    #[arg(
        long,
        env = "MAPPING_CACHE",
        default_value = backup_core::k8s::DEFAULT_MAPPING_CACHE,
        value_name = "FILE"
    )]
    pub mapping_cache: PathBuf,
    /// Namespaces lvm-snap never snapshots (the same key it reads): their
    /// PVCs are skipped here, never counted as failed (repeat, or comma-separated).
    #[arg(
        long = "exclude-namespace",
        env = "EXCLUDED_NAMESPACES",
        value_delimiter = ',',
        default_value = backup_core::k8s::DEFAULT_EXCLUDED_NAMESPACES,
        value_name = "NS"
    )]
    pub exclude_namespace: Vec<String>,
    /// Do not copy this PVC (NS/PVC, or NS/* for a whole namespace); counted
    /// as skipped. Repeat, or comma-separated.
    #[arg(long, env = "PVC_COPY_SKIP", value_delimiter = ',', value_name = "NS/PVC", value_parser = Selector::parse)]
    pub skip: Vec<Selector>,
    /// Copy only these PVCs (NS/PVC or NS/*). Repeatable. Disables rotation.
    #[arg(long, value_name = "NS/PVC", value_parser = Selector::parse)]
    pub only: Vec<Selector>,
    /// A newest snapshot older than this is a failure (e.g. 26h, 2d).
    #[arg(long, default_value = "26h", value_name = "DURATION", value_parser = parse_duration)]
    pub max_snapshot_age: Duration,
    /// Refuse to start (exit 5) with less free space than this on the backup disk.
    #[arg(long, default_value_t = 10, value_name = "PCT", value_parser = clap::value_parser!(u8).range(0..=99))]
    pub min_free_pct: u8,
    /// Print the plan (snapshot, destination, link-dest, rotation); change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the plan or the results as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Where LUKS mappings appear (`cryptsetup open` NAME -> DIR/NAME).
    #[arg(
        long,
        env = "PVC_COPY_MAPPER_DIR",
        default_value = "/dev/mapper",
        value_name = "DIR"
    )]
    pub mapper_dir: PathBuf,
    /// Timeout of one mount attempt (there is one retry).
    #[arg(long, default_value = "120s", value_name = "DURATION", value_parser = parse_duration)]
    pub mount_timeout: Duration,
    /// Pause before the mount retry.
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = parse_duration)]
    pub mount_retry_delay: Duration,
    /// Timeout of one PVC's rsync.
    #[arg(long, default_value = "30m", value_name = "DURATION", value_parser = parse_duration)]
    pub rsync_timeout: Duration,
    /// Timeout of lvs, kubectl, blkid, cryptsetup and lvchange calls.
    #[arg(long, default_value = "120s", value_name = "DURATION", value_parser = parse_duration)]
    pub command_timeout: Duration,
    /// Scratch directory for mount points and rsync output
    /// [default: $RUNTIME_DIRECTORY, else the system temp dir].
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// The ledger of changed paths [default: BACKUP_ROOT/.changed-files].
    #[arg(long, value_name = "FILE")]
    pub ledger: Option<PathBuf>,
    /// Accept a backup root that is not a mount point (a sandbox or test).
    #[arg(long, env = "ALLOW_UNMOUNTED_ROOT", value_parser = clap::builder::FalseyValueParser::new())]
    pub allow_unmounted_root: bool,
    /// Pretend the time is this (RFC 3339), for tests of weeks and ages.
    #[arg(long, hide = true, value_name = "RFC3339")]
    pub now: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent_and_help_lists_exit_codes() {
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("4  busy"), "{help}");
        let e = Cli::try_parse_from(["pvc-copy", "--keep-weeks", "0"]).expect_err("0 weeks");
        assert!(e.to_string().contains("keep-weeks"), "{e}");
        let e =
            Cli::try_parse_from(["pvc-copy", "--max-snapshot-age", "soon"]).expect_err("bad age");
        assert!(e.to_string().contains("invalid duration"), "{e}");
    }
}
