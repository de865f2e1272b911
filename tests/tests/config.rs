//! The site configuration file (`/etc/default/backup-pipeline`, here the
//! sandbox's file named by BACKUP_PIPELINE_CONFIG): every key set in it
//! reaches every tool that reads it, run by hand with no flags (checked
//! through `--show-config` and through what the tools touch); each unit's
//! command line gives the same effective settings as the hand run; a
//! malformed line stops every tool with exit 2 naming file:line.
//! config_by_hand.rs runs the tools this file does not run by hand
//! (lvm-snap, pvc-copy, pfsense-pull, nfs-track, push-metric, offsite-sync
//! step1) against the emulators, an sshd, the NAS and a Pushgateway.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use backup_tests::harness::{Run, Sandbox, init_backup_root};
use backup_tests::unitfile::UnitFile;

/// Every tool with the subcommands a unit or an operator runs.
const RUNS: &[(&str, &[&str])] = &[
    ("lvm-snap", &["create"]),
    ("lvm-snap", &["prune"]),
    ("pvc-copy", &[]),
    ("pvc-copy", &["preflight"]),
    ("sqlite-dump", &[]),
    ("sqlite-dump", &["check"]),
    ("pfsense-pull", &[]),
    ("nfs-track", &[]),
    ("nfs-mirror", &[]),
    ("nfs-mirror", &["config"]),
    ("offsite-sync", &["all"]),
    ("push-metric", &[]),
];

struct Site {
    sb: Sandbox,
    /// KEY -> value, in file order.
    keys: Vec<(&'static str, String)>,
    root: PathBuf,
    nfs: PathBuf,
    ssd: PathBuf,
}

impl Site {
    /// A configuration file setting every key to a value of this sandbox
    /// (never the built-in default).
    fn new() -> Site {
        let sb = Sandbox::new();
        let root = sb.mkdir("backup");
        init_backup_root(&root);
        let nfs = sb.mkdir("nfs");
        let ssd = sb.mkdir("nfs-ssd");
        let skip = sb.write("skip-list.conf", "direct immich\nnever frigate\n");
        let s = |rel: &str| sb.path().join(rel).display().to_string();
        let keys: Vec<(&'static str, String)> = vec![
            ("BACKUP_ROOT", root.display().to_string()),
            ("NFS_ROOT", nfs.display().to_string()),
            ("NFS_SSD_ROOT", ssd.display().to_string()),
            ("BACKUP_SKIP_LIST", skip.display().to_string()),
            ("ALLOW_UNMOUNTED_ROOT", "1".into()),
            ("LVM_VG", "vgtest".into()),
            ("LVM_POOL", "pooltest".into()),
            ("EXCLUDED_NAMESPACES", "ns-a,ns-b".into()),
            ("MAPPING_CACHE", s("state/map.json")),
            ("LVM_SNAP_RETENTION_DAYS", "9".into()),
            ("LVM_SNAP_PRE_RESTORE_KEEP_DAYS", "11".into()),
            ("LVM_SNAP_MIN_FREE_PCT", "7".into()),
            ("LVM_SNAP_MIN_METADATA_FREE_PCT", "8".into()),
            ("LVM_SNAP_STATE_DIR", s("state")),
            ("LVM_SNAP_KUBECTL", s("bin/kubectl")),
            ("PVC_COPY_LUKS_KEY", s("luks.key")),
            ("PVC_COPY_SKIP", "app/data,web/*".into()),
            ("PVC_COPY_EXPORTS", s("exports")),
            ("PVC_COPY_MAPPER_DIR", s("mapper")),
            ("PVC_COPY_SYSTEMCTL", s("bin/systemctl")),
            ("PVC_COPY_EXPORTFS", s("bin/exportfs")),
            ("PFSENSE_SSH", "backup@fw.test".into()),
            ("PFSENSE_SSH_PORT", "2222".into()),
            ("PFSENSE_SSH_KEY", s("pf.key")),
            ("PFSENSE_KNOWN_HOSTS", s("pf.known")),
            ("PFSENSE_API_URL", "https://fw.test/api".into()),
            ("PFSENSE_CA_FILE", s("pf-ca.pem")),
            ("NFS_TRACK_STATE_DIR", s("nfs-track")),
            (
                "NFS_TRACK_LOG",
                format!("{}/.nfs-changes.log", root.display()),
            ),
            ("OFFSITE_REMOTE", "me@nas.test".into()),
            ("OFFSITE_SSH_PORT", "2200".into()),
            ("OFFSITE_SSH_KEY", s("nas.key")),
            ("OFFSITE_KNOWN_HOSTS", s("nas.known")),
            ("OFFSITE_PVE_DEST", "/volume9/pve".into()),
            ("OFFSITE_NFS_DEST", "/volume9/nfs".into()),
            ("OFFSITE_NFS_SSD_DEST", "/volume9/nfs-ssd".into()),
            ("OFFSITE_CAPACITY_PATH", "/volume9".into()),
            ("OFFSITE_BWLIMIT", "20m".into()),
            ("SQLITE_CHECK_DBS", s("a.db")),
            ("PUSHGATEWAY_URL", "http://127.0.0.1:1".into()),
        ];
        let pairs: Vec<(&str, &dyn AsRef<std::ffi::OsStr>)> = keys
            .iter()
            .map(|(k, v)| (*k, v as &dyn AsRef<std::ffi::OsStr>))
            .collect();
        sb.write_config(&pairs);
        Site {
            sb,
            keys,
            root,
            nfs,
            ssd,
        }
    }

    /// `tool` run by hand: the sandbox's configuration file, none of its
    /// keys (nor their old names) in the environment.
    fn cmd(&self, tool: &str) -> Command {
        let mut c = self.sb.cmd(tool);
        for (k, _) in &self.keys {
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

    fn show(&self, c: &mut Command) -> BTreeMap<String, (String, String)> {
        let r = Run::of(c.arg("--show-config"));
        r.succeeds();
        parse_show(&r.stdout)
    }

    fn line_of(&self, key: &str) -> usize {
        // Line 1 is the header comment write_config puts first.
        2 + self
            .keys
            .iter()
            .position(|(k, _)| *k == key)
            .unwrap_or_else(|| panic!("{key} not in the file"))
    }

    fn value(&self, key: &str) -> &str {
        &self.keys.iter().find(|(k, _)| *k == key).expect("key").1
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

/// (tool, subcommand, flag, key): where each key must show up.
const READERS: &[(&str, &[&str], &str, &str)] = &[
    ("lvm-snap", &["create"], "--vg", "LVM_VG"),
    ("lvm-snap", &["create"], "--pool", "LVM_POOL"),
    ("lvm-snap", &["create"], "--kubectl", "LVM_SNAP_KUBECTL"),
    ("lvm-snap", &["create"], "--state-dir", "LVM_SNAP_STATE_DIR"),
    (
        "lvm-snap",
        &["create"],
        "--exclude-namespace",
        "EXCLUDED_NAMESPACES",
    ),
    ("lvm-snap", &["create"], "--mapping-cache", "MAPPING_CACHE"),
    (
        "lvm-snap",
        &["create"],
        "--min-free-pct",
        "LVM_SNAP_MIN_FREE_PCT",
    ),
    (
        "lvm-snap",
        &["create"],
        "--min-metadata-free-pct",
        "LVM_SNAP_MIN_METADATA_FREE_PCT",
    ),
    (
        "lvm-snap",
        &["prune"],
        "--keep-days",
        "LVM_SNAP_RETENTION_DAYS",
    ),
    (
        "lvm-snap",
        &["prune"],
        "--pre-restore-keep-days",
        "LVM_SNAP_PRE_RESTORE_KEEP_DAYS",
    ),
    ("pvc-copy", &[], "--backup-root", "BACKUP_ROOT"),
    ("pvc-copy", &[], "--vg", "LVM_VG"),
    ("pvc-copy", &[], "--luks-key", "PVC_COPY_LUKS_KEY"),
    ("pvc-copy", &[], "--mapping-cache", "MAPPING_CACHE"),
    (
        "pvc-copy",
        &[],
        "--exclude-namespace",
        "EXCLUDED_NAMESPACES",
    ),
    ("pvc-copy", &[], "--skip", "PVC_COPY_SKIP"),
    ("pvc-copy", &[], "--mapper-dir", "PVC_COPY_MAPPER_DIR"),
    (
        "pvc-copy",
        &[],
        "--allow-unmounted-root",
        "ALLOW_UNMOUNTED_ROOT",
    ),
    ("pvc-copy", &["preflight"], "--nfs-root", "NFS_ROOT"),
    ("pvc-copy", &["preflight"], "--exports", "PVC_COPY_EXPORTS"),
    (
        "pvc-copy",
        &["preflight"],
        "--systemctl",
        "PVC_COPY_SYSTEMCTL",
    ),
    (
        "pvc-copy",
        &["preflight"],
        "--exportfs",
        "PVC_COPY_EXPORTFS",
    ),
    ("sqlite-dump", &[], "--backup-root", "BACKUP_ROOT"),
    (
        "sqlite-dump",
        &[],
        "--allow-unmounted-root",
        "ALLOW_UNMOUNTED_ROOT",
    ),
    ("sqlite-dump", &["check"], "<DBS>", "SQLITE_CHECK_DBS"),
    ("pfsense-pull", &[], "--backup-root", "BACKUP_ROOT"),
    ("pfsense-pull", &[], "--ssh", "PFSENSE_SSH"),
    ("pfsense-pull", &[], "--ssh-port", "PFSENSE_SSH_PORT"),
    ("pfsense-pull", &[], "--ssh-key", "PFSENSE_SSH_KEY"),
    ("pfsense-pull", &[], "--known-hosts", "PFSENSE_KNOWN_HOSTS"),
    ("pfsense-pull", &[], "--api-url", "PFSENSE_API_URL"),
    ("pfsense-pull", &[], "--ca-file", "PFSENSE_CA_FILE"),
    (
        "pfsense-pull",
        &[],
        "--allow-unmounted-root",
        "ALLOW_UNMOUNTED_ROOT",
    ),
    ("nfs-track", &[], "--nfs-root", "NFS_ROOT"),
    ("nfs-track", &[], "--nfs-ssd-root", "NFS_SSD_ROOT"),
    ("nfs-track", &[], "--backup-root", "BACKUP_ROOT"),
    ("nfs-track", &[], "--log", "NFS_TRACK_LOG"),
    ("nfs-track", &[], "--skip-list", "BACKUP_SKIP_LIST"),
    ("nfs-track", &[], "--state-dir", "NFS_TRACK_STATE_DIR"),
    (
        "nfs-track",
        &[],
        "--allow-unmounted-root",
        "ALLOW_UNMOUNTED_ROOT",
    ),
    ("nfs-mirror", &[], "--nfs-root", "NFS_ROOT"),
    ("nfs-mirror", &[], "--nfs-ssd-root", "NFS_SSD_ROOT"),
    ("nfs-mirror", &[], "--backup-root", "BACKUP_ROOT"),
    ("nfs-mirror", &[], "--skip-list", "BACKUP_SKIP_LIST"),
    (
        "nfs-mirror",
        &[],
        "--allow-unmounted-root",
        "ALLOW_UNMOUNTED_ROOT",
    ),
    ("nfs-mirror", &["config"], "--backup-root", "BACKUP_ROOT"),
    ("offsite-sync", &["all"], "--backup-root", "BACKUP_ROOT"),
    ("offsite-sync", &["all"], "--nfs-root", "NFS_ROOT"),
    ("offsite-sync", &["all"], "--nfs-ssd-root", "NFS_SSD_ROOT"),
    ("offsite-sync", &["all"], "--skip-list", "BACKUP_SKIP_LIST"),
    (
        "offsite-sync",
        &["all"],
        "--nfs-track-state-dir",
        "NFS_TRACK_STATE_DIR",
    ),
    ("offsite-sync", &["all"], "--remote", "OFFSITE_REMOTE"),
    ("offsite-sync", &["all"], "--ssh-port", "OFFSITE_SSH_PORT"),
    ("offsite-sync", &["all"], "--ssh-key", "OFFSITE_SSH_KEY"),
    (
        "offsite-sync",
        &["all"],
        "--known-hosts",
        "OFFSITE_KNOWN_HOSTS",
    ),
    ("offsite-sync", &["all"], "--pve-dest", "OFFSITE_PVE_DEST"),
    ("offsite-sync", &["all"], "--nfs-dest", "OFFSITE_NFS_DEST"),
    (
        "offsite-sync",
        &["all"],
        "--nfs-ssd-dest",
        "OFFSITE_NFS_SSD_DEST",
    ),
    (
        "offsite-sync",
        &["all"],
        "--capacity-path",
        "OFFSITE_CAPACITY_PATH",
    ),
    ("offsite-sync", &["all"], "--bwlimit", "OFFSITE_BWLIMIT"),
    (
        "offsite-sync",
        &["all"],
        "--allow-unmounted-root",
        "ALLOW_UNMOUNTED_ROOT",
    ),
    ("push-metric", &[], "--gateway", "PUSHGATEWAY_URL"),
];

#[test]
fn every_key_of_the_file_reaches_every_tool_that_reads_it() {
    let site = Site::new();
    let cfg = site.sb.config_path();
    for (tool, sub) in RUNS {
        let shown_cfg = site.show(site.cmd(tool).args(*sub));
        for (t, s, flag, key) in READERS {
            if t != tool || s != sub {
                continue;
            }
            let (value, source) = shown_cfg
                .get(*flag)
                .unwrap_or_else(|| panic!("{tool} {sub:?} --show-config lacks {flag}"));
            assert_eq!(
                value,
                &site.value(key).to_string(),
                "{tool} {sub:?} {flag} from {key}"
            );
            assert_eq!(
                source,
                &format!("file {}:{} ({key})", cfg.display(), site.line_of(key)),
                "{tool} {sub:?} {flag}: source"
            );
        }
    }
    // Every key is read by some tool.
    for (key, _) in &site.keys {
        assert!(
            READERS.iter().any(|(_, _, _, k)| k == key),
            "{key} is read by no tool"
        );
    }
}

#[test]
fn precedence_is_flag_then_environment_then_file_then_default() {
    let site = Site::new();
    let cfg = site.sb.config_path();
    let s = site.show(&mut site.cmd("pvc-copy"));
    assert_eq!(
        s["--backup-root"].1,
        format!("file {}:2 (BACKUP_ROOT)", cfg.display())
    );
    assert_eq!(s["--keep-weeks"], ("4".into(), "default".into()));
    let s = site.show(site.cmd("pvc-copy").env("BACKUP_ROOT", "/from/env"));
    assert_eq!(
        s["--backup-root"],
        ("/from/env".into(), "env BACKUP_ROOT".into())
    );
    let s = site.show(
        site.cmd("pvc-copy")
            .env("BACKUP_ROOT", "/from/env")
            .args(["--backup-root", "/from/flag"]),
    );
    assert_eq!(s["--backup-root"], ("/from/flag".into(), "flag".into()));
    // systemd's EnvironmentFile= puts the same value in the environment:
    // still the file's.
    let s = site.show(
        site.cmd("pvc-copy")
            .env("BACKUP_ROOT", site.value("BACKUP_ROOT")),
    );
    assert!(
        s["--backup-root"].1.starts_with("file "),
        "{:?}",
        s["--backup-root"]
    );
    // An old name (LVM_SNAP_VG) is still read when the new one is set nowhere.
    let s = site.show(
        Command::new(backup_tests::harness::bin("lvm-snap"))
            .arg("create")
            .env("BACKUP_PIPELINE_CONFIG", site.sb.path().join("none"))
            .env_remove("LVM_VG")
            .env("LVM_SNAP_VG", "oldvg"),
    );
    assert_eq!(s["--vg"].0, "oldvg");
    // No file: the built-in defaults.
    let s = site.show(
        site.cmd("offsite-sync")
            .arg("all")
            .env("BACKUP_PIPELINE_CONFIG", site.sb.path().join("none")),
    );
    assert_eq!(
        s["--pve-dest"],
        ("/volume1/Backup/Viki/pve-backup".into(), "default".into())
    );
}

#[test]
fn a_malformed_line_stops_every_tool_naming_file_and_line() {
    let sb = Sandbox::new();
    let cfg = sb.config_path();
    std::fs::write(&cfg, "BACKUP_ROOT=/mnt/backup\n\nNFS_ROOT /srv/nfs\n").expect("write");
    for (tool, sub) in RUNS {
        let r = Run::of(sb.cmd(tool).args(*sub).arg("--help"));
        r.fails_with(2).stderr_contains(&format!(
            "{tool}: error: configuration file {}:3: ",
            cfg.display()
        ));
    }
}

/// What the tools touch, run by hand with no flags: the file's paths.
#[test]
fn tools_run_by_hand_with_no_flags_work_on_the_files_paths() {
    let site = Site::new();
    // nfs-mirror: NFS_ROOT and NFS_SSD_ROOT into BACKUP_ROOT (skip list:
    // immich direct, frigate never, the rest leg 1).
    let put = |p: PathBuf, data: &[u8]| {
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, data).expect("write");
    };
    put(site.nfs.join("nextcloud/a.txt"), b"a");
    put(site.nfs.join("immich/b.jpg"), b"b");
    put(site.ssd.join("vaultwarden/c.pem"), b"c");
    Run::of(&mut site.cmd("nfs-mirror")).succeeds();
    assert_eq!(
        std::fs::read(site.root.join("nextcloud/a.txt")).expect("leg 1"),
        b"a"
    );
    assert_eq!(
        std::fs::read(site.root.join("nfs-ssd/vaultwarden/c.pem")).expect("ssd leg 1"),
        b"c"
    );
    assert!(
        !site.root.join("immich").exists(),
        "the skip list was not read"
    );

    // sqlite-dump: BACKUP_ROOT/pvc-data/<this week> into
    // BACKUP_ROOT/sqlite-backup/<this week>, ledgered in the root's ledger.
    let week = backup_core::weeks::current_key();
    let src = site.root.join("pvc-data").join(&week).join("app/data");
    std::fs::create_dir_all(&src).expect("mkdir");
    let o = Command::new("sqlite3")
        .arg(src.join("app.db"))
        .arg("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .output()
        .expect("sqlite3");
    assert!(o.status.success());
    Run::of(&mut site.cmd("sqlite-dump")).succeeds();
    let copy = site
        .root
        .join("sqlite-backup")
        .join(&week)
        .join("app/data/app.db");
    assert!(copy.is_file(), "no copy at {}", copy.display());
    let ledger = std::fs::read_to_string(site.root.join(".changed-files")).expect("ledger");
    assert!(
        ledger.contains(&format!("sqlite-backup/{week}/app/data/app.db")),
        "{ledger}"
    );

    // offsite-sync coverage: the file's NFS roots and skip list.
    let r = Run::of(site.cmd("offsite-sync").arg("coverage"));
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(all.contains("immich"), "{all}");
    assert!(all.contains("nextcloud"), "{all}");
}

/// Each unit's command line (with systemd's EnvironmentFile= and
/// Environment=) shows the same settings as the tool run by hand.
#[test]
fn each_units_command_line_gives_the_hand_runs_settings() {
    let site = Site::new();
    let file: Vec<(String, String)> = site
        .keys
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let units = [
        "lvm-snap.service",
        "lvm-snap-prune.service",
        "daily-backup.service",
        "nfs-mirror.service",
        "nfs-mirror-config.service",
        "nfs-track.service",
        "offsite-sync.service",
        "pfsense-pull.service",
        "sqlite-check.service",
    ];
    let mut seen = 0;
    for name in units {
        let unit = UnitFile::load(name);
        for words in unit.commands("ExecStart") {
            let Some(tool) = words[0].strip_prefix("/usr/local/bin/") else {
                continue;
            };
            // The subcommand (a first word without a dash), as run by hand.
            let sub: Vec<&str> = words[1..]
                .first()
                .filter(|w| !w.starts_with('-'))
                .map(|w| vec![w.as_str()])
                .unwrap_or_default();
            if sub == ["current-week"] {
                continue;
            }
            for w in &words[1..] {
                assert!(
                    !w.starts_with('/') || w.starts_with("/run/backup-pipeline/"),
                    "{name}: {w} is a path the configuration file sets"
                );
            }
            let mut unit_run = site.cmd(tool);
            unit_run.args(&words[1..]);
            for (k, v) in &file {
                unit_run.env(k, v);
            }
            for (k, v) in unit.environment() {
                unit_run.env(k, v);
            }
            let by_unit = site.show(&mut unit_run);
            let by_hand = site.show(site.cmd(tool).args(&sub));
            let strip = |m: BTreeMap<String, (String, String)>| -> BTreeMap<String, String> {
                m.into_iter()
                    .filter(|(k, _)| k != "--metrics-file")
                    .map(|(k, (v, _))| (k, v))
                    .collect()
            };
            assert_eq!(
                strip(by_unit),
                strip(by_hand),
                "{name}: {words:?} differs from a hand run of {tool} {sub:?}"
            );
            seen += 1;
        }
    }
    assert!(seen >= 9, "only {seen} unit command lines compared");
}

#[test]
fn the_shipped_example_is_a_valid_configuration_file() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../units/backup-pipeline.env.example");
    let l = backup_core::config::load(&p).expect("the example parses");
    let keys: Vec<&str> = l.entries.iter().map(|e| e.key.as_str()).collect();
    assert!(keys.contains(&"OFFSITE_REMOTE"), "{keys:?}");
    let text = std::fs::read_to_string(&p).expect("example");
    for (_, _, _, key) in READERS {
        assert!(
            text.contains(&format!("{key}=")),
            "the example does not mention {key}"
        );
    }
}

/// Every option of every tool and subcommand has help text.
#[test]
fn every_flag_has_help_text() {
    let tools = [
        "lvm-snap",
        "pvc-copy",
        "sqlite-dump",
        "pfsense-pull",
        "nfs-track",
        "nfs-mirror",
        "offsite-sync",
        "push-metric",
    ];
    let help = |tool: &str, sub: Option<&str>| -> String {
        let mut c = Command::new(backup_tests::harness::bin(tool));
        c.args(sub)
            .arg("--help")
            .env("BACKUP_PIPELINE_CONFIG", "/nonexistent");
        let o = c.output().expect("--help");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let mut bare = Vec::new();
    for tool in tools {
        let top = help(tool, None);
        let subs: Vec<String> = top
            .lines()
            .skip_while(|l| !l.starts_with("Commands:"))
            .skip(1)
            .take_while(|l| !l.trim().is_empty())
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .filter(|s| s != "help")
            .collect();
        for sub in std::iter::once(None).chain(subs.iter().map(|s| Some(s.as_str()))) {
            let text = help(tool, sub);
            let lines: Vec<&str> = text.lines().collect();
            for (i, l) in lines.iter().enumerate() {
                let t = l.trim_start();
                if !(l.starts_with("  -") || l.starts_with("      --")) || !t.starts_with('-') {
                    continue;
                }
                // `--flag <V>  Help` on one line, or the help on the next line.
                let same_line = t.split("  ").filter(|p| !p.trim().is_empty()).count() >= 2;
                let next = lines.get(i + 1).copied().unwrap_or("");
                let next_line = next.starts_with("          ") && !next.trim().is_empty();
                if !same_line && !next_line {
                    bare.push(format!("{tool} {}: {t}", sub.unwrap_or("")));
                }
            }
        }
    }
    assert!(bare.is_empty(), "options without help text: {bare:#?}");
}
