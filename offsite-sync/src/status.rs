//! `offsite-sync status`: the ledgers, the last passes and the NAS capacity.

use anyhow::{Context, Result};
use backup_core::exit::ExitCode;
use backup_core::log::p;

use crate::schedule::read_stamp;
use crate::{Capacity, Config, capacity};

/// `offsite-sync status`.
#[derive(Debug, serde::Serialize)]
pub struct Status {
    pub ledgers: Vec<LedgerStatus>,
    pub last_full_step1: Option<u64>,
    pub last_full_step2: Option<u64>,
    pub last_success: Option<u64>,
    pub nas: Option<Capacity>,
    pub nas_error: Option<String>,
}

#[derive(Debug, serde::Serialize)]
pub struct LedgerStatus {
    pub path: String,
    pub pending_lines: u64,
    pub inflight: bool,
    pub full_sync_needed: bool,
    pub reasons: Vec<String>,
}

pub fn status(cfg: &Config, probe_nas: bool) -> Result<Status> {
    let mut ledgers = Vec::new();
    for l in [cfg.leg1(), cfg.leg2()] {
        ledgers.push(LedgerStatus {
            path: p(l.path()),
            pending_lines: l.line_count().context("ledger")?,
            inflight: l.inflight_path().exists(),
            full_sync_needed: l.full_sync_needed(),
            reasons: l.full_sync_reasons().unwrap_or_default(),
        });
    }
    let (nas, nas_error) = if probe_nas {
        match capacity(cfg, &cfg.capacity_path) {
            Ok(c) => (Some(c), None),
            Err(e) => (None, Some(backup_core::exit::one_line(&e))),
        }
    } else {
        (None, None)
    };
    Ok(Status {
        ledgers,
        last_full_step1: read_stamp(&cfg.stamp(1)),
        last_full_step2: read_stamp(&cfg.stamp(2)),
        last_success: read_stamp(&cfg.state_dir().join("last-success")),
        nas,
        nas_error,
    })
}

/// `offsite-sync status`, printed (JSON with `json`).
pub fn run(cfg: &Config, probe_nas: bool, json: bool) -> Result<ExitCode> {
    let s = status(cfg, probe_nas)?;
    if json {
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
    Ok(ExitCode::Ok)
}
