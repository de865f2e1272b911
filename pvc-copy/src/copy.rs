//! One PVC copy: rsync from the mounted snapshot into a build directory
//! beside the final place, then an atomic swap; the itemized output tells
//! which files this run changed or added.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The rsync argument list. Archive with hardlinks, ACLs, xattrs and
/// numeric ids; deletions; full-precision mtimes. Never `--inplace` (the
/// weekly hardlink farm depends on rsync writing a new file and renaming
/// it) and never `-z` (a local copy). `-ii` itemizes every entry so the
/// caller can tell a link-dest match from a changed file. The name is the
/// last field: rsync escapes every control byte of a name except TAB, so
/// a field after it could not be told from a TAB inside the name.
pub fn rsync_args(src: &Path, dest: &Path, link_dest: Option<&Path>) -> Vec<std::ffi::OsString> {
    let mut a: Vec<std::ffi::OsString> = [
        "-aHAX",
        "--numeric-ids",
        "--delete",
        "--modify-window=-1",
        "--stats",
        "-ii",
        "--out-format=%i\t%n",
    ]
    .iter()
    .map(Into::into)
    .collect();
    if let Some(l) = link_dest {
        let mut s = std::ffi::OsString::from("--link-dest=");
        s.push(l);
        a.push(s);
    }
    a.push("--".into());
    let mut s = src.as_os_str().to_os_string();
    s.push("/");
    a.push(s);
    let mut d = dest.as_os_str().to_os_string();
    d.push("/");
    a.push(d);
    a
}

/// How an rsync run ended.
#[derive(Debug)]
pub struct RsyncRun {
    pub code: Option<i32>,
    pub timed_out: bool,
    pub stderr: String,
}

/// Run rsync with its stdout (the itemized list, possibly long) in
/// `out_file`, through the core runner: argv only, a timeout that kills the
/// process group, and `PR_SET_PDEATHSIG`, so a SIGKILLed pvc-copy takes
/// rsync with it instead of leaving it writing (and keeping the mount
/// namespace alive) behind the next run's back.
pub fn run_rsync(
    args: &[std::ffi::OsString],
    out_file: &Path,
    timeout: Duration,
) -> io::Result<RsyncRun> {
    use backup_core::cmd::{Cmd, CmdError};
    match Cmd::new("rsync")
        .args(args)
        .stdout_file(out_file)
        .timeout(timeout)
        .run_any()
    {
        Ok(o) => Ok(RsyncRun {
            code: Some(o.code),
            timed_out: false,
            stderr: o.stderr,
        }),
        Err(CmdError::Timeout { stderr, .. }) => Ok(RsyncRun {
            code: None,
            timed_out: true,
            stderr,
        }),
        Err(CmdError::Signalled { stderr, .. }) => Ok(RsyncRun {
            code: None,
            timed_out: false,
            stderr,
        }),
        Err(e) => Err(io::Error::other(e.to_string())),
    }
}

/// What rsync's itemized output says about the new copy.
#[derive(Debug, Default)]
pub struct Itemized {
    /// Non-directory entries written, changed or newly linked this run.
    pub changed: Vec<Vec<u8>>,
    /// Non-directory entries rsync lists as hardlinks with no change: a
    /// link-dest match, or a link within the transfer. Only
    /// [`Itemized::confirm_unchanged`] tells which are the previous copy's
    /// very file at the same path; until then they are candidates.
    pub unchanged: Vec<Vec<u8>>,
    /// Symlinks: rsync recreates them even when the link-dest copy has the
    /// same one, so the caller compares targets ([`split_symlinks`]).
    pub symlinks: Vec<Vec<u8>>,
    /// "Total file size" (apparent size of the copy).
    pub total_size: u64,
    /// "Total transferred file size".
    pub transferred: u64,
}

fn stat_number(line: &str, prefix: &str) -> Option<u64> {
    let rest = line.strip_prefix(prefix)?;
    let digits: String = rest
        .trim()
        .split(' ')
        .next()?
        .chars()
        .filter(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// Parse the `%i\t%n` lines (the name is everything after the first TAB;
/// the itemize string has none) and the `--stats` block.
pub fn parse_itemized(out: &[u8]) -> Itemized {
    let mut r = Itemized::default();
    for line in out.split(|b| *b == b'\n') {
        let mut f = line.splitn(2, |b| *b == b'\t');
        let (Some(item), Some(name)) = (f.next(), f.next()) else {
            let l = String::from_utf8_lossy(line);
            if let Some(n) = stat_number(&l, "Total file size:") {
                r.total_size = n;
            } else if let Some(n) = stat_number(&l, "Total transferred file size:") {
                r.transferred = n;
            }
            continue;
        };
        if item.len() < 3 || item[1] == b'd' || item[0] == b'*' {
            continue;
        }
        let name = backup_core::rsync_items::unescape(name);
        if name.is_empty() {
            continue;
        }
        if item[1] == b'L' {
            r.symlinks.push(name);
            continue;
        }
        // `hf` with no attribute change: a link-dest match, or a link to
        // another file of this transfer (which may itself be new).
        if item[0] == b'h' && item[2..].iter().all(|c| *c == b' ') {
            r.unchanged.push(name);
        } else {
            r.changed.push(name);
        }
    }
    r
}

impl Itemized {
    /// Keep as unchanged only the entries that are, in the new copy, the
    /// very inode the link-dest copy has at the same path (what the
    /// previous copy, and so the offsite one, already holds there); every
    /// other candidate is changed. A fact of the two trees, so no hardlink
    /// target has to be read back from rsync's output.
    pub fn confirm_unchanged(&mut self, new_root: &Path, link_dest: Option<&Path>) {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::MetadataExt;
        let same = |n: &[u8]| {
            let rel = Path::new(std::ffi::OsStr::from_bytes(n));
            link_dest.is_some_and(|old| {
                matches!(
                    (fs::symlink_metadata(new_root.join(rel)), fs::symlink_metadata(old.join(rel))),
                    (Ok(a), Ok(b)) if a.dev() == b.dev() && a.ino() == b.ino()
                )
            })
        };
        let (keep, moved): (Vec<_>, Vec<_>) = std::mem::take(&mut self.unchanged)
            .into_iter()
            .partition(|n| same(n));
        self.unchanged = keep;
        self.changed.extend(moved);
    }
}

/// Split symlinks into (changed, unchanged) by comparing each target with
/// the same name in the link-dest copy.
pub fn split_symlinks(
    links: &[Vec<u8>],
    new_root: &Path,
    link_dest: Option<&Path>,
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    use std::os::unix::ffi::OsStrExt;
    let (mut changed, mut same) = (Vec::new(), Vec::new());
    for n in links {
        let rel = Path::new(std::ffi::OsStr::from_bytes(n));
        let unchanged = link_dest.is_some_and(|old| {
            matches!(
                (fs::read_link(new_root.join(rel)), fs::read_link(old.join(rel))),
                (Ok(a), Ok(b)) if a == b
            )
        });
        if unchanged {
            same.push(n.clone());
        } else {
            changed.push(n.clone());
        }
    }
    (changed, same)
}

/// Put a complete build directory in place of `dest`. With a previous
/// copy present the two are exchanged atomically (renameat2
/// RENAME_EXCHANGE), so `dest` is at every instant one whole copy; the old
/// one is left at `partial` for the caller to remove once the new copy is
/// recorded: a failure removing it must not read as a failed swap (the
/// new copy's ledger entries would be dropped while it stands in place).
pub fn swap_in(partial: &Path, dest: &Path) -> io::Result<()> {
    if fs::symlink_metadata(dest).is_ok() {
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            partial,
            rustix::fs::CWD,
            dest,
            rustix::fs::RenameFlags::EXCHANGE,
        )
        .map_err(io::Error::from)?;
        if let Some(parent) = dest.parent() {
            backup_core::fsutil::sync_dir(parent);
        }
    } else {
        fs::rename(partial, dest)?;
        if let Some(parent) = dest.parent() {
            backup_core::fsutil::sync_dir(parent);
        }
    }
    Ok(())
}

/// Remove a tree if it exists (never follows symlinks).
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Which snapshot a PVC copy came from, kept beside the copy (never
/// inside it, the tree is the PVC's own). `dir_inode` is the inode of the
/// copy's directory: a record whose inode does not match the directory
/// (a run killed between swap and record) is known to be stale.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceRecord {
    pub snapshot: String,
    pub origin: String,
    pub pv: String,
    pub pvc: String,
    pub snapshot_created: String,
    pub copied_at: String,
    pub dir_inode: u64,
}

/// Paths of one PVC's copy inside a week: `<ns>/<name>/` and its siblings.
#[derive(Debug, Clone)]
pub struct Dest {
    pub ns_dir: PathBuf,
    pub name: String,
}

impl Dest {
    pub fn dir(&self) -> PathBuf {
        self.ns_dir.join(&self.name)
    }
    pub fn partial(&self) -> PathBuf {
        self.ns_dir.join(format!(".{}.partial", self.name))
    }
    pub fn source(&self) -> PathBuf {
        self.ns_dir.join(format!(".{}.source", self.name))
    }
    pub fn pending(&self) -> PathBuf {
        self.ns_dir.join(format!(".{}.pending", self.name))
    }
}

/// Ledger entries of a copy about to be swapped in, kept beside it until
/// they are in the ledger: a run killed between the swap and the append
/// leaves them for the next run ([`recover_pending`]). First line: the
/// inode of the new copy's directory (a rename keeps it), so the next run
/// can tell whether the swap happened; then one ledger-encoded entry per line.
pub fn write_pending(dest: &Dest, dir_inode: u64, names: &[Vec<u8>]) -> io::Result<()> {
    let mut buf = format!("{dir_inode}\n").into_bytes();
    for n in names {
        buf.extend_from_slice(&backup_core::ledger::encode(n));
        buf.push(b'\n');
    }
    backup_core::fsutil::write_atomic(&dest.pending(), &buf)
}

/// A pending file left by a killed run: its entries when the copy it
/// describes was swapped in, else nothing (the old copy is still there,
/// nothing changed). Either way the caller then removes the file.
pub fn pending_entries(pending: &Path, dir: &Path) -> io::Result<Vec<Vec<u8>>> {
    use std::os::unix::fs::MetadataExt;
    let data = fs::read(pending)?;
    let mut lines = data.split(|b| *b == b'\n');
    let ino: Option<u64> = lines
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
        .and_then(|l| l.trim().parse().ok());
    let swapped = match (ino, fs::metadata(dir)) {
        (Some(i), Ok(m)) => m.ino() == i,
        _ => false,
    };
    if !swapped {
        return Ok(Vec::new());
    }
    Ok(lines
        .filter(|l| !l.is_empty())
        .filter_map(backup_core::ledger::decode)
        .collect())
}

pub fn write_source(dest: &Dest, rec: &SourceRecord) -> io::Result<()> {
    let data = serde_json::to_vec_pretty(rec).map_err(io::Error::other)?;
    backup_core::fsutil::write_atomic(&dest.source(), &data)
}

pub fn read_source(dest: &Dest) -> Option<SourceRecord> {
    let rec: SourceRecord = serde_json::from_slice(&fs::read(dest.source()).ok()?).ok()?;
    use std::os::unix::fs::MetadataExt;
    let ino = fs::metadata(dest.dir()).ok()?.ino();
    (rec.dir_inode == ino).then_some(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn itemized_output_separates_links_from_changes() {
        // Captured from rsync 3.x with -ii --link-dest and this out-format
        // (rsync escapes control bytes in names, but not TAB).
        let out = b"created directory dst\n\
cd..t......\t./\n\
hf         \tback\\#134#012slash\n\
>f..t......\tchg\n\
cLc.t......\tlink\n\
>f+++++++++\tn2b\n\
hf         \thl\n\
hf         \tsame\n\
hf         \tchg-link\n\
cd..t......\td/\n\
hf+++++++++\tn2\n\
>f+++++++++\ttab\there\t => x\n\
\n\
Total file size: 1,234 bytes\n\
Total transferred file size: 56 bytes\n";
        let mut r = parse_itemized(out);
        let s = |v: &Vec<Vec<u8>>| {
            v.iter()
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            s(&r.unchanged),
            ["back\\#012slash", "hl", "same", "chg-link"]
        );
        assert_eq!(s(&r.changed), ["chg", "n2b", "n2", "tab\there\t => x"]);
        assert_eq!(s(&r.symlinks), ["link"]);
        assert_eq!((r.total_size, r.transferred), (1234, 56));

        // Only the previous copy's own inode at the same path stays
        // unchanged; a link to a changed file is a changed path.
        let t = tempfile::tempdir().expect("tmp");
        let (new, old) = (t.path().join("new"), t.path().join("old"));
        fs::create_dir_all(&new).expect("new");
        fs::create_dir_all(&old).expect("old");
        for n in ["back\\#012slash", "hl", "chg"] {
            fs::write(old.join(n), n).expect("old file");
            fs::hard_link(old.join(n), new.join(n)).expect("link-dest match");
        }
        fs::hard_link(old.join("hl"), old.join("same")).expect("old link");
        fs::hard_link(new.join("hl"), new.join("same")).expect("same");
        fs::write(old.join("chg-link"), "old content").expect("old");
        fs::write(new.join("chg"), "new").expect("chg");
        fs::hard_link(new.join("chg"), new.join("chg-link")).expect("chg-link");
        r.confirm_unchanged(&new, Some(&old));
        assert_eq!(s(&r.unchanged), ["back\\#012slash", "hl", "same"]);
        assert_eq!(
            s(&r.changed),
            ["chg", "n2b", "n2", "tab\there\t => x", "chg-link"]
        );
        r.confirm_unchanged(&new, None);
        assert!(r.unchanged.is_empty());
    }

    #[test]
    fn pending_entries_count_only_when_the_swap_happened() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().expect("tmp");
        let dest = Dest {
            ns_dir: t.path().to_path_buf(),
            name: "p".into(),
        };
        fs::create_dir(dest.partial()).expect("partial");
        let ino = fs::metadata(dest.partial()).expect("meta").ino();
        let names = vec![
            b"pvc-data/w/ns/p/a\nb".to_vec(),
            b"pvc-data/w/ns/p/c".to_vec(),
        ];
        write_pending(&dest, ino, &names).expect("pending");
        // Killed before the swap: the old copy stands, nothing to record.
        fs::create_dir(dest.dir()).expect("old copy");
        assert!(
            pending_entries(&dest.pending(), &dest.dir())
                .expect("read")
                .is_empty()
        );
        // Killed after the swap: the entries are due.
        swap_in(&dest.partial(), &dest.dir()).expect("swap");
        assert_eq!(
            pending_entries(&dest.pending(), &dest.dir()).expect("read"),
            names
        );
    }

    #[test]
    fn args_never_inplace_or_compress() {
        let a = rsync_args(Path::new("/m"), Path::new("/d"), Some(Path::new("/prev")));
        let s: Vec<String> = a.iter().map(|x| x.to_string_lossy().into_owned()).collect();
        assert!(s.contains(&"-aHAX".to_string()));
        assert!(s.contains(&"--link-dest=/prev".to_string()));
        assert!(
            !s.iter()
                .any(|x| x.contains("inplace") || x == "-z" || x.contains("compress"))
        );
        assert_eq!(&s[s.len() - 3..], ["--", "/m/", "/d/"]);
    }
}
