//! Contract 7: week names. One function names weeks (ISO year and ISO
//! week, `2026-W48`); rotation also recognises the old `YYYY-WW` names
//! (`date +%Y-%W`, Monday-based week 00-53) and orders every name by the
//! Monday its week starts on.

use chrono::{Datelike, Duration, NaiveDate, Weekday};

/// The week key of today in the host's local time (the week a run writes).
pub fn current_key() -> String {
    week_key(chrono::Local::now().date_naive())
}

/// The week key of a date: ISO year, ISO week.
pub fn week_key(date: NaiveDate) -> String {
    let w = date.iso_week();
    format!("{}-W{:02}", w.year(), w.week())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Style {
    /// `2026-W48`.
    Iso,
    /// `2026-47` from `date +%Y-%W`.
    Legacy,
}

/// A parsed week directory name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Week {
    pub name: String,
    pub style: Style,
    /// The first day of the week (a Monday, or 1 January for legacy week 00).
    pub start: NaiveDate,
}

impl Ord for Week {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.start, &self.name).cmp(&(o.start, &o.name))
    }
}
impl PartialOrd for Week {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

/// Parse a week name of either style; anything else is `None`.
pub fn parse_week(name: &str) -> Option<Week> {
    let (y, w) = name.split_once('-')?;
    if y.len() != 4 || !y.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i32 = y.parse().ok()?;
    if let Some(iso) = w.strip_prefix('W') {
        if iso.len() != 2 || !iso.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let week: u32 = iso.parse().ok()?;
        let start = NaiveDate::from_isoywd_opt(year, week, Weekday::Mon)?;
        return Some(Week {
            name: name.into(),
            style: Style::Iso,
            start,
        });
    }
    if w.len() != 2 || !w.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let week: i64 = w.parse().ok()?;
    let jan1 = NaiveDate::from_ymd_opt(year, 1, 1)?;
    // %W: week 1 begins on the year's first Monday; days before are week 0.
    let first_monday =
        jan1 + Duration::days((7 - jan1.weekday().num_days_from_monday() as i64) % 7);
    let start = if week == 0 {
        jan1
    } else {
        first_monday + Duration::weeks(week - 1)
    };
    if start.year() != year || week > 53 {
        return None;
    }
    Some(Week {
        name: name.into(),
        style: Style::Legacy,
        start,
    })
}

/// A keep/drop decision with its reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    pub name: String,
    pub keep: bool,
    pub reason: String,
}

/// Keep the `keep` newest weeks; drop the rest, each with its reason.
/// Names that are not weeks are kept (never delete what we cannot date).
/// Refuses `keep == 0`: an empty policy would delete everything.
pub fn retain<'a, I>(names: I, keep: usize) -> Result<Vec<Decision>, String>
where
    I: IntoIterator<Item = &'a str>,
{
    if keep == 0 {
        return Err("refusing a retention of 0 weeks: it would delete every copy".into());
    }
    let mut weeks = Vec::new();
    let mut out = Vec::new();
    for n in names {
        match parse_week(n) {
            Some(w) => weeks.push(w),
            None => out.push(Decision {
                name: n.into(),
                keep: true,
                reason: "not a week name; never pruned".into(),
            }),
        }
    }
    weeks.sort();
    weeks.reverse();
    for (i, w) in weeks.into_iter().enumerate() {
        let d = if i < keep {
            Decision {
                name: w.name,
                keep: true,
                reason: format!("within the {keep} newest weeks (#{})", i + 1),
            }
        } else {
            Decision {
                name: w.name,
                keep: false,
                reason: format!("older than the {keep} newest weeks (#{})", i + 1),
            }
        };
        out.push(d);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).expect("date")
    }

    #[test]
    fn week_keys_at_year_boundaries() {
        let table = [
            (d(2020, 12, 31), "2020-W53"),
            (d(2021, 1, 3), "2020-W53"),
            (d(2024, 12, 30), "2025-W01"),
            (d(2025, 1, 1), "2025-W01"),
            (d(2026, 12, 31), "2026-W53"),
            (d(2027, 1, 1), "2026-W53"),
            (d(2027, 1, 4), "2027-W01"),
            (d(2026, 11, 28), "2026-W48"),
        ];
        for (date, want) in table {
            assert_eq!(week_key(date), want, "{date}");
            let w = parse_week(want).expect("parse back");
            assert!(
                w.start <= date && date < w.start + Duration::days(7),
                "{date} in {want}"
            );
        }
    }

    #[test]
    fn legacy_names_parse_to_their_monday() {
        // date +%Y-%W on 2026-08-17 (a Monday) printed 2026-33.
        assert_eq!(parse_week("2026-33").expect("legacy").start, d(2026, 8, 17));
        assert_eq!(parse_week("2026-00").expect("week 0").start, d(2026, 1, 1));
        assert_eq!(parse_week("2026-01").expect("week 1").start, d(2026, 1, 5));
        for bad in [
            "2026-W54", "2026-60", "26-01", "2026-1", "2026-W1", "latest", "2026-W4x",
        ] {
            assert!(parse_week(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn old_and_new_names_order_together() {
        let mut v: Vec<Week> = ["2026-W48", "2026-46", "2026-W47", "2025-52", "2026-W01"]
            .iter()
            .map(|n| parse_week(n).expect("week"))
            .collect();
        v.sort();
        let names: Vec<&str> = v.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(
            names,
            ["2025-52", "2026-W01", "2026-46", "2026-W47", "2026-W48"]
        );
    }

    #[test]
    fn retention_keeps_newest_and_says_why() {
        let names = [
            "2026-W45", "2026-44", "2026-W48", "2026-W47", "2026-W46", "notes",
        ];
        let ds = retain(names, 4).expect("retain");
        let dropped: Vec<&str> = ds
            .iter()
            .filter(|d| !d.keep)
            .map(|d| d.name.as_str())
            .collect();
        assert_eq!(dropped, ["2026-44"]);
        let notes = ds.iter().find(|d| d.name == "notes").expect("notes");
        assert!(notes.keep && notes.reason.contains("never pruned"));
        assert!(retain(names, 0).is_err());
    }
}
