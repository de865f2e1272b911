//! Kubernetes through `kubectl ... -o json`: which PV (namespace, claim)
//! an LV backs (read by `backup_core::k8s`, shared with pvc-copy), which
//! workload mounts a claim, scaling and waiting.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use backup_core::cmd::Cmd;
use serde_json::Value;

use crate::names;

pub use backup_core::k8s::{CSI_DRIVER, Pv};

/// The PVs of our CSI driver (the only ones whose handles name PVC LVs
/// here) from a parsed `kubectl get pv -o json` list.
pub fn pv_list(v: &Value) -> Result<Vec<Pv>> {
    Ok(backup_core::k8s::pv_list(v)
        .map_err(anyhow::Error::msg)?
        .into_iter()
        .filter(Pv::is_ours)
        .collect())
}

#[derive(Debug, Clone)]
pub struct Kubectl {
    pub prog: PathBuf,
    pub timeout: Duration,
}

impl Kubectl {
    pub fn new(prog: &Path) -> Self {
        Kubectl {
            prog: prog.to_path_buf(),
            timeout: Duration::from_secs(60),
        }
    }

    fn cmd(&self) -> Cmd {
        Cmd::new(&self.prog)
            .timeout(self.timeout)
            .arg("--request-timeout=30s")
    }

    /// `kubectl get <what> [-n ns] -o json`, raw text and parsed.
    pub fn get_raw(&self, what: &[&str], ns: Option<&str>) -> Result<(String, Value)> {
        let mut c = self.cmd().arg("get").args(what);
        if let Some(ns) = ns {
            check_k8s(ns)?;
            c = c.args(["-n", ns]);
        }
        let out = c
            .args(["-o", "json"])
            .run()
            .with_context(|| format!("kubectl get {}", what.join(" ")))?;
        let text = out.stdout_str();
        let v = serde_json::from_str(&text)
            .with_context(|| format!("kubectl get {}: output is not JSON", what.join(" ")))?;
        Ok((text, v))
    }

    pub fn get(&self, what: &[&str], ns: Option<&str>) -> Result<Value> {
        Ok(self.get_raw(what, ns)?.1)
    }

    pub fn scale(&self, w: &Workload, replicas: u32) -> Result<()> {
        self.cmd()
            .args(["scale", &format!("{}/{}", w.kind.resource(), w.name)])
            .args(["-n", &w.namespace])
            .arg(format!("--replicas={replicas}"))
            .run()
            .with_context(|| format!("scaling {} to {replicas}", w.display()))?;
        Ok(())
    }

    /// Pods in `ns` whose volumes include `claim`.
    pub fn pods_mounting(&self, ns: &str, claim: &str) -> Result<Vec<Value>> {
        let v = self.get(&["pods"], Some(ns))?;
        Ok(v["items"]
            .as_array()
            .map(|a| a.iter().filter(|p| mounts(p, claim)).cloned().collect())
            .unwrap_or_default())
    }

    /// VolumeAttachments of PV `pv` (the disk still hot-plugged into a node).
    pub fn attachments(&self, pv: &str) -> Result<Vec<String>> {
        let v = self.get(&["volumeattachments"], None)?;
        Ok(v["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|va| va["spec"]["source"]["persistentVolumeName"].as_str() == Some(pv))
                    .map(|va| va["metadata"]["name"].as_str().unwrap_or("?").to_string())
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The workload whose pods mount `claim`: through the pods' owners
    /// (ReplicaSet -> Deployment, StatefulSet), else through the templates
    /// of the namespace's Deployments and StatefulSets (a workload already
    /// at zero replicas has no pods).
    pub fn find_workload(&self, ns: &str, claim: &str) -> Result<Option<Workload>> {
        let pods = self.pods_mounting(ns, claim)?;
        let mut found: Vec<(WorkloadKind, String)> = Vec::new();
        for p in &pods {
            let pod = p["metadata"]["name"].as_str().unwrap_or("?");
            let owner = controller(p).with_context(|| {
                format!(
                    "pod {ns}/{pod} mounts {claim} but has no controller: scale it down by hand"
                )
            })?;
            let (kind, name) = match owner.0.as_str() {
                "StatefulSet" => (WorkloadKind::StatefulSet, owner.1),
                "ReplicaSet" => {
                    let rs = self.get(&["replicaset", &checked(&owner.1)?], Some(ns))?;
                    match controller(&rs) {
                        Some((k, n)) if k == "Deployment" => (WorkloadKind::Deployment, n),
                        _ => bail!(
                            "pod {ns}/{pod} mounts {claim} through ReplicaSet {} that no Deployment owns",
                            owner.1
                        ),
                    }
                }
                other => bail!(
                    "pod {ns}/{pod} mounts {claim} and is owned by a {other}: only Deployments and StatefulSets are handled"
                ),
            };
            if !found.contains(&(kind, name.clone())) {
                found.push((kind, name));
            }
        }
        if found.is_empty() {
            found = self.template_owners(ns, claim)?;
        }
        match found.as_slice() {
            [] => Ok(None),
            [(kind, name)] => {
                let name = checked(name)?;
                let obj = self.get(&[kind.resource(), &name], Some(ns))?;
                let replicas = obj["spec"]["replicas"].as_u64().unwrap_or(1);
                Ok(Some(Workload {
                    kind: *kind,
                    namespace: ns.to_string(),
                    name,
                    replicas: u32::try_from(replicas).unwrap_or(u32::MAX),
                }))
            }
            many => bail!(
                "claim {ns}/{claim} is mounted by more than one workload ({}): scale them down by hand",
                many.iter()
                    .map(|(k, n)| format!("{}/{n}", k.resource()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    fn template_owners(&self, ns: &str, claim: &str) -> Result<Vec<(WorkloadKind, String)>> {
        let mut found = Vec::new();
        for kind in [WorkloadKind::Deployment, WorkloadKind::StatefulSet] {
            let v = self.get(&[kind.plural()], Some(ns))?;
            for w in v["items"].as_array().into_iter().flatten() {
                let name = w["metadata"]["name"].as_str().unwrap_or_default();
                let in_template = w["spec"]["template"]["spec"]["volumes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|vol| vol["persistentVolumeClaim"]["claimName"].as_str() == Some(claim));
                // StatefulSet claims are <template>-<set>-<ordinal>.
                let from_vct = w["spec"]["volumeClaimTemplates"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t["metadata"]["name"].as_str())
                    .any(|t| {
                        claim
                            .strip_prefix(&format!("{t}-{name}-"))
                            .is_some_and(|ord| {
                                !ord.is_empty() && ord.bytes().all(|b| b.is_ascii_digit())
                            })
                    });
                if in_template || (kind == WorkloadKind::StatefulSet && from_vct) {
                    found.push((kind, name.to_string()));
                }
            }
        }
        Ok(found)
    }

    /// Ready replicas of the workload (and whether the controller has seen
    /// its latest spec).
    pub fn ready(&self, w: &Workload) -> Result<(u32, bool)> {
        let v = self.get(&[w.kind.resource(), &w.name], Some(&w.namespace))?;
        let ready = v["status"]["readyReplicas"].as_u64().unwrap_or(0);
        let observed = v["status"]["observedGeneration"].as_u64().unwrap_or(0)
            >= v["metadata"]["generation"].as_u64().unwrap_or(0);
        Ok((u32::try_from(ready).unwrap_or(u32::MAX), observed))
    }
}

fn check_k8s(name: &str) -> Result<()> {
    if !names::k8s_name(name) {
        bail!(
            "refusing Kubernetes name {:?}: not a valid object name",
            backup_core::log::escape_str(name)
        );
    }
    Ok(())
}

fn checked(name: &str) -> Result<String> {
    check_k8s(name)?;
    Ok(name.to_string())
}

fn mounts(pod: &Value, claim: &str) -> bool {
    pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|v| v["persistentVolumeClaim"]["claimName"].as_str() == Some(claim))
}

/// The controlling owner (kind, name) of an object.
fn controller(obj: &Value) -> Option<(String, String)> {
    let refs = obj["metadata"]["ownerReferences"].as_array()?;
    let r = refs
        .iter()
        .find(|r| r["controller"].as_bool() == Some(true))
        .or_else(|| refs.first())?;
    Some((
        r["kind"].as_str()?.to_string(),
        r["name"].as_str()?.to_string(),
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
}

impl WorkloadKind {
    pub fn resource(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "deployment",
            WorkloadKind::StatefulSet => "statefulset",
        }
    }
    fn plural(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "deployments",
            WorkloadKind::StatefulSet => "statefulsets",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub namespace: String,
    pub name: String,
    pub replicas: u32,
}

impl Workload {
    pub fn display(&self) -> String {
        format!(
            "{}/{} -n {}",
            self.kind.resource(),
            self.name,
            self.namespace
        )
    }
}

/// Poll `check` until it returns `Ok(true)` or `timeout` passes.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if check()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {}s waiting for {what}", timeout.as_secs());
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_driver_counts() {
        let v = serde_json::json!({"items": [
            {"metadata": {"name": "pv-a"}, "spec": {"csi": {"driver": CSI_DRIVER,
                "volumeHandle": "r/z/local-lvm/vm-1-pvc-aa"},
                "claimRef": {"namespace": "dbaas", "name": "data-mysql-0"}}},
            {"metadata": {"name": "pv-b"}, "spec": {"csi": {"driver": "nfs.csi.k8s.io",
                "volumeHandle": "x/vm-1-pvc-bb"}}},
            {"metadata": {"name": "pv-c"}, "spec": {"nfs": {}}}
        ]});
        let pvs = pv_list(&v).expect("list");
        let got: Vec<(&str, &str, &str, &str)> = pvs
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.lv(),
                    p.namespace.as_str(),
                    p.claim.as_str(),
                )
            })
            .collect();
        assert_eq!(got, [("pv-a", "vm-1-pvc-aa", "dbaas", "data-mysql-0")]);
        assert!(pv_list(&serde_json::json!({"kind": "Status"})).is_err());
    }
}
