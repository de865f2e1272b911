use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use backup_core::cli::{Common, parse_duration};
use backup_core::exit::{EXIT_CODE_HELP, ExitCode};
use backup_core::metrics::Metrics;
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
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    cmd: Sub,
    #[command(flatten)]
    opts: Opts,
}

#[derive(Debug, Subcommand)]
enum Sub {
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
struct Opts {
    /// The NAS login (placeholder default; set it in /etc/default/backup-pipeline).
    #[arg(
        long,
        global = true,
        env = "OFFSITE_REMOTE",
        default_value = "backup@nas.invalid"
    )]
    remote: String,
    /// The NAS's ssh port.
    #[arg(long, global = true, env = "OFFSITE_SSH_PORT", default_value_t = 22)]
    ssh_port: u16,
    /// The ssh key for the NAS login.
    #[arg(
        long,
        global = true,
        env = "OFFSITE_SSH_KEY",
        default_value = "/etc/backup-pipeline/offsite_ed25519"
    )]
    ssh_key: PathBuf,
    /// Pinned host key(s) of the NAS (StrictHostKeyChecking=yes).
    #[arg(
        long,
        global = true,
        env = "OFFSITE_KNOWN_HOSTS",
        default_value = "/etc/backup-pipeline/offsite_known_hosts"
    )]
    known_hosts: PathBuf,
    /// ssh ConnectTimeout.
    #[arg(long, global = true, default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// ssh ServerAliveInterval (3 missed replies end the connection).
    #[arg(long, global = true, default_value = "15s", value_parser = parse_duration)]
    keepalive: Duration,
    /// rsync --timeout: no data for this long ends the transfer.
    #[arg(long, global = true, default_value = "300s", value_parser = parse_duration)]
    io_timeout: Duration,
    /// Bound for each rsync (one transfer, not the whole run).
    #[arg(
        long = "rsync-timeout",
        alias = "run-timeout",
        global = true,
        default_value = "4h",
        value_name = "DURATION",
        value_parser = parse_duration
    )]
    run_timeout: Duration,
    /// rsync --bwlimit (e.g. 20m).
    #[arg(long, global = true, env = "OFFSITE_BWLIMIT", value_name = "RATE")]
    bwlimit: Option<String>,
    /// The backup disk root (step 1's source; its ledger .changed-files).
    #[arg(
        long,
        global = true,
        env = "BACKUP_ROOT",
        default_value = "/mnt/backup",
        value_name = "DIR"
    )]
    backup_root: PathBuf,
    /// The NFS export root (step 2's direct trees, coverage).
    #[arg(
        long,
        global = true,
        env = "NFS_ROOT",
        default_value = "/srv/nfs",
        value_name = "DIR"
    )]
    nfs_root: PathBuf,
    /// The SSD NFS root (step 2's direct trees, coverage).
    #[arg(
        long,
        global = true,
        env = "NFS_SSD_ROOT",
        default_value = "/srv/nfs-ssd",
        value_name = "DIR"
    )]
    nfs_ssd_root: PathBuf,
    /// Step 1's destination on the NAS.
    #[arg(
        long,
        global = true,
        env = "OFFSITE_PVE_DEST",
        default_value = "/volume1/Backup/Viki/pve-backup",
        value_name = "NAS_PATH"
    )]
    pve_dest: String,
    /// Where the NAS capacity is read (df -kP); default: the parent of --pve-dest.
    #[arg(
        long,
        global = true,
        env = "OFFSITE_CAPACITY_PATH",
        value_name = "NAS_PATH"
    )]
    capacity_path: Option<String>,
    /// Step 2's destination on the NAS for --nfs-root's direct trees.
    #[arg(
        long,
        global = true,
        env = "OFFSITE_NFS_DEST",
        default_value = "/volume1/Backup/Viki/nfs",
        value_name = "NAS_PATH"
    )]
    nfs_dest: String,
    /// Step 2's destination on the NAS for --nfs-ssd-root's direct trees.
    #[arg(
        long,
        global = true,
        env = "OFFSITE_NFS_SSD_DEST",
        default_value = "/volume1/Backup/Viki/nfs-ssd",
        value_name = "NAS_PATH"
    )]
    nfs_ssd_dest: String,
    /// The skip list (routes of the NFS trees) both legs read.
    #[arg(
        long,
        global = true,
        env = "BACKUP_SKIP_LIST",
        default_value = "/etc/backup-skip-list.conf",
        value_name = "FILE"
    )]
    skip_list: PathBuf,
    /// nfs-track's state directory: its `last-watching` file says which
    /// roots it watches (coverage of the direct route).
    #[arg(
        long,
        global = true,
        env = "NFS_TRACK_STATE_DIR",
        default_value = "/var/lib/nfs-track"
    )]
    nfs_track_state_dir: PathBuf,
    /// A leg whose last record (nfs-mirror's run, nfs-track's watch) is
    /// older than this no longer counts as carrying its directories.
    #[arg(long, global = true, default_value = "2d", value_name = "DURATION", value_parser = parse_duration)]
    coverage_max_age: Duration,
    /// auto: when the last full pass is older than --full-every or a
    /// full-sync-needed marker exists.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    full: FullMode,
    /// A full pass is due when the last one is older than this.
    #[arg(long, global = true, default_value = "30d", value_name = "DURATION", value_parser = parse_duration)]
    full_every: Duration,
    /// More pending ledger lines than this: a full pass replaces them.
    #[arg(long, global = true, default_value_t = 500_000, value_name = "N")]
    ledger_cap: u64,
    /// A full pass that would delete more than N items or P% is refused;
    /// the deleting transfer itself is held to it (rsync --max-delete: a
    /// source emptied or unmounted after the dry run stops there, exit 1).
    #[arg(long, global = true, default_value = "10%", value_name = "N|P%|off")]
    max_delete: MaxDelete,
    /// Refuse unless the backup root and the NFS roots are mountpoints.
    #[arg(long, global = true)]
    require_mountpoint: bool,
    /// Print what would be sent and deleted; change nothing.
    #[arg(long, global = true)]
    dry_run: bool,
    /// Step reports as JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
}

fn main() {
    let cli = backup_core::config::parse::<Cli>("offsite-sync");
    cli.common.init_logging();
    backup_core::exit::run_main("offsite-sync", || run(cli))
}

fn run(cli: Cli) -> Result<ExitCode> {
    let o = cli.opts;
    let cfg = Config {
        remote: o.remote,
        ssh_port: o.ssh_port,
        ssh_key: o.ssh_key,
        known_hosts: o.known_hosts,
        connect_timeout: o.connect_timeout,
        keepalive: o.keepalive,
        io_timeout: o.io_timeout,
        run_timeout: o.run_timeout,
        bwlimit: o.bwlimit,
        backup_root: o.backup_root,
        nfs_root: o.nfs_root,
        nfs_ssd_root: o.nfs_ssd_root,
        capacity_path: o.capacity_path.unwrap_or_else(|| {
            std::path::Path::new(o.pve_dest.trim_end_matches('/'))
                .parent()
                .map(|p| p.display().to_string())
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".into())
        }),
        pve_dest: o.pve_dest.trim_end_matches('/').to_string(),
        nfs_dest: o.nfs_dest.trim_end_matches('/').to_string(),
        nfs_ssd_dest: o.nfs_ssd_dest.trim_end_matches('/').to_string(),
        skip_list: o.skip_list,
        nfs_track_state_dir: o.nfs_track_state_dir,
        coverage_max_age: o.coverage_max_age,
        full: o.full,
        full_every: o.full_every,
        ledger_cap: o.ledger_cap,
        max_delete: o.max_delete,
        require_mountpoint: o.require_mountpoint,
        dry_run: o.dry_run,
        rsync: std::env::var_os("RSYNC").unwrap_or_else(|| "rsync".into()),
        ssh: std::env::var_os("SSH").unwrap_or_else(|| "ssh".into()),
    };
    cfg.validate()?;
    let steps: &[u8] = match cli.cmd {
        Sub::Step1 => &[1],
        Sub::Step2 => &[2],
        Sub::All => &[1, 2],
        Sub::Init { local } => {
            offsite_sync::init(&cfg, local)?;
            return Ok(ExitCode::Ok);
        }
        Sub::Coverage => {
            let rows = offsite_sync::coverage::coverage(&cfg)?;
            // The verdict (each uncovered directory on stderr) comes first:
            // a reader that closes stdout early never hides a gap.
            let code = offsite_sync::coverage::verdict(&rows);
            let print = || -> std::io::Result<()> {
                if o.json {
                    backup_core::outln!("{}", serde_json::to_string_pretty(&rows)?)?;
                } else {
                    for r in &rows {
                        let ex: Vec<String> = r
                            .exceptions
                            .iter()
                            .map(|(p, route)| format!("{p}={}", route.as_str()))
                            .collect();
                        backup_core::outln!(
                            "{:<14} {:<28} {:<12} {:<10} {}{}",
                            r.root,
                            r.name,
                            r.route.as_str(),
                            r.state.as_str(),
                            r.reason,
                            if ex.is_empty() {
                                String::new()
                            } else {
                                format!(" [{}]", ex.join(" "))
                            }
                        )?;
                    }
                }
                Ok(())
            };
            backup_core::out::ignore_closed(print())?;
            return Ok(code);
        }
        Sub::Status { no_nas } => {
            let s = offsite_sync::status(&cfg, !no_nas)?;
            if o.json {
                backup_core::outln!("{}", serde_json::to_string_pretty(&s)?)?;
            } else {
                for l in &s.ledgers {
                    backup_core::outln!(
                        "ledger {}: {} pending line(s){}{}",
                        l.path,
                        l.pending_lines,
                        if l.inflight {
                            ", inflight batch kept from a failed run"
                        } else {
                            ""
                        },
                        if l.full_sync_needed {
                            format!(", full sync needed ({})", l.reasons.join("; "))
                        } else {
                            String::new()
                        }
                    )?;
                }
                let t = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_else(|| "never".into());
                backup_core::outln!("last full pass step 1: {}", t(s.last_full_step1))?;
                backup_core::outln!("last full pass step 2: {}", t(s.last_full_step2))?;
                backup_core::outln!("last successful run: {}", t(s.last_success))?;
                match (&s.nas, &s.nas_error) {
                    (Some(c), _) => backup_core::outln!(
                        "NAS: {} of {} bytes available",
                        c.available_bytes,
                        c.size_bytes
                    )?,
                    (None, Some(e)) => backup_core::outln!("NAS: unknown ({e})")?,
                    _ => {}
                }
            }
            return Ok(ExitCode::Ok);
        }
    };
    let _lock = backup_core::lock::acquire("offsite-sync")?;
    let mut m = Metrics::new();
    let (code, reports, cap) = offsite_sync::run_steps(&cfg, steps, &mut m);
    if !cfg.dry_run {
        cli.common.write_metrics(&m);
    }
    // The report of a finished run: a closed stdout keeps its code.
    let print = || -> std::io::Result<()> {
        if o.json {
            backup_core::outln!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "exit": code.code(),
                    "steps": reports,
                    "nas": cap,
                }))?
            )?;
        } else {
            for r in &reports {
                backup_core::outln!(
                    "step {}: {} entries, {} sent, {} vanished, {} not direct, {} unsafe, {} rejected{}{}",
                    r.step,
                    r.entries,
                    r.sent,
                    r.vanished,
                    r.not_direct,
                    r.unsafe_paths,
                    r.rejected,
                    if r.full { ", full pass" } else { "" },
                    r.message
                        .as_deref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                )?;
            }
        }
        Ok(())
    };
    backup_core::out::ignore_closed(print())?;
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
