//! Awkward names (`foo[1]`, `a*b`, `q?`, `back\slash`, `x**y`, non-UTF-8)
//! and a skip list naming some of them, with the route the matcher gives
//! each: the one table both legs' tests run through real rsync
//! (nfs-mirror/tests/skiplist_names.rs, offsite-sync/tests/skiplist_names.rs).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use backup_core::skiplist::{Route, SkipList};

/// The rules use only what the matcher and rsync read alike ('*', '?').
pub const SKIP: &str = "\
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
pub const NAMES: &[&[u8]] = &[
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
pub const TOP: &[Route] = &[D, B, D, D, N, B, N, N, B, D, D, B];
pub const HOME: &[Route] = &[N, B, D, D, N, B, N, N, B, D, D, B];
pub const MEDIA: &[Route] = &[N, D, D, D, N, D, N, N, D, N, N, D];

/// Every (path, expected route) of the tree, checked against the matcher
/// itself first: the table is what the skip list means.
pub fn expected(skip: &Path) -> Vec<(PathBuf, Route)> {
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
