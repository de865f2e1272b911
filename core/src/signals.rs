//! SIGINT/SIGTERM/SIGHUP remembered instead of killing the process, so a
//! tool stops at its next check and cleans up (rolls a restore back,
//! removes a `.partial`) instead of dying half-way. systemd's stop and
//! timeout send SIGTERM first; SIGKILL still ends everything at once.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caught_signal_is_remembered_not_fatal() {
        catch();
        assert!(check().is_ok() || received().is_some());
        // SAFETY: raising a signal whose handler we just installed.
        unsafe {
            libc::raise(libc::SIGHUP);
        }
        assert_eq!(received(), Some(libc::SIGHUP));
        assert_eq!(
            check().expect_err("interrupted").to_string(),
            "interrupted by signal 1"
        );
    }
}
