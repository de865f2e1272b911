//! The multi-call entry point: dispatch on the command name, lock the state,
//! log the call, apply injected faults, run the emulator.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::state::{FAULTS_FILE, Faults, StateDir};
use super::util::Out;
use super::{crypt, kube, lvm};

/// Command names that exist as emulators.
pub const EMULATED: &[&str] = &[
    "lvs",
    "lvcreate",
    "lvremove",
    "lvrename",
    "lvchange",
    "kubectl",
    "cryptsetup",
    "blkid",
];

/// Command names that are shadowed so that a product calling them in a test
/// fails loudly (exit 127) instead of reaching the host's real LVM or
/// device-mapper.
pub const REFUSED: &[&str] = &[
    "lvm",
    "vgs",
    "pvs",
    "vgchange",
    "vgcreate",
    "lvextend",
    "lvresize",
    "lvconvert",
    "lvdisplay",
    "dmsetup",
];

/// Runs one invocation; returns the exit code. `argv[0]`'s base name selects
/// the emulator; `homelab-emu CMD ARGS...` works too.
pub fn main_entry(argv: Vec<OsString>) -> i32 {
    let mut argv: Vec<String> = argv
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("homelab-emu"));
    let mut cmd = argv
        .first()
        .map(|a| {
            Path::new(a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .unwrap_or_default();
    if cmd == "homelab-emu" || cmd.is_empty() {
        if argv.len() < 2 {
            eprintln!(
                "usage: homelab-emu COMMAND [ARGS...], or call it through a symlink named one of: {}",
                EMULATED.join(" ")
            );
            return 2;
        }
        argv.remove(0);
        cmd = argv[0].clone();
    }
    argv[0] = cmd.clone();

    let Some(root) = std::env::var_os("HOMELAB_EMU_STATE") else {
        eprintln!(
            "homelab-emu: {cmd}: HOMELAB_EMU_STATE is not set; refusing to run (this is a test emulator, not the real {cmd})"
        );
        return 5;
    };
    let out = match run_locked(Path::new(&root), &cmd, &argv, &exe) {
        Ok(out) => out,
        Err(e) => Out::fail(70, &format!("homelab-emu: {cmd}: internal error: {e:#}")),
    };
    let _ = std::io::stdout().write_all(out.stdout.as_bytes());
    let _ = std::io::stderr().write_all(out.stderr.as_bytes());
    out.code
}

fn run_locked(root: &Path, cmd: &str, argv: &[String], exe: &Path) -> anyhow::Result<Out> {
    let dir = StateDir::open(root)?;
    let _lock = dir.lock()?;
    dir.log_call(argv)?;
    let args = &argv[1..];

    let mut faults: Faults = dir.load(FAULTS_FILE)?;
    let (tripped, counted) = check_faults(&mut faults, cmd, args);
    if let Some(out) = tripped {
        dir.save(FAULTS_FILE, &faults)?;
        return Ok(out);
    }
    let out = match cmd {
        "lvs" | "lvcreate" | "lvremove" | "lvrename" | "lvchange" => lvm::run(&dir, cmd, args)?,
        "kubectl" => kube::run(&dir, args)?,
        "cryptsetup" => crypt::run(&dir, args, exe)?,
        "blkid" => crypt::blkid(args, exe)?,
        c if REFUSED.contains(&c) => Out::fail(
            127,
            &format!(
                "homelab-emu: {c} is not emulated; the product must not call it (or extend the emulator)"
            ),
        ),
        c => Out::fail(127, &format!("homelab-emu: unknown command {c:?}")),
    };
    let armed = out.code == 0 && arm_faults(&mut faults, cmd, args);
    if counted || armed {
        dir.save(FAULTS_FILE, &faults)?;
    }
    Ok(out)
}

/// Whether a fault key (`"cmd word..."`) matches this invocation.
pub fn key_matches(key: &str, cmd: &str, args: &[String]) -> bool {
    let mut words = key.split_whitespace();
    if words.next() != Some(cmd) {
        return false;
    }
    words.all(|w| {
        args.iter()
            .any(|a| a == w || a.rsplit('/').next().is_some_and(|last| last == w))
    })
}

/// Counts matching armed rules; returns the failure of the first that
/// trips, and whether any rule counted this call.
fn check_faults(faults: &mut Faults, cmd: &str, args: &[String]) -> (Option<Out>, bool) {
    let mut result = None;
    let mut counted = false;
    for (key, rule) in faults.fail.iter_mut() {
        if !key_matches(key, cmd, args) || (rule.after.is_some() && !rule.armed) {
            continue;
        }
        rule.seen += 1;
        counted = true;
        let n = rule.seen;
        let trips = n > rule.skip && rule.times.is_none_or(|t| n <= rule.skip + t);
        if trips && result.is_none() {
            result = Some(Out {
                stdout: rule.stdout.clone(),
                stderr: rule.stderr.clone(),
                code: rule.exit,
            });
        }
    }
    (result, counted)
}

/// Arms rules whose `after` key matches this successful call. Returns
/// whether the fault state must be saved.
fn arm_faults(faults: &mut Faults, cmd: &str, args: &[String]) -> bool {
    let mut changed = false;
    for rule in faults.fail.values_mut() {
        if let Some(after) = &rule.after
            && !rule.armed
            && key_matches(after, cmd, args)
        {
            rule.armed = true;
            changed = true;
        }
    }
    changed
}
