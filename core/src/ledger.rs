//! Contract 1: the ledgers of changed paths (`.changed-files`,
//! `.nfs-changes.log`).
//!
//! One path per line, bytes kept exactly; `\n` and `\\` inside a name are
//! written as the two-character escapes so `wc -l` and `grep` keep working.
//! Appenders hold an exclusive `flock` on `<ledger>.lock` and write whole
//! lines in one `write`. The consumer never truncates: under the lock it
//! renames the ledger to `<ledger>.inflight` (merging into one left by a
//! failed run), transfers, and deletes the inflight file only on success.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use crate::fsutil::{sync_dir, write_atomic};

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("refusing to append an empty name to {0}")]
    EmptyName(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LedgerError + '_ {
    move |source| LedgerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What kind of paths a ledger holds; the reader refuses the other kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// Leg 1: relative to the backup root.
    Relative,
    /// Leg 2: absolute paths.
    Absolute,
}

/// Escape one name into its ledger form (without the newline).
pub fn encode(name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 1);
    for &b in name {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b => out.push(b),
        }
    }
    out
}

/// Decode one ledger line (without its newline). `None` on a bad escape.
pub fn decode(line: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(line.len());
    let mut it = line.iter();
    while let Some(&b) = it.next() {
        if b == b'\\' {
            match it.next() {
                Some(b'n') => out.push(b'\n'),
                Some(b'\\') => out.push(b'\\'),
                _ => return None,
            }
        } else {
            out.push(b);
        }
    }
    Some(out)
}

/// An entry the reader refused, with its line number (1-based) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub line: usize,
    pub raw: Vec<u8>,
    pub reason: &'static str,
}

/// Entries decoded from ledger text, and the lines refused.
#[derive(Debug, Default, Clone)]
pub struct Decoded {
    pub entries: Vec<PathBuf>,
    pub rejected: Vec<Rejected>,
}

/// Decode ledger text. Entries of the wrong kind, with a `..` component or
/// a bad escape are refused (reported, never passed on). Empty lines are
/// ignored (a crash can leave a partial line that the next appender ends).
pub fn decode_all(text: &[u8], kind: PathKind) -> Decoded {
    let mut d = Decoded::default();
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let reject = |reason| Rejected {
            line: i + 1,
            raw: line.to_vec(),
            reason,
        };
        let Some(name) = decode(line) else {
            d.rejected.push(reject("bad escape"));
            continue;
        };
        let path = PathBuf::from(OsString::from_vec(name));
        if let Some(reason) = check_path(&path, kind) {
            d.rejected.push(reject(reason));
            continue;
        }
        d.entries.push(path);
    }
    d
}

fn check_path(path: &Path, kind: PathKind) -> Option<&'static str> {
    match kind {
        PathKind::Relative if path.is_absolute() => {
            return Some("absolute path in a relative ledger");
        }
        PathKind::Absolute if !path.is_absolute() => {
            return Some("relative path in an absolute ledger");
        }
        _ => {}
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Some("contains a '..' component");
    }
    None
}

/// A ledger file and its siblings (`.lock`, `.inflight`, `.full-sync-needed`).
#[derive(Debug, Clone)]
pub struct Ledger {
    path: PathBuf,
    kind: PathKind,
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

impl Ledger {
    pub fn new(path: impl Into<PathBuf>, kind: PathKind) -> Self {
        Ledger {
            path: path.into(),
            kind,
        }
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn kind(&self) -> PathKind {
        self.kind
    }
    pub fn lock_path(&self) -> PathBuf {
        sibling(&self.path, ".lock")
    }
    pub fn inflight_path(&self) -> PathBuf {
        sibling(&self.path, ".inflight")
    }
    pub fn marker_path(&self) -> PathBuf {
        sibling(&self.path, ".full-sync-needed")
    }

    fn lock(&self) -> Result<File, LedgerError> {
        let p = self.lock_path();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&p)
            .map_err(io_err(&p))?;
        f.lock().map_err(io_err(&p))?;
        Ok(f)
    }

    /// Append names (raw bytes). One `write` of whole lines under the lock,
    /// then fsync. Returns the number of lines written.
    pub fn append<I, N>(&self, names: I) -> Result<usize, LedgerError>
    where
        I: IntoIterator<Item = N>,
        N: AsRef<[u8]>,
    {
        let mut buf = Vec::new();
        let mut n = 0;
        for name in names {
            let name = name.as_ref();
            if name.is_empty() {
                return Err(LedgerError::EmptyName(self.path.clone()));
            }
            buf.extend_from_slice(&encode(name));
            buf.push(b'\n');
            n += 1;
        }
        if n == 0 {
            return Ok(0);
        }
        let _guard = self.lock()?;
        // Opened after the lock: the consumer may have renamed the old file.
        let mut f = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(io_err(&self.path))?;
        // A writer killed mid-write can leave a line without its newline;
        // end it so the next entry is not glued onto it.
        let len = f.metadata().map_err(io_err(&self.path))?.len();
        if len > 0 {
            let mut last = [0u8; 1];
            f.read_exact_at(&mut last, len - 1)
                .map_err(io_err(&self.path))?;
            if last[0] != b'\n' {
                buf.insert(0, b'\n');
            }
        }
        if let Err(e) = f.write_all(&buf).and_then(|()| f.sync_data()) {
            // A write cut short (full disk) must not leave half a path that
            // the next append would end and a consumer would trust: cut the
            // file back to where it was, still under the lock.
            let _ = f.set_len(len);
            return Err(io_err(&self.path)(e));
        }
        Ok(n)
    }

    /// Append paths (as bytes).
    pub fn append_paths<'a, I>(&self, paths: I) -> Result<usize, LedgerError>
    where
        I: IntoIterator<Item = &'a Path>,
    {
        self.append(paths.into_iter().map(|p| p.as_os_str().as_bytes()))
    }

    /// Read and decode the pending ledger (not the inflight part).
    pub fn read(&self) -> Result<Decoded, LedgerError> {
        Ok(decode_all(&read_opt(&self.path)?, self.kind))
    }

    /// Lines pending in the ledger plus its inflight file, for the size cap.
    pub fn line_count(&self) -> Result<u64, LedgerError> {
        let mut n = 0;
        for p in [self.path.clone(), self.inflight_path()] {
            n += read_opt(&p)?.iter().filter(|&&b| b == b'\n').count() as u64;
        }
        Ok(n)
    }

    /// Start consuming: under the lock, move the ledger into the inflight
    /// file (merging into one left by an earlier failed run). The returned
    /// batch holds every entry of both.
    pub fn begin(&self) -> Result<Consume, LedgerError> {
        let inflight = self.inflight_path();
        {
            let _guard = self.lock()?;
            if self.path.exists() {
                if inflight.exists() {
                    let pending = read_opt(&self.path)?;
                    let mut f = OpenOptions::new()
                        .read(true)
                        .append(true)
                        .open(&inflight)
                        .map_err(io_err(&inflight))?;
                    let len = f.metadata().map_err(io_err(&inflight))?.len();
                    let mut buf = Vec::with_capacity(pending.len() + 1);
                    if len > 0 {
                        let mut last = [0u8; 1];
                        f.read_exact_at(&mut last, len - 1)
                            .map_err(io_err(&inflight))?;
                        if last[0] != b'\n' {
                            buf.push(b'\n');
                        }
                    }
                    buf.extend_from_slice(&pending);
                    if let Err(e) = f.write_all(&buf).and_then(|()| f.sync_data()) {
                        // Keep the ledger; cut the inflight file back so the
                        // next attempt does not merge half a line.
                        let _ = f.set_len(len);
                        return Err(io_err(&inflight)(e));
                    }
                    // Only once the merge is durable may the source go; a
                    // crash before this line leaves duplicates, never a loss.
                    std::fs::remove_file(&self.path).map_err(io_err(&self.path))?;
                } else {
                    std::fs::rename(&self.path, &inflight).map_err(io_err(&self.path))?;
                }
                sync_dir(&self.path);
            }
        }
        let text = read_opt(&inflight)?;
        Ok(Consume {
            inflight,
            decoded: decode_all(&text, self.kind),
            committed: false,
        })
    }

    /// Ask the consumer for a full sync (inotify overflow, size cap, gap).
    pub fn mark_full_sync(&self, reason: &str) -> Result<(), LedgerError> {
        let p = self.marker_path();
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&p)
            .map_err(io_err(&p))?;
        let stamp = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ");
        writeln!(f, "{stamp} {}", reason.replace('\n', " ")).map_err(io_err(&p))?;
        f.sync_data().map_err(io_err(&p))?;
        Ok(())
    }

    pub fn full_sync_needed(&self) -> bool {
        self.marker_path().exists()
    }

    /// The reasons recorded in the marker, one per request.
    pub fn full_sync_reasons(&self) -> Result<Vec<String>, LedgerError> {
        let text = read_opt(&self.marker_path())?;
        Ok(String::from_utf8_lossy(&text)
            .lines()
            .map(str::to_string)
            .collect())
    }

    /// Remove the marker after a successful full sync. A request that
    /// arrived after `seen` reasons were read is kept.
    pub fn clear_full_sync(&self, seen: usize) -> Result<(), LedgerError> {
        let p = self.marker_path();
        let _guard = self.lock()?;
        let reasons = self.full_sync_reasons()?;
        if reasons.len() <= seen {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&p)(e)),
            }
        } else {
            let rest = reasons[seen..].join("\n") + "\n";
            write_atomic(&p, rest.as_bytes()).map_err(io_err(&p))?;
        }
        Ok(())
    }
}

/// A batch being consumed. Dropping it without [`Consume::commit`] keeps
/// the inflight file for the next run.
#[derive(Debug)]
pub struct Consume {
    inflight: PathBuf,
    decoded: Decoded,
    committed: bool,
}

impl Consume {
    pub fn entries(&self) -> &[PathBuf] {
        &self.decoded.entries
    }
    pub fn rejected(&self) -> &[Rejected] {
        &self.decoded.rejected
    }
    pub fn inflight_path(&self) -> &Path {
        &self.inflight
    }
    /// The transfer succeeded: delete the inflight file.
    pub fn commit(mut self) -> Result<(), LedgerError> {
        match std::fs::remove_file(&self.inflight) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&self.inflight)(e)),
        }
        sync_dir(&self.inflight);
        self.committed = true;
        Ok(())
    }
    pub fn is_committed(&self) -> bool {
        self.committed
    }
}

fn read_opt(path: &Path) -> Result<Vec<u8>, LedgerError> {
    match File::open(path) {
        Ok(mut f) => {
            let mut v = Vec::new();
            f.read_to_end(&mut v).map_err(io_err(path))?;
            Ok(v)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hostile() -> Vec<Vec<u8>> {
        vec![
            b"plain/file.txt".to_vec(),
            b"with\nnewline".to_vec(),
            b"back\\slash\\n-not-a-newline".to_vec(),
            b"-leading-dash".to_vec(),
            b" spaces  around ".to_vec(),
            b"latin1-\xe9\xff".to_vec(),
            b"trailing\\".to_vec(),
            b"\n".to_vec(),
        ]
    }

    #[test]
    fn hostile_names_round_trip_exactly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let l = Ledger::new(dir.path().join(".changed-files"), PathKind::Relative);
        l.append(hostile()).expect("append");
        let text = std::fs::read(l.path()).expect("read");
        assert_eq!(
            text.iter().filter(|&&b| b == b'\n').count(),
            hostile().len(),
            "one line per name"
        );
        let c = l.begin().expect("begin");
        let got: Vec<Vec<u8>> = c
            .entries()
            .iter()
            .map(|p| p.as_os_str().as_bytes().to_vec())
            .collect();
        assert_eq!(got, hostile());
        assert!(c.rejected().is_empty());
    }

    #[test]
    fn absolute_and_dotdot_are_refused() {
        let text = b"ok/a\n/etc/shadow\na/../../b\nbad\\escape\nok/b\n";
        let d = decode_all(text, PathKind::Relative);
        assert_eq!(
            d.entries,
            vec![PathBuf::from("ok/a"), PathBuf::from("ok/b")]
        );
        let reasons: Vec<_> = d.rejected.iter().map(|r| (r.line, r.reason)).collect();
        assert_eq!(
            reasons,
            vec![
                (2, "absolute path in a relative ledger"),
                (3, "contains a '..' component"),
                (4, "bad escape")
            ]
        );
        let d = decode_all(
            b"/srv/nfs/immich/a\nrel/b\n/srv/nfs/../etc\n",
            PathKind::Absolute,
        );
        assert_eq!(d.entries, vec![PathBuf::from("/srv/nfs/immich/a")]);
        assert_eq!(d.rejected.len(), 2);
    }

    #[test]
    fn uncommitted_batch_is_merged_into_the_next() {
        let dir = tempfile::tempdir().expect("tempdir");
        let l = Ledger::new(dir.path().join("log"), PathKind::Relative);
        l.append(["a", "b"]).expect("append");
        let c = l.begin().expect("begin");
        assert_eq!(c.entries().len(), 2);
        drop(c); // transfer failed
        l.append(["c"]).expect("append");
        assert_eq!(l.line_count().expect("count"), 3);
        let c = l.begin().expect("begin 2");
        let names: Vec<_> = c
            .entries()
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        c.commit().expect("commit");
        assert!(!l.inflight_path().exists());
        assert_eq!(l.line_count().expect("count"), 0);
        let c = l.begin().expect("begin 3");
        assert!(c.entries().is_empty());
    }

    #[test]
    fn partial_last_line_is_ended_before_the_next_append() {
        let dir = tempfile::tempdir().expect("tempdir");
        let l = Ledger::new(dir.path().join("log"), PathKind::Relative);
        std::fs::write(l.path(), b"a\npart").expect("write");
        l.append(["next"]).expect("append");
        let d = l.read().expect("read");
        assert_eq!(
            d.entries,
            vec![
                PathBuf::from("a"),
                PathBuf::from("part"),
                PathBuf::from("next")
            ]
        );
    }

    #[test]
    fn marker_keeps_requests_that_arrive_during_the_full_sync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let l = Ledger::new(dir.path().join("log"), PathKind::Absolute);
        assert!(!l.full_sync_needed());
        l.mark_full_sync("inotify overflow").expect("mark");
        let seen = l.full_sync_reasons().expect("reasons").len();
        l.mark_full_sync("size cap").expect("mark 2");
        l.clear_full_sync(seen).expect("clear");
        assert!(l.full_sync_needed(), "the second request is still pending");
        let seen = l.full_sync_reasons().expect("reasons").len();
        l.clear_full_sync(seen).expect("clear");
        assert!(!l.full_sync_needed());
    }

    #[test]
    fn empty_name_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let l = Ledger::new(dir.path().join("log"), PathKind::Relative);
        assert!(l.append([""]).is_err());
        assert!(!l.path().exists());
    }
}
