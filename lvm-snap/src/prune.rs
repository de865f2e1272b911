//! Retention as a pure function: every candidate gets keep or drop with
//! the reason, decided from names, tags and an injected "now" only.

use std::collections::{BTreeMap, BTreeSet};

use chrono::TimeZone;
use serde::Serialize;

use crate::lvm::Lv;
use crate::names::{self, Kind};

/// One LV that prune looks at: anything in the pool whose name contains
/// a snapshot-like part (ours or not), so the report explains why a
/// foreign one is left alone.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub name: String,
    pub kind: Kind,
    /// The instant its name stamp denotes (Unix seconds), when valid.
    pub stamp: Option<i64>,
    /// Carries [`names::TAG`].
    pub tagged: bool,
    /// The origin named by the name still exists as an LV.
    pub origin_exists: bool,
}

impl Candidate {
    /// Candidates among a report's LVs: names with `_snap_`,
    /// `_pre_restore_` or `_restore_` in the thin pool.
    pub fn from_report<Tz: TimeZone>(lvs: &[Lv], pool: &str, tz: &Tz) -> Vec<Candidate> {
        let existing: BTreeSet<&str> = lvs.iter().map(|l| l.name.as_str()).collect();
        lvs.iter()
            .filter(|l| l.pool == pool)
            .filter(|l| {
                l.name.contains("_snap_")
                    || l.name.contains("_pre_restore_")
                    || l.name.contains("_restore_")
            })
            .map(|l| {
                let kind = names::classify(&l.name);
                Candidate {
                    stamp: kind.stamp().and_then(|s| names::parse_stamp(s, tz)),
                    origin_exists: kind.origin().is_some_and(|o| existing.contains(o)),
                    tagged: l.tagged(),
                    name: l.name.clone(),
                    kind,
                }
            })
            .collect()
    }
}

/// How long things are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Snapshots strictly older than this many seconds are dropped.
    pub keep_secs: i64,
    /// Pre-restore copies: `None` keeps them until removed by hand.
    pub pre_restore_keep_secs: Option<i64>,
    /// Never drop the newest snapshot of an origin that still exists, so
    /// a PVC keeps one restore point even when snapshots stopped being
    /// taken (a broken create timer must not end with prune emptying it).
    pub keep_newest: bool,
}

impl Policy {
    pub fn days(keep_days: u32, pre_restore_days: Option<u32>) -> Result<Policy, String> {
        if keep_days == 0 {
            return Err(
                "refusing a retention of 0 days: it would delete every snapshot, the newest included"
                    .into(),
            );
        }
        if pre_restore_days == Some(0) {
            return Err("refusing a pre-restore retention of 0 days: the copy a restore replaced is the only way back".into());
        }
        Ok(Policy {
            keep_secs: i64::from(keep_days) * 86_400,
            pre_restore_keep_secs: pre_restore_days.map(|d| i64::from(d) * 86_400),
            keep_newest: true,
        })
    }
}

/// The verdict on one candidate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub name: String,
    pub kind: &'static str,
    pub origin: Option<String>,
    pub age_seconds: Option<i64>,
    pub keep: bool,
    pub reason: String,
}

fn days(secs: i64) -> String {
    if secs % 86_400 == 0 {
        format!("{} days", secs / 86_400)
    } else {
        format!("{secs} s")
    }
}

/// Keep or drop every candidate, with the reason, at instant `now`.
pub fn decide(cands: &[Candidate], policy: &Policy, now: i64) -> Vec<Decision> {
    // The newest prunable snapshot of each origin (by stamp, then name).
    let mut newest: BTreeMap<&str, (i64, &str)> = BTreeMap::new();
    for c in cands {
        if let (Kind::Snapshot { origin, .. }, Some(t), true) = (&c.kind, c.stamp, c.tagged) {
            let e = newest.entry(origin.as_str()).or_insert((t, &c.name));
            if (t, c.name.as_str()) > *e {
                *e = (t, &c.name);
            }
        }
    }
    let mut out: Vec<Decision> = cands
        .iter()
        .map(|c| {
            let age = c.stamp.map(|t| now - t);
            let (keep, reason) = verdict(c, policy, age, &newest);
            Decision {
                name: c.name.clone(),
                kind: c.kind.label(),
                origin: c.kind.origin().map(String::from),
                age_seconds: age,
                keep,
                reason,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn verdict(
    c: &Candidate,
    p: &Policy,
    age: Option<i64>,
    newest: &BTreeMap<&str, (i64, &str)>,
) -> (bool, String) {
    let keep = |r: String| (true, r);
    match &c.kind {
        Kind::Other | Kind::Origin => {
            return keep(
                "name does not follow <pvc-lv>_snap_<YYYYMMDD>_<HHMM>: not ours, never pruned"
                    .into(),
            );
        }
        Kind::Restoring { .. } => {
            return keep(
                "scratch volume of an interrupted restore: check it and remove it by hand".into(),
            );
        }
        _ => {}
    }
    if !c.tagged {
        return keep(format!(
            "not tagged {}: not created by lvm-snap, never pruned (remove by hand)",
            names::TAG
        ));
    }
    let Some(age) = age else {
        return keep("its timestamp is not a valid local time: never pruned".into());
    };
    if age < 0 {
        return keep("its timestamp is in the future: never pruned".into());
    }
    match &c.kind {
        Kind::PreRestore { .. } => match p.pre_restore_keep_secs {
            None => keep("pre-restore copy: kept until removed by hand".into()),
            Some(k) if age > k => (
                false,
                format!(
                    "pre-restore copy older than {} (age {})",
                    days(k),
                    names::age_text(age)
                ),
            ),
            Some(k) => keep(format!(
                "pre-restore copy within its {} (age {})",
                days(k),
                names::age_text(age)
            )),
        },
        Kind::Snapshot { origin, .. } => {
            if age <= p.keep_secs {
                return keep(format!(
                    "within the retention of {} (age {})",
                    days(p.keep_secs),
                    names::age_text(age)
                ));
            }
            let is_newest = newest
                .get(origin.as_str())
                .is_some_and(|(_, n)| *n == c.name);
            if p.keep_newest && is_newest && c.origin_exists {
                return keep(format!(
                    "older than {} (age {}) but the newest snapshot of {origin}, which still exists",
                    days(p.keep_secs),
                    names::age_text(age)
                ));
            }
            (
                false,
                format!(
                    "older than the retention of {} (age {})",
                    days(p.keep_secs),
                    names::age_text(age)
                ),
            )
        }
        _ => keep("not a snapshot".into()),
    }
}
