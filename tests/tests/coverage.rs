//! Contract 15 and issue 2, "reported covered, backed up by nothing": a
//! top-level directory under /srv/nfs-ssd that the skip list does not name
//! was listed by `offsite-sync coverage` as route backup-disk (exit 0)
//! while nfs-mirror mirrored only /srv/nfs, nfs-track logged only
//! `direct` and step 2 carried only `direct`: none of its files ever
//! reached the NAS.
//!
//! Real components: nfs-mirror, nfs-track (watching both roots) and
//! offsite-sync run with the argument lists of their units
//! (units/*.service, host paths mapped into the sandbox, less
//! `--require-mountpoint`: the NFS roots are plain directories here), the
//! backup disk is an ext4 loop filesystem carrying its identity marker,
//! rsync is real and the NAS is OpenSSH's sshd on loopback.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backup_core::metrics::Metrics;
use backup_tests::harness::{Run, Sandbox};
use backup_tests::nas::Nas;
use backup_tests::unitfile::{PathMap, UnitFile, with_value, without};

const SKIP: &str = "# routes of the NFS trees\ndirect immich\nnever frigate\n";

struct Lab {
    sb: Sandbox,
    nas: Nas,
    root: PathBuf,
    nfs: PathBuf,
    ssd: PathBuf,
    rt: PathBuf,
    nas_store: PathBuf,
    paths: PathMap,
}

struct Tracker(Child);

impl Drop for Tracker {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid (what systemctl stop sends).
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

fn put(p: &Path, data: &[u8]) {
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, data).expect("write");
}

/// Regular files under `dir` (relative path -> content).
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let ft = e.file_type().expect("type");
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                let rel = p.strip_prefix(dir).expect("rel").display().to_string();
                out.insert(rel, std::fs::read(&p).expect("read"));
            }
        }
    }
    out
}

/// The NAS copy holds exactly the source's files, byte for byte (names
/// listed on a mismatch, never the contents).
#[track_caller]
fn assert_same_files(nas: &Path, src: &Path) {
    let (got, want) = (files(nas), files(src));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "files of {} on the NAS ({})",
        src.display(),
        nas.display()
    );
    let differ: Vec<&String> = want.keys().filter(|k| got[*k] != want[*k]).collect();
    assert!(differ.is_empty(), "contents differ on the NAS: {differ:?}");
}

impl Lab {
    fn new() -> Lab {
        let sb = Sandbox::new();
        let root = sb.mount_backup_disk("mnt/backup", 256 << 20);
        let nfs = sb.mkdir("srv/nfs");
        let ssd = sb.mkdir("srv/nfs-ssd");
        let rt = sb.mkdir("run/backup-pipeline");
        let nas_store = sb.mkdir("nas/Backup/Viki");
        let skip = sb.write("etc/backup-skip-list.conf", SKIP);
        let tracker_state = sb.mkdir("var/lib/nfs-track");
        let paths = PathMap::new(&[
            ("/mnt/backup", &root),
            ("/srv/nfs", &nfs),
            ("/srv/nfs-ssd", &ssd),
            ("/etc/backup-skip-list.conf", &skip),
            ("/run/backup-pipeline", &rt),
            ("/var/lib/nfs-track", &tracker_state),
        ]);
        // Leg 1 and direct on the main root, direct and never on the SSD root.
        put(&nfs.join("nextcloud/data/alice/report.odt"), b"report");
        put(&nfs.join("immich/upload/IMG_0001.jpg"), &[0x49u8; 20_000]);
        put(&ssd.join("immich/thumbs/IMG_0001.webp"), b"thumb");
        put(&ssd.join("frigate/clip.mp4"), b"never offsite");
        let nas = Nas::start(&sb.path().join("nas-sshd"));
        // The site configuration every tool reads (the units carry no path).
        sb.write_config(&[
            ("BACKUP_ROOT", &root),
            ("NFS_ROOT", &nfs),
            ("NFS_SSD_ROOT", &ssd),
            ("BACKUP_SKIP_LIST", &skip),
            ("NFS_TRACK_STATE_DIR", &tracker_state),
            ("OFFSITE_PVE_DEST", &nas_store.join("pve-backup")),
            ("OFFSITE_NFS_DEST", &nas_store.join("nfs")),
            ("OFFSITE_NFS_SSD_DEST", &nas_store.join("nfs-ssd")),
        ]);
        let lab = Lab {
            sb,
            nas,
            root,
            nfs,
            ssd,
            rt,
            nas_store,
            paths,
        };
        // The operator's one-time `offsite-sync init`: the NAS
        // destinations get their identity markers.
        lab.offsite("init").succeeds();
        lab
    }

    fn unit_cmd(&self, unit: &UnitFile, words: &[String]) -> Command {
        let prog = words[0]
            .strip_prefix("/usr/local/bin/")
            .unwrap_or_else(|| panic!("not a pipeline tool: {}", words[0]));
        let mut c = self.sb.cmd(prog);
        c.args(self.paths.map_all(&words[1..]));
        for (k, v) in unit.environment() {
            c.env(k, self.paths.map(&v));
        }
        c
    }

    /// nfs-mirror's unit command line; `old_config` gives it only /srv/nfs,
    /// as the unit did before.
    fn nfs_mirror(&self, old_config: bool) -> Run {
        let unit = UnitFile::load("nfs-mirror.service");
        let mut words = without(
            &unit.command_of("ExecStart", "nfs-mirror"),
            "--require-mountpoint",
            false,
        );
        if old_config {
            words = without(&words, "--source", true);
            words.extend(["--source".to_string(), "/srv/nfs".to_string()]);
        }
        Run::of(&mut self.unit_cmd(&unit, &words))
    }

    /// offsite-sync `sub` with the options of its unit (and the NAS).
    fn offsite(&self, sub: &str) -> Run {
        self.offsite_args(sub, &[])
    }

    fn offsite_args(&self, sub: &str, extra: &[&str]) -> Run {
        let unit = UnitFile::load("offsite-sync.service");
        let mut words = without(
            &unit.command_of("ExecStart", "offsite-sync"),
            "--require-mountpoint",
            false,
        );
        words[1] = sub.to_string();
        let mut c = self.unit_cmd(&unit, &words);
        // Paths and NAS destinations come from the sandbox's configuration file.
        c.args(self.nas.flags())
            .args(["--keepalive", "5s"])
            .args(extra);
        Run::of(&mut c)
    }

    fn pve(&self) -> PathBuf {
        self.nas_store.join("pve-backup")
    }

    fn metrics(&self) -> Metrics {
        Metrics::read(&self.rt.join("offsite-sync.prom")).expect("offsite-sync metrics")
    }

    /// `backup_coverage_<what>_dirs{root=...}` of the last offsite-sync run.
    fn coverage_metric(&self, what: &str, root: &Path) -> Option<f64> {
        let text = std::fs::read_to_string(self.rt.join("offsite-sync.prom")).expect("metrics");
        let want = format!(
            "backup_coverage_{what}_dirs{{root=\"{}\"}} ",
            root.display()
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&want))
            .map(|v| v.trim().parse().expect("value"))
    }

    /// nfs-track as its unit runs it (both roots, the direct route).
    fn start_tracker(&self) -> Tracker {
        let unit = UnitFile::load("nfs-track.service");
        let words = unit.command_of("ExecStart", "nfs-track");
        let words = with_value(&words, "--metrics-interval", "1s");
        let mut c = self.unit_cmd(&unit, &words);
        let log = self.sb.path().join("nfs-track.log");
        c.args(["--flush-interval", "1s"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).expect("log")));
        let mut child = c.spawn().expect("nfs-track");
        let state = self.paths.map("/var/lib/nfs-track");
        let state = Path::new(&state).join("last-watching");
        let start = Instant::now();
        while !state.exists() {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "nfs-track exited {st}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "nfs-track recorded no watch"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Tracker(child)
    }
}

/// The case: an unlisted service directory on the SSD root with
/// 20 files. With the units as they are, nfs-mirror takes it onto the
/// backup disk (DEST/nfs-ssd/<svc>/), step 1 brings it to the NAS byte for
/// byte (a full first pass, then the ledger for a change), and coverage
/// says so. Before, none of the 20 files ever reached the NAS.
#[test]
fn an_unlisted_ssd_service_directory_reaches_the_nas_via_the_backup_disk() {
    let lab = Lab::new();
    let _tracker = lab.start_tracker();
    let svc = lab.ssd.join("vaultwarden");
    for i in 0..20 {
        put(
            &svc.join(format!("data/f{i:02}.bin")),
            &vec![i as u8; 1000 + i * 37],
        );
    }
    lab.nfs_mirror(false).succeeds();
    lab.offsite("all").succeeds();
    let on_nas = lab.pve().join("nfs-ssd/vaultwarden");
    assert_same_files(&on_nas, &svc);
    assert_eq!(files(&on_nas).len(), 20);
    // Its routes elsewhere untouched: immich direct, frigate nowhere.
    assert!(
        lab.nas_store
            .join("nfs-ssd/immich/thumbs/IMG_0001.webp")
            .is_file()
    );
    assert!(!lab.pve().join("nfs-ssd/immich").exists());
    assert!(
        files(&lab.nas_store)
            .keys()
            .all(|k| !k.contains("clip.mp4"))
    );
    assert_eq!(
        lab.coverage_metric("uncovered", &lab.ssd),
        Some(0.0),
        "{:?}",
        std::fs::read_to_string(lab.rt.join("offsite-sync.prom"))
    );
    assert_eq!(lab.coverage_metric("uncovered", &lab.nfs), Some(0.0));
    assert_eq!(lab.metrics().get("offsite_sync_last_status"), Some(0.0));

    // The next night is incremental: the ledger carries a change and a
    // new file of the SSD service.
    put(&svc.join("data/f03.bin"), b"changed");
    put(&svc.join("data/new.bin"), b"new");
    lab.nfs_mirror(false).succeeds();
    let ledger = std::fs::read_to_string(lab.root.join(".changed-files")).expect("ledger");
    assert!(
        ledger
            .lines()
            .any(|l| l == "nfs-ssd/vaultwarden/data/f03.bin"),
        "{ledger}"
    );
    let r = lab.offsite("all");
    r.succeeds();
    assert!(!r.stdout.contains("full pass"), "{}", r.stdout);
    assert_same_files(&on_nas, &svc);
    let cov = lab.offsite("coverage");
    cov.succeeds();
    let line = cov
        .stdout
        .lines()
        .find(|l| l.contains(" vaultwarden "))
        .expect("vaultwarden listed");
    assert!(
        line.contains("backup-disk") && line.contains("covered"),
        "{line}"
    );
}

/// The old configuration (nfs-mirror given /srv/nfs only) leaves a new
/// unlisted SSD service directory backed up by nothing: `coverage` exits 3
/// naming it, and the nightly `all` still sends what it can, then reports
/// backup_coverage_uncovered_dirs{root=SSD} 1 and exits 3. Before, both
/// exited 0. With the units' configuration the gap closes; a directory
/// that appears after the night's mirror run is pending, not a failure;
/// one that nfs-mirror sees and refuses is uncovered again.
#[test]
fn a_directory_no_running_leg_carries_fails_coverage_and_the_night() {
    let lab = Lab::new();
    let _tracker = lab.start_tracker();
    let svc = lab.ssd.join("paperless");
    for i in 0..5 {
        put(&svc.join(format!("media/doc{i}.pdf")), &[b'p'; 3000]);
    }
    lab.nfs_mirror(true).succeeds();
    let r = lab.offsite("coverage");
    r.fails_with(3)
        .stderr_contains(&format!("uncovered: {}/paperless", lab.ssd.display()))
        .stderr_contains("nfs-mirror has never mirrored");
    assert_eq!(
        r.stderr.matches("uncovered:").count(),
        1,
        "only the SSD service is uncovered: {}",
        r.stderr
    );
    let json = lab.offsite_args("coverage", &["--json"]);
    json.fails_with(3);
    let rows: serde_json::Value = serde_json::from_str(&json.stdout).expect("json");
    let uncovered: Vec<&str> = rows
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["state"] == "uncovered")
        .map(|r| r["name"].as_str().expect("name"))
        .collect();
    assert_eq!(uncovered, ["paperless"]);

    let all = lab.offsite("all");
    all.fails_with(3)
        .stderr_contains(&format!("uncovered: {}/paperless", lab.ssd.display()));
    // What could be sent was sent first.
    assert_eq!(
        std::fs::read(lab.pve().join("nextcloud/data/alice/report.odt")).expect("leg 1"),
        b"report"
    );
    assert!(!lab.pve().join("nfs-ssd/paperless").exists());
    assert_eq!(lab.coverage_metric("uncovered", &lab.ssd), Some(1.0));
    assert_eq!(lab.coverage_metric("uncovered", &lab.nfs), Some(0.0));
    let m = lab.metrics();
    assert_eq!(m.get("offsite_sync_last_status"), Some(1.0));
    assert_eq!(
        m.get("backup_last_success_timestamp"),
        None,
        "a night with an uncovered directory reported success"
    );

    // The units' configuration: both roots mirrored, the gap closes.
    lab.nfs_mirror(false).succeeds();
    lab.offsite("all").succeeds();
    assert_same_files(&lab.pve().join("nfs-ssd/paperless"), &svc);
    assert_eq!(lab.coverage_metric("uncovered", &lab.ssd), Some(0.0));

    // New after the night's mirror run: pending until the next one.
    put(&lab.ssd.join("jellyfin/config.xml"), b"cfg");
    let r = lab.offsite("coverage");
    r.succeeds()
        .stderr_contains(&format!("pending: {}/jellyfin", lab.ssd.display()));
    lab.offsite("all").succeeds();
    assert_eq!(lab.coverage_metric("pending", &lab.ssd), Some(1.0));
    assert_eq!(lab.coverage_metric("uncovered", &lab.ssd), Some(0.0));
    lab.nfs_mirror(false).succeeds();
    lab.offsite("coverage").succeeds();
    lab.offsite("all").succeeds();
    assert!(lab.pve().join("nfs-ssd/jellyfin/config.xml").is_file());

    // Seen by nfs-mirror and refused (a dot name is never mirrored): the
    // mirror run says so (exit 3) and coverage keeps it uncovered.
    put(&lab.ssd.join(".hidden-svc/data"), b"d");
    lab.nfs_mirror(false).fails_with(3);
    lab.offsite("coverage")
        .fails_with(3)
        .stderr_contains(&format!("uncovered: {}/.hidden-svc", lab.ssd.display()))
        .stderr_contains("never mirrored it");
}
