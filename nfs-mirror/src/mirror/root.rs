//! One `--source` root's run (`mirror_root`): its entries routed, every
//! tree guarded before anything is written, then copied one at a time.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use backup_core::cmd::RsyncResult;
use backup_core::exit::{Exit, ExitCode};
use backup_core::ledger::Ledger;
use backup_core::log::p;
use backup_core::rsync_items::{self, DeletePlan, MaxDelete};
use backup_core::skiplist::{Route, SkipList};
use backup_core::{error, info, warn};

use super::{EntryReport, MirrorOpts, Report};
use crate::dest::Dest;
use crate::rsync::{self, Spooled};
use crate::{
    STATE_DIR, SourceRoot, entries, is_empty_dir, is_mountpoint, name_str, reserved, spool,
};

/// What `mirror_root` found for one root, for the coverage record.
pub(super) struct RootOutcome {
    pub(super) code: ExitCode,
    /// Every top-level name the run saw.
    pub(super) seen: Vec<Vec<u8>>,
    /// The names it mirrored successfully.
    pub(super) mirrored: Vec<Vec<u8>>,
}

/// Mirror one root: its entries routed and planned, every tree guarded
/// before anything is written, then copied one at a time. `Err` when the
/// root is refused (nothing copied or deleted) or cannot be read.
pub(super) fn mirror_root(
    o: &MirrorOpts,
    root: &SourceRoot,
    skip: &SkipList,
    ledger: &Ledger,
    subs: &[Vec<u8>],
    dest_at: &Dest,
    report: &mut Report,
) -> Result<RootOutcome> {
    let names = check_source(o, &root.path)?;
    let mut run = RootRun::open(o, root, skip, ledger, subs, dest_at, report)?;
    let mut planned = run.plan_trees(&names);
    let present: BTreeSet<Vec<u8>> = names.iter().cloned().collect();
    let removed = run.forget_removed(&present)?;
    run.report_vanished(&present, &removed);
    let GuardPass {
        refusals,
        trees,
        root_plan,
    } = run.guard_pass(&mut planned)?;
    let slack = run.check_bound(root_plan, refusals)?;
    if o.dry_run {
        run.mark_would_mirror(&planned);
        return Ok(RootOutcome {
            code: ExitCode::Ok,
            seen: names,
            mirrored: Vec::new(),
        });
    }
    let copied = run.copy_trees(&planned, &trees, slack)?;
    run.prune_skipped()?;
    Ok(run.outcome(names, copied))
}

/// The source's top-level names, sorted, once it is a directory (and a
/// mountpoint when asked) with something in it; else the root is refused.
fn check_source(o: &MirrorOpts, source: &Path) -> Result<Vec<Vec<u8>>> {
    let src_md = std::fs::metadata(source)
        .map_err(|e| Exit::refused(format!("source {}: {e}", p(source))))?;
    if !src_md.is_dir() {
        return Err(Exit::refused(format!(
            "source {} is not a directory",
            p(source)
        )));
    }
    // An unmounted source looks empty (docs/compatibility.md, bug 3).
    if o.require_mountpoint && !is_mountpoint(source)? {
        return Err(Exit::refused(format!(
            "source {} is not a mountpoint (--allow-unmounted-root for a sandbox): nothing copied or deleted",
            p(source)
        )));
    }
    let mut names: Vec<Vec<u8>> = std::fs::read_dir(source)
        .with_context(|| format!("cannot list source {}", p(source)))?
        .map(|e| e.map(|e| e.file_name().into_vec()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot list source {}", p(source)))?;
    names.sort();
    if names.is_empty() {
        return Err(Exit::refused(format!(
            "source {} is empty: nothing copied or deleted",
            p(source)
        )));
    }
    Ok(names)
}

/// One tree to mirror.
struct Planned {
    name: Vec<u8>,
    src: PathBuf,
    dst: PathBuf,
    excludes: Vec<String>,
    /// The tree opened at the guard pass without following a symlink
    /// (core::fsutil::open_dir_beneath) and its `/proc/PID/fd/N` path:
    /// the guard pass, the re-check and the copy all read that directory,
    /// whatever is renamed, linked or mounted at its name meanwhile (a
    /// lazily unmounted source included).
    pin: Option<(std::os::fd::OwnedFd, PathBuf)>,
}

/// What the guard pass measured, before anything was written.
struct GuardPass {
    /// Why the root is refused (none: it may be copied).
    refusals: Vec<String>,
    /// The bound of each measured tree.
    trees: HashMap<Vec<u8>, TreeBound>,
    /// The root's deletions, summed over its trees.
    root_plan: DeletePlan,
}

/// One tree's figures from the guard pass.
#[derive(Clone, Copy, Default)]
struct TreeBound {
    /// Deletions and rsync temp files measured.
    measured: u64,
    /// The bound of the tree's own copy, when there is one.
    own: Option<u64>,
}

/// The trees the copying pass ended with.
#[derive(Default)]
struct Copied {
    ok: usize,
    failed: Vec<String>,
    mirrored: Vec<Vec<u8>>,
}

/// One root's run: what the steps of `mirror_root` read and update.
struct RootRun<'a> {
    o: &'a MirrorOpts,
    root: &'a SourceRoot,
    skip: &'a SkipList,
    ledger: &'a Ledger,
    subs: &'a [Vec<u8>],
    dest_at: &'a Dest,
    report: &'a mut Report,
    /// Where this root's entries are mirrored: DEST or DEST/SUBDIR.
    dest: PathBuf,
    entries_file: PathBuf,
    /// The names this tool has mirrored from the root (crate::entries).
    known: BTreeSet<Vec<u8>>,
    /// This root's first entry in the report.
    first_entry: usize,
    root_str: String,
}

impl<'a> RootRun<'a> {
    /// The root's place under DEST exists (unless a dry run) and its
    /// entries file is read.
    fn open(
        o: &'a MirrorOpts,
        root: &'a SourceRoot,
        skip: &'a SkipList,
        ledger: &'a Ledger,
        subs: &'a [Vec<u8>],
        dest_at: &'a Dest,
        report: &'a mut Report,
    ) -> Result<RootRun<'a>> {
        let dest = match &root.into {
            Some(s) => o.dest.join(s),
            None => o.dest.clone(),
        };
        let entries_file = entries::file_of(root);
        if !o.dry_run && root.into.is_some() {
            std::fs::create_dir_all(&dest).with_context(|| p(&dest))?;
        }
        let known = entries::load(&o.dest, &entries_file);
        let first_entry = report.entries.len();
        Ok(RootRun {
            o,
            root,
            skip,
            ledger,
            subs,
            dest_at,
            report,
            dest,
            entries_file,
            known,
            first_entry,
            root_str: p(&root.path),
        })
    }

    /// The ledger (and spool) name of one of this root's trees: `<name>`
    /// or `<subdir>/<name>`, relative to the backup root.
    fn prefix_of(&self, n: &[u8]) -> Vec<u8> {
        match &self.root.into {
            Some(s) => {
                let mut v = s.as_os_str().as_bytes().to_vec();
                v.push(b'/');
                v.extend_from_slice(n);
                v
            }
            None => n.to_vec(),
        }
    }

    /// A name this root may not mirror into: another job's or a state file.
    fn is_reserved(&self, n: &[u8]) -> bool {
        if self.root.into.is_some() {
            n.first() == Some(&b'.') || n == b"lost+found"
        } else {
            reserved(n) || self.subs.iter().any(|s| s.as_slice() == n)
        }
    }

    /// The index in the report of this root's entry `name`.
    fn entry_idx(&self, name: &[u8]) -> usize {
        let s = name_str(name);
        self.first_entry
            + self.report.entries[self.first_entry..]
                .iter()
                .position(|r| r.name == s)
                .expect("planned entries are reported")
    }

    /// Every entry is routed and reported; those routed to the backup disk
    /// (and not reserved) are the trees to mirror.
    fn plan_trees(&mut self, names: &[Vec<u8>]) -> Vec<Planned> {
        let o = self.o;
        let source = &self.root.path;
        let mut planned = Vec::new();
        for n in names {
            let s = name_str(n);
            let route = self.skip.route(Path::new(OsStr::from_bytes(n)));
            let mut rep = EntryReport {
                root: self.root_str.clone(),
                name: s.clone(),
                route,
                action: String::new(),
                transferred: 0,
                deletions: 0,
                message: None,
            };
            if n == b"lost+found" {
                // The root filesystem's own, not a service: not mirrored,
                // not a failure (offsite-sync's coverage does not list it
                // either).
                rep.action = "skipped".into();
                self.report.entries.push(rep);
                continue;
            }
            if route != Route::BackupDisk {
                rep.action = "skipped".into();
                if self.known.contains(n) {
                    if o.prune_skipped {
                        rep.action = if o.dry_run { "would-prune" } else { "pruned" }.into();
                    } else {
                        rep.message = Some(format!(
                            "routed '{}' but its old mirror stays (use --prune-skipped)",
                            route.as_str()
                        ));
                    }
                }
                self.report.entries.push(rep);
                continue;
            }
            if self.is_reserved(n) {
                rep.action = "reserved".into();
                rep.message = Some(
                    "name belongs to another job or a state file under the destination".into(),
                );
                self.report.entries.push(rep);
                continue;
            }
            planned.push(Planned {
                name: n.clone(),
                src: source.join(OsStr::from_bytes(n)),
                dst: self.dest.join(OsStr::from_bytes(n)),
                excludes: nested_excludes(self.skip, OsStr::from_bytes(n)),
                pin: None,
            });
            self.report.entries.push(rep);
        }
        planned
    }

    /// A mirror removed by hand after its source vanished is forgotten
    /// (the entries file is rewritten, unless a dry run).
    fn forget_removed(&mut self, present: &BTreeSet<Vec<u8>>) -> Result<Vec<Vec<u8>>> {
        let removed: Vec<Vec<u8>> = self
            .known
            .iter()
            .filter(|k| !present.contains(*k) && !self.dest.join(OsStr::from_bytes(k)).exists())
            .cloned()
            .collect();
        if !removed.is_empty() && !self.o.dry_run {
            for k in &removed {
                self.known.remove(k);
            }
            entries::save(&self.o.dest, &self.entries_file, &self.known)?;
        }
        Ok(removed)
    }

    /// Mirrors whose source vanished are kept and reported.
    fn report_vanished(&mut self, present: &BTreeSet<Vec<u8>>, removed: &[Vec<u8>]) {
        for k in &self.known {
            if !present.contains(k) && !removed.contains(k) {
                self.report.entries.push(EntryReport {
                    root: self.root_str.clone(),
                    name: name_str(k),
                    route: self.skip.route(Path::new(OsStr::from_bytes(k))),
                    action: "vanished".into(),
                    transferred: 0,
                    deletions: 0,
                    message: Some(
                        "source entry is gone; its mirror is kept until removed by hand".into(),
                    ),
                });
            }
        }
    }

    /// Each tree pinned and measured (what would it delete?) with nothing
    /// written yet; a tree emptied beside its mirror is a refusal.
    fn guard_pass(&mut self, planned: &mut [Planned]) -> Result<GuardPass> {
        let o = self.o;
        let source = &self.root.path;
        let mut guard = GuardPass {
            refusals: Vec::new(),
            trees: HashMap::new(),
            root_plan: DeletePlan::default(),
        };
        for pl in planned.iter_mut() {
            let idx = self.entry_idx(&pl.name);
            let rep = &mut self.report.entries[idx];
            let pin = backup_core::fsutil::open_dir_beneath(
                source,
                Path::new(OsStr::from_bytes(&pl.name)),
            )
            .with_context(|| p(&pl.src))?;
            let Some(fd) = pin else {
                rep.action = "skipped".into();
                rep.message = Some("not a directory: only directories are mirrored".into());
                continue;
            };
            let pinned = backup_core::fsutil::fd_path(&fd);
            pl.pin = Some((fd, pinned.clone()));
            if !pl.dst.exists() {
                continue;
            }
            if empty_beside_a_mirror(&pinned, &pl.dst) {
                rep.action = "refused".into();
                let m = format!("source {} is empty but its mirror is not", p(&pl.src));
                rep.message = Some(m.clone());
                guard.refusals.push(m);
                continue;
            }
            if o.max_delete == MaxDelete::Off && !o.dry_run {
                continue;
            }
            let plan = measure_tree(o, pl, &pinned)?;
            rep.deletions = plan.deletions;
            // Each tree is held to the bound of its own copy too (its dry
            // run was checked on its own figures), whatever slack the root
            // leaves: with the root's slack only, a small tree emptied
            // after this pass beside a large one lost its whole mirror
            // with exit 0.
            let own = o
                .max_delete
                .allowed(plan.existing)
                .map(|a| a.max(plan.deletions) + plan.rsync_temps);
            guard.trees.insert(
                pl.name.clone(),
                TreeBound {
                    measured: plan.deletions + plan.rsync_temps,
                    own,
                },
            );
            guard.root_plan.add(plan);
        }
        Ok(guard)
    }

    /// The root's deletions are within `--max-delete`, or the root is
    /// refused; returns what the copies may delete beyond them (the slack).
    fn check_bound(
        &mut self,
        root_plan: DeletePlan,
        mut refusals: Vec<String>,
    ) -> Result<Option<u64>> {
        let o = self.o;
        // What the copying pass may delete beyond the figures just
        // measured. rsync enforces it (--max-delete, exit 25): the guard
        // pass and the copy are minutes or hours apart, and a source tree
        // emptied in between (its filesystem unmounted, an operator's rm)
        // otherwise went through unbounded and emptied its mirror.
        let slack = o
            .max_delete
            .allowed(root_plan.existing)
            .map(|a| a.saturating_sub(root_plan.deletions));
        if let Some(why) = o.max_delete.check(&root_plan) {
            refusals.push(why);
        }
        self.report.plan.add(root_plan);
        if !refusals.is_empty() {
            return Err(Exit::refused(format!(
                "refused, nothing copied or deleted: {}",
                refusals.join("; ")
            )));
        }
        Ok(slack)
    }

    /// A dry run reports the trees it would mirror.
    fn mark_would_mirror(&mut self, planned: &[Planned]) {
        for pl in planned {
            let idx = self.entry_idx(&pl.name);
            if self.report.entries[idx].action.is_empty() {
                self.report.entries[idx].action = "would-mirror".into();
            }
        }
    }

    /// Every guarded tree copied, one at a time; a failed tree does not
    /// stop the rest, and only a tree that ends mirrored counts as one.
    fn copy_trees(
        &mut self,
        planned: &[Planned],
        trees: &HashMap<Vec<u8>, TreeBound>,
        mut slack: Option<u64>,
    ) -> Result<Copied> {
        let mut copied = Copied::default();
        for pl in planned {
            let idx = self.entry_idx(&pl.name);
            if !self.report.entries[idx].action.is_empty() {
                continue;
            }
            let Some((_, pinned)) = &pl.pin else {
                continue;
            };
            // Contract 12: the guard holds while acting. Checked again
            // right before the copy (with --max-delete off, the only
            // check): an emptied source never empties its mirror.
            if empty_beside_a_mirror(pinned, &pl.dst) {
                let rep = &mut self.report.entries[idx];
                fail(
                    rep,
                    format!(
                        "source {} is empty but its mirror is not (emptied since the guard pass): nothing copied or deleted",
                        p(&pl.src)
                    ),
                );
                copied.failed.push(rep.name.clone());
                continue;
            }
            let tree = trees.get(&pl.name).copied().unwrap_or_default();
            let copy = self.copy_tree(pl, pinned, tree, &mut slack)?;
            let report = &mut *self.report;
            let rep = &mut report.entries[idx];
            rep.transferred = copy.transferred;
            report.vanished_files += settle(rep, copy.res, self.o.max_delete);
            // A source empty right after a copy that deleted in its mirror
            // was emptied while copied (with --max-delete off nothing
            // bounded it): never reported or recorded as mirrored.
            if rep.action == "mirrored" && copy.deleted > 0 && is_empty_dir(pinned) {
                fail(
                    rep,
                    format!(
                        "source {} is empty now, emptied while it was copied: {} item(s) deleted in its mirror",
                        p(&pl.src),
                        copy.deleted
                    ),
                );
            }
            if rep.action == "mirrored" {
                copied.ok += 1;
                copied.mirrored.push(pl.name.clone());
                info!(
                    "{}: mirrored, {} file(s) transferred",
                    rep.name, rep.transferred
                );
            } else {
                copied.failed.push(rep.name.clone());
            }
        }
        Ok(copied)
    }

    /// One tree copied through the pinned backup root, held to its bound;
    /// what rsync reported as sent reaches the ledger, however rsync ended,
    /// unless the backup root changed meanwhile (`Err`, the spool kept).
    fn copy_tree(
        &mut self,
        pl: &Planned,
        pinned: &Path,
        tree: TreeBound,
        slack: &mut Option<u64>,
    ) -> Result<TreeCopy> {
        let o = self.o;
        self.dest_at.check()?;
        self.known.insert(pl.name.clone());
        entries::save(&o.dest, &self.entries_file, &self.known)?;
        let prefix = self.prefix_of(&pl.name);
        let spool = spool::path(&o.dest.join(STATE_DIR).join("spool"), &prefix);
        let mut args = rsync::args(
            pinned,
            &self.dest_at.pinned(&o.dest, &pl.dst),
            &pl.excludes,
            o.prune_skipped,
            false,
        );
        let bound = match (slack.map(|s| tree.measured + s), tree.own) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(bound) = bound {
            rsync::with_max_delete(&mut args, bound);
        }
        let res = rsync::run_spooled(&o.rsync, &args, &spool, o.timeout)?;
        // The items of a copy made while the backup root changed are not
        // ledgered on whatever is there now: they stay in the spool file
        // (on the disk rsync wrote to) for the next run's recovery.
        if let Err(e) = self.dest_at.check() {
            return Err(Exit::err(
                ExitCode::Failed,
                format!(
                    "{}: {}; its copy's items stay in {} for the next run",
                    name_str(&pl.name),
                    backup_core::exit::one_line(&e),
                    p(&spool)
                ),
            ));
        }
        let data = std::fs::read(&spool).unwrap_or_default();
        let deleted = rsync_items::parse(&data)
            .iter()
            .filter(|i| i.is_deletion())
            .count() as u64;
        if let Some(s) = slack.as_mut() {
            // Deletions beyond this tree's measured ones use up the slack
            // for the trees after it: the bound holds for the whole root.
            *s = s.saturating_sub(deleted.saturating_sub(tree.measured));
        }
        let n = spool::append_items(self.ledger, &prefix, &data)?;
        let _ = std::fs::remove_file(&spool);
        self.report.ledger_entries += n;
        self.report.transferred += n;
        Ok(TreeCopy {
            res,
            deleted,
            transferred: n,
        })
    }

    /// With --prune-skipped, the mirrors of entries the skip list now
    /// routes elsewhere are removed and forgotten.
    fn prune_skipped(&mut self) -> Result<()> {
        if !self.o.prune_skipped {
            return Ok(());
        }
        for rep in self.report.entries[self.first_entry..]
            .iter()
            .filter(|r| r.action == "pruned")
        {
            let raw = self.known.iter().find(|k| name_str(k) == rep.name).cloned();
            if let Some(raw) = raw {
                let d = self.dest.join(OsStr::from_bytes(&raw));
                if d.exists() {
                    std::fs::remove_dir_all(&d)
                        .with_context(|| format!("cannot prune {}", p(&d)))?;
                }
                self.known.remove(&raw);
                info!("{}: pruned (routed '{}' now)", rep.name, rep.route.as_str());
            }
        }
        entries::save(&self.o.dest, &self.entries_file, &self.known)
    }

    /// The root's exit code, its kept mirrors and refused names warned
    /// about, and what was not mirrored named in one error line.
    fn outcome(self, seen: Vec<Vec<u8>>, copied: Copied) -> RootOutcome {
        let mine = &self.report.entries[self.first_entry..];
        for r in mine {
            match r.action.as_str() {
                "vanished" => warn!("{}: {}", r.name, r.message.as_deref().unwrap_or("")),
                "reserved" | "skipped" if r.message.is_some() => {
                    warn!("{}: {}", r.name, r.message.as_deref().unwrap_or(""));
                }
                _ => {}
            }
        }
        let reserved_n = mine.iter().filter(|r| r.action == "reserved").count();
        let code = ExitCode::from_items(copied.ok, copied.failed.len() + reserved_n);
        if code != ExitCode::Ok {
            let mut what = copied.failed.clone();
            what.extend(
                mine.iter()
                    .filter(|r| r.action == "reserved")
                    .map(|r| format!("{} (reserved name)", r.name)),
            );
            error!("{}: not mirrored: {}", p(&self.root.path), what.join(", "));
        }
        RootOutcome {
            code,
            seen,
            mirrored: copied.mirrored,
        }
    }
}

/// How one tree's copy went.
struct TreeCopy {
    res: Spooled,
    /// Items rsync deleted in the mirror.
    deleted: u64,
    /// Files transferred (and ledgered).
    transferred: u64,
}

/// The dry run of one tree: what its copy would delete, counted from an
/// unnamed spool file (every item is listed: millions on a large tree).
fn measure_tree(o: &MirrorOpts, pl: &Planned, pinned: &Path) -> Result<DeletePlan> {
    // On the backup disk when the state directory exists.
    let state = o.dest.join(STATE_DIR);
    let spool_dir = if state.is_dir() {
        state
    } else {
        std::env::temp_dir()
    };
    let spool = backup_core::cmd::spool_file(&spool_dir)
        .with_context(|| format!("dry run of {}", p(&pl.src)))?;
    let out = rsync::cmd(
        &o.rsync,
        pinned,
        &pl.dst,
        &pl.excludes,
        o.prune_skipped,
        true,
        o.timeout,
    )
    .stdout_into(spool.try_clone().with_context(|| p(&spool_dir))?)
    .max_stdout(rsync::DRY_RUN_MAX_OUTPUT)
    .run_any()
    .with_context(|| format!("dry run of {}", p(&pl.src)))?;
    if !RsyncResult::classify(out.code, &out.stderr).is_success() {
        return Err(anyhow::anyhow!(
            "dry run of {} failed: rsync exited {} ({}): {}",
            p(&pl.src),
            out.code,
            RsyncResult::describe(out.code),
            out.stderr.trim()
        ));
    }
    let plan = DeletePlan::from_spool(&spool)
        .with_context(|| format!("reading the dry run of {}", p(&pl.src)))?;
    if plan.rsync_temps > 0 {
        backup_core::info!(
            "{}: {} temp file(s) of an interrupted rsync will be removed (not counted against --max-delete)",
            p(&pl.src),
            plan.rsync_temps
        );
    }
    Ok(plan)
}

/// The entry's action from how its rsync ended: mirrored (vanished files
/// included, returned) or failed, with its message.
fn settle(rep: &mut EntryReport, res: Spooled, max_delete: MaxDelete) -> u64 {
    match res {
        Spooled::Exited { code, stderr } => match RsyncResult::classify(code, &stderr) {
            RsyncResult::Ok => {
                rep.action = "mirrored".into();
                0
            }
            RsyncResult::Vanished { files } => {
                rep.action = "mirrored".into();
                rep.message = Some(format!("{files} file(s) vanished during the transfer"));
                warn!(
                    "{}: {files} source file(s) vanished during the transfer (rsync 24), counted as success",
                    rep.name
                );
                files as u64
            }
            _ => {
                let m = if code == 25 {
                    format!(
                        "the source changed since the guard pass: rsync stopped deleting at the --max-delete {max_delete} bound (exit 25), the rest of the mirror is kept"
                    )
                } else {
                    format!(
                        "rsync exited {} ({}): {}",
                        code,
                        RsyncResult::describe(code),
                        backup_core::log::escape_str(stderr.trim())
                    )
                };
                fail(rep, m);
                0
            }
        },
        Spooled::Failed(m) => {
            fail(rep, m);
            0
        }
    }
}

/// The entry failed: its action, its message, one error line.
fn fail(rep: &mut EntryReport, m: String) {
    rep.action = "failed".into();
    error!("{}: {m}", rep.name);
    rep.message = Some(m);
}

/// A source tree with nothing in it while its mirror holds something: an
/// unmounted or emptied source, never a reason to empty the mirror.
fn empty_beside_a_mirror(src: &Path, dst: &Path) -> bool {
    is_empty_dir(src) && !is_empty_dir(dst)
}

/// Nested skip-list rules inside a mirrored entry become anchored excludes
/// that match what the skip list's matcher matches (core translates them).
fn nested_excludes(skip: &SkipList, top: &OsStr) -> Vec<String> {
    skip.nested_rules(top)
        .into_iter()
        .filter(|r| r.route != Route::BackupDisk)
        .map(|r| backup_core::skiplist::rsync_pattern(&r.pattern[1..]))
        .collect()
}
