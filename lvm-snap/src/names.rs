//! The naming scheme: which LVs are PVC volumes, which are our snapshots,
//! pre-restore copies and restore scratch volumes, and their timestamps.
//! Every name an operator or a report hands us is checked here before it
//! reaches a command line (behaviour.md bug 26).

use std::sync::LazyLock;

use chrono::{NaiveDateTime, TimeZone};
use regex::Regex;

/// The LVM tag on every LV lvm-snap creates and may prune.
pub const TAG: &str = "backup-pipeline.lvm-snap";

/// Suffix format of snapshot names (local time, like the original script).
pub const STAMP_FMT: &str = "%Y%m%d_%H%M";

const ORIGIN_RE: &str = r"vm-[0-9]+-pvc-[0-9a-f][0-9a-f-]*";

static ORIGIN: LazyLock<Regex> = LazyLock::new(|| re(&format!("^{ORIGIN_RE}$")));
static PVC_LIKE: LazyLock<Regex> = LazyLock::new(|| re("^vm-[0-9]+-pvc-"));
static DERIVED: LazyLock<Regex> = LazyLock::new(|| {
    re(&format!(
        "^({ORIGIN_RE})_(snap|pre_restore|restore)_([0-9]{{8}}_[0-9]{{4}})$"
    ))
});
static K8S_NAME: LazyLock<Regex> = LazyLock::new(|| re("^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"));
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

/// A Kubernetes object or namespace name (DNS-1123 subdomain).
pub fn k8s_name(name: &str) -> bool {
    K8S_NAME.is_match(name)
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

/// `XdYh` (the original `list` format), `-` for negative ages.
pub fn age_text(secs: i64) -> String {
    if secs < 0 {
        return "future".into();
    }
    let d = secs / 86_400;
    let h = (secs % 86_400) / 3600;
    let m = (secs % 3600) / 60;
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else {
        format!("{m}m")
    }
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
    fn hostile_names_are_unsafe() {
        for bad in ["-x", "a b", "", "..", "a/b", "x\ny", "--help"] {
            assert!(!safe_lvm_name(bad), "{bad:?}");
        }
        assert!(safe_lvm_name("vm-1-pvc-ab_snap_20261128_0300"));
        assert!(k8s_name("dbaas") && !k8s_name("-n") && !k8s_name("Db"));
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
    fn ages_read_like_the_original() {
        assert_eq!(age_text(3 * 86_400 + 5 * 3600 + 59), "3d5h");
        assert_eq!(age_text(2 * 3600 + 120), "2h2m");
        assert_eq!(age_text(59), "0m");
        assert_eq!(age_text(-1), "future");
    }
}
