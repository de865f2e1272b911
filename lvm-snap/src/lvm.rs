//! LVM through its command-line tools only: argument vectors, `--` before
//! every operand, names checked before use. The `lvs` report, its types
//! and the name checks are `backup_core::lvm` (shared with pvc-copy).
//! Device paths come from the report's `lv_path`, never composed here.

use std::time::Duration;

use anyhow::{Context, Result};
use backup_core::cmd::Cmd;

pub use backup_core::lvm::{Lv, check_name};

/// The LVM commands of one volume group.
#[derive(Debug, Clone)]
pub struct Lvm {
    pub vg: String,
    pub timeout: Duration,
}

impl Lvm {
    pub fn new(vg: &str) -> Self {
        Lvm {
            vg: vg.to_string(),
            timeout: Duration::from_secs(120),
        }
    }

    fn full(&self, lv: &str) -> Result<String> {
        check_name(lv)?;
        Ok(format!("{}/{lv}", self.vg))
    }

    fn cmd(&self, prog: &str) -> Cmd {
        Cmd::new(prog)
            .timeout(self.timeout)
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
    }

    /// Every LV of the VG (the pool included).
    pub fn report(&self) -> Result<Vec<Lv>> {
        backup_core::lvm::lvs(&self.vg, self.timeout)
            .with_context(|| format!("reading the LVs of VG {}", self.vg))
    }

    pub fn snapshot_cmd(&self, origin: &str, name: &str, tag: Option<&str>) -> Result<Cmd> {
        check_name(name)?;
        let mut c = self.cmd("lvcreate").args(["-s", "-kn"]);
        if let Some(t) = tag {
            c = c.args(["--addtag", t]);
        }
        Ok(c.args(["-n", name, "--", &self.full(origin)?]))
    }

    /// A thin snapshot of `origin` named `name`, active (`-kn` clears the
    /// activation-skip flag so it can be mounted like any LV).
    pub fn snapshot(&self, origin: &str, name: &str, tag: Option<&str>) -> Result<()> {
        self.snapshot_cmd(origin, name, tag)?
            .run()
            .with_context(|| format!("creating snapshot {name} of {origin}"))?;
        Ok(())
    }

    pub fn remove_cmd(&self, lv: &str) -> Result<Cmd> {
        Ok(self.cmd("lvremove").args(["-f", "--", &self.full(lv)?]))
    }

    pub fn remove(&self, lv: &str) -> Result<()> {
        self.remove_cmd(lv)?
            .run()
            .with_context(|| format!("removing {lv}"))?;
        Ok(())
    }

    pub fn rename(&self, old: &str, new: &str) -> Result<()> {
        check_name(old)?;
        check_name(new)?;
        self.cmd("lvrename")
            .args(["--", &self.vg, old, new])
            .run()
            .with_context(|| format!("renaming {old} to {new}"))?;
        Ok(())
    }

    pub fn set_active(&self, lv: &str, active: bool) -> Result<()> {
        let flag = if active { "-ay" } else { "-an" };
        self.cmd("lvchange")
            .args([flag, "--", &self.full(lv)?])
            .run()
            .with_context(|| {
                format!(
                    "{} {lv}",
                    if active { "activating" } else { "deactivating" }
                )
            })?;
        Ok(())
    }

    pub fn add_tag(&self, lv: &str, tag: &str) -> Result<()> {
        self.cmd("lvchange")
            .args(["--addtag", tag, "--", &self.full(lv)?])
            .run()
            .with_context(|| format!("tagging {lv}"))?;
        Ok(())
    }

    pub fn del_tag(&self, lv: &str, tag: &str) -> Result<()> {
        self.cmd("lvchange")
            .args(["--deltag", tag, "--", &self.full(lv)?])
            .run()
            .with_context(|| format!("untagging {lv}"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operands_come_after_a_double_dash() {
        let l = Lvm::new("pve");
        let c = l
            .snapshot_cmd(
                "vm-1-pvc-ab",
                "vm-1-pvc-ab_snap_20261128_0300",
                Some(backup_core::lvm::TAG),
            )
            .expect("cmd");
        assert_eq!(
            c.display(),
            "lvcreate -s -kn --addtag backup-pipeline.lvm-snap -n vm-1-pvc-ab_snap_20261128_0300 -- pve/vm-1-pvc-ab"
        );
        assert!(l.remove_cmd("-x").is_err());
        assert!(l.snapshot_cmd("a b", "c", None).is_err());
    }
}
