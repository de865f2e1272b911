//! Emulator of LVM2's `lvs`, `lvcreate`, `lvremove`, `lvrename` and
//! `lvchange` (stands for: LVM 2.03 thin provisioning on the Proxmox host,
//! VG `pve`, thin pool `data`, one thin LV per PVC).
//!
//! Only the argument forms a careful product uses are accepted; anything
//! else fails with exit 3 and a message starting `homelab-emu:` so that a
//! product relying on an unemulated form is noticed. Error texts and exit
//! codes of the emulated cases are those of LVM 2.03.16 (checked against the
//! real tools where the CI kernel allows, see `tests/fixtures/`).

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use anyhow::Result;

use super::state::{CRYPT_FILE, CryptState, LVM_FILE, Lv, LvmState, Pool, StateDir, Vg, now_secs};
use super::util::{Out, allocated, loop_backing_files, opt_value, reflink_copy};

/// LVM's default extent size; LV sizes are rounded up to it.
pub const EXTENT: u64 = 4 << 20;

/// Fields `lvs -o` accepts. The last four are always empty (real LVM has
/// them in its default field list).
pub const FIELDS: &[&str] = &[
    "lv_name",
    "vg_name",
    "lv_full_name",
    "lv_path",
    "lv_size",
    "pool_lv",
    "origin",
    "lv_tags",
    "lv_attr",
    "lv_active",
    "data_percent",
    "metadata_percent",
    "lv_time",
    "segtype",
    "lv_uuid",
    "move_pv",
    "mirror_log",
    "copy_percent",
    "convert_lv",
];

/// `lvs` without `-o`.
const DEFAULT_FIELDS: &[&str] = &[
    "lv_name",
    "vg_name",
    "lv_attr",
    "lv_size",
    "pool_lv",
    "origin",
    "data_percent",
    "metadata_percent",
    "move_pv",
    "mirror_log",
    "copy_percent",
    "convert_lv",
];

pub fn run(dir: &StateDir, cmd: &str, args: &[String]) -> Result<Out> {
    let mut st: LvmState = dir.load(LVM_FILE)?;
    let mut crypt: CryptState = dir.load(CRYPT_FILE)?;
    let out = match cmd {
        "lvs" => return lvs(dir, &st, &crypt, args),
        "lvcreate" => lvcreate(dir, &mut st, args)?,
        "lvremove" => lvremove(dir, &mut st, &crypt, args)?,
        "lvrename" => lvrename(dir, &mut st, &mut crypt, args)?,
        "lvchange" => lvchange(dir, &mut st, &crypt, args)?,
        _ => Out::fail(127, &format!("homelab-emu: {cmd}: not an LVM command")),
    };
    dir.save(LVM_FILE, &st)?;
    if cmd == "lvrename" {
        dir.save(CRYPT_FILE, &crypt)?;
    }
    Ok(out)
}

fn unrecognized(cmd: &str, opt: &str) -> Out {
    Out::fail(
        3,
        &format!("{cmd}: unrecognized option '{opt}'\n  Error during parsing of command line."),
    )
}

fn not_emulated(cmd: &str, what: &str) -> Out {
    Out::fail(3, &format!("homelab-emu: {cmd}: {what} is not emulated"))
}

fn vg_not_found(vg: &str) -> String {
    format!("  Volume group \"{vg}\" not found\n  Cannot process volume group {vg}")
}

fn lv_not_found(vg: &str, lv: &str) -> String {
    format!("  Failed to find logical volume \"{vg}/{lv}\"")
}

fn already_exists(vg: &str, lv: &str) -> String {
    format!("  Logical Volume \"{lv}\" already exists in volume group \"{vg}\"")
}

/// LVM's name rules; `Err` carries the real message.
fn check_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+_.-".contains(&b));
    if name.is_empty()
        || name.len() > 127
        || name == "."
        || name == ".."
        || name.starts_with('-')
        || !ok_chars
    {
        return Err(format!("  Logical volume name \"{name}\" is invalid."));
    }
    for p in ["snapshot", "pvmove"] {
        if name.starts_with(p) {
            return Err(format!(
                "  Names starting \"{p}\" are reserved. Please choose a different LV name."
            ));
        }
    }
    for s in [
        "_cdata", "_cmeta", "_corig", "_cpool", "_cvol", "_imeta", "_iorig", "_mimage", "_mlog",
        "_pmspare", "_rimage", "_rmeta", "_tdata", "_tmeta", "_vdata", "_vorigin", "_wcorig",
    ] {
        if name.contains(s) {
            return Err(format!(
                "  Names including \"{s}\" are reserved. Please choose a different LV name."
            ));
        }
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 1024
        && !tag.starts_with('-')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+.-/=!:&#".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("  Tag \"{tag}\" is invalid."))
    }
}

/// `"vg/lv"` -> `("vg", Some("lv"))`; `"vg"` -> `("vg", None)`.
fn split_operand(s: &str) -> (&str, Option<&str>) {
    let s = s.strip_prefix("/dev/").unwrap_or(s);
    match s.split_once('/') {
        Some((vg, lv)) => (vg, Some(lv)),
        None => (s, None),
    }
}

/// Sizes as LVM reads them: a number with an optional unit (default MiB),
/// binary multiples either case; rounded up to whole extents.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "m"),
    };
    let n: f64 = num.parse().ok()?;
    let mul: f64 = match unit.to_ascii_lowercase().as_str() {
        "b" => 1.0,
        "s" => 512.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = (n * mul).ceil();
    if bytes.is_nan() || bytes <= 0.0 {
        return None;
    }
    Some(round_extent(bytes as u64))
}

pub fn round_extent(bytes: u64) -> u64 {
    bytes.div_ceil(EXTENT).max(1) * EXTENT
}

// ---------------------------------------------------------------- lvs

struct Ctx<'a> {
    dir: &'a StateDir,
    crypt: &'a CryptState,
    loops: BTreeSet<PathBuf>,
}

impl Ctx<'_> {
    /// Open: a mapping on it, or a loop device on its image.
    fn in_use(&self, vg: &str, lv: &str) -> bool {
        if self.crypt.open.values().any(|m| m.vg == vg && m.lv == lv) {
            return true;
        }
        let img = self.dir.image(vg, lv);
        let plain = self.dir.plain_image(vg, lv);
        self.loops.contains(&img) || self.loops.contains(&plain)
    }
}

fn pct(v: f64) -> String {
    format!("{:.2}", v.clamp(0.0, 100.0))
}

fn lv_time(t: i64) -> String {
    use chrono::TimeZone;
    match chrono::Local.timestamp_opt(t, 0) {
        chrono::LocalResult::Single(d) | chrono::LocalResult::Ambiguous(d, _) => {
            d.format("%Y-%m-%d %H:%M:%S %z").to_string()
        }
        chrono::LocalResult::None => String::new(),
    }
}

/// Allocated bytes of a thin LV (its images).
fn lv_allocated(dir: &StateDir, vg: &str, name: &str, lv: &Lv) -> u64 {
    let mut n = allocated(&dir.image(vg, name));
    if lv.encrypted {
        n += allocated(&dir.plain_image(vg, name));
    }
    n
}

pub fn pool_data_percent(
    dir: &StateDir,
    vg_name: &str,
    vg: &Vg,
    pool_name: &str,
    pool: &Pool,
) -> f64 {
    if let Some(p) = pool.data_percent {
        return p;
    }
    let used: u64 = vg
        .lvs
        .iter()
        .filter(|(_, lv)| lv.pool == pool_name)
        .map(|(n, lv)| lv_allocated(dir, vg_name, n, lv))
        .sum();
    used as f64 * 100.0 / pool.size.max(1) as f64
}

pub fn pool_metadata_percent(vg: &Vg, pool_name: &str, pool: &Pool) -> f64 {
    if let Some(p) = pool.metadata_percent {
        return p;
    }
    let n = vg.lvs.values().filter(|lv| lv.pool == pool_name).count();
    pool.metadata_base_percent + pool.metadata_percent_per_lv * n as f64
}

enum Row<'a> {
    Pool(&'a str, &'a Pool),
    Thin(&'a str, &'a Lv),
    /// `[pool_tdata]`, `[pool_tmeta]`, `[lvol0_pmspare]` (only with `-a`).
    Hidden(String, &'a Pool, &'static str),
}

impl Row<'_> {
    fn name(&self) -> String {
        match self {
            Row::Pool(n, _) | Row::Thin(n, _) => n.to_string(),
            Row::Hidden(n, _, _) => n.clone(),
        }
    }
}

fn field(ctx: &Ctx, vg_name: &str, vg: &Vg, row: &Row, f: &str) -> String {
    let name = row.name();
    match (f, row) {
        ("lv_name", _) => name,
        ("vg_name", _) => vg_name.to_string(),
        ("lv_full_name", _) => format!("{vg_name}/{name}"),
        ("lv_path", Row::Thin(..)) => ctx.dir.dev_path(vg_name, &name).display().to_string(),
        ("lv_size", Row::Pool(_, p)) => p.size.to_string(),
        ("lv_size", Row::Thin(_, lv)) => lv.size.to_string(),
        ("lv_size", Row::Hidden(_, p, part)) => match *part {
            "tdata" => p.size.to_string(),
            _ => meta_size(p).to_string(),
        },
        ("pool_lv", Row::Thin(_, lv)) => lv.pool.clone(),
        ("origin", Row::Thin(_, lv)) => lv.origin.clone(),
        ("lv_tags", Row::Thin(_, lv)) => {
            let mut t = lv.tags.clone();
            t.sort();
            t.join(",")
        }
        ("lv_attr", Row::Pool(..)) => "twi-aotz--".to_string(),
        ("lv_attr", Row::Thin(n, lv)) => format!(
            "Vwi-{}{}tz-{}",
            if lv.active { 'a' } else { '-' },
            if lv.active && ctx.in_use(vg_name, n) {
                'o'
            } else {
                '-'
            },
            if lv.activation_skip { 'k' } else { '-' }
        ),
        ("lv_attr", Row::Hidden(_, _, part)) => match *part {
            "tdata" => "Twi-ao----",
            "tmeta" => "ewi-ao----",
            _ => "ewi-------",
        }
        .to_string(),
        ("lv_active", Row::Pool(..)) => "active".to_string(),
        ("lv_active", Row::Thin(_, lv)) => if lv.active { "active" } else { "" }.to_string(),
        ("lv_active", Row::Hidden(_, _, part)) => {
            if *part == "pmspare" { "" } else { "active" }.to_string()
        }
        ("data_percent", Row::Pool(n, p)) => pct(pool_data_percent(ctx.dir, vg_name, vg, n, p)),
        ("data_percent", Row::Thin(n, lv)) if lv.active => {
            pct(lv_allocated(ctx.dir, vg_name, n, lv) as f64 * 100.0 / lv.size.max(1) as f64)
        }
        ("metadata_percent", Row::Pool(n, p)) => pct(pool_metadata_percent(vg, n, p)),
        ("lv_time", Row::Pool(_, p)) => lv_time(p.time),
        ("lv_time", Row::Thin(_, lv)) => lv_time(lv.time),
        ("lv_time", Row::Hidden(_, p, _)) => lv_time(p.time),
        ("segtype", Row::Pool(..)) => "thin-pool".to_string(),
        ("segtype", Row::Thin(..)) => "thin".to_string(),
        ("segtype", Row::Hidden(..)) => "linear".to_string(),
        ("lv_uuid", Row::Pool(_, p)) if !p.uuid.is_empty() => p.uuid.clone(),
        ("lv_uuid", Row::Thin(_, lv)) if !lv.uuid.is_empty() => lv.uuid.clone(),
        // Hand-written state without UUIDs still reports well-formed ones.
        ("lv_uuid", _) => super::state::lvm_uuid(&format!("{vg_name}/{name}")),
        _ => String::new(),
    }
}

fn meta_size(p: &Pool) -> u64 {
    round_extent(p.size / 1000)
}

fn format_row(ctx: &Ctx, vg_name: &str, vg: &Vg, row: &Row, fields: &[String]) -> String {
    let parts: Vec<String> = fields
        .iter()
        .map(|f| {
            let v = field(ctx, vg_name, vg, row, f);
            format!("{}:{}", json_str(f), json_str(&v))
        })
        .collect();
    format!("{{{}}}", parts.join(", "))
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// The exact layout of LVM 2.03's `--reportformat json`.
fn report_text(rows: &[String]) -> String {
    let mut s = String::from("  {\n      \"report\": [\n          {\n              \"lv\": [\n");
    for (i, r) in rows.iter().enumerate() {
        s.push_str("                  ");
        s.push_str(r);
        if i + 1 < rows.len() {
            s.push(',');
        }
        s.push('\n');
    }
    s.push_str("              ]\n          }\n      ]\n  }\n");
    s
}

/// All rows of one VG, in LVM's default order (by name).
fn vg_rows<'a>(vg: &'a Vg, all: bool) -> Vec<Row<'a>> {
    let mut rows: Vec<Row> = Vec::new();
    for (n, p) in &vg.pools {
        rows.push(Row::Pool(n, p));
        if all {
            rows.push(Row::Hidden(format!("[{n}_tdata]"), p, "tdata"));
            rows.push(Row::Hidden(format!("[{n}_tmeta]"), p, "tmeta"));
        }
    }
    if all && let Some(p) = vg.pools.values().next() {
        rows.push(Row::Hidden("[lvol0_pmspare]".to_string(), p, "pmspare"));
    }
    for (n, lv) in &vg.lvs {
        rows.push(Row::Thin(n, lv));
    }
    rows.sort_by_key(|r| r.name());
    rows
}

/// The full report (every field, hidden LVs included when `all`), as real
/// `lvs --reportformat json` would print it.
pub fn report(
    dir: &StateDir,
    st: &LvmState,
    crypt: &CryptState,
    fields: &[String],
    all: bool,
) -> String {
    let ctx = Ctx {
        dir,
        crypt,
        loops: loop_backing_files(),
    };
    let mut rows = Vec::new();
    for (vg_name, vg) in &st.vgs {
        for r in vg_rows(vg, all) {
            rows.push(format_row(&ctx, vg_name, vg, &r, fields));
        }
    }
    report_text(&rows)
}

fn lvs(dir: &StateDir, st: &LvmState, crypt: &CryptState, args: &[String]) -> Result<Out> {
    let mut fields: Option<String> = None;
    let (mut json, mut units_b, mut nosuffix, mut all) = (false, false, false, false);
    let mut operands: Vec<String> = Vec::new();
    let mut i = 0;
    let mut dd = false;
    while i < args.len() {
        let a = &args[i];
        if dd || !a.starts_with('-') {
            operands.push(a.clone());
        } else if a == "--" {
            dd = true;
        } else if let Some(v) = opt_value(args, &mut i, &["--reportformat"]) {
            let v = v?;
            if v != "json" {
                return Ok(not_emulated("lvs", &format!("--reportformat {v}")));
            }
            json = true;
        } else if let Some(v) = opt_value(args, &mut i, &["--units"]) {
            let v = v?;
            if v != "b" {
                return Ok(not_emulated("lvs", &format!("--units {v} (use --units b)")));
            }
            units_b = true;
        } else if let Some(v) = opt_value(args, &mut i, &["-o", "--options"]) {
            let v = v?;
            fields = Some(match fields {
                Some(f) => format!("{f},{v}"),
                None => v,
            });
        } else if a == "--nosuffix" {
            nosuffix = true;
        } else if a == "-a" || a == "--all" {
            all = true;
        } else if a == "-q" || a == "--quiet" {
        } else {
            return Ok(unrecognized("lvs", a));
        }
        i += 1;
    }
    if !json {
        return Ok(not_emulated("lvs", "output other than --reportformat json"));
    }
    if !units_b || !nosuffix {
        return Ok(not_emulated("lvs", "a report without --units b --nosuffix"));
    }
    let fields: Vec<String> = match fields {
        Some(f) => f
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        None => DEFAULT_FIELDS.iter().map(|s| s.to_string()).collect(),
    };
    if let Some(bad) = fields.iter().find(|f| !FIELDS.contains(&f.as_str())) {
        return Ok(Out::fail(5, &format!("  Unrecognised field: {bad}")));
    }

    let ctx = Ctx {
        dir,
        crypt,
        loops: loop_backing_files(),
    };
    let mut out = Out::ok();
    // (vg, lv name) selected; None = the whole VG.
    let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();
    if operands.is_empty() {
        for (vg_name, vg) in &st.vgs {
            for r in vg_rows(vg, all) {
                wanted.insert((vg_name.clone(), r.name()));
            }
        }
    }
    for op in &operands {
        let (vg_name, lv) = split_operand(op);
        let Some(vg) = st.vgs.get(vg_name) else {
            out.fail_with(5, &vg_not_found(vg_name));
            continue;
        };
        match lv {
            None => {
                for r in vg_rows(vg, all) {
                    wanted.insert((vg_name.to_string(), r.name()));
                }
            }
            Some(lv) if vg.lvs.contains_key(lv) || vg.pools.contains_key(lv) => {
                wanted.insert((vg_name.to_string(), lv.to_string()));
            }
            Some(lv) => out.fail_with(5, &lv_not_found(vg_name, lv)),
        }
    }
    let mut rows = Vec::new();
    for (vg_name, vg) in &st.vgs {
        for r in vg_rows(vg, all) {
            if wanted.contains(&(vg_name.clone(), r.name())) {
                rows.push(format_row(&ctx, vg_name, vg, &r, &fields));
            }
        }
    }
    out.stdout = report_text(&rows);
    Ok(out)
}

// ---------------------------------------------------------------- helpers that change state

fn set_active_link(dir: &StateDir, vg: &str, name: &str, active: bool) -> Result<()> {
    let link = dir.dev_path(vg, name);
    if active {
        if let Some(p) = link.parent() {
            fs::create_dir_all(p)?;
        }
        if fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(dir.image(vg, name), &link)?;
        }
    } else {
        remove_if_exists(&link)?;
    }
    Ok(())
}

fn remove_if_exists(p: &std::path::Path) -> Result<()> {
    match fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Adds a thin LV record whose image(s) already exist (used by the builders too).
pub fn insert_lv(dir: &StateDir, st: &mut LvmState, vg: &str, name: &str, lv: Lv) -> Result<()> {
    set_active_link(dir, vg, name, lv.active)?;
    st.vgs
        .entry(vg.to_string())
        .or_default()
        .lvs
        .insert(name.to_string(), lv);
    Ok(())
}

/// How a new snapshot starts out.
pub struct SnapFlags {
    pub tags: Vec<String>,
    pub activation_skip: bool,
    pub active: bool,
}

/// Makes `new` a thin snapshot of `origin` (copying the images).
pub fn snapshot_lv(
    dir: &StateDir,
    st: &mut LvmState,
    vg: &str,
    origin: &str,
    new: &str,
    flags: SnapFlags,
) -> Result<()> {
    let SnapFlags {
        tags,
        activation_skip,
        active,
    } = flags;
    let Some(o) = st.vgs.get(vg).and_then(|v| v.lvs.get(origin)).cloned() else {
        anyhow::bail!("no LV {vg}/{origin}");
    };
    reflink_copy(&dir.image(vg, origin), &dir.image(vg, new))?;
    if o.encrypted {
        reflink_copy(&dir.plain_image(vg, origin), &dir.plain_image(vg, new))?;
    }
    let uuid = st.next_uuid(&format!("{vg}/{new}"));
    let lv = Lv {
        pool: o.pool.clone(),
        size: o.size,
        origin: origin.to_string(),
        tags,
        active,
        activation_skip,
        encrypted: o.encrypted,
        uuid,
        time: now_secs(),
    };
    insert_lv(dir, st, vg, new, lv)
}

fn name_taken(vg: &Vg, name: &str) -> bool {
    vg.lvs.contains_key(name) || vg.pools.contains_key(name)
}

// ---------------------------------------------------------------- lvcreate

fn lvcreate(dir: &StateDir, st: &mut LvmState, args: &[String]) -> Result<Out> {
    let mut snapshot = false;
    let mut name: Option<String> = None;
    let mut skip: Option<bool> = None;
    let mut ignore_skip = false;
    let mut activate: Option<bool> = None;
    let mut tags = Vec::new();
    let mut vsize: Option<String> = None;
    let mut thin = false;
    let mut thinpool: Option<String> = None;
    let mut operands = Vec::new();
    let mut dd = false;
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if dd || !a.starts_with('-') {
            operands.push(a.clone());
        } else if a == "--" {
            dd = true;
        } else if a == "-s" || a == "--snapshot" {
            snapshot = true;
        } else if a == "-T" || a == "--thin" {
            thin = true;
        } else if a == "-K" || a == "--ignoreactivationskip" {
            ignore_skip = true;
        } else if a == "-y" || a == "--yes" || a == "-q" || a == "--quiet" {
        } else if let Some(v) = opt_value(args, &mut i, &["-n", "--name"]) {
            name = Some(v?);
        } else if let Some(v) = opt_value(args, &mut i, &["-k", "--setactivationskip"]) {
            skip = Some(match v?.as_str() {
                "y" | "yes" => true,
                "n" | "no" => false,
                other => {
                    return Ok(Out::fail(
                        3,
                        &format!("  Invalid argument for --setactivationskip: {other}"),
                    ));
                }
            });
        } else if let Some(v) = opt_value(args, &mut i, &["-a", "--activate"]) {
            activate = Some(match v?.as_str() {
                "y" => true,
                "n" => false,
                other => {
                    return Ok(Out::fail(
                        3,
                        &format!("  Invalid argument for --activate: {other}"),
                    ));
                }
            });
        } else if let Some(v) = opt_value(args, &mut i, &["--addtag"]) {
            tags.push(v?);
        } else if let Some(v) = opt_value(args, &mut i, &["-V", "--virtualsize"]) {
            vsize = Some(v?);
        } else if let Some(v) = opt_value(args, &mut i, &["--thinpool"]) {
            thinpool = Some(v?);
        } else if let Some(v) = opt_value(args, &mut i, &["--type"]) {
            let v = v?;
            if v != "thin" {
                return Ok(not_emulated("lvcreate", &format!("--type {v}")));
            }
            thin = true;
        } else if let Some(v) = opt_value(args, &mut i, &["-W", "--wipesignatures", "-Z", "--zero"])
        {
            v?;
        } else if a == "-L" || a.starts_with("--size") || a.starts_with("-L") {
            return Ok(not_emulated(
                "lvcreate",
                "an old-style (non-thin) LV or snapshot with -L",
            ));
        } else {
            return Ok(unrecognized("lvcreate", a));
        }
        i += 1;
    }
    for t in &tags {
        if let Err(e) = check_tag(t) {
            return Ok(Out::fail(3, &e));
        }
    }
    if let Some(n) = &name
        && let Err(e) = check_name(n)
    {
        return Ok(Out::fail(3, &e));
    }
    if operands.len() != 1 {
        return Ok(not_emulated(
            "lvcreate",
            "other than exactly one VG/LV operand",
        ));
    }
    let (vg_name, target) = split_operand(&operands[0]);
    let (vg_name, target) = (vg_name.to_string(), target.map(str::to_string));

    if let Some(size) = vsize {
        // Thin volume: -V SIZE -T VG/POOL (or --thinpool POOL VG).
        if snapshot {
            return Ok(not_emulated("lvcreate", "-s with -V"));
        }
        let _ = thin;
        let Some(pool) = thinpool.or(target) else {
            return Ok(Out::fail(3, "  Please specify name of existing thin pool."));
        };
        let Some(bytes) = parse_size(&size) else {
            return Ok(Out::fail(
                3,
                &format!("  Invalid argument for --virtualsize: {size}"),
            ));
        };
        let Some(vg) = st.vgs.get(&vg_name) else {
            return Ok(Out::fail(5, &vg_not_found(&vg_name)));
        };
        if !vg.pools.contains_key(&pool) {
            return Ok(Out::fail(
                5,
                &format!("  Thin pool {vg_name}/{pool} not found."),
            ));
        }
        let name = match name {
            Some(n) => n,
            None => (0..)
                .map(|k| format!("lvol{k}"))
                .find(|n| !name_taken(vg, n))
                .unwrap_or_default(),
        };
        if name_taken(vg, &name) {
            return Ok(Out::fail(5, &already_exists(&vg_name, &name)));
        }
        let img = dir.image(&vg_name, &name);
        if let Some(p) = img.parent() {
            fs::create_dir_all(p)?;
        }
        fs::File::create(&img)?.set_len(bytes)?;
        let uuid = st.next_uuid(&format!("{vg_name}/{name}"));
        let lv = Lv {
            pool,
            size: bytes,
            origin: String::new(),
            tags,
            active: activate.unwrap_or(true) && (!skip.unwrap_or(false) || ignore_skip),
            activation_skip: skip.unwrap_or(false),
            encrypted: false,
            uuid,
            time: now_secs(),
        };
        insert_lv(dir, st, &vg_name, &name, lv)?;
        let mut out = Out::ok();
        out.out(&format!("  Logical volume \"{name}\" created."));
        return Ok(out);
    }

    // Thin snapshot: -s [-kn] -n NAME VG/ORIGIN.
    let Some(origin) = target else {
        return Ok(Out::fail(3, "  Please provide a volume group name"));
    };
    if !snapshot {
        return Ok(not_emulated(
            "lvcreate",
            "a create that is neither -s VG/ORIGIN nor -V SIZE -T VG/POOL",
        ));
    }
    let Some(vg) = st.vgs.get(&vg_name) else {
        return Ok(Out::fail(5, &vg_not_found(&vg_name)));
    };
    let Some(name) = name else {
        return Ok(not_emulated("lvcreate", "a snapshot without -n NAME"));
    };
    if name_taken(vg, &name) {
        return Ok(Out::fail(5, &already_exists(&vg_name, &name)));
    }
    if vg.pools.contains_key(&origin) {
        return Ok(not_emulated("lvcreate", "a snapshot of a thin pool"));
    }
    if !vg.lvs.contains_key(&origin) {
        return Ok(Out::fail(
            5,
            &format!("  Snapshot origin LV {origin} not found in Volume group {vg_name}."),
        ));
    }
    // Thin snapshots get the activation-skip flag unless -kn.
    let skip = skip.unwrap_or(true);
    let active = activate.unwrap_or(true) && (!skip || ignore_skip);
    let flags = SnapFlags {
        tags,
        activation_skip: skip,
        active,
    };
    snapshot_lv(dir, st, &vg_name, &origin, &name, flags)?;
    let mut out = Out::ok();
    out.out(&format!("  Logical volume \"{name}\" created."));
    Ok(out)
}

// ---------------------------------------------------------------- lvremove

fn lvremove(dir: &StateDir, st: &mut LvmState, crypt: &CryptState, args: &[String]) -> Result<Out> {
    let mut force = false;
    let mut operands = Vec::new();
    let mut dd = false;
    for a in args {
        if dd || !a.starts_with('-') {
            operands.push(a.clone());
        } else if a == "--" {
            dd = true;
        } else if a == "-f" || a == "-ff" || a == "--force" || a == "-y" || a == "--yes" {
            force = true;
        } else if a == "-q" || a == "--quiet" {
        } else {
            return Ok(unrecognized("lvremove", a));
        }
    }
    if operands.is_empty() {
        return Ok(Out::fail(
            3,
            "  No logical volume specified.\n  Run `lvremove --help' for more information.",
        ));
    }
    let ctx = Ctx {
        dir,
        crypt,
        loops: loop_backing_files(),
    };
    let mut out = Out::ok();
    let mut removed = Vec::new();
    for op in &operands {
        let (vg_name, lv) = split_operand(op);
        let Some(vg) = st.vgs.get(vg_name) else {
            out.fail_with(5, &vg_not_found(vg_name));
            continue;
        };
        let Some(lv_name) = lv else {
            return Ok(not_emulated("lvremove", "removing a whole VG"));
        };
        if vg.pools.contains_key(lv_name) {
            return Ok(not_emulated("lvremove", "removing a thin pool"));
        }
        let Some(lv) = vg.lvs.get(lv_name) else {
            out.fail_with(5, &lv_not_found(vg_name, lv_name));
            continue;
        };
        if lv.active && ctx.in_use(vg_name, lv_name) {
            out.fail_with(5, &format!("  Logical volume {vg_name}/{lv_name} in use."));
            continue;
        }
        if lv.active && !force {
            out.fail_with(
                5,
                &format!(
                    "Do you really want to remove active logical volume {vg_name}/{lv_name}? [y/n]: [n]\n  Logical volume \"{lv_name}\" not removed."
                ),
            );
            continue;
        }
        removed.push((vg_name.to_string(), lv_name.to_string()));
    }
    for (vg_name, lv_name) in removed {
        remove_if_exists(&dir.dev_path(&vg_name, &lv_name))?;
        remove_if_exists(&dir.image(&vg_name, &lv_name))?;
        remove_if_exists(&dir.plain_image(&vg_name, &lv_name))?;
        if let Some(vg) = st.vgs.get_mut(&vg_name) {
            vg.lvs.remove(&lv_name);
            // Thin snapshots outlive their origin; they just lose the link.
            for other in vg.lvs.values_mut() {
                if other.origin == lv_name {
                    other.origin.clear();
                }
            }
        }
        out.out(&format!(
            "  Logical volume \"{lv_name}\" successfully removed."
        ));
    }
    Ok(out)
}

// ---------------------------------------------------------------- lvrename

fn lvrename(
    dir: &StateDir,
    st: &mut LvmState,
    crypt: &mut CryptState,
    args: &[String],
) -> Result<Out> {
    let mut operands = Vec::new();
    let mut dd = false;
    for a in args {
        if dd || !a.starts_with('-') {
            operands.push(a.clone());
        } else if a == "--" {
            dd = true;
        } else if a == "-q" || a == "--quiet" || a == "-y" || a == "--yes" {
        } else {
            return Ok(unrecognized("lvrename", a));
        }
    }
    let (vg_name, old, new) = match operands.as_slice() {
        [vg, old, new] => {
            let strip = |s: &str| s.strip_prefix(&format!("{vg}/")).unwrap_or(s).to_string();
            (vg.clone(), strip(old), strip(new))
        }
        [old, new] => {
            let (vg1, o) = split_operand(old);
            let (vg2, n) = split_operand(new);
            let Some(o) = o else {
                return Ok(Out::fail(
                    3,
                    "  Old logical volume name must include the volume group.",
                ));
            };
            let n = match n {
                Some(_) if vg1 != vg2 => {
                    return Ok(Out::fail(
                        3,
                        &format!(
                            "  Logical volume names must have the same volume group (\"{vg1}\" or \"{vg2}\")."
                        ),
                    ));
                }
                Some(n) => n,
                None => vg2,
            };
            (vg1.to_string(), o.to_string(), n.to_string())
        }
        _ => {
            return Ok(Out::fail(
                3,
                "  Old and new logical volume names required\n  Run `lvrename --help' for more information.",
            ));
        }
    };
    if let Err(e) = check_name(&new) {
        return Ok(Out::fail(
            3,
            &e.replace("Logical volume name", "New logical volume name"),
        ));
    }
    if old == new {
        return Ok(Out::fail(
            3,
            "  Old and new logical volume names must differ",
        ));
    }
    let Some(vg) = st.vgs.get_mut(&vg_name) else {
        return Ok(Out::fail(5, &vg_not_found(&vg_name)));
    };
    if vg.pools.contains_key(&old) {
        return Ok(not_emulated("lvrename", "renaming a thin pool"));
    }
    let Some(lv) = vg.lvs.get(&old).cloned() else {
        return Ok(Out::fail(
            5,
            &format!("  Existing logical volume \"{old}\" not found in volume group \"{vg_name}\""),
        ));
    };
    if name_taken(vg, &new) {
        return Ok(Out::fail(5, &already_exists(&vg_name, &new)));
    }
    remove_if_exists(&dir.dev_path(&vg_name, &old))?;
    fs::rename(dir.image(&vg_name, &old), dir.image(&vg_name, &new))?;
    if lv.encrypted {
        fs::rename(
            dir.plain_image(&vg_name, &old),
            dir.plain_image(&vg_name, &new),
        )?;
    }
    vg.lvs.remove(&old);
    vg.lvs.insert(new.clone(), lv.clone());
    // Origins are references in LVM: snapshots follow the rename.
    for other in vg.lvs.values_mut() {
        if other.origin == old {
            other.origin = new.clone();
        }
    }
    for m in crypt.open.values_mut() {
        if m.vg == vg_name && m.lv == old {
            m.lv = new.clone();
        }
    }
    set_active_link(dir, &vg_name, &new, lv.active)?;
    let mut out = Out::ok();
    out.out(&format!(
        "  Renamed \"{old}\" to \"{new}\" in volume group \"{vg_name}\""
    ));
    Ok(out)
}

// ---------------------------------------------------------------- lvchange

fn lvchange(dir: &StateDir, st: &mut LvmState, crypt: &CryptState, args: &[String]) -> Result<Out> {
    let mut activate: Option<bool> = None;
    let mut ignore_skip = false;
    let mut skip: Option<bool> = None;
    let mut add = Vec::new();
    let mut del = Vec::new();
    let mut operands = Vec::new();
    let mut dd = false;
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if dd || !a.starts_with('-') {
            operands.push(a.clone());
        } else if a == "--" {
            dd = true;
        } else if a == "-K" || a == "--ignoreactivationskip" {
            ignore_skip = true;
        } else if a == "-y" || a == "--yes" || a == "-q" || a == "--quiet" {
        } else if let Some(v) = opt_value(args, &mut i, &["-a", "--activate"]) {
            activate = Some(match v?.as_str() {
                "y" | "ay" => true,
                "n" | "an" => false,
                other => return Ok(not_emulated("lvchange", &format!("--activate {other}"))),
            });
        } else if let Some(v) = opt_value(args, &mut i, &["-k", "--setactivationskip"]) {
            skip = Some(match v?.as_str() {
                "y" => true,
                "n" => false,
                other => {
                    return Ok(Out::fail(
                        3,
                        &format!("  Invalid argument for --setactivationskip: {other}"),
                    ));
                }
            });
        } else if let Some(v) = opt_value(args, &mut i, &["--addtag"]) {
            add.push(v?);
        } else if let Some(v) = opt_value(args, &mut i, &["--deltag"]) {
            del.push(v?);
        } else {
            return Ok(unrecognized("lvchange", a));
        }
        i += 1;
    }
    for t in add.iter().chain(&del) {
        if let Err(e) = check_tag(t) {
            return Ok(Out::fail(3, &e));
        }
    }
    if activate.is_none() && skip.is_none() && add.is_empty() && del.is_empty() {
        return Ok(Out::fail(
            3,
            "  No command with matching syntax recognised.  Run 'lvchange --help' for more information.",
        ));
    }
    if operands.is_empty() {
        return Ok(not_emulated("lvchange", "a change without VG/LV operands"));
    }
    let ctx = Ctx {
        dir,
        crypt,
        loops: loop_backing_files(),
    };
    let mut out = Out::ok();
    for op in &operands {
        let (vg_name, lv) = split_operand(op);
        let Some(vg) = st.vgs.get_mut(vg_name) else {
            out.fail_with(5, &vg_not_found(vg_name));
            continue;
        };
        let Some(lv_name) = lv else {
            return Ok(not_emulated("lvchange", "changing a whole VG"));
        };
        if vg.pools.contains_key(lv_name) {
            // The pool is always active in the emulator.
            continue;
        }
        let Some(lv) = vg.lvs.get_mut(lv_name) else {
            out.fail_with(5, &lv_not_found(vg_name, lv_name));
            continue;
        };
        let mut changed = false;
        if let Some(k) = skip {
            lv.activation_skip = k;
            changed = true;
        }
        for t in &add {
            if !lv.tags.contains(t) {
                lv.tags.push(t.clone());
            }
            changed = true;
        }
        for t in &del {
            lv.tags.retain(|x| x != t);
            changed = true;
        }
        if changed {
            out.out(&format!("  Logical volume {vg_name}/{lv_name} changed."));
        }
        match activate {
            Some(true) if !lv.activation_skip || ignore_skip => {
                lv.active = true;
                set_active_link(dir, vg_name, lv_name, true)?;
            }
            Some(false) if lv.active => {
                if ctx.in_use(vg_name, lv_name) {
                    out.fail_with(5, &format!("  Logical volume {vg_name}/{lv_name} in use."));
                    continue;
                }
                lv.active = false;
                set_active_link(dir, vg_name, lv_name, false)?;
            }
            _ => {}
        }
    }
    Ok(out)
}
