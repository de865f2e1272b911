//! Contract 5: the skip list (`/etc/backup-skip-list.conf`), the one file
//! both legs read. Each line: a route and a path pattern relative to the
//! NFS root; `#` starts a comment.
//!
//! ```text
//! direct immich                      # leg 2: straight to the NAS
//! never  frigate                     # not backed up at all
//! never  servarr/downloads/f1-replays
//! ```
//! Everything unlisted goes via the backup disk (leg 1). A pattern matches
//! the path it names and everything beneath it; `*` (any bytes) and `?`
//! (one byte) match within one component, every other byte is literal.
//! Names are bytes (contract 9), as rsync sees them. The most specific
//! (longest) matching pattern wins.
//!
//! One meaning for both legs: the tools turn rules into rsync filters with
//! [`rsync_pattern`] and real names with [`rsync_literal`], never by hand.
//! rsync reads `[...]` as a character class, `\` as an escape and `**` as
//! crossing `/`; a rule using them is refused at load time (with its line),
//! because its author most likely meant what rsync (or a shell) means, and
//! the matcher would take it literally.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Route {
    /// Leg 1: mirrored onto the backup disk, then offsite by step 1.
    BackupDisk,
    /// Leg 2: straight to the NAS (offsite step 2).
    Direct,
    /// Not backed up at all.
    Never,
}

impl Route {
    pub fn as_str(self) -> &'static str {
        match self {
            Route::BackupDisk => "backup-disk",
            Route::Direct => "direct",
            Route::Never => "never",
        }
    }
}

/// `FILE:LINE: why`, or `FILE: why` when the file itself is the problem
/// (line 0).
#[derive(Debug, PartialEq, Eq)]
pub struct SkipListError {
    pub file: String,
    pub line: usize,
    pub msg: String,
}

impl std::fmt::Display for SkipListError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.msg)
        } else {
            write!(f, "{}:{}: {}", self.file, self.line, self.msg)
        }
    }
}

impl std::error::Error for SkipListError {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub route: Route,
    pub pattern: Vec<String>,
    pub line: usize,
}

impl Rule {
    pub fn pattern_str(&self) -> String {
        self.pattern.join("/")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkipList {
    rules: Vec<Rule>,
}

impl SkipList {
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn load(path: &Path) -> Result<SkipList, SkipListError> {
        let text = std::fs::read_to_string(path).map_err(|e| SkipListError {
            file: path.display().to_string(),
            line: 0,
            msg: format!("cannot read the skip list: {e}"),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, file: &str) -> Result<SkipList, SkipListError> {
        let mut rules: Vec<Rule> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let err = |msg: String| SkipListError {
                file: file.into(),
                line,
                msg,
            };
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let mut words = content.split_whitespace();
            let route = match words.next() {
                Some("direct") => Route::Direct,
                Some("never") => Route::Never,
                Some(other) => {
                    return Err(err(format!(
                        "unknown route {other:?}: expected 'direct' or 'never'"
                    )));
                }
                None => continue,
            };
            let pat = words
                .next()
                .ok_or_else(|| err("missing path pattern after the route".into()))?;
            if words.next().is_some() {
                return Err(err("expected exactly a route and one path pattern".into()));
            }
            let p = Path::new(pat);
            let mut comps = Vec::new();
            for c in p.components() {
                match c {
                    Component::Normal(s) => comps.push(s.to_string_lossy().into_owned()),
                    Component::CurDir => {}
                    Component::RootDir => {
                        return Err(err(format!(
                            "{pat:?} is absolute: patterns are relative to the NFS root"
                        )));
                    }
                    Component::ParentDir | Component::Prefix(_) => {
                        return Err(err(format!("{pat:?} contains '..'")));
                    }
                }
            }
            if comps.is_empty() {
                return Err(err(format!("{pat:?} names the whole NFS root")));
            }
            if let Some(why) = ambiguous(pat) {
                return Err(err(format!("pattern \"{pat}\": {why}")));
            }
            if let Some(prev) = rules.iter().find(|r| r.pattern == comps) {
                if prev.route != route {
                    return Err(err(format!(
                        "{pat:?} is claimed by two routes: '{}' (line {}) and '{}'",
                        prev.route.as_str(),
                        prev.line,
                        route.as_str()
                    )));
                }
                continue;
            }
            rules.push(Rule {
                route,
                pattern: comps,
                line,
            });
        }
        Ok(SkipList { rules })
    }

    /// The route of a path relative to the NFS root, and the rule that
    /// decided it (`None`: unlisted, leg 1).
    pub fn lookup(&self, rel: &Path) -> (Route, Option<&Rule>) {
        let comps: Vec<&[u8]> = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(s.as_bytes()),
                _ => None,
            })
            .collect();
        let best = self
            .rules
            .iter()
            .filter(|r| {
                r.pattern.len() <= comps.len()
                    && r.pattern
                        .iter()
                        .zip(&comps)
                        .all(|(p, c)| glob(p.as_bytes(), c))
            })
            .max_by_key(|r| r.pattern.len());
        match best {
            Some(r) => (r.route, Some(r)),
            None => (Route::BackupDisk, None),
        }
    }

    pub fn route(&self, rel: &Path) -> Route {
        self.lookup(rel).0
    }

    /// Rules below a top-level name (patterns of two or more components
    /// whose first component matches it), for "partly routed" reporting.
    pub fn nested_rules(&self, top: impl AsRef<OsStr>) -> Vec<&Rule> {
        let top = top.as_ref().as_bytes();
        self.rules
            .iter()
            .filter(|r| r.pattern.len() > 1 && glob(r.pattern[0].as_bytes(), top))
            .collect()
    }

    /// Every top-level directory with its one route. Fails when a name is
    /// claimed by two top-level patterns with different routes.
    /// Names are matched as bytes (a non-UTF-8 name routes as the tools
    /// route it) and reported lossily.
    pub fn coverage<I>(&self, names: I) -> Result<Vec<Coverage>, String>
    where
        I: IntoIterator,
        I::Item: AsRef<OsStr>,
    {
        let mut out = Vec::new();
        let mut conflicts = Vec::new();
        for raw in names {
            let raw = raw.as_ref();
            let name = raw.to_string_lossy();
            let top: Vec<&Rule> = self
                .rules
                .iter()
                .filter(|r| r.pattern.len() == 1 && glob(r.pattern[0].as_bytes(), raw.as_bytes()))
                .collect();
            let mut routes: Vec<Route> = top.iter().map(|r| r.route).collect();
            routes.sort();
            routes.dedup();
            if routes.len() > 1 {
                let lines: Vec<String> = top
                    .iter()
                    .map(|r| format!("line {} '{}'", r.line, r.route.as_str()))
                    .collect();
                conflicts.push(format!("{name} is claimed by {}", lines.join(" and ")));
                continue;
            }
            let route = routes.first().copied().unwrap_or(Route::BackupDisk);
            let exceptions = self
                .nested_rules(raw)
                .iter()
                .map(|r| (r.pattern_str(), r.route))
                .collect::<Vec<_>>();
            out.push(Coverage {
                name: name.to_string(),
                route,
                exceptions,
            });
        }
        if conflicts.is_empty() {
            Ok(out)
        } else {
            Err(conflicts.join("; "))
        }
    }
}

/// One top-level directory's route, and deeper rules inside it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Coverage {
    pub name: String,
    pub route: Route,
    pub exceptions: Vec<(String, Route)>,
}

/// Whether one path component matches one rule component (`*` and `?`
/// within the component, on bytes), as [`SkipList::lookup`] decides.
pub fn component_matches(pat: &str, name: &OsStr) -> bool {
    glob(pat.as_bytes(), name.as_bytes())
}

/// Why a rule pattern would mean one thing to the matcher and another to
/// rsync (or to its author, who writes shell and rsync globs): `None` when
/// it means the same to all of them.
fn ambiguous(pat: &str) -> Option<&'static str> {
    if pat.contains('[') || pat.contains(']') {
        Some(
            "'[' ... ']' would mean a character class to rsync but a literal to the matcher; \
             write '?' for one unknown character (or '*')",
        )
    } else if pat.contains('\\') {
        Some(
            "'\\' would escape the next character for rsync but is a literal to the matcher; \
             write '?' in its place",
        )
    } else if pat.contains("**") {
        Some(
            "'**' would cross '/' for rsync but stays within one name for the matcher; \
             write '*' (within one name) or one rule per path",
        )
    } else {
        None
    }
}

/// The rsync filter pattern (for `--exclude=`) matching exactly the paths
/// the matcher matches with these rule components below the transfer root:
/// anchored (`/a/b*`), `*` and `?` within one name, everything else
/// literal. Faithful for any input, even constructs [`SkipList::parse`]
/// refuses: `**` becomes `*` (the matcher's meaning), and `[` and `\` are
/// escaped whenever rsync would read the pattern as a wildcard pattern.
pub fn rsync_pattern<S: AsRef<str>>(components: &[S]) -> String {
    let comps: Vec<String> = components
        .iter()
        .map(|c| {
            let mut out = String::new();
            for ch in c.as_ref().chars() {
                if !(ch == '*' && out.ends_with('*')) {
                    out.push(ch);
                }
            }
            out
        })
        .collect();
    let wild = comps.iter().any(|c| c.contains(['*', '?', '[']));
    let mut out = String::new();
    for c in comps {
        out.push('/');
        for ch in c.chars() {
            if wild && matches!(ch, '[' | '\\') {
                out.push('\\');
            }
            out.push(ch);
        }
    }
    out
}

/// The rsync filter pattern matching exactly the path made of these real
/// names (bytes, from the disk) below the transfer root: anchored, every
/// byte literal. rsync compares a pattern without `*`, `?` or `[` as it is;
/// one with any of them is a wildcard pattern, where `\` escapes each of
/// `*?[\`.
pub fn rsync_literal<S: AsRef<OsStr>>(names: &[S]) -> OsString {
    let wild = names
        .iter()
        .any(|n| n.as_ref().as_bytes().iter().any(|b| b"*?[".contains(b)));
    let mut out = Vec::new();
    for n in names {
        out.push(b'/');
        for &b in n.as_ref().as_bytes() {
            if wild && b"*?[\\".contains(&b) {
                out.push(b'\\');
            }
            out.push(b);
        }
    }
    OsString::from_vec(out)
}

/// `*` (any bytes) and `?` (one byte) within one path component.
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        // A '*' in the pattern is a wildcard even where the name has a '*'
        // (`x*y` matches `x**y`, as rsync's does).
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "# routes\n\
        direct immich\n\
        never frigate   # cameras\n\
        never temp\n\
        never servarr/downloads/f1-replays\n\
        never *-cache\n";

    #[test]
    fn routes_are_looked_up_by_most_specific_rule() {
        let s = SkipList::parse(EXAMPLE, "skip.conf").expect("parse");
        assert_eq!(s.route(Path::new("immich/upload/a.jpg")), Route::Direct);
        assert_eq!(s.route(Path::new("immich")), Route::Direct);
        assert_eq!(s.route(Path::new("immich-old/a")), Route::BackupDisk);
        assert_eq!(s.route(Path::new("frigate/clips/x.mp4")), Route::Never);
        assert_eq!(
            s.route(Path::new("servarr/downloads/f1-replays/r1.mkv")),
            Route::Never
        );
        assert_eq!(
            s.route(Path::new("servarr/downloads/other.mkv")),
            Route::BackupDisk
        );
        assert_eq!(s.route(Path::new("thumb-cache/x")), Route::Never);
        assert_eq!(s.route(Path::new("nextcloud/data")), Route::BackupDisk);
    }

    #[test]
    fn errors_carry_line_numbers() {
        let e = SkipList::parse("direct immich\nsometimes x\n", "f").expect_err("bad route");
        assert_eq!(e.line, 2);
        assert!(e.to_string().starts_with("f:2: unknown route"), "{e}");
        assert_eq!(
            SkipList::parse("\n\nnever /abs\n", "f")
                .expect_err("abs")
                .line,
            3
        );
        assert_eq!(
            SkipList::parse("never a/../b\n", "f")
                .expect_err("dotdot")
                .line,
            1
        );
        assert_eq!(
            SkipList::parse("never\n", "f").expect_err("missing").line,
            1
        );
        assert_eq!(
            SkipList::parse("never a b\n", "f").expect_err("extra").line,
            1
        );
        let e = SkipList::parse("direct immich\nnever immich\n", "f").expect_err("two routes");
        assert!(e.to_string().contains("claimed by two routes"), "{e}");
    }

    #[test]
    fn coverage_gives_each_top_level_dir_one_route() {
        let s = SkipList::parse(EXAMPLE, "f").expect("parse");
        let c = s
            .coverage(["immich", "frigate", "servarr", "nextcloud", "thumb-cache"])
            .expect("coverage");
        let routes: Vec<(&str, Route)> = c.iter().map(|c| (c.name.as_str(), c.route)).collect();
        assert_eq!(
            routes,
            vec![
                ("immich", Route::Direct),
                ("frigate", Route::Never),
                ("servarr", Route::BackupDisk),
                ("nextcloud", Route::BackupDisk),
                ("thumb-cache", Route::Never),
            ]
        );
        assert_eq!(
            c[2].exceptions,
            vec![("servarr/downloads/f1-replays".to_string(), Route::Never)]
        );
        let overlap = SkipList::parse("direct imm*\nnever *ich\n", "f").expect("parse");
        let e = overlap.coverage(["immich"]).expect_err("overlap");
        assert!(
            e.contains("immich is claimed by line 1 'direct' and line 2 'never'"),
            "{e}"
        );
    }

    #[test]
    fn rsync_ambiguous_patterns_are_refused_with_file_and_line() {
        for (pat, what) in [
            (
                "foo[1]",
                "'[' ... ']' would mean a character class to rsync",
            ),
            (
                "data/cache[0-9]",
                "'[' ... ']' would mean a character class to rsync",
            ),
            ("foo]", "'[' ... ']' would mean a character class to rsync"),
            (
                "back\\slash",
                "'\\' would escape the next character for rsync",
            ),
            ("a*\\*", "'\\' would escape the next character for rsync"),
            ("x**y", "'**' would cross '/' for rsync"),
            ("media/**", "'**' would cross '/' for rsync"),
        ] {
            let text = format!("direct immich\n# comment\nnever {pat}  # why\n");
            let e = SkipList::parse(&text, "/etc/backup-skip-list.conf")
                .expect_err(&format!("{pat} must be refused"));
            assert_eq!(e.line, 3, "{e}");
            let want = format!("/etc/backup-skip-list.conf:3: pattern \"{pat}\": {what}");
            assert!(e.to_string().starts_with(&want), "{e}\nwant {want}");
            assert!(e.to_string().contains("; write "), "{e}");
        }
        // Through load(): the file's path and the line.
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("skip.conf");
        std::fs::write(&f, "never frigate\ndirect foo[1]\n").expect("write");
        let e = SkipList::load(&f).expect_err("refused");
        assert!(
            e.to_string()
                .starts_with(&format!("{}:2: pattern \"foo[1]\"", f.display())),
            "{e}"
        );
        // '*' and '?' mean the same to both: accepted.
        SkipList::parse("never a*b\ndirect q?\nnever data/*-cache/x?y\n", "f").expect("parse");
    }

    #[test]
    fn rsync_pattern_is_anchored_and_escapes_only_in_wildcard_patterns() {
        assert_eq!(rsync_pattern(&["immich"]), "/immich");
        assert_eq!(
            rsync_pattern(&["servarr", "downloads"]),
            "/servarr/downloads"
        );
        assert_eq!(rsync_pattern(&["a*b", "q?"]), "/a*b/q?");
        // Faithful even for what parse refuses: no wildcard, rsync
        // compares literally, so '\' stays as it is ...
        assert_eq!(rsync_pattern(&["back\\slash"]), "/back\\slash");
        // ... a wildcard pattern escapes '\' and '[' ...
        assert_eq!(rsync_pattern(&["b*", "back\\slash"]), "/b*/back\\\\slash");
        assert_eq!(rsync_pattern(&["foo[1]"]), "/foo\\[1]");
        // ... and '**' is the matcher's '*'.
        assert_eq!(rsync_pattern(&["x**y"]), "/x*y");
    }

    #[test]
    fn rsync_literal_escapes_every_wildcard_byte_when_rsync_would_see_one() {
        let l = |v: &[&str]| rsync_literal(v).into_string().expect("utf-8");
        assert_eq!(l(&["immich"]), "/immich");
        assert_eq!(l(&["back\\slash"]), "/back\\slash");
        assert_eq!(l(&["foo]"]), "/foo]");
        assert_eq!(l(&["foo[1]"]), "/foo\\[1]");
        assert_eq!(l(&["a*b", "back\\slash"]), "/a\\*b/back\\\\slash");
        assert_eq!(l(&["q?", "x**y"]), "/q\\?/x\\*\\*y");
        let raw = rsync_literal(&[OsStr::from_bytes(b"q\xff*")]);
        assert_eq!(raw.as_bytes(), b"/q\xff\\*");
    }

    #[test]
    fn the_matcher_works_on_bytes_as_rsync_does() {
        let s = SkipList::parse("never q?\nnever data/a*b\n", "f").expect("parse");
        // '?' is one byte: 'é' is two, as rsync counts.
        assert_eq!(s.route(Path::new("q?")), Route::Never);
        assert_eq!(s.route(Path::new("qx")), Route::Never);
        assert_eq!(s.route(Path::new("q\u{e9}")), Route::BackupDisk);
        assert_eq!(
            s.route(Path::new(OsStr::from_bytes(b"q\xff"))),
            Route::Never
        );
        assert_eq!(
            s.route(Path::new(OsStr::from_bytes(b"q\xff\xfe"))),
            Route::BackupDisk
        );
        assert_eq!(s.route(Path::new("data/a*b/x")), Route::Never);
        assert_eq!(s.route(Path::new("data/axxb")), Route::Never);
        assert_eq!(s.route(Path::new("data/ab/c")), Route::Never);
        assert_eq!(s.route(Path::new("data/a/b")), Route::BackupDisk);
        // A '*' of the pattern facing a '*' of the name is still a wildcard.
        assert!(component_matches("x*y", OsStr::new("x**y")));
        assert!(component_matches("a*b", OsStr::new("a*xb")));
        let c = s
            .coverage([OsStr::from_bytes(b"q\xff"), OsStr::new("q\u{e9}")])
            .expect("coverage");
        assert_eq!(
            (c[0].name.as_str(), c[0].route),
            ("q\u{fffd}", Route::Never)
        );
        assert_eq!(c[1].route, Route::BackupDisk);
        assert!(component_matches("q?", OsStr::from_bytes(b"q\xff")));
        assert!(!component_matches("q?", OsStr::new("q\u{e9}")));
        assert_eq!(s.nested_rules(OsStr::from_bytes(b"data")).len(), 1);
    }
}
