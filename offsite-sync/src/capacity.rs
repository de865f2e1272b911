//! The NAS capacity (`df -kP` over ssh).

use std::ffi::OsStr;
use std::time::Duration;

use anyhow::{Context, Result};
use backup_core::cmd::{Cmd, shell_quote};

use crate::Config;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Capacity {
    pub size_bytes: u64,
    pub available_bytes: u64,
}

/// Read the NAS capacity with `df -kP` over ssh, as integers.
pub fn capacity(cfg: &Config, path: &str) -> Result<Capacity> {
    let remote_cmd = format!("df -kP -- {}", shell_quote(OsStr::new(path)));
    let out = Cmd::new(&cfg.ssh)
        .args(cfg.ssh_opts())
        .arg("--")
        .arg(&cfg.remote)
        .arg(remote_cmd)
        .timeout(cfg.connect_timeout + Duration::from_secs(30))
        .run()
        .context("NAS capacity")?;
    parse_df(&out.stdout_str()).context("NAS capacity: unexpected df output")
}

/// The last line of `df -kP`: `FS 1024-blocks Used Available Capacity% Mount`.
pub fn parse_df(text: &str) -> Result<Capacity> {
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .context("empty output")?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let pct = words
        .iter()
        .position(|w| w.ends_with('%'))
        .context("no capacity column")?;
    if pct < 3 {
        anyhow::bail!("too few columns in {line:?}");
    }
    let num = |s: &str| -> Result<u64> {
        s.parse::<u64>()
            .with_context(|| format!("{s:?} is not an integer"))
    };
    let size = num(words[pct - 3])?;
    let avail = num(words[pct - 1])?;
    Ok(Capacity {
        size_bytes: size.checked_mul(1024).context("size overflows")?,
        available_bytes: avail.checked_mul(1024).context("available overflows")?,
    })
}
