//! Emulators of LVM, kubectl, cryptsetup and blkid, for tests only (stands
//! for: the Proxmox host's LVM thin pool `pve/data`, its dm-crypt mappings,
//! and the Kubernetes API server; the CI kernel has no device-mapper and
//! there is no cluster). Never reachable from product code: product tools
//! call the real command names, and a test puts [`EmuHost::bin_dir`] first
//! on PATH.
//!
//! # Pieces
//! - the multi-call binary `homelab-emu` (`src/bin/homelab-emu.rs`),
//!   dispatching on the base name of `argv[0]`: `lvs lvcreate lvremove
//!   lvrename lvchange kubectl cryptsetup blkid`. The names in
//!   [`REFUSED`] (`vgs`, `dmsetup`, `lvextend`, ...) are shadowed too and
//!   fail with exit 127, so a product never reaches the host's real LVM
//!   from a test;
//! - [`EmuHost`]: builds a host in a temp dir and gives the environment.
//!
//! # Environment
//! - `HOMELAB_EMU_STATE` (required; unset: exit 5 and nothing runs): the
//!   state directory. `EmuHost::env()` sets it and PATH.
//! - `HOMELAB_EMU_BIN` (optional, tests only): where `EmuHost::new` finds the
//!   binary; default: next to the test executable or one level up.
//!
//! # State directory (`$HOMELAB_EMU_STATE`)
//! ```text
//! .lock                 flock held around every read-modify-write (whole invocation)
//! calls.log             one JSON array per invocation: ["lvcreate","-s","-kn",...]
//! lvm.json              VGs, thin pools, thin LVs                      (LvmState)
//! k8s.json              PVs/PVCs, workloads and their pods, flags        (K8sState)
//! crypt.json            open LUKS mappings                                (CryptState)
//! faults.json           injected failures                                 (Faults)
//! images/<vg>/<lv>.img  the LV's content: ext4, blank, or a real LUKS2 header
//! images/<vg>/<lv>.plain  cleartext ext4 image of an encrypted LV
//! dev/<vg>/<lv>         lv_path: symlink to the .img, present while the LV is active
//! mapper/<name>         an open LUKS mapping: copy of the .plain image (the /dev/mapper)
//! tmp/                  builder scratch
//! ```
//!
//! `lvm.json`:
//! ```json
//! {"vgs": {"pve": {
//!    "pools": {"data": {"size": 1073741824, "uuid": "...", "time": 1795800000,
//!              "data_percent": null, "metadata_percent": null,
//!              "metadata_base_percent": 5.0, "metadata_percent_per_lv": 0.5}},
//!    "lvs": {"vm-100-pvc-x": {"pool": "data", "size": 67108864, "origin": "",
//!              "tags": [], "active": true, "activation_skip": false,
//!              "encrypted": false, "uuid": "...", "time": 1795800100}}}},
//!  "seq": 3}
//! ```
//! Pool `data_percent` = allocated bytes (`st_blocks*512`) of all images of
//! the pool's LVs / pool size * 100; `metadata_percent` = base + per_lv *
//! number of thin LVs; a non-null `data_percent`/`metadata_percent` forces
//! the value (pool guard tests).
//!
//! `k8s.json`:
//! ```json
//! {"down": false, "delay_ms": 1000, "node": "pve1",
//!  "pvs": [{"name": "pvc-x", "driver": "csi.proxmox.sinextra.dev",
//!           "volume_handle": "homelab/pve1/local-lvm/vm-100-pvc-x",
//!           "namespace": "app", "claim": "data", "phase": "Bound",
//!           "capacity": "1Gi", "storage_class": "proxmox-lvm"}],
//!  "workloads": [{"kind": "Deployment", "namespace": "app", "name": "web",
//!                 "replicas": 1, "claims": ["data"], "vcts": [],
//!                 "pods": [{"name": "web-abc-xyz", "ordinal": null, "created_ms": 0,
//!                           "ready_at_ms": 0, "delete_at_ms": null}], ...}],
//!  "extra": {"pods": [ {raw Pod object} ]}, "seq": 1}
//! ```
//! Rendered per call: PersistentVolume, PersistentVolumeClaim (for bound
//! PVs), Deployment + its ReplicaSet, StatefulSet, Pod (owner references,
//! claim volumes, Ready condition, `deletionTimestamp` while terminating),
//! VolumeAttachment (one per PV while any pod, terminating included, mounts
//! its claim). After `kubectl scale` surplus pods terminate and vanish
//! `delay_ms` later; new pods are Pending, then Running/Ready `delay_ms` later.
//!
//! `crypt.json`: `{"open": {"NAME": {"vg": "pve", "lv": "...", "device":
//! "<path given>", "readonly": true, "opened_ms": 0}}}`.
//!
//! # Fault injection (`faults.json`)
//! ```json
//! {"fail": {
//!    "lvcreate vm-100-pvc-x_snap_20260101_0300": {"exit": 5, "stderr": "  boom\n"},
//!    "lvrename": {"exit": 5, "stderr": "...", "skip": 1, "times": 1},
//!    "kubectl": {"exit": 1, "stderr": "...", "after": "kubectl scale"}}}
//! ```
//! Key: the command name, then optional words that must each equal an
//! argument or its part after the last `/`. Fields: `exit` (default 1),
//! `stderr`, `stdout`, `skip` (matching calls that still pass, default 0),
//! `times` (failures before passing again; absent: forever), `after` (a key;
//! the rule is armed only after a call matching it succeeded). `seen` and
//! `armed` are kept by the emulator. A failing call changes nothing. See
//! [`FailRule`]. `k8s.json`'s `down` makes every kubectl call exit 1 with
//! the real "connection refused" text.
//!
//! # Mapper directory
//! Mappings appear as regular files in `$HOMELAB_EMU_STATE/mapper/<name>`
//! ([`EmuHost::mapper_dir`]); product code takes that directory as its
//! `/dev/mapper` setting. LV paths and mappers are files, not block
//! devices: `mount(8)` sets up a loop device by itself; code calling
//! `mount(2)` directly must attach a loop device first.

pub mod state;

mod crypt;
mod host;
mod kube;
mod lvm;
mod run;
mod util;

pub use host::{CSI_DRIVER, EmuHost, Files};
pub use kube::CONNECTION_REFUSED;
pub use lvm::FIELDS as LVS_FIELDS;
pub use run::{EMULATED, REFUSED, key_matches, main_entry};
pub use state::{FailRule, PvRec};
