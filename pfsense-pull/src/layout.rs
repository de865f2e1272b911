//! Where copies live: `<dest>/<week>/config-<YYYYMMDD>.xml` and
//! `<dest>/<week>/pfsense-full-<YYYYMMDD>.tar.gz`. Flat files of the old
//! layout (`<dest>/config-<YYYYMMDD>.xml`) are recognised and rotated by
//! their date. Only names of these patterns are ever deleted.

use std::path::{Path, PathBuf};

use anyhow::Context;
use backup_core::weeks::{parse_week, retain, week_key};
use chrono::NaiveDate;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Config,
    FullTar,
}

/// One copy found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub path: PathBuf,
    pub kind: Kind,
    pub date: NaiveDate,
    /// The week it belongs to: its directory, or the week of its date when flat.
    pub week: String,
    pub flat: bool,
}

pub fn config_name(date: NaiveDate) -> String {
    format!("config-{}.xml", date.format("%Y%m%d"))
}

pub fn tar_name(date: NaiveDate) -> String {
    format!("pfsense-full-{}.tar.gz", date.format("%Y%m%d"))
}

/// The in-progress name beside the final one; never matched as a copy.
pub fn partial_name(final_name: &str) -> String {
    format!(".{final_name}.partial")
}

/// Parse `config-YYYYMMDD.xml` / `pfsense-full-YYYYMMDD.tar.gz`.
pub fn parse_name(name: &str) -> Option<(Kind, NaiveDate)> {
    let (kind, digits) = if let Some(r) = name.strip_prefix("config-") {
        (Kind::Config, r.strip_suffix(".xml")?)
    } else if let Some(r) = name.strip_prefix("pfsense-full-") {
        (Kind::FullTar, r.strip_suffix(".tar.gz")?)
    } else {
        return None;
    };
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((kind, NaiveDate::parse_from_str(digits, "%Y%m%d").ok()?))
}

/// Everything under `dest` that this tool may own.
#[derive(Debug, Default)]
pub struct Scan {
    pub items: Vec<Item>,
    /// Week directories (their names parse as weeks).
    pub week_dirs: Vec<String>,
    /// `.partial` files left by a killed run.
    pub partials: Vec<PathBuf>,
}

/// A file a killed run left beside a copy: our `.NAME.partial` (tar
/// stream) or `.NAME.tmp.PID` (the atomic write of config.xml).
fn is_partial(name: &str) -> bool {
    let Some(inner) = name.strip_prefix('.') else {
        return false;
    };
    let base = match inner.strip_suffix(".partial") {
        Some(b) => b,
        None => match inner.rsplit_once(".tmp.") {
            Some((b, pid)) if !pid.is_empty() && pid.bytes().all(|c| c.is_ascii_digit()) => b,
            _ => return false,
        },
    };
    parse_name(base).is_some()
}

pub fn scan(dest: &Path) -> anyhow::Result<Scan> {
    let mut s = Scan::default();
    let rd = match std::fs::read_dir(dest) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(s),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dest.display())),
    };
    for ent in rd {
        let ent = ent.with_context(|| format!("cannot list {}", dest.display()))?;
        let Ok(name) = ent.file_name().into_string() else {
            continue;
        };
        let ft = ent.file_type()?;
        if ft.is_dir() && parse_week(&name).is_some() {
            s.week_dirs.push(name.clone());
            let dir = ent.path();
            for sub in
                std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?
            {
                let sub = sub?;
                let Ok(sn) = sub.file_name().into_string() else {
                    continue;
                };
                if !sub.file_type()?.is_file() {
                    continue;
                }
                if is_partial(&sn) {
                    s.partials.push(sub.path());
                } else if let Some((kind, date)) = parse_name(&sn) {
                    s.items.push(Item {
                        path: sub.path(),
                        kind,
                        date,
                        week: name.clone(),
                        flat: false,
                    });
                }
            }
        } else if ft.is_file() {
            if is_partial(&name) {
                s.partials.push(ent.path());
            } else if let Some((kind, date)) = parse_name(&name) {
                s.items.push(Item {
                    path: ent.path(),
                    kind,
                    date,
                    week: week_key(date),
                    flat: true,
                });
            }
        }
    }
    s.items
        .sort_by(|a, b| (a.date, &a.path).cmp(&(b.date, &b.path)));
    s.week_dirs.sort();
    Ok(s)
}

/// The newest config copy (by its date), the reference for "changed" and
/// for the size-shrink warning.
pub fn newest_config(items: &[Item]) -> Option<&Item> {
    items
        .iter()
        .filter(|i| i.kind == Kind::Config)
        .max_by(|a, b| (a.date, !a.flat, &a.path).cmp(&(b.date, !b.flat, &b.path)))
}

/// One thing rotation removes (or would remove), and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Removal {
    pub path: PathBuf,
    pub week: String,
    pub reason: String,
}

/// Decide what rotation removes: every copy (and week directory) of the
/// weeks older than the `keep` newest. The week of `today` is always kept.
pub fn plan_rotation(
    dest: &Path,
    scan: &Scan,
    keep: usize,
    today: NaiveDate,
) -> anyhow::Result<Vec<Removal>> {
    let mut names: Vec<String> = scan.week_dirs.clone();
    names.extend(scan.items.iter().map(|i| i.week.clone()));
    names.sort();
    names.dedup();
    let decisions = retain(names.iter().map(String::as_str), keep)
        .map_err(|e| backup_core::exit::Exit::usage(format!("--keep-weeks: {e}")))?;
    let current = week_key(today);
    // The newest copy of each kind is never rotated away, however old: when
    // every Sunday's tar since failed (each of those runs exits 3, the
    // weekdays succeed), week retention alone removed the last good full
    // tar and left no copy of the firewall's filesystem at all.
    let newest: Vec<&Path> = [Kind::Config, Kind::FullTar]
        .into_iter()
        .filter_map(|k| {
            scan.items
                .iter()
                .filter(|i| i.kind == k)
                .max_by(|a, b| (a.date, !a.flat, &a.path).cmp(&(b.date, !b.flat, &b.path)))
                .map(|i| i.path.as_path())
        })
        .collect();
    let mut out = Vec::new();
    for d in decisions.iter().filter(|d| !d.keep && d.name != current) {
        let mut kept_one = false;
        for i in scan.items.iter().filter(|i| i.week == d.name) {
            if newest.contains(&i.path.as_path()) {
                kept_one = true;
                continue;
            }
            out.push(Removal {
                path: i.path.clone(),
                week: d.name.clone(),
                reason: d.reason.clone(),
            });
        }
        if scan.week_dirs.contains(&d.name) && !kept_one {
            out.push(Removal {
                path: dest.join(&d.name),
                week: d.name.clone(),
                reason: format!("{} (directory, removed when empty)", d.reason),
            });
        }
    }
    Ok(out)
}

/// Carry out a rotation plan: files first, then week directories only when
/// nothing else is left in them (never delete what we did not write).
pub fn apply_rotation(plan: &[Removal]) -> Vec<String> {
    let mut errors = Vec::new();
    for r in plan.iter().filter(|r| !r.path.is_dir()) {
        if let Err(e) = std::fs::remove_file(&r.path) {
            errors.push(format!(
                "cannot remove {}: {e}",
                backup_core::log::p(&r.path)
            ));
        }
    }
    for r in plan.iter().filter(|r| r.path.is_dir()) {
        if let Err(e) = std::fs::remove_dir(&r.path) {
            errors.push(format!(
                "kept week directory {}: {e} (it holds files this tool did not write)",
                backup_core::log::p(&r.path)
            ));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).expect("date")
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(
            parse_name(&config_name(d(2026, 11, 29))),
            Some((Kind::Config, d(2026, 11, 29)))
        );
        assert_eq!(
            parse_name(&tar_name(d(2026, 1, 4))),
            Some((Kind::FullTar, d(2026, 1, 4)))
        );
        for bad in [
            "config-2026113.xml",
            "config-20261131.xml",
            "config-20261129.xml.partial",
            ".config-20261129.xml.partial",
            "pfsense-full-20261129.tar",
            "notes.txt",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }

    /// Bug 22 (docs/compatibility.md): the old `ls -t | tail` kept 4 files, i.e. 4 days of daily
    /// configs. Retention now counts weeks: 4 weeks keep every day in them.
    #[test]
    fn bug22_retention_keeps_weeks_of_daily_configs_not_four_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let dest = dir.path();
        let first = d(2026, 10, 26); // a Monday, week 44
        for i in 0..35 {
            let day = first + chrono::Duration::days(i);
            let w = dest.join(week_key(day));
            std::fs::create_dir_all(&w).expect("mkdir");
            std::fs::write(w.join(config_name(day)), "x").expect("write");
        }
        let today = first + chrono::Duration::days(34);
        let s = scan(dest).expect("scan");
        assert_eq!(s.week_dirs.len(), 5);
        let plan = plan_rotation(dest, &s, 4, today).expect("plan");
        assert!(apply_rotation(&plan).is_empty());
        let left = scan(dest).expect("rescan");
        assert_eq!(left.items.len(), 28, "four whole weeks of daily configs");
        assert_eq!(
            left.week_dirs,
            ["2026-W45", "2026-W46", "2026-W47", "2026-W48"]
        );
        assert!(!dest.join("2026-W44").exists());
    }

    #[test]
    fn the_newest_copy_of_each_kind_outlives_its_week() {
        let dir = tempfile::tempdir().expect("tmp");
        let dest = dir.path();
        for (w, f) in [
            ("2026-W44", "pfsense-full-20261101.tar.gz"),
            ("2026-W44", "config-20261101.xml"),
            ("2026-W45", "config-20261108.xml"),
            ("2026-W48", "config-20261129.xml"),
        ] {
            std::fs::create_dir_all(dest.join(w)).expect("mkdir");
            std::fs::write(dest.join(w).join(f), "x").expect("write");
        }
        let s = scan(dest).expect("scan");
        let plan = plan_rotation(dest, &s, 1, d(2026, 11, 29)).expect("plan");
        let mut gone: Vec<PathBuf> = plan.iter().map(|r| r.path.clone()).collect();
        gone.sort();
        // W44 keeps its directory: the only full tar is in it.
        assert_eq!(
            gone,
            [
                dest.join("2026-W44/config-20261101.xml"),
                dest.join("2026-W45"),
                dest.join("2026-W45/config-20261108.xml"),
            ]
        );
        assert!(apply_rotation(&plan).is_empty());
        assert!(dest.join("2026-W44/pfsense-full-20261101.tar.gz").is_file());
    }

    #[test]
    fn only_our_leftovers_count_as_partial() {
        for ours in [
            ".pfsense-full-20261129.tar.gz.partial",
            ".config-20261129.xml.tmp.4242",
        ] {
            assert!(is_partial(ours), "{ours}");
        }
        for other in [
            ".notes.partial",
            "pfsense-full-20261129.tar.gz.partial",
            ".config-20261129.xml.tmp.",
            ".config-20261129.xml.tmp.x1",
            ".config-20261129.xml",
        ] {
            assert!(!is_partial(other), "{other}");
        }
    }

    #[test]
    fn flat_and_weekly_copies_rotate_together() {
        let dir = tempfile::tempdir().expect("tmp");
        let dest = dir.path();
        // Old flat layout: weeks 2026-W44 and 2026-W45.
        for f in [
            "config-20261027.xml",
            "config-20261103.xml",
            "pfsense-full-20261101.tar.gz",
        ] {
            std::fs::write(dest.join(f), "x").expect("write");
        }
        // A newer full tar, so the old flat one is not the newest of its
        // kind (that one would be kept whatever its age).
        for (w, f) in [
            ("2026-W46", "config-20261110.xml"),
            ("2026-W47", "config-20261117.xml"),
            ("2026-W47", "pfsense-full-20261122.tar.gz"),
            ("2026-W48", "config-20261124.xml"),
        ] {
            std::fs::create_dir_all(dest.join(w)).expect("mkdir");
            std::fs::write(dest.join(w).join(f), "x").expect("write");
        }
        std::fs::write(dest.join("README"), "mine").expect("write");
        let s = scan(dest).expect("scan");
        assert_eq!(s.items.len(), 7);
        assert_eq!(
            newest_config(&s.items).map(|i| i.path.clone()),
            Some(dest.join("2026-W48/config-20261124.xml"))
        );
        let plan = plan_rotation(dest, &s, 3, d(2026, 11, 24)).expect("plan");
        let mut gone: Vec<String> = plan
            .iter()
            .map(|r| {
                r.path
                    .strip_prefix(dest)
                    .expect("under")
                    .display()
                    .to_string()
            })
            .collect();
        gone.sort();
        assert_eq!(
            gone,
            [
                "config-20261027.xml",
                "config-20261103.xml",
                "pfsense-full-20261101.tar.gz"
            ]
        );
        assert!(apply_rotation(&plan).is_empty());
        let left = scan(dest).expect("rescan");
        assert_eq!(left.items.len(), 4);
        assert!(dest.join("README").exists());
        assert!(plan_rotation(dest, &left, 0, d(2026, 11, 24)).is_err());
    }
}
