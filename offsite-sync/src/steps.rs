//! The step subcommands (`step1`, `step2`, `all`): the NAS checked once
//! before any step, each step behind its gate, the coverage check after a
//! full night, the metrics and the report.

use anyhow::Result;
use backup_core::cli::Common;
use backup_core::exit::{Exit, ExitCode};
use backup_core::metrics::Metrics;
use backup_core::{error, warn};

use crate::metrics::fill_metrics;
use crate::schedule::write_stamp;
use crate::{Capacity, Config, coverage, nas, step1, step2};

/// What one step did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct StepReport {
    pub step: u8,
    pub full: bool,
    pub full_reasons: Vec<String>,
    pub entries: u64,
    pub sent: u64,
    pub vanished: u64,
    pub not_direct: u64,
    pub unsafe_paths: u64,
    pub rejected: u64,
    pub deletions: u64,
    pub code: i32,
    pub message: Option<String>,
}

/// What the one ssh call before any step found (contract 13), and what
/// no step can run without.
struct Preflight {
    /// rsync or ssh missing: why.
    absent: Option<String>,
    /// The backup root carries its identity marker.
    root_ok: bool,
    /// The NAS ids this backup disk expects.
    expected: Result<std::collections::BTreeMap<String, String>>,
    cap: Option<Capacity>,
    found: Vec<(nas::Dest, nas::Found)>,
    nas_err: Option<String>,
}

impl Preflight {
    /// One ssh call before any step: the identity marker of every
    /// destination the steps write to, and the NAS capacity. Only for a
    /// backup root that is the backup disk: the expected ids are recorded
    /// there, and without it every step refuses anyway.
    fn check(cfg: &Config, steps: &[u8]) -> Preflight {
        let dests: Vec<nas::Dest> = steps
            .iter()
            .flat_map(|&s| nas::step_dests(cfg, s))
            .collect();
        // rsync, and the ssh it runs to reach the NAS (rsync would only exit
        // 14 for a missing ssh): absent, no step can run (exit 5).
        let absent = [&cfg.rsync, &cfg.ssh]
            .into_iter()
            .find_map(|prog| backup_core::cmd::require(prog).err())
            .map(|e| e.to_string());
        let root_ok = backup_core::marker::require_backup_root(&cfg.backup_root).is_ok();
        let probe = (root_ok && absent.is_none()).then(|| {
            let req: Vec<(String, Option<String>)> =
                dests.iter().map(|d| (d.path.clone(), None)).collect();
            nas::probe(cfg, &req, &cfg.capacity_path)
        });
        let expected = if root_ok {
            nas::read_ids(cfg)
        } else {
            Ok(Default::default())
        };
        let mut cap = None;
        let mut found: Vec<(nas::Dest, nas::Found)> = Vec::new();
        let mut nas_err: Option<String> = None;
        match probe {
            Some(Ok(pr)) => {
                match pr.capacity {
                    Ok(c) => cap = Some(c),
                    Err(e) => warn!("{}", backup_core::exit::one_line(&e)),
                }
                found = dests.iter().cloned().zip(pr.found).collect();
            }
            Some(Err(e)) => nas_err = Some(backup_core::exit::one_line(&e)),
            None => {}
        }
        Preflight {
            absent,
            root_ok,
            expected,
            cap,
            found,
            nas_err,
        }
    }

    /// Step `s` may run: nothing is sent to a destination not recognised.
    fn gate(&self, cfg: &Config, s: u8) -> Result<()> {
        if let Some(why) = &self.absent {
            return Err(Exit::refused(why.clone()));
        }
        if !self.root_ok {
            backup_core::marker::require_backup_root(&cfg.backup_root)?;
        }
        if let Some(e) = &self.nas_err {
            return Err(anyhow::anyhow!("{e}: nothing sent"));
        }
        let ids = self
            .expected
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let why: Vec<String> = self
            .found
            .iter()
            .filter(|(d, _)| nas::step_dests(cfg, s).contains(d))
            .filter_map(|(d, f)| nas::refusal(d, f, ids.get(d.role)))
            .collect();
        if !why.is_empty() {
            return Err(Exit::refused(why.join("; ")));
        }
        Ok(())
    }
}

/// Run steps, collect reports, write metrics. Returns the exit code.
pub fn run_steps(
    cfg: &Config,
    steps: &[u8],
    metrics: &mut Metrics,
) -> (ExitCode, Vec<StepReport>, Option<Capacity>) {
    let mut code = ExitCode::Ok;
    let mut reports = Vec::new();
    let pre = Preflight::check(cfg, steps);
    for &s in steps {
        let mut rep = StepReport {
            step: s,
            ..Default::default()
        };
        let res = pre.gate(cfg, s).and_then(|()| {
            if s == 1 {
                step1::run_into(cfg, &mut rep)
            } else {
                step2::run_into(cfg, &mut rep)
            }
        });
        if let Err(e) = res {
            let c = backup_core::exit::code_of(&e);
            let msg = backup_core::exit::one_line(&e);
            error!("step {s}: {msg}");
            code = code.merge(c);
            rep.code = c.code();
            rep.message = Some(msg);
        }
        reports.push(rep);
    }
    // Contract 15, after everything was sent: a directory no leg carries
    // fails the night (exit 3) and is counted per root.
    if steps.contains(&1) && steps.contains(&2) {
        code = code.merge(coverage::check(cfg, metrics));
    }
    let cap = pre.cap;
    let _ = fill_metrics(metrics, cfg, code, &reports, cap.as_ref());
    if code == ExitCode::Ok && !cfg.dry_run {
        let _ = write_stamp(&cfg.state_dir().join("last-success"));
    }
    (code, reports, cap)
}

/// `offsite-sync step1|step2|all`: under the run lock, the steps, their
/// metrics (not for a dry run), then the report (JSON with `json`).
pub fn run(cfg: &Config, steps: &[u8], common: &Common, json: bool) -> Result<ExitCode> {
    let _lock = backup_core::lock::acquire("offsite-sync")?;
    let mut m = Metrics::new();
    let (code, reports, cap) = run_steps(cfg, steps, &mut m);
    if !cfg.dry_run {
        common.write_metrics(&m);
    }
    // The report of a finished run: a closed stdout keeps its code.
    let print = || -> std::io::Result<()> {
        if json {
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
