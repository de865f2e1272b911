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
//! the path it names and everything beneath it; `*` and `?` match within
//! one component. The most specific (longest) matching pattern wins.

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
        let comps: Vec<String> = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        let best = self
            .rules
            .iter()
            .filter(|r| {
                r.pattern.len() <= comps.len()
                    && r.pattern.iter().zip(&comps).all(|(p, c)| glob(p, c))
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
    pub fn nested_rules(&self, top: &str) -> Vec<&Rule> {
        self.rules
            .iter()
            .filter(|r| r.pattern.len() > 1 && glob(&r.pattern[0], top))
            .collect()
    }

    /// Every top-level directory with its one route. Fails when a name is
    /// claimed by two top-level patterns with different routes.
    pub fn coverage<'a, I>(&self, names: I) -> Result<Vec<Coverage>, String>
    where
        I: IntoIterator<Item = &'a str>,
    {
        let mut out = Vec::new();
        let mut conflicts = Vec::new();
        for name in names {
            let top: Vec<&Rule> = self
                .rules
                .iter()
                .filter(|r| r.pattern.len() == 1 && glob(&r.pattern[0], name))
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
                .nested_rules(name)
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
/// within the component), as [`SkipList::lookup`] decides.
pub fn component_matches(pat: &str, name: &std::ffi::OsStr) -> bool {
    glob(pat, &name.to_string_lossy())
}

/// `*` and `?` within one path component.
fn glob(pat: &str, s: &str) -> bool {
    let p: Vec<char> = pat.chars().collect();
    let s: Vec<char> = s.chars().collect();
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
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
}
