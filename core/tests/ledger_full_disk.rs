//! A ledger on a full filesystem: appends fail with an error, and no half
//! line is ever left for the next append to complete into a wrong path.
//! Runs itself again inside a private mount namespace (`unshare -m`) with a
//! small tmpfs, so nothing is mounted on the host.

use std::path::Path;
use std::process::Command;

use backup_core::ledger::{Ledger, PathKind};

fn inner(dir: &Path) {
    let ledger = Ledger::new(dir.join(".changed-files"), PathKind::Relative);
    let long = "x".repeat(3000);
    let mut ok = 0usize;
    let mut failed = 0usize;
    for i in 0..200 {
        let name = format!("week/{i}/{long}");
        match ledger.append([name.as_bytes()]) {
            Ok(_) => ok += 1,
            Err(_) => failed += 1,
        }
    }
    assert!(
        ok > 0 && failed > 0,
        "the filesystem should fill part-way: ok={ok} failed={failed}"
    );
    let text = std::fs::read(ledger.path()).expect("read");
    assert_eq!(
        text.last(),
        Some(&b'\n'),
        "the ledger ends with a whole line"
    );
    let d = ledger.read().expect("read");
    assert_eq!(
        d.entries.len(),
        ok,
        "exactly the acknowledged appends are in the ledger"
    );
    for e in &d.entries {
        assert!(
            e.to_string_lossy().ends_with(&long),
            "truncated entry {}",
            e.display()
        );
    }
    println!("appends ok={ok} refused={failed} truncated=0");
}

fn main() {
    if let Ok(dir) = std::env::var("LEDGER_FULL_DIR") {
        inner(Path::new(&dir));
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("exe");
    let script = format!(
        "mount -t tmpfs -o size=256k tmpfs '{0}' && LEDGER_FULL_DIR='{0}' exec '{1}'",
        tmp.path().display(),
        exe.display()
    );
    let st = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .status()
        .expect("unshare");
    assert!(st.success(), "full-disk scenario failed");
    println!("1 passed, 0 failed");
}
