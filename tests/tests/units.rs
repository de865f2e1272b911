//! Every systemd unit in `units/` passes `systemd-analyze verify`, follows
//! the template's pattern, and every alert rule file in `units/alerts/`
//! passes `promtool check rules` and its own `promtool test rules` file,
//! with a firing and a non-firing case per alert. Files added later are
//! picked up automatically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use backup_tests::harness::profile_dir;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// Files directly in `dir` whose names end with one of `exts`, sorted.
fn files(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            exts.iter().any(|x| n.ends_with(x))
        })
        .collect();
    v.sort();
    v
}

fn name(p: &Path) -> String {
    p.file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned()
}

const UNIT_EXTS: &[&str] = &[
    ".service", ".timer", ".socket", ".path", ".target", ".mount",
];

/// `/usr/local/bin/NAME` occurrences in the settings of a unit file.
fn local_bins(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let settings = text.lines().filter(|l| {
        let t = l.trim_start();
        !t.starts_with('#') && !t.starts_with(';')
    });
    for line in settings {
        for (i, _) in line.match_indices("/usr/local/bin/") {
            let rest = &line[i + "/usr/local/bin/".len()..];
            let n: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                .collect();
            if !n.is_empty() && !out.contains(&n) {
                out.push(n);
            }
        }
    }
    out
}

/// Copies of the units in a temp dir with `/usr/local/bin/X` pointing at the
/// built workspace binary X (`verify` checks that ExecStart= binaries exist),
/// then `systemd-analyze verify` on each. Settings systemd would ignore (an
/// unknown or misspelt key, a bad value) count as errors too: on the host they
/// silently drop a timeout or a hardening option.
#[test]
fn units_pass_systemd_analyze_verify() {
    let units = files(&repo().join("units"), UNIT_EXTS);
    assert!(
        units.iter().any(|u| name(u) == "TEMPLATE.service"),
        "units/TEMPLATE.service missing"
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let udir = tmp.path().join("units");
    let bdir = tmp.path().join("bin");
    std::fs::create_dir_all(&udir).expect("mkdir");
    std::fs::create_dir_all(&bdir).expect("mkdir");
    let built = profile_dir();
    let mut problems = Vec::new();
    for u in &units {
        let text = std::fs::read_to_string(u).expect("read unit");
        for b in local_bins(&text) {
            let link = bdir.join(&b);
            if link.exists() {
                continue;
            }
            let real = built.join(&b);
            if real.is_file() {
                std::os::unix::fs::symlink(&real, &link).expect("symlink");
            } else if name(u).starts_with("TEMPLATE.") && b == "TOOL" {
                // The template's placeholder: an executable stand-in.
                std::fs::write(&link, "#!/bin/sh\n").expect("stub");
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&link, std::fs::Permissions::from_mode(0o755))
                    .expect("chmod");
            } else {
                problems.push(format!(
                    "{}: /usr/local/bin/{b} is no binary of this workspace (built ones are in {})",
                    name(u),
                    built.display()
                ));
            }
        }
        let local = format!("{}/", bdir.display());
        std::fs::write(udir.join(name(u)), text.replace("/usr/local/bin/", &local))
            .expect("write copy");
    }
    // One verify per file (clear attribution), all started at once.
    let runs: Vec<_> = units
        .iter()
        .map(|u| {
            let child = Command::new("systemd-analyze")
                .args(["verify", "--man=no"])
                .arg(udir.join(name(u)))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("systemd-analyze (Debian package systemd)");
            (u, child)
        })
        .collect();
    for (u, child) in runs {
        let out = child.wait_with_output().expect("systemd-analyze");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let ours: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(&name(u)) || l.contains(udir.to_string_lossy().as_ref()))
            .collect();
        if !out.status.success() || !ours.is_empty() {
            problems.push(format!(
                "units/{}: systemd-analyze verify exit {:?}:\n{}",
                name(u),
                out.status.code(),
                stderr.trim()
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// `Key=` values of a unit file (all sections), in order.
fn settings(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in text.lines() {
        let l = l.trim();
        if l.starts_with('#') || l.starts_with(';') || l.starts_with('[') {
            continue;
        }
        if let Some((k, v)) = l.split_once('=') {
            m.entry(k.trim().to_string())
                .or_default()
                .push(v.trim().to_string());
        }
    }
    m
}

/// Every oneshot backup service follows the template: an explicit bound on
/// its run, the shared EnvironmentFile, the shared runtime directory kept
/// between units, and push-metric after any end (so a killed run reports 2).
#[test]
fn oneshot_services_follow_the_template() {
    let mut problems = Vec::new();
    for u in files(&repo().join("units"), &[".service"]) {
        let s = settings(&std::fs::read_to_string(&u).expect("read"));
        let get = |k: &str| s.get(k).cloned().unwrap_or_default();
        if get("Type") != ["oneshot"] {
            continue;
        }
        let n = name(&u);
        let mut need = |ok: bool, what: &str| {
            if !ok {
                problems.push(format!("units/{n}: {what}"));
            }
        };
        need(
            get("TimeoutStartSec")
                .iter()
                .any(|v| !v.is_empty() && v != "infinity" && v != "0"),
            "needs an explicit, finite TimeoutStartSec=",
        );
        need(
            get("EnvironmentFile").contains(&"-/etc/default/backup-pipeline".to_string()),
            "needs EnvironmentFile=-/etc/default/backup-pipeline",
        );
        need(
            get("RuntimeDirectory").contains(&"backup-pipeline".to_string())
                && get("RuntimeDirectoryPreserve").contains(&"yes".to_string()),
            "needs RuntimeDirectory=backup-pipeline and RuntimeDirectoryPreserve=yes (shared lock dir)",
        );
        need(
            get("ExecStopPost").iter().any(|v| {
                v.starts_with("-/usr/local/bin/push-metric ")
                    && v.contains("--from-systemd")
                    && v.contains("--job ")
            }),
            "needs ExecStopPost=-/usr/local/bin/push-metric --from-systemd --job JOB --file ...",
        );
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// Start `promtool ARGS` in `dir`; [`finish`] collects it. Several run at
/// once: rule tests over long time ranges take seconds each.
fn promtool(args: &[&str], dir: &Path) -> std::process::Child {
    Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus)")
}

fn finish(child: std::process::Child) -> (bool, String) {
    let out = child.wait_with_output().expect("promtool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn unquote(s: &str) -> String {
    s.trim().trim_matches(|c| c == '"' || c == '\'').to_string()
}

/// Alert names defined in a rules file (`- alert: NAME`).
fn alerts_in(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| {
            let l = l.trim().trim_start_matches("- ").trim_start();
            l.strip_prefix("alert:").map(unquote)
        })
        .collect()
}

/// For each `alertname:` in a promtool test file, whether that case expects
/// the alert to fire (a non-empty `exp_alerts`).
fn cases_in(test: &str) -> Vec<(String, bool)> {
    let lines: Vec<&str> = test.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    // Column of a key in a line, after an optional list dash.
    let key_col = |l: &str| {
        let i = indent(l);
        if l[i..].starts_with("- ") {
            i + 2 + indent(&l[i + 2..])
        } else {
            i
        }
    };
    let is_item_start = |l: &str, col: usize| {
        let i = indent(l);
        l[i..].starts_with("- ") && key_col(l) == col
    };
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim().trim_start_matches("- ").trim_start();
        let Some(alert) = t.strip_prefix("alertname:") else {
            continue;
        };
        let col = key_col(l);
        // The case is the list item holding this key: up to its "- " line,
        // down to the next item or a shallower line.
        let mut start = i;
        while !is_item_start(lines[start], col) && start > 0 {
            let p = lines[start - 1];
            if !p.trim().is_empty() && indent(p) < col && !is_item_start(p, col) {
                break;
            }
            start -= 1;
        }
        let mut end = i + 1;
        while end < lines.len() {
            let n = lines[end];
            if !n.trim().is_empty() && (indent(n) < col || is_item_start(n, col)) {
                break;
            }
            end += 1;
        }
        let mut fires = false;
        for j in start..end {
            let m = lines[j];
            if key_col(m) != col {
                continue;
            }
            let mt = m.trim().trim_start_matches("- ").trim_start();
            if let Some(v) = mt.strip_prefix("exp_alerts:") {
                let v = v.trim();
                fires = if v.is_empty() {
                    lines[j + 1..end]
                        .iter()
                        .any(|n| n.trim_start().starts_with("- "))
                } else {
                    v.starts_with('[') && v.trim_start_matches('[').trim_start() != "]"
                };
            }
        }
        out.push((unquote(alert), fires));
    }
    out
}

#[test]
fn alert_rules_check_and_test_with_promtool() {
    let dir = repo().join("units").join("alerts");
    let rules = files(&dir, &[".rules.yml", ".rules.yaml"]);
    let tests = files(&dir, &[".test.yml", ".test.yaml"]);
    assert!(!rules.is_empty(), "no rules in {}", dir.display());
    let mut problems = Vec::new();
    let mut cases: Vec<(String, bool)> = Vec::new();
    let mut runs = Vec::new();
    for t in &tests {
        cases.extend(cases_in(&std::fs::read_to_string(t).expect("read")));
        runs.push((
            format!("promtool test rules {}", name(t)),
            promtool(&["test", "rules", &name(t)], &dir),
        ));
    }
    for r in &rules {
        runs.push((
            format!("promtool check rules {}", name(r)),
            promtool(&["check", "rules", &name(r)], &dir),
        ));
    }
    for (what, child) in runs {
        let (ok, out) = finish(child);
        if !ok {
            problems.push(format!("{what}:\n{out}"));
        }
    }
    for r in &rules {
        let n = name(r);
        let stem = n.rsplit_once(".rules.").map(|(s, _)| s).unwrap_or(&n);
        if !tests
            .iter()
            .any(|t| name(t).starts_with(&format!("{stem}.test.")))
        {
            problems.push(format!("{n}: no {stem}.test.yml beside it"));
        }
        for a in alerts_in(&std::fs::read_to_string(r).expect("read")) {
            let mine: Vec<bool> = cases
                .iter()
                .filter(|(x, _)| *x == a)
                .map(|(_, f)| *f)
                .collect();
            if !mine.contains(&true) {
                problems.push(format!("{n}: alert {a} has no test case where it fires"));
            }
            if !mine.contains(&false) {
                problems.push(format!(
                    "{n}: alert {a} has no test case where it does not fire (exp_alerts: [])"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn test_file_parser_tells_firing_from_quiet_cases() {
    let t = "tests:\n  - alert_rule_test:\n      - eval_time: 1m\n        alertname: A\n        exp_alerts: []\n      - eval_time: 9m\n        alertname: A\n        exp_alerts:\n          - exp_labels:\n              severity: x\n      - alertname: \"B\"\n        eval_time: 2m\n        exp_alerts: [{exp_labels: {a: b}}]\n";
    assert_eq!(
        cases_in(t),
        vec![("A".into(), false), ("A".into(), true), ("B".into(), true)]
    );
    assert_eq!(
        alerts_in("rules:\n  - alert: X\n    expr: 1\n  - alert: 'Y'\n"),
        vec!["X", "Y"]
    );
}

/// `(alert name, expr)` of every alert in a rules file (block scalars too).
fn alert_exprs(rules: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = rules.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim().trim_start_matches("- ").trim_start();
        if let Some(a) = t.strip_prefix("alert:") {
            current = Some(unquote(a));
        } else if let (Some(v), Some(a)) = (t.strip_prefix("expr:"), &current) {
            let v = v.trim();
            let mut expr = String::new();
            if v.starts_with('|') || v.starts_with('>') || v.is_empty() {
                for n in &lines[i + 1..] {
                    if !n.trim().is_empty() && indent(n) <= indent(l) {
                        break;
                    }
                    expr.push_str(n.trim());
                    expr.push(' ');
                }
            } else {
                expr = unquote(v);
            }
            out.push((a.clone(), expr));
        }
    }
    out
}

/// Every push-metric call in a unit parses (run with `--dry-run` exactly
/// as the unit has it), and every job a unit pushes has alert rules that
/// read it: a job nobody watches would fail silently. Stale alerts read
/// success timestamps: a run that fails every night still has a fresh
/// run timestamp.
#[test]
fn pushed_jobs_have_rules_and_stale_rules_read_success() {
    let units = repo().join("units");
    let alerts = units.join("alerts");
    let mut problems = Vec::new();
    for u in files(&units, &[".service"]) {
        if name(&u).starts_with("TEMPLATE.") {
            continue;
        }
        let s = settings(&std::fs::read_to_string(&u).expect("read"));
        for v in s.get("ExecStopPost").into_iter().flatten() {
            let Some((_, args)) = v.split_once("/usr/local/bin/push-metric") else {
                continue;
            };
            let args: Vec<&str> = args.split_whitespace().collect();
            let out = Command::new(backup_tests::harness::bin("push-metric"))
                .args(&args)
                .args(["--dry-run", "--gateway", "http://pushgateway.invalid:9091"])
                .env("SERVICE_RESULT", "success")
                .env("EXIT_CODE", "exited")
                .env("EXIT_STATUS", "0")
                .env_remove("PUSHGATEWAY_URL")
                .output()
                .expect("push-metric");
            if !out.status.success() {
                problems.push(format!(
                    "units/{}: push-metric {}: {}",
                    name(&u),
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
                continue;
            }
            let job = args
                .iter()
                .position(|a| *a == "--job")
                .and_then(|i| args.get(i + 1))
                .copied()
                .unwrap_or_default();
            let rules = alerts.join(format!("{job}.rules.yml"));
            match std::fs::read_to_string(&rules) {
                Ok(text) if text.contains(&format!("job=\"{job}\"")) => {}
                Ok(_) => problems.push(format!(
                    "units/{}: units/alerts/{job}.rules.yml never selects job=\"{job}\"",
                    name(&u)
                )),
                Err(_) => problems.push(format!(
                    "units/{}: pushes job {job} but units/alerts/{job}.rules.yml does not exist",
                    name(&u)
                )),
            }
        }
    }
    for r in files(&alerts, &[".rules.yml", ".rules.yaml"]) {
        for (alert, expr) in alert_exprs(&std::fs::read_to_string(&r).expect("read")) {
            if alert.contains("Stale") && expr.contains("_last_run_timestamp") {
                problems.push(format!(
                    "{}: {alert} reads a run timestamp; a stale rule must read *_last_success_timestamp",
                    name(&r)
                ));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn alert_expr_parser_reads_block_scalars() {
    let r = "groups:\n  - rules:\n      - alert: AStale\n        expr: |\n          time() - a_last_run_timestamp\n            > 5\n        for: 5m\n      - alert: 'B'\n        expr: b == 1\n";
    assert_eq!(
        alert_exprs(r),
        vec![
            ("AStale".into(), "time() - a_last_run_timestamp > 5 ".into()),
            ("B".into(), "b == 1".into())
        ]
    );
}

/// Every unit of this project named in an ordering or dependency setting
/// exists in `units/`: `systemd-analyze verify` accepts `After=` an absent
/// unit, and the ordering then silently does nothing (offsite-sync.service
/// once waited for `pvc-copy.service` and `sqlite-dump.service`, which do
/// not exist, and not for `daily-backup.service`, which writes what it
/// sends). Units of systemd or of the host (a `.target`, `lvm2-*`,
/// Proxmox's `pve-cluster.service`) are not ours.
#[test]
fn ordering_names_only_units_that_exist() {
    let dir = repo().join("units");
    let ours: Vec<String> = files(&dir, UNIT_EXTS).iter().map(|p| name(p)).collect();
    let mut wrong = Vec::new();
    for unit in files(&dir, UNIT_EXTS) {
        let text = std::fs::read_to_string(&unit).expect("unit");
        for (k, vals) in settings(&text) {
            if ![
                "After",
                "Before",
                "Wants",
                "Requires",
                "BindsTo",
                "PartOf",
                "OnFailure",
            ]
            .contains(&k.as_str())
            {
                continue;
            }
            for v in vals.iter().flat_map(|v| v.split_whitespace()) {
                let hosts =
                    v.ends_with(".target") || v.starts_with("lvm2-") || v == "pve-cluster.service";
                if !hosts && !ours.iter().any(|o| o == v) {
                    wrong.push(format!("{}: {k}={v}", name(&unit)));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "units that do not exist:\n{}",
        wrong.join("\n")
    );
    let offsite = std::fs::read_to_string(dir.join("offsite-sync.service")).expect("unit");
    assert!(
        settings(&offsite).get("After").is_some_and(|v| v
            .iter()
            .any(|l| l.split_whitespace().any(|u| u == "daily-backup.service"))),
        "offsite-sync.service must start after daily-backup.service"
    );
}
