//! rsync's `--out-format='%i %n'` output, read back exactly: which files a
//! run transferred (for the ledger) and what a `--dry-run -ii` pass would
//! delete (for the deletion guards), plus the `--max-delete N|P%` limit.
//!
//! rsync escapes unprintable bytes in names as `\#ooo` (octal), and a
//! backslash that could be read as such an escape as `\#134`, so every
//! line is one item and the name bytes are recovered exactly.

use std::path::PathBuf;

/// The out-format to pass to rsync for [`parse`].
pub const OUT_FORMAT: &str = "--out-format=%i %n";

/// One line of `%i %n` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The 11-character itemize string (`>f+++++++++`, `*deleting  `...).
    pub flags: String,
    /// The name relative to the transfer root, bytes exact (a directory
    /// keeps rsync's trailing `/`).
    pub name: Vec<u8>,
}

impl Item {
    pub fn is_deletion(&self) -> bool {
        self.flags.starts_with("*deleting")
    }
    /// A new item on the receiver.
    pub fn is_new(&self) -> bool {
        self.flags.contains("+++++++++")
    }
    pub fn is_dir(&self) -> bool {
        self.flags.as_bytes().get(1) == Some(&b'd')
    }
    /// Content or a link sent to the receiver in this run: a regular file
    /// transferred (`>f`), a symlink or hard link created (`cL`, `hf`).
    pub fn is_transfer(&self) -> bool {
        let f = self.flags.as_bytes();
        matches!(
            (f.first(), f.get(1)),
            (Some(b'>'), Some(b'f')) | (Some(b'c'), Some(b'L')) | (Some(b'h'), Some(_))
        ) && !self.is_deletion()
    }
    pub fn path(&self) -> PathBuf {
        use std::os::unix::ffi::OsStringExt;
        let mut n = self.name.clone();
        while n.len() > 1 && n.last() == Some(&b'/') {
            n.pop();
        }
        PathBuf::from(std::ffi::OsString::from_vec(n))
    }
}

/// Undo rsync's `\#ooo` escapes.
pub fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\'
            && i + 4 < s.len()
            && s[i + 1] == b'#'
            && s[i + 2..i + 5].iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (s[i + 2] - b'0') as u32 * 64
                + (s[i + 3] - b'0') as u32 * 8
                + (s[i + 4] - b'0') as u32;
            if let Ok(b) = u8::try_from(v) {
                out.push(b);
                i += 5;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// Parse `%i %n` output. Lines that are not items (rsync's own notes,
/// hard-link ` => target` suffixes are not produced by `%n`) are skipped.
pub fn parse(out: &[u8]) -> Vec<Item> {
    out.split(|&b| b == b'\n').filter_map(parse_line).collect()
}

/// One line of `%i %n` output (without its newline), if it is an item.
fn parse_line(line: &[u8]) -> Option<Item> {
    // `%i` is always 11 characters, then one space, then the name.
    if line.len() < 13 || line[11] != b' ' {
        return None;
    }
    let flags = std::str::from_utf8(&line[..11]).ok()?;
    let known = flags.starts_with("*deleting")
        || (matches!(line[0], b'<' | b'>' | b'c' | b'h' | b'.')
            && matches!(line[1], b'f' | b'd' | b'L' | b'D' | b'S'));
    known.then(|| Item {
        flags: flags.to_string(),
        name: unescape(&line[12..]),
    })
}

/// Call `f` for each item of the `%i %n` output in `file`, read from its
/// start as a stream (one line in memory at a time).
fn for_each_item(mut file: &std::fs::File, mut f: impl FnMut(Item)) -> std::io::Result<()> {
    use std::io::{BufRead, Seek};
    file.seek(std::io::SeekFrom::Start(0))?;
    let mut r = std::io::BufReader::with_capacity(1 << 16, file);
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if let Some(it) = parse_line(&line) {
            f(it);
        }
    }
}

/// What a `--dry-run -ii` pass says about deletions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeletePlan {
    /// Items the run would delete on the receiver.
    pub deletions: u64,
    /// Items on the receiver now (kept ones plus those to delete).
    pub existing: u64,
    /// Items the run would create.
    pub new: u64,
    /// rsync temp files (`.NAME.XXXXXX` beside a NAME the run sends or
    /// keeps) that a killed rsync left behind: deleted, but counted in
    /// neither `deletions` nor `existing`, so one interrupted transfer into
    /// a small mirror never trips the deletion guard of every later run.
    pub rsync_temps: u64,
}

impl DeletePlan {
    /// Figures from `-ii` output (every item, changed or not, is listed).
    pub fn from_items(items: &[Item]) -> DeletePlan {
        let mut p = DeletePlan::default();
        let kept: std::collections::HashSet<&[u8]> = items
            .iter()
            .filter(|i| !i.is_deletion())
            .map(|i| i.name.as_slice())
            .collect();
        for it in items {
            if it.name == b"./" {
                continue;
            }
            if it.is_deletion() && is_rsync_temp_of_kept(&it.name, &kept) {
                p.rsync_temps += 1;
            } else if it.is_deletion() {
                p.deletions += 1;
                p.existing += 1;
            } else if it.is_new() {
                p.new += 1;
            } else {
                p.existing += 1;
            }
        }
        p
    }
    /// [`DeletePlan::from_items`] for `-ii` output spooled to `file`, read
    /// from its start as a stream, twice: memory holds the names that
    /// deleted temp files belong to, never the listing (millions of lines
    /// on a full pass).
    pub fn from_spool(file: &std::fs::File) -> std::io::Result<DeletePlan> {
        use std::collections::{HashMap, HashSet};
        let (mut deletions, mut existing, mut new) = (0u64, 0u64, 0u64);
        // Temp files being deleted, counted by the name they stand for.
        let mut temps: HashMap<Vec<u8>, u64> = HashMap::new();
        for_each_item(file, |it| {
            if it.name == b"./" {
                return;
            }
            if it.is_deletion() {
                deletions += 1;
                if let Some(orig) = rsync_temp_origin(&it.name) {
                    *temps.entry(orig).or_default() += 1;
                }
            } else if it.is_new() {
                new += 1;
            } else {
                existing += 1;
            }
        })?;
        let mut kept: HashSet<Vec<u8>> = HashSet::new();
        if !temps.is_empty() {
            for_each_item(file, |it| {
                if !it.is_deletion() && temps.contains_key(&it.name) {
                    kept.insert(it.name);
                }
            })?;
        }
        let rsync_temps: u64 = kept.iter().filter_map(|k| temps.get(k)).sum();
        let deletions = deletions - rsync_temps;
        Ok(DeletePlan {
            deletions,
            existing: existing + deletions,
            new,
            rsync_temps,
        })
    }
    pub fn add(&mut self, o: DeletePlan) {
        self.rsync_temps += o.rsync_temps;
        self.deletions += o.deletions;
        self.existing += o.existing;
        self.new += o.new;
    }
}

/// `DIR/.NAME.XXXXXX` (rsync's temp name: a dot, the name, a dot, six
/// characters of mkstemp's alphabet) where `DIR/NAME` is in `kept`.
fn is_rsync_temp_of_kept(name: &[u8], kept: &std::collections::HashSet<&[u8]>) -> bool {
    rsync_temp_origin(name).is_some_and(|full| kept.contains(full.as_slice()))
}

/// For a name shaped like an rsync temp file (`dir/.NAME.XXXXXX`), the
/// name it stands for (`dir/NAME`).
fn rsync_temp_origin(name: &[u8]) -> Option<Vec<u8>> {
    let (dir, base) = match name.iter().rposition(|&b| b == b'/') {
        Some(i) => name.split_at(i + 1),
        None => (&name[..0], name),
    };
    let rest = base.strip_prefix(b".")?;
    if rest.len() < 8 {
        return None;
    }
    let (orig, suffix) = rest.split_at(rest.len() - 7);
    if suffix[0] != b'.' || !suffix[1..].iter().all(u8::is_ascii_alphanumeric) {
        return None;
    }
    let mut full = dir.to_vec();
    full.extend_from_slice(orig);
    Some(full)
}

/// `--max-delete N|P%|off`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxDelete {
    Count(u64),
    Percent(f64),
    Off,
}

impl std::str::FromStr for MaxDelete {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid --max-delete {s:?}: expected a count (500), a percentage (10%) or 'off'"
            )
        };
        let t = s.trim();
        if t == "off" {
            return Ok(MaxDelete::Off);
        }
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 = p.parse().map_err(|_| bad())?;
            if !(0.0..=100.0).contains(&v) {
                return Err(bad());
            }
            return Ok(MaxDelete::Percent(v));
        }
        t.parse().map(MaxDelete::Count).map_err(|_| bad())
    }
}

impl std::fmt::Display for MaxDelete {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaxDelete::Count(n) => write!(f, "{n}"),
            MaxDelete::Percent(p) => write!(f, "{p}%"),
            MaxDelete::Off => f.write_str("off"),
        }
    }
}

impl MaxDelete {
    /// `None` when the plan is within the limit, else why not.
    /// How many deletions the limit allows among `existing` items on the
    /// receiver; `None` when there is no limit.
    pub fn allowed(&self, existing: u64) -> Option<u64> {
        match self {
            MaxDelete::Off => None,
            MaxDelete::Count(n) => Some(*n),
            MaxDelete::Percent(p) => Some((p * existing as f64 / 100.0).floor() as u64),
        }
    }

    pub fn check(&self, plan: &DeletePlan) -> Option<String> {
        let over = self
            .allowed(plan.existing)
            .is_some_and(|a| plan.deletions > a);
        over.then(|| {
            format!(
                "would delete {} of {} items on the destination (limit --max-delete {self})",
                plan.deletions, plan.existing
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_back_exactly() {
        let out = b"*deleting   old/f\n.d          ./\n>f+++++++++ back\\#134#012slash\n>f.s....... plain\ncd+++++++++ d/\n>f+++++++++ d/-dash\n>f+++++++++ d/new\\#012line\ncL+++++++++ link\nsent 10 bytes\n";
        let items = parse(out);
        assert_eq!(items.len(), 8);
        let sent: Vec<Vec<u8>> = items
            .iter()
            .filter(|i| i.is_transfer())
            .map(|i| i.name.clone())
            .collect();
        assert_eq!(
            sent,
            vec![
                b"back\\#012slash".to_vec(),
                b"plain".to_vec(),
                b"d/-dash".to_vec(),
                b"d/new\nline".to_vec(),
                b"link".to_vec()
            ]
        );
        let plan = DeletePlan::from_items(&items);
        assert_eq!(
            plan,
            DeletePlan {
                deletions: 1,
                existing: 2,
                new: 5,
                rsync_temps: 0,
            }
        );
    }

    #[test]
    fn temp_files_of_a_killed_rsync_are_not_counted_as_deletions() {
        // A run killed while sending d/big left d/.big.Ab12Cd; the next
        // dry run sends d/big again and would delete the temp file.
        let out = b".d          ./\n>f+++++++++ d/big\n.f          d/a\n*deleting   d/.big.Ab12Cd\n*deleting   d/.gone.Zz9xY1\n*deleting   .a.Q\n*deleting   d/.a.Ab12Cd\n";
        let plan = DeletePlan::from_items(&parse(out));
        // d/.gone.* has no d/gone in the run and .a.Q is not rsync's shape:
        // both count; the temps of d/big (sent) and d/a (kept) do not.
        assert_eq!(
            plan,
            DeletePlan {
                deletions: 2,
                existing: 3,
                new: 1,
                rsync_temps: 2,
            }
        );
    }

    #[test]
    fn the_plan_from_a_spooled_listing_is_the_same() {
        let cases: [&[u8]; 3] = [
            b".d          ./\n>f+++++++++ d/big\n.f          d/a\n*deleting   d/.big.Ab12Cd\n*deleting   d/.gone.Zz9xY1\n*deleting   .a.Q\n*deleting   d/.a.Ab12Cd\n",
            b"*deleting   x\n.f          y\ncreated directory z\n>f+++++++++ n\n*deleting   .y.AAAAAA\n*deleting   .y.BBBBBB",
            b"",
        ];
        for out in cases {
            let mut f = tempfile::tempfile().expect("tempfile");
            std::io::Write::write_all(&mut f, out).expect("write");
            assert_eq!(
                DeletePlan::from_spool(&f).expect("read"),
                DeletePlan::from_items(&parse(out)),
                "{}",
                String::from_utf8_lossy(out)
            );
        }
    }

    #[test]
    fn unescape_keeps_plain_backslashes() {
        assert_eq!(unescape(b"a\\b"), b"a\\b");
        assert_eq!(unescape(b"a\\#1"), b"a\\#1");
        assert_eq!(unescape(b"\\#377x"), b"\xffx");
    }

    #[test]
    fn max_delete_limits() {
        let plan = DeletePlan {
            deletions: 30,
            existing: 100,
            new: 0,
            rsync_temps: 0,
        };
        assert!("30".parse::<MaxDelete>().expect("n").check(&plan).is_none());
        assert!("29".parse::<MaxDelete>().expect("n").check(&plan).is_some());
        assert!(
            "30%"
                .parse::<MaxDelete>()
                .expect("p")
                .check(&plan)
                .is_none()
        );
        let e = "10%"
            .parse::<MaxDelete>()
            .expect("p")
            .check(&plan)
            .expect("over");
        assert!(e.contains("would delete 30 of 100"), "{e}");
        assert!(
            "off"
                .parse::<MaxDelete>()
                .expect("off")
                .check(&plan)
                .is_none()
        );
        assert!("lots".parse::<MaxDelete>().is_err());
        assert!("150%".parse::<MaxDelete>().is_err());
    }
}
