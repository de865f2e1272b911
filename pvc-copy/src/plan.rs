//! From `lvs` and `kubectl get pv` output to a list of work items: for each
//! PVC origin LV its newest own snapshot and the `<ns>/<pvc>` it is copied
//! to. Pure functions over parsed input, so every rule is unit-tested.

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset, Local, Utc};
use regex::Regex;
use serde::Serialize;

/// The tag lvm-snap puts on the snapshots it creates (informational
/// here: snapshots are recognised by name and LVM origin, so the shell
/// script's untagged ones still count).
pub use backup_core::lvm::TAG as SNAP_TAG;

pub use backup_core::k8s::{handle_names_lv, valid_name as valid_k8s_name};

/// An `lvs` report row, as `backup_core::lvm` parses it.
pub use backup_core::lvm::Row as Lv;
/// Parse `lvs --reportformat json` output.
pub use backup_core::lvm::parse_rows as parse_lvs;

/// A PersistentVolume, reduced to what the mapping needs (read by
/// `backup_core::k8s`; every driver counts, as before: an LV is found by
/// its handle alone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pv {
    pub name: String,
    pub handle: String,
    pub claim: Option<(String, String)>,
    pub phase: String,
}

impl From<backup_core::k8s::Pv> for Pv {
    fn from(p: backup_core::k8s::Pv) -> Pv {
        Pv {
            claim: p
                .claim_ref()
                .map(|(ns, name)| (ns.to_string(), name.to_string())),
            name: p.name,
            handle: p.handle,
            phase: p.phase,
        }
    }
}

/// Parse `kubectl get pv -o json`.
pub fn parse_pvs(json: &[u8]) -> Result<Vec<Pv>, String> {
    Ok(backup_core::k8s::parse_pv_list(json)?
        .into_iter()
        .map(Pv::from)
        .collect())
}

/// A `NS/PVC` selector for `--skip`/`--only`; `NS/*` selects a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub ns: String,
    pub pvc: Option<String>,
}

impl Selector {
    pub fn parse(s: &str) -> Result<Selector, String> {
        let bad = || format!("invalid selector {s:?}: expected NAMESPACE/PVC or NAMESPACE/*");
        let (ns, pvc) = s.split_once('/').ok_or_else(bad)?;
        if !valid_k8s_name(ns) {
            return Err(bad());
        }
        if pvc == "*" {
            return Ok(Selector {
                ns: ns.into(),
                pvc: None,
            });
        }
        if !valid_k8s_name(pvc) {
            return Err(bad());
        }
        Ok(Selector {
            ns: ns.into(),
            pvc: Some(pvc.into()),
        })
    }
    pub fn matches(&self, ns: &str, pvc: &str) -> bool {
        self.ns == ns && self.pvc.as_deref().is_none_or(|p| p == pvc)
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ns, self.pvc.as_deref().unwrap_or("*"))
    }
}

/// A snapshot chosen for copying.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub name: String,
    pub path: String,
    pub created: DateTime<Utc>,
    pub tagged: bool,
}

/// What happens to one origin LV.
#[derive(Debug, Clone)]
pub struct Item {
    pub lv: String,
    /// `<ns>/<pvc>` as resolved (before disambiguation).
    pub pvc: Option<String>,
    pub pv: Option<String>,
    /// Namespace directory and PVC directory name under the week.
    pub dest_ns: Option<String>,
    pub dest_name: Option<String>,
    pub snapshot: Option<Snapshot>,
    /// Set when the item is not copied: `Fail` counts as a failure.
    pub verdict: Verdict,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "reason", rename_all = "lowercase")]
pub enum Verdict {
    Copy,
    Skip(String),
    Fail(String),
}

/// Looser than `backup_core::lvm::is_origin` (which wants lvm-snap's
/// lowercase hex uuid): an LV lvm-snap would not snapshot still gets an
/// item here and fails loudly for lack of a snapshot instead of vanishing
/// from the report.
fn origin_re() -> Regex {
    Regex::new(r"^vm-[0-9]+-pvc-[A-Za-z0-9-]+$").expect("static regex")
}

/// Parse `lv_time` (`2026-11-27 17:23:20 +0000`).
pub fn parse_lv_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::<FixedOffset>::parse_from_str(s.trim(), "%Y-%m-%d %H:%M:%S %z")
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

/// The time in a snapshot name (`…_snap_YYYYMMDD_HHMM`, host local time).
pub fn name_time(stamp: &str) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(backup_core::lvm::parse_stamp(stamp, &Local)?, 0)
}

/// The inputs of planning besides the LVM and PV lists.
pub struct Policy<'a> {
    pub now: DateTime<Utc>,
    pub max_age: chrono::Duration,
    pub skip: &'a [Selector],
    pub only: &'a [Selector],
}

/// Build the work list. `pvs` is `None` when no mapping is available at
/// all (kubectl failed and no cache): every origin then fails to resolve.
pub fn plan(lvs: &[Lv], pvs: Option<&[Pv]>, pol: &Policy) -> Vec<Item> {
    let ore = origin_re();
    let mut origins: Vec<&Lv> = lvs
        .iter()
        .filter(|l| l.origin.is_empty() && ore.is_match(&l.lv_name))
        .collect();
    origins.sort_by(|a, b| a.lv_name.cmp(&b.lv_name));
    let mut items: Vec<Item> = origins
        .iter()
        .map(|o| {
            let mut it = Item {
                lv: o.lv_name.clone(),
                pvc: None,
                pv: None,
                dest_ns: None,
                dest_name: None,
                snapshot: newest_snapshot(lvs, &o.lv_name),
                verdict: Verdict::Copy,
            };
            match resolve(&o.lv_name, pvs) {
                Ok(pv) => {
                    let (ns, name) = pv.claim.clone().unwrap_or_default();
                    it.pvc = Some(format!("{ns}/{name}"));
                    it.pv = Some(pv.name.clone());
                    it.dest_ns = Some(ns);
                    it.dest_name = Some(name);
                }
                Err(why) => it.verdict = Verdict::Fail(why),
            }
            it
        })
        .collect();

    disambiguate(&mut items, pvs.unwrap_or(&[]));

    for it in &mut items {
        if it.verdict != Verdict::Copy {
            continue;
        }
        let (ns, name) = (
            it.dest_ns.clone().unwrap_or_default(),
            it.pvc
                .as_deref()
                .and_then(|p| p.split_once('/'))
                .map(|(_, n)| n.to_string())
                .unwrap_or_default(),
        );
        if !pol.only.is_empty() && !pol.only.iter().any(|s| s.matches(&ns, &name)) {
            it.verdict = Verdict::Skip("not selected by --only".into());
            continue;
        }
        if let Some(s) = pol.skip.iter().find(|s| s.matches(&ns, &name)) {
            it.verdict = Verdict::Skip(format!("--skip {s}"));
            continue;
        }
        match &it.snapshot {
            None => {
                it.verdict = Verdict::Fail(format!(
                    "no snapshot named {}_snap_YYYYMMDD_HHMM (skip it explicitly with --skip {ns}/{name} if that is intended)",
                    it.lv
                ))
            }
            Some(s) => {
                let age = pol.now - s.created;
                if age > pol.max_age {
                    it.verdict = Verdict::Fail(format!(
                        "newest snapshot {} is {} old (limit {})",
                        s.name,
                        human(age),
                        human(pol.max_age)
                    ));
                }
            }
        }
    }
    items
}

fn human(d: chrono::Duration) -> String {
    let m = d.num_minutes();
    if m.abs() >= 120 {
        format!("{}h{:02}m", m / 60, (m % 60).abs())
    } else {
        format!("{m}m")
    }
}

/// The newest snapshot of `origin` named by the snapshot scheme whose LVM
/// origin is that LV (a name alone could be faked by any LV).
pub fn newest_snapshot(lvs: &[Lv], origin: &str) -> Option<Snapshot> {
    lvs.iter()
        .filter(|l| l.origin == origin)
        .filter_map(|l| {
            let stamp = backup_core::lvm::snapshot_stamp(&l.lv_name, origin)?;
            let created = parse_lv_time(&l.lv_time).or_else(|| name_time(stamp))?;
            Some(Snapshot {
                name: l.lv_name.clone(),
                path: l.lv_path.clone(),
                created,
                tagged: backup_core::lvm::tags(&l.lv_tags).any(|t| t == SNAP_TAG),
            })
        })
        .max_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)))
}

fn resolve<'a>(lv: &str, pvs: Option<&'a [Pv]>) -> Result<&'a Pv, String> {
    let Some(pvs) = pvs else {
        return Err(
            "cannot resolve PVC name: no PV list (kubectl failed and no mapping cache)".into(),
        );
    };
    let found: Vec<&Pv> = pvs
        .iter()
        .filter(|p| handle_names_lv(&p.handle, lv))
        .collect();
    match found.as_slice() {
        [] => Err("cannot resolve PVC name: no PV has this LV as its volume handle".into()),
        [pv] => match &pv.claim {
            None => Err(format!(
                "cannot resolve PVC name: PV {} has no claimRef",
                pv.name
            )),
            Some((ns, name)) if !valid_k8s_name(ns) || !valid_k8s_name(name) => Err(format!(
                "cannot resolve PVC name: PV {} claims {:?}/{:?}, not a valid namespace/name",
                pv.name, ns, name
            )),
            Some(_) => Ok(pv),
        },
        many => Err(format!(
            "cannot resolve PVC name: several PVs name this LV ({})",
            many.iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Two LVs claimed by the same `<ns>/<pvc>` (a Released PV kept next to
/// its replacement) must never share a destination: the Bound PV keeps
/// `<pvc>`, every other one is copied to `<pvc>@<pv-name>` (`@` cannot
/// occur in a PVC name). With no single Bound PV all of them get the
/// suffix. Each case is logged by the caller from the item's fields.
fn disambiguate(items: &mut [Item], pvs: &[Pv]) {
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, it) in items.iter().enumerate() {
        if let (Some(p), Verdict::Copy) = (&it.pvc, &it.verdict) {
            groups.entry(p.clone()).or_default().push(i);
        }
    }
    for idx in groups.values().filter(|v| v.len() > 1) {
        let bound: Vec<usize> = idx
            .iter()
            .copied()
            .filter(|&i| {
                let pv = items[i].pv.as_deref();
                pvs.iter()
                    .any(|p| Some(p.name.as_str()) == pv && p.phase == "Bound")
            })
            .collect();
        for &i in idx {
            if bound.len() == 1 && bound[0] == i {
                continue;
            }
            let pv = items[i].pv.clone().unwrap_or_default();
            if let Some(n) = items[i].dest_name.as_mut() {
                *n = format!("{n}@{pv}");
            }
        }
    }
}

/// Names of duplicated destinations (for the warning): `<ns>/<pvc>` that
/// more than one LV resolved to.
pub fn duplicates(items: &[Item]) -> Vec<(String, Vec<String>)> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for it in items {
        if let Some(p) = &it.pvc {
            m.entry(p.clone()).or_default().push(it.lv.clone());
        }
    }
    m.into_iter().filter(|(_, v)| v.len() > 1).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lv(name: &str, origin: &str, time: &str) -> Lv {
        Lv {
            lv_name: name.into(),
            lv_path: format!("/dev/pve/{name}"),
            origin: origin.into(),
            lv_tags: SNAP_TAG.into(),
            lv_time: time.into(),
            pool_lv: "data".into(),
            ..Lv::default()
        }
    }
    fn pv(name: &str, handle: &str, ns: &str, pvc: &str, phase: &str) -> Pv {
        Pv {
            name: name.into(),
            handle: handle.into(),
            claim: Some((ns.into(), pvc.into())),
            phase: phase.into(),
        }
    }
    fn now() -> DateTime<Utc> {
        parse_lv_time("2026-11-27 20:00:00 +0000").expect("time")
    }
    fn pol<'a>(skip: &'a [Selector], only: &'a [Selector]) -> Policy<'a> {
        Policy {
            now: now(),
            max_age: chrono::Duration::hours(26),
            skip,
            only,
        }
    }

    #[test]
    fn real_lvs_json_parses() {
        let j = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/lvs-real.json"
        ))
        .expect("fixture");
        let lvs = parse_lvs(&j).expect("parse");
        let s = newest_snapshot(&lvs, "vm-100-pvc-1111").expect("snapshot");
        // `_skip` has the right origin but not the naming scheme.
        assert_eq!(s.name, "vm-100-pvc-1111_snap_20261127_0300");
    }

    #[test]
    fn newest_snapshot_wins_and_foreign_names_do_not_count() {
        let lvs = vec![
            lv("vm-1-pvc-a", "", "2026-01-01 00:00:00 +0000"),
            lv(
                "vm-1-pvc-a_snap_20261126_0300",
                "vm-1-pvc-a",
                "2026-11-26 03:00:00 +0000",
            ),
            lv(
                "vm-1-pvc-a_snap_20261127_0300",
                "vm-1-pvc-a",
                "2026-11-27 03:00:00 +0000",
            ),
            // Right name, wrong origin: not a snapshot of this LV.
            lv(
                "vm-1-pvc-a_snap_20261128_0300",
                "vm-1-pvc-b",
                "2026-11-28 03:00:00 +0000",
            ),
            lv(
                "vm-1-pvc-a_pre_restore_20261128_0400",
                "vm-1-pvc-a",
                "2026-11-28 04:00:00 +0000",
            ),
        ];
        assert_eq!(
            newest_snapshot(&lvs, "vm-1-pvc-a").expect("snap").name,
            "vm-1-pvc-a_snap_20261127_0300"
        );
    }

    #[test]
    fn unresolvable_too_old_and_missing_snapshots_fail() {
        let lvs = vec![
            lv("vm-1-pvc-a", "", ""),
            lv(
                "vm-1-pvc-a_snap_20261127_0300",
                "vm-1-pvc-a",
                "2026-11-27 03:00:00 +0000",
            ),
            lv("vm-1-pvc-b", "", ""),
            lv(
                "vm-1-pvc-b_snap_20261120_0300",
                "vm-1-pvc-b",
                "2026-11-20 03:00:00 +0000",
            ),
            lv("vm-1-pvc-c", "", ""),
            lv("vm-1-pvc-d", "", ""),
            lv(
                "vm-1-pvc-d_snap_20261127_0300",
                "vm-1-pvc-d",
                "2026-11-27 03:00:00 +0000",
            ),
        ];
        let pvs = vec![
            pv("pv-a", "local-lvm:vm-1-pvc-a", "ns", "a", "Bound"),
            pv("pv-b", "r/z/s/vm-1-pvc-b", "ns", "b", "Bound"),
            pv("pv-c", "vm-1-pvc-c", "ns", "c", "Bound"),
        ];
        let items = plan(&lvs, Some(&pvs), &pol(&[], &[]));
        let v: Vec<(&str, &Verdict)> = items.iter().map(|i| (i.lv.as_str(), &i.verdict)).collect();
        assert_eq!(v[0], ("vm-1-pvc-a", &Verdict::Copy));
        assert!(
            matches!(v[1].1, Verdict::Fail(r) if r.contains("old")),
            "{v:?}"
        );
        assert!(
            matches!(v[2].1, Verdict::Fail(r) if r.contains("no snapshot")),
            "{v:?}"
        );
        assert!(
            matches!(v[3].1, Verdict::Fail(r) if r.contains("cannot resolve")),
            "{v:?}"
        );
        // Without any PV list, nothing resolves.
        let items = plan(&lvs, None, &pol(&[], &[]));
        assert!(
            items
                .iter()
                .all(|i| matches!(&i.verdict, Verdict::Fail(r) if r.contains("cannot resolve")))
        );
    }

    #[test]
    fn two_lvs_with_one_claim_never_share_a_destination() {
        let lvs = vec![
            lv("vm-1-pvc-old", "", ""),
            lv(
                "vm-1-pvc-old_snap_20261127_0300",
                "vm-1-pvc-old",
                "2026-11-27 03:00:00 +0000",
            ),
            lv("vm-1-pvc-new", "", ""),
            lv(
                "vm-1-pvc-new_snap_20261127_0300",
                "vm-1-pvc-new",
                "2026-11-27 03:00:00 +0000",
            ),
        ];
        let pvs = vec![
            pv("pv-old", "vm-1-pvc-old", "app", "data", "Released"),
            pv("pv-new", "vm-1-pvc-new", "app", "data", "Bound"),
        ];
        let items = plan(&lvs, Some(&pvs), &pol(&[], &[]));
        let dests: Vec<String> = items
            .iter()
            .map(|i| {
                format!(
                    "{}/{}",
                    i.dest_ns.as_deref().unwrap_or(""),
                    i.dest_name.as_deref().unwrap_or("")
                )
            })
            .collect();
        assert_eq!(dests, ["app/data", "app/data@pv-old"]);
        assert_eq!(duplicates(&items).len(), 1);
    }

    #[test]
    fn skip_and_only_selectors() {
        let lvs = vec![
            lv("vm-1-pvc-a", "", ""),
            lv(
                "vm-1-pvc-a_snap_20261127_0300",
                "vm-1-pvc-a",
                "2026-11-27 03:00:00 +0000",
            ),
            lv("vm-1-pvc-b", "", ""),
            lv(
                "vm-1-pvc-b_snap_20261127_0300",
                "vm-1-pvc-b",
                "2026-11-27 03:00:00 +0000",
            ),
        ];
        let pvs = vec![
            pv("pv-a", "vm-1-pvc-a", "x", "a", "Bound"),
            pv("pv-b", "vm-1-pvc-b", "y", "b", "Bound"),
        ];
        let skip = [Selector::parse("y/*").expect("sel")];
        let items = plan(&lvs, Some(&pvs), &pol(&skip, &[]));
        assert_eq!(items[0].verdict, Verdict::Copy);
        assert!(matches!(&items[1].verdict, Verdict::Skip(r) if r.contains("--skip y/*")));
        let only = [Selector::parse("y/b").expect("sel")];
        let items = plan(&lvs, Some(&pvs), &pol(&[], &only));
        assert!(matches!(&items[0].verdict, Verdict::Skip(_)));
        assert_eq!(items[1].verdict, Verdict::Copy);
        for bad in ["nopvc", "a/b/c", "../x", "A/b", "ns/", "/p", "ns/.hidden"] {
            assert!(Selector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hostile_claim_names_are_refused() {
        for bad in ["..", ".", "a/b", ".x", "x.", "A", "", "a\nb"] {
            assert!(!valid_k8s_name(bad), "{bad:?}");
        }
        assert!(valid_k8s_name("nextcloud-data.v2"));
    }
}
