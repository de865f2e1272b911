//! `pvc-copy preflight`: the NFS export health check added after the
//! 2026-04-14 fsid=0 outage (docs/compatibility.md, "Incidents"). Its result used to
//! be discarded (BUG-6); here every failed check is listed and counted.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use backup_core::cli::Common;
use backup_core::cmd::Cmd;
use backup_core::exit::{Exit, ExitCode};
use backup_core::metrics::Metrics;
use backup_core::{error, info};
use serde::Serialize;

use crate::cli::PreflightArgs;

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

pub struct Config<'a> {
    pub exports: &'a Path,
    /// The export root whose lines are checked (`/srv/nfs`).
    pub nfs_root: &'a str,
    pub systemctl: &'a str,
    pub service: &'a str,
    pub exportfs: &'a str,
    pub timeout: Duration,
}

/// True for an exports line that exports the NFS root itself with
/// `fsid=0` (which re-roots NFSv4 and broke every client path).
pub fn fsid0_line(line: &str, root: &str) -> bool {
    let l = line.trim_start();
    let Some(rest) = l.strip_prefix(root) else {
        return false;
    };
    rest.starts_with([' ', '\t'])
        && rest
            .match_indices("fsid=0")
            .any(|(i, m)| !rest[i + m.len()..].starts_with(|c: char| c.is_ascii_digit()))
}

/// Lines of `exportfs -s` that export something under the root.
pub fn count_exports(out: &str, root: &str) -> usize {
    out.lines()
        .filter(|l| {
            let path = l.split_whitespace().next().unwrap_or("");
            path == root || path.strip_prefix(root).is_some_and(|r| r.starts_with('/'))
        })
        .count()
}

pub fn run_checks(c: &Config) -> Vec<Check> {
    let mut out = Vec::new();
    match std::fs::read_to_string(c.exports) {
        Err(e) => out.push(Check {
            name: "exports-file".into(),
            ok: false,
            detail: format!("cannot read {}: {e}", c.exports.display()),
        }),
        Ok(text) => {
            out.push(Check {
                name: "exports-file".into(),
                ok: true,
                detail: format!("{} present", c.exports.display()),
            });
            let bad: Vec<&str> = text
                .lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .filter(|l| fsid0_line(l, c.nfs_root))
                .collect();
            out.push(Check {
                name: "no-fsid0-root".into(),
                ok: bad.is_empty(),
                detail: if bad.is_empty() {
                    format!("{} is not exported with fsid=0", c.nfs_root)
                } else {
                    format!("{} exported with fsid=0: {}", c.nfs_root, bad.join(" | "))
                },
            });
        }
    }
    let active = Cmd::new(c.systemctl)
        .args(["is-active", "--", c.service])
        .timeout(c.timeout)
        .run_any();
    out.push(match active {
        Ok(o) if o.code == 0 && o.stdout_str().trim() == "active" => Check {
            name: "nfs-server-active".into(),
            ok: true,
            detail: format!("{} is active", c.service),
        },
        Ok(o) => Check {
            name: "nfs-server-active".into(),
            ok: false,
            detail: format!("{} is not active: {}", c.service, o.stdout_str().trim()),
        },
        Err(e) => Check {
            name: "nfs-server-active".into(),
            ok: false,
            detail: e.to_string(),
        },
    });
    let exp = Cmd::new(c.exportfs).arg("-s").timeout(c.timeout).run();
    out.push(match exp {
        Ok(o) => {
            let n = count_exports(&o.stdout_str(), c.nfs_root);
            Check {
                name: "exports-active".into(),
                ok: n > 0,
                detail: format!("exportfs -s lists {n} export(s) under {}", c.nfs_root),
            }
        }
        Err(e) => Check {
            name: "exports-active".into(),
            ok: false,
            detail: e.to_string(),
        },
    });
    out
}

/// The `preflight` subcommand: every check run, logged, counted in metrics.
pub(crate) fn run(a: &PreflightArgs, common: &Common) -> anyhow::Result<ExitCode> {
    let checks = run_checks(&Config {
        exports: &a.exports,
        nfs_root: &a.nfs_root,
        systemctl: &a.systemctl,
        service: &a.service,
        exportfs: &a.exportfs,
        timeout: Duration::from_secs(30),
    });
    let failed = checks.iter().filter(|c| !c.ok).count();
    for c in &checks {
        if c.ok {
            info!("ok: {}: {}", c.name, c.detail);
        } else {
            error!("{}: {}", c.name, c.detail);
        }
    }
    let mut m = Metrics::new();
    let _ = m.gauge(
        "pvc_copy_nfs_exports_ok",
        "1 when every NFS export check of the last preflight passed",
        if failed == 0 { 1.0 } else { 0.0 },
    );
    let _ = m.gauge(
        "pvc_copy_nfs_export_checks_failed",
        "NFS export checks that failed in the last preflight",
        failed as f64,
    );
    common.write_metrics(&m);
    if a.json {
        backup_core::out::ignore_closed(backup_core::outln!(
            "{}",
            serde_json::to_string_pretty(&checks).context("encoding the checks")?
        ))?;
    }
    // A check that could not run because its command is not installed is
    // a misconfigured host, not a finding about the exports: exit 5.
    for prog in [&a.systemctl, &a.exportfs] {
        backup_core::cmd::require(prog).map_err(|e| Exit::refused(e.to_string()))?;
    }
    if failed > 0 {
        error!("NFS export preflight: {failed} check(s) failed");
        // 3: the check ran to the end and found problems; the daily unit
        // goes on with the copy and still reports the run as failed.
        return Ok(ExitCode::Partial);
    }
    Ok(ExitCode::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsid0_only_on_the_root_line() {
        assert!(fsid0_line("/srv/nfs 10.0.0.0/24(rw,fsid=0)", "/srv/nfs"));
        assert!(fsid0_line(
            "  /srv/nfs\t*(ro,fsid=0,no_subtree_check)",
            "/srv/nfs"
        ));
        assert!(!fsid0_line("/srv/nfs-ssd *(rw,fsid=0)", "/srv/nfs"));
        assert!(!fsid0_line("/srv/nfs/immich *(rw,fsid=1)", "/srv/nfs"));
        assert!(!fsid0_line("/srv/nfs *(rw,fsid=10)", "/srv/nfs"));
        assert!(!fsid0_line("/srv/nfs *(rw,fsid=01)", "/srv/nfs"));
    }

    #[test]
    fn exports_under_the_root_are_counted() {
        let out = "/srv/nfs/immich  10.0.0.0/24(rw)\n/srv/nfs-ssd/x  *(rw)\n/srv/nfs  *(ro)\n";
        assert_eq!(count_exports(out, "/srv/nfs"), 2);
        assert_eq!(count_exports("", "/srv/nfs"), 0);
    }
}
