//! Identity markers of the NAS destinations (contract 13) and the one ssh
//! call a run makes before sending: it reads the marker of every
//! destination the run will write to and the NAS capacity (`df -kP`).
//!
//! `offsite-sync init` writes a marker (random id, creation time, role)
//! into each NAS destination, created atomically on the NAS (a temp file
//! hard-linked into place: `ln` without `-f` never replaces one), and
//! records the ids it expects in the backup root's state directory
//! (`.offsite-sync/nas-ids`). A run refuses (exit 5) a destination whose
//! marker is missing (the NAS volume not mounted: a bare directory) or is
//! not the recorded one.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use backup_core::cmd::{Cmd, shell_quote};
use backup_core::exit::Exit;
use backup_core::info;
use backup_core::log::p;
use backup_core::marker::{FILE, MAX_LEN, Marker};

use crate::{Capacity, Config, parse_df};

pub const ROLE_PVE: &str = "nas-pve-backup";
pub const ROLE_NFS: &str = "nas-nfs";
pub const ROLE_NFS_SSD: &str = "nas-nfs-ssd";

/// A NAS destination: its flag, role and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dest {
    pub flag: &'static str,
    pub role: &'static str,
    pub path: String,
}

/// Every NAS destination of the configuration.
pub fn all_dests(cfg: &Config) -> Vec<Dest> {
    vec![
        Dest {
            flag: "--pve-dest",
            role: ROLE_PVE,
            path: cfg.pve_dest.clone(),
        },
        Dest {
            flag: "--nfs-dest",
            role: ROLE_NFS,
            path: cfg.nfs_dest.clone(),
        },
        Dest {
            flag: "--nfs-ssd-dest",
            role: ROLE_NFS_SSD,
            path: cfg.nfs_ssd_dest.clone(),
        },
    ]
}

/// The destinations a step writes to.
pub fn step_dests(cfg: &Config, step: u8) -> Vec<Dest> {
    all_dests(cfg)
        .into_iter()
        .filter(|d| (step == 1) == (d.role == ROLE_PVE))
        .collect()
}

/// What the NAS side prints when a destination's marker check before a
/// transfer fails.
pub const REFUSED_TAG: &str = "offsite-sync: NAS destination refused";

/// The id recorded for the destination at `path` (refused when none).
pub fn expected_id(cfg: &Config, path: &str) -> Result<String> {
    let d = all_dests(cfg)
        .into_iter()
        .find(|d| d.path == path)
        .with_context(|| format!("{path}: not a configured NAS destination"))?;
    read_ids(cfg)?.remove(d.role).ok_or_else(|| {
        Exit::refused(format!(
            "NAS destination {} ({}): no identity recorded for role {}: run `offsite-sync init` once",
            d.path, d.flag, d.role
        ))
    })
}

/// `Err` (refused, exit 5) when the NAS refused a transfer because the
/// destination's marker was missing or different right before it.
pub fn refused_by_nas(stderr: &str, what: &str) -> Result<()> {
    match stderr.lines().find(|l| l.contains(REFUSED_TAG)) {
        Some(l) => Err(Exit::refused(format!(
            "{what}: {}: nothing sent",
            l.trim()
                .trim_start_matches(REFUSED_TAG)
                .trim_start_matches(": ")
        ))),
        None => Ok(()),
    }
}

/// The local record of the NAS markers this backup disk expects.
fn ids_path(cfg: &Config) -> PathBuf {
    cfg.state_dir().join("nas-ids")
}

/// `role=id` lines; `#` comments.
pub fn read_ids(cfg: &Config) -> Result<BTreeMap<String, String>> {
    let path = ids_path(cfg);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(anyhow::anyhow!("{}: {e}", p(&path))),
    };
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((role, id)) = line.split_once('=') else {
            return Err(Exit::refused(format!(
                "{} line {}: expected ROLE=ID, found {line:?}",
                p(&path),
                n + 1
            )));
        };
        out.insert(role.to_string(), id.to_string());
    }
    Ok(out)
}

fn write_ids(cfg: &Config, ids: &BTreeMap<String, String>) -> Result<()> {
    let path = ids_path(cfg);
    let dir = cfg.state_dir();
    std::fs::create_dir_all(&dir).with_context(|| p(&dir))?;
    let mut text = String::from(
        "# NAS identity markers this backup disk sends to (written by `offsite-sync init`)\n",
    );
    for (r, i) in ids {
        text.push_str(&format!("{r}={i}\n"));
    }
    backup_core::fsutil::write_atomic(&path, text.as_bytes()).with_context(|| p(&path))
}

/// What the NAS holds at one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No marker (and none was to be written).
    Missing,
    /// This call wrote it (init).
    Created(Marker),
    Present(Marker),
    /// A file is there but it is not a marker.
    Damaged(String),
    /// init could not write it.
    Error,
}

/// The answer of the one ssh call.
#[derive(Debug)]
pub struct Probe {
    pub found: Vec<Found>,
    pub capacity: Result<Capacity>,
}

/// The remote script: for each destination, its marker (created first
/// when `create` holds one and there is none), then `df -kP` of `cap`.
/// Every path is quoted with [`shell_quote`].
fn script(dests: &[(String, Option<String>)], cap: &str) -> String {
    let mut s = String::from(
        "m() { i=$1; d=$2; c=$3; shift 3; f=\"$d/.backup-pipeline-id\"; s=missing; \
         if [ \"$c\" = create ] && [ ! -e \"$f\" ]; then s=error; \
         if mkdir -p -- \"$d\" && t=\"$f.tmp.$$\" && (set -C; printf '%s\\n' \"$@\" >\"$t\"); then \
         if ln -- \"$t\" \"$f\" 2>/dev/null; then s=created; fi; rm -f -- \"$t\"; fi; fi; \
         if [ \"$s\" != created ] && [ -f \"$f\" ]; then s=present; fi; \
         printf '@@dest %s %s\\n' \"$i\" \"$s\"; \
         if [ \"$s\" = created ] || [ \"$s\" = present ]; then head -c 4097 -- \"$f\"; echo; fi; \
         echo @@end; }\n",
    );
    for (i, (path, create)) in dests.iter().enumerate() {
        // The marker's text as one argument per line: the quoting is for
        // single-line words.
        let lines: Vec<String> = create
            .as_deref()
            .unwrap_or("")
            .lines()
            .map(|l| shell_quote(OsStr::new(l)))
            .collect();
        s.push_str(&format!(
            "m {i} {} {} {}\n",
            shell_quote(OsStr::new(path)),
            if create.is_some() { "create" } else { "check" },
            lines.join(" ")
        ));
    }
    s.push_str(&format!(
        "echo @@df\ndf -kP -- {}\n",
        shell_quote(OsStr::new(cap))
    ));
    s
}

/// Parse the script's output; `None` for a destination it did not report.
fn parse(out: &[u8], n: usize) -> (Vec<Option<Found>>, Option<String>) {
    let text = String::from_utf8_lossy(out);
    let mut found = vec![None; n];
    let mut lines = text.lines();
    let mut df = None;
    while let Some(l) = lines.next() {
        if let Some(rest) = l.strip_prefix("@@dest ") {
            let mut w = rest.split_whitespace();
            let (Some(i), Some(st)) = (w.next().and_then(|x| x.parse::<usize>().ok()), w.next())
            else {
                continue;
            };
            let mut body = String::new();
            for b in lines.by_ref() {
                if b == "@@end" {
                    break;
                }
                body.push_str(b);
                body.push('\n');
            }
            let parsed = || {
                if body.len() > MAX_LEN + 1 {
                    return Err(format!("{} bytes: not a marker", body.len()));
                }
                Marker::parse(body.as_bytes())
            };
            let f = match st {
                "missing" => Found::Missing,
                "error" => Found::Error,
                "created" | "present" => match parsed() {
                    Ok(m) if st == "created" => Found::Created(m),
                    Ok(m) => Found::Present(m),
                    Err(e) => Found::Damaged(e),
                },
                _ => continue,
            };
            if let Some(slot) = found.get_mut(i) {
                *slot = Some(f);
            }
        } else if l == "@@df" {
            df = Some(lines.by_ref().collect::<Vec<_>>().join("\n"));
            break;
        }
    }
    (found, df)
}

/// One ssh call: the markers of `dests` (each created when it has text to
/// create) and the capacity of `cap`. Fails when the NAS did not answer
/// for every destination (unreachable, a broken shell).
pub fn probe(cfg: &Config, dests: &[(String, Option<String>)], cap: &str) -> Result<Probe> {
    let out = Cmd::new(&cfg.ssh)
        .args(cfg.ssh_opts())
        .arg("--")
        .arg(&cfg.remote)
        .arg(script(dests, cap))
        .timeout(cfg.connect_timeout + Duration::from_secs(30))
        .run_any()
        .context("NAS")?;
    let (found, df) = parse(&out.stdout, dests.len());
    let Some(found) = found.into_iter().collect::<Option<Vec<Found>>>() else {
        return Err(anyhow::anyhow!(
            "NAS not reachable or did not answer (ssh exited {}): {}",
            out.code,
            backup_core::log::escape_str(out.stderr.trim())
        ));
    };
    let capacity = match df {
        Some(t) => parse_df(&t).with_context(|| {
            format!(
                "NAS capacity of {cap}: unexpected df output: {}",
                backup_core::log::escape_str(out.stderr.trim())
            )
        }),
        None => Err(anyhow::anyhow!("NAS capacity of {cap}: no df output")),
    };
    Ok(Probe { found, capacity })
}

/// Why a run may not write to `d`, given what the NAS holds there and
/// what this backup disk recorded; `None` when it is the recorded one.
pub fn refusal(d: &Dest, found: &Found, expected: Option<&String>) -> Option<String> {
    let Some(expected) = expected else {
        return Some(format!(
            "NAS destination {} ({}): no identity recorded for role {} in this backup root's \
             .offsite-sync/nas-ids: run `offsite-sync init` once (see --help); nothing sent",
            d.path, d.flag, d.role
        ));
    };
    match found {
        Found::Present(m) | Found::Created(m) if m.role == d.role && &m.id == expected => None,
        Found::Present(m) | Found::Created(m) => Some(format!(
            "NAS destination {}: its identity marker is id {} role {}, expected id {expected} role {}: \
             another repository, nothing sent",
            d.path, m.id, m.role, d.role
        )),
        Found::Missing | Found::Error => Some(format!(
            "NAS destination {}: no identity marker ({FILE}): is the NAS volume mounted? \
             Nothing sent",
            d.path
        )),
        Found::Damaged(e) => Some(format!(
            "NAS destination {}/{FILE}: damaged identity marker: {e}; nothing sent",
            d.path
        )),
    }
}

/// `offsite-sync init` for the NAS: one ssh call gives each destination a
/// marker unless it has one, and the expected ids are recorded locally.
/// A destination whose marker this backup disk has not recorded yet (a new
/// backup disk) is adopted when its role is right. Never overwrites a
/// marker, on the NAS or in the local record.
pub fn init(cfg: &Config) -> Result<()> {
    let mut ids = read_ids(cfg)?;
    let dests = all_dests(cfg);
    let mut req = Vec::new();
    for d in &dests {
        // With an id recorded, a missing marker is not re-created: the
        // NAS volume may not be mounted.
        let create = if ids.contains_key(d.role) || cfg.dry_run {
            None
        } else {
            Some(
                Marker::new(d.role)
                    .map_err(|e| anyhow::anyhow!("random id: {e}"))?
                    .render(),
            )
        };
        req.push((d.path.clone(), create));
    }
    let pr = probe(cfg, &req, &cfg.capacity_path)?;
    let mut refused = Vec::new();
    for (d, f) in dests.iter().zip(&pr.found) {
        match (f, ids.get(d.role).cloned()) {
            (Found::Missing, None) if cfg.dry_run => info!(
                "NAS destination {} ({}): would write a marker of role {} (dry run)",
                d.path, d.flag, d.role
            ),
            (Found::Present(m), None) if cfg.dry_run && m.role == d.role => info!(
                "NAS destination {} ({}): would adopt its marker (id {}) (dry run)",
                d.path, d.flag, m.id
            ),
            (Found::Created(m), _) => {
                info!(
                    "NAS destination {} ({}): marker written (id {}, role {})",
                    d.path, d.flag, m.id, m.role
                );
                ids.insert(d.role.to_string(), m.id.clone());
            }
            (Found::Present(m), None) if m.role == d.role => {
                info!(
                    "NAS destination {} ({}): adopted its existing marker (id {}, created {}): \
                     this backup disk now sends to it",
                    d.path, d.flag, m.id, m.created
                );
                ids.insert(d.role.to_string(), m.id.clone());
            }
            (Found::Present(m), Some(e)) if m.role == d.role && m.id == e => info!(
                "NAS destination {} ({}): already initialised (id {}): left as it is",
                d.path, d.flag, m.id
            ),
            (Found::Present(m), Some(e)) if m.role == d.role => refused.push(format!(
                "NAS destination {}: its marker is id {}, this backup disk recorded id {e}: \
                 another repository, not overwritten",
                d.path, m.id
            )),
            (Found::Present(m), _) => refused.push(format!(
                "NAS destination {}: identified as {:?} (id {}), not {}: not overwritten",
                d.path, m.role, m.id, d.role
            )),
            (Found::Missing, Some(e)) => refused.push(format!(
                "NAS destination {}: no identity marker, but this backup disk recorded id {e}: \
                 is the NAS volume mounted? Not re-created",
                d.path
            )),
            (Found::Missing | Found::Error, _) => refused.push(format!(
                "NAS destination {}: could not write its identity marker (not writable?)",
                d.path
            )),
            (Found::Damaged(e), _) => refused.push(format!(
                "NAS destination {}/{FILE}: damaged identity marker ({e}): not overwritten",
                d.path
            )),
        }
    }
    if !cfg.dry_run {
        write_ids(cfg, &ids)?;
    }
    if !refused.is_empty() {
        return Err(Exit::refused(format!(
            "init: {} (nothing overwritten)",
            refused.join("; ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reads_each_destination_and_the_df_lines() {
        let m = Marker::new(ROLE_NFS).expect("m");
        let out = format!(
            "@@dest 0 missing\n@@end\n@@dest 1 present\n{}\n@@end\n@@df\nFilesystem 1024-blocks Used Available Capacity Mounted on\n/dev/x 100 40 60 40% /\n",
            m.render()
        );
        let (f, df) = parse(out.as_bytes(), 2);
        assert_eq!(f, vec![Some(Found::Missing), Some(Found::Present(m))]);
        let c = parse_df(&df.expect("df")).expect("df parses");
        assert_eq!(c.available_bytes, 60 * 1024);
        let (f, _) = parse(b"@@dest 0 present\njunk\n@@end\n", 2);
        assert!(matches!(f[0], Some(Found::Damaged(_))));
        assert_eq!(f[1], None);
    }

    /// The remote script under a local `sh`: creates once, never replaces.
    #[test]
    fn the_script_creates_a_marker_once_and_never_replaces_one() {
        let d = tempfile::tempdir().expect("tmp");
        let dir = d.path().join("a b/it's");
        let dir_s = dir.display().to_string();
        let run = |create: Option<String>| {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(script(&[(dir_s.clone(), create)], "/"))
                .output()
                .expect("sh");
            parse(&out.stdout, 1).0.remove(0).expect("answered")
        };
        assert_eq!(run(None), Found::Missing);
        assert!(!dir.exists(), "a check creates nothing");
        let m = Marker::new(ROLE_PVE).expect("m");
        assert_eq!(run(Some(m.render())), Found::Created(m.clone()));
        let other = Marker::new(ROLE_PVE).expect("m");
        assert_eq!(run(Some(other.render())), Found::Present(m.clone()));
        assert_eq!(run(None), Found::Present(m));
        // Only the marker: no temp file left.
        assert_eq!(std::fs::read_dir(&dir).expect("ls").count(), 1);
    }

    #[test]
    fn parse_rejects_junk() {
        let (f, _) = parse(b"@@dest 0 present\njunk\n@@end\n", 2);
        assert!(matches!(f[0], Some(Found::Damaged(_))));
        assert_eq!(f[1], None);
    }
}
