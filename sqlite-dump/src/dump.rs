//! One database: source files -> private scratch copy -> SQLite recovers it
//! there -> online backup into `DEST/<rel>.partial` -> integrity_check ->
//! fsync -> rename into place. The source is only ever read through file
//! descriptors opened read-only; SQLite never opens it (so no `-shm`, no
//! WAL recovery and no journal rollback can happen in the source tree).

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rusqlite::backup::{Backup, StepResult};

use crate::discover::{MAGIC, open_file_at, open_parent};
use crate::sqlite::{self, Deadline, Mode};

/// What was written for one database.
#[derive(Debug)]
pub struct Written {
    pub path: PathBuf,
    pub bytes: u64,
}

/// The files that make up one database in the source, as copied.
struct Copied {
    db: PathBuf,
    had_wal: bool,
    had_journal: bool,
}

/// Times a source is re-copied when it changes under us (a live tree).
const COPY_ATTEMPTS: usize = 3;

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

fn name_with(name: &OsStr, suffix: &str) -> OsString {
    let mut s = name.to_os_string();
    s.push(suffix);
    s
}

/// The `.partial` name for `rel`: `<rel>.partial`, with more `.partial`
/// appended while that is itself the final name of a database found in
/// this run, so cleaning a stale partial never removes another's copy.
pub fn partial_rel(rel: &Path, all: &HashSet<PathBuf>) -> PathBuf {
    let mut p = with_suffix(rel, ".partial");
    while all.contains(&p) {
        p = with_suffix(&p, ".partial");
    }
    p
}

/// (size, mtime, ctime) of an open file: equal before and after a copy
/// means nobody wrote to it meanwhile.
fn fingerprint(f: &File) -> io::Result<(u64, i64, i64, i64, i64)> {
    let m = f.metadata()?;
    Ok((
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    ))
}

fn copy_fd(src: &mut File, dst: &Path, deadline: &Deadline) -> anyhow::Result<u64> {
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)
        .with_context(|| format!("cannot create scratch file {}", dst.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        deadline.check()?;
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("cannot read the source"),
        };
        out.write_all(&buf[..n])
            .with_context(|| format!("cannot write scratch file {}", dst.display()))?;
        total += n as u64;
    }
    Ok(total)
}

/// Open an optional sidecar: absent is fine; a symlink or non-regular
/// file in its place is ignored (never followed) with a note.
fn open_sidecar(
    parent: &OwnedFd,
    name: &OsStr,
    notes: &mut Vec<String>,
) -> anyhow::Result<Option<File>> {
    match open_file_at(parent, name) {
        Ok(f) => {
            if f.metadata()?.file_type().is_file() {
                Ok(Some(f))
            } else {
                notes.push(format!(
                    "{} is not a regular file, ignored",
                    backup_core::log::escape_bytes(name.as_encoded_bytes())
                ));
                Ok(None)
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            notes.push(format!(
                "{} is a symlink, not followed",
                backup_core::log::escape_bytes(name.as_encoded_bytes())
            ));
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| {
            format!(
                "cannot open {}",
                backup_core::log::escape_bytes(name.as_encoded_bytes())
            )
        }),
    }
}

/// Copy the main file, its `-wal` and its `-journal` into `scratch` as
/// `db`, `db-wal`, `db-journal` (fixed names: the tenant's name never
/// reaches SQLite). Retried when a file changes while being copied.
fn copy_to_scratch(
    root: &OwnedFd,
    dev: u64,
    rel: &Path,
    scratch: &Path,
    deadline: &Deadline,
    notes: &mut Vec<String>,
) -> anyhow::Result<(Copied, fs::Metadata)> {
    let (parent, name) = open_parent(root, dev, rel).context("cannot reach the database")?;
    let name = name.into_os_string();
    for attempt in 1..=COPY_ATTEMPTS {
        for f in ["db", "db-wal", "db-journal", "db-shm"] {
            let _ = fs::remove_file(scratch.join(f));
        }
        let mut main = open_file_at(&parent, &name).context("cannot open the database")?;
        let meta = main.metadata()?;
        if !meta.file_type().is_file() || meta.dev() != dev {
            bail!("no longer a regular file on the source filesystem");
        }
        let mut wal = open_sidecar(&parent, &name_with(&name, "-wal"), notes)?;
        let mut journal = open_sidecar(&parent, &name_with(&name, "-journal"), notes)?;
        let before = (
            fingerprint(&main)?,
            wal.as_ref().map(fingerprint).transpose()?,
            journal.as_ref().map(fingerprint).transpose()?,
        );
        let db = scratch.join("db");
        copy_fd(&mut main, &db, deadline)?;
        if let Some(w) = wal.as_mut() {
            copy_fd(w, &scratch.join("db-wal"), deadline)?;
        }
        if let Some(j) = journal.as_mut() {
            copy_fd(j, &scratch.join("db-journal"), deadline)?;
        }
        let after = (
            fingerprint(&main)?,
            wal.as_ref().map(fingerprint).transpose()?,
            journal.as_ref().map(fingerprint).transpose()?,
        );
        if before == after {
            return Ok((
                Copied {
                    db,
                    had_wal: wal.is_some(),
                    had_journal: journal.is_some(),
                },
                meta,
            ));
        }
        notes.push(format!(
            "source changed while being copied (attempt {attempt})"
        ));
    }
    bail!("the source kept changing while being copied ({COPY_ATTEMPTS} attempts)")
}

/// A main file shorter than the size its header vouches for is truncated
/// (with no WAL that could supply the missing pages).
fn check_not_truncated(db: &Path, has_sidecar: bool) -> anyhow::Result<()> {
    let mut f = File::open(db)?;
    let len = f.metadata()?.len();
    let mut h = [0u8; 100];
    if len < 100 || f.read_exact(&mut h).is_err() {
        bail!("truncated: {len} bytes, shorter than the 100-byte SQLite header");
    }
    if &h[..16] != MAGIC {
        bail!("not an SQLite database any more (header changed)");
    }
    let page_size = match u16::from_be_bytes([h[16], h[17]]) {
        1 => 65536u64,
        n => u64::from(n),
    };
    if page_size < 512 || !page_size.is_power_of_two() {
        bail!("corrupt header: page size {page_size}");
    }
    let be32 = |o: usize| u32::from_be_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    let pages = u64::from(be32(28));
    // The header's page count is only valid when the change counter
    // matches the version-valid-for number (SQLite file format, 1.3.7).
    let valid = pages > 0 && be32(24) == be32(92);
    if valid && !has_sidecar && len < pages * page_size {
        bail!(
            "truncated: {len} bytes, but the header says {pages} pages of {page_size} bytes ({} bytes)",
            pages * page_size
        );
    }
    if !has_sidecar && len % page_size != 0 {
        bail!("truncated: {len} bytes is not a whole number of {page_size}-byte pages");
    }
    Ok(())
}

/// The magic number that starts a rollback journal and ends its
/// super-journal record.
const JOURNAL_MAGIC: [u8; 8] = [0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7];

/// Refuse a journal that names a super-journal (the record a
/// multi-database commit appends: name, u32 length, u32 checksum, magic).
/// Replaying it, SQLite opens that absolute path and deletes it when no
/// child journal points back at it: the name is the tenant's bytes, so a
/// crafted journal would make this root process delete any file on the
/// host. The check is looser than SQLite's (no checksum test) on purpose.
fn refuse_super_journal(journal: &Path) -> anyhow::Result<()> {
    let data = fs::read(journal).context("cannot read the journal copy")?;
    let n = data.len();
    if n < 16 || data[n - 8..] != JOURNAL_MAGIC {
        return Ok(());
    }
    let len = u32::from_be_bytes([data[n - 16], data[n - 15], data[n - 14], data[n - 13]]) as usize;
    if len == 0 || len > n - 16 {
        return Ok(());
    }
    let name = &data[n - 16 - len..n - 16];
    bail!(
        "its hot journal belongs to a multi-database transaction (super-journal {}); \
         SQLite would open and delete that path on this host, so it is not replayed",
        backup_core::log::escape_bytes(name.split(|b| *b == 0).next().unwrap_or_default())
    )
}

fn remove_partial(partial: &Path) {
    for suffix in ["", "-journal", "-wal", "-shm"] {
        let p = with_suffix(partial, suffix);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => backup_core::warn!("cannot remove {}: {e}", backup_core::log::p(&p)),
        }
    }
}

/// Everything one database needs.
pub struct Job<'a> {
    pub root: &'a OwnedFd,
    pub dev: u64,
    pub rel: &'a Path,
    pub dest_root: &'a Path,
    pub partial_rel: &'a Path,
    pub scratch: &'a Path,
    pub deadline: Deadline,
    /// The backup root DEST_DIR is on, re-checked before the rename.
    pub guard: &'a backup_core::root_guard::RootGuard,
}

/// Dump one database. On error nothing is left under the final name that
/// was not there before (an earlier good copy stays as it was).
pub fn dump_one(job: &Job<'_>, notes: &mut Vec<String>) -> anyhow::Result<Written> {
    let final_path = job.dest_root.join(job.rel);
    let partial = job.dest_root.join(job.partial_rel);
    let res = dump_inner(job, &final_path, &partial, notes);
    if res.is_err() {
        remove_partial(&partial);
    }
    res.map_err(|e| sqlite::explain(e, &job.deadline))
}

fn dump_inner(
    job: &Job<'_>,
    final_path: &Path,
    partial: &Path,
    notes: &mut Vec<String>,
) -> anyhow::Result<Written> {
    let d = job.deadline;
    // Only the last component: its parent, the run's scratch directory,
    // is on the backup disk and is never re-created elsewhere.
    fs::create_dir(job.scratch)
        .with_context(|| format!("cannot create scratch directory {}", job.scratch.display()))?;
    let (copied, src_meta) = copy_to_scratch(job.root, job.dev, job.rel, job.scratch, &d, notes)?;
    // A WAL or hot journal legitimately changes the size; SQLite judges those.
    check_not_truncated(&copied.db, copied.had_wal || copied.had_journal)?;
    if copied.had_journal {
        refuse_super_journal(&with_suffix(&copied.db, "-journal"))?;
        notes.push("hot journal copied; SQLite rolls it back in the scratch copy".into());
    }

    if let Some(parent) = partial.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .with_context(|| format!("cannot create {}", backup_core::log::p(parent)))?;
    }
    // A leftover from a killed run (never a final name: see partial_rel).
    remove_partial(partial);

    {
        // Opening the scratch copy read-write lets SQLite replay its WAL
        // or roll back its hot journal there, in private.
        let src = sqlite::open(&copied.db, Mode::ReadWrite, d).context("scratch copy")?;
        let mut dst = sqlite::open(partial, Mode::Create, d).context("partial copy")?;
        let backup = Backup::new(&src, &mut dst).context("cannot start the online backup")?;
        loop {
            d.check()?;
            match backup.step(256).context("online backup")? {
                StepResult::Done => break,
                StepResult::More => {}
                // Nobody else has the scratch copy open; be patient anyway.
                _ => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
    }

    {
        // A fresh connection reads what reached the file, not a cache.
        // EXCLUSIVE locking keeps a WAL-mode copy from creating -shm.
        let conn = sqlite::open(partial, Mode::ReadWrite, d).context("verifying the copy")?;
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
            .context("verifying the copy")?;
        // The copy is a self-contained file in rollback-journal mode: a
        // WAL-mode copy would grow -wal/-shm sidecars whenever someone opens
        // it (a check, a restore test) and offsite-sync would ship them.
        // The application sets its own journal mode again when it opens a
        // restored file.
        let mode: String = conn
            .query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))
            .context("verifying the copy")?;
        if !mode.eq_ignore_ascii_case("delete") {
            bail!("cannot switch the copy to rollback-journal mode (still {mode})");
        }
        sqlite::integrity_check(&conn).context("verifying the copy")?;
        conn.close()
            .map_err(|(_, e)| e)
            .context("verifying the copy")?;
    }
    for suffix in ["-journal", "-wal", "-shm"] {
        let side = with_suffix(partial, suffix);
        if fs::symlink_metadata(&side).is_ok() {
            bail!(
                "SQLite left {} behind; the copy is not self-contained",
                backup_core::log::p(&side)
            );
        }
    }

    let f = File::open(partial).context("cannot reopen the copy")?;
    // The copy keeps the source's permission bits and, as root, its owner.
    f.set_permissions(fs::Permissions::from_mode(src_meta.mode() & 0o777))
        .context("cannot set permissions on the copy")?;
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::fchown(&f, Some(src_meta.uid()), Some(src_meta.gid()))
            .context("cannot set the owner of the copy")?;
    }
    f.sync_all().context("cannot fsync the copy")?;
    let bytes = f.metadata()?.len();
    drop(f);
    d.check()?;
    // The copy took long: the disk must still be the one checked at the
    // start, or the rename would put a name on a bare directory.
    job.guard.check().map_err(anyhow::Error::msg)?;
    fs::rename(partial, final_path)
        .with_context(|| format!("cannot rename into {}", backup_core::log::p(final_path)))?;
    backup_core::fsutil::sync_dir(final_path);
    Ok(Written {
        path: final_path.to_path_buf(),
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_names_never_hit_another_databases_final_name() {
        let all: HashSet<PathBuf> = ["a.db", "a.db.partial", "b/c.db"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(
            partial_rel(Path::new("a.db"), &all),
            PathBuf::from("a.db.partial.partial")
        );
        assert_eq!(
            partial_rel(Path::new("b/c.db"), &all),
            PathBuf::from("b/c.db.partial")
        );
    }
}
