//! nfs-mirror: argument parsing (cli.rs) and the run over the library.
mod cli;

use anyhow::Result;
use backup_core::exit::ExitCode;
use backup_core::metrics::Metrics;
use cli::{Cli, Sub};

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
            allow_unmounted_root,
            dry_run,
            rsync_timeout: timeout,
        }) => {
            let _lock = backup_core::lock::acquire("nfs-mirror-config")?;
            let o = nfs_mirror::ConfigOpts {
                dest,
                require_mountpoint: require_mountpoint || !allow_unmounted_root,
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
                require_mountpoint: a.require_mountpoint || !a.allow_unmounted_root,
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
