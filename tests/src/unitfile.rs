//! The argument lists of the project's systemd units (`units/*.service`),
//! so scenario tests run each tool exactly as its unit does, with the
//! host paths mapped into a sandbox. Tests only.

use std::path::{Path, PathBuf};

/// A unit file's `[Service]` settings, in file order.
pub struct UnitFile {
    pub name: String,
    settings: Vec<(String, String)>,
}

impl UnitFile {
    /// `units/<name>` of this workspace.
    pub fn load(name: &str) -> UnitFile {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../units")
            .join(name);
        let text =
            std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
        let settings = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#') && !l.starts_with('['))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        UnitFile {
            name: name.to_string(),
            settings,
        }
    }

    /// Every value of `key`, in order.
    pub fn values(&self, key: &str) -> Vec<&str> {
        self.settings
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The command lines of `key` (`ExecStart`, `ExecStopPost`) as words,
    /// systemd's `-` (ignore failure) prefix removed.
    pub fn commands(&self, key: &str) -> Vec<Vec<String>> {
        self.values(key)
            .into_iter()
            .map(|v| words(v.strip_prefix('-').unwrap_or(v)))
            .collect()
    }

    /// The one command line of `key` whose program is `/usr/local/bin/<tool>`.
    pub fn command_of(&self, key: &str, tool: &str) -> Vec<String> {
        let prog = format!("/usr/local/bin/{tool}");
        let mut found: Vec<Vec<String>> = self
            .commands(key)
            .into_iter()
            .filter(|w| w.first().is_some_and(|p| *p == prog))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{}: expected one {key}= running {prog}",
            self.name
        );
        found.remove(0)
    }

    /// `Environment=` assignments (`K=V`, quotes removed).
    pub fn environment(&self) -> Vec<(String, String)> {
        self.values("Environment")
            .into_iter()
            .flat_map(words)
            .filter_map(|w| {
                w.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect()
    }
}

/// systemd's word splitting for the forms these units use: whitespace,
/// single- and double-quoted words.
pub fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut started = false;
    for c in s.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => cur.push(c),
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                started = true;
            }
            None if c.is_whitespace() => {
                if started {
                    out.push(std::mem::take(&mut cur));
                    started = false;
                }
            }
            None => {
                cur.push(c);
                started = true;
            }
        }
    }
    if started {
        out.push(cur);
    }
    out
}

/// Host path prefix -> sandbox path, applied to every word that is, or
/// starts with, a mapped path (longest prefix first).
pub struct PathMap(Vec<(String, PathBuf)>);

impl PathMap {
    pub fn new(pairs: &[(&str, &Path)]) -> PathMap {
        let mut v: Vec<(String, PathBuf)> = pairs
            .iter()
            .map(|(k, p)| (k.to_string(), p.to_path_buf()))
            .collect();
        v.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
        PathMap(v)
    }

    pub fn map(&self, word: &str) -> String {
        for (from, to) in &self.0 {
            if word == from {
                return to.display().to_string();
            }
            if let Some(rest) = word.strip_prefix(from.as_str())
                && (rest.starts_with('/') || rest.starts_with(':'))
            {
                return format!("{}{rest}", to.display());
            }
        }
        word.to_string()
    }

    pub fn map_all(&self, words: &[String]) -> Vec<String> {
        words.iter().map(|w| self.map(w)).collect()
    }
}

/// `words` without `flag` (and its value when `takes_value`).
pub fn without(words: &[String], flag: &str, takes_value: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip = false;
    for w in words {
        if skip {
            skip = false;
            continue;
        }
        if w == flag {
            skip = takes_value;
            continue;
        }
        out.push(w.clone());
    }
    out
}

/// `words` with the value after `flag` replaced by `value` (appended when
/// the unit relies on the default).
pub fn with_value(words: &[String], flag: &str, value: &str) -> Vec<String> {
    let mut out = words.to_vec();
    match out.iter().position(|w| w == flag) {
        Some(i) => out[i + 1] = value.to_string(),
        None => out.extend([flag.to_string(), value.to_string()]),
    }
    out
}
