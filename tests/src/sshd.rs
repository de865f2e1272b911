//! A real OpenSSH sshd for tests: on loopback (a free port) or inside a
//! network namespace the test created, with its own host key, a client key
//! allowed to log in as the current user (root here), and a known_hosts file
//! that pins the host key. Killed (with every session it started) on drop.
//!
//! Stands for the pfSense firewall and the offsite NAS: both are reached
//! over plain SSH, so the real daemon is used, not an emulator.
//!
//! ```no_run
//! use backup_tests::sshd::{Sshd, SshdOpts};
//! let sshd = Sshd::start(SshdOpts::default());
//! let mut c = std::process::Command::new("ssh");
//! c.args(sshd.ssh_args()).arg(sshd.target()).arg("true");
//! ```

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to start the daemon.
#[derive(Debug, Clone, Default)]
pub struct SshdOpts {
    /// Run inside this network namespace (`ip netns exec NS sshd ...`).
    pub netns: Option<String>,
    /// Address to listen on (default 127.0.0.1).
    pub listen: Option<String>,
    /// Port (default: a free loopback port; inside a namespace, a random one).
    pub port: Option<u16>,
    /// Extra `sshd_config` lines.
    pub extra_config: Vec<String>,
}

pub struct Sshd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    host: String,
    client_key: PathBuf,
    known_hosts: PathBuf,
    log: PathBuf,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn keygen(path: &Path) {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "backup-tests", "-f"])
        .arg(path));
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn random_port() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    20_000 + ((nanos ^ std::process::id().wrapping_mul(2_654_435_761)) % 40_000) as u16
}

impl Sshd {
    /// Start sshd and wait until it listens. Panics with sshd's log on failure.
    pub fn start(opts: SshdOpts) -> Sshd {
        let mut last_log = String::new();
        // A free loopback port can be taken by someone else before sshd
        // binds it: retry with another port.
        for _ in 0..5 {
            match Self::try_start(&opts) {
                Ok(s) => return s,
                Err(log) => last_log = log,
            }
            if opts.port.is_some() {
                break;
            }
        }
        panic!("sshd did not start:\n{last_log}");
    }

    fn try_start(opts: &SshdOpts) -> Result<Sshd, String> {
        std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        let dir = tempfile::Builder::new()
            .prefix("sshd-test-")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        let host_key = d.join("host_key");
        let client_key = d.join("client_key");
        keygen(&host_key);
        keygen(&client_key);
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys"))
            .expect("authorized_keys");
        let host = opts.listen.clone().unwrap_or_else(|| "127.0.0.1".into());
        let port = opts.port.unwrap_or_else(|| {
            if opts.netns.is_some() {
                random_port()
            } else {
                free_port()
            }
        });
        let pubkey = std::fs::read_to_string(d.join("host_key.pub")).expect("host pub");
        let mut fields = pubkey.split_whitespace();
        let (kt, kb) = (
            fields.next().expect("key type"),
            fields.next().expect("key"),
        );
        let host_in_kh = if host.contains(':') {
            format!("[{host}]:{port}")
        } else if port == 22 {
            host.clone()
        } else {
            format!("[{host}]:{port}")
        };
        let known_hosts = d.join("known_hosts");
        std::fs::write(&known_hosts, format!("{host_in_kh} {kt} {kb}\n")).expect("known_hosts");
        let mut cfg = format!(
            "ListenAddress {host}\n\
             HostKey {hk}\n\
             PidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\n\
             StrictModes no\n\
             UsePAM no\n\
             PermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             MaxStartups 100\n\
             MaxSessions 50\n\
             LogLevel INFO\n\
             Subsystem sftp internal-sftp\n",
            hk = host_key.display(),
            d = d.display()
        );
        for l in &opts.extra_config {
            cfg.push_str(l);
            cfg.push('\n');
        }
        let cfg_path = d.join("sshd_config");
        std::fs::write(&cfg_path, cfg).expect("sshd_config");
        let log = d.join("sshd.log");
        let logf = std::fs::File::create(&log).expect("log");
        let sshd = ["/usr/sbin/sshd", "sshd"]
            .into_iter()
            .find(|p| !p.contains('/') || Path::new(p).exists())
            .expect("sshd");
        let mut cmd = match &opts.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, sshd]);
                c
            }
            None => Command::new(sshd),
        };
        cmd.arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&cfg_path)
            .arg("-p")
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf);
        let child = cmd.spawn().expect("spawn sshd");
        let mut s = Sshd {
            child: Some(child),
            dir,
            port,
            host,
            client_key,
            known_hosts,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = s.log_text();
            if text.contains("Server listening on") {
                return Ok(s);
            }
            let exited = s
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
                .is_some();
            if exited || Instant::now() > deadline {
                s.kill();
                return Err(s.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
    /// The listen address.
    pub fn host(&self) -> &str {
        &self.host
    }
    /// `root@HOST` (the login user is the one running the tests).
    pub fn target(&self) -> String {
        let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
        format!("{user}@{}", self.host)
    }
    /// The private key allowed to log in.
    pub fn client_key(&self) -> &Path {
        &self.client_key
    }
    /// A known_hosts file holding exactly this daemon's host key.
    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }
    /// Scratch directory of this daemon (keys, config, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    /// sshd's own log so far (`-e`: everything on stderr).
    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }
    /// Client options for a strict, non-interactive connection to this daemon.
    pub fn ssh_args(&self) -> Vec<String> {
        vec![
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o".into(),
            "GlobalKnownHostsFile=/dev/null".into(),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-i".into(),
            self.client_key.display().to_string(),
            "-p".into(),
            self.port.to_string(),
        ]
    }
    /// The same options as one `ssh ...` command line, for `rsync -e`.
    pub fn ssh_command(&self) -> String {
        let mut s = String::from("ssh");
        for a in self.ssh_args() {
            s.push(' ');
            s.push_str(&backup_core::cmd::shell_quote(a.as_ref()));
        }
        s
    }
    /// The daemon's pid (of `ip netns exec`, which execs sshd in place).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL the daemon and every process below it (the per-connection
    /// sshd and the sessions it started, which sit in their own sessions,
    /// so a process-group kill would miss them). Cuts live transfers.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let root = child.id() as i32;
            // Repeat: a connection may fork while we walk /proc.
            for _ in 0..3 {
                for pid in descendants(root) {
                    // SAFETY: kill(2) on pids we found below our own child.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Every process whose parent chain leads to `root` (excluding root).
fn descendants(root: i32) -> Vec<i32> {
    let mut parent = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // Field 4 (ppid) comes after the `(comm)` that may hold spaces.
            let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            if let Some(ppid) = after
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<i32>().ok())
            {
                parent.push((pid, ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(c, pp) in &parent {
            if pp == p && !out.contains(&c) {
                out.push(c);
                frontier.push(c);
            }
        }
    }
    out
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_works_and_a_changed_host_key_is_refused() {
        let sshd = Sshd::start(SshdOpts::default());
        let out = Command::new("ssh")
            .args(sshd.ssh_args())
            .arg("--")
            .arg(sshd.target())
            .arg("echo hello")
            .output()
            .expect("ssh");
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            sshd.log_text()
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
        // The one-line form works through a shell, as rsync -e uses it.
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!("{} -- {} true", sshd.ssh_command(), sshd.target()))
            .status()
            .expect("sh");
        assert!(st.success());

        // Another daemon's host key under the same name: strict checking refuses.
        let other = Sshd::start(SshdOpts::default());
        let kh = std::fs::read_to_string(other.known_hosts()).expect("kh");
        let forged = kh.replace(
            &format!(":{}]", other.port()),
            &format!(":{}]", sshd.port()),
        );
        let forged_path = sshd.dir().join("forged_known_hosts");
        std::fs::write(&forged_path, forged).expect("write");
        let mut args = sshd.ssh_args();
        args[3] = format!("UserKnownHostsFile={}", forged_path.display());
        let out = Command::new("ssh")
            .args(args)
            .arg("--")
            .arg(sshd.target())
            .arg("true")
            .output()
            .expect("ssh");
        assert_eq!(out.status.code(), Some(255));
    }

    /// A namespace removed on drop.
    struct Netns(String);
    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    #[test]
    fn sshd_runs_inside_a_network_namespace() {
        let ns = Netns(format!("sshdtest{}", std::process::id()));
        run(Command::new("ip").args(["netns", "add", &ns.0]));
        run(Command::new("ip").args(["-n", &ns.0, "link", "set", "lo", "up"]));
        let mut sshd = Sshd::start(SshdOpts {
            netns: Some(ns.0.clone()),
            listen: Some("127.0.0.1".into()),
            ..Default::default()
        });
        let ssh_in_ns = |sshd: &Sshd| {
            Command::new("ip")
                .args(["netns", "exec", &ns.0, "ssh", "-o", "ConnectTimeout=5"])
                .args(sshd.ssh_args())
                .arg("--")
                .arg(sshd.target())
                .arg("echo inside")
                .output()
                .expect("ssh")
        };
        let out = ssh_in_ns(&sshd);
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            sshd.log_text()
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "inside\n");
        // The host's loopback is another network: nothing listens there.
        let host = Command::new("ssh")
            .args(["-o", "ConnectTimeout=5"])
            .args(sshd.ssh_args())
            .arg("--")
            .arg(sshd.target())
            .arg("true")
            .output()
            .expect("ssh");
        assert_eq!(host.status.code(), Some(255));
        sshd.kill();
        assert_eq!(ssh_in_ns(&sshd).status.code(), Some(255));
    }
}
