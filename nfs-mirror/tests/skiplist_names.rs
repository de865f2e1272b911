//! Skip-list rules and awkward names (`foo[1]`, `a*b`, `q?`, `back\slash`,
//! `x**y`) through leg 1: every directory is mirrored onto the backup disk
//! exactly when the skip list's matcher routes it there, at the top level
//! (one rsync per entry) and below it (nested rules as rsync excludes).
//! The same tree and skip list go through leg 2 in offsite-sync's
//! tests/skiplist_names.rs.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use backup_core::skiplist::Route::BackupDisk as B;
use backup_tests::harness::{Run, Sandbox};

use backup_tests::awkward_names::{NAMES, SKIP, expected};

struct T {
    sb: Sandbox,
    src: PathBuf,
    dst: PathBuf,
    skip: PathBuf,
}

fn setup(skip: &str) -> T {
    let sb = Sandbox::new();
    let src = sb.mkdir("srv/nfs");
    let dst = sb.mkdir("mnt/backup");
    backup_tests::harness::init_backup_root(&dst);
    let skip = sb.write("skip.conf", skip);
    for dir in [None, Some("home"), Some("media")] {
        for n in NAMES {
            let d = dir
                .map(|d| src.join(d))
                .unwrap_or_else(|| src.clone())
                .join(OsStr::from_bytes(n));
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join("f"), n).expect("write");
        }
    }
    T { sb, src, dst, skip }
}

impl T {
    fn run(&self) -> Run {
        Run::of(
            self.sb
                .cmd("nfs-mirror")
                .arg("--source")
                .arg(&self.src)
                .arg("--dest")
                .arg(&self.dst)
                .arg("--skip-list")
                .arg(&self.skip),
        )
    }
}

#[test]
fn each_name_is_mirrored_exactly_when_the_matcher_routes_it_to_the_backup_disk() {
    let t = setup(SKIP);
    let want = expected(&t.skip);
    t.run().succeeds();
    let mut wrong = Vec::new();
    for (rel, route) in &want {
        // media is routed 'direct' as a whole: nothing of it is mirrored.
        let leg1 = *route == B && !rel.starts_with("media");
        let mirrored = t.dst.join(rel).join("f").exists();
        if mirrored != leg1 {
            wrong.push(format!(
                "{rel:?} (route {}): {}",
                route.as_str(),
                if mirrored { "mirrored" } else { "not mirrored" }
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(!t.dst.join("media").exists(), "a direct tree was mirrored");
}

#[test]
fn a_rule_rsync_would_read_otherwise_is_refused_before_anything_is_copied() {
    for (line, rule) in [
        "never home/foo[1]",
        "never home/back\\slash",
        "never home/x**y",
        "direct foo[1]",
    ]
    .iter()
    .enumerate()
    .map(|(i, r)| (i + 2, *r))
    {
        let text = format!("{SKIP}\n{}{rule}\n", "# padding\n".repeat(line - 2));
        let t = setup(&text);
        let want_line = SKIP.lines().count() + line;
        let pat = rule.split_whitespace().nth(1).expect("pattern");
        // The log line escapes a backslash as '\\'.
        t.run().fails_with(2).stderr_contains(&format!(
            "{}:{want_line}: pattern \"{}\": '",
            t.skip.display(),
            pat.replace('\\', "\\\\")
        ));
        let left: Vec<_> = std::fs::read_dir(&t.dst)
            .expect("dst")
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n != backup_core::marker::FILE)
            .collect();
        assert!(left.is_empty(), "{rule}: copied {left:?}");
    }
}
