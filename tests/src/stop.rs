//! Stopping a running tool the ways production stops it, and checking that
//! nothing it started outlives it. systemd stops a unit, and ends one that
//! overran TimeoutStartSec=, with SIGTERM to every process of its cgroup
//! (KillMode=control-group), SIGKILL only after TimeoutStopSec=; an operator's
//! `kill PID` sends SIGTERM to the tool alone; `kill -9` and the OOM killer
//! send SIGKILL.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGKILL to the tool: no handler runs anywhere; its children go by
    /// PR_SET_PDEATHSIG.
    Kill,
    /// SIGTERM to the tool alone (`kill PID`, `systemctl kill
    /// --kill-whom=main`).
    Term,
    /// SIGTERM to the tool and every process it started, at once (main
    /// process first, like systemd walking the cgroup): rsync and ssh then
    /// run their own SIGTERM handlers while the tool dies.
    TermUnit,
    /// SIGKILL to every process of the unit (systemd after TimeoutStopSec=,
    /// the OOM killer taking the cgroup; as close to a power cut as the
    /// processes see): rsync dies without removing its temp file.
    KillUnit,
}

impl Stop {
    pub fn signal(self) -> i32 {
        match self {
            Stop::Kill | Stop::KillUnit => libc::SIGKILL,
            Stop::Term | Stop::TermUnit => libc::SIGTERM,
        }
    }
}

/// A process, told from a later one with the same pid by its start time.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: i32,
    pub comm: String,
    start: u64,
}

/// (comm, state, ppid, start time) from /proc/PID/stat.
fn stat(pid: i32) -> Option<(String, char, i32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (open, close) = (s.find('(')?, s.rfind(')')?);
    let comm = s[open + 1..close].to_string();
    // Fields from the 3rd (state) on; the 22nd is the start time.
    let f: Vec<&str> = s.get(close + 2..)?.split(' ').collect();
    Some((
        comm,
        f.first()?.chars().next()?,
        f.get(1)?.parse().ok()?,
        f.get(19)?.parse().ok()?,
    ))
}

/// Every live descendant of `pid`, however deep.
pub fn descendants(pid: i32) -> Vec<Proc> {
    let mut all = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if let Some((comm, _, ppid, start)) = stat(p) {
            all.push((
                ppid,
                Proc {
                    pid: p,
                    comm,
                    start,
                },
            ));
        }
    }
    let mut out: Vec<Proc> = Vec::new();
    let mut parents = vec![pid];
    while let Some(parent) = parents.pop() {
        for (ppid, p) in &all {
            if *ppid == parent {
                parents.push(p.pid);
                out.push(p.clone());
            }
        }
    }
    out
}

/// Still running (a zombie has finished).
pub fn alive(p: &Proc) -> bool {
    matches!(stat(p.pid), Some((_, state, _, start)) if start == p.start && !matches!(state, 'Z' | 'X'))
}

/// How a stopped run ended, and what it had started at that moment.
pub struct Stopped {
    pub status: ExitStatus,
    pub children: Vec<Proc>,
}

/// Poll `ready` (a sign the run is mid-way: a file arrived, a temp file
/// appeared) until it holds, failing if the run ends first or nothing
/// happens within a minute; then the test stops it.
pub fn wait_mid_run(child: &mut Child, what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "the run ended before {what}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no {what} within a minute"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Stop `child` the way `how` says and reap it.
pub fn stop(child: &mut Child, how: Stop) -> Stopped {
    let pid = child.id() as i32;
    let children = descendants(pid);
    if how == Stop::KillUnit {
        // Freeze every child first, then kill them all: killed one by one,
        // a survivor (rsync's receiver) could notice its peer go and clean
        // up before its own SIGKILL, which a real cgroup kill never allows.
        for p in children.iter().filter(|p| alive(p)) {
            // SAFETY: kill(2) on a process checked just above to be the
            // one the tool started (same pid and start time).
            unsafe { libc::kill(p.pid, libc::SIGSTOP) };
        }
        // Deepest first (`descendants` lists a parent before its
        // children). Parent first, the group leader's exit could orphan a
        // process group that holds frozen members (rsync runs in its own
        // group, its receiver and generator below the leader), and the
        // kernel then sends them SIGHUP and SIGCONT (POSIX job control):
        // rsync's receiver woke before its SIGKILL and its SIGHUP handler
        // removed the temp file a cgroup kill leaves behind. With every
        // child already holding a SIGKILL when its parent goes, no handler
        // can run.
        for p in children.iter().rev().filter(|p| alive(p)) {
            // SAFETY: as above.
            unsafe { libc::kill(p.pid, libc::SIGKILL) };
        }
    }
    // SAFETY: kill(2) on our own child, not yet reaped (its pid is ours).
    unsafe { libc::kill(pid, how.signal()) };
    if how == Stop::TermUnit {
        for p in children.iter().filter(|p| alive(p)) {
            // SAFETY: kill(2) on a process checked just above to be the one
            // the tool started (same pid and start time).
            unsafe { libc::kill(p.pid, libc::SIGTERM) };
        }
    }
    let status = child.wait().expect("reap the stopped tool");
    Stopped { status, children }
}

impl Stopped {
    /// The run did not pass for a good one: status != 0 (killed by the
    /// signal, or a non-zero exit had the tool handled it), and it was
    /// stopped while `busy` (a process name: rsync, ssh) ran.
    pub fn failed_mid(&self, busy: &str) -> &Self {
        assert!(
            !self.status.success(),
            "a stopped run passed for a good one: {}",
            self.status
        );
        assert!(
            self.children.iter().any(|p| p.comm == busy),
            "stopped while no {busy} ran: {:?}",
            self.children
        );
        self
    }

    /// Nothing the tool had started is still running (an orphan may take
    /// a moment to notice its parent is gone: polled, with a deadline).
    pub fn left_no_process(&self) -> &Self {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left: Vec<&Proc> = self.children.iter().filter(|p| alive(p)).collect();
            if left.is_empty() {
                return self;
            }
            assert!(
                Instant::now() < deadline,
                "still running after the tool was stopped: {left:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
