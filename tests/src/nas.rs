//! The offsite NAS for tests: a real OpenSSH sshd (the Debian package) that
//! accepts one generated key, serving the host's rsync. It runs on loopback
//! on a free port, or inside a network namespace pair the test creates (so
//! the link can be cut), or inside a private mount namespace where a small
//! loop filesystem is mounted (so the NAS can fill up).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Two network namespaces joined by a veth pair: `server` (the NAS side)
/// and `client`. Removed on drop.
pub struct NetPair {
    pub server: String,
    pub client: String,
    pub server_dev: String,
    pub client_dev: String,
    pub server_addr: String,
}

fn sh(args: &[&str]) {
    let st = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect("spawn");
    assert!(st.success(), "{args:?} failed");
}

impl NetPair {
    pub fn new() -> NetPair {
        let tag = format!("{:x}{:04x}", std::process::id() & 0xffff, rand_u16());
        let server = format!("nas-s-{tag}");
        let client = format!("nas-c-{tag}");
        // Interface names are at most 15 bytes.
        let server_dev = format!("vs{tag}");
        let client_dev = format!("vc{tag}");
        let x = rand_u16() % 256;
        let server_addr = format!("10.231.{x}.1");
        let client_addr = format!("10.231.{x}.2");
        sh(&["ip", "netns", "add", &server]);
        sh(&["ip", "netns", "add", &client]);
        sh(&[
            "ip",
            "link",
            "add",
            &server_dev,
            "netns",
            &server,
            "type",
            "veth",
            "peer",
            "name",
            &client_dev,
            "netns",
            &client,
        ]);
        sh(&[
            "ip",
            "-n",
            &server,
            "addr",
            "add",
            &format!("{server_addr}/30"),
            "dev",
            &server_dev,
        ]);
        sh(&[
            "ip",
            "-n",
            &client,
            "addr",
            "add",
            &format!("{client_addr}/30"),
            "dev",
            &client_dev,
        ]);
        for (ns, dev) in [(&server, &server_dev), (&client, &client_dev)] {
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        NetPair {
            server,
            client,
            server_dev,
            client_dev,
            server_addr,
        }
    }

    /// Cut the link (the NAS side's interface down).
    pub fn cut(&self) {
        sh(&[
            "ip",
            "-n",
            &self.server,
            "link",
            "set",
            &self.server_dev,
            "down",
        ]);
    }

    pub fn restore(&self) {
        sh(&[
            "ip",
            "-n",
            &self.server,
            "link",
            "set",
            &self.server_dev,
            "up",
        ]);
    }

    /// A command run inside the client namespace.
    pub fn client_cmd(&self, mut inner: Command) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.client])
            .arg(inner.get_program());
        c.args(inner.get_args());
        for (k, v) in inner.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        if let Some(d) = inner.get_current_dir() {
            c.current_dir(d);
        }
        let _ = &mut inner;
        c
    }
}

impl Default for NetPair {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for ns in [&self.server, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn rand_u16() -> u16 {
    let mut b = [0u8; 2];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    u16::from_ne_bytes(b)
}

/// Where and how the NAS sshd runs.
#[derive(Default)]
pub struct NasOptions<'a> {
    /// Run inside this (server) namespace of a [`NetPair`], on port 22.
    pub net: Option<&'a NetPair>,
    /// Mount this ext4 image at this directory in a private mount
    /// namespace that only sshd (and the rsync it starts) sees.
    pub mount: Option<(PathBuf, PathBuf)>,
}

/// A running sshd playing the NAS. Killed on drop.
pub struct Nas {
    pub dir: PathBuf,
    pub host: String,
    pub port: u16,
    pub key: PathBuf,
    pub known_hosts: PathBuf,
    child: Child,
    client_ns: Option<String>,
}

impl Nas {
    /// sshd on 127.0.0.1, its state under `dir`.
    pub fn start(dir: &Path) -> Nas {
        Nas::start_with(dir, NasOptions::default())
    }

    pub fn start_with(dir: &Path, opts: NasOptions<'_>) -> Nas {
        std::fs::create_dir_all(dir).expect("nas dir");
        std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        let host_key = dir.join("host_ed25519");
        let key = dir.join("client_ed25519");
        for k in [&host_key, &key] {
            if !k.exists() {
                let st = Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                    .arg(k)
                    .status()
                    .expect("ssh-keygen");
                assert!(st.success());
            }
        }
        std::fs::copy(dir.join("client_ed25519.pub"), dir.join("authorized_keys"))
            .expect("authorized_keys");
        let host_pub = std::fs::read_to_string(dir.join("host_ed25519.pub")).expect("host pub");
        let host_pub: Vec<&str> = host_pub.split_whitespace().take(2).collect();
        let host_pub = host_pub.join(" ");
        for attempt in 0..20 {
            let (host, port) = match opts.net {
                Some(n) => (n.server_addr.clone(), 22),
                None => ("127.0.0.1".to_string(), free_port()),
            };
            let cfg = dir.join("sshd_config");
            std::fs::write(
                &cfg,
                format!(
                    "Port {port}\nListenAddress {host}\nHostKey {hk}\nPidFile {pid}\n\
                     AuthorizedKeysFile {ak}\nStrictModes no\nUsePAM no\n\
                     PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\nLogLevel ERROR\nMaxStartups 200\n\
                     MaxSessions 50\n",
                    hk = host_key.display(),
                    pid = dir.join("sshd.pid").display(),
                    ak = dir.join("authorized_keys").display(),
                ),
            )
            .expect("sshd_config");
            let known = if port == 22 {
                format!("{host} {host_pub}\n")
            } else {
                format!("[{host}]:{port} {host_pub}\n")
            };
            let known_hosts = dir.join("known_hosts");
            std::fs::write(&known_hosts, known).expect("known_hosts");
            let mut sshd_argv: Vec<String> = vec![
                "/usr/sbin/sshd".into(),
                "-D".into(),
                "-e".into(),
                "-f".into(),
                cfg.display().to_string(),
            ];
            if let Some((img, mnt)) = &opts.mount {
                std::fs::create_dir_all(mnt).expect("mountpoint");
                let script = "mount -o loop \"$1\" \"$2\" || exit 97; shift 2; exec \"$@\"";
                let mut v: Vec<String> = vec![
                    "unshare".into(),
                    "-m".into(),
                    "--propagation".into(),
                    "private".into(),
                    "sh".into(),
                    "-c".into(),
                    script.into(),
                    "sh".into(),
                    img.display().to_string(),
                    mnt.display().to_string(),
                ];
                v.append(&mut sshd_argv);
                sshd_argv = v;
            }
            if let Some(n) = opts.net {
                let mut v: Vec<String> =
                    vec!["ip".into(), "netns".into(), "exec".into(), n.server.clone()];
                v.append(&mut sshd_argv);
                sshd_argv = v;
            }
            let log = std::fs::File::create(dir.join("sshd.log")).expect("sshd log");
            let child = Command::new(&sshd_argv[0])
                .args(&sshd_argv[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn sshd");
            let mut nas = Nas {
                dir: dir.to_path_buf(),
                host,
                port,
                key: key.clone(),
                known_hosts,
                child,
                client_ns: opts.net.map(|n| n.client.clone()),
            };
            if nas.wait_ready(Duration::from_secs(20)) {
                return nas;
            }
            let _ = nas.child.kill();
            let _ = nas.child.wait();
            let log = std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default();
            assert!(
                attempt < 19 && opts.net.is_none(),
                "sshd did not start: {log}"
            );
        }
        unreachable!()
    }

    fn wait_ready(&mut self, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            let mut c = self.ssh_cmd(&["true"]);
            c.stdout(Stdio::null()).stderr(Stdio::null());
            if c.status().map(|s| s.success()).unwrap_or(false) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Wait until an ssh to the NAS succeeds: after [`NetPair::restore`] the
    /// link takes a moment (longer on a starved machine) to carry packets
    /// again. `false` when it still does not after `limit`.
    pub fn wait_reachable(&self, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            let mut c = self.ssh_cmd(&["true"]);
            c.stdout(Stdio::null()).stderr(Stdio::null());
            if c.status().map(|s| s.success()).unwrap_or(false) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// `root@host`.
    pub fn remote(&self) -> String {
        format!("root@{}", self.host)
    }

    /// An ssh command to the NAS (inside the client namespace if any).
    pub fn ssh_cmd(&self, remote_argv: &[&str]) -> Command {
        let mut argv: Vec<String> = Vec::new();
        if let Some(ns) = &self.client_ns {
            argv.extend(["ip".into(), "netns".into(), "exec".into(), ns.clone()]);
        }
        argv.extend([
            "ssh".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "ConnectTimeout=3".into(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-i".into(),
            self.key.display().to_string(),
            "-p".into(),
            self.port.to_string(),
            self.remote(),
            "--".into(),
        ]);
        argv.extend(remote_argv.iter().map(|s| s.to_string()));
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        c
    }

    /// The flags offsite-sync needs to reach this NAS.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--remote".into(),
            self.remote(),
            "--ssh-port".into(),
            self.port.to_string(),
            "--ssh-key".into(),
            self.key.display().to_string(),
            "--known-hosts".into(),
            self.known_hosts.display().to_string(),
            "--connect-timeout".into(),
            "5s".into(),
        ]
    }

    /// The pid of the process whose mount namespace holds the NAS mount.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Nas {
    fn drop(&mut self) {
        // The child is `ip`/`unshare`/`sshd` exec-chained into sshd itself.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}
