//! The layout on the backup disk: `pvc-data/<week>/<ns>/<pvc>/`, the
//! link-dest choice, leftovers of killed runs, and weekly rotation.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use backup_core::ledger::Ledger;
use backup_core::log::p;
use backup_core::warn;
use backup_core::weeks::{Decision, Style, Week, parse_week, retain};
use serde::Serialize;

/// Written into a week directory after a fully successful run: the week
/// then holds a whole copy of every PVC and counts for rotation.
pub const COMPLETE_MARKER: &str = ".pvc-copy-complete";
/// A week being deleted is first renamed to this prefix, so a killed
/// rotation never leaves a half-deleted week under a week name.
pub const DELETING_PREFIX: &str = ".deleting-";
/// sqlite-dump's copies of each week (rotated with pvc-data).
pub const SQLITE_BACKUP: &str = "sqlite-backup";

pub fn pvc_data(root: &Path) -> PathBuf {
    root.join("pvc-data")
}

/// Week directories under `pvc-data`, newest first.
pub fn weeks(root: &Path) -> Vec<Week> {
    let mut v: Vec<Week> = fs::read_dir(pvc_data(root))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| parse_week(&e.file_name().to_string_lossy()))
        .collect();
    v.sort();
    v.reverse();
    v
}

/// The newest existing copy of `<ns>/<name>` in any week (the current
/// week's earlier copy included). Every such directory is whole: copies
/// are only ever swapped in complete.
pub fn newest_copy(root: &Path, ns: &str, name: &str) -> Option<PathBuf> {
    weeks(root).into_iter().find_map(|w| {
        let d = pvc_data(root).join(&w.name).join(ns).join(name);
        fs::symlink_metadata(&d)
            .is_ok_and(|m| m.is_dir())
            .then_some(d)
    })
}

/// Remove what a killed run can leave: `.<pvc>.partial` build dirs in
/// every week and `.deleting-*` weeks. Returns how many were removed.
pub fn clean_leftovers(root: &Path, ledger: &Ledger) -> io::Result<usize> {
    let base = pvc_data(root);
    let mut n = 0;
    for e in fs::read_dir(root.join(SQLITE_BACKUP))
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.file_name().to_string_lossy().starts_with(DELETING_PREFIX) {
            warn!("removing {} left by an interrupted rotation", p(&e.path()));
            crate::copy::remove_tree(&e.path())?;
            n += 1;
        }
    }
    let Ok(rd) = fs::read_dir(&base) else {
        return Ok(0);
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if name.starts_with(DELETING_PREFIX) {
            warn!("removing {} left by an interrupted rotation", p(&path));
            crate::copy::remove_tree(&path)?;
            n += 1;
            continue;
        }
        if parse_week(&name).is_none() || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        for ns in fs::read_dir(&path).into_iter().flatten().flatten() {
            if !ns.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            for c in fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                let cn = c.file_name().to_string_lossy().into_owned();
                if let Some(name) = cn
                    .strip_prefix('.')
                    .and_then(|c| c.strip_suffix(".pending"))
                {
                    let entries = crate::copy::pending_entries(&c.path(), &ns.path().join(name))?;
                    if !entries.is_empty() {
                        warn!(
                            "an interrupted run swapped in {} but did not record its {} changed paths; adding them to the ledger",
                            p(&ns.path().join(name)),
                            entries.len()
                        );
                        ledger.append(&entries).map_err(io::Error::other)?;
                    }
                    fs::remove_file(c.path())?;
                    n += 1;
                    continue;
                }
                if cn.starts_with('.') && cn.ends_with(".partial") {
                    warn!(
                        "removing unfinished copy {} left by an interrupted run",
                        p(&c.path())
                    );
                    crate::copy::remove_tree(&c.path())?;
                    n += 1;
                }
            }
        }
    }
    Ok(n)
}

/// A week counts for rotation when a fully successful run marked it, or
/// when it has an old `YYYY-WW` name (written by the shell pipeline, which
/// kept no marker; those are what is left of its history).
pub fn is_complete(root: &Path, w: &Week) -> bool {
    w.style == Style::Legacy || pvc_data(root).join(&w.name).join(COMPLETE_MARKER).exists()
}

#[derive(Debug, Clone, Serialize)]
pub struct RotationPlan {
    pub decisions: Vec<Decision>,
}

impl RotationPlan {
    pub fn dropped(&self) -> impl Iterator<Item = &str> {
        self.decisions
            .iter()
            .filter(|d| !d.keep)
            .map(|d| d.name.as_str())
    }
}

/// Keep the newest `keep` complete weeks (core ordering: ISO and old
/// names together). An incomplete week is kept when newer than the oldest
/// kept complete week (it may be the one in progress) and dropped when
/// older. The current week is always kept, and counts as complete (it is
/// marked so before a real rotation; a dry run plans as if it were).
pub fn plan_rotation(root: &Path, keep: usize, current: &str) -> Result<RotationPlan, String> {
    let mut all = weeks(root);
    if !all.iter().any(|w| w.name == current)
        && let Some(w) = parse_week(current)
    {
        all.push(w);
    }
    let counts = |w: &Week| w.name == current || is_complete(root, w);
    let complete: Vec<&Week> = all.iter().filter(|w| counts(w)).collect();
    let mut decisions = retain(complete.iter().map(|w| w.name.as_str()), keep)?;
    let oldest_kept = decisions
        .iter()
        .filter(|d| d.keep)
        .filter_map(|d| parse_week(&d.name))
        .min();
    for w in all.iter().filter(|w| !counts(w)) {
        let older = oldest_kept.as_ref().is_some_and(|o| w < o);
        decisions.push(Decision {
            name: w.name.clone(),
            keep: !older,
            reason: if older {
                "incomplete and older than the oldest kept complete week".into()
            } else {
                "incomplete (no fully successful run yet); newer than the kept weeks".into()
            },
        });
    }
    for d in &mut decisions {
        if d.name == current && !d.keep {
            d.keep = true;
            d.reason = "the current week".into();
        }
    }
    Ok(RotationPlan { decisions })
}

/// Delete the dropped weeks: rename aside first, then remove.
pub fn apply_rotation(root: &Path, plan: &RotationPlan) -> io::Result<Vec<String>> {
    let base = pvc_data(root);
    let mut done = Vec::new();
    for name in plan.dropped() {
        let from = base.join(name);
        let aside = base.join(format!("{DELETING_PREFIX}{name}"));
        fs::rename(&from, &aside)?;
        crate::copy::remove_tree(&aside)?;
        done.push(name.to_string());
    }
    Ok(done)
}

/// Weeks of a tree derived from pvc-data (`sqlite-backup/<week>/`, written
/// by sqlite-dump from `pvc-data/<week>`) that are older than every week
/// pvc-data keeps: they go with the pvc-data weeks they came from.
pub fn follower_drops(root: &Path, dir: &str, plan: &RotationPlan) -> Vec<String> {
    let Some(oldest) = plan
        .decisions
        .iter()
        .filter(|d| d.keep)
        .filter_map(|d| parse_week(&d.name))
        .min()
    else {
        return Vec::new();
    };
    let mut v: Vec<String> = fs::read_dir(root.join(dir))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| parse_week(&e.file_name().to_string_lossy()))
        .filter(|w| *w < oldest)
        .map(|w| w.name)
        .collect();
    v.sort();
    v
}

/// Delete weeks of a follower tree (rename aside, then remove).
pub fn apply_follower(root: &Path, dir: &str, names: &[String]) -> io::Result<()> {
    let base = root.join(dir);
    for name in names {
        let aside = base.join(format!("{DELETING_PREFIX}{name}"));
        fs::rename(base.join(name), &aside)?;
        crate::copy::remove_tree(&aside)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk(root: &Path, week: &str, complete: bool) {
        let d = pvc_data(root).join(week).join("ns").join("p");
        fs::create_dir_all(&d).expect("mkdir");
        if complete {
            fs::write(pvc_data(root).join(week).join(COMPLETE_MARKER), "{}").expect("marker");
        }
    }

    #[test]
    fn rotation_counts_complete_weeks_and_old_names() {
        let t = tempfile::tempdir().expect("tmp");
        let r = t.path();
        mk(r, "2026-44", false); // legacy: complete by definition
        mk(r, "2026-W45", true);
        mk(r, "2026-W46", false); // a failed week between kept ones
        mk(r, "2026-W47", true);
        mk(r, "2026-W48", true);
        mk(r, "2026-W49", true);
        let plan = plan_rotation(r, 3, "2026-W49").expect("plan");
        let mut dropped: Vec<&str> = plan.dropped().collect();
        dropped.sort();
        assert_eq!(dropped, ["2026-44", "2026-W45", "2026-W46"]);
        apply_rotation(r, &plan).expect("apply");
        let left: Vec<String> = weeks(r).into_iter().map(|w| w.name).collect();
        assert_eq!(left, ["2026-W49", "2026-W48", "2026-W47"]);
        for w in ["2026-43", "2026-W46", "2026-W47", "2026-W49"] {
            fs::create_dir_all(r.join(SQLITE_BACKUP).join(w)).expect("sqlite week");
        }
        assert_eq!(
            follower_drops(r, SQLITE_BACKUP, &plan),
            ["2026-43", "2026-W46"]
        );
    }

    #[test]
    fn newest_copy_searches_all_weeks() {
        let t = tempfile::tempdir().expect("tmp");
        let r = t.path();
        mk(r, "2026-46", false);
        mk(r, "2026-W47", true);
        fs::create_dir_all(pvc_data(r).join("2026-W48").join("other")).expect("mkdir");
        assert_eq!(
            newest_copy(r, "ns", "p"),
            Some(pvc_data(r).join("2026-W47/ns/p"))
        );
        assert_eq!(newest_copy(r, "ns", "q"), None);
    }

    #[test]
    fn leftovers_are_removed() {
        let t = tempfile::tempdir().expect("tmp");
        let r = t.path();
        mk(r, "2026-W47", true);
        let partial = pvc_data(r).join("2026-W47/ns/.p.partial/x");
        fs::create_dir_all(&partial).expect("mkdir");
        fs::create_dir_all(pvc_data(r).join(".deleting-2026-W40/a")).expect("mkdir");
        let ledger = Ledger::new(
            r.join(".changed-files"),
            backup_core::ledger::PathKind::Relative,
        );
        assert_eq!(clean_leftovers(r, &ledger).expect("clean"), 2);
        assert!(pvc_data(r).join("2026-W47/ns/p").is_dir());
        assert!(!pvc_data(r).join("2026-W47/ns/.p.partial").exists());
    }
}
