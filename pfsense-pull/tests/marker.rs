//! Contract 13 on the backup disk: pfsense-pull writes --dest only on a
//! backup root carrying its identity marker (found upwards on the same
//! filesystem), and (contract 12) only while it still does: a disk
//! unmounted while the firewall answers gets nothing on the bare
//! mountpoint beneath and no ledger line.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use backup_tests::harness::{Run, Sandbox, init_backup_root, must, tree_of};
use support::api_emu::{ApiEmu, Certs, Reply};
use support::config_xml;

const KEY: &str = "0123456789abcdef0123456789abcdef";
const DAY: &str = "2026-11-24"; // Tuesday, week 48

fn cmd(sb: &Sandbox, root: &Path, emu: &ApiEmu, certs: &Certs) -> Command {
    let key = sb.write("api.key", format!("{KEY}\n"));
    let mut c = sb.cmd("pfsense-pull");
    c.arg("--dest")
        .arg(root.join("pfsense"))
        .arg("--metrics-file")
        .arg(sb.path().join("pfsense.prom"))
        .args(["--today", DAY, "--config-from", "api", "--api-url"])
        .arg(emu.url())
        .arg("--api-key-file")
        .arg(key)
        .arg("--ca-file")
        .arg(certs.ca());
    c
}

#[test]
fn a_destination_on_a_root_without_its_marker_is_refused_and_nothing_is_created() {
    let certs = Certs::new();
    let xml = config_xml(30, "fw-api");
    let emu = ApiEmu::start(&certs, KEY, Reply::Good(xml.clone()));
    let sb = Sandbox::new();
    let root = sb.mkdir("backup");
    for extra in [&[][..], &["--dry-run"][..]] {
        Run::of(cmd(&sb, &root, &emu, &certs).args(extra))
            .fails_with(5)
            .stderr_contains(&root.join("pfsense").display().to_string())
            .stderr_contains("offsite-sync init --local");
        assert_eq!(tree_of(&root), Vec::<String>::new(), "{extra:?}");
    }
    assert!(emu.seen.lock().expect("lock").is_empty(), "fetched anyway");
    // Initialised once, the same tree is accepted.
    init_backup_root(&root);
    Run::of(&mut cmd(&sb, &root, &emu, &certs)).succeeds();
    assert_eq!(
        std::fs::read(root.join("pfsense/2026-W48/config-20261124.xml")).expect("copy"),
        xml
    );
}

#[test]
fn a_backup_disk_unmounted_while_the_firewall_answers_gets_nothing() {
    let certs = Certs::new();
    let xml = config_xml(30, "fw-api");
    let emu = ApiEmu::start(
        &certs,
        KEY,
        Reply::Late(Duration::from_millis(1500), xml.clone()),
    );
    let sb = Sandbox::new();
    let root: PathBuf = sb.mount_backup_disk("backup", 16 << 20);
    let mut child = cmd(&sb, &root, &emu, &certs)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // The request reached the firewall: the run is waiting for the reply.
    let start = Instant::now();
    while emu.seen.lock().expect("lock").is_empty() {
        assert!(start.elapsed() < Duration::from_secs(30), "no request");
        assert!(child.try_wait().expect("wait").is_none(), "ended too soon");
        std::thread::sleep(Duration::from_millis(10));
    }
    must(Command::new("umount").arg("-l").arg(&root));
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the fault landed after the run ended"
    );
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        tree_of(&root),
        Vec::<String>::new(),
        "written on the bare mountpoint:\n{stderr}"
    );
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("since the run started"), "{stderr}");
}
