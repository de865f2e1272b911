//! Read-only mounts of snapshot filesystems inside a private mount
//! namespace, and LUKS mappings opened read-only for them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use backup_core::cmd::Cmd;
use backup_core::log::p;
use backup_core::{debug, info, warn};
use sha2::{Digest, Sha256};

/// Prefix of every LUKS mapping this tool opens, so a later run can find
/// and close the ones a killed run left.
pub const MAPPER_PREFIX: &str = "pvc-copy-";

/// Enter a private mount namespace: everything mounted afterwards is seen
/// only by this process and its children and vanishes when they die, so a
/// killed run leaves no mount on the host. Must run on the main thread
/// before any other thread exists (threads keep the namespace they had).
pub fn enter_private_namespace() -> anyhow::Result<()> {
    use nix::mount::{MsFlags, mount};
    use nix::sched::{CloneFlags, unshare};
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| {
        anyhow::anyhow!(
            "cannot create a private mount namespace (unshare CLONE_NEWNS; needs root): {e}"
        )
    })?;
    // Without this, mounts would propagate back to the host's shared `/`.
    // A slave, not private: the host's mount events still reach this
    // namespace (as with systemd's PrivateMounts=), so a backup disk
    // unmounted on the host mid-run is unmounted here too and the run's
    // root guard sees it, instead of the run writing on into a disk the
    // host no longer shows. Nothing mounted here propagates back.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(|e| anyhow::anyhow!("cannot make / private in the new mount namespace: {e}"))?;
    Ok(())
}

/// `blkid -o value -s TYPE -- DEV`: the filesystem (or container) type,
/// empty when blkid finds none.
pub fn blkid_type(dev: &Path, timeout: Duration) -> Result<String, String> {
    let out = Cmd::new("blkid")
        .args(["-o", "value", "-s", "TYPE", "--"])
        .arg(dev)
        .timeout(timeout)
        .run_any()
        .map_err(|e| e.to_string())?;
    match out.code {
        0 => Ok(out.stdout_str().trim().to_string()),
        // blkid exits 2 when it finds no signature at all.
        2 => Ok(String::new()),
        c => Err(format!(
            "blkid {} exited {c}: {}",
            p(dev),
            out.stderr.trim()
        )),
    }
}

/// Mount options by filesystem type. ext4 `noload` keeps the journal from
/// being replayed into the snapshot; xfs `norecovery` likewise, `nouuid`
/// because the origin with the same UUID may be mounted elsewhere.
pub fn mount_options(fstype: &str) -> Result<(&'static str, &'static str), String> {
    match fstype {
        "ext4" | "ext3" | "ext2" => Ok(("ext4", "ro,noload,nosuid,nodev,noexec")),
        "xfs" => Ok(("xfs", "ro,nouuid,norecovery,nosuid,nodev,noexec")),
        "" => Err("no filesystem found on the snapshot (blkid reports no type)".into()),
        other => Err(format!(
            "unsupported filesystem type {other:?} (supported: ext4, ext3, ext2, xfs, crypto_LUKS)"
        )),
    }
}

/// A mounted snapshot; unmounted on drop. In the private namespace a
/// failed unmount cannot leak to the host, so it is only a warning.
pub struct Mounted {
    dir: PathBuf,
    active: bool,
}

impl Mounted {
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn unmount(mut self) {
        self.do_unmount();
    }
    fn do_unmount(&mut self) {
        if !self.active {
            return;
        }
        self.active = false;
        if let Err(e) = Cmd::new("umount")
            .arg("--")
            .arg(&self.dir)
            .timeout(Duration::from_secs(120))
            .run()
        {
            warn!("umount {}: {e}; detaching lazily", p(&self.dir));
            let _ = Cmd::new("umount")
                .args(["-l", "--"])
                .arg(&self.dir)
                .timeout(Duration::from_secs(60))
                .run();
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.do_unmount();
    }
}

/// Mount `dev` read-only on `dir`, with a timeout and one retry (ext4
/// orphan cleanup after a node reboot made mounts take up to 109 s).
/// A regular file (an image) is mounted through a loop device.
pub fn mount_ro(
    dev: &Path,
    fstype: &str,
    dir: &Path,
    timeout: Duration,
    retry_delay: Duration,
) -> Result<Mounted, String> {
    let (t, opts) = mount_options(fstype)?;
    let is_file = std::fs::metadata(dev).map(|m| m.is_file()).unwrap_or(false);
    let opts = if is_file {
        format!("loop,{opts}")
    } else {
        opts.to_string()
    };
    let cmd = Cmd::new("mount")
        .args(["-o", &opts, "-t", t, "--"])
        .arg(dev)
        .arg(dir)
        .timeout(timeout);
    let mut last = String::new();
    for attempt in 1..=2 {
        debug!("{}", cmd.display());
        match cmd.run() {
            Ok(_) => {
                if attempt > 1 {
                    info!("mount of {} succeeded on retry", p(dev));
                }
                return Ok(Mounted {
                    dir: dir.to_path_buf(),
                    active: true,
                });
            }
            Err(e) => {
                last = e.to_string();
                if attempt == 1 {
                    warn!("mount of {} failed ({last}); retrying once", p(dev));
                    // A timed-out mount may have completed meanwhile.
                    let _ = Cmd::new("umount")
                        .arg("--")
                        .arg(dir)
                        .timeout(Duration::from_secs(60))
                        .run();
                    std::thread::sleep(retry_delay);
                }
            }
        }
    }
    Err(format!("mount failed twice: {last}"))
}

/// The mapper name for a snapshot: recognisable prefix plus a hash of the
/// snapshot name (mapper names are short; LV names are long).
pub fn mapper_name(snapshot: &str) -> String {
    let h = Sha256::digest(snapshot.as_bytes());
    format!("{MAPPER_PREFIX}{}", &hex::encode(h)[..16])
}

/// An open read-only LUKS mapping; closed on drop.
pub struct Luks {
    pub name: String,
    pub device: PathBuf,
    open: bool,
}

impl Luks {
    pub fn open(
        dev: &Path,
        snapshot: &str,
        key: &Path,
        mapper_dir: &Path,
        timeout: Duration,
    ) -> Result<Luks, String> {
        if !key.is_file() {
            return Err(format!(
                "LUKS snapshot but the key file {} is missing",
                p(key)
            ));
        }
        let name = mapper_name(snapshot);
        let device = mapper_dir.join(&name);
        if device.exists() {
            // Left by a killed run that the start-up sweep could not close.
            close(&name, timeout)?;
        }
        Cmd::new("cryptsetup")
            .args(["open", "--type", "luks", "--key-file"])
            .arg(key)
            .args(["--readonly", "--"])
            .arg(dev)
            .arg(&name)
            .timeout(timeout)
            .run()
            .map_err(|e| format!("cannot open LUKS: {e}"))?;
        Ok(Luks {
            name,
            device,
            open: true,
        })
    }
}

impl Drop for Luks {
    fn drop(&mut self) {
        if self.open {
            self.open = false;
            if let Err(e) = close(&self.name, Duration::from_secs(120)) {
                warn!("{e}");
            }
        }
    }
}

fn close(name: &str, timeout: Duration) -> Result<(), String> {
    Cmd::new("cryptsetup")
        .args(["close", "--", name])
        .timeout(timeout)
        .run()
        .map(|_| ())
        .map_err(|e| format!("cannot close LUKS mapping {name}: {e}"))
}

/// Close every mapping of ours left by a killed run. Returns the names
/// that could not be closed.
pub fn close_stale_mappers(mapper_dir: &Path, timeout: Duration) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(mapper_dir) else {
        return Vec::new();
    };
    let mut failed = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(MAPPER_PREFIX) {
            continue;
        }
        warn!("closing stale LUKS mapping {name} left by an earlier run");
        if let Err(e) = close(&name, timeout) {
            warn!("{e}");
            failed.push(name);
        }
    }
    failed
}

/// True when `path` is a mount point (per /proc/self/mountinfo).
pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(canon) = std::fs::canonicalize(path) else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|mp| Path::new(&unescape_mountinfo(mp)) == canon)
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
pub fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_by_type() {
        assert_eq!(
            mount_options("ext4").expect("ext4").1,
            "ro,noload,nosuid,nodev,noexec"
        );
        assert!(mount_options("xfs").expect("xfs").1.contains("norecovery"));
        assert!(mount_options("ntfs").is_err());
        assert!(mount_options("").is_err());
    }

    #[test]
    fn mapper_names_are_ours_and_stable() {
        let a = mapper_name("vm-1-pvc-a_snap_20261127_0300");
        assert!(a.starts_with(MAPPER_PREFIX));
        assert_eq!(a, mapper_name("vm-1-pvc-a_snap_20261127_0300"));
        assert_ne!(a, mapper_name("vm-1-pvc-a_snap_20261128_0300"));
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
