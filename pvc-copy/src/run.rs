//! The copy run (no subcommand): every PVC's newest snapshot copied into
//! this week's directory, then the week completed and rotated.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use backup_core::cli::Common;
use backup_core::cmd::Cmd;
use backup_core::exit::{Exit, ExitCode};
use backup_core::k8s::CacheError;
use backup_core::ledger::{Ledger, PathKind};
use backup_core::lock::RunLock;
use backup_core::log::p;
use backup_core::root_guard::RootGuard;
use backup_core::{error, info, warn};
use chrono::{DateTime, Utc};
use tempfile::TempDir;

use crate::cli::RunArgs;
use crate::current_week::{current_week, parse_now};
use crate::one::{Fail, copy_one};
use crate::plan::{self, Item, Selector, Verdict};
use crate::report::{ItemReport, Report};
use crate::{mount, store};

/// The copy run; its metrics (not on a dry run) and `--json` report are
/// written whatever the outcome.
pub(crate) fn run(a: &RunArgs, common: &Common) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut report = Report::default();
    let res = copy_run(a, &mut report);
    if !a.dry_run {
        let code = match &res {
            Ok(c) => *c,
            Err(e) => backup_core::exit::code_of(e),
        };
        let m = report.metrics(started.elapsed(), code);
        common.write_metrics(&m);
    }
    if a.json {
        backup_core::out::ignore_closed(backup_core::outln!(
            "{}",
            serde_json::to_string_pretty(&report).context("encoding the report")?
        ))?;
    }
    res
}

/// The run's outcome, made exit 5 when kubectl is not installed.
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

/// The steps of a run, in order; each stops the run the way it always did.
fn copy_run_inner(
    a: &RunArgs,
    report: &mut Report,
    kubectl_absent: &mut Option<String>,
) -> anyhow::Result<ExitCode> {
    report.dry_run = a.dry_run;
    let now = parse_now(a.now.as_deref())?;
    let week = current_week(now);
    report.week = week.clone();
    let run = preflight(a, week)?;
    run.clean_leftovers()?;
    let items = run.plan(now, kubectl_absent)?;
    run.require_commands(&items)?;
    let work = run.scratch_dir()?;
    run.copy_each(&items, work.as_ref(), report)?;
    drop(work);
    if let Some(code) = summarize(a, report) {
        return Ok(code);
    }
    if !a.only.is_empty() {
        info!("--only given: the week is not marked complete and rotation is not run");
        return Ok(ExitCode::Ok);
    }
    run.complete_week(report)?;
    run.rotate(report)?;
    Ok(ExitCode::Ok)
}

/// What the steps share once the backup root has passed its checks.
struct Run<'a> {
    a: &'a RunArgs,
    /// `--backup-root` as given: every store path is built from it.
    root: &'a Path,
    week: String,
    ledger: Ledger,
    /// Held to the end of the run; `None` on a dry run.
    _lock: Option<RunLock>,
    guard: RootGuard,
}

/// The root is the mounted, initialised backup disk with enough free
/// space; a real run holds the lock inside a private mount namespace.
fn preflight(a: &RunArgs, week: String) -> anyhow::Result<Run<'_>> {
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

    let lock = if a.dry_run {
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
    Ok(Run {
        a,
        root,
        week,
        ledger,
        _lock: lock,
        guard,
    })
}

impl Run<'_> {
    /// A real run starts clean: stale LUKS mappings closed, an interrupted
    /// run's leftovers removed (their pending entries ledgered first).
    fn clean_leftovers(&self) -> anyhow::Result<()> {
        if !self.a.dry_run {
            for name in mount::close_stale_mappers(&self.a.mapper_dir, self.a.command_timeout) {
                warn!("stale LUKS mapping {name} could not be closed");
            }
            store::clean_leftovers(self.root, &self.ledger)
                .context("removing leftovers of an interrupted run")?;
        }
        Ok(())
    }

    /// Every PVC LV with its verdict; an empty volume group or an `--only`
    /// that names no PVC stops the run.
    fn plan(
        &self,
        now: DateTime<Utc>,
        kubectl_absent: &mut Option<String>,
    ) -> anyhow::Result<Vec<Item>> {
        let a = self.a;
        let lvs = list_lvs(a)?;
        let pvs = pv_list(a, self.root, kubectl_absent)?;
        let skips = skip_selectors(a)?;
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
        require_only_matches(a, &items)?;
        for (pvc, lvs) in plan::duplicates(&items) {
            warn!(
                "{pvc} is claimed by several LVs ({}): the Bound PV keeps {pvc}, the others are copied to <pvc>@<pv-name>",
                lvs.join(", ")
            );
        }
        Ok(items)
    }

    /// Commands every copy needs: absent, the run stops here (exit 5)
    /// rather than failing each PVC in turn after mounting it.
    fn require_commands(&self, items: &[Item]) -> anyhow::Result<()> {
        if !self.a.dry_run && items.iter().any(|i| matches!(i.verdict, Verdict::Copy)) {
            for prog in ["blkid", "mount", "umount", "rsync"] {
                backup_core::cmd::require(prog).map_err(|e| Exit::refused(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// A private scratch directory for mount points and rsync output;
    /// `None` on a dry run, which copies nothing.
    fn scratch_dir(&self) -> anyhow::Result<Option<TempDir>> {
        let work_root = self
            .a
            .work_dir
            .clone()
            .or_else(|| std::env::var_os("RUNTIME_DIRECTORY").map(PathBuf::from))
            .unwrap_or_else(std::env::temp_dir);
        if self.a.dry_run {
            return Ok(None);
        }
        let work = tempfile::Builder::new()
            .prefix("pvc-copy.")
            .tempdir_in(&work_root)
            .with_context(|| format!("creating a scratch directory in {}", p(&work_root)))?;
        Ok(Some(work))
    }

    /// Every item reported in plan order: skipped, failed, planned (dry
    /// run) or copied; only an absent command stops the loop (exit 5).
    fn copy_each(
        &self,
        items: &[Item],
        work: Option<&TempDir>,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        for it in items {
            let mut r = item_report(&self.week, it);
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
                Verdict::Copy => self.copy_item(it, work, &mut r, report)?,
            }
            report.items.push(r);
        }
        Ok(())
    }

    /// One PVC to copy: linked against its newest earlier copy, copied
    /// (or only announced, on a dry run), its result recorded in `r`.
    fn copy_item(
        &self,
        it: &Item,
        work: Option<&TempDir>,
        r: &mut ItemReport,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let root = self.root;
        let (ns, name) = (
            it.dest_ns.clone().unwrap_or_default(),
            it.dest_name.clone().unwrap_or_default(),
        );
        let link = store::newest_copy(root, &ns, &name);
        r.link_dest = link
            .as_ref()
            .map(|l| l.strip_prefix(root).unwrap_or(l).display().to_string());
        let Some(work) = work else {
            info!(
                "would copy {} -> {} (link-dest {})",
                r.snapshot.as_deref().unwrap_or(""),
                r.dest.as_deref().unwrap_or(""),
                r.link_dest.as_deref().unwrap_or("none")
            );
            r.result = "planned".into();
            return Ok(());
        };
        let one = copy_one(
            self.a,
            &self.guard,
            &self.week,
            it,
            link.as_deref(),
            work.path(),
            &self.ledger,
        );
        match one {
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
        Ok(())
    }

    /// This week marked complete (a real run only), on the disk checked
    /// at the start, else the run fails before rotating anything.
    fn complete_week(&self, report: &Report) -> anyhow::Result<()> {
        if self.a.dry_run {
            return Ok(());
        }
        let week_dir = store::pvc_data(self.root).join(&self.week);
        self.guard
            .check()
            .map_err(|e| Exit::err(ExitCode::Failed, format!("{e}; rotation not run")))?;
        std::fs::create_dir_all(&week_dir).with_context(|| format!("creating {}", p(&week_dir)))?;
        let marker = serde_json::json!({
            "completed_at": Utc::now().to_rfc3339(),
            "copied": report.count("ok"),
            "skipped": report.count("skipped"),
        });
        backup_core::fsutil::write_atomic(
            &week_dir.join(store::COMPLETE_MARKER),
            marker.to_string().as_bytes(),
        )
        .with_context(|| format!("marking {} complete", p(&week_dir)))?;
        Ok(())
    }

    /// The newest --keep-weeks complete weeks kept, with their
    /// sqlite-backup weeks; a dry run only says what would go.
    fn rotate(&self, report: &mut Report) -> anyhow::Result<()> {
        let (a, root) = (self.a, self.root);
        let plan =
            store::plan_rotation(root, a.keep_weeks as usize, &self.week).map_err(Exit::usage)?;
        let verb = if a.dry_run {
            "would delete"
        } else {
            "deleting"
        };
        for d in plan.decisions.iter().filter(|d| !d.keep) {
            info!("{verb} pvc-data/{}: {}", d.name, d.reason);
        }
        let follow = store::follower_drops(root, store::SQLITE_BACKUP, &plan);
        for w in &follow {
            info!(
                "{verb} {}/{w}: its pvc-data week is rotated away",
                store::SQLITE_BACKUP
            );
        }
        if !a.dry_run {
            report.rotated = store::apply_rotation(root, &plan).context("rotating weeks")?;
            store::apply_follower(root, store::SQLITE_BACKUP, &follow)
                .context("rotating sqlite-backup weeks")?;
        }
        report.rotation = Some(plan);
        Ok(())
    }
}

/// The tally logged; `Some(exit code)` when a PVC failed, which leaves
/// the week incomplete and unrotated.
fn summarize(a: &RunArgs, report: &Report) -> Option<ExitCode> {
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
        return Some(ExitCode::from_items(ok, failed));
    }
    None
}

/// `--skip` with every excluded namespace added as `NS/*`.
fn skip_selectors(a: &RunArgs) -> anyhow::Result<Vec<Selector>> {
    let mut skips = a.skip.clone();
    for ns in a.exclude_namespace.iter().filter(|n| !n.is_empty()) {
        skips.push(
            Selector::parse(&format!("{ns}/*")).map_err(|e| {
                Exit::usage(format!("--exclude-namespace / EXCLUDED_NAMESPACES: {e}"))
            })?,
        );
    }
    Ok(skips)
}

/// Every `--only` selector names a PVC of the plan, else a usage error.
fn require_only_matches(a: &RunArgs, items: &[Item]) -> anyhow::Result<()> {
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
    Ok(())
}

/// An item's report before anything is done about it.
fn item_report(week: &str, it: &Item) -> ItemReport {
    ItemReport {
        lv: it.lv.clone(),
        pvc: it.pvc.clone(),
        snapshot: it.snapshot.as_ref().map(|s| s.name.clone()),
        dest: dest_rel(week, it),
        link_dest: None,
        result: String::new(),
        reason: None,
        bytes: 0,
        transferred_bytes: 0,
        changed_files: 0,
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

pub(crate) fn label(it: &Item) -> String {
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
