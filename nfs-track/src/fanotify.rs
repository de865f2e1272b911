//! The fanotify backend: one filesystem-wide mark per filesystem holding a
//! watched root, reporting the directory file handle and the entry name.
//! Paths are resolved from the handle (`open_by_handle_at` on a root's fd,
//! then the `/proc/self/fd` link); events outside the watched trees are
//! dropped. Setup costs the same on any tree size.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::scan::{self, Scope};
use crate::sink::Sink;

const EVENTS: u64 = libc::FAN_CLOSE_WRITE | libc::FAN_MOVED_TO | libc::FAN_CREATE | libc::FAN_ONDIR;

pub struct Fanotify {
    fd: OwnedFd,
    roots: Vec<PathBuf>,
    /// An open directory on each marked filesystem, by fsid.
    mounts: HashMap<[u8; 8], OwnedFd>,
    /// Directory (fsid + handle) to its path, or None when outside the
    /// trees. Cleared on every directory rename anywhere on the marked
    /// filesystems, the only thing that changes a directory's path.
    cache: HashMap<Vec<u8>, Option<PathBuf>>,
    buf: Vec<u8>,
}

const CACHE_MAX: usize = 65_536;

fn fsid_of(fd: RawFd) -> io::Result<[u8; 8]> {
    // SAFETY: statfs is plain data filled by fstatfs.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fsid_t is two 32-bit ints, 8 bytes, as the kernel reports it.
    Ok(unsafe { std::mem::transmute::<libc::fsid_t, [u8; 8]>(st.f_fsid) })
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

impl Fanotify {
    /// Set up the marks; fails when the kernel or privileges do not allow it.
    pub fn new(roots: &[PathBuf]) -> io::Result<Fanotify> {
        let flags = libc::FAN_CLASS_NOTIF
            | libc::FAN_CLOEXEC
            | libc::FAN_NONBLOCK
            | libc::FAN_REPORT_DFID_NAME;
        // SAFETY: plain syscall; the fd is owned below.
        let fd = unsafe { libc::fanotify_init(flags, (libc::O_RDONLY | libc::O_LARGEFILE) as u32) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by fanotify_init.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut mounts = HashMap::new();
        for r in roots {
            let c = cpath(r)?;
            // SAFETY: c is a valid path.
            let dfd = unsafe {
                libc::open(
                    c.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
                )
            };
            if dfd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: dfd was just opened.
            let dfd = unsafe { OwnedFd::from_raw_fd(dfd) };
            let fsid = fsid_of(dfd.as_raw_fd())?;
            if mounts.contains_key(&fsid) {
                continue;
            }
            // SAFETY: plain syscall with a valid path.
            let rc = unsafe {
                libc::fanotify_mark(
                    fd.as_raw_fd(),
                    libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
                    EVENTS,
                    libc::AT_FDCWD,
                    c.as_ptr(),
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            mounts.insert(fsid, dfd);
        }
        Ok(Fanotify {
            fd,
            roots: roots.to_vec(),
            mounts,
            cache: HashMap::new(),
            buf: vec![0u8; 256 * 1024],
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn marks(&self) -> usize {
        self.mounts.len()
    }

    /// Walk every tree logging files whose ctime is at or after `threshold`
    /// (a directory with a new ctime may have been moved in: all of it).
    pub fn rescan(&mut self, threshold: SystemTime, sink: &mut Sink) {
        for r in &self.roots {
            let mut files = Vec::new();
            scan::walk(
                r,
                Scope::Newer(threshold),
                &mut |p, m, parent| {
                    sink.filter
                        .may_hold(p)
                        .then(|| scan::rescan_scope(parent, m, threshold, true))
                },
                &mut |p, m, s| {
                    if s.wants(m) {
                        files.push(p)
                    }
                },
            );
            for f in files {
                sink.offer(&f);
            }
        }
    }

    fn resolve(&self, fsid: &[u8], handle: &[u8]) -> Option<PathBuf> {
        let mfd = self.mounts.get(fsid)?;
        if handle.len() < 8 {
            return None;
        }
        // struct file_handle wants 4-byte alignment: copy into u32s.
        let mut h = vec![0u32; handle.len().div_ceil(4)];
        // SAFETY: h has at least handle.len() bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                handle.as_ptr(),
                h.as_mut_ptr().cast::<u8>(),
                handle.len(),
            )
        };
        // SAFETY: h holds a complete file_handle as the kernel reported it.
        let fd = unsafe {
            libc::open_by_handle_at(
                mfd.as_raw_fd(),
                h.as_mut_ptr().cast::<libc::file_handle>(),
                libc::O_PATH | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            // ESTALE: the directory is gone already.
            return None;
        }
        // SAFETY: fd was just returned.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let p = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
        // A deleted directory reads as "<path> (deleted)": only a path that
        // still names this very directory is used.
        use std::os::unix::fs::MetadataExt;
        let file = std::fs::File::from(fd);
        let (a, b) = (file.metadata().ok()?, std::fs::symlink_metadata(&p).ok()?);
        (p.is_absolute() && a.dev() == b.dev() && a.ino() == b.ino()).then_some(p)
    }

    fn inside(&self, p: &Path) -> bool {
        self.roots.iter().any(|r| p.starts_with(r))
    }

    pub fn drain(&mut self, sink: &mut Sink) -> io::Result<bool> {
        // Taken out and put back: handle() needs &mut self.
        let mut buf = std::mem::take(&mut self.buf);
        let read = crate::sys::drain_fd(self.fd.as_raw_fd(), &mut buf, |data| {
            self.handle(data, sink)
        });
        self.buf = buf;
        let overflow = read?;
        Ok(overflow)
    }

    fn handle(&mut self, data: &[u8], sink: &mut Sink) -> bool {
        let mut overflow = false;
        let mut off = 0;
        while off + 24 <= data.len() {
            let u32at =
                |i: usize| u32::from_ne_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
            let event_len = u32at(off) as usize;
            let meta_len = u16::from_ne_bytes([data[off + 6], data[off + 7]]) as usize;
            let mut m8 = [0u8; 8];
            m8.copy_from_slice(&data[off + 8..off + 16]);
            let mask = u64::from_ne_bytes(m8);
            let fd = u32at(off + 16) as i32;
            if event_len < 24 || off + event_len > data.len() {
                break;
            }
            let ev = &data[off..off + event_len];
            off += event_len;
            if fd >= 0 {
                // SAFETY: an fd the kernel handed us (not expected with FID reporting).
                unsafe { libc::close(fd) };
            }
            if mask & libc::FAN_Q_OVERFLOW != 0 {
                overflow = true;
                continue;
            }
            // Info records: header (type, pad, len), fsid, file_handle, name.
            let mut i = meta_len;
            let mut found = None;
            while i + 4 <= ev.len() {
                let ty = ev[i];
                let len = u16::from_ne_bytes([ev[i + 2], ev[i + 3]]) as usize;
                if len < 4 || i + len > ev.len() {
                    break;
                }
                if ty == libc::FAN_EVENT_INFO_TYPE_DFID_NAME && len >= 4 + 8 + 8 {
                    found = Some(&ev[i + 4..i + len]);
                }
                i += len;
            }
            let Some(rec) = found else { continue };
            let fsid = &rec[..8];
            let hbytes = u32::from_ne_bytes([rec[8], rec[9], rec[10], rec[11]]) as usize;
            if 8 + 8 + hbytes > rec.len() {
                continue;
            }
            let handle = &rec[8..16 + hbytes];
            let rest = &rec[16 + hbytes..];
            let name = &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())];
            if name.is_empty() || name == b"." {
                continue;
            }
            if mask & libc::FAN_ONDIR != 0 && mask & libc::FAN_MOVED_TO != 0 {
                self.cache.clear();
            }
            let key = [fsid, handle].concat();
            let dir = match self.cache.get(&key) {
                Some(d) => d.clone(),
                None => match self.resolve(fsid, handle) {
                    Some(p) => {
                        let d = self.inside(&p).then_some(p);
                        if self.cache.len() >= CACHE_MAX {
                            self.cache.clear();
                        }
                        self.cache.insert(key, d.clone());
                        d
                    }
                    // Gone or racing a rename: not cached, dropped.
                    None => None,
                },
            };
            let Some(dir) = dir else {
                continue;
            };
            let path = dir.join(OsStr::from_bytes(name));
            sink.counters.events += 1;
            if mask & libc::FAN_ONDIR != 0 {
                if mask & libc::FAN_MOVED_TO != 0 {
                    // Moved or renamed in: every file inside is new here.
                    let mut files = Vec::new();
                    scan::walk(&path, Scope::All, &mut |_, _, s| Some(s), &mut |p, m, s| {
                        if s.wants(m) {
                            files.push(p)
                        }
                    });
                    for f in files {
                        sink.offer(&f);
                    }
                }
                continue;
            }
            sink.file_event(
                &path,
                mask & (libc::FAN_CLOSE_WRITE | libc::FAN_MOVED_TO) != 0,
                mask & libc::FAN_CREATE != 0,
            );
        }
        overflow
    }
}
