//! The site configuration file every tool reads at start
//! (`/etc/default/backup-pipeline`, or `$BACKUP_PIPELINE_CONFIG`).
//!
//! The file is what systemd's `EnvironmentFile=` reads too, so a timer run
//! and a hand run see the same settings. Format (strict):
//!
//! - `KEY=VALUE`, one per line; `KEY` is `[A-Za-z_][A-Za-z0-9_]*`;
//! - blank lines and lines whose first non-blank character is `#`;
//! - `VALUE` is either unquoted (no quotes, backslashes, `$` or backticks;
//!   surrounding blanks are dropped), `'single quoted'` (literal) or
//!   `"double quoted"` (`\"`, `\\`, `\$` and `` \` `` escapes); nothing may
//!   follow the closing quote but blanks;
//! - `export KEY=...` is refused (systemd would read a variable named
//!   `export KEY`), as is a key given twice.
//!
//! Anything else is a malformed line: the tool exits 2 naming `file:line`.
//! A missing file means the built-in defaults.
//!
//! Precedence: flag, then environment, then the file, then the default.
//! [`apply`] puts each file key that the environment does not already set
//! into the process environment (so clap's `env = "KEY"` reads it, and child
//! processes see what a unit's `EnvironmentFile=` would have given them) and
//! remembers its `file:line` for `--show-config`.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where the file is unless [`PATH_VAR`] says otherwise.
pub const DEFAULT_PATH: &str = "/etc/default/backup-pipeline";
/// The environment variable naming another configuration file.
pub const PATH_VAR: &str = "BACKUP_PIPELINE_CONFIG";

/// Keys renamed when the settings got one name each: the old name is still
/// read (environment or file) when the new one is not set anywhere.
pub const RENAMED: &[(&str, &str)] = &[
    ("LVM_SNAP_VG", "LVM_VG"),
    ("PVC_COPY_VG", "LVM_VG"),
    ("LVM_SNAP_POOL", "LVM_POOL"),
    ("LVM_SNAP_EXCLUDE_NS", "EXCLUDED_NAMESPACES"),
    ("LVM_SNAP_MAPPING_CACHE", "MAPPING_CACHE"),
    ("PVC_COPY_NFS_ROOT", "NFS_ROOT"),
];

/// One `KEY=VALUE` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    /// 1-based line number.
    pub line: usize,
}

/// Parse the text of a configuration file; `Err((line, why))` on the first
/// malformed line.
pub fn parse_text(text: &str) -> Result<Vec<Entry>, (usize, String)> {
    let mut out: Vec<Entry> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let t = raw.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let Some((key, rest)) = t.split_once('=') else {
            return Err((line, "expected KEY=VALUE".into()));
        };
        let key = key.trim_end();
        if key.starts_with("export ") || key.starts_with("export\t") {
            return Err((
                line,
                "`export` is not allowed (systemd's EnvironmentFile= reads KEY=VALUE only)".into(),
            ));
        }
        if !valid_key(key) {
            return Err((line, format!("invalid key {key:?} (letters, digits, _)")));
        }
        let value = parse_value(rest.trim()).map_err(|why| (line, why))?;
        if let Some(prev) = out.iter().find(|e| e.key == key) {
            return Err((
                line,
                format!("{key} is set twice (first on line {})", prev.line),
            ));
        }
        out.push(Entry {
            key: key.to_string(),
            value,
            line,
        });
    }
    Ok(out)
}

fn valid_key(k: &str) -> bool {
    let mut c = k.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(v: &str) -> Result<String, String> {
    let trailing = |rest: &str| {
        if rest.trim().is_empty() {
            Ok(())
        } else {
            Err(format!(
                "unexpected {:?} after the closing quote",
                rest.trim()
            ))
        }
    };
    if let Some(body) = v.strip_prefix('\'') {
        let Some(end) = body.find('\'') else {
            return Err("unterminated single quote".into());
        };
        trailing(&body[end + 1..])?;
        return Ok(body[..end].to_string());
    }
    if let Some(body) = v.strip_prefix('"') {
        let mut out = String::new();
        let mut it = body.char_indices();
        while let Some((i, c)) = it.next() {
            match c {
                '"' => {
                    trailing(&body[i + 1..])?;
                    return Ok(out);
                }
                '\\' => match it.next() {
                    Some((_, e @ ('"' | '\\' | '$' | '`'))) => out.push(e),
                    Some((_, e)) => {
                        return Err(format!("unsupported escape \\{e} in double quotes"));
                    }
                    None => break,
                },
                '$' | '`' => {
                    return Err(format!(
                        "{c:?} in a value: nothing is expanded here, write \\{c} for the character"
                    ));
                }
                c => out.push(c),
            }
        }
        return Err("unterminated double quote".into());
    }
    if let Some(c) = v
        .chars()
        .find(|c| matches!(c, '"' | '\'' | '\\' | '$' | '`'))
    {
        return Err(format!(
            "{c:?} in an unquoted value (quote the whole value; nothing is expanded)"
        ));
    }
    Ok(v.to_string())
}

/// The loaded file: its path and entries (none when it does not exist).
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub path: PathBuf,
    pub exists: bool,
    pub entries: Vec<Entry>,
    /// Keys this process took from the file (the environment had none).
    pub applied: Vec<String>,
    /// New key -> the old name it was read from.
    pub renamed_from: BTreeMap<String, String>,
}

impl Loaded {
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.key == key)
    }

    /// Where the environment's value of `key` came from: `file PATH:LINE`
    /// when it is the file's (set by this process, or by systemd's
    /// `EnvironmentFile=` with the same value), else `env KEY`.
    pub fn env_source(&self, key: &str) -> String {
        let cur = std::env::var_os(key);
        let old = self.renamed_from.get(key);
        let via = old.map(|o| format!(" (old name {o})")).unwrap_or_default();
        let file_key = old.map(String::as_str).unwrap_or(key);
        if let Some(e) = self.get(file_key)
            && (self.applied.iter().any(|k| k == key)
                || cur.as_deref() == Some(OsStr::new(&e.value)))
        {
            return format!("file {}:{}{via}", self.path.display(), e.line);
        }
        format!("env {file_key}{via}")
    }
}

static LOADED: OnceLock<Loaded> = OnceLock::new();

/// The file [`load_and_apply`] read (an empty default before).
pub fn loaded() -> &'static Loaded {
    LOADED.get_or_init(Loaded::default)
}

/// The configuration file's path: `$BACKUP_PIPELINE_CONFIG` or the default.
pub fn path() -> PathBuf {
    match std::env::var_os(PATH_VAR) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_PATH),
    }
}

/// Read and parse `path`; a missing file is `Ok` with no entries. The
/// error is one line: `PATH:LINE: why` or `PATH: why`.
pub fn load(path: &Path) -> Result<Loaded, String> {
    let text = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Loaded {
                path: path.to_path_buf(),
                ..Loaded::default()
            });
        }
        Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
    };
    let text =
        String::from_utf8(text).map_err(|_| format!("{}: not UTF-8 text", path.display()))?;
    let entries = parse_text(&text).map_err(|(l, why)| format!("{}:{l}: {why}", path.display()))?;
    Ok(Loaded {
        path: path.to_path_buf(),
        exists: true,
        entries,
        applied: Vec::new(),
        renamed_from: BTreeMap::new(),
    })
}

/// Put every file key the environment lacks into the process environment,
/// and the old names of [`RENAMED`] keys under their new names.
///
/// Call once, at the start of `main`, before any thread is started.
pub fn apply(mut l: Loaded) -> &'static Loaded {
    let mut set: Vec<(String, OsString)> = Vec::new();
    for e in &l.entries {
        if std::env::var_os(&e.key).is_none() {
            set.push((e.key.clone(), e.value.clone().into()));
            l.applied.push(e.key.clone());
        }
    }
    for (old, new) in RENAMED {
        let new_set = std::env::var_os(new).is_some() || l.get(new).is_some();
        if new_set || l.renamed_from.contains_key(*new) {
            continue;
        }
        let val = std::env::var_os(old).or_else(|| l.get(old).map(|e| e.value.clone().into()));
        if let Some(v) = val {
            set.push(((*new).to_string(), v));
            l.renamed_from
                .insert((*new).to_string(), (*old).to_string());
            if std::env::var_os(old).is_none() {
                l.applied.push((*new).to_string());
            }
        }
    }
    for (k, v) in set {
        // SAFETY: called at the start of main, before any other thread
        // exists (documented contract of this function).
        unsafe { std::env::set_var(k, v) };
    }
    LOADED.get_or_init(|| l)
}

/// [`load`] the file at [`path`] and [`apply`] it; a malformed file ends
/// the process with exit 2 and one line naming `file:line`.
pub fn load_and_apply(tool: &str) -> &'static Loaded {
    match load(&path()) {
        Ok(l) => apply(l),
        Err(e) => {
            crate::log::set_tool(tool);
            crate::log::emit(crate::log::Level::Error, &format!("configuration file {e}"));
            std::process::exit(crate::exit::ExitCode::Usage.code());
        }
    }
}

/// Load the configuration, parse the command line with it, and handle
/// `--show-config` (print, exit 0). A clap error is returned for the
/// caller to report ([`crate::exit::usage_exit`]).
pub fn try_parse_from<C, I, T>(tool: &str, args: I) -> Result<C, clap::Error>
where
    C: clap::Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let loaded = load_and_apply(tool);
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let cmd = C::command();
    // `--show-config` shows the settings of a command line that may still
    // lack its required arguments (a source, a job name).
    if args.iter().any(|a| a == "--show-config") {
        let relaxed = relax(cmd);
        let matches = relaxed.clone().try_get_matches_from(&args)?;
        if wants_show_config(&matches) {
            // A closed stdout (`--show-config | head`) ends quietly too.
            let _ = crate::out!("{}", show_config(tool, &relaxed, &matches, loaded));
            std::process::exit(0);
        }
        return C::from_arg_matches(&matches);
    }
    let matches = cmd.try_get_matches_from(&args)?;
    C::from_arg_matches(&matches)
}

/// [`try_parse_from`] on the process's arguments; a bad command line exits 2.
pub fn parse<C: clap::Parser>(tool: &str) -> C {
    try_parse_from(tool, std::env::args_os()).unwrap_or_else(|e| crate::exit::usage_exit(tool, &e))
}

/// `cmd` with nothing required (arguments, groups, subcommands).
fn relax(cmd: clap::Command) -> clap::Command {
    let groups: Vec<clap::Id> = cmd.get_groups().map(|g| g.get_id().clone()).collect();
    let mut cmd = cmd
        .subcommand_required(false)
        .arg_required_else_help(false)
        .mut_args(|a| a.required(false));
    for g in groups {
        cmd = cmd.mut_group(g, |g| g.required(false));
    }
    let subs: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for s in subs {
        cmd = cmd.mut_subcommand(s, relax);
    }
    cmd
}

fn deepest(m: &clap::ArgMatches) -> &clap::ArgMatches {
    match m.subcommand() {
        Some((_, sub)) => deepest(sub),
        None => m,
    }
}

fn wants_show_config(m: &clap::ArgMatches) -> bool {
    matches!(
        deepest(m).try_get_one::<bool>("show_config"),
        Ok(Some(true))
    )
}

const NOT_SETTINGS: &[&str] = &["help", "version", "show_config", "quiet", "verbose"];

/// One line per setting of the command that runs: `--flag=value<TAB>source`,
/// source being `flag`, `env KEY`, `file PATH:LINE (KEY)`, `default` or
/// `unset`.
pub fn show_config(
    tool: &str,
    cmd: &clap::Command,
    m: &clap::ArgMatches,
    loaded: &Loaded,
) -> String {
    let mut lines: Vec<(String, String)> = Vec::new();
    let mut built = cmd.clone();
    built.build();
    let mut cmd = &built;
    let mut m = m;
    let mut name = tool.to_string();
    loop {
        // A subcommand's run shows only its own settings (global ones are
        // propagated to it).
        let leaf = m.subcommand().is_none();
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            if !leaf || a.is_hide_set() || NOT_SETTINGS.contains(&id) {
                continue;
            }
            let label = match a.get_long() {
                Some(l) => format!("--{l}"),
                None => format!("<{}>", id.to_uppercase()),
            };
            let vals: Option<Vec<String>> = match m.try_get_raw(id) {
                Ok(Some(v)) => Some(v.map(|s| s.to_string_lossy().into_owned()).collect()),
                _ => None,
            };
            let src = match (m.value_source(id), &vals) {
                (Some(clap::parser::ValueSource::CommandLine), _) => "flag".to_string(),
                (Some(clap::parser::ValueSource::EnvVariable), _) => {
                    let key = a.get_env().map(|k| k.to_string_lossy().into_owned());
                    match key {
                        Some(k) => {
                            let s = loaded.env_source(&k);
                            if s.starts_with("file ") {
                                format!("{s} ({k})")
                            } else {
                                s
                            }
                        }
                        None => "env".into(),
                    }
                }
                (Some(clap::parser::ValueSource::DefaultValue), _) => "default".to_string(),
                // A setting derived from others says so in its help text.
                _ => match derived_default(a) {
                    Some(d) => format!("unset: {d}"),
                    None => "unset".to_string(),
                },
            };
            let val = vals.map(|v| v.join(",")).unwrap_or_default();
            let line = format!("{label}={val}\t{src}");
            match lines.iter_mut().find(|(i, _)| i == id) {
                Some(slot) => slot.1 = line,
                None => lines.push((id.to_string(), line)),
            }
        }
        match m.subcommand() {
            Some((sub, sm)) => {
                let Some(sc) = cmd.find_subcommand(sub) else {
                    break;
                };
                name = format!("{name} {sub}");
                cmd = sc;
                m = sm;
            }
            None => break,
        }
    }
    let file = if loaded.exists {
        format!("{}", loaded.path.display())
    } else {
        format!("{} (absent: built-in defaults)", loaded.path.display())
    };
    let mut out = format!("# {name}: configuration file {file}\n");
    for (_, l) in lines {
        out.push_str(&l);
        out.push('\n');
    }
    out
}

/// `X` of a `[default: X]` in an argument's help text (defaults derived at
/// run time from other settings, e.g. `BACKUP_ROOT/.nfs-changes.log`).
fn derived_default(a: &clap::Arg) -> Option<String> {
    let help = a
        .get_long_help()
        .or_else(|| a.get_help())
        .map(|h| h.to_string())?;
    let start = help.find("[default: ")? + "[default: ".len();
    let end = help[start..].find(']')? + start;
    Some(
        help[start..end]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms() {
        let t = "# comment\n\nA=1\n  B = two words  \nC='x y $z'\nD=\"q \\\" \\$ e\"\nE=\n";
        let e = parse_text(t).expect("parse");
        let kv: Vec<(&str, &str, usize)> = e
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str(), e.line))
            .collect();
        assert_eq!(
            kv,
            vec![
                ("A", "1", 3),
                ("B", "two words", 4),
                ("C", "x y $z", 5),
                ("D", "q \" $ e", 6),
                ("E", "", 7)
            ]
        );
    }

    #[test]
    fn refuses_malformed_lines() {
        for (t, line) in [
            ("A=1\nnot a pair\n", 2),
            ("export A=1\n", 1),
            ("A=1\nA=2\n", 2),
            ("1A=x\n", 1),
            ("A='open\n", 1),
            ("A=\"x\" y\n", 1),
            ("A=$HOME/x\n", 1),
            ("A=\"$HOME\"\n", 1),
            ("A=it's\n", 1),
        ] {
            let (l, why) = parse_text(t).expect_err(t);
            assert_eq!(l, line, "{t:?}: {why}");
        }
    }

    #[test]
    fn missing_file_is_defaults() {
        let l = load(Path::new("/nonexistent/backup-pipeline")).expect("missing is ok");
        assert!(!l.exists);
        assert!(l.entries.is_empty());
    }

    #[test]
    fn error_names_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("cfg");
        std::fs::write(&f, "A=1\nB\n").expect("write");
        let e = load(&f).expect_err("malformed");
        assert!(e.ends_with(":2: expected KEY=VALUE"), "{e}");
        assert!(e.starts_with(&f.display().to_string()), "{e}");
    }
}
