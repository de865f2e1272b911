//! LVM through its command-line tools only: `lvs` JSON reports, argument
//! vectors, `--` before every operand, names checked before use. Device
//! paths come from the report's `lv_path`, never composed here.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use backup_core::cmd::Cmd;
use serde::Deserialize;

use crate::names;

/// The fields every report asks for.
pub const FIELDS: &str = "lv_name,vg_name,lv_path,lv_size,pool_lv,origin,lv_tags,lv_attr,lv_active,data_percent,metadata_percent,lv_time,segtype";

#[derive(Debug, Deserialize)]
struct Report {
    report: Vec<ReportPart>,
}

#[derive(Debug, Deserialize)]
struct ReportPart {
    #[serde(default)]
    lv: Vec<Row>,
}

/// One row as `lvs --reportformat json --units b --nosuffix` prints it:
/// every value a string, empty when not applicable.
#[derive(Debug, Deserialize, Default)]
struct Row {
    #[serde(default)]
    lv_name: String,
    #[serde(default)]
    vg_name: String,
    #[serde(default)]
    lv_path: String,
    #[serde(default)]
    lv_size: String,
    #[serde(default)]
    pool_lv: String,
    #[serde(default)]
    origin: String,
    #[serde(default)]
    lv_tags: String,
    #[serde(default)]
    lv_attr: String,
    #[serde(default)]
    lv_active: String,
    #[serde(default)]
    data_percent: String,
    #[serde(default)]
    metadata_percent: String,
    #[serde(default)]
    segtype: String,
}

/// A logical volume as the report describes it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Lv {
    pub name: String,
    pub vg: String,
    /// The device path from the report (empty when inactive).
    pub path: String,
    pub size: u64,
    pub pool: String,
    pub origin: String,
    pub tags: Vec<String>,
    pub attr: String,
    pub active: bool,
    pub data_percent: Option<f64>,
    pub metadata_percent: Option<f64>,
    pub segtype: String,
}

impl Lv {
    pub fn tagged(&self) -> bool {
        self.tags.iter().any(|t| t == names::TAG)
    }
    pub fn is_pool(&self) -> bool {
        self.segtype == "thin-pool"
    }
}

fn pct(s: &str) -> Option<f64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && (0.0..=100.0).contains(v))
}

/// Parse an `lvs --reportformat json` report.
pub fn parse_report(text: &str) -> Result<Vec<Lv>> {
    let r: Report = serde_json::from_str(text).context("lvs printed a report that is not JSON")?;
    let mut out = Vec::new();
    for part in r.report {
        for row in part.lv {
            let size = if row.lv_size.trim().is_empty() {
                0
            } else {
                row.lv_size.trim().parse::<u64>().with_context(|| {
                    format!(
                        "lvs: size of {:?} is {:?}, expected bytes",
                        row.lv_name, row.lv_size
                    )
                })?
            };
            out.push(Lv {
                tags: row
                    .lv_tags
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(String::from)
                    .collect(),
                active: row.lv_active == "active",
                data_percent: pct(&row.data_percent),
                metadata_percent: pct(&row.metadata_percent),
                name: row.lv_name,
                vg: row.vg_name,
                path: row.lv_path,
                size,
                pool: row.pool_lv,
                origin: row.origin,
                attr: row.lv_attr,
                segtype: row.segtype,
            });
        }
    }
    Ok(out)
}

/// The LVM commands of one volume group.
#[derive(Debug, Clone)]
pub struct Lvm {
    pub vg: String,
    pub timeout: Duration,
}

/// Refuse any name that could be read as an option or is not an LVM name,
/// whatever its source (operator, report, our own formatting).
pub fn check_name(name: &str) -> Result<()> {
    if !names::safe_lvm_name(name) {
        bail!(
            "refusing LV name {:?}: not a valid LVM name",
            backup_core::log::escape_str(name)
        );
    }
    Ok(())
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
        let out = self
            .cmd("lvs")
            .args([
                "--reportformat",
                "json",
                "--units",
                "b",
                "--nosuffix",
                "-o",
                FIELDS,
                "--",
                &self.vg,
            ])
            .run()
            .with_context(|| format!("reading the LVs of VG {}", self.vg))?;
        parse_report(&out.stdout_str())
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
    fn parses_the_real_report() {
        let text = include_str!("../../tests/fixtures/lvs-real.json");
        let lvs = parse_report(text).expect("parse");
        assert_eq!(lvs.len(), 4);
        let pool = &lvs[0];
        assert!(pool.is_pool());
        assert_eq!(pool.data_percent, None, "empty percent stays unknown");
        let snap = &lvs[3];
        assert_eq!(snap.origin, "vm-100-pvc-1111");
        assert_eq!(snap.tags, ["homelab-lvm-snap", "other_tag"]);
        assert_eq!(snap.size, 67_108_864);
        assert_eq!(
            snap.path,
            "/dev/emuchkvg/vm-100-pvc-1111_snap_20261127_0300"
        );
        assert!(!snap.tagged());
    }

    #[test]
    fn percentages_outside_0_100_are_unknown() {
        assert_eq!(pct("12.50"), Some(12.5));
        assert_eq!(pct(""), None);
        assert_eq!(pct("abc"), None);
        assert_eq!(pct("101"), None);
        assert_eq!(pct("NaN"), None);
    }

    #[test]
    fn operands_come_after_a_double_dash() {
        let l = Lvm::new("pve");
        let c = l
            .snapshot_cmd(
                "vm-1-pvc-ab",
                "vm-1-pvc-ab_snap_20261128_0300",
                Some(names::TAG),
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
