//! nfs-track's state file (`<state dir>/last-watching`): the last instant
//! the tracker is known to have been watching (every change before it is
//! in the ledger), the ledger and roots that applies to, and the route it
//! logs. nfs-track writes it and trusts its stamp for a restart;
//! offsite-sync's coverage check reads it to know that the direct leg
//! really runs (contract 15). One format, read and written here.
//!
//! ```text
//! last-watching 1796525630.123456789
//! ledger /mnt/backup/.nfs-changes.log
//! route direct
//! root /srv/nfs
//! ```
//! Paths are written with the ledger's escaping (one line each, any bytes).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::ledger::{decode, encode};

/// The file's name inside the state directory.
pub const FILE: &str = "last-watching";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stamp {
    pub when: Option<SystemTime>,
    pub ledger: Option<Vec<u8>>,
    pub roots: Vec<Vec<u8>>,
    /// `direct`, or `all` (no skip list: every path).
    pub route: Option<String>,
}

impl Stamp {
    /// Parse the file's text; unknown or malformed lines are skipped.
    pub fn parse(text: &[u8]) -> Stamp {
        let mut t = Stamp::default();
        for line in text.split(|&b| b == b'\n') {
            let Some(sp) = line.iter().position(|&b| b == b' ') else {
                continue;
            };
            let (key, val) = (&line[..sp], &line[sp + 1..]);
            match key {
                b"last-watching" => {
                    let s = String::from_utf8_lossy(val);
                    let (secs, nanos) = s.split_once('.').unwrap_or((&s, "0"));
                    if let (Ok(s), Ok(n)) = (secs.parse::<u64>(), nanos.parse::<u32>()) {
                        t.when = Some(UNIX_EPOCH + Duration::new(s, n.min(999_999_999)));
                    }
                }
                b"ledger" => t.ledger = decode(val),
                b"root" => t.roots.extend(decode(val)),
                b"route" => t.route = Some(String::from_utf8_lossy(val).into_owned()),
                _ => {}
            }
        }
        t
    }

    /// The file's bytes. Paths keep every byte (the ledger's escaping):
    /// a lossy UTF-8 conversion turned a non-UTF-8 root into another name,
    /// so its stamp never matched again.
    pub fn render(when: SystemTime, ledger: &[u8], route: &str, roots: &[&[u8]]) -> Vec<u8> {
        let d = when.duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut s = format!(
            "last-watching {}.{:09}\nledger ",
            d.as_secs(),
            d.subsec_nanos()
        )
        .into_bytes();
        s.extend(encode(ledger));
        s.extend(format!("\nroute {route}\n").into_bytes());
        for r in roots {
            s.extend_from_slice(b"root ");
            s.extend(encode(r));
            s.push(b'\n');
        }
        s
    }
}

/// The stamp in `dir`, `None` when there is none yet.
pub fn read(dir: &Path) -> std::io::Result<Option<Stamp>> {
    match std::fs::read(dir.join(FILE)) {
        Ok(t) => Ok(Some(Stamp::parse(&t))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_and_parse_round_trip_any_bytes() {
        let t = UNIX_EPOCH + Duration::new(1_800_000_000, 123_456_789);
        let text = Stamp::render(
            t,
            b"/mnt/backup/.nfs-changes.log",
            "direct",
            &[b"/srv/nfs", b"/srv/we\nird\xff"],
        );
        assert_eq!(
            Stamp::parse(&text),
            Stamp {
                when: Some(t),
                ledger: Some(b"/mnt/backup/.nfs-changes.log".to_vec()),
                roots: vec![b"/srv/nfs".to_vec(), b"/srv/we\nird\xff".to_vec()],
                route: Some("direct".into()),
            }
        );
    }
}
