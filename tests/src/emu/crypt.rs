//! Emulator of `cryptsetup open/close/status` and a pass-through `blkid`
//! (stands for: dm-crypt LUKS mappings under `/dev/mapper`, which the CI
//! kernel cannot create).
//!
//! An encrypted LV is a real LUKS2 header (`images/<vg>/<lv>.img`,
//! luksFormat-ed by the builder, so the real `blkid`, `cryptsetup luksDump`
//! and `cryptsetup open --test-passphrase` work on it) plus the cleartext
//! ext4 image beside it (`images/<vg>/<lv>.plain`). `open` checks the key
//! with the real `cryptsetup open --test-passphrase`, then exposes the
//! cleartext as `$HOMELAB_EMU_STATE/mapper/<name>` (a copy, so a read-only
//! open can never change the LV). Other verbs go to the real cryptsetup.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use super::state::{CRYPT_FILE, CryptState, LVM_FILE, LvmState, Mapping, StateDir, now_ms};
use super::util::{Out, find_real, loop_backing_files, opt_value, reflink_copy};

/// Runs the real `name` with `args` and returns what it printed.
fn delegate(name: &str, args: &[String], exe: &Path) -> Result<Out> {
    let Some(real) = find_real(name, exe) else {
        return Ok(Out::fail(
            127,
            &format!("homelab-emu: the real {name} is not installed"),
        ));
    };
    let o = Command::new(&real)
        .args(args)
        .output()
        .with_context(|| format!("running {}", real.display()))?;
    Ok(Out {
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        code: o.status.code().unwrap_or(1),
    })
}

/// `blkid`: the real one (it reads LUKS headers and ext4 images in files);
/// emulated only so the call is logged and faults can be injected.
pub fn blkid(args: &[String], exe: &Path) -> Result<Out> {
    delegate("blkid", args, exe)
}

/// The LV whose image `dev` resolves to.
fn lv_of_device(dir: &StateDir, st: &LvmState, dev: &Path) -> Option<(String, String)> {
    let canon = fs::canonicalize(dev).ok()?;
    for (vg_name, vg) in &st.vgs {
        for name in vg.lvs.keys() {
            if fs::canonicalize(dir.image(vg_name, name)).ok().as_deref() == Some(canon.as_path()) {
                return Some((vg_name.clone(), name.clone()));
            }
        }
    }
    None
}

pub fn run(dir: &StateDir, args: &[String], exe: &Path) -> Result<Out> {
    let mut key_file: Option<String> = None;
    let mut readonly = false;
    let mut ty: Option<String> = None;
    let mut pos: Vec<String> = Vec::new();
    let mut dd = false;
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if dd || !a.starts_with('-') {
            pos.push(a.clone());
        } else if a == "--" {
            dd = true;
        } else if a == "--readonly" || a == "-r" {
            readonly = true;
        } else if a == "-q" || a == "--batch-mode" {
        } else if let Some(v) = opt_value(args, &mut i, &["--key-file", "-d"]) {
            key_file = Some(v?);
        } else if let Some(v) = opt_value(args, &mut i, &["--type", "-M"]) {
            ty = Some(v?);
        } else {
            // --test-passphrase, luksFormat options, ...: the real tool.
            return delegate("cryptsetup", args, exe);
        }
        i += 1;
    }
    let verb = pos.first().cloned().unwrap_or_default();
    match verb.as_str() {
        "open" | "luksOpen" => {
            if verb == "open"
                && ty
                    .as_deref()
                    .is_some_and(|t| !matches!(t, "luks" | "luks1" | "luks2"))
            {
                return Ok(Out::fail(
                    1,
                    "homelab-emu: cryptsetup open: only --type luks is emulated",
                ));
            }
            let [_, dev, name] = pos.as_slice() else {
                return Ok(Out::fail(
                    1,
                    "Command requires device and mapped name as arguments.",
                ));
            };
            open(dir, dev, name, key_file.as_deref(), readonly, exe)
        }
        "close" | "luksClose" | "remove" => {
            let [_, name] = pos.as_slice() else {
                return Ok(Out::fail(1, "Command requires device as argument."));
            };
            close(dir, name)
        }
        "status" => {
            let [_, name] = pos.as_slice() else {
                return Ok(Out::fail(1, "Command requires device as argument."));
            };
            status(dir, name)
        }
        _ => delegate("cryptsetup", args, exe),
    }
}

fn mapper_path(dir: &StateDir, name: &str) -> PathBuf {
    dir.mapper_dir().join(name)
}

fn open(
    dir: &StateDir,
    dev: &str,
    name: &str,
    key_file: Option<&str>,
    readonly: bool,
    exe: &Path,
) -> Result<Out> {
    if name.is_empty() || name.contains('/') {
        return Ok(Out::fail(1, &format!("Device name {name} is not valid.")));
    }
    let mut crypt: CryptState = dir.load(CRYPT_FILE)?;
    let lvm: LvmState = dir.load(LVM_FILE)?;
    if crypt.open.contains_key(name) || fs::symlink_metadata(mapper_path(dir, name)).is_ok() {
        return Ok(Out::fail(5, &format!("Device {name} already exists.")));
    }
    let dev_path = Path::new(dev);
    if !dev_path.exists() {
        return Ok(Out::fail(
            4,
            &format!("Device {dev} does not exist or access denied."),
        ));
    }
    let Some((vg, lv_name)) = lv_of_device(dir, &lvm, dev_path) else {
        return Ok(Out::fail(
            4,
            &format!(
                "homelab-emu: cryptsetup open: {dev} is not an emulated LV (pass an lv_path from lvs)"
            ),
        ));
    };
    let encrypted = lvm
        .vgs
        .get(&vg)
        .and_then(|v| v.lvs.get(&lv_name))
        .is_some_and(|l| l.encrypted);
    if !encrypted {
        return Ok(Out::fail(
            1,
            &format!("Device {dev} is not a valid LUKS device."),
        ));
    }
    let Some(key_file) = key_file else {
        return Ok(Out::fail(
            1,
            "homelab-emu: cryptsetup open: only --key-file is emulated (no prompt)",
        ));
    };
    if fs::metadata(key_file).is_err() {
        return Ok(Out::fail(1, "Failed to open key file."));
    }
    // The real key check, against the real LUKS header.
    let check = delegate(
        "cryptsetup",
        &[
            "open".to_string(),
            "--test-passphrase".to_string(),
            "--key-file".to_string(),
            key_file.to_string(),
            "--".to_string(),
            dir.image(&vg, &lv_name).display().to_string(),
        ],
        exe,
    )?;
    if check.code != 0 {
        return Ok(check);
    }
    let target = mapper_path(dir, name);
    reflink_copy(&dir.plain_image(&vg, &lv_name), &target)?;
    crypt.open.insert(
        name.to_string(),
        Mapping {
            vg,
            lv: lv_name,
            device: dev.to_string(),
            readonly,
            opened_ms: now_ms(),
        },
    );
    dir.save(CRYPT_FILE, &crypt)?;
    Ok(Out::ok())
}

fn close(dir: &StateDir, name: &str) -> Result<Out> {
    let mut crypt: CryptState = dir.load(CRYPT_FILE)?;
    let path = mapper_path(dir, name);
    if !crypt.open.contains_key(name) {
        return Ok(Out::fail(4, &format!("Device {name} is not active.")));
    }
    if loop_backing_files().contains(&path) {
        return Ok(Out::fail(5, &format!("Device {name} is still in use.")));
    }
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    crypt.open.remove(name);
    dir.save(CRYPT_FILE, &crypt)?;
    Ok(Out::ok())
}

fn status(dir: &StateDir, name: &str) -> Result<Out> {
    let crypt: CryptState = dir.load(CRYPT_FILE)?;
    let path = mapper_path(dir, name);
    let Some(m) = crypt.open.get(name) else {
        let mut out = Out::ok();
        out.out(&format!("{} is inactive.", path.display()));
        out.code = 4;
        return Ok(out);
    };
    let size = fs::metadata(&path).map(|md| md.len() / 512).unwrap_or(0);
    let mut out = Out::ok();
    out.out(&format!(
        "{} is active{}.\n  type:    LUKS2\n  cipher:  aes-xts-plain64\n  keysize: 512 bits\n  key location: keyring\n  device:  {}\n  sector size:  512\n  offset:  32768 sectors\n  size:    {size} sectors\n  mode:    {}",
        path.display(),
        if loop_backing_files().contains(&path) { " and is in use" } else { "" },
        m.device,
        if m.readonly { "readonly" } else { "read/write" },
    ));
    Ok(out)
}
