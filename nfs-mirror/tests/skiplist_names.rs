//! Skip-list rules and awkward names (`foo[1]`, `a*b`, `q?`, `back\slash`,
//! `x**y`) through leg 1: every directory is mirrored onto the backup disk
//! exactly when the skip list's matcher routes it there, at the top level
//! (one rsync per entry) and below it (nested rules as rsync excludes).
//! The same tree and skip list go through leg 2 in offsite-sync's
//! tests/skiplist_names.rs.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use backup_core::skiplist::{Route, SkipList};
use backup_tests::harness::{Run, Sandbox};

/// The rules use only what the matcher and rsync read alike ('*', '?').
const SKIP: &str = "\
direct foo?1?
never  q?
direct a*b
never  back?slash
direct x*y
never  home/foo?1?
never  home/q?
direct home/a*b
never  home/back?slash
direct home/x*y
direct media
never  media/foo?1?
never  media/q?
never  media/back?slash
never  media/x*y
";

/// Bytes: names are bytes to both legs ('q\xff' is not UTF-8).
const NAMES: &[&[u8]] = &[
    b"foo[1]",
    b"foo1",
    b"a*b",
    b"axb",
    b"q?",
    "q\u{e9}".as_bytes(),
    b"q\xff",
    b"back\\slash",
    b"backslash",
    b"x**y",
    b"xy",
    b"plain",
];

use Route::{BackupDisk as B, Direct as D, Never as N};

/// The route of each name at the top level, in `home/` (leg 1) and in
/// `media/` (leg 2), in the order of NAMES. '?' is one byte ('qé' is
/// three, 'q\xff' two), '*' of the rule is a wildcard even facing a '*'
/// of the name.
const TOP: &[Route] = &[D, B, D, D, N, B, N, N, B, D, D, B];
const HOME: &[Route] = &[N, B, D, D, N, B, N, N, B, D, D, B];
const MEDIA: &[Route] = &[N, D, D, D, N, D, N, N, D, N, N, D];

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

/// Every (path, expected route) of the tree, checked against the matcher
/// itself first: the table is what the skip list means.
fn expected(skip: &Path) -> Vec<(PathBuf, Route)> {
    let list = SkipList::load(skip).expect("skip list");
    let mut out = Vec::new();
    for (dir, routes) in [("", TOP), ("home", HOME), ("media", MEDIA)] {
        for (n, want) in NAMES.iter().zip(routes) {
            let rel = Path::new(dir).join(OsStr::from_bytes(n));
            assert_eq!(list.route(&rel), *want, "the matcher routes {rel:?}");
            out.push((rel, *want));
        }
    }
    out
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
