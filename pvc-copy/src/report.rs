//! The `--json` report of a copy run, and the metrics drawn from it.

use std::time::Duration;

use backup_core::exit::ExitCode;
use backup_core::metrics::Metrics;
use backup_core::warn;
use serde::Serialize;

use crate::store;

/// Everything a run decided and did (the `--json` output).
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub week: String,
    pub dry_run: bool,
    pub items: Vec<ItemReport>,
    pub rotation: Option<store::RotationPlan>,
    pub rotated: Vec<String>,
    pub ledger_entries: usize,
}

#[derive(Debug, Serialize)]
pub struct ItemReport {
    pub lv: String,
    pub pvc: Option<String>,
    pub snapshot: Option<String>,
    pub dest: Option<String>,
    pub link_dest: Option<String>,
    /// ok, failed, skipped, or planned (dry run).
    pub result: String,
    pub reason: Option<String>,
    pub bytes: u64,
    pub transferred_bytes: u64,
    pub changed_files: usize,
}

impl Report {
    pub(crate) fn count(&self, r: &str) -> usize {
        self.items.iter().filter(|i| i.result == r).count()
    }

    /// The run's figures. `daily_backup_bytes_synced` keeps its name and
    /// meaning (apparent size of the copies, like `du -sb` of the week).
    pub fn metrics(&self, elapsed: Duration, code: ExitCode) -> Metrics {
        let mut m = Metrics::new();
        let help = "PVCs by result of the last pvc-copy run";
        let mut set = || -> Result<(), backup_core::metrics::MetricsError> {
            for r in ["ok", "failed", "skipped"] {
                m.gauge_with(
                    "pvc_copy_pvcs",
                    help,
                    &[("result", r)],
                    self.count(r) as f64,
                )?;
            }
            let bytes: u64 = self.items.iter().map(|i| i.bytes).sum();
            let sent: u64 = self.items.iter().map(|i| i.transferred_bytes).sum();
            m.gauge(
                "daily_backup_bytes_synced",
                "Apparent size of the PVC copies made by the last run, bytes",
                bytes as f64,
            )?;
            m.gauge(
                "pvc_copy_transferred_bytes",
                "File data rsync wrote in the last run (unchanged files are hardlinked), bytes",
                sent as f64,
            )?;
            m.gauge(
                "pvc_copy_changed_files",
                "Files the last run added or changed (entries appended to the ledger)",
                self.ledger_entries as f64,
            )?;
            m.gauge(
                "pvc_copy_duration_seconds",
                "Duration of the last run",
                elapsed.as_secs_f64(),
            )?;
            m.gauge(
                "pvc_copy_exit_code",
                "Exit code of the last run",
                f64::from(code.code()),
            )?;
            m.gauge(
                "pvc_copy_weeks_rotated",
                "Week directories deleted by the last run's rotation",
                self.rotated.len() as f64,
            )?;
            Ok(())
        };
        if let Err(e) = set() {
            warn!("metrics: {e}");
        }
        m
    }
}
