//! A tool SIGKILLed outside systemd (no cgroup kill) must not leave its
//! rsync or ssh running on: children started through `Cmd` die with it.
//! The binary runs itself again as the "tool" and kills that process.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use backup_core::cmd::Cmd;

fn alive(pid: i32) -> bool {
    // A zombie waiting for its new parent to reap it is dead for us.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

fn main() {
    if let Ok(pidfile) = std::env::var("CMD_PIDFILE") {
        let script =
            format!("echo $$ > '{pidfile}.tmp' && mv '{pidfile}.tmp' '{pidfile}' && exec sleep 60");
        let _ = Cmd::new("sh")
            .args(["-c", &script])
            .timeout(Duration::from_secs(120))
            .run();
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile: PathBuf = dir.path().join("child.pid");
    let mut tool = Command::new(std::env::current_exe().expect("exe"))
        .env("CMD_PIDFILE", &pidfile)
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    while !pidfile.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "child never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let child: i32 = std::fs::read_to_string(&pidfile)
        .expect("pid")
        .trim()
        .parse()
        .expect("pid");
    assert!(alive(child), "child runs while the tool runs");
    tool.kill().expect("SIGKILL the tool");
    let _ = tool.wait();
    let start = Instant::now();
    while alive(child) {
        if start.elapsed() > Duration::from_secs(10) {
            // SAFETY: clean up the process we started before failing.
            unsafe {
                libc::kill(child, libc::SIGKILL);
            }
            panic!("the child outlived its killed parent");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("1 passed, 0 failed");
}
