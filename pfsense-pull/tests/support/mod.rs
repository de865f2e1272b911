//! Shared pieces of the pfsense-pull tests: a fake firewall tree (served by
//! a real sshd), a backup root in a sandbox, and readers for what a user
//! checks afterwards (the copies, the ledger, the metrics file).
#![allow(dead_code)]

pub mod api_emu;

use std::path::{Path, PathBuf};
use std::process::Command;

use backup_tests::harness::Sandbox;
use backup_tests::sshd::Sshd;

/// A plausible config.xml with `rules` firewall rules (its size grows with them).
pub fn config_xml(rules: usize, hostname: &str) -> Vec<u8> {
    let mut s = format!(
        "<?xml version=\"1.0\"?>\n<pfsense>\n\t<version>23.3</version>\n\t<lastchange></lastchange>\n\t<system>\n\t\t<hostname>{hostname}</hostname>\n\t\t<domain>home.invalid</domain>\n\t\t<group><name>all</name><description><![CDATA[All Users]]></description></group>\n\t</system>\n\t<filter>\n"
    );
    for i in 0..rules {
        s.push_str(&format!(
            "\t\t<rule><id></id><tracker>{}</tracker><type>pass</type><interface>lan</interface><ipprotocol>inet</ipprotocol><descr><![CDATA[rule {i} from LAN]]></descr><source><network>lan</network></source><destination><any></any></destination></rule>\n",
            1_700_000_000 + i
        ));
    }
    s.push_str("\t</filter>\n</pfsense>\n");
    s.into_bytes()
}

/// A fake pfSense root: config.xml where pfSense keeps it, a few system
/// files, and the trees the full tar must leave out (dev, proc, tmp, var/run).
pub struct Firewall {
    pub root: tempfile::TempDir,
}

impl Firewall {
    pub fn new() -> Firewall {
        let root = tempfile::Builder::new()
            .prefix("fake-pfsense-")
            .tempdir()
            .expect("tmp");
        let fw = Firewall { root };
        fw.write("cf/conf/config.xml", &config_xml(40, "fw"));
        fw.write("etc/version", b"2.7.2-RELEASE\n");
        fw.write("etc/rc.conf", b"hostname=\"fw.home.invalid\"\n");
        fw.write("usr/local/etc/pkg.conf", b"# pkg\n");
        fw.write("boot/loader.conf", b"autoboot_delay=\"3\"\n");
        fw.write("var/db/rrd/wan.rrd", &vec![7u8; 20_000]);
        fw.write("var/run/dmesg.boot", b"excluded: runtime state\n");
        fw.write("tmp/session", b"excluded: temp\n");
        fw.write("dev/null-ish", b"excluded: devices\n");
        fw.write("proc/1", b"excluded: proc\n");
        fw
    }
    pub fn path(&self) -> &Path {
        self.root.path()
    }
    pub fn write(&self, rel: &str, data: &[u8]) {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, data).expect("write");
    }
    pub fn config_path(&self) -> PathBuf {
        self.path().join("cf/conf/config.xml")
    }
}

/// The backup side: `<sandbox>/backup` is the root, `<root>/pfsense` the destination.
pub struct Backup {
    pub sb: Sandbox,
}

impl Backup {
    pub fn new() -> Backup {
        let sb = Sandbox::new();
        // Initialised as `offsite-sync init --local` does on the host.
        backup_tests::harness::init_backup_root(&sb.mkdir("backup"));
        Backup { sb }
    }
    pub fn root(&self) -> PathBuf {
        self.sb.path().join("backup")
    }
    pub fn dest(&self) -> PathBuf {
        self.root().join("pfsense")
    }
    pub fn metrics_path(&self) -> PathBuf {
        self.sb.path().join("pfsense.prom")
    }
    pub fn metric(&self, name: &str) -> f64 {
        backup_core::metrics::Metrics::read(&self.metrics_path())
            .expect("metrics file")
            .get(name)
            .unwrap_or_else(|| panic!("metric {name} missing"))
    }
    /// The base command: destination, lock dir, metrics file, date.
    pub fn cmd(&self, today: &str) -> Command {
        let mut c = self.sb.cmd("pfsense-pull");
        c.arg("--dest")
            .arg(self.dest())
            .arg("--metrics-file")
            .arg(self.metrics_path())
            .arg("--today")
            .arg(today);
        c
    }
    /// The command pulling from `fw` through `sshd`.
    pub fn ssh_cmd(&self, sshd: &Sshd, fw: &Firewall, today: &str) -> Command {
        self.ssh_cmd_with(sshd, fw, today, sshd.known_hosts(), &fw.config_path())
    }
    /// Same, with another known_hosts file and remote config path.
    pub fn ssh_cmd_with(
        &self,
        sshd: &Sshd,
        fw: &Firewall,
        today: &str,
        known_hosts: &Path,
        remote_config: &Path,
    ) -> Command {
        let mut c = self.cmd(today);
        c.arg("--ssh")
            .arg(sshd.target())
            .arg("-p")
            .arg(sshd.port().to_string())
            .arg("--ssh-key")
            .arg(sshd.client_key())
            .arg("--known-hosts")
            .arg(known_hosts)
            .arg("--remote-config")
            .arg(remote_config)
            .arg("--tar-root")
            .arg(fw.path());
        c
    }
    /// Every file under the destination, relative to it, sorted.
    pub fn files(&self) -> Vec<String> {
        let mut out = Vec::new();
        fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(base, &p, out);
                } else {
                    out.push(p.strip_prefix(base).expect("under").display().to_string());
                }
            }
        }
        walk(&self.dest(), &self.dest(), &mut out);
        out.sort();
        out
    }
    /// The newest config copy by the date in its name (what a restore picks).
    pub fn newest_config(&self) -> Option<String> {
        self.files()
            .into_iter()
            .filter(|f| {
                f.rsplit('/')
                    .next()
                    .is_some_and(|n| n.starts_with("config-") && n.ends_with(".xml"))
            })
            .max_by_key(|f| f.rsplit('/').next().map(str::to_owned))
    }
    pub fn read(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.dest().join(rel)).expect("read copy")
    }
    pub fn ledger_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.root().join(".changed-files"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Names inside a .tar.gz (GNU tar strips the leading `/`).
pub fn tar_names(path: &Path) -> Vec<String> {
    let f = std::fs::File::open(path).expect("open tar");
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    ar.entries()
        .expect("entries")
        .map(|e| {
            e.expect("entry")
                .path()
                .expect("path")
                .display()
                .to_string()
        })
        .collect()
}
