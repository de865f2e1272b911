//! The metrics of a run of the steps.

use anyhow::Result;
use backup_core::exit::ExitCode;
use backup_core::metrics::Metrics;

use crate::schedule::{now_secs, read_stamp};
use crate::{Capacity, Config, StepReport};

/// Fill `m` with the run's result, each step's counts, the ledgers' sizes
/// and the NAS capacity read before sending.
pub(crate) fn fill_metrics(
    m: &mut Metrics,
    cfg: &Config,
    code: ExitCode,
    reports: &[StepReport],
    cap: Option<&Capacity>,
) -> Result<()> {
    let now = now_secs() as f64;
    // push-metric (--job offsite-backup-sync --prefix offsite_sync) sets
    // this too, from systemd's view (2 when killed); the same name here
    // keeps a hand run's metrics file complete.
    m.gauge(
        "offsite_sync_last_status",
        "Result of the last offsite sync: 0 ok, 1 failed, 2 aborted.",
        f64::from(code.status_metric()),
    )?;
    if code == ExitCode::Ok {
        // Only after a fully successful run (docs/compatibility.md, bug 16).
        m.gauge(
            "backup_last_success_timestamp",
            "Unix time of the last fully successful offsite sync.",
            now,
        )?;
    }
    for r in reports {
        let step = r.step.to_string();
        let l = [("step", step.as_str())];
        m.gauge_with(
            "offsite_sync_sent_entries",
            "Ledger entries sent (incremental) or items created (full pass) by the last run.",
            &l,
            r.sent as f64,
        )?;
        m.gauge_with(
            "offsite_sync_vanished_entries",
            "Ledger entries dropped because the file had vanished.",
            &l,
            r.vanished as f64,
        )?;
        m.gauge_with(
            "offsite_sync_unsafe_entries",
            "Ledger entries refused because a component on the way is a symlink.",
            &l,
            r.unsafe_paths as f64,
        )?;
        m.gauge_with(
            "offsite_sync_deleted_items",
            "Items the last run's full pass deleted on the NAS, counted from rsync's own output (also when it failed).",
            &l,
            r.deletions as f64,
        )?;
        m.gauge_with(
            "offsite_sync_full_pass",
            "1 when the last run of this step was a full pass.",
            &l,
            if r.full { 1.0 } else { 0.0 },
        )?;
        if let Some(t) = read_stamp(&cfg.stamp(r.step)) {
            m.gauge_with(
                "offsite_sync_last_full_success_timestamp",
                "Unix time of the last successful full pass.",
                &l,
                t as f64,
            )?;
        }
    }
    for (name, l) in [("changed-files", cfg.leg1()), ("nfs-changes", cfg.leg2())] {
        if let Ok(n) = l.line_count() {
            m.gauge_with(
                "offsite_sync_ledger_lines",
                "Lines pending in a ledger (including its inflight part).",
                &[("ledger", name)],
                n as f64,
            )?;
        }
    }
    if let Some(c) = cap {
        m.gauge(
            "offsite_dest_size_bytes",
            "Size of the NAS filesystem (df -kP, read before sending).",
            c.size_bytes as f64,
        )?;
        m.gauge(
            "offsite_dest_available_bytes",
            "Available bytes on the NAS filesystem (df -kP, read before sending).",
            c.available_bytes as f64,
        )?;
        m.gauge(
            "offsite_dest_capacity_timestamp_seconds",
            "Unix time the NAS capacity was last read.",
            now,
        )?;
    }
    Ok(())
}
