//! When a full pass is due, and the stamps that record the last ones.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use backup_core::ledger::Ledger;
use backup_core::log::p;
use backup_core::warn;

use crate::{Config, FullMode};

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn read_stamp(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

pub(crate) fn write_stamp(path: &Path) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).with_context(|| p(d))?;
    }
    backup_core::fsutil::write_atomic(path, format!("{}\n", now_secs()).as_bytes())
        .with_context(|| p(path))
}

/// Decide whether this step runs a full pass, and why.
pub(crate) fn full_due(
    cfg: &Config,
    step: u8,
    ledger: &Ledger,
) -> Result<(bool, Vec<String>, usize)> {
    let lines = ledger.line_count().context("ledger size")?;
    if lines > cfg.ledger_cap {
        warn!(
            "{} holds {lines} lines (cap {}): a full pass replaces it",
            p(ledger.path()),
            cfg.ledger_cap
        );
        if !cfg.dry_run {
            ledger
                .mark_full_sync(&format!("ledger cap: {lines} lines > {}", cfg.ledger_cap))
                .context("marking a full sync")?;
        }
    }
    let reasons = ledger.full_sync_reasons().context("full-sync marker")?;
    let seen = reasons.len();
    let mut why: Vec<String> = reasons.iter().map(|r| format!("marker: {r}")).collect();
    if lines > cfg.ledger_cap && cfg.dry_run {
        why.push(format!("ledger cap: {lines} lines"));
    }
    if step == 1 && cfg.backup_root.join(".force-full-sync").exists() {
        why.push(".force-full-sync flag".into());
    }
    match read_stamp(&cfg.stamp(step)) {
        None => why.push("no full pass recorded yet".into()),
        Some(t) if now_secs().saturating_sub(t) >= cfg.full_every.as_secs() => why.push(format!(
            "last full pass {} days ago (--full-every {} days)",
            now_secs().saturating_sub(t) / 86_400,
            cfg.full_every.as_secs() / 86_400
        )),
        Some(_) => {}
    }
    let full = match cfg.full {
        FullMode::Always => {
            why.insert(0, "--full always".into());
            true
        }
        FullMode::Never => false,
        FullMode::Auto => !why.is_empty(),
    };
    Ok((full, why, seen))
}
