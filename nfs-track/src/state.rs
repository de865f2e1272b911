//! The state dir: the last instant the tracker is known to have been
//! watching (every change before it is in the ledger), with the ledger and
//! roots it applies to. A stamp for other roots or another ledger is no
//! stamp at all: the gap since then is unknown.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backup_core::ledger::{decode, encode};

#[derive(Debug, Clone)]
pub struct State {
    path: PathBuf,
    ledger: PathBuf,
    roots: Vec<PathBuf>,
    /// The skip-list route logged (`direct`, ...), `all` without a skip
    /// list; recorded for offsite-sync's coverage check, not for the stamp.
    route: String,
}

fn enc(p: &Path) -> String {
    // Ledger escaping keeps each path on one line; the bytes may be any.
    String::from_utf8_lossy(&encode(p.as_os_str().as_bytes())).into_owned()
}

impl State {
    pub fn new(dir: &Path, ledger: &Path, roots: &[PathBuf]) -> State {
        State {
            path: dir.join("last-watching"),
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
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", self.path.display())),
        };
        let mut when = None;
        let mut ledger_ok = false;
        let mut roots = Vec::new();
        for line in text.split(|&b| b == b'\n') {
            let Some(sp) = line.iter().position(|&b| b == b' ') else {
                continue;
            };
            let (key, val) = (&line[..sp], &line[sp + 1..]);
            match key {
                b"last-watching" => {
                    let s = String::from_utf8_lossy(val);
                    let (secs, nanos) = s.split_once('.').unwrap_or((&s, "0"));
                    if let (Ok(s), Ok(n)) = (secs.parse::<u64>(), nanos.parse::<u32>()) {
                        when = Some(UNIX_EPOCH + Duration::new(s, n.min(999_999_999)));
                    }
                }
                b"ledger" => {
                    ledger_ok = decode(val).as_deref() == Some(self.ledger.as_os_str().as_bytes())
                }
                b"root" => {
                    if let Some(v) = decode(val) {
                        roots.push(v);
                    }
                }
                _ => {}
            }
        }
        let all_roots = self.roots.iter().all(|r| {
            roots
                .iter()
                .any(|x| x.as_slice() == r.as_os_str().as_bytes())
        });
        Ok(when.filter(|_| ledger_ok && all_roots))
    }

    /// Record that every change before `t` is in the ledger.
    pub fn stamp(&self, t: SystemTime) -> std::io::Result<()> {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut s = format!(
            "last-watching {}.{:09}\nledger {}\n",
            d.as_secs(),
            d.subsec_nanos(),
            enc(&self.ledger)
        );
        s.push_str(&format!("route {}\n", self.route));
        for r in &self.roots {
            s.push_str(&format!("root {}\n", enc(r)));
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        backup_core::fsutil::write_atomic(&self.path, s.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
