//! offsite-sync against a real sshd NAS on loopback and real rsync.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backup_core::metrics::Metrics;
use common::{World, set};

#[test]
fn step1_sends_the_ledger_drops_vanished_and_commits_only_after_success() {
    let w = World::with_nas();
    let names: [&[u8]; 5] = [
        b"pfsense/config-2026-11-28.xml",
        b"nextcloud/new\nline.txt",
        b"nextcloud/-leading-dash",
        b"nextcloud/back\\slash",
        b"pve-config/etc/pve/storage.cfg",
    ];
    for n in names {
        World::put(&w.root, n, b"data");
    }
    let mut entries: Vec<&[u8]> = names.to_vec();
    entries.push(b"nextcloud/deleted-since"); // vanished
    entries.push(b".changed-files.lock"); // a state file never travels
    w.leg1().append(&entries).expect("append");
    // Not listed: must not travel in an incremental run.
    World::put(&w.root, b"nextcloud/unlisted", b"u");
    // Make the run incremental: a recent full pass is on record.
    recent_full(&w);

    let metrics = w.sb.path().join("m.prom");
    let r = w.run(
        "step1",
        &["--metrics-file", metrics.to_str().expect("utf8")],
    );
    r.succeeds().stdout_contains("1 vanished");
    assert_eq!(
        World::files(&w.pve()),
        names.iter().map(|n| n.to_vec()).collect()
    );
    assert_eq!(
        w.leg1().line_count().expect("count"),
        0,
        "ledger not consumed"
    );
    assert!(!w.leg1().inflight_path().exists());
    let m = Metrics::read(&metrics).expect("metrics");
    assert_eq!(m.get("offsite_sync_last_status"), Some(0.0));
    assert!(m.get("backup_last_success_timestamp").expect("success ts") > 0.0);
    assert!(m.get("offsite_dest_available_bytes").expect("avail") > 0.0);
    assert!(
        m.get("offsite_dest_size_bytes").expect("size")
            >= m.get("offsite_dest_available_bytes").expect("a")
    );
    assert!(m.get("offsite_dest_capacity_timestamp_seconds").is_some());

    // NAS unreachable (wrong port): status 1, entries kept, no success
    // timestamp; the next good run delivers them.
    World::put(&w.root, b"pfsense/config-2026-11-29.xml", b"next");
    w.leg1()
        .append([b"pfsense/config-2026-11-29.xml"])
        .expect("append");
    let mut c = w.cmd(
        "step1",
        &["--metrics-file", metrics.to_str().expect("utf8")],
    );
    c.args(["--ssh-port", "1"]);
    backup_tests::harness::Run::of(&mut c).fails_with(1);
    assert_eq!(w.leg1().line_count().expect("count"), 1);
    let m = Metrics::read(&metrics).expect("metrics");
    assert_eq!(m.get("offsite_sync_last_status"), Some(1.0));
    assert_eq!(m.get("backup_last_success_timestamp"), None);
    w.run("step1", &[]).succeeds();
    assert!(w.pve().join("pfsense/config-2026-11-29.xml").is_file());
    assert_eq!(w.leg1().line_count().expect("count"), 0);
}

/// With nothing owed, the capacity read is the night's only contact with
/// the NAS: an unreachable NAS is a failed night, never a silent success.
#[test]
fn an_unreachable_nas_fails_the_run_even_with_nothing_to_send() {
    let w = World::with_nas();
    recent_full(&w);
    let metrics = w.sb.path().join("m.prom");
    w.run("all", &["--metrics-file", metrics.to_str().expect("utf8")])
        .succeeds();
    let m = Metrics::read(&metrics).expect("metrics");
    assert_eq!(m.get("offsite_sync_last_status"), Some(0.0));

    let mut c = w.cmd("all", &["--metrics-file", metrics.to_str().expect("utf8")]);
    c.args(["--ssh-port", "1"]);
    backup_tests::harness::Run::of(&mut c)
        .fails_with(1)
        .stderr_contains("NAS not reachable");
    let m = Metrics::read(&metrics).expect("metrics");
    assert_eq!(m.get("offsite_sync_last_status"), Some(1.0));
    assert_eq!(m.get("backup_last_success_timestamp"), None);
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn recent_full(w: &World) {
    for s in [1, 2] {
        World::put(
            &w.root,
            format!(".offsite-sync/last-full-step{s}").as_bytes(),
            format!("{}\n", now()).as_bytes(),
        );
    }
}

#[test]
fn a_new_week_shares_unchanged_files_with_the_previous_week_on_the_nas() {
    let w = World::with_nas();
    recent_full(&w);
    let big = vec![7u8; 256 * 1024];
    for f in [b"a".as_slice(), b"b", b"c"] {
        let mut p = b"pvc-data/2026-W47/ns/pvc/".to_vec();
        p.extend_from_slice(f);
        World::put(&w.root, &p, &big);
        w.leg1().append([&p]).expect("append");
    }
    w.run("step1", &[]).succeeds();
    // Week 48: a and b unchanged (hard links locally, as pvc-copy makes
    // them), c changed.
    std::fs::create_dir_all(w.root.join("pvc-data/2026-W48/ns/pvc")).expect("mkdir");
    for f in ["a", "b"] {
        std::fs::hard_link(
            w.root.join("pvc-data/2026-W47/ns/pvc").join(f),
            w.root.join("pvc-data/2026-W48/ns/pvc").join(f),
        )
        .expect("link");
    }
    let c48 = World::put(
        &w.root,
        b"pvc-data/2026-W48/ns/pvc/c",
        &vec![9u8; 256 * 1024],
    );
    // c changed a week later, as a real new week's copy does. Written right
    // after the first run, its mtime could fall in the same second as W47's
    // c (same size): step 1 then compares at whole seconds and links W47's
    // c in its place, the flake this test had (see
    // a_same_size_change_within_the_second_is_not_linked_to_the_previous_week).
    set_mtime(
        &c48,
        mtime(&w.root.join("pvc-data/2026-W47/ns/pvc/c")) + WEEK,
    );
    for f in ["a", "b", "c"] {
        w.leg1()
            .append([format!("pvc-data/2026-W48/ns/pvc/{f}")])
            .expect("append");
    }
    // The week directory itself listed (a whole new week): still linked.
    std::fs::create_dir_all(w.root.join("pvc-data/2026-W49/ns/pvc")).expect("mkdir");
    std::fs::hard_link(
        w.root.join("pvc-data/2026-W47/ns/pvc/a"),
        w.root.join("pvc-data/2026-W49/ns/pvc/a"),
    )
    .expect("link");
    w.leg1().append([b"pvc-data/2026-W49"]).expect("append");
    w.run("step1", &[]).succeeds();
    let ino = |week: &str, f: &str| {
        std::fs::metadata(w.pve().join(format!("pvc-data/{week}/ns/pvc/{f}")))
            .expect("on the NAS")
            .ino()
    };
    assert_eq!(
        ino("2026-W47", "a"),
        ino("2026-W48", "a"),
        "a was copied, not linked"
    );
    assert_eq!(ino("2026-W47", "b"), ino("2026-W48", "b"));
    assert_ne!(ino("2026-W47", "c"), ino("2026-W48", "c"));
    assert_eq!(ino("2026-W47", "a"), ino("2026-W49", "a"));
    assert_eq!(
        std::fs::read(w.pve().join("pvc-data/2026-W48/ns/pvc/c")).expect("c"),
        vec![9u8; 256 * 1024]
    );
}

const WEEK: Duration = Duration::from_secs(7 * 86_400);

fn mtime(p: &std::path::Path) -> SystemTime {
    std::fs::metadata(p).expect("md").modified().expect("mtime")
}

fn set_mtime(p: &std::path::Path, t: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(p)
        .and_then(|h| h.set_modified(t))
        .expect("set mtime");
}

/// Within one second, at two instants far enough apart for any clock.
fn same_second() -> (SystemTime, SystemTime) {
    let s = UNIX_EPOCH + Duration::from_secs(1_790_000_000);
    (
        s + Duration::from_millis(100),
        s + Duration::from_millis(900),
    )
}

/// Step 1 compares modification times at full precision (contract 6,
/// `--modify-window=-1` in offsite-sync's `rsync_base`). With rsync's
/// default one-second window a file of the new week with the size of the
/// previous week's copy and an mtime in the same second was taken as
/// unchanged and hard-linked to the previous week's content by
/// `--link-dest`: the NAS's new week held the old bytes, and the ledger
/// entry was committed.
#[test]
fn a_same_size_change_within_the_second_is_not_linked_to_the_previous_week() {
    let w = World::with_nas();
    recent_full(&w);
    let (t0, t1) = same_second();
    let c47 = World::put(&w.root, b"pvc-data/2026-W47/ns/pvc/c", b"old!");
    set_mtime(&c47, t0);
    w.leg1()
        .append([b"pvc-data/2026-W47/ns/pvc/c"])
        .expect("append");
    w.run("step1", &[]).succeeds();
    let c48 = World::put(&w.root, b"pvc-data/2026-W48/ns/pvc/c", b"new!");
    set_mtime(&c48, t1);
    w.leg1()
        .append([b"pvc-data/2026-W48/ns/pvc/c"])
        .expect("append");
    w.run("step1", &[]).succeeds();
    assert_eq!(
        std::fs::read(w.pve().join("pvc-data/2026-W48/ns/pvc/c")).expect("c"),
        b"new!",
        "W48's c on the NAS is W47's content (linked by --link-dest)"
    );
}

/// The same in step 1's plain (not weekly) transfer: a listed file
/// rewritten with the same size within the second of the copy on the NAS
/// was itemized as up to date, not sent, and its ledger entry committed:
/// the NAS kept the old bytes for good (a full pass compared the same way).
#[test]
fn a_same_size_rewrite_within_the_second_is_sent_by_step1() {
    let w = World::with_nas();
    recent_full(&w);
    let (t0, t1) = same_second();
    let f = World::put(&w.root, b"svc/f", b"old!");
    set_mtime(&f, t0);
    w.leg1().append([b"svc/f"]).expect("append");
    w.run("step1", &[]).succeeds();
    std::fs::write(&f, b"new!").expect("rewrite");
    set_mtime(&f, t1);
    w.leg1().append([b"svc/f"]).expect("append");
    w.run("step1", &[]).succeeds();
    assert_eq!(
        std::fs::read(w.pve().join("svc/f")).expect("f"),
        b"new!",
        "the rewrite never reached the NAS"
    );
}

#[test]
fn step2_sends_only_direct_paths_and_never_follows_a_symlink_out_of_the_tree() {
    let w = World::with_nas();
    recent_full(&w);
    let outside = w.sb.mkdir("outside");
    std::fs::write(outside.join("secret"), "tenant B").expect("secret");
    let photo = World::put(&w.nfs, b"immich/upload/p\nhoto.jpg", b"jpg");
    let dash = World::put(&w.nfs, b"immich/upload/-rf", b"dash");
    let ssd = World::put(&w.nfs_ssd, b"immich/thumbs/t.webp", b"webp");
    let cache = World::put(&w.nfs, b"immich/thumbs-cache/x", b"never");
    let leg1 = World::put(&w.nfs, b"nextcloud/doc.odt", b"leg1");
    let never = World::put(&w.nfs, b"frigate/clip.mp4", b"never");
    std::os::unix::fs::symlink(&outside, w.nfs.join("immich/evil")).expect("symlink");
    let evil = w.nfs.join("immich/evil/secret");
    let gone = w.nfs.join("immich/upload/gone.jpg");
    let paths = [&photo, &dash, &ssd, &cache, &leg1, &never, &evil, &gone];
    w.leg2()
        .append_paths(paths.iter().map(|p| p.as_path()))
        .expect("append");
    let r = w.run("step2", &[]);
    r.succeeds()
        .stdout_contains("1 vanished")
        .stdout_contains("3 not direct")
        .stdout_contains("1 unsafe");
    assert_eq!(
        World::files(&w.nas_dir.join("nfs")),
        set(&[b"immich/upload/p\nhoto.jpg", b"immich/upload/-rf"])
    );
    assert_eq!(
        World::files(&w.nas_dir.join("nfs-ssd")),
        set(&[b"immich/thumbs/t.webp"])
    );
    assert!(!w.nas_dir.join("nfs/immich/evil/secret").exists());
    assert_eq!(w.leg2().line_count().expect("count"), 0);

    // A same-size rewrite within the same second is still sent (live
    // source: the behaviour contract 6 asks for; the tool passes
    // --modify-window=-1, rsync 3.5 here also compares nanoseconds itself).
    let before = std::fs::metadata(&dash)
        .expect("md")
        .modified()
        .expect("mtime");
    std::fs::write(&dash, b"DASH").expect("rewrite");
    std::fs::File::options()
        .write(true)
        .open(&dash)
        .and_then(|h| h.set_modified(before + std::time::Duration::from_millis(1)))
        .expect("set mtime");
    w.leg2().append_paths([dash.as_path()]).expect("append");
    w.run("step2", &[]).succeeds();
    assert_eq!(
        std::fs::read(w.nas_dir.join("nfs/immich/upload/-rf")).expect("nas"),
        b"DASH"
    );
}

#[test]
fn full_pass_deletes_on_the_nas_only_from_a_sound_source() {
    let w = World::with_nas();
    World::put(&w.root, b"nextcloud/a", b"a");
    World::put(&w.root, b"nextcloud/b", b"b");
    World::put(&w.root, b".changed-files.lock", b"");
    World::put(&w.nfs, b"immich/p1", b"p1");
    World::put(&w.nfs, b"immich/thumbs-cache/t", b"never");
    World::put(&w.nfs, b"frigate/c", b"c");
    // No full pass on record: the first run is a full pass.
    w.run("all", &[]).succeeds().stdout_contains("full pass");
    assert_eq!(
        World::files(&w.pve()),
        set(&[b"nextcloud/a", b"nextcloud/b"])
    );
    assert_eq!(World::files(&w.nas_dir.join("nfs")), set(&[b"immich/p1"]));
    assert!(w.root.join(".offsite-sync/last-full-step1").is_file());

    // Within --full-every: incremental; a stale NAS file stays.
    World::put(&w.pve(), b"nextcloud/stale", b"s");
    w.run("step1", &[]).succeeds();
    assert!(w.pve().join("nextcloud/stale").exists());

    // The marker asks for a full pass: the stale file goes, the marker too.
    w.leg1().mark_full_sync("test gap").expect("mark");
    w.run("step1", &["--max-delete", "off"])
        .succeeds()
        .stdout_contains("full pass");
    assert!(!w.pve().join("nextcloud/stale").exists());
    assert!(!w.leg1().full_sync_needed());

    // Bug 3 (docs/compatibility.md): the backup disk is empty (not mounted): refused, nothing
    // deleted. The bare directory has no identity marker (contract 13).
    let moved = w.sb.path().join("moved");
    std::fs::rename(&w.root, &moved).expect("mv");
    std::fs::create_dir_all(&w.root).expect("mkdir");
    w.run("step1", &["--full", "always"])
        .fails_with(5)
        .stderr_contains("no backup-root identity marker");
    assert_eq!(
        World::files(&w.pve()),
        set(&[b"nextcloud/a", b"nextcloud/b"])
    );
    std::fs::remove_dir_all(&w.root).expect("rm");
    std::fs::rename(&moved, &w.root).expect("mv back");
    w.run("step1", &["--full", "always", "--require-mountpoint"])
        .fails_with(5)
        .stderr_contains("not a mountpoint");

    // --max-delete bounds a full pass: refused with the figures, nothing sent.
    std::fs::remove_file(w.root.join("nextcloud/a")).expect("rm");
    World::put(&w.root, b"nextcloud/new", b"n");
    w.run("step1", &["--full", "always", "--max-delete", "0"])
        .fails_with(5)
        .stderr_contains("would delete 1 of");
    assert!(w.pve().join("nextcloud/a").exists());
    assert!(!w.pve().join("nextcloud/new").exists());

    // Step 2: immich emptied or missing at the source -> nothing deleted.
    std::fs::remove_file(w.nfs.join("immich/p1")).expect("rm");
    std::fs::remove_dir_all(w.nfs.join("immich/thumbs-cache")).expect("rm");
    w.run("step2", &["--full", "always"])
        .fails_with(5)
        .stderr_contains("is empty");
    assert!(w.nas_dir.join("nfs/immich/p1").exists());
    std::fs::remove_dir(w.nfs.join("immich")).expect("rmdir");
    w.run("step2", &["--full", "always"]).succeeds();
    assert!(
        w.nas_dir.join("nfs/immich/p1").exists(),
        "absent tree's NAS copy deleted"
    );
}

#[test]
fn ledger_cap_marks_a_full_sync_and_status_reports_it() {
    let w = World::with_nas();
    recent_full(&w);
    World::put(&w.root, b"svc/f", b"f");
    w.leg1()
        .append([b"svc/f", b"svc/f", b"svc/f"])
        .expect("append");
    w.run("step1", &["--ledger-cap", "2", "--dry-run"])
        .succeeds();
    assert!(!w.leg1().full_sync_needed(), "dry run wrote the marker");
    let r = w.run("status", &["--json"]);
    r.succeeds();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(v["ledgers"][0]["pending_lines"], 3);
    assert!(v["nas"]["available_bytes"].as_u64().expect("avail") > 0);
    w.run("step1", &["--ledger-cap", "2", "--full", "never"])
        .succeeds();
    assert!(w.leg1().full_sync_needed(), "cap did not set the marker");
    let r = w.run("status", &["--no-nas"]);
    r.succeeds()
        .stdout_contains("full sync needed (")
        .stdout_contains("ledger cap");
}

#[test]
fn coverage_lists_one_route_per_dir_and_fails_on_overlaps() {
    let w = World::new();
    for d in ["immich", "frigate", "nextcloud"] {
        std::fs::create_dir_all(w.nfs.join(d)).expect("mkdir");
    }
    // nextcloud is routed to the backup disk, but no nfs-mirror run has
    // recorded mirroring it: uncovered, exit 3, named on stderr.
    let r = w.run("coverage", &["--json"]);
    r.fails_with(3)
        .stderr_contains(&format!("uncovered: {}/nextcloud", w.nfs.display()));
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    let got: Vec<(String, String, String)> = v
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["name"].as_str().expect("n").to_string(),
                r["route"].as_str().expect("r").to_string(),
                r["state"].as_str().expect("s").to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("frigate".into(), "never".into(), "covered".into()),
            ("immich".into(), "direct".into(), "covered".into()),
            ("nextcloud".into(), "backup-disk".into(), "uncovered".into())
        ]
    );
    std::fs::write(&w.skip, "direct imm*\nnever *ich\n").expect("w");
    w.run("coverage", &[])
        .fails_with(2)
        .stderr_contains("immich is claimed by");
}

#[test]
fn bad_input_is_a_one_line_usage_error() {
    let w = World::new();
    w.run("step1", &["--remote", "nas.invalid"])
        .fails_with(2)
        .stderr_contains("expected USER@HOST");
    w.run("step1", &["--max-delete", "many"])
        .fails_with(2)
        .stderr_contains("--max-delete");
    w.run("step1", &["--full-every", "soon"]).fails_with(2);
}

#[test]
fn full_every_decides_and_the_stamp_and_marker_change_only_after_success() {
    let w = World::with_nas();
    World::put(&w.root, b"svc/a", b"a");
    let old = now() - 31 * 86_400;
    for s in [1, 2] {
        World::put(
            &w.root,
            format!(".offsite-sync/last-full-step{s}").as_bytes(),
            format!("{old}\n").as_bytes(),
        );
    }
    w.leg1().mark_full_sync("nfs-track gap").expect("mark");
    let stamp =
        || std::fs::read_to_string(w.root.join(".offsite-sync/last-full-step1")).expect("stamp");
    // Due, but the NAS is unreachable: stamp and marker stay.
    w.run("step1", &["--ssh-port", "1"]).fails_with(1);
    assert_eq!(stamp().trim(), old.to_string());
    assert!(w.leg1().full_sync_needed());
    // --full never: an incremental run, nothing changes either.
    w.run("step1", &["--full", "never"]).succeeds();
    assert_eq!(stamp().trim(), old.to_string());
    assert!(w.leg1().full_sync_needed());
    // 31 days > --full-every 30d: a full pass, then the stamp moves on and
    // the marker is gone.
    w.run("step1", &[])
        .succeeds()
        .stdout_contains("full pass")
        .stderr_contains("last full pass 31 days ago");
    assert!(stamp().trim().parse::<u64>().expect("num") >= now() - 60);
    assert!(!w.leg1().full_sync_needed());
    assert!(w.pve().join("svc/a").is_file());
    // Within --full-every now: incremental.
    let r = w.run("step1", &[]);
    r.succeeds();
    assert!(!r.stdout.contains("full pass"), "{}", r.stdout);
}

/// A direct tree whose name is not UTF-8 (`direct */media` matching
/// `svc\xff/media`) lands on the NAS under its own bytes in a full pass,
/// as the incremental pass sends it; the NAS path was built with
/// `Path::display()` and the tree landed under `svc\u{FFFD}` instead.
#[test]
fn a_full_pass_keeps_the_bytes_of_a_non_utf8_tree_name() {
    let w = World::with_nas();
    std::fs::write(&w.skip, "direct */media\n").expect("skip list");
    World::put(&w.nfs, b"svc\xff/media/clip.mp4", b"clip");
    w.run("step2", &["--full", "always"]).succeeds();
    assert_eq!(
        World::files(&w.nas_dir.join("nfs")),
        set(&[b"svc\xff/media/clip.mp4"])
    );
}
