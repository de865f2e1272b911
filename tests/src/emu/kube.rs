//! Emulator of `kubectl` (stands for: the homelab cluster's Kubernetes API
//! server, as seen through `kubectl get ... -o json` and `kubectl scale`).
//!
//! Objects are rendered from the records in `k8s.json` on every call, in
//! the shapes the real API returns (only the fields a backup tool reads,
//! plus some it must learn to ignore). Time-dependent behaviour (pods
//! terminating, pods becoming Ready) is evaluated lazily from timestamps.

use std::collections::BTreeMap;

use anyhow::Result;
use serde_json::{Value, json};

use super::state::{
    K8S_FILE, K8sState, PodRec, PvRec, StateDir, WorkloadKind, WorkloadRec, id_chars, now_ms,
};
use super::util::{Out, opt_value};

pub const CONNECTION_REFUSED: &str = "The connection to the server 127.0.0.1:6443 was refused - did you specify the right host or port?";

/// A resource type: its canonical plural, the names kubectl accepts, the
/// name used in NotFound errors and `scale` output, and its scope.
struct Res {
    plural: &'static str,
    aliases: &'static [&'static str],
    qualified: &'static str,
    namespaced: bool,
}

const RESOURCES: &[Res] = &[
    Res {
        plural: "pods",
        aliases: &["po", "pod", "pods"],
        qualified: "pods",
        namespaced: true,
    },
    Res {
        plural: "persistentvolumes",
        aliases: &["pv", "persistentvolume", "persistentvolumes"],
        qualified: "persistentvolumes",
        namespaced: false,
    },
    Res {
        plural: "persistentvolumeclaims",
        aliases: &["pvc", "persistentvolumeclaim", "persistentvolumeclaims"],
        qualified: "persistentvolumeclaims",
        namespaced: true,
    },
    Res {
        plural: "deployments",
        aliases: &[
            "deploy",
            "deployment",
            "deployments",
            "deployment.apps",
            "deployments.apps",
        ],
        qualified: "deployments.apps",
        namespaced: true,
    },
    Res {
        plural: "replicasets",
        aliases: &[
            "rs",
            "replicaset",
            "replicasets",
            "replicaset.apps",
            "replicasets.apps",
        ],
        qualified: "replicasets.apps",
        namespaced: true,
    },
    Res {
        plural: "statefulsets",
        aliases: &[
            "sts",
            "statefulset",
            "statefulsets",
            "statefulset.apps",
            "statefulsets.apps",
        ],
        qualified: "statefulsets.apps",
        namespaced: true,
    },
    Res {
        plural: "volumeattachments",
        aliases: &[
            "volumeattachment",
            "volumeattachments",
            "volumeattachment.storage.k8s.io",
            "volumeattachments.storage.k8s.io",
        ],
        qualified: "volumeattachments.storage.k8s.io",
        namespaced: false,
    },
];

fn resource(name: &str) -> Option<&'static Res> {
    let name = name.to_ascii_lowercase();
    RESOURCES
        .iter()
        .find(|r| r.aliases.contains(&name.as_str()))
}

/// The resource plural for an object's `kind` (for raw objects).
pub fn plural_of_kind(kind: &str) -> Option<&'static str> {
    resource(kind).map(|r| r.plural)
}

#[derive(Default)]
struct Opts {
    namespace: Option<String>,
    all_namespaces: bool,
    output: Option<String>,
    selector: Option<String>,
    replicas: Option<String>,
    ignore_not_found: bool,
    positionals: Vec<String>,
}

fn parse(args: &[String]) -> Result<Opts, Out> {
    let mut o = Opts::default();
    let mut i = 0;
    let mut dd = false;
    let bad = |e: anyhow::Error| Out::fail(1, &format!("error: {e}"));
    while i < args.len() {
        let a = &args[i];
        if dd || !a.starts_with('-') || a == "-" {
            o.positionals.push(a.clone());
        } else if a == "--" {
            dd = true;
        } else if a == "-A" || a == "--all-namespaces" || a == "--all-namespaces=true" {
            o.all_namespaces = true;
        } else if a == "--ignore-not-found" || a == "--ignore-not-found=true" {
            o.ignore_not_found = true;
        } else if let Some(v) = opt_value(
            args,
            &mut i,
            &[
                "--kubeconfig",
                "--request-timeout",
                "--context",
                "-v",
                "--v",
            ],
        ) {
            v.map_err(bad)?;
        } else if let Some(v) = opt_value(args, &mut i, &["-n", "--namespace"]) {
            o.namespace = Some(v.map_err(bad)?);
        } else if let Some(v) = opt_value(args, &mut i, &["-o", "--output"]) {
            o.output = Some(v.map_err(bad)?);
        } else if let Some(v) = opt_value(args, &mut i, &["-l", "--selector"]) {
            o.selector = Some(v.map_err(bad)?);
        } else if let Some(v) = opt_value(args, &mut i, &["--replicas"]) {
            o.replicas = Some(v.map_err(bad)?);
        } else if a.starts_with("--") {
            let flag = a.split('=').next().unwrap_or(a);
            return Err(Out::fail(
                1,
                &format!("error: unknown flag: {flag}\nSee 'kubectl --help' for usage."),
            ));
        } else {
            let c = a.chars().nth(1).unwrap_or('-');
            return Err(Out::fail(
                1,
                &format!(
                    "error: unknown shorthand flag: '{c}' in {a}\nSee 'kubectl --help' for usage."
                ),
            ));
        }
        i += 1;
    }
    Ok(o)
}

pub fn run(dir: &StateDir, args: &[String]) -> Result<Out> {
    let mut st: K8sState = dir.load(K8S_FILE)?;
    if st.down {
        return Ok(Out::fail(1, CONNECTION_REFUSED));
    }
    let now = now_ms();
    st.reconcile(now);
    let opts = match parse(args) {
        Ok(o) => o,
        Err(out) => return Ok(out),
    };
    let out = match opts.positionals.first().map(String::as_str) {
        Some("get") => get(&st, &opts, now),
        Some("scale") => scale(&mut st, &opts, now),
        Some(v) => Out::fail(
            1,
            &format!(
                "error: unknown command \"{v}\" for \"kubectl\" (homelab-emu emulates only get and scale)"
            ),
        ),
        None => Out::fail(1, "homelab-emu: kubectl: no command given"),
    };
    dir.save(K8S_FILE, &st)?;
    Ok(out)
}

fn pretty(v: &Value) -> String {
    use serde::Serialize;
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    if v.serialize(&mut ser).is_err() {
        return String::new();
    }
    let mut s = String::from_utf8_lossy(&buf).into_owned();
    s.push('\n');
    s
}

fn not_found(res: &Res, name: &str) -> Out {
    Out::fail(
        1,
        &format!(
            "Error from server (NotFound): {} \"{name}\" not found",
            res.qualified
        ),
    )
}

fn labels_match(obj: &Value, selector: &str) -> bool {
    let labels = &obj["metadata"]["labels"];
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels[k.trim()].as_str() != Some(v.trim())
        } else if let Some((k, v)) = term.split_once('=') {
            let v = v.strip_prefix('=').unwrap_or(v);
            labels[k.trim()].as_str() == Some(v.trim())
        } else {
            !labels[term.trim()].is_null()
        }
    })
}

fn get(st: &K8sState, o: &Opts, now: u64) -> Out {
    if o.output.as_deref() != Some("json") {
        return Out::fail(2, "homelab-emu: kubectl get: only -o json is emulated");
    }
    let Some(what) = o.positionals.get(1) else {
        return Out::fail(1, "error: Required resource not specified.");
    };
    let (kind, mut name) = match what.split_once('/') {
        Some((k, n)) => (k.to_string(), Some(n.to_string())),
        None => (what.clone(), None),
    };
    if let Some(n) = o.positionals.get(2) {
        if name.is_some() || o.positionals.len() > 3 {
            return Out::fail(
                2,
                "homelab-emu: kubectl get: only one object name is emulated",
            );
        }
        name = Some(n.clone());
    }
    let Some(res) = resource(&kind) else {
        return Out::fail(
            1,
            &format!("error: the server doesn't have a resource type \"{kind}\""),
        );
    };
    let ns = o.namespace.clone().unwrap_or_else(|| "default".to_string());
    let all = render(st, now);
    let items: Vec<&Value> = all
        .get(res.plural)
        .map(|v| v.iter().collect())
        .unwrap_or_default();
    let in_scope = |obj: &&Value| -> bool {
        !res.namespaced
            || o.all_namespaces && name.is_none()
            || obj["metadata"]["namespace"].as_str() == Some(ns.as_str())
    };
    let mut out = Out::ok();
    if let Some(name) = &name {
        match items
            .into_iter()
            .filter(in_scope)
            .find(|obj| obj["metadata"]["name"].as_str() == Some(name.as_str()))
        {
            Some(obj) => out.stdout = pretty(obj),
            None if o.ignore_not_found => {}
            None => return not_found(res, name),
        }
        return out;
    }
    let mut list: Vec<Value> = items
        .into_iter()
        .filter(in_scope)
        .filter(|obj| o.selector.as_deref().is_none_or(|s| labels_match(obj, s)))
        .cloned()
        .collect();
    list.sort_by_key(|obj| {
        (
            obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            obj["metadata"]["name"].as_str().unwrap_or("").to_string(),
        )
    });
    out.stdout = pretty(&json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": list,
        "metadata": {"resourceVersion": ""},
    }));
    out
}

fn scale(st: &mut K8sState, o: &Opts, now: u64) -> Out {
    let Some(what) = o.positionals.get(1) else {
        return Out::fail(1, "error: Required resource not specified.");
    };
    let (kind, name) = match what.split_once('/') {
        Some((k, n)) => (k.to_string(), n.to_string()),
        None => match o.positionals.get(2) {
            Some(n) => (what.clone(), n.clone()),
            None => {
                return Out::fail(
                    1,
                    "error: resource(s) were provided, but no name was specified",
                );
            }
        },
    };
    let Some(res) = resource(&kind) else {
        return Out::fail(
            1,
            &format!("error: the server doesn't have a resource type \"{kind}\""),
        );
    };
    let wkind = match res.plural {
        "deployments" => WorkloadKind::Deployment,
        "statefulsets" => WorkloadKind::StatefulSet,
        _ => {
            return Out::fail(
                2,
                &format!(
                    "homelab-emu: kubectl scale: {} is not emulated",
                    res.qualified
                ),
            );
        }
    };
    let Some(replicas) = &o.replicas else {
        return Out::fail(1, "error: required flag(s) \"replicas\" not set");
    };
    let Ok(n) = replicas.parse::<u32>() else {
        return Out::fail(
            1,
            &format!(
                "error: invalid argument \"{replicas}\" for \"--replicas\" flag: strconv.ParseInt: parsing \"{replicas}\": invalid syntax"
            ),
        );
    };
    let ns = o.namespace.clone().unwrap_or_else(|| "default".to_string());
    let delay = st.delay_ms;
    let mut seq = st.seq;
    let Some(w) = st
        .workloads
        .iter_mut()
        .find(|w| w.kind == wkind && w.namespace == ns && w.name == name)
    else {
        return not_found(res, &name);
    };
    scale_workload(w, n, now, delay, &mut seq);
    st.seq = seq;
    let mut out = Out::ok();
    let singular = match wkind {
        WorkloadKind::Deployment => "deployment.apps",
        WorkloadKind::StatefulSet => "statefulset.apps",
    };
    out.out(&format!("{singular}/{name} scaled"));
    out
}

/// Sets the replica count: surplus pods terminate (gone after the delay),
/// missing pods are created (Ready after the delay).
pub fn scale_workload(w: &mut WorkloadRec, n: u32, now: u64, delay: u64, seq: &mut u64) {
    w.replicas = n;
    w.generation += 1;
    match w.kind {
        WorkloadKind::Deployment => {
            let live: Vec<usize> = (0..w.pods.len())
                .filter(|&i| w.pods[i].delete_at_ms.is_none())
                .collect();
            if live.len() > n as usize {
                for &i in &live[n as usize..] {
                    w.pods[i].delete_at_ms = Some(now + delay);
                }
            }
            for _ in live.len()..n as usize {
                *seq += 1;
                let name = format!(
                    "{}-{}-{}",
                    w.name,
                    template_hash(&w.namespace, &w.name),
                    id_chars(&format!("{}/{}/{seq}", w.namespace, w.name), 5, SAFE)
                );
                w.pods.push(PodRec {
                    name,
                    ordinal: None,
                    created_ms: now,
                    ready_at_ms: now + delay,
                    delete_at_ms: None,
                });
            }
        }
        WorkloadKind::StatefulSet => {
            for p in &mut w.pods {
                if p.ordinal.unwrap_or(0) >= n && p.delete_at_ms.is_none() {
                    p.delete_at_ms = Some(now + delay);
                }
            }
            for ord in 0..n {
                let live = w
                    .pods
                    .iter()
                    .any(|p| p.ordinal == Some(ord) && p.delete_at_ms.is_none());
                if live {
                    continue;
                }
                w.pods.retain(|p| p.ordinal != Some(ord));
                w.pods.push(PodRec {
                    name: format!("{}-{ord}", w.name),
                    ordinal: Some(ord),
                    created_ms: now,
                    ready_at_ms: now + delay,
                    delete_at_ms: None,
                });
            }
        }
    }
}

/// A new workload whose `replicas` pods are already Ready.
pub fn new_workload(
    kind: WorkloadKind,
    namespace: &str,
    name: &str,
    replicas: u32,
    claims: Vec<String>,
    vcts: Vec<String>,
    seq: &mut u64,
) -> WorkloadRec {
    let now = now_ms();
    let mut w = WorkloadRec {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
        replicas: 0,
        claims,
        vcts,
        generation: 0,
        created_ms: now.saturating_sub(86_400_000),
        pods: Vec::new(),
    };
    scale_workload(&mut w, replicas, now.saturating_sub(3_600_000), 0, seq);
    w.generation = 1;
    w
}

const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn template_hash(ns: &str, name: &str) -> String {
    id_chars(&format!("{ns}/{name}/template"), 10, SAFE)
}

pub fn uid(seed: &str) -> String {
    let h = id_chars(seed, 32, b"0123456789abcdef");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn ts(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

fn kind_str(k: WorkloadKind) -> &'static str {
    match k {
        WorkloadKind::Deployment => "Deployment",
        WorkloadKind::StatefulSet => "StatefulSet",
    }
}

/// Claims pod `p` of `w` mounts.
fn pod_claims(w: &WorkloadRec, p: &PodRec) -> Vec<String> {
    let mut c = w.claims.clone();
    if let Some(ord) = p.ordinal {
        for v in &w.vcts {
            c.push(format!("{v}-{}-{ord}", w.name));
        }
    }
    c
}

fn render_workload(
    w: &WorkloadRec,
    now: u64,
    node: &str,
    out: &mut BTreeMap<&'static str, Vec<Value>>,
) {
    let kind = kind_str(w.kind);
    let w_uid = uid(&format!("{kind}/{}/{}", w.namespace, w.name));
    let labels = json!({"app": w.name, "app.kubernetes.io/name": w.name});
    let live: Vec<&PodRec> = w.pods.iter().filter(|p| p.delete_at_ms.is_none()).collect();
    let ready = live.iter().filter(|p| now >= p.ready_at_ms).count();
    let mut template_volumes: Vec<Value> = w
        .claims
        .iter()
        .enumerate()
        .map(
            |(i, c)| json!({"name": format!("vol-{i}"), "persistentVolumeClaim": {"claimName": c}}),
        )
        .collect();
    template_volumes.push(json!({"name": "config", "configMap": {"name": format!("{}-config", w.name), "defaultMode": 420}}));
    let template = json!({
        "metadata": {"labels": labels},
        "spec": {
            "containers": [{"name": w.name, "image": "docker.io/library/busybox:1.36",
                "volumeMounts": w.claims.iter().enumerate().map(|(i, _)| json!({"name": format!("vol-{i}"), "mountPath": format!("/data{i}")})).collect::<Vec<_>>()}],
            "volumes": template_volumes,
        }
    });
    let mut status = serde_json::Map::new();
    status.insert("observedGeneration".into(), json!(w.generation));
    if !live.is_empty() {
        status.insert("replicas".into(), json!(live.len()));
        status.insert("updatedReplicas".into(), json!(live.len()));
    }
    if ready > 0 {
        status.insert("readyReplicas".into(), json!(ready));
        status.insert("availableReplicas".into(), json!(ready));
    }
    let metadata = json!({
        "name": w.name, "namespace": w.namespace, "uid": w_uid, "generation": w.generation,
        "creationTimestamp": ts(w.created_ms), "labels": {"app": w.name},
        "resourceVersion": (1000 + w.generation).to_string(),
    });
    let (owner_kind, owner_name, owner_uid) = match w.kind {
        WorkloadKind::Deployment => {
            let rs_name = format!("{}-{}", w.name, template_hash(&w.namespace, &w.name));
            let rs_uid = uid(&format!("ReplicaSet/{}/{rs_name}", w.namespace));
            let mut meta = metadata.clone();
            meta["annotations"] = json!({"deployment.kubernetes.io/revision": "1"});
            out.entry("deployments").or_default().push(json!({
                "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
                "spec": {"replicas": w.replicas, "selector": {"matchLabels": {"app": w.name}},
                         "strategy": {"type": "Recreate"}, "template": template},
                "status": Value::Object(status.clone()),
            }));
            let mut rs_labels = labels.clone();
            rs_labels["pod-template-hash"] = json!(template_hash(&w.namespace, &w.name));
            out.entry("replicasets").or_default().push(json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": rs_name, "namespace": w.namespace, "uid": rs_uid, "labels": rs_labels,
                    "creationTimestamp": ts(w.created_ms),
                    "annotations": {"deployment.kubernetes.io/desired-replicas": w.replicas.to_string(),
                                    "deployment.kubernetes.io/revision": "1"},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": w.name,
                        "uid": w_uid, "controller": true, "blockOwnerDeletion": true}]},
                "spec": {"replicas": w.replicas, "selector": {"matchLabels": {"app": w.name}}, "template": template},
                "status": Value::Object(status),
            }));
            ("ReplicaSet", rs_name, rs_uid)
        }
        WorkloadKind::StatefulSet => {
            let vcts: Vec<Value> = w
                .vcts
                .iter()
                .map(|v| json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": v},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                             "volumeMode": "Filesystem"}}))
                .collect();
            let mut status = status;
            status.insert("currentReplicas".into(), json!(live.len()));
            out.entry("statefulsets").or_default().push(json!({
                "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": metadata,
                "spec": {"replicas": w.replicas, "serviceName": w.name, "podManagementPolicy": "OrderedReady",
                         "selector": {"matchLabels": {"app": w.name}}, "template": template,
                         "volumeClaimTemplates": vcts},
                "status": Value::Object(status),
            }));
            ("StatefulSet", w.name.clone(), w_uid)
        }
    };
    for p in &w.pods {
        let is_ready = now >= p.ready_at_ms && p.delete_at_ms.is_none();
        let started = now >= p.ready_at_ms;
        let cond = |t: &str, s: bool| {
            json!({"type": t, "status": if s {"True"} else {"False"}, "lastProbeTime": null,
            "lastTransitionTime": ts(p.created_ms)})
        };
        let mut volumes: Vec<Value> = pod_claims(w, p)
            .iter()
            .enumerate()
            .map(|(i, c)| json!({"name": format!("vol-{i}"), "persistentVolumeClaim": {"claimName": c}}))
            .collect();
        volumes.push(json!({"name": "config", "configMap": {"name": format!("{}-config", w.name), "defaultMode": 420}}));
        volumes.push(json!({"name": format!("kube-api-access-{}", id_chars(&p.name, 5, SAFE)),
            "projected": {"defaultMode": 420, "sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}));
        let mut pod_labels = labels.clone();
        match p.ordinal {
            Some(_) => pod_labels["statefulset.kubernetes.io/pod-name"] = json!(p.name),
            None => pod_labels["pod-template-hash"] = json!(template_hash(&w.namespace, &w.name)),
        }
        let mut meta = json!({
            "name": p.name, "namespace": w.namespace, "uid": uid(&format!("Pod/{}/{}/{}", w.namespace, p.name, p.created_ms)),
            "labels": pod_labels, "creationTimestamp": ts(p.created_ms),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": owner_kind, "name": owner_name,
                "uid": owner_uid, "controller": true, "blockOwnerDeletion": true}],
        });
        if let Some(d) = p.delete_at_ms {
            meta["deletionTimestamp"] = json!(ts(d));
            meta["deletionGracePeriodSeconds"] = json!(30);
        }
        out.entry("pods").or_default().push(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"nodeName": node, "restartPolicy": "Always",
                     "containers": [{"name": w.name, "image": "docker.io/library/busybox:1.36"}],
                     "volumes": volumes},
            "status": {
                "phase": if started {"Running"} else {"Pending"},
                "conditions": [cond("Initialized", true), cond("Ready", is_ready), cond("ContainersReady", is_ready), cond("PodScheduled", true)],
                "containerStatuses": [{"name": w.name, "ready": is_ready, "started": started, "restartCount": 0,
                                       "image": "docker.io/library/busybox:1.36"}],
                "startTime": ts(p.created_ms),
            },
        }));
    }
}

fn render_pv(pv: &PvRec, out: &mut BTreeMap<&'static str, Vec<Value>>) {
    let pvc_uid = uid(&format!("PVC/{}/{}", pv.namespace, pv.claim));
    let mut spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "capacity": {"storage": pv.capacity},
        "csi": {"driver": pv.driver, "fsType": "ext4", "volumeHandle": pv.volume_handle,
                "volumeAttributes": {"storage": "local-lvm"}},
        "persistentVolumeReclaimPolicy": "Delete",
        "storageClassName": pv.storage_class,
        "volumeMode": "Filesystem",
    });
    if !pv.claim.is_empty() {
        spec["claimRef"] = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": pv.claim,
            "namespace": pv.namespace, "uid": pvc_uid, "resourceVersion": "1000"});
    }
    out.entry("persistentvolumes").or_default().push(json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": pv.name, "uid": uid(&format!("PV/{}", pv.name)),
            "annotations": {"pv.kubernetes.io/provisioned-by": pv.driver},
            "finalizers": ["kubernetes.io/pv-protection"], "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": spec,
        "status": {"phase": pv.phase},
    }));
    if !pv.claim.is_empty() && pv.phase == "Bound" {
        out.entry("persistentvolumeclaims").or_default().push(json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": pv.claim, "namespace": pv.namespace, "uid": pvc_uid,
                "finalizers": ["kubernetes.io/pvc-protection"], "creationTimestamp": "2026-01-01T00:00:00Z",
                "annotations": {"pv.kubernetes.io/bind-completed": "yes",
                                "volume.kubernetes.io/storage-provisioner": pv.driver}},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": pv.capacity}},
                     "storageClassName": pv.storage_class, "volumeMode": "Filesystem", "volumeName": pv.name},
            "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": pv.capacity}},
        }));
    }
}

/// Every object of the emulated cluster, by resource plural.
pub fn render(st: &K8sState, now: u64) -> BTreeMap<&'static str, Vec<Value>> {
    let mut out: BTreeMap<&'static str, Vec<Value>> = BTreeMap::new();
    for pv in &st.pvs {
        render_pv(pv, &mut out);
    }
    for w in &st.workloads {
        render_workload(w, now, &st.node, &mut out);
    }
    // A volume stays attached while any pod (terminating included) mounts its claim.
    for pv in &st.pvs {
        if pv.claim.is_empty() {
            continue;
        }
        let mounted = st.workloads.iter().any(|w| {
            w.namespace == pv.namespace
                && w.pods.iter().any(|p| pod_claims(w, p).contains(&pv.claim))
        });
        if mounted {
            let name = format!(
                "csi-{}",
                id_chars(&format!("va/{}", pv.name), 64, b"0123456789abcdef")
            );
            out.entry("volumeattachments").or_default().push(json!({
                "apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
                "metadata": {"name": name, "uid": uid(&format!("VA/{}", pv.name)), "creationTimestamp": "2026-01-01T00:00:00Z",
                    "annotations": {"csi.alpha.kubernetes.io/node-id": st.node}},
                "spec": {"attacher": pv.driver, "nodeName": st.node, "source": {"persistentVolumeName": pv.name}},
                "status": {"attached": true},
            }));
        }
    }
    for (plural, objs) in &st.extra {
        if let Some(res) = RESOURCES.iter().find(|r| r.plural == plural) {
            out.entry(res.plural)
                .or_default()
                .extend(objs.iter().cloned());
        }
    }
    out
}
