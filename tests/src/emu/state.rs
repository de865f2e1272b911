//! The emulators' on-disk state (stands for: the LVM metadata on the PVs, the
//! Kubernetes API server's objects, the kernel's device-mapper table).
//!
//! Everything lives under one directory, `$HOMELAB_EMU_STATE`. Every
//! read-modify-write of any file below happens under an exclusive lock on
//! `$HOMELAB_EMU_STATE/.lock` (`std::fs::File::lock`), so parallel invocations
//! see each other's changes whole. The JSON files are written atomically
//! (temp file, rename). See the module documentation of [`crate::emu`] for
//! the format of each file.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// File names inside the state directory.
pub const LVM_FILE: &str = "lvm.json";
pub const K8S_FILE: &str = "k8s.json";
pub const CRYPT_FILE: &str = "crypt.json";
pub const FAULTS_FILE: &str = "faults.json";
pub const CALLS_LOG: &str = "calls.log";
pub const LOCK_FILE: &str = ".lock";

/// The state directory of one emulated host.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

/// An exclusive lock on the state directory; released on drop.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateDir {
    /// Opens (and creates) a state directory. The path is made absolute and
    /// canonical, because LV paths handed to callers are built from it.
    pub fn open(root: &Path) -> Result<StateDir> {
        fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let root =
            fs::canonicalize(root).with_context(|| format!("resolving {}", root.display()))?;
        Ok(StateDir { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the exclusive lock (blocking).
    pub fn lock(&self) -> Result<StateLock> {
        let path = self.root.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        file.lock()
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(StateLock { _file: file })
    }

    /// Reads a JSON state file; a missing file gives the default value.
    pub fn load<T: DeserializeOwned + Default>(&self, name: &str) -> Result<T> {
        let path = self.root.join(name);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes a JSON state file atomically.
    pub fn save<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let path = self.root.join(name);
        let tmp = self.root.join(format!(".{name}.tmp"));
        let mut text = serde_json::to_string_pretty(value)?;
        text.push('\n');
        fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
        Ok(())
    }

    /// Appends one invocation to `calls.log` (caller holds the lock).
    pub fn log_call(&self, argv: &[String]) -> Result<()> {
        let path = self.root.join(CALLS_LOG);
        let mut line = serde_json::to_string(argv)?;
        line.push('\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        f.write_all(line.as_bytes())?;
        Ok(())
    }

    /// `images/<vg>/<lv>.img`: the LV's content (ext4, blank, or a LUKS header).
    pub fn image(&self, vg: &str, lv: &str) -> PathBuf {
        self.root.join("images").join(vg).join(format!("{lv}.img"))
    }

    /// `images/<vg>/<lv>.plain`: the cleartext ext4 image of an encrypted LV.
    pub fn plain_image(&self, vg: &str, lv: &str) -> PathBuf {
        self.root
            .join("images")
            .join(vg)
            .join(format!("{lv}.plain"))
    }

    /// `dev/<vg>/<lv>`: the LV's path (`lv_path`), a symlink to its image
    /// that exists while the LV is active, like `/dev/<vg>/<lv>`.
    pub fn dev_path(&self, vg: &str, lv: &str) -> PathBuf {
        self.root.join("dev").join(vg).join(lv)
    }

    /// `mapper/`: the emulated `/dev/mapper`.
    pub fn mapper_dir(&self) -> PathBuf {
        self.root.join("mapper")
    }

    /// Scratch space for the emulators.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn now_secs() -> i64 {
    (now_ms() / 1000) as i64
}

// ---------------------------------------------------------------- LVM

/// `lvm.json`: volume groups, thin pools and thin LVs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LvmState {
    #[serde(default)]
    pub vgs: BTreeMap<String, Vg>,
    /// Counter for generated UUIDs.
    #[serde(default)]
    pub seq: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Vg {
    #[serde(default)]
    pub pools: BTreeMap<String, Pool>,
    #[serde(default)]
    pub lvs: BTreeMap<String, Lv>,
}

/// A thin pool. Pools and LVs share one name space per VG.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pool {
    /// Bytes.
    pub size: u64,
    #[serde(default)]
    pub uuid: String,
    /// Creation time, Unix seconds.
    #[serde(default)]
    pub time: i64,
    /// Forces the reported `data_percent` (otherwise computed from the
    /// allocated blocks of the pool's images).
    #[serde(default)]
    pub data_percent: Option<f64>,
    /// Forces the reported `metadata_percent` (otherwise
    /// `metadata_base_percent + metadata_percent_per_lv * <thin LVs in pool>`).
    #[serde(default)]
    pub metadata_percent: Option<f64>,
    #[serde(default = "default_meta_base")]
    pub metadata_base_percent: f64,
    #[serde(default = "default_meta_per_lv")]
    pub metadata_percent_per_lv: f64,
}

fn default_meta_base() -> f64 {
    5.0
}
fn default_meta_per_lv() -> f64 {
    0.5
}

impl Pool {
    pub fn new(size: u64, uuid: String, time: i64) -> Pool {
        Pool {
            size,
            uuid,
            time,
            data_percent: None,
            metadata_percent: None,
            metadata_base_percent: default_meta_base(),
            metadata_percent_per_lv: default_meta_per_lv(),
        }
    }
}

/// A thin volume (a snapshot is a thin volume with an origin).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lv {
    pub pool: String,
    /// Bytes (a multiple of the 4 MiB extent).
    pub size: u64,
    /// Name of the origin LV, empty when none (or when the origin was removed).
    #[serde(default)]
    pub origin: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default = "yes")]
    pub active: bool,
    /// The `k` attribute: skipped by plain `-ay` activation.
    #[serde(default)]
    pub activation_skip: bool,
    /// LUKS: `images/<vg>/<lv>.img` is a real LUKS2 header (luksFormat-ed),
    /// `images/<vg>/<lv>.plain` the cleartext ext4 image.
    #[serde(default)]
    pub encrypted: bool,
    #[serde(default)]
    pub uuid: String,
    /// Creation time, Unix seconds (`lv_time`).
    #[serde(default)]
    pub time: i64,
}

fn yes() -> bool {
    true
}

impl LvmState {
    /// Next generated LVM UUID (`xxxxxx-xxxx-xxxx-xxxx-xxxx-xxxx-xxxxxx`).
    pub fn next_uuid(&mut self, salt: &str) -> String {
        self.seq += 1;
        lvm_uuid(&format!("{salt}/{}", self.seq))
    }
}

/// A 64-bit FNV-1a hash, for deterministic identifiers.
pub fn fnv64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// `n` characters from `alphabet`, derived from `seed`.
pub fn id_chars(seed: &str, n: usize, alphabet: &[u8]) -> String {
    let mut out = String::with_capacity(n);
    let mut h = fnv64(seed.as_bytes());
    let mut round = 0u64;
    while out.len() < n {
        if round > 0 && round.is_multiple_of(8) {
            h = fnv64(format!("{seed}#{round}").as_bytes());
        }
        out.push(char::from(alphabet[(h % alphabet.len() as u64) as usize]));
        h = h.rotate_right(7) ^ h.wrapping_mul(31);
        round += 1;
    }
    out
}

pub fn lvm_uuid(seed: &str) -> String {
    const ALPHA: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let s = id_chars(seed, 32, ALPHA);
    let parts = [6, 4, 4, 4, 4, 4, 6];
    let mut out = String::new();
    let mut i = 0;
    for (n, len) in parts.iter().enumerate() {
        if n > 0 {
            out.push('-');
        }
        out.push_str(&s[i..i + len]);
        i += len;
    }
    out
}

// ---------------------------------------------------------------- cryptsetup

/// `crypt.json`: the open mappings (the emulated device-mapper table).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CryptState {
    #[serde(default)]
    pub open: BTreeMap<String, Mapping>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mapping {
    pub vg: String,
    pub lv: String,
    /// The device path the caller passed to `cryptsetup open`.
    pub device: String,
    pub readonly: bool,
    pub opened_ms: u64,
}

// ---------------------------------------------------------------- faults

/// `faults.json`: injected failures, for every emulated command.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Faults {
    /// Key: `"<command>"` or `"<command> <word>..."`; see [`FailRule`].
    #[serde(default)]
    pub fail: BTreeMap<String, FailRule>,
}

/// One injected failure. A rule matches an invocation when its key's first
/// word is the command name (`lvcreate`, `kubectl`, ...) and every further
/// word equals one of the arguments, or the part after the last `/` of one
/// (so `lvcreate vm-1-pvc-a_snap_20260101_0300` matches
/// `lvcreate ... -n vm-1-pvc-a_snap_20260101_0300 pve/vm-1-pvc-a` and
/// `lvrename vm-1-pvc-a` matches `lvrename pve/vm-1-pvc-a pve/x`).
///
/// A matching call is counted in `seen` (only once the rule is armed); calls
/// number `skip+1 ..= skip+times` fail: nothing is changed, `stdout`/`stderr`
/// are printed and the exit code is `exit`. `after`, when set, is another key:
/// the rule is armed only once a call matching it has succeeded (a later call,
/// not that one).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailRule {
    #[serde(default = "one")]
    pub exit: i32,
    #[serde(default)]
    pub stderr: String,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub skip: u64,
    /// `None`: fails forever once reached.
    #[serde(default)]
    pub times: Option<u64>,
    #[serde(default)]
    pub after: Option<String>,
    /// Maintained by the emulator.
    #[serde(default)]
    pub armed: bool,
    /// Maintained by the emulator.
    #[serde(default)]
    pub seen: u64,
}

fn one() -> i32 {
    1
}

impl FailRule {
    /// Fails every matching call with `exit` and `stderr` (a newline is added
    /// when missing).
    pub fn new(exit: i32, stderr: &str) -> FailRule {
        let mut stderr = stderr.to_string();
        if !stderr.is_empty() && !stderr.ends_with('\n') {
            stderr.push('\n');
        }
        FailRule {
            exit,
            stderr,
            stdout: String::new(),
            skip: 0,
            times: None,
            after: None,
            armed: false,
            seen: 0,
        }
    }
    /// Lets the first `n` matching calls succeed.
    pub fn skip(mut self, n: u64) -> FailRule {
        self.skip = n;
        self
    }
    /// Fails only `n` calls, then succeeds again.
    pub fn times(mut self, n: u64) -> FailRule {
        self.times = Some(n);
        self
    }
    /// Arms the rule only after a call matching `key` succeeded.
    pub fn after(mut self, key: &str) -> FailRule {
        self.after = Some(key.to_string());
        self
    }
}

// ---------------------------------------------------------------- Kubernetes

/// `k8s.json`: the emulated cluster. Objects are rendered from these records
/// on every `kubectl get`; `extra` holds raw objects added verbatim.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct K8sState {
    /// The API server is unreachable: every kubectl call fails.
    #[serde(default)]
    pub down: bool,
    /// Pods of a scaled-down workload vanish, and new pods become Ready,
    /// this long after the scale.
    #[serde(default = "default_delay")]
    pub delay_ms: u64,
    #[serde(default = "default_node")]
    pub node: String,
    #[serde(default)]
    pub pvs: Vec<PvRec>,
    #[serde(default)]
    pub workloads: Vec<WorkloadRec>,
    /// Raw objects by resource (`pods`, `persistentvolumes`, ...), listed after the rendered ones.
    #[serde(default)]
    pub extra: BTreeMap<String, Vec<serde_json::Value>>,
    #[serde(default)]
    pub seq: u64,
}

fn default_delay() -> u64 {
    1000
}
fn default_node() -> String {
    "pve1".to_string()
}

impl Default for K8sState {
    fn default() -> Self {
        K8sState {
            down: false,
            delay_ms: default_delay(),
            node: default_node(),
            pvs: Vec::new(),
            workloads: Vec::new(),
            extra: BTreeMap::new(),
            seq: 0,
        }
    }
}

/// A PersistentVolume, and the PersistentVolumeClaim bound to it when `claim` is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PvRec {
    pub name: String,
    pub driver: String,
    pub volume_handle: String,
    /// Namespace and name of the claim (`spec.claimRef`); empty for none.
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub claim: String,
    #[serde(default = "bound")]
    pub phase: String,
    #[serde(default = "one_gi")]
    pub capacity: String,
    #[serde(default = "storage_class")]
    pub storage_class: String,
}

fn bound() -> String {
    "Bound".to_string()
}
fn one_gi() -> String {
    "1Gi".to_string()
}
fn storage_class() -> String {
    "proxmox-lvm".to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
}

/// A Deployment (with its ReplicaSet) or a StatefulSet, and its pods.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkloadRec {
    pub kind: WorkloadKind,
    pub namespace: String,
    pub name: String,
    pub replicas: u32,
    /// Claims every pod mounts (`spec.template.spec.volumes`).
    #[serde(default)]
    pub claims: Vec<String>,
    /// StatefulSet `volumeClaimTemplates` names: pod N mounts `<vct>-<name>-<N>`.
    #[serde(default)]
    pub vcts: Vec<String>,
    #[serde(default)]
    pub generation: u64,
    #[serde(default)]
    pub created_ms: u64,
    #[serde(default)]
    pub pods: Vec<PodRec>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRec {
    pub name: String,
    #[serde(default)]
    pub ordinal: Option<u32>,
    pub created_ms: u64,
    /// Ready from this instant on.
    pub ready_at_ms: u64,
    /// Terminating; gone from this instant on.
    #[serde(default)]
    pub delete_at_ms: Option<u64>,
}

impl K8sState {
    /// Drops pods whose deletion is due (called before every read).
    pub fn reconcile(&mut self, now: u64) {
        for w in &mut self.workloads {
            w.pods.retain(|p| p.delete_at_ms.is_none_or(|t| t > now));
        }
    }
}
