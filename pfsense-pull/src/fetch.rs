//! Getting bytes off the firewall: config.xml over SSH or from the REST API
//! package, and the full filesystem tar over SSH, streamed to a `.partial`
//! file and checked before it gets its final name.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use backup_core::cmd::{Cmd, CmdError, shell_quote};

/// How to reach the firewall over SSH. Always `BatchMode=yes` (never a
/// password prompt), a connect timeout, keepalives, and a known-hosts file
/// with strict checking: an unknown or changed host key fails the run.
#[derive(Debug, Clone)]
pub struct Ssh {
    pub target: String,
    pub port: Option<u16>,
    pub key: Option<PathBuf>,
    pub known_hosts: PathBuf,
    pub connect_timeout: Duration,
    pub alive_interval: Duration,
}

impl Ssh {
    /// The ssh argv up to and including the destination.
    pub fn command(&self, remote: &str, timeout: Duration) -> Cmd {
        let mut args: Vec<OsString> = Vec::new();
        let mut opt = |s: String| {
            args.push("-o".into());
            args.push(s.into());
        };
        opt("BatchMode=yes".into());
        opt(format!(
            "ConnectTimeout={}",
            self.connect_timeout.as_secs().max(1)
        ));
        opt(format!(
            "ServerAliveInterval={}",
            self.alive_interval.as_secs().max(1)
        ));
        opt("ServerAliveCountMax=3".into());
        opt(format!("UserKnownHostsFile={}", self.known_hosts.display()));
        opt("GlobalKnownHostsFile=/dev/null".into());
        opt("StrictHostKeyChecking=yes".into());
        opt("LogLevel=ERROR".into());
        if self.key.is_some() {
            opt("IdentitiesOnly=yes".into());
        }
        let mut cmd = Cmd::new("ssh").args(args);
        if let Some(k) = &self.key {
            cmd = cmd.arg("-i").arg(k);
        }
        if let Some(p) = self.port {
            cmd = cmd.arg("-p").arg(p.to_string());
        }
        cmd.arg("--").arg(&self.target).arg(remote).timeout(timeout)
    }
}

/// The remote command that prints config.xml.
pub fn cat_command(remote_config: &str) -> String {
    format!("cat -- {}", shell_quote(remote_config.as_ref()))
}

/// The remote tar command: the original's excludes, taken relative to the
/// tree root (so a test can point the root at a temp tree).
pub fn tar_command(root: &str) -> String {
    let base = root.trim_end_matches('/');
    let mut s = String::from("tar czf -");
    for ex in ["dev", "proc", "tmp", "var/run"] {
        let p = format!("{base}/{ex}");
        s.push_str(&format!(" --exclude={}", shell_quote(p.as_ref())));
    }
    let root = if base.is_empty() { "/" } else { root };
    s.push(' ');
    s.push_str(&shell_quote(root.as_ref()));
    s
}

/// Why a fetch failed, in one line; `absent` when the reason is that a
/// needed command (ssh) is not there, which ends the run with exit 5.
#[derive(Debug, Clone)]
pub struct Failure {
    pub reason: String,
    pub absent: bool,
}

impl From<String> for Failure {
    fn from(reason: String) -> Self {
        Failure {
            reason,
            absent: false,
        }
    }
}

impl From<CmdError> for Failure {
    fn from(e: CmdError) -> Self {
        Failure {
            absent: e.is_absent(),
            reason: e.to_string(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// config.xml over SSH, at most `max_bytes` of it: a longer reply stops
/// ssh at the cap ("ssh: output exceeds 32 MiB, stopped"), so memory
/// stays bounded whatever the far end sends.
pub fn config_over_ssh(
    ssh: &Ssh,
    remote_config: &str,
    timeout: Duration,
    max_bytes: u64,
) -> Result<Vec<u8>, Failure> {
    let out = ssh
        .command(&cat_command(remote_config), timeout)
        .max_stdout(max_bytes)
        .run()?;
    Ok(out.stdout)
}

/// The cap on an API reply carrying a config of at most `max_config`
/// bytes: base64 (4/3) plus the JSON envelope.
fn max_api_reply(max_config: u64) -> u64 {
    max_config.saturating_mul(4) / 3 + (64 << 10)
}

/// config.xml from the REST API package (see `validate::decode_api_reply`
/// for the reply shapes). TLS is verified against `ca_file` when given (the
/// firewall's self-signed certificate, pinned); verification is never off.
pub fn config_over_api(
    url: &str,
    api_key: &str,
    ca_file: Option<&Path>,
    timeout: Duration,
    max_config: u64,
) -> Result<Vec<u8>, String> {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    let mut tls = TlsConfig::builder();
    if let Some(ca) = ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| format!("cannot read --ca-file {}: {e}", ca.display()))?;
        let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<_, _>>()
            .map_err(|e| format!("--ca-file {}: {e}", ca.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "--ca-file {}: no PEM certificate in it",
                ca.display()
            ));
        }
        tls = tls.root_certs(RootCerts::Specific(std::sync::Arc::new(certs)));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls.build())
        .https_only(true)
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(timeout))
        .timeout_connect(Some(timeout.min(Duration::from_secs(10))))
        .build()
        .into();
    let resp = agent
        .get(url)
        .header("X-API-Key", api_key)
        .header("Accept", "application/json, application/xml")
        .call()
        .map_err(|e| describe(url, &e, timeout))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .with_config()
        .limit(max_api_reply(max_config))
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => format!(
                "GET {url}: reply exceeds {}, stopped",
                backup_core::cmd::human_bytes(max_api_reply(max_config))
            ),
            e => describe(url, &e, timeout),
        })?;
    let config = crate::validate::decode_api_reply(status, &body)?;
    if config.len() as u64 > max_config {
        return Err(format!(
            "GET {url}: config.xml exceeds {} (--max-config-size)",
            backup_core::cmd::human_bytes(max_config)
        ));
    }
    Ok(config)
}

/// An HTTPS failure in words an operator acts on.
fn describe(url: &str, e: &ureq::Error, timeout: Duration) -> String {
    match e {
        ureq::Error::Timeout(_) => format!(
            "GET {url}: no complete reply before the run's --timeout ran out ({}s were left)",
            timeout.as_secs_f64().round()
        ),
        e if e.to_string().contains("certificate") => format!(
            "GET {url}: TLS certificate not trusted (is --ca-file the firewall's certificate?): {e}"
        ),
        e => format!("GET {url}: {e}"),
    }
}

/// Create (or truncate) a file readable by its owner only.
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

/// Write `data` to `path` atomically with mode 0600: config.xml holds
/// password hashes and private keys.
pub fn write_private_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    backup_core::fsutil::write_atomic_mode(path, data, 0o600)
}

/// What a checked tar holds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct TarInfo {
    pub bytes: u64,
    pub entries: u64,
}

/// Decode the whole gzip stream (trailer and CRC included) and list every
/// tar entry, reading each to its end: a cut or corrupt archive fails here.
pub fn verify_tar_gz(path: &Path) -> Result<TarInfo, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bytes = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(f)));
    let mut entries = 0u64;
    let iter = ar
        .entries()
        .map_err(|e| format!("tar listing failed: {e}"))?;
    for ent in iter {
        let mut ent =
            ent.map_err(|e| format!("tar listing failed after {entries} entries: {e}"))?;
        std::io::copy(&mut ent, &mut std::io::sink())
            .map_err(|e| format!("tar entry {entries} is cut short: {e}"))?;
        entries += 1;
    }
    // The gzip trailer (length and CRC) comes after the tar end marker.
    let mut rest = ar.into_inner();
    let mut buf = [0u8; 8192];
    loop {
        match rest.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) => return Err(format!("gzip stream is incomplete: {e}")),
        }
    }
    if entries == 0 {
        return Err("the tar archive is empty".into());
    }
    Ok(TarInfo { bytes, entries })
}

/// Stream the remote tar into `partial` (in chunks, never in memory; at
/// most `max_bytes`, beyond which ssh is stopped), check it, then rename it
/// to `final_path`. On any failure the partial file is removed, so nothing
/// unchecked ever sits under a final name (bugs 22 and 27 of the old
/// pipeline, docs/compatibility.md).
/// `still_ours` is asked right before the rename (the stream takes long:
/// the backup disk may have gone since).
pub fn full_tar(
    ssh: &Ssh,
    tar_root: &str,
    partial: &Path,
    final_path: &Path,
    timeout: Duration,
    max_bytes: u64,
    still_ours: &dyn Fn() -> Result<(), String>,
) -> Result<TarInfo, Failure> {
    let res = (|| -> Result<TarInfo, Failure> {
        // Created 0600 first (the stream only truncates it): the archive
        // holds the firewall's keys and password hashes.
        private_file(partial).map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
        ssh.command(&tar_command(tar_root), timeout)
            .stdout_file(partial)
            .max_stdout(max_bytes)
            .run()?;
        let info = verify_tar_gz(partial)?;
        let f = std::fs::File::open(partial).map_err(|e| format!("{}: {e}", partial.display()))?;
        f.sync_all()
            .map_err(|e| format!("fsync {}: {e}", partial.display()))?;
        still_ours()?;
        std::fs::rename(partial, final_path)
            .map_err(|e| format!("rename to {}: {e}", final_path.display()))?;
        backup_core::fsutil::sync_dir(final_path);
        Ok(info)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(partial);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_argv_is_strict() {
        let ssh = Ssh {
            target: "root@pfsense.invalid".into(),
            port: Some(2222),
            key: Some("/k".into()),
            known_hosts: "/kh".into(),
            connect_timeout: Duration::from_secs(10),
            alive_interval: Duration::from_secs(5),
        };
        let line = ssh
            .command(&cat_command("/cf/conf/config.xml"), Duration::from_secs(1))
            .display();
        for want in [
            "-o BatchMode=yes",
            "-o ConnectTimeout=10",
            "-o ServerAliveInterval=5",
            "-o ServerAliveCountMax=3",
            "-o UserKnownHostsFile=/kh",
            "-o StrictHostKeyChecking=yes",
            "-i /k",
            "-p 2222",
            "-- root@pfsense.invalid 'cat -- /cf/conf/config.xml'",
        ] {
            assert!(line.contains(want), "{line} lacks {want}");
        }
    }

    #[test]
    fn tar_command_keeps_the_original_excludes() {
        assert_eq!(
            tar_command("/"),
            "tar czf - --exclude=/dev --exclude=/proc --exclude=/tmp --exclude=/var/run /"
        );
        assert_eq!(
            tar_command("/tmp/x y/"),
            "tar czf - --exclude='/tmp/x y/dev' --exclude='/tmp/x y/proc' --exclude='/tmp/x y/tmp' --exclude='/tmp/x y/var/run' '/tmp/x y/'"
        );
    }

    fn make_tar_gz(path: &Path, files: usize) {
        let f = std::fs::File::create(path).expect("create");
        let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for i in 0..files {
            let data = vec![b'a' + (i % 26) as u8; 3000 + i];
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, format!("etc/f{i}"), &data[..])
                .expect("append");
        }
        b.into_inner().expect("tar").finish().expect("gz");
    }

    #[test]
    fn a_cut_archive_fails_the_check() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("a.tar.gz");
        make_tar_gz(&p, 20);
        let info = verify_tar_gz(&p).expect("whole archive");
        assert_eq!(info.entries, 20);
        let bytes = std::fs::read(&p).expect("read");
        for cut in [bytes.len() - 4, bytes.len() / 2, 30] {
            std::fs::write(&p, &bytes[..cut]).expect("write");
            assert!(verify_tar_gz(&p).is_err(), "cut at {cut} passed");
        }
        std::fs::write(&p, b"").expect("write");
        assert!(verify_tar_gz(&p).is_err());
    }
}
