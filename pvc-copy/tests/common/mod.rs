//! Shared set-up for pvc-copy's tests: an emulated Proxmox host (the LVM,
//! kubectl, cryptsetup and blkid emulators of `backup-tests` stand for the
//! host's thin pool `pve/data`, its dm-crypt mappings and the Kubernetes API;
//! the CI kernel has no device-mapper) whose LVs are real ext4 images that
//! pvc-copy mounts for real (loop, read-only) and copies with real rsync.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use backup_tests::emu::EmuHost;
use backup_tests::harness::{Run, Sandbox};

pub const VG: &str = "pve";
/// lvm-snap's tag (its `names::TAG`).
pub const TAG: &str = "backup-pipeline.lvm-snap";
/// Friday of ISO week 2026-W48; snapshots are taken at 03:00 that day.
pub const NOW: &str = "2026-11-27T05:00:00Z";
pub const SNAP_UNIX: i64 = 1_795_748_400; // 2026-11-27T03:00:00Z
pub const WEEK: &str = "2026-W48";
pub const KEY: &[u8] = b"correct horse battery staple";

pub struct Env {
    pub sb: Sandbox,
    pub host: EmuHost,
    pub root: PathBuf,
    pub key: PathBuf,
    /// The backup root is a real mount point (the default; a test that
    /// points it at a plain directory clears this).
    pub root_is_mount: bool,
}

impl Env {
    pub fn new() -> Env {
        let sb = Sandbox::new();
        let host = EmuHost::new(sb.path().join("emu"));
        host.add_pool(VG, "data", 4 << 30);
        // The backup disk is its own filesystem, as on the host, with the
        // identity marker `offsite-sync init --local` gives it.
        let root = sb.mount_backup_disk("backup", 1 << 30);
        let key = sb.write("luks.key", KEY);
        sb.mkdir("work");
        Env {
            sb,
            host,
            root,
            key,
            root_is_mount: true,
        }
    }

    /// A PVC origin LV made from `src`, its PV `ns/claim`, and a snapshot
    /// taken at `unix` (named from that time like lvm-snap does).
    pub fn pvc_from_dir(&self, lv: &str, ns: &str, claim: &str, src: &Path, luks: bool) {
        let size = 32 << 20;
        if luks {
            self.host
                .add_luks_lv_from_dir(VG, "data", lv, size, KEY, src);
        } else {
            self.host.add_thin_lv_from_dir(VG, "data", lv, size, src);
        }
        self.host.add_pv(ns, claim, lv);
        self.snapshot(lv, SNAP_UNIX);
    }

    pub fn pvc(&self, lv: &str, ns: &str, claim: &str, files: &[(&str, &[u8])]) {
        let d = self.tree(files);
        self.pvc_from_dir(lv, ns, claim, d.path(), false);
    }

    /// A temp tree with these files.
    pub fn tree(&self, files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let d = tempfile::tempdir_in(self.sb.path()).expect("tmp");
        for (rel, data) in files {
            let p = d.path().join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, data).expect("write");
        }
        d
    }

    /// Take a snapshot of `lv` stamped at `unix`; returns its name.
    pub fn snapshot(&self, lv: &str, unix: i64) -> String {
        let t = chrono::DateTime::from_timestamp(unix, 0).expect("time");
        let name = format!("{lv}_snap_{}", t.format("%Y%m%d_%H%M"));
        self.host.add_snapshot(VG, lv, &name, &[TAG]);
        self.host.set_lv_time(VG, &name, unix);
        name
    }

    /// Replace (or add) a file inside an origin LV's ext4 image (debugfs,
    /// no mount), as the application would have written it.
    pub fn write_in_lv(&self, lv: &str, rel: &str, data: &[u8]) {
        let img = self.host.fs_image(VG, lv);
        let local = self
            .sb
            .write(&format!("tmp-{}", rel.replace('/', "_")), data);
        let _ = Command::new("debugfs")
            .args(["-w", "-R"])
            .arg(format!("rm /{rel}"))
            .arg(&img)
            .output();
        let o = Command::new("debugfs")
            .args(["-w", "-R"])
            .arg(format!("write {} /{rel}", local.display()))
            .arg(&img)
            .output()
            .expect("debugfs");
        assert!(
            o.status.success(),
            "debugfs write: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// pvc-copy's arguments against the emulated host and this sandbox.
    pub fn args(&self, now: &str) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec!["--backup-root".into(), self.root.clone().into()];
        if !self.root_is_mount {
            a.push("--allow-unmounted-root".into());
        }
        for (k, v) in [
            ("--mapper-dir", self.host.mapper_dir().into_os_string()),
            ("--luks-key", self.key.clone().into_os_string()),
            ("--work-dir", self.sb.path().join("work").into_os_string()),
            ("--metrics-file", self.metrics_path().into_os_string()),
            ("--mount-retry-delay", "0s".into()),
            ("--now", now.into()),
        ] {
            a.push(k.into());
            a.push(v);
        }
        a
    }

    /// The pvc-copy command against the emulated host and this sandbox.
    pub fn cmd(&self, now: &str) -> Command {
        let mut c = self.sb.cmd("pvc-copy");
        c.envs(self.host.env())
            .env("BACKUP_PIPELINE_CONFIG", self.sb.path().join("no-config"))
            .env_remove("ALLOW_UNMOUNTED_ROOT")
            .env("MAPPING_CACHE", self.root.join(".lv-pvc-mapping.json"))
            .args(self.args(now));
        c
    }

    pub fn run(&self, now: &str, extra: &[&str]) -> Run {
        Run::of(self.cmd(now).args(extra))
    }

    pub fn metrics_path(&self) -> PathBuf {
        self.sb.path().join("pvc-copy.prom")
    }

    pub fn metric(&self, line_prefix: &str) -> Option<f64> {
        let text = std::fs::read_to_string(self.metrics_path()).ok()?;
        text.lines()
            .find(|l| l.starts_with(line_prefix) && l[line_prefix.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    pub fn dest(&self, week: &str, ns: &str, pvc: &str) -> PathBuf {
        self.root.join("pvc-data").join(week).join(ns).join(pvc)
    }

    pub fn ledger_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.root.join(".changed-files"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    /// The names at the top of the backup root, sorted; the filesystem's
    /// own `lost+found` and the disk's identity marker left out.
    pub fn root_entries(&self) -> Vec<String> {
        let mut top: Vec<String> = std::fs::read_dir(&self.root)
            .expect("root")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n != "lost+found" && n != backup_core::marker::FILE)
            .collect();
        top.sort();
        top
    }

    /// Nothing of this sandbox is mounted in the test's (the host's) mount
    /// namespace, and no LUKS mapping is left open.
    pub fn assert_no_mounts(&self) {
        let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let me = self.sb.path().to_string_lossy().into_owned();
        let disk = self.root.to_string_lossy().into_owned();
        // Field 5 of a mountinfo line is the mount point; the backup disk
        // the test mounted itself is not a leak.
        let leaked: Vec<&str> = info
            .lines()
            .filter(|l| l.contains(&me) && l.split(' ').nth(4) != Some(disk.as_str()))
            .collect();
        assert!(
            leaked.is_empty(),
            "mounts leaked into the host namespace: {leaked:?}"
        );
        assert!(
            self.host.open_mappers().is_empty(),
            "open mappers: {:?}",
            self.host.open_mappers()
        );
    }
}
