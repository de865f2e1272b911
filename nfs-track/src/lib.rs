//! nfs-track: a long-running change tracker for the NFS trees. It logs,
//! through the core ledger, every regular file created and written, or
//! moved in, under the watched trees, and closes every gap it cannot see
//! through (queue overflow, watch limit, downtime) with a ctime rescan or a
//! full-sync marker. See docs/compatibility.md, bug 18.

pub mod fanotify;
pub mod inotify;
pub mod mount;
pub mod scan;
pub mod sink;
pub mod state;
pub mod sys;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use backup_core::cli::{Common, parse_duration};
use backup_core::exit::{EXIT_CODE_HELP, Exit, ExitCode};
use backup_core::ledger::{Ledger, PathKind};
use backup_core::log::p;
use backup_core::metrics::{Kind, Metrics};
use backup_core::root_guard::RootGuard;
use backup_core::skiplist::{Route, SkipList};
use backup_core::{error, info, warn};
use clap::{Parser, ValueEnum};

use crate::scan::Scope;
use crate::sink::{DEFAULT_EXCLUDES, Filter, Sink};
use crate::state::State;

/// ctime is taken from a coarse clock and may lag the instant we stamp;
/// rescans start this much earlier (a few duplicates, never a miss).
const MARGIN: Duration = Duration::from_secs(2);

/// Pause after a busy read, so that a burst is read in batches.
const BATCH_NAP: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// fanotify where the kernel and privileges allow it, else inotify.
    Auto,
    /// One filesystem-wide mark per filesystem (needs CAP_SYS_ADMIN).
    Fanotify,
    /// A watch per directory.
    Inotify,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RouteArg {
    Direct,
    Never,
    BackupDisk,
}

#[derive(Debug, Parser)]
#[command(
    name = "nfs-track",
    version,
    about = "Log every file created, written or moved into the NFS trees to the change ledger",
    after_help = EXIT_CODE_HELP
)]
pub struct Cli {
    /// A tree to watch (repeatable) [default: --nfs-root and --nfs-ssd-root].
    #[arg(long = "watch", value_name = "DIR")]
    pub watch: Vec<PathBuf>,
    /// The NFS export root (watched unless --watch is given).
    #[arg(long, env = "NFS_ROOT", default_value = "/srv/nfs", value_name = "DIR")]
    pub nfs_root: PathBuf,
    /// The SSD NFS root (watched unless --watch is given).
    #[arg(
        long,
        env = "NFS_SSD_ROOT",
        default_value = "/srv/nfs-ssd",
        value_name = "DIR"
    )]
    pub nfs_ssd_root: PathBuf,
    /// The backup disk root: the ledger's default place and the directory
    /// --require-mountpoint waits for.
    #[arg(
        long,
        env = "BACKUP_ROOT",
        default_value = "/mnt/backup",
        value_name = "DIR"
    )]
    pub backup_root: PathBuf,
    /// The ledger (absolute paths, one per line) [default: BACKUP_ROOT/.nfs-changes.log].
    #[arg(long = "log", value_name = "FILE", env = "NFS_TRACK_LOG")]
    pub log_arg: Option<PathBuf>,
    /// The ledger, resolved from --log and --backup-root.
    #[arg(skip)]
    pub log: PathBuf,
    /// The skip list: only paths of `--route` are logged.
    #[arg(
        long,
        value_name = "FILE",
        env = "BACKUP_SKIP_LIST",
        default_value = "/etc/backup-skip-list.conf"
    )]
    pub skip_list: PathBuf,
    /// Log every path, whatever its route (no skip list is read).
    #[arg(long, conflicts_with = "route")]
    pub all_routes: bool,
    /// The skip-list route to log (paths relative to each watched root) [default: direct].
    #[arg(long, value_enum)]
    pub route: Option<RouteArg>,
    /// A regex over the full path; matching files are not logged (repeatable).
    #[arg(long = "exclude", value_name = "REGEX")]
    pub exclude: Vec<String>,
    /// Drop the default excludes (swap files, .nfs*, .Trash, SQLite sidecars).
    #[arg(long)]
    pub no_default_excludes: bool,
    /// How changes are seen (fanotify needs CAP_SYS_ADMIN; auto falls back to inotify).
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendKind,
    /// Paths are deduplicated and written once per interval.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub flush_interval: Duration,
    /// Where the last instant known to be watching is kept.
    #[arg(
        long,
        value_name = "DIR",
        env = "NFS_TRACK_STATE_DIR",
        default_value = "/var/lib/nfs-track"
    )]
    pub state_dir: PathBuf,
    /// How often the heartbeat metrics file is written.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub metrics_interval: Duration,
    /// Write the ledger only while this is a mountpoint; hold paths meanwhile.
    /// The ledger is written only on the backup root's disk, identified by its
    /// marker (`offsite-sync init --local`): without this flag a missing marker
    /// refuses the start (exit 5); with it, the start waits for the disk.
    /// A bare --require-mountpoint means --backup-root (the default unless
    /// --allow-unmounted-root).
    #[arg(long = "require-mountpoint", value_name = "DIR", num_args = 0..=1)]
    pub require_mountpoint_arg: Option<Option<PathBuf>>,
    /// Write the ledger without waiting for the backup root to be a
    /// mountpoint (a sandbox or test); its identity marker is still required.
    #[arg(long, env = "ALLOW_UNMOUNTED_ROOT", value_parser = clap::builder::FalseyValueParser::new())]
    pub allow_unmounted_root: bool,
    /// Resolved from --require-mountpoint and --backup-root.
    #[arg(skip)]
    pub require_mountpoint: Option<PathBuf>,
    /// Paths held in memory at most while the ledger is unavailable; past
    /// it they are dropped and a full sync is requested.
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    pub max_pending: usize,
    #[command(flatten)]
    pub common: Common,
}

enum Backend {
    Inotify(inotify::Inotify),
    Fanotify(fanotify::Fanotify),
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Inotify(_) => "inotify",
            Backend::Fanotify(_) => "fanotify",
        }
    }
    fn fd(&self) -> i32 {
        match self {
            Backend::Inotify(b) => b.fd(),
            Backend::Fanotify(b) => b.fd(),
        }
    }
    fn watches(&self) -> usize {
        match self {
            Backend::Inotify(b) => b.watches(),
            Backend::Fanotify(b) => b.marks(),
        }
    }
    fn drain(&mut self, sink: &mut Sink) -> std::io::Result<bool> {
        match self {
            Backend::Inotify(b) => b.drain(sink),
            Backend::Fanotify(b) => b.drain(sink),
        }
    }
    fn rescan(&mut self, threshold: SystemTime, sink: &mut Sink) {
        sink.counters.rescans += 1;
        match self {
            Backend::Inotify(b) => b.rescan(threshold, sink),
            Backend::Fanotify(b) => b.rescan(threshold, sink),
        }
    }
}

/// The validated plan, before any watching starts.
struct Plan {
    roots: Vec<PathBuf>,
    ledger: Ledger,
    filter: Filter,
    state: State,
}

fn plan(cli: &Cli) -> anyhow::Result<Plan> {
    let mut roots: Vec<PathBuf> = Vec::new();
    for w in &cli.watch {
        let c = std::fs::canonicalize(w)
            .ok()
            .filter(|c| c.is_dir())
            .ok_or_else(|| Exit::usage(format!("--watch {}: not a directory", p(w))))?;
        if let Some(o) = roots.iter().find(|r| c.starts_with(r) || r.starts_with(&c)) {
            return Err(Exit::usage(format!(
                "--watch {} overlaps --watch {}: give each tree once",
                p(&c),
                p(o)
            )));
        }
        roots.push(c);
    }
    for (flag, d) in [
        ("--flush-interval", cli.flush_interval),
        ("--metrics-interval", cli.metrics_interval),
    ] {
        if d.is_zero() {
            return Err(Exit::usage(format!(
                "{flag} 0: expected more than zero, e.g. 200ms or 1s"
            )));
        }
    }
    if !cli.log.is_absolute() {
        return Err(Exit::usage(format!(
            "--log {}: expected an absolute path",
            p(&cli.log)
        )));
    }
    if let Some(mp) = &cli.require_mountpoint
        && !cli.log.starts_with(mp)
    {
        return Err(Exit::usage(format!(
            "--log {} is not under --require-mountpoint {}",
            p(&cli.log),
            p(mp)
        )));
    }
    let mut excludes: Vec<String> = Vec::new();
    if !cli.no_default_excludes {
        excludes.extend(DEFAULT_EXCLUDES.iter().map(|s| s.to_string()));
    }
    for e in &cli.exclude {
        regex::bytes::Regex::new(e)
            .map_err(|err| Exit::usage(format!("--exclude {e:?}: not a valid regex: {err}")))?;
        excludes.push(e.clone());
    }
    let skip = match (!cli.all_routes).then_some(&cli.skip_list) {
        Some(f) => {
            let list = SkipList::load(f).map_err(|e| Exit::usage(format!("--skip-list: {e}")))?;
            let route = match cli.route.unwrap_or(RouteArg::Direct) {
                RouteArg::Direct => Route::Direct,
                RouteArg::Never => Route::Never,
                RouteArg::BackupDisk => Route::BackupDisk,
            };
            Some((list, route))
        }
        None => None,
    };
    let ledger = Ledger::new(cli.log.clone(), PathKind::Absolute);
    let state = State::new(&cli.state_dir, &cli.log, &roots)
        .with_route(skip.as_ref().map(|(_, r)| r.as_str()).unwrap_or("all"));
    let mut own = vec![
        ledger.path().to_path_buf(),
        ledger.lock_path(),
        ledger.inflight_path(),
        ledger.marker_path(),
        cli.state_dir.clone(),
    ];
    own.extend(cli.common.metrics_file.clone());
    let filter = Filter::new(roots.clone(), &excludes, skip, own)
        .map_err(|e| Exit::usage(format!("--exclude: {e}")))?;
    Ok(Plan {
        roots,
        ledger,
        filter,
        state,
    })
}

struct Tracker {
    backend: Backend,
    sink: Sink,
    ledger: Ledger,
    state: State,
    require_mountpoint: Option<PathBuf>,
    /// Where the backup root's marker is looked for (upwards, same
    /// filesystem): --require-mountpoint, else the ledger's directory.
    root_dir: PathBuf,
    /// The backup root the ledger is written on, once seen.
    root: Option<RootGuard>,
    metrics_file: Option<PathBuf>,
    available: bool,
    last_write_error: Option<String>,
    last_stamp: Option<Instant>,
    stamp_failing: bool,
}

/// Bytes an unprivileged writer may still use on the ledger's filesystem.
fn free_bytes(ledger: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(ledger.parent()?).ok()?;
    Some(st.f_bavail * st.f_frsize)
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Tracker {
    /// Write what is held, then stamp `covered_to` (every change before it
    /// is now in the ledger or covered by the marker). Nothing is written
    /// while the required mountpoint is absent.
    /// `Ok` when the ledger may be written now: the required mountpoint
    /// is mounted and the backup root carries its marker. A root seen for
    /// the first time is pinned; one that went away and came back is
    /// pinned again; one with another marker (another disk) is pinned with
    /// a full sync owed, since its ledger lacks what was logged on the other.
    fn ledger_available(&mut self) -> Result<(), String> {
        if let Some(mp) = &self.require_mountpoint
            && !mount::is_mountpoint(mp)
        {
            return Err(format!("{} is not a mountpoint", p(mp)));
        }
        if let Some(g) = &self.root
            && g.check().is_ok()
        {
            return Ok(());
        }
        let found = RootGuard::find(&self.root_dir).map_err(|e| format!("{e:#}"))?;
        if let Some(old) = &self.root
            && old.marker().id != found.marker().id
        {
            self.sink.owe_marker(&format!(
                "nfs-track: the backup root {} is another disk now (marker id {}, was {}): its change log lacks what was logged before",
                p(found.dir()),
                found.marker().id,
                old.marker().id
            ));
        }
        self.root = Some(found);
        Ok(())
    }

    fn flush(&mut self, covered_to: SystemTime, force_stamp: bool) {
        let why_not = self.ledger_available().err();
        let available = why_not.is_none();
        if available != self.available {
            match &why_not {
                None => info!(
                    "{} is back: writing {} held paths",
                    p(&self.root_dir),
                    self.sink.pending.len()
                ),
                Some(why) => warn!(
                    "{why}: holding changed paths in memory (at most {}) until it is back",
                    self.sink.max_pending
                ),
            }
            self.available = available;
        }
        if !available {
            return;
        }
        let mut wrote = false;
        let result = (|| -> Result<(), backup_core::ledger::LedgerError> {
            while let Some(reason) = self.sink.marker_owed.first().cloned() {
                wrote = true;
                self.ledger.mark_full_sync(&reason)?;
                warn!("full sync requested: {reason}");
                self.sink.counters.marks += 1;
                self.sink.marker_owed.remove(0);
            }
            if !self.sink.pending.is_empty() {
                // A write cut short by ENOSPC would leave a truncated path
                // as a line of its own; check the room first.
                let need: u64 = self
                    .sink
                    .pending
                    .iter()
                    .map(|p| 2 * p.len() as u64 + 1)
                    .sum();
                if let Some(free) = free_bytes(self.ledger.path())
                    && free < need + 4096
                {
                    return Err(backup_core::ledger::LedgerError::Io {
                        path: self.ledger.path().to_path_buf(),
                        source: std::io::Error::from_raw_os_error(libc::ENOSPC),
                    });
                }
                let n = self.ledger.append(self.sink.pending.iter())?;
                self.sink.counters.logged += n as u64;
                self.sink.pending.clear();
                wrote = true;
            }
            Ok(())
        })();
        // The disk may have gone between the check and the write (the
        // lines then went to the bare directory beneath): nothing tells
        // which, so the consumer is asked for a full sync once it is back.
        if wrote
            && let Some(g) = &self.root
            && let Err(e) = g.check()
        {
            warn!("{e}");
            self.sink.owe_marker(
                "nfs-track: the backup root went away while the change log was written; lines may have missed it",
            );
            self.available = false;
            return;
        }
        if let Err(e) = result {
            let msg = e.to_string();
            if self.last_write_error.as_deref() != Some(&msg) {
                error!(
                    "cannot write the ledger (will retry, holding {} paths): {msg}",
                    self.sink.pending.len()
                );
                self.last_write_error = Some(msg);
            }
            return;
        }
        if self.last_write_error.take().is_some() {
            info!("the ledger is writable again");
        }
        let due = self
            .last_stamp
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
        if wrote || due || force_stamp {
            match self.state.stamp(covered_to) {
                Ok(()) => {
                    self.last_stamp = Some(Instant::now());
                    self.stamp_failing = false;
                }
                Err(e) => {
                    // Once per failure, not every flush; the next start
                    // then rescans from the last stamp that was written.
                    if !self.stamp_failing {
                        warn!("cannot write {}: {e}", p(self.state.path()));
                    }
                    self.stamp_failing = true;
                }
            }
        }
    }

    fn metrics(&self, up: bool) -> anyhow::Result<Metrics> {
        let c = &self.sink.counters;
        let b = self.backend.name();
        let mut m = Metrics::new();
        m.gauge_with(
            "nfs_track_last_heartbeat_timestamp_seconds",
            "When the tracker last wrote its heartbeat (unix seconds)",
            &[("backend", b)],
            unix(SystemTime::now()),
        )?;
        m.gauge_with(
            "nfs_track_up",
            "1 while watching, 0 after a clean shutdown",
            &[("backend", b)],
            f64::from(u8::from(up)),
        )?;
        for (name, help, v) in [
            (
                "nfs_track_events_total",
                "Events read from the kernel inside the watched trees",
                c.events,
            ),
            (
                "nfs_track_paths_logged_total",
                "Lines written to the ledger",
                c.logged,
            ),
            (
                "nfs_track_overflows_total",
                "Kernel event queue overflows (each followed by a rescan)",
                c.overflows,
            ),
            (
                "nfs_track_rescans_total",
                "ctime rescans (start-up gap, overflow, watch limit)",
                c.rescans,
            ),
            (
                "nfs_track_full_sync_requests_total",
                "full-sync-needed markers written",
                c.marks,
            ),
            (
                "nfs_track_watch_limit_hits_total",
                "Watches refused for lack of fs.inotify.max_user_watches",
                c.watch_limit_hits,
            ),
            (
                "nfs_track_dropped_paths_total",
                "Held paths dropped past --max-pending (a marker was set)",
                c.dropped,
            ),
        ] {
            m.sample(name, help, Kind::Counter, &[("backend", b)], v as f64)?;
        }
        m.gauge_with(
            "nfs_track_watches",
            "Watches (inotify) or filesystem marks (fanotify) held",
            &[("backend", b)],
            self.backend.watches() as f64,
        )?;
        m.gauge_with(
            "nfs_track_pending_paths",
            "Paths held in memory, not yet in the ledger",
            &[("backend", b)],
            self.sink.pending.len() as f64,
        )?;
        m.gauge_with(
            "nfs_track_ledger_available",
            "1 when the ledger can be written (its mountpoint is mounted)",
            &[("backend", b)],
            f64::from(u8::from(self.available)),
        )?;
        Ok(m)
    }

    fn write_metrics(&self, up: bool) {
        let Some(path) = &self.metrics_file else {
            return;
        };
        match self.metrics(up) {
            Ok(m) => {
                if let Err(e) = m.write_to(path) {
                    warn!("cannot write metrics file: {e}");
                }
            }
            Err(e) => warn!("cannot build metrics: {e:#}"),
        }
    }
}

impl Cli {
    /// Fill the settings derived from others: the watched trees, the
    /// ledger, the mountpoint waited for.
    pub fn resolve(&mut self) {
        if self.watch.is_empty() {
            self.watch = vec![self.nfs_root.clone(), self.nfs_ssd_root.clone()];
        }
        self.log = self
            .log_arg
            .clone()
            .unwrap_or_else(|| self.backup_root.join(".nfs-changes.log"));
        self.require_mountpoint = match &self.require_mountpoint_arg {
            Some(d) => Some(d.clone().unwrap_or_else(|| self.backup_root.clone())),
            None if self.allow_unmounted_root => None,
            None if self.log.starts_with(&self.backup_root) => Some(self.backup_root.clone()),
            None => self.log.parent().map(Path::to_path_buf),
        };
    }
}

pub fn run(mut cli: Cli) -> anyhow::Result<ExitCode> {
    cli.resolve();
    cli.common.init_logging();
    let plan = plan(&cli)?;
    // Contract 13: the ledger goes only to the initialised backup disk.
    // Without --require-mountpoint a root without its marker refuses the
    // start (exit 5); with it, an unmounted disk is waited for (paths are
    // held), but a mounted one without its marker is refused all the same.
    let root_dir = match &cli.require_mountpoint {
        Some(mp) => mp.clone(),
        None => cli
            .log
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/")),
    };
    let waits = cli
        .require_mountpoint
        .as_deref()
        .is_some_and(|mp| !mount::is_mountpoint(mp));
    let root = if waits {
        None
    } else {
        Some(RootGuard::find(&root_dir)?)
    };
    let _lock = backup_core::lock::acquire("nfs-track")?;
    let sigfd = sys::signal_fd().context("cannot set up signal handling")?;
    if let Some(w) = sys::watchdog_interval() {
        // Walks before READY and rescans later ping on their own.
        sys::watchdog_arm(w / 2);
    }

    let stamp = match plan.state.load() {
        Ok(s) => s,
        Err(e) => {
            warn!("cannot read the state: {e}");
            None
        }
    };
    let started = SystemTime::now();
    let backend = match cli.backend {
        BackendKind::Inotify => {
            Backend::Inotify(inotify::Inotify::new(&plan.roots).context("inotify_init")?)
        }
        BackendKind::Fanotify => {
            Backend::Fanotify(fanotify::Fanotify::new(&plan.roots).context(
                "fanotify setup (needs CAP_SYS_ADMIN and a filesystem with file handles)",
            )?)
        }
        BackendKind::Auto => match fanotify::Fanotify::new(&plan.roots) {
            Ok(f) => Backend::Fanotify(f),
            Err(e) => {
                info!("fanotify unavailable ({e}): using inotify");
                Backend::Inotify(inotify::Inotify::new(&plan.roots).context("inotify_init")?)
            }
        },
    };
    let mut t = Tracker {
        backend,
        sink: Sink::new(plan.filter, cli.max_pending.max(1)),
        ledger: plan.ledger,
        state: plan.state,
        require_mountpoint: cli.require_mountpoint.clone(),
        root_dir,
        root,
        metrics_file: cli.common.metrics_file.clone(),
        available: true,
        last_write_error: None,
        last_stamp: None,
        stamp_failing: false,
    };

    // Close the gap since the tracker last watched: a ctime rescan from the
    // stamp, or the marker when there is no stamp.
    let scope = match stamp {
        Some(s) => {
            let from = s.checked_sub(MARGIN).unwrap_or(UNIX_EPOCH);
            info!(
                "closing the gap since {}: logging files changed since then",
                chrono::DateTime::<chrono::Utc>::from(s).format("%Y-%m-%dT%H:%M:%SZ")
            );
            t.sink.counters.rescans += 1;
            Scope::Newer(from)
        }
        None => {
            let roots: Vec<String> = plan.roots.iter().map(|r| p(r)).collect();
            t.sink.owe_marker(&format!(
                "nfs-track: no record of when {} was last watched (first start, lost state, or a new tree)",
                roots.join(" ")
            ));
            Scope::Nothing
        }
    };
    // inotify needs the walk for its watches before it can be ready; the
    // fanotify marks are complete already, so its rescan runs after READY
    // (events meanwhile wait in the queue).
    if let Backend::Inotify(b) = &mut t.backend {
        b.start(scope, &mut t.sink);
    }
    info!(
        "watching {} with {} ({} {}), ledger {}",
        plan.roots
            .iter()
            .map(|r| p(r))
            .collect::<Vec<_>>()
            .join(" "),
        t.backend.name(),
        t.backend.watches(),
        if matches!(t.backend, Backend::Inotify(_)) {
            "watches"
        } else {
            "marks"
        },
        p(t.ledger.path())
    );
    // The stamp moves only once the gap is closed: after the rescan.
    let rescan_after_ready = matches!(t.backend, Backend::Fanotify(_)) && scope != Scope::Nothing;
    if !rescan_after_ready {
        t.flush(started, true);
    }
    t.write_metrics(true);
    sys::sd_notify(&format!(
        "READY=1\nSTATUS=watching {} trees with {}",
        plan.roots.len(),
        t.backend.name()
    ));
    if let (Backend::Fanotify(b), Scope::Newer(from)) = (&mut t.backend, scope) {
        b.rescan(from, &mut t.sink);
    }
    if rescan_after_ready {
        t.flush(started, true);
    }

    let watchdog = sys::watchdog_interval();
    let mut drained = started;
    let mut next_flush = Instant::now() + cli.flush_interval;
    let mut next_beat = Instant::now() + cli.metrics_interval;
    let mut next_dog = watchdog.map(|w| Instant::now() + w);
    let fds = [t.backend.fd(), std::os::fd::AsRawFd::as_raw_fd(&sigfd)];
    loop {
        let now = Instant::now();
        let mut until = next_flush.min(next_beat);
        if let Some(d) = next_dog {
            until = until.min(d);
        }
        let ready =
            sys::poll_readable(&fds, until.saturating_duration_since(now)).context("poll")?;
        let stop = ready[1] && {
            let sigs = sys::read_signals(&sigfd);
            sigs.iter()
                .any(|&s| s == libc::SIGTERM || s == libc::SIGINT)
        };
        // Everything before this instant is in the queue we now drain.
        let at = SystemTime::now();
        let before = t.sink.counters.events;
        let overflow = t.backend.drain(&mut t.sink).context("reading events")?;
        let busy = t.sink.counters.events != before;
        if overflow {
            t.sink.counters.overflows += 1;
            let from = drained.checked_sub(MARGIN).unwrap_or(UNIX_EPOCH);
            warn!(
                "the kernel event queue overflowed: rescanning for files changed since {}",
                chrono::DateTime::<chrono::Utc>::from(from).format("%Y-%m-%dT%H:%M:%SZ")
            );
            t.backend.rescan(from, &mut t.sink);
        }
        drained = at;
        if stop {
            info!("stopping: writing {} held paths", t.sink.pending.len());
            sys::sd_notify("STOPPING=1");
            t.flush(at, true);
            t.write_metrics(false);
            if !t.sink.pending.is_empty() || !t.sink.marker_owed.is_empty() {
                warn!(
                    "{} paths could not be written; the next start rescans from the last stamp",
                    t.sink.pending.len()
                );
            }
            return Ok(ExitCode::Ok);
        }
        if busy && !overflow {
            // During a burst, let events gather for a moment: one wake-up
            // per batch instead of per event (the queue holds thousands; a
            // few ms of a burst fit easily; the flush window is seconds).
            std::thread::sleep(BATCH_NAP);
        }
        let now = Instant::now();
        if now >= next_flush || t.sink.pending.len() >= t.sink.max_pending {
            t.flush(at, false);
            next_flush = now + cli.flush_interval;
        }
        if now >= next_beat {
            // Short of inotify watches: retry, logging what changed since.
            if let Backend::Inotify(b) = &t.backend
                && let Some(since) = b.limit_since
            {
                let from = since.checked_sub(MARGIN).unwrap_or(UNIX_EPOCH);
                t.backend.rescan(from, &mut t.sink);
            }
            t.write_metrics(true);
            next_beat = now + cli.metrics_interval;
        }
        if let (Some(d), Some(w)) = (next_dog, watchdog)
            && now >= d
        {
            sys::watchdog_tick();
            next_dog = Some(now + w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_below_a_second_are_accepted() {
        let cli =
            Cli::try_parse_from(["nfs-track", "--watch", "/srv", "--flush-interval", "200ms"])
                .expect("200ms parses");
        assert_eq!(cli.flush_interval, Duration::from_millis(200));
    }
}
