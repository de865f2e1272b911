//! Faults injected for real against the sshd NAS: a link cut in a network
//! namespace pair, SIGKILL at random instants, appenders racing the
//! consumer with random failures, and a NAS filesystem that fills up.

mod common;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backup_core::metrics::Metrics;
use backup_tests::harness::Run;
use backup_tests::nas::{Nas, NasOptions, NetPair};
use common::World;
use rand::Rng;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn recent_full(w: &World) {
    for s in [1, 2] {
        World::put(
            &w.root,
            format!(".offsite-sync/last-full-step{s}").as_bytes(),
            format!("{}\n", now()).as_bytes(),
        );
    }
}

fn kill9(child: &mut std::process::Child) {
    signal(child, libc::SIGKILL);
}

/// Send a signal and reap; `true` when the child died of it (it was still
/// running), with no exit code of its own.
fn signal(child: &mut std::process::Child, sig: i32) -> bool {
    use std::os::unix::process::ExitStatusExt;
    // SAFETY: signalling our own child by pid.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
    child
        .wait()
        .map(|st| st.signal() == Some(sig) && st.code().is_none())
        .unwrap_or(false)
}

#[test]
fn link_cut_mid_transfer_fails_keeps_every_entry_and_the_next_run_completes() {
    let mut w = World::new();
    let generous = (w.keepalive, w.io_timeout);
    let pair = NetPair::new();
    w.nas = Some(Nas::start_with(
        &w.sb.path().join("sshd"),
        NasOptions {
            net: Some(&pair),
            mount: None,
        },
    ));
    Run::of(&mut pair.client_cmd(w.cmd("init", &[]))).succeeds();
    recent_full(&w);
    let mut names = Vec::new();
    for i in 0..6 {
        let n = format!("media/file{i}");
        World::put(&w.root, n.as_bytes(), &vec![i as u8; 256 * 1024]);
        names.push(n);
    }
    w.leg1().append(&names).expect("append");
    // The run that is cut detects it within seconds (keepalive x3, rsync
    // idle timeout); only that run: on a starved machine such short
    // timeouts can also end a healthy connection (the init, the run that
    // must complete), which is not what this test is about.
    w.keepalive = "2s";
    w.io_timeout = "10s";
    // 1.5 MiB at 100 KiB/s: the cut, made as soon as the transfer shows,
    // has about 15 s to land before the last file completes, even when
    // this thread is starved.
    let mut child = pair
        .client_cmd(w.cmd("step1", &["--bwlimit", "100"]))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    (w.keepalive, w.io_timeout) = generous;
    // Cut once the transfer has visibly started on the NAS.
    let start = Instant::now();
    while World::files(&w.pve()).is_empty() {
        if child.try_wait().expect("try_wait").is_some() {
            let out = child.wait_with_output().expect("wait");
            panic!(
                "the run ended ({}) before its transfer showed on the NAS: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "transfer never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    pair.cut();
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let complete = names.iter().filter(|n| w.pve().join(n).is_file()).count();
    assert!(
        complete < names.len(),
        "the cut came too late to test anything"
    );
    assert_eq!(
        w.leg1().line_count().expect("count"),
        names.len() as u64,
        "entries lost by the failed run"
    );
    assert!(w.leg1().inflight_path().exists());
    println!("cut after {complete} complete file(s); stderr: {stderr}");

    // The next run comes once the link is back: wait until the NAS
    // answers (packets can be dropped for a moment after the interface
    // comes up).
    pair.restore();
    assert!(
        w.nas().wait_reachable(Duration::from_secs(60)),
        "the NAS never answered again after the link was restored"
    );
    let r = Run::of(&mut pair.client_cmd(w.cmd("step1", &[])));
    r.succeeds();
    for (i, n) in names.iter().enumerate() {
        assert_eq!(
            std::fs::read(w.pve().join(n)).expect("on the NAS"),
            vec![i as u8; 256 * 1024]
        );
    }
    assert_eq!(w.leg1().line_count().expect("count"), 0);
}

/// Leg-1 file in the backup root and leg-2 file in the direct NFS tree.
fn make_pair(w: &World, tag: &str) -> (String, std::path::PathBuf) {
    let rel = format!("svc/{tag}");
    World::put(&w.root, rel.as_bytes(), tag.as_bytes());
    let abs = World::put(&w.nfs, format!("immich/{tag}").as_bytes(), tag.as_bytes());
    (rel, abs)
}

fn assert_all_delivered(w: &World, tags: &BTreeSet<String>) {
    let leg1 = World::files(&w.pve().join("svc"));
    let leg2 = World::files(&w.nas_dir.join("nfs/immich"));
    let want: BTreeSet<Vec<u8>> = tags.iter().map(|t| t.as_bytes().to_vec()).collect();
    let lost1: Vec<_> = want.difference(&leg1).collect();
    let lost2: Vec<_> = want.difference(&leg2).collect();
    assert!(
        lost1.is_empty(),
        "leg 1 lost {} entries: {lost1:?}",
        lost1.len()
    );
    assert!(
        lost2.is_empty(),
        "leg 2 lost {} entries: {lost2:?}",
        lost2.len()
    );
}

/// Run `all` until it succeeds: killed runs' orphaned rsyncs may still hold
/// the NAS for a while. A generous deadline, not a fixed number of tries.
fn until_a_run_succeeds(w: &World) -> bool {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if w.run("all", &[]).code == 0 {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn sigterm_and_sigkill_at_random_instants_then_a_normal_run_loses_nothing() {
    let w = World::with_nas();
    recent_full(&w);
    let mut rng = rand::rng();
    let mut tags = BTreeSet::new();
    let mut kills = 0;
    for round in 0..6 {
        let mut leg1 = Vec::new();
        let mut leg2 = Vec::new();
        for i in 0..20 {
            let tag = format!("r{round}-{i}");
            let (a, b) = make_pair(&w, &tag);
            leg1.push(a);
            leg2.push(b);
            tags.insert(tag);
        }
        w.leg1().append(&leg1).expect("append");
        w.leg2()
            .append_paths(leg2.iter().map(|p| p.as_path()))
            .expect("append");
        let mut child = w
            .cmd("all", &[])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        // Spread over the stages: begin, step 1 rsync, commit, step 2, df.
        // SIGTERM (systemd's stop) and SIGKILL in turn.
        std::thread::sleep(Duration::from_millis(rng.random_range(0..1500)));
        let sig = if round % 2 == 0 {
            libc::SIGTERM
        } else {
            libc::SIGKILL
        };
        if signal(&mut child, sig) {
            kills += 1;
        }
    }
    // Orphaned rsyncs of killed runs may still hold the NAS; wait for the
    // lock (on a loaded machine they can take seconds to notice).
    assert!(
        until_a_run_succeeds(&w),
        "the normal run after the kills never succeeded"
    );
    assert_all_delivered(&w, &tags);
    assert_eq!(w.leg1().line_count().expect("count"), 0);
    assert_eq!(w.leg2().line_count().expect("count"), 0);
    println!(
        "entries={} killed mid-run={kills} (SIGTERM/SIGKILL) lost=0",
        tags.len()
    );
}

#[test]
fn appenders_racing_the_consumer_with_random_failures_lose_nothing() {
    let w = Arc::new(World::with_nas());
    recent_full(&w);
    let mut writers = Vec::new();
    for t in 0..2 {
        let w = Arc::clone(&w);
        writers.push(std::thread::spawn(move || {
            let mut tags = Vec::new();
            for i in 0..1000 {
                let tag = format!("w{t}-{i}");
                let (a, b) = make_pair(&w, &tag);
                // Separate appends: each ledger has its own lock.
                w.leg1().append([a.as_bytes()]).expect("append");
                w.leg2().append_paths([b.as_path()]).expect("append");
                tags.push(tag);
                // Paced over several consumer runs (about 6 s).
                if i % 5 == 0 {
                    std::thread::sleep(Duration::from_millis(30));
                }
            }
            tags
        }));
    }
    let (mut runs, mut failed, mut killed) = (0, 0, 0);
    let mut rng = rand::rng();
    // Faults in turn (unreachable NAS, SIGKILL at a random instant, two
    // normal runs), for as long as the writers append and at least 8 runs.
    while runs < 8 || !writers.iter().all(|h| h.is_finished()) {
        let fault = runs % 4;
        runs += 1;
        let mut c = w.cmd("all", &[]);
        if fault == 0 {
            c.args(["--ssh-port", "1"]); // NAS unreachable
        }
        let mut child = c
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        if fault == 1 {
            std::thread::sleep(Duration::from_millis(rng.random_range(0..800)));
            if child.try_wait().expect("try_wait").is_none() {
                killed += 1;
            }
            kill9(&mut child);
        } else if !child.wait().expect("wait").success() {
            failed += 1;
        }
    }
    let mut tags = BTreeSet::new();
    for h in writers {
        tags.extend(h.join().expect("writer"));
    }
    assert!(until_a_run_succeeds(&w), "final run failed");
    assert_all_delivered(&w, &tags);
    println!(
        "appended={} per ledger, consumer runs={runs} failed={failed} sigkilled={killed}, lost=0",
        tags.len()
    );
}

#[test]
fn a_full_nas_filesystem_fails_the_run_and_keeps_the_entries() {
    let mut w = World::new();
    let img = w.sb.ext4_image("nas.img", 4 << 20);
    w.nas = Some(Nas::start_with(
        &w.sb.path().join("sshd"),
        NasOptions {
            net: None,
            mount: Some((img, w.pve())),
        },
    ));
    w.init();
    recent_full(&w);
    let mut names = Vec::new();
    for i in 0..6 {
        let n = format!("big/f{i}");
        World::put(&w.root, n.as_bytes(), &vec![1u8; 1024 * 1024]);
        names.push(n);
    }
    w.leg1().append(&names).expect("append");
    let metrics = w.sb.path().join("m.prom");
    let r = w.run(
        "step1",
        &[
            "--metrics-file",
            metrics.to_str().expect("utf8"),
            "--capacity-path",
            w.pve().to_str().expect("utf8"),
        ],
    );
    r.fails_with(1);
    assert_eq!(w.leg1().line_count().expect("count"), names.len() as u64);
    let m = Metrics::read(&metrics).expect("metrics");
    assert_eq!(m.get("offsite_sync_last_status"), Some(1.0));
    assert_eq!(m.get("backup_last_success_timestamp"), None);
    // The capacity is the NAS's small filesystem, read over ssh before
    // sending (the same call that checks the identity marker): the next
    // run sees it full.
    w.run(
        "step1",
        &[
            "--metrics-file",
            metrics.to_str().expect("utf8"),
            "--capacity-path",
            w.pve().to_str().expect("utf8"),
        ],
    )
    .fails_with(1);
    assert_eq!(w.leg1().line_count().expect("count"), names.len() as u64);
    let m = Metrics::read(&metrics).expect("metrics");
    let size = m.get("offsite_dest_size_bytes").expect("size");
    assert!(size > 0.0 && size < 5.0 * 1024.0 * 1024.0, "size {size}");
    assert!(m.get("offsite_dest_available_bytes").expect("avail") < 1024.0 * 1024.0);
    println!("{}", r.stderr);
}
