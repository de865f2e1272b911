//! Tests of the test emulators (stand-ins for LVM, kubectl, cryptsetup and
//! blkid on the Proxmox host): driven as product code drives the real tools,
//! through `std::process::Command` with the emulators first on PATH.

use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use backup_tests::emu::{CONNECTION_REFUSED, EmuHost, FailRule};
use serde_json::Value;

const MIB: u64 = 1 << 20;
const FIELDS: &str = "lv_name,vg_name,lv_path,lv_size,pool_lv,origin,lv_tags,lv_attr,lv_active,data_percent,metadata_percent,lv_time,segtype,lv_uuid";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(host: &EmuHost, prog: &str, args: &[&str]) -> Run {
    let o = host
        .command(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {prog}: {e}"));
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn ok(host: &EmuHost, prog: &str, args: &[&str]) -> String {
    let r = run(host, prog, args);
    assert_eq!(
        r.code, 0,
        "{prog} {args:?} failed: {}{}",
        r.stdout, r.stderr
    );
    r.stdout
}

fn host() -> (tempfile::TempDir, EmuHost) {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = EmuHost::with_binary(dir.path(), Path::new(env!("CARGO_BIN_EXE_homelab-emu")));
    (dir, h)
}

/// A `pve/data` pool with one PVC LV holding two files.
fn pve_host() -> (tempfile::TempDir, EmuHost) {
    let (d, h) = host();
    h.add_pool("pve", "data", 1024 * MIB);
    h.add_thin_lv(
        "pve",
        "data",
        "vm-9999-pvc-aaaa",
        64 * MIB,
        &[("hello.txt", b"hello\n"), ("dir/deep.bin", &[7u8; 5000])],
    );
    (d, h)
}

fn lvs(host: &EmuHost, operands: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "--reportformat",
        "json",
        "--units",
        "b",
        "--nosuffix",
        "-o",
        FIELDS,
        "--",
    ];
    args.extend_from_slice(operands);
    let out = ok(host, "lvs", &args);
    let v: Value = serde_json::from_str(&out).expect("lvs output is JSON");
    v["report"][0]["lv"].as_array().cloned().expect("lv rows")
}

fn row<'a>(rows: &'a [Value], name: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["lv_name"] == name)
        .unwrap_or_else(|| panic!("no row {name} in {rows:?}"))
}

fn keys_in_order(line: &str) -> Vec<String> {
    let re = regex::Regex::new(r#""([a-z_]+)":"#).expect("regex");
    re.captures_iter(line).map(|c| c[1].to_string()).collect()
}

#[test]
fn lvs_shape_matches_real_lvm_fixture() {
    let real_text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/lvs-real.json"
    ))
    .expect("fixture");
    let real: Value = serde_json::from_str(&real_text).expect("fixture JSON");
    let real_rows = real["report"][0]["lv"].as_array().cloned().expect("rows");

    // The same setup as tests/fixtures/lvs-real-vg-metadata.txt.
    let (_d, h) = host();
    h.add_pool("emuchkvg", "data", 400 * MIB);
    h.add_thin_lv(
        "emuchkvg",
        "data",
        "vm-100-pvc-1111",
        64 * MIB,
        &[("a", b"a")],
    );
    ok(
        &h,
        "lvcreate",
        &[
            "-s",
            "-kn",
            "--addtag",
            "other_tag",
            "--addtag",
            "homelab-lvm-snap",
            "-n",
            "vm-100-pvc-1111_snap_20261127_0300",
            "--",
            "emuchkvg/vm-100-pvc-1111",
        ],
    );
    ok(
        &h,
        "lvcreate",
        &[
            "-s",
            "-n",
            "vm-100-pvc-1111_skip",
            "emuchkvg/vm-100-pvc-1111",
        ],
    );
    let args = [
        "--reportformat",
        "json",
        "--units",
        "b",
        "--nosuffix",
        "-o",
        FIELDS,
        "emuchkvg",
    ];
    let emu_text = ok(&h, "lvs", &args);
    let emu: Value = serde_json::from_str(&emu_text).expect("emulator JSON");
    let emu_rows = emu["report"][0]["lv"].as_array().cloned().expect("rows");

    // Same layout line by line, same keys in the same order per row.
    let real_lines: Vec<&str> = real_text.lines().collect();
    let emu_lines: Vec<&str> = emu_text.lines().collect();
    assert_eq!(real_lines.len(), emu_lines.len(), "{emu_text}");
    for (r, e) in real_lines.iter().zip(&emu_lines) {
        if r.trim_start().starts_with("{\"") {
            assert_eq!(
                keys_in_order(r),
                keys_in_order(e),
                "row keys differ:\n{r}\n{e}"
            );
            assert_eq!(keys_in_order(e).len(), FIELDS.split(',').count());
            assert_eq!(
                r.len() - r.trim_start().len(),
                e.len() - e.trim_start().len(),
                "indent"
            );
        } else {
            assert_eq!(r, e, "layout line differs");
        }
    }
    let time = regex::Regex::new(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}$").expect("regex");
    let uuid =
        regex::Regex::new(r"^[A-Za-z0-9]{6}(-[A-Za-z0-9]{4}){5}-[A-Za-z0-9]{6}$").expect("regex");
    let pct = regex::Regex::new(r"^\d+\.\d\d$").expect("regex");
    for (r, e) in real_rows.iter().zip(&emu_rows) {
        for v in r
            .as_object()
            .expect("object")
            .values()
            .chain(e.as_object().expect("object").values())
        {
            assert!(v.is_string(), "all values are strings: {v}");
        }
        for k in [
            "lv_name", "vg_name", "lv_size", "pool_lv", "origin", "lv_tags", "segtype",
        ] {
            assert_eq!(r[k], e[k], "{k} of {}", r["lv_name"]);
        }
        let (ra, ea) = (
            r["lv_attr"].as_str().unwrap_or(""),
            e["lv_attr"].as_str().unwrap_or(""),
        );
        // The real report cannot know the activation state (no device-mapper): X.
        for (i, (rc, ec)) in ra.chars().zip(ea.chars()).enumerate() {
            if !(4..=5).contains(&i) {
                assert_eq!(rc, ec, "lv_attr {ra} vs {ea}");
            }
        }
        let rp = r["lv_path"].as_str().unwrap_or("");
        let ep = e["lv_path"].as_str().unwrap_or("");
        assert_eq!(rp.is_empty(), ep.is_empty());
        assert!(ep.ends_with(rp.trim_start_matches("/dev")), "{ep} vs {rp}");
        assert!(time.is_match(e["lv_time"].as_str().unwrap_or("")));
        assert!(
            uuid.is_match(e["lv_uuid"].as_str().unwrap_or("")),
            "{}",
            e["lv_uuid"]
        );
    }
    let pool = row(&emu_rows, "data");
    assert_eq!(pool["lv_attr"], "twi-aotz--");
    assert!(pct.is_match(pool["data_percent"].as_str().unwrap_or("")));
    assert!(pct.is_match(pool["metadata_percent"].as_str().unwrap_or("")));
    let skip = row(&emu_rows, "vm-100-pvc-1111_skip");
    assert_eq!(skip["lv_attr"], "Vwi---tz-k");
    assert_eq!(skip["lv_active"], "");
    assert_eq!(row(&emu_rows, "vm-100-pvc-1111")["lv_attr"], "Vwi-a-tz--");
}

#[test]
fn thin_snapshot_rename_remove_like_lvm() {
    let (_d, h) = pve_host();
    let out = ok(
        &h,
        "lvcreate",
        &[
            "-s",
            "-kn",
            "--addtag",
            "homelab-lvm-snap",
            "-n",
            "vm-9999-pvc-aaaa_snap_20260101_0300",
            "--",
            "pve/vm-9999-pvc-aaaa",
        ],
    );
    assert_eq!(
        out,
        "  Logical volume \"vm-9999-pvc-aaaa_snap_20260101_0300\" created.\n"
    );
    let rows = lvs(&h, &["pve"]);
    let snap = row(&rows, "vm-9999-pvc-aaaa_snap_20260101_0300");
    assert_eq!(snap["origin"], "vm-9999-pvc-aaaa");
    assert_eq!(snap["lv_tags"], "homelab-lvm-snap");
    assert_eq!(snap["lv_attr"], "Vwi-a-tz--");
    assert_eq!(snap["lv_active"], "active");
    assert_eq!(snap["pool_lv"], "data");
    assert_eq!(snap["lv_size"], (64 * MIB).to_string());
    let path = snap["lv_path"].as_str().expect("lv_path");
    assert!(Path::new(path).exists());
    assert_eq!(
        ok(&h, "blkid", &["-o", "value", "-s", "TYPE", "--", path]),
        "ext4\n"
    );
    let files = h.lv_files("pve", "vm-9999-pvc-aaaa_snap_20260101_0300");
    assert_eq!(
        files.get("hello.txt").map(Vec::as_slice),
        Some(&b"hello\n"[..])
    );
    assert_eq!(files.get("dir/deep.bin").map(Vec::len), Some(5000));

    // Restore-style renames: snapshots follow their origin's new name.
    let out = ok(
        &h,
        "lvrename",
        &[
            "--",
            "pve",
            "vm-9999-pvc-aaaa",
            "vm-9999-pvc-aaaa_pre_restore_20260102_1200",
        ],
    );
    assert_eq!(
        out,
        "  Renamed \"vm-9999-pvc-aaaa\" to \"vm-9999-pvc-aaaa_pre_restore_20260102_1200\" in volume group \"pve\"\n"
    );
    let rows = lvs(&h, &["pve"]);
    assert_eq!(
        row(&rows, "vm-9999-pvc-aaaa_snap_20260101_0300")["origin"],
        "vm-9999-pvc-aaaa_pre_restore_20260102_1200"
    );
    assert!(!h.lv_path("pve", "vm-9999-pvc-aaaa").exists());
    ok(
        &h,
        "lvcreate",
        &[
            "-s",
            "-kn",
            "-n",
            "vm-9999-pvc-aaaa",
            "pve/vm-9999-pvc-aaaa_snap_20260101_0300",
        ],
    );
    assert_eq!(
        row(&lvs(&h, &["pve/vm-9999-pvc-aaaa"]), "vm-9999-pvc-aaaa")["origin"],
        "vm-9999-pvc-aaaa_snap_20260101_0300"
    );
    ok(
        &h,
        "lvrename",
        &["pve/vm-9999-pvc-aaaa", "pve/vm-9999-pvc-aaaa_x"],
    );
    ok(
        &h,
        "lvrename",
        &["pve/vm-9999-pvc-aaaa_x", "vm-9999-pvc-aaaa"],
    );

    // Removing an origin leaves its thin snapshots without one.
    let out = ok(
        &h,
        "lvremove",
        &[
            "-f",
            "-y",
            "--",
            "pve/vm-9999-pvc-aaaa_pre_restore_20260102_1200",
        ],
    );
    assert_eq!(
        out,
        "  Logical volume \"vm-9999-pvc-aaaa_pre_restore_20260102_1200\" successfully removed.\n"
    );
    let rows = lvs(&h, &[]);
    assert_eq!(
        row(&rows, "vm-9999-pvc-aaaa_snap_20260101_0300")["origin"],
        ""
    );
    assert!(
        rows.iter()
            .all(|r| r["lv_name"] != "vm-9999-pvc-aaaa_pre_restore_20260102_1200")
    );
    assert!(
        !h.state_dir()
            .join("images/pve/vm-9999-pvc-aaaa_pre_restore_20260102_1200.img")
            .exists()
    );
    assert_eq!(
        h.lv_files("pve", "vm-9999-pvc-aaaa")
            .get("hello.txt")
            .map(Vec::as_slice),
        Some(&b"hello\n"[..])
    );
}

#[test]
fn lvm_error_texts_and_exit_codes() {
    let (_d, h) = pve_host();
    let r = run(
        &h,
        "lvs",
        &[
            "--reportformat",
            "json",
            "--units",
            "b",
            "--nosuffix",
            "-o",
            "lv_name",
            "nosuchvg",
        ],
    );
    assert_eq!(r.code, 5);
    assert_eq!(
        r.stderr,
        "  Volume group \"nosuchvg\" not found\n  Cannot process volume group nosuchvg\n"
    );
    let v: Value = serde_json::from_str(&r.stdout).expect("the report is still printed");
    assert_eq!(v["report"][0]["lv"], serde_json::json!([]));

    let r = run(
        &h,
        "lvs",
        &[
            "--reportformat",
            "json",
            "--units",
            "b",
            "--nosuffix",
            "-o",
            "lv_name",
            "pve/nolv",
            "pve/data",
        ],
    );
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (5, "  Failed to find logical volume \"pve/nolv\"\n")
    );
    assert!(r.stdout.contains("{\"lv_name\":\"data\"}"));

    let r = run(
        &h,
        "lvs",
        &[
            "--reportformat",
            "json",
            "--units",
            "b",
            "--nosuffix",
            "-o",
            "lv_name,bogus",
        ],
    );
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (5, "  Unrecognised field: bogus\n")
    );
    let r = run(&h, "lvs", &["--noheadings", "-o", "lv_name", "pve"]);
    assert_eq!(r.code, 3, "text reports are refused: {}", r.stderr);

    let r = run(
        &h,
        "lvcreate",
        &[
            "-s",
            "-kn",
            "-n",
            "vm-9999-pvc-aaaa",
            "pve/vm-9999-pvc-aaaa",
        ],
    );
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (
            5,
            "  Logical Volume \"vm-9999-pvc-aaaa\" already exists in volume group \"pve\"\n"
        )
    );
    let r = run(&h, "lvcreate", &["-s", "-kn", "-n", "s1", "pve/nolv"]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (
            5,
            "  Snapshot origin LV nolv not found in Volume group pve.\n"
        )
    );
    let r = run(&h, "lvcreate", &["-s", "-kn", "-n", "s1", "novg/x"]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (
            5,
            "  Volume group \"novg\" not found\n  Cannot process volume group novg\n"
        )
    );
    let r = run(
        &h,
        "lvcreate",
        &["-s", "-kn", "-n", "bad name", "pve/vm-9999-pvc-aaaa"],
    );
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (3, "  Logical volume name \"bad name\" is invalid.\n")
    );
    let r = run(
        &h,
        "lvcreate",
        &["-s", "-kn", "-n", "x_tmeta", "pve/vm-9999-pvc-aaaa"],
    );
    assert_eq!(r.code, 3);
    let r = run(&h, "lvcreate", &["--bogus"]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (
            3,
            "lvcreate: unrecognized option '--bogus'\n  Error during parsing of command line.\n"
        )
    );

    let r = run(&h, "lvremove", &["-f", "pve/nolv"]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (5, "  Failed to find logical volume \"pve/nolv\"\n")
    );
    let r = run(&h, "lvremove", &["pve/vm-9999-pvc-aaaa"]);
    assert_eq!(r.code, 5, "an active LV is not removed without -f");
    assert!(h.lv_path("pve", "vm-9999-pvc-aaaa").exists());
    let r = run(&h, "lvrename", &["pve", "nolv", "new"]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (
            5,
            "  Existing logical volume \"nolv\" not found in volume group \"pve\"\n"
        )
    );
    let r = run(&h, "lvrename", &["pve", "vm-9999-pvc-aaaa", "data"]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (
            5,
            "  Logical Volume \"data\" already exists in volume group \"pve\"\n"
        )
    );
    let r = run(&h, "lvchange", &["-an", "pve/nolv"]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (5, "  Failed to find logical volume \"pve/nolv\"\n")
    );

    // Every call was logged with its exact argv.
    let calls = h.calls();
    assert_eq!(
        calls.last().map(|c| c.join(" ")),
        Some("lvchange -an pve/nolv".to_string())
    );
    assert_eq!(h.calls_of("lvrename").len(), 2);

    // Without the state variable nothing runs at all.
    let r = Command::new(h.bin_dir().join("lvs"))
        .env_remove("HOMELAB_EMU_STATE")
        .output()
        .expect("run");
    assert_eq!(r.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&r.stderr).contains("HOMELAB_EMU_STATE"));
    assert_eq!(h.calls().len(), calls.len());
    // Unemulated LVM commands never reach the host's real LVM.
    assert_eq!(run(&h, "vgs", &[]).code, 127);
}

#[test]
fn activation_skip_and_lvchange() {
    let (_d, h) = pve_host();
    ok(
        &h,
        "lvcreate",
        &["-s", "-n", "snapk", "pve/vm-9999-pvc-aaaa"],
    );
    let r = row(&lvs(&h, &["pve/snapk"]), "snapk").clone();
    assert_eq!(
        (r["lv_attr"].as_str(), r["lv_active"].as_str()),
        (Some("Vwi---tz-k"), Some(""))
    );
    assert_eq!(r["data_percent"], "");
    assert!(
        !Path::new(r["lv_path"].as_str().unwrap_or("")).exists(),
        "no device while inactive"
    );
    ok(&h, "lvchange", &["-ay", "pve/snapk"]);
    assert_eq!(
        row(&lvs(&h, &["pve/snapk"]), "snapk")["lv_active"],
        "",
        "-ay skips it"
    );
    ok(&h, "lvchange", &["-ay", "-K", "--", "pve/snapk"]);
    assert_eq!(
        row(&lvs(&h, &["pve/snapk"]), "snapk")["lv_attr"],
        "Vwi-a-tz-k"
    );
    assert!(h.lv_path("pve", "snapk").exists());
    ok(&h, "lvchange", &["-an", "pve/snapk"]);
    assert!(!h.lv_path("pve", "snapk").exists());
    assert_eq!(
        ok(
            &h,
            "lvchange",
            &["--addtag", "t1", "--addtag", "a0", "pve/snapk"]
        ),
        "  Logical volume pve/snapk changed.\n"
    );
    ok(&h, "lvchange", &["-kn", "--deltag", "t1", "pve/snapk"]);
    let r = row(&lvs(&h, &["pve/snapk"]), "snapk").clone();
    assert_eq!(
        (r["lv_tags"].as_str(), r["lv_attr"].as_str()),
        (Some("a0"), Some("Vwi---tz--"))
    );
    ok(
        &h,
        "lvcreate",
        &["-V", "8m", "-T", "pve/data", "-n", "blank"],
    );
    assert_eq!(
        row(&lvs(&h, &["pve/blank"]), "blank")["lv_size"],
        (8 * MIB).to_string()
    );
    let all = ok(
        &h,
        "lvs",
        &[
            "-a",
            "--reportformat",
            "json",
            "--units",
            "b",
            "--nosuffix",
            "-o",
            "lv_name",
            "pve",
        ],
    );
    assert!(all.contains("\"[data_tdata]\"") && all.contains("\"[lvol0_pmspare]\""));
}

#[test]
fn pool_percentages_are_computed_and_overridable() {
    let (_d, h) = pve_host();
    let pool = |h: &EmuHost| row(&lvs(h, &["pve/data"]), "data").clone();
    let pct = |v: &Value, k: &str| {
        v[k].as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .expect("percent")
    };
    let before = pool(&h);
    assert!(pct(&before, "data_percent") > 0.0);
    let big: Vec<u8> = (0..20 * MIB).map(|i| (i * 7 % 251) as u8).collect();
    h.add_thin_lv(
        "pve",
        "data",
        "vm-9999-pvc-bbbb",
        64 * MIB,
        &[("big", &big)],
    );
    let after = pool(&h);
    let grew = pct(&after, "data_percent") - pct(&before, "data_percent");
    assert!(grew > 1.8 && grew < 2.5, "20 MiB of 1 GiB: {grew}");
    assert!(
        (pct(&after, "metadata_percent") - pct(&before, "metadata_percent") - 0.5).abs() < 1e-9
    );
    let thin = row(&lvs(&h, &["pve/vm-9999-pvc-bbbb"]), "vm-9999-pvc-bbbb").clone();
    assert!(pct(&thin, "data_percent") > 30.0);
    assert_eq!(thin["metadata_percent"], "");
    h.set_pool_usage("pve", "data", Some(91.5), Some(88.0));
    let forced = pool(&h);
    assert_eq!(
        (
            forced["data_percent"].as_str(),
            forced["metadata_percent"].as_str()
        ),
        (Some("91.50"), Some("88.00"))
    );
    let rows = h.lvs_rows();
    assert_eq!(row(&rows, "data")["data_percent"], "91.50");
}

#[test]
fn lvm_fault_injection() {
    let (_d, h) = pve_host();
    h.set_fail(
        "lvcreate snap-bad",
        FailRule::new(5, "  Insufficient free space for snap-bad"),
    );
    let r = run(
        &h,
        "lvcreate",
        &["-s", "-kn", "-n", "snap-bad", "pve/vm-9999-pvc-aaaa"],
    );
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (5, "  Insufficient free space for snap-bad\n")
    );
    assert!(
        lvs(&h, &["pve"]).iter().all(|r| r["lv_name"] != "snap-bad"),
        "a failed call changes nothing"
    );
    ok(
        &h,
        "lvcreate",
        &["-s", "-kn", "-n", "snap-good", "pve/vm-9999-pvc-aaaa"],
    );

    // The second lvrename fails, once.
    h.set_fail(
        "lvrename",
        FailRule::new(5, "  rename failed").skip(1).times(1),
    );
    ok(&h, "lvrename", &["pve", "snap-good", "s2"]);
    assert_eq!(run(&h, "lvrename", &["pve", "s2", "s3"]).code, 5);
    ok(&h, "lvrename", &["pve", "s2", "s3"]);
    assert_eq!(h.faults().fail["lvrename"].seen, 3);
    // Keys match VG/LV operands by their LV part.
    h.set_fail("lvremove s3", FailRule::new(5, "  nope"));
    assert_eq!(run(&h, "lvremove", &["-f", "--", "pve/s3"]).code, 5);
    h.clear_fail("lvremove s3");
    ok(&h, "lvremove", &["-f", "--", "pve/s3"]);
}

#[test]
fn parallel_invocations_are_serialized() {
    let (_d, h) = pve_host();
    let children: Vec<_> = (0..16)
        .map(|i| {
            h.command("lvcreate")
                .args([
                    "-s",
                    "-kn",
                    "-n",
                    &format!("par{i}"),
                    "pve/vm-9999-pvc-aaaa",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().expect("wait");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let rows = lvs(&h, &["pve"]);
    assert_eq!(
        rows.iter()
            .filter(|r| r["lv_name"].as_str().is_some_and(|n| n.starts_with("par")))
            .count(),
        16
    );
    assert_eq!(h.calls_of("lvcreate").len(), 16);
}

#[test]
fn lv_path_mounts_with_a_loop_device_and_shows_open() {
    let (d, h) = pve_host();
    let lv = h.lv_path("pve", "vm-9999-pvc-aaaa");
    let mnt = d.path().join("mnt");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    // In a private mount namespace: nothing outlives the shell.
    let script = r#"mount -o ro,noload,nosuid,nodev,noexec "$1" "$2" || exit 90
cat "$2/hello.txt"
lvs --reportformat json --units b --nosuffix -o lv_attr pve/vm-9999-pvc-aaaa
lvchange -an pve/vm-9999-pvc-aaaa; echo "rc=$?"
umount "$2""#;
    let o = h
        .command("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(&lv)
        .arg(&mnt)
        .output()
        .expect("unshare");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.starts_with("hello\n"), "{out}");
    assert!(
        out.contains("\"lv_attr\":\"Vwi-aotz--\""),
        "open while mounted: {out}"
    );
    assert!(out.contains("rc=5"), "in use: {out}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Logical volume pve/vm-9999-pvc-aaaa in use.")
    );
}

#[test]
fn luks_open_checks_the_key_and_exposes_ext4() {
    let (d, h) = host();
    h.add_pool("pve", "data", 1024 * MIB);
    let lv = h.add_luks_lv(
        "pve",
        "data",
        "vm-9999-pvc-cccc",
        32 * MIB,
        b"right key",
        &[("secret.txt", b"cleartext\n")],
    );
    let lv_s = lv.to_str().expect("utf-8 path");
    assert_eq!(
        ok(&h, "blkid", &["-o", "value", "-s", "TYPE", "--", lv_s]),
        "crypto_LUKS\n"
    );
    ok(
        &h,
        "lvcreate",
        &[
            "-s",
            "-kn",
            "-n",
            "vm-9999-pvc-cccc_snap_20260101_0300",
            "pve/vm-9999-pvc-cccc",
        ],
    );
    let snap = h.lv_path("pve", "vm-9999-pvc-cccc_snap_20260101_0300");
    let snap_s = snap.to_str().expect("utf-8 path");
    assert_eq!(
        ok(&h, "blkid", &["-o", "value", "-s", "TYPE", snap_s]),
        "crypto_LUKS\n"
    );

    let wrong = d.path().join("wrong.key");
    let right = d.path().join("right.key");
    std::fs::write(&wrong, b"wrong key").expect("key");
    std::fs::write(&right, b"right key").expect("key");
    let (wrong, right) = (
        wrong.to_str().expect("utf-8"),
        right.to_str().expect("utf-8"),
    );
    let name = "pvc-snap-0123456789ab";
    let r = run(
        &h,
        "cryptsetup",
        &[
            "open",
            "--type",
            "luks",
            "--key-file",
            wrong,
            "--readonly",
            "--",
            snap_s,
            name,
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("No key available with this passphrase."));
    assert!(!h.mapper_dir().join(name).exists());
    assert_eq!(run(&h, "cryptsetup", &["status", name]).code, 4);

    ok(
        &h,
        "cryptsetup",
        &[
            "open",
            "--type",
            "luks",
            "--key-file",
            right,
            "--readonly",
            "--",
            snap_s,
            name,
        ],
    );
    let mapper = h.mapper_dir().join(name);
    assert_eq!(
        ok(
            &h,
            "blkid",
            &["-o", "value", "-s", "TYPE", mapper.to_str().expect("utf-8")]
        ),
        "ext4\n"
    );
    assert_eq!(h.open_mappers(), vec![name.to_string()]);
    assert!(ok(&h, "cryptsetup", &["status", name]).contains("is active"));
    let r = run(
        &h,
        "cryptsetup",
        &["luksOpen", "--key-file", right, snap_s, name],
    );
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (5, "Device pvc-snap-0123456789ab already exists.\n")
    );
    // An open mapping holds the LV.
    let r = run(
        &h,
        "lvchange",
        &["-an", "pve/vm-9999-pvc-cccc_snap_20260101_0300"],
    );
    assert_eq!(r.code, 5);
    assert_eq!(
        row(
            &lvs(&h, &["pve/vm-9999-pvc-cccc_snap_20260101_0300"]),
            "vm-9999-pvc-cccc_snap_20260101_0300"
        )["lv_attr"],
        "Vwi-aotz--"
    );
    // The mapper's content is the cleartext filesystem.
    let out = Command::new("debugfs")
        .args(["-R", "cat /secret.txt"])
        .arg(&mapper)
        .output()
        .expect("debugfs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "cleartext\n");

    ok(&h, "cryptsetup", &["close", name]);
    assert!(!mapper.exists());
    assert!(h.open_mappers().is_empty());
    let r = run(&h, "cryptsetup", &["close", name]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (4, "Device pvc-snap-0123456789ab is not active.\n")
    );
    ok(
        &h,
        "lvchange",
        &["-an", "pve/vm-9999-pvc-cccc_snap_20260101_0300"],
    );
    let r = run(
        &h,
        "cryptsetup",
        &["open", "--key-file", right, "--readonly", snap_s, name],
    );
    assert_eq!(r.code, 4, "an inactive LV has no device: {}", r.stderr);
    // A plain ext4 LV is no LUKS device.
    h.add_thin_lv("pve", "data", "plain", 8 * MIB, &[]);
    let plain = h.lv_path("pve", "plain");
    let r = run(
        &h,
        "cryptsetup",
        &[
            "open",
            "--key-file",
            right,
            plain.to_str().expect("utf-8"),
            "x",
        ],
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("is not a valid LUKS device"));
}

fn kubectl_json(h: &EmuHost, args: &[&str]) -> Value {
    serde_json::from_str(&ok(h, "kubectl", args)).expect("kubectl JSON")
}

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().expect("items")
}

/// Poll `cond` until it holds, with a deadline far above any load.
fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "waited 60 s for {what}");
        sleep(Duration::from_millis(100));
    }
}

#[test]
fn kubectl_scale_down_then_pods_and_attachment_go_after_the_delay() {
    let (_d, h) = pve_host();
    let pv = h.add_pv("paperless", "data", "vm-9999-pvc-aaaa");
    h.add_deployment("paperless", "web", 2, "data");
    // Long enough for the checks right after each scale to see pods still
    // terminating or still Pending on a loaded machine; the end of the
    // delay is then waited for, not slept.
    h.set_kube_delay(Duration::from_millis(3000));

    let pvs = kubectl_json(
        &h,
        &[
            "--kubeconfig",
            "/nonexistent",
            "get",
            "pv",
            "-o",
            "json",
            "--request-timeout",
            "5s",
        ],
    );
    assert_eq!(pvs["kind"], "List");
    assert_eq!(pvs["apiVersion"], "v1");
    let p = &items(&pvs)[0];
    assert_eq!(p["metadata"]["name"], pv);
    assert_eq!(p["spec"]["csi"]["driver"], "csi.proxmox.sinextra.dev");
    assert_eq!(
        p["spec"]["csi"]["volumeHandle"],
        "homelab/pve1/local-lvm/vm-9999-pvc-aaaa"
    );
    assert_eq!(p["spec"]["claimRef"]["namespace"], "paperless");
    assert_eq!(p["spec"]["claimRef"]["name"], "data");
    assert_eq!(p["status"]["phase"], "Bound");

    let pods = items(&kubectl_json(
        &h,
        &["get", "pods", "-n", "paperless", "-o", "json"],
    ));
    assert_eq!(pods.len(), 2);
    for pod in &pods {
        let owner = &pod["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "ReplicaSet");
        let rs = kubectl_json(
            &h,
            &[
                "get",
                "replicaset",
                owner["name"].as_str().expect("name"),
                "-n",
                "paperless",
                "-o",
                "json",
            ],
        );
        assert_eq!(rs["metadata"]["ownerReferences"][0]["kind"], "Deployment");
        assert_eq!(rs["metadata"]["ownerReferences"][0]["name"], "web");
        let claims: Vec<&Value> = pod["spec"]["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .filter_map(|v| v.get("persistentVolumeClaim"))
            .collect();
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0]["claimName"], "data");
        let ready = pod["status"]["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .find(|c| c["type"] == "Ready")
            .cloned();
        assert_eq!(
            ready.map(|c| c["status"].clone()),
            Some(Value::from("True"))
        );
    }
    let vas = items(&kubectl_json(
        &h,
        &["get", "volumeattachments", "-o", "json"],
    ));
    assert_eq!(vas.len(), 1);
    assert_eq!(vas[0]["spec"]["source"]["persistentVolumeName"], pv);
    assert_eq!(vas[0]["spec"]["nodeName"], "pve1");
    assert_eq!(vas[0]["status"]["attached"], true);

    assert_eq!(
        ok(
            &h,
            "kubectl",
            &["scale", "deployment/web", "-n", "paperless", "--replicas=0"]
        ),
        "deployment.apps/web scaled\n"
    );
    let dep = kubectl_json(
        &h,
        &["get", "deployment", "web", "-n", "paperless", "-o", "json"],
    );
    assert_eq!(dep["spec"]["replicas"], 0);
    let pods = items(&kubectl_json(
        &h,
        &["get", "pods", "-n", "paperless", "-o", "json"],
    ));
    assert_eq!(pods.len(), 2, "still terminating");
    assert!(
        pods.iter()
            .all(|p| p["metadata"]["deletionTimestamp"].is_string())
    );
    assert_eq!(
        items(&kubectl_json(
            &h,
            &["get", "volumeattachments", "-o", "json"]
        ))
        .len(),
        1
    );
    until("the pods and the volume attachment to go", || {
        items(&kubectl_json(
            &h,
            &["get", "pods", "-n", "paperless", "-o", "json"],
        ))
        .is_empty()
            && items(&kubectl_json(
                &h,
                &["get", "volumeattachments", "-o", "json"],
            ))
            .is_empty()
    });

    ok(
        &h,
        "kubectl",
        &[
            "-n",
            "paperless",
            "scale",
            "deployment",
            "web",
            "--replicas",
            "2",
        ],
    );
    let pods = items(&kubectl_json(&h, &["get", "pods", "-A", "-o", "json"]));
    assert_eq!(pods.len(), 2);
    assert!(pods.iter().all(|p| p["status"]["phase"] == "Pending"));
    assert_eq!(h.replicas("paperless", "web"), Some(2));
    until("both pods to be ready", || {
        let dep = kubectl_json(&h, &["get", "deployments", "-n", "paperless", "-o", "json"]);
        items(&dep)[0]["status"]["readyReplicas"] == 2
    });
    let r = run(
        &h,
        "kubectl",
        &["get", "deployment", "nope", "-n", "paperless", "-o", "json"],
    );
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (
            1,
            "Error from server (NotFound): deployments.apps \"nope\" not found\n"
        )
    );
}

#[test]
fn kubectl_statefulset_pods_mount_their_template_claims() {
    // EmuHost::new finds homelab-emu beside the test executable by itself.
    let d = tempfile::tempdir().expect("tempdir");
    let h = EmuHost::new(d.path());
    h.add_pv("db", "data-pg-0", "vm-9999-pvc-dddd");
    h.add_statefulset("db", "pg", 1, "data");
    let pod = kubectl_json(&h, &["get", "pod", "pg-0", "-n", "db", "-o", "json"]);
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "StatefulSet");
    assert_eq!(pod["metadata"]["ownerReferences"][0]["name"], "pg");
    assert!(
        pod["spec"]["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .any(|v| v["persistentVolumeClaim"]["claimName"] == "data-pg-0")
    );
    let sts = kubectl_json(&h, &["get", "sts/pg", "-n", "db", "-o", "json"]);
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "data"
    );
    let pvc = kubectl_json(&h, &["get", "pvc", "data-pg-0", "-n", "db", "-o", "json"]);
    assert_eq!(pvc["spec"]["volumeName"], "pvc-dddd");
    assert_eq!(
        ok(
            &h,
            "kubectl",
            &["scale", "statefulset/pg", "-n", "db", "--replicas=0"]
        ),
        "statefulset.apps/pg scaled\n"
    );
    assert!(
        items(&kubectl_json(
            &h,
            &["get", "pods", "-n", "other", "-o", "json"]
        ))
        .is_empty()
    );
}

#[test]
fn kubectl_down_and_failure_after_scale() {
    let (_d, h) = host();
    h.add_deployment("app", "web", 1, "data");
    h.set_kube_down(true);
    let r = run(&h, "kubectl", &["get", "pv", "-o", "json"]);
    assert_eq!((r.code, r.stderr.trim_end()), (1, CONNECTION_REFUSED));
    h.set_kube_down(false);

    // kubectl works until a scale succeeded, then fails twice, then works.
    let msg = "Unable to connect to the server: net/http: TLS handshake timeout";
    h.set_fail(
        "kubectl",
        FailRule::new(1, msg).after("kubectl scale").times(2),
    );
    ok(&h, "kubectl", &["get", "pods", "-n", "app", "-o", "json"]);
    ok(
        &h,
        "kubectl",
        &["scale", "deployment/web", "-n", "app", "--replicas=0"],
    );
    assert_eq!(h.replicas("app", "web"), Some(0));
    let r = run(
        &h,
        "kubectl",
        &["scale", "deployment/web", "-n", "app", "--replicas=1"],
    );
    assert_eq!((r.code, r.stderr.trim_end()), (1, msg));
    assert_eq!(
        h.replicas("app", "web"),
        Some(0),
        "a failed call changes nothing"
    );
    assert_eq!(
        run(&h, "kubectl", &["get", "pods", "-n", "app", "-o", "json"]).code,
        1
    );
    ok(
        &h,
        "kubectl",
        &["scale", "deployment/web", "-n", "app", "--replicas=1"],
    );
    assert_eq!(h.replicas("app", "web"), Some(1));
    let r = run(&h, "kubectl", &["get", "pods", "--bogus"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.starts_with("error: unknown flag: --bogus"));
}

/// Detaches the loop device and removes the VG made by the real-LVM check.
struct RealVg {
    vg: &'static str,
    loop_dev: String,
}

impl Drop for RealVg {
    fn drop(&mut self) {
        let lvm = |args: &[&str]| {
            let _ = Command::new(args[0])
                .args(&args[1..])
                .env("LVM_SUPPRESS_FD_WARNINGS", "1")
                .output();
        };
        lvm(&["vgremove", "--driverloaded", "n", "-ff", "-y", self.vg]);
        lvm(&["pvremove", "-ff", "-y", &self.loop_dev]);
        lvm(&["losetup", "-d", &self.loop_dev]);
    }
}

/// Re-creates the fixture with the real LVM tools: a loop device, a PV with
/// the fixture's PV UUID, `vgcfgrestore` of the hand-written metadata, then
/// the real `lvs`. Needs root and lvm2; changes the host's LVM (a VG named
/// `emuchkvg`, removed at the end), hence ignored by default.
#[test]
#[ignore = "creates a loop device and the VG emuchkvg on the host; run as root with --ignored"]
fn real_lvs_still_matches_fixture() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let meta = fixtures.join("lvs-real-vg-metadata.txt");
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(1 << 30))
        .expect("disk image");
    let real = |args: &[&str]| {
        let o = Command::new(args[0])
            .args(&args[1..])
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .output()
            .expect("run");
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    assert_ne!(
        real(&["vgs", "emuchkvg"]).0,
        0,
        "a VG emuchkvg already exists on this host"
    );
    let (code, dev) = real(&["losetup", "-f", "--show", disk.to_str().expect("utf-8")]);
    assert_eq!(code, 0);
    let guard = RealVg {
        vg: "emuchkvg",
        loop_dev: dev.trim().to_string(),
    };
    let pv_uuid = "r3nOG2-alxa-EJwV-v95W-bJBF-z0Bg-VRj9BK";
    assert_eq!(
        real(&[
            "pvcreate",
            "-y",
            "--uuid",
            pv_uuid,
            "--norestorefile",
            &guard.loop_dev
        ])
        .0,
        0
    );
    let meta_s = meta.to_str().expect("utf-8");
    assert_eq!(
        real(&[
            "vgcfgrestore",
            "--driverloaded",
            "n",
            "--force",
            "-f",
            meta_s,
            "emuchkvg"
        ])
        .0,
        0
    );
    let (code, out) = real(&[
        "lvs",
        "--reportformat",
        "json",
        "--units",
        "b",
        "--nosuffix",
        "-o",
        FIELDS,
        "emuchkvg",
    ]);
    assert_eq!(code, 0, "{out}");
    let fixture = std::fs::read_to_string(fixtures.join("lvs-real.json")).expect("fixture");
    // lv_time is printed in the local time zone; the rest must be identical.
    let no_time = |s: &str| {
        regex::Regex::new(r#""lv_time":"[^"]*""#)
            .expect("regex")
            .replace_all(s, "")
            .into_owned()
    };
    assert_eq!(no_time(&out), no_time(&fixture));
    drop(guard);
}
