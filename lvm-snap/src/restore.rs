//! `restore PVC_LV SNAPSHOT_LV`: put a snapshot's data back in place of a
//! PVC volume, keeping the replaced volume as `<lv>_pre_restore_<stamp>`.
//!
//! The snapshot is never consumed: the new volume is a thin snapshot of
//! it, so the same restore can be repeated. Every step that changes
//! something is journalled; a failure after the first change undoes the
//! journal in reverse (names, activation, replica count) and the error
//! lists what was done and what was undone.
//!
//! The journal is also on disk (`<state dir>/lvm-snap-restore.journal.json`,
//! rewritten atomically before and after every change), so a restore that
//! was SIGKILLed, lost its host to a power cut, or could not finish its
//! own rollback is undone by `restore --recover`. Recovery reads the names
//! from the journal but decides from what LVM reports now, because the run
//! may have died between a command and its record.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use backup_core::cmd::Cmd;
use backup_core::exit::{Exit, ExitCode};
use backup_core::metrics::Metrics;
use backup_core::{info, warn};

use crate::kube::{self, Workload};
use crate::names::{self, Kind};
use crate::{Ctx, RestoreArgs};

/// Everything decided before the first change.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    pub vg: String,
    pub lv: String,
    pub snapshot: String,
    pub scratch: String,
    pub pre_restore: String,
    pub pv: String,
    pub namespace: String,
    pub claim: String,
    pub workload: Option<Workload>,
    pub lv_active: bool,
}

impl Plan {
    pub fn render(&self, a: &RestoreArgs) -> String {
        let mut s = format!(
            "Restore plan for {vg}/{lv} (PV {pv}, claim {ns}/{claim}) from {snap}:\n",
            vg = self.vg,
            lv = self.lv,
            pv = self.pv,
            ns = self.namespace,
            claim = self.claim,
            snap = self.snapshot
        );
        let mut n = 0;
        let mut step = |t: String| {
            n += 1;
            s.push_str(&format!("  {n}. {t}\n"));
        };
        step(format!(
            "create {} as a thin snapshot of {} (the snapshot itself is kept)",
            self.scratch, self.snapshot
        ));
        match &self.workload {
            Some(w) => step(format!(
                "scale {} from {} to 0 replicas",
                w.display(),
                w.replicas
            )),
            None => step("no Deployment or StatefulSet mounts the claim: nothing to scale".into()),
        }
        step(format!(
            "wait up to {}s for the pods mounting {} to go and PV {} to be detached",
            a.wait_timeout.as_secs(),
            self.claim,
            self.pv
        ));
        step(format!(
            "close the LUKS mapping {} if open, deactivate {}/{}",
            self.lv, self.vg, self.lv
        ));
        step(format!(
            "rename {} -> {} (today's data, kept until removed by hand)",
            self.lv, self.pre_restore
        ));
        step(format!("rename {} -> {}", self.scratch, self.lv));
        step(format!("tag {} {}", self.pre_restore, names::TAG));
        if let Some(w) = &self.workload {
            step(format!(
                "scale {} back to {} and wait up to {}s for it to be Ready",
                w.display(),
                w.replicas,
                a.ready_timeout.as_secs()
            ));
        }
        s.push_str("Any failure undoes the steps done so far, in reverse order.\n");
        s
    }
}

/// A change made, so it can be undone.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
enum Done {
    CreatedScratch,
    ScaledDown(u32),
    ClosedLuks,
    Deactivated,
    RenamedOrigin,
    RenamedScratch,
    Tagged,
    ScaledUp,
}

/// The journal's file name under the state directory.
pub const JOURNAL: &str = "lvm-snap-restore.journal.json";

/// The restore in progress, as kept on disk.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Journal {
    /// What this file is, for whoever finds it.
    about: String,
    plan: Plan,
    /// Changes made, in order.
    done: Vec<Done>,
    /// A change begun and maybe made: the run may have died before it
    /// could record the outcome.
    pending: Option<Done>,
}

impl Journal {
    /// The workload was (maybe) scaled down at some point.
    fn touched_workload(&self) -> bool {
        self.done
            .iter()
            .chain(self.pending.iter())
            .any(|d| matches!(d, Done::ScaledDown(_)))
    }
}

pub fn journal_path(state_dir: &Path) -> PathBuf {
    state_dir.join(JOURNAL)
}

/// The journal of a restore cut short, if one is there.
fn read_journal(path: &Path) -> Result<Option<Journal>> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("reading the restore journal {}", path.display()));
        }
    };
    let j: Journal = serde_json::from_slice(&data).map_err(|e| {
        Exit::refused(format!(
            "restore journal {}: expected the JSON lvm-snap writes ({e}); nothing changed, check it by hand",
            path.display()
        ))
    })?;
    Ok(Some(j))
}

/// One line for the log when a restore was cut short and not recovered:
/// its volume may be under the pre-restore name, so it is not snapshotted.
pub fn interrupted(state_dir: &Path) -> Option<String> {
    let path = journal_path(state_dir);
    match read_journal(&path) {
        Ok(None) => None,
        Ok(Some(j)) => Some(format!(
            "a restore of {}/{} from {} was cut short (journal {}); {} may be named {} now: run `lvm-snap restore --recover`",
            j.plan.vg,
            j.plan.lv,
            j.plan.snapshot,
            path.display(),
            j.plan.lv,
            j.plan.pre_restore
        )),
        Err(e) => Some(format!("{e:#}")),
    }
}

fn remove_journal(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("removing the restore journal {}", path.display()));
        }
    }
    backup_core::fsutil::sync_dir(path);
    Ok(())
}

struct Run<'a> {
    ctx: &'a Ctx,
    plan: &'a Plan,
    a: &'a RestoreArgs,
    done: Vec<Done>,
    /// Once undoing, a signal no longer stops anything.
    rolling_back: bool,
    journal: PathBuf,
}

impl Run<'_> {
    /// Write the journal: the changes made and the one begun.
    fn record(&self, pending: Option<&Done>) -> Result<()> {
        let j = Journal {
            about: "lvm-snap restore in progress; undo with: lvm-snap restore --recover".into(),
            plan: self.plan.clone(),
            done: self.done.clone(),
            pending: pending.cloned(),
        };
        let data = serde_json::to_vec_pretty(&j)?;
        backup_core::fsutil::write_atomic_mode(&self.journal, &data, 0o600)
            .with_context(|| format!("writing the restore journal {}", self.journal.display()))
    }

    /// Before a change: on disk first, so a kill during it is recoverable.
    fn begin(&self, d: &Done) -> Result<()> {
        self.record(Some(d))
    }

    /// After a change.
    fn did(&mut self, d: Done) -> Result<()> {
        self.done.push(d);
        self.record(None)
    }

    fn poll(&self) -> Duration {
        Duration::from_millis(self.a.poll_ms.max(10))
    }

    /// Stop going forward once a signal arrived.
    fn step(&self) -> Result<()> {
        if self.rolling_back {
            Ok(())
        } else {
            backup_core::signals::check()
        }
    }

    fn describe(&self, d: &Done) -> String {
        let p = self.plan;
        match d {
            Done::CreatedScratch => format!("created {}", p.scratch),
            Done::ScaledDown(n) => format!(
                "scaled {} from {n} to 0",
                p.workload.as_ref().map_or("?".into(), Workload::display)
            ),
            Done::ClosedLuks => format!("closed LUKS mapping {}", p.lv),
            Done::Deactivated => format!("deactivated {}", p.lv),
            Done::RenamedOrigin => format!("renamed {} -> {}", p.lv, p.pre_restore),
            Done::RenamedScratch => format!("renamed {} -> {}", p.scratch, p.lv),
            Done::Tagged => format!("tagged {}", p.pre_restore),
            Done::ScaledUp => format!(
                "scaled {} back up",
                p.workload.as_ref().map_or("?".into(), Workload::display)
            ),
        }
    }

    fn wait_gone(&self) -> Result<()> {
        let k = &self.ctx.kubectl;
        let p = self.plan;
        kube::wait_until(
            &format!("the pods mounting {}/{} to go", p.namespace, p.claim),
            self.a.wait_timeout,
            self.poll(),
            || {
                self.step()?;
                Ok(k.pods_mounting(&p.namespace, &p.claim)?.is_empty())
            },
        )?;
        kube::wait_until(
            &format!("PV {} to be detached", p.pv),
            self.a.wait_timeout,
            self.poll(),
            || {
                self.step()?;
                Ok(k.attachments(&p.pv)?.is_empty())
            },
        )
    }

    fn wait_ready(&self, w: &Workload) -> Result<()> {
        kube::wait_until(
            &format!("{} to have {} Ready replicas", w.display(), w.replicas),
            self.a.ready_timeout,
            self.poll(),
            || {
                self.step()?;
                let (ready, observed) = self.ctx.kubectl.ready(w)?;
                Ok(observed && ready >= w.replicas)
            },
        )
    }

    /// Close a LUKS mapping named after the LV (how the original found
    /// one), when cryptsetup exists and reports it active.
    fn close_luks(&mut self) -> Result<()> {
        let lv = &self.plan.lv;
        let status = match Cmd::new("cryptsetup")
            .args(["status", "--", lv])
            .timeout(Duration::from_secs(30))
            .run_any()
        {
            Ok(o) => o,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e).context("cryptsetup status"),
        };
        if status.code != 0 {
            return Ok(());
        }
        self.begin(&Done::ClosedLuks)?;
        Cmd::new("cryptsetup")
            .args(["close", "--", lv])
            .timeout(Duration::from_secs(60))
            .run()
            .with_context(|| format!("closing LUKS mapping {lv}"))?;
        self.did(Done::ClosedLuks)
    }

    fn forward(&mut self) -> Result<()> {
        let (ctx, p) = (self.ctx, self.plan);
        self.begin(&Done::CreatedScratch)?;
        ctx.lvm.snapshot(&p.snapshot, &p.scratch, None)?;
        self.did(Done::CreatedScratch)?;
        info!("created {} from {}", p.scratch, p.snapshot);
        if let Some(w) = &p.workload {
            self.step()?;
            self.begin(&Done::ScaledDown(w.replicas))?;
            ctx.kubectl.scale(w, 0)?;
            self.did(Done::ScaledDown(w.replicas))?;
            info!("scaled {} to 0", w.display());
        }
        self.wait_gone()?;
        info!("pods gone, PV {} detached", p.pv);
        if p.lv_active {
            self.step()?;
            self.close_luks()?;
            self.begin(&Done::Deactivated)?;
            ctx.lvm.set_active(&p.lv, false)?;
            self.did(Done::Deactivated)?;
        }
        self.step()?;
        self.begin(&Done::RenamedOrigin)?;
        ctx.lvm.rename(&p.lv, &p.pre_restore)?;
        self.did(Done::RenamedOrigin)?;
        self.begin(&Done::RenamedScratch)?;
        ctx.lvm.rename(&p.scratch, &p.lv)?;
        self.did(Done::RenamedScratch)?;
        info!("{} now holds the data of {}", p.lv, p.snapshot);
        self.begin(&Done::Tagged)?;
        ctx.lvm.add_tag(&p.pre_restore, names::TAG)?;
        self.did(Done::Tagged)?;
        if let Some(w) = &p.workload {
            self.step()?;
            self.begin(&Done::ScaledUp)?;
            ctx.kubectl.scale(w, w.replicas)?;
            self.did(Done::ScaledUp)?;
            self.wait_ready(w)?;
            info!("{} is Ready", w.display());
        }
        Ok(())
    }

    /// Undo in reverse order; returns (undone, not undone) descriptions.
    fn rollback(&mut self) -> (Vec<String>, Vec<String>) {
        self.rolling_back = true;
        let (ctx, p) = (self.ctx, self.plan);
        let (mut undone, mut failed) = (Vec::new(), Vec::new());
        let done = std::mem::take(&mut self.done);
        let mut stop = false;
        for d in done.iter().rev() {
            let mut what = self.describe(d);
            if *d == Done::ClosedLuks {
                what.push_str(" (left closed)");
            }
            if stop {
                failed.push(format!("{what} (rollback stopped earlier)"));
                continue;
            }
            let res: Result<()> = match d {
                Done::ScaledUp => match &p.workload {
                    Some(w) => ctx.kubectl.scale(w, 0).and_then(|()| self.wait_gone()),
                    None => Ok(()),
                },
                Done::Tagged => ctx.lvm.del_tag(&p.pre_restore, names::TAG),
                Done::RenamedScratch => ctx.lvm.rename(&p.lv, &p.scratch),
                Done::RenamedOrigin => ctx.lvm.rename(&p.pre_restore, &p.lv),
                Done::Deactivated => ctx.lvm.set_active(&p.lv, true),
                // Left closed on purpose: whoever opened it (the CSI node
                // plugin, a copy job) opens it again when it needs it.
                Done::ClosedLuks => Ok(()),
                Done::ScaledDown(n) => match &p.workload {
                    Some(w) => ctx.kubectl.scale(w, *n),
                    None => Ok(()),
                },
                Done::CreatedScratch => ctx.lvm.remove(&p.scratch),
            };
            match res {
                Ok(()) => {
                    warn!("undone: {what}");
                    undone.push(what);
                }
                Err(e) => {
                    warn!("could not undo: {what}: {e:#}");
                    failed.push(format!("{what}: {e:#}"));
                    // Swapping names back under a running workload would
                    // pull the disk from under it: stop here.
                    if *d == Done::ScaledUp {
                        stop = true;
                    }
                }
            }
        }
        (undone, failed)
    }
}

/// Print the plan; false on a dry run. Going ahead takes `--yes` or a
/// typed confirmation.
fn go_ahead(text: &str, a: &RestoreArgs) -> Result<bool> {
    if a.dry_run {
        backup_core::out!("{text}")?;
        backup_core::outln!("(dry run: nothing changed)")?;
        return Ok(false);
    }
    if a.yes {
        // The plan is for the reader; a closed stdout stops no restore.
        backup_core::out::ignore_closed(backup_core::out!("{text}"))?;
    } else {
        confirm(text)?;
    }
    Ok(true)
}

fn confirm(plan_text: &str) -> Result<()> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Exit::usage(
            "restore needs --yes, or a terminal to type the confirmation on: nothing changed",
        ));
    }
    let mut err = std::io::stderr();
    let _ = write!(err, "{plan_text}Type yes to go ahead: ");
    let _ = err.flush();
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    if line.trim() != "yes" {
        return Err(Exit::refused("not confirmed: nothing changed"));
    }
    Ok(())
}

/// Check names and ownership, find the PV and workload, and fix every
/// name the run will use; nothing is changed here.
pub fn check_names(a: &RestoreArgs) -> Result<()> {
    let lv = a.pvc_lv.as_deref().unwrap_or_default();
    let snap = a.snapshot_lv.as_deref().unwrap_or_default();
    if !names::is_origin(lv) {
        return Err(Exit::usage(format!(
            "PVC_LV {:?}: expected a PVC volume name vm-<id>-pvc-<hex uuid>",
            backup_core::log::escape_str(lv)
        )));
    }
    match names::classify(snap) {
        Kind::Snapshot { origin, .. } if origin == lv => {}
        Kind::Snapshot { origin, .. } => {
            return Err(Exit::refused(format!(
                "{snap} is a snapshot of {origin}, not of {lv}: refusing to put another volume's data in its place"
            )));
        }
        _ => {
            return Err(Exit::usage(format!(
                "SNAPSHOT_LV {:?}: expected a snapshot name {lv}_snap_<YYYYMMDD>_<HHMM>",
                backup_core::log::escape_str(snap)
            )));
        }
    }
    Ok(())
}

pub fn make_plan(ctx: &Ctx, a: &RestoreArgs) -> Result<Plan> {
    check_names(a)?;
    let lv = a.pvc_lv.as_deref().unwrap_or_default();
    let snap = a.snapshot_lv.as_deref().unwrap_or_default();
    let lvs = ctx.report()?;
    let find = |n: &str| lvs.iter().find(|l| l.name == n);
    let Some(target) = find(lv) else {
        return Err(Exit::refused(format!("{}/{lv} does not exist", ctx.vg)));
    };
    let Some(s) = find(snap) else {
        return Err(Exit::refused(format!("{}/{snap} does not exist", ctx.vg)));
    };
    // The name is a claim; LVM's origin field is the proof. After an
    // earlier restore the origin of older snapshots is the pre-restore copy.
    let origin_ok = s.origin == lv
        || matches!(names::classify(&s.origin), Kind::PreRestore { origin, .. } if origin == lv);
    if !origin_ok {
        return Err(Exit::refused(format!(
            "{snap} is not a snapshot of {lv}: LVM reports its origin as {}",
            if s.origin.is_empty() {
                "(none)".to_string()
            } else {
                s.origin.clone()
            }
        )));
    }
    let stamp = ctx.stamp();
    let pre_restore = names::pre_restore_name(lv, &stamp);
    let scratch = names::restoring_name(lv, &stamp);
    for n in [&pre_restore, &scratch] {
        if find(n).is_some() {
            return Err(Exit::refused(format!(
                "{n} already exists (a restore of {lv} this minute?): remove it or retry in a minute"
            )));
        }
    }
    let pvs = kube::pv_list(&ctx.kubectl.get(&["pv"], None)?)?;
    let Some(pv) = pvs.into_iter().find(|p| p.lv() == lv) else {
        return Err(Exit::refused(format!(
            "no PersistentVolume of driver {} has a volumeHandle ending in {lv}",
            kube::CSI_DRIVER
        )));
    };
    if !names::k8s_name(&pv.namespace) || !names::k8s_name(&pv.claim) {
        return Err(Exit::refused(format!(
            "PV {} is not bound to a claim (claimRef {:?}/{:?})",
            pv.name, pv.namespace, pv.claim
        )));
    }
    let workload = ctx.kubectl.find_workload(&pv.namespace, &pv.claim)?;
    Ok(Plan {
        vg: ctx.vg.clone(),
        lv: lv.to_string(),
        snapshot: snap.to_string(),
        scratch,
        pre_restore,
        pv: pv.name,
        namespace: pv.namespace,
        claim: pv.claim,
        workload,
        lv_active: target.active,
    })
}

pub fn restore(ctx: &Ctx, a: &RestoreArgs, _m: &mut Metrics) -> Result<ExitCode> {
    if a.recover {
        return recover(ctx, a);
    }
    // Names first: a hostile name never reaches a command line.
    check_names(a)?;
    let _lock = if a.dry_run {
        None
    } else {
        Some(backup_core::lock::acquire(crate::TOOL)?)
    };
    let journal = journal_path(&ctx.state_dir);
    if let Some(j) = read_journal(&journal)? {
        return Err(Exit::refused(format!(
            "a restore of {}/{} from {} was cut short (journal {}): undo it first with `lvm-snap restore --recover`; nothing changed",
            j.plan.vg,
            j.plan.lv,
            j.plan.snapshot,
            journal.display()
        )));
    }
    let plan = make_plan(ctx, a)?;
    let mut text = plan.render(a);
    text.push_str(&format!(
        "Each step is journalled in {} first: if this run is cut short (SIGKILL, power cut), `lvm-snap restore --recover` undoes it.\n",
        journal.display()
    ));
    if !go_ahead(&text, a)? {
        return Ok(ExitCode::Ok);
    }
    std::fs::create_dir_all(&ctx.state_dir).with_context(|| {
        format!(
            "creating the state directory {} for the restore journal; nothing changed",
            ctx.state_dir.display()
        )
    })?;
    // From here on a signal means: stop at the next step and roll back.
    backup_core::signals::catch();
    let mut run = Run {
        ctx,
        plan: &plan,
        a,
        done: Vec::new(),
        rolling_back: false,
        journal,
    };
    match run.forward() {
        Ok(()) => {
            // Done: a journal left now would undo a good restore.
            if let Err(e) = remove_journal(&run.journal) {
                warn!("{e:#}: remove it by hand, the restore itself is complete");
            }
            backup_core::out::ignore_closed(backup_core::outln!(
                "restored {}/{} from {}; the replaced volume is kept as {} (remove it with: lvremove {}/{})",
                plan.vg,
                plan.lv,
                plan.snapshot,
                plan.pre_restore,
                plan.vg,
                plan.pre_restore
            ))?;
            Ok(ExitCode::Ok)
        }
        Err(e) => {
            let done: Vec<String> = run.done.iter().map(|d| run.describe(d)).collect();
            let (undone, not_undone) = run.rollback();
            if not_undone.is_empty()
                && let Err(e) = remove_journal(&run.journal)
            {
                warn!("{e:#}: the rollback is complete, remove it by hand");
            }
            let mut msg = format!("restore of {} failed: {e:#}", plan.lv);
            msg.push_str(&format!(
                "; done: [{}]; undone: [{}]",
                done.join("; "),
                undone.join("; ")
            ));
            if !not_undone.is_empty() {
                msg.push_str(&format!(
                    "; NOT undone: [{}]; once the cause is fixed, `lvm-snap restore --recover` finishes the rollback (journal {})",
                    not_undone.join("; "),
                    run.journal.display()
                ));
            }
            Err(Exit::err(failure_code(&e), msg))
        }
    }
}

/// A restore step that failed because its command is not installed ends
/// with exit 5 ("command absent"), any other failure with 1.
fn failure_code(e: &anyhow::Error) -> ExitCode {
    if backup_core::exit::absent_in(e).is_some() {
        ExitCode::Refused
    } else {
        ExitCode::Failed
    }
}

/// Undo a restore cut short, from its journal and what LVM reports now.
/// Every step checks the current state first, so recovery can itself be
/// interrupted and run again.
fn recover(ctx: &Ctx, a: &RestoreArgs) -> Result<ExitCode> {
    let _lock = backup_core::lock::acquire(crate::TOOL)?;
    let path = journal_path(&ctx.state_dir);
    let Some(j) = read_journal(&path)? else {
        backup_core::outln!(
            "no restore was cut short (no journal {}): nothing to recover",
            path.display()
        )?;
        return Ok(ExitCode::Ok);
    };
    let p = &j.plan;
    // The journal names reach command lines: hold them to the scheme.
    let stamp_ok = |n: &str, want: fn(&Kind) -> bool| {
        let k = names::classify(n);
        want(&k) && k.origin() == Some(p.lv.as_str())
    };
    if p.vg != ctx.vg
        || !names::is_origin(&p.lv)
        || !stamp_ok(&p.pre_restore, |k| matches!(k, Kind::PreRestore { .. }))
        || !stamp_ok(&p.scratch, |k| matches!(k, Kind::Restoring { .. }))
    {
        return Err(Exit::refused(format!(
            "restore journal {} names {}/{} ({}, {}), not volumes of a restore in VG {}: nothing changed, check it by hand",
            path.display(),
            p.vg,
            p.lv,
            p.pre_restore,
            p.scratch,
            ctx.vg
        )));
    }
    let lvs = ctx.report()?;
    let find = |n: &str| lvs.iter().find(|l| l.name == n);
    let (has_lv, pre, has_scratch) = (
        find(&p.lv).is_some(),
        find(&p.pre_restore),
        find(&p.scratch).is_some(),
    );
    if has_lv && pre.is_some() && has_scratch {
        return Err(Exit::refused(format!(
            "{lv}, {} and {} all exist: no step of a restore leaves that, so recovery cannot tell which volume holds what; nothing changed, sort it out by hand (journal {path})",
            p.pre_restore,
            p.scratch,
            lv = p.lv,
            path = path.display()
        )));
    }
    let workload = p.workload.as_ref().filter(|_| j.touched_workload());
    // The plan, from the state found.
    let mut steps = Vec::new();
    if pre.is_some() {
        if let Some(w) = workload {
            steps.push(format!(
                "scale {} to 0 and wait for its pods to go",
                w.display()
            ));
        }
        if has_lv {
            steps.push(format!(
                "rename {} (the restored copy) -> {}",
                p.lv, p.scratch
            ));
        }
        steps.push(format!(
            "rename {} -> {} (the volume as it was before the restore)",
            p.pre_restore, p.lv
        ));
    }
    if has_scratch || (pre.is_some() && has_lv) {
        steps.push(format!(
            "remove {} (a copy of {}, which is kept)",
            p.scratch, p.snapshot
        ));
    }
    if p.lv_active {
        steps.push(format!("activate {}/{} if it is inactive", p.vg, p.lv));
    }
    if let Some(w) = workload {
        steps.push(format!(
            "scale {} to {} and wait for it to be Ready",
            w.display(),
            w.replicas
        ));
    }
    let mut text = format!(
        "Recovery of the restore of {}/{} from {} (journal {}):\n",
        p.vg,
        p.lv,
        p.snapshot,
        path.display()
    );
    for (i, s) in steps.iter().enumerate() {
        text.push_str(&format!("  {}. {s}\n", i + 1));
    }
    if steps.is_empty() {
        text.push_str("  nothing to undo: the volumes are as before the restore\n");
    }
    if !go_ahead(&text, a)? {
        return Ok(ExitCode::Ok);
    }
    let run = Run {
        ctx,
        plan: p,
        a,
        done: Vec::new(),
        rolling_back: true,
        journal: path.clone(),
    };
    let res = (|| -> Result<()> {
        if let Some(pre) = pre {
            if let Some(w) = workload {
                ctx.kubectl.scale(w, 0)?;
                run.wait_gone()?;
                info!("scaled {} to 0", w.display());
            }
            if pre.tagged() {
                ctx.lvm.del_tag(&p.pre_restore, names::TAG)?;
            }
            if has_lv {
                ctx.lvm.rename(&p.lv, &p.scratch)?;
                info!("renamed {} -> {}", p.lv, p.scratch);
            }
            ctx.lvm.rename(&p.pre_restore, &p.lv)?;
            info!("renamed {} -> {}", p.pre_restore, p.lv);
        }
        let lvs = ctx.report()?;
        if lvs.iter().any(|l| l.name == p.scratch) {
            ctx.lvm.remove(&p.scratch)?;
            info!("removed {}", p.scratch);
        }
        if p.lv_active && lvs.iter().any(|l| l.name == p.lv && !l.active) {
            ctx.lvm.set_active(&p.lv, true)?;
            info!("activated {}", p.lv);
        }
        if let Some(w) = workload {
            ctx.kubectl.scale(w, w.replicas)?;
            run.wait_ready(w)?;
            info!("{} is Ready", w.display());
        }
        Ok(())
    })();
    match res {
        Ok(()) => {
            remove_journal(&path)?;
            backup_core::out::ignore_closed(backup_core::outln!(
                "recovered: {}/{} is the volume it was before the restore from {}",
                p.vg,
                p.lv,
                p.snapshot
            ))?;
            Ok(ExitCode::Ok)
        }
        Err(e) => Err(Exit::err(
            failure_code(&e),
            format!(
                "recovery of the restore of {} stopped: {e:#}; the journal {} is kept, run `lvm-snap restore --recover` again once the cause is fixed",
                p.lv,
                path.display()
            ),
        )),
    }
}
