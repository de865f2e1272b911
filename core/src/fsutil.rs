//! Small filesystem helpers shared by every tool.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

/// fsync the directory holding `path` so a rename or unlink is durable.
pub fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// Write a file atomically: temp file beside it, fsync, rename, fsync dir.
/// Mode 0644 (metrics, stamps); see [`write_atomic_mode`] for secrets.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    write_atomic_mode(path, data, 0o644)
}

/// [`write_atomic`] with the file's permission bits (0600 for files that
/// hold secrets, such as a firewall configuration). The mode is set on the
/// temp file before any byte is written, whatever the umask.
pub fn write_atomic_mode(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res?;
    sync_dir(path);
    Ok(())
}

/// Open the directory `dir` as an `O_PATH` descriptor (following a
/// symlink: for paths that are configuration, such as a tree's root).
pub fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Open the directory `name` in `dir` as an `O_PATH` descriptor, never
/// following a symlink; `Err` is the errno (`LOOP` or `NOTDIR` for a
/// symlink or a non-directory, `NOENT` when gone; a name with a NUL byte
/// is `INVAL`).
pub fn open_dir_at(dir: &OwnedFd, name: &[u8]) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// The directory `rel` (relative, no `..`) beneath `root`, opened without
/// following a symlink on the way or at its end (contract 9): `Ok(None)`
/// when a component is a symlink, not a directory, or gone. A command that
/// reads the tree through [`fd_path`] reads the very directory this
/// opened, whatever is renamed, linked or mounted at its name afterwards
/// or whether its filesystem was lazily unmounted (contract 12: the guard
/// checked what the action reads).
pub fn open_dir_beneath(root: &Path, rel: &Path) -> io::Result<Option<OwnedFd>> {
    let mut dir = open_dir(root)?;
    for c in rel.components() {
        let Component::Normal(c) = c else {
            return Ok(None);
        };
        match open_dir_at(&dir, c.as_bytes()) {
            Ok(fd) => dir = fd,
            Err(Errno::NOENT) | Err(Errno::LOOP) | Err(Errno::NOTDIR) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Some(dir))
}

/// `/proc/PID/fd/N` of this process's descriptor: a path another process
/// (rsync, run as the same user) resolves to the open directory itself.
pub fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        fd.as_raw_fd()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secrets_get_their_mode_and_nothing_is_left_beside_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("config.xml");
        write_atomic_mode(&p, b"<pfsense/>", 0o600).expect("write");
        let meta = std::fs::metadata(&p).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&p).expect("read"), b"<pfsense/>");
        write_atomic(&p, b"new").expect("overwrite");
        assert_eq!(std::fs::read(&p).expect("read"), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    #[test]
    fn a_pinned_directory_is_read_through_its_descriptor_and_symlinks_are_refused() {
        let d = tempfile::tempdir().expect("tmp");
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("tree")).expect("mkdir");
        std::fs::write(root.join("tree/f"), "x").expect("w");
        std::fs::create_dir_all(d.path().join("host")).expect("mkdir");
        std::os::unix::fs::symlink(d.path().join("host"), root.join("link")).expect("ln");
        let fd = open_dir_beneath(&root, Path::new("tree"))
            .expect("open")
            .expect("a directory");
        assert!(
            open_dir_beneath(&root, Path::new("link"))
                .expect("open")
                .is_none()
        );
        assert!(
            open_dir_beneath(&root, Path::new("gone"))
                .expect("open")
                .is_none()
        );
        assert!(
            open_dir_beneath(&root, Path::new("tree/f"))
                .expect("open")
                .is_none()
        );
        // Renamed and replaced by a symlink: the descriptor still reads the tree.
        std::fs::rename(root.join("tree"), root.join("old")).expect("mv");
        std::os::unix::fs::symlink(d.path().join("host"), root.join("tree")).expect("ln");
        assert!(fd_path(&fd).join("f").is_file());
    }
}
