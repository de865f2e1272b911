//! `pvc-copy restore NS/PVC --to DIR`: one weekly version copied out of
//! the backup disk with rsync, then every restored entry compared with
//! the copy. Contract 16: read-only on the backup disk, a non-empty
//! target refused unless told, what was written verified.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use backup_core::cmd::{Cmd, RsyncResult};
use backup_core::exit::{Exit, ExitCode};
use backup_core::log::{escape_bytes, p};
use backup_core::{info, warn};
use sha2::{Digest, Sha256};

use crate::cli::RestoreArgs;
use crate::weeks::{self, Version};

pub(crate) const LONG_ABOUT: &str = "\
Copy one weekly version of a claim, BACKUP_ROOT/pvc-data/<week>/<ns>/<pvc>/,
into --to with rsync -aHAX --numeric-ids --open-noatime: hard links,
symlinks (never followed), modes, numeric owners, ACLs and xattrs as the copy
holds them. --to must be absent or an empty directory unless --into-existing
(exit 5); nothing in it is deleted unless --delete. --to may not be on the
backup disk (exit 2).

The backup disk is only read: no lock, ledger, metrics or record is written
under the backup root, and files are opened without updating their access
time. The root must carry its identity marker (exit 5 without it).

Afterwards every entry of the version is compared with its restored
counterpart: regular files by size and SHA-256, symlinks by target, every
entry by type, and all but symlinks by mode and numeric owner; files
hard-linked together in the copy must be so in --to. Each difference is
named. Exit 0 when all are equal; 3 when some differ (the restore ran to the
end, the differing entries are listed), 1 when all differ or rsync failed;
2 for a malformed NS/PVC or week, or one the disk holds no version of.

--dry-run passes rsync's dry run and lists what it would write; nothing is
created or changed, and nothing is verified.";

/// `--week`: a week name or the newest week holding the claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeekSel {
    Latest,
    Week(String),
}

impl WeekSel {
    pub fn parse(s: &str) -> Result<WeekSel, String> {
        if s == "latest" {
            return Ok(WeekSel::Latest);
        }
        backup_core::weeks::parse_week(s)
            .map(|w| WeekSel::Week(w.name))
            .ok_or_else(|| {
                format!("{s:?}: expected an ISO week such as 2026-W48, an old name such as 2026-47, or latest")
            })
    }
}

/// The version `--week` names; exit 2 (with the weeks there are) when the
/// disk holds no copy of the claim that week.
fn pick(a: &RestoreArgs, versions: Vec<Version>) -> anyhow::Result<Version> {
    let names: Vec<String> = versions.iter().map(|v| v.week.name.clone()).collect();
    let found = match &a.week {
        WeekSel::Latest => versions.into_iter().next(),
        WeekSel::Week(w) => versions.into_iter().find(|v| &v.week.name == w),
    };
    found.ok_or_else(|| {
        Exit::usage(format!(
            "{}: no version in week {}; weeks holding it: {}",
            a.claim,
            match &a.week {
                WeekSel::Latest => "latest",
                WeekSel::Week(w) => w,
            },
            names.join(", ")
        ))
    })
}

pub(crate) fn run(a: &RestoreArgs) -> anyhow::Result<ExitCode> {
    let root = &a.backup_root;
    let (guard, versions) = weeks::open(root, &a.claim)?;
    let v = pick(a, versions)?;
    let src = v.dir();
    let to =
        std::path::absolute(&a.to).map_err(|e| Exit::usage(format!("--to {}: {e}", p(&a.to))))?;
    check_target(a, root, &to)?;
    backup_core::cmd::require("rsync").map_err(|e| Exit::refused(e.to_string()))?;
    let snapshot = v
        .source()
        .map(|s| s.snapshot)
        .unwrap_or_else(|| "unrecorded snapshot".into());
    info!(
        "{}restoring {} week {} ({snapshot}) from {} into {}",
        if a.dry_run { "dry run: " } else { "" },
        a.claim,
        v.week.name,
        p(&src),
        p(&to)
    );
    // Contract 12: the disk checked above is the one read from now.
    guard.check().map_err(Exit::refused)?;
    if !a.dry_run {
        std::fs::create_dir_all(&to)
            .map_err(|e| anyhow::anyhow!("cannot create --to {}: {e}", p(&to)))?;
    }
    let out = rsync(a, &src, &to)?;
    if a.dry_run {
        let mut n = 0usize;
        // rsync announces the --to it would create; not an entry.
        let entries = out
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty() && !l.starts_with(b"created directory "));
        for line in entries {
            backup_core::outln!("{}", escape_bytes(line))?;
            n += 1;
        }
        info!(
            "dry run: rsync would write {n} entries into {}; nothing changed",
            p(&to)
        );
        return Ok(ExitCode::Ok);
    }
    let report = verify(&src, &to)?;
    summarize(a, &v, &snapshot, &to, &report)
}

/// `--to` is absent or an empty directory (else `--into-existing`), and
/// not on the backup disk's filesystem.
fn check_target(a: &RestoreArgs, root: &Path, to: &Path) -> anyhow::Result<()> {
    let root_dev = std::fs::metadata(root)
        .map_err(|e| anyhow::anyhow!("backup root {}: {e}", p(root)))?
        .dev();
    let mut near = to;
    while std::fs::symlink_metadata(near).is_err() {
        match near.parent() {
            Some(up) => near = up,
            None => break,
        }
    }
    let near_dev = std::fs::metadata(near)
        .map_err(|e| anyhow::anyhow!("--to {}: cannot read {}: {e}", p(to), p(near)))?
        .dev();
    if near_dev == root_dev {
        return Err(Exit::usage(format!(
            "--to {}: on the backup disk's filesystem; a restore never writes there (expected a directory elsewhere)",
            p(to)
        )));
    }
    match std::fs::symlink_metadata(to) {
        Err(_) => Ok(()),
        Ok(m) if !m.is_dir() => Err(Exit::refused(format!(
            "--to {}: exists and is not a directory (expected an absent or empty directory)",
            p(to)
        ))),
        Ok(_) => {
            let mut rd = std::fs::read_dir(to)
                .map_err(|e| anyhow::anyhow!("--to {}: cannot read: {e}", p(to)))?;
            if rd.next().is_some() && !a.into_existing {
                return Err(Exit::refused(format!(
                    "--to {}: not empty; refusing to restore over it (expected an absent or empty directory, or --into-existing)",
                    p(to)
                )));
            }
            Ok(())
        }
    }
}

/// The rsync argument list: archive with hard links, ACLs, xattrs and
/// numeric ids, the source's access times untouched; deletions only with
/// `--delete`; a dry run itemizes.
pub fn rsync_args(src: &Path, to: &Path, delete: bool, dry_run: bool) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![
        "-aHAX".into(),
        "--numeric-ids".into(),
        "--open-noatime".into(),
    ];
    if delete {
        a.push("--delete".into());
    }
    if dry_run {
        a.push("--dry-run".into());
        a.push("--out-format=%i %n%L".into());
    }
    a.push("--".into());
    let mut s = src.as_os_str().to_os_string();
    s.push("/");
    a.push(s);
    let mut d = to.as_os_str().to_os_string();
    d.push("/");
    a.push(d);
    a
}

/// rsync run to the end (its stdout returned), else exit 1 with its tail.
fn rsync(a: &RestoreArgs, src: &Path, to: &Path) -> anyhow::Result<Vec<u8>> {
    let args = rsync_args(src, to, a.delete, a.dry_run);
    backup_core::debug!("rsync {args:?}");
    let o = Cmd::new("rsync")
        .args(&args)
        .timeout(a.rsync_timeout)
        .run_any()
        .map_err(|e| match backup_core::exit::absent_command(&e) {
            Some(x) => x,
            None => Exit::err(ExitCode::Failed, format!("rsync into {}: {e}", p(to))),
        })?;
    if o.code != 0 {
        let lines: Vec<&str> = o.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        return Err(Exit::err(
            ExitCode::Failed,
            format!(
                "rsync into {} exited {} ({}): {}",
                p(to),
                o.code,
                RsyncResult::describe(o.code),
                backup_core::log::escape_str(&lines[lines.len().saturating_sub(3)..].join(" | "))
            ),
        ));
    }
    Ok(o.stdout)
}

/// One entry of the version that differs in the restored tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// Relative to the version's top, as bytes.
    pub path: Vec<u8>,
    pub why: String,
}

#[derive(Debug, Default)]
pub struct Verified {
    /// Entries of the version compared (the top directory not counted).
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
    pub differences: Vec<Difference>,
}

/// Every entry under `src` compared with the same path under `to`.
pub fn verify(src: &Path, to: &Path) -> anyhow::Result<Verified> {
    let mut v = Verified::default();
    // Copy inode -> restored inode of its first path: hard links kept.
    let mut links: HashMap<(u64, u64), (u64, u64)> = HashMap::new();
    let mut stack: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = src.join(&rel);
        let rd =
            std::fs::read_dir(&dir).map_err(|e| anyhow::anyhow!("reading {}: {e}", p(&dir)))?;
        let mut names: Vec<OsString> = Vec::new();
        for e in rd {
            names.push(
                e.map_err(|e| anyhow::anyhow!("reading {}: {e}", p(&dir)))?
                    .file_name(),
            );
        }
        names.sort();
        for name in names {
            let r = rel.join(&name);
            let (s, d) = (src.join(&r), to.join(&r));
            v.entries += 1;
            let sm = std::fs::symlink_metadata(&s)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", p(&s)))?;
            let why = compare(&s, &sm, &d, &mut links)?;
            if sm.is_dir() {
                stack.push(r.clone());
            } else if sm.is_file() {
                v.files += 1;
                v.bytes += sm.len();
            }
            if let Some(why) = why {
                v.differences.push(Difference {
                    path: r.into_os_string().into_vec(),
                    why,
                });
            }
        }
    }
    v.differences.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(v)
}

fn kind(m: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_symlink() {
        "symlink"
    } else if t.is_dir() {
        "directory"
    } else if t.is_file() {
        "regular file"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() {
        "block device"
    } else {
        "character device"
    }
}

/// Why the restored `d` is not the copy's `s`; `None` when equal.
fn compare(
    s: &Path,
    sm: &std::fs::Metadata,
    d: &Path,
    links: &mut HashMap<(u64, u64), (u64, u64)>,
) -> anyhow::Result<Option<String>> {
    let dm = match std::fs::symlink_metadata(d) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Some("missing".into()));
        }
        Err(e) => return Ok(Some(format!("cannot be read: {e}"))),
    };
    if kind(sm) != kind(&dm) {
        return Ok(Some(format!(
            "is a {}, the copy has a {}",
            kind(&dm),
            kind(sm)
        )));
    }
    if sm.file_type().is_symlink() {
        let readlink = |l: &Path| {
            std::fs::read_link(l)
                .map_err(|e| anyhow::anyhow!("cannot read the symlink {}: {e}", p(l)))
        };
        let (st, dt) = (readlink(s)?, readlink(d)?);
        return Ok((st != dt).then(|| {
            format!(
                "points to {}, the copy's to {}",
                escape_bytes(dt.as_os_str().as_bytes()),
                escape_bytes(st.as_os_str().as_bytes())
            )
        }));
    }
    let mut why = Vec::new();
    if sm.mode() & 0o7777 != dm.mode() & 0o7777 {
        why.push(format!(
            "mode {:04o}, the copy's {:04o}",
            dm.mode() & 0o7777,
            sm.mode() & 0o7777
        ));
    }
    if (sm.uid(), sm.gid()) != (dm.uid(), dm.gid()) {
        why.push(format!(
            "owner {}:{}, the copy's {}:{}",
            dm.uid(),
            dm.gid(),
            sm.uid(),
            sm.gid()
        ));
    }
    if sm.is_file() {
        if sm.len() != dm.len() {
            why.push(format!("size {}, the copy's {}", dm.len(), sm.len()));
        } else {
            let (sh, dh) = (sha256(s)?, sha256(d)?);
            if sh != dh {
                why.push(format!(
                    "content differs (sha256 {}, the copy's {})",
                    hex::encode(dh),
                    hex::encode(sh)
                ));
            }
        }
        if sm.nlink() > 1 {
            let first = links
                .entry((sm.dev(), sm.ino()))
                .or_insert((dm.dev(), dm.ino()));
            if *first != (dm.dev(), dm.ino()) {
                why.push("not hard-linked to the files it is linked to in the copy".into());
            }
        }
    }
    Ok((!why.is_empty()).then(|| why.join("; ")))
}

/// SHA-256 of a file, read without updating its access time when allowed.
fn sha256(path: &Path) -> anyhow::Result<[u8; 32]> {
    let open = |flags| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(path)
    };
    let mut f = open(nix::libc::O_NOATIME)
        .or_else(|_| open(0))
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p(path)))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p(path)))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// The summary on stdout; exit 0, or 3 / 1 naming the differences.
fn summarize(
    a: &RestoreArgs,
    v: &Version,
    snapshot: &str,
    to: &Path,
    r: &Verified,
) -> anyhow::Result<ExitCode> {
    backup_core::outln!(
        "restored {} week {} ({snapshot}) into {}: {} entries, {} files, {} bytes; {} differ from the copy",
        a.claim,
        v.week.name,
        p(to),
        r.entries,
        r.files,
        r.bytes,
        r.differences.len()
    )?;
    for d in &r.differences {
        backup_core::outln!("differs: {}: {}", escape_bytes(&d.path), d.why)?;
    }
    if r.differences.is_empty() {
        info!("verified: every restored entry equals the copy");
        return Ok(ExitCode::Ok);
    }
    let n = r.differences.len();
    let ok = (r.entries as usize).saturating_sub(n);
    let code = ExitCode::from_items(ok, n);
    let named: Vec<String> = r
        .differences
        .iter()
        .take(5)
        .map(|d| escape_bytes(&d.path))
        .collect();
    if n > 5 {
        warn!("{} more differences listed on stdout", n - 5);
    }
    Err(Exit::err(
        code,
        format!(
            "verify: {n} of {} restored entries differ from the copy in week {}: {}{}",
            r.entries,
            v.week.name,
            named.join(", "),
            if n > 5 { ", ..." } else { "" }
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weeks_and_args() {
        assert_eq!(WeekSel::parse("latest"), Ok(WeekSel::Latest));
        assert_eq!(
            WeekSel::parse("2026-W48"),
            Ok(WeekSel::Week("2026-W48".into()))
        );
        assert!(WeekSel::parse("2026-W48").is_ok_and(|w| w == WeekSel::Week("2026-W48".into())));
        assert!(WeekSel::parse("2026-47").is_ok());
        for bad in ["2026-W99", "W48", "newest", ""] {
            assert!(WeekSel::parse(bad).is_err(), "{bad}");
        }
        let s = |v: Vec<OsString>| {
            v.iter()
                .map(|x| x.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        };
        let a = s(rsync_args(Path::new("/b/v"), Path::new("/t"), false, false));
        assert_eq!(
            a,
            [
                "-aHAX",
                "--numeric-ids",
                "--open-noatime",
                "--",
                "/b/v/",
                "/t/"
            ]
        );
        let a = s(rsync_args(Path::new("/b/v"), Path::new("/t"), true, true));
        assert!(a.contains(&"--delete".to_string()) && a.contains(&"--dry-run".to_string()));
    }
}
