//! Two nights of the whole pipeline on a sandbox homelab, every tool a
//! separate process run with the argument list of its systemd unit
//! (units/*.service; host paths mapped into the sandbox), and push-metric
//! after each as the unit's ExecStopPost= does.
//!
//! Real: ext4 images mounted read-only by pvc-copy, rsync, SQLite, an
//! OpenSSH sshd on loopback playing the NAS, a Pushgateway, nfs-track's
//! fanotify/inotify watch. Emulated (tests/src/emu): LVM (`lvs`,
//! `lvcreate`, ... stand for the Proxmox thin pool `pve/data`) and kubectl
//! (stands for the cluster's PV -> namespace/claim mapping); the CI kernel
//! has no device-mapper and there is no cluster.
//!
//! The backup root is a real ext4 filesystem on a loop device, so the
//! backup-disk guards (pvc-copy's mount and free-space checks, nfs-track's
//! `--require-mountpoint`) run as on the host.
//!
//! The units carry no paths: every tool reads the sandbox's configuration
//! file (BACKUP_PIPELINE_CONFIG), as on the host /etc/default/backup-pipeline.
//!
//! Sandbox deviations from the units, each because the host piece is absent:
//! ALLOW_UNMOUNTED_ROOT=1 for nfs-mirror, nfs-track and offsite-sync (they
//! also require the NFS roots to be mount points, plain directories here;
//! pvc-copy and sqlite-dump run with the guard on); daily-backup's `pvc-copy preflight` line is not
//! run (no NFS server; pvc-copy's own unit test covers it with stand-ins);
//! the night's instant is injected with the tools' `--now`.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backup_tests::emu::EmuHost;
use backup_tests::harness::{Run, Sandbox};
use backup_tests::nas::Nas;
use backup_tests::pushgateway::Pushgateway;
use backup_tests::unitfile::{PathMap, UnitFile, with_value, without};

const VG: &str = "pve";
const TAG: &str = "backup-pipeline.lvm-snap";
/// Sunday of ISO week 2026-W47, then the Monday of 2026-W48.
const NIGHT1: &str = "2026-11-22T03:00:00Z";
const NIGHT1_COPY: &str = "2026-11-22T05:00:00Z";
const WEEK1: &str = "2026-W47";
const NIGHT2: &str = "2026-11-23T03:00:00Z";
const NIGHT2_COPY: &str = "2026-11-23T05:00:00Z";
const WEEK2: &str = "2026-W48";

/// (LV, namespace, claim)
const PVCS: [(&str, &str, &str); 3] = [
    ("vm-100-pvc-0a1b", "vaultwarden", "vaultwarden-data"),
    ("vm-101-pvc-2c3d", "media", "jellyfin-library"),
    ("vm-102-pvc-4e5f", "notes", "notes-data"),
];

/// In namespace dbaas: never snapshotted nor copied.
const EXCLUDED: (&str, &str, &str) = ("vm-103-pvc-6a7b", "dbaas", "postgres-data");

struct Lab {
    sb: Sandbox,
    host: EmuHost,
    pg: Pushgateway,
    nas: Nas,
    root: PathBuf,
    nfs: PathBuf,
    nas_store: PathBuf,
    rt: PathBuf,
    paths: PathMap,
    /// Rows of the vaultwarden database: in its main file alone, and in all.
    db_rows_main: u64,
    db_rows_all: u64,
}

fn sh(cmd: &mut Command) {
    let o = cmd.output().expect("spawn");
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn sqlite_count(db: &Path) -> u64 {
    // immutable=1: read without creating -wal/-shm beside the file.
    let o = Command::new("sqlite3")
        .arg(format!("file:{}?immutable=1", db.display()))
        .arg("SELECT count(*) FROM ciphers")
        .output()
        .expect("sqlite3");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .expect("count")
}

/// Regular files under `dir` (relative path -> content).
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)
            .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
            .flatten()
        {
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

fn ledger_lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

fn inflight_left(root: &Path) -> Vec<String> {
    std::fs::read_dir(root)
        .expect("root")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".inflight"))
        .collect()
}

impl Lab {
    fn new() -> Lab {
        let sb = Sandbox::new();
        let host = EmuHost::new(sb.path().join("emu"));
        host.add_pool(VG, "data", 4 << 30);
        // The backup disk: its own ext4 filesystem, as on the host.
        let root = sb.mount_backup_disk("mnt/backup", 1 << 30);
        let nfs = sb.mkdir("srv/nfs");
        let nfs_ssd = sb.mkdir("srv/nfs-ssd");
        let rt = sb.mkdir("run/backup-pipeline");
        let nas_store = sb.mkdir("nas/Backup/Viki");
        let skip = sb.write(
            "etc/backup-skip-list.conf",
            "# routes of the NFS trees\ndirect immich\nnever frigate\n",
        );
        sb.mkdir("var/lib/nfs-track");
        sb.mkdir("var/lib/backup-pipeline");
        let paths = PathMap::new(&[
            ("/mnt/backup", &root),
            ("/srv/nfs", &nfs),
            ("/srv/nfs-ssd", &nfs_ssd),
            ("/etc/backup-skip-list.conf", &skip),
            ("/run/backup-pipeline", &rt),
            ("/var/lib/nfs-track", &sb.path().join("var/lib/nfs-track")),
            (
                "/var/lib/backup-pipeline",
                &sb.path().join("var/lib/backup-pipeline"),
            ),
        ]);

        // --- The PVCs: real ext4 images; vaultwarden's database has rows
        // that exist only in its -wal (the writer was open at snapshot time).
        let src = sb.mkdir("pvc-src");
        let vw = src.join("vw");
        std::fs::create_dir_all(vw.join("data")).expect("mkdir");
        let live = sb.path().join("live.db");
        let script = format!(
            "PRAGMA journal_mode=WAL;\nPRAGMA wal_autocheckpoint=0;\n\
             CREATE TABLE ciphers(id INTEGER PRIMARY KEY, data BLOB);\n\
             INSERT INTO ciphers(data) SELECT randomblob(100) FROM generate_series(1, 50);\n\
             PRAGMA wal_checkpoint(TRUNCATE);\n\
             INSERT INTO ciphers(data) SELECT randomblob(100) FROM generate_series(1, 70);\n\
             .system cp {l} {d}/db.sqlite3 && cp {l}-wal {d}/db.sqlite3-wal && cp {l}-shm {d}/db.sqlite3-shm\n",
            l = live.display(),
            d = vw.join("data").display()
        );
        let mut c = Command::new("sqlite3");
        c.arg(&live)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("sqlite3");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("script");
        let o = child.wait_with_output().expect("sqlite3");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(vw.join("data/db.sqlite3-wal").is_file(), "no -wal copied");
        std::fs::write(vw.join("data/config.json"), b"{\"domain\": \"vault\"}").expect("w");
        // The main file alone (what a plain cp of it would give).
        let main_only = sb.path().join("main-only.db");
        std::fs::copy(vw.join("data/db.sqlite3"), &main_only).expect("cp");
        let db_rows_main = sqlite_count(&main_only);
        let db_rows_all = 120;
        assert!(db_rows_main < db_rows_all, "the WAL holds no extra rows");

        let media = src.join("media");
        std::fs::create_dir_all(media.join("library/2026")).expect("mkdir");
        std::fs::write(media.join("library/2026/movie.mkv"), vec![0x4du8; 600_000]).expect("w");
        std::fs::write(media.join("library/poster.jpg"), vec![0x50u8; 40_000]).expect("w");
        let notes = src.join("notes");
        std::fs::create_dir_all(notes.join("pages")).expect("mkdir");
        std::fs::write(notes.join("pages/todo.txt"), b"buy milk\n").expect("w");
        std::fs::write(notes.join("pages/ideas.md"), b"# ideas\n").expect("w");
        for ((lv, ns, claim), dir) in PVCS.iter().zip([&vw, &media, &notes]) {
            host.add_thin_lv_from_dir(VG, "data", lv, 32 << 20, dir);
            host.add_pv(ns, claim, lv);
        }
        // A database PVC: lvm-snap's default exclusions and daily-backup's
        // EXCLUDED_NAMESPACES (read by both tools) leave it out (backed up by its own dumps).
        let (lv, ns, claim) = EXCLUDED;
        let pg_dir = src.join("pg");
        std::fs::create_dir_all(&pg_dir).expect("mkdir");
        std::fs::write(pg_dir.join("PG_VERSION"), b"16\n").expect("w");
        host.add_thin_lv_from_dir(VG, "data", lv, 32 << 20, &pg_dir);
        host.add_pv(ns, claim, lv);

        // --- The NFS trees: leg 1 (nextcloud, calibre), direct (immich on
        // both roots), never (frigate).
        let put = |p: PathBuf, data: &[u8]| {
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, data).expect("write");
        };
        put(nfs.join("nextcloud/data/alice/report.odt"), b"report v1");
        put(nfs.join("nextcloud/data/bob/notes.txt"), b"bob");
        put(nfs.join("calibre/library/book.epub"), &[0x42u8; 30_000]);
        put(nfs.join("immich/upload/IMG_0001.jpg"), &[0x49u8; 50_000]);
        put(nfs_ssd.join("immich/thumbs/IMG_0001.webp"), b"thumb");
        // An unlisted service on the SSD root: leg 1 too (issue 2).
        put(nfs_ssd.join("vaultwarden/data/rsa_key.pem"), b"ssd leg 1");
        put(nfs.join("frigate/cam1/clip.mp4"), b"never offsite");

        let pg = Pushgateway::start();
        let nas = Nas::start(&sb.path().join("nas-sshd"));
        // The site configuration: the units carry no path, every tool reads
        // this file (as /etc/default/backup-pipeline on the host).
        let state = sb.path().join("var/lib/backup-pipeline");
        sb.write_config(&[
            ("BACKUP_ROOT", &root),
            ("NFS_ROOT", &nfs),
            ("NFS_SSD_ROOT", &nfs_ssd),
            ("BACKUP_SKIP_LIST", &skip),
            ("NFS_TRACK_STATE_DIR", &sb.path().join("var/lib/nfs-track")),
            ("MAPPING_CACHE", &state.join("lv-pvc-mapping.json")),
            ("LVM_SNAP_STATE_DIR", &state),
            ("OFFSITE_PVE_DEST", &nas_store.join("pve-backup")),
            ("OFFSITE_NFS_DEST", &nas_store.join("nfs")),
            ("OFFSITE_NFS_SSD_DEST", &nas_store.join("nfs-ssd")),
        ]);
        Lab {
            sb,
            host,
            pg,
            nas,
            root,
            nfs,
            nas_store,
            rt,
            paths,
            db_rows_main,
            db_rows_all,
        }
    }

    /// A command for `words` (program `/usr/local/bin/<tool>`) with the
    /// unit's Environment= mapped into the sandbox.
    fn unit_cmd(&self, unit: &UnitFile, words: &[String]) -> Command {
        let prog = words[0]
            .strip_prefix("/usr/local/bin/")
            .unwrap_or_else(|| panic!("not a pipeline tool: {}", words[0]));
        let mut c = self.sb.cmd(prog);
        c.args(self.paths.map_all(&words[1..]));
        for (k, v) in unit.environment() {
            c.env(k, self.paths.map(&v));
        }
        c.env("PUSHGATEWAY_URL", self.pg.url());
        c
    }

    /// The unit's ExecStopPost= push-metric, with the variables systemd
    /// sets for a oneshot that exited `rc`.
    fn push(&self, unit: &UnitFile, rc: i32) {
        let words = unit.command_of("ExecStopPost", "push-metric");
        let mut c = self.unit_cmd(unit, &words);
        let result = if rc == 0 { "success" } else { "exit-code" };
        c.env("SERVICE_RESULT", result)
            .env("EXIT_CODE", "exited")
            .env("EXIT_STATUS", rc.to_string());
        Run::of(&mut c).succeeds();
    }

    fn emu(&self, c: &mut Command) {
        c.envs(self.host.env());
    }

    fn nfs_mirror(&self) -> Run {
        let unit = UnitFile::load("nfs-mirror.service");
        let words = without(
            &unit.command_of("ExecStart", "nfs-mirror"),
            "--require-mountpoint",
            false,
        );
        let r = Run::of(&mut self.unit_cmd(&unit, &words));
        self.push(&unit, r.code);
        r
    }

    fn lvm_snap(&self, now: &str) -> Run {
        let unit = UnitFile::load("lvm-snap.service");
        let words = unit.command_of("ExecStart", "lvm-snap");
        let mut c = self.unit_cmd(&unit, &words);
        self.emu(&mut c);
        c.args(["--now", now]);
        let r = Run::of(&mut c);
        self.push(&unit, r.code);
        r
    }

    /// daily-backup: pvc-copy, then sqlite-dump over the week's copy, then
    /// the unit's own verdict from the two metrics files.
    fn daily_backup(&self, now: &str, week: &str) -> (Run, Run) {
        let unit = UnitFile::load("daily-backup.service");
        let words: Vec<String> = unit
            .commands("ExecStart")
            .into_iter()
            .find(|w| w[0] == "/usr/local/bin/pvc-copy" && w[1] == "--metrics-file")
            .expect("pvc-copy line");
        let mut c = self.unit_cmd(&unit, &words);
        self.emu(&mut c);
        // The backup disk is a real mount here: the mountpoint guard is on.
        c.env_remove("ALLOW_UNMOUNTED_ROOT")
            .arg("--mapper-dir")
            .arg(self.host.mapper_dir())
            .arg("--work-dir")
            .arg(self.sb.mkdir("work"))
            .args(["--mount-retry-delay", "0s", "--now", now]);
        let copy = Run::of(&mut c);
        // The unit's sqlite-dump line: its default is this week's copy; the
        // night's week (not today's) is given here.
        let words = unit.command_of("ExecStart", "sqlite-dump");
        let mut c = self.unit_cmd(&unit, &words);
        c.env_remove("ALLOW_UNMOUNTED_ROOT")
            .arg(self.root.join("pvc-data").join(week))
            .arg("--to")
            .arg(self.root.join("sqlite-backup").join(week));
        let dump = Run::of(&mut c);
        let prom = |f: &str| std::fs::read_to_string(self.rt.join(f)).unwrap_or_default();
        let ok = prom("pvc-copy.prom")
            .lines()
            .any(|l| l == "pvc_copy_exit_code 0")
            && prom("sqlite-dump.prom")
                .lines()
                .any(|l| l == "sqlite_dump_databases_failed 0");
        let rc = if copy.code == 0 && dump.code == 0 && ok {
            0
        } else {
            1
        };
        self.push(&unit, rc);
        (copy, dump)
    }

    fn offsite_sync(&self) -> Run {
        let unit = UnitFile::load("offsite-sync.service");
        let words = without(
            &unit.command_of("ExecStart", "offsite-sync"),
            "--require-mountpoint",
            false,
        );
        let mut c = self.unit_cmd(&unit, &words);
        // Paths and NAS destinations come from the configuration file.
        c.args(self.nas.flags()).args(["--keepalive", "2s"]);
        let r = Run::of(&mut c);
        self.push(&unit, r.code);
        r
    }

    /// `offsite-sync init`, once, as the operator does on the first run:
    /// the NAS destinations get their identity markers (contract 13).
    fn offsite_init(&self) {
        let mut c = self.sb.cmd("offsite-sync");
        c.arg("init").args(self.nas.flags());
        Run::of(&mut c).succeeds();
    }

    /// nfs-track as its unit runs it, flushing and reporting every second.
    fn start_tracker(&self) -> Tracker {
        let unit = UnitFile::load("nfs-track.service");
        let words = unit.command_of("ExecStart", "nfs-track");
        let words = with_value(&words, "--metrics-interval", "1s");
        let mut c = self.unit_cmd(&unit, &words);
        c.args(["--flush-interval", "1s"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(self.sb.path().join("nfs-track.log")).expect("log"),
            ));
        let prom = self.rt.join("nfs-track.prom");
        let mut child = c.spawn().expect("nfs-track");
        // The metrics file is written once the watches are set up.
        let start = Instant::now();
        while !prom.exists() {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "nfs-track exited {st}: {}",
                    std::fs::read_to_string(self.sb.path().join("nfs-track.log"))
                        .unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "nfs-track not up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Tracker(child)
    }

    fn pve(&self) -> PathBuf {
        self.nas_store.join("pve-backup")
    }

    fn week_dest(&self, week: &str, ns: &str, claim: &str) -> PathBuf {
        self.pve().join("pvc-data").join(week).join(ns).join(claim)
    }

    #[track_caller]
    fn assert_pushed_success(&self, jobs: &[(&str, &str)], after: f64) {
        for (job, prefix) in jobs {
            assert_eq!(
                self.pg.value(job, &format!("{prefix}_last_status")),
                Some(0.0),
                "{job}: status"
            );
            let ts = self
                .pg
                .value(job, &format!("{prefix}_last_success_timestamp"))
                .unwrap_or(0.0);
            assert!(ts >= after, "{job}: success timestamp {ts} < {after}");
        }
    }

    /// The NAS copy of every PVC in `week` equals the LV's files.
    #[track_caller]
    fn assert_pvcs_on_nas(&self, week: &str) {
        for (lv, ns, claim) in PVCS {
            let want = self.host.lv_files(VG, lv);
            let got = files(&self.week_dest(week, ns, claim));
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                want.keys().collect::<Vec<_>>(),
                "{week} {ns}/{claim} on the NAS"
            );
            assert!(got == want, "{week} {ns}/{claim}: contents differ");
        }
    }
}

struct Tracker(Child);

impl Drop for Tracker {
    fn drop(&mut self) {
        // SIGTERM (what systemctl stop sends), then reap.
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as f64
}

#[test]
fn two_nights_of_the_pipeline_reach_the_nas_and_the_pushgateway() {
    let lab = Lab::new();
    let _tracker = lab.start_tracker();
    let t0 = now_secs().floor();

    // ================================================================ night 1
    lab.nfs_mirror().succeeds();
    lab.lvm_snap(NIGHT1).succeeds();
    for (lv, _, _) in PVCS {
        let snaps: Vec<String> = lab.host.lvm().vgs[VG]
            .lvs
            .iter()
            .filter(|(_, l)| l.origin == lv && l.tags.iter().any(|t| t == TAG))
            .map(|(n, _)| n.clone())
            .collect();
        assert_eq!(snaps, vec![format!("{lv}_snap_20261122_0300")]);
    }
    let excluded_snaps = lab.host.lvm().vgs[VG]
        .lvs
        .values()
        .filter(|l| l.origin == EXCLUDED.0)
        .count();
    assert_eq!(excluded_snaps, 0, "the dbaas PVC was snapshotted");
    let (copy, dump) = lab.daily_backup(NIGHT1_COPY, WEEK1);
    copy.succeeds();
    dump.succeeds();
    lab.offsite_init();
    lab.offsite_sync().succeeds();
    assert!(
        !lab.pve()
            .join("pvc-data")
            .join(WEEK1)
            .join(EXCLUDED.1)
            .exists(),
        "the dbaas PVC reached the NAS"
    );

    // What an operator checks in the morning.
    lab.assert_pvcs_on_nas(WEEK1);
    let db = lab
        .pve()
        .join("sqlite-backup")
        .join(WEEK1)
        .join("vaultwarden/vaultwarden-data/data/db.sqlite3");
    assert_eq!(
        sqlite_count(&db),
        lab.db_rows_all,
        "the NAS copy lacks the rows that were only in the -wal (main file alone: {})",
        lab.db_rows_main
    );
    // Leg 1 via the backup disk; immich straight to nfs/ and nfs-ssd/;
    // frigate nowhere.
    let pve = lab.pve();
    assert_eq!(
        std::fs::read(pve.join("nextcloud/data/alice/report.odt")).expect("report"),
        b"report v1"
    );
    assert!(pve.join("calibre/library/book.epub").is_file());
    assert_eq!(
        std::fs::read(pve.join("nfs-ssd/vaultwarden/data/rsa_key.pem")).expect("SSD leg 1"),
        b"ssd leg 1"
    );
    assert!(
        !pve.join("immich").exists(),
        "immich went via the backup disk"
    );
    // Every top-level directory of both roots is carried (contract 15).
    let gaps = lab
        .pg
        .samples("offsite-backup-sync", "backup_coverage_uncovered_dirs");
    assert_eq!(gaps.len(), 2, "one coverage figure per NFS root: {gaps:?}");
    assert!(gaps.iter().all(|(_, v)| *v == 0.0), "{gaps:?}");
    assert!(
        lab.nas_store
            .join("nfs/immich/upload/IMG_0001.jpg")
            .is_file()
    );
    assert!(
        lab.nas_store
            .join("nfs-ssd/immich/thumbs/IMG_0001.webp")
            .is_file()
    );
    let everywhere = [&lab.root, &lab.nas_store];
    for top in everywhere {
        let hits: Vec<String> = files(top)
            .into_keys()
            .filter(|k| k.contains("frigate") || k.contains("clip.mp4"))
            .collect();
        assert!(
            hits.is_empty(),
            "frigate copied under {}: {hits:?}",
            top.display()
        );
    }
    // Both ledgers consumed, none left in flight.
    assert_eq!(inflight_left(&lab.root), Vec::<String>::new());
    assert_eq!(
        ledger_lines(&lab.root.join(".changed-files")),
        Vec::<String>::new()
    );
    let jobs = [
        ("lvm-pvc-snapshot", "lvm_snapshot"),
        ("daily-backup", "daily_backup"),
        ("nfs-mirror", "nfs_mirror"),
        ("offsite-backup-sync", "offsite_sync"),
    ];
    lab.assert_pushed_success(&jobs, t0);

    // ================================================================ night 2
    // One file changes in one PVC, one leg-1 NFS file and one direct one.
    let ino = |p: &Path| std::fs::metadata(p).expect("on the NAS").ino();
    let nas_book = pve.join("calibre/library/book.epub");
    let nas_photo = lab.nas_store.join("nfs/immich/upload/IMG_0001.jpg");
    let (book_ino, photo_ino) = (ino(&nas_book), ino(&nas_photo));
    let img = lab.host.fs_image(VG, "vm-102-pvc-4e5f");
    let new_todo = lab.sb.write("todo-v2.txt", "buy milk\nand bread\n");
    sh(Command::new("debugfs")
        .args(["-w", "-R", "rm /pages/todo.txt"])
        .arg(&img));
    sh(Command::new("debugfs")
        .arg("-w")
        .arg("-R")
        .arg(format!("write {} /pages/todo.txt", new_todo.display()))
        .arg(&img));
    std::fs::write(
        lab.nfs.join("nextcloud/data/alice/report.odt"),
        b"report v2",
    )
    .expect("w");
    let new_photo = lab.nfs.join("immich/upload/IMG_0002.jpg");
    std::fs::write(&new_photo, [0x32u8; 20_000]).expect("w");
    // nfs-track logs it (flushes every second).
    let leg2 = lab.root.join(".nfs-changes.log");
    let start = Instant::now();
    while !ledger_lines(&leg2).contains(&new_photo.display().to_string()) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "nfs-track did not log {}: {:?}",
            new_photo.display(),
            ledger_lines(&leg2)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let t1 = now_secs().floor();
    lab.nfs_mirror().succeeds();
    lab.lvm_snap(NIGHT2).succeeds();
    let (copy, dump) = lab.daily_backup(NIGHT2_COPY, WEEK2);
    copy.succeeds();
    dump.succeeds();

    // Before offsite-sync: the ledgers hold only what changed.
    let leg2_now: BTreeSet<String> = ledger_lines(&leg2).into_iter().collect();
    assert_eq!(
        leg2_now,
        BTreeSet::from([new_photo.display().to_string()]),
        "change log before offsite-sync"
    );
    let leg1_now = ledger_lines(&lab.root.join(".changed-files"));
    assert!(
        leg1_now.contains(&"nextcloud/data/alice/report.odt".to_string()),
        "{leg1_now:?}"
    );
    let unchanged_nfs: Vec<&String> = leg1_now
        .iter()
        .filter(|l| l.starts_with("nextcloud/data/bob") || l.starts_with("calibre"))
        .collect();
    assert!(
        unchanged_nfs.is_empty(),
        "unchanged NFS files in the ledger: {unchanged_nfs:?}"
    );
    // A new week is listed whole (its unchanged files are hard links to
    // the week before, locally and, below, on the NAS); last week's copy
    // is not listed again.
    let old_week: Vec<&String> = leg1_now
        .iter()
        .filter(|l| l.starts_with(&format!("pvc-data/{WEEK1}")))
        .collect();
    assert!(old_week.is_empty(), "last week listed again: {old_week:?}");
    let local_ino = |week: &str| {
        ino(&lab.root.join(format!(
            "pvc-data/{week}/media/jellyfin-library/library/2026/movie.mkv"
        )))
    };
    assert_eq!(
        local_ino(WEEK1),
        local_ino(WEEK2),
        "pvc-copy copied an unchanged file"
    );

    lab.offsite_sync().succeeds();
    lab.assert_pvcs_on_nas(WEEK2);
    assert_eq!(
        std::fs::read(
            lab.week_dest(WEEK2, "notes", "notes-data")
                .join("pages/todo.txt")
        )
        .expect("todo"),
        b"buy milk\nand bread\n"
    );
    // The NAS week shares the unchanged files with the week before.
    for (ns, claim, f, shared) in [
        ("media", "jellyfin-library", "library/2026/movie.mkv", true),
        ("notes", "notes-data", "pages/ideas.md", true),
        ("notes", "notes-data", "pages/todo.txt", false),
    ] {
        let a = ino(&lab.week_dest(WEEK1, ns, claim).join(f));
        let b = ino(&lab.week_dest(WEEK2, ns, claim).join(f));
        assert_eq!(a == b, shared, "{ns}/{claim}/{f}: shared inode {}", a == b);
    }
    let db2 = pve
        .join("sqlite-backup")
        .join(WEEK2)
        .join("vaultwarden/vaultwarden-data/data/db.sqlite3");
    assert_eq!(sqlite_count(&db2), lab.db_rows_all);
    assert_eq!(
        std::fs::read(pve.join("nextcloud/data/alice/report.odt")).expect("report"),
        b"report v2"
    );
    assert_eq!(
        std::fs::read(lab.nas_store.join("nfs/immich/upload/IMG_0002.jpg")).expect("photo"),
        vec![0x32u8; 20_000]
    );
    // Unchanged NFS files did not travel again (same file on the NAS).
    assert_eq!(ino(&nas_book), book_ino, "calibre was sent again");
    assert_eq!(ino(&nas_photo), photo_ino, "IMG_0001 was sent again");
    assert_eq!(inflight_left(&lab.root), Vec::<String>::new());
    assert_eq!(
        ledger_lines(&lab.root.join(".changed-files")),
        Vec::<String>::new()
    );
    assert_eq!(ledger_lines(&leg2), Vec::<String>::new());
    lab.assert_pushed_success(&jobs, t1);
}
