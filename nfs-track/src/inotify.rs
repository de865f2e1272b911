//! The inotify backend: a watch per directory. Each new directory is
//! scanned right after its watch is added, so files created before the
//! watch existed are still logged; the watch-descriptor-to-path map follows
//! renames (cookie pairs) and `IN_IGNORED`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::scan::{self, Scope};
use crate::sink::Sink;

const MASK: u32 = libc::IN_CREATE
    | libc::IN_CLOSE_WRITE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_ONLYDIR
    | libc::IN_DONT_FOLLOW
    | libc::IN_EXCL_UNLINK;

pub const WATCH_SYSCTL: &str = "fs.inotify.max_user_watches";

pub struct Inotify {
    fd: OwnedFd,
    roots: Vec<PathBuf>,
    wds: HashMap<i32, PathBuf>,
    /// Directories moved away (`IN_MOVED_FROM`) still waiting for their
    /// `IN_MOVED_TO`, by cookie.
    moves: HashMap<u32, PathBuf>,
    /// Set when a watch could not be added for lack of watches: the
    /// instant from which changes may have been missed.
    pub limit_since: Option<SystemTime>,
    buf: Vec<u8>,
}

enum Added {
    /// A watch we did not have (or had under another path).
    New,
    Known,
    Failed,
}

impl Inotify {
    pub fn new(roots: &[PathBuf]) -> io::Result<Inotify> {
        use rustix::fs::inotify::CreateFlags;
        let fd = rustix::fs::inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC)?;
        Ok(Inotify {
            fd,
            roots: roots.to_vec(),
            wds: HashMap::new(),
            moves: HashMap::new(),
            limit_since: None,
            buf: vec![0u8; 256 * 1024],
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn watches(&self) -> usize {
        self.wds.len()
    }

    fn add_watch(&mut self, dir: &Path, sink: &mut Sink) -> Added {
        if dir.as_os_str().as_bytes().contains(&0) {
            return Added::Failed;
        }
        let flags = rustix::fs::inotify::WatchFlags::from_bits_retain(MASK);
        let wd = match rustix::fs::inotify::add_watch(&self.fd, dir, flags) {
            Ok(wd) => wd,
            Err(e) => {
                self.watch_failed(dir, e, sink);
                return Added::Failed;
            }
        };
        match self.wds.insert(wd, dir.to_path_buf()) {
            Some(old) if old == dir => Added::Known,
            _ => Added::New,
        }
    }

    /// Why `dir` could not be watched: the watch limit (logged once, a
    /// full sync requested), gone meanwhile (nothing to say), or else.
    fn watch_failed(&mut self, dir: &Path, e: rustix::io::Errno, sink: &mut Sink) {
        use rustix::io::Errno;
        match e {
            Errno::NOSPC => {
                sink.counters.watch_limit_hits += 1;
                if self.limit_since.is_none() {
                    self.limit_since = Some(SystemTime::now());
                    let now = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
                        .map(|s| s.trim().to_string())
                        .unwrap_or_else(|_| "?".into());
                    backup_core::error!(
                        "cannot watch {}: inotify watch limit reached ({} watches held); raise the sysctl {WATCH_SYSCTL} (now {now}; in a container, user.max_inotify_watches) or use --backend fanotify; a full sync is requested",
                        backup_core::log::p(dir),
                        self.wds.len()
                    );
                    sink.owe_marker(&format!(
                        "nfs-track: inotify watch limit reached ({WATCH_SYSCTL}), changes in unwatched directories may be missed"
                    ));
                }
            }
            Errno::NOENT | Errno::NOTDIR => {}
            _ => backup_core::warn!("cannot watch {}: {e}", backup_core::log::p(dir)),
        }
    }

    /// Watch `dir` and everything below it, logging files as `scope` says.
    /// For rescans (`rescan_at`), a directory new to us (or found under a
    /// new path) with a new ctime is logged whole.
    fn add_tree(
        &mut self,
        dir: &Path,
        scope: Scope,
        rescan_at: Option<SystemTime>,
        sink: &mut Sink,
    ) {
        if !sink.filter.may_hold(dir) {
            return;
        }
        if let Added::Failed = self.add_watch(dir, sink) {
            return;
        }
        let mut on_dir = |p: &Path, m: &std::fs::DirEntry, parent: Scope| -> Option<Scope> {
            // Another route of the skip list: not watched, not walked.
            if !sink.filter.may_hold(p) {
                return None;
            }
            let added = self.add_watch(p, sink);
            if let Added::Failed = added {
                // Without a watch nothing below is seen later; still log
                // what is there now.
                return Some(parent);
            }
            Some(match rescan_at {
                Some(t) => scan::rescan_scope(parent, m, t, matches!(added, Added::New)),
                None => parent,
            })
        };
        let mut files = Vec::new();
        scan::walk(dir, scope, &mut on_dir, &mut |p, m, s| {
            if s.wants(m) {
                files.push(p);
            }
        });
        for f in files {
            sink.offer(&f);
        }
    }

    /// Initial watches; files logged as `scope` says (the gap rescan).
    pub fn start(&mut self, scope: Scope, sink: &mut Sink) {
        for r in self.roots.clone() {
            match scope {
                Scope::Newer(t) => self.add_tree(&r, scope, Some(t), sink),
                _ => self.add_tree(&r, scope, None, sink),
            }
        }
    }

    /// Re-walk every tree: add missing watches, fix paths, log files whose
    /// ctime is at or after `threshold` (after an overflow or a watch-limit
    /// failure).
    pub fn rescan(&mut self, threshold: SystemTime, sink: &mut Sink) {
        let was_limited = self.limit_since.take();
        for r in self.roots.clone() {
            self.add_tree(&r, Scope::Newer(threshold), Some(threshold), sink);
        }
        if let (Some(_), None) = (was_limited, self.limit_since) {
            backup_core::info!(
                "every directory is watched again ({} watches)",
                self.wds.len()
            );
        }
    }

    /// Rewrite the paths of a directory renamed inside the trees.
    fn rename_prefix(&mut self, old: &Path, new: &Path) {
        for p in self.wds.values_mut() {
            if let Ok(rest) = p.strip_prefix(old) {
                *p = if rest.as_os_str().is_empty() {
                    new.to_path_buf()
                } else {
                    new.join(rest)
                };
            }
        }
    }

    /// A directory moved out of the trees: its watches must go, or their
    /// events would be logged under the old paths.
    fn forget_tree(&mut self, old: &Path) {
        let gone: Vec<i32> = self
            .wds
            .iter()
            .filter(|(_, p)| p.starts_with(old))
            .map(|(&wd, _)| wd)
            .collect();
        for wd in gone {
            // An error: the watch is gone already.
            let _ = rustix::fs::inotify::remove_watch(&self.fd, wd);
            self.wds.remove(&wd);
        }
    }

    /// Read every queued event. Returns true on a queue overflow (the
    /// caller rescans).
    pub fn drain(&mut self, sink: &mut Sink) -> io::Result<bool> {
        // Taken out and put back: handle() needs &mut self.
        let mut buf = std::mem::take(&mut self.buf);
        let read = crate::sys::drain_fd(self.fd.as_raw_fd(), &mut buf, |data| {
            self.handle(data, sink)
        });
        self.buf = buf;
        let overflow = read?;
        // A MOVED_FROM whose MOVED_TO never came: the directory left the
        // trees.
        for (_, old) in std::mem::take(&mut self.moves) {
            self.forget_tree(&old);
        }
        Ok(overflow)
    }

    fn handle(&mut self, data: &[u8], sink: &mut Sink) -> bool {
        let mut overflow = false;
        let mut off = 0;
        const HDR: usize = 16;
        while off + HDR <= data.len() {
            let word = |i: usize| {
                let mut b = [0u8; 4];
                b.copy_from_slice(&data[off + i..off + i + 4]);
                b
            };
            let wd = i32::from_ne_bytes(word(0));
            let mask = u32::from_ne_bytes(word(4));
            let cookie = u32::from_ne_bytes(word(8));
            let len = u32::from_ne_bytes(word(12)) as usize;
            let raw = &data[off + HDR..(off + HDR + len).min(data.len())];
            off += HDR + len;
            let name = &raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())];

            if mask & libc::IN_Q_OVERFLOW != 0 {
                overflow = true;
                continue;
            }
            if mask & libc::IN_IGNORED != 0 {
                self.wds.remove(&wd);
                continue;
            }
            let Some(dir) = self.wds.get(&wd) else {
                continue;
            };
            // An event from inside a directory whose MOVED_FROM is still
            // unpaired: the rename is over and no MOVED_TO came, so the
            // directory left the trees; its watches must not log.
            if !self.moves.is_empty() && mask & libc::IN_MOVED_TO == 0 {
                let out: Vec<PathBuf> = self
                    .moves
                    .values()
                    .filter(|old| dir.starts_with(old))
                    .cloned()
                    .collect();
                if !out.is_empty() {
                    self.moves.retain(|_, old| !out.contains(old));
                    for old in out {
                        self.forget_tree(&old);
                    }
                    continue;
                }
            }
            if name.is_empty() {
                continue;
            }
            let path = dir.join(OsStr::from_bytes(name));
            sink.counters.events += 1;
            if mask & libc::IN_ISDIR != 0 {
                if mask & libc::IN_MOVED_FROM != 0 {
                    self.moves.insert(cookie, path);
                } else if mask & libc::IN_MOVED_TO != 0 {
                    if let Some(old) = self.moves.remove(&cookie) {
                        self.rename_prefix(&old, &path);
                    }
                    // Moved or renamed in: every file inside is new here.
                    self.add_tree(&path, Scope::All, None, sink);
                } else if mask & libc::IN_CREATE != 0 {
                    self.add_tree(&path, Scope::All, None, sink);
                }
                continue;
            }
            sink.file_event(
                &path,
                mask & (libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO) != 0,
                mask & libc::IN_CREATE != 0,
            );
        }
        overflow
    }
}
