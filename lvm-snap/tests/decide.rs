//! Retention decisions as a pure function, at its boundaries, with an
//! injected clock (never the wall clock).

use chrono::{FixedOffset, Utc};
use lvm_snap::names::{self, Kind};
use lvm_snap::prune::{Candidate, Decision, Policy, decide};

const NOW: i64 = 1_795_834_800; // 2026-11-28 03:00 UTC
const DAY: i64 = 86_400;

fn stamp(t: i64) -> String {
    let d = chrono::DateTime::<Utc>::from_timestamp(t, 0).expect("time");
    names::stamp_of(&d)
}

fn cand(name: &str, tagged: bool, origin_exists: bool) -> Candidate {
    let kind = names::classify(name);
    Candidate {
        stamp: kind.stamp().and_then(|s| names::parse_stamp(s, &Utc)),
        name: name.to_string(),
        kind,
        tagged,
        origin_exists,
    }
}

fn snap(origin: &str, t: i64) -> String {
    names::snapshot_name(origin, &stamp(t))
}

fn find<'a>(ds: &'a [Decision], name: &str) -> &'a Decision {
    ds.iter()
        .find(|d| d.name == name)
        .unwrap_or_else(|| panic!("no decision for {name}: {ds:#?}"))
}

fn policy(days: u32) -> Policy {
    Policy::days(days, None).expect("policy")
}

#[test]
fn retention_boundary_is_strictly_older() {
    let o = "vm-100-pvc-aa01";
    let exactly = snap(o, NOW - 3 * DAY);
    let minute_older = snap(o, NOW - 3 * DAY - 60);
    let fresh = snap(o, NOW - 60);
    let cs: Vec<Candidate> = [&exactly, &minute_older, &fresh]
        .iter()
        .map(|n| cand(n, true, true))
        .collect();
    let ds = decide(&cs, &policy(3), NOW);
    let d = find(&ds, &exactly);
    assert!(d.keep, "{d:?}");
    assert!(d.reason.contains("within the retention of 3 days"), "{d:?}");
    assert_eq!(d.age_seconds, Some(3 * DAY));
    let d = find(&ds, &minute_older);
    assert!(!d.keep, "{d:?}");
    assert!(
        d.reason.contains("older than the retention of 3 days"),
        "{d:?}"
    );
    assert!(find(&ds, &fresh).keep);
}

#[test]
fn newest_snapshot_of_a_live_origin_survives_a_stalled_timer() {
    // Snapshots stopped 10 days ago: the newest stays while the PVC exists.
    let live = "vm-100-pvc-aa01";
    let gone = "vm-100-pvc-bb02";
    let old1 = snap(live, NOW - 11 * DAY);
    let old2 = snap(live, NOW - 10 * DAY);
    let g1 = snap(gone, NOW - 10 * DAY);
    let cs = vec![
        cand(&old1, true, true),
        cand(&old2, true, true),
        cand(&g1, true, false),
    ];
    let ds = decide(&cs, &policy(3), NOW);
    assert!(!find(&ds, &old1).keep);
    let d = find(&ds, &old2);
    assert!(
        d.keep && d.reason.contains("newest snapshot of vm-100-pvc-aa01"),
        "{d:?}"
    );
    let d = find(&ds, &g1);
    assert!(
        !d.keep,
        "origin gone: the retention applies to its last snapshot: {d:?}"
    );

    let mut no_guard = policy(3);
    no_guard.keep_newest = false;
    let ds = decide(&cs, &no_guard, NOW);
    assert!(ds.iter().all(|d| !d.keep), "{ds:#?}");
}

#[test]
fn only_tagged_names_of_our_scheme_are_ever_dropped() {
    let o = "vm-100-pvc-aa01";
    let untagged = snap(o, NOW - 30 * DAY);
    let foreign = "vm-100-disk-0_snap_20260101_0300".to_string();
    let bad_date = format!("{o}_snap_20261399_0300");
    let scratch = names::restoring_name(o, &stamp(NOW - 30 * DAY));
    let newer = snap(o, NOW - 60);
    let cs = vec![
        cand(&untagged, false, true),
        cand(&foreign, true, false),
        cand(&bad_date, true, true),
        cand(&scratch, true, true),
        cand(&newer, true, true),
    ];
    let ds = decide(&cs, &policy(3), NOW);
    assert!(ds.iter().all(|d| d.keep), "{ds:#?}");
    assert!(
        find(&ds, &untagged)
            .reason
            .contains("not tagged backup-pipeline.lvm-snap")
    );
    assert!(find(&ds, &foreign).reason.contains("does not follow"));
    assert!(find(&ds, &bad_date).reason.contains("does not follow"));
    assert!(find(&ds, &scratch).reason.contains("interrupted restore"));
}

#[test]
fn pre_restore_copies_have_their_own_retention() {
    let o = "vm-100-pvc-aa01";
    let pre_old = names::pre_restore_name(o, &stamp(NOW - 100 * DAY));
    let pre_7 = names::pre_restore_name(o, &stamp(NOW - 7 * DAY));
    let pre_8 = names::pre_restore_name(o, &stamp(NOW - 8 * DAY));
    let cs: Vec<Candidate> = [&pre_old, &pre_7, &pre_8]
        .iter()
        .map(|n| cand(n, true, true))
        .collect();
    // Default: never pruned, however old, and never by the snapshot rule.
    let ds = decide(&cs, &policy(3), NOW);
    for d in &ds {
        assert!(d.keep, "{d:?}");
        assert_eq!(d.kind, "pre-restore");
        assert!(d.reason.contains("kept until removed by hand"), "{d:?}");
    }
    // With a retention of 7 days: exactly 7 days kept, 8 dropped.
    let p = Policy::days(3, Some(7)).expect("policy");
    let ds = decide(&cs, &p, NOW);
    assert!(find(&ds, &pre_7).keep);
    assert!(!find(&ds, &pre_8).keep);
    assert!(!find(&ds, &pre_old).keep);
    assert!(
        find(&ds, &pre_8)
            .reason
            .contains("pre-restore copy older than 7 days")
    );
}

#[test]
fn future_stamps_and_empty_policies() {
    let o = "vm-100-pvc-aa01";
    let future = snap(o, NOW + DAY);
    let ds = decide(&[cand(&future, true, true)], &policy(1), NOW);
    assert!(ds[0].keep && ds[0].reason.contains("future"), "{ds:?}");
    assert!(Policy::days(0, None).is_err());
    assert!(Policy::days(3, Some(0)).is_err());
}

#[test]
fn stamps_are_read_in_the_given_zone() {
    // A snapshot stamped 03:00 local time in UTC+1 is 02:00 UTC.
    let tz = FixedOffset::east_opt(3600).expect("tz");
    let name = "vm-1-pvc-ab_snap_20261125_0300";
    let lv = lvm_snap::lvm::Lv {
        name: name.into(),
        vg: "pve".into(),
        path: String::new(),
        size: 0,
        pool: "data".into(),
        origin: "vm-1-pvc-ab".into(),
        tags: vec![names::TAG.into()],
        attr: String::new(),
        active: true,
        data_percent: None,
        metadata_percent: None,
        segtype: "thin".into(),
    };
    let cs = Candidate::from_report(&[lv], "data", &tz);
    assert_eq!(cs.len(), 1);
    assert!(matches!(cs[0].kind, Kind::Snapshot { .. }));
    let utc_stamp = names::parse_stamp("20261125_0200", &Utc).expect("stamp");
    assert_eq!(cs[0].stamp, Some(utc_stamp));
    assert!(!cs[0].origin_exists, "origin LV not in the report");
    // Exactly 3 days old at 02:00 UTC on the 28th: kept; a minute later: dropped.
    let p = Policy {
        keep_newest: false,
        ..policy(3)
    };
    assert!(decide(&cs, &p, utc_stamp + 3 * DAY)[0].keep);
    assert!(!decide(&cs, &p, utc_stamp + 3 * DAY + 60)[0].keep);
}
