//! `pvc-copy weeks NS/PVC`: one claim's weekly versions on the backup
//! disk, with what each holds, the snapshot it came from, and what
//! offsite-sync recorded locally about sending it. Reads only.

use std::collections::HashSet;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use backup_core::exit::{Exit, ExitCode};
use backup_core::log::p;
use backup_core::root_guard::RootGuard;
use backup_core::weeks::Week;
use serde::Serialize;

use crate::cli::WeeksArgs;
use crate::copy::{self, Dest, SourceRecord};
use crate::store;

pub(crate) const LONG_ABOUT: &str = "\
List one claim's weekly versions on the backup disk, newest first:
BACKUP_ROOT/pvc-data/<week>/<ns>/<pvc>/, with its regular files and their
bytes, the snapshot it was copied from (its .<pvc>.source record; `-` when
there is none or it describes a copy since replaced), whether the week was
marked complete, and what offsite-sync recorded about sending it.

pvc-copy has no NAS access, so the offsite column is what the backup disk
says, never a look at the NAS:
  pending  the ledger (.changed-files or its .inflight part) still lists
           paths of this version, or a full sync was asked for: not yet sent
  sent     the ledger lists none of its paths and offsite-sync's last
           successful run (.offsite-sync/last-success) ended after the
           version was copied
  unknown  anything else (no success stamp since the copy, no .source record)

Nothing is written anywhere; the backup root must carry its identity marker
(exit 5 without it). A claim with no version on the disk is exit 2.";

/// A claim as pvc-copy names its copies: `<ns>/<pvc>` (or the
/// `<pvc>@<pv-name>` a second LV claiming the same PVC is copied to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub ns: String,
    pub name: String,
}

impl Claim {
    /// `NS/PVC`: two Kubernetes names (letters, digits, `-`, `.`; the
    /// claim may carry `@<pv-name>`), neither empty nor starting with `.`.
    pub fn parse(s: &str) -> Result<Claim, String> {
        let bad = |why: &str| {
            Err(format!(
                "{s:?}: expected NS/PVC (e.g. media/immich-db); {why}"
            ))
        };
        let Some((ns, name)) = s.split_once('/') else {
            return bad("no `/`");
        };
        let ok = |part: &str, at: bool| {
            !part.is_empty()
                && !part.starts_with('.')
                && part.bytes().all(|b| {
                    b.is_ascii_alphanumeric()
                        || b == b'-'
                        || b == b'.'
                        || b == b'_'
                        || (at && b == b'@')
                })
        };
        if !ok(ns, false) {
            return bad("the namespace must be a Kubernetes name");
        }
        if !ok(name, true) {
            return bad("the claim must be a Kubernetes name (a single path component)");
        }
        Ok(Claim {
            ns: ns.into(),
            name: name.into(),
        })
    }
}

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ns, self.name)
    }
}

/// One week's copy of a claim.
#[derive(Debug, Clone)]
pub struct Version {
    pub week: Week,
    pub dest: Dest,
}

impl Version {
    pub fn dir(&self) -> PathBuf {
        self.dest.dir()
    }
    /// Its `.source` record, when that describes this very copy.
    pub fn source(&self) -> Option<SourceRecord> {
        copy::read_source(&self.dest)
    }
}

/// Every week holding a copy of `claim`, newest first.
pub fn versions(root: &Path, claim: &Claim) -> Vec<Version> {
    store::weeks(root)
        .into_iter()
        .filter_map(|week| {
            let dest = Dest {
                ns_dir: store::pvc_data(root).join(&week.name).join(&claim.ns),
                name: claim.name.clone(),
            };
            std::fs::symlink_metadata(dest.dir())
                .is_ok_and(|m| m.is_dir())
                .then_some(Version { week, dest })
        })
        .collect()
}

/// The backup root, refused (exit 5) without its identity marker, and
/// the claim's versions; none is exit 2 naming where they were looked for.
pub(crate) fn open(root: &Path, claim: &Claim) -> anyhow::Result<(RootGuard, Vec<Version>)> {
    if !root.is_dir() {
        return Err(Exit::refused(format!(
            "backup root {} is not a directory (is the backup disk mounted?)",
            p(root)
        )));
    }
    let guard = RootGuard::require(root)?;
    let v = versions(root, claim);
    if v.is_empty() {
        return Err(Exit::usage(format!(
            "{claim}: no version on the backup disk (expected a directory {}/<week>/{}/{})",
            p(&store::pvc_data(root)),
            claim.ns,
            claim.name
        )));
    }
    Ok((guard, v))
}

/// Regular files and their bytes (apparent size) in a tree, symlinks
/// never followed.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Tally {
    pub files: u64,
    pub bytes: u64,
}

pub fn tally(dir: &Path) -> anyhow::Result<Tally> {
    let mut t = Tally::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).with_context(|| format!("reading {}", p(&d)))?;
        for e in rd {
            let e = e.with_context(|| format!("reading {}", p(&d)))?;
            let m = std::fs::symlink_metadata(e.path())
                .with_context(|| format!("reading {}", p(&e.path())))?;
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                t.files += 1;
                t.bytes += m.len();
            }
        }
    }
    Ok(t)
}

/// What the backup disk says about a version having reached the NAS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Offsite {
    Sent,
    Pending,
    Unknown,
}

impl fmt::Display for Offsite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Offsite::Sent => "sent",
            Offsite::Pending => "pending",
            Offsite::Unknown => "unknown",
        })
    }
}

/// offsite-sync's local records: the weeks whose copy of the claim still
/// has ledger entries, whether a full sync is asked for, its last success.
struct OffsiteState {
    pending_weeks: HashSet<String>,
    full_sync_asked: bool,
    last_success: Option<i64>,
}

impl OffsiteState {
    fn read(root: &Path, claim: &Claim) -> OffsiteState {
        let ledger = root.join(".changed-files");
        let mut pending_weeks = HashSet::new();
        let inflight = PathBuf::from(format!("{}.inflight", ledger.display()));
        for f in [&ledger, &inflight] {
            let Ok(data) = std::fs::read(f) else { continue };
            for line in data.split(|b| *b == b'\n') {
                if let Some(w) =
                    backup_core::ledger::decode(line).and_then(|n| week_of_entry(&n, claim))
                {
                    pending_weeks.insert(w);
                }
            }
        }
        let full_sync_asked =
            PathBuf::from(format!("{}.full-sync-needed", ledger.display())).exists();
        let last_success = std::fs::read_to_string(root.join(".offsite-sync/last-success"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        OffsiteState {
            pending_weeks,
            full_sync_asked,
            last_success,
        }
    }

    fn of(&self, week: &str, src: Option<&SourceRecord>) -> Offsite {
        if self.pending_weeks.contains(week) {
            return Offsite::Pending;
        }
        let copied = src
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(&s.copied_at).ok())
            .map(|t| t.timestamp());
        match (copied, self.last_success) {
            (Some(c), Some(s)) if s >= c => Offsite::Sent,
            _ if self.full_sync_asked => Offsite::Pending,
            _ => Offsite::Unknown,
        }
    }
}

/// The week of a ledger entry inside `pvc-data/<week>/<ns>/<pvc>/` or
/// naming its `.<pvc>.source` record.
fn week_of_entry(entry: &[u8], claim: &Claim) -> Option<String> {
    let rest = entry.strip_prefix(b"pvc-data/")?;
    let slash = rest.iter().position(|b| *b == b'/')?;
    let (week, rest) = (&rest[..slash], &rest[slash + 1..]);
    let rest = rest.strip_prefix(claim.ns.as_bytes())?.strip_prefix(b"/")?;
    let source = format!(".{}.source", claim.name);
    let inside = rest
        .strip_prefix(claim.name.as_bytes())
        .is_some_and(|r| r.is_empty() || r.starts_with(b"/"));
    (inside || rest == source.as_bytes()).then(|| String::from_utf8_lossy(week).into_owned())
}

/// One row of the listing.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub week: String,
    /// The snapshot's creation time (the data's point in time), else the
    /// copy directory's modification time.
    pub date: String,
    pub files: u64,
    pub bytes: u64,
    pub snapshot: Option<String>,
    pub snapshot_created: Option<String>,
    pub copied_at: Option<String>,
    pub week_complete: bool,
    pub offsite: Offsite,
    pub path: String,
}

pub fn rows(root: &Path, claim: &Claim, versions: &[Version]) -> anyhow::Result<Vec<Row>> {
    let off = OffsiteState::read(root, claim);
    let mut out = Vec::new();
    for v in versions {
        let dir = v.dir();
        let t = tally(&dir)?;
        let src = v.source();
        let date = match &src {
            Some(s) => s.snapshot_created.clone(),
            None => std::fs::symlink_metadata(&dir)
                .ok()
                .and_then(|m| chrono::DateTime::from_timestamp(m.mtime(), 0))
                .map(|t| t.to_rfc3339())
                .unwrap_or_default(),
        };
        out.push(Row {
            week: v.week.name.clone(),
            date,
            files: t.files,
            bytes: t.bytes,
            snapshot: src.as_ref().map(|s| s.snapshot.clone()),
            snapshot_created: src.as_ref().map(|s| s.snapshot_created.clone()),
            copied_at: src.as_ref().map(|s| s.copied_at.clone()),
            week_complete: store::is_complete(root, &v.week),
            offsite: off.of(&v.week.name, src.as_ref()),
            path: dir.strip_prefix(root).unwrap_or(&dir).display().to_string(),
        });
    }
    Ok(out)
}

pub(crate) fn run(a: &WeeksArgs) -> anyhow::Result<ExitCode> {
    let root = &a.backup_root;
    let (_guard, versions) = open(root, &a.claim)?;
    let rows = rows(root, &a.claim, &versions)?;
    if a.json {
        let doc = serde_json::json!({
            "claim": a.claim.to_string(),
            "backup_root": root.display().to_string(),
            "weeks": rows,
        });
        backup_core::outln!(
            "{}",
            serde_json::to_string_pretty(&doc).context("encoding the listing")?
        )?;
        return Ok(ExitCode::Ok);
    }
    backup_core::outln!(
        "{:<9} {:<10} {:>8} {:>14} {:<8} {:<8} SNAPSHOT",
        "WEEK",
        "DATE",
        "FILES",
        "BYTES",
        "COMPLETE",
        "OFFSITE"
    )?;
    for r in &rows {
        backup_core::outln!(
            "{:<9} {:<10} {:>8} {:>14} {:<8} {:<8} {}",
            r.week,
            r.date.get(..10).unwrap_or(&r.date),
            r.files,
            r.bytes,
            if r.week_complete { "yes" } else { "no" },
            r.offsite,
            r.snapshot.as_deref().unwrap_or("-")
        )?;
    }
    Ok(ExitCode::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_two_names() {
        assert_eq!(
            Claim::parse("media/db").map(|c| c.to_string()),
            Ok("media/db".into())
        );
        assert!(Claim::parse("media/db@pvc-1234").is_ok());
        for bad in [
            "media", "/db", "media/", "a/b/c", "../x", "a/..", "a/.p", "a/b c", "a@b/c",
        ] {
            assert!(Claim::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ledger_entries_are_matched_to_the_claim_s_weeks() {
        let c = Claim::parse("ns/db").expect("claim");
        let w = |e: &str| week_of_entry(e.as_bytes(), &c);
        assert_eq!(w("pvc-data/2026-W48/ns/db/a/b"), Some("2026-W48".into()));
        assert_eq!(
            w("pvc-data/2026-W47/ns/.db.source"),
            Some("2026-W47".into())
        );
        assert_eq!(w("pvc-data/2026-W48/ns/db2/a"), None);
        assert_eq!(w("pvc-data/2026-W48/other/db/a"), None);
        assert_eq!(w("sqlite-backup/2026-W48/ns/db/a"), None);
    }
}
