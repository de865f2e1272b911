//! `pvc-copy`: for every PVC origin LV, its newest own snapshot, mounted
//! read-only in a private mount namespace, copied with rsync into
//! `pvc-data/<week>/<ns>/<pvc>/` on the backup disk, hardlinked against the
//! newest earlier copy, swapped in only when complete.

pub mod copy;
pub mod mount;
pub mod plan;
pub mod preflight;
pub mod store;

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use backup_core::cli::{Common, parse_duration};
use backup_core::cmd::Cmd;
use backup_core::exit::{EXIT_CODE_HELP, Exit, ExitCode};
use backup_core::k8s::CacheError;
use backup_core::ledger::{Ledger, PathKind};
use backup_core::log::p;
use backup_core::metrics::Metrics;
use backup_core::root_guard::RootGuard;
use backup_core::{debug, error, info, warn};
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::copy::{Dest, SourceRecord};
use crate::plan::{Item, Selector, Verdict};

const LONG_ABOUT: &str = "\
Copy the newest snapshot of every PVC, read-only, into weekly hardlinked versions on the backup disk.

For every PVC origin LV (vm-<id>-pvc-<uuid>) in the volume group: its newest
snapshot named <lv>_snap_YYYYMMDD_HHMM whose LVM origin is that LV; the PV
whose CSI volume handle names the LV gives <ns>/<pvc> (kubectl get pv, else
the mapping cache). The snapshot is mounted read-only (ext4 ro,noload; xfs
ro,nouuid,norecovery; always nosuid,nodev,noexec) in a private mount
namespace, LUKS snapshots opened read-only as pvc-copy-<hash>, and copied with
rsync -aHAX --numeric-ids --delete --modify-window=-1 into
BACKUP_ROOT/pvc-data/<ISO week>/<ns>/<pvc>/, hardlinking unchanged files
against the newest earlier copy of that PVC. The copy is built in
.<pvc>.partial beside it and exchanged atomically with the old one when
complete; .<pvc>.source records the snapshot it came from.

The backup root must carry the identity marker `offsite-sync init --local`
writes once on a new disk (exit 5 without it, dry runs too); before each PVC
is started, swapped in and ledgered it must still be that disk, else the PVC
fails and nothing is committed on what is left at the path.

Failures are counted and listed, never skipped silently, and the run goes on
with the other PVCs (exit 3): no snapshot, a newest snapshot older than
--max-snapshot-age, an LV no PV names, a mount, LUKS or rsync failure. A PVC
claimed by two LVs (a Released PV next to its replacement) never shares a
destination: the Bound PV's copy is <pvc>, the other's <pvc>@<pv-name>.

The namespaces lvm-snap never snapshots (EXCLUDED_NAMESPACES, default
dbaas,monitoring) are read here too: their PVCs are skipped, never counted
as failed for lack of a snapshot.

The mapping cache is the same file, in the same format (kubectl's JSON as
printed), that lvm-snap keeps: MAPPING_CACHE, one key and one default
(/var/lib/backup-pipeline/lv-pvc-mapping.json) for both.

Settings come from flags, the environment, then the configuration file
/etc/default/backup-pipeline (BACKUP_PIPELINE_CONFIG); --show-config prints
each with its source.

After a run where every PVC was copied or deliberately skipped, the week is
marked complete and rotation keeps the newest --keep-weeks complete weeks
(old YYYY-WW names count as complete), with their sqlite-backup/<week>.
The ledger (BACKUP_ROOT/.changed-files) gets the paths this run added or
changed; on a new week that is every path of the new week.";

#[derive(Debug, Parser)]
#[command(
    name = "pvc-copy",
    version,
    about = "Copy the newest snapshot of every PVC, read-only, into weekly hardlinked versions on the backup disk",
    long_about = LONG_ABOUT,
    after_help = EXIT_CODE_HELP,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Option<Sub>,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Subcommand)]
pub enum Sub {
    /// Check the NFS exports (the fsid=0 outage check); exit 3 when one fails.
    #[command(after_help = EXIT_CODE_HELP)]
    Preflight(PreflightArgs),
    /// Print the week directory name a run now writes (e.g. 2026-W48).
    #[command(after_help = EXIT_CODE_HELP)]
    CurrentWeek {
        #[arg(long, hide = true, value_name = "RFC3339")]
        now: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct PreflightArgs {
    /// The exports file to check.
    #[arg(
        long,
        env = "PVC_COPY_EXPORTS",
        default_value = "/etc/exports",
        value_name = "FILE"
    )]
    pub exports: PathBuf,
    /// The NFS export root that must be exported (never with fsid=0).
    #[arg(long, env = "NFS_ROOT", default_value = "/srv/nfs", value_name = "DIR")]
    pub nfs_root: String,
    /// The systemd unit of the NFS server.
    #[arg(long, default_value = "nfs-server", value_name = "UNIT")]
    pub service: String,
    /// The systemctl program.
    #[arg(
        long,
        env = "PVC_COPY_SYSTEMCTL",
        default_value = "systemctl",
        value_name = "PROG"
    )]
    pub systemctl: String,
    /// The exportfs program.
    #[arg(
        long,
        env = "PVC_COPY_EXPORTFS",
        default_value = "exportfs",
        value_name = "PROG"
    )]
    pub exportfs: String,
    /// Print the checks as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The backup disk (must be a mount point unless --allow-unmounted-root, and
    /// carry its identity marker, written once by `offsite-sync init --local`).
    #[arg(
        long,
        env = "BACKUP_ROOT",
        default_value = "/mnt/backup",
        value_name = "DIR"
    )]
    pub backup_root: PathBuf,
    /// The volume group holding the PVC LVs and their snapshots.
    #[arg(long, env = "LVM_VG", default_value = "pve", value_name = "VG")]
    pub vg: String,
    /// Complete weeks to keep in pvc-data (rotation runs only after a fully successful run).
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=520))]
    pub keep_weeks: u32,
    /// Key file for LUKS-encrypted snapshots.
    #[arg(
        long,
        env = "PVC_COPY_LUKS_KEY",
        default_value = "/root/.luks-backup-key",
        value_name = "FILE"
    )]
    pub luks_key: PathBuf,
    /// Last good `kubectl get pv -o json`, used when kubectl fails; the
    /// file lvm-snap keeps too (same key, same default, same format).
    #[arg(
        long,
        env = "MAPPING_CACHE",
        default_value = backup_core::k8s::DEFAULT_MAPPING_CACHE,
        value_name = "FILE"
    )]
    pub mapping_cache: PathBuf,
    /// Namespaces lvm-snap never snapshots (the same key it reads): their
    /// PVCs are skipped here, never counted as failed (repeat, or comma-separated).
    #[arg(
        long = "exclude-namespace",
        env = "EXCLUDED_NAMESPACES",
        value_delimiter = ',',
        default_value = backup_core::k8s::DEFAULT_EXCLUDED_NAMESPACES,
        value_name = "NS"
    )]
    pub exclude_namespace: Vec<String>,
    /// Do not copy this PVC (NS/PVC, or NS/* for a whole namespace); counted
    /// as skipped. Repeat, or comma-separated.
    #[arg(long, env = "PVC_COPY_SKIP", value_delimiter = ',', value_name = "NS/PVC", value_parser = Selector::parse)]
    pub skip: Vec<Selector>,
    /// Copy only these PVCs (NS/PVC or NS/*). Repeatable. Disables rotation.
    #[arg(long, value_name = "NS/PVC", value_parser = Selector::parse)]
    pub only: Vec<Selector>,
    /// A newest snapshot older than this is a failure (e.g. 26h, 2d).
    #[arg(long, default_value = "26h", value_name = "DURATION", value_parser = parse_duration)]
    pub max_snapshot_age: Duration,
    /// Refuse to start (exit 5) with less free space than this on the backup disk.
    #[arg(long, default_value_t = 10, value_name = "PCT", value_parser = clap::value_parser!(u8).range(0..=99))]
    pub min_free_pct: u8,
    /// Print the plan (snapshot, destination, link-dest, rotation); change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the plan or the results as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Where LUKS mappings appear (`cryptsetup open` NAME -> DIR/NAME).
    #[arg(
        long,
        env = "PVC_COPY_MAPPER_DIR",
        default_value = "/dev/mapper",
        value_name = "DIR"
    )]
    pub mapper_dir: PathBuf,
    /// Timeout of one mount attempt (there is one retry).
    #[arg(long, default_value = "120s", value_name = "DURATION", value_parser = parse_duration)]
    pub mount_timeout: Duration,
    /// Pause before the mount retry.
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = parse_duration)]
    pub mount_retry_delay: Duration,
    /// Timeout of one PVC's rsync.
    #[arg(long, default_value = "30m", value_name = "DURATION", value_parser = parse_duration)]
    pub rsync_timeout: Duration,
    /// Timeout of lvs, kubectl, blkid, cryptsetup and lvchange calls.
    #[arg(long, default_value = "120s", value_name = "DURATION", value_parser = parse_duration)]
    pub command_timeout: Duration,
    /// Scratch directory for mount points and rsync output
    /// [default: $RUNTIME_DIRECTORY, else the system temp dir].
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// The ledger of changed paths [default: BACKUP_ROOT/.changed-files].
    #[arg(long, value_name = "FILE")]
    pub ledger: Option<PathBuf>,
    /// Accept a backup root that is not a mount point (a sandbox or test).
    #[arg(long, env = "ALLOW_UNMOUNTED_ROOT", value_parser = clap::builder::FalseyValueParser::new())]
    pub allow_unmounted_root: bool,
    /// Pretend the time is this (RFC 3339), for tests of weeks and ages.
    #[arg(long, hide = true, value_name = "RFC3339")]
    pub now: Option<String>,
}

fn parse_now(s: Option<&str>) -> anyhow::Result<DateTime<Utc>> {
    match s {
        None => Ok(Utc::now()),
        Some(s) => DateTime::parse_from_rfc3339(s)
            .map(|d| d.with_timezone(&Utc))
            .map_err(|e| Exit::usage(format!("--now {s:?}: expected an RFC 3339 time: {e}"))),
    }
}

/// The week a run at `now` writes (host local date; ISO week).
pub fn current_week(now: DateTime<Utc>) -> String {
    backup_core::weeks::week_key(now.with_timezone(&chrono::Local).date_naive())
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    cli.common.init_logging();
    match &cli.cmd {
        Some(Sub::Preflight(a)) => run_preflight(a, &cli.common),
        Some(Sub::CurrentWeek { now }) => {
            backup_core::outln!("{}", current_week(parse_now(now.as_deref())?))?;
            Ok(ExitCode::Ok)
        }
        None => {
            let started = Instant::now();
            let mut report = Report::default();
            let res = copy_run(&cli.run, &mut report);
            if !cli.run.dry_run {
                let code = match &res {
                    Ok(c) => *c,
                    Err(e) => backup_core::exit::code_of(e),
                };
                let m = report.metrics(started.elapsed(), code);
                cli.common.write_metrics(&m);
            }
            if cli.run.json {
                backup_core::out::ignore_closed(backup_core::outln!(
                    "{}",
                    serde_json::to_string_pretty(&report).context("encoding the report")?
                ))?;
            }
            res
        }
    }
}

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
    fn count(&self, r: &str) -> usize {
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

fn free_pct(path: &Path) -> anyhow::Result<f64> {
    let s = nix::sys::statvfs::statvfs(path).with_context(|| format!("statvfs {}", p(path)))?;
    let blocks = s.blocks() as f64;
    if blocks == 0.0 {
        return Ok(100.0);
    }
    Ok(s.blocks_available() as f64 * 100.0 / blocks)
}

fn copy_run(a: &RunArgs, report: &mut Report) -> anyhow::Result<ExitCode> {
    let mut kubectl_absent = None;
    let code = copy_run_inner(a, report, &mut kubectl_absent)?;
    // Copied with the mapping cache (as when the API server is down), but
    // a host without kubectl is misconfigured: exit 5 says so.
    match kubectl_absent {
        Some(absent) => Err(Exit::refused(format!(
            "{absent}: PVC names came from the mapping cache{}",
            if code == ExitCode::Ok {
                ""
            } else {
                "; some PVCs failed (listed above)"
            }
        ))),
        None => Ok(code),
    }
}

fn copy_run_inner(
    a: &RunArgs,
    report: &mut Report,
    kubectl_absent: &mut Option<String>,
) -> anyhow::Result<ExitCode> {
    report.dry_run = a.dry_run;
    let now = parse_now(a.now.as_deref())?;
    let week = current_week(now);
    report.week = week.clone();
    let root = &a.backup_root;
    if !root.is_dir() {
        return Err(Exit::refused(format!(
            "backup root {} is not a directory (is the backup disk mounted?)",
            p(root)
        )));
    }
    if !a.allow_unmounted_root && !mount::is_mountpoint(root) {
        return Err(Exit::refused(format!(
            "backup root {} is not a mount point; refusing to fill the disk under it (--allow-unmounted-root to override)",
            p(root)
        )));
    }
    // Contract 13, dry runs included (a plan read from a bare directory
    // misleads): the root is the initialised backup disk. Pinned, and
    // re-checked before each result is committed (contract 12).
    let guard = RootGuard::require(root)?;

    let _lock = if a.dry_run {
        None
    } else {
        let l = backup_core::lock::acquire("pvc-copy")?;
        // First thing after the lock, before any thread exists: every
        // mount of this run lives and dies in a private namespace.
        mount::enter_private_namespace().map_err(|e| Exit::refused(format!("{e:#}")))?;
        Some(l)
    };

    let free = free_pct(root)?;
    if free < f64::from(a.min_free_pct) {
        return Err(Exit::refused(format!(
            "only {free:.1}% free on {} (minimum {}%); refusing to start",
            p(root),
            a.min_free_pct
        )));
    }

    let ledger = Ledger::new(
        a.ledger
            .clone()
            .unwrap_or_else(|| root.join(".changed-files")),
        PathKind::Relative,
    );
    if !a.dry_run {
        for name in mount::close_stale_mappers(&a.mapper_dir, a.command_timeout) {
            warn!("stale LUKS mapping {name} could not be closed");
        }
        store::clean_leftovers(root, &ledger)
            .context("removing leftovers of an interrupted run")?;
    }

    let lvs = list_lvs(a)?;
    let pvs = pv_list(a, root, kubectl_absent)?;
    let mut skips = a.skip.clone();
    for ns in a.exclude_namespace.iter().filter(|n| !n.is_empty()) {
        skips.push(
            Selector::parse(&format!("{ns}/*")).map_err(|e| {
                Exit::usage(format!("--exclude-namespace / EXCLUDED_NAMESPACES: {e}"))
            })?,
        );
    }
    let items = plan::plan(
        &lvs,
        pvs.as_deref(),
        &plan::Policy {
            now,
            max_age: chrono::Duration::from_std(a.max_snapshot_age)
                .unwrap_or(chrono::Duration::MAX),
            skip: &skips,
            only: &a.only,
        },
    );
    if items.is_empty() {
        return Err(Exit::refused(format!(
            "no PVC LVs (vm-<id>-pvc-…) in volume group {}: wrong VG, or LVM not answering",
            a.vg
        )));
    }
    for sel in &a.only {
        let hit = items.iter().any(|i| {
            i.pvc
                .as_deref()
                .and_then(|p| p.split_once('/'))
                .is_some_and(|(ns, n)| sel.matches(ns, n))
        });
        if !hit {
            return Err(Exit::usage(format!(
                "--only {sel}: no PVC of that name in volume group {}",
                a.vg
            )));
        }
    }
    for (pvc, lvs) in plan::duplicates(&items) {
        warn!(
            "{pvc} is claimed by several LVs ({}): the Bound PV keeps {pvc}, the others are copied to <pvc>@<pv-name>",
            lvs.join(", ")
        );
    }

    // Commands every copy needs: absent, the run stops here (exit 5)
    // rather than failing each PVC in turn after mounting it.
    if !a.dry_run && items.iter().any(|i| matches!(i.verdict, Verdict::Copy)) {
        for prog in ["blkid", "mount", "umount", "rsync"] {
            backup_core::cmd::require(prog).map_err(|e| Exit::refused(e.to_string()))?;
        }
    }

    let work_root = a
        .work_dir
        .clone()
        .or_else(|| std::env::var_os("RUNTIME_DIRECTORY").map(PathBuf::from))
        .unwrap_or_else(std::env::temp_dir);
    let work = if a.dry_run {
        None
    } else {
        Some(
            tempfile::Builder::new()
                .prefix("pvc-copy.")
                .tempdir_in(&work_root)
                .with_context(|| format!("creating a scratch directory in {}", p(&work_root)))?,
        )
    };

    for it in &items {
        let mut r = ItemReport {
            lv: it.lv.clone(),
            pvc: it.pvc.clone(),
            snapshot: it.snapshot.as_ref().map(|s| s.name.clone()),
            dest: dest_rel(&week, it),
            link_dest: None,
            result: String::new(),
            reason: None,
            bytes: 0,
            transferred_bytes: 0,
            changed_files: 0,
        };
        match &it.verdict {
            Verdict::Skip(why) => {
                info!("{}: skipped ({why})", label(it));
                r.result = "skipped".into();
                r.reason = Some(why.clone());
            }
            Verdict::Fail(why) => {
                error!("{}: {why}", label(it));
                r.result = "failed".into();
                r.reason = Some(why.clone());
            }
            Verdict::Copy => {
                let (ns, name) = (
                    it.dest_ns.clone().unwrap_or_default(),
                    it.dest_name.clone().unwrap_or_default(),
                );
                let link = store::newest_copy(root, &ns, &name);
                r.link_dest = link
                    .as_ref()
                    .map(|l| l.strip_prefix(root).unwrap_or(l).display().to_string());
                match &work {
                    None => {
                        info!(
                            "would copy {} -> {} (link-dest {})",
                            r.snapshot.as_deref().unwrap_or(""),
                            r.dest.as_deref().unwrap_or(""),
                            r.link_dest.as_deref().unwrap_or("none")
                        );
                        r.result = "planned".into();
                    }
                    Some(work) => {
                        match copy_one(a, &guard, &week, it, link.as_deref(), work.path(), &ledger)
                        {
                            Ok(done) => {
                                info!(
                                    "{}: copied {} ({} bytes, {} written, {} files changed)",
                                    label(it),
                                    r.snapshot.as_deref().unwrap_or(""),
                                    done.total_size,
                                    done.transferred,
                                    done.changed
                                );
                                r.result = "ok".into();
                                r.bytes = done.total_size;
                                r.transferred_bytes = done.transferred;
                                r.changed_files = done.changed;
                                report.ledger_entries += done.changed;
                            }
                            Err(Fail { why, absent: true }) => {
                                // cryptsetup or lvchange is not installed.
                                error!("{}: {why}", label(it));
                                return Err(Exit::refused(why));
                            }
                            Err(Fail { why, .. }) => {
                                error!("{}: {why}", label(it));
                                r.result = "failed".into();
                                r.reason = Some(why);
                            }
                        }
                    }
                }
            }
        }
        report.items.push(r);
    }
    drop(work);

    let (ok, failed, skipped) = (
        report.count("ok"),
        report.count("failed"),
        report.count("skipped"),
    );
    if a.dry_run {
        info!(
            "dry run: {} to copy, {failed} failing, {skipped} skipped",
            report.count("planned")
        );
    } else {
        info!("PVC copy: {ok} OK, {failed} failed, {skipped} skipped");
    }
    if failed > 0 {
        let list: Vec<String> = report
            .items
            .iter()
            .filter(|i| i.result == "failed")
            .map(|i| i.pvc.clone().unwrap_or_else(|| i.lv.clone()))
            .collect();
        error!("failed: {}; rotation not run", list.join(", "));
        return Ok(ExitCode::from_items(ok, failed));
    }

    if !a.only.is_empty() {
        info!("--only given: the week is not marked complete and rotation is not run");
        return Ok(ExitCode::Ok);
    }
    let week_dir = store::pvc_data(root).join(&week);
    if !a.dry_run {
        guard
            .check()
            .map_err(|e| Exit::err(ExitCode::Failed, format!("{e}; rotation not run")))?;
        std::fs::create_dir_all(&week_dir).with_context(|| format!("creating {}", p(&week_dir)))?;
        let marker = serde_json::json!({
            "completed_at": Utc::now().to_rfc3339(),
            "copied": ok,
            "skipped": skipped,
        });
        backup_core::fsutil::write_atomic(
            &week_dir.join(store::COMPLETE_MARKER),
            marker.to_string().as_bytes(),
        )
        .with_context(|| format!("marking {} complete", p(&week_dir)))?;
    }
    let plan = store::plan_rotation(root, a.keep_weeks as usize, &week).map_err(Exit::usage)?;
    for d in plan.decisions.iter().filter(|d| !d.keep) {
        info!(
            "{} pvc-data/{}: {}",
            if a.dry_run {
                "would delete"
            } else {
                "deleting"
            },
            d.name,
            d.reason
        );
    }
    let follow = store::follower_drops(root, store::SQLITE_BACKUP, &plan);
    for w in &follow {
        info!(
            "{} {}/{w}: its pvc-data week is rotated away",
            if a.dry_run {
                "would delete"
            } else {
                "deleting"
            },
            store::SQLITE_BACKUP
        );
    }
    if !a.dry_run {
        report.rotated = store::apply_rotation(root, &plan).context("rotating weeks")?;
        store::apply_follower(root, store::SQLITE_BACKUP, &follow)
            .context("rotating sqlite-backup weeks")?;
    }
    report.rotation = Some(plan);
    Ok(ExitCode::Ok)
}

fn label(it: &Item) -> String {
    match &it.pvc {
        Some(pvc) => format!("{pvc} ({})", it.lv),
        None => it.lv.clone(),
    }
}

fn dest_rel(week: &str, it: &Item) -> Option<String> {
    Some(format!(
        "pvc-data/{week}/{}/{}",
        it.dest_ns.as_deref()?,
        it.dest_name.as_deref()?
    ))
}

fn list_lvs(a: &RunArgs) -> anyhow::Result<Vec<plan::Lv>> {
    use backup_core::lvm::{LvsError, lvs_rows};
    let rows = lvs_rows(&a.vg, a.command_timeout).map_err(|e| match e {
        LvsError::Run(e) if e.is_absent() => Exit::refused(e.to_string()),
        LvsError::Run(e) => Exit::err(ExitCode::Failed, format!("cannot list LVs: {e}")),
        LvsError::Report(e) => Exit::err(ExitCode::Failed, e),
    })?;
    Ok(rows)
}

/// The PV list from kubectl (saved as the new mapping cache), else from
/// the cache; `None` when neither is available.
/// `kubectl_absent` is set when kubectl is not installed.
fn pv_list(
    a: &RunArgs,
    root: &Path,
    kubectl_absent: &mut Option<String>,
) -> anyhow::Result<Option<Vec<plan::Pv>>> {
    let _ = root;
    let cache = a.mapping_cache.clone();
    let live = Cmd::new("kubectl")
        .args(["get", "pv", "-o", "json"])
        .timeout(a.command_timeout)
        .run()
        .map_err(|e| {
            if e.is_absent() {
                *kubectl_absent = Some(e.to_string());
            }
            e.to_string()
        })
        .and_then(|o| plan::parse_pvs(&o.stdout).map(|pvs| (pvs, o.stdout)));
    match live {
        Ok((pvs, raw)) => {
            if !a.dry_run {
                match backup_core::k8s::save_mapping(&cache, &raw) {
                    Ok(true) => {}
                    Ok(false) => warn!(
                        "cannot update the mapping cache {}: its directory does not exist",
                        p(&cache)
                    ),
                    Err(e) => warn!("cannot update the mapping cache {}: {e}", p(&cache)),
                }
            }
            Ok(Some(pvs))
        }
        Err(e) => match backup_core::k8s::load_mapping(&cache) {
            Ok(cached) => {
                let age = cached
                    .written
                    .and_then(|t| t.elapsed().ok())
                    .map(|d| format!("{}h old", d.as_secs() / 3600))
                    .unwrap_or_else(|| "of unknown age".into());
                warn!(
                    "kubectl failed ({e}); using the mapping cache {} ({age})",
                    p(&cache)
                );
                Ok(Some(cached.pvs.into_iter().map(plan::Pv::from).collect()))
            }
            Err(CacheError::Invalid(ce)) => Err(Exit::err(
                ExitCode::Failed,
                format!("mapping cache {}: {ce}", p(&cache)),
            )),
            Err(ce) => {
                error!(
                    "kubectl failed ({e}) and there is no mapping cache ({}: {ce}): no PVC name can be resolved",
                    p(&cache)
                );
                Ok(None)
            }
        },
    }
}

struct Done {
    total_size: u64,
    transferred: u64,
    changed: usize,
}

/// Activated for the copy when lvm-snap left it inactive (activation skip);
/// deactivated again afterwards.
struct Activated<'a> {
    vg: &'a str,
    lv: &'a str,
    timeout: Duration,
}

impl Drop for Activated<'_> {
    fn drop(&mut self) {
        if let Err(e) = Cmd::new("lvchange")
            .args(["-an", "--", &format!("{}/{}", self.vg, self.lv)])
            .timeout(self.timeout)
            .run()
        {
            warn!("cannot deactivate {}/{}: {e}", self.vg, self.lv);
        }
    }
}

/// Why one PVC was not copied; `absent` when a command it needs is not
/// installed, which ends the run with exit 5.
struct Fail {
    why: String,
    absent: bool,
}

impl From<String> for Fail {
    fn from(why: String) -> Self {
        Fail { why, absent: false }
    }
}

impl From<&str> for Fail {
    fn from(why: &str) -> Self {
        Fail::from(why.to_string())
    }
}

impl From<backup_core::cmd::CmdError> for Fail {
    fn from(e: backup_core::cmd::CmdError) -> Self {
        Fail {
            absent: e.is_absent(),
            why: e.to_string(),
        }
    }
}

fn copy_one(
    a: &RunArgs,
    guard: &RootGuard,
    week: &str,
    it: &Item,
    link: Option<&Path>,
    work: &Path,
    ledger: &Ledger,
) -> Result<Done, Fail> {
    let root = guard.dir();
    // Nothing is created under a root that is no longer the backup disk.
    guard.check()?;
    let snap = it.snapshot.as_ref().ok_or("no snapshot")?;
    let (ns, name) = (
        it.dest_ns.as_deref().ok_or("no namespace")?,
        it.dest_name.as_deref().ok_or("no PVC name")?,
    );
    let dest = Dest {
        ns_dir: store::pvc_data(root).join(week).join(ns),
        name: name.to_string(),
    };
    std::fs::create_dir_all(&dest.ns_dir)
        .map_err(|e| format!("cannot create {}: {e}", p(&dest.ns_dir)))?;
    copy::remove_tree(&dest.partial())
        .map_err(|e| format!("cannot remove {}: {e}", p(&dest.partial())))?;

    if !snap.tagged {
        info!(
            "{}: snapshot {} lacks lvm-snap's tag {} (made by the old script?); copied all the same",
            label(it),
            snap.name,
            plan::SNAP_TAG
        );
    }
    let dev = PathBuf::from(&snap.path);
    let _activated = if snap.path.is_empty() || !dev.exists() {
        backup_core::cmd::require("lvchange")?;
        Cmd::new("lvchange")
            .args(["-ay", "-K", "--", &format!("{}/{}", a.vg, snap.name)])
            .timeout(a.command_timeout)
            .run()
            .map_err(|e| {
                format!(
                    "snapshot {} is not active and cannot be activated: {e}",
                    snap.name
                )
            })?;
        Some(Activated {
            vg: &a.vg,
            lv: &snap.name,
            timeout: a.command_timeout,
        })
    } else {
        None
    };
    let dev = if snap.path.is_empty() {
        PathBuf::from(format!("/dev/{}/{}", a.vg, snap.name))
    } else {
        dev
    };
    let ty = mount::blkid_type(&dev, a.command_timeout)?;
    let (luks, mount_dev, fstype) = if ty == "crypto_LUKS" {
        backup_core::cmd::require("cryptsetup")?;
        let l = mount::Luks::open(
            &dev,
            &snap.name,
            &a.luks_key,
            &a.mapper_dir,
            a.command_timeout,
        )?;
        let inner = mount::blkid_type(&l.device, a.command_timeout)?;
        let d = l.device.clone();
        (Some(l), d, inner)
    } else {
        (None, dev.clone(), ty)
    };
    let mnt = work.join("mnt");
    std::fs::create_dir_all(&mnt).map_err(|e| format!("cannot create {}: {e}", p(&mnt)))?;
    let mounted = mount::mount_ro(
        &mount_dev,
        &fstype,
        &mnt,
        a.mount_timeout,
        a.mount_retry_delay,
    )?;

    std::fs::create_dir(dest.partial())
        .map_err(|e| format!("cannot create {}: {e}", p(&dest.partial())))?;
    let args = copy::rsync_args(mounted.dir(), &dest.partial(), link);
    let out_file = work.join("rsync.out");
    debug!("rsync {:?}", args);
    let run = copy::run_rsync(&args, &out_file, a.rsync_timeout);
    mounted.unmount();
    drop(luks);
    let fail = |why: String| {
        if let Err(e) = copy::remove_tree(&dest.partial()) {
            warn!(
                "cannot remove the unfinished copy {}: {e}",
                p(&dest.partial())
            );
        }
        Err(Fail::from(why))
    };
    let run = match run {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot run rsync: {e}")),
    };
    let tail = |s: &str| {
        let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
        backup_core::log::escape_str(&lines[lines.len().saturating_sub(3)..].join(" | "))
    };
    if run.timed_out {
        return fail(format!(
            "rsync timed out after {}s; the previous copy is kept",
            a.rsync_timeout.as_secs()
        ));
    }
    match run.code {
        Some(0) => {}
        Some(24) => warn!(
            "{}: files vanished during the copy of a frozen snapshot",
            label(it)
        ),
        Some(c) => {
            return fail(format!(
                "rsync exited {c} ({}); the previous copy is kept: {}",
                backup_core::cmd::RsyncResult::describe(c),
                tail(&run.stderr)
            ));
        }
        None => {
            return fail(format!(
                "rsync was killed by a signal: {}",
                tail(&run.stderr)
            ));
        }
    }
    // The copy took long; the disk it went to must still be the one
    // checked at the start before the copy is swapped in and ledgered.
    if let Err(e) = guard.check() {
        return fail(e);
    }
    let out = match std::fs::read(&out_file) {
        Ok(o) => o,
        Err(e) => return fail(format!("cannot read rsync's output: {e}")),
    };
    let mut items = copy::parse_itemized(&out);
    items.confirm_unchanged(&dest.partial(), link);
    // Before the swap: a same-week link-dest is the copy being replaced.
    let (links_changed, links_same) = copy::split_symlinks(&items.symlinks, &dest.partial(), link);

    // Same-week link-dest: unchanged files are already in the ledger's
    // history under these very paths. A new week's paths are all new.
    let same_week = link.is_some_and(|l| l.starts_with(store::pvc_data(root).join(week)));
    let prefix = format!("pvc-data/{week}/{ns}/{name}/");
    let mut names: Vec<Vec<u8>> = vec![format!("pvc-data/{week}/{ns}/.{name}.source").into_bytes()];
    let none: &[Vec<u8>] = &[];
    let pick = items
        .changed
        .iter()
        .chain(&links_changed)
        .chain(if same_week {
            none
        } else {
            &items.unchanged[..]
        })
        .chain(if same_week { none } else { &links_same[..] });
    for n in pick {
        let mut full = prefix.as_bytes().to_vec();
        full.extend_from_slice(n);
        names.push(full);
    }
    let changed = names.len() - 1;

    // The entries wait beside the copy until they are in the ledger, so a
    // kill between the swap and the append loses none of them.
    use std::os::unix::fs::MetadataExt;
    let ino = match std::fs::metadata(dest.partial()) {
        Ok(m) => m.ino(),
        Err(e) => return fail(format!("cannot stat {}: {e}", p(&dest.partial()))),
    };
    if let Err(e) = copy::write_pending(&dest, ino, &names) {
        return fail(format!("cannot write {}: {e}", p(&dest.pending())));
    }
    if let Err(e) = guard.check() {
        let _ = std::fs::remove_file(dest.pending());
        return fail(e);
    }
    if let Err(e) = copy::swap_in(&dest.partial(), &dest.dir()) {
        let _ = std::fs::remove_file(dest.pending());
        return fail(format!("cannot put the copy in place: {e}"));
    }
    let rec = SourceRecord {
        snapshot: snap.name.clone(),
        origin: it.lv.clone(),
        pv: it.pv.clone().unwrap_or_default(),
        pvc: it.pvc.clone().unwrap_or_default(),
        snapshot_created: snap.created.to_rfc3339(),
        copied_at: Utc::now().to_rfc3339(),
        dir_inode: ino,
    };
    let recorded = copy::write_source(&dest, &rec);
    // The copy is in place on the disk with its entries beside it
    // (.pending): when the disk went away since, the next run ledgers
    // them there; nothing is appended to a ledger on a bare directory.
    guard.check().map_err(|e| {
        format!("{e}: the copy is in place but not yet ledgered (the next run on the disk does it)")
    })?;
    if let Err(e) = ledger.append(&names) {
        // The copy is good; make sure the offsite leg still picks it up.
        let reason = format!("pvc-copy could not append {} entries: {e}", names.len());
        ledger
            .mark_full_sync(&reason)
            .map_err(|e2| format!("copy in place, but neither the ledger ({e}) nor the full-sync flag ({e2}) could be written"))?;
        warn!("{reason}; asked for a full offsite sync instead");
    }
    if let Err(e) = std::fs::remove_file(dest.pending()) {
        warn!("cannot remove {}: {e}", p(&dest.pending()));
    }
    // The replaced copy, now at .<pvc>.partial: only garbage once the new
    // one is recorded, and the next run's leftover sweep retries it.
    if let Err(e) = copy::remove_tree(&dest.partial()) {
        warn!(
            "cannot remove the replaced copy {}: {e}; the next run removes it",
            p(&dest.partial())
        );
    }
    recorded.map_err(|e| format!("copy in place, but cannot record its source: {e}"))?;
    debug!(
        "{} ledger entries for {}",
        changed,
        backup_core::log::escape_bytes(Path::new(&prefix).as_os_str().as_bytes())
    );
    Ok(Done {
        total_size: items.total_size,
        transferred: items.transferred,
        changed,
    })
}

fn run_preflight(a: &PreflightArgs, common: &Common) -> anyhow::Result<ExitCode> {
    let checks = preflight::run_checks(&preflight::Config {
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
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent_and_help_lists_exit_codes() {
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("4  busy"), "{help}");
        let e = Cli::try_parse_from(["pvc-copy", "--keep-weeks", "0"]).expect_err("0 weeks");
        assert!(e.to_string().contains("keep-weeks"), "{e}");
        let e =
            Cli::try_parse_from(["pvc-copy", "--max-snapshot-age", "soon"]).expect_err("bad age");
        assert!(e.to_string().contains("invalid duration"), "{e}");
    }

    #[test]
    fn week_of_a_run_is_the_iso_week() {
        let t = DateTime::parse_from_rfc3339("2026-11-27T05:00:00Z").expect("time");
        assert_eq!(current_week(t.with_timezone(&Utc)), "2026-W48");
    }
}
