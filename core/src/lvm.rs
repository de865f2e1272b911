//! What the pipeline knows about LVM, in one place (lvm-snap makes the
//! snapshots, pvc-copy copies them): the naming scheme of PVC volumes and
//! their snapshots, the ownership tag, which names may reach a command
//! line, and the `lvs --reportformat json --units b --nosuffix` report.
//! Every name an operator or a report hands a tool is checked here before
//! it reaches a command line (docs/compatibility.md, bug 26).

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{NaiveDateTime, TimeZone};
use regex::Regex;
use serde::Deserialize;

use crate::cmd::{Cmd, CmdError};

/// The LVM tag on every LV lvm-snap creates and may prune.
pub const TAG: &str = "backup-pipeline.lvm-snap";

/// Suffix format of snapshot names (local time, like the original script).
pub const STAMP_FMT: &str = "%Y%m%d_%H%M";

/// The fields every report asks for.
pub const FIELDS: &str = "lv_name,vg_name,lv_path,lv_size,pool_lv,origin,lv_tags,lv_attr,lv_active,data_percent,metadata_percent,lv_time,segtype";

const ORIGIN_RE: &str = r"vm-[0-9]+-pvc-[0-9a-f][0-9a-f-]*";
const STAMP_RE: &str = "[0-9]{8}_[0-9]{4}";

static ORIGIN: LazyLock<Regex> = LazyLock::new(|| re(&format!("^{ORIGIN_RE}$")));
static PVC_LIKE: LazyLock<Regex> = LazyLock::new(|| re("^vm-[0-9]+-pvc-"));
static DERIVED: LazyLock<Regex> = LazyLock::new(|| {
    re(&format!(
        "^({ORIGIN_RE})_(snap|pre_restore|restore)_({STAMP_RE})$"
    ))
});
static STAMP: LazyLock<Regex> = LazyLock::new(|| re(&format!("^{STAMP_RE}$")));
static LVM_NAME: LazyLock<Regex> = LazyLock::new(|| re("^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}$"));

fn re(s: &str) -> Regex {
    // The patterns are constants; a typo is a programming error caught by
    // the unit tests, never by a user.
    #[allow(clippy::expect_used)]
    Regex::new(s).expect("constant regex")
}

/// What a name says an LV is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A PVC volume: `vm-<id>-pvc-<uuid>`.
    Origin,
    /// `<origin>_snap_<YYYYMMDD>_<HHMM>`.
    Snapshot { origin: String, stamp: String },
    /// `<origin>_pre_restore_<YYYYMMDD>_<HHMM>`: the volume a restore replaced.
    PreRestore { origin: String, stamp: String },
    /// `<origin>_restore_<YYYYMMDD>_<HHMM>`: a restore's scratch volume
    /// (only exists while a restore runs, or after one that could not
    /// clean up).
    Restoring { origin: String, stamp: String },
    /// Anything else (VM disks, foreign snapshots, the pool itself).
    Other,
}

impl Kind {
    pub fn label(&self) -> &'static str {
        match self {
            Kind::Origin => "origin",
            Kind::Snapshot { .. } => "snapshot",
            Kind::PreRestore { .. } => "pre-restore",
            Kind::Restoring { .. } => "restore-scratch",
            Kind::Other => "other",
        }
    }
    pub fn origin(&self) -> Option<&str> {
        match self {
            Kind::Snapshot { origin, .. }
            | Kind::PreRestore { origin, .. }
            | Kind::Restoring { origin, .. } => Some(origin),
            _ => None,
        }
    }
    pub fn stamp(&self) -> Option<&str> {
        match self {
            Kind::Snapshot { stamp, .. }
            | Kind::PreRestore { stamp, .. }
            | Kind::Restoring { stamp, .. } => Some(stamp),
            _ => None,
        }
    }
}

/// The strict reading of a name: origins with a hex uuid, stamps that are
/// calendar dates (what lvm-snap creates, lists and prunes).
pub fn classify(name: &str) -> Kind {
    if ORIGIN.is_match(name) {
        return Kind::Origin;
    }
    let Some(c) = DERIVED.captures(name) else {
        return Kind::Other;
    };
    let origin = c[1].to_string();
    let stamp = c[3].to_string();
    // A stamp that is not a calendar date does not follow the scheme.
    if parse_stamp_naive(&stamp).is_none() {
        return Kind::Other;
    }
    match &c[2] {
        "snap" => Kind::Snapshot { origin, stamp },
        "pre_restore" => Kind::PreRestore { origin, stamp },
        _ => Kind::Restoring { origin, stamp },
    }
}

/// The stamp of `name` when it is `<origin>_snap_<YYYYMMDD>_<HHMM>` for
/// this `origin` (shape only: pvc-copy also dates a snapshot by its
/// `lv_time`, so it does not insist on a calendar date here).
pub fn snapshot_stamp<'a>(name: &'a str, origin: &str) -> Option<&'a str> {
    let stamp = name.strip_prefix(origin)?.strip_prefix("_snap_")?;
    STAMP.is_match(stamp).then_some(stamp)
}

/// A name that looks like a PVC volume (the original discovery pattern);
/// one that does not also follow the full scheme is reported, not skipped
/// silently.
pub fn pvc_like(name: &str) -> bool {
    PVC_LIKE.is_match(name)
}

pub fn is_origin(name: &str) -> bool {
    ORIGIN.is_match(name)
}

/// A name LVM accepts and no command could take for an option.
pub fn safe_lvm_name(name: &str) -> bool {
    LVM_NAME.is_match(name) && name != "." && name != ".."
}

/// Refuse any name that could be read as an option or is not an LVM name,
/// whatever its source (operator, report, our own formatting).
pub fn check_name(name: &str) -> anyhow::Result<()> {
    if !safe_lvm_name(name) {
        anyhow::bail!(
            "refusing LV name {:?}: not a valid LVM name",
            crate::log::escape_str(name)
        );
    }
    Ok(())
}

pub fn snapshot_name(origin: &str, stamp: &str) -> String {
    format!("{origin}_snap_{stamp}")
}
pub fn pre_restore_name(origin: &str, stamp: &str) -> String {
    format!("{origin}_pre_restore_{stamp}")
}
pub fn restoring_name(origin: &str, stamp: &str) -> String {
    format!("{origin}_restore_{stamp}")
}

pub fn stamp_of<Tz: TimeZone>(t: &chrono::DateTime<Tz>) -> String
where
    Tz::Offset: std::fmt::Display,
{
    t.format(STAMP_FMT).to_string()
}

fn parse_stamp_naive(stamp: &str) -> Option<NaiveDateTime> {
    NaiveDateTime::parse_from_str(stamp, STAMP_FMT).ok()
}

/// The instant a stamp names in `tz` (Unix seconds). An ambiguous local
/// time (the hour repeated when DST ends) takes the earlier instant; a
/// local time that never existed gives `None`.
pub fn parse_stamp<Tz: TimeZone>(stamp: &str, tz: &Tz) -> Option<i64> {
    let naive = parse_stamp_naive(stamp)?;
    tz.from_local_datetime(&naive)
        .earliest()
        .map(|d| d.timestamp())
}

/// The tags of an `lv_tags` field (comma-separated).
pub fn tags(field: &str) -> impl Iterator<Item = &str> {
    field.split(',').map(str::trim).filter(|t| !t.is_empty())
}

#[derive(Debug, Deserialize)]
struct Report {
    report: Vec<ReportPart>,
}

#[derive(Debug, Deserialize)]
struct ReportPart {
    #[serde(default)]
    lv: Vec<Row>,
}

/// One row as `lvs --reportformat json --units b --nosuffix` prints it:
/// every value a string, empty when not applicable or not asked for.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct Row {
    pub lv_name: String,
    pub vg_name: String,
    pub lv_path: String,
    pub lv_size: String,
    pub pool_lv: String,
    pub origin: String,
    pub lv_tags: String,
    pub lv_attr: String,
    pub lv_active: String,
    pub data_percent: String,
    pub metadata_percent: String,
    pub lv_time: String,
    pub segtype: String,
}

impl Row {
    /// Carries [`TAG`].
    pub fn tagged(&self) -> bool {
        tags(&self.lv_tags).any(|t| t == TAG)
    }
}

/// A logical volume as the report describes it, values typed.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Lv {
    pub name: String,
    pub vg: String,
    /// The device path from the report (empty when inactive).
    pub path: String,
    pub size: u64,
    pub pool: String,
    pub origin: String,
    pub tags: Vec<String>,
    pub attr: String,
    pub active: bool,
    pub data_percent: Option<f64>,
    pub metadata_percent: Option<f64>,
    pub segtype: String,
}

impl Lv {
    pub fn from_row(row: Row) -> Result<Lv, String> {
        let size = if row.lv_size.trim().is_empty() {
            0
        } else {
            row.lv_size.trim().parse::<u64>().map_err(|_| {
                format!(
                    "lvs: size of {:?} is {:?}, expected bytes",
                    row.lv_name, row.lv_size
                )
            })?
        };
        Ok(Lv {
            tags: tags(&row.lv_tags).map(String::from).collect(),
            active: row.lv_active == "active",
            data_percent: pct(&row.data_percent),
            metadata_percent: pct(&row.metadata_percent),
            name: row.lv_name,
            vg: row.vg_name,
            path: row.lv_path,
            size,
            pool: row.pool_lv,
            origin: row.origin,
            attr: row.lv_attr,
            segtype: row.segtype,
        })
    }
    pub fn tagged(&self) -> bool {
        self.tags.iter().any(|t| t == TAG)
    }
    pub fn is_pool(&self) -> bool {
        self.segtype == "thin-pool"
    }
}

/// A usage percentage; outside 0..=100 or unparsable is unknown.
pub fn pct(s: &str) -> Option<f64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && (0.0..=100.0).contains(v))
}

/// The rows of an `lvs --reportformat json` report, as printed.
pub fn parse_rows(json: &[u8]) -> Result<Vec<Row>, String> {
    let r: Report = serde_json::from_slice(json)
        .map_err(|e| format!("lvs printed a report that is not the expected JSON: {e}"))?;
    Ok(r.report.into_iter().flat_map(|p| p.lv).collect())
}

/// An `lvs --reportformat json --units b --nosuffix` report, typed.
pub fn parse_report(json: &[u8]) -> Result<Vec<Lv>, String> {
    parse_rows(json)?.into_iter().map(Lv::from_row).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum LvsError {
    /// `lvs` could not run, timed out or failed (`is_not_found` tells a
    /// missing LVM from a failing one).
    #[error(transparent)]
    Run(#[from] CmdError),
    #[error("{0}")]
    Report(String),
}

/// `lvs` with [`FIELDS`] for one volume group: argument vector, `--`
/// before the VG, a timeout, LVM's fd warnings off.
pub fn lvs_rows(vg: &str, timeout: Duration) -> Result<Vec<Row>, LvsError> {
    if !safe_lvm_name(vg) {
        return Err(LvsError::Report(format!(
            "refusing VG name {:?}: not a valid LVM name",
            crate::log::escape_str(vg)
        )));
    }
    let out = Cmd::new("lvs")
        .args([
            "--reportformat",
            "json",
            "--units",
            "b",
            "--nosuffix",
            "-o",
            FIELDS,
            "--",
            vg,
        ])
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .timeout(timeout)
        .run()?;
    parse_rows(&out.stdout).map_err(LvsError::Report)
}

/// [`lvs_rows`], typed.
pub fn lvs(vg: &str, timeout: Duration) -> Result<Vec<Lv>, LvsError> {
    lvs_rows(vg, timeout)?
        .into_iter()
        .map(|r| Lv::from_row(r).map_err(LvsError::Report))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{FixedOffset, Utc};

    #[test]
    fn names_are_classified() {
        assert_eq!(classify("vm-9999-pvc-0a1b-2c"), Kind::Origin);
        assert_eq!(
            classify("vm-9999-pvc-0a1b_snap_20261128_0300"),
            Kind::Snapshot {
                origin: "vm-9999-pvc-0a1b".into(),
                stamp: "20261128_0300".into()
            }
        );
        assert_eq!(
            classify("vm-1-pvc-ab_pre_restore_20261128_0300").label(),
            "pre-restore"
        );
        assert_eq!(
            classify("vm-1-pvc-ab_restore_20261128_0300").label(),
            "restore-scratch"
        );
        for other in [
            "data",
            "vm-100-disk-0",
            "vm-1-pvc-ab_snap_20261399_0300",
            "vm-1-pvc-ab_snap_20261128_0300x",
            "vm-1-pvc-AB",
            "-x",
            "vm-1-pvc-ab cd",
            "vm-1-pvc-ab_snap_2026112_0300",
        ] {
            assert_eq!(classify(other), Kind::Other, "{other}");
        }
        assert!(pvc_like("vm-1-pvc-AB") && !is_origin("vm-1-pvc-AB"));
    }

    #[test]
    fn snapshot_stamps_belong_to_their_origin() {
        let o = "vm-1-pvc-old";
        assert_eq!(
            snapshot_stamp(&snapshot_name(o, "20261127_0300"), o),
            Some("20261127_0300")
        );
        for not in [
            "vm-1-pvc-old_pre_restore_20261127_0300",
            "vm-1-pvc-olde_snap_20261127_0300",
            "vm-1-pvc-old_snap_20261127_0300_x",
            "vm-1-pvc-old_snap_2026112_0300",
            "vm-1-pvc-old",
        ] {
            assert_eq!(snapshot_stamp(not, o), None, "{not}");
        }
    }

    #[test]
    fn hostile_names_are_unsafe() {
        for bad in ["-x", "a b", "", "..", "a/b", "x\ny", "--help"] {
            assert!(!safe_lvm_name(bad), "{bad:?}");
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(safe_lvm_name("vm-1-pvc-ab_snap_20261128_0300"));
        let e = lvs_rows("-x", Duration::from_secs(1)).expect_err("refused before running");
        assert!(e.to_string().contains("not a valid LVM name"), "{e}");
    }

    #[test]
    fn stamps_round_trip_in_a_zone() {
        let tz = FixedOffset::east_opt(3600).expect("offset");
        let t = tz
            .with_ymd_and_hms(2026, 11, 28, 3, 0, 0)
            .single()
            .expect("time");
        assert_eq!(stamp_of(&t), "20261128_0300");
        assert_eq!(parse_stamp("20261128_0300", &tz), Some(t.timestamp()));
        assert_eq!(
            parse_stamp("20261128_0300", &Utc),
            Some(t.timestamp() + 3600)
        );
        assert_eq!(parse_stamp("20261128_2500", &Utc), None);
    }

    #[test]
    fn parses_the_real_report() {
        let text = include_bytes!("../../tests/fixtures/lvs-real.json");
        let lvs = parse_report(text).expect("parse");
        assert_eq!(lvs.len(), 4);
        let pool = &lvs[0];
        assert!(pool.is_pool());
        assert_eq!(pool.data_percent, None, "empty percent stays unknown");
        let snap = &lvs[3];
        assert_eq!(snap.origin, "vm-100-pvc-1111");
        assert_eq!(snap.tags, ["homelab-lvm-snap", "other_tag"]);
        assert_eq!(snap.size, 67_108_864);
        assert_eq!(
            snap.path,
            "/dev/emuchkvg/vm-100-pvc-1111_snap_20261127_0300"
        );
        assert!(!snap.tagged());
        let rows = parse_rows(text).expect("rows");
        assert_eq!(rows[3].lv_name, snap.name);
        assert!(!rows[3].lv_time.is_empty(), "lv_time is kept for pvc-copy");
        assert!(!rows[3].tagged());
    }

    #[test]
    fn bad_reports_are_errors_naming_the_field() {
        assert!(parse_rows(b"lvs: not json").is_err());
        assert!(parse_rows(br#"{"report": 1}"#).is_err());
        assert_eq!(parse_rows(br#"{"report": [{}]}"#).expect("no lv part"), []);
        let e = parse_report(br#"{"report": [{"lv": [{"lv_name": "a", "lv_size": "12k"}]}]}"#)
            .expect_err("size with a suffix");
        assert!(e.contains("expected bytes"), "{e}");
    }

    #[test]
    fn tags_are_split_and_ours_is_recognised() {
        let r = Row {
            lv_tags: format!("x, {TAG}"),
            ..Row::default()
        };
        assert!(r.tagged());
        assert_eq!(tags(",a,,b ").collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn percentages_outside_0_100_are_unknown() {
        assert_eq!(pct("12.50"), Some(12.5));
        assert_eq!(pct(""), None);
        assert_eq!(pct("abc"), None);
        assert_eq!(pct("101"), None);
        assert_eq!(pct("NaN"), None);
    }
}
