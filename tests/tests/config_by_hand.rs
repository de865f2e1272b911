//! Every tool run by hand with no path flags against a configuration file
//! (the sandbox's file named by BACKUP_PIPELINE_CONFIG, standing for
//! `/etc/default/backup-pipeline`): each one shows the file's values in
//! `--show-config` and touches what the file names. config.rs covers the
//! same for nfs-mirror, sqlite-dump and offsite-sync coverage; this file
//! covers lvm-snap, pvc-copy, pfsense-pull, nfs-track, push-metric and
//! offsite-sync (init, step1).
//!
//! The stand-ins are the suite's: the LVM/kubectl emulators (tests/src/emu)
//! first on PATH, a real OpenSSH sshd for the firewall and the NAS, a real
//! Pushgateway. Every wait is bounded.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use backup_tests::emu::EmuHost;
use backup_tests::harness::{Run, Sandbox};
use backup_tests::nas::Nas;
use backup_tests::pushgateway::Pushgateway;
use backup_tests::sshd::{Sshd, SshdOpts};

/// Every key of the configuration file (docs/configuration.md): none may
/// come from the test's environment.
const ALL_KEYS: &[&str] = &[
    "BACKUP_ROOT",
    "NFS_ROOT",
    "NFS_SSD_ROOT",
    "BACKUP_SKIP_LIST",
    "ALLOW_UNMOUNTED_ROOT",
    "LVM_VG",
    "LVM_POOL",
    "EXCLUDED_NAMESPACES",
    "MAPPING_CACHE",
    "LVM_SNAP_RETENTION_DAYS",
    "LVM_SNAP_PRE_RESTORE_KEEP_DAYS",
    "LVM_SNAP_MIN_FREE_PCT",
    "LVM_SNAP_MIN_METADATA_FREE_PCT",
    "LVM_SNAP_STATE_DIR",
    "LVM_SNAP_KUBECTL",
    "PVC_COPY_LUKS_KEY",
    "PVC_COPY_SKIP",
    "PVC_COPY_EXPORTS",
    "PVC_COPY_MAPPER_DIR",
    "PVC_COPY_SYSTEMCTL",
    "PVC_COPY_EXPORTFS",
    "PFSENSE_SSH",
    "PFSENSE_SSH_PORT",
    "PFSENSE_SSH_KEY",
    "PFSENSE_KNOWN_HOSTS",
    "PFSENSE_API_URL",
    "PFSENSE_CA_FILE",
    "NFS_TRACK_STATE_DIR",
    "NFS_TRACK_LOG",
    "OFFSITE_REMOTE",
    "OFFSITE_SSH_PORT",
    "OFFSITE_SSH_KEY",
    "OFFSITE_KNOWN_HOSTS",
    "OFFSITE_PVE_DEST",
    "OFFSITE_NFS_DEST",
    "OFFSITE_NFS_SSD_DEST",
    "OFFSITE_CAPACITY_PATH",
    "OFFSITE_BWLIMIT",
    "SQLITE_CHECK_DBS",
    "PUSHGATEWAY_URL",
];

/// The sandbox's configuration file with these keys (in this order).
struct Conf {
    sb: Sandbox,
    keys: Vec<(&'static str, String)>,
}

impl Conf {
    fn new(sb: Sandbox, keys: Vec<(&'static str, String)>) -> Conf {
        let pairs: Vec<(&str, &dyn AsRef<std::ffi::OsStr>)> = keys
            .iter()
            .map(|(k, v)| (*k, v as &dyn AsRef<std::ffi::OsStr>))
            .collect();
        sb.write_config(&pairs);
        Conf { sb, keys }
    }

    /// `tool` run by hand: the configuration file, and none of the keys
    /// (nor their old names) in the environment.
    fn cmd(&self, tool: &str) -> Command {
        let mut c = self.sb.cmd(tool);
        for k in ALL_KEYS {
            c.env_remove(k);
        }
        for (old, _) in backup_core::config::RENAMED {
            c.env_remove(old);
        }
        c.env_remove("NFS_MIRROR_SOURCE")
            .env_remove("PFSENSE_DEST")
            .env_remove("BACKUP_LEDGER");
        c
    }

    /// `--show-config` of `tool args`: every key of the file that the
    /// tool shows under `flag` has the file's value, sourced from the file.
    #[track_caller]
    fn shows(&self, tool: &str, args: &[&str], flags: &[(&str, &str)]) {
        let r = Run::of(self.cmd(tool).args(args).arg("--show-config"));
        r.succeeds();
        let shown = parse_show(&r.stdout);
        let cfg = self.sb.config_path();
        for (flag, key) in flags {
            let (value, source) = shown
                .get(*flag)
                .unwrap_or_else(|| panic!("{tool} {args:?} --show-config lacks {flag}"));
            let (line, want) = self
                .keys
                .iter()
                .enumerate()
                .find(|(_, (k, _))| k == key)
                .map(|(i, (_, v))| (i + 2, v))
                .unwrap_or_else(|| panic!("{key} not in the file"));
            assert_eq!(value, want, "{tool} {args:?} {flag} from {key}");
            assert_eq!(
                source,
                &format!("file {}:{line} ({key})", cfg.display()),
                "{tool} {args:?} {flag}: source"
            );
        }
    }
}

/// `--flag` -> (value, source) from `--show-config`.
fn parse_show(out: &str) -> BTreeMap<String, (String, String)> {
    out.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (setting, source) = l.split_once('\t')?;
            let (flag, value) = setting.split_once('=')?;
            Some((flag.to_string(), (value.to_string(), source.to_string())))
        })
        .collect()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Poll `f` every 100 ms until it holds or `limit` passes.
fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// lvm-snap create and pvc-copy by hand on one emulated host: the file's
/// VG and pool, excluded namespaces, mapping cache, state dir, backup
/// root, mapper dir and LUKS key.
#[test]
fn lvm_snap_and_pvc_copy_by_hand_use_the_files_lvm_and_kubernetes_settings() {
    const VG: &str = "vgconf";
    const POOL: &str = "poolconf";
    let sb = Sandbox::new();
    let host = EmuHost::new(sb.path().join("emu"));
    host.add_pool(VG, POOL, 4 << 30);
    // The shipped default VG and pool exist too, with a PVC of their own:
    // a tool that ignored the file would snapshot or copy it.
    host.add_pool("pve", "data", 1 << 30);
    let root = sb.mount_backup_disk("backup", 1 << 30);
    let files = tempfile::tempdir_in(sb.path()).expect("tmp");
    std::fs::write(files.path().join("f.txt"), b"from the file's VG").expect("w");
    for (lv, ns, claim) in [
        ("vm-1-pvc-aaaa", "app", "data"),
        ("vm-2-pvc-bbbb", "ns-cfg", "db"),
        // In the default exclusions (dbaas): the file's list replaces them.
        ("vm-3-pvc-cccc", "dbaas", "mysql"),
    ] {
        host.add_thin_lv_from_dir(VG, POOL, lv, 32 << 20, files.path());
        host.add_pv(ns, claim, lv);
    }
    host.add_thin_lv_from_dir("pve", "data", "vm-9-pvc-zzzz", 32 << 20, files.path());
    host.add_pv("other", "data", "vm-9-pvc-zzzz");
    let cache = sb.path().join("state/map.json");
    let state = sb.mkdir("lvm-state");
    let key = sb.write("luks.key", b"correct horse battery staple");
    let conf = Conf::new(
        sb,
        vec![
            ("BACKUP_ROOT", s(&root)),
            ("LVM_VG", VG.into()),
            ("LVM_POOL", POOL.into()),
            ("EXCLUDED_NAMESPACES", "ns-cfg".into()),
            ("MAPPING_CACHE", s(&cache)),
            ("LVM_SNAP_STATE_DIR", s(&state)),
            ("PVC_COPY_MAPPER_DIR", s(&host.mapper_dir())),
            ("PVC_COPY_LUKS_KEY", s(&key)),
        ],
    );
    std::fs::create_dir_all(cache.parent().expect("dir")).expect("state dir");

    conf.shows(
        "lvm-snap",
        &["create"],
        &[
            ("--vg", "LVM_VG"),
            ("--pool", "LVM_POOL"),
            ("--exclude-namespace", "EXCLUDED_NAMESPACES"),
            ("--mapping-cache", "MAPPING_CACHE"),
            ("--state-dir", "LVM_SNAP_STATE_DIR"),
        ],
    );
    let mut snap = conf.cmd("lvm-snap");
    snap.envs(host.env()).arg("create");
    Run::of(&mut snap).succeeds();
    let created: Vec<String> = host
        .calls_of("lvcreate")
        .iter()
        .map(|c| c.join(" "))
        .collect();
    let snapshots: Vec<String> = host
        .lvs_rows()
        .iter()
        .filter(|r| r["lv_name"].as_str().is_some_and(|n| n.contains("_snap_")))
        .map(|r| {
            format!(
                "{}/{}",
                r["vg_name"].as_str().unwrap_or(""),
                r["lv_name"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(snapshots.len(), 2, "{snapshots:?} ({created:?})");
    for (want, why) in [
        ("vgconf/vm-1-pvc-aaaa_snap_", "the file's VG"),
        (
            "vgconf/vm-3-pvc-cccc_snap_",
            "the file's exclusions replace dbaas",
        ),
    ] {
        assert!(
            snapshots.iter().any(|n| n.starts_with(want)),
            "{why}: no {want} in {snapshots:?}"
        );
    }
    let cached = std::fs::read_to_string(&cache).expect("lvm-snap wrote MAPPING_CACHE");
    assert!(cached.contains("vm-2-pvc-bbbb"), "{cached}");

    // pvc-copy, kubectl down: it reads the cache lvm-snap wrote at the
    // file's path, skips the file's namespace, copies into the file's root.
    host.set_kube_down(true);
    conf.shows(
        "pvc-copy",
        &[],
        &[
            ("--backup-root", "BACKUP_ROOT"),
            ("--vg", "LVM_VG"),
            ("--exclude-namespace", "EXCLUDED_NAMESPACES"),
            ("--mapping-cache", "MAPPING_CACHE"),
            ("--mapper-dir", "PVC_COPY_MAPPER_DIR"),
            ("--luks-key", "PVC_COPY_LUKS_KEY"),
        ],
    );
    let work = conf.sb.mkdir("work");
    let mut copy = conf.cmd("pvc-copy");
    // Not a path of the file: the unit's RuntimeDirectory=.
    copy.envs(host.env())
        .env("RUNTIME_DIRECTORY", &work)
        .arg("--json");
    let r = Run::of(&mut copy);
    r.succeeds().stderr_contains("using the mapping cache");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    let mut results: Vec<(String, String)> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            (
                i["pvc"].as_str().unwrap_or("").to_string(),
                i["result"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    results.sort();
    assert_eq!(
        results,
        [
            ("app/data".to_string(), "ok".to_string()),
            ("dbaas/mysql".to_string(), "ok".to_string()),
            ("ns-cfg/db".to_string(), "skipped".to_string()),
        ]
    );
    let week = backup_core::weeks::current_key();
    assert_eq!(
        std::fs::read(root.join("pvc-data").join(&week).join("app/data/f.txt"))
            .expect("copied into BACKUP_ROOT"),
        b"from the file's VG"
    );
    assert!(!root.join("pvc-data").join(&week).join("other").exists());
    let ledger = std::fs::read_to_string(root.join(".changed-files")).expect("ledger");
    assert!(ledger.contains("app/data/f.txt"), "{ledger}");
}

/// pfsense-pull by hand: the file's ssh target, port, key and known_hosts
/// reach a real sshd standing for the firewall; the copy lands in
/// BACKUP_ROOT/pfsense. Only the firewall-side paths (a temp tree here,
/// `/cf/conf/config.xml` and `/` on pfSense) are given as flags.
#[test]
fn pfsense_pull_by_hand_uses_the_files_ssh_settings_and_backup_root() {
    let sshd = Sshd::start(SshdOpts::default());
    let fw = tempfile::tempdir().expect("tmp");
    let xml = b"<?xml version=\"1.0\"?>\n<pfsense>\n<version>23.3</version>\n<system><hostname>fw</hostname></system>\n<filter><rule><descr>a</descr></rule></filter>\n</pfsense>\n";
    let cfg = fw.path().join("cf/conf/config.xml");
    std::fs::create_dir_all(cfg.parent().expect("dir")).expect("mkdir");
    std::fs::write(&cfg, xml).expect("config.xml");
    std::fs::write(fw.path().join("version"), b"2.7.2\n").expect("w");
    let sb = Sandbox::new();
    let root = sb.mkdir("backup");
    backup_tests::harness::init_backup_root(&root);
    let conf = Conf::new(
        sb,
        vec![
            ("BACKUP_ROOT", s(&root)),
            ("ALLOW_UNMOUNTED_ROOT", "1".into()),
            ("PFSENSE_SSH", sshd.target()),
            ("PFSENSE_SSH_PORT", sshd.port().to_string()),
            ("PFSENSE_SSH_KEY", s(sshd.client_key())),
            ("PFSENSE_KNOWN_HOSTS", s(sshd.known_hosts())),
        ],
    );
    conf.shows(
        "pfsense-pull",
        &[],
        &[
            ("--backup-root", "BACKUP_ROOT"),
            ("--ssh", "PFSENSE_SSH"),
            ("--ssh-port", "PFSENSE_SSH_PORT"),
            ("--ssh-key", "PFSENSE_SSH_KEY"),
            ("--known-hosts", "PFSENSE_KNOWN_HOSTS"),
        ],
    );
    let r = Run::of(
        conf.cmd("pfsense-pull")
            .arg("--remote-config")
            .arg(&cfg)
            .arg("--tar-root")
            .arg(fw.path())
            .args(["--timeout", "60s"]),
    );
    r.succeeds();
    let week = backup_core::weeks::current_key();
    let dir = root.join("pfsense").join(&week);
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", dir.display(), r.stderr))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let config = names
        .iter()
        .find(|n| n.starts_with("config-") && n.ends_with(".xml"))
        .unwrap_or_else(|| panic!("no config in {names:?}"));
    assert_eq!(std::fs::read(dir.join(config)).expect("copy"), xml);
    let ledger = std::fs::read_to_string(root.join(".changed-files")).expect("ledger");
    assert!(
        ledger.contains(&format!("pfsense/{week}/{config}")),
        "{ledger}"
    );
}

/// nfs-track by hand: it watches the file's NFS_ROOT and NFS_SSD_ROOT (the
/// `direct` routes of the file's skip list) and logs into
/// BACKUP_ROOT/.nfs-changes.log, its state in the file's state dir.
#[test]
fn nfs_track_by_hand_watches_the_files_roots_and_logs_into_its_backup_root() {
    let sb = Sandbox::new();
    let root = sb.mkdir("backup");
    backup_tests::harness::init_backup_root(&root);
    let nfs = sb.mkdir("nfs");
    let ssd = sb.mkdir("nfs-ssd");
    std::fs::create_dir_all(nfs.join("immich")).expect("mkdir");
    std::fs::create_dir_all(ssd.join("immich")).expect("mkdir");
    let skip = sb.write("skip-list.conf", "direct immich\n");
    let state = sb.mkdir("nfs-track-state");
    let conf = Conf::new(
        sb,
        vec![
            ("BACKUP_ROOT", s(&root)),
            ("ALLOW_UNMOUNTED_ROOT", "1".into()),
            ("NFS_ROOT", s(&nfs)),
            ("NFS_SSD_ROOT", s(&ssd)),
            ("BACKUP_SKIP_LIST", s(&skip)),
            ("NFS_TRACK_STATE_DIR", s(&state)),
        ],
    );
    conf.shows(
        "nfs-track",
        &[],
        &[
            ("--backup-root", "BACKUP_ROOT"),
            ("--nfs-root", "NFS_ROOT"),
            ("--nfs-ssd-root", "NFS_SSD_ROOT"),
            ("--skip-list", "BACKUP_SKIP_LIST"),
            ("--state-dir", "NFS_TRACK_STATE_DIR"),
        ],
    );
    let log_path = root.join(".nfs-changes.log");
    let errs = conf.sb.path().join("nfs-track.stderr");
    let mut child = conf
        .cmd("nfs-track")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&errs).expect("stderr file"))
        .spawn()
        .expect("nfs-track");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    // Write until the tracker (watches set up) logs both roots.
    let mut n = 0;
    let seen = wait_for(Duration::from_secs(30), || {
        n += 1;
        if n % 5 == 1 {
            let _ = std::fs::write(nfs.join(format!("immich/a-{n}.jpg")), b"a");
            let _ = std::fs::write(ssd.join(format!("immich/b-{n}.jpg")), b"b");
        }
        let l = log();
        l.contains(&s(&nfs.join("immich/a-"))) && l.contains(&s(&ssd.join("immich/b-")))
    });
    // SAFETY: kill(2) on the pid of the child this test spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let ended = wait_for(Duration::from_secs(15), || {
        child.try_wait().ok().flatten().is_some()
    });
    if !ended {
        let _ = child.kill();
    }
    let _ = child.wait();
    let stderr = std::fs::read_to_string(&errs).unwrap_or_default();
    assert!(
        seen,
        "no change of both roots in {}:\n{}\nstderr:\n{stderr}",
        log_path.display(),
        log()
    );
    assert!(ended, "nfs-track did not stop on SIGTERM:\n{stderr}");
    assert!(
        std::fs::read_dir(&state)
            .expect("state dir")
            .next()
            .is_some(),
        "nothing in the file's NFS_TRACK_STATE_DIR:\n{stderr}"
    );
}

/// push-metric by hand: the file's PUSHGATEWAY_URL, a real Pushgateway.
#[test]
fn push_metric_by_hand_pushes_to_the_files_gateway() {
    let pg = Pushgateway::start();
    let conf = Conf::new(Sandbox::new(), vec![("PUSHGATEWAY_URL", pg.url())]);
    conf.shows("push-metric", &[], &[("--gateway", "PUSHGATEWAY_URL")]);
    Run::of(conf.cmd("push-metric").args([
        "--job",
        "config-by-hand",
        "--status",
        "0",
        "--metric",
        "config_by_hand_bytes=42",
    ]))
    .succeeds();
    assert_eq!(
        pg.value("config-by-hand", "config_by_hand_bytes"),
        Some(42.0)
    );
    assert_eq!(
        pg.value("config-by-hand", "config_by_hand_last_status"),
        Some(0.0)
    );
}

/// offsite-sync init and step1 by hand: the file's OFFSITE_* settings reach
/// a real sshd standing for the NAS; the ledger of the file's backup root is
/// sent to the file's OFFSITE_PVE_DEST.
#[test]
fn offsite_sync_step1_by_hand_sends_the_files_root_to_the_files_nas() {
    let sb = Sandbox::new();
    let nas = Nas::start(&sb.path().join("nas-sshd"));
    let root = sb.mkdir("backup");
    backup_tests::harness::init_backup_root(&root);
    let store = sb.mkdir("nas/volume9");
    let pve = store.join("pve");
    let put = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, data).expect("write");
    };
    put("pvc-data/2026-W48/app/data/f.txt", b"offsite");
    put("pve-config/etc/hosts", b"127.0.0.1 pve\n");
    std::fs::write(
        root.join(".changed-files"),
        "pvc-data/2026-W48/app/data/f.txt\npve-config/etc/hosts\n",
    )
    .expect("ledger");
    let nfs = sb.mkdir("nfs");
    let ssd = sb.mkdir("nfs-ssd");
    let skip = sb.write("skip-list.conf", "direct immich\n");
    let track = sb.mkdir("nfs-track");
    let conf = Conf::new(
        sb,
        vec![
            ("BACKUP_ROOT", s(&root)),
            ("ALLOW_UNMOUNTED_ROOT", "1".into()),
            ("NFS_ROOT", s(&nfs)),
            ("NFS_SSD_ROOT", s(&ssd)),
            ("BACKUP_SKIP_LIST", s(&skip)),
            ("NFS_TRACK_STATE_DIR", s(&track)),
            ("OFFSITE_REMOTE", nas.remote()),
            ("OFFSITE_SSH_PORT", nas.port.to_string()),
            ("OFFSITE_SSH_KEY", s(&nas.key)),
            ("OFFSITE_KNOWN_HOSTS", s(&nas.known_hosts)),
            ("OFFSITE_PVE_DEST", s(&pve)),
            ("OFFSITE_NFS_DEST", s(&store.join("nfs"))),
            ("OFFSITE_NFS_SSD_DEST", s(&store.join("nfs-ssd"))),
            ("OFFSITE_CAPACITY_PATH", s(&store)),
        ],
    );
    conf.shows(
        "offsite-sync",
        &["step1"],
        &[
            ("--backup-root", "BACKUP_ROOT"),
            ("--remote", "OFFSITE_REMOTE"),
            ("--ssh-port", "OFFSITE_SSH_PORT"),
            ("--ssh-key", "OFFSITE_SSH_KEY"),
            ("--known-hosts", "OFFSITE_KNOWN_HOSTS"),
            ("--pve-dest", "OFFSITE_PVE_DEST"),
            ("--capacity-path", "OFFSITE_CAPACITY_PATH"),
        ],
    );
    // Bounded: ssh connects in seconds on loopback, rsync has its timeout.
    Run::of(conf.cmd("offsite-sync").arg("init")).succeeds();
    let r = Run::of(conf.cmd("offsite-sync").arg("step1").args([
        "--connect-timeout",
        "5s",
        "--rsync-timeout",
        "120s",
    ]));
    r.succeeds();
    assert_eq!(
        std::fs::read(pve.join("pvc-data/2026-W48/app/data/f.txt"))
            .unwrap_or_else(|e| panic!("not on the NAS: {e}\n{}", r.stderr)),
        b"offsite"
    );
    assert_eq!(
        std::fs::read(pve.join("pve-config/etc/hosts")).expect("on the NAS"),
        b"127.0.0.1 pve\n"
    );
    // The ledger was consumed.
    let left = std::fs::read_to_string(root.join(".changed-files")).unwrap_or_default();
    assert!(left.trim().is_empty(), "ledger left: {left}");
}
