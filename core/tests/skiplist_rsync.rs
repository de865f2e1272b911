//! The skip list's matcher and the rsync filters core builds from it agree,
//! checked against the real rsync: every path of a tree of awkward names
//! (`foo[1]`, `a*b`, `q?`, `back\slash`, `x**y`, a non-UTF-8 name) is
//! copied exactly when the matcher does not match it.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use backup_core::skiplist::{self, SkipList, component_matches};

fn names() -> Vec<OsString> {
    let mut v: Vec<OsString> = [
        "foo[1]",
        "foo1",
        "foo]",
        "a*b",
        "axb",
        "q?",
        "qx",
        "q\u{e9}",
        "back\\slash",
        "backxslash",
        "x**y",
        "xy",
        "xa",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    v.push(OsStr::from_bytes(b"q\xff").to_os_string());
    v
}

/// `s/<name>/f`, `s/data/<name>/f` and `s/xa/b/zy/f`: every path, relative.
fn tree(src: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    for top in [PathBuf::new(), PathBuf::from("data")] {
        for n in names() {
            let d = top.join(&n);
            std::fs::create_dir_all(src.join(&d)).expect("mkdir");
            std::fs::write(src.join(&d).join("f"), b"x").expect("write");
            all.push(d.join("f"));
        }
    }
    std::fs::create_dir_all(src.join("xa/b/zy")).expect("mkdir");
    std::fs::write(src.join("xa/b/zy/f"), b"x").expect("write");
    all.push(PathBuf::from("xa/b/zy/f"));
    all
}

/// The paths of `src` rsync copies with these filters.
fn copied(src: &Path, dst: &Path, filters: &[OsString]) -> Vec<bool> {
    let _ = std::fs::remove_dir_all(dst);
    let mut c = Command::new("rsync");
    c.arg("-r");
    for f in filters {
        let mut a = OsString::from("--exclude=");
        a.push(f);
        c.arg(a);
    }
    let mut s = src.as_os_str().to_os_string();
    s.push("/");
    let mut d = dst.as_os_str().to_os_string();
    d.push("/");
    let st = c.arg("--").arg(s).arg(d).status().expect("run rsync");
    assert!(st.success(), "rsync {filters:?}: {st}");
    tree_paths(src)
        .iter()
        .map(|p| dst.join(p).exists())
        .collect()
}

fn tree_paths(src: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(src.join(&rel)).expect("read_dir") {
            let e = e.expect("entry");
            let r = rel.join(e.file_name());
            if e.file_type().expect("type").is_dir() {
                stack.push(r);
            } else {
                out.push(r);
            }
        }
    }
    out.sort();
    out
}

/// The matcher's decision for one rule: the rule matches a prefix of the
/// path component by component.
fn matched(rule: &[&str], path: &Path) -> bool {
    let comps: Vec<&OsStr> = path.iter().collect();
    rule.len() <= comps.len()
        && rule
            .iter()
            .zip(&comps)
            .all(|(p, c)| component_matches(p, c))
}

#[test]
fn rsync_copies_exactly_what_the_matcher_does_not_match() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("s");
    let dst = dir.path().join("d");
    tree(&src);
    let paths = tree_paths(&src);
    // Rules a skip list accepts, and (translated all the same) constructs
    // it refuses: the filter must mean what the matcher means either way.
    let rules: &[&[&str]] = &[
        &["foo?1?"],
        &["a*b"],
        &["q?"],
        &["back?slash"],
        &["x*y"],
        &["data", "q?"],
        &["data", "a*b"],
        &["*", "foo?1?"],
        &["foo[1]"],
        &["foo]"],
        &["back\\slash"],
        &["b*\\slash"],
        &["x**y"],
        &["data", "foo[1]"],
        &["*", "x**y"],
        &["xa", "b", "*y"],
    ];
    let mut wrong = Vec::new();
    for rule in rules {
        let pat = skiplist::rsync_pattern(rule);
        let got = copied(&src, &dst, &[pat.clone().into()]);
        for (p, present) in paths.iter().zip(got) {
            if present == matched(rule, p) {
                wrong.push(format!(
                    "rule {rule:?} (rsync {pat:?}): {} is {} by rsync but {} by the matcher",
                    p.display(),
                    if present { "copied" } else { "excluded" },
                    if present { "matched" } else { "not matched" }
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_literal_name_excludes_that_name_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("s");
    let dst = dir.path().join("d");
    tree(&src);
    let paths = tree_paths(&src);
    let mut wrong = Vec::new();
    for n in names() {
        for prefix in [None, Some(OsStr::new("data"))] {
            let comps: Vec<&OsStr> = prefix.into_iter().chain([n.as_os_str()]).collect();
            let filter = skiplist::rsync_literal(&comps);
            let target: PathBuf = comps.iter().collect();
            let got = copied(&src, &dst, std::slice::from_ref(&filter));
            for (p, present) in paths.iter().zip(got) {
                if present == p.starts_with(&target) {
                    wrong.push(format!(
                        "name {target:?} (rsync {filter:?}): {} {}",
                        p.display(),
                        if present { "copied" } else { "excluded" }
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_loaded_skip_list_never_holds_a_pattern_rsync_reads_otherwise() {
    for bad in ["foo[1]", "data/foo[1]", "back\\slash", "x**y"] {
        let text = format!("direct immich\nnever {bad}\n");
        let e = SkipList::parse(&text, "skip.conf").expect_err(bad);
        assert!(
            e.to_string()
                .starts_with(&format!("skip.conf:2: pattern \"{bad}\": '")),
            "{e}"
        );
    }
}
