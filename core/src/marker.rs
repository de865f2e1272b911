//! Contract 13: identity markers. The backup root and each NAS destination
//! carry a small file written once by an explicit `init` (`offsite-sync
//! init`); a tool refuses (exit 5) a destination whose marker is missing or
//! is not the one it expects, as restic and borg refuse a repository they
//! do not recognise. An unmounted disk is a bare directory without it, so
//! nothing is written there (or read from there as if it were the backup).
//!
//! The file is plain `key=value` text so an operator can `cat` it and a
//! tool can read it over ssh with `cat`:
//!
//! ```text
//! # backup-pipeline identity marker: written once by `offsite-sync init`; do not edit or copy
//! id=5f0c2a9d8e6b4c1a9f3e7d2b6a8c4e10
//! created=1764990000
//! role=backup-root
//! ```

use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::exit::Exit;
use crate::log::p;

/// The marker's file name, at the top of the directory it identifies.
pub const FILE: &str = ".backup-pipeline-id";

/// The role of the backup disk's root.
pub const ROLE_BACKUP_ROOT: &str = "backup-root";

const HEADER: &str =
    "# backup-pipeline identity marker: written once by `offsite-sync init`; do not edit or copy";

/// Upper bound on a marker's size: anything larger is not a marker.
pub const MAX_LEN: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Marker {
    /// 128 random bits, 32 lowercase hex digits.
    pub id: String,
    /// Unix time of the `init` that wrote it.
    pub created: u64,
    /// What it identifies: `backup-root`, `nas-pve-backup`, ...
    pub role: String,
}

impl Marker {
    /// A new marker with a random id.
    pub fn new(role: &str) -> io::Result<Marker> {
        let mut b = [0u8; 16];
        std::fs::File::open("/dev/urandom").and_then(|mut f| {
            use std::io::Read;
            f.read_exact(&mut b)
        })?;
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(Marker {
            id: b.iter().map(|x| format!("{x:02x}")).collect(),
            created,
            role: role.to_string(),
        })
    }

    pub fn render(&self) -> String {
        format!(
            "{HEADER}\nid={}\ncreated={}\nrole={}\n",
            self.id, self.created, self.role
        )
    }

    /// Parse a marker's text; `Err` says what is wrong with it.
    pub fn parse(text: &[u8]) -> Result<Marker, String> {
        if text.len() > MAX_LEN {
            return Err(format!("{} bytes: not a marker", text.len()));
        }
        let text = std::str::from_utf8(text).map_err(|_| "not UTF-8 text".to_string())?;
        let (mut id, mut created, mut role) = (None, None, None);
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(format!("line {line:?}: expected KEY=VALUE"));
            };
            match k {
                "id" => id = Some(v.to_string()),
                "created" => {
                    created = Some(
                        v.parse::<u64>()
                            .map_err(|_| format!("created={v:?}: expected a Unix time"))?,
                    )
                }
                "role" => role = Some(v.to_string()),
                // Later versions may add keys; an unknown one is not damage.
                _ => {}
            }
        }
        let id = id.ok_or("no id= line")?;
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("id={id:?}: expected 32 hex digits"));
        }
        let role = role.ok_or("no role= line")?;
        if role.is_empty() || !role.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(format!("role={role:?}: expected a word"));
        }
        Ok(Marker {
            id,
            created: created.ok_or("no created= line")?,
            role,
        })
    }
}

/// The marker of `dir`, `None` when it has none.
pub fn read(dir: &Path) -> anyhow::Result<Option<Marker>> {
    let path = dir.join(FILE);
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow::anyhow!("{}: {e}", p(&path))),
    };
    Marker::parse(&data)
        .map(Some)
        .map_err(|e| Exit::refused(format!("{}: damaged identity marker: {e}", p(&path))))
}

/// What [`init`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Init {
    Created(Marker),
    /// The directory already had a marker of this role: left as it is.
    Existing(Marker),
}

/// Give `dir` a marker of `role` unless it has one. Never overwrites: a
/// marker of another role, or a damaged one, is refused (exit 5). The file
/// is written beside its place and hard-linked into it, so two `init`s at
/// once cannot both win and a crash leaves no half-written marker.
pub fn init(dir: &Path, role: &str) -> anyhow::Result<Init> {
    if let Some(m) = read(dir)? {
        return if m.role == role {
            Ok(Init::Existing(m))
        } else {
            Err(Exit::refused(format!(
                "{}: already identified as {:?} (id {}): not overwritten",
                p(&dir.join(FILE)),
                m.role,
                m.id
            )))
        };
    }
    let m = Marker::new(role).map_err(|e| anyhow::anyhow!("random id: {e}"))?;
    let tmp = dir.join(format!("{FILE}.tmp.{}", std::process::id()));
    let final_path = dir.join(FILE);
    let res = (|| -> io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(m.render().as_bytes())?;
        f.sync_all()?;
        std::fs::hard_link(&tmp, &final_path)
    })();
    let _ = std::fs::remove_file(&tmp);
    match res {
        Ok(()) => {
            crate::fsutil::sync_dir(&final_path);
            Ok(Init::Created(m))
        }
        // Another init won the race: report what is there now.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => init(dir, role),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", p(&final_path))),
    }
}

fn refuse_missing(root: &Path, what: &str) -> anyhow::Error {
    Exit::refused(format!(
        "{}: no backup-root identity marker ({FILE}){what}: is the backup disk mounted? \
         A new backup disk is initialised once with `offsite-sync init --local`",
        p(root)
    ))
}

fn expect_role(dir: &Path, m: Marker) -> anyhow::Result<Marker> {
    if m.role == ROLE_BACKUP_ROOT {
        Ok(m)
    } else {
        Err(Exit::refused(format!(
            "{}: identified as {:?}, not as the backup root",
            p(&dir.join(FILE)),
            m.role
        )))
    }
}

/// Refuse (exit 5) unless `root` itself carries the backup-root marker.
/// For tools given the backup root (`--backup-root`, nfs-mirror's `--dest`).
pub fn require_backup_root(root: &Path) -> anyhow::Result<Marker> {
    match read(root)? {
        Some(m) => expect_role(root, m),
        None => Err(refuse_missing(root, "")),
    }
}

/// The backup root holding `path` (a directory below it, which may not
/// exist yet): the nearest directory upwards carrying the backup-root
/// marker, without leaving the filesystem `path` is on. A directory on an
/// unmounted backup disk's mountpoint therefore finds none and is refused.
/// For tools given only their own subdirectory (sqlite-dump's `--to`,
/// pfsense-pull's `--dest`).
pub fn find_backup_root(path: &Path) -> anyhow::Result<(PathBuf, Marker)> {
    let abs = std::path::absolute(path).map_err(|e| anyhow::anyhow!("{}: {e}", p(path)))?;
    let mut dir = abs.as_path();
    // Start at the nearest existing ancestor: the tool creates the rest.
    while std::fs::metadata(dir).is_err() {
        match dir.parent() {
            Some(d) => dir = d,
            None => return Err(refuse_missing(path, " in it or above it")),
        }
    }
    loop {
        if let Some(m) = read(dir)? {
            return Ok((dir.to_path_buf(), expect_role(dir, m)?));
        }
        let Some(parent) = dir.parent() else { break };
        let (Ok(a), Ok(b)) = (std::fs::metadata(dir), std::fs::metadata(parent)) else {
            break;
        };
        if a.dev() != b.dev() {
            break;
        }
        dir = parent;
    }
    Err(refuse_missing(
        path,
        " in it or above it on the same filesystem",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::{ExitCode, code_of};

    #[test]
    fn init_writes_once_and_never_overwrites() {
        let d = tempfile::tempdir().expect("tmp");
        let Init::Created(m) = init(d.path(), ROLE_BACKUP_ROOT).expect("init") else {
            panic!("a new directory gets a new marker");
        };
        assert_eq!(
            init(d.path(), ROLE_BACKUP_ROOT).expect("again"),
            Init::Existing(m.clone())
        );
        let e = init(d.path(), "nas-nfs").expect_err("other role");
        assert_eq!(code_of(&e), ExitCode::Refused);
        assert_eq!(read(d.path()).expect("read"), Some(m.clone()));
        assert_eq!(require_backup_root(d.path()).expect("root"), m);
        // Only the marker is left: no temp file beside it.
        assert_eq!(std::fs::read_dir(d.path()).expect("ls").count(), 1);
    }

    #[test]
    fn a_damaged_or_foreign_marker_is_refused() {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::write(d.path().join(FILE), "id=xyz\n").expect("w");
        let e = require_backup_root(d.path()).expect_err("damaged");
        assert_eq!(code_of(&e), ExitCode::Refused);
        assert!(format!("{e}").contains("damaged identity marker"), "{e}");
        let e = init(d.path(), ROLE_BACKUP_ROOT).expect_err("never overwritten");
        assert_eq!(code_of(&e), ExitCode::Refused);
        std::fs::write(
            d.path().join(FILE),
            Marker::new("nas-nfs").expect("m").render(),
        )
        .expect("w");
        let e = require_backup_root(d.path()).expect_err("foreign");
        assert!(format!("{e}").contains("not as the backup root"), "{e}");
    }

    #[test]
    fn a_subdirectory_finds_its_root_and_a_bare_tree_is_refused() {
        let d = tempfile::tempdir().expect("tmp");
        let root = d.path().join("backup");
        std::fs::create_dir_all(root.join("pfsense")).expect("mkdir");
        let e = find_backup_root(&root.join("pfsense")).expect_err("no marker");
        assert_eq!(code_of(&e), ExitCode::Refused);
        assert!(format!("{e}").contains("is the backup disk mounted"), "{e}");
        init(&root, ROLE_BACKUP_ROOT).expect("init");
        let (found, _) = find_backup_root(&root.join("pfsense")).expect("found");
        assert_eq!(found, root);
        // Not created yet: its nearest existing ancestor is searched.
        let (found, _) = find_backup_root(&root.join("sqlite-backup/2026-W48")).expect("found");
        assert_eq!(found, root);
        let e = require_backup_root(&root.join("pfsense")).expect_err("exact");
        assert_eq!(code_of(&e), ExitCode::Refused);
    }

    #[test]
    fn parse_round_trips_and_rejects_junk() {
        let m = Marker::new("nas-pve-backup").expect("m");
        assert_eq!(Marker::parse(m.render().as_bytes()), Ok(m));
        assert!(Marker::parse(b"").is_err());
        assert!(Marker::parse(&vec![b'#'; MAX_LEN + 1]).is_err());
        assert!(
            Marker::parse(b"id=00000000000000000000000000000000\ncreated=x\nrole=a\n").is_err()
        );
    }
}
