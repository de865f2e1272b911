//! offsite-sync: argument parsing (cli.rs) and the run over the library.
mod cli;

use anyhow::Result;
use backup_core::exit::ExitCode;
use backup_core::metrics::Metrics;
use cli::{Cli, Sub};
use offsite_sync::Config;

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
        require_mountpoint: o.require_mountpoint || !o.allow_unmounted_root,
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
