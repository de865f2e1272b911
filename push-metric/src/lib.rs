//! `push-metric`: forward the result of a run to a Prometheus Pushgateway
//! (HTTP POST, so a failure push never erases the last success timestamp)
//! and/or to a node_exporter textfile directory.
//!
//! The body is: the series of each `--file`, each `--metric`, then
//! `P_last_run_timestamp`, `P_last_status` and, only when the status is 0,
//! `P_last_success_timestamp`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use backup_core::exit::{EXIT_CODE_HELP, Exit, ExitCode};
use backup_core::metrics::{Kind, Metrics, MetricsError, valid_label_name, valid_metric_name};
use backup_core::{debug, info, warn};
use base64::Engine as _;
use clap::Parser;

/// Placeholder shown in the docs; never contacted by default (no default URL).
pub const GATEWAY_EXAMPLE: &str = "http://pushgateway.invalid:9091";

const STATUS_HELP: &str = "Status metric (P_last_status):
  0  the run succeeded (tool exit 0)
  1  the run failed: any non-zero exit of the tool, including 3 (partial),
     4 (busy: another run held the lock, so this one did nothing) and 5 (refused)
  2  the run was aborted: killed by a signal (also systemctl stop), timed out,
     dumped core, watchdog

--from-systemd reads $SERVICE_RESULT, $EXIT_CODE and $EXIT_STATUS, which systemd
sets for ExecStopPost= commands (systemd.exec(5)).";

#[derive(Debug, Parser)]
#[command(
    name = "push-metric",
    version,
    about = "Push a backup run's result to a Prometheus Pushgateway (HTTP POST) or a textfile directory",
    after_help = format!("{STATUS_HELP}\n\nExit codes of push-metric: 0 pushed (or written), 1 not pushed (one-line reason), \
                          2 bad input (nothing pushed).\n\nThe tools' exit codes, as seen in $EXIT_STATUS:\n{}",
                          EXIT_CODE_HELP.trim_start_matches("Exit codes:\n"))
)]
#[command(group(clap::ArgGroup::new("result").required(true).args(["status", "from_systemd"])))]
pub struct Cli {
    /// Job name: the Pushgateway grouping key `job` (e.g. nfs-mirror).
    #[arg(long, value_name = "JOB")]
    pub job: String,
    /// Prefix of the added metrics (default: the job with `-` turned into `_`).
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,
    /// Status of the run: 0 ok, 1 failed, 2 aborted.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=2))]
    pub status: Option<u8>,
    /// Derive the status from systemd's $SERVICE_RESULT/$EXIT_CODE/$EXIT_STATUS (ExecStopPost=).
    #[arg(long)]
    pub from_systemd: bool,
    /// A metrics file (Prometheus text format) written by the tool; may be repeated.
    /// A missing file is a warning (a killed run may not have written it).
    #[arg(long = "file", value_name = "F")]
    pub files: Vec<PathBuf>,
    /// An extra sample, NAME=VALUE (NAME may carry labels: 'x{a="b"}=1'); may be repeated.
    #[arg(long = "metric", value_name = "NAME=VALUE")]
    pub metrics: Vec<String>,
    /// An extra grouping label KEY=VALUE (after job); may be repeated.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Pushgateway base URL, e.g. http://pushgateway.invalid:9091.
    #[arg(long, env = "PUSHGATEWAY_URL", value_name = "URL")]
    pub gateway: Option<String>,
    /// Also (or, without a gateway, only) write DIR/JOB.prom atomically for
    /// node_exporter's textfile collector.
    #[arg(long, value_name = "DIR")]
    pub textfile_dir: Option<PathBuf>,
    /// Give up pushing after this long, retries included (e.g. 10, 30s).
    #[arg(long, value_name = "SECS", default_value = "10s", value_parser = backup_core::cli::parse_duration)]
    pub timeout: Duration,
    /// Print the URL and the exact body; send and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print every effective setting, its value and where it came from
    /// (flag, env, configuration file:line, default), then exit 0.
    #[arg(long)]
    pub show_config: bool,
    /// Only warnings and errors on stderr.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub quiet: u8,
    /// Debug output on stderr.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// The status metric from systemd's environment for `ExecStopPost=`
/// (systemd.exec(5)). Returns the status and, when the variables are
/// missing or unknown, a warning to print.
pub fn status_from_systemd(
    service_result: Option<&str>,
    exit_code: Option<&str>,
    exit_status: Option<&str>,
) -> (u8, Option<String>) {
    // A number in EXIT_STATUS is the tool's exit code: non-zero is a failed
    // run (1) even when the unit counts it as success (SuccessExitStatus=3).
    let numeric = exit_status.and_then(|s| s.trim().parse::<i64>().ok());
    let exited_nonzero = exit_code == Some("exited") && numeric.is_some_and(|n| n != 0);
    // systemd counts death by SIGTERM as a clean end (SERVICE_RESULT=success,
    // e.g. `systemctl stop` during a run); for a backup run it is an abort.
    if matches!(exit_code, Some("killed" | "dumped")) {
        return (2, None);
    }
    match service_result {
        Some("success") if exited_nonzero => (1, None),
        Some("success") => (0, None),
        Some("signal" | "timeout" | "core-dump" | "watchdog" | "oom-kill") => (2, None),
        Some("exit-code") => (1, None),
        Some(other) => (
            1,
            Some(format!(
                "SERVICE_RESULT={other:?} is not a run result push-metric knows; reporting status 1"
            )),
        ),
        None => match (exit_code, numeric) {
            (Some("exited"), Some(0)) => (0, None),
            (Some("exited"), Some(_)) => (1, None),
            (Some("killed" | "dumped"), _) => (2, None),
            _ => (
                1,
                Some(
                    "--from-systemd: $SERVICE_RESULT, $EXIT_CODE and $EXIT_STATUS are not set \
                     (not run from ExecStopPost=?); reporting status 1"
                        .into(),
                ),
            ),
        },
    }
}

/// A label value in a Pushgateway URL path: plain when it is made of
/// URL-unreserved characters, else the `@base64` form (URL-safe alphabet),
/// which is the only way a value may contain `/`.
pub fn path_pair(name: &str, value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    if plain {
        format!("{name}/{value}")
    } else if value.is_empty() {
        // The Pushgateway's spelling of an empty value.
        format!("{name}@base64/=")
    } else {
        let enc = base64::engine::general_purpose::URL_SAFE.encode(value.as_bytes());
        format!("{name}@base64/{enc}")
    }
}

/// `URL/metrics/job/JOB[/LABEL/VALUE...]`.
pub fn push_url(gateway: &str, job: &str, labels: &[(String, String)]) -> String {
    let mut url = gateway.trim_end_matches('/').to_string();
    url.push_str("/metrics/");
    url.push_str(&path_pair("job", job));
    for (k, v) in labels {
        url.push('/');
        url.push_str(&path_pair(k, v));
    }
    url
}

fn parse_label(s: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| Exit::usage(format!("--label {s:?}: expected KEY=VALUE")))?;
    if !valid_label_name(k) || k == "job" {
        return Err(Exit::usage(format!(
            "--label {s:?}: invalid label name {k:?}: expected [a-zA-Z_][a-zA-Z0-9_]*, not job"
        )));
    }
    Ok((k.to_string(), v.to_string()))
}

fn parse_metric_arg(s: &str) -> anyhow::Result<Metrics> {
    // Split at the last '=' so a label value may contain '='.
    let (name, value) = s
        .rsplit_once('=')
        .ok_or_else(|| Exit::usage(format!("--metric {s:?}: expected NAME=VALUE")))?;
    Metrics::parse(&format!("{name} {value}\n"), "--metric").map_err(|e| {
        let msg = match e {
            MetricsError::Parse { msg, .. } => msg,
            other => other.to_string(),
        };
        Exit::usage(format!("--metric {s:?}: {msg}"))
    })
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as f64)
        .unwrap_or(0.0)
}

/// Build the body: files, `--metric`s, then the run metrics.
/// `read_file` errors are usage errors (exit 2): nothing is pushed.
pub fn build_body(
    files: &[PathBuf],
    metric_args: &[String],
    prefix: &str,
    status: u8,
    now: f64,
) -> anyhow::Result<Metrics> {
    let mut body = Metrics::new();
    for f in files {
        match Metrics::read(f) {
            Ok(m) => body.extend(&m).map_err(|e| Exit::usage(e.to_string()))?,
            Err(MetricsError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                // A run killed before it wrote its figures: its status still counts.
                warn!(
                    "{}: no such metrics file; pushing the run status only",
                    backup_core::log::p(f)
                );
            }
            Err(e @ MetricsError::Io { .. }) => {
                return Err(Exit::usage(format!("cannot read metrics file {e}")));
            }
            Err(e) => return Err(Exit::usage(format!("malformed metrics file: {e}"))),
        }
    }
    for a in metric_args {
        let m = parse_metric_arg(a)?;
        body.extend(&m).map_err(|e| Exit::usage(e.to_string()))?;
    }
    let name = |s: &str| format!("{prefix}_{s}");
    // The run metrics come from --status/--from-systemd and are always
    // gauges (a series typed differently in another push is refused by the
    // gateway), so a same-named series from a file or --metric gives way.
    let reserved = [
        name("last_run_timestamp"),
        name("last_status"),
        name("last_success_timestamp"),
    ];
    let mut body = without(&body, &reserved)?;
    body.sample(
        &name("last_run_timestamp"),
        "Unix time the last run ended",
        Kind::Gauge,
        &[],
        now,
    )?;
    body.sample(
        &name("last_status"),
        "Result of the last run: 0 ok, 1 failed, 2 aborted (killed or timed out)",
        Kind::Gauge,
        &[],
        f64::from(status),
    )?;
    if status == 0 {
        body.sample(
            &name("last_success_timestamp"),
            "Unix time the last successful run ended",
            Kind::Gauge,
            &[],
            now,
        )?;
    }
    Ok(body)
}

/// A copy of `m` without the families named in `drop`.
fn without(m: &Metrics, drop: &[String]) -> Result<Metrics, MetricsError> {
    let mut out = Metrics::new();
    for f in m.families() {
        if drop.contains(&f.name) {
            debug!("{}: replaced by the run status metrics", f.name);
            continue;
        }
        for s in &f.samples {
            let l: Vec<(&str, &str)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            out.sample(&f.name, &f.help, f.kind, &l, s.value)?;
        }
    }
    Ok(out)
}

/// The textfile for node_exporter: like a POST, the families in `body`
/// replace those of the same name in the previous file and every other
/// family is kept, so a failure never erases the last success timestamp.
/// Grouping labels become labels of every sample (no `job` label: the
/// node_exporter scrape has its own).
pub fn textfile_content(
    previous: Option<&Metrics>,
    body: &Metrics,
    labels: &[(String, String)],
) -> anyhow::Result<Metrics> {
    let mut out = Metrics::new();
    let add = |out: &mut Metrics, m: &Metrics, skip: &dyn Fn(&str) -> bool| {
        for f in m.families() {
            if skip(&f.name) {
                continue;
            }
            for s in &f.samples {
                let mut l: Vec<(&str, &str)> = s
                    .labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                for (k, v) in labels {
                    if !s.labels.contains_key(k) {
                        l.push((k, v));
                    }
                }
                out.sample(&f.name, &f.help, f.kind, &l, s.value)?;
            }
        }
        Ok::<(), MetricsError>(())
    };
    if let Some(prev) = previous {
        let in_body = |n: &str| body.families().iter().any(|f| f.name == n);
        add(&mut out, prev, &in_body)?;
    }
    add(&mut out, body, &|_| false)?;
    Ok(out)
}

/// Why a push attempt failed, and whether another attempt may help.
struct PushError {
    msg: String,
    retry: bool,
}

fn post_once(agent: &ureq::Agent, url: &str, body: &str, left: Duration) -> Result<(), PushError> {
    let res = agent
        .post(url)
        .config()
        .timeout_global(Some(left))
        .build()
        .header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        .send(body);
    match res {
        Ok(mut resp) => {
            let code = resp.status().as_u16();
            if (200..300).contains(&code) {
                return Ok(());
            }
            let text = resp
                .body_mut()
                .read_to_string()
                .unwrap_or_default()
                .trim()
                .replace('\n', " ");
            // Typically a name that another group holds with another TYPE
            // (e.g. untyped series left by the old shell scripts).
            let hint = if text.contains("inconsistent with existing metrics") {
                " (the same metric name has another type in another group: \
                 delete the stale group with curl -X DELETE <gateway>/metrics/job/<job>)"
            } else {
                ""
            };
            Err(PushError {
                msg: format!("HTTP {code}: {text}{hint}"),
                // The gateway refused this body (400): sending it again won't help.
                retry: code >= 500 || code == 429,
            })
        }
        Err(e) => Err(PushError {
            msg: e.to_string(),
            retry: true,
        }),
    }
}

/// POST `body` to `url`, retrying with backoff until `timeout` has passed.
pub fn push(url: &str, body: &str, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(timeout.min(Duration::from_secs(5))))
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        // A redirect is never a push: ureq would follow a 301/302 with a
        // GET, and a 200 for that page would pass for a pushed result.
        .max_redirects(0)
        .build()
        .into();
    let mut backoff = Duration::from_millis(200);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let left = timeout.saturating_sub(start.elapsed());
        let err = match post_once(&agent, url, body, left.max(Duration::from_millis(1))) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        debug!("push attempt {attempts} to {url} failed: {}", err.msg);
        let left = timeout.saturating_sub(start.elapsed());
        if !err.retry || left <= backoff {
            return Err(anyhow!(
                "not pushed to {url} after {attempts} attempt(s) in {:.1}s: {}",
                start.elapsed().as_secs_f64(),
                err.msg
            ));
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Run push-metric; the exit code is 0 pushed/written, 1 not, 2 bad input.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    backup_core::log::init(cli.quiet, cli.verbose);
    if cli.timeout.is_zero() {
        return Err(Exit::usage("--timeout: must be more than 0 seconds"));
    }
    if cli.job.is_empty() {
        return Err(Exit::usage("--job: must not be empty"));
    }
    let prefix = cli
        .prefix
        .clone()
        .unwrap_or_else(|| cli.job.replace('-', "_"));
    if !valid_metric_name(&prefix) {
        return Err(Exit::usage(format!(
            "--prefix {prefix:?}: expected a metric name prefix [a-zA-Z_:][a-zA-Z0-9_:]*"
        )));
    }
    let labels = cli
        .labels
        .iter()
        .map(|l| parse_label(l))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let gateway = cli.gateway.as_deref().filter(|g| !g.is_empty());
    if let Some(g) = gateway
        && !(g.starts_with("http://") || g.starts_with("https://"))
    {
        return Err(Exit::usage(format!(
            "--gateway {g:?}: expected an http:// or https:// URL such as {GATEWAY_EXAMPLE}"
        )));
    }
    if gateway.is_none() && cli.textfile_dir.is_none() {
        return Err(Exit::usage(format!(
            "nowhere to send the metrics: pass --gateway URL (or set PUSHGATEWAY_URL, e.g. {GATEWAY_EXAMPLE}) or --textfile-dir DIR"
        )));
    }
    let status = match cli.status {
        Some(s) => s,
        None => {
            let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
            let (sr, ec, es) = (var("SERVICE_RESULT"), var("EXIT_CODE"), var("EXIT_STATUS"));
            let (s, warning) = status_from_systemd(sr.as_deref(), ec.as_deref(), es.as_deref());
            if let Some(w) = warning {
                warn!("{w}");
            }
            debug!(
                "systemd: SERVICE_RESULT={sr:?} EXIT_CODE={ec:?} EXIT_STATUS={es:?} -> status {s}"
            );
            s
        }
    };
    let body = build_body(&cli.files, &cli.metrics, &prefix, status, now_secs())?;
    let text = body.render();
    let url = gateway.map(|g| push_url(g, &cli.job, &labels));
    let textfile = cli
        .textfile_dir
        .as_ref()
        .map(|d| d.join(format!("{}.prom", cli.job.replace('/', "_"))));

    if cli.dry_run {
        if let Some(u) = &url {
            backup_core::outln!("POST {u}")?;
        }
        if let Some(t) = &textfile {
            backup_core::outln!("WRITE {}", t.display())?;
        }
        backup_core::outln!()?;
        backup_core::out!("{text}")?;
        return Ok(ExitCode::Ok);
    }

    let mut failed = None;
    if let Some(path) = &textfile {
        if let Err(e) = write_textfile(path, &body, &labels) {
            failed = Some(e);
        } else {
            info!("wrote {} (status {status})", backup_core::log::p(path));
        }
    }
    if let Some(u) = &url {
        match push(u, &text, cli.timeout) {
            Ok(()) => info!("pushed job {} status {status} to {u}", cli.job),
            Err(e) => return Err(e),
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(ExitCode::Ok),
    }
}

fn write_textfile(path: &Path, body: &Metrics, labels: &[(String, String)]) -> anyhow::Result<()> {
    let previous = match Metrics::read(path) {
        Ok(m) => Some(m),
        Err(MetricsError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            None
        }
        Err(e) => {
            // A damaged old file must not block this run's result.
            warn!("ignoring the previous textfile: {e}");
            None
        }
    };
    let out = textfile_content(previous.as_ref(), body, labels)?;
    backup_core::fsutil::write_atomic(path, out.render().as_bytes())
        .with_context(|| format!("cannot write {}", backup_core::log::p(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_results_map_to_status() {
        let s = |r: Option<&str>, c: Option<&str>, e: Option<&str>| status_from_systemd(r, c, e).0;
        assert_eq!(s(Some("success"), Some("exited"), Some("0")), 0);
        assert_eq!(s(Some("exit-code"), Some("exited"), Some("1")), 1);
        // Partial (3) and busy (4) are failed runs for the status metric.
        assert_eq!(s(Some("exit-code"), Some("exited"), Some("3")), 1);
        assert_eq!(s(Some("exit-code"), Some("exited"), Some("4")), 1);
        // SuccessExitStatus=3 makes systemd say success; the run still failed partly.
        assert_eq!(s(Some("success"), Some("exited"), Some("3")), 1);
        assert_eq!(s(Some("signal"), Some("killed"), Some("KILL")), 2);
        assert_eq!(s(Some("timeout"), Some("killed"), Some("TERM")), 2);
        assert_eq!(s(Some("core-dump"), Some("dumped"), Some("SEGV")), 2);
        assert_eq!(s(Some("watchdog"), Some("killed"), Some("ABRT")), 2);
        assert_eq!(s(None, Some("killed"), Some("TERM")), 2);
        // `systemctl stop` mid-run: systemd says success, the run was cut short.
        assert_eq!(s(Some("success"), Some("killed"), Some("TERM")), 2);
        assert_eq!(s(None, Some("exited"), Some("0")), 0);
        let (st, w) = status_from_systemd(None, None, None);
        assert_eq!(st, 1);
        assert!(w.is_some());
        let (st, w) = status_from_systemd(Some("resources"), None, None);
        assert_eq!(st, 1);
        assert!(w.is_some());
    }

    #[test]
    fn url_uses_base64_for_slashes_and_odd_values() {
        assert_eq!(
            push_url("http://g:9091/", "nfs-mirror", &[]),
            "http://g:9091/metrics/job/nfs-mirror"
        );
        assert_eq!(
            push_url(
                "http://g:9091",
                "j",
                &[
                    ("path".into(), "/srv/nfs".into()),
                    ("e".into(), String::new())
                ]
            ),
            "http://g:9091/metrics/job/j/path@base64/L3Nydi9uZnM=/e@base64/="
        );
        // URL-safe alphabet: '-' and '_' instead of '+' and '/'.
        assert_eq!(path_pair("l", "??>"), "l@base64/Pz8-");
        assert_eq!(path_pair("l", "???"), "l@base64/Pz8_");
    }

    #[test]
    fn body_has_run_metrics_and_success_only_on_zero() {
        let b = build_body(&[], &["x_bytes=5".into()], "job_x", 0, 100.0).expect("body");
        assert_eq!(b.get("x_bytes"), Some(5.0));
        assert_eq!(b.get("job_x_last_status"), Some(0.0));
        assert_eq!(b.get("job_x_last_run_timestamp"), Some(100.0));
        assert_eq!(b.get("job_x_last_success_timestamp"), Some(100.0));
        let b = build_body(&[], &[], "job_x", 2, 100.0).expect("body");
        assert_eq!(b.get("job_x_last_status"), Some(2.0));
        assert_eq!(b.get("job_x_last_success_timestamp"), None);
    }

    #[test]
    fn run_metrics_are_gauges_even_when_a_file_has_them_untyped() {
        let b = build_body(
            &[],
            &["j_last_status=7".into(), "j_other=1".into()],
            "j",
            0,
            5.0,
        )
        .expect("body");
        assert_eq!(b.get("j_last_status"), Some(0.0));
        assert!(
            b.render().contains("# TYPE j_last_status gauge\n"),
            "{}",
            b.render()
        );
        assert_eq!(b.get("j_other"), Some(1.0));
    }

    #[test]
    fn bad_metric_args_are_usage_errors() {
        for bad in ["novalue", "x=abc", "1x=1", "x{a=\"b\"=1"] {
            let e = parse_metric_arg(bad).expect_err(bad);
            assert_eq!(backup_core::exit::code_of(&e), ExitCode::Usage, "{bad}");
            assert!(e.to_string().starts_with("--metric "), "{e}");
        }
        let m = parse_metric_arg("x{a=\"k=v\"}=1.5").expect("labels with =");
        assert_eq!(m.get("x"), Some(1.5));
    }

    #[test]
    fn textfile_keeps_families_not_in_the_body() {
        let prev = build_body(&[], &["a=1".into()], "j", 0, 50.0).expect("prev");
        let now = build_body(&[], &[], "j", 1, 90.0).expect("now");
        let out =
            textfile_content(Some(&prev), &now, &[("host".into(), "pve".into())]).expect("merge");
        assert_eq!(out.get("j_last_success_timestamp"), Some(50.0));
        assert_eq!(out.get("j_last_status"), Some(1.0));
        assert_eq!(out.get("a"), Some(1.0));
        assert!(out.render().contains("j_last_status{host=\"pve\"} 1\n"));
    }
}
