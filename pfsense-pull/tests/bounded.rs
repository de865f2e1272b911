//! What pfsense-pull reads from the firewall is bounded (issue 4): a huge
//! config reply is stopped at `--max-config-size` with the process's memory
//! staying low, the full tar streams to disk (never into memory) up to
//! `--max-tar-size`, and a missing ssh is "command absent" (exit 5).
//! Against a real sshd on loopback, like `ssh.rs`.

mod support;

use std::io::Read;
use std::process::{Command, Stdio};

use backup_tests::harness::Run;
use backup_tests::sshd::{Sshd, SshdOpts};
use support::{Backup, Firewall};

// 2026-11-28 is a Saturday (no tar with auto), 2026-11-29 a Sunday.
const SATURDAY: &str = "2026-11-28";
const SUNDAY: &str = "2026-11-29";

/// `VmHWM` (peak resident set size) of a live process, in kB.
fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    if status
        .lines()
        .any(|l| l.starts_with("State:") && l.contains('Z'))
    {
        return None;
    }
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Run `cmd` to its end; also return its peak resident set size in MB,
/// polled from /proc every few ms while it runs. (`ru_maxrss` from wait4
/// would count the test process's own peak: the child shares or copies its
/// memory until exec.)
fn run_measured(cmd: &mut Command) -> (Run, u64) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let pid = child.id();
    let poll = std::thread::spawn(move || {
        let mut peak = 0;
        while let Some(kb) = vm_hwm_kb(pid) {
            peak = peak.max(kb);
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        peak
    });
    let status = child.wait().expect("wait");
    let peak_kb = poll.join().expect("poll thread");
    let run = Run {
        code: status.code().unwrap_or(-1),
        stdout: t_out.join().expect("stdout thread"),
        stderr: t_err.join().expect("stderr thread"),
    };
    (run, peak_kb / 1024)
}

/// Peak RSS allowed for a run whatever the firewall sends. A normal run
/// peaks at about 8 MB; the config cap (32 MiB) is the rest.
const RSS_LIMIT_MB: u64 = 64;

#[test]
fn a_300_mb_config_reply_is_stopped_at_the_cap_with_memory_bounded() {
    let fw = Firewall::new();
    // 300 MB of reply (a sparse file: no disk used on either side).
    let huge = fw.path().join("cf/conf/huge.xml");
    std::fs::File::create(&huge)
        .and_then(|f| f.set_len(300_000_000))
        .expect("sparse file");
    let sshd = Sshd::start(SshdOpts::default());
    let b = Backup::new();
    let mut cmd = b.ssh_cmd_with(&sshd, &fw, SATURDAY, sshd.known_hosts(), &huge);
    let (run, rss_mb) = run_measured(&mut cmd);
    eprintln!("pfsense-pull, 300 MB config reply: peak RSS {rss_mb} MB");
    run.fails_with(1)
        .stderr_contains("ssh: output exceeds 32 MiB, stopped");
    assert!(
        rss_mb < RSS_LIMIT_MB,
        "peak RSS {rss_mb} MB (limit {RSS_LIMIT_MB} MB)\n{}",
        run.stderr
    );
    assert!(b.files().is_empty(), "{:?}", b.files());
    assert_eq!(b.metric("pfsense_config_ok"), 0.0);

    // A lower cap is taken as given, and named.
    let mut cmd = b.ssh_cmd_with(&sshd, &fw, SATURDAY, sshd.known_hosts(), &huge);
    cmd.args(["--max-config-size", "1MiB"]);
    Run::of(&mut cmd)
        .fails_with(1)
        .stderr_contains("ssh: output exceeds 1 MiB, stopped");

    // A normal config still goes through, with the same cap.
    Run::of(&mut b.ssh_cmd(&sshd, &fw, SATURDAY)).succeeds();
    assert_eq!(b.files(), ["2026-W48/config-20261128.xml"]);
}

/// Write `len` bytes of incompressible data to `path` in chunks.
fn random_file(path: &std::path::Path, len: usize) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("create");
    // xorshift: fast, incompressible enough for gzip.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for b in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
        }
        let n = left.min(buf.len());
        f.write_all(&buf[..n]).expect("write");
        left -= n;
    }
}

/// The bytes of `name` inside a .tar.gz, compared with `want` in chunks.
fn tar_member_equals(tar_gz: &std::path::Path, name: &str, want: &std::path::Path) -> bool {
    let f = std::fs::File::open(tar_gz).expect("open tar");
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    for e in ar.entries().expect("entries") {
        let mut e = e.expect("entry");
        if e.path().expect("path").display().to_string() != name {
            continue;
        }
        let mut other = std::fs::File::open(want).expect("open original");
        let (mut a, mut b) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
        loop {
            let n = e.read(&mut a).expect("read member");
            if n == 0 {
                return other.read(&mut b).expect("read original") == 0;
            }
            other.read_exact(&mut b[..n]).expect("original as long");
            if a[..n] != b[..n] {
                return false;
            }
        }
    }
    false
}

#[test]
fn the_full_tar_streams_to_disk_with_memory_bounded_and_is_identical() {
    let fw = Firewall::new();
    let big = fw.path().join("var/db/big.bin");
    random_file(&big, 128 << 20);
    let sshd = Sshd::start(SshdOpts::default());
    let b = Backup::new();
    let mut cmd = b.ssh_cmd(&sshd, &fw, SUNDAY);
    cmd.args(["--timeout", "900s"]);
    let (run, rss_mb) = run_measured(&mut cmd);
    eprintln!("pfsense-pull, full tar of a 128 MiB tree: peak RSS {rss_mb} MB");
    run.succeeds();
    assert!(
        rss_mb < RSS_LIMIT_MB,
        "peak RSS {rss_mb} MB (limit {RSS_LIMIT_MB} MB)"
    );
    let tar = b.dest().join("2026-W48/pfsense-full-20261129.tar.gz");
    let size = std::fs::metadata(&tar).expect("tar kept").len();
    assert!(size > 128 << 20, "tar is {size} bytes");
    let root = fw.path().display().to_string();
    let name = format!("{}/var/db/big.bin", root.trim_start_matches('/'));
    assert!(
        tar_member_equals(&tar, &name, &big),
        "{name} in the tar differs from the firewall's file"
    );
}

#[test]
fn a_tar_beyond_its_cap_is_stopped_and_nothing_is_kept() {
    let fw = Firewall::new();
    random_file(&fw.path().join("var/db/big.bin"), 8 << 20);
    let sshd = Sshd::start(SshdOpts::default());
    let b = Backup::new();
    let mut cmd = b.ssh_cmd(&sshd, &fw, SUNDAY);
    cmd.args(["--max-tar-size", "2MiB"]);
    Run::of(&mut cmd)
        .fails_with(3)
        .stderr_contains("full tar failed: ssh: output exceeds 2 MiB, stopped");
    // The config is kept; no tar and no partial beside it.
    assert_eq!(b.files(), ["2026-W48/config-20261129.xml"]);
    assert_eq!(b.metric("pfsense_full_tar_taken"), 0.0);
}

#[test]
fn a_missing_ssh_is_command_absent_exit_5() {
    let fw = Firewall::new();
    let b = Backup::new();
    let empty = tempfile::tempdir().expect("tmp");
    // No ssh on PATH (the tool itself is started by its full path).
    let mut cmd = b.cmd(SUNDAY);
    cmd.env("PATH", empty.path())
        .args(["--ssh", "root@127.0.0.1", "--known-hosts"])
        .arg(fw.config_path())
        .arg("--tar-root")
        .arg(fw.path());
    let run = Run::of(&mut cmd);
    run.fails_with(5);
    // One line, naming the command.
    assert_eq!(
        run.stderr.trim_end(),
        "pfsense-pull: error: command absent: ssh (not found in PATH)"
    );
    assert!(b.files().is_empty(), "{:?}", b.files());
}

#[test]
fn an_api_reply_beyond_the_cap_is_stopped() {
    use support::api_emu::{ApiEmu, Certs, Reply};
    const KEY: &str = "0123456789abcdef0123456789abcdef";
    let certs = Certs::new();
    // 2 MiB of config.xml: its base64 alone is 2.7 MiB.
    let emu = ApiEmu::start(&certs, KEY, Reply::Good(vec![b'x'; 2 << 20]));
    let b = Backup::new();
    let key = b.sb.write("api.key", format!("{KEY}\n"));
    let mut c = b.cmd(SATURDAY);
    c.args([
        "--config-from",
        "api",
        "--max-config-size",
        "1MiB",
        "--api-url",
    ])
    .arg(emu.url())
    .arg("--api-key-file")
    .arg(key)
    .arg("--ca-file")
    .arg(certs.ca());
    // The cap on the reply: base64 of 1 MiB plus 64 KiB for the envelope.
    Run::of(&mut c)
        .fails_with(1)
        .stderr_contains(": reply exceeds 1463637 bytes (1.4 MiB), stopped");
    assert!(b.files().is_empty(), "{:?}", b.files());
}
