//! What the pipeline knows about Kubernetes PersistentVolumes, in one
//! place: `kubectl get pv -o json` read into (LV, namespace, claim, PV
//! name, phase, driver), which LV a CSI volume handle names, valid object
//! names, and the mapping cache both lvm-snap and pvc-copy fall back on
//! when the API server does not answer. Running kubectl and what to do
//! without a mapping stay with each tool (their policies differ).

use std::io;
use std::path::Path;
use std::time::SystemTime;

use serde_json::Value;

/// The CSI driver whose volumes are PVC LVs on this host.
pub const CSI_DRIVER: &str = "csi.proxmox.sinextra.dev";

/// Where both tools keep the last good `kubectl get pv -o json`: on the
/// host's own disk, so it is there when the backup disk is not. The file
/// is kubectl's output byte for byte (so `jq` and kubectl's own tools read
/// it too).
pub const DEFAULT_MAPPING_CACHE: &str = "/var/lib/backup-pipeline/lv-pvc-mapping.json";

/// Namespaces lvm-snap never snapshots by default (`EXCLUDED_NAMESPACES`, read by lvm-snap and pvc-copy);
/// pvc-copy must be told to skip them (`--skip NS/*`), or their PVCs fail
/// for lack of a snapshot.
pub const DEFAULT_EXCLUDED_NAMESPACES: &str = "dbaas,monitoring";

/// One PersistentVolume, reduced to what the pipeline needs. Missing
/// fields are empty strings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Pv {
    /// The PV's own name.
    pub name: String,
    /// `spec.csi.driver`.
    pub driver: String,
    /// `spec.csi.volumeHandle`.
    pub handle: String,
    /// `spec.claimRef.namespace`.
    pub namespace: String,
    /// `spec.claimRef.name`: the PVC.
    pub claim: String,
    /// `status.phase` (Bound, Released, ...).
    pub phase: String,
}

impl Pv {
    /// The LV the volume handle names (see [`handle_lv`]).
    pub fn lv(&self) -> &str {
        handle_lv(&self.handle)
    }
    /// True when the handle names this LV (see [`handle_names_lv`]).
    pub fn names_lv(&self, lv: &str) -> bool {
        handle_names_lv(&self.handle, lv)
    }
    /// `(namespace, claim)` when the PV has a claim with both parts.
    pub fn claim_ref(&self) -> Option<(&str, &str)> {
        (!self.namespace.is_empty() && !self.claim.is_empty())
            .then_some((self.namespace.as_str(), self.claim.as_str()))
    }
    /// A volume of our CSI driver with a handle.
    pub fn is_ours(&self) -> bool {
        self.driver == CSI_DRIVER && !self.handle.is_empty()
    }
}

/// The LV a volume handle names: its last `/` or `:` separated part
/// (sinextra handles are `<region>/<zone>/<storage>/<lv>`; some are
/// `local-lvm:<lv>`; a bare LV name names itself).
pub fn handle_lv(handle: &str) -> &str {
    handle.rsplit(['/', ':']).next().unwrap_or(handle)
}

/// True when a CSI volume handle names this LV: the whole handle, or its
/// last `/` or `:` separated part.
pub fn handle_names_lv(handle: &str, lv: &str) -> bool {
    handle == lv || handle_lv(handle) == lv
}

/// A Kubernetes namespace or object name (DNS-1123 subdomain: lowercase
/// alphanumerics, `-`, `.`, alphanumeric at both ends, at most 253 bytes),
/// so also safe as one path component: never `.`, `..` or a dot name.
pub fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 253
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'.')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Every PV of a parsed `kubectl get pv -o json` list, whatever its driver
/// (filter with [`Pv::is_ours`]).
pub fn pv_list(v: &Value) -> Result<Vec<Pv>, String> {
    let items = v
        .get("items")
        .and_then(Value::as_array)
        .ok_or("not the JSON of `kubectl get pv -o json`: no items list")?;
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    Ok(items
        .iter()
        .map(|it| {
            let spec = &it["spec"];
            Pv {
                name: s(&it["metadata"]["name"]),
                driver: s(&spec["csi"]["driver"]),
                handle: s(&spec["csi"]["volumeHandle"]),
                namespace: s(&spec["claimRef"]["namespace"]),
                claim: s(&spec["claimRef"]["name"]),
                phase: s(&it["status"]["phase"]),
            }
        })
        .collect())
}

/// [`pv_list`] of raw `kubectl get pv -o json` output.
pub fn parse_pv_list(json: &[u8]) -> Result<Vec<Pv>, String> {
    let v: Value = serde_json::from_slice(json)
        .map_err(|e| format!("not the JSON of `kubectl get pv -o json`: {e}"))?;
    pv_list(&v)
}

/// Store kubectl's output as the mapping cache, atomically. Only where the
/// directory exists (`Ok(false)` otherwise): a cache path on a disk that is
/// not mounted must not leave a file on the filesystem under it.
pub fn save_mapping(cache: &Path, raw: &[u8]) -> io::Result<bool> {
    let dir_ok = cache
        .parent()
        .is_some_and(|d| d.as_os_str().is_empty() || d.is_dir());
    if !dir_ok {
        return Ok(false);
    }
    crate::fsutil::write_atomic(cache, raw)?;
    Ok(true)
}

/// A mapping read back from the cache.
#[derive(Debug, Clone)]
pub struct CachedMapping {
    pub pvs: Vec<Pv>,
    /// When it was written (the file's modification time).
    pub written: Option<SystemTime>,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// No cache file (never written, or another path).
    #[error("{0}")]
    Missing(io::Error),
    #[error("cannot read it: {0}")]
    Unreadable(io::Error),
    /// A file that is not a PV list.
    #[error("{0}")]
    Invalid(String),
}

/// Read the mapping cache written by [`save_mapping`].
pub fn load_mapping(cache: &Path) -> Result<CachedMapping, CacheError> {
    let raw = std::fs::read(cache).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => CacheError::Missing(e),
        _ => CacheError::Unreadable(e),
    })?;
    let pvs = parse_pv_list(&raw).map_err(CacheError::Invalid)?;
    let written = std::fs::metadata(cache).and_then(|m| m.modified()).ok();
    Ok(CachedMapping { pvs, written })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> Value {
        serde_json::json!({"items": [
            {"metadata": {"name": "pv-a"}, "spec": {"csi": {"driver": CSI_DRIVER,
                "volumeHandle": "r/z/local-lvm/vm-1-pvc-aa"},
                "claimRef": {"namespace": "dbaas", "name": "data-mysql-0"}},
                "status": {"phase": "Bound"}},
            {"metadata": {"name": "pv-b"}, "spec": {"csi": {"driver": "nfs.csi.k8s.io",
                "volumeHandle": "x/vm-1-pvc-bb"}}},
            {"metadata": {"name": "pv-c"}, "spec": {"nfs": {}}}
        ]})
    }

    #[test]
    fn handles_name_their_lv_by_suffix() {
        assert_eq!(
            handle_lv("region-1/pve1/local-lvm/vm-9999-pvc-ab12"),
            "vm-9999-pvc-ab12"
        );
        assert_eq!(handle_lv("local-lvm:vm-9999-pvc-ab12"), "vm-9999-pvc-ab12");
        assert_eq!(handle_lv("a:b/vm-1-pvc-ab"), "vm-1-pvc-ab");
        assert_eq!(handle_lv("vm-9999-pvc-ab12"), "vm-9999-pvc-ab12");
        assert!(handle_names_lv("r/z/s/vm-1-pvc-a", "vm-1-pvc-a"));
        assert!(!handle_names_lv("r/z/s/vm-1-pvc-ab", "vm-1-pvc-a"));
        assert!(!handle_names_lv("", "vm-1-pvc-a"));
    }

    #[test]
    fn every_pv_is_read_and_the_driver_tells_ours() {
        let pvs = pv_list(&list()).expect("list");
        assert_eq!(pvs.len(), 3);
        assert_eq!(
            pvs[0],
            Pv {
                name: "pv-a".into(),
                driver: CSI_DRIVER.into(),
                handle: "r/z/local-lvm/vm-1-pvc-aa".into(),
                namespace: "dbaas".into(),
                claim: "data-mysql-0".into(),
                phase: "Bound".into(),
            }
        );
        assert_eq!(pvs[0].lv(), "vm-1-pvc-aa");
        assert_eq!(pvs[0].claim_ref(), Some(("dbaas", "data-mysql-0")));
        let ours: Vec<&str> = pvs
            .iter()
            .filter(|p| p.is_ours())
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(ours, ["pv-a"]);
        assert_eq!(pvs[2].claim_ref(), None);
        assert!(pv_list(&serde_json::json!({"kind": "Status"})).is_err());
        assert!(parse_pv_list(b"error: the server doesn't have a resource type").is_err());
    }

    #[test]
    fn hostile_names_are_refused() {
        for bad in ["..", ".", "a/b", ".x", "x.", "A", "", "a\nb", "-n", "Db"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(valid_name("nextcloud-data.v2") && valid_name("dbaas"));
        assert!(valid_name(&"a".repeat(253)) && !valid_name(&"a".repeat(254)));
        for ns in DEFAULT_EXCLUDED_NAMESPACES.split(',') {
            assert!(valid_name(ns), "{ns}");
        }
    }

    #[test]
    fn the_cache_round_trips_and_is_never_written_without_its_directory() {
        let dir = tempfile::tempdir().expect("tmp");
        let cache = dir.path().join("lv-pvc-mapping.json");
        assert!(matches!(load_mapping(&cache), Err(CacheError::Missing(_))));
        let raw = list().to_string();
        assert!(save_mapping(&cache, raw.as_bytes()).expect("save"));
        assert_eq!(std::fs::read(&cache).expect("raw"), raw.as_bytes());
        let back = load_mapping(&cache).expect("load");
        assert_eq!(back.pvs, pv_list(&list()).expect("list"));
        assert!(back.written.is_some());

        let elsewhere = dir.path().join("not-mounted/lv-pvc-mapping.json");
        assert!(!save_mapping(&elsewhere, raw.as_bytes()).expect("skipped"));
        assert!(!dir.path().join("not-mounted").exists());

        std::fs::write(&cache, b"{\"items\": 3}").expect("corrupt");
        assert!(matches!(load_mapping(&cache), Err(CacheError::Invalid(_))));
    }
}
