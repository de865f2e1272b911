//! A sandbox with an emulated Proxmox host (stands for: LVM thin pool
//! `pve/data` and the Kubernetes API server, through the `homelab-emu`
//! emulator of `lvs`/`lvcreate`/`lvremove`/`lvrename`/`lvchange`/`kubectl`
//! put first on PATH) and helpers to run lvm-snap against it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use backup_core::metrics::Metrics;
use backup_tests::emu::EmuHost;
use backup_tests::harness::{Run, Sandbox};

pub const MIB: u64 = 1 << 20;

/// 2026-11-28 03:00:00 UTC (tests run with TZ=UTC).
pub const T0: i64 = 1_795_834_800;
pub const DAY: i64 = 86_400;

pub struct Host {
    pub sb: Sandbox,
    pub emu: EmuHost,
}

impl Host {
    /// A host with thin pool pve/data (256 MiB).
    pub fn new() -> Host {
        let sb = Sandbox::new();
        let emu = EmuHost::new(sb.path().join("emu"));
        emu.add_pool("pve", "data", 256 * MIB);
        emu.set_kube_delay(std::time::Duration::from_millis(200));
        Host { sb, emu }
    }

    /// A PVC LV in pve/data with `files`, bound to `ns/claim`.
    pub fn pvc(&self, lv: &str, ns: &str, claim: &str, files: &[(&str, &[u8])]) {
        self.emu.add_thin_lv("pve", "data", lv, 8 * MIB, files);
        self.emu.add_pv(ns, claim, lv);
    }

    pub fn metrics_path(&self) -> PathBuf {
        self.sb.path().join("lvm-snap.prom")
    }

    /// Where restore keeps its journal (created by lvm-snap when needed).
    pub fn state_dir(&self) -> PathBuf {
        self.sb.path().join("state")
    }

    pub fn journal(&self) -> PathBuf {
        self.state_dir().join("lvm-snap-restore.journal.json")
    }

    pub fn cache_path(&self) -> PathBuf {
        self.sb.path().join("lv-pvc-mapping.json")
    }

    /// lvm-snap with the emulated host on PATH, TZ=UTC, a metrics file and
    /// a mapping cache inside the sandbox.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.sb.cmd("lvm-snap");
        c.envs(self.emu.env())
            .env("TZ", "UTC")
            .env("MAPPING_CACHE", self.cache_path())
            .env("BACKUP_PIPELINE_CONFIG", "/nonexistent/backup-pipeline")
            .env("LVM_SNAP_STATE_DIR", self.state_dir())
            .arg("--metrics-file")
            .arg(self.metrics_path())
            .args(args);
        for k in [
            "LVM_SNAP_VG",
            "LVM_SNAP_POOL",
            "LVM_SNAP_EXCLUDE_NS",
            "LVM_VG",
            "LVM_POOL",
            "EXCLUDED_NAMESPACES",
            "LVM_SNAP_RETENTION_DAYS",
            "LVM_SNAP_PRE_RESTORE_KEEP_DAYS",
            "LVM_SNAP_KUBECTL",
        ] {
            c.env_remove(k);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::of(&mut self.cmd(args))
    }

    pub fn metrics(&self) -> Metrics {
        Metrics::read(&self.metrics_path()).expect("metrics file written")
    }

    /// Names of the LVs in the VG.
    pub fn lv_names(&self) -> Vec<String> {
        self.emu
            .lvm()
            .vgs
            .get("pve")
            .map(|v| v.lvs.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub fn lv(&self, name: &str) -> Option<backup_tests::emu::state::Lv> {
        self.emu.lvm().vgs.get("pve")?.lvs.get(name).cloned()
    }

    /// The calls of commands that change LVM or Kubernetes state.
    pub fn changing_calls(&self) -> Vec<Vec<String>> {
        self.emu
            .calls()
            .into_iter()
            .filter(|c| {
                matches!(
                    c[0].as_str(),
                    "lvcreate" | "lvremove" | "lvrename" | "lvchange"
                ) || (c[0] == "kubectl" && c.iter().any(|a| a == "scale"))
            })
            .collect()
    }

    /// Replace the files of `lv` (stands for: the application writing to its volume).
    pub fn rewrite(&self, lv: &str, files: &[(&str, &[u8])]) {
        let img = self.emu.fs_image("pve", lv);
        let src = tempfile::tempdir().expect("tempdir");
        for (rel, data) in files {
            let p = src.path().join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, data).expect("write");
        }
        let size = std::fs::metadata(&img).expect("image").len();
        let tmp = img.with_extension("new");
        std::fs::File::create(&tmp)
            .and_then(|f| f.set_len(size))
            .expect("new image");
        let st = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(src.path())
            .arg(&tmp)
            .status()
            .expect("mkfs.ext4");
        assert!(st.success(), "mkfs.ext4 failed");
        std::fs::rename(&tmp, &img).expect("replace image");
    }
}

/// A metric sample with labels.
pub fn sample(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let f = m.families().iter().find(|f| f.name == name)?;
    f.samples
        .iter()
        .find(|s| {
            s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

pub fn at(t: i64) -> String {
    format!("--now=@{t}")
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
