//! The repository stands alone: every file it ships cites only files
//! inside it. No tracked file names the reference notes the project was
//! written from (they are not in the repository: docs/ holds what they
//! said), and every relative path under `docs/` that a file mentions, and
//! every relative link of a Markdown file, exists. The shipped example
//! skip list loads with the real parser and routes the services it names.

use std::path::{Path, PathBuf};
use std::process::Command;

use backup_core::skiplist::{Route, SkipList};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// The repository's files: `git ls-files` when this is a git checkout,
/// else every file outside `target/` and `.git`.
fn tracked() -> Vec<PathBuf> {
    let root = repo();
    let out = Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["ls-files", "-z"])
        .output();
    if let Ok(out) = out
        && out.status.success()
        && !out.stdout.is_empty()
    {
        return out
            .stdout
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| PathBuf::from(String::from_utf8_lossy(s).into_owned()))
            .filter(|p| !p.starts_with("target") && root.join(p).is_file())
            .collect();
    }
    let mut files = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel)).expect("read_dir") {
            let e = e.expect("dir entry");
            let name = e.file_name();
            let r = rel.join(&name);
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                if rel.as_os_str().is_empty() && (name == "target" || name == ".git") {
                    continue;
                }
                stack.push(r);
            } else if ft.is_file() {
                files.push(r);
            }
        }
    }
    files.sort();
    files
}

/// Text files only (binary fixtures are skipped).
fn texts() -> Vec<(PathBuf, String)> {
    tracked()
        .into_iter()
        .filter_map(|p| {
            let bytes = std::fs::read(repo().join(&p)).ok()?;
            if bytes.contains(&0) {
                return None;
            }
            Some((p, String::from_utf8_lossy(&bytes).into_owned()))
        })
        .collect()
}

#[test]
fn no_file_cites_notes_outside_the_repository() {
    // Spelled in pieces so this file does not match itself.
    let names = [concat!("behaviour", ".md"), concat!("DESIGN", ".md")];
    let mut hits = Vec::new();
    for (p, text) in texts() {
        for (i, line) in text.lines().enumerate() {
            for n in names {
                if line.to_ascii_lowercase().contains(&n.to_ascii_lowercase()) {
                    hits.push(format!("{}:{}: {}", p.display(), i + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        hits.is_empty(),
        "files cite notes that are not in the repository (cite docs/ instead):\n{}",
        hits.join("\n")
    );
}

/// Paths under `docs/` ending in `.md` mentioned in `text`, as written: the
/// documents of this repository. Other `docs/` paths are test data (a
/// tree named docs in a fixture), and one right after an `owner/repo`
/// word is another repository's file.
fn docs_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut from = 0;
    while let Some(i) = text[from..].find("docs/") {
        let at = from + i;
        from = at + 5;
        // A path of its own, not the tail of another (/usr/share/docs/...).
        if at > 0 {
            let c = b[at - 1];
            if c.is_ascii_alphanumeric() || matches!(c, b'/' | b'.' | b'-' | b'_' | b'~') {
                continue;
            }
        }
        let end = text[at..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '-' | '_')))
            .map_or(text.len(), |n| at + n);
        let path = text[at..end].trim_end_matches(['.', '/']);
        let line_start = text[..at].rfind('\n').map_or(0, |n| n + 1);
        let before = text[line_start..at].trim_end();
        let prev_word = before.rsplit(char::is_whitespace).next().unwrap_or("");
        let other_repo = before.len() < text[line_start..at].len()
            && prev_word.matches('/').count() == 1
            && !prev_word.starts_with('/')
            && !prev_word.ends_with('/')
            && !prev_word.contains('.');
        if path.ends_with(".md") && !other_repo {
            out.push(path.to_string());
        }
    }
    out
}

/// Relative link targets of a Markdown file: `](target)`.
fn md_links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        let Some(end) = rest.find(')') else { break };
        let target = rest[..end].trim();
        rest = &rest[end..];
        let target = target.split_whitespace().next().unwrap_or("");
        let target = target.split('#').next().unwrap_or("");
        if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        out.push(target.to_string());
    }
    out
}

#[test]
fn every_docs_path_and_relative_link_exists() {
    let root = repo();
    let mut missing = Vec::new();
    for (p, text) in texts() {
        for d in docs_paths(&text) {
            if !root.join(&d).exists() {
                missing.push(format!("{}: {d}", p.display()));
            }
        }
        if p.extension().is_some_and(|e| e == "md") {
            let dir = p.parent().unwrap_or(Path::new(""));
            for l in md_links(&text) {
                let target = if let Some(abs) = l.strip_prefix('/') {
                    PathBuf::from(abs)
                } else {
                    dir.join(&l)
                };
                let norm = normalize(&target);
                if !root.join(&norm).exists() {
                    missing.push(format!("{}: link {l}", p.display()));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "paths that do not exist in the repository:\n{}",
        missing.join("\n")
    );
}

/// `a/b/../c` -> `a/c`, without touching the filesystem.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn link_finders_read_what_they_should() {
    assert_eq!(
        docs_paths("see docs/contracts.md. and /usr/share/docs/x.md and `docs/metrics.md`"),
        vec!["docs/contracts.md", "docs/metrics.md"]
    );
    assert_eq!(
        docs_paths("fixture docs/a.txt; owner/repo docs/THEIRS.md; units/alerts/README.md"),
        Vec::<String>::new()
    );
    assert_eq!(
        md_links("[a](contracts.md#ledger) [b](https://x/y) [c](../units/x \"t\")"),
        vec!["contracts.md", "../units/x"]
    );
    assert_eq!(
        normalize(Path::new("docs/../units/a")),
        PathBuf::from("units/a")
    );
}

#[test]
fn example_skip_list_loads_and_routes_the_services_it_names() {
    let path = repo().join("units/backup-skip-list.conf.example");
    let list = SkipList::load(&path).unwrap_or_else(|e| panic!("{e}"));
    for (rel, route) in [
        ("immich", Route::Direct),
        ("immich/library/a.jpg", Route::Direct),
        ("frigate", Route::Never),
        ("temp", Route::Never),
        ("ollama", Route::Never),
        ("llamacpp", Route::Never),
        ("prometheus-backup", Route::Never),
        ("audiblez", Route::Never),
        ("ebook2audiobook", Route::Never),
        ("anca-elements", Route::Never),
        ("servarr/downloads/f1-replays/x.mkv", Route::Never),
        ("servarr", Route::BackupDisk),
        ("servarr/downloads/other", Route::BackupDisk),
        ("nextcloud", Route::BackupDisk),
    ] {
        assert_eq!(list.route(Path::new(rel)), route, "{rel}");
    }
}
