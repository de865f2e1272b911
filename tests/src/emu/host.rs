//! `EmuHost`: one emulated Proxmox host (LVM thin pool, LUKS, Kubernetes)
//! for a test, built in a temporary directory. Stands for: the host the
//! product tools run on, as far as the tools can see it through `lvs`,
//! `lvcreate`, `lvremove`, `lvrename`, `lvchange`, `kubectl`, `cryptsetup`
//! and `blkid`.
//!
//! The builders write the state directly (they log no calls) and panic with
//! a clear message on failure: they are test set-up, not code under test.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::kube;
use super::lvm;
use super::run::{EMULATED, REFUSED};
use super::state::{
    CALLS_LOG, CRYPT_FILE, CryptState, FAULTS_FILE, FailRule, Faults, K8S_FILE, K8sState, LVM_FILE,
    Lv, LvmState, Pool, PvRec, StateDir, WorkloadKind, now_ms, now_secs,
};
use super::util::find_real;

/// The CSI driver of the homelab's PVs.
pub const CSI_DRIVER: &str = "csi.proxmox.sinextra.dev";

/// Files to put into a volume: (path relative to its root, content).
pub type Files<'a> = &'a [(&'a str, &'a [u8])];

#[derive(Debug, Clone)]
pub struct EmuHost {
    state: StateDir,
    bin: PathBuf,
    exe: PathBuf,
}

impl EmuHost {
    /// Creates `DIR/state` and `DIR/bin` (symlinks to `homelab-emu`, found
    /// with [`EmuHost::locate_binary`]).
    pub fn new(dir: impl AsRef<Path>) -> EmuHost {
        let exe = Self::locate_binary().expect(
            "homelab-emu binary not found: build it (cargo test -p backup-tests builds it) or set HOMELAB_EMU_BIN",
        );
        Self::with_binary(dir, &exe)
    }

    /// Like [`EmuHost::new`] with an explicit path to the `homelab-emu` binary.
    pub fn with_binary(dir: impl AsRef<Path>, exe: &Path) -> EmuHost {
        Self::try_with_binary(dir.as_ref(), exe).expect("setting up the emulated host")
    }

    fn try_with_binary(dir: &Path, exe: &Path) -> Result<EmuHost> {
        let state = StateDir::open(&dir.join("state"))?;
        let bin = dir.join("bin");
        fs::create_dir_all(&bin)?;
        let bin = fs::canonicalize(&bin)?;
        let exe = fs::canonicalize(exe).with_context(|| format!("resolving {}", exe.display()))?;
        for name in EMULATED.iter().chain(REFUSED) {
            let link = bin.join(name);
            if fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(&exe, &link)?;
            }
        }
        for d in ["images", "dev", "mapper", "tmp"] {
            fs::create_dir_all(state.root().join(d))?;
        }
        Ok(EmuHost { state, bin, exe })
    }

    /// `$HOMELAB_EMU_BIN`, else `homelab-emu` in the directory of the
    /// running executable or its parent (`target/debug/deps/..`).
    pub fn locate_binary() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("HOMELAB_EMU_BIN") {
            return Some(PathBuf::from(p));
        }
        let me = std::env::current_exe().ok()?;
        let dir = me.parent()?;
        [dir.join("homelab-emu"), dir.parent()?.join("homelab-emu")]
            .into_iter()
            .find(|p| p.is_file())
    }

    // ------------------------------------------------------------ environment

    /// The state directory (`$HOMELAB_EMU_STATE`).
    pub fn state_dir(&self) -> &Path {
        self.state.root()
    }

    /// The directory of emulator symlinks to put first on PATH.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// The emulated `/dev/mapper`: pass it to product code as its mapper directory.
    pub fn mapper_dir(&self) -> PathBuf {
        self.state.mapper_dir()
    }

    /// PATH with the emulators first.
    pub fn path_env(&self) -> OsString {
        let mut dirs = vec![self.bin.clone()];
        if let Some(p) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&p));
        }
        std::env::join_paths(dirs).unwrap_or_else(|_| self.bin.clone().into_os_string())
    }

    /// Environment for a command that should see the emulated host.
    pub fn env(&self) -> Vec<(OsString, OsString)> {
        vec![
            ("PATH".into(), self.path_env()),
            (
                "HOMELAB_EMU_STATE".into(),
                self.state.root().as_os_str().to_owned(),
            ),
        ]
    }

    /// A `Command` with [`EmuHost::env`] applied.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.envs(self.env());
        c
    }

    fn edit<T, R>(&self, file: &str, f: impl FnOnce(&mut T) -> Result<R>) -> Result<R>
    where
        T: serde::de::DeserializeOwned + serde::Serialize + Default,
    {
        let _lock = self.state.lock()?;
        let mut v: T = self.state.load(file)?;
        let r = f(&mut v)?;
        self.state.save(file, &v)?;
        Ok(r)
    }

    fn read<T: serde::de::DeserializeOwned + Default>(&self, file: &str) -> T {
        let _lock = self.state.lock().expect("locking the emulator state");
        self.state.load(file).expect("reading the emulator state")
    }

    // ------------------------------------------------------------ LVM

    /// A thin pool `vg/pool` of `size` bytes (the VG is created if needed).
    pub fn add_pool(&self, vg: &str, pool: &str, size: u64) {
        self.edit(LVM_FILE, |st: &mut LvmState| {
            let uuid = st.next_uuid(&format!("{vg}/{pool}"));
            let v = st.vgs.entry(vg.to_string()).or_default();
            if v.pools.contains_key(pool) || v.lvs.contains_key(pool) {
                bail!("{vg}/{pool} exists");
            }
            v.pools.insert(
                pool.to_string(),
                Pool::new(lvm::round_extent(size), uuid, now_secs()),
            );
            Ok(())
        })
        .expect("add_pool");
    }

    /// A thin LV holding an ext4 filesystem with `files`; returns its `lv_path`.
    pub fn add_thin_lv(
        &self,
        vg: &str,
        pool: &str,
        name: &str,
        size: u64,
        files: Files,
    ) -> PathBuf {
        let src = self.files_dir(files);
        self.add_thin_lv_from_dir(vg, pool, name, size, src.path())
    }

    /// A thin LV holding an ext4 filesystem made from the tree at `src`
    /// (`mkfs.ext4 -d`: owners, modes, symlinks, hard links kept).
    pub fn add_thin_lv_from_dir(
        &self,
        vg: &str,
        pool: &str,
        name: &str,
        size: u64,
        src: &Path,
    ) -> PathBuf {
        self.try_add_lv(vg, pool, name, size, src, None)
            .unwrap_or_else(|e| panic!("add_thin_lv {vg}/{name}: {e:#}"))
    }

    /// A LUKS-encrypted thin LV (real LUKS2 header, key `key`) whose
    /// cleartext is an ext4 filesystem with `files`; returns its `lv_path`.
    pub fn add_luks_lv(
        &self,
        vg: &str,
        pool: &str,
        name: &str,
        size: u64,
        key: &[u8],
        files: Files,
    ) -> PathBuf {
        let src = self.files_dir(files);
        self.add_luks_lv_from_dir(vg, pool, name, size, key, src.path())
    }

    pub fn add_luks_lv_from_dir(
        &self,
        vg: &str,
        pool: &str,
        name: &str,
        size: u64,
        key: &[u8],
        src: &Path,
    ) -> PathBuf {
        self.try_add_lv(vg, pool, name, size, src, Some(key))
            .unwrap_or_else(|e| panic!("add_luks_lv {vg}/{name}: {e:#}"))
    }

    /// A thin snapshot `name` of `vg/origin`, like `lvcreate -s -kn` (active,
    /// no activation skip), with `tags`; returns its `lv_path`.
    pub fn add_snapshot(&self, vg: &str, origin: &str, name: &str, tags: &[&str]) -> PathBuf {
        let tags = tags.iter().map(|t| t.to_string()).collect();
        self.edit(LVM_FILE, |st: &mut LvmState| {
            let v = st.vgs.get(vg).context("no such VG")?;
            if v.lvs.contains_key(name) || v.pools.contains_key(name) {
                bail!("{vg}/{name} exists");
            }
            let flags = lvm::SnapFlags {
                tags,
                activation_skip: false,
                active: true,
            };
            lvm::snapshot_lv(&self.state, st, vg, origin, name, flags)
        })
        .unwrap_or_else(|e| panic!("add_snapshot {vg}/{name}: {e:#}"));
        self.lv_path(vg, name)
    }

    fn files_dir(&self, files: Files) -> tempfile::TempDir {
        let dir = tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(self.state.tmp_dir())
            .expect("temp dir for volume content");
        for (rel, content) in files {
            let rel = Path::new(rel);
            assert!(
                rel.is_relative()
                    && !rel
                        .components()
                        .any(|c| c == std::path::Component::ParentDir),
                "volume file {} must be a relative path inside the volume",
                rel.display()
            );
            let p = dir.path().join(rel);
            if let Some(parent) = p.parent() {
                fs::create_dir_all(parent).expect("creating volume directories");
            }
            fs::write(&p, content).expect("writing volume file");
        }
        dir
    }

    fn try_add_lv(
        &self,
        vg: &str,
        pool: &str,
        name: &str,
        size: u64,
        src: &Path,
        key: Option<&[u8]>,
    ) -> Result<PathBuf> {
        let size = lvm::round_extent(size);
        self.edit(LVM_FILE, |st: &mut LvmState| {
            let v = st
                .vgs
                .get(vg)
                .with_context(|| format!("no VG {vg} (add_pool first)"))?;
            if !v.pools.contains_key(pool) {
                bail!("no thin pool {vg}/{pool}");
            }
            if v.lvs.contains_key(name) || v.pools.contains_key(name) {
                bail!("{vg}/{name} exists");
            }
            let img = self.state.image(vg, name);
            if let Some(p) = img.parent() {
                fs::create_dir_all(p)?;
            }
            match key {
                None => self.mkfs(&img, size, src)?,
                Some(key) => {
                    self.mkfs(&self.state.plain_image(vg, name), size, src)?;
                    self.luks_format(&img, size, key)?;
                }
            }
            let uuid = st.next_uuid(&format!("{vg}/{name}"));
            let lv = Lv {
                pool: pool.to_string(),
                size,
                origin: String::new(),
                tags: Vec::new(),
                active: true,
                activation_skip: false,
                encrypted: key.is_some(),
                uuid,
                time: now_secs(),
            };
            lvm::insert_lv(&self.state, st, vg, name, lv)
        })?;
        Ok(self.lv_path(vg, name))
    }

    fn real(&self, name: &str) -> Result<PathBuf> {
        find_real(name, &self.exe).with_context(|| format!("{name} is not installed"))
    }

    fn mkfs(&self, img: &Path, size: u64, src: &Path) -> Result<()> {
        fs::File::create(img)?.set_len(size)?;
        let o = Command::new(self.real("mkfs.ext4")?)
            .args(["-q", "-F", "-d"])
            .arg(src)
            .arg(img)
            .output()?;
        if !o.status.success() {
            bail!("mkfs.ext4: {}", String::from_utf8_lossy(&o.stderr).trim());
        }
        Ok(())
    }

    fn luks_format(&self, img: &Path, size: u64, key: &[u8]) -> Result<()> {
        fs::File::create(img)?.set_len(size)?;
        let keyf = tempfile::NamedTempFile::new_in(self.state.tmp_dir())?;
        fs::write(keyf.path(), key)?;
        let o = Command::new(self.real("cryptsetup")?)
            .args([
                "luksFormat",
                "-q",
                "--type",
                "luks2",
                "--pbkdf",
                "pbkdf2",
                "--pbkdf-force-iterations",
                "1000",
                "--luks2-metadata-size",
                "16k",
                "--luks2-keyslots-size",
                "256k",
                "--key-file",
            ])
            .arg(keyf.path())
            .arg(img)
            .output()?;
        if !o.status.success() {
            bail!(
                "cryptsetup luksFormat: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(())
    }

    /// `lv_path` of `vg/lv` (a symlink to its image while the LV is active).
    pub fn lv_path(&self, vg: &str, lv: &str) -> PathBuf {
        self.state.dev_path(vg, lv)
    }

    /// The ext4 image holding `vg/lv`'s files (the cleartext one for LUKS).
    pub fn fs_image(&self, vg: &str, lv: &str) -> PathBuf {
        let plain = self.state.plain_image(vg, lv);
        if plain.exists() {
            plain
        } else {
            self.state.image(vg, lv)
        }
    }

    /// Copies the files of `vg/lv` into `dest` without mounting (`debugfs rdump`).
    pub fn extract_lv(&self, vg: &str, lv: &str, dest: &Path) {
        fs::create_dir_all(dest).expect("creating extract dir");
        let img = self.fs_image(vg, lv);
        let o = Command::new(self.real("debugfs").expect("debugfs"))
            .arg("-R")
            .arg(format!("rdump / {}", dest.display()))
            .arg(&img)
            .output()
            .expect("running debugfs");
        assert!(
            o.status.success(),
            "debugfs rdump {}: {}",
            img.display(),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// The regular files of `vg/lv` (path -> content), `lost+found` left out.
    pub fn lv_files(&self, vg: &str, lv: &str) -> BTreeMap<String, Vec<u8>> {
        let dir = tempfile::Builder::new()
            .prefix("extract-")
            .tempdir_in(self.state.tmp_dir())
            .expect("temp dir");
        self.extract_lv(vg, lv, dir.path());
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).expect("reading extracted tree").flatten() {
                let p = e.path();
                let rel = p
                    .strip_prefix(dir.path())
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .into_owned();
                if rel == "lost+found" {
                    continue;
                }
                let ft = e.file_type().expect("file type");
                if ft.is_dir() {
                    stack.push(p);
                } else if ft.is_file() {
                    out.insert(rel, fs::read(&p).expect("reading extracted file"));
                }
            }
        }
        out
    }

    /// Sets `lv_time` (Unix seconds).
    pub fn set_lv_time(&self, vg: &str, lv: &str, unix: i64) {
        self.edit_lvm(|st| {
            if let Some(l) = st.vgs.get_mut(vg).and_then(|v| v.lvs.get_mut(lv)) {
                l.time = unix;
            }
        });
    }

    /// Forces the pool's reported `data_percent` / `metadata_percent` (`None`: computed).
    pub fn set_pool_usage(&self, vg: &str, pool: &str, data: Option<f64>, metadata: Option<f64>) {
        self.edit_lvm(|st| {
            let p = st
                .vgs
                .get_mut(vg)
                .and_then(|v| v.pools.get_mut(pool))
                .expect("no such pool");
            p.data_percent = data;
            p.metadata_percent = metadata;
        });
    }

    /// The LVM state.
    pub fn lvm(&self) -> LvmState {
        self.read(LVM_FILE)
    }

    /// Any change to the LVM state, under the lock.
    pub fn edit_lvm(&self, f: impl FnOnce(&mut LvmState)) {
        self.edit(LVM_FILE, |st: &mut LvmState| {
            f(st);
            Ok(())
        })
        .expect("edit_lvm");
    }

    /// What `lvs --reportformat json --units b --nosuffix -a -o <every field>`
    /// prints, parsed (computed in-process: no call is logged).
    pub fn lvs_json(&self) -> Value {
        let _lock = self.state.lock().expect("lock");
        let st: LvmState = self.state.load(LVM_FILE).expect("lvm state");
        let crypt: CryptState = self.state.load(CRYPT_FILE).expect("crypt state");
        let fields: Vec<String> = lvm::FIELDS.iter().map(|s| s.to_string()).collect();
        let text = lvm::report(&self.state, &st, &crypt, &fields, false);
        serde_json::from_str(&text).expect("report is JSON")
    }

    /// The rows of [`EmuHost::lvs_json`].
    pub fn lvs_rows(&self) -> Vec<Value> {
        self.lvs_json()["report"][0]["lv"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    // ------------------------------------------------------------ cryptsetup

    /// Names of the open mappings.
    pub fn open_mappers(&self) -> Vec<String> {
        let c: CryptState = self.read(CRYPT_FILE);
        c.open.keys().cloned().collect()
    }

    // ------------------------------------------------------------ Kubernetes

    /// A Bound PV of driver [`CSI_DRIVER`] with handle
    /// `homelab/pve1/local-lvm/<lv>` and its PVC `ns/claim`; returns the PV
    /// name (`pvc-<uuid part of lv>`).
    pub fn add_pv(&self, ns: &str, claim: &str, lv: &str) -> String {
        let name = match lv.find("pvc-") {
            Some(i) => lv[i..].to_string(),
            None => format!("pvc-{lv}"),
        };
        self.add_pv_rec(PvRec {
            name: name.clone(),
            driver: CSI_DRIVER.to_string(),
            volume_handle: format!("homelab/pve1/local-lvm/{lv}"),
            namespace: ns.to_string(),
            claim: claim.to_string(),
            phase: "Bound".to_string(),
            capacity: "1Gi".to_string(),
            storage_class: "proxmox-lvm".to_string(),
        });
        name
    }

    /// A PV exactly as described (other drivers, odd handles, Released, ...).
    pub fn add_pv_rec(&self, pv: PvRec) {
        self.edit_k8s(|st| st.pvs.push(pv));
    }

    /// A Deployment `ns/name` whose pods mount `claim` (empty: none), with
    /// `replicas` Ready pods.
    pub fn add_deployment(&self, ns: &str, name: &str, replicas: u32, claim: &str) {
        let claims = if claim.is_empty() {
            vec![]
        } else {
            vec![claim.to_string()]
        };
        self.add_workload(WorkloadKind::Deployment, ns, name, replicas, claims, vec![]);
    }

    /// A StatefulSet `ns/name` with volume claim template `vct`: pod N mounts
    /// `<vct>-<name>-<N>` (add those PVCs with [`EmuHost::add_pv`]).
    pub fn add_statefulset(&self, ns: &str, name: &str, replicas: u32, vct: &str) {
        self.add_workload(
            WorkloadKind::StatefulSet,
            ns,
            name,
            replicas,
            vec![],
            vec![vct.to_string()],
        );
    }

    fn add_workload(
        &self,
        kind: WorkloadKind,
        ns: &str,
        name: &str,
        replicas: u32,
        claims: Vec<String>,
        vcts: Vec<String>,
    ) {
        self.edit_k8s(|st| {
            let mut seq = st.seq;
            let w = kube::new_workload(kind, ns, name, replicas, claims, vcts, &mut seq);
            st.seq = seq;
            st.workloads.push(w);
        });
    }

    /// A raw object (its `kind` picks the list it appears in).
    pub fn add_k8s_object(&self, obj: Value) {
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        let plural =
            kube::plural_of_kind(&kind).unwrap_or_else(|| panic!("unsupported kind {kind:?}"));
        self.edit_k8s(|st| st.extra.entry(plural.to_string()).or_default().push(obj));
    }

    /// Makes every kubectl call fail as if the API server were unreachable.
    pub fn set_kube_down(&self, down: bool) {
        self.edit_k8s(|st| st.down = down);
    }

    /// How long pods take to terminate or to become Ready after a scale.
    pub fn set_kube_delay(&self, d: Duration) {
        self.edit_k8s(|st| st.delay_ms = d.as_millis() as u64);
    }

    pub fn edit_k8s(&self, f: impl FnOnce(&mut K8sState)) {
        self.edit(K8S_FILE, |st: &mut K8sState| {
            f(st);
            Ok(())
        })
        .expect("edit_k8s");
    }

    /// The objects of one resource (`pods`, `persistentvolumes`,
    /// `volumeattachments`, ...) as `kubectl get` would show them now.
    pub fn k8s_objects(&self, plural: &str) -> Vec<Value> {
        let mut st: K8sState = self.read(K8S_FILE);
        let now = now_ms();
        st.reconcile(now);
        kube::render(&st, now).remove(plural).unwrap_or_default()
    }

    /// The desired replica count of the Deployment or StatefulSet `ns/name`.
    pub fn replicas(&self, ns: &str, name: &str) -> Option<u32> {
        let st: K8sState = self.read(K8S_FILE);
        st.workloads
            .iter()
            .find(|w| w.namespace == ns && w.name == name)
            .map(|w| w.replicas)
    }

    // ------------------------------------------------------------ faults and calls

    /// Injects a failure; see [`FailRule`] for the key syntax.
    pub fn set_fail(&self, key: &str, rule: FailRule) {
        self.edit(FAULTS_FILE, |f: &mut Faults| {
            f.fail.insert(key.to_string(), rule);
            Ok(())
        })
        .expect("set_fail");
    }

    pub fn clear_fail(&self, key: &str) {
        self.edit(FAULTS_FILE, |f: &mut Faults| {
            f.fail.remove(key);
            Ok(())
        })
        .expect("clear_fail");
    }

    pub fn faults(&self) -> Faults {
        self.read(FAULTS_FILE)
    }

    /// Every emulated call so far, `argv[0]` being the command name.
    pub fn calls(&self) -> Vec<Vec<String>> {
        let _lock = self.state.lock().expect("lock");
        let text = fs::read_to_string(self.state.root().join(CALLS_LOG)).unwrap_or_default();
        text.lines()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).expect("calls.log line"))
            .collect()
    }

    /// The calls of one command.
    pub fn calls_of(&self, cmd: &str) -> Vec<Vec<String>> {
        self.calls()
            .into_iter()
            .filter(|c| c.first().is_some_and(|c| c == cmd))
            .collect()
    }

    pub fn clear_calls(&self) {
        let _lock = self.state.lock().expect("lock");
        let _ = fs::remove_file(self.state.root().join(CALLS_LOG));
    }
}
