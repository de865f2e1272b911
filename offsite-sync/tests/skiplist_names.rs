//! Skip-list rules and awkward names (`foo[1]`, `a*b`, `q?`, `back\slash`,
//! `x**y`) through leg 2: a full pass of step 2 sends to the NAS (a real
//! sshd on loopback) exactly the directories the skip list's matcher
//! routes `direct`, and `coverage` reports the matcher's routes. The same
//! tree and skip list go through leg 1 in nfs-mirror's
//! tests/skiplist_names.rs.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use backup_core::skiplist::Route::Direct as D;
use common::World;

use backup_tests::awkward_names::{NAMES, SKIP, TOP, expected};

fn world(skip: &str, nas: bool) -> World {
    let w = if nas { World::with_nas() } else { World::new() };
    std::fs::write(&w.skip, skip).expect("skip list");
    for dir in ["", "home", "media"] {
        for n in NAMES {
            let d = w.nfs.join(dir).join(OsStr::from_bytes(n));
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join("f"), n).expect("write");
        }
    }
    w
}

#[test]
fn coverage_reports_the_matcher_s_route_of_each_awkward_name() {
    let w = world(SKIP, false);
    // No nfs-mirror ran in this world: the backup-disk names are
    // uncovered (exit 3); the routes are what this test reads.
    let r = w.run("coverage", &["--json"]);
    r.fails_with(3);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    let mut got: Vec<(String, String)> = v
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["root"].as_str() == w.nfs.to_str())
        .map(|r| {
            (
                r["name"].as_str().expect("name").to_string(),
                r["route"].as_str().expect("route").to_string(),
            )
        })
        .collect();
    let mut want: Vec<(String, String)> = NAMES
        .iter()
        .zip(TOP)
        .map(|(n, r)| (backup_core::log::escape_bytes(n), r.as_str().to_string()))
        .chain([
            ("home".into(), "backup-disk".into()),
            ("media".into(), "direct".into()),
        ])
        .collect();
    // The listing escapes names as the log does (a backslash doubled,
    // other bytes as hex); both sides compared in one order.
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn a_full_pass_sends_each_name_exactly_when_the_matcher_routes_it_direct() {
    let w = world(SKIP, true);
    let want = expected(&w.skip);
    w.run("step2", &["--full", "always"]).succeeds();
    let nas = w.nas_dir.join("nfs");
    let mut wrong = Vec::new();
    for (rel, route) in &want {
        let sent = nas.join(rel).join("f").exists();
        if sent != (*route == D) {
            wrong.push(format!(
                "{rel:?} (route {}): {}",
                route.as_str(),
                if sent { "sent" } else { "not sent" }
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_rule_rsync_would_read_otherwise_is_refused_before_anything_is_sent() {
    for rule in [
        "never media/foo[1]",
        "never media/back\\slash",
        "never media/x**y",
        "direct foo[1]",
    ] {
        let w = world(&format!("{SKIP}{rule}\n"), true);
        let want_line = SKIP.lines().count() + 1;
        let pat = rule.split_whitespace().nth(1).expect("pattern");
        // The log line escapes a backslash as '\\'.
        let want = format!(
            "{}:{want_line}: pattern \"{}\": '",
            w.skip.display(),
            pat.replace('\\', "\\\\")
        );
        w.run("step2", &["--full", "always"])
            .fails_with(2)
            .stderr_contains(&want);
        w.run("coverage", &[]).fails_with(2).stderr_contains(&want);
        // The NAS destination holds its identity marker and nothing else.
        let sent: Vec<_> = std::fs::read_dir(w.nas_dir.join("nfs"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            sent.iter().all(|n| n == backup_core::marker::FILE),
            "{rule}: something was sent: {sent:?}"
        );
    }
}
