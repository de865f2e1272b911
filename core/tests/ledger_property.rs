//! Property: several writer processes append to a ledger while a consumer
//! process repeatedly consumes it, fails at random, and is SIGKILLed at
//! random points of the protocol. Every appended entry must end up in a
//! completed transfer (duplicates allowed, losses never).
//!
//! The binary re-executes itself in the writer and consumer roles
//! (`LEDGER_ROLE`), so the processes, the flock and the kills are real.

use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use backup_core::ledger::{Ledger, PathKind};
use rand::Rng;

const WRITERS: usize = 4;
const PER_WRITER: usize = 5000;

/// Entry names include the hostile bytes the ledger must keep exactly.
fn entry(writer: usize, n: usize) -> Vec<u8> {
    let mut v = format!("w{writer}/e{n}").into_bytes();
    match n % 5 {
        1 => v.extend_from_slice(b"\nsecond line"),
        2 => v.extend_from_slice(b"\\n back\\slash"),
        3 => v.extend_from_slice(b" -x \xff\xfe"),
        _ => {}
    }
    v
}

fn writer(ledger: &Ledger, id: usize) {
    let mut rng = rand::rng();
    let mut n = 0;
    while n < PER_WRITER {
        let batch = rng.random_range(1..=12).min(PER_WRITER - n);
        let names: Vec<Vec<u8>> = (n..n + batch).map(|i| entry(id, i)).collect();
        ledger.append(&names).expect("append");
        n += batch;
        // Spread the appends over a few seconds so the consumer is killed
        // many times while writers are active.
        std::thread::sleep(Duration::from_micros(rng.random_range(0..6000)));
    }
}

fn die_here(rng: &mut impl Rng, p: f64) {
    if rng.random_bool(p) {
        // SAFETY: raising SIGKILL on ourselves; nothing to clean up by design.
        unsafe {
            libc::raise(libc::SIGKILL);
        }
    }
}

/// One consume attempt per loop: begin, "transfer" (write the batch to a
/// file, made visible by rename only when complete), then commit, fail, or
/// die at a random protocol point.
fn consumer(ledger: &Ledger, out: &Path, stop: &Path) {
    let mut rng = rand::rng();
    loop {
        let last = stop.exists();
        die_here(&mut rng, 0.02);
        let batch = ledger.begin().expect("begin");
        die_here(&mut rng, 0.05);
        if !batch.entries().is_empty() {
            let id: u64 = rng.random();
            let tmp = out.join(format!(".batch-{id}.tmp"));
            let mut data = Vec::new();
            for e in batch.entries() {
                data.extend_from_slice(&backup_core::ledger::encode(e.as_os_str().as_bytes()));
                data.push(b'\n');
            }
            std::fs::write(&tmp, &data).expect("write batch");
            die_here(&mut rng, 0.05);
            // A failed transfer: nothing delivered, the inflight file stays.
            if !last && rng.random_bool(0.3) {
                let _ = std::fs::remove_file(&tmp);
                drop(batch);
                continue;
            }
            std::fs::rename(&tmp, out.join(format!("batch-{id}"))).expect("deliver");
            die_here(&mut rng, 0.05);
        }
        batch.commit().expect("commit");
        if last {
            return;
        }
        std::thread::sleep(Duration::from_micros(rng.random_range(0..3000)));
    }
}

fn spawn(role: &str, dir: &Path, extra: &str) -> Child {
    Command::new(std::env::current_exe().expect("exe"))
        .env("LEDGER_ROLE", role)
        .env("LEDGER_DIR", dir)
        .env("LEDGER_ARG", extra)
        .spawn()
        .expect("spawn")
}

fn main() {
    if let Ok(role) = std::env::var("LEDGER_ROLE") {
        let dir = PathBuf::from(std::env::var("LEDGER_DIR").expect("dir"));
        let ledger = Ledger::new(dir.join(".changed-files"), PathKind::Relative);
        match role.as_str() {
            "writer" => writer(
                &ledger,
                std::env::var("LEDGER_ARG")
                    .expect("id")
                    .parse()
                    .expect("id"),
            ),
            "consumer" => consumer(&ledger, &dir.join("delivered"), &dir.join("stop")),
            other => panic!("unknown role {other}"),
        }
        return;
    }

    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("delivered")).expect("mkdir");
    let mut writers: Vec<Child> = (0..WRITERS)
        .map(|i| spawn("writer", dir, &i.to_string()))
        .collect();
    let mut rng = rand::rng();
    let mut kills = 0;
    let mut consumers = 0;
    let started = Instant::now();
    let mut consumer_proc = spawn("consumer", dir, "");
    consumers += 1;
    // Keep a consumer running (restarting it whenever it dies) and kill it
    // at random moments while the writers are busy.
    loop {
        let writers_done = writers
            .iter_mut()
            .all(|w| w.try_wait().expect("wait").is_some());
        if writers_done {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "writers did not finish"
        );
        std::thread::sleep(Duration::from_millis(rng.random_range(1..40)));
        if consumer_proc.try_wait().expect("wait").is_some() {
            consumer_proc = spawn("consumer", dir, "");
            consumers += 1;
        } else if rng.random_bool(0.3) {
            let _ = consumer_proc.kill();
            let _ = consumer_proc.wait();
            kills += 1;
        }
    }
    for w in &mut writers {
        assert!(w.wait().expect("wait").success(), "a writer failed");
    }
    let _ = consumer_proc.kill();
    let _ = consumer_proc.wait();
    // A final consumer runs to the end (it may still die at random
    // points; restart it until it finishes cleanly).
    std::fs::write(dir.join("stop"), b"").expect("stop");
    loop {
        let st = spawn("consumer", dir, "").wait().expect("wait");
        consumers += 1;
        if st.success() {
            break;
        }
    }

    let appended: HashSet<Vec<u8>> = (0..WRITERS)
        .flat_map(|w| (0..PER_WRITER).map(move |n| entry(w, n)))
        .collect();
    let mut recovered: HashSet<Vec<u8>> = HashSet::new();
    let mut delivered_lines = 0usize;
    for f in std::fs::read_dir(dir.join("delivered")).expect("ls") {
        let f = f.expect("entry");
        if !f.file_name().as_bytes().starts_with(b"batch-") {
            continue;
        }
        let text = std::fs::read(f.path()).expect("read");
        let d = backup_core::ledger::decode_all(&text, PathKind::Relative);
        assert!(
            d.rejected.is_empty(),
            "corrupt lines delivered: {:?}",
            d.rejected
        );
        delivered_lines += d.entries.len();
        recovered.extend(
            d.entries
                .into_iter()
                .map(|p| p.into_os_string().into_vec_bytes()),
        );
    }
    let lost = appended.difference(&recovered).count();
    let unknown = recovered.difference(&appended).count();
    println!(
        "appended={} recovered={} lost={lost} unknown={unknown} delivered_lines={delivered_lines} \
         consumer_runs={consumers} sigkills={kills}",
        appended.len(),
        appended.len() - lost,
    );
    assert_eq!(lost, 0, "entries were lost");
    assert_eq!(unknown, 0, "entries that nobody appended were delivered");
    let ledger = Ledger::new(dir.join(".changed-files"), PathKind::Relative);
    assert_eq!(
        ledger.line_count().expect("count"),
        0,
        "everything consumed at the end"
    );
    println!("1 passed, 0 failed");
}

trait IntoVecBytes {
    fn into_vec_bytes(self) -> Vec<u8>;
}
impl IntoVecBytes for std::ffi::OsString {
    fn into_vec_bytes(self) -> Vec<u8> {
        use std::os::unix::ffi::OsStringExt;
        self.into_vec()
    }
}
