//! pfsense-pull: the firewall's config.xml every day and its full
//! filesystem every week, never overwriting a good copy with a bad one.
//!
//! Replaces step 3 of the old daily-backup and fixes its bugs 22 and 27
//! (docs/compatibility.md): every remote step is bounded by a timeout and
//! BatchMode, a reply is validated before it is written, a tar is streamed
//! to a `.partial` file and checked before it gets its final name, and
//! retention counts weeks, not files, and runs only after a good run.

pub mod fetch;
pub mod layout;
pub mod validate;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use backup_core::exit::{EXIT_CODE_HELP, Exit, ExitCode};
use backup_core::ledger::{Ledger, PathKind};
use backup_core::metrics::Metrics;
use backup_core::root_guard::RootGuard;
use backup_core::{info, warn};
use chrono::{Datelike, NaiveDate, Weekday};
use clap::{Parser, ValueEnum};

use crate::fetch::Ssh;

pub const TOOL: &str = "pfsense-pull";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Ssh,
    Api,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FullTar {
    /// On Sundays only.
    Auto,
    Always,
    Never,
}

#[derive(Debug, Parser)]
#[command(
    name = "pfsense-pull",
    version,
    about = "Pull pfSense's config.xml (daily) and a full filesystem tar (Sundays) into <dest>/<week>/",
    after_help = EXIT_CODE_HELP
)]
pub struct Cli {
    /// The backup disk root, carrying its identity marker (`offsite-sync
    /// init --local`); copies go to BACKUP_ROOT/pfsense/<ISO week>/.
    #[arg(
        long,
        env = "BACKUP_ROOT",
        default_value = "/mnt/backup",
        value_name = "DIR"
    )]
    pub backup_root: PathBuf,
    /// Accept a backup root that is not a mountpoint (a sandbox or test);
    /// its identity marker is still required.
    #[arg(long, env = "ALLOW_UNMOUNTED_ROOT", value_parser = clap::builder::FalseyValueParser::new())]
    pub allow_unmounted_root: bool,
    /// Another destination directory below the backup root (copies go to
    /// <dest>/<ISO week>/) [default: BACKUP_ROOT/pfsense].
    #[arg(long = "dest", env = "PFSENSE_DEST", value_name = "DIR")]
    pub dest_arg: Option<PathBuf>,
    /// SSH login of the firewall.
    #[arg(
        long,
        env = "PFSENSE_SSH",
        value_name = "USER@HOST",
        default_value = "root@pfsense.invalid"
    )]
    pub ssh: String,
    /// SSH port (default: ssh's own, 22).
    #[arg(short = 'p', long, env = "PFSENSE_SSH_PORT", value_name = "PORT")]
    pub ssh_port: Option<u16>,
    /// SSH private key.
    #[arg(long, env = "PFSENSE_SSH_KEY", value_name = "FILE")]
    pub ssh_key: Option<PathBuf>,
    /// known_hosts file holding the firewall's host key (checked strictly;
    /// an unknown or changed key fails the run).
    #[arg(
        long,
        env = "PFSENSE_KNOWN_HOSTS",
        value_name = "FILE",
        default_value = "/etc/backup-pipeline/pfsense.known_hosts"
    )]
    pub known_hosts: PathBuf,
    /// SSH connect timeout.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = backup_core::cli::parse_duration)]
    pub connect_timeout: Duration,
    /// Path of config.xml on the firewall.
    #[arg(long, value_name = "PATH", default_value = "/cf/conf/config.xml")]
    pub remote_config: String,
    /// Root of the filesystem tar on the firewall.
    #[arg(long, value_name = "PATH", default_value = "/")]
    pub tar_root: String,
    /// URL of the REST API endpoint returning config.xml (https only).
    #[arg(long, env = "PFSENSE_API_URL", value_name = "URL")]
    pub api_url: Option<String>,
    /// File holding the REST API key (sent as X-API-Key).
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Credential name looked up in $CREDENTIALS_DIRECTORY (systemd LoadCredential=)
    /// when --api-key-file is not given.
    #[arg(long, value_name = "NAME", default_value = "pfsense-api-key")]
    pub api_key_name: String,
    /// CA certificate (PEM) to verify the firewall's HTTPS certificate against
    /// (pin its self-signed certificate here). Verification is never skipped.
    #[arg(long, env = "PFSENSE_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Where config.xml comes from.
    #[arg(long, value_enum, default_value = "ssh")]
    pub config_from: Source,
    /// Full filesystem tar: auto = Sundays only.
    #[arg(long, value_enum, default_value = "auto")]
    pub full_tar: FullTar,
    /// Weeks of copies to keep (rotation runs only after a successful run).
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub keep_weeks: usize,
    /// Bound on the whole run.
    #[arg(long, value_name = "DUR", default_value = "15m", value_parser = backup_core::cli::parse_duration)]
    pub timeout: Duration,
    /// Largest config.xml accepted (over SSH or the API): a longer reply is
    /// cut off there and rejected, so memory stays bounded whatever the far
    /// end sends.
    #[arg(long, value_name = "SIZE", default_value = "32MiB", value_parser = backup_core::cli::parse_size)]
    pub max_config_size: u64,
    /// Largest full filesystem tar written (streamed to disk, never held in
    /// memory); a longer stream is stopped and nothing is kept.
    #[arg(long, value_name = "SIZE", default_value = "16GiB", value_parser = backup_core::cli::parse_size)]
    pub max_tar_size: u64,
    /// Warn when a new config is smaller than this fraction of the last good one.
    #[arg(long, value_name = "RATIO", default_value_t = 0.5)]
    pub shrink_ratio: f64,
    /// Ledger of changed files (paths relative to --ledger-root)
    /// [default: LEDGER_ROOT/.changed-files].
    #[arg(long, env = "BACKUP_LEDGER", value_name = "FILE")]
    pub ledger: Option<PathBuf>,
    /// Root the ledger's paths are relative to (default: the parent of --dest).
    #[arg(long, value_name = "DIR")]
    pub ledger_root: Option<PathBuf>,
    /// Print what would be done; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the run's result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Pretend today is this date (tests and replays).
    #[arg(long, hide = true, value_name = "YYYY-MM-DD")]
    pub today: Option<NaiveDate>,
    #[command(flatten)]
    pub common: backup_core::cli::Common,
}

/// The validated plan of a run (what `--dry-run` prints).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    #[serde(serialize_with = "ser_date")]
    pub date: NaiveDate,
    pub week: String,
    pub dest: PathBuf,
    pub config_from: Source,
    pub config_path: PathBuf,
    pub full_tar: bool,
    pub tar_path: Option<PathBuf>,
    pub ledger: PathBuf,
    pub ledger_root: PathBuf,
    pub keep_weeks: usize,
    #[serde(skip)]
    pub ssh: Option<Ssh>,
    #[serde(skip)]
    pub api: Option<Api>,
    #[serde(skip)]
    pub remote_config: String,
    #[serde(skip)]
    pub tar_root: String,
    #[serde(skip)]
    pub timeout: Duration,
    #[serde(skip)]
    pub shrink_ratio: f64,
    #[serde(skip)]
    pub max_config_size: u64,
    #[serde(skip)]
    pub max_tar_size: u64,
}

#[derive(Clone)]
pub struct Api {
    pub url: String,
    pub key: String,
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for Api {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("url", &self.url)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

fn read_api_key(cli: &Cli) -> anyhow::Result<String> {
    let path = match &cli.api_key_file {
        Some(p) => p.clone(),
        None => match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(d) => Path::new(&d).join(&cli.api_key_name),
            None => {
                return Err(Exit::usage(
                    "--config-from api needs --api-key-file FILE or $CREDENTIALS_DIRECTORY (systemd LoadCredential=)",
                ));
            }
        },
    };
    let raw = std::fs::read_to_string(&path).map_err(|e| {
        Exit::usage(format!(
            "cannot read the API key {}: {e}",
            backup_core::log::p(&path)
        ))
    })?;
    let key = raw.trim().to_string();
    if key.is_empty() || key.contains(char::is_whitespace) {
        return Err(Exit::usage(format!(
            "API key file {}: expected one key on one line",
            backup_core::log::p(&path)
        )));
    }
    Ok(key)
}

fn ser_date<S: serde::Serializer>(d: &NaiveDate, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(d)
}

/// Turn arguments into a plan; every bad input is exit 2 with one line.
impl Cli {
    /// Where the weekly copies go: --dest, else BACKUP_ROOT/pfsense.
    pub fn dest(&self) -> PathBuf {
        self.dest_arg
            .clone()
            .unwrap_or_else(|| self.backup_root.join("pfsense"))
    }
}

pub fn plan(cli: &Cli) -> anyhow::Result<Plan> {
    let dest = cli.dest();
    let date = cli
        .today
        .unwrap_or_else(|| chrono::Local::now().date_naive());
    if cli.keep_weeks == 0 {
        return Err(Exit::usage(
            "--keep-weeks 0: expected at least 1 (0 would delete every copy)",
        ));
    }
    if !(cli.shrink_ratio > 0.0 && cli.shrink_ratio < 1.0) {
        return Err(Exit::usage(format!(
            "--shrink-ratio {}: expected a fraction between 0 and 1",
            cli.shrink_ratio
        )));
    }
    if cli.timeout.is_zero() {
        return Err(Exit::usage("--timeout 0: expected a positive duration"));
    }
    if dest.as_os_str().is_empty() || dest.parent().is_none() {
        return Err(Exit::usage(format!(
            "--dest {}: expected a directory below a backup root",
            dest.display()
        )));
    }
    let full_tar = match cli.full_tar {
        FullTar::Always => true,
        FullTar::Never => false,
        FullTar::Auto => date.weekday() == Weekday::Sun,
    };
    let needs_ssh = cli.config_from == Source::Ssh || full_tar;
    let ssh = if needs_ssh {
        let Some((user, host)) = cli.ssh.split_once('@') else {
            return Err(Exit::usage(format!(
                "--ssh {:?}: expected USER@HOST",
                cli.ssh
            )));
        };
        if user.is_empty() || host.is_empty() || cli.ssh.starts_with('-') {
            return Err(Exit::usage(format!(
                "--ssh {:?}: expected USER@HOST",
                cli.ssh
            )));
        }
        if !cli.known_hosts.is_file() {
            return Err(Exit::usage(format!(
                "--known-hosts {}: no such file; record the firewall's host key there first \
                 (host keys are never accepted blindly)",
                backup_core::log::p(&cli.known_hosts)
            )));
        }
        if let Some(k) = &cli.ssh_key
            && !k.is_file()
        {
            return Err(Exit::usage(format!(
                "--ssh-key {}: no such file",
                backup_core::log::p(k)
            )));
        }
        Some(Ssh {
            target: cli.ssh.clone(),
            port: cli.ssh_port,
            key: cli.ssh_key.clone(),
            known_hosts: cli.known_hosts.clone(),
            connect_timeout: cli.connect_timeout.min(cli.timeout),
            alive_interval: Duration::from_secs(5),
        })
    } else {
        None
    };
    let api = if cli.config_from == Source::Api {
        let Some(url) = &cli.api_url else {
            return Err(Exit::usage("--config-from api needs --api-url URL"));
        };
        if !url.starts_with("https://") {
            return Err(Exit::usage(format!(
                "--api-url {url}: expected an https:// URL (the API key must not travel in clear)"
            )));
        }
        if let Some(ca) = &cli.ca_file
            && !ca.is_file()
        {
            return Err(Exit::usage(format!(
                "--ca-file {}: no such file",
                backup_core::log::p(ca)
            )));
        }
        Some(Api {
            url: url.clone(),
            key: read_api_key(cli)?,
            ca_file: cli.ca_file.clone(),
        })
    } else {
        None
    };
    let ledger_root = match &cli.ledger_root {
        Some(r) => r.clone(),
        None => dest
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from(".")),
    };
    let ledger = cli
        .ledger
        .clone()
        .unwrap_or_else(|| ledger_root.join(".changed-files"));
    if !dest.starts_with(&ledger_root) {
        return Err(Exit::usage(format!(
            "--dest {} is not below --ledger-root {}",
            dest.display(),
            ledger_root.display()
        )));
    }
    let week = backup_core::weeks::week_key(date);
    let wdir = dest.join(&week);
    Ok(Plan {
        date,
        config_path: wdir.join(layout::config_name(date)),
        tar_path: full_tar.then(|| wdir.join(layout::tar_name(date))),
        week,
        dest: dest.clone(),
        config_from: cli.config_from,
        full_tar,
        ledger,
        ledger_root,
        keep_weeks: cli.keep_weeks,
        ssh,
        api,
        remote_config: cli.remote_config.clone(),
        tar_root: cli.tar_root.clone(),
        timeout: cli.timeout,
        shrink_ratio: cli.shrink_ratio,
        max_config_size: cli.max_config_size,
        max_tar_size: cli.max_tar_size,
    })
}

/// Result of the config step.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ConfigResult {
    pub ok: bool,
    pub path: Option<PathBuf>,
    pub bytes: u64,
    pub previous: Option<PathBuf>,
    pub previous_bytes: u64,
    pub changed: bool,
    pub shrink_warning: bool,
    pub error: Option<String>,
}

/// Result of the full-tar step.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct TarResult {
    pub wanted: bool,
    pub ok: bool,
    pub path: Option<PathBuf>,
    pub bytes: u64,
    pub entries: u64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    #[serde(serialize_with = "ser_date")]
    pub date: NaiveDate,
    pub week: String,
    pub config: ConfigResult,
    pub full_tar: TarResult,
    pub rotated: Vec<layout::Removal>,
    pub ledger_entries: usize,
    pub exit_code: i32,
}

/// Time left of the run's bound, or an error once it is spent.
struct Deadline {
    end: Instant,
    total: Duration,
}

impl Deadline {
    fn left(&self) -> Result<Duration, String> {
        let left = self.end.saturating_duration_since(Instant::now());
        if left < Duration::from_millis(200) {
            return Err(format!(
                "the run's --timeout of {}s is spent",
                self.total.as_secs()
            ));
        }
        Ok(left)
    }
}

fn metrics_of(r: &Report) -> Metrics {
    let mut m = Metrics::new();
    let b = |v: bool| if v { 1.0 } else { 0.0 };
    let mut g = |name: &str, help: &str, v: f64| {
        // Names are constants; a bad one is a programming error caught by the tests.
        let _ = m.gauge(name, help, v);
    };
    g(
        "pfsense_config_ok",
        "1 when a valid config.xml was pulled this run",
        b(r.config.ok),
    );
    g(
        "pfsense_config_bytes",
        "Size of the config.xml pulled this run (0 when none)",
        r.config.bytes as f64,
    );
    g(
        "pfsense_config_previous_bytes",
        "Size of the last good config.xml before this run (0 when none)",
        r.config.previous_bytes as f64,
    );
    g(
        "pfsense_config_changed",
        "1 when the pulled config.xml differs from the last good copy",
        b(r.config.changed),
    );
    g(
        "pfsense_config_shrink_warning",
        "1 when the pulled config.xml is much smaller than the last good copy",
        b(r.config.shrink_warning),
    );
    g(
        "pfsense_full_tar_wanted",
        "1 when this run was due a full filesystem tar",
        b(r.full_tar.wanted),
    );
    g(
        "pfsense_full_tar_taken",
        "1 when a checked full filesystem tar was stored this run",
        b(r.full_tar.ok),
    );
    g(
        "pfsense_full_tar_bytes",
        "Size of the full tar stored this run (0 when none)",
        r.full_tar.bytes as f64,
    );
    g(
        "pfsense_rotated_files",
        "Copies and week directories removed by rotation this run",
        r.rotated.len() as f64,
    );
    m
}

/// The whole run: lock, pull, check, store, record, rotate.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    cli.common.init_logging();
    let p = plan(&cli)?;
    // Contract 13, dry runs included (a plan read from a bare directory
    // misleads): --dest is on the initialised backup disk, found upwards
    // on its filesystem. Re-checked before every write and ledger line.
    let guard = match RootGuard::find(&p.dest)
        .and_then(|g| g.require_mounted(cli.allow_unmounted_root).map(|()| g))
    {
        Ok(g) => g,
        Err(e) => {
            if !cli.dry_run {
                write_failure_metrics(&cli);
            }
            return Err(e);
        }
    };
    if cli.dry_run {
        return dry_run(&p, cli.json);
    }
    let _lock = backup_core::lock::acquire(TOOL)?;
    let deadline = Deadline {
        end: Instant::now() + p.timeout,
        total: p.timeout,
    };
    if !p.ledger_root.is_dir() {
        let e = Exit::refused(format!(
            "backup root {} does not exist (is the backup disk mounted?)",
            backup_core::log::p(&p.ledger_root)
        ));
        write_failure_metrics(&cli);
        return Err(e);
    }
    let mut report = Report {
        date: p.date,
        week: p.week.clone(),
        config: ConfigResult::default(),
        full_tar: TarResult {
            wanted: p.full_tar,
            ..Default::default()
        },
        rotated: Vec::new(),
        ledger_entries: 0,
        exit_code: 0,
    };
    let outcome = pull(&p, &guard, &deadline, &mut report);
    let code = match &outcome {
        Ok(c) => *c,
        Err(e) => backup_core::exit::code_of(e),
    };
    report.exit_code = code.code();
    cli.common.write_metrics(&metrics_of(&report));
    if cli.json {
        backup_core::out::ignore_closed(backup_core::outln!(
            "{}",
            serde_json::to_string_pretty(&report).context("serialising the report")?
        ))?;
    }
    outcome
}

fn write_failure_metrics(cli: &Cli) {
    let r = Report {
        date: NaiveDate::MIN,
        week: String::new(),
        config: ConfigResult::default(),
        full_tar: TarResult::default(),
        rotated: Vec::new(),
        ledger_entries: 0,
        exit_code: 5,
    };
    cli.common.write_metrics(&metrics_of(&r));
}

fn dry_run(p: &Plan, json: bool) -> anyhow::Result<ExitCode> {
    let scan = layout::scan(&p.dest)?;
    let rotation = layout::plan_rotation(&p.dest, &scan, p.keep_weeks, p.date)?;
    if json {
        let v = serde_json::json!({ "plan": p, "rotation_after_success": rotation });
        backup_core::outln!("{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(ExitCode::Ok);
    }
    backup_core::outln!("date {} (week {})", p.date, p.week)?;
    match (&p.config_from, &p.ssh, &p.api) {
        (Source::Ssh, Some(ssh), _) => backup_core::outln!(
            "config: {} > {}",
            ssh.command(&fetch::cat_command(&p.remote_config), p.timeout)
                .display(),
            p.config_path.display()
        )?,
        (Source::Api, _, Some(api)) => backup_core::outln!(
            "config: GET {} (X-API-Key from file, CA {}) > {}",
            api.url,
            api.ca_file
                .as_ref()
                .map(|c| c.display().to_string())
                .unwrap_or_else(|| "the built-in Mozilla roots".into()),
            p.config_path.display()
        )?,
        _ => {}
    }
    match (&p.tar_path, &p.ssh) {
        (Some(t), Some(ssh)) => backup_core::outln!(
            "full tar: {} > {}",
            ssh.command(&fetch::tar_command(&p.tar_root), p.timeout)
                .display(),
            t.display()
        )?,
        _ => backup_core::outln!("full tar: not due (taken on Sundays with --full-tar auto)")?,
    }
    backup_core::outln!("ledger: {}", p.ledger.display())?;
    for r in &rotation {
        backup_core::outln!(
            "rotate after success: remove {} ({})",
            r.path.display(),
            r.reason
        )?;
    }
    Ok(ExitCode::Ok)
}

fn rel_to(root: &Path, path: &Path) -> PathBuf {
    path.strip_prefix(root).unwrap_or(path).to_path_buf()
}

/// Put a file that just got its final name into the ledger. Done per file,
/// at once, not for all files at the end of the run: a run stopped during
/// the tar (SIGTERM from systemd's stop or TimeoutStartSec=, SIGKILL) left
/// today's config.xml on the disk and out of the ledger, and when the next
/// run is another day nothing ever ledgers it, so the offsite copy never
/// gets it.
fn ledger_now(p: &Plan, file: &Path) -> anyhow::Result<usize> {
    let rel = rel_to(&p.ledger_root, file);
    Ledger::new(&p.ledger, PathKind::Relative)
        .append_paths([rel.as_path()])
        .with_context(|| format!("cannot append to the ledger {}", p.ledger.display()))
}

fn pull(
    p: &Plan,
    guard: &RootGuard,
    deadline: &Deadline,
    report: &mut Report,
) -> anyhow::Result<ExitCode> {
    let still_ours = || guard.check().map_err(|e| Exit::err(ExitCode::Failed, e));
    // A killed run may have left partial files; they never count as copies.
    let scan = layout::scan(&p.dest)?;
    for part in &scan.partials {
        warn!(
            "removing {} left by an interrupted run",
            backup_core::log::p(part)
        );
        let _ = std::fs::remove_file(part);
    }
    let previous = layout::newest_config(&scan.items).cloned();
    // Reported on failure too: the size of the copy that stays the newest.
    if let Some(prev) = &previous {
        report.config.previous = Some(prev.path.clone());
        report.config.previous_bytes = std::fs::metadata(&prev.path).map(|m| m.len()).unwrap_or(0);
    }
    let wdir = p.dest.join(&p.week);
    let mut failures: Vec<String> = Vec::new();

    // 1. config.xml: fetch, validate, and only then write.
    let fetched = deadline
        .left()
        .map_err(fetch::Failure::from)
        .and_then(|left| match p.config_from {
            Source::Ssh => match &p.ssh {
                Some(ssh) => fetch::config_over_ssh(ssh, &p.remote_config, left, p.max_config_size),
                None => Err(String::from("no SSH settings").into()),
            },
            Source::Api => match &p.api {
                Some(api) => fetch::config_over_api(
                    &api.url,
                    &api.key,
                    api.ca_file.as_deref(),
                    left,
                    p.max_config_size,
                )
                .map_err(fetch::Failure::from),
                None => Err(String::from("no API settings").into()),
            },
        });
    let checked = fetched.and_then(|body| {
        validate::check_config(&body)?;
        Ok(body)
    });
    match checked {
        Ok(body) => {
            // Read before writing: on a second run the same day the last
            // good copy is the file about to be replaced.
            let old = previous.as_ref().and_then(|i| std::fs::read(&i.path).ok());
            still_ours()?;
            std::fs::create_dir_all(&wdir)
                .with_context(|| format!("cannot create {}", wdir.display()))?;
            fetch::write_private_atomic(&p.config_path, &body)
                .with_context(|| format!("cannot write {}", p.config_path.display()))?;
            let c = &mut report.config;
            c.ok = true;
            c.bytes = body.len() as u64;
            c.path = Some(p.config_path.clone());
            match (&old, &previous) {
                (Some(old), Some(prev)) => {
                    c.previous_bytes = old.len() as u64;
                    c.changed = *old != body;
                    if (body.len() as f64) < (old.len() as f64) * p.shrink_ratio {
                        c.shrink_warning = true;
                        warn!(
                            "config.xml is {} bytes, much smaller than the last good copy {} ({} bytes): check the firewall's configuration",
                            body.len(),
                            backup_core::log::p(&prev.path),
                            old.len()
                        );
                    }
                }
                _ => c.changed = true,
            }
            info!(
                "config.xml: {} bytes -> {}{}",
                body.len(),
                backup_core::log::p(&p.config_path),
                if report.config.changed {
                    ""
                } else {
                    " (unchanged)"
                }
            );
            still_ours()?;
            report.ledger_entries += ledger_now(p, &p.config_path)?;
        }
        Err(fetch::Failure {
            reason,
            absent: true,
        }) => {
            // ssh is not installed: a guard, not a firewall problem (exit 5).
            report.config.error = Some(reason.clone());
            return Err(Exit::refused(reason));
        }
        Err(fetch::Failure { reason, .. }) => {
            let src = match p.config_from {
                Source::Ssh => format!(
                    "{}:{}",
                    p.ssh.as_ref().map(|s| s.target.as_str()).unwrap_or("?"),
                    p.remote_config
                ),
                Source::Api => p.api.as_ref().map(|a| a.url.clone()).unwrap_or_default(),
            };
            let msg = format!("config.xml from {src} rejected: {reason}");
            // The reason itself ends the run as its one error line.
            match &previous {
                Some(i) => warn!(
                    "nothing written; the last good copy {} stays the newest",
                    backup_core::log::p(&i.path)
                ),
                None => warn!("nothing written; there is no good copy yet"),
            }
            report.config.error = Some(reason);
            failures.push(msg);
        }
    }

    // 2. Full tar (Sundays with auto): .partial, checked, then renamed.
    if let (Some(tar_path), Some(ssh)) = (&p.tar_path, &p.ssh) {
        let res = deadline
            .left()
            .map_err(fetch::Failure::from)
            .and_then(|left| {
                guard.check()?;
                std::fs::create_dir_all(&wdir)
                    .map_err(|e| format!("cannot create {}: {e}", wdir.display()))?;
                let partial = wdir.join(layout::partial_name(&layout::tar_name(p.date)));
                fetch::full_tar(
                    ssh,
                    &p.tar_root,
                    &partial,
                    tar_path,
                    left,
                    p.max_tar_size,
                    &|| guard.check(),
                )
            });
        match res {
            Ok(t) => {
                info!(
                    "full tar: {} bytes, {} entries -> {}",
                    t.bytes,
                    t.entries,
                    backup_core::log::p(tar_path)
                );
                report.full_tar.ok = true;
                report.full_tar.bytes = t.bytes;
                report.full_tar.entries = t.entries;
                report.full_tar.path = Some(tar_path.clone());
                still_ours()?;
                report.ledger_entries += ledger_now(p, tar_path)?;
            }
            Err(fetch::Failure {
                reason,
                absent: true,
            }) => {
                report.full_tar.error = Some(reason.clone());
                return Err(Exit::refused(reason));
            }
            Err(fetch::Failure { reason, .. }) => {
                let msg = format!("full tar failed: {reason}");
                warn!(
                    "no full tar kept: nothing under {} or beside it",
                    backup_core::log::p(tar_path)
                );
                report.full_tar.error = Some(reason);
                failures.push(msg);
            }
        }
    } else {
        info!("full tar: not due today ({})", p.date.weekday());
    }

    // 3. Rotation, only after a fully successful run.
    if failures.is_empty() {
        still_ours()?;
        let scan = layout::scan(&p.dest)?;
        let plan = layout::plan_rotation(&p.dest, &scan, p.keep_weeks, p.date)?;
        for r in &plan {
            info!(
                "rotation: removing {} ({})",
                backup_core::log::p(&r.path),
                r.reason
            );
        }
        for e in layout::apply_rotation(&plan) {
            warn!("rotation: {e}");
        }
        report.rotated = plan;
        return Ok(ExitCode::Ok);
    }
    info!("rotation skipped: the run did not fully succeed");
    if report.config.ok {
        Err(Exit::partial(failures.join("; ")))
    } else {
        Err(Exit::err(ExitCode::Failed, failures.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn metric_names_are_valid() {
        let r = Report {
            date: NaiveDate::MIN,
            week: String::new(),
            config: ConfigResult::default(),
            full_tar: TarResult::default(),
            rotated: Vec::new(),
            ledger_entries: 0,
            exit_code: 0,
        };
        let text = metrics_of(&r).render();
        assert_eq!(
            text.lines().filter(|l| l.starts_with("# TYPE")).count(),
            9,
            "{text}"
        );
        let back = Metrics::parse(&text, "x").expect("parse");
        assert_eq!(back.get("pfsense_full_tar_taken"), Some(0.0));
    }

    #[test]
    fn sundays_decide_the_full_tar() {
        let kh = tempfile::NamedTempFile::new().expect("tmp");
        let args = |d: &str, mode: &str| {
            Cli::parse_from([
                "pfsense-pull",
                "--dest",
                "/mnt/backup/pfsense",
                "--known-hosts",
                kh.path().to_str().expect("utf8"),
                "--full-tar",
                mode,
                "--today",
                d,
            ])
        };
        // 2026-11-29 is a Sunday.
        assert!(plan(&args("2026-11-29", "auto")).expect("plan").full_tar);
        assert!(!plan(&args("2026-11-28", "auto")).expect("plan").full_tar);
        assert!(plan(&args("2026-11-28", "always")).expect("plan").full_tar);
        assert!(!plan(&args("2026-11-29", "never")).expect("plan").full_tar);
        let p = plan(&args("2026-11-29", "auto")).expect("plan");
        assert_eq!(
            p.config_path,
            Path::new("/mnt/backup/pfsense/2026-W48/config-20261129.xml")
        );
        assert_eq!(p.ledger, Path::new("/mnt/backup/.changed-files"));
    }
}
