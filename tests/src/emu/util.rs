//! Helpers shared by the emulators: output, real tools, loop devices, copies.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// What an emulated command prints and returns.
#[derive(Debug, Default)]
pub struct Out {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

impl Out {
    pub fn ok() -> Out {
        Out::default()
    }
    /// Fails with `code`; `stderr` gets a trailing newline if it has none.
    pub fn fail(code: i32, stderr: &str) -> Out {
        let mut out = Out {
            code,
            ..Out::default()
        };
        out.err(stderr);
        out
    }
    pub fn out(&mut self, line: &str) {
        self.stdout.push_str(line);
        if !line.ends_with('\n') {
            self.stdout.push('\n');
        }
    }
    pub fn err(&mut self, line: &str) {
        self.stderr.push_str(line);
        if !line.is_empty() && !line.ends_with('\n') {
            self.stderr.push('\n');
        }
    }
    /// Keeps the larger exit code (how LVM merges results over several LVs).
    pub fn fail_with(&mut self, code: i32, line: &str) {
        self.err(line);
        self.code = self.code.max(code);
    }
}

/// The real `name` from PATH (then the sbin directories), skipping the
/// emulator itself (`skip`, canonical or not).
pub fn find_real(name: &str, skip: &Path) -> Option<PathBuf> {
    let skip = fs::canonicalize(skip).unwrap_or_else(|_| skip.to_path_buf());
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        dirs.push(PathBuf::from(d));
    }
    for dir in dirs {
        let cand = dir.join(name);
        let Ok(canon) = fs::canonicalize(&cand) else {
            continue;
        };
        if canon == skip || !canon.is_file() {
            continue;
        }
        if canon.file_name().is_some_and(|n| n == "homelab-emu") {
            continue;
        }
        return Some(cand);
    }
    None
}

/// Backing files of every attached loop device, as the kernel reports them.
pub fn loop_backing_files() -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let Ok(rd) = fs::read_dir("/sys/block") else {
        return out;
    };
    for e in rd.flatten() {
        if !e.file_name().to_string_lossy().starts_with("loop") {
            continue;
        }
        if let Ok(s) = fs::read_to_string(e.path().join("loop/backing_file")) {
            let s = s.trim_end_matches('\n');
            let s = s.strip_suffix(" (deleted)").unwrap_or(s);
            out.insert(PathBuf::from(s));
        }
    }
    out
}

/// `cp --reflink=auto --sparse=always SRC DST` (a thin snapshot's CoW copy).
pub fn reflink_copy(src: &Path, dst: &Path) -> Result<()> {
    if let Some(p) = dst.parent() {
        fs::create_dir_all(p)?;
    }
    let out = Command::new("cp")
        .arg("--reflink=auto")
        .arg("--sparse=always")
        .arg("--")
        .arg(src)
        .arg(dst)
        .output()
        .context("running cp")?;
    if !out.status.success() {
        bail!(
            "cp {} {}: {}",
            src.display(),
            dst.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Allocated bytes of a file (`st_blocks * 512`), 0 when missing.
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}

/// Value of an option written `--opt VALUE` or `--opt=VALUE` (or `-oVALUE`
/// for a short one). `i` points at the option; it is advanced past the
/// value. Returns `None` when `args[i]` is not this option.
pub fn opt_value(args: &[String], i: &mut usize, names: &[&str]) -> Option<Result<String>> {
    let a = &args[*i];
    for n in names {
        if a == n {
            *i += 1;
            return Some(match args.get(*i) {
                Some(v) => Ok(v.clone()),
                None => Err(anyhow::anyhow!("option {n} needs a value")),
            });
        }
        if n.starts_with("--") {
            if let Some(v) = a.strip_prefix(&format!("{n}=")) {
                return Some(Ok(v.to_string()));
            }
        } else if n.len() == 2 && a.len() > 2 && a.starts_with(n) && !a.starts_with("--") {
            return Some(Ok(a[2..].to_string()));
        }
    }
    None
}
