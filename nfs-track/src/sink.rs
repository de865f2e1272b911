//! Where backends put the paths they see: filtering (trees, excludes, skip
//! list route), deduplication within a flush window, and the counters.

use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use backup_core::skiplist::{Route, SkipList};
use regex::bytes::{Regex, RegexSet};

/// The excludes of the original tracker: editor swap files, NFS silly-rename
/// files, trash directories, SQLite sidecars, and the `stats/*.stat` noise.
pub const DEFAULT_EXCLUDES: &[&str] = &[
    r"/\.[^/]*\.sw[a-p]$",
    r"/\.nfs",
    r"/\.Trash",
    r"-(shm|wal|journal)$",
    r"/stats/.*\.stat$",
];

#[derive(Debug)]
pub struct Filter {
    /// Watched roots, canonical.
    pub roots: Vec<PathBuf>,
    excludes: RegexSet,
    skip: Option<(SkipList, Route)>,
    /// Our own files (ledger and siblings, state, metrics): never logged.
    own: Vec<PathBuf>,
}

impl Filter {
    pub fn new(
        roots: Vec<PathBuf>,
        excludes: &[String],
        skip: Option<(SkipList, Route)>,
        own: Vec<PathBuf>,
    ) -> Result<Filter, regex::Error> {
        for e in excludes {
            Regex::new(e)?;
        }
        Ok(Filter {
            roots,
            excludes: RegexSet::new(excludes)?,
            skip,
            own,
        })
    }

    /// The watched root a path lies under.
    pub fn root_of(&self, path: &Path) -> Option<&Path> {
        let b = path.as_os_str().as_bytes();
        self.roots
            .iter()
            .filter(|r| under(b, r))
            .max_by_key(|r| r.as_os_str().len())
            .map(PathBuf::as_path)
    }

    /// Whether anything below directory `dir` can be on the logged route,
    /// so that a directory of another route is neither watched nor walked.
    /// For each rule of the route that is deeper than `dir`, the path made
    /// of `dir` plus the rest of that rule's pattern is looked up: if that
    /// path is on the route, `dir` may hold such paths.
    pub fn may_hold(&self, dir: &Path) -> bool {
        let Some((list, route)) = &self.skip else {
            return true;
        };
        let Some(root) = self.root_of(dir) else {
            return false;
        };
        let rel = dir.strip_prefix(root).unwrap_or(Path::new(""));
        let depth = rel.components().count();
        if depth == 0 || list.route(rel) == *route {
            return true;
        }
        list.rules()
            .iter()
            .filter(|r| r.route == *route && r.pattern.len() > depth)
            .any(|r| {
                let mut probe = rel.to_path_buf();
                for c in &r.pattern[depth..] {
                    probe.push(c);
                }
                list.route(&probe) == *route
            })
    }

    /// Whether a file path belongs in the ledger.
    pub fn accepts(&self, path: &Path) -> bool {
        let Some(root) = self.root_of(path) else {
            return false;
        };
        if self.excludes.is_match(path.as_os_str().as_bytes()) {
            return false;
        }
        if self
            .own
            .iter()
            .any(|o| under(path.as_os_str().as_bytes(), o))
        {
            return false;
        }
        if let Some((list, route)) = &self.skip {
            let rel = path.strip_prefix(root).unwrap_or(path);
            if list.route(rel) != *route {
                return false;
            }
        }
        true
    }
}

/// `path` is `dir` or below it (byte comparison on a component boundary;
/// cheaper than `Path::starts_with` on every event). Both are absolute and
/// normalised (canonical roots, paths joined from them).
fn under(path: &[u8], dir: &Path) -> bool {
    let d = dir.as_os_str().as_bytes();
    let d = if d.len() > 1 {
        d.strip_suffix(b"/").unwrap_or(d)
    } else {
        d
    };
    path.starts_with(d) && (path.len() == d.len() || d == b"/" || path[d.len()] == b'/')
}

#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub events: u64,
    pub logged: u64,
    pub overflows: u64,
    pub rescans: u64,
    pub marks: u64,
    pub watch_limit_hits: u64,
    pub dropped: u64,
}

#[derive(Debug)]
pub struct Sink {
    pub filter: Filter,
    pub pending: BTreeSet<Vec<u8>>,
    pub counters: Counters,
    /// Full-sync requests not yet written (the ledger disk may be away).
    pub marker_owed: Vec<String>,
    /// Bound on `pending` while the ledger cannot be written.
    pub max_pending: usize,
}

impl Sink {
    pub fn new(filter: Filter, max_pending: usize) -> Sink {
        Sink {
            filter,
            pending: BTreeSet::new(),
            counters: Counters::default(),
            marker_owed: Vec::new(),
            max_pending,
        }
    }

    /// A file event of either backend: `written` for a close-after-write
    /// or a move in, `created` for a creation. A symlink, a hard link and a
    /// file written unnamed (O_TMPFILE) then linked in never see a
    /// close_write under their name: the creation is their only event, so
    /// any new regular file or symlink is offered then; a normal file's
    /// close_write usually falls in the same flush window (deduplicated).
    pub fn file_event(&mut self, path: &Path, written: bool, created: bool) {
        if written {
            self.offer(path);
        } else if created
            && let Ok(m) = std::fs::symlink_metadata(path)
            && (m.file_type().is_symlink() || m.is_file())
        {
            self.offer(path);
        }
    }

    /// Offer a file path; kept when the filter accepts it. Past the bound,
    /// the held paths are dropped and a full sync is owed instead: the
    /// marker makes the consumer sync everything, so nothing is lost.
    pub fn offer(&mut self, path: &Path) {
        if !self.filter.accepts(path) {
            return;
        }
        self.pending.insert(path.as_os_str().as_bytes().to_vec());
        if self.pending.len() > self.max_pending {
            let n = self.pending.len() as u64;
            self.pending.clear();
            self.counters.dropped += n;
            if self.marker_owed.is_empty() {
                backup_core::warn!(
                    "more than {} changed paths held while the ledger is unavailable: dropping them and asking for a full sync",
                    self.max_pending
                );
            }
            self.owe_marker(&format!(
                "nfs-track: more than {} changed paths held in memory while the ledger was unavailable",
                self.max_pending
            ));
        }
    }

    pub fn owe_marker(&mut self, reason: &str) {
        if !self.marker_owed.iter().any(|r| r == reason) {
            self.marker_owed.push(reason.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(skip: Option<&str>) -> Filter {
        let ex: Vec<String> = DEFAULT_EXCLUDES.iter().map(|s| s.to_string()).collect();
        let skip = skip.map(|t| (SkipList::parse(t, "t").expect("parse"), Route::Direct));
        Filter::new(
            vec![PathBuf::from("/srv/nfs"), PathBuf::from("/srv/nfs-ssd")],
            &ex,
            skip,
            vec![PathBuf::from("/srv/nfs/.nfs-changes.log")],
        )
        .expect("filter")
    }

    #[test]
    fn default_excludes_of_the_original() {
        let f = f(None);
        for p in [
            "/srv/nfs/a/.notes.txt.swp",
            "/srv/nfs/a/.x.swo",
            "/srv/nfs/a/.nfs0000000012345",
            "/srv/nfs/.Trash-1000/files/x",
            "/srv/nfs/app/db.sqlite-wal",
            "/srv/nfs/app/db.sqlite-shm",
            "/srv/nfs/app/db.db-journal",
            "/srv/nfs/app/stats/x.stat",
            "/srv/nfs/.nfs-changes.log",
        ] {
            assert!(!f.accepts(Path::new(p)), "{p} should be excluded");
        }
        for p in [
            "/srv/nfs/a/notes.txt",
            "/srv/nfs/a/swp",
            "/srv/nfs-ssd/app/db.sqlite",
            "/srv/nfs/stats.txt",
        ] {
            assert!(f.accepts(Path::new(p)), "{p} should be kept");
        }
        assert!(!f.accepts(Path::new("/srv/other/x")), "outside the trees");
        assert!(
            !f.accepts(Path::new("/srv/nfsx/x")),
            "a sibling with a common prefix"
        );
    }

    #[test]
    fn skip_list_route_is_relative_to_each_root() {
        let f = self::f(Some("direct immich\nnever frigate\ndirect servarr/keep\n"));
        assert!(f.accepts(Path::new("/srv/nfs/immich/a.jpg")));
        assert!(f.accepts(Path::new("/srv/nfs-ssd/immich/b.jpg")));
        assert!(f.accepts(Path::new("/srv/nfs/servarr/keep/x")));
        assert!(!f.accepts(Path::new("/srv/nfs/servarr/other/x")));
        assert!(!f.accepts(Path::new("/srv/nfs/frigate/x")));
        assert!(!f.accepts(Path::new("/srv/nfs/misc/x")));
        for (d, want) in [
            ("/srv/nfs", true),
            ("/srv/nfs/immich", true),
            ("/srv/nfs/immich/deep/er", true),
            ("/srv/nfs-ssd/immich", true),
            ("/srv/nfs/servarr", true),
            ("/srv/nfs/servarr/keep", true),
            ("/srv/nfs/servarr/other", false),
            ("/srv/nfs/frigate", false),
            ("/srv/nfs/misc", false),
        ] {
            assert_eq!(f.may_hold(Path::new(d)), want, "{d}");
        }
        let g = self::f(Some("direct */media\n"));
        assert!(g.may_hold(Path::new("/srv/nfs/anything")));
        assert!(g.may_hold(Path::new("/srv/nfs/anything/media/x")));
        assert!(!g.may_hold(Path::new("/srv/nfs/anything/other")));
    }

    #[test]
    fn bound_drops_and_owes_a_marker_once() {
        let mut s = Sink::new(f(None), 3);
        for i in 0..10 {
            s.offer(Path::new(&format!("/srv/nfs/f{i}")));
        }
        assert!(s.pending.len() <= 3);
        assert_eq!(s.marker_owed.len(), 1);
        assert!(s.counters.dropped >= 4);
    }
}
