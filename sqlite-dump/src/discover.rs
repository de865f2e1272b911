//! Finding SQLite databases in a tenant's tree.
//!
//! Everything is opened relative to an already-open directory with
//! `O_NOFOLLOW`, so a symlink (or a directory swapped for one mid-walk) is
//! never followed out of the tree; a directory on another filesystem is not
//! entered; names stay bytes. A file is a candidate when its first 16 bytes
//! are the SQLite magic, whatever its name (the old script's `*.db` and
//! `-maxdepth 3` filters missed databases silently).

use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Dir, FileType, Mode, OFlags, openat};

/// The 16-byte header every SQLite 3 database file starts with.
pub const MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Sidecar suffixes: never databases of their own, copied with their main file.
pub const SIDECARS: [&str; 3] = ["-wal", "-shm", "-journal"];

/// Deeper than this is reported as a scan error instead of walked: each
/// level holds one open directory.
pub const MAX_DEPTH: usize = 400;

/// A database found under the source root.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Path relative to the source root (bytes, never empty).
    pub rel: PathBuf,
    /// Size of the main file when found.
    pub size: u64,
}

/// Something under the root that was deliberately not dumped.
#[derive(Debug, Clone)]
pub struct Skipped {
    pub rel: PathBuf,
    pub reason: &'static str,
}

/// Something that could not be examined (counted as a failure: a
/// database in it may have been missed).
#[derive(Debug, Clone)]
pub struct ScanError {
    pub rel: PathBuf,
    pub error: String,
}

#[derive(Debug, Default)]
pub struct Discovery {
    pub databases: Vec<Candidate>,
    pub skipped: Vec<Skipped>,
    pub errors: Vec<ScanError>,
    /// Regular files whose header was read.
    pub files_scanned: u64,
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Open a regular file below `dir` read-only without following a symlink,
/// without blocking on a FIFO swapped in, and without touching its atime
/// when allowed (`O_NOATIME` needs ownership or CAP_FOWNER).
pub fn open_file_at(dir: &OwnedFd, name: &OsStr) -> io::Result<File> {
    let base = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = match openat(dir, name, base | OFlags::NOATIME, Mode::empty()) {
        Err(rustix::io::Errno::PERM) => openat(dir, name, base, Mode::empty()),
        r => r,
    }?;
    Ok(File::from(fd))
}

/// Open a directory below `dir` without following a symlink.
pub fn open_dir_at(dir: &OwnedFd, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(openat(dir, name, dir_flags(), Mode::empty())?)
}

/// Open the root of a walk (the root itself may be reached through a
/// symlink the operator typed; nothing below it is).
pub fn open_root(path: &Path) -> io::Result<(OwnedFd, u64)> {
    let fd = openat(
        rustix::fs::CWD,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let dev = fd_meta(&fd)?.dev();
    Ok((fd, dev))
}

fn fd_meta(fd: &OwnedFd) -> io::Result<std::fs::Metadata> {
    // Borrow the fd as a File for std's fstat without giving it away.
    let f = File::from(fd.try_clone()?);
    f.metadata()
}

/// Open the parent directory of `rel` (relative to the root) one component
/// at a time, never following a symlink and never leaving the root's
/// filesystem. Returns the parent fd and the final name.
pub fn open_parent(root: &OwnedFd, dev: u64, rel: &Path) -> io::Result<(OwnedFd, PathBuf)> {
    let mut comps: Vec<&OsStr> = Vec::new();
    for c in rel.components() {
        match c {
            std::path::Component::Normal(n) => comps.push(n),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "relative path with a non-plain component",
                ));
            }
        }
    }
    let Some((last, dirs)) = comps.split_last() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty path"));
    };
    let mut cur = root.try_clone()?;
    for d in dirs {
        let next = open_dir_at(&cur, d)?;
        if fd_meta(&next)?.dev() != dev {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a directory on the way is on another filesystem",
            ));
        }
        cur = next;
    }
    Ok((cur, PathBuf::from(last)))
}

fn is_sidecar(name: &[u8]) -> bool {
    SIDECARS.iter().any(|s| name.ends_with(s.as_bytes()))
}

/// Read up to 16 bytes; true when they are the SQLite magic.
fn has_magic(f: &mut File) -> io::Result<bool> {
    let mut buf = [0u8; 16];
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n == 16 && &buf == MAGIC)
}

/// Walk the tree below an open root.
pub fn discover(root: &OwnedFd, dev: u64) -> Discovery {
    let mut d = Discovery::default();
    let mut rel = PathBuf::new();
    walk(root, dev, &mut rel, 0, &mut d);
    d.databases.sort_by(|a, b| a.rel.cmp(&b.rel));
    d
}

fn entries(dir: &OwnedFd) -> io::Result<Vec<(Vec<u8>, FileType)>> {
    let mut it = Dir::new(dir.try_clone()?)?;
    let mut out = Vec::new();
    while let Some(e) = it.read() {
        let e = e?;
        let name: &CStr = e.file_name();
        let b = name.to_bytes();
        if b == b"." || b == b".." {
            continue;
        }
        out.push((b.to_vec(), e.file_type()));
    }
    Ok(out)
}

fn walk(dir: &OwnedFd, dev: u64, rel: &mut PathBuf, depth: usize, d: &mut Discovery) {
    let list = match entries(dir) {
        Ok(l) => l,
        Err(e) => {
            d.errors.push(ScanError {
                rel: rel.clone(),
                error: format!("cannot read directory: {e}"),
            });
            return;
        }
    };
    for (name, mut ft) in list {
        let os = OsStr::from_bytes(&name);
        rel.push(os);
        if ft == FileType::Unknown {
            // Filesystems without d_type: ask, still without following.
            ft = match rustix::fs::statat(dir, os, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => FileType::from_raw_mode(st.st_mode),
                Err(e) => {
                    d.errors.push(ScanError {
                        rel: rel.clone(),
                        error: format!("cannot stat: {e}"),
                    });
                    rel.pop();
                    continue;
                }
            };
        }
        match ft {
            FileType::Directory => visit_dir(dir, os, dev, rel, depth, d),
            FileType::RegularFile => probe(dir, os, dev, rel, d),
            FileType::Symlink => d.skipped.push(Skipped {
                rel: rel.clone(),
                reason: "symlink (never followed)",
            }),
            // FIFOs, sockets, devices: not databases, and opening one could block.
            _ => {}
        }
        rel.pop();
    }
}

fn visit_dir(
    dir: &OwnedFd,
    name: &OsStr,
    dev: u64,
    rel: &mut PathBuf,
    depth: usize,
    d: &mut Discovery,
) {
    let sub = match open_dir_at(dir, name) {
        Ok(s) => s,
        Err(e)
            if e.raw_os_error() == Some(libc_eloop())
                || e.raw_os_error() == Some(libc_enotdir()) =>
        {
            // Swapped for a symlink or a file since it was listed.
            d.skipped.push(Skipped {
                rel: rel.clone(),
                reason: "changed into a symlink or file during the walk",
            });
            return;
        }
        Err(e) => {
            d.errors.push(ScanError {
                rel: rel.clone(),
                error: format!("cannot open directory: {e}"),
            });
            return;
        }
    };
    match fd_meta(&sub) {
        Ok(m) if m.dev() != dev => {
            d.skipped.push(Skipped {
                rel: rel.clone(),
                reason: "another filesystem (mount point not crossed)",
            });
            return;
        }
        Ok(_) => {}
        Err(e) => {
            d.errors.push(ScanError {
                rel: rel.clone(),
                error: format!("cannot stat directory: {e}"),
            });
            return;
        }
    }
    if depth + 1 > MAX_DEPTH {
        d.errors.push(ScanError {
            rel: rel.clone(),
            error: format!("deeper than {MAX_DEPTH} levels, not walked"),
        });
        return;
    }
    walk(&sub, dev, rel, depth + 1, d);
}

fn libc_eloop() -> i32 {
    rustix::io::Errno::LOOP.raw_os_error()
}
fn libc_enotdir() -> i32 {
    rustix::io::Errno::NOTDIR.raw_os_error()
}

fn probe(dir: &OwnedFd, name: &OsStr, dev: u64, rel: &Path, d: &mut Discovery) {
    let mut f = match open_file_at(dir, name) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc_eloop()) => {
            d.skipped.push(Skipped {
                rel: rel.to_path_buf(),
                reason: "changed into a symlink during the walk",
            });
            return;
        }
        Err(e) => {
            d.errors.push(ScanError {
                rel: rel.to_path_buf(),
                error: format!("cannot open: {e}"),
            });
            return;
        }
    };
    d.files_scanned += 1;
    match has_magic(&mut f) {
        Ok(false) => {}
        Ok(true) => {
            let meta = match f.metadata() {
                Ok(m) => m,
                Err(e) => {
                    d.errors.push(ScanError {
                        rel: rel.to_path_buf(),
                        error: format!("cannot stat: {e}"),
                    });
                    return;
                }
            };
            if !meta.file_type().is_file() {
                return;
            }
            if meta.dev() != dev {
                d.skipped.push(Skipped {
                    rel: rel.to_path_buf(),
                    reason: "another filesystem (bind-mounted file)",
                });
            } else if is_sidecar(name.as_bytes()) {
                d.skipped.push(Skipped {
                    rel: rel.to_path_buf(),
                    reason: "a database named like a -wal/-shm/-journal sidecar",
                });
            } else {
                d.databases.push(Candidate {
                    rel: rel.to_path_buf(),
                    size: meta.size(),
                });
            }
        }
        Err(e) => d.errors.push(ScanError {
            rel: rel.to_path_buf(),
            error: format!("cannot read header: {e}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_names() {
        assert!(is_sidecar(b"x.db-wal"));
        assert!(is_sidecar(b"x.db-shm"));
        assert!(is_sidecar(b"x.db-journal"));
        assert!(!is_sidecar(b"x.db"));
        assert!(!is_sidecar(b"wal"));
    }

    #[test]
    fn magic_needs_all_sixteen_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("short");
        std::fs::write(&p, b"SQLite format 3").expect("write");
        let mut f = File::open(&p).expect("open");
        assert!(!has_magic(&mut f).expect("read"));
        std::fs::write(&p, b"SQLite format 3\0rest").expect("write");
        let mut f = File::open(&p).expect("open");
        assert!(has_magic(&mut f).expect("read"));
    }

    #[test]
    fn open_parent_refuses_symlinked_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("real")).expect("mkdir");
        std::os::unix::fs::symlink("real", dir.path().join("link")).expect("symlink");
        let (root, dev) = open_root(dir.path()).expect("root");
        assert!(open_parent(&root, dev, Path::new("real/x.db")).is_ok());
        assert!(open_parent(&root, dev, Path::new("link/x.db")).is_err());
        assert!(open_parent(&root, dev, Path::new("../x.db")).is_err());
    }
}
