//! `restore PVC_LV SNAPSHOT_LV`: put a snapshot's data back in place of a
//! PVC volume, keeping the replaced volume as `<lv>_pre_restore_<stamp>`.
//!
//! The snapshot is never consumed: the new volume is a thin snapshot of
//! it, so the same restore can be repeated. Every step that changes
//! something is journalled; a failure after the first change undoes the
//! journal in reverse (names, activation, replica count) and the error
//! lists what was done and what was undone.

use std::io::{BufRead, IsTerminal, Write};
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
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone, PartialEq)]
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

struct Run<'a> {
    ctx: &'a Ctx,
    plan: &'a Plan,
    a: &'a RestoreArgs,
    done: Vec<Done>,
    /// Once undoing, a signal no longer stops anything.
    rolling_back: bool,
}

impl Run<'_> {
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
        Cmd::new("cryptsetup")
            .args(["close", "--", lv])
            .timeout(Duration::from_secs(60))
            .run()
            .with_context(|| format!("closing LUKS mapping {lv}"))?;
        self.done.push(Done::ClosedLuks);
        Ok(())
    }

    fn forward(&mut self) -> Result<()> {
        let (ctx, p) = (self.ctx, self.plan);
        ctx.lvm.snapshot(&p.snapshot, &p.scratch, None)?;
        self.done.push(Done::CreatedScratch);
        info!("created {} from {}", p.scratch, p.snapshot);
        if let Some(w) = &p.workload {
            self.step()?;
            ctx.kubectl.scale(w, 0)?;
            self.done.push(Done::ScaledDown(w.replicas));
            info!("scaled {} to 0", w.display());
        }
        self.wait_gone()?;
        info!("pods gone, PV {} detached", p.pv);
        if p.lv_active {
            self.step()?;
            self.close_luks()?;
            ctx.lvm.set_active(&p.lv, false)?;
            self.done.push(Done::Deactivated);
        }
        self.step()?;
        ctx.lvm.rename(&p.lv, &p.pre_restore)?;
        self.done.push(Done::RenamedOrigin);
        ctx.lvm.rename(&p.scratch, &p.lv)?;
        self.done.push(Done::RenamedScratch);
        info!("{} now holds the data of {}", p.lv, p.snapshot);
        ctx.lvm.add_tag(&p.pre_restore, names::TAG)?;
        self.done.push(Done::Tagged);
        if let Some(w) = &p.workload {
            self.step()?;
            ctx.kubectl.scale(w, w.replicas)?;
            self.done.push(Done::ScaledUp);
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
    let lv = a.pvc_lv.as_str();
    let snap = a.snapshot_lv.as_str();
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
    let lv = a.pvc_lv.as_str();
    let snap = a.snapshot_lv.as_str();
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
    // Names first: a hostile name never reaches a command line.
    check_names(a)?;
    let _lock = if a.dry_run {
        None
    } else {
        Some(backup_core::lock::acquire(crate::TOOL)?)
    };
    let plan = make_plan(ctx, a)?;
    let text = plan.render(a);
    if a.dry_run {
        print!("{text}");
        println!("(dry run: nothing changed)");
        return Ok(ExitCode::Ok);
    }
    if a.yes {
        print!("{text}");
    } else {
        confirm(&text)?;
    }
    // From here on a signal means: stop at the next step and roll back.
    backup_core::signals::catch();
    let mut run = Run {
        ctx,
        plan: &plan,
        a,
        done: Vec::new(),
        rolling_back: false,
    };
    match run.forward() {
        Ok(()) => {
            println!(
                "restored {}/{} from {}; the replaced volume is kept as {} (remove it with: lvremove {}/{})",
                plan.vg, plan.lv, plan.snapshot, plan.pre_restore, plan.vg, plan.pre_restore
            );
            Ok(ExitCode::Ok)
        }
        Err(e) => {
            let done: Vec<String> = run.done.iter().map(|d| run.describe(d)).collect();
            let (undone, not_undone) = run.rollback();
            let mut msg = format!("restore of {} failed: {e:#}", plan.lv);
            msg.push_str(&format!(
                "; done: [{}]; undone: [{}]",
                done.join("; "),
                undone.join("; ")
            ));
            if !not_undone.is_empty() {
                msg.push_str(&format!(
                    "; NOT undone, fix by hand: [{}]",
                    not_undone.join("; ")
                ));
            }
            Err(Exit::err(ExitCode::Failed, msg))
        }
    }
}
