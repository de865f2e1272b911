//! pfsense-pull reading config.xml from the pfSense REST API package.
//! The firewall's API is an emulator (tests/support/api_emu.rs: real HTTPS
//! with a certificate the test makes, pfrest's JSON envelope and X-API-Key
//! header), since pfSense itself cannot run here.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use backup_tests::harness::Run;
use support::api_emu::{ApiEmu, Certs, Reply};
use support::{Backup, config_xml};

const KEY: &str = "0123456789abcdef0123456789abcdef";
const DAY1: &str = "2026-11-24"; // Tuesday, week 48
const DAY2: &str = "2026-11-25";

fn api_cmd(b: &Backup, emu: &ApiEmu, ca: &std::path::Path, today: &str) -> Command {
    let key = b.sb.write("api.key", format!("{KEY}\n"));
    let mut c = b.cmd(today);
    c.args(["--config-from", "api", "--api-url"])
        .arg(emu.url())
        .arg("--api-key-file")
        .arg(key)
        .arg("--ca-file")
        .arg(ca);
    c
}

#[test]
fn a_good_reply_is_decoded_and_stored() {
    let certs = Certs::new();
    let xml = config_xml(30, "fw-api");
    let emu = ApiEmu::start(&certs, KEY, Reply::Good(xml.clone()));
    let b = Backup::new();
    Run::of(&mut api_cmd(&b, &emu, &certs.ca(), DAY1)).succeeds();
    assert_eq!(b.files(), ["2026-W48/config-20261124.xml"]);
    assert_eq!(b.read("2026-W48/config-20261124.xml"), xml);
    assert_eq!(b.ledger_lines(), ["pfsense/2026-W48/config-20261124.xml"]);
    let seen = emu.seen.lock().expect("lock").clone();
    assert_eq!(
        seen,
        [(support::api_emu::PATH.to_string(), KEY.to_string())]
    );
    assert_eq!(b.metric("pfsense_config_ok"), 1.0);
}

#[test]
fn bad_replies_never_replace_the_last_good_copy() {
    let certs = Certs::new();
    let xml = config_xml(30, "fw-api");
    let emu = ApiEmu::start(&certs, KEY, Reply::Good(xml.clone()));
    let b = Backup::new();
    Run::of(&mut api_cmd(&b, &emu, &certs.ca(), DAY1)).succeeds();
    let before = b.files();
    let ledger = b.ledger_lines();

    let cases = [
        (Reply::Html502, "HTTP 502 with an HTML error page"),
        (Reply::Empty200, "empty"),
        (
            Reply::TruncatedBase64(xml.clone()),
            "base64 is truncated or invalid",
        ),
        (
            Reply::WrongRoot,
            "root element is <opnsense>, expected <pfsense>",
        ),
    ];
    for (reply, reason) in cases {
        let what = format!("{reply:?}").chars().take(20).collect::<String>();
        emu.set(reply);
        Run::of(&mut api_cmd(&b, &emu, &certs.ca(), DAY2))
            .fails_with(1)
            .stderr_contains(reason)
            .stderr_contains("stays the newest");
        assert_eq!(b.files(), before, "{what}");
        assert_eq!(b.read("2026-W48/config-20261124.xml"), xml, "{what}");
        assert_eq!(
            b.newest_config().as_deref(),
            Some("2026-W48/config-20261124.xml")
        );
        assert_eq!(b.ledger_lines(), ledger, "{what}");
        assert_eq!(b.metric("pfsense_config_ok"), 0.0, "{what}");
    }
}

#[test]
fn a_slow_server_is_cut_off_by_the_run_timeout() {
    let certs = Certs::new();
    let emu = ApiEmu::start(&certs, KEY, Reply::Slow(Duration::from_secs(60)));
    let b = Backup::new();
    Run::of(api_cmd(&b, &emu, &certs.ca(), DAY1).args(["--timeout", "3s"]))
        .fails_with(1)
        .stderr_contains("no complete reply before the run's --timeout ran out");
    assert!(b.files().is_empty(), "{:?}", b.files());
}

#[test]
fn a_certificate_not_signed_by_the_pinned_ca_is_refused() {
    let certs = Certs::new();
    let other = Certs::new();
    let emu = ApiEmu::start(&certs, KEY, Reply::Good(config_xml(3, "fw")));
    let b = Backup::new();
    Run::of(&mut api_cmd(&b, &emu, &other.ca(), DAY1))
        .fails_with(1)
        .stderr_contains("TLS certificate not trusted");
    assert!(
        emu.seen.lock().expect("lock").is_empty(),
        "the key was sent to an unverified server"
    );
    assert!(b.files().is_empty());
}

#[test]
fn a_wrong_key_is_reported_with_the_apis_message() {
    let certs = Certs::new();
    let emu = ApiEmu::start(&certs, "another-key", Reply::Good(config_xml(3, "fw")));
    let b = Backup::new();
    Run::of(&mut api_cmd(&b, &emu, &certs.ca(), DAY1))
        .fails_with(1)
        .stderr_contains("HTTP 401: Authentication failed");
}

#[test]
fn the_key_comes_from_systemd_credentials_when_no_file_is_given() {
    let certs = Certs::new();
    let xml = config_xml(5, "fw");
    let emu = ApiEmu::start(&certs, KEY, Reply::Good(xml.clone()));
    let b = Backup::new();
    let creds: PathBuf = b.sb.mkdir("credentials");
    std::fs::write(creds.join("pfsense-api-key"), KEY).expect("write");
    let mut c = b.cmd(DAY1);
    c.args(["--config-from", "api", "--api-url"])
        .arg(emu.url())
        .arg("--ca-file")
        .arg(certs.ca())
        .env("CREDENTIALS_DIRECTORY", &creds);
    Run::of(&mut c).succeeds();
    assert_eq!(b.read("2026-W48/config-20261124.xml"), xml);

    // Without either, a one-line usage error.
    let mut c = b.cmd(DAY2);
    c.args(["--config-from", "api", "--api-url"])
        .arg(emu.url())
        .env_remove("CREDENTIALS_DIRECTORY");
    Run::of(&mut c)
        .fails_with(2)
        .stderr_contains("--api-key-file");
}

#[test]
fn plain_http_is_refused_before_anything_is_sent() {
    let b = Backup::new();
    let key = b.sb.write("api.key", KEY);
    Run::of(
        b.cmd(DAY1)
            .args([
                "--config-from",
                "api",
                "--api-url",
                "http://127.0.0.1:9/x",
                "--api-key-file",
            ])
            .arg(key),
    )
    .fails_with(2)
    .stderr_contains("expected an https:// URL");
}
