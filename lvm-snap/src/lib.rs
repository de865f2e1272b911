//! lvm-snap: thin snapshots of every PVC volume in the thin pool, their
//! retention, a guard on the pool's free data and metadata space, and a
//! restore that rolls back what it did when a step fails.
//!
//! Replaces `lvm-pvc-snapshot` (docs/compatibility.md). LVM and Kubernetes
//! are driven only through `lvs`/`lvcreate`/`lvremove`/`lvrename`/`lvchange`
//! and `kubectl` found on PATH.

pub mod create;
pub mod kube;
pub mod lvm;
pub mod names;
pub mod prune;
pub mod restore;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use backup_core::cli::{Common, parse_duration};
use backup_core::exit::{EXIT_CODE_HELP, Exit, ExitCode, code_of};
use backup_core::metrics::Metrics;
use chrono::{DateTime, Local, NaiveDateTime, TimeZone};
use clap::{Args, Parser, Subcommand};

use crate::kube::Kubectl;
use crate::lvm::{Lv, Lvm};

/// The lock name (`<lock dir>/lvm-snap.lock`).
pub const TOOL: &str = "lvm-snap";

#[derive(Debug, Parser)]
#[command(
    name = "lvm-snap",
    version,
    about = "Thin snapshots of every PVC volume: create, list, prune, pool guard, restore",
    long_about = "Thin snapshots of every PVC LV (vm-<id>-pvc-<uuid>) in one LVM thin pool.\n\
Snapshots are named <lv>_snap_<YYYYMMDD>_<HHMM> (local time) and tagged backup-pipeline.lvm-snap;\n\
prune only ever removes LVs with that tag and name. Configuration comes from flags or the\n\
environment (LVM_SNAP_*), e.g. from systemd's EnvironmentFile.",
    after_help = EXIT_CODE_HELP
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub target: Target,
    /// The instant to act at instead of the clock (for tests and replays):
    /// `@UNIX_SECONDS`, RFC 3339, or `YYYY-MM-DD HH:MM` local time.
    #[arg(long, global = true, hide = true, value_name = "TIME")]
    pub now: Option<String>,
    /// Where a restore keeps its journal (on the host's own disk, so a
    /// restore cut short, even by SIGKILL or a power cut, can be undone
    /// with `lvm-snap restore --recover`).
    #[arg(
        long,
        global = true,
        env = "LVM_SNAP_STATE_DIR",
        default_value = "/var/lib/backup-pipeline",
        value_name = "DIR"
    )]
    pub state_dir: PathBuf,
    #[command(subcommand)]
    pub cmd: Command,
}

#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Volume group holding the thin pool and the PVC LVs.
    #[arg(long, global = true, env = "LVM_VG", default_value = "pve")]
    pub vg: String,
    /// Thin pool the PVC LVs live in.
    #[arg(long, global = true, env = "LVM_POOL", default_value = "data")]
    pub pool: String,
    /// kubectl to run (KUBECONFIG is passed through).
    #[arg(
        long,
        global = true,
        env = "LVM_SNAP_KUBECTL",
        default_value = "kubectl",
        value_name = "PATH"
    )]
    pub kubectl: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct Guard {
    /// Refuse (exit 5) when the pool's free data space is under this percentage.
    #[arg(
        long,
        env = "LVM_SNAP_MIN_FREE_PCT",
        default_value_t = 10.0,
        value_name = "PCT"
    )]
    pub min_free_pct: f64,
    /// Refuse (exit 5) when the pool's free metadata space is under this
    /// percentage (a pool whose metadata fills up goes read-only).
    #[arg(
        long,
        env = "LVM_SNAP_MIN_METADATA_FREE_PCT",
        default_value_t = 20.0,
        value_name = "PCT"
    )]
    pub min_metadata_free_pct: f64,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Snapshot every PVC LV of the thin pool (one timestamp per run).
    #[command(after_help = EXIT_CODE_HELP)]
    Create(CreateArgs),
    /// List snapshots and pre-restore copies.
    #[command(after_help = EXIT_CODE_HELP)]
    List(ListArgs),
    /// Remove our snapshots older than the retention (decisions with reasons).
    #[command(after_help = EXIT_CODE_HELP)]
    Prune(PruneArgs),
    /// Data and metadata usage of the thin pool (exit 5 under a threshold).
    #[command(after_help = EXIT_CODE_HELP)]
    Pool(PoolArgs),
    /// Replace a PVC LV by a snapshot of it, keeping the old one as
    /// <lv>_pre_restore_<stamp>; rolls back on failure.
    #[command(after_help = EXIT_CODE_HELP)]
    Restore(RestoreArgs),
}

#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// Namespace whose PVCs are not snapshotted (repeat, or comma-separated);
    /// pvc-copy reads the same key and skips them.
    #[arg(
        long = "exclude-namespace",
        env = "EXCLUDED_NAMESPACES",
        value_delimiter = ',',
        default_value = backup_core::k8s::DEFAULT_EXCLUDED_NAMESPACES,
        value_name = "NS"
    )]
    pub exclude_namespace: Vec<String>,
    #[command(flatten)]
    pub guard: Guard,
    /// Cached `kubectl get pv -o json`, used when kubectl fails; refreshed
    /// (atomically) whenever kubectl works and the directory exists. On the
    /// host's own disk by default, so it is there when the backup disk is not
    /// (pvc-copy reads MAPPING_CACHE too: one setting for both).
    #[arg(
        long,
        env = "MAPPING_CACHE",
        default_value = backup_core::k8s::DEFAULT_MAPPING_CACHE,
        value_name = "PATH"
    )]
    pub mapping_cache: PathBuf,
    /// Print the lvcreate commands; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct PruneArgs {
    /// Snapshots older than this many days are removed (at least 1).
    #[arg(
        long,
        env = "LVM_SNAP_RETENTION_DAYS",
        default_value_t = 3,
        value_name = "N"
    )]
    pub keep_days: u32,
    /// Pre-restore copies older than this many days are removed; by
    /// default they are kept until removed by hand.
    #[arg(long, env = "LVM_SNAP_PRE_RESTORE_KEEP_DAYS", value_name = "N")]
    pub pre_restore_keep_days: Option<u32>,
    /// Print the decisions; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Decisions as a JSON array.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct PoolArgs {
    #[command(flatten)]
    pub guard: Guard,
    /// Print the usage as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// The PVC LV to replace (vm-<id>-pvc-<uuid>).
    #[arg(value_name = "PVC_LV", required_unless_present = "recover")]
    pub pvc_lv: Option<String>,
    /// The snapshot to restore (<PVC_LV>_snap_<YYYYMMDD>_<HHMM>).
    #[arg(value_name = "SNAPSHOT_LV", required_unless_present = "recover")]
    pub snapshot_lv: Option<String>,
    /// Undo a restore that was cut short (SIGKILL, power cut, a rollback
    /// that failed), as recorded in its journal under --state-dir: names
    /// back, scratch volume removed, replicas back.
    #[arg(long, conflicts_with_all = ["pvc_lv", "snapshot_lv"])]
    pub recover: bool,
    /// Print the plan; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// How long to wait for the pods to go and the volume to be detached.
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub wait_timeout: Duration,
    /// How long to wait for the workload to be Ready again.
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub ready_timeout: Duration,
    /// Poll interval while waiting (milliseconds).
    #[arg(long, default_value_t = 2000, hide = true, value_name = "MS")]
    pub poll_ms: u64,
}

/// What every command works with.
pub struct Ctx {
    pub vg: String,
    pub pool: String,
    pub lvm: Lvm,
    pub kubectl: Kubectl,
    pub now: DateTime<Local>,
    pub state_dir: PathBuf,
}

impl Ctx {
    /// The LVs of the VG, or exit 1 with lvs's error.
    pub fn report(&self) -> Result<Vec<Lv>> {
        self.lvm.report()
    }
    pub fn stamp(&self) -> String {
        names::stamp_of(&self.now)
    }
}

/// Parse `--now`.
pub fn parse_now(s: &str) -> Result<DateTime<Local>> {
    let bad = || {
        Exit::usage(format!(
            "--now {s:?}: expected @UNIX_SECONDS, RFC 3339 or 'YYYY-MM-DD HH:MM' local time"
        ))
    };
    if let Some(secs) = s.strip_prefix('@') {
        let secs: i64 = secs.parse().map_err(|_| bad())?;
        return Local.timestamp_opt(secs, 0).single().ok_or_else(bad);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Local));
    }
    for fmt in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"] {
        if let Ok(n) = NaiveDateTime::parse_from_str(s, fmt) {
            return Local.from_local_datetime(&n).earliest().ok_or_else(bad);
        }
    }
    Err(bad())
}

/// Set a gauge; names and labels are constants or checked LV names.
pub(crate) fn gauge(m: &mut Metrics, name: &str, help: &str, v: f64) {
    if let Err(e) = m.gauge(name, help, v) {
        backup_core::warn!("metric {name}: {e}");
    }
}

pub(crate) fn gauge_with(m: &mut Metrics, name: &str, help: &str, l: &[(&str, &str)], v: f64) {
    if let Err(e) = m.gauge_with(name, help, l, v) {
        backup_core::warn!("metric {name}: {e}");
    }
}

/// Status metric of the original script: 0 ok, 1 partial, 2 aborted,
/// refused or nothing done.
pub fn status_value(code: ExitCode) -> f64 {
    match code {
        ExitCode::Ok => 0.0,
        ExitCode::Partial => 1.0,
        _ => 2.0,
    }
}

/// Thin-pool usage.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PoolStatus {
    pub vg: String,
    pub pool: String,
    pub size_bytes: u64,
    pub data_percent: Option<f64>,
    pub metadata_percent: Option<f64>,
}

impl PoolStatus {
    pub fn from_report(lvs: &[Lv], vg: &str, pool: &str) -> Result<PoolStatus> {
        let p = lvs
            .iter()
            .find(|l| l.name == pool && l.is_pool())
            .ok_or_else(|| {
                Exit::refused(format!(
                    "thin pool {vg}/{pool} not found in the lvs report (check --vg and --pool)"
                ))
            })?;
        Ok(PoolStatus {
            vg: vg.into(),
            pool: pool.into(),
            size_bytes: p.size,
            data_percent: p.data_percent,
            metadata_percent: p.metadata_percent,
        })
    }
    pub fn data_free(&self) -> Option<f64> {
        self.data_percent.map(|d| 100.0 - d)
    }
    pub fn metadata_free(&self) -> Option<f64> {
        self.metadata_percent.map(|d| 100.0 - d)
    }

    pub fn record(&self, m: &mut Metrics) {
        if let Some(f) = self.data_free() {
            gauge(
                m,
                "lvm_snapshot_thinpool_free_pct",
                "Free data space of the thin pool, percent",
                f,
            );
        }
        if let Some(f) = self.metadata_free() {
            gauge(
                m,
                "lvm_snapshot_thinpool_metadata_free_ratio",
                "Free metadata space of the thin pool, ratio 0-1",
                f / 100.0,
            );
        }
    }

    /// The guard: refuse when either free space is under its minimum, or
    /// cannot be read (an unreadable figure must not skip the guard).
    pub fn check(&self, g: &Guard) -> Result<()> {
        let name = format!("{}/{}", self.vg, self.pool);
        for (what, free, min) in [
            ("data", self.data_free(), g.min_free_pct),
            ("metadata", self.metadata_free(), g.min_metadata_free_pct),
        ] {
            match free {
                None => {
                    return Err(Exit::refused(format!(
                        "cannot read the {what} usage of thin pool {name} (lvs reported none): refusing, the free-space guard cannot be checked"
                    )));
                }
                Some(f) if f < min => {
                    return Err(Exit::refused(format!(
                        "thin pool {name} has {f:.1}% {what} space free, under the {min}% minimum: refusing (prune snapshots or grow the pool)"
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

fn check_guard(g: &Guard) -> Result<()> {
    for (flag, v) in [
        ("--min-free-pct", g.min_free_pct),
        ("--min-metadata-free-pct", g.min_metadata_free_pct),
    ] {
        if !(0.0..=100.0).contains(&v) {
            return Err(Exit::usage(format!(
                "{flag} {v}: expected a percentage from 0 to 100"
            )));
        }
    }
    Ok(())
}

fn check_target(t: &Target) -> Result<()> {
    for (flag, v) in [("--vg", &t.vg), ("--pool", &t.pool)] {
        if !names::safe_lvm_name(v) {
            return Err(Exit::usage(format!(
                "{flag} {:?}: expected an LVM name (letters, digits, + _ . -, not starting with -)",
                backup_core::log::escape_str(v)
            )));
        }
    }
    Ok(())
}

/// Run one command; the metrics file is written whatever happens.
pub fn run(cli: Cli) -> Result<ExitCode> {
    cli.common.init_logging();
    let mut m = Metrics::new();
    let now = match &cli.now {
        Some(s) => parse_now(s),
        None => Ok(Local::now()),
    };
    let res = now.and_then(|now| {
        check_target(&cli.target)?;
        let ctx = Ctx {
            vg: cli.target.vg.clone(),
            pool: cli.target.pool.clone(),
            lvm: Lvm::new(&cli.target.vg),
            kubectl: Kubectl::new(&cli.target.kubectl),
            now,
            state_dir: cli.state_dir.clone(),
        };
        dispatch(&ctx, &cli.cmd, &mut m)
    });
    let code = match &res {
        Ok(c) => *c,
        Err(e) => code_of(e),
    };
    let t = match &cli.now {
        Some(s) => parse_now(s).unwrap_or_else(|_| Local::now()),
        None => Local::now(),
    }
    .timestamp() as f64;
    match &cli.cmd {
        Command::Create(a) => {
            gauge(
                &mut m,
                "lvm_snapshot_last_run_timestamp",
                "When the last snapshot run ended, unix seconds",
                t,
            );
            gauge(
                &mut m,
                "lvm_snapshot_last_status",
                "Last snapshot run: 0 ok, 1 some snapshots failed, 2 aborted, refused or all failed",
                status_value(code),
            );
            if a.dry_run {
                gauge(
                    &mut m,
                    "lvm_snapshot_dry_run",
                    "1 when this run changed nothing",
                    1.0,
                );
            }
        }
        Command::Prune(a) => {
            gauge(
                &mut m,
                "lvm_snapshot_prune_last_run_timestamp",
                "When the last prune run ended, unix seconds",
                t,
            );
            gauge(
                &mut m,
                "lvm_snapshot_prune_last_status",
                "Last prune run: 0 ok, 1 some removals failed, 2 aborted or refused",
                status_value(code),
            );
            if a.dry_run {
                gauge(
                    &mut m,
                    "lvm_snapshot_dry_run",
                    "1 when this run changed nothing",
                    1.0,
                );
            }
        }
        Command::Restore(_) => {
            gauge(
                &mut m,
                "lvm_snapshot_restore_last_run_timestamp",
                "When the last restore ended, unix seconds",
                t,
            );
            gauge(
                &mut m,
                "lvm_snapshot_restore_last_status",
                "Last restore: 0 done, 2 refused, failed or rolled back",
                status_value(code),
            );
        }
        Command::List(_) | Command::Pool(_) => {}
    }
    gauge(
        &mut m,
        "lvm_snapshot_exit_code",
        "Exit code of this run (see lvm-snap --help)",
        f64::from(code.code()),
    );
    cli.common.write_metrics(&m);
    res
}

/// For a command line clap rejects (exit 2): write the metrics file named
/// by `--metrics-file` or `METRICS_FILE`, if any, so a unit run with a bad
/// setting is reported like any failed run.
pub fn write_usage_metrics(args: &[std::ffi::OsString]) {
    let mut path = std::env::var_os("METRICS_FILE").filter(|v| !v.is_empty());
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--metrics-file" {
            path = it.next().cloned();
        } else if let Some(p) = a.strip_prefix("--metrics-file=") {
            path = Some(p.into());
        }
    }
    let Some(path) = path else { return };
    let mut m = Metrics::new();
    let now = Local::now().timestamp() as f64;
    let sub = args
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy())
        .find(|a| ["create", "list", "prune", "pool", "restore"].contains(&a.as_ref()));
    let prefix = match sub.as_deref() {
        Some("create") => Some("lvm_snapshot"),
        Some("prune") => Some("lvm_snapshot_prune"),
        Some("restore") => Some("lvm_snapshot_restore"),
        _ => None,
    };
    if let Some(p) = prefix {
        gauge(
            &mut m,
            &format!("{p}_last_run_timestamp"),
            "When the last run ended, unix seconds",
            now,
        );
        gauge(
            &mut m,
            &format!("{p}_last_status"),
            "Last run: 0 ok, 1 partial, 2 aborted, refused or failed",
            2.0,
        );
    }
    gauge(
        &mut m,
        "lvm_snapshot_exit_code",
        "Exit code of this run (see lvm-snap --help)",
        f64::from(ExitCode::Usage.code()),
    );
    if let Err(e) = m.write_to(std::path::Path::new(&path)) {
        backup_core::error!("cannot write metrics file: {e}");
    }
}

fn dispatch(ctx: &Ctx, cmd: &Command, m: &mut Metrics) -> Result<ExitCode> {
    match cmd {
        Command::Create(a) => {
            check_guard(&a.guard)?;
            // A volume a cut-short restore left under its pre-restore name
            // is not an origin and gets no snapshot: say so every night.
            let interrupted = restore::interrupted(&ctx.state_dir);
            if let Some(msg) = &interrupted {
                backup_core::warn!("{msg}");
            }
            gauge(
                m,
                "lvm_snapshot_restore_interrupted",
                "1 while a restore cut short awaits `lvm-snap restore --recover`",
                if interrupted.is_some() { 1.0 } else { 0.0 },
            );
            create::create(ctx, a, m)
        }
        Command::List(a) => list(ctx, a, m),
        Command::Prune(a) => prune_cmd(ctx, a, m),
        Command::Pool(a) => {
            check_guard(&a.guard)?;
            pool_cmd(ctx, a, m)
        }
        Command::Restore(a) => restore::restore(ctx, a, m),
    }
}

#[derive(Debug, serde::Serialize)]
struct ListRow<'a> {
    name: &'a str,
    origin: Option<&'a str>,
    kind: &'static str,
    lv_origin: &'a str,
    tagged: bool,
    age_seconds: Option<i64>,
    size_bytes: u64,
    data_percent: Option<f64>,
    active: bool,
    lv_path: &'a str,
}

fn list(ctx: &Ctx, a: &ListArgs, m: &mut Metrics) -> Result<ExitCode> {
    let lvs = ctx.report()?;
    if let Ok(p) = PoolStatus::from_report(&lvs, &ctx.vg, &ctx.pool) {
        p.record(m);
    }
    let now = ctx.now.timestamp();
    let mut rows: Vec<ListRow> = lvs
        .iter()
        .filter(|l| l.pool == ctx.pool)
        .filter_map(|l| {
            let kind = names::classify(&l.name);
            let origin = kind.origin()?;
            let origin: &str = &l.name[..origin.len()];
            Some(ListRow {
                name: &l.name,
                origin: Some(origin),
                kind: kind.label(),
                lv_origin: &l.origin,
                tagged: l.tagged(),
                age_seconds: kind
                    .stamp()
                    .and_then(|s| names::parse_stamp(s, &Local))
                    .map(|t| now - t),
                size_bytes: l.size,
                data_percent: l.data_percent,
                active: l.active,
                lv_path: &l.path,
            })
        })
        .collect();
    rows.sort_by(|a, b| (a.origin, a.name).cmp(&(b.origin, b.name)));
    if a.json {
        backup_core::outln!("{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(ExitCode::Ok);
    }
    if rows.is_empty() {
        backup_core::outln!("(no snapshots found)")?;
        return Ok(ExitCode::Ok);
    }
    let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(8).max(8);
    let wo = rows
        .iter()
        .map(|r| r.origin.map_or(0, str::len))
        .max()
        .unwrap_or(6)
        .max(6);
    backup_core::outln!(
        "{:wo$}  {:w$}  {:15}  {:>7}  {:>6}",
        "ORIGIN",
        "SNAPSHOT",
        "KIND",
        "AGE",
        "DATA%"
    )?;
    for r in &rows {
        backup_core::outln!(
            "{:wo$}  {:w$}  {:15}  {:>7}  {:>6}",
            r.origin.unwrap_or("-"),
            r.name,
            if r.tagged {
                r.kind.to_string()
            } else {
                format!("{} (foreign)", r.kind)
            },
            r.age_seconds
                .map_or_else(|| "unknown".to_string(), names::age_text),
            r.data_percent
                .map_or_else(|| "-".to_string(), |d| format!("{d:.2}")),
        )?;
    }
    Ok(ExitCode::Ok)
}

fn pool_cmd(ctx: &Ctx, a: &PoolArgs, m: &mut Metrics) -> Result<ExitCode> {
    let lvs = ctx.report()?;
    let p = PoolStatus::from_report(&lvs, &ctx.vg, &ctx.pool)?;
    p.record(m);
    let verdict = p.check(&a.guard);
    if a.json {
        let v = serde_json::json!({
            "vg": p.vg, "pool": p.pool, "size_bytes": p.size_bytes,
            "data_percent": p.data_percent, "metadata_percent": p.metadata_percent,
            "data_free_pct": p.data_free(), "metadata_free_pct": p.metadata_free(),
            "min_free_pct": a.guard.min_free_pct,
            "min_metadata_free_pct": a.guard.min_metadata_free_pct,
            "ok": verdict.is_ok(),
        });
        backup_core::out::ignore_closed(backup_core::outln!(
            "{}",
            serde_json::to_string_pretty(&v)?
        ))?;
    } else {
        let f = |v: Option<f64>| v.map_or_else(|| "unknown".to_string(), |v| format!("{v:.2}%"));
        backup_core::out::ignore_closed(backup_core::outln!(
            "thin pool {}/{}: data {} used ({} free, minimum {}%), metadata {} used ({} free, minimum {}%)",
            p.vg,
            p.pool,
            f(p.data_percent),
            f(p.data_free()),
            a.guard.min_free_pct,
            f(p.metadata_percent),
            f(p.metadata_free()),
            a.guard.min_metadata_free_pct
        ))?;
    }
    verdict.map(|()| ExitCode::Ok)
}

fn prune_cmd(ctx: &Ctx, a: &PruneArgs, m: &mut Metrics) -> Result<ExitCode> {
    let policy = prune::Policy::days(a.keep_days, a.pre_restore_keep_days)
        .map_err(|e| Exit::usage(format!("--keep-days/--pre-restore-keep-days: {e}")))?;
    let _lock = if a.dry_run {
        None
    } else {
        Some(backup_core::lock::acquire(TOOL)?)
    };
    let lvs = ctx.report()?;
    let cands = prune::Candidate::from_report(&lvs, &ctx.pool, &Local);
    let decisions = prune::decide(&cands, &policy, ctx.now.timestamp());
    let (mut removed, mut failed) = (0usize, Vec::new());
    let mut results = Vec::new();
    for d in &decisions {
        let mut result = if d.keep { "kept" } else { "would remove" };
        if !d.keep && !a.dry_run {
            match ctx.lvm.remove(&d.name) {
                Ok(()) => {
                    removed += 1;
                    result = "removed";
                    backup_core::info!("removed {} ({})", d.name, d.reason);
                }
                Err(e) => {
                    // lvremove is not installed: no use trying the others.
                    if let Some(absent) = backup_core::exit::absent_in(&e) {
                        return Err(Exit::refused(absent));
                    }
                    result = "failed";
                    backup_core::warn!("{:#}", e);
                    failed.push(d.name.clone());
                }
            }
        }
        results.push(result);
    }
    if a.json {
        let v: Vec<serde_json::Value> = decisions
            .iter()
            .zip(&results)
            .map(|(d, r)| {
                let mut v = serde_json::to_value(d).unwrap_or_default();
                v["result"] = serde_json::Value::from(*r);
                v
            })
            .collect();
        backup_core::out::ignore_closed(backup_core::outln!(
            "{}",
            serde_json::to_string_pretty(&v)?
        ))?;
    } else {
        for (d, r) in decisions.iter().zip(&results) {
            backup_core::out::ignore_closed(backup_core::outln!(
                "{:12}  {}  ({})",
                if d.keep { "keep" } else { *r },
                d.name,
                d.reason
            ))?;
        }
    }
    gauge(
        m,
        "lvm_snapshot_pruned_total",
        "Snapshots removed by this prune run",
        removed as f64,
    );
    gauge(
        m,
        "lvm_snapshot_prune_failed",
        "Removals that failed in this prune run",
        failed.len() as f64,
    );
    if let Ok(lvs) = ctx.report()
        && let Ok(p) = PoolStatus::from_report(&lvs, &ctx.vg, &ctx.pool)
    {
        p.record(m);
    }
    let dropped = decisions.iter().filter(|d| !d.keep).count();
    backup_core::info!(
        "prune: {} candidates, {} to remove, {removed} removed, {} failed{}",
        decisions.len(),
        dropped,
        failed.len(),
        if a.dry_run { " (dry run)" } else { "" }
    );
    match ExitCode::from_items(removed, failed.len()) {
        ExitCode::Ok => Ok(ExitCode::Ok),
        code => Err(Exit::err(
            code,
            format!("could not remove: {}", failed.join(", ")),
        ))
        .context("prune"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn now_accepts_three_forms() {
        let t = parse_now("@1795748400").expect("unix");
        assert_eq!(t.timestamp(), 1_795_748_400);
        let t = parse_now("2026-11-27T03:00:00Z").expect("rfc3339");
        assert_eq!(t.timestamp(), 1_795_748_400);
        assert!(parse_now("2026-11-28 03:00").is_ok());
        let e = parse_now("tomorrow").expect_err("bad");
        assert_eq!(code_of(&e), ExitCode::Usage);
    }
}
