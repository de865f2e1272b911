//! offsite-sync: the backup disk and the `direct` NFS trees to the NAS.
//!
//! Step 1 consumes `.changed-files` (leg 1, relative to the backup root),
//! step 2 `.nfs-changes.log` (leg 2, absolute paths) by the core ledger
//! protocol: the batch is committed (its inflight file deleted) only after
//! the transfer succeeded, so a failure or a kill at any instant loses no
//! entry. Full passes (`--delete`) run when due, asked for or marked, and
//! are guarded like nfs-mirror: a missing, unmounted or empty source never
//! deletes anything on the NAS, and a dry run bounds the deletions.
//!
//! Guards hold while acting (contract 12): the deleting transfer carries
//! rsync's own `--max-delete`, the source guard is checked again right
//! before it, and the deletions reported are those rsync itemized. A
//! batch is committed only when every listed entry was itemized (sent or
//! up to date) or has vanished, and the source root is still the
//! filesystem (device) it was at the start. Identity markers (contract
//! 13): the backup root and each NAS destination must carry the marker
//! `offsite-sync init` wrote ([`nas`]); the NAS ones are checked before
//! any step and again in each transfer's own connection.

pub mod coverage;
pub mod nas;
pub mod resolve;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use backup_core::cmd::{Cmd, RsyncResult, shell_quote};
use backup_core::exit::{Exit, ExitCode};
use backup_core::ledger::{Ledger, PathKind};
use backup_core::log::{escape_bytes, p};
use backup_core::metrics::Metrics;
use backup_core::rsync_items::{self, DeletePlan, MaxDelete};
use backup_core::skiplist::{Route, SkipList};
use backup_core::{error, info, warn};

use resolve::{Resolved, resolve_beneath};

/// Top-level state files of the backup root: never sent, never deleted
/// on the NAS by a full pass (they are excluded, so `--delete` spares them).
pub const STATE_EXCLUDES: &[&str] = &[
    "/.changed-files*",
    "/.nfs-changes.log*",
    "/.last-offsite-sync",
    "/.lv-pvc-mapping.json",
    "/.force-full-sync",
    "/.nfs-mirror/",
    "/.offsite-sync/",
    // The identity markers (contract 13): the backup root's is never sent
    // as data, and the NAS destination's is never deleted by `--delete`.
    "/.backup-pipeline-id*",
    "/lost+found/",
    "/anca-elements/",
];

/// Cap on a full pass's dry-run item list (spooled to disk): every item is
/// listed, about 160 million lines of 100 bytes.
const DRY_RUN_MAX_OUTPUT: u64 = 16 << 30;
/// The flags of a guard's dry run (every item listed, changed or not).
const DRY: [&str; 3] = ["--dry-run", "-ii", rsync_items::OUT_FORMAT];

/// Modes the NAS user can create (docs/compatibility.md, incident 2026-04-06).
pub const CHMOD: &str = "--chmod=Du=rwx,Dgo=rx,Fu=rw,Fog=r";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FullMode {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub remote: String,
    pub ssh_port: u16,
    pub ssh_key: PathBuf,
    pub known_hosts: PathBuf,
    pub connect_timeout: Duration,
    pub keepalive: Duration,
    pub io_timeout: Duration,
    pub run_timeout: Duration,
    pub bwlimit: Option<String>,
    pub backup_root: PathBuf,
    pub nfs_root: PathBuf,
    pub nfs_ssd_root: PathBuf,
    pub pve_dest: String,
    pub capacity_path: String,
    pub nfs_dest: String,
    pub nfs_ssd_dest: String,
    pub skip_list: PathBuf,
    /// nfs-track's state directory (its `last-watching` file), for coverage.
    pub nfs_track_state_dir: PathBuf,
    /// How old a leg's record may be and still count as running (coverage).
    pub coverage_max_age: Duration,
    pub full: FullMode,
    pub full_every: Duration,
    pub ledger_cap: u64,
    pub max_delete: MaxDelete,
    pub require_mountpoint: bool,
    pub dry_run: bool,
    pub rsync: OsString,
    pub ssh: OsString,
}

impl Config {
    pub fn leg1(&self) -> Ledger {
        Ledger::new(self.backup_root.join(".changed-files"), PathKind::Relative)
    }
    pub fn leg2(&self) -> Ledger {
        Ledger::new(
            self.backup_root.join(".nfs-changes.log"),
            PathKind::Absolute,
        )
    }
    pub fn state_dir(&self) -> PathBuf {
        self.backup_root.join(".offsite-sync")
    }
    fn stamp(&self, step: u8) -> PathBuf {
        self.state_dir().join(format!("last-full-step{step}"))
    }

    /// The ssh options every connection uses (contract 6).
    pub fn ssh_opts(&self) -> Vec<String> {
        vec![
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            format!("ConnectTimeout={}", self.connect_timeout.as_secs().max(1)),
            "-o".into(),
            format!("ServerAliveInterval={}", self.keepalive.as_secs().max(1)),
            "-o".into(),
            "ServerAliveCountMax=3".into(),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o".into(),
            "GlobalKnownHostsFile=/dev/null".into(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-i".into(),
            self.ssh_key.display().to_string(),
            "-p".into(),
            self.ssh_port.to_string(),
        ]
    }

    /// rsync's `-e`: one string, each word quoted for rsync's own splitter.
    fn rsh(&self) -> String {
        std::iter::once(self.ssh.clone())
            .chain(self.ssh_opts().into_iter().map(OsString::from))
            .map(|a| shell_quote(&a))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// `USER@HOST:PATH`, the path's bytes kept (rsync `--protect-args`
    /// sends them as they are: a non-UTF-8 tree name arrives unchanged).
    fn remote_path(&self, path: impl AsRef<OsStr>) -> OsString {
        let mut s = OsString::from(format!("{}:", self.remote));
        s.push(path);
        s
    }

    fn rsync_base(&self) -> Cmd {
        let mut c = Cmd::new(&self.rsync)
            .args(["-rltH", CHMOD, "--protect-args"])
            .arg(format!("--timeout={}", self.io_timeout.as_secs().max(1)))
            .arg("-e")
            .arg(self.rsh())
            .timeout(self.run_timeout);
        if let Some(bw) = &self.bwlimit {
            c = c.arg(format!("--bwlimit={bw}"));
        }
        c
    }

    /// rsync into a NAS destination: the NAS side checks the
    /// destination's identity marker in the same connection, right before
    /// it starts the receiving rsync (contract 12: the check made before
    /// the run holds while acting; a NAS volume unmounted since the run
    /// began leaves a bare directory without it). The receiver never
    /// starts then, and the transfer fails naming the destination.
    fn rsync_into(&self, dest_root: &str) -> Result<Cmd> {
        let id = nas::expected_id(self, dest_root)?;
        let marker = format!("{dest_root}/{}", backup_core::marker::FILE);
        let check = format!(
            "{{ grep -qxF -- {} {} 2>/dev/null || {{ echo {} >&2; exit 5; }}; }} && rsync",
            shell_quote(OsStr::new(&format!("id={id}"))),
            shell_quote(OsStr::new(&marker)),
            shell_quote(OsStr::new(&format!(
                "{}: {dest_root}: identity marker missing or different",
                nas::REFUSED_TAG
            ))),
        );
        Ok(self.rsync_base().arg(format!("--rsync-path={check}")))
    }

    pub fn validate(&self) -> Result<()> {
        if !self.remote.contains('@') || self.remote.starts_with('-') || self.remote.contains(':') {
            return Err(Exit::usage(format!(
                "--remote {:?}: expected USER@HOST",
                self.remote
            )));
        }
        for (flag, d) in [
            ("--pve-dest", &self.pve_dest),
            ("--nfs-dest", &self.nfs_dest),
            ("--nfs-ssd-dest", &self.nfs_ssd_dest),
        ] {
            if d.chars().any(char::is_control) {
                return Err(Exit::usage(format!(
                    "{flag} {d:?}: expected a path without control characters"
                )));
            }
            if !d.starts_with('/') {
                return Err(Exit::usage(format!(
                    "{flag} {d:?}: expected an absolute path on the NAS"
                )));
            }
        }
        Ok(())
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn read_stamp(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn write_stamp(path: &Path) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).with_context(|| p(d))?;
    }
    backup_core::fsutil::write_atomic(path, format!("{}\n", now_secs()).as_bytes())
        .with_context(|| p(path))
}

pub fn is_mountpoint(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), std::fs::metadata(path.join(".."))) {
        (Ok(m), Ok(pm)) => m.dev() != pm.dev() || m.ino() == pm.ino(),
        _ => false,
    }
}

/// Why a source may not be used for a deleting pass, if it may not.
fn source_guard(path: &Path, require_mountpoint: bool, ignore_state: bool) -> Option<String> {
    match std::fs::metadata(path) {
        Err(e) => return Some(format!("{} is missing ({e})", p(path))),
        Ok(m) if !m.is_dir() => return Some(format!("{} is not a directory", p(path))),
        Ok(_) => {}
    }
    if require_mountpoint && !is_mountpoint(path) {
        return Some(format!("{} is not a mountpoint", p(path)));
    }
    let has_content = std::fs::read_dir(path)
        .map(|rd| {
            rd.flatten().any(|e| {
                let n = e.file_name();
                let b = n.as_bytes();
                !(ignore_state && (b.first() == Some(&b'.') || b == b"lost+found"))
            })
        })
        .unwrap_or(false);
    if !has_content {
        return Some(format!("{} is empty", p(path)));
    }
    None
}

/// The device id of a path (`None` when it cannot be read).
pub fn dev_of(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.dev())
}

/// The backup root as it was at the start of a step: its filesystem and
/// its identity marker. Checked again immediately before each deleting
/// transfer and before a batch is committed: a root lazily unmounted (or
/// replaced) meanwhile is another directory, and nothing read from it
/// may delete on the NAS or count as sent.
struct RootId {
    dev: Option<u64>,
    marker: Option<String>,
}

impl RootId {
    fn of(root: &Path, with_marker: bool) -> Result<RootId> {
        Ok(RootId {
            dev: dev_of(root),
            marker: if with_marker {
                Some(backup_core::marker::require_backup_root(root)?.id)
            } else {
                None
            },
        })
    }

    /// Why `root` is no longer what it was, if it is not.
    fn changed(&self, root: &Path) -> Option<String> {
        let now = dev_of(root);
        if now.is_none() || now != self.dev {
            return Some(format!(
                "{} is no longer the filesystem it was at the start (device {} then, {} now): \
                 unmounted or replaced",
                p(root),
                self.dev
                    .map(|d| d.to_string())
                    .unwrap_or_else(|| "?".into()),
                now.map(|d| d.to_string()).unwrap_or_else(|| "none".into())
            ));
        }
        if let Some(id) = &self.marker {
            match backup_core::marker::require_backup_root(root) {
                Ok(m) if &m.id == id => {}
                Ok(m) => {
                    return Some(format!(
                        "{}: identity marker is now id {}, was {id} at the start",
                        p(root),
                        m.id
                    ));
                }
                Err(e) => return Some(backup_core::exit::one_line(&e)),
            }
        }
        None
    }
}

/// What one step did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct StepReport {
    pub step: u8,
    pub full: bool,
    pub full_reasons: Vec<String>,
    pub entries: u64,
    pub sent: u64,
    pub vanished: u64,
    pub not_direct: u64,
    pub unsafe_paths: u64,
    pub rejected: u64,
    pub deletions: u64,
    pub code: i32,
    pub message: Option<String>,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Capacity {
    pub size_bytes: u64,
    pub available_bytes: u64,
}

/// Read the NAS capacity with `df -kP` over ssh, as integers.
pub fn capacity(cfg: &Config, path: &str) -> Result<Capacity> {
    let remote_cmd = format!("df -kP -- {}", shell_quote(OsStr::new(path)));
    let out = Cmd::new(&cfg.ssh)
        .args(cfg.ssh_opts())
        .arg("--")
        .arg(&cfg.remote)
        .arg(remote_cmd)
        .timeout(cfg.connect_timeout + Duration::from_secs(30))
        .run()
        .context("NAS capacity")?;
    parse_df(&out.stdout_str()).context("NAS capacity: unexpected df output")
}

/// The last line of `df -kP`: `FS 1024-blocks Used Available Capacity% Mount`.
pub fn parse_df(text: &str) -> Result<Capacity> {
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .context("empty output")?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let pct = words
        .iter()
        .position(|w| w.ends_with('%'))
        .context("no capacity column")?;
    if pct < 3 {
        anyhow::bail!("too few columns in {line:?}");
    }
    let num = |s: &str| -> Result<u64> {
        s.parse::<u64>()
            .with_context(|| format!("{s:?} is not an integer"))
    };
    let size = num(words[pct - 3])?;
    let avail = num(words[pct - 1])?;
    Ok(Capacity {
        size_bytes: size.checked_mul(1024).context("size overflows")?,
        available_bytes: avail.checked_mul(1024).context("available overflows")?,
    })
}

/// Decide whether this step runs a full pass, and why.
fn full_due(cfg: &Config, step: u8, ledger: &Ledger) -> Result<(bool, Vec<String>, usize)> {
    let lines = ledger.line_count().context("ledger size")?;
    if lines > cfg.ledger_cap {
        warn!(
            "{} holds {lines} lines (cap {}): a full pass replaces it",
            p(ledger.path()),
            cfg.ledger_cap
        );
        if !cfg.dry_run {
            ledger
                .mark_full_sync(&format!("ledger cap: {lines} lines > {}", cfg.ledger_cap))
                .context("marking a full sync")?;
        }
    }
    let reasons = ledger.full_sync_reasons().context("full-sync marker")?;
    let seen = reasons.len();
    let mut why: Vec<String> = reasons.iter().map(|r| format!("marker: {r}")).collect();
    if lines > cfg.ledger_cap && cfg.dry_run {
        why.push(format!("ledger cap: {lines} lines"));
    }
    if step == 1 && cfg.backup_root.join(".force-full-sync").exists() {
        why.push(".force-full-sync flag".into());
    }
    match read_stamp(&cfg.stamp(step)) {
        None => why.push("no full pass recorded yet".into()),
        Some(t) if now_secs().saturating_sub(t) >= cfg.full_every.as_secs() => why.push(format!(
            "last full pass {} days ago (--full-every {} days)",
            now_secs().saturating_sub(t) / 86_400,
            cfg.full_every.as_secs() / 86_400
        )),
        Some(_) => {}
    }
    let full = match cfg.full {
        FullMode::Always => {
            why.insert(0, "--full always".into());
            true
        }
        FullMode::Never => false,
        FullMode::Auto => !why.is_empty(),
    };
    Ok((full, why, seen))
}

/// Dry run a deleting transfer and check it against `--max-delete`.
fn guard_deletions(cfg: &Config, cmd: Cmd) -> Result<DeletePlan> {
    // One line per item, changed or not: millions on a full pass of a
    // large tree, so into an unnamed file (beside the state files when they
    // exist) and counted from there as a stream.
    let dir = Some(cfg.state_dir())
        .filter(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let spool = backup_core::cmd::spool_file(&dir).context("dry run of the full pass")?;
    let out = cmd
        .stdout_into(spool.try_clone().with_context(|| p(&dir))?)
        .max_stdout(DRY_RUN_MAX_OUTPUT)
        .run_any()
        .context("dry run of the full pass")?;
    if !RsyncResult::classify(out.code, &out.stderr).is_success() {
        anyhow::bail!(
            "dry run of the full pass: rsync exited {} ({}): {}",
            out.code,
            RsyncResult::describe(out.code),
            backup_core::log::escape_str(out.stderr.trim())
        );
    }
    let plan = DeletePlan::from_spool(&spool).context("reading the dry run of the full pass")?;
    if let Some(why) = cfg.max_delete.check(&plan) {
        return Err(Exit::refused(format!(
            "full pass refused, nothing sent or deleted: {why}"
        )));
    }
    Ok(plan)
}

/// Run a transfer; rsync's item lines for a finished rsync, its stderr
/// in the error.
fn transfer(cmd: Cmd, what: &str) -> Result<Vec<u8>> {
    let out = cmd.run_any().with_context(|| what.to_string())?;
    nas::refused_by_nas(&out.stderr, what)?;
    let r = RsyncResult::classify(out.code, &out.stderr);
    match &r {
        RsyncResult::Ok => {}
        RsyncResult::Vanished { files } => {
            warn!(
                "{what}: {files} file(s) vanished during the transfer (rsync 24): counted as success"
            );
        }
        _ => {
            anyhow::bail!(
                "{what}: rsync exited {} ({}): {}",
                out.code,
                RsyncResult::describe(out.code),
                backup_core::log::escape_str(out.stderr.trim())
            );
        }
    }
    Ok(out.stdout)
}

/// The flags of an incremental transfer whose every listed entry must be
/// accounted for: every item, changed or not, is itemized.
const LISTED: [&str; 2] = ["-ii", rsync_items::OUT_FORMAT];

/// Check that what rsync itemized accounts for what was listed: each
/// listed entry was sent or found up to date, or has vanished from the
/// source since. An entry listed, still present and not itemized was
/// not sent (`--ignore-missing-args` makes that silent): `Err`, and the
/// batch must not be committed. Returns (accounted for, vanished).
fn check_listed(
    items_out: &[u8],
    base: &Path,
    listed: &[PathBuf],
    what: &str,
) -> Result<(u64, u64)> {
    let seen: std::collections::HashSet<PathBuf> = rsync_items::parse(items_out)
        .iter()
        .filter(|i| !i.is_deletion())
        .map(|i| i.path())
        .collect();
    let (mut ok, mut vanished) = (0u64, 0u64);
    let mut missing = Vec::new();
    for l in listed {
        if seen.contains(l) {
            ok += 1;
            continue;
        }
        match resolve_beneath(base, l) {
            Ok(Resolved::Vanished) if base.is_dir() => vanished += 1,
            _ => missing.push(l),
        }
    }
    if !missing.is_empty() {
        return Err(anyhow::anyhow!(
            "{what}: {} of {} listed entries were neither sent nor reported up to date by rsync \
             (first: {}): not committed",
            missing.len(),
            listed.len(),
            p(missing[0])
        ));
    }
    Ok((ok, vanished))
}

/// A deleting transfer (full pass) held to `bound` deletions by rsync
/// itself (`--max-delete`, exit 25). The deletions it made, counted from
/// its own itemized output, are added to `rep` whatever the outcome.
fn deleting_transfer(
    cfg: &Config,
    cmd: Cmd,
    what: &str,
    bound: Option<u64>,
    rep: &mut StepReport,
) -> Result<u64> {
    let out = cmd.run_any().with_context(|| what.to_string())?;
    nas::refused_by_nas(&out.stderr, what)?;
    let items = rsync_items::parse(&out.stdout);
    let deleted = items.iter().filter(|i| i.is_deletion()).count() as u64;
    rep.deletions += deleted;
    rep.sent += items
        .iter()
        .filter(|i| !i.is_deletion() && i.is_new() && i.name != b"./")
        .count() as u64;
    match RsyncResult::classify(out.code, &out.stderr) {
        RsyncResult::Ok => {}
        RsyncResult::Vanished { files } => warn!(
            "{what}: {files} file(s) vanished during the transfer (rsync 24): counted as success"
        ),
        _ if out.code == 25 => anyhow::bail!(
            "{what}: the source changed since the dry run: rsync stopped deleting at the \
             --max-delete {} bound ({} deletion(s) allowed, {deleted} made; exit 25), the rest \
             of the NAS copy is kept; nothing committed",
            cfg.max_delete,
            bound.map(|b| b.to_string()).unwrap_or_else(|| "?".into())
        ),
        _ => anyhow::bail!(
            "{what}: rsync exited {} ({}) after {deleted} deletion(s): {}",
            out.code,
            RsyncResult::describe(out.code),
            backup_core::log::escape_str(out.stderr.trim())
        ),
    }
    Ok(deleted)
}

/// After a deleting transfer: `Err` (failed) when its source is empty
/// now, so the transfer may have read it empty (emptied between the last
/// check and rsync's start; with `--max-delete off` nothing else bounds
/// that). The deletions made are reported; nothing is committed, and the
/// next full pass is refused by the source guard until the source is back.
fn emptied_during(src: &Path, ignore_state: bool, rep: &StepReport) -> Option<anyhow::Error> {
    source_guard(src, false, ignore_state).map(|_| {
        Exit::err(
            ExitCode::Failed,
            format!(
                "full pass: its source is empty now, it was emptied while the pass ran: \
                 {} deletion(s) made on the NAS; nothing committed",
                rep.deletions
            ),
        )
    })
}

fn nul_list<'a, I: IntoIterator<Item = &'a [u8]>>(names: I) -> Vec<u8> {
    let mut buf = Vec::new();
    for n in names {
        buf.extend_from_slice(n);
        buf.push(0);
    }
    buf
}

/// `A/B/C/`: a NAS directory from its parts, bytes kept.
fn remote_dir(parts: &[&OsStr]) -> OsString {
    let mut s = OsString::new();
    for part in parts {
        s.push(part);
        s.push("/");
    }
    s
}

fn dir_arg(p: &Path) -> OsString {
    let mut s = p.as_os_str().to_os_string();
    s.push("/");
    s
}

fn rel_bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

/// Filter a batch beneath a root: present entries kept, the rest counted.
fn filter_present(root: &Path, rels: Vec<PathBuf>, rep: &mut StepReport) -> Result<Vec<PathBuf>> {
    let mut keep = Vec::new();
    for r in rels {
        match resolve_beneath(root, &r).with_context(|| format!("{}/{}", p(root), p(&r)))? {
            Resolved::Present => keep.push(r),
            Resolved::Vanished => rep.vanished += 1,
            Resolved::Unsafe => {
                rep.unsafe_paths += 1;
                warn!(
                    "{}: a component on the way is a symlink or not a directory; not sent",
                    p(&r)
                );
            }
        }
    }
    Ok(keep)
}

/// Step 1: the backup disk to `pve-dest`.
pub fn step1(cfg: &Config) -> Result<StepReport> {
    let mut rep = StepReport {
        step: 1,
        ..Default::default()
    };
    step1_into(cfg, &mut rep)?;
    Ok(rep)
}

/// The `--max-delete=N` argument for a deleting transfer, when bounded.
fn max_delete_arg(bound: Option<u64>) -> Vec<String> {
    bound
        .map(|b| vec![format!("--max-delete={b}")])
        .unwrap_or_default()
}

fn step1_into(cfg: &Config, rep: &mut StepReport) -> Result<()> {
    let root = &cfg.backup_root;
    if let Err(e) = std::fs::metadata(root) {
        return Err(Exit::refused(format!("backup root {}: {e}", p(root))));
    }
    if cfg.require_mountpoint && !is_mountpoint(root) {
        return Err(Exit::refused(format!(
            "backup root {} is not a mountpoint: nothing sent or deleted",
            p(root)
        )));
    }
    // Contract 13: a root without its marker is not the backup disk.
    let start = RootId::of(root, true)?;
    let ledger = cfg.leg1();
    let (full, why, seen) = full_due(cfg, 1, &ledger)?;
    rep.full = full;
    rep.full_reasons = why.clone();
    let batch = ledger.begin().context("consuming the ledger")?;
    rep.rejected = batch.rejected().len() as u64;
    for r in batch.rejected() {
        warn!(
            "{} line {}: {} ({}), dropped",
            p(batch.inflight_path()),
            r.line,
            escape_bytes(&r.raw),
            r.reason
        );
    }
    let mut rels: Vec<PathBuf> = batch.entries().to_vec();
    rels.sort();
    rels.dedup();
    rep.entries = rels.len() as u64;

    if full {
        info!("step 1: full pass ({})", why.join("; "));
        if let Some(g) = source_guard(root, cfg.require_mountpoint, true) {
            return Err(Exit::refused(format!(
                "full pass refused, nothing sent or deleted: {g}"
            )));
        }
        // Contract 12: the dry run and the transfer read the backup root
        // checked here, through its descriptor (/proc/PID/fd/N): a disk
        // lazily unmounted meanwhile is still what rsync reads, never the
        // bare mountpoint left in its place (with --max-delete off, the
        // only bound then was the re-check, a moment before rsync starts).
        let pin = backup_core::fsutil::open_dir(root).with_context(|| p(root))?;
        let pinned = backup_core::fsutil::fd_path(&pin);
        if let Some(g) = start.changed(&pinned) {
            return Err(Exit::refused(format!(
                "full pass refused, nothing sent or deleted: {g}"
            )));
        }
        let mk = |dry: bool, bound: Option<u64>| {
            let mut c = cfg.rsync_into(&cfg.pve_dest)?.arg("--delete");
            if dry {
                c = c.args(DRY);
            } else {
                c = c.args(max_delete_arg(bound)).arg(rsync_items::OUT_FORMAT);
            }
            for e in STATE_EXCLUDES {
                c = c.arg(format!("--exclude={e}"));
            }
            Ok::<Cmd, anyhow::Error>(
                c.arg("--")
                    .arg(dir_arg(&pinned))
                    .arg(cfg.remote_path(format!("{}/", cfg.pve_dest))),
            )
        };
        let plan = guard_deletions(cfg, mk(true, None)?)?;
        if cfg.dry_run {
            rep.deletions = plan.deletions;
            info!(
                "step 1 (dry run): full pass would delete {} of {} items on the NAS, create {}",
                plan.deletions, plan.existing, plan.new
            );
            return Ok(());
        }
        // Contract 12: the transfer itself is held to the bound (what the
        // dry run measured plus the slack it left), and the source guard
        // is checked again right before it.
        let bound = cfg
            .max_delete
            .allowed(plan.existing)
            .map(|a| a.max(plan.deletions) + plan.rsync_temps);
        if let Some(g) =
            source_guard(root, cfg.require_mountpoint, true).or_else(|| start.changed(root))
        {
            return Err(Exit::refused(format!(
                "full pass refused after its dry run, nothing sent or deleted: {g}"
            )));
        }
        deleting_transfer(cfg, mk(false, bound)?, "full pass", bound, rep)?;
        if let Some(g) = emptied_during(&pinned, true, rep) {
            return Err(g);
        }
        if let Some(g) = start.changed(root) {
            return Err(Exit::refused(format!("full pass: {g}; nothing committed")));
        }
        batch.commit().context("committing the ledger batch")?;
        ledger
            .clear_full_sync(seen)
            .context("clearing the marker")?;
        let _ = std::fs::remove_file(root.join(".force-full-sync"));
        write_stamp(&cfg.stamp(1))?;
        info!(
            "step 1: full pass done, {} created, {} deletion(s) (planned {})",
            rep.sent, rep.deletions, plan.deletions
        );
        return Ok(());
    }

    // Incremental: state files never travel; the rest is checked beneath the root.
    rels.retain(|r| {
        let first = r.components().next();
        !matches!(first, Some(Component::Normal(s)) if s.as_bytes().first() == Some(&b'.'))
    });
    let rels = filter_present(root, rels, rep)?;
    // Entries inside a week directory (`<tree>/<week>/...`) go in one rsync
    // per week, rooted there, so `--link-dest` can point at earlier weeks on
    // the NAS: unchanged files become hard links, not copies.
    let mut weekly: BTreeMap<(PathBuf, String), Vec<PathBuf>> = BTreeMap::new();
    let mut plain = Vec::new();
    for r in rels {
        let comps: Vec<&OsStr> = r.iter().collect();
        if comps.len() >= 2
            && let Some(w) = comps[1].to_str().and_then(backup_core::weeks::parse_week)
        {
            // The week directory itself: all of it, still rooted there.
            let rest: PathBuf = if comps.len() == 2 {
                PathBuf::from(".")
            } else {
                comps[2..].iter().collect()
            };
            weekly
                .entry((PathBuf::from(comps[0]), w.name.clone()))
                .or_default()
                .push(rest);
            continue;
        }
        plain.push(r);
    }
    if cfg.dry_run {
        rep.sent = plain.len() as u64 + weekly.values().map(|v| v.len() as u64).sum::<u64>();
        info!(
            "step 1 (dry run): would send {} entries ({} vanished, {} unsafe, {} rejected)",
            rep.sent, rep.vanished, rep.unsafe_paths, rep.rejected
        );
        return Ok(());
    }
    if !plain.is_empty() {
        let c = cfg
            .rsync_into(&cfg.pve_dest)?
            .args(["--from0", "--files-from=-", "--ignore-missing-args"])
            .args(LISTED)
            .arg("--")
            .arg(dir_arg(root))
            .arg(cfg.remote_path(format!("{}/", cfg.pve_dest)))
            .stdin(nul_list(plain.iter().map(|r| rel_bytes(r))));
        let out = transfer(c, "incremental transfer")?;
        let (sent, vanished) = check_listed(&out, root, &plain, "incremental transfer")?;
        rep.sent += sent;
        rep.vanished += vanished;
    }
    for ((tree, week), files) in &weekly {
        let local_tree = root.join(tree);
        let earlier = earlier_weeks(&local_tree, week);
        let mut c = cfg.rsync_into(&cfg.pve_dest)?.args([
            "--from0",
            "--files-from=-",
            "--ignore-missing-args",
            "--mkpath",
        ]);
        for e in earlier.iter().take(3) {
            c = c.arg(format!("--link-dest=../{e}"));
        }
        let dst = remote_dir(&[
            OsStr::new(&cfg.pve_dest),
            tree.as_os_str(),
            OsStr::new(week),
        ]);
        let src = local_tree.join(week);
        let c = c
            .args(LISTED)
            .arg("--")
            .arg(dir_arg(&src))
            .arg(cfg.remote_path(&dst))
            .stdin(nul_list(files.iter().map(|r| rel_bytes(r))));
        let what = format!("transfer of {}/{week}", p(tree));
        let out = transfer(c, &what)?;
        let (sent, vanished) = check_listed(&out, &src, files, &what)?;
        rep.sent += sent;
        rep.vanished += vanished;
    }
    // What was read must have come from the backup disk of the start: a
    // root unmounted meanwhile reads as a bare directory where everything
    // "vanished".
    if let Some(g) = start.changed(root) {
        return Err(Exit::err(
            ExitCode::Failed,
            format!("{g}: the ledger batch is kept, nothing committed"),
        ));
    }
    batch.commit().context("committing the ledger batch")?;
    info!(
        "step 1: {} sent, {} vanished, {} unsafe, {} rejected",
        rep.sent, rep.vanished, rep.unsafe_paths, rep.rejected
    );
    Ok(())
}

/// Week directories of a local tree older than `week`, newest first.
fn earlier_weeks(tree: &Path, week: &str) -> Vec<String> {
    let Some(this) = backup_core::weeks::parse_week(week) else {
        return Vec::new();
    };
    let mut v: Vec<backup_core::weeks::Week> = std::fs::read_dir(tree)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(backup_core::weeks::parse_week)
                })
                .filter(|w| *w < this)
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.into_iter().rev().map(|w| w.name).collect()
}

/// The leg-2 trees: (local root, NAS destination).
fn leg2_roots(cfg: &Config) -> [(PathBuf, String); 2] {
    [
        (cfg.nfs_root.clone(), cfg.nfs_dest.clone()),
        (cfg.nfs_ssd_root.clone(), cfg.nfs_ssd_dest.clone()),
    ]
}

/// The `direct` trees below a root for a full pass: the paths a direct
/// rule names, globs expanded against the source component by component.
/// Deeper globs (`direct */media`) count too: leaving them out made a full
/// pass (and the marker it clears) skip those trees silently.
fn direct_trees(skip: &SkipList, root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for r in skip.rules().iter().filter(|r| r.route == Route::Direct) {
        let mut cands = vec![PathBuf::new()];
        for pc in &r.pattern {
            let mut next = Vec::new();
            for c in &cands {
                if !pc.contains(['*', '?']) {
                    next.push(c.join(pc));
                    continue;
                }
                let Ok(rd) = std::fs::read_dir(root.join(c)) else {
                    continue;
                };
                for e in rd.flatten() {
                    if backup_core::skiplist::component_matches(pc, &e.file_name()) {
                        next.push(c.join(e.file_name()));
                    }
                }
            }
            cands = next;
        }
        out.extend(cands.into_iter().filter(|c| skip.route(c) == Route::Direct));
    }
    out.sort();
    out.dedup();
    out
}

/// Step 2: the `direct` NFS trees to `nfs-dest` / `nfs-ssd-dest`.
pub fn step2(cfg: &Config) -> Result<StepReport> {
    let mut rep = StepReport {
        step: 2,
        ..Default::default()
    };
    step2_into(cfg, &mut rep)?;
    Ok(rep)
}

fn step2_into(cfg: &Config, rep: &mut StepReport) -> Result<()> {
    // The change log and the state live in the backup root: it must be
    // the backup disk (contract 13), and still be it when the batch is
    // committed and the stamps written (contract 12): a disk unmounted
    // mid-step leaves its bare mountpoint, where they would land.
    let start_root = RootId::of(&cfg.backup_root, true)?;
    let root_gone = || {
        start_root.changed(&cfg.backup_root).map(|g| {
            Exit::err(
                ExitCode::Failed,
                format!(
                    "{g}: the change log batch stays on the backup disk for the next run, \
                     nothing committed"
                ),
            )
        })
    };
    // Each NFS root's filesystem at the start (contract 12).
    let starts: Vec<RootId> = leg2_roots(cfg)
        .iter()
        .map(|(r, _)| RootId {
            dev: dev_of(r),
            marker: None,
        })
        .collect();
    let skip = SkipList::load(&cfg.skip_list).map_err(|e| Exit::usage(e.to_string()))?;
    let ledger = cfg.leg2();
    let (full, why, seen) = full_due(cfg, 2, &ledger)?;
    rep.full = full;
    rep.full_reasons = why.clone();
    let batch = ledger.begin().context("consuming the change log")?;
    rep.rejected = batch.rejected().len() as u64;
    let mut abs: Vec<PathBuf> = batch.entries().to_vec();
    abs.sort();
    abs.dedup();
    rep.entries = abs.len() as u64;

    if full {
        info!("step 2: full pass ({})", why.join("; "));
        let mut refused = Vec::new();
        let mut runs = Vec::new();
        for (i, (root, dest)) in leg2_roots(cfg).into_iter().enumerate() {
            if cfg.require_mountpoint && !is_mountpoint(&root) {
                refused.push(format!("{} is not a mountpoint", p(&root)));
                continue;
            }
            for tree in direct_trees(&skip, &root) {
                let src = root.join(&tree);
                if std::fs::symlink_metadata(&src).is_err() {
                    // Never delete a NAS copy because its source is absent.
                    warn!("{}: absent, its NAS copy is left as it is", p(&src));
                    continue;
                }
                // The names are the tenants' (contract 9): a symlink on the
                // way or in the tree's place must not take the pass out of
                // the tree. The tree is opened without following one and
                // every rsync of it reads that very directory (its
                // /proc/PID/fd path): a tree renamed, replaced by a symlink
                // or mounted over after this check is never what is sent
                // or what decides the deletions.
                let pin = match backup_core::fsutil::open_dir_beneath(&root, &tree) {
                    Ok(Some(fd)) => fd,
                    Ok(None) if tree.iter().count() > 1 => {
                        rep.unsafe_paths += 1;
                        warn!(
                            "{}: a symlink or not a directory, never followed; not sent",
                            p(&src)
                        );
                        continue;
                    }
                    // A tree the skip list names at the top is a service's
                    // directory: in its place a symlink (followed, it sent
                    // the link's target and deleted the NAS copy) or a
                    // file is refused, never skipped quietly.
                    Ok(None) => {
                        refused.push(format!(
                            "{} is a symlink or not a directory: never followed",
                            p(&src)
                        ));
                        continue;
                    }
                    Err(e) => return Err(anyhow::anyhow!("{}: {e}", p(&src))),
                };
                let pinned = backup_core::fsutil::fd_path(&pin);
                if let Some(g) = source_guard(&pinned, false, false) {
                    let g = g.replace(&p(&pinned), &p(&src));
                    refused.push(g);
                    continue;
                }
                let mut excludes = Vec::new();
                let depth = tree.iter().count();
                for r in skip.rules() {
                    // Rules below this tree (globs matched against its
                    // components) of another route stay out of it.
                    if r.route != Route::Direct
                        && r.pattern.len() > depth
                        && skip.route(Path::new(&r.pattern_str())) != Route::Direct
                        && r.pattern
                            .iter()
                            .zip(tree.iter())
                            .all(|(p, c)| backup_core::skiplist::component_matches(p, c))
                    {
                        excludes.push(format!(
                            "--exclude={}",
                            backup_core::skiplist::rsync_pattern(&r.pattern[depth..])
                        ));
                    }
                }
                let dst = remote_dir(&[OsStr::new(&dest), tree.as_os_str()]);
                runs.push((i, src, (pin, pinned), dst, excludes));
            }
        }
        if !refused.is_empty() {
            return Err(Exit::refused(format!(
                "full pass refused, nothing sent or deleted: {}",
                refused.join("; ")
            )));
        }
        let mk =
            |i: usize, src: &Path, dst: &OsStr, ex: &[String], dry: bool, bound: Option<u64>| {
                Ok::<Cmd, anyhow::Error>(
                    cfg.rsync_into(&leg2_roots(cfg)[i].1)?
                        // Live source (contract 6): full-precision time comparison.
                        .args(["--delete", "--mkpath", "--modify-window=-1"])
                        .args(if dry {
                            DRY.as_slice()
                        } else {
                            std::slice::from_ref(&rsync_items::OUT_FORMAT)
                        })
                        .args(max_delete_arg(bound))
                        .args(ex)
                        .arg("--")
                        .arg(dir_arg(src))
                        .arg(cfg.remote_path(dst)),
                )
            };
        let mut total = DeletePlan::default();
        let mut planned = Vec::new();
        for (i, src, (_, pinned), dst, ex) in &runs {
            let plan = guard_deletions(cfg, mk(*i, pinned, dst, ex, true, None)?).map_err(|e| {
                if backup_core::exit::code_of(&e) == ExitCode::Refused {
                    Exit::refused(format!("{}: {e}", p(src)))
                } else {
                    e
                }
            })?;
            // Each tree is held to the bound on its own too (its dry run
            // was checked on its own figures), whatever the slack.
            let own = cfg
                .max_delete
                .allowed(plan.existing)
                .map(|a| a.max(plan.deletions) + plan.rsync_temps);
            planned.push((plan.deletions + plan.rsync_temps, own));
            total.add(plan);
        }
        if cfg.dry_run {
            rep.deletions = total.deletions;
            info!(
                "step 2 (dry run): full pass would delete {} of {} items on the NAS, create {}",
                total.deletions, total.existing, total.new
            );
            return Ok(());
        }
        // Contract 12, as nfs-mirror: each transfer may delete what its dry
        // run measured plus the slack the bound leaves, shared by the whole
        // step (deletions beyond a tree's measured ones use it up), and
        // rsync enforces it (--max-delete, exit 25).
        let mut slack = cfg
            .max_delete
            .allowed(total.existing)
            .map(|a| a.saturating_sub(total.deletions));
        for ((i, src, (_, pinned), dst, ex), (planned, own)) in runs.iter().zip(planned) {
            let (root, _) = &leg2_roots(cfg)[*i];
            let again = source_guard(pinned, false, false)
                .map(|g| g.replace(&p(pinned), &p(src)))
                .or_else(|| {
                    (cfg.require_mountpoint && !is_mountpoint(root))
                        .then(|| format!("{} is not a mountpoint", p(root)))
                })
                .or_else(|| starts[*i].changed(root));
            if let Some(g) = again {
                return Err(Exit::refused(format!(
                    "full pass refused after its dry run, nothing more sent or deleted \
                     ({} deletion(s) made so far): {g}",
                    rep.deletions
                )));
            }
            let bound = match (slack.map(|s| planned + s), own) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let before = rep.deletions;
            let what = format!("full pass of {}", p(src));
            deleting_transfer(
                cfg,
                mk(*i, pinned, dst, ex, false, bound)?,
                &what,
                bound,
                rep,
            )?;
            if let Some(g) = emptied_during(pinned, false, rep) {
                return Err(g);
            }
            if let Some(s) = slack.as_mut() {
                *s = s.saturating_sub((rep.deletions - before).saturating_sub(planned));
            }
        }
        for (i, (root, _)) in leg2_roots(cfg).iter().enumerate() {
            if runs.iter().any(|r| r.0 == i)
                && let Some(g) = starts[i].changed(root)
            {
                return Err(Exit::refused(format!("full pass: {g}; nothing committed")));
            }
        }
        if let Some(e) = root_gone() {
            return Err(e);
        }
        batch.commit().context("committing the change log batch")?;
        ledger
            .clear_full_sync(seen)
            .context("clearing the marker")?;
        write_stamp(&cfg.stamp(2))?;
        info!(
            "step 2: full pass done, {} created, {} deletion(s) (planned {})",
            rep.sent, rep.deletions, total.deletions
        );
        return Ok(());
    }

    // Incremental: route each path, resolve it beneath its root.
    let roots = leg2_roots(cfg);
    // nfs-track logs canonical paths (it canonicalises its --watch roots;
    // fanotify reports real paths): a root configured through a symlink
    // must match them too, or every entry would be dropped as not direct.
    let canon: Vec<Option<PathBuf>> = roots
        .iter()
        .map(|(r, _)| std::fs::canonicalize(r).ok().filter(|c| c != r))
        .collect();
    let mut per_root: Vec<Vec<PathBuf>> = vec![Vec::new(), Vec::new()];
    for a in abs {
        let Some((i, rel)) = roots.iter().enumerate().find_map(|(i, (root, _))| {
            a.strip_prefix(root)
                .ok()
                .or_else(|| canon[i].as_ref().and_then(|c| a.strip_prefix(c).ok()))
                .map(|r| (i, r.to_path_buf()))
        }) else {
            rep.not_direct += 1;
            continue;
        };
        if rel.as_os_str().is_empty()
            || rel.as_os_str() == backup_core::marker::FILE
            || skip.route(&rel) != Route::Direct
        {
            rep.not_direct += 1;
            continue;
        }
        per_root[i].push(rel);
    }
    let had_entries: Vec<bool> = per_root.iter().map(|v| !v.is_empty()).collect();
    let mut sends = Vec::new();
    for (i, rels) in per_root.into_iter().enumerate() {
        let (root, dest) = &roots[i];
        if rels.is_empty() {
            continue;
        }
        if !root.is_dir() {
            // The tree is not there (unmounted): keep the batch for later.
            return Err(Exit::refused(format!(
                "NFS root {} is missing: change log kept",
                p(root)
            )));
        }
        // An unmounted tree is a bare directory: every entry would look
        // vanished and the batch would be committed, losing the changes
        // until the next full pass. Keep the batch instead.
        if cfg.require_mountpoint && !is_mountpoint(root) {
            return Err(Exit::refused(format!(
                "NFS root {} is not a mountpoint: change log kept",
                p(root)
            )));
        }
        let keep = filter_present(root, rels, rep)?;
        if !keep.is_empty() {
            sends.push((root.clone(), dest.clone(), keep));
        }
    }
    if cfg.dry_run {
        rep.sent = sends.iter().map(|s| s.2.len() as u64).sum();
        info!(
            "step 2 (dry run): would send {} entries ({} vanished, {} not direct, {} unsafe)",
            rep.sent, rep.vanished, rep.not_direct, rep.unsafe_paths
        );
        return Ok(());
    }
    for (root, dest, keep) in &sends {
        let c = cfg
            .rsync_into(dest)?
            .args([
                "--from0",
                "--files-from=-",
                "--ignore-missing-args",
                "--mkpath",
                "--modify-window=-1",
            ])
            .args(LISTED)
            .arg("--")
            .arg(dir_arg(root))
            .arg(cfg.remote_path(format!("{dest}/")))
            .stdin(nul_list(keep.iter().map(|r| rel_bytes(r))));
        let what = format!("transfer from {}", p(root));
        let out = transfer(c, &what)?;
        let (sent, vanished) = check_listed(&out, root, keep, &what)?;
        rep.sent += sent;
        rep.vanished += vanished;
    }
    // Every root read must still be the filesystem of the start: one
    // unmounted meanwhile reads as a bare directory where every entry
    // "vanished" (contract 12).
    for (i, (root, _)) in leg2_roots(cfg).iter().enumerate() {
        if had_entries[i]
            && let Some(g) = starts[i].changed(root)
        {
            return Err(Exit::err(
                ExitCode::Failed,
                format!("{g}: the change log batch is kept, nothing committed"),
            ));
        }
    }
    if let Some(e) = root_gone() {
        return Err(e);
    }
    batch.commit().context("committing the change log batch")?;
    info!(
        "step 2: {} sent, {} vanished, {} not direct, {} unsafe, {} rejected",
        rep.sent, rep.vanished, rep.not_direct, rep.unsafe_paths, rep.rejected
    );
    Ok(())
}

/// Run steps, collect reports, write metrics. Returns the exit code.
pub fn run_steps(
    cfg: &Config,
    steps: &[u8],
    metrics: &mut Metrics,
) -> (ExitCode, Vec<StepReport>, Option<Capacity>) {
    let mut code = ExitCode::Ok;
    let mut reports = Vec::new();
    // One ssh call before any step (contract 13): the identity marker of
    // every destination the steps write to, and the NAS capacity. Only
    // for a backup root that is the backup disk: the expected ids are
    // recorded there, and without it every step refuses anyway.
    let dests: Vec<nas::Dest> = steps
        .iter()
        .flat_map(|&s| nas::step_dests(cfg, s))
        .collect();
    // rsync, and the ssh it runs to reach the NAS (rsync would only exit
    // 14 for a missing ssh): absent, no step can run (exit 5).
    let absent = [&cfg.rsync, &cfg.ssh]
        .into_iter()
        .find_map(|prog| backup_core::cmd::require(prog).err())
        .map(|e| e.to_string());
    let root_ok = backup_core::marker::require_backup_root(&cfg.backup_root).is_ok();
    let probe = (root_ok && absent.is_none()).then(|| {
        let req: Vec<(String, Option<String>)> =
            dests.iter().map(|d| (d.path.clone(), None)).collect();
        nas::probe(cfg, &req, &cfg.capacity_path)
    });
    let expected = if root_ok {
        nas::read_ids(cfg)
    } else {
        Ok(Default::default())
    };
    let mut cap = None;
    let mut found: Vec<(nas::Dest, nas::Found)> = Vec::new();
    let mut nas_err: Option<String> = None;
    match probe {
        Some(Ok(pr)) => {
            match pr.capacity {
                Ok(c) => cap = Some(c),
                Err(e) => warn!("{}", backup_core::exit::one_line(&e)),
            }
            found = dests.iter().cloned().zip(pr.found).collect();
        }
        Some(Err(e)) => nas_err = Some(backup_core::exit::one_line(&e)),
        None => {}
    }
    for &s in steps {
        let mut rep = StepReport {
            step: s,
            ..Default::default()
        };
        // Nothing is sent to a destination not recognised.
        let gate = || -> Result<()> {
            if let Some(why) = &absent {
                return Err(Exit::refused(why.clone()));
            }
            if !root_ok {
                backup_core::marker::require_backup_root(&cfg.backup_root)?;
            }
            if let Some(e) = &nas_err {
                return Err(anyhow::anyhow!("{e}: nothing sent"));
            }
            let ids = expected.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
            let why: Vec<String> = found
                .iter()
                .filter(|(d, _)| nas::step_dests(cfg, s).contains(d))
                .filter_map(|(d, f)| nas::refusal(d, f, ids.get(d.role)))
                .collect();
            if !why.is_empty() {
                return Err(Exit::refused(why.join("; ")));
            }
            Ok(())
        };
        let res = gate().and_then(|()| {
            if s == 1 {
                step1_into(cfg, &mut rep)
            } else {
                step2_into(cfg, &mut rep)
            }
        });
        if let Err(e) = res {
            let c = backup_core::exit::code_of(&e);
            let msg = backup_core::exit::one_line(&e);
            error!("step {s}: {msg}");
            code = code.merge(c);
            rep.code = c.code();
            rep.message = Some(msg);
        }
        reports.push(rep);
    }
    // Contract 15, after everything was sent: a directory no leg carries
    // fails the night (exit 3) and is counted per root.
    if steps.contains(&1) && steps.contains(&2) {
        code = code.merge(coverage::check(cfg, metrics));
    }
    let _ = fill_metrics(metrics, cfg, code, &reports, cap.as_ref());
    if code == ExitCode::Ok && !cfg.dry_run {
        let _ = write_stamp(&cfg.state_dir().join("last-success"));
    }
    (code, reports, cap)
}

fn fill_metrics(
    m: &mut Metrics,
    cfg: &Config,
    code: ExitCode,
    reports: &[StepReport],
    cap: Option<&Capacity>,
) -> Result<()> {
    let now = now_secs() as f64;
    // push-metric (--job offsite-backup-sync --prefix offsite_sync) sets
    // this too, from systemd's view (2 when killed); the same name here
    // keeps a hand run's metrics file complete.
    m.gauge(
        "offsite_sync_last_status",
        "Result of the last offsite sync: 0 ok, 1 failed, 2 aborted.",
        f64::from(code.status_metric()),
    )?;
    if code == ExitCode::Ok {
        // Only after a fully successful run (docs/compatibility.md, bug 16).
        m.gauge(
            "backup_last_success_timestamp",
            "Unix time of the last fully successful offsite sync.",
            now,
        )?;
    }
    for r in reports {
        let step = r.step.to_string();
        let l = [("step", step.as_str())];
        m.gauge_with(
            "offsite_sync_sent_entries",
            "Ledger entries sent (incremental) or items created (full pass) by the last run.",
            &l,
            r.sent as f64,
        )?;
        m.gauge_with(
            "offsite_sync_vanished_entries",
            "Ledger entries dropped because the file had vanished.",
            &l,
            r.vanished as f64,
        )?;
        m.gauge_with(
            "offsite_sync_unsafe_entries",
            "Ledger entries refused because a component on the way is a symlink.",
            &l,
            r.unsafe_paths as f64,
        )?;
        m.gauge_with(
            "offsite_sync_deleted_items",
            "Items the last run's full pass deleted on the NAS, counted from rsync's own output (also when it failed).",
            &l,
            r.deletions as f64,
        )?;
        m.gauge_with(
            "offsite_sync_full_pass",
            "1 when the last run of this step was a full pass.",
            &l,
            if r.full { 1.0 } else { 0.0 },
        )?;
        if let Some(t) = read_stamp(&cfg.stamp(r.step)) {
            m.gauge_with(
                "offsite_sync_last_full_success_timestamp",
                "Unix time of the last successful full pass.",
                &l,
                t as f64,
            )?;
        }
    }
    for (name, l) in [("changed-files", cfg.leg1()), ("nfs-changes", cfg.leg2())] {
        if let Ok(n) = l.line_count() {
            m.gauge_with(
                "offsite_sync_ledger_lines",
                "Lines pending in a ledger (including its inflight part).",
                &[("ledger", name)],
                n as f64,
            )?;
        }
    }
    if let Some(c) = cap {
        m.gauge(
            "offsite_dest_size_bytes",
            "Size of the NAS filesystem (df -kP, read before sending).",
            c.size_bytes as f64,
        )?;
        m.gauge(
            "offsite_dest_available_bytes",
            "Available bytes on the NAS filesystem (df -kP, read before sending).",
            c.available_bytes as f64,
        )?;
        m.gauge(
            "offsite_dest_capacity_timestamp_seconds",
            "Unix time the NAS capacity was last read.",
            now,
        )?;
    }
    Ok(())
}

/// `offsite-sync status`.
#[derive(Debug, serde::Serialize)]
pub struct Status {
    pub ledgers: Vec<LedgerStatus>,
    pub last_full_step1: Option<u64>,
    pub last_full_step2: Option<u64>,
    pub last_success: Option<u64>,
    pub nas: Option<Capacity>,
    pub nas_error: Option<String>,
}

#[derive(Debug, serde::Serialize)]
pub struct LedgerStatus {
    pub path: String,
    pub pending_lines: u64,
    pub inflight: bool,
    pub full_sync_needed: bool,
    pub reasons: Vec<String>,
}

pub fn status(cfg: &Config, probe_nas: bool) -> Result<Status> {
    let mut ledgers = Vec::new();
    for l in [cfg.leg1(), cfg.leg2()] {
        ledgers.push(LedgerStatus {
            path: p(l.path()),
            pending_lines: l.line_count().context("ledger")?,
            inflight: l.inflight_path().exists(),
            full_sync_needed: l.full_sync_needed(),
            reasons: l.full_sync_reasons().unwrap_or_default(),
        });
    }
    let (nas, nas_error) = if probe_nas {
        match capacity(cfg, &cfg.capacity_path) {
            Ok(c) => (Some(c), None),
            Err(e) => (None, Some(backup_core::exit::one_line(&e))),
        }
    } else {
        (None, None)
    };
    Ok(Status {
        ledgers,
        last_full_step1: read_stamp(&cfg.stamp(1)),
        last_full_step2: read_stamp(&cfg.stamp(2)),
        last_success: read_stamp(&cfg.state_dir().join("last-success")),
        nas,
        nas_error,
    })
}

/// `offsite-sync init`: give the backup root its identity marker and,
/// unless `local`, each NAS destination its own (contract 13), recording
/// the NAS ids this backup disk expects. Idempotent: an existing marker of
/// the same role is kept (and adopted when none is recorded); a different
/// one is never overwritten (exit 5).
pub fn init(cfg: &Config, local: bool) -> Result<()> {
    use backup_core::marker::{self, Init, ROLE_BACKUP_ROOT};
    let root = &cfg.backup_root;
    if cfg.require_mountpoint && !is_mountpoint(root) {
        return Err(Exit::refused(format!(
            "backup root {} is not a mountpoint: no marker written",
            p(root)
        )));
    }
    if cfg.dry_run {
        // Contract 11: say what would be done, change nothing.
        match marker::read(root)? {
            Some(m) => info!(
                "{}: identified as {:?} (id {}): left as it is (dry run)",
                p(root),
                m.role,
                m.id
            ),
            None => info!("{}: would write a backup-root marker (dry run)", p(root)),
        }
    } else {
        match marker::init(root, ROLE_BACKUP_ROOT)? {
            Init::Created(m) => info!("{}: backup-root marker written (id {})", p(root), m.id),
            Init::Existing(m) => info!(
                "{}: already initialised (id {}, created {}): left as it is",
                p(root),
                m.id,
                m.created
            ),
        }
    }
    if local {
        return Ok(());
    }
    nas::init(cfg)
}
