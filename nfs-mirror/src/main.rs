use std::path::PathBuf;

use anyhow::Result;
use backup_core::cli::{Common, parse_duration};
use backup_core::exit::{EXIT_CODE_HELP, ExitCode};
use backup_core::metrics::Metrics;
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
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    cmd: Option<Sub>,
    #[command(flatten)]
    mirror: MirrorArgs,
}

#[derive(Debug, clap::Args)]
struct MirrorArgs {
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
    sources: Vec<nfs_mirror::SourceRoot>,
    /// The NFS export root, mirrored into DEST/<name>/ unless --source is given.
    #[arg(long, env = "NFS_ROOT", default_value = "/srv/nfs", value_name = "DIR")]
    nfs_root: PathBuf,
    /// The SSD NFS root, mirrored into DEST/nfs-ssd/<name>/ unless --source is given.
    #[arg(
        long,
        env = "NFS_SSD_ROOT",
        default_value = "/srv/nfs-ssd",
        value_name = "DIR"
    )]
    nfs_ssd_root: PathBuf,
    /// The backup disk root (DEST), with its identity marker (entries go to
    /// DEST/<name>/ or DEST/SUBDIR/<name>/).
    #[arg(
        long = "backup-root",
        visible_alias = "dest",
        env = "BACKUP_ROOT",
        default_value = "/mnt/backup",
        value_name = "DIR"
    )]
    dest: PathBuf,
    /// The skip list both legs read.
    #[arg(
        long,
        env = "BACKUP_SKIP_LIST",
        default_value = "/etc/backup-skip-list.conf",
        value_name = "FILE"
    )]
    skip_list: PathBuf,
    /// The leg-1 ledger [default: DEST/.changed-files].
    #[arg(long, value_name = "FILE")]
    ledger: Option<PathBuf>,
    /// Refuse unless the source and the destination are mountpoints.
    #[arg(long)]
    require_mountpoint: bool,
    /// Refuse the whole run when it would delete more than N items or P% of
    /// the mirrored items ('off' disables this guard).
    #[arg(long, default_value = "10%", value_name = "N|P%|off")]
    max_delete: MaxDelete,
    /// Remove mirrors of entries the skip list now routes elsewhere.
    #[arg(long)]
    prune_skipped: bool,
    /// Print what would be done; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the per-entry report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Bound for each rsync (one NFS entry).
    #[arg(long, default_value = "4h", value_name = "DURATION", value_parser = parse_duration)]
    rsync_timeout: std::time::Duration,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Copy host configuration directories to DEST/pve-config/<path>/.
    #[command(after_help = EXIT_CODE_HELP)]
    Config {
        /// The backup disk root (DEST), with its identity marker.
        #[arg(
            long = "backup-root",
            visible_alias = "dest",
            env = "BACKUP_ROOT",
            default_value = "/mnt/backup",
            value_name = "DIR"
        )]
        dest: PathBuf,
        /// A directory to copy (repeatable).
        #[arg(long = "item", default_values = ["/etc/pve", "/usr/local/bin", "/etc/systemd/system"])]
        items: Vec<PathBuf>,
        /// The ledger [default: DEST/.changed-files].
        #[arg(long, value_name = "FILE")]
        ledger: Option<PathBuf>,
        /// Refuse unless the destination is a mountpoint.
        #[arg(long)]
        require_mountpoint: bool,
        /// Print what would be done; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Bound for each item's rsync.
        #[arg(long, default_value = "300s", value_name = "DURATION", value_parser = parse_duration)]
        rsync_timeout: std::time::Duration,
    },
}

fn main() {
    let cli = backup_core::config::parse::<Cli>("nfs-mirror");
    cli.common.init_logging();
    backup_core::exit::run_main("nfs-mirror", || run(cli))
}

fn rsync_prog() -> std::ffi::OsString {
    std::env::var_os("RSYNC").unwrap_or_else(|| "rsync".into())
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Some(Sub::Config {
            dest,
            items,
            ledger,
            require_mountpoint,
            dry_run,
            rsync_timeout: timeout,
        }) => {
            let _lock = backup_core::lock::acquire("nfs-mirror-config")?;
            let o = nfs_mirror::ConfigOpts {
                dest,
                require_mountpoint,
                items,
                ledger,
                dry_run,
                timeout,
                rsync: rsync_prog(),
            };
            let mut m = Metrics::new();
            let res = nfs_mirror::config(&o);
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
                nfs_mirror::fs_used_bytes(&o.dest) as f64,
            )?;
            if !dry_run {
                cli.common.write_metrics(&m);
            }
            res.map(|(c, _)| c)
        }
        None => {
            let a = cli.mirror;
            let _lock = backup_core::lock::acquire("nfs-mirror")?;
            let o = nfs_mirror::MirrorOpts {
                sources: if a.sources.is_empty() {
                    vec![
                        nfs_mirror::SourceRoot::parse(&a.nfs_root.to_string_lossy())
                            .map_err(backup_core::exit::Exit::usage)?,
                        nfs_mirror::SourceRoot::parse(&format!(
                            "{}:nfs-ssd",
                            a.nfs_ssd_root.to_string_lossy()
                        ))
                        .map_err(backup_core::exit::Exit::usage)?,
                    ]
                } else {
                    a.sources
                },
                dest: a.dest,
                skip_list: a.skip_list,
                ledger: a.ledger,
                require_mountpoint: a.require_mountpoint,
                max_delete: a.max_delete,
                prune_skipped: a.prune_skipped,
                dry_run: a.dry_run,
                json: a.json,
                timeout: a.rsync_timeout,
                rsync: rsync_prog(),
            };
            let mut m = Metrics::new();
            let res = nfs_mirror::mirror(&o, &mut m);
            // nfs_mirror_last_status / _last_run_timestamp come from
            // push-metric (--job nfs-mirror, prefix nfs_mirror), which also
            // sees kills; the tool writes its own figures on every path.
            let used = match &res {
                Ok((_, r)) => r.dest_used_bytes,
                Err(_) => nfs_mirror::fs_used_bytes(&o.dest),
            };
            m.gauge(
                "nfs_mirror_bytes",
                "Used bytes of the backup filesystem after the run.",
                used as f64,
            )?;
            if let Ok((_, r)) = &res {
                m.gauge(
                    "nfs_mirror_files_transferred",
                    "Files transferred (and added to the ledger) by the last run.",
                    r.transferred as f64,
                )?;
                m.gauge(
                    "nfs_mirror_vanished_files",
                    "Source files that vanished during the last run (rsync 24).",
                    r.vanished_files as f64,
                )?;
                let vanished = r.entries.iter().filter(|e| e.action == "vanished").count();
                m.gauge(
                    "nfs_mirror_vanished_entries",
                    "Mirrors kept although their source entry is gone.",
                    vanished as f64,
                )?;
            }
            if !o.dry_run {
                cli.common.write_metrics(&m);
            }
            let (code, report) = res?;
            // The report of a finished run: a closed stdout keeps its code.
            let print = || -> std::io::Result<()> {
                if o.json {
                    backup_core::outln!("{}", serde_json::to_string_pretty(&report)?)?;
                } else {
                    for e in &report.entries {
                        backup_core::outln!(
                            "{:<14} {:<12} {:<16} {:<24} transferred={} deletions={}{}",
                            e.action,
                            e.route.as_str(),
                            e.root,
                            e.name,
                            e.transferred,
                            e.deletions,
                            e.message
                                .as_deref()
                                .map(|m| format!("  ({m})"))
                                .unwrap_or_default()
                        )?;
                    }
                }
                Ok(())
            };
            backup_core::out::ignore_closed(print())?;
            Ok(code)
        }
    }
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
