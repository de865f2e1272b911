//! Small wrappers over the system calls the main loop needs: a signalfd for
//! SIGTERM/SIGINT (no async handler to reason about), poll, and sd_notify.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Block SIGTERM, SIGINT and SIGHUP and return a signalfd that reports them.
pub fn signal_fd() -> io::Result<OwnedFd> {
    // SAFETY: sigset_t is plain data initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Read pending signals from a signalfd; returns their numbers.
pub fn read_signals(fd: &OwnedFd) -> Vec<i32> {
    let mut out = Vec::new();
    // One signalfd_siginfo per signal; ssi_signo (u32) comes first.
    const SIZE: usize = std::mem::size_of::<libc::signalfd_siginfo>();
    const _: () = assert!(std::mem::offset_of!(libc::signalfd_siginfo, ssi_signo) == 0);
    let mut info = [0u8; SIZE];
    loop {
        if rustix::io::read(fd, &mut info[..]) != Ok(SIZE) {
            return out;
        }
        let mut signo = [0u8; 4];
        signo.copy_from_slice(&info[..4]);
        out.push(u32::from_ne_bytes(signo) as i32);
    }
}

/// Wait until one of `fds` is readable or `timeout` passes; returns which.
pub fn poll_readable(fds: &[RawFd], timeout: Duration) -> io::Result<Vec<bool>> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: p is a valid array of pollfd for its length.
    let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(vec![false; fds.len()]);
        }
        return Err(e);
    }
    Ok(p.iter().map(|x| x.revents != 0).collect())
}

/// Read a non-blocking event fd (inotify, fanotify) until it is empty,
/// passing each batch read to `handle`. Returns true when any `handle`
/// call did (both backends report a queue overflow that way).
pub fn drain_fd(
    fd: RawFd,
    buf: &mut [u8],
    mut handle: impl FnMut(&[u8]) -> bool,
) -> io::Result<bool> {
    let mut any = false;
    loop {
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => break,
                io::ErrorKind::Interrupted => continue,
                _ => return Err(e),
            }
        }
        if n == 0 {
            break;
        }
        any |= handle(&buf[..n as usize]);
    }
    Ok(any)
}

/// sd_notify(3): a no-op when NOTIFY_SOCKET is unset.
pub fn sd_notify(msg: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let addr = if let Some(name) = path.strip_prefix('@') {
        SocketAddr::from_abstract_name(name.as_bytes())
    } else {
        SocketAddr::from_pathname(&path)
    };
    let sent =
        addr.and_then(|a| UnixDatagram::unbound().and_then(|s| s.send_to_addr(msg.as_bytes(), &a)));
    if let Err(e) = sent {
        backup_core::warn!("cannot notify systemd at {path}: {e}");
    }
}

/// The systemd watchdog period (half of WATCHDOG_USEC), when one is asked
/// for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok()? != std::process::id()
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

static EPOCH: OnceLock<Instant> = OnceLock::new();
static DOG_PERIOD_MS: AtomicU64 = AtomicU64::new(0);
static DOG_LAST_MS: AtomicU64 = AtomicU64::new(0);

fn ms_now() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Arm [`watchdog_tick`] with the period systemd asked for.
pub fn watchdog_arm(period: Duration) {
    DOG_LAST_MS.store(ms_now(), Ordering::Relaxed);
    DOG_PERIOD_MS.store(period.as_millis().max(1) as u64, Ordering::Relaxed);
}

/// Called from long walks (a rescan of a big tree can outlast
/// WatchdogSec=): pings systemd when a period has passed. Cheap otherwise.
pub fn watchdog_tick() {
    let period = DOG_PERIOD_MS.load(Ordering::Relaxed);
    if period == 0 {
        return;
    }
    let now = ms_now();
    if now.saturating_sub(DOG_LAST_MS.load(Ordering::Relaxed)) >= period {
        DOG_LAST_MS.store(now, Ordering::Relaxed);
        sd_notify("WATCHDOG=1");
    }
}
