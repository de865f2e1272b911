//! Shared test harness: the built binaries by name, temp trees, and an
//! environment that keeps parallel tests apart (own lock dir per test).
//! Tests only; nothing here is reachable from product code.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The cargo target profile directory the running test lives in
/// (`target/debug` for `target/debug/deps/<test>-<hash>`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir
}

/// Path of a built workspace binary. `make test` builds every binary
/// (`cargo build --workspace --bins`) before running the tests.
pub fn bin(name: &str) -> PathBuf {
    let p = profile_dir().join(name);
    assert!(
        p.is_file(),
        "{} is not built: run `cargo build --workspace --bins` (make test does)",
        p.display()
    );
    p
}

/// A temporary directory plus a private lock dir, removed on drop, and
/// the filesystems mounted inside it (unmounted on drop, before the
/// directory is removed).
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    mounts: std::sync::Mutex<Vec<PathBuf>>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Newest first: a mount inside another comes off before it.
        let mounts = std::mem::take(self.mounts.get_mut().unwrap_or_else(|e| e.into_inner()));
        for m in mounts.into_iter().rev() {
            unmount(&m);
        }
    }
}

/// Run a set-up command; panic with its stderr when it fails.
pub fn must(c: &mut Command) {
    let o = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        o.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Unmount `p`; a mount still busy (a child that outlived its test) is
/// detached so it goes once the last user does.
fn unmount(p: &Path) {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // SAFETY: c is a valid NUL-terminated path; umount2 only reads it.
    if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
        // SAFETY: as above.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("backup-test-")
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir_all(dir.path().join("run")).expect("lock dir");
        Sandbox {
            dir,
            mounts: Default::default(),
        }
    }

    /// An empty ext4 filesystem image of `size` bytes (sparse, no reserved
    /// blocks) at `<sandbox>/<rel>`, for a test to mount where it needs it.
    pub fn ext4_image(&self, rel: &str, size: u64) -> PathBuf {
        let img = self.path().join(rel);
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(size))
            .expect("disk image");
        must(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0"])
                .arg(&img),
        );
        img
    }

    /// A fresh ext4 filesystem of `size` bytes (a sparse image inside the
    /// sandbox on a loop device) mounted at `<sandbox>/<rel>`, unmounted
    /// when the sandbox drops. A test's backup disk is its own filesystem,
    /// as on the host: free-space guards then measure it, never the
    /// machine's /tmp (a CI machine with a nearly full /tmp once made every
    /// pvc-copy test refuse with exit 5).
    pub fn mount_ext4(&self, rel: &str, size: u64) -> PathBuf {
        let img = self.ext4_image(&format!("{}.ext4", rel.replace('/', "_")), size);
        let dir = self.mkdir(rel);
        must(
            Command::new("mount")
                .args(["-o", "loop", "-t", "ext4"])
                .arg(&img)
                .arg(&dir),
        );
        self.mounts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(dir.clone());
        dir
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The backup disk of a test: [`Sandbox::mount_ext4`] plus the
    /// backup-root identity marker `offsite-sync init --local` writes on the
    /// host (contract 13), so tools that write there accept it.
    pub fn mount_backup_disk(&self, rel: &str, size: u64) -> PathBuf {
        let dir = self.mount_ext4(rel, size);
        init_backup_root(&dir);
        dir
    }

    /// `<sandbox>/<rel>`, parents created.
    pub fn mkdir(&self, rel: &str) -> PathBuf {
        let p = self.path().join(rel);
        std::fs::create_dir_all(&p).expect("mkdir");
        p
    }

    /// Write a file (parents created).
    pub fn write(&self, rel: &str, data: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path().join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(&p, data).expect("write");
        p
    }

    /// The lock directory tools use inside this sandbox.
    pub fn lock_dir(&self) -> PathBuf {
        self.path().join("run")
    }

    /// The configuration file every tool run by [`Sandbox::cmd`] reads
    /// (absent unless a test writes it).
    pub fn config_path(&self) -> PathBuf {
        self.path().join("backup-pipeline.conf")
    }

    /// Write the sandbox's configuration file (`KEY=VALUE` lines), which
    /// every tool run by [`Sandbox::cmd`] reads.
    pub fn write_config(&self, pairs: &[(&str, &dyn AsRef<std::ffi::OsStr>)]) -> PathBuf {
        let mut text = String::from("# written by the test\n");
        for (k, v) in pairs {
            text.push_str(&format!("{k}={}\n", v.as_ref().to_string_lossy()));
        }
        let p = self.config_path();
        std::fs::write(&p, text).expect("write the configuration file");
        p
    }

    /// A command for a built binary with this sandbox's lock dir, its own
    /// configuration file, ALLOW_UNMOUNTED_ROOT=1 (a sandbox), no
    /// journal prefixes and no inherited metrics settings.
    pub fn cmd(&self, name: &str) -> Command {
        let mut c = Command::new(bin(name));
        c.env("BACKUP_LOCK_DIR", self.lock_dir())
            .env("BACKUP_PIPELINE_CONFIG", self.config_path())
            .env("ALLOW_UNMOUNTED_ROOT", "1")
            .env_remove("JOURNAL_STREAM")
            .env_remove("METRICS_FILE")
            .env_remove("PUSHGATEWAY_URL");
        c
    }
}

/// Output of a finished command with assertion helpers, so tests read as
/// a description of behaviour.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn of(cmd: &mut Command) -> Run {
        let out = cmd.output().expect("spawn");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
    #[track_caller]
    pub fn succeeds(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
    #[track_caller]
    pub fn fails_with(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "wrong exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
    #[track_caller]
    pub fn stderr_contains(&self, s: &str) -> &Self {
        assert!(
            self.stderr.contains(s),
            "stderr lacks {s:?}:\n{}",
            self.stderr
        );
        self
    }
    #[track_caller]
    pub fn stdout_contains(&self, s: &str) -> &Self {
        assert!(
            self.stdout.contains(s),
            "stdout lacks {s:?}:\n{}",
            self.stdout
        );
        self
    }
}

/// Give `dir` (created if needed) the backup-root identity marker, as
/// `offsite-sync init --local` does on the host.
pub fn init_backup_root(dir: &Path) {
    std::fs::create_dir_all(dir).expect("backup root");
    backup_core::marker::init(dir, backup_core::marker::ROLE_BACKUP_ROOT).expect("marker");
}

/// Names directly in `dir`, sorted, the filesystem's `lost+found` left
/// out: what a test sees on a mountpoint (bare or mounted).
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lost+found")
        .collect();
    v.sort();
    v
}

/// Everything under `dir` (relative paths, sorted), the filesystem's
/// `lost+found` left out.
pub fn tree_of(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("readdir").flatten() {
            let p = e.path();
            let rel = p.strip_prefix(dir).expect("under").display().to_string();
            if rel == "lost+found" {
                continue;
            }
            if e.file_type().expect("type").is_dir() {
                stack.push(p);
            }
            out.push(rel);
        }
    }
    out.sort();
    out
}
