//! The state dir: the last instant the tracker is known to have been
//! watching (every change before it is in the ledger), with the ledger and
//! roots it applies to. A stamp for other roots or another ledger is no
//! stamp at all: the gap since then is unknown.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use backup_core::tracker_state;

#[derive(Debug, Clone)]
pub struct State {
    path: PathBuf,
    ledger: PathBuf,
    roots: Vec<PathBuf>,
    /// The skip-list route logged (`direct`, ...), `all` without a skip
    /// list; recorded for offsite-sync's coverage check, not for the stamp.
    route: String,
}

impl State {
    pub fn new(dir: &Path, ledger: &Path, roots: &[PathBuf]) -> State {
        State {
            path: dir.join(tracker_state::FILE),
            ledger: ledger.to_path_buf(),
            roots: roots.to_vec(),
            route: "all".into(),
        }
    }

    /// The route this tracker logs (written with every stamp).
    pub fn with_route(mut self, route: &str) -> State {
        self.route = route.to_string();
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stamp, if there is one that covers this ledger and every root.
    pub fn load(&self) -> Result<Option<SystemTime>, String> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let Some(st) =
            tracker_state::read(dir).map_err(|e| format!("{}: {e}", self.path.display()))?
        else {
            return Ok(None);
        };
        let ledger_ok = st.ledger.as_deref() == Some(self.ledger.as_os_str().as_bytes());
        let all_roots = self.roots.iter().all(|r| {
            st.roots
                .iter()
                .any(|x| x.as_slice() == r.as_os_str().as_bytes())
        });
        Ok(st.when.filter(|_| ledger_ok && all_roots))
    }

    /// Record that every change before `t` is in the ledger.
    pub fn stamp(&self, t: SystemTime) -> std::io::Result<()> {
        let roots: Vec<&[u8]> = self
            .roots
            .iter()
            .map(|r| r.as_os_str().as_bytes())
            .collect();
        let s = tracker_state::Stamp::render(
            t,
            self.ledger.as_os_str().as_bytes(),
            &self.route,
            &roots,
        );
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        backup_core::fsutil::write_atomic(&self.path, &s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn stamp_round_trips_and_is_tied_to_ledger_and_roots() {
        let d = tempfile::tempdir().expect("tempdir");
        let roots = vec![PathBuf::from("/srv/nfs"), PathBuf::from("/srv/we\nird")];
        let st = State::new(d.path(), Path::new("/mnt/backup/.nfs-changes.log"), &roots);
        assert_eq!(st.load().expect("load"), None);
        let t = UNIX_EPOCH + Duration::new(1_800_000_000, 123_456_789);
        st.stamp(t).expect("stamp");
        assert_eq!(st.load().expect("load"), Some(t));
        let text = std::fs::read_to_string(st.path()).expect("read");
        assert!(text.contains("\nroute all\n"), "{text}");
        st.clone().with_route("direct").stamp(t).expect("stamp");
        assert_eq!(
            st.load().expect("load"),
            Some(t),
            "the route is no part of the stamp"
        );
        let more = vec![
            roots[0].clone(),
            roots[1].clone(),
            PathBuf::from("/srv/new"),
        ];
        let other = State::new(d.path(), Path::new("/mnt/backup/.nfs-changes.log"), &more);
        assert_eq!(
            other.load().expect("load"),
            None,
            "a new root was never watched"
        );
        let other = State::new(d.path(), Path::new("/elsewhere.log"), &roots);
        assert_eq!(other.load().expect("load"), None, "another ledger");
    }
}
