//! A PATH without one command: a directory holding links to the commands a
//! test needs (emulators or real programs), and nothing else, so that a
//! tool meets the missing one exactly as on a host where it is not
//! installed.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

pub struct PathWithout {
    pub dir: tempfile::TempDir,
}

impl PathWithout {
    /// Links to every program in `emu_bin` (an emulator directory, may be
    /// `None`) and to the real `real` programs found on the test's PATH
    /// (then in the sbin directories), all except `missing`.
    pub fn new(missing: &str, emu_bin: Option<&Path>, real: &[&str]) -> PathWithout {
        let dir = tempfile::Builder::new()
            .prefix("path-without-")
            .tempdir()
            .expect("tempdir");
        if let Some(emu) = emu_bin {
            for e in std::fs::read_dir(emu).expect("emulator dir").flatten() {
                let name = e.file_name();
                if name != missing {
                    let target = std::fs::read_link(e.path()).unwrap_or_else(|_| e.path());
                    std::os::unix::fs::symlink(target, dir.path().join(&name)).expect("link");
                }
            }
        }
        for name in real.iter().filter(|n| **n != missing) {
            let link = dir.path().join(name);
            if link.exists() {
                continue;
            }
            let found = find(name).unwrap_or_else(|| panic!("{name} is not installed"));
            std::os::unix::fs::symlink(found, link).expect("link");
        }
        PathWithout { dir }
    }

    /// The value for PATH.
    pub fn path(&self) -> OsString {
        self.dir.path().as_os_str().to_owned()
    }
}

fn find(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}
