//! offsite-sync: the backup disk and the `direct` NFS trees to the NAS.
//!
//! Step 1 consumes `.changed-files` (leg 1, relative to the backup root),
//! step 2 `.nfs-changes.log` (leg 2, absolute paths) by the core ledger
//! protocol: the batch is committed (its inflight file deleted) only after
//! the transfer succeeded, so a failure or a kill at any instant loses no
//! entry. Full passes (`--delete`) run when due, asked for or marked, and
//! are guarded like nfs-mirror: a missing, unmounted or empty source never
//! deletes anything on the NAS, and a dry run bounds the deletions.

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
    "/lost+found/",
    "/anca-elements/",
];

/// Cap on a full pass's dry-run item list (spooled to disk): every item is
/// listed, about 160 million lines of 100 bytes.
const DRY_RUN_MAX_OUTPUT: u64 = 16 << 30;
/// The flags of a guard's dry run (every item listed, changed or not).
const DRY: [&str; 3] = ["--dry-run", "-ii", rsync_items::OUT_FORMAT];

/// Modes the NAS user can create (behaviour.md 13, 2026-04-06).
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

    fn remote_path(&self, path: &str) -> String {
        format!("{}:{}", self.remote, path)
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

/// Run a transfer; `Ok(code)` for a finished rsync, rsync's stderr in the error.
fn transfer(cmd: Cmd, what: &str) -> Result<RsyncResult> {
    let out = cmd.run_any().with_context(|| what.to_string())?;
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
    Ok(r)
}

fn nul_list<'a, I: IntoIterator<Item = &'a [u8]>>(names: I) -> Vec<u8> {
    let mut buf = Vec::new();
    for n in names {
        buf.extend_from_slice(n);
        buf.push(0);
    }
    buf
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
        let mk = |dry: bool| {
            let mut c = cfg.rsync_base().arg("--delete");
            if dry {
                c = c.args(DRY);
            }
            for e in STATE_EXCLUDES {
                c = c.arg(format!("--exclude={e}"));
            }
            c.arg("--")
                .arg(dir_arg(root))
                .arg(cfg.remote_path(&format!("{}/", cfg.pve_dest)))
        };
        let plan = guard_deletions(cfg, mk(true))?;
        rep.deletions = plan.deletions;
        if cfg.dry_run {
            info!(
                "step 1 (dry run): full pass would delete {} of {} items on the NAS, create {}",
                plan.deletions, plan.existing, plan.new
            );
            return Ok(rep);
        }
        transfer(mk(false), "full pass")?;
        rep.sent = plan.new;
        batch.commit().context("committing the ledger batch")?;
        ledger
            .clear_full_sync(seen)
            .context("clearing the marker")?;
        let _ = std::fs::remove_file(root.join(".force-full-sync"));
        write_stamp(&cfg.stamp(1))?;
        info!("step 1: full pass done, {} deletion(s)", plan.deletions);
        return Ok(rep);
    }

    // Incremental: state files never travel; the rest is checked beneath the root.
    rels.retain(|r| {
        let first = r.components().next();
        !matches!(first, Some(Component::Normal(s)) if s.as_bytes().first() == Some(&b'.'))
    });
    let rels = filter_present(root, rels, &mut rep)?;
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
        return Ok(rep);
    }
    if !plain.is_empty() {
        let c = cfg
            .rsync_base()
            .args(["--from0", "--files-from=-", "--ignore-missing-args"])
            .arg("--")
            .arg(dir_arg(root))
            .arg(cfg.remote_path(&format!("{}/", cfg.pve_dest)))
            .stdin(nul_list(plain.iter().map(|r| rel_bytes(r))));
        transfer(c, "incremental transfer")?;
        rep.sent += plain.len() as u64;
    }
    for ((tree, week), files) in &weekly {
        let local_tree = root.join(tree);
        let earlier = earlier_weeks(&local_tree, week);
        let mut c = cfg.rsync_base().args([
            "--from0",
            "--files-from=-",
            "--ignore-missing-args",
            "--mkpath",
        ]);
        for e in earlier.iter().take(3) {
            c = c.arg(format!("--link-dest=../{e}"));
        }
        let dst = format!("{}/{}/{}/", cfg.pve_dest, tree.display(), week);
        let c = c
            .arg("--")
            .arg(dir_arg(&local_tree.join(week)))
            .arg(cfg.remote_path(&dst))
            .stdin(nul_list(files.iter().map(|r| rel_bytes(r))));
        transfer(c, &format!("transfer of {}/{week}", p(tree)))?;
        rep.sent += files.len() as u64;
    }
    batch.commit().context("committing the ledger batch")?;
    info!(
        "step 1: {} sent, {} vanished, {} unsafe, {} rejected",
        rep.sent, rep.vanished, rep.unsafe_paths, rep.rejected
    );
    Ok(rep)
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
        for (root, dest) in leg2_roots(cfg) {
            if cfg.require_mountpoint && !is_mountpoint(&root) {
                refused.push(format!("{} is not a mountpoint", p(&root)));
                continue;
            }
            for tree in direct_trees(&skip, &root) {
                let src = root.join(&tree);
                if !src.exists() {
                    // Never delete a NAS copy because its source is absent.
                    warn!("{}: absent, its NAS copy is left as it is", p(&src));
                    continue;
                }
                // Below the top level the names are the tenants' (`*/media`):
                // a symlink there must not take the pass out of the tree.
                if tree.iter().count() > 1
                    && (resolve_beneath(&root, &tree).ok() != Some(Resolved::Present)
                        || !std::fs::symlink_metadata(&src).is_ok_and(|m| m.is_dir()))
                {
                    rep.unsafe_paths += 1;
                    warn!(
                        "{}: a symlink or not a directory, never followed; not sent",
                        p(&src)
                    );
                    continue;
                }
                if let Some(g) = source_guard(&src, false, false) {
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
                        excludes.push(format!("--exclude=/{}", r.pattern[depth..].join("/")));
                    }
                }
                let dst = format!("{}/{}/", dest, tree.display());
                runs.push((src, dst, excludes));
            }
        }
        if !refused.is_empty() {
            return Err(Exit::refused(format!(
                "full pass refused, nothing sent or deleted: {}",
                refused.join("; ")
            )));
        }
        let mk = |src: &Path, dst: &str, ex: &[String], dry: bool| {
            cfg.rsync_base()
                // Live source (contract 6): full-precision time comparison.
                .args(["--delete", "--mkpath", "--modify-window=-1"])
                .args(if dry { DRY.as_slice() } else { &[] })
                .args(ex)
                .arg("--")
                .arg(dir_arg(src))
                .arg(cfg.remote_path(dst))
        };
        let mut total = DeletePlan::default();
        for (src, dst, ex) in &runs {
            total.add(guard_deletions(cfg, mk(src, dst, ex, true)).map_err(|e| {
                if backup_core::exit::code_of(&e) == ExitCode::Refused {
                    Exit::refused(format!("{}: {e}", p(src)))
                } else {
                    e
                }
            })?);
        }
        rep.deletions = total.deletions;
        if cfg.dry_run {
            info!(
                "step 2 (dry run): full pass would delete {} of {} items on the NAS, create {}",
                total.deletions, total.existing, total.new
            );
            return Ok(rep);
        }
        for (src, dst, ex) in &runs {
            transfer(mk(src, dst, ex, false), &format!("full pass of {}", p(src)))?;
        }
        rep.sent = total.new;
        batch.commit().context("committing the change log batch")?;
        ledger
            .clear_full_sync(seen)
            .context("clearing the marker")?;
        write_stamp(&cfg.stamp(2))?;
        info!("step 2: full pass done, {} deletion(s)", total.deletions);
        return Ok(rep);
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
        if rel.as_os_str().is_empty() || skip.route(&rel) != Route::Direct {
            rep.not_direct += 1;
            continue;
        }
        per_root[i].push(rel);
    }
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
        let keep = filter_present(root, rels, &mut rep)?;
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
        return Ok(rep);
    }
    for (root, dest, keep) in &sends {
        let c = cfg
            .rsync_base()
            .args([
                "--from0",
                "--files-from=-",
                "--ignore-missing-args",
                "--mkpath",
                "--modify-window=-1",
            ])
            .arg("--")
            .arg(dir_arg(root))
            .arg(cfg.remote_path(&format!("{dest}/")))
            .stdin(nul_list(keep.iter().map(|r| rel_bytes(r))));
        transfer(c, &format!("transfer from {}", p(root)))?;
        rep.sent += keep.len() as u64;
    }
    batch.commit().context("committing the change log batch")?;
    info!(
        "step 2: {} sent, {} vanished, {} not direct, {} unsafe, {} rejected",
        rep.sent, rep.vanished, rep.not_direct, rep.unsafe_paths, rep.rejected
    );
    Ok(rep)
}

/// Run steps, collect reports, write metrics. Returns the exit code.
pub fn run_steps(
    cfg: &Config,
    steps: &[u8],
    metrics: &mut Metrics,
) -> (ExitCode, Vec<StepReport>, Option<Capacity>) {
    let mut code = ExitCode::Ok;
    let mut reports = Vec::new();
    // rsync, and the ssh it runs to reach the NAS (rsync would only exit
    // 14 for a missing ssh): absent, no step can run (exit 5).
    let absent = [&cfg.rsync, &cfg.ssh]
        .into_iter()
        .find_map(|prog| backup_core::cmd::require(prog).err())
        .map(|e| e.to_string());
    for &s in steps {
        let res = match &absent {
            Some(why) => Err(Exit::refused(why.clone())),
            None if s == 1 => step1(cfg),
            None => step2(cfg),
        };
        match res {
            Ok(r) => reports.push(r),
            Err(e) => {
                let c = backup_core::exit::code_of(&e);
                let msg = backup_core::exit::one_line(&e);
                error!("step {s}: {msg}");
                code = code.merge(c);
                reports.push(StepReport {
                    step: s,
                    code: c.code(),
                    message: Some(msg),
                    ..Default::default()
                });
            }
        }
    }
    let cap = if cfg.dry_run || absent.is_some() {
        None
    } else {
        match capacity(cfg, &cfg.capacity_path) {
            Ok(c) => Some(c),
            Err(e) => {
                // With nothing sent, this ssh call was the only contact
                // with the NAS: a NAS that cannot be reached must not be
                // reported as a successful night (the old probe failed the
                // run too). After a transfer it is only a capacity gap.
                let contacted = reports.iter().any(|r| r.sent > 0 || r.full);
                if code == ExitCode::Ok && !contacted {
                    error!("NAS not reachable: {}", backup_core::exit::one_line(&e));
                    code = ExitCode::Failed;
                } else {
                    warn!("{}", backup_core::exit::one_line(&e));
                }
                None
            }
        }
    };
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
        // Only after a fully successful run (bug 16).
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
            "Size of the NAS filesystem (df -kP).",
            c.size_bytes as f64,
        )?;
        m.gauge(
            "offsite_dest_available_bytes",
            "Available bytes on the NAS filesystem (df -kP).",
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

/// `offsite-sync coverage`: every top-level NFS dir with its one route.
#[derive(Debug, serde::Serialize)]
pub struct CoverageRow {
    pub root: String,
    pub name: String,
    pub route: Route,
    pub exceptions: Vec<(String, Route)>,
}

pub fn coverage(cfg: &Config) -> Result<Vec<CoverageRow>> {
    let skip = SkipList::load(&cfg.skip_list).map_err(|e| Exit::usage(e.to_string()))?;
    let mut rows = Vec::new();
    for root in [&cfg.nfs_root, &cfg.nfs_ssd_root] {
        let Ok(rd) = std::fs::read_dir(root) else {
            warn!("{}: cannot list, skipped", p(root));
            continue;
        };
        let mut names: Vec<String> = rd
            .flatten()
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let cov = skip
            .coverage(names.iter().map(String::as_str))
            .map_err(|e| Exit::usage(format!("{}: overlapping routes: {e}", p(&cfg.skip_list))))?;
        for c in cov {
            rows.push(CoverageRow {
                root: p(root),
                name: c.name,
                route: c.route,
                exceptions: c.exceptions,
            });
        }
    }
    Ok(rows)
}

/// `offsite-sync init`: give the backup root its identity marker
/// (contract 13). Idempotent: an existing marker of the same role is kept.
pub fn init(cfg: &Config, local: bool) -> Result<()> {
    use backup_core::marker::{self, Init, ROLE_BACKUP_ROOT};
    let root = &cfg.backup_root;
    if cfg.require_mountpoint && !is_mountpoint(root) {
        return Err(Exit::refused(format!(
            "backup root {} is not a mountpoint: no marker written",
            p(root)
        )));
    }
    match marker::init(root, ROLE_BACKUP_ROOT)? {
        Init::Created(m) => info!("{}: backup-root marker written (id {})", p(root), m.id),
        Init::Existing(m) => info!(
            "{}: already initialised (id {}, created {}): left as it is",
            p(root),
            m.id,
            m.created
        ),
    }
    if !local {
        return Err(Exit::usage(
            "init of the NAS destinations is not built yet: use --local",
        ));
    }
    Ok(())
}
