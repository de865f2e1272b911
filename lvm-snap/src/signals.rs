//! SIGINT/SIGTERM/SIGHUP during a restore: remembered, so the restore stops
//! at the next step and rolls back instead of dying with the workload
//! scaled to zero. (Commands run in their own process group, so a Ctrl-C
//! on the terminal reaches only lvm-snap, never a half-done lvrename.)

use std::sync::atomic::{AtomicI32, Ordering};

static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn remember(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
}

/// Catch SIGINT, SIGTERM and SIGHUP from now on.
pub fn catch() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction with an async-signal-safe handler (one
        // atomic store) and an emptied mask is a valid argument.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = remember as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// The signal received since [`catch`], if any.
pub fn received() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// An error when a signal was received.
pub fn check() -> anyhow::Result<()> {
    match received() {
        Some(s) => anyhow::bail!("interrupted by signal {s}"),
        None => Ok(()),
    }
}
