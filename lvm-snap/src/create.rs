//! `create`: one snapshot of every PVC LV, one timestamp for the run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::Result;
use backup_core::exit::{Exit, ExitCode};
use backup_core::metrics::Metrics;
use backup_core::{info, warn};
use chrono::Local;

use crate::kube::{self, Pv};
use crate::lvm::Lv;
use crate::names::{self, Kind};
use crate::{CreateArgs, Ctx, PoolStatus, gauge, gauge_with};

/// Where the namespace of each LV came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MappingSource {
    Kubectl = 0,
    Cache = 1,
    /// Neither: nothing is excluded.
    None = 2,
}

/// The PV mapping: from kubectl (refreshing the cache), else from the
/// cache, else none. Never fails: a PVC must not go unsnapshotted
/// because Kubernetes was down. The third value says kubectl is absent
/// (not installed): the run still snapshots, then ends with exit 5.
pub fn mapping(
    ctx: &Ctx,
    cache: &Path,
    write_cache: bool,
) -> (Vec<Pv>, MappingSource, Option<String>) {
    let mut absent = None;
    match ctx.kubectl.get_raw(&["pv"], None) {
        Ok((text, v)) => match kube::pv_list(&v) {
            Ok(list) => {
                if write_cache {
                    refresh_cache(cache, &text);
                }
                return (list, MappingSource::Kubectl, None);
            }
            Err(e) => warn!("kubectl get pv: {e:#}"),
        },
        Err(e) => {
            absent = backup_core::exit::absent_in(&e);
            warn!("cannot list PVs: {e:#}");
        }
    }
    let cached = backup_core::k8s::load_mapping(cache).map(|c| {
        let ours: Vec<Pv> = c.pvs.into_iter().filter(Pv::is_ours).collect();
        (ours, c.written)
    });
    match cached {
        Ok((list, written)) => {
            let when = written
                .map(|t| {
                    chrono::DateTime::<Local>::from(t)
                        .format("%Y-%m-%d %H:%M")
                        .to_string()
                })
                .unwrap_or_else(|| "an unknown time".into());
            warn!(
                "using the cached PV mapping {} (written {when}) to exclude namespaces",
                backup_core::log::p(cache)
            );
            (list, MappingSource::Cache, absent)
        }
        Err(e) => {
            warn!(
                "no PV mapping: kubectl failed and the cache {} is unusable ({e:#}); snapshotting EVERY PVC LV, excluded namespaces included",
                backup_core::log::p(cache)
            );
            (Vec::new(), MappingSource::None, absent)
        }
    }
}

fn refresh_cache(cache: &Path, text: &str) {
    match backup_core::k8s::save_mapping(cache, text.as_bytes()) {
        Ok(true) => {}
        Ok(false) => backup_core::debug!(
            "not caching the PV mapping: {} has no directory",
            backup_core::log::p(cache)
        ),
        Err(e) => warn!(
            "cannot write the PV mapping cache {}: {e}",
            backup_core::log::p(cache)
        ),
    }
}

pub fn create(ctx: &Ctx, a: &CreateArgs, m: &mut Metrics) -> Result<ExitCode> {
    let excluded: BTreeSet<String> = a
        .exclude_namespace
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    for ns in &excluded {
        if !names::k8s_name(ns) {
            return Err(Exit::usage(format!(
                "--exclude-namespace {:?}: expected a Kubernetes namespace name",
                backup_core::log::escape_str(ns)
            )));
        }
    }
    for (k, v) in [("created", 0.0), ("failed", 0.0)] {
        gauge(m, &format!("lvm_snapshot_{k}_total"), &help(k), v);
    }
    let _lock = if a.dry_run {
        None
    } else {
        Some(backup_core::lock::acquire(crate::TOOL)?)
    };
    let stamp = ctx.stamp();
    let lvs = ctx.report()?;
    let pool = PoolStatus::from_report(&lvs, &ctx.vg, &ctx.pool)?;
    pool.record(m);
    pool.check(&a.guard)?;

    let by_name: BTreeMap<&str, &Lv> = lvs.iter().map(|l| (l.name.as_str(), l)).collect();
    let mut origins = Vec::new();
    let mut bad_names = Vec::new();
    for l in lvs.iter().filter(|l| l.pool == ctx.pool && !l.is_pool()) {
        match names::classify(&l.name) {
            Kind::Origin => origins.push(l.name.clone()),
            Kind::Other if names::pvc_like(&l.name) && !l.name.contains('_') => {
                // Looks like a PVC but not like the scheme: say so loudly
                // instead of skipping it silently.
                bad_names.push(l.name.clone());
            }
            _ => {}
        }
    }
    for b in &bad_names {
        warn!(
            "LV {} looks like a PVC volume but does not follow vm-<id>-pvc-<hex uuid>: not snapshotted",
            backup_core::log::escape_str(b)
        );
    }
    if origins.is_empty() {
        return Err(Exit::refused(format!(
            "no PVC LVs (vm-<id>-pvc-<uuid>) found in thin pool {}/{}: refusing to report an empty run as success",
            ctx.vg, ctx.pool
        )));
    }

    let (pvs, source, kubectl_absent) = mapping(ctx, &a.mapping_cache, !a.dry_run);
    gauge(
        m,
        "lvm_snapshot_mapping_source",
        "Where namespaces came from: 0 kubectl, 1 cached mapping, 2 none (nothing excluded)",
        source as i32 as f64,
    );
    let ns_of: BTreeMap<&str, &Pv> = pvs.iter().map(|p| (p.lv(), p)).collect();

    let (mut created, mut skipped, mut excluded_n) = (0usize, 0usize, 0usize);
    let mut failed: Vec<String> = bad_names.clone();
    let mut wanted = Vec::new();
    for origin in &origins {
        if let Some(pv) = ns_of.get(origin.as_str())
            && excluded.contains(&pv.namespace)
        {
            info!(
                "excluded: {origin} ({}/{}, namespace excluded)",
                pv.namespace, pv.claim
            );
            excluded_n += 1;
            continue;
        }
        wanted.push(origin.clone());
        let name = names::snapshot_name(origin, &stamp);
        if let Some(existing) = by_name.get(name.as_str()) {
            if existing.origin == *origin {
                info!("{name} already exists (a run this minute took it): nothing to do");
                skipped += 1;
            } else {
                warn!(
                    "{name} exists but is not a snapshot of {origin} (its origin is {:?}): not touched",
                    existing.origin
                );
                failed.push(origin.clone());
            }
            continue;
        }
        if a.dry_run {
            match ctx.lvm.snapshot_cmd(origin, &name, Some(names::TAG)) {
                Ok(c) => backup_core::out::ignore_closed(backup_core::outln!(
                    "would run: {}",
                    c.display()
                ))?,
                Err(e) => {
                    warn!("{e:#}");
                    failed.push(origin.clone());
                }
            }
            continue;
        }
        match ctx.lvm.snapshot(origin, &name, Some(names::TAG)) {
            Ok(()) => {
                info!("created {name}");
                created += 1;
            }
            Err(e) => {
                // lvcreate is not installed: no use trying the other LVs.
                if let Some(absent) = backup_core::exit::absent_in(&e) {
                    return Err(Exit::refused(absent));
                }
                warn!("{e:#}");
                failed.push(origin.clone());
            }
        }
    }
    gauge(
        m,
        "lvm_snapshot_created_total",
        &help("created"),
        created as f64,
    );
    gauge(
        m,
        "lvm_snapshot_failed_total",
        &help("failed"),
        failed.len() as f64,
    );
    gauge(
        m,
        "lvm_snapshot_skipped",
        "PVC LVs already snapshotted in this minute (a rerun)",
        skipped as f64,
    );
    gauge(
        m,
        "lvm_snapshot_excluded",
        "PVC LVs skipped because their namespace is excluded",
        excluded_n as f64,
    );

    // Figures after the run: pool usage and each origin's newest snapshot.
    let after = ctx.report().unwrap_or_else(|e| {
        warn!("re-reading the LVs after the run: {e:#}");
        lvs.clone()
    });
    if let Ok(p) = PoolStatus::from_report(&after, &ctx.vg, &ctx.pool) {
        p.record(m);
    }
    record_newest(m, &after, &ctx.pool, &wanted);

    info!(
        "{created} created, {skipped} already present, {excluded_n} excluded, {} failed{}",
        failed.len(),
        if a.dry_run { " (dry run)" } else { "" }
    );
    let code = ExitCode::from_items(created + skipped, failed.len());
    // Snapshots were taken (fail-open, as when the API server is down),
    // but a host without kubectl is misconfigured: exit 5 says so.
    if let Some(absent) = kubectl_absent {
        let mut msg = format!(
            "{absent}: namespaces not known from kubectl ({} mapping used)",
            match source {
                MappingSource::Kubectl => "kubectl",
                MappingSource::Cache => "the cached",
                MappingSource::None => "no",
            }
        );
        if !failed.is_empty() {
            msg.push_str(&format!("; no snapshot for: {}", failed.join(", ")));
        }
        return Err(Exit::refused(msg));
    }
    match code {
        ExitCode::Ok => Ok(ExitCode::Ok),
        code => Err(Exit::err(
            code,
            format!("no snapshot for: {}", failed.join(", ")),
        )),
    }
}

fn help(k: &str) -> String {
    match k {
        "created" => "Snapshots created by this run".into(),
        _ => "PVC LVs this run could not snapshot".into(),
    }
}

/// `lvm_snapshot_newest_timestamp_seconds{origin}` for every origin this
/// run was meant to snapshot (0 when it has none at all).
fn record_newest(m: &mut Metrics, lvs: &[Lv], pool: &str, origins: &[String]) {
    let mut newest: BTreeMap<&str, i64> = origins.iter().map(|o| (o.as_str(), 0)).collect();
    for l in lvs.iter().filter(|l| l.pool == pool) {
        if let Kind::Snapshot { origin, stamp } = names::classify(&l.name)
            && let Some(t) = names::parse_stamp(&stamp, &Local)
            && let Some(n) = newest.get_mut(origin.as_str())
        {
            *n = (*n).max(t);
        }
    }
    for (o, t) in newest {
        gauge_with(
            m,
            "lvm_snapshot_newest_timestamp_seconds",
            "Time of the newest snapshot of each PVC LV (from its name), unix seconds; 0 when none",
            &[("origin", o)],
            t as f64,
        );
    }
}
