//! nfs-mirror: leg 1 of the NFS backup. Every top-level entry of each NFS
//! root that the skip list routes to the backup disk is mirrored: the
//! main root's (`/srv/nfs`) into `DEST/<name>/`, another root given as
//! `ROOT:SUBDIR` (`/srv/nfs-ssd:nfs-ssd`) into `DEST/SUBDIR/<name>/`;
//! nothing else under DEST is ever touched. Also copies the host
//! configuration into `DEST/pve-config/` (`nfs-mirror config`). DEST must
//! carry the backup root's identity marker (contract 13).
//!
//! Every run records, per root, which top-level entries it saw and which
//! it mirrored (`DEST/.nfs-mirror/coverage`, core::mirror_record):
//! `offsite-sync coverage` counts a directory routed to the backup disk as
//! covered only from that record (contract 15).
//!
//! Deletion is guarded: the source must be non-empty (and a mountpoint when
//! asked), no mirrored tree may go from files to an empty source, and a
//! dry-run pass bounds the deletions by `--max-delete` before any real
//! transfer. The ledger (`DEST/.changed-files`) receives exactly the files
//! rsync reported as transferred, also for a run that fails midway: rsync's
//! item list is spooled under `DEST/.nfs-mirror/` and turned into ledger
//! entries even by the next run if this one is killed.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use backup_core::cmd::{Cmd, RsyncResult};
use backup_core::exit::{Exit, ExitCode};
use backup_core::ledger::{Ledger, PathKind};
use backup_core::log::p;
use backup_core::metrics::Metrics;
use backup_core::rsync_items::{self, DeletePlan, MaxDelete};
use backup_core::skiplist::{Route, SkipList};
use backup_core::{error, info, warn};

/// Top-level names under the backup root that belong to other jobs or are
/// state files: never mirrored into, never deleted.
pub const RESERVED: &[&str] = &[
    "pvc-data",
    "sqlite-backup",
    "pfsense",
    "pve-config",
    "vzdump",
    "devvm-home",
    "lost+found",
    "anca-elements",
];

/// Excluded inside every mirrored tree: SQLite sidecars (they vanish
/// mid-transfer, contract 6) and NAS cruft.
pub const EXCLUDES: &[&str] = &[
    "*-wal",
    "*-shm",
    "*-journal",
    "@eaDir/",
    "*@synoeastream",
    ".DS_Store",
    "Thumbs.db",
];

/// The state directory nfs-mirror keeps under the backup root.
pub const STATE_DIR: &str = ".nfs-mirror";

fn reserved(name: &[u8]) -> bool {
    name.first() == Some(&b'.') || RESERVED.iter().any(|r| r.as_bytes() == name)
}

/// One NFS root to mirror (`--source ROOT[:SUBDIR]`): its top-level
/// entries go to `DEST/<name>/`, or to `DEST/SUBDIR/<name>/` when a
/// subdirectory is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRoot {
    pub path: PathBuf,
    pub into: Option<PathBuf>,
}

impl SourceRoot {
    /// `ROOT` or `ROOT:SUBDIR` (split at the last `:`; SUBDIR is one plain
    /// name, not a name of another job's tree under DEST).
    pub fn parse(s: &str) -> std::result::Result<SourceRoot, String> {
        let (path, into) = match s.rsplit_once(':') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        if !path.starts_with('/') {
            return Err(format!(
                "{s:?}: expected an absolute NFS root, optionally :SUBDIR (e.g. /srv/nfs-ssd:nfs-ssd)"
            ));
        }
        let into = match into {
            None => None,
            Some(b) => {
                let ok = !b.is_empty()
                    && !b.contains('/')
                    && !b.starts_with('.')
                    && !RESERVED.contains(&b);
                if !ok {
                    return Err(format!(
                        "{s:?}: SUBDIR {b:?} must be one plain name that no other job uses under DEST"
                    ));
                }
                Some(PathBuf::from(b))
            }
        };
        Ok(SourceRoot {
            path: PathBuf::from(path),
            into,
        })
    }
}

#[derive(Debug, Clone)]
pub struct MirrorOpts {
    pub sources: Vec<SourceRoot>,
    pub dest: PathBuf,
    pub skip_list: PathBuf,
    pub ledger: Option<PathBuf>,
    pub require_mountpoint: bool,
    pub max_delete: MaxDelete,
    pub prune_skipped: bool,
    pub dry_run: bool,
    pub json: bool,
    pub timeout: Duration,
    pub rsync: OsString,
}

/// What happened to one top-level entry.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EntryReport {
    /// The NFS root the entry is in.
    pub root: String,
    pub name: String,
    pub route: Route,
    /// mirrored, skipped, vanished, pruned, refused, failed, reserved, would-mirror, would-prune
    pub action: String,
    pub transferred: u64,
    pub deletions: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub entries: Vec<EntryReport>,
    pub transferred: u64,
    pub ledger_entries: u64,
    pub vanished_files: u64,
    pub plan: DeletePlan,
    pub dest_used_bytes: u64,
}

fn name_str(n: &[u8]) -> String {
    backup_core::log::escape_bytes(n)
}

pub fn is_mountpoint(path: &Path) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).with_context(|| p(path))?;
    let parent = path.join("..");
    let pm = std::fs::metadata(&parent).with_context(|| p(&parent))?;
    Ok(m.dev() != pm.dev() || m.ino() == pm.ino())
}

/// Used bytes of the filesystem holding `path` (statvfs, integers only).
pub fn fs_used_bytes(path: &Path) -> u64 {
    let Ok(st) = rustix::fs::statvfs(path) else {
        return 0;
    };
    st.f_blocks.saturating_sub(st.f_bfree) * st.f_frsize
}

/// The names this tool has mirrored from one root, kept in
/// `DEST/.nfs-mirror/entries` (the root mirrored into DEST itself) or
/// `DEST/.nfs-mirror/entries.SUBDIR`.
fn load_entries(dest: &Path, file: &Path) -> BTreeSet<Vec<u8>> {
    let f = dest.join(STATE_DIR).join(file);
    std::fs::read(&f)
        .map(|t| {
            t.split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .filter_map(backup_core::ledger::decode)
                .collect()
        })
        .unwrap_or_default()
}

fn save_entries(dest: &Path, file: &Path, set: &BTreeSet<Vec<u8>>) -> Result<()> {
    let mut buf = Vec::new();
    for n in set {
        buf.extend_from_slice(&backup_core::ledger::encode(n));
        buf.push(b'\n');
    }
    let f = dest.join(STATE_DIR).join(file);
    backup_core::fsutil::write_atomic(&f, &buf).with_context(|| p(&f))
}

/// The rsync arguments for one tree (`%i %n` lines on stdout).
fn rsync_args(
    src: &Path,
    dst: &Path,
    excludes: &[String],
    delete_excluded: bool,
    dry_run: bool,
) -> Vec<OsString> {
    let mut c: Vec<OsString> = Vec::new();
    c.extend(
        [
            "-rltH",
            "--delete",
            // Contract 6: the source is live, compare times at full precision.
            "--modify-window=-1",
            rsync_items::OUT_FORMAT,
        ]
        .map(OsString::from),
    );
    if delete_excluded {
        c.push("--delete-excluded".into());
    }
    if dry_run {
        c.extend(["--dry-run", "-ii"].map(OsString::from));
    }
    for e in EXCLUDES
        .iter()
        .map(|e| e.to_string())
        .chain(excludes.iter().cloned())
    {
        c.push(format!("--exclude={e}").into());
    }
    let mut s = src.as_os_str().to_os_string();
    s.push("/");
    let mut d = dst.as_os_str().to_os_string();
    d.push("/");
    c.extend(["--".into(), s, d]);
    c
}

/// Cap on a dry run's item list (spooled to disk): -ii lists every item,
/// about 160 million lines of 100 bytes.
const DRY_RUN_MAX_OUTPUT: u64 = 16 << 30;

fn rsync_cmd(
    rsync: &OsStr,
    src: &Path,
    dst: &Path,
    excludes: &[String],
    delete_excluded: bool,
    dry_run: bool,
    timeout: Duration,
) -> Cmd {
    Cmd::new(rsync)
        .args(rsync_args(src, dst, excludes, delete_excluded, dry_run))
        .timeout(timeout)
}

/// Spool files of runs that died before their items reached the ledger.
/// A spool still locked belongs to an rsync that is still running (its
/// parent was killed): left for a later run.
fn recover_spool(dir: &Path, ledger: &Ledger) -> Result<u64> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(0);
    };
    let mut n = 0;
    for e in rd.flatten() {
        let path = e.path();
        let fname = e.file_name();
        // Spool files are named `<hex of the entry name>.<pid>.items`.
        let Some(hexname) = fname
            .to_str()
            .and_then(|s| s.strip_suffix(".items"))
            .and_then(|s| s.split('.').next())
        else {
            continue;
        };
        let Some(entry) = unhex(hexname) else {
            continue;
        };
        let f = std::fs::File::open(&path).with_context(|| p(&path))?;
        match f.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                warn!(
                    "{}: an rsync of a killed run still writes it; left for the next run",
                    p(&path)
                );
                continue;
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| p(&path));
            }
        }
        let data = std::fs::read(&path).with_context(|| p(&path))?;
        n += append_items(ledger, &entry, &data)?;
        std::fs::remove_file(&path).with_context(|| p(&path))?;
    }
    if n > 0 {
        warn!("recovered {n} transferred file(s) of an interrupted run into the ledger");
    }
    Ok(n)
}

/// How a spooled rsync ended.
enum Spooled {
    Exited { code: i32, stderr: String },
    Failed(String),
}

/// Run rsync with stdout into `spool`, which stays flocked for as long as
/// any process of the rsync holds it open; rsync dies with us
/// (PR_SET_PDEATHSIG), and its whole group on a timeout.
fn run_spooled(
    rsync: &OsStr,
    args: &[OsString],
    spool: &Path,
    timeout: Duration,
) -> Result<Spooled> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::process::CommandExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(spool)
        .with_context(|| p(spool))?;
    f.lock().with_context(|| p(spool))?;
    let mut c = std::process::Command::new(rsync);
    c.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(f.try_clone().with_context(|| p(spool))?)
        .stderr(std::process::Stdio::piped())
        .process_group(0);
    // SAFETY: prctl is async-signal-safe (one system call, no allocation);
    // nothing else runs between fork and exec.
    unsafe {
        c.pre_exec(|| {
            let _ = rustix::process::set_parent_process_death_signal(Some(
                rustix::process::Signal::KILL,
            ));
            Ok(())
        });
    }
    let mut child = match c.spawn() {
        Ok(ch) => ch,
        Err(e) => {
            // rsync absent ends the run (exit 5), not just this tree.
            let e = backup_core::cmd::CmdError::from_spawn(rsync, e);
            if e.is_absent() {
                return Err(e.into());
            }
            return Ok(Spooled::Failed(e.to_string()));
        }
    };
    let pgid = rustix::process::Pid::from_child(&child);
    // Nothing of the group may outlive the run (an error: the group is gone).
    let kill_group = || {
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
    };
    // stderr is for messages: its tail, bounded (core's runner does the same).
    let err_thread = child.stderr.take().map(|s| {
        std::thread::spawn(move || {
            backup_core::cmd::read_tail(s, backup_core::cmd::DEFAULT_MAX_STDERR)
        })
    });
    let deadline = std::time::Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if std::time::Instant::now() >= deadline => {
                timed_out = true;
                kill_group();
                break child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break None,
        }
    };
    kill_group();
    let stderr = err_thread.and_then(|t| t.join().ok()).unwrap_or_default();
    drop(f);
    if timed_out {
        return Ok(Spooled::Failed(format!(
            "rsync timed out after {}s and was killed",
            timeout.as_secs()
        )));
    }
    match status.and_then(|s| s.code()) {
        Some(code) => Ok(Spooled::Exited { code, stderr }),
        None => Ok(Spooled::Failed(format!(
            "rsync was killed by a signal: {}",
            backup_core::log::escape_str(stderr.trim())
        ))),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// The transferred items of one tree as ledger paths (`<prefix>/<name>`).
fn transferred_paths(prefix: &[u8], out: &[u8]) -> Vec<Vec<u8>> {
    rsync_items::parse(out)
        .into_iter()
        .filter(|i| i.is_transfer())
        .map(|i| {
            let mut v = prefix.to_vec();
            v.push(b'/');
            v.extend_from_slice(i.path().as_os_str().as_bytes());
            v
        })
        .collect()
}

fn append_items(ledger: &Ledger, prefix: &[u8], out: &[u8]) -> Result<u64> {
    let paths = transferred_paths(prefix, out);
    if paths.is_empty() {
        return Ok(0);
    }
    let n = ledger
        .append(&paths)
        .with_context(|| format!("cannot append to ledger {}", p(ledger.path())))?;
    Ok(n as u64)
}

struct Planned {
    name: Vec<u8>,
    src: PathBuf,
    dst: PathBuf,
    excludes: Vec<String>,
    /// The tree opened at the guard pass without following a symlink
    /// (core::fsutil::open_dir_beneath) and its `/proc/PID/fd/N` path:
    /// the guard pass, the re-check and the copy all read that directory,
    /// whatever is renamed, linked or mounted at its name meanwhile (a
    /// lazily unmounted source included).
    pin: Option<(std::os::fd::OwnedFd, PathBuf)>,
}

/// A source tree with nothing in it while its mirror holds something: an
/// unmounted or emptied source, never a reason to empty the mirror.
fn empty_beside_a_mirror(src: &Path, dst: &Path) -> bool {
    is_empty_dir(src) && !is_empty_dir(dst)
}

/// Nothing in `d` (or it cannot be listed).
fn is_empty_dir(d: &Path) -> bool {
    std::fs::read_dir(d)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}

/// Nested skip-list rules inside a mirrored entry become anchored excludes
/// that match what the skip list's matcher matches (core translates them).
fn nested_excludes(skip: &SkipList, top: &OsStr) -> Vec<String> {
    skip.nested_rules(top)
        .into_iter()
        .filter(|r| r.route != Route::BackupDisk)
        .map(|r| backup_core::skiplist::rsync_pattern(&r.pattern[1..]))
        .collect()
}

/// What `mirror_root` found for one root, for the coverage record.
struct RootOutcome {
    code: ExitCode,
    /// Every top-level name the run saw.
    seen: Vec<Vec<u8>>,
    /// The names it mirrored successfully.
    mirrored: Vec<Vec<u8>>,
}

/// Check the run's configuration: the destination is the backup root
/// (its identity marker, and a mountpoint when asked), and the roots are
/// distinct and land in distinct places.
fn check_dest_and_roots(o: &MirrorOpts) -> Result<()> {
    let dest_md = std::fs::metadata(&o.dest)
        .map_err(|e| Exit::refused(format!("destination {}: {e}", p(&o.dest))))?;
    if !dest_md.is_dir() {
        return Err(Exit::refused(format!(
            "destination {} is not a directory",
            p(&o.dest)
        )));
    }
    // Contract 13: a bare directory (the unmounted disk's mountpoint, a
    // mistyped --dest) has no marker; nothing is written there.
    backup_core::marker::require_backup_root(&o.dest)?;
    // An unmounted backup disk would fill the root filesystem.
    if o.require_mountpoint && !is_mountpoint(&o.dest)? {
        return Err(Exit::refused(format!(
            "destination {} is not a mountpoint (--allow-unmounted-root for a sandbox): nothing copied or deleted",
            p(&o.dest)
        )));
    }
    if o.sources.is_empty() {
        return Err(Exit::usage(
            "no --source given: expected at least one NFS root",
        ));
    }
    for (i, a) in o.sources.iter().enumerate() {
        for b in &o.sources[..i] {
            if a.path == b.path {
                return Err(Exit::usage(format!("--source {}: given twice", p(&a.path))));
            }
            if a.into == b.into {
                return Err(Exit::usage(format!(
                    "--source {} and --source {} would both be mirrored into {}: give each root its own DEST subdirectory (ROOT:SUBDIR)",
                    p(&b.path),
                    p(&a.path),
                    p(&o.dest.join(a.into.as_deref().unwrap_or(Path::new(""))))
                )));
            }
        }
    }
    Ok(())
}

/// Mirror every `--source` root into its place under DEST. Each root is
/// guarded on its own (an unmounted or empty root, too many deletions):
/// a refused root is reported and the others still run. The coverage
/// record (`DEST/.nfs-mirror/coverage`) then says, per root that ran,
/// which top-level directories it saw and which it mirrored.
pub fn mirror(o: &MirrorOpts, metrics: &mut Metrics) -> Result<(ExitCode, Report)> {
    let skip = SkipList::load(&o.skip_list).map_err(|e| Exit::usage(e.to_string()))?;
    check_dest_and_roots(o)?;
    // Contract 12 with 13: the backup root checked here is the one every
    // copy writes to and every result is committed on. rsync writes
    // through its descriptor (/proc/PID/fd/N), never through the path: a
    // disk lazily unmounted mid-run is never replaced by the root
    // filesystem under its bare mountpoint (rsync's receiver cannot work
    // in a detached mount, so that copy fails). Before each copy, before
    // its items reach the ledger and before the coverage record is saved,
    // the root is checked again.
    let guard = backup_core::root_guard::RootGuard::require(&o.dest)?;
    let dest_fd = backup_core::fsutil::open_dir(&o.dest).with_context(|| p(&o.dest))?;
    let dest_at = Dest {
        guard: &guard,
        pinned: backup_core::fsutil::fd_path(&dest_fd),
    };
    let ledger_path = o
        .ledger
        .clone()
        .unwrap_or_else(|| o.dest.join(".changed-files"));
    let ledger = Ledger::new(ledger_path, PathKind::Relative);
    let mut report = Report::default();
    if !o.dry_run {
        let state = o.dest.join(STATE_DIR);
        std::fs::create_dir_all(state.join("spool")).with_context(|| p(&state))?;
        report.ledger_entries += recover_spool(&state.join("spool"), &ledger)?;
    }
    // Subdirectories of the other roots are reserved in the main one.
    let subs: Vec<Vec<u8>> = o
        .sources
        .iter()
        .filter_map(|s| s.into.as_ref())
        .map(|s| s.as_os_str().as_bytes().to_vec())
        .collect();
    let mut record = if o.dry_run {
        backup_core::mirror_record::Record::default()
    } else {
        backup_core::mirror_record::Record::load(&o.dest)?
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut code = ExitCode::Ok;
    let mut errors: Vec<anyhow::Error> = Vec::new();
    let mut ran = 0usize;
    let mut recorded = 0usize;
    for root in &o.sources {
        match mirror_root(o, root, &skip, &ledger, &subs, &dest_at, &mut report) {
            Ok(out) => {
                ran += 1;
                code = code.merge(out.code);
                if !o.dry_run {
                    let canon = std::fs::canonicalize(&root.path).with_context(|| p(&root.path))?;
                    record.update(canon.as_os_str().as_bytes(), now, &out.seen, &out.mirrored);
                }
            }
            Err(e) => {
                code = code.merge(backup_core::exit::code_of(&e));
                // Coverage (contract 15): this run mirrored nothing of the
                // root, and the record says so tonight, not once it ages.
                if !o.dry_run
                    && let Ok(canon) = std::fs::canonicalize(&root.path)
                {
                    record.refused(canon.as_os_str().as_bytes(), now);
                    recorded += 1;
                }
                // With several roots, each error names its root.
                errors.push(if o.sources.len() > 1 {
                    Exit::err(
                        backup_core::exit::code_of(&e),
                        format!("{}: {}", p(&root.path), backup_core::exit::one_line(&e)),
                    )
                } else {
                    e
                });
            }
        }
    }
    if let Err(e) = guard.check() {
        // Saved there, the record would describe a directory that is not
        // the backup disk.
        code = code.merge(ExitCode::Failed);
        errors.push(Exit::err(
            ExitCode::Failed,
            format!("{e}: coverage record not saved"),
        ));
    } else if !o.dry_run && ran > 0 {
        record.save(&o.dest)?;
    } else if !o.dry_run
        && recorded > 0
        && let Err(e) = record.save(&o.dest)
    {
        // The run's own error is the one to report.
        warn!("coverage record: {}", backup_core::exit::one_line(&e));
    }
    metrics.gauge(
        "nfs_mirror_planned_deletions",
        "Items the last run deleted in the mirrors, or would have when a guard refused it.",
        report.plan.deletions as f64,
    )?;
    report.dest_used_bytes = fs_used_bytes(&o.dest);
    if ran == 0 {
        // Nothing ran: the one error (or the first of several) is the
        // run's, with its exit code.
        for e in errors.iter().skip(1) {
            error!("{}", backup_core::exit::one_line(e));
        }
        let first = errors.remove(0);
        return Err(first);
    }
    for e in &errors {
        error!("{}", backup_core::exit::one_line(e));
    }
    Ok((code, report))
}

/// The backup root a run writes to: checked at the start, pinned.
struct Dest<'a> {
    guard: &'a backup_core::root_guard::RootGuard,
    /// The backup root's `/proc/PID/fd/N` path: rsync writes through it.
    pinned: PathBuf,
}

impl Dest<'_> {
    /// `dst` (below the backup root) reached through the pinned root.
    fn pinned(&self, root: &Path, dst: &Path) -> PathBuf {
        dst.strip_prefix(root)
            .map(|rel| self.pinned.join(rel))
            .unwrap_or_else(|_| dst.to_path_buf())
    }

    /// `Err` (failed) when the backup root is no longer the one of the start.
    fn check(&self) -> Result<()> {
        self.guard
            .check()
            .map_err(|e| Exit::err(ExitCode::Failed, e))
    }
}

fn mirror_root(
    o: &MirrorOpts,
    root: &SourceRoot,
    skip: &SkipList,
    ledger: &Ledger,
    subs: &[Vec<u8>],
    dest_at: &Dest<'_>,
    report: &mut Report,
) -> Result<RootOutcome> {
    let source = &root.path;
    let dest = match &root.into {
        Some(s) => o.dest.join(s),
        None => o.dest.clone(),
    };
    // The ledger (and spool) names of this root's trees: `<name>` or
    // `<subdir>/<name>`, relative to the backup root.
    let prefix_of = |n: &[u8]| -> Vec<u8> {
        match &root.into {
            Some(s) => {
                let mut v = s.as_os_str().as_bytes().to_vec();
                v.push(b'/');
                v.extend_from_slice(n);
                v
            }
            None => n.to_vec(),
        }
    };
    let is_reserved = |n: &[u8]| -> bool {
        if root.into.is_some() {
            n.first() == Some(&b'.') || n == b"lost+found"
        } else {
            reserved(n) || subs.iter().any(|s| s.as_slice() == n)
        }
    };
    let src_md = std::fs::metadata(source)
        .map_err(|e| Exit::refused(format!("source {}: {e}", p(source))))?;
    if !src_md.is_dir() {
        return Err(Exit::refused(format!(
            "source {} is not a directory",
            p(source)
        )));
    }
    // An unmounted source looks empty (docs/compatibility.md, bug 3).
    if o.require_mountpoint && !is_mountpoint(source)? {
        return Err(Exit::refused(format!(
            "source {} is not a mountpoint (--allow-unmounted-root for a sandbox): nothing copied or deleted",
            p(source)
        )));
    }
    let mut names: Vec<Vec<u8>> = std::fs::read_dir(source)
        .with_context(|| format!("cannot list source {}", p(source)))?
        .map(|e| e.map(|e| e.file_name().into_vec()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot list source {}", p(source)))?;
    names.sort();
    if names.is_empty() {
        return Err(Exit::refused(format!(
            "source {} is empty: nothing copied or deleted",
            p(source)
        )));
    }
    let entries_file = match &root.into {
        Some(s) => {
            let mut f = OsString::from("entries.");
            f.push(s.as_os_str());
            PathBuf::from(f)
        }
        None => PathBuf::from("entries"),
    };
    if !o.dry_run && root.into.is_some() {
        std::fs::create_dir_all(&dest).with_context(|| p(&dest))?;
    }
    let mut known = load_entries(&o.dest, &entries_file);
    let present: BTreeSet<Vec<u8>> = names.iter().cloned().collect();
    let first_entry = report.entries.len();
    let root_str = p(source);

    // Route every entry; plan the mirrored ones.
    let mut planned = Vec::new();
    for n in &names {
        let s = name_str(n);
        let route = skip.route(Path::new(OsStr::from_bytes(n)));
        let mut rep = EntryReport {
            root: root_str.clone(),
            name: s.clone(),
            route,
            action: String::new(),
            transferred: 0,
            deletions: 0,
            message: None,
        };
        if n == b"lost+found" {
            // The root filesystem's own, not a service: not mirrored, not
            // a failure (offsite-sync's coverage does not list it either).
            rep.action = "skipped".into();
            report.entries.push(rep);
            continue;
        }
        if route != Route::BackupDisk {
            rep.action = "skipped".into();
            if known.contains(n) {
                if o.prune_skipped {
                    rep.action = if o.dry_run { "would-prune" } else { "pruned" }.into();
                } else {
                    rep.message = Some(format!(
                        "routed '{}' but its old mirror stays (use --prune-skipped)",
                        route.as_str()
                    ));
                }
            }
            report.entries.push(rep);
            continue;
        }
        if is_reserved(n) {
            rep.action = "reserved".into();
            rep.message =
                Some("name belongs to another job or a state file under the destination".into());
            report.entries.push(rep);
            continue;
        }
        planned.push(Planned {
            name: n.clone(),
            src: source.join(OsStr::from_bytes(n)),
            dst: dest.join(OsStr::from_bytes(n)),
            excludes: nested_excludes(skip, OsStr::from_bytes(n)),
            pin: None,
        });
        report.entries.push(rep);
    }
    // A mirror removed by hand after its source vanished is forgotten.
    let removed: Vec<Vec<u8>> = known
        .iter()
        .filter(|k| !present.contains(*k) && !dest.join(OsStr::from_bytes(k)).exists())
        .cloned()
        .collect();
    if !removed.is_empty() && !o.dry_run {
        for k in &removed {
            known.remove(k);
        }
        save_entries(&o.dest, &entries_file, &known)?;
    }
    // Mirrors whose source vanished: kept, reported.
    for k in &known {
        if !present.contains(k) && !removed.contains(k) {
            report.entries.push(EntryReport {
                root: root_str.clone(),
                name: name_str(k),
                route: skip.route(Path::new(OsStr::from_bytes(k))),
                action: "vanished".into(),
                transferred: 0,
                deletions: 0,
                message: Some(
                    "source entry is gone; its mirror is kept until removed by hand".into(),
                ),
            });
        }
    }
    let find = |entries: &[EntryReport], name: &[u8]| -> usize {
        let s = name_str(name);
        first_entry
            + entries[first_entry..]
                .iter()
                .position(|r| r.name == s)
                .expect("planned entries are reported")
    };

    // Guard pass: what would each tree delete? Nothing is written yet.
    let mut refusals = Vec::new();
    // Per tree: (deletions and temp files measured, the bound of its own
    // copy when there is one).
    let mut tree_deletions: std::collections::HashMap<Vec<u8>, (u64, Option<u64>)> =
        std::collections::HashMap::new();
    let mut root_plan = DeletePlan::default();
    for pl in planned.iter_mut() {
        let idx = find(&report.entries, &pl.name);
        let rep = &mut report.entries[idx];
        let pin =
            backup_core::fsutil::open_dir_beneath(source, Path::new(OsStr::from_bytes(&pl.name)))
                .with_context(|| p(&pl.src))?;
        let Some(fd) = pin else {
            rep.action = "skipped".into();
            rep.message = Some("not a directory: only directories are mirrored".into());
            continue;
        };
        let pinned = backup_core::fsutil::fd_path(&fd);
        pl.pin = Some((fd, pinned.clone()));
        if !pl.dst.exists() {
            continue;
        }
        if empty_beside_a_mirror(&pinned, &pl.dst) {
            rep.action = "refused".into();
            let m = format!("source {} is empty but its mirror is not", p(&pl.src));
            rep.message = Some(m.clone());
            refusals.push(m);
            continue;
        }
        if o.max_delete == MaxDelete::Off && !o.dry_run {
            continue;
        }
        // Every item, changed or not, one line each: millions on a large
        // tree, so into an unnamed file (on the backup disk when the state
        // directory exists) and counted from there as a stream.
        let state = o.dest.join(STATE_DIR);
        let spool_dir = if state.is_dir() {
            state
        } else {
            std::env::temp_dir()
        };
        let spool = backup_core::cmd::spool_file(&spool_dir)
            .with_context(|| format!("dry run of {}", p(&pl.src)))?;
        let out = rsync_cmd(
            &o.rsync,
            &pinned,
            &pl.dst,
            &pl.excludes,
            o.prune_skipped,
            true,
            o.timeout,
        )
        .stdout_into(spool.try_clone().with_context(|| p(&spool_dir))?)
        .max_stdout(DRY_RUN_MAX_OUTPUT)
        .run_any()
        .with_context(|| format!("dry run of {}", p(&pl.src)))?;
        if !RsyncResult::classify(out.code, &out.stderr).is_success() {
            return Err(anyhow::anyhow!(
                "dry run of {} failed: rsync exited {} ({}): {}",
                p(&pl.src),
                out.code,
                RsyncResult::describe(out.code),
                out.stderr.trim()
            ));
        }
        let plan = DeletePlan::from_spool(&spool)
            .with_context(|| format!("reading the dry run of {}", p(&pl.src)))?;
        if plan.rsync_temps > 0 {
            backup_core::info!(
                "{}: {} temp file(s) of an interrupted rsync will be removed (not counted against --max-delete)",
                p(&pl.src),
                plan.rsync_temps
            );
        }
        rep.deletions = plan.deletions;
        // Each tree is held to the bound of its own copy too (its dry run
        // was checked on its own figures), whatever slack the root leaves:
        // with the root's slack only, a small tree emptied after this pass
        // beside a large one lost its whole mirror with exit 0.
        let own = o
            .max_delete
            .allowed(plan.existing)
            .map(|a| a.max(plan.deletions) + plan.rsync_temps);
        tree_deletions.insert(pl.name.clone(), (plan.deletions + plan.rsync_temps, own));
        root_plan.add(plan);
    }
    // What the copying pass may delete beyond the figures just measured.
    // rsync enforces it (--max-delete, exit 25): the guard pass and the
    // copy are minutes or hours apart, and a source tree emptied in
    // between (its filesystem unmounted, an operator's rm) otherwise went
    // through unbounded and emptied its mirror.
    let mut slack = o
        .max_delete
        .allowed(root_plan.existing)
        .map(|a| a.saturating_sub(root_plan.deletions));
    if let Some(why) = o.max_delete.check(&root_plan) {
        refusals.push(why);
    }
    report.plan.add(root_plan);
    if !refusals.is_empty() {
        return Err(Exit::refused(format!(
            "refused, nothing copied or deleted: {}",
            refusals.join("; ")
        )));
    }

    let seen: Vec<Vec<u8>> = names.clone();
    if o.dry_run {
        for pl in &planned {
            let idx = find(&report.entries, &pl.name);
            if report.entries[idx].action.is_empty() {
                report.entries[idx].action = "would-mirror".into();
            }
        }
        return Ok(RootOutcome {
            code: ExitCode::Ok,
            seen,
            mirrored: Vec::new(),
        });
    }

    // Real pass, one tree at a time; a failed tree does not stop the rest.
    let state = o.dest.join(STATE_DIR);
    let mut failed = Vec::new();
    let mut mirrored = Vec::new();
    let mut ok = 0usize;
    for pl in &planned {
        let idx = find(&report.entries, &pl.name);
        if !report.entries[idx].action.is_empty() {
            continue;
        }
        let Some((_, pinned)) = &pl.pin else {
            continue;
        };
        // Contract 12: the guard holds while acting. Checked again right
        // before the copy (with --max-delete off, the only check): an
        // emptied source never empties its mirror.
        if empty_beside_a_mirror(pinned, &pl.dst) {
            let rep = &mut report.entries[idx];
            rep.action = "failed".into();
            let m = format!(
                "source {} is empty but its mirror is not (emptied since the guard pass): nothing copied or deleted",
                p(&pl.src)
            );
            error!("{}: {m}", rep.name);
            rep.message = Some(m);
            failed.push(rep.name.clone());
            continue;
        }
        dest_at.check()?;
        known.insert(pl.name.clone());
        save_entries(&o.dest, &entries_file, &known)?;
        let prefix = prefix_of(&pl.name);
        let spool =
            state
                .join("spool")
                .join(format!("{}.{}.items", hex(&prefix), std::process::id()));
        let mut args = rsync_args(
            pinned,
            &dest_at.pinned(&o.dest, &pl.dst),
            &pl.excludes,
            o.prune_skipped,
            false,
        );
        let (planned_n, own) = tree_deletions.get(&pl.name).copied().unwrap_or((0, None));
        let bound = match (slack.map(|s| planned_n + s), own) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(bound) = bound {
            // Before the trailing `-- SRC/ DST/`.
            let at = args.len() - 3;
            args.insert(at, format!("--max-delete={bound}").into());
        }
        let res = run_spooled(&o.rsync, &args, &spool, o.timeout)?;
        // The items of a copy made while the backup root changed are not
        // ledgered on whatever is there now: they stay in the spool file
        // (on the disk rsync wrote to) for the next run's recovery.
        if let Err(e) = dest_at.check() {
            return Err(Exit::err(
                ExitCode::Failed,
                format!(
                    "{}: {}; its copy's items stay in {} for the next run",
                    name_str(&pl.name),
                    backup_core::exit::one_line(&e),
                    p(&spool)
                ),
            ));
        }
        // Whatever happened, what rsync reported as sent goes into the ledger.
        let data = std::fs::read(&spool).unwrap_or_default();
        let deleted = rsync_items::parse(&data)
            .iter()
            .filter(|i| i.is_deletion())
            .count() as u64;
        if let Some(s) = slack.as_mut() {
            // Deletions beyond this tree's measured ones use up the slack
            // for the trees after it: the bound holds for the whole root.
            *s = s.saturating_sub(deleted.saturating_sub(planned_n));
        }
        let n = append_items(ledger, &prefix, &data)?;
        let _ = std::fs::remove_file(&spool);
        report.ledger_entries += n;
        report.transferred += n;
        let rep = &mut report.entries[idx];
        rep.transferred = n;
        match res {
            Spooled::Exited { code, stderr } => match RsyncResult::classify(code, &stderr) {
                RsyncResult::Ok => {
                    rep.action = "mirrored".into();
                    ok += 1;
                }
                RsyncResult::Vanished { files } => {
                    rep.action = "mirrored".into();
                    rep.message = Some(format!("{files} file(s) vanished during the transfer"));
                    report.vanished_files += files as u64;
                    warn!(
                        "{}: {files} source file(s) vanished during the transfer (rsync 24), counted as success",
                        rep.name
                    );
                    ok += 1;
                }
                _ => {
                    rep.action = "failed".into();
                    let m = if code == 25 {
                        format!(
                            "the source changed since the guard pass: rsync stopped deleting at the --max-delete {} bound (exit 25), the rest of the mirror is kept",
                            o.max_delete
                        )
                    } else {
                        format!(
                            "rsync exited {} ({}): {}",
                            code,
                            RsyncResult::describe(code),
                            backup_core::log::escape_str(stderr.trim())
                        )
                    };
                    error!("{}: {m}", rep.name);
                    rep.message = Some(m);
                    failed.push(rep.name.clone());
                }
            },
            Spooled::Failed(m) => {
                rep.action = "failed".into();
                error!("{}: {m}", rep.name);
                rep.message = Some(m);
                failed.push(rep.name.clone());
            }
        }
        // A source empty right after a copy that deleted in its mirror was
        // emptied while copied (with --max-delete off nothing bounded it):
        // never reported or recorded as mirrored.
        if rep.action == "mirrored" && deleted > 0 && is_empty_dir(pinned) {
            ok -= 1;
            rep.action = "failed".into();
            let m = format!(
                "source {} is empty now, emptied while it was copied: {deleted} item(s) deleted in its mirror",
                p(&pl.src)
            );
            error!("{}: {m}", rep.name);
            rep.message = Some(m);
            failed.push(rep.name.clone());
        }
        if rep.action == "mirrored" {
            mirrored.push(pl.name.clone());
            info!(
                "{}: mirrored, {} file(s) transferred",
                rep.name, rep.transferred
            );
        }
    }
    // Prune mirrors of entries the skip list now routes elsewhere.
    if o.prune_skipped {
        for rep in report.entries[first_entry..]
            .iter_mut()
            .filter(|r| r.action == "pruned")
        {
            let raw = known.iter().find(|k| name_str(k) == rep.name).cloned();
            if let Some(raw) = raw {
                let d = dest.join(OsStr::from_bytes(&raw));
                if d.exists() {
                    std::fs::remove_dir_all(&d)
                        .with_context(|| format!("cannot prune {}", p(&d)))?;
                }
                known.remove(&raw);
                info!("{}: pruned (routed '{}' now)", rep.name, rep.route.as_str());
            }
        }
        save_entries(&o.dest, &entries_file, &known)?;
    }
    let mine = &report.entries[first_entry..];
    for r in mine {
        match r.action.as_str() {
            "vanished" => warn!("{}: {}", r.name, r.message.as_deref().unwrap_or("")),
            "reserved" | "skipped" if r.message.is_some() => {
                warn!("{}: {}", r.name, r.message.as_deref().unwrap_or(""));
            }
            _ => {}
        }
    }
    let reserved_n = mine.iter().filter(|r| r.action == "reserved").count();
    let code = ExitCode::from_items(ok, failed.len() + reserved_n);
    if code != ExitCode::Ok {
        let mut what = failed.clone();
        what.extend(
            mine.iter()
                .filter(|r| r.action == "reserved")
                .map(|r| format!("{} (reserved name)", r.name)),
        );
        error!("{}: not mirrored: {}", p(source), what.join(", "));
    }
    Ok(RootOutcome {
        code,
        seen,
        mirrored,
    })
}

/// Host configuration copy (`nfs-mirror config`).
#[derive(Debug, Clone)]
pub struct ConfigOpts {
    pub dest: PathBuf,
    pub require_mountpoint: bool,
    pub items: Vec<PathBuf>,
    pub ledger: Option<PathBuf>,
    pub dry_run: bool,
    pub timeout: Duration,
    pub rsync: OsString,
}

/// Copy each configuration directory to `DEST/pve-config/<its path>/`.
pub fn config(o: &ConfigOpts) -> Result<(ExitCode, u64)> {
    if !o.dest.is_dir() {
        return Err(Exit::refused(format!(
            "destination {} is not a directory",
            p(&o.dest)
        )));
    }
    // Contract 13: only into the backup root itself (an unmounted disk's
    // bare mountpoint, a mistyped --dest: refused, nothing written), and
    // only while it is still that root (contract 12, as the mirror: rsync
    // writes through its descriptor, checked before each copy and before
    // its items are ledgered).
    let guard = backup_core::root_guard::RootGuard::require(&o.dest)?;
    let dest_fd = backup_core::fsutil::open_dir(&o.dest).with_context(|| p(&o.dest))?;
    let dest_at = Dest {
        guard: &guard,
        pinned: backup_core::fsutil::fd_path(&dest_fd),
    };
    if o.require_mountpoint && !is_mountpoint(&o.dest)? {
        return Err(Exit::refused(format!(
            "destination {} is not a mountpoint (--allow-unmounted-root for a sandbox): nothing copied",
            p(&o.dest)
        )));
    }
    let ledger = Ledger::new(
        o.ledger
            .clone()
            .unwrap_or_else(|| o.dest.join(".changed-files")),
        PathKind::Relative,
    );
    let root = o.dest.join("pve-config");
    let (mut ok, mut failed, mut total) = (0usize, Vec::new(), 0u64);
    // Its own spool directory: `nfs-mirror config` runs under another lock
    // than the mirror, whose recovery must never take a spool being written.
    let spool_dir = o.dest.join(STATE_DIR).join("config-spool");
    if !o.dry_run {
        std::fs::create_dir_all(&spool_dir).with_context(|| p(&spool_dir))?;
        total += recover_spool(&spool_dir, &ledger)?;
    }
    for item in &o.items {
        let rel: PathBuf = item
            .components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .collect();
        if !item.is_absolute() || rel.as_os_str().is_empty() {
            return Err(Exit::usage(format!(
                "--item {}: expected an absolute directory path",
                p(item)
            )));
        }
        let empty = std::fs::read_dir(item)
            .map(|mut d| d.next().is_none())
            .unwrap_or(true);
        if empty {
            // A missing or empty /etc/pve (pmxcfs down) must not wipe the copy.
            error!("{}: missing or empty, its copy is left as it is", p(item));
            failed.push(p(item));
            continue;
        }
        let dst = root.join(&rel);
        if o.dry_run {
            info!("would copy {} to {}", p(item), p(&dst));
            ok += 1;
            continue;
        }
        dest_at.check()?;
        std::fs::create_dir_all(dest_at.pinned(&o.dest, &dst)).with_context(|| p(&dst))?;
        let mut prefix = b"pve-config/".to_vec();
        prefix.extend_from_slice(rel.as_os_str().as_bytes());
        // Spooled like the mirror's trees: with rsync's item list only in
        // memory, a run stopped (systemd stop, TimeoutStartSec=, kill) or
        // timed out after some files arrived ledgered none of them, and the
        // next run, finding them up to date, never did either.
        let spool = spool_dir.join(format!("{}.{}.items", hex(&prefix), std::process::id()));
        let args = rsync_args(item, &dest_at.pinned(&o.dest, &dst), &[], false, false);
        let res = run_spooled(&o.rsync, &args, &spool, o.timeout)?;
        if let Err(e) = dest_at.check() {
            return Err(Exit::err(
                ExitCode::Failed,
                format!(
                    "{}: {}; its copy's items stay in {} for the next run",
                    p(item),
                    backup_core::exit::one_line(&e),
                    p(&spool)
                ),
            ));
        }
        let data = std::fs::read(&spool).unwrap_or_default();
        let n = append_items(&ledger, &prefix, &data)?;
        let _ = std::fs::remove_file(&spool);
        total += n;
        match res {
            Spooled::Exited { code, stderr } => {
                if RsyncResult::classify(code, &stderr).is_success() {
                    info!("{}: {n} file(s) copied", p(item));
                    ok += 1;
                } else {
                    error!(
                        "{}: rsync exited {} ({}): {}",
                        p(item),
                        code,
                        RsyncResult::describe(code),
                        stderr.trim()
                    );
                    failed.push(p(item));
                }
            }
            Spooled::Failed(m) => {
                error!("{}: {m}", p(item));
                failed.push(p(item));
            }
        }
    }
    Ok((ExitCode::from_items(ok, failed.len()), total))
}
